"""A `ParallelPipeline` call checks its arguments before any compute (each error names the
argument), leaves the wrapped pipeline's scheduler and components as they were (also when it
raises), and gives from threads the images it gives one by one (issue 25)."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from driffusion.adapters.families import Call, pipeline_family
from driffusion.adapters.tiny import build_tiny_pipeline
from driffusion.core import Aggressive, UsageError
from driffusion.lightning.pipeline import parallelize

CALL = {"num_inference_steps": 3, "guidance_scale": 3.0, "height": 32, "width": 32}
PROMPTS = ["a red cat", "two dogs"]


@pytest.fixture(scope="module", params=["sdxl", "sd3", "flux"])
def pipe(request: pytest.FixtureRequest) -> Any:
    return build_tiny_pipeline(request.param)


@pytest.fixture(scope="module")
def sd21() -> Any:
    return build_tiny_pipeline("sd21")


@pytest.fixture
def compute(pipe: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the pipeline parts that ran: every module component's forward (text
    encoders, UNet / transformer, VAE), ``encode_prompt`` and ``prepare_latents``."""
    ran: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda *_, name=name: ran.append(name))
        for name, module in pipe.components.items()
        if isinstance(module, nn.Module)
    ]
    for method in ("encode_prompt", "prepare_latents"):
        original = getattr(pipe, method)

        def counted(*args: Any, _original: Any = original, _name: str = method, **kw: Any) -> Any:
            ran.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(pipe, method, counted)
    yield ran
    for handle in handles:
        handle.remove()


def latent_shape(pipe: Any, batch: int = 2, size: int = 32) -> tuple[int, ...]:
    """``(batch, *state)``: ``(C, h, w)``, FLUX's packed ``(tokens, 4C)``."""
    family = pipeline_family(pipe)
    call = Call(pipe, size, size, 6, dict(family.call_options))
    return (batch, *family.latent_shape(call))


def latents_of(change: Callable[[tuple[int, ...]], tuple[int, ...]]) -> Callable[[Any], Any]:
    return lambda pipe: {"latents": torch.zeros(change(latent_shape(pipe)))}


