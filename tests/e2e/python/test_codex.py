"""The real Codex CLI (`codex exec`) using imagegate as its model provider.

The stack: Codex → imagegate serve → (text) `FakeTextUpstream` through `[passthrough]`, and
(images) the test's own simulator. The fake plays the model: its first turn calls Codex's image
tool (`image_gen.imagegen`), its second answers with a message once Codex gives the image back.
Codex itself calls the gateway's Images API with the client key and its
`x-codex-image-turn-id`.

Checked for a generation, an edit (a PNG of the working directory named by absolute path in
`referenced_image_paths`) and a generation whose first answer Codex never gets:

- Codex exits 0 and saves the image under `$CODEX_HOME/generated_images/`, with the bytes the
  gateway delivered (those it gives back to the model as a data URL in the next turn): a PNG;
- the ledger books the image and the text turns' tokens at the configured price;
- the upstream of the text turns never sees `x-openai-actor-authorization` or Codex's own headers;
- a 500 in place of the gateway's first 200 makes Codex retry with the same turn id, and the
  retry joins the first job: one image made and billed, the same bytes answered;
- Codex reads a stream that the gateway fills with keepalive comments.

These are skipped when the Codex CLI is not installed (`npm ci` in tests/e2e/codex). Two more
send Codex's image requests directly: the turn id joins only the same key and body, and a GIF
request is refused.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from codex_cli import ACTOR_HEADER, CodexHome, imagegen_call, require_codex, returned_image, run_codex
from conftest import _log_tail, _require_binary
from fake_text import FakeTextUpstream, message_item, responses_turn
from served import ADMIN_KEY, CLIENT_KEY, OwnSimulator, ServedGateway, gateway_config
from support import PNG_MAGIC, gradient_png, http, wait_until

UPSTREAM_KEY = "sk-text-upstream-secret-0123456789"
TEXT_MODEL = "gpt-5.5"
INPUT_USD_PER_1M = Decimal("1.25")
OUTPUT_USD_PER_1M = Decimal("10.0")
# The model's two turns: (input, output) tokens.
CALL_TURN = (1500, 41)
ANSWER_TURN = (2345, 17)
SETTLE_S = 15.0
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
              "proxy-connection", "te", "trailer", "upgrade"}


# --------------------------------------------------------------------------------------------------
# The stack.
# --------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    codex: Path
    fake: FakeTextUpstream
    sim: OwnSimulator
    gateway: ServedGateway
    tmp: Path

    @property
    def root(self) -> str:
        return f"http://{self.gateway.addr}"

    def usage(self) -> list[dict]:
        res = http("GET", self.root + "/admin/usage?group_by=model",
                   headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert res.status == 200, f"GET /admin/usage -> {res.status}: {res.body[:500]!r}"
        return res.json()["rows"]


@pytest.fixture
def stack(tmp_path: Path, own_sim: OwnSimulator) -> Iterator[Stack]:
    codex = require_codex()
    binary = _require_binary()
    with FakeTextUpstream(api_key=UPSTREAM_KEY) as fake:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        config = tmp_path / "imagegate.toml"
        config.write_text(
            gateway_config(
                sim=own_sim,
                data_dir=data_dir,
                tables={
                    "passthrough": {"base_url": fake.base_url, "api_key": UPSTREAM_KEY,
                                    "timeout": "120s", "keepalive": "1s"},
                    f'passthrough.prices."{TEXT_MODEL}"': {
                        "input_usd_per_1m": float(INPUT_USD_PER_1M),
                        "output_usd_per_1m": float(OUTPUT_USD_PER_1M),
                    },
                },
            )
        )
        gateway = ServedGateway(binary, config, tmp_path).start()
        try:
            yield Stack(codex, fake, own_sim, gateway, tmp_path)
        finally:
            gateway.stop()
            for log in sorted(tmp_path.glob("imagegate-serve-*.stderr.log")):
                print(f"--- {log.name} (tail) ---\n{_log_tail(log, 30)}")
            print(f"--- fake text upstream ---\n{fake.describe()}")


def script_image_turns(fake: FakeTextUpstream, **arguments: Any) -> None:
    """The model calls `image_gen.imagegen` (`call_1`), then answers with a message."""
    fake.script(
        responses_turn(
            [imagegen_call("call_1", "a red square", **arguments)],
            input_tokens=CALL_TURN[0], output_tokens=CALL_TURN[1],
        ),
        responses_turn(
            [message_item("The image is saved.")],
            input_tokens=ANSWER_TURN[0], output_tokens=ANSWER_TURN[1],
        ),
    )


def workdir(stack: Stack) -> Path:
    path = stack.tmp / "work"
    path.mkdir(exist_ok=True)
    return path


def text_cost_micros() -> int:
    total = 0
    for tokens_in, tokens_out in (CALL_TURN, ANSWER_TURN):
        usd = (Fraction(tokens_in) * Fraction(INPUT_USD_PER_1M)
               + Fraction(tokens_out) * Fraction(OUTPUT_USD_PER_1M)) / 1_000_000
        total += math.ceil(usd * 1_000_000)
    return total


# --------------------------------------------------------------------------------------------------
# Checks shared by the tests.
# --------------------------------------------------------------------------------------------------


def saved_image(stack: Stack, home: CodexHome) -> bytes:
    """The one image Codex saved: the bytes it gave back to the model in the next turn, a PNG
    that Pillow decodes."""
    saved = home.generated_images()
    assert [p.name for p in saved] == ["call_1.png"], f"files under generated_images: {saved}"
    data = saved[0].read_bytes()
    turns = stack.fake.requests_to("/v1/responses")
    assert len(turns) == 2, stack.fake.describe()
    mime, returned = returned_image(turns[1], "call_1")
    assert mime == "image/png", mime
    assert data == returned, "the saved file is not the image Codex gave back to the model"
    assert data.startswith(PNG_MAGIC), data[:16]
    with Image.open(BytesIO(data)) as img:
        img.load()
        assert img.width > 0 and img.height > 0
    return data


def assert_text_upstream_clean(stack: Stack) -> None:
    """The text upstream got the pass-through key and none of Codex's own headers."""
    turns = stack.fake.requests_to("/v1/responses")
    assert turns, stack.fake.describe()
    for turn in turns:
        assert turn.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}", turn.headers
        assert ACTOR_HEADER not in turn.headers, sorted(turn.headers)
        codex_headers = [h for h in turn.headers if h.startswith("x-codex-")]
        assert not codex_headers, f"Codex headers reached the text upstream: {codex_headers}"
        for name in ("session-id", "thread-id", "originator", "accept-encoding"):
            assert name not in turn.headers, f"{name} reached the text upstream"


