"""Reading requests: every bad request is an ApiError naming its field, before any compute."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driffusion.core import Aggressive, Conservative, Serial
from driffusion.serve.api import (
    MAX_BODY_BYTES,
    MAX_PROMPT_CHARS,
    ApiError,
    Limits,
    read_generation,
    read_sampler,
)
from driffusion.serve.models import DIGIT_NAMES, DigitsServed

LIMITS = Limits(max_n=4, sampler="aggressive", solver="dpmpp_2m", rows=2)


@pytest.fixture(scope="module")
def digits() -> DigitsServed:
    return DigitsServed()


def read(served: DigitsServed, body: dict | bytes) -> object:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return read_generation(data, served, LIMITS)


BAD = [
    (b"{not json", 400, "body"),
    (b"[1, 2]", 400, "body"),
    ({"n": 1}, 400, "prompt"),
    ({"prompt": "3", "unknown": 1}, 400, "unknown"),
    ({"prompt": "3", "sampler": "nope"}, 400, "sampler"),
    ({"prompt": "3", "sampler": "aggressive(drafts=)"}, 400, "sampler"),
    ({"prompt": "3", "sampler": "aggressive(windows=2)"}, 400, "sampler"),
    ({"prompt": "3", "sampler": "os:system"}, 400, "sampler"),
    ({"prompt": "3", "sampler": "evil.py:NAME(x=1)"}, 400, "sampler"),
    ({"prompt": "3", "steps": 0}, 400, "steps"),
    ({"prompt": "3", "steps": 10**6}, 400, "steps"),
    ({"prompt": "3", "steps": "10"}, 400, "steps"),
    ({"prompt": "3", "steps": True}, 400, "steps"),
    ({"prompt": "3", "n": 5}, 400, "n"),
    ({"prompt": "3", "n": 0}, 400, "n"),
    ({"prompt": "3", "size": "17x16"}, 400, "size"),
    ({"prompt": "3", "size": "32x32"}, 400, "size"),
    ({"prompt": "3", "size": "big"}, 400, "size"),
    ({"prompt": "3", "guidance": -1}, 400, "guidance"),
    (b'{"prompt": "3", "guidance": NaN}', 400, "guidance"),
    (b'{"prompt": "3", "guidance": Infinity}', 400, "guidance"),
    ({"prompt": "3" * (MAX_PROMPT_CHARS + 1)}, 400, "prompt"),
    ({"prompt": "x" * 2**20}, 400, "prompt"),
    ({"prompt": "eleven"}, 400, "prompt"),
    ({"prompt": "3", "negative_prompt": "4"}, 400, "negative_prompt"),
    ({"prompt": "3", "seed": -1}, 400, "seed"),
    ({"prompt": "3", "seed": 2**63 - 1, "n": 2}, 400, "seed"),
    ({"prompt": "3", "drafts": 0}, 400, "drafts"),
    ({"prompt": "3", "response_format": "url"}, 400, "response_format"),
    ({"prompt": "3", "model": "flux"}, 404, "model"),
    (b" " * (MAX_BODY_BYTES + 1), 413, "body"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD, ids=[f"{s}-{p}" for _, s, p in BAD])
def test_a_bad_request_is_refused_naming_its_field(
    digits: DigitsServed, body: dict | bytes, status: int, param: str
) -> None:
    with pytest.raises(ApiError) as caught:
        read(digits, body)
    assert (caught.value.status, caught.value.param) == (status, param)
    error = caught.value.body()["error"]
    assert error["param"] == param and error["message"]
    assert len(error["message"]) < 1000  # a huge prompt is not echoed back


def test_a_request_takes_the_servers_defaults_and_its_own_fields(digits: DigitsServed) -> None:
    plain = read(digits, {"prompt": "three"})
    assert (plain.condition, plain.steps, plain.guidance, plain.seed, plain.n) == (3, 50, 2.0, 0, 1)
    assert (plain.width, plain.height) == (16, 16)
    assert plain.sampler == Aggressive(drafts=2, solver="dpmpp_2m")
    given_ = read(
        digits,
        {"prompt": " 7 ", "n": 3, "seed": 10, "steps": 20, "guidance": 0, "size": "16x16"},
    )
    assert (given_.condition, given_.seeds, given_.steps, given_.guidance) == (
        7,
        [10, 11, 12],
        20,
        0,
    )
    assert read(digits, {"prompt": "3", "model": "digits"}).condition == 3


def test_the_sampler_label_takes_drafts_and_the_servers_solver() -> None:
    assert read_sampler("aggressive", 4, 50, LIMITS) == Aggressive(drafts=4, solver="dpmpp_2m")
    assert read_sampler("aggressive(drafts=3)", 4, 50, LIMITS) == Aggressive(
        drafts=3, solver="dpmpp_2m"
    )  # the label wins over the field
    assert read_sampler("conservative", None, 50, LIMITS) == Conservative(
        drafts=2, solver="dpmpp_2m"
    )
    assert read_sampler("serial(solver='ddim')", None, 50, LIMITS) == Serial(solver="ddim")
    # without drafts, no more than measured safe over the steps (as the recipes default)
    assert read_sampler("aggressive", None, 3, Limits(rows=8)).drafts < 8


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=30) | st.sampled_from(["²", "٣", "03", " Nine", "10"]))
def test_only_a_digit_is_a_digits_prompt(text: str) -> None:
    served = DigitsServed.__new__(DigitsServed)  # condition() reads no weights
    word = text.strip().lower()
    is_digit = word in DIGIT_NAMES or (word.isdigit() and word.isascii() and int(word) < 10)
    try:
        digit = served.condition(text, None)
    except ApiError as error:
        assert error.param == "prompt" and not is_digit
    else:
        assert is_digit and 0 <= digit < 10
