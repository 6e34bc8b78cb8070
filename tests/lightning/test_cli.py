"""One set of sampler and session flags (driffusion.lightning.cli): samplers from the flags, and
bad flags stop the parser."""

from __future__ import annotations

import argparse

import pytest

from driffusion.core import Aggressive, ParaDiGMS, Serial
from driffusion.lightning import (
    add_sampler_args,
    add_session_args,
    check_sampler_args,
    samplers_from_args,
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_session_args(parser)
    add_sampler_args(parser, default=("serial", "aggressive"), solver="dpmpp_2m")
    args = parser.parse_args(argv)
    check_sampler_args(parser, args)
    return args


def test_one_set_of_sampler_flags() -> None:
    args = parse([])
    assert samplers_from_args(args, devices=4, num_steps=None) == [
        Serial(solver="dpmpp_2m"),
        Aggressive(drafts=4, solver="dpmpp_2m"),
    ]
    args = parse(["--sampler", "aggressive(drafts=3)", "--sampler", "paradigms", "--tol", "0.01"])
    assert samplers_from_args(args, devices=2, num_steps=None) == [
        Aggressive(drafts=3, solver="dpmpp_2m"),
        ParaDiGMS(window=2, tol=0.01, solver="dpmpp_2m"),
    ]
    assert args.timeout == 180.0 and args.draft_devices is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--sampler", "nope"],
        ["--sampler", "aggressive(drafts=0)"],
        ["--drafts", "0"],
        ["--tol", "nan"],
        ["--tol", "-1"],
        ["--timeout", "0"],
        ["--draft-devices", "0"],
        ["--guidance-devices", "3"],
        ["--guidance-devices", "0"],
        ["--guidance-devices", "two"],
    ],
)
def test_bad_sampler_flags_stop_the_parser(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as raised:
        parse(argv)
    assert raised.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "world"),
    [([], 1), (["--devices", "3"], 3), (["--devices", "2", "--num-nodes", "2"], 4)],
)
def test_the_world_size_is_known_before_any_process_starts(
    argv: list[str], world: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driffusion.lightning.cli import planned_world_size

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert planned_world_size(parse(["--accelerator", "cpu", *argv])) == world
    monkeypatch.setenv("WORLD_SIZE", "6")  # a rank a launcher started knows it from there
    assert planned_world_size(parse(argv)) == 6


def test_a_usage_error_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    from driffusion.core import UsageError
    from driffusion.lightning.cli import exit_on_usage_error

    def main() -> None:
        raise UsageError("--out /x is a file, not a folder")

    with pytest.raises(SystemExit) as stop:
        exit_on_usage_error(main)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: --out /x is a file, not a folder\n"
    with pytest.raises(KeyError):  # anything else is a bug: it propagates with its traceback
        exit_on_usage_error(lambda: {}["x"])


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("2", 2), ("auto", "auto")])
def test_guidance_devices_reach_the_session(text: str, value: object) -> None:
    from driffusion.lightning import Session

    args = parse(["--guidance-devices", text])
    assert args.guidance_devices == value
    assert Session.from_args(args).guidance_devices == value
    assert parse([]).guidance_devices == 1  # as before: a row's branches on one device


def test_a_session_refuses_other_guidance_devices() -> None:
    from driffusion.lightning import Session

    with pytest.raises(ValueError, match="guidance_devices must be 1, 2 or 'auto'"):
        Session(guidance_devices=4)
