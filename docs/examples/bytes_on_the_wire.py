"""Bytes per round of the draft and branch all-gathers against sequence parallelism per step,
for the published configurations of SD 2.1, SDXL, SD3-medium and FLUX.1-dev at their default
sizes (the numbers come from the configs; nothing here is measured)."""

from driffusion.adapters.wire import (
    format_bytes,
    gather_bytes,
    image_tokens,
    ring_bytes,
    ulysses_bytes,
)
from driffusion.core import RoundPlan

# (name, size, latent channels, VAE scale, guidance branches,
#  transformer: (patch, text tokens, hidden, layers))
MODELS = [
    ("SD 2.1", 768, 4, 8, 2, None),  # UNets: sequence parallelism is not their axis
    ("SDXL", 1024, 4, 8, 2, None),
    ("SD3-medium", 1024, 16, 8, 2, (2, 77 + 256, 24 * 64, 24)),  # CLIP + T5 tokens
    ("FLUX.1-dev", 1024, 16, 8, 1, (2, 512, 24 * 128, 19 + 38)),  # guidance-distilled
]


def table() -> str:
    """The page's table (markdown)."""
    lines = [
        "| model | size | latent | split serial, 2 GPUs | drafts, 4 GPUs "
        "| Ulysses, 4 GPUs | Ring, 4 GPUs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, size, channels, scale, branches, transformer in MODELS:
        side = size // scale
        numel = channels * side * side  # float32 latents: 4 bytes an element
        if branches == 2:  # the exact split; with 4 GPUs, 2 drafts x 2 branches
            split_serial = format_bytes(gather_bytes(numel, RoundPlan(1, 2, 2, split=True)))
            plan = RoundPlan(2, 2, 4, split=True)
        else:  # no branches to split: 4 drafts, one a GPU
            split_serial = "n/a (no branches)"
            plan = RoundPlan(4, 1, 4, split=False)
        drafts = f"{format_bytes(gather_bytes(numel, plan))} ({plan.rows} drafts)"
        if transformer is None:
            ulysses = ring = "n/a (UNet)"
        else:
            patch, text, hidden, layers = transformer
            tokens = image_tokens(size, size, scale, patch) + text
            ulysses = format_bytes(ulysses_bytes(tokens, hidden, layers, 4))
            ring = format_bytes(ring_bytes(tokens, hidden, layers, 4))
        lines.append(
            f"| {name} | {size}^2 | {channels}x{side}x{side} | {split_serial} "
            f"| {drafts} | {ulysses} | {ring} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
