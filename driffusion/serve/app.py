"""The HTTP face of the server (FastAPI), on rank 0: it reads and checks requests, queues them on
the [`Scheduler`][driffusion.serve.dispatch.Scheduler] and answers from their tickets; it never
samples. Routes:

- ``POST /v1/images/generations``: OpenAI's shape (``prompt``, ``n``, ``size``,
  ``response_format: "b64_json"``) plus ``negative_prompt``, ``steps``, ``guidance``, ``seed``,
  ``sampler`` (a built-in label) and ``drafts``. Answers ``{"created", "id", "data": [{"b64_json",
  "seed"}], "stats"}`` once done; with ``?wait=false`` it answers ``202`` and the request's id at
  once.
- ``GET /v1/requests/{id}`` (status and progress; the answer once done),
  ``GET /v1/requests/{id}/events`` (server-sent events: ``progress`` once a round, then
  ``done``, ``cancelled`` or ``error``), ``POST /v1/requests/{id}/cancel`` (after the current
  round).
- ``GET /health`` (``200`` once the weights are loaded and a warm-up request has run, else
  ``503``), ``GET /info``, ``GET /v1/models``, and ``GET /``: a page to try it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from driffusion.serve.api import MAX_BODY_BYTES, ApiError, Limits, ServedModel, read_generation
from driffusion.serve.dispatch import Scheduler, Ticket

EVENT_POLL_S = 0.05


def answer(ticket: Ticket, layout: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` of a finished request: its images and stats, or its error."""
    if ticket.status == "failed" and ticket.error is not None:
        return ticket.error.status, {"id": ticket.id, **ticket.error.body()}
    generation = ticket.generation
    stats: dict[str, Any] = {
        "rounds": ticket.rounds,
        "steps": generation.steps,
        "sampler": repr(generation.sampler),
        "replica": ticket.replica,
        "layout": layout,
        "queue_s": (ticket.started or ticket.created) - ticket.created,
        "latency_s": (ticket.finished or 0.0) - (ticket.started or ticket.created),
    }
    data: list[dict[str, Any]] = []
    if ticket.result is not None:
        result = ticket.result.stats
        stats.update(
            {
                "rounds": result.get("rounds", ticket.rounds),
                "evaluations": result.get("evaluations"),
                "rows": result.get("rows"),
                "guidance_devices": result.get("guidance_devices", 1),
            }
        )
        data = [
            {"b64_json": base64.b64encode(png).decode("ascii"), "seed": seed}
            for png, seed in zip(ticket.result.images, generation.seeds, strict=True)
        ]
    return 200, {
        "created": int(ticket.created),
        "id": ticket.id,
        "status": ticket.status,
        "data": data,
        "stats": stats,
    }


def make_app(
    scheduler: Scheduler,
    served: ServedModel,
    limits: Limits,
    info: dict[str, Any],
) -> FastAPI:
    """The FastAPI application.

    Args:
        scheduler: the queue the requests go to.
        served: the model (for reading requests).
        limits: what a request may ask for, and the default sampler.
        info: ``GET /info``'s body (model, family, devices, layout, samplers, defaults).
    """
    app = FastAPI(title="driffusion", docs_url=None, redoc_url=None)
    layout = info["layout"]
    page = resources.files("driffusion.serve").joinpath("page.html").read_text()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        param = str(first["loc"][-1])
        return JSONResponse(ApiError(400, param, f"{param}: {first['msg']}").body(), 400)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> JSONResponse:
        state = scheduler.state
        body = {"status": state, **scheduler.counts()}
        if scheduler.failure is not None:
            body["error"] = scheduler.failure
        return JSONResponse(body, status_code=200 if state == "ready" else 503)

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return {**info, "status": scheduler.state, **scheduler.counts()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": served.name, "object": "model", "owned_by": "driffusion"}
        return {"object": "list", "data": [model]}

    @app.post("/v1/images/generations")
    async def generations(request: Request, wait: bool = True) -> Response:
        body = await read_body(request)
        ticket = scheduler.submit(read_generation(body, served, limits))
        if not wait:
            return JSONResponse(
                {
                    **ticket.view(),
                    "status_url": f"/v1/requests/{ticket.id}",
                    "events_url": f"/v1/requests/{ticket.id}/events",
                },
                status_code=202,
            )
        await asyncio.wrap_future(ticket.future)
        status, content = answer(ticket, layout)
        return JSONResponse(content, status_code=status)

    @app.get("/v1/requests/{request_id}")
    async def status(request_id: str) -> JSONResponse:
        ticket = scheduler.get(request_id)
        if not ticket.future.done():
            return JSONResponse(ticket.view())
        code, content = answer(ticket, layout)
        return JSONResponse(content, status_code=code)

    @app.post("/v1/requests/{request_id}/cancel")
    async def cancel(request_id: str) -> dict[str, Any]:
        return scheduler.cancel(request_id).view()

    @app.get("/v1/requests/{request_id}/events")
    async def events(request_id: str) -> StreamingResponse:
        ticket = scheduler.get(request_id)

        async def stream() -> AsyncIterator[str]:
            sent = 0
            yield sse("status", ticket.view())
            while True:
                done = ticket.future.done()  # before the events: none is missed at the end
                while sent < len(ticket.events):
                    yield sse("progress", ticket.events[sent])
                    sent += 1
                if done:
                    code, content = answer(ticket, layout)
                    yield sse("error" if code >= 400 else ticket.status, content)
                    return
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) past ``MAX_BODY_BYTES`` without reading it all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, "body", f"request body over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "body", f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
