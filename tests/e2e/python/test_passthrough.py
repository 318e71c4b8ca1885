"""Text pass-through (`[passthrough]`): `imagegate serve` in front of a scripted text upstream
(`fake_text.FakeTextUpstream`), driven by the official OpenAI Python SDK.

Each test runs its own gateway (with its own simulator for the image side) whose `[passthrough]`
names the fake, with a price for `gpt-5.5` only and a keepalive of one second. What is checked:

- `/v1/responses` (streamed or not) and `/v1/chat/completions` (streamed or not) answer what the
  upstream answered: status, content type, and the body — for a stream every event's bytes, the
  gateway's `: keepalive` comments aside, which appear while the upstream is silent and only
  between events;
- the request body goes upstream byte for byte (a streamed chat completion without
  `stream_options` gets `include_usage` added, and nothing else changes);
- the upstream sees the pass-through key and only the allow-listed headers: never the client's
  key, `x-openai-actor-authorization`, `x-codex-*`, `accept-encoding`, `session-id`, `thread-id`
  or `originator`;
- a client that hangs up mid-stream ends the upstream call;
- money: the final usage is booked at the configured price per token (rounded up to the
  micro-dollar per request), in `/admin/usage` and `/v1/me`; a budgeted key (or team) asking for
  a text model without a price is refused before anything goes upstream;
- `/v1/models` lists the upstream's text models with the image models; without `[passthrough]`
  the text routes answer 404 `passthrough_not_configured`.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest
from openai import OpenAI

from conftest import _log_tail, _require_binary
from fake_text import (
    FakeTextUpstream,
    Recorded,
    Reply,
    chat_turn,
    error_reply,
    message_item,
    responses_events,
    responses_turn,
)
from served import ADMIN_KEY, CLIENT_KEY, OwnSimulator, ServedGateway, gateway_config
from support import MODELS, REQUEST_TIMEOUT_S, ROUTED_NAMES, http, wait_until

UPSTREAM_KEY = "sk-text-upstream-secret-0123456789"
PRICED_MODEL = "gpt-5.5"
UNPRICED_MODEL = "gpt-5.5-mini"
INPUT_USD_PER_1M = Decimal("1.25")
OUTPUT_USD_PER_1M = Decimal("10.0")
KEEPALIVE = b": keepalive\n\n"
KEEPALIVE_S = 1.0
# How long the gateway may take to notice a hang-up and to book a finished call.
SETTLE_S = 10.0
# Headers the gateway may send upstream: the allow-list plus its own (auth and framing).
ALLOWED_UPSTREAM_HEADERS = {
    "content-type", "accept", "openai-beta", "openai-organization", "openai-project",
    "user-agent", "x-request-id",
    "authorization", "host", "content-length", "transfer-encoding", "connection",
}


# --------------------------------------------------------------------------------------------------
# The stack: client → imagegate serve → fake text upstream (and its own simulator for images).
# --------------------------------------------------------------------------------------------------


def passthrough_tables(fake: FakeTextUpstream, **settings: Any) -> dict[str, dict[str, object]]:
    return {
        "passthrough": {
            "base_url": fake.base_url,
            "api_key": UPSTREAM_KEY,
            "timeout": "60s",
            "keepalive": f"{KEEPALIVE_S:g}s",
            **settings,
        },
        f'passthrough.prices."{PRICED_MODEL}"': {
            "input_usd_per_1m": float(INPUT_USD_PER_1M),
            "output_usd_per_1m": float(OUTPUT_USD_PER_1M),
        },
    }


@dataclass
class Stack:
    fake: FakeTextUpstream
    sim: OwnSimulator
    gateway: ServedGateway

    @property
    def root(self) -> str:
        return f"http://{self.gateway.addr}"

    def client(self, api_key: str = CLIENT_KEY) -> OpenAI:
        return OpenAI(
            api_key=api_key, base_url=self.gateway.base_url, max_retries=0, timeout=REQUEST_TIMEOUT_S
        )

    def admin(self, method: str, path: str, body: dict | None = None) -> Any:
        res = http(
            method,
            self.root + path,
            headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"},
            body=None if body is None else json.dumps(body).encode(),
        )
        assert res.status in (200, 201), f"{method} {path} {body} -> {res.status}: {res.body[:500]!r}"
        return res.json()

    def new_key(self, **settings: Any) -> str:
        """A dynamic key (admin API) with `settings`; returns its secret."""
        created = self.admin("POST", "/admin/keys", {"id": f"k-{uuid.uuid4().hex[:8]}", **settings})
        return created["secret"]

    def usage(self, group_by: str = "model,key") -> list[dict]:
        return self.admin("GET", f"/admin/usage?group_by={group_by}")["rows"]

    def me(self, api_key: str = CLIENT_KEY) -> dict:
        res = http("GET", self.gateway.base_url + "/me", headers={"authorization": f"Bearer {api_key}"})
        assert res.status == 200, f"GET /v1/me -> {res.status}: {res.body[:500]!r}"
        return res.json()


@pytest.fixture
def fake() -> Iterator[FakeTextUpstream]:
    with FakeTextUpstream(api_key=UPSTREAM_KEY) as upstream:
        yield upstream


@pytest.fixture
def stack(tmp_path: Path, own_sim: OwnSimulator, fake: FakeTextUpstream) -> Iterator[Stack]:
    binary = _require_binary()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "imagegate.toml"
    config.write_text(gateway_config(sim=own_sim, data_dir=data_dir, tables=passthrough_tables(fake)))
    gateway = ServedGateway(binary, config, tmp_path).start()
    try:
        yield Stack(fake, own_sim, gateway)
    finally:
        gateway.stop()
        for log in sorted(tmp_path.glob("imagegate-serve-*.stderr.log")):
            print(f"--- {log.name} (tail) ---\n{_log_tail(log, 30)}")
        print(f"--- fake text upstream ---\n{fake.describe()}")


# --------------------------------------------------------------------------------------------------
# Prices, streams and errors.
# --------------------------------------------------------------------------------------------------


def cost_micros(input_tokens: int, output_tokens: int) -> int:
    """The contract's price of one call: tokens × USD per 1M, rounded up to the micro-dollar."""
    usd = (
        Fraction(input_tokens) * Fraction(INPUT_USD_PER_1M)
        + Fraction(output_tokens) * Fraction(OUTPUT_USD_PER_1M)
    ) / 1_000_000
    return math.ceil(usd * 1_000_000)


