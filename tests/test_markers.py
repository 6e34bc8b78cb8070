"""The ``processes`` marker cannot be forgotten: around a test not marked ``processes`` every way
of starting a process raises an error that says to add the marker."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from tests.support import UnmarkedProcessError, processes_refused


def test_an_unmarked_test_cannot_start_a_process(request: pytest.FixtureRequest) -> None:
    attempts: list[str] = []
    with processes_refused(request.node.nodeid, attempts):
        with pytest.raises(UnmarkedProcessError, match=r"not marked `processes`: add"):
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        with pytest.raises(UnmarkedProcessError, match="multiprocessing"):
            multiprocessing.get_context("spawn").Process(target=print).start()
        with pytest.raises(UnmarkedProcessError, match=r"os\.system"):
            os.system("true")
        with pytest.raises(UnmarkedProcessError, match=r"os\.fork"):
            os.fork()
    assert len(attempts) == 4 and all(request.node.nodeid in a for a in attempts)


def test_the_hooks_wrap_every_unmarked_test() -> None:
    """This test is not marked: process creation is refused around it (not called here, which
    would fail it)."""
    assert subprocess.Popen.__init__.__qualname__.endswith("refuse.<locals>.guard")
    assert multiprocessing.process.BaseProcess.start.__qualname__.endswith("guard")


@pytest.mark.processes
def test_a_marked_test_may_start_processes() -> None:
    assert not subprocess.Popen.__init__.__qualname__.endswith("guard")
    assert subprocess.run([sys.executable, "-c", "pass"], check=True).returncode == 0