# (name, keyword arguments of the call given the pipe, error type, text the message must hold)
BAD_INPUTS: list[tuple[str, Callable[[Any], dict[str, Any]], type[Exception], str]] = [
    ("steps-0", lambda p: {"num_inference_steps": 0}, ValueError, "num_inference_steps"),
    ("steps-negative", lambda p: {"num_inference_steps": -2}, ValueError, "num_inference_steps"),
    ("steps-float", lambda p: {"num_inference_steps": 2.0}, TypeError, "num_inference_steps"),
    ("steps-bool", lambda p: {"num_inference_steps": True}, TypeError, "num_inference_steps"),
    ("height-0", lambda p: {"height": 0}, ValueError, "height must be a positive multiple"),
    ("height-negative", lambda p: {"height": -32}, ValueError, "height"),
    ("height-odd", lambda p: {"height": 33}, ValueError, "height must be a positive multiple"),
    ("height-float", lambda p: {"height": 32.0}, TypeError, "height"),
    ("width-0", lambda p: {"width": 0}, ValueError, "width must be a positive multiple"),
    ("latents-size", latents_of(lambda s: (*s[:2], 5, 5)), ValueError, "latents must have shape"),
    ("latents-channels", latents_of(lambda s: (s[0], s[1] + 1, *s[2:])), ValueError, "latents"),
    ("latents-batch", latents_of(lambda s: (1, *s[1:])), ValueError, "latents must have shape"),
    ("latents-rank", latents_of(lambda s: s[1:]), ValueError, "latents must have shape"),
    ("latents-array", lambda p: {"latents": np.zeros(latent_shape(p))}, TypeError, "latents"),
    ("prompt-none", lambda p: {"prompt": None}, ValueError, "prompt is required"),
    ("prompt-empty", lambda p: {"prompt": []}, ValueError, "prompt is an empty list"),
    ("prompt-entry", lambda p: {"prompt": ["a", 3]}, TypeError, "prompt must hold strings"),
    ("prompt-number", lambda p: {"prompt": 3}, TypeError, "prompt must be a string"),
    ("per-prompt-0", lambda p: {"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
    ("negative-count", lambda p: {"negative_prompt": ["x"] * 3}, ValueError, "negative_prompt"),
    ("negative-entry", lambda p: {"negative_prompt": [None]}, TypeError, "negative_prompt"),
    ("generators", lambda p: {"generator": [torch.Generator()] * 3}, ValueError, "generator"),
    ("generator-seed", lambda p: {"generator": 0}, TypeError, "generator"),
    ("guidance-text", lambda p: {"guidance_scale": "high"}, TypeError, "guidance_scale"),
    ("guidance-bool", lambda p: {"guidance_scale": True}, TypeError, "guidance_scale"),
    ("guidance-nan", lambda p: {"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
    ("guidance-inf", lambda p: {"guidance_scale": float("inf")}, ValueError, "guidance_scale"),
    ("output-type", lambda p: {"output_type": "jpeg"}, ValueError, "output_type"),
    ("callback", lambda p: {"callback": 3}, TypeError, "callback"),
    ("keyword-unknown", lambda p: {"bogus_option": 1}, TypeError, "no keyword 'bogus_option'"),
    (  # a keyword of the pipeline that the parallel sampler does not honour
        "keyword-not-honoured",
        lambda p: {"callback_on_step_end_tensor_inputs": ["latents"]},
        ValueError,
        "callback_on_step_end_tensor_inputs is a keyword of .* does not honour",
    ),
]


@pytest.mark.parametrize(
    ("make", "error", "text"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_a_bad_argument_is_a_usage_error_naming_it_before_any_compute(
    pipe: Any, compute: list[str], make: Callable[[Any], dict[str, Any]], error: type, text: str
) -> None:
    kwargs = {**CALL, "prompt": PROMPTS, **make(pipe)}
    with pytest.raises(error, match=text) as raised:
        parallelize(pipe, Aggressive(drafts=2), progress=False)(**kwargs)
    assert isinstance(raised.value, UsageError)
    assert compute == []


def test_the_compute_counter_sees_a_call_of_accepted_types(pipe: Any, compute: list[str]) -> None:
    """The control of the test above: numpy numbers, a tuple of prompts, latents and a list of
    generators of the right shape and length go through, and the counter sees them run."""
    out = parallelize(pipe, Aggressive(drafts=2), progress=False)(
        tuple(PROMPTS),
        num_inference_steps=np.int64(2),
        guidance_scale=np.float32(3.0),
        height=32,
        width=32,
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(i) for i in range(4)],
        output_type="latent",
    )
    assert tuple(out.images.shape) == latent_shape(pipe, batch=4)
    assert "encode_prompt" in compute and "prepare_latents" in compute and "text_encoder" in compute
    assert "transformer" in compute or "unet" in compute
    assert "vae" not in compute  # latents asked for: nothing decoded


@pytest.mark.parametrize(
    ("sampler", "error", "text"),
    [
        ("bogus", ValueError, "sampler 'bogus' cannot be read: unknown sampler"),
        ("aggressive(drafts=0)", ValueError, "sampler 'aggressive.drafts=0.' cannot be read"),
        ("aggressive(drafts=", ValueError, "sampler"),
        (3, TypeError, "sampler must be a sampler"),
        (object(), TypeError, "sampler must be a sampler"),
    ],
)
def test_a_bad_sampler_is_refused_by_parallelize(
    sd21: Any, sampler: Any, error: type, text: str
) -> None:
    with pytest.raises(error, match=text) as raised:
        parallelize(sd21, sampler)
    assert isinstance(raised.value, UsageError)


def test_a_sampler_label_is_parsed_with_the_devices_as_rows(sd21: Any) -> None:
    assert parallelize(sd21, "aggressive(drafts=2)").sampler == Aggressive(drafts=2)
    assert parallelize(sd21, "aggressive").sampler == Aggressive(drafts=1)  # one device
    assert parallelize(sd21).sampler == Aggressive(drafts=2)  # the default, as before
    out = parallelize(sd21, "serial", progress=False)("a", output_type="latent", **CALL)
    assert out.stats["sampler"].startswith("Serial(") and out.stats["rounds"] == 3


# --- the wrapped pipeline is left as it was ------------------------------------------------


def snapshot(pipe: Any) -> dict[str, Any]:
    """The scheduler's state (timesteps, sigmas, step index, ...), the components by identity,
    their weights' dtypes, and the pipeline's config."""
    return {
        "scheduler": copy.deepcopy(vars(pipe.scheduler)),
        "components": {name: id(module) for name, module in pipe.components.items()},
        "dtypes": {
            name: {p.dtype for p in module.parameters()}
            for name, module in pipe.components.items()
            if isinstance(module, nn.Module)
        },
        "config": dict(pipe.config),
    }


def assert_same(before: Any, after: Any) -> None:
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor) and torch.equal(before, after)
    elif isinstance(before, dict):
        assert isinstance(after, dict) and before.keys() == after.keys()
        for key in before:
            assert_same(before[key], after[key])
    else:
        assert before == after or (before != before and after != after)  # NaN == NaN here


class Boom(RuntimeError):
    pass


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Boom("raised on purpose")


def test_a_call_leaves_the_scheduler_and_components_as_they_were(
    pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = pipe.scheduler
    before = snapshot(pipe)
    ppipe = parallelize(pipe, Aggressive(drafts=2), progress=False)
    ppipe(PROMPTS, output_type="pt", **CALL)
    ppipe(PROMPTS, output_type="latent", **{**CALL, "num_inference_steps": 4})
    assert pipe.scheduler is scheduler
    assert_same(before, snapshot(pipe))
    assert getattr(pipe.scheduler, "num_inference_steps", None) is None  # never set
    with pytest.raises(Boom):  # raises in the sampler, after the initial latents
        parallelize(pipe, boom, progress=False)(PROMPTS, **CALL)
    assert pipe.scheduler is scheduler
    assert_same(before, snapshot(pipe))
    monkeypatch.setattr(pipe, "prepare_latents", boom)  # raises while drawing the latents
    with pytest.raises(Boom):
        ppipe(PROMPTS, **CALL)
    assert pipe.scheduler is scheduler
    assert_same(before, snapshot(pipe))


# --- threads -------------------------------------------------------------------------------


def test_calls_from_threads_give_the_images_of_the_same_calls_one_by_one(
    pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 threads x 2 calls, on two ParallelPipelines wrapping one pipeline, each call with its
    own prompt, seed and step count (the initial noise of an Euler-family scheduler depends on
    the steps): the latents equal those of the same calls made one by one. Drawing the initial
    latents is slowed down so that, were calls not serialised, others would run in between."""
    wrappers = [parallelize(pipe, Aggressive(drafts=2), progress=False) for _ in range(2)]
    calls = [(f"prompt {i}", 100 + i, 2 + i % 4) for i in range(8)]

    def run(index: int) -> torch.Tensor:
        prompt, seed, steps = calls[index]
        out = wrappers[index % 2](
            prompt,
            generator=torch.Generator().manual_seed(seed),
            **{**CALL, "num_inference_steps": steps},
            output_type="latent",
        )
        return out.images

    alone = [run(i) for i in range(len(calls))]
    original = pipe.prepare_latents

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipe, "prepare_latents", slow)
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(first: int) -> None:
        start.wait()
        for index in (first, first + 4):
            try:
                results[index] = run(index)
            except BaseException as error:  # reported below
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sorted(results) == list(range(len(calls)))
    for index, expected in enumerate(alone):
        assert torch.equal(results[index], expected), f"call {index} {calls[index]}"
