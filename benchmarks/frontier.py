"""The speed/fidelity frontier: serial rounds against deviation from the serial sample for every
sampler and setting, on the exact oracle and on the embedded digits model.

    python benchmarks/frontier.py --json outputs/frontier.json --plot outputs/frontier.png
    python benchmarks/frontier.py --models oracle --steps 10 --quick     # a fast smoke run

One line per sampler in the plot (x: serial rounds, y: relative deviation from serial, log);
for the digits model the table also holds FID (against held-out digits, the shipped classifier's
features) and class accuracy. JSON keys: sampler, setting, steps, rounds, evaluations, width,
rel_dev, fid, accuracy, model.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from driffusion.core import (
    BatchedExecutor,
    Model,
    RowwiseModel,
    SamplerSpec,
    Schedule,
    alphas_cumprod_from_betas,
    default_blocks,
    initial_noise,
    run_sampler,
    vp_schedule,
    vp_timesteps,
)
from driffusion.testing import GaussianMixtureDenoiser, VPNoiseLevels

KEYS = [
    "sampler",
    "setting",
    "steps",
    "rounds",
    "evaluations",
    "width",
    "rel_dev",
    "fid",
    "accuracy",
]


def sweep(steps: int, quick: bool) -> list[tuple[str, SamplerSpec]]:
    """(line name, spec) for every point of the frontier at ``steps`` steps."""
    ks = [2, 4] if quick else [2, 3, 4, 6, 8]
    tols = [1e-2, 1e-4] if quick else [1e-2, 1e-3, 1e-4]
    points: list[tuple[str, SamplerSpec]] = [("serial", SamplerSpec("serial"))]
    for fraction in [4, 2] if quick else [8, 4, 2]:
        points.append(
            ("serial_reduced", SamplerSpec("serial_reduced", rounds=max(2, steps // fraction)))
        )
    for k in ks:
        points.append(("aggressive", SamplerSpec("aggressive", drafts=k)))
        points.append(("conservative", SamplerSpec("conservative", drafts=k)))
        points.append(("aggressive_order2", SamplerSpec("aggressive", drafts=k, order=2)))
    for target in [0.05, 0.02] if quick else [0.1, 0.05, 0.02, 0.01]:
        points.append(
            ("aggressive_adaptive", SamplerSpec("aggressive", drafts=8, adaptive_tol=target))
        )
    for tol in tols:
        points.append(("picard_driffusion", SamplerSpec("picard_driffusion", drafts=4, tol=tol)))
        points.append(("paradigms", SamplerSpec("paradigms", window=4, tol=tol)))
        blocks = default_blocks(steps)
        points.append(("srds_pipelined", SamplerSpec("srds_pipelined", blocks=blocks, tol=tol)))
    return points


def oracle_setup(steps: int) -> tuple[Model, torch.Tensor, Schedule, Any]:
    abar = alphas_cumprod_from_betas()
    model = GaussianMixtureDenoiser.random(
        (4, 8, 8), components=8, noise_levels=VPNoiseLevels(abar), seed=0
    )
    x = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, x, vp_schedule(abar, vp_timesteps(steps, spacing="trailing")), None


def digits_setup(steps: int) -> tuple[Model, torch.Tensor, Schedule, Any]:
    from driffusion.models.digits import load_digits

    digits = load_digits()
    labels = torch.arange(10).repeat(5)
    model = BatchedExecutor(RowwiseModel(digits.denoiser(2.0), {"label": labels}))
    x = initial_noise([1000 + k for k in range(len(labels))], (1, 16, 16))
    return model, x, digits.schedule(steps), (digits, labels)


def run(models: list[str], steps_list: list[int], quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    setups: dict[str, Callable[[int], tuple]] = {"oracle": oracle_setup, "digits": digits_setup}
    for name in models:
        for steps in steps_list:
            model, x, schedule, extra = setups[name](steps)
            reference = None
            if extra is not None:
                from driffusion.models.digits import digits_dataset

                reference = digits_dataset("test")[0]
            serial = None
            for line, spec in sweep(steps, quick):
                with torch.inference_mode():
                    result = run_sampler(spec, model, x, schedule)
                serial = result.x if line == "serial" else serial
                assert serial is not None
                diff = (result.x - serial).double()
                row = {
                    "model": name,
                    "sampler": line,
                    "setting": spec.label(),
                    "steps": steps,
                    "rounds": result.stats.rounds,
                    "evaluations": result.stats.evaluations,
                    "width": result.stats.width,
                    "rel_dev": float(diff.norm() / serial.double().norm()),
                    "fid": math.nan,
                    "accuracy": math.nan,
                }
                if extra is not None:
                    from driffusion.eval.digits_fid import digits_fid

                    digits, labels = extra
                    row["accuracy"] = float((digits.classify(result.x) == labels).float().mean())
                    row["fid"] = digits_fid(result.x, reference)["frechet_inception_distance"]
                rows.append(row)
                print(" | ".join(_cell(row[k]) for k in ["model", *KEYS]), flush=True)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["steps"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (model, steps) in zip(axes[0], panels, strict=True):
        mine = [r for r in rows if r["model"] == model and r["steps"] == steps]
        for line in dict.fromkeys(r["sampler"] for r in mine):
            points = sorted((r["rounds"], r["rel_dev"]) for r in mine if r["sampler"] == line)
            points = [(x, max(y, 1e-9)) for x, y in points]  # exact (0) drawn at the floor
            if line == "serial":
                ax.axvline(points[0][0], color="gray", linestyle=":", label="serial")
                continue
            ax.plot(*zip(*points, strict=True), marker="o", label=line)
        ax.set_yscale("log")
        ax.set_xlabel("serial rounds (latency)")
        ax.set_ylabel("relative deviation from serial")
        ax.set_title(f"{model}, {steps} steps")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["oracle", "digits"], choices=["oracle", "digits"]
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50])
    parser.add_argument("--quick", action="store_true", help="fewer settings")
    parser.add_argument("--json", type=Path, default=Path("outputs/frontier.json"))
    parser.add_argument("--plot", type=Path, default=Path("outputs/frontier.png"))
    args = parser.parse_args(argv)
    print(" | ".join(["model", *KEYS]))
    rows = run(args.models, args.steps, args.quick)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    plot(rows, args.plot)
    print(f"wrote {args.json} and {args.plot}")
    return rows


if __name__ == "__main__":
    main()
