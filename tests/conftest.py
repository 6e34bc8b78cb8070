"""Fixtures and hooks of the whole suite (plain helpers are in ``tests/support.py``).

A test that launches a process (``subprocess``, ``fabric run``, ``multiprocessing``,
``torch.multiprocessing``, ``os.fork`` / ``os.system``) must be marked ``processes``: ``make
test-fast`` (``pytest -m "not processes"``) leaves those out. The marker cannot be forgotten:
while an unmarked test is set up, runs and is torn down, every way of starting a process raises
``tests.support.UnmarkedProcessError`` (and the test fails even if the code under test
swallowed that error)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    FAMILIES,
    PROCESSES,
    SCRIPTS,
    UnmarkedProcessError,
    fabric_run,
    launch_environment,
    processes_refused,
    run_script,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _guarded(item: pytest.Item) -> Any:
    if item.get_closest_marker(PROCESSES) is not None:
        return (yield)
    attempts: list[str] = []
    with processes_refused(item.nodeid, attempts):
        result = yield
    if attempts:  # refused, but the error was swallowed on the way up
        raise UnmarkedProcessError(attempts[0])
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    return (yield from _guarded(item))


@pytest.fixture(autouse=True)
def launch_environment_unchanged(request: pytest.FixtureRequest) -> Any:
    """A test that leaves a launch variable in ``os.environ`` (Lightning writes ``WORLD_SIZE``,
    ``LOCAL_RANK``, ... itself) fails, and the variables are put back, so that it cannot turn a
    later test's launch into another world."""
    before = launch_environment()
    yield
    after = launch_environment()
    if after != before:
        for name in set(before) | set(after):
            if name in before:
                os.environ[name] = before[name]
            else:
                del os.environ[name]
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        pytest.fail(f"{request.node.nodeid} left launch variables changed: {changed}")


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `fabric run --devices 2 tests/scripts/parallel_check.py` for the whole session: its
    output folder (core samplers over the distributed executor, and the predict loop), read by
    tests/adapters/test_distributed.py and tests/lightning/test_loop.py."""
    out = tmp_path_factory.mktemp("parallel")
    cmd = fabric_run(2)
    result = run_script([*cmd, str(SCRIPTS / "parallel_check.py"), "--out", str(out)], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    return out


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP model and processor saved in a folder (read only by the tests that use
    it: the CLIP / PickScore scorers and the SD2.1 evaluation protocol)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from driffusion.adapters.tiny import tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny") / "clip"
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tiny_tokenizer()),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer()).save_pretrained(
        folder
    )
    return folder