def wait_for_ledger(stack: Stack, images: int) -> tuple[list[dict], dict]:
    """The usage rows once the text turns and `images` images are booked, and the text row."""
    rows: list[dict] = []
    expected_text = text_cost_micros()

    def booked() -> bool:
        rows[:] = stack.usage()
        text = [r for r in rows if r["model"] == TEXT_MODEL]
        made = sum(r["images"] for r in rows if r["model"] != TEXT_MODEL)
        return bool(text) and text[0]["cost_micros"] == expected_text and made >= images

    wait_until(
        booked, SETTLE_S,
        lambda: f"expected {images} image(s) and {expected_text} µ$ of {TEXT_MODEL} booked: {rows}",
        interval=0.2,
    )
    text_row = next(r for r in rows if r["model"] == TEXT_MODEL)
    assert text_row["requests"] == 2, text_row
    assert text_row["images"] == 0, text_row
    return rows, text_row


def wait_for_sim_billing(sim: OwnSimulator) -> dict:
    last: dict = {}

    def finished() -> bool:
        last.update(sim.stats())
        return last["tasks_billed"] == len(last["task_ids"])

    wait_until(finished, SETTLE_S, lambda: f"simulator tasks unfinished: {last}", interval=0.1)
    return last


def image_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["model"] != TEXT_MODEL]


# --------------------------------------------------------------------------------------------------
# Generation and edit.
# --------------------------------------------------------------------------------------------------


def test_codex_generates_an_image_through_the_gateway(stack: Stack) -> None:
    """`codex exec` asks for an image: the model's call goes through the gateway's pass-through,
    Codex calls `/v1/images/generations` on the gateway, saves the PNG and sends it back; the
    ledger has the image and the text tokens."""
    script_image_turns(stack.fake)
    home = CodexHome.create(stack.tmp, stack.gateway.base_url, model=TEXT_MODEL)
    run = run_codex(stack.codex, home, workdir(stack), "generate an image of a red square",
                    api_key=CLIENT_KEY)
    assert run.returncode == 0, run.describe()
    assert stack.fake.unexpected == [], stack.fake.describe()

    saved_image(stack, home)
    assert_text_upstream_clean(stack)
    rows, _ = wait_for_ledger(stack, images=1)
    images = image_rows(rows)
    assert sum(r["images"] for r in images) == 1, rows
    assert sum(r["succeeded"] for r in images) == 1, rows
    assert stack.sim.creates() == 1
    billed = wait_for_sim_billing(stack.sim)
    assert sum(r["cost_micros"] for r in images) == billed["billed_micros"], (rows, billed)


