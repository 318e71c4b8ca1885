"""A scripted OpenAI-compatible text upstream: what imagegate's `[passthrough]` forwards to.

`FakeTextUpstream` is a `ThreadingHTTPServer` on 127.0.0.1 (an ephemeral port) serving:

- `POST /v1/responses`: the Responses API, streamed (`text/event-stream`, one HTTP chunk per
  write, flushed at once) or as one JSON object, as the request's `stream` asks;
- `POST /v1/chat/completions`: chat completions, streamed as `chat.completion.chunk` events
  (with a final usage chunk when the request sets `stream_options.include_usage`) or as one
  JSON object;
- `GET /v1/models`: an OpenAI list of `models` (default `gpt-5.5`, `gpt-5.5-mini`);
- any route a test adds with `route(method, path, handler)` (e.g. the Images API, to stand in for a
  whole gateway in front of a client).

**Scripted turns.** Each `POST /v1/responses` or `/v1/chat/completions` takes the next turn of a
queue (`script(turn, ...)`). A turn is a `Reply`, or a callable that makes one from the
`Recorded` request — `responses_turn(...)` and `chat_turn(...)` build those, with the usage
figures (input/output tokens) the test will price. A request with no turn left gets a 500 and is
listed in `unexpected`.

**Streams.** A `Reply` with `chunks` is streamed: chunk by chunk, each written and flushed on its
own, after the silence `pauses[i]` (seconds) before chunk `i` — `pauses[len(chunks)]` holds the
end of the stream. A chunk need not be a whole event: splitting one event over two chunks with a
pause between them makes a silence *inside* an event.

**Recording.** Every request is kept (`requests`, or `requests_to(path)`): method, path, headers,
the raw body and its parsed JSON, and the bytes written back (`written`). A client that goes away
during a stream — a write fails, or the connection is found closed while the stream is silent —
marks its record `client_gone` and sets `disconnected` (a `threading.Event`).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

DEFAULT_MODELS = ("gpt-5.5", "gpt-5.5-mini")
SCRIPTED_PATHS = ("/v1/responses", "/v1/chat/completions")
# How often a silent stream checks whether its client is still there.
POLL_S = 0.05


# --------------------------------------------------------------------------------------------------
# Requests and replies.
# --------------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request the fake received, and what it wrote back."""

    method: str
    path: str
    query: str
    # Lower-cased names; a repeated header keeps its values joined by ", ".
    headers: dict[str, str]
    body: bytes
    received_at: float
    json: Any = None
    status: int | None = None
    # The response body as written (for a stream: the chunks' payloads, without the framing).
    written: bytearray = field(default_factory=bytearray)
    # Each stream chunk written, with the time (`time.monotonic()`) its write ended.
    chunk_times: list[tuple[float, bytes]] = field(default_factory=list)
    client_gone: bool = False
    finished: threading.Event = field(default_factory=threading.Event)


