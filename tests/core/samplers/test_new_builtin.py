"""A new built-in sampler is its module and nothing else: written for the test suite only
(``redundant_sampler.py`` beside this file), it is picked up by name on the command line, in
labels and in ``benchmarks/rounds.py`` without editing ``base.py``, ``cli.py``, the registry or
any benchmark."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator

import pytest
import torch

from driffusion.core import Serial, parse_sampler, sampler_names, unregister
from driffusion.lightning import cli
from driffusion.testing import toy_problem


@pytest.fixture
def redundant() -> Iterator[type]:
    """The test-only sampler, registered for one test (the registry is left as it was)."""
    module = importlib.import_module("tests.core.samplers.redundant_sampler")
    module = importlib.reload(module)  # defining the class registers it
    yield module.Redundant
    unregister("redundant")


def test_defining_the_class_registers_it(redundant: type) -> None:
    assert "redundant" in sampler_names()
    assert sampler_names()[-1] == "redundant"  # after the built-ins, in definition order


def test_labels_parse_back(redundant: type) -> None:
    sampler = parse_sampler("redundant(copies=3)")
    assert isinstance(sampler, redundant)
    assert repr(sampler) == "Redundant(copies=3)"
    assert parse_sampler(repr(sampler)) == sampler
    assert parse_sampler("redundant", {"rows": 5}).copies == 5  # its rows setting is copies
    with pytest.raises(ValueError, match="copies must be an integer >= 1"):
        parse_sampler("redundant(copies=0)")


def test_it_samples_and_reports_its_rows(redundant: type) -> None:
    model, x, schedule = toy_problem(steps=6)
    result = redundant(copies=3)(model, x, schedule)
    assert torch.equal(result.x, Serial()(model, x, schedule).x)
    assert result.stats.rows == 3 == redundant(copies=3).rows
    assert result.stats.rounds == 6 and result.stats.evaluations == 18


def test_the_command_line_takes_it(redundant: type) -> None:
    parser = argparse.ArgumentParser()
    cli.add_sampler_args(parser)
    args = parser.parse_args(["--sampler", "redundant", "--sampler", "aggressive"])
    sampler, aggressive = cli.samplers_from_args(args, devices=4, num_steps=None)
    assert isinstance(sampler, redundant) and sampler.copies == 4  # rows from the devices
    assert aggressive.drafts == 4
    args = parser.parse_args(["--sampler", "redundant", "--copies", "2"])  # its own flag
    assert cli.samplers_from_args(args, devices=4, num_steps=None)[0].copies == 2
    assert "redundant" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--copies", "0"])


def test_the_rounds_benchmark_has_its_rows(redundant: type) -> None:
    from benchmarks import rounds

    rows = rounds.main(["--steps", "6", "--rows", "2", "3"])
    mine = [r for r in rows if r["sampler"] == "redundant"]
    assert sorted(r["rows"] for r in mine) == [2, 3]  # its default (2) and rows 3
    assert all(r["rounds"] == 6 and r["max_abs_dev"] == 0.0 for r in mine)
    assert {r["setting"] for r in mine} == {"Redundant(copies=2)", "Redundant(copies=3)"}