def test_codex_edits_a_referenced_image_through_the_gateway(stack: Stack) -> None:
    """The model names a PNG of the working directory by absolute path in
    `referenced_image_paths`: Codex sends it to `/v1/images/edits` (JSON, a data URL), the gateway
    makes the edit upstream, and Codex saves the result."""
    work = workdir(stack)
    reference = work / "square.png"
    reference.write_bytes(gradient_png(32, 32, seed=5))
    script_image_turns(stack.fake, referenced_image_paths=[str(reference.resolve())])
    home = CodexHome.create(stack.tmp, stack.gateway.base_url, model=TEXT_MODEL)
    run = run_codex(stack.codex, home, work, "make the square in square.png blue", api_key=CLIENT_KEY)
    assert run.returncode == 0, run.describe()
    assert stack.fake.unexpected == [], stack.fake.describe()

    saved = saved_image(stack, home)
    assert saved != reference.read_bytes(), "Codex saved the reference, not an edit"
    assert_text_upstream_clean(stack)
    rows, _ = wait_for_ledger(stack, images=1)
    assert sum(r["images"] for r in image_rows(rows)) == 1, rows
    creates = [r for r in stack.sim.requests() if r["method"] == "POST" and "edit" in r["path"]]
    assert len(creates) == 1, f"expected one edit upstream: {json.dumps(stack.sim.requests())[:3000]}"


def test_codex_reads_a_stream_with_keepalive_comments(stack: Stack) -> None:
    """A turn whose upstream is silent for 3 s mid-stream (the gateway fills it with
    `: keepalive` comments every second): Codex parses the stream and prints the message."""
    stack.fake.script(
        responses_turn([message_item("Nothing to draw today.")], input_tokens=10, output_tokens=6,
                       pauses={1: 3.0})
    )
    home = CodexHome.create(stack.tmp, stack.gateway.base_url, model=TEXT_MODEL)
    run = run_codex(stack.codex, home, workdir(stack), "say something", api_key=CLIENT_KEY)
    assert run.returncode == 0, run.describe()
    assert "Nothing to draw today." in run.stdout, run.describe()
    assert len(stack.fake.requests_to("/v1/responses")) == 1, stack.fake.describe()


# --------------------------------------------------------------------------------------------------
# A lost answer: Codex retries, the gateway joins.
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageExchange:
    """One image request through the proxy: its turn id, and what the gateway answered."""

    turn_id: str | None
    status: int
    body: bytes
    swallowed: bool


