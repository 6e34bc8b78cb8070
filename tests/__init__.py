"""The test suite (how to run its tiers: tests/README.md).

OpenMP threads that spin while they wait make torch many times slower as soon as another process
holds one of the cores (seen on 2 shared cores: a 0.3 s test took 25 s); waiting passively costs
nothing measurable on an idle machine. Set here, before anything imports torch (the conftest
does), and inherited by the processes the tests launch.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