@dataclass
class Reply:
    """An answer: `body` at once, or `chunks` streamed with `pauses` (seconds of silence before
    chunk `i`; key `len(chunks)` delays the end of the stream)."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    chunks: list[bytes] | None = None
    pauses: dict[int, float] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


Turn = Union[Reply, Callable[[Recorded], Reply]]
Handler = Callable[[Recorded], Reply]


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_reply(value: Any, status: int = 200) -> Reply:
    return Reply(status=status, body=dumps(value))


def error_reply(status: int, message: str, code: str | None = None) -> Reply:
    return json_reply(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
        status,
    )


def sse_event(event: str | None, data: Any) -> bytes:
    """One server-sent event: `event: NAME` (when given) and one `data:` line of compact JSON
    (or the string as is), ended by a blank line."""
    payload = data if isinstance(data, str) else dumps(data).decode()
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


# --------------------------------------------------------------------------------------------------
# The Responses API.
# --------------------------------------------------------------------------------------------------


def message_item(text: str, item_id: str | None = None) -> dict:
    """An assistant message output item with one `output_text` part."""
    return {
        "id": item_id or f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def function_call_item(
    name: str, arguments: dict | str, call_id: str, namespace: str | None = None
) -> dict:
    """A `function_call` output item (`namespace` as Codex's namespaced tools expect)."""
    item = {
        "id": f"fc_{uuid.uuid4().hex}",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
    }
    if namespace is not None:
        item["namespace"] = namespace
    return item


def responses_usage(input_tokens: int, output_tokens: int) -> dict:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    *, response_id: str, model: str, status: str, output: list[dict], usage: dict | None
) -> dict:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def responses_events(
    output: list[dict], *, model: str, input_tokens: int, output_tokens: int, minimal: bool = False
) -> list[bytes]:
    """The stream of one response, one `bytes` per event: `response.created`, then per output
    item `added` (text as two deltas) and `done`, then `response.completed` with the usage.
    `minimal`: only `response.created`, each `response.output_item.done` and
    `response.completed` (what Codex accepts as a whole turn)."""
    response_id = f"resp_{uuid.uuid4().hex}"
    seq = iter(range(1_000_000))
    events: list[bytes] = []

    def add(kind: str, **payload: Any) -> None:
        events.append(sse_event(kind, {"type": kind, "sequence_number": next(seq), **payload}))

    started = response_object(
        response_id=response_id, model=model, status="in_progress", output=[], usage=None
    )
    add("response.created", response=started)
    if not minimal:
        add("response.in_progress", response=started)
    for index, item in enumerate(output):
        if not minimal:
            pending = {**item, "status": "in_progress"}
            if item["type"] == "message":
                pending["content"] = []
            elif item["type"] == "function_call":
                pending["arguments"] = ""
            add("response.output_item.added", output_index=index, item=pending)
            if item["type"] == "message":
                text = item["content"][0]["text"]
                part = {"type": "output_text", "text": "", "annotations": []}
                common = {"item_id": item["id"], "output_index": index, "content_index": 0}
                add("response.content_part.added", **common, part=part)
                half = len(text) // 2
                for piece in (text[:half], text[half:]):
                    add("response.output_text.delta", **common, delta=piece, logprobs=[])
                add("response.output_text.done", **common, text=text, logprobs=[])
                add("response.content_part.done", **common, part=item["content"][0])
            elif item["type"] == "function_call":
                add(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
        add("response.output_item.done", output_index=index, item=item)
    add(
        "response.completed",
        response=response_object(
            response_id=response_id,
            model=model,
            status="completed",
            output=output,
            usage=responses_usage(input_tokens, output_tokens),
        ),
    )
    return events


def responses_turn(
    output: list[dict] | Callable[[Recorded], list[dict]],
    *,
    input_tokens: int,
    output_tokens: int,
    pauses: dict[int, float] | None = None,
    minimal: bool = False,
) -> Handler:
    """A turn of the Responses API that follows the request: streamed when it asks `stream: true`
    (events as `responses_events`, `pauses` before event `i`), else one JSON response object.
    `output` may be computed from the request."""

    def reply(request: Recorded) -> Reply:
        body = request.json if isinstance(request.json, dict) else {}
        model = str(body.get("model", "gpt-5.5"))
        items = output(request) if callable(output) else output
        if body.get("stream"):
            chunks = responses_events(
                items, model=model, input_tokens=input_tokens, output_tokens=output_tokens,
                minimal=minimal,
            )
            return Reply(content_type="text/event-stream", chunks=chunks, pauses=dict(pauses or {}))
        return json_reply(
            response_object(
                response_id=f"resp_{uuid.uuid4().hex}",
                model=model,
                status="completed",
                output=items,
                usage=responses_usage(input_tokens, output_tokens),
            )
        )

    return reply


# --------------------------------------------------------------------------------------------------
# Chat completions.
# --------------------------------------------------------------------------------------------------


def chat_usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_chunks(
    text: str, *, model: str, prompt_tokens: int, completion_tokens: int, include_usage: bool
) -> list[bytes]:
    """A streamed chat completion, one `bytes` per event: the role, the text in two deltas, the
    finish reason, the usage chunk (`include_usage`), then `data: [DONE]`."""
    common = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict, finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse_event(None, {**common, "choices": [choice], **extra})

    half = len(text) // 2
    chunks = [
        chunk({"role": "assistant", "content": ""}, None),
        chunk({"content": text[:half]}, None),
        chunk({"content": text[half:]}, None),
        chunk({}, "stop"),
    ]
    if include_usage:
        usage = chat_usage(prompt_tokens, completion_tokens)
        chunks.append(sse_event(None, {**common, "choices": [], "usage": usage}))
    chunks.append(sse_event(None, "[DONE]"))
    return chunks


def chat_turn(
    text: str,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    pauses: dict[int, float] | None = None,
) -> Handler:
    """A chat completion turn that follows the request: streamed when it asks `stream: true` (a
    usage chunk only when `stream_options.include_usage` is set), else one JSON object."""

    def reply(request: Recorded) -> Reply:
        body = request.json if isinstance(request.json, dict) else {}
        model = str(body.get("model", "gpt-5.5"))
        if body.get("stream"):
            options = body.get("stream_options") or {}
            chunks = chat_chunks(
                text, model=model, prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens, include_usage=bool(options.get("include_usage")),
            )
            return Reply(content_type="text/event-stream", chunks=chunks, pauses=dict(pauses or {}))
        return json_reply(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": chat_usage(prompt_tokens, completion_tokens),
            }
        )

    return reply


