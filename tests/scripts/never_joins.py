"""Stands in for the ranks of a second node that never join: started by `fabric run` (its
launcher meets the first node's), it creates no process group and sleeps until killed (and dies
with its launcher, so a failed test cannot leak it)."""

from __future__ import annotations

import time

from driffusion.lightning.launch import die_with_parent

die_with_parent()
time.sleep(300)
