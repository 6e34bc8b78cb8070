"""The synthetic guided network of driffusion.testing: its forward is the combination of its
branches, and each branch costs exactly one conv-stack evaluation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from driffusion.core import RowwiseModel, classifier_free_guidance
from driffusion.testing import BranchedConvStack, ConvStackNetwork

SHAPE = (4, 8, 8)
ROWS = 3


def rows_and_times() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, *SHAPE, generator=generator)
    return x, torch.tensor([999.0, 500.0, 1.0])


def flops(work: object) -> int:
    """Floating-point operations that ``work()`` runs (convolutions and matmuls)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        work()  # type: ignore[operator]
    return counter.get_total_flops()


def test_forward_is_the_guidance_combination_of_its_two_branches() -> None:
    network = BranchedConvStack(SHAPE[0], width=16, depth=2, seed=3, guidance=2.5).eval()
    x, t = rows_and_times()
    with torch.inference_mode():
        unconditional = network.evaluate_branches(x, t, torch.zeros(ROWS, dtype=torch.long))
        conditional = network.evaluate_branches(x, t, torch.ones(ROWS, dtype=torch.long))
        guided = network(x, t)
    expected = classifier_free_guidance(unconditional, conditional, 2.5)
    torch.testing.assert_close(guided, expected)
    assert not torch.allclose(unconditional, conditional)  # the branches differ
    assert network.combine(torch.stack([unconditional, conditional]), t).equal(expected)


def test_mixed_branch_rows_are_each_rows_own_branch() -> None:
    """One call of rows under different branches (what a split executor sends) gives each row
    its branch's output: the units of a split are the batched evaluation's rows."""
    network = BranchedConvStack(SHAPE[0], width=16, depth=2, seed=3).eval()
    x, t = rows_and_times()
    branch = torch.tensor([1, 0, 1])
    with torch.inference_mode():
        mixed = network.evaluate_branches(x, t, branch)
        for row in range(ROWS):
            one = slice(row, row + 1)
            torch.testing.assert_close(
                mixed[one], network.evaluate_branches(x[one], t[one], branch[one])
            )


def test_one_branch_costs_one_conv_stack_evaluation() -> None:
    network = BranchedConvStack(SHAPE[0], width=16, depth=3, seed=0).eval()
    stack = ConvStackNetwork(SHAPE[0], width=16, depth=3, seed=0).eval()
    x, t = rows_and_times()
    one_branch = flops(lambda: network.evaluate_branches(x, t, torch.zeros(ROWS, dtype=torch.long)))
    assert one_branch == flops(lambda: stack(x, t)) > 0
    assert flops(lambda: network(x, t)) == network.branches * one_branch


def test_its_stack_is_the_one_branch_network_with_the_same_seed() -> None:
    """The stack's weights are ``ConvStackNetwork``'s from the same seed (that network's own
    behaviour, without a shift, is unchanged)."""
    network = BranchedConvStack(SHAPE[0], width=16, depth=2, seed=5)
    stack = ConvStackNetwork(SHAPE[0], width=16, depth=2, seed=5)
    for mine, theirs in zip(network.stack.parameters(), stack.parameters(), strict=True):
        assert mine.equal(theirs)
    x, t = rows_and_times()
    with torch.inference_mode():
        assert stack.evaluate(x, t).equal(stack(x, t))


def test_rowwise_units_split_and_combined_equal_the_batched_round() -> None:
    """Through ``RowwiseModel``: the units of a round evaluated branch by branch and combined
    equal the batched guided round (what the branch-split executor relies on)."""
    network = BranchedConvStack(SHAPE[0], width=16, depth=2, seed=0).eval()
    model = RowwiseModel(network)
    x, t = rows_and_times()
    xs = x[:, None]  # K = 3 states of B = 1 sample
    with torch.inference_mode():
        outputs = torch.stack(
            [model.evaluate_units(xs, t, torch.full((ROWS,), b)) for b in range(network.branches)]
        )
        torch.testing.assert_close(model.combine(outputs, t), model(xs, t))


@pytest.mark.parametrize("branches", [1, 0, True, 2.0])
def test_it_needs_at_least_two_branches(branches: object) -> None:
    with pytest.raises(ValueError, match="branches"):
        BranchedConvStack(branches=branches)  # type: ignore[arg-type]
