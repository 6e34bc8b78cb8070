"""The server on 2 processes, as one draft group and as two replicas: images equal
``recipes/digits.py``'s for the same seeds and sampler, bad requests are 4xx naming their field,
SIGTERM answers what was accepted and exits 0, a dead or hung rank is a 5xx and a non-zero exit
within the collective timeout, never a hang."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from driffusion.serve.client import RunningServer
from driffusion.serve.client import request as http
from tests.support import ROOT, decode_png, run_script

pytestmark = pytest.mark.processes

SAMPLER = "aggressive(drafts=2)"
STEPS = 10
ASKED = [(3, 300, "3"), (7, 700, "seven")]  # digit, seed (the recipe's seed + 100 * digit), prompt


@pytest.fixture(scope="module")
def recipe_images(tmp_path_factory: pytest.TempPathFactory) -> dict[int, torch.Tensor]:
    """``recipes/digits.py`` with the sampler the requests name, one image per digit."""
    out = tmp_path_factory.mktemp("digits")
    cmd = [sys.executable, str(ROOT / "recipes" / "digits.py"), "--accelerator", "cpu"]
    flags = ["--n-per-class", "1", "--steps", str(STEPS), "--sampler", SAMPLER, "--no-fid"]
    result = run_script([*cmd, "--out", str(out), *flags], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    return {
        seed: torch.from_numpy(
            np.array(Image.open(out / "aggressive" / f"digit{d}_seed{seed}.png"))
        )
        for d, seed, _ in ASKED
    }


def generate(url: str, prompt: str, seed: int, **fields: Any) -> tuple[int, Any]:
    body = {"prompt": prompt, "seed": seed, "steps": STEPS, "sampler": SAMPLER, **fields}
    return http("POST", f"{url}/v1/images/generations", body, timeout=120)


def concurrently(url: str, asked: list[tuple[int, int, str]]) -> list[tuple[int, Any]]:
    with concurrent.futures.ThreadPoolExecutor(len(asked)) as pool:
        return list(pool.map(lambda a: generate(url, a[2], a[1]), asked))


def within_a_level(pixels: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal to the recipe's image within one 8-bit level: the recipe evaluates a batch of
    every digit on one process, a draft group splits a round's rows over its ranks, and a float
    rounds differently now and then (a wrong seed or sampler is tens of levels off)."""
    return int((pixels.int() - expected.int()).abs().max()) <= 1


def server_in(cwd: Path, *flags: str) -> RunningServer:
    """The server on 2 processes, working in ``cwd``, writing to ``cwd / "out"``."""
    return RunningServer(cwd / "out", 2, flags, cwd=cwd, log=cwd.parent / "server.log")


def written_outside(cwd: Path) -> list[str]:
    """Files under the server's working folder but not under its ``--out``."""
    return [str(p) for p in cwd.rglob("*") if p.is_file() and "out" not in p.relative_to(cwd).parts]


def test_one_draft_group_serves_the_recipes_images_and_drains_on_sigterm(
    tmp_path: Path, recipe_images: dict[int, torch.Tensor]
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with server_in(cwd) as server:
        assert http("GET", f"{server.url}/health")[1]["status"] == "ready"
        info = http("GET", f"{server.url}/info")[1]
        assert info["layout"] == {
            "world": 2,
            "draft_devices": 2,
            "replicas": 1,
            "guidance_devices": 1,
        }
        answers = concurrently(server.url, ASKED)
        for (_, seed, _), (status, body) in zip(ASKED, answers, strict=True):
            assert status == 200, body
            pixels, text = decode_png(body["data"][0]["b64_json"])
            assert within_a_level(pixels, recipe_images[seed]), f"seed {seed}"
            assert text["sampler"] == "Aggressive(drafts=2, solver='dpmpp_2m')"
            assert body["stats"]["rounds"] == 6  # 1 + ceil((10 - 1) / 2), on 2 devices
            assert body["stats"]["layout"]["draft_devices"] == 2
        for field, value in [("steps", 0), ("sampler", "nope(drafts=2)"), ("n", 99)]:
            status, body = generate(server.url, "3", 0, **{field: value})
            assert (status, body["error"]["param"]) == (400, field)
        status, body = http(
            "POST", f"{server.url}/v1/images/generations", b'{"prompt": "3", "guidance": NaN}'
        )
        assert (status, body["error"]["param"]) == (400, "guidance")

        # SIGTERM to rank 0 with a request in flight: it is answered, then every rank exits 0
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            flight = pool.submit(generate, server.url, "5", 500, steps=300)
            time.sleep(1.0)
            server.terminate(timeout=0)
            status, body = flight.result(timeout=120)
        assert status == 200 and len(body["data"]) == 1, body
        assert server.wait(60) == 0, server.output()[-3000:]
    assert written_outside(cwd) == []
    assert sorted(p.name for p in (cwd / "out").iterdir()) == ["images", "server.json"]
    assert len(list((cwd / "out" / "images").glob("*.png"))) == 3  # one per answered image


def test_two_replicas_serve_side_by_side_with_the_same_images(
    tmp_path: Path, recipe_images: dict[int, torch.Tensor]
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with server_in(cwd, "--draft-devices", "1") as server:
        assert http("GET", f"{server.url}/info")[1]["layout"]["replicas"] == 2
        asked = ASKED * 3
        answers = concurrently(server.url, asked)
        replicas, first = set(), {}
        for (_, seed, _), (status, body) in zip(asked, answers, strict=True):
            assert status == 200, body
            pixels = decode_png(body["data"][0]["b64_json"])[0]
            # the same request, the same image, whichever replica (bit for bit), the recipe's
            assert torch.equal(pixels, first.setdefault(seed, pixels))
            assert within_a_level(pixels, recipe_images[seed])
            replicas.add(body["stats"]["replica"])
        assert replicas == {0, 1}
        assert server.terminate() == 0, server.output()[-3000:]


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_dead_or_hung_rank_is_a_5xx_and_a_clean_exit_never_a_hang(
    tmp_path: Path, fault: str
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    timeout = 10
    with server_in(cwd, "--timeout", str(timeout)) as server:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            flight = pool.submit(generate, server.url, "3", 0, steps=1000)
            time.sleep(1.5)
            start = time.monotonic()
            rank1 = server.info["pids"][1]
            os.kill(rank1, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
            status, body = flight.result(timeout=timeout + 30)
            answered = time.monotonic() - start
        assert status >= 500, body
        assert "rank" in body["error"]["message"]
        assert answered < timeout + 15
        code = server.wait(timeout + 45)
        assert code not in (None, 0), server.output()[-3000:]
        assert "error: the server stopped" in server.output()
