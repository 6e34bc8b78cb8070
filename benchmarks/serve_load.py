"""serve_load: a bounded load test of the server on loopback, the digits model on D CPU processes
as one draft group and as D replicas, side by side.

    python benchmarks/serve_load.py --json outputs/serve_load.json
    python benchmarks/serve_load.py --requests 60 --concurrency 1 2 4 --steps 20

For each layout the server starts (``fabric run --devices D recipes/serve.py``, weights loaded and
warmed up before the first request), then for each concurrency ``c`` the same ``--requests``
requests (digit ``i % 10``, seed ``1000 + i``) are sent by ``c`` clients at once. A row gives
throughput (requests / wall seconds), p50 / p95 latency (send to answer), errors (any answer but
200), and ``exact``: answers that are one per request and carry the image their seed determines
(the same sampler run in this process, batched: within one 8-bit level, since a group splits
a round's rows over its ranks and a split batch rounds a float differently now and then;
``max_level_diff`` is the largest difference seen). Every request asks for as many drafts
as the layout's group has devices (``"drafts"``), so one group of D runs D drafts a round
(latency) and D replicas one each (throughput): the trade the table shows. The server is
stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from driffusion.core import BatchedExecutor, RowwiseModel, initial_noise
from driffusion.io import markdown_table, to_pil, write_json
from driffusion.models.digits import DEFAULT_GUIDANCE, DEFAULT_SOLVER, DigitsModel, load_digits
from driffusion.serve.api import Limits, read_sampler
from driffusion.serve.client import RunningServer, request

KEYS = [
    "layout",
    "concurrency",
    "requests",
    "errors",
    "exact",
    "max_level_diff",
    "throughput_rps",
    "p50_s",
    "p95_s",
    "rounds",
    "sampler",
]
LAYOUTS = {"group": "one draft group", "replicas": "replicas"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="aggressive")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.devices < 1 or args.steps < 1 or min(args.concurrency) < 1:
        parser.error("--requests, --devices, --steps and --concurrency must be >= 1")
    return args


def expected_image(
    model: DigitsModel, digit: int, seed: int, steps: int, sampler: Any
) -> np.ndarray:
    """The digit as the server's sampler draws it, here in this process."""
    network = BatchedExecutor(
        RowwiseModel(model.denoiser(DEFAULT_GUIDANCE), {"label": torch.tensor([digit])})
    )
    with torch.inference_mode():
        x = sampler(network, initial_noise([seed], (1, 16, 16)), model.schedule(steps)).x
    return np.array(to_pil(x[0]))


def pixels(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(b64))))


def load(
    url: str,
    requests: int,
    concurrency: int,
    fields: dict[str, Any],
    expected: dict[int, np.ndarray],
) -> dict[str, Any]:
    """Send the requests (with ``fields``) from ``concurrency`` clients; the row of what came
    back."""

    def one(i: int) -> tuple[float, int, Any]:
        body = {"prompt": str(i % 10), "seed": 1000 + i, **fields}
        start = time.perf_counter()
        status, answer = request("POST", f"{url}/v1/images/generations", body, timeout=600)
        return time.perf_counter() - start, status, answer

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    latencies = sorted(latency for latency, _, _ in results)
    ok = [(i, answer) for i, (_, status, answer) in enumerate(results) if status == 200]
    ids = {answer["id"] for _, answer in ok}
    levels = [
        int(np.abs(pixels(a["data"][0]["b64_json"]).astype(int) - expected[i]).max())
        if len(a["data"]) == 1 and a["data"][0]["seed"] == 1000 + i
        else 255
        for i, a in ok
    ]
    exact = sum(level <= 1 for level in levels)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": requests - len(ok),
        "exact": exact if len(ids) == len(ok) else 0,  # one answer per request
        "max_level_diff": max(levels, default=None),
        "throughput_rps": requests / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "rounds": statistics.mean(answer["stats"]["rounds"] for _, answer in ok) if ok else None,
        "replicas_used": sorted({answer["stats"]["replica"] for _, answer in ok}),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    model = load_digits()  # once: the expected image of every request
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts:
            group = args.devices if layout == "group" else 1
            limits = Limits(sampler=args.sampler, solver=DEFAULT_SOLVER, rows=group)
            sampler = read_sampler(args.sampler, group, args.steps, limits)
            expected = {
                i: expected_image(model, i % 10, 1000 + i, args.steps, sampler)
                for i in range(args.requests)
            }
            flags = ["--draft-devices", str(group), "--sampler", args.sampler]
            out = Path(tmp) / layout
            with RunningServer(out, args.devices, flags) as server:
                for concurrency in args.concurrency:
                    fields = {"steps": args.steps, "drafts": group}
                    row = load(server.url, args.requests, concurrency, fields, expected)
                    name = f"{LAYOUTS[layout]} ({args.devices // group} x {group})"
                    rows.append({"layout": name, **row, "sampler": repr(sampler)})
                    print(markdown_table(rows[-1:], KEYS), file=sys.stderr)
                code = server.terminate()
                if code != 0:
                    raise SystemExit(
                        f"the {layout} server exited {code}:\n{server.output()[-3000:]}"
                    )
    print(
        f"\nserve_load: {args.requests} requests per row, digits model, {args.steps} steps, "
        f"{args.devices} CPU processes; latency from send to answer\n"
    )
    print(markdown_table(rows, KEYS))
    if args.json is not None:
        write_json(args.json, {"settings": vars(args) | {"json": str(args.json)}, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