# --------------------------------------------------------------------------------------------------
# The server.
# --------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    fake: "FakeTextUpstream"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, socket.timeout):
            pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        fake = self.server.fake
        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = self._read_body()
        record = Recorded(self.command, path, query, headers, body, time.monotonic())
        if body:
            try:
                record.json = json.loads(body)
            except ValueError:
                record.json = None
        fake._record(record)
        try:
            reply = fake._reply_for(record)
            self._send(record, reply)
        finally:
            record.finished.set()

    def _send(self, record: Recorded, reply: Reply) -> None:
        record.status = reply.status
        try:
            self.send_response(reply.status)
            self.send_header("content-type", reply.content_type)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.chunks is None:
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                self.wfile.flush()
                record.written += reply.body
                return
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for index, chunk in enumerate(reply.chunks):
                if not self._pause(record, reply.pauses.get(index, 0.0)):
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                record.written += chunk
                record.chunk_times.append((time.monotonic(), chunk))
            if not self._pause(record, reply.pauses.get(len(reply.chunks), 0.0)):
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self._gone(record)

    def _pause(self, record: Recorded, seconds: float) -> bool:
        """Stays silent for `seconds`, watching the connection; `False` if the client closed it
        (or the fake is stopping)."""
        deadline = time.monotonic() + seconds
        sock = self.connection
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if self.server.fake._stopping.is_set():
                return False
            readable, _, _ = select.select([sock], [], [], min(remaining, POLL_S))
            if not readable:
                continue
            try:
                peeked = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                peeked = b""
            if not peeked:
                self._gone(record)
                return False
            # The client sent something mid-response (it should not): wait without spinning.
            time.sleep(min(remaining, POLL_S))

    def _gone(self, record: Recorded) -> None:
        record.client_gone = True
        self.close_connection = True
        self.server.fake.disconnected.set()


class FakeTextUpstream:
    """See the module's documentation. `api_key`: when set, a request whose `Authorization` is not
    `Bearer <api_key>` gets a 401 (and is still recorded)."""

    def __init__(self, *, models: tuple[str, ...] = DEFAULT_MODELS, api_key: str | None = None):
        self.models = list(models)
        self.api_key = api_key
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._turns: deque[Turn] = deque()
        self._routes: dict[tuple[str, str], Handler] = {}
        self._requests: list[Recorded] = []
        self._unexpected: list[Recorded] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> "FakeTextUpstream":
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-text", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "FakeTextUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What `[passthrough] base_url` (or an SDK's `base_url`) names: `http://HOST:PORT/v1`."""
        return f"http://{self.addr}/v1"

    # -- scripting ----------------------------------------------------------------------------

    def script(self, *turns: Turn) -> None:
        """Queues turns for the next `POST /v1/responses` or `/v1/chat/completions` requests."""
        with self._lock:
            self._turns.extend(turns)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Serves `method path` (path without the query) with `handler` instead of the defaults."""
        with self._lock:
            self._routes[(method.upper(), path)] = handler

    def pending_turns(self) -> int:
        with self._lock:
            return len(self._turns)

    # -- what happened ------------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str, method: str = "POST") -> list[Recorded]:
        return [r for r in self.requests if r.path == path and r.method == method]

    @property
    def unexpected(self) -> list[Recorded]:
        """Requests that found no scripted turn (or no route) and got an error."""
        with self._lock:
            return list(self._unexpected)

    def describe(self) -> str:
        """One line per request, for assertion messages."""
        return "\n".join(
            f"{r.method} {r.path} -> {r.status} ({len(r.body)} B in, {len(r.written)} B out"
            f"{', client gone' if r.client_gone else ''})"
            for r in self.requests
        ) or "<no request>"

    # -- serving ------------------------------------------------------------------------------

    def _record(self, record: Recorded) -> None:
        with self._lock:
            self._requests.append(record)

    def _unexpected_reply(self, record: Recorded, status: int, message: str) -> Reply:
        with self._lock:
            self._unexpected.append(record)
        return error_reply(status, f"fake text upstream: {message}")

    def _reply_for(self, record: Recorded) -> Reply:
        with self._lock:
            handler = self._routes.get((record.method, record.path))
        if handler is not None:
            return handler(record)
        if self.api_key is not None and record.headers.get("authorization") != f"Bearer {self.api_key}":
            return error_reply(401, "Incorrect API key provided.", "invalid_api_key")
        if record.method == "GET" and record.path == "/v1/models":
            return json_reply(
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 1_760_000_000, "owned_by": "fake"}
                        for m in self.models
                    ],
                }
            )
        if record.method == "POST" and record.path in SCRIPTED_PATHS:
            with self._lock:
                turn = self._turns.popleft() if self._turns else None
            if turn is None:
                return self._unexpected_reply(record, 500, f"no scripted turn for {record.path}")
            return turn(record) if callable(turn) else turn
        return self._unexpected_reply(record, 404, f"no route {record.method} {record.path}")
