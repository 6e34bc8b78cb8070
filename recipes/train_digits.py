"""Train the embedded digits model and its classifier, and write them in diffusers' format.

    python recipes/train_digits.py --out driffusion/models/digits            # what ships
    fabric run --accelerator cpu --devices 1 recipes/train_digits.py --out /tmp/digits

A class-conditional ``UNet2DModel`` (epsilon prediction, linear betas, 1000 steps) learns
scikit-learn's digits at 16x16 with 10% label dropout (for classifier-free guidance) and an
exponential moving average of its weights; a small CNN learns to classify the same digits.
Deterministic for a seed on a given machine and thread count. Nothing is written until training
has finished: an interrupted run leaves the previous model in place.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from driffusion.io import atomic_write
from driffusion.lightning import Session, add_fabric_args, cli
from driffusion.models.digits import (
    NULL_LABEL,
    REFERENCE,
    SHIPPED,
    DigitsClassifier,
    checksum,
    digits_dataset,
    load_digits,
    reference_sample,
    unet_config,
)


def parse_args() -> argparse.Namespace:
    parser = add_fabric_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--out", type=Path, default=SHIPPED)
    parser.add_argument(
        "--steps", type=cli.positive_int, default=4000, help="UNet optimisation steps"
    )
    parser.add_argument("--batch-size", type=cli.positive_int, default=64)
    parser.add_argument("--lr", type=cli.positive_float, default=2e-3)
    parser.add_argument("--ema", type=cli.nonnegative_float, default=0.999)
    parser.add_argument("--label-dropout", type=cli.nonnegative_float, default=0.1)
    parser.add_argument("--classifier-epochs", type=cli.positive_int, default=30)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0)
    parser.add_argument("--threads", type=cli.positive_int, default=2)
    parser.add_argument(
        "--write-reference",
        action="store_true",
        help="only (re)compute the reference-sample checksum of the model at --out",
    )
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    return args


def random_shift(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate the batch by up to one pixel, filling with background (-1), never wrapping:
    light augmentation that keeps 1437 images from being memorised."""
    dy, dx = (torch.randint(-1, 2, (2,), generator=gen) + 1).tolist()
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]


def train_unet(
    args: argparse.Namespace, fabric, images, labels
) -> tuple[object, object, list[float]]:  # type: ignore[no-untyped-def]
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(args.seed)
    unet = UNet2DModel(**unet_config())
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=False,
    )
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 200

    def lr_at(step: int) -> float:  # linear warm-up, then cosine decay
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    unet, optimizer = fabric.setup(unet, optimizer)
    abar = scheduler.alphas_cumprod.to(fabric.device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    n = images.shape[0]
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(args.steps):
        index = torch.randint(0, n, (args.batch_size,), generator=gen)
        x0 = images[index].to(fabric.device)
        x0 = random_shift(x0, gen)
        label = labels[index].clone()
        drop = torch.rand(args.batch_size, generator=gen) < args.label_dropout
        label[drop] = NULL_LABEL
        t = torch.randint(0, 1000, (args.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise.to(fabric.device)
        pred = unet(xt, t.to(fabric.device), class_labels=label.to(fabric.device)).sample
        loss = F.mse_loss(pred, noise.to(fabric.device))
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p.detach().to(p_ema.device), 1 - args.ema)
        losses.append(float(loss))
        if fabric.global_rank == 0 and (step % 250 == 0 or step == args.steps - 1):
            recent = sum(losses[-250:]) / len(losses[-250:])
            print(
                f"unet step {step:5d}/{args.steps}  loss {recent:.4f}  "
                f"{time.perf_counter() - start:6.1f}s",
                flush=True,
            )
    return ema, scheduler, losses


def train_classifier(
    args: argparse.Namespace, images, labels, test_images, test_labels
) -> tuple[DigitsClassifier, float]:  # type: ignore[no-untyped-def]
    torch.manual_seed(args.seed + 2)
    model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed + 3)
    for _ in range(args.classifier_epochs):
        order = torch.randperm(images.shape[0], generator=gen)
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            x = random_shift(images[index], gen)
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(test_images).argmax(1) == test_labels).float().mean())
    print(
        f"classifier: held-out accuracy {accuracy:.4f} after {args.classifier_epochs} epochs",
        flush=True,
    )
    return model, accuracy


def write_reference(out: Path) -> dict:
    """Store the checksum of the reference sample in ``training.json`` (the test compares it)."""
    trained = load_digits(out)
    meta = dict(trained.training)
    meta["reference_sample"] = {**REFERENCE, **checksum(reference_sample(trained))}
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(out / "training.json", lambda p: p.write_text(text))
    return meta


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.write_reference:
        print(json.dumps(write_reference(args.out)["reference_sample"], indent=2))
        return
    with Session.from_args(args) as session:
        train(args, session)


def train(args: argparse.Namespace, session: Session) -> None:
    fabric = session.fabric
    fabric.seed_everything(args.seed)
    images, labels = digits_dataset("train")
    test_images, test_labels = digits_dataset("test")
    started = time.perf_counter()
    ema, scheduler, losses = train_unet(args, fabric, images, labels)
    unet_seconds = time.perf_counter() - started
    classifier, accuracy = train_classifier(args, images, labels, test_images, test_labels)
    total_seconds = time.perf_counter() - started
    if session.is_leader:
        from safetensors.torch import save_file

        meta = {
            "command": "python " + " ".join(["recipes/train_digits.py", *sys.argv[1:]]),
            "seed": args.seed,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "ema": args.ema,
            "label_dropout": args.label_dropout,
            "threads": args.threads,
            "torch": torch.__version__,
            "unet_parameters": sum(p.numel() for p in ema.parameters()),  # type: ignore[attr-defined]
            "loss_first_250": sum(losses[:250]) / min(250, len(losses)),
            "loss_last_250": sum(losses[-250:]) / min(250, len(losses)),
            "unet_wall_s": round(unet_seconds, 1),
            "total_wall_s": round(total_seconds, 1),
            "classifier_test_accuracy": accuracy,
        }
        # write everything into a temporary sibling folder, then swap it in: never half a model
        args.out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}."))
        staging.chmod(0o755)
        try:
            ema.save_pretrained(staging / "unet")  # type: ignore[attr-defined]
            scheduler.save_pretrained(staging / "scheduler")  # type: ignore[attr-defined]
            save_file(
                {k: v.contiguous() for k, v in classifier.state_dict().items()},
                staging / "classifier.safetensors",
            )
            (staging / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
            keep = [p for p in args.out.iterdir() if p.suffix == ".py"] if args.out.exists() else []
            for extra in keep:
                shutil.copy2(extra, staging / extra.name)
            if args.out.exists():
                shutil.rmtree(args.out)
            staging.rename(args.out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        meta = write_reference(args.out)
        print(json.dumps(meta, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
