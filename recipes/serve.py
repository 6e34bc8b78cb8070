"""serve: a latency server; each request is sampled by one whole draft group, replicas serve
requests side by side, and a page at ``/`` to try it.

    fabric run --accelerator cpu --devices 2 --strategy ddp recipes/serve.py --port 8000
    fabric run --accelerator cpu --devices 2 --strategy ddp recipes/serve.py --draft-devices 1
    python recipes/serve.py --port 8000                   # one device, the embedded digits model
    curl -s localhost:8000/v1/images/generations -d '{"prompt": "3", "seed": 300}'

``--devices D`` = draft-group size (``--draft-devices``, default all) x replicas. SIGTERM answers
the accepted requests and exits 0. See ``driffusion.serve.server`` and docs/serve.md.
"""

import sys

from driffusion.lightning import cli
from driffusion.serve.server import main

if __name__ == "__main__":
    sys.exit(cli.exit_on_usage_error(main))
