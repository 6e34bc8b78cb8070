"""Your own sampler from the public pieces: a "draft-twice" variant of DRiffusion.

A sampler is any callable ``sampler(model, x, schedule, *, callback=None) -> SampleResult``;
subclassing the frozen dataclass ``Sampler`` adds a label (its ``repr``) and settings declared
once with ``setting`` (type, default, bound, help), checked on construction.
It then goes everywhere the built-in ones go, e.g. (2 processes splitting each round):

    fabric run --accelerator cpu --devices 2 --strategy ddp recipes/digits.py \
        --sampler docs/examples/custom_sampler.py:DRAFT_TWICE --steps 20

Run by the test suite (tests/test_docs.py), so it cannot drift from the code.
"""

from dataclasses import dataclass

import torch

from driffusion.core import (
    CountingModel,
    Sampler,
    SampleResult,
    Serial,
    draft,
    evaluate,
    payload,
    predict_x0_eps,
    refine,
    rows_setting,
)
from driffusion.testing import toy_problem


@dataclass(frozen=True, repr=False)
class DraftTwice(Sampler):
    """Conservative-style blocks whose drafts are evaluated twice: once at the drafts, once at
    the refined states, refining after each (3 rounds per block of ``drafts`` steps)."""

    name = "draft_twice"  # its output folder; the name also registers it (--sampler draft_twice)
    drafts: int = rows_setting(3, "steps per block (its rows per round)")

    def __call__(self, model, x, schedule, *, callback=None, check_finite=True):
        counter = CountingModel(model, check_finite=check_finite)
        i, n = 0, schedule.num_steps
        while i < n:
            anchor = evaluate(counter, [x], [i], schedule)[0]
            denoised = predict_x0_eps(x, anchor, schedule, i)[0]
            k = min(self.drafts, n - i)  # steps in this block
            refined, _ = refine(x, anchor[None], schedule, i)
            if k > 1:
                states = draft(x, anchor, schedule, i, k - 1)
                for _ in range(2):  # evaluate at the drafts, then at the refined states
                    outs = evaluate(counter, list(states), list(range(i + 1, i + k)), schedule)
                    refined, _ = refine(x, torch.cat([anchor[None], outs]), schedule, i)
                    states = refined[:-1]
            x, i = refined[-1], i + k
            if callback is not None:
                callback(payload(i, x, denoised, schedule, counter.rounds))
        return SampleResult(x, counter.stats())


DRAFT_TWICE = DraftTwice(drafts=4)

if __name__ == "__main__":
    model, x, schedule = toy_problem(steps=30)
    serial = Serial()(model, x, schedule)
    mine = DraftTwice(drafts=5)(model, x, schedule)
    deviation = float((mine.x - serial.x).abs().max())
    print(f"serial: {serial.stats.rounds} rounds; {DraftTwice(drafts=5)!r}: {mine.stats.rounds}")
    print(f"rounds, max abs deviation {deviation:.2e}")
    assert mine.stats.rounds < serial.stats.rounds
    assert deviation < 0.05
