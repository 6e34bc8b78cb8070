"""Pipeline families: what a family owns beyond what `parallelize` equals `pipe()` on
(tests/lightning/test_pipeline.py): Wan 2.2's experts per row, video inputs checked by name."""

from __future__ import annotations

import pytest
import torch

from driffusion.adapters.diffusers import PipelineInputError, adapt_pipeline
from driffusion.adapters.tiny import build_tiny_pipeline, tiny_inputs
from driffusion.core import Serial
from driffusion.lightning.pipeline import parallelize


def wan22_network(guidance_2: float):  # type: ignore[no-untyped-def]
    pipe = build_tiny_pipeline("wan22")
    options = {"num_frames": 9, "guidance_scale_2": guidance_2, "max_sequence_length": 16}
    adapter = adapt_pipeline(pipe, 6, height=16, width=16, guidance=3.0, options=options)
    return pipe, adapter


def test_each_row_of_a_wan22_round_runs_the_expert_of_its_own_time() -> None:
    """Rows straddling the boundary in one call: the high-noise rows run `transformer` (guided
    with `guidance_scale`), the others `transformer_2` (with `guidance_scale_2`), each as if
    evaluated apart; one call per expert present."""
    pipe, adapter = wan22_network(1.5)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    times = adapter.schedule.timesteps[:6]
    t = torch.cat([times[times >= boundary][:2], times[times < boundary][:2]]).float()
    assert len(t) == 4  # two rows of each expert
    cond = adapter.encode(["a red cat"] * 4, ["blurry"] * 4)
    x = torch.randn(4, *adapter.latent_shape, generator=torch.Generator().manual_seed(0))
    calls = {"transformer": 0, "transformer_2": 0}
    for name in calls:
        getattr(pipe, name).register_forward_hook(
            lambda module, args, kwargs, out, name=name: calls.__setitem__(
                name, calls[name] + kwargs["hidden_states"].shape[0]
            ),
            with_kwargs=True,
        )
    with torch.no_grad():
        mixed = adapter.network(x, t, **cond)
        assert calls == {"transformer": 4, "transformer_2": 4}  # 2 rows x 2 branches each
        high = adapter.network(x[:2], t[:2], **{k: v[:2] for k, v in cond.items()})
        low = adapter.network(x[2:], t[2:], **{k: v[2:] for k, v in cond.items()})
        torch.testing.assert_close(mixed, torch.cat([high, low]), rtol=1e-5, atol=1e-6)
        same_scale = wan22_network(3.0)[1].network(x, t, **cond)
    assert torch.equal(same_scale[:2], mixed[:2])  # guidance_scale_2 guides the low rows only
    assert not torch.allclose(same_scale[2:], mixed[2:])


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"num_frames": 10}, r"num_frames - 1 must be divisible by 4.*9 or 13"),
        ({"num_frames": 0}, "num_frames must be an integer >= 1"),
        ({"height": 24}, "height must be a positive multiple of 16"),
    ],
)
def test_wan_inputs_are_checked_before_any_compute(
    change: dict, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = build_tiny_pipeline("wan")
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(PipelineInputError, match=text):
        parallelize(pipe, Serial(), progress=False)("a", **{**tiny_inputs("wan"), **change})


def test_guidance_scale_2_without_a_second_expert_is_refused_by_name() -> None:
    pipe = build_tiny_pipeline("wan")
    with pytest.raises(PipelineInputError, match="guidance_scale_2 is only supported"):
        parallelize(pipe, Serial(), progress=False)("a", guidance_scale_2=2.0, **tiny_inputs("wan"))


def test_wan_frames_come_as_the_pipeline_returns_them() -> None:
    pipe = build_tiny_pipeline("wan")
    out = parallelize(pipe, Serial(), progress=False)(
        ["a", "b"], num_inference_steps=2, **tiny_inputs("wan")
    )
    assert out.images is None and out.frames.shape == (2, 9, 16, 16, 3)  # the default "np"
    pil = parallelize(pipe, Serial(), progress=False)(
        "a", num_inference_steps=2, output_type="pil", **tiny_inputs("wan")
    ).frames
    assert len(pil) == 1 and len(pil[0]) == 9 and pil[0][0].size == (16, 16)


def test_skip_layer_guidance_is_a_third_branch_inside_its_window() -> None:
    """SD3.5's skip-layer guidance changes the sample (it is in it: the serial equality with
    `pipe()` is in tests/lightning), only under classifier-free guidance, and its layers are
    checked by name before any compute."""
    pipe = build_tiny_pipeline("sd35")
    ppipe = parallelize(pipe, Serial(), progress=False)
    call = {"num_inference_steps": 6, "height": 32, "width": 32, "output_type": "latent"}

    def run(**extra):  # type: ignore[no-untyped-def]
        generator = torch.Generator().manual_seed(0)
        return ppipe(["a red cat"], generator=generator, **call, **extra)

    plain = run(guidance_scale=3.0).images
    slg = run(guidance_scale=3.0, skip_guidance_layers=[1], skip_layer_guidance_stop=0.6)
    assert slg.stats["options"]["skip_guidance_layers"] == [1]
    assert float((slg.images - plain).abs().max()) > 1e-3 * float(plain.abs().max())
    unguided = run(guidance_scale=1.0, skip_guidance_layers=[1]).images  # no CFG: no SLG
    assert torch.equal(unguided, run(guidance_scale=1.0).images)
    for layers, text in (([5], r"layers of the transformer \(0..1\)"), ("1", "list of integers")):
        with pytest.raises(PipelineInputError, match=text):
            run(guidance_scale=3.0, skip_guidance_layers=layers)


def test_cogvideox_with_rotary_embeddings_and_dynamic_guidance_is_the_pipeline() -> None:
    """CogVideoX-5B's rotary embeddings travel with the rows; dynamic guidance (each row's
    scale from its own time) changes the sample and still equals `pipe()`."""
    from diffusers import CogVideoXTransformer3DModel

    pipe = build_tiny_pipeline("cogvideox")
    config = dict(pipe.transformer.config)
    config["use_rotary_positional_embeddings"] = True
    torch.manual_seed(0)
    pipe.transformer = CogVideoXTransformer3DModel.from_config(config).eval()
    call = {**tiny_inputs("cogvideox"), "num_inference_steps": 10, "output_type": "latent"}
    ours = {}
    for dynamic in (False, True):
        options = {**call, "use_dynamic_cfg": dynamic}
        reference = pipe(["a"], generator=torch.Generator().manual_seed(0), **options).frames
        ours[dynamic] = parallelize(pipe, Serial(), progress=False)(
            ["a"], generator=torch.Generator().manual_seed(0), **options
        ).frames
        scale = float(reference.abs().max())
        assert float((ours[dynamic] - reference).abs().max()) <= 1e-4 * scale
    assert float((ours[True] - ours[False]).abs().max()) > 1e-3 * scale  # the scale per row
