"""The HTTP API's requests: OpenAI's image-generation shape plus driffusion's own fields, read
and checked in full before any compute.

A request body is read by [`read_generation`][driffusion.serve.api.read_generation] into a
[`Generation`][driffusion.serve.api.Generation], the value every rank of a draft group runs; any
fault is an [`ApiError`][driffusion.serve.api.ApiError] with an HTTP status and the field it
names (OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from driffusion.core.samplers.base import SamplerFn
from driffusion.core.samplers.registry import parse_sampler

MAX_BODY_BYTES = 4 * 2**20
"""The largest request body read (413 above it)."""
MAX_PROMPT_CHARS = 4000
"""The longest prompt (and negative prompt) taken."""
MAX_SEED = 2**63 - 1
"""The largest seed: ``seed + n - 1`` must fit a torch generator."""
SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx: the client's; 5xx: the server's) and the
    field at fault (``param``; ``None`` when it is no one field)."""

    def __init__(
        self, status: int, param: str | None, message: str, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.message = message
        self.kind = kind

    def body(self) -> dict[str, Any]:
        """The JSON answer."""
        return {
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}
        }


class GenerationRequest(BaseModel):
    """``POST /v1/images/generations``: OpenAI's fields, then driffusion's.

    Unknown fields are refused, and so are values of the wrong JSON type (strict: ``"10"`` is
    not a number of steps).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json"] = "b64_json"
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(None, ge=1)
    guidance: float | None = Field(None, ge=0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    sampler: str | None = Field(None, max_length=200)
    drafts: int | None = Field(None, ge=1, le=1024)


@dataclass(frozen=True)
class Generation:
    """One checked request: what a draft group samples.

    Image ``i`` of ``n`` starts from seed ``seed + i`` (as the recipes number their seeds), so
    an image depends on its seed, the sampler and the settings, never on the replica.
    """

    prompt: str
    condition: Any
    negative_prompt: str | None
    n: int
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    sampler: SamplerFn
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def seeds(self) -> list[int]:
        """Each image's seed."""
        return [self.seed + i for i in range(self.n)]

    def settings(self) -> dict[str, Any]:
        """What determines the images (saved with each of them)."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "size": f"{self.width}x{self.height}",
            "steps": self.steps,
            "guidance": self.guidance,
            "sampler": repr(self.sampler),
        }


class ServedModel(Protocol):
    """What the server needs of a model: its name, size rules and defaults, how a prompt
    becomes its condition, and how a draft group generates.

    Attributes:
        name: the model's name (``/info``; a request's ``model`` must match it).
        family: ``"digits"`` or a diffusers family name.
        width, height: the default size.
        multiple: a size's width and height must be multiples of it.
        steps, guidance: the defaults.
        max_steps: the most steps a request may ask for.
        warmup_prompt: the prompt of the warm-up request.
        solver: the built-in samplers' solver by default (``None``: the model's own grid and
            method, e.g. a pipeline's scheduler).
    """

    name: str
    family: str
    width: int
    height: int
    multiple: int
    steps: int
    guidance: float
    max_steps: int
    warmup_prompt: str
    solver: str | None

    def condition(self, prompt: str, negative_prompt: str | None) -> Any:
        """The network's condition for ``prompt`` (picklable); an ``ApiError`` naming the field
        the model cannot take."""
        ...

    def check_size(self, width: int, height: int) -> None:
        """An ``ApiError`` naming ``size`` for a size the model cannot sample."""
        ...


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and the server's defaults for its sampler.

    Attributes:
        max_n: images per request.
        sampler: the default sampler label.
        solver: the built-in samplers' solver (``None``: each sampler's own).
        rows: the draft-group size: a sampler's rows when neither the label nor ``drafts``
            gives them (no more drafts than were measured safe over the steps).
    """

    max_n: int = 4
    sampler: str = "aggressive"
    solver: str | None = None
    rows: int = 1


def read_generation(body: bytes, served: ServedModel, limits: Limits) -> Generation:
    """Read a request body into a [`Generation`][driffusion.serve.api.Generation].

    Raises:
        ApiError: 413 for a body over ``MAX_BODY_BYTES``, else 400 naming the field: JSON that
            does not parse (``body``), an unknown field, a value of the wrong type or out of
            range, ``n`` over the limit, steps over the model's, a size the model cannot take,
            a prompt the model cannot read, a sampler label that is unknown or malformed
            (import paths are refused: a request must not load code).
    """
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "body", f"request body over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "body", f"invalid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body", "the body must be a JSON object")
    try:
        request = GenerationRequest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, param, f"{param}: {first['msg']}") from None
    if request.model is not None and request.model != served.name:
        raise ApiError(
            404, "model", f"model {request.model!r} is not served; this is {served.name!r}"
        )
    if request.n > limits.max_n:
        raise ApiError(400, "n", f"n: at most {limits.max_n} images per request, got {request.n}")
    if request.seed is not None and request.seed + request.n - 1 > MAX_SEED:
        raise ApiError(400, "seed", f"seed: seed + n - 1 must be <= {MAX_SEED}")
    steps = served.steps if request.steps is None else request.steps
    if steps > served.max_steps:
        raise ApiError(400, "steps", f"steps: at most {served.max_steps}, got {steps}")
    width, height = served.width, served.height
    if request.size is not None:
        match = SIZE.match(request.size)
        if match is None:
            raise ApiError(
                400, "size", f"size: 'WIDTHxHEIGHT', e.g. '512x512', got {request.size!r}"
            )
        width, height = int(match[1]), int(match[2])
        if width % served.multiple or height % served.multiple:
            raise ApiError(
                400, "size", f"size: width and height must be multiples of {served.multiple}"
            )
        served.check_size(width, height)
    condition = served.condition(request.prompt, request.negative_prompt)
    sampler = read_sampler(request.sampler or limits.sampler, request.drafts, steps, limits)
    guidance = served.guidance if request.guidance is None else request.guidance
    return Generation(
        prompt=request.prompt,
        condition=condition,
        negative_prompt=request.negative_prompt,
        n=request.n,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seed=0 if request.seed is None else request.seed,
        sampler=sampler,
    )


def read_sampler(label: str, drafts: int | None, steps: int, limits: Limits) -> SamplerFn:
    """A built-in sampler from its label, with the server's solver, and ``drafts`` (else the
    draft-group size, as the recipes take it) for its rows when the label does not set them.

    Raises:
        ApiError: 400 naming ``sampler`` for an import path, an unknown name or a malformed or
            unknown setting.
    """
    head = label.split("(", 1)[0]
    if ":" in head:
        raise ApiError(400, "sampler", "sampler: import paths are not taken over HTTP")
    defaults: dict[str, Any] = {"rows": drafts if drafts is not None else limits.rows}
    if drafts is None:  # the measured-safe drafts over these steps, as the recipes default
        defaults["num_steps"] = steps
    if limits.solver is not None:
        defaults["solver"] = limits.solver
    try:
        return parse_sampler(label, defaults)
    except (ValueError, TypeError) as error:
        message = str(error).split(", or give an import path")[0]  # not over HTTP
        raise ApiError(400, "sampler", f"sampler: {message}") from None
