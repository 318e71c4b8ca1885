"""What the real Codex CLI sends when its image tool meets failures: no imagegate involved.

`FakeTextUpstream` stands in for a whole gateway: it plays the Responses API (the model's turns)
and, through an added route, `POST /v1/images/generations`. These tests pin down the Codex
behaviour that imagegate's implicit idempotency (`x-codex-image-turn-id`) relies on:

- a failed image call (500) is retried, 5 requests in all, each with the same
  `x-codex-image-turn-id` and the same body — so (key, turn id, body digest) names one job;
- that id is the id of the user's turn (`turn_id` of `x-codex-turn-metadata`), not of the tool
  call: every image call of one turn carries it. Two calls with the same prompt in one turn send
  identical requests, which the gateway cannot tell from a retry.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from threading import Lock

import pytest
from PIL import Image

from codex_cli import (
    ACTOR_HEADER,
    ACTOR_VALUE,
    CodexHome,
    imagegen_call,
    require_codex,
    returned_image,
    run_codex,
)
from fake_text import FakeTextUpstream, Recorded, Reply, error_reply, json_reply, message_item, responses_turn
from support import PNG_MAGIC, gradient_png

API_KEY = "sk-codex-capture-0123456789"
IMAGES_PATH = "/v1/images/generations"
# Codex retries a 500: five requests in all.
FAILURES = 4
ATTEMPTS = FAILURES + 1


class ImagesEndpoint:
    """`POST /v1/images/generations`: 500 to the first `failures` requests, then a 200 with one
    PNG (`b64_json`, integer `created`). Records when each request arrived."""

    def __init__(self, failures: int, png: bytes):
        self.failures = failures
        self.png = png
        self.arrivals: list[tuple[float, Recorded]] = []
        self._lock = Lock()

    def __call__(self, request: Recorded) -> Reply:
        with self._lock:
            self.arrivals.append((time.monotonic(), request))
            failing = len(self.arrivals) <= self.failures
        if failing:
            return error_reply(500, "The server had an error while processing your request.", "server_error")
        return json_reply(
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(self.png).decode()}],
                "output_format": "png",
            }
        )


def turn_metadata(request: Recorded) -> dict:
    raw = request.headers.get("x-codex-turn-metadata")
    assert raw, f"no x-codex-turn-metadata header: {sorted(request.headers)}"
    return json.loads(raw)


@pytest.fixture
def codex_binary() -> Path:
    return require_codex()


def test_image_turn_id_is_the_same_on_every_retry(codex_binary: Path, tmp_path: Path) -> None:
    """Four 500s then a 200: Codex sends five image requests carrying one
    `x-codex-image-turn-id` (the turn's id) and one body, then saves the PNG of the 200 and gives
    it back to the model."""
    png = gradient_png(24, 24, seed=90)
    images = ImagesEndpoint(FAILURES, png)
    with FakeTextUpstream() as fake:
        fake.route("POST", IMAGES_PATH, images)
        fake.script(
            responses_turn(
                [imagegen_call("call_1", "a red square")],
                input_tokens=100, output_tokens=20, minimal=True,
            ),
            responses_turn(
                [message_item("Here is the red square.")],
                input_tokens=200, output_tokens=10, minimal=True,
            ),
        )
        home = CodexHome.create(tmp_path, fake.base_url)
        work = tmp_path / "work"
        work.mkdir()
        run = run_codex(codex_binary, home, work, "generate an image of a red square", api_key=API_KEY)

        assert run.returncode == 0, run.describe()
        assert fake.unexpected == [], fake.describe()
        turns = fake.requests_to("/v1/responses")
        assert len(turns) == 2, fake.describe()

    attempts = [request for _, request in images.arrivals]
    times = [at - images.arrivals[0][0] for at, _ in images.arrivals]
    ids = [r.headers.get("x-codex-image-turn-id") for r in attempts]
    print(
        f"image attempts: {len(attempts)}; seconds after the first: "
        f"{', '.join(f'{t:.3f}' for t in times)}; x-codex-image-turn-id: {ids}"
    )
    assert len(attempts) == ATTEMPTS, f"expected {ATTEMPTS} image requests, got {len(attempts)}"
    assert ids[0], f"the first image request has no x-codex-image-turn-id: {sorted(attempts[0].headers)}"
    assert set(ids) == {ids[0]}, f"the turn id changed between retries: {ids}"
    assert len({r.body for r in attempts}) == 1, "the retries' bodies differ"
    assert attempts[0].json == {
        "prompt": "a red square", "background": "opaque", "model": "gpt-image-2",
        "quality": "auto", "size": "auto",
    }
    # The id names the user's turn: the same as the turn metadata's, on the image calls and on
    # the model turns.
    assert ids[0] == turn_metadata(attempts[0])["turn_id"]
    assert ids[0] == turn_metadata(turns[0])["turn_id"]
    for request in attempts:
        assert request.headers.get(ACTOR_HEADER) == ACTOR_VALUE
        assert request.headers.get("authorization") == f"Bearer {API_KEY}"
    assert all(b > a for a, b in zip(times, times[1:])), f"attempts out of order: {times}"

    saved = home.generated_images()
    assert [p.name for p in saved] == ["call_1.png"], saved
    assert saved[0].read_bytes() == png
    mime, returned = returned_image(turns[1], "call_1")
    assert (mime, returned) == ("image/png", png)


def test_image_turn_id_names_the_turn_not_the_call(codex_binary: Path, tmp_path: Path) -> None:
    """Three image calls in one user turn — one, then two in the next model response, the first of
    those with the same prompt as before — all carry the same `x-codex-image-turn-id`; the two
    calls with the same prompt send byte-identical requests (a repeat looks like a retry)."""
    pngs = [gradient_png(16, 16, seed=s) for s in (10, 60, 110)]
    served: list[Recorded] = []
    lock = Lock()

    def images(request: Recorded) -> Reply:
        with lock:
            served.append(request)
            png = pngs[len(served) - 1]
        return json_reply({"created": int(time.time()), "data": [{"b64_json": base64.b64encode(png).decode()}]})

    with FakeTextUpstream() as fake:
        fake.route("POST", IMAGES_PATH, images)
        fake.script(
            responses_turn([imagegen_call("call_1", "a red square")], input_tokens=10,
                           output_tokens=5, minimal=True),
            responses_turn(
                [imagegen_call("call_2", "a red square"), imagegen_call("call_3", "a blue circle")],
                input_tokens=10, output_tokens=5, minimal=True,
            ),
            responses_turn([message_item("Three images.")], input_tokens=10, output_tokens=5,
                           minimal=True),
        )
        home = CodexHome.create(tmp_path, fake.base_url)
        work = tmp_path / "work"
        work.mkdir()
        run = run_codex(codex_binary, home, work, "draw three images", api_key=API_KEY)
        assert run.returncode == 0, run.describe()
        assert fake.unexpected == [], fake.describe()

    ids = [r.headers.get("x-codex-image-turn-id") for r in served]
    print(f"image calls: {len(served)}; x-codex-image-turn-id: {ids}; "
          f"prompts: {[r.json['prompt'] for r in served]}")
    assert len(served) == 3, fake.describe()
    assert ids[0] and set(ids) == {ids[0]}, ids
    by_prompt: dict[str, list[bytes]] = {}
    for request in served:
        by_prompt.setdefault(request.json["prompt"], []).append(request.body)
    assert len(by_prompt["a red square"]) == 2
    assert by_prompt["a red square"][0] == by_prompt["a red square"][1]
    # Codex itself keeps the calls apart: one file per call id.
    saved = home.generated_images()
    assert sorted(p.name for p in saved) == ["call_1.png", "call_2.png", "call_3.png"], saved
    for path in saved:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        with Image.open(path) as img:
            img.verify()