def usd(micros: int) -> Decimal:
    return Decimal(micros) / 1_000_000


def only_request(fake: FakeTextUpstream, path: str) -> Recorded:
    requests = fake.requests_to(path)
    assert len(requests) == 1, f"expected one upstream {path}, got:\n{fake.describe()}"
    return requests[0]


def sent_events(record: Recorded) -> list[bytes]:
    """The stream chunks the fake wrote (one event each, as the turn builders make them)."""
    return [chunk for _, chunk in record.chunk_times]


def match_relayed(received: bytes, events: list[bytes]) -> list[int]:
    """Checks that `received` is `events`, byte for byte and in order, with only whole
    `: keepalive` comments between them; returns how many keepalives came before each event
    (the last entry: after the last event)."""
    keepalives = [0] * (len(events) + 1)
    pos = 0
    for index in range(len(events) + 1):
        while received.startswith(KEEPALIVE, pos):
            keepalives[index] += 1
            pos += len(KEEPALIVE)
        if index == len(events):
            break
        event = events[index]
        assert received.startswith(event, pos), (
            f"event {index} was not relayed as sent (keepalives so far {keepalives[:index + 1]}):\n"
            f"sent:     {event[:400]!r}\nreceived: {received[pos:pos + len(event) + 40][:440]!r}"
        )
        pos += len(event)
    assert pos == len(received), f"bytes after the last event: {received[pos:pos + 300]!r}"
    return keepalives


def assert_error(err: openai.APIStatusError, status: int, code: str) -> dict:
    assert err.status_code == status, f"expected {status} {code}, got {err.status_code}: {err.response.text}"
    body = err.response.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body["error"]


def wait_for_cost(stack: Stack, model: str, expected_micros: int, requests: int) -> dict:
    """The `/admin/usage` row of `model` for the client key once it books `expected_micros`."""
    seen: list[dict] = []

    def booked() -> dict | None:
        seen[:] = stack.usage("model,key")
        rows = [r for r in seen if r.get("model") == model and r.get("key") == "t"]
        if rows and rows[0]["cost_micros"] == expected_micros and rows[0]["requests"] == requests:
            return rows[0]
        return None

    return wait_until(
        booked, SETTLE_S,
        lambda: f"no usage row for {model} with {requests} requests costing {expected_micros} "
        f"micro-dollars: {seen}",
        interval=0.1,
    )