@dataclass
class LosingProxy:
    """An HTTP proxy in front of the gateway that forwards every request, but answers Codex a 500
    in place of the gateway's answer to the first `/v1/images/*` request (which the gateway
    served in full). Everything is relayed buffered (the streams are short)."""

    target: str
    exchanges: list[ImageExchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> "LosingProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                proxy.relay(self)

            def do_POST(self) -> None:
                proxy.relay(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def relay(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = HTTPConnection(self.target, timeout=120)
        try:
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            answer = upstream.getresponse()
            status, answer_headers, payload = answer.status, answer.getheaders(), answer.read()
        finally:
            upstream.close()
        if handler.path.startswith("/v1/images/"):
            with self.lock:
                swallow = not self.exchanges
                self.exchanges.append(ImageExchange(
                    handler.headers.get("x-codex-image-turn-id"), status, payload, swallow))
            if swallow:
                status = 500
                answer_headers = [("content-type", "application/json")]
                payload = json.dumps({"error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error", "param": None, "code": None}}).encode()
        handler.send_response(status)
        for name, value in answer_headers:
            if name.lower() not in HOP_BY_HOP:
                handler.send_header(name, value)
        handler.send_header("content-length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


def b64_image(body: bytes) -> bytes:
    answer = json.loads(body)
    assert isinstance(answer.get("created"), int), answer.keys()
    return base64.b64decode(answer["data"][0]["b64_json"], validate=True)


def test_codex_retry_after_a_lost_answer_joins_the_first_job(stack: Stack) -> None:
    """The gateway's 200 to Codex's first image request is replaced by a 500 on the way back:
    Codex retries with the same `x-codex-image-turn-id` and body, the gateway joins the first
    job — one image made and billed — and Codex saves the same bytes the first answer held."""
    proxy = LosingProxy(stack.gateway.addr).start()
    try:
        script_image_turns(stack.fake)
        home = CodexHome.create(stack.tmp, proxy.base_url, model=TEXT_MODEL)
        run = run_codex(stack.codex, home, workdir(stack), "generate an image of a red square",
                        api_key=CLIENT_KEY)
    finally:
        proxy.stop()
    assert run.returncode == 0, run.describe()
    assert stack.fake.unexpected == [], stack.fake.describe()

    exchanges = proxy.exchanges
    print(f"image requests through the proxy: "
          f"{[(e.turn_id, e.status, e.swallowed) for e in exchanges]}")
    assert len(exchanges) == 2, f"expected the lost request and one retry: {exchanges}"
    first, retry = exchanges
    assert first.status == 200 and retry.status == 200, (first.status, retry.status, retry.body[:500])
    assert first.turn_id and first.turn_id == retry.turn_id, (first.turn_id, retry.turn_id)
    assert b64_image(retry.body) == b64_image(first.body), "the retry got another image"

    saved = saved_image(stack, home)
    assert saved == b64_image(first.body)
    assert stack.sim.creates() == 1, "the retry made a second upstream image"
    rows, _ = wait_for_ledger(stack, images=1)
    images = image_rows(rows)
    assert sum(r["images"] for r in images) == 1, f"more than one image billed: {rows}"
    billed = wait_for_sim_billing(stack.sim)
    assert sum(r["cost_micros"] for r in images) == billed["billed_micros"], (rows, billed)


# --------------------------------------------------------------------------------------------------
# Codex's image requests sent directly (no Codex needed): the implicit idempotency key and GIF.
# --------------------------------------------------------------------------------------------------


def codex_body(prompt: str, **extra: Any) -> bytes:
    """An image request body as Codex 0.171.0 sends it (key order and spacing included)."""
    body = {"prompt": prompt, "background": "opaque", "model": "gpt-image-2", "quality": "auto",
            "size": "auto", **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def codex_generate(gateway: ServedGateway, key: str, turn_id: str, body: bytes):
    return http(
        "POST",
        gateway.base_url + "/images/generations",
        headers={
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            ACTOR_HEADER: "imagegate-e2e",
            "x-codex-image-turn-id": turn_id,
            "originator": "codex_exec",
        },
        body=body,
    )


def test_codex_turn_id_joins_only_the_same_key_and_body(serve_gateway, own_sim: OwnSimulator) -> None:
    """`x-codex-image-turn-id` acts as an idempotency key scoped to the client key and the request
    digest: the same (key, id, body) again joins the first job (same bytes, no new upstream
    image); another body or another key under the same id makes a new image."""
    gateway = serve_gateway()
    turn = "01a22be1-19e3-7583-b0f2-67231f34f8f2"
    first = codex_generate(gateway, CLIENT_KEY, turn, codex_body("a red square"))
    assert first.status == 200, first.body[:500]
    again = codex_generate(gateway, CLIENT_KEY, turn, codex_body("a red square"))
    assert again.status == 200, again.body[:500]
    assert b64_image(again.body) == b64_image(first.body)
    assert own_sim.creates() == 1, "the repeated (key, turn id, body) made a second image"

    other_body = codex_generate(gateway, CLIENT_KEY, turn, codex_body("a blue circle"))
    assert other_body.status == 200, other_body.body[:500]
    assert own_sim.creates() == 2, "another body under the same turn id did not make its own image"

    res = http("POST", f"http://{gateway.addr}/admin/keys",
               headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"},
               body=json.dumps({"id": "other"}).encode())
    assert res.status in (200, 201), res.body[:500]
    other_key = codex_generate(gateway, res.json()["secret"], turn, codex_body("a red square"))
    assert other_key.status == 200, other_key.body[:500]
    assert own_sim.creates() == 3, "another key's request joined the first key's job"


def test_codex_gif_request_is_refused(serve_gateway, own_sim: OwnSimulator) -> None:
    """Codex's GIF request (`output_format: "gif"`, behind a feature flag) gets 400
    `invalid_value` on `output_format`, saying no upstream model offers GIF; nothing goes
    upstream."""
    gateway = serve_gateway()
    res = codex_generate(
        gateway, CLIENT_KEY, "turn-gif",
        codex_body("a spinning square", output_format="gif", frame_count=8, frame_duration_ms=100),
    )
    assert res.status == 400, (res.status, res.body[:500])
    error = res.json()["error"]
    assert error["code"] == "invalid_value", error
    assert error["param"] == "output_format", error
    assert "gif" in error["message"].lower(), error
    assert own_sim.creates() == 0
