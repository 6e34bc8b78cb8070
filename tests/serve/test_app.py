"""The HTTP API end to end on one device, the server in a thread of this process: images equal
the sampler module's, progress once a round, cancel, every bad request a 4xx naming its field."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from driffusion.core import Aggressive, BatchedExecutor, RowwiseModel, initial_noise
from driffusion.io.images import to_pil
from driffusion.models.digits import load_digits
from driffusion.serve.client import request as http
from tests.support import decode_png, in_process_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Any]]:
    out = tmp_path_factory.mktemp("serve")
    with in_process_server(out, "--sampler", "aggressive(drafts=2)") as (scheduler, front):
        yield front.url, out, scheduler


def expected_pixels(digit: int, seed: int, steps: int, drafts: int = 2) -> torch.Tensor:
    """The digit as the sampler module samples it, as 8-bit pixels."""
    import numpy as np

    model = load_digits()
    network = BatchedExecutor(RowwiseModel(model.denoiser(2.0), {"label": torch.tensor([digit])}))
    sampler = Aggressive(drafts=drafts, solver="dpmpp_2m")
    with torch.inference_mode():
        x = sampler(network, initial_noise([seed], (1, 16, 16)), model.schedule(steps)).x
    return torch.from_numpy(np.array(to_pil(x[0])))


def events(url: str, request_id: str) -> list[tuple[str, dict]]:
    """Every server-sent event of a request, to its end."""
    found = []
    with urllib.request.urlopen(f"{url}/v1/requests/{request_id}/events", timeout=60) as stream:
        kind = None
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                found.append((kind, json.loads(line[len("data: ") :])))
    return found


def test_health_info_and_the_page(server: tuple[str, Path, Any]) -> None:
    url, _, _ = server
    status, health = http("GET", f"{url}/health")
    assert (status, health["status"]) == (200, "ready")
    status, info = http("GET", f"{url}/info")
    assert status == 200
    assert (info["model"], info["family"], info["devices"]) == ("digits", "digits", 1)
    assert info["layout"] == {"world": 1, "draft_devices": 1, "replicas": 1, "guidance_devices": 1}
    assert "aggressive" in info["samplers"] and "chords" in info["samplers"]
    assert info["defaults"]["steps"] == 50 and info["defaults"]["solver"] == "dpmpp_2m"
    assert info["defaults"]["sampler"] == "aggressive(drafts=2)"
    status, page = http("GET", f"{url}/")
    assert status == 200
    for element in (
        'id="prompt"',
        'id="sampler"',
        'id="steps"',
        'id="seed"',
        'id="go"',
        "<progress",
    ):
        assert element in page
    assert http("GET", f"{url}/v1/models")[1]["data"][0]["id"] == "digits"


def test_an_image_equals_the_samplers_and_is_saved_with_its_settings(
    server: tuple[str, Path, Any],
) -> None:
    url, out, _ = server
    status, body = http(
        "POST",
        f"{url}/v1/images/generations",
        {"prompt": "three", "seed": 300, "steps": 12, "n": 2},
    )
    assert status == 200, body
    assert [item["seed"] for item in body["data"]] == [300, 301]
    for item in body["data"]:
        pixels, text = decode_png(item["b64_json"])
        expected = expected_pixels(3, item["seed"], 12)
        # n images are one batch: equal to each sampled alone within one 8-bit level
        assert (pixels.int() - expected.int()).abs().max() <= 1
        assert text["seed"] == str(item["seed"]) and text["digit"] == "3"
        assert text["sampler"] == "Aggressive(drafts=2, solver='dpmpp_2m')"
    alone = http("POST", f"{url}/v1/images/generations", {"prompt": "3", "seed": 300, "steps": 12})
    assert torch.equal(decode_png(alone[1]["data"][0]["b64_json"])[0], expected_pixels(3, 300, 12))
    stats = body["stats"]
    assert (stats["rounds"], stats["steps"], stats["evaluations"], stats["replica"]) == (
        7,
        12,
        12,
        0,
    )
    assert stats["latency_s"] > 0 and stats["layout"]["draft_devices"] == 1
    saved = sorted(p.name for p in (out / "images").glob(f"{body['id']}-*.png"))
    assert saved == [f"{body['id']}-0.png", f"{body['id']}-1.png"]


def test_progress_comes_once_a_round_and_then_the_answer(server: tuple[str, Path, Any]) -> None:
    url, _, _ = server
    status, ticket = http(
        "POST", f"{url}/v1/images/generations?wait=false", {"prompt": "7", "steps": 30}
    )
    assert status == 202 and ticket["events_url"].endswith("/events")
    found = events(url, ticket["id"])
    kinds = [kind for kind, _ in found]
    assert kinds[0] == "status" and kinds[-1] == "done"
    rounds = [data["rounds"] for kind, data in found if kind == "progress"]
    final = found[-1][1]
    assert rounds == sorted(set(rounds)) and rounds[-1] == final["stats"]["rounds"]
    assert len(rounds) >= final["stats"]["rounds"] - 1  # one event a round
    assert len(final["data"]) == 1
    assert http("GET", f"{url}/v1/requests/{ticket['id']}")[1]["status"] == "done"


def test_a_cancel_stops_a_running_request(server: tuple[str, Path, Any]) -> None:
    url, _, _ = server
    _, ticket = http(
        "POST", f"{url}/v1/images/generations?wait=false", {"prompt": "1", "steps": 1000}
    )
    deadline = time.monotonic() + 60
    while http("GET", f"{url}/v1/requests/{ticket['id']}")[1]["rounds"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert http("POST", f"{url}/v1/requests/{ticket['id']}/cancel")[0] == 200
    found = events(url, ticket["id"])
    assert found[-1][0] == "cancelled"
    assert 2 <= found[-1][1]["stats"]["rounds"] < 500 and found[-1][1]["data"] == []


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{oops", 400, "body"),
        ({"prompt": "3", "sampler": "warp(drafts=2)"}, 400, "sampler"),
        ({"prompt": "3", "sampler": "aggressive(drafts=two)"}, 400, "sampler"),
        ({"prompt": "3", "steps": 0}, 400, "steps"),
        ({"prompt": "3", "steps": 100_000}, 400, "steps"),
        ({"prompt": "3", "n": 100}, 400, "n"),
        ({"prompt": "3", "size": "20x20"}, 400, "size"),
        (b'{"prompt": "3", "guidance": NaN}', 400, "guidance"),
        ({"prompt": "3", "guidance": -2.0}, 400, "guidance"),
        ({"prompt": "3" * 2**20}, 400, "prompt"),
        ({"prompt": "3", "style": "vivid"}, 400, "style"),
    ],
)
def test_every_bad_request_is_a_4xx_naming_its_field(
    server: tuple[str, Path, Any], body: dict | bytes, status: int, param: str
) -> None:
    url, _, scheduler = server
    before = scheduler.counts()["served"]
    got, answer = http("POST", f"{url}/v1/images/generations", body)
    assert (got, answer["error"]["param"]) == (status, param), answer
    assert scheduler.counts()["served"] == before  # refused before the queue: no compute


def test_a_body_over_the_limit_is_refused_unread(server: tuple[str, Path, Any]) -> None:
    import http.client
    from urllib.parse import urlsplit

    url, _, _ = server
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    connection.putrequest("POST", "/v1/images/generations")
    connection.putheader("Content-Length", str(5 * 2**20))
    connection.endheaders()  # the 5 MB are never sent: the answer comes first
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["param"] == "body"
    connection.close()


def test_unknown_requests_and_bad_query_parameters(server: tuple[str, Path, Any]) -> None:
    url, _, _ = server
    assert http("GET", f"{url}/v1/requests/nope")[0] == 404
    status, answer = http("POST", f"{url}/v1/images/generations?wait=maybe", {"prompt": "3"})
    assert (status, answer["error"]["param"]) == (400, "wait")