# --------------------------------------------------------------------------------------------------
# Relaying.
# --------------------------------------------------------------------------------------------------


def test_responses_not_streamed(stack: Stack) -> None:
    """A non-streamed Responses call: the SDK gets the upstream's answer, byte for byte, and the
    upstream gets the SDK's body byte for byte."""
    stack.fake.script(responses_turn([message_item("A red kite.")], input_tokens=1234, output_tokens=567))
    raw = stack.client().responses.with_raw_response.create(model=PRICED_MODEL, input="Name a kite.")
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json"), raw.headers
    response = raw.parse()
    assert response.output_text == "A red kite."
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1234, 567)

    upstream = only_request(stack.fake, "/v1/responses")
    assert raw.content == bytes(upstream.written), "the answer's body was not relayed as sent"
    assert upstream.body == raw.http_request.content, "the request body was not forwarded as sent"


def test_responses_streamed_events_are_relayed_byte_for_byte(stack: Stack) -> None:
    """A streamed Responses call: the SDK's typed stream ends with the upstream's usage (through a
    2.5 s silence it must ride out), and the raw stream holds exactly the events the upstream
    wrote, keepalive comments aside."""
    output = [message_item("Kites fly."), message_item("They need wind.")]
    stack.fake.script(
        responses_turn(output, input_tokens=1000, output_tokens=333, pauses={1: 2.5}),
        responses_turn(output, input_tokens=1000, output_tokens=333),
    )
    client = stack.client()

    events = list(client.responses.create(model=PRICED_MODEL, input="About kites.", stream=True))
    typed = [e.type for e in events]
    assert typed[0] == "response.created" and typed[-1] == "response.completed", typed
    first = stack.fake.requests_to("/v1/responses")[0]
    assert typed == [json.loads(e.split(b"data: ", 1)[1])["type"] for e in sent_events(first)]
    assert events[-1].response.usage.output_tokens == 333

    with client.responses.with_streaming_response.create(
        model=PRICED_MODEL, input="About kites.", stream=True
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
        received = b"".join(resp.iter_bytes())
    second = stack.fake.requests_to("/v1/responses")[1]
    match_relayed(received, sent_events(second))
    assert second.body == resp.http_request.content


def test_chat_completions_streamed_and_not(stack: Stack) -> None:
    """Chat completions: the SDK's stream (with its usage chunk) and a plain call get the
    upstream's content and usage; the raw stream is the upstream's chunks, byte for byte, and the
    request bodies (which name `stream_options`) go upstream unchanged."""
    stack.fake.script(
        chat_turn("Hello there.", prompt_tokens=777, completion_tokens=89),
        chat_turn("Hello there.", prompt_tokens=777, completion_tokens=89),
        chat_turn("Plain hello.", prompt_tokens=50, completion_tokens=7),
    )
    client = stack.client()
    messages = [{"role": "user", "content": "Say hello."}]

    chunks = list(
        client.chat.completions.create(
            model=PRICED_MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there."
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (777, 89)

    with client.chat.completions.with_streaming_response.create(
        model=PRICED_MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
        received = b"".join(resp.iter_bytes())
    streamed = stack.fake.requests_to("/v1/chat/completions")[1]
    match_relayed(received, sent_events(streamed))
    assert streamed.body == resp.http_request.content

    raw = client.chat.completions.with_raw_response.create(model=PRICED_MODEL, messages=messages)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Plain hello."
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (50, 7)
    plain = stack.fake.requests_to("/v1/chat/completions")[2]
    assert raw.content == bytes(plain.written)
    assert plain.body == raw.http_request.content


def test_request_body_is_forwarded_byte_for_byte(stack: Stack) -> None:
    """A body with its own spacing, key order, escapes and fields the gateway does not know
    reaches the upstream unchanged."""
    body = (
        b'{ "input" : "caf\\u00e9 \xe2\x98\x95",\n  "model":"gpt-5.5",  "metadata": {"z": "1", "a": "2"},'
        b'\t"x_vendor_field" : [1, 2.50, true, null] }'
    )
    stack.fake.script(responses_turn([message_item("ok")], input_tokens=3, output_tokens=1))
    res = http(
        "POST",
        stack.gateway.base_url + "/responses",
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
        body=body,
    )
    assert res.status == 200, res.body[:500]
    assert only_request(stack.fake, "/v1/responses").body == body


def test_streamed_chat_without_stream_options_gets_include_usage(stack: Stack) -> None:
    """A streamed chat completion without `stream_options`: the upstream is asked for the usage
    chunk (`include_usage: true` added) and the body is otherwise the client's; the usage is
    booked."""
    sent = {"model": PRICED_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    stack.fake.script(chat_turn("Hi!", prompt_tokens=400, completion_tokens=30))
    res = http(
        "POST",
        stack.gateway.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
        body=json.dumps(sent).encode(),
    )
    assert res.status == 200, res.body[:500]
    assert res.headers["content-type"].startswith("text/event-stream"), res.headers
    upstream = only_request(stack.fake, "/v1/chat/completions").json
    assert upstream == {**sent, "stream_options": {"include_usage": True}}
    wait_for_cost(stack, PRICED_MODEL, cost_micros(400, 30), requests=1)


def test_upstream_error_is_relayed(stack: Stack) -> None:
    """An upstream error reaches the client with its status, content type and body; nothing is
    booked for it."""
    refusal = error_reply(400, "Invalid value for 'reasoning.effort'.", "invalid_value")
    refusal.headers["x-upstream-marker"] = "1"
    stack.fake.script(refusal)
    with pytest.raises(openai.BadRequestError) as exc:
        stack.client().responses.create(model=PRICED_MODEL, input="x", reasoning={"effort": "extreme"})
    err = exc.value
    assert err.status_code == 400
    assert err.response.headers["content-type"].startswith("application/json")
    assert err.response.content == refusal.body
    rows = [r for r in stack.usage("model") if r.get("model") == PRICED_MODEL]
    assert all(r["cost_micros"] == 0 for r in rows), rows


# --------------------------------------------------------------------------------------------------
# Keepalive and hang-ups.
# --------------------------------------------------------------------------------------------------


def test_keepalive_comments_fill_silences_between_events_only(stack: Stack) -> None:
    """The upstream is silent for 5 s between two events, then for 2.5 s in the middle of an
    event: keepalive comments (every second) fill the first silence and never cut the event."""
    events = responses_events(
        [message_item("Slow thoughts.")], model=PRICED_MODEL, input_tokens=20, output_tokens=5
    )
    split_at = len(events[2]) // 2
    chunks = [events[0], events[1], events[2][:split_at], events[2][split_at:], *events[3:]]
    stack.fake.script(
        Reply(content_type="text/event-stream", chunks=chunks, pauses={2: 5.0, 3: 2.5})
    )

    with stack.client().responses.with_streaming_response.create(
        model=PRICED_MODEL, input="Think slowly.", stream=True
    ) as resp:
        assert resp.status_code == 200
        received = b"".join(resp.iter_bytes())

    keepalives = match_relayed(received, events)
    print(f"keepalives before each event: {keepalives}")
    assert keepalives[2] >= 3, (
        f"expected a keepalive about every {KEEPALIVE_S:g}s during the 5 s silence before event 2; "
        f"keepalives before each event: {keepalives}"
    )
    assert bytes(only_request(stack.fake, "/v1/responses").written) == b"".join(events)


def test_client_hang_up_ends_the_upstream_call(stack: Stack) -> None:
    """A client that closes its stream after the first event: the gateway drops the upstream
    call, which the fake sees as its connection closed during a 60 s silence."""
    stack.fake.script(
        responses_turn([message_item("never sent")], input_tokens=10, output_tokens=10,
                       pauses={1: 60.0})
    )
    with stack.client().responses.with_streaming_response.create(
        model=PRICED_MODEL, input="Take your time.", stream=True
    ) as resp:
        assert resp.status_code == 200
        seen = b""
        for piece in resp.iter_bytes():
            seen += piece
            if b"response.created" in seen and seen.endswith(b"\n\n"):
                break
    assert stack.fake.disconnected.wait(SETTLE_S), (
        f"the upstream call was still open {SETTLE_S:.0f}s after the client hung up:\n"
        f"{stack.fake.describe()}"
    )
    assert only_request(stack.fake, "/v1/responses").client_gone


# --------------------------------------------------------------------------------------------------
# What goes upstream.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["responses", "chat"])
def test_upstream_gets_its_key_and_only_allow_listed_headers(stack: Stack, route: str) -> None:
    """The upstream gets `Authorization: Bearer <passthrough api_key>` and the allow-listed
    headers with the client's values — never the client key, Codex's headers or
    `accept-encoding`."""
    client_headers = {
        "x-openai-actor-authorization": "imagegate-e2e",
        "x-codex-turn-metadata": '{"turn_id":"t-1"}',
        "x-codex-image-turn-id": "t-1",
        "x-codex-window-id": "w-1",
        "session-id": "s-1",
        "thread-id": "th-1",
        "originator": "codex_exec",
        "accept-encoding": "gzip, br",
        "openai-beta": "responses=v1",
        "openai-organization": "org-e2e",
        "openai-project": "proj-e2e",
        "x-private-note": "not for upstream",
    }
    client = stack.client()
    if route == "responses":
        stack.fake.script(responses_turn([message_item("ok")], input_tokens=5, output_tokens=1))
        raw = client.responses.with_raw_response.create(
            model=PRICED_MODEL, input="hi", extra_headers=client_headers
        )
        upstream = only_request(stack.fake, "/v1/responses")
    else:
        stack.fake.script(chat_turn("ok", prompt_tokens=5, completion_tokens=1))
        raw = client.chat.completions.with_raw_response.create(
            model=PRICED_MODEL, messages=[{"role": "user", "content": "hi"}],
            extra_headers=client_headers,
        )
        upstream = only_request(stack.fake, "/v1/chat/completions")
    assert raw.status_code == 200

    headers = upstream.headers
    assert headers.get("authorization") == f"Bearer {UPSTREAM_KEY}", headers
    assert not any(CLIENT_KEY in value for value in headers.values()), headers
    unexpected = set(headers) - ALLOWED_UPSTREAM_HEADERS
    assert not unexpected, f"headers beyond the allow-list went upstream: {sorted(unexpected)}"
    for name in ("openai-beta", "openai-organization", "openai-project"):
        assert headers.get(name) == client_headers[name], (name, headers)
    assert headers.get("user-agent") == raw.http_request.headers["user-agent"], headers


# --------------------------------------------------------------------------------------------------
# Money and access.
# --------------------------------------------------------------------------------------------------


def test_usage_is_booked_at_the_configured_price(stack: Stack) -> None:
    """Four calls — Responses streamed and not, chat streamed (usage chunk) and not — are booked
    under the key and the request's model at tokens × price, each rounded up to the micro-dollar;
    `/admin/usage`, `/v1/me` and the metrics show them."""
    calls = [(1234, 567), (1000, 333), (777, 89), (50, 7)]
    stack.fake.script(
        responses_turn([message_item("one")], input_tokens=1234, output_tokens=567),
        responses_turn([message_item("two")], input_tokens=1000, output_tokens=333),
        chat_turn("three", prompt_tokens=777, completion_tokens=89),
        chat_turn("four", prompt_tokens=50, completion_tokens=7),
    )
    client = stack.client()
    messages = [{"role": "user", "content": "count"}]
    client.responses.create(model=PRICED_MODEL, input="count")
    list(client.responses.create(model=PRICED_MODEL, input="count", stream=True))
    list(client.chat.completions.create(
        model=PRICED_MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    ))
    client.chat.completions.create(model=PRICED_MODEL, messages=messages)

    expected = sum(cost_micros(i, o) for i, o in calls)
    assert expected == 7213 + 4580 + 1862 + 133  # 7212.5, 971.25 and 132.5 round up
    row = wait_for_cost(stack, PRICED_MODEL, expected, requests=len(calls))
    assert Decimal(row["cost_usd"]) == usd(expected), row

    me = stack.me()
    assert Decimal(me["spend"]["total_spent_usd"]) == usd(expected), me["spend"]
    assert Decimal(me["spend"]["month_spent_usd"]) == usd(expected), me["spend"]
    mine = [r for r in me["usage"]["rows"] if r.get("model") == PRICED_MODEL]
    assert sum(Decimal(r["cost_usd"]) for r in mine) == usd(expected), me["usage"]

    metrics = http("GET", stack.root + "/metrics").body.decode()
    for route in ("/v1/responses", "/v1/chat/completions"):
        assert f'route="{route}"' in metrics, f"no imagegate_http_requests_total for {route}"


@pytest.mark.parametrize(
    "call",
    ["responses", "responses-stream", "chat-stream"],
)
def test_budgeted_key_without_a_price_is_refused(stack: Stack, call: str) -> None:
    """A key with a budget asking for a text model that has no `[passthrough.prices]` entry: 403
    `model_not_priced` naming the model and the section; nothing reaches the upstream. The same
    key may use the priced model."""
    key = stack.new_key(monthly_budget_usd=5.0)
    client = stack.client(key)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        if call == "responses":
            client.responses.create(model=UNPRICED_MODEL, input="hi")
        elif call == "responses-stream":
            list(client.responses.create(model=UNPRICED_MODEL, input="hi", stream=True))
        else:
            list(client.chat.completions.create(
                model=UNPRICED_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            ))
    error = assert_error(exc.value, 403, "model_not_priced")
    assert UNPRICED_MODEL in error["message"] and "[passthrough.prices]" in error["message"], error
    assert stack.fake.requests == [], stack.fake.describe()

    stack.fake.script(responses_turn([message_item("ok")], input_tokens=100, output_tokens=10))
    assert client.responses.create(model=PRICED_MODEL, input="hi").output_text == "ok"


def test_team_budget_without_a_price_is_refused(stack: Stack) -> None:
    """A key without a budget of its own, in a team with one, gets 403 `model_not_priced` for an
    unpriced text model; nothing reaches the upstream."""
    team = f"team-{uuid.uuid4().hex[:6]}"
    stack.admin("POST", "/admin/teams", {"id": team, "total_budget_usd": 10.0})
    client = stack.client(stack.new_key(team=team))
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(model=UNPRICED_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert_error(exc.value, 403, "model_not_priced")
    assert stack.fake.requests == [], stack.fake.describe()


def test_model_outside_the_allow_list_is_refused(stack: Stack) -> None:
    """A key whose `models` names only `gpt-5.5-mini`: `gpt-5.5` gets 403 `model_not_allowed` and
    never reaches the upstream; `gpt-5.5-mini` (unpriced, the key has no budget) goes through."""
    client = stack.client(stack.new_key(models=[UNPRICED_MODEL]))
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.responses.create(model=PRICED_MODEL, input="hi")
    assert_error(exc.value, 403, "model_not_allowed")
    assert stack.fake.requests == [], stack.fake.describe()

    stack.fake.script(responses_turn([message_item("mini")], input_tokens=10, output_tokens=2))
    assert client.responses.create(model=UNPRICED_MODEL, input="hi").output_text == "mini"


def test_models_list_includes_the_text_models(stack: Stack) -> None:
    """`/v1/models` lists the image models and the upstream's text models, OpenAI-shaped; the
    upstream's list was asked for with the pass-through key."""
    models = list(stack.client().models.list())
    ids = [m.id for m in models]
    assert {PRICED_MODEL, UNPRICED_MODEL} <= set(ids), ids
    assert set(MODELS + ROUTED_NAMES) <= set(ids), ids
    assert len(ids) == len(set(ids)), f"a model is listed twice: {ids}"
    for m in models:
        assert m.object == "model" and isinstance(m.created, int) and m.owned_by, m
    listing = stack.fake.requests_to("/v1/models", method="GET")
    assert listing, stack.fake.describe()
    assert all(r.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}" for r in listing)


def test_without_passthrough_the_text_routes_are_404(serve_gateway) -> None:
    """A gateway without `[passthrough]`: `/v1/responses` and `/v1/chat/completions` answer 404
    `passthrough_not_configured`, naming the section."""
    gateway = serve_gateway()
    client = OpenAI(api_key=CLIENT_KEY, base_url=gateway.base_url, max_retries=0, timeout=REQUEST_TIMEOUT_S)
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model=PRICED_MODEL, input="hi")
    error = assert_error(exc.value, 404, "passthrough_not_configured")
    assert "[passthrough]" in error["message"], error
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model=PRICED_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert_error(exc.value, 404, "passthrough_not_configured")
