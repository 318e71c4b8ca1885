"""A fault-injecting HTTP/1.1 proxy for the path between imagegate and its upstream platform.

`ChaosProxy` listens on 127.0.0.1 (an ephemeral port) and forwards to one upstream address (the
simulator). It runs an asyncio event loop in a background thread: `start()` / `stop()`.

**Faults are decided per request, on the request boundary.** The gateway keeps pooled keep-alive
connections, so one TCP connection carries many requests (creates, task polls, result
downloads); a fault per connection would hit whichever request happens to come first. The proxy
therefore parses HTTP/1.1 framing (request line, headers, `Content-Length` or chunked bodies, the
same for responses), waits until a whole request has arrived, and only then draws that request's
fault. A fault that ends the exchange abnormally also ends the client connection; `pass` and a
`drip` that finishes keep it alive.

Faults (`FAULTS`):

- `pass`: forward the request, relay the answer.
- `reset_before`: close the client connection with a TCP RST (`SO_LINGER` 0) before any byte of
  the request is forwarded: the upstream never sees it.
- `reset_after`: forward the request, then RST the client before any byte of the answer. The
  upstream's answer is still read (and its status recorded): the upstream did the work.
- `truncate`: forward the request, relay the status line, the headers (with the full length) and
  half of the body, then close.
- `drip`: forward the request, relay the first few bytes of the answer at one byte per second
  (`DRIP_BYTES`, so a few seconds at most), then either the rest of the answer (the connection
  stays usable) or a close.
- `stall`: forward the request and never answer; the connection is held until the gateway gives
  up and closes it (at most `MAX_HOLD_S`). The upstream's answer is read and recorded.
- `huge`: forward the request (the upstream does the work, as a real platform would), read its
  answer, then answer instead with a well-formed `200` whose JSON-looking body is `huge_bytes`
  long — announced by `Content-Length` or sent chunked, alternately — streamed until the gateway
  closes the connection (or to its end, then the proxy closes it).

Each request is classified as `create` (a POST), `poll` (a GET of a task), `download` (a GET of
`/files/…`) or `other` (never faulted). Each class has its own deck of faults, shuffled by its own
`random.Random` seeded from the proxy's seed: the k-th create always gets the same fault,
whatever the interleaving of polls and downloads. A deck holds every fault of its class, so a
run as long as one deck exercises every fault. `set_mode(fault)` overrides the decks for every
later request (`set_mode(None)` returns to them).

Every request is recorded as an `Exchange` (class, path, `x-request-id`, fault, whether it was
forwarded, the upstream's status), so a test can tell which requests reached the upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

PASS = "pass"
RESET_BEFORE = "reset_before"
RESET_AFTER = "reset_after"
TRUNCATE = "truncate"
DRIP = "drip"
STALL = "stall"
HUGE = "huge"
FAULTS = (PASS, RESET_BEFORE, RESET_AFTER, TRUNCATE, DRIP, STALL, HUGE)

CREATE = "create"
POLL = "poll"
DOWNLOAD = "download"
OTHER = "other"

# One deck per request class: how many of each fault a shuffled round holds.
DEFAULT_DECKS: dict[str, dict[str, int]] = {
    CREATE: {PASS: 6, RESET_BEFORE: 2, RESET_AFTER: 2, TRUNCATE: 2, DRIP: 2, STALL: 1, HUGE: 2},
    POLL: {PASS: 12, RESET_BEFORE: 1, RESET_AFTER: 1, TRUNCATE: 1, DRIP: 1, STALL: 1, HUGE: 1},
    DOWNLOAD: {PASS: 12, RESET_BEFORE: 1, RESET_AFTER: 1, TRUNCATE: 1, DRIP: 1, STALL: 1, HUGE: 1},
}

# A drip relays this many bytes (drawn per request) at one byte per second.
DRIP_BYTES = (2, 4)
# The longest a stalled connection, or a huge answer, is held open.
MAX_HOLD_S = 60.0
# The longest wait for the upstream's answer.
UPSTREAM_TIMEOUT_S = 30.0
HUGE_PIECE = 64 * 1024
READ_LIMIT = 1 << 20


class HttpFramingError(Exception):
    """A message that is not HTTP/1.1 as the proxy understands it."""


@dataclass
class Message:
    """One HTTP message: its head (start line and headers, with the blank line) and its body as
    received (chunked framing kept)."""

    head: bytes
    body: bytes
    start_line: str
    headers: dict[str, str]

    @property
    def raw(self) -> bytes:
        return self.head + self.body

    def closes(self) -> bool:
        """Whether the connection cannot carry another message after this one."""
        return self.headers.get("connection", "").lower() == "close"


@dataclass
class Exchange:
    """One request through the proxy and what was done to it."""

    seq: int
    conn: int
    kind: str
    method: str
    target: str
    request_id: str | None
    fault: str
    variant: str = ""
    forwarded: bool = False
    upstream_status: int | None = None
    bytes_to_client: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    error: str | None = None

    def describe(self) -> str:
        variant = f"/{self.variant}" if self.variant else ""
        return (
            f"#{self.seq} conn={self.conn} {self.kind} {self.method} {self.target} "
            f"request_id={self.request_id} fault={self.fault}{variant} "
            f"forwarded={self.forwarded} upstream_status={self.upstream_status} "
            f"bytes_to_client={self.bytes_to_client}"
            + (f" error={self.error}" if self.error else "")
        )


# --------------------------------------------------------------------------------------------------
# HTTP/1.1 framing.
# --------------------------------------------------------------------------------------------------


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpFramingError(f"header line without a colon: {line!r}")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The head up to and with the blank line; `None` on a clean end of stream before it."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise HttpFramingError(f"connection closed inside a head: {e.partial[:200]!r}") from None


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        out += line
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:
                trailer = await reader.readuntil(b"\r\n")
                out += trailer
                if trailer == b"\r\n":
                    return bytes(out)
        out += await reader.readexactly(size + 2)


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], *, to_close: bool
) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    length = headers.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read() if to_close else b""


async def read_request(reader: asyncio.StreamReader) -> Message | None:
    head = await _read_head(reader)
    if head is None:
        return None
    start_line, headers = _parse_head(head)
    body = await _read_body(reader, headers, to_close=False)
    return Message(head, body, start_line, headers)


async def read_response(reader: asyncio.StreamReader, method: str) -> Message:
    head = await _read_head(reader)
    if head is None:
        raise HttpFramingError("the upstream closed the connection without an answer")
    start_line, headers = _parse_head(head)
    status = _status_of(start_line)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await _read_body(reader, headers, to_close=True)
        if "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", ""):
            headers["connection"] = "close"
    return Message(head, body, start_line, headers)


def _status_of(start_line: str) -> int:
    parts = start_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpFramingError(f"not a status line: {start_line!r}")
    return int(parts[1])


def classify(method: str, target: str) -> str:
    path = target.split("?", 1)[0]
    if method == "POST":
        return CREATE
    if method == "GET" and path.startswith("/files/"):
        return DOWNLOAD
    if method == "GET" and path.startswith("/api/"):
        return POLL
    return OTHER


def rst(writer: asyncio.StreamWriter) -> None:
    """Closes the connection with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None and not writer.transport.is_closing():
        writer.close()


class UpstreamLink:
    """The upstream connection that serves one client connection, opened on demand and kept
    alive across its requests until an exchange ends abnormally."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, addr: tuple[str, int], data: bytes) -> None:
        if self._writer is None or self._writer.transport.is_closing() or self._reader.at_eof():
            self.drop()
            self._reader, self._writer = await asyncio.open_connection(*addr, limit=READ_LIMIT)
        self._writer.write(data)
        await self._writer.drain()

    async def receive(self, method: str) -> Message:
        assert self._reader is not None, "nothing was sent"
        return await read_response(self._reader, method)

    def drop(self) -> None:
        close(self._writer)
        self._reader = self._writer = None


# --------------------------------------------------------------------------------------------------
# The fault schedule.
# --------------------------------------------------------------------------------------------------


class FaultSchedule:
    """Per request class, an endless sequence of faults: shuffled decks, one `random.Random` per
    class, so the sequence of each class depends only on the seed."""

    def __init__(self, seed: int, decks: dict[str, dict[str, int]]):
        self._decks = decks
        self._rngs = {kind: random.Random(f"{seed}:{kind}") for kind in decks}
        self._pending: dict[str, list[str]] = {kind: [] for kind in decks}

    def draw(self, kind: str) -> tuple[str, random.Random | None]:
        """The next fault of `kind` and the class's generator (for the fault's own choices)."""
        if kind not in self._decks:
            return PASS, None
        rng = self._rngs[kind]
        pending = self._pending[kind]
        if not pending:
            pending.extend(
                itertools.chain.from_iterable([f] * n for f, n in self._decks[kind].items())
            )
            rng.shuffle(pending)
        return pending.pop(), rng


# --------------------------------------------------------------------------------------------------
# The proxy.
# --------------------------------------------------------------------------------------------------


class ChaosProxy:
    """See the module's documentation. `upstream` may be set after `start()` (the simulator's
    result links name the proxy, so the proxy's port is needed before the simulator starts)."""

    def __init__(
        self,
        *,
        seed: int,
        decks: dict[str, dict[str, int]] | None = None,
        huge_bytes: int = 4 * 1024 * 1024,
        upstream: tuple[str, int] | None = None,
    ):
        self.upstream = upstream
        self.huge_bytes = huge_bytes
        self._schedule = FaultSchedule(seed, decks or DEFAULT_DECKS)
        self._mode: str | None = None
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._seq = itertools.count(1)
        self._conns = itertools.count(1)
        self._huge_chunked = itertools.cycle([False, True])
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._failure: BaseException | None = None
        self.port = 0

    # -- control (any thread) -----------------------------------------------------------------

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ChaosProxy":
        ready = threading.Event()

        def run() -> None:
            try:
                asyncio.run(self._main(ready))
            except BaseException as e:  # raised by start() or stop()
                self._failure = e
                ready.set()

        self._thread = threading.Thread(target=run, name="chaos-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10) or self._failure:
            raise RuntimeError(f"the chaos proxy did not start: {self._failure!r}")
        return self

    def stop(self) -> None:
        """Closes the listener and every connection; raises if the event loop had failed."""
        if self._loop is None or self._thread is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=15)
        if self._thread.is_alive() or self._failure:
            raise RuntimeError(f"the chaos proxy did not stop cleanly: {self._failure!r}")

    def set_mode(self, fault: str | None) -> None:
        """Every later request gets `fault` (`None`: back to the schedule)."""
        assert fault is None or fault in FAULTS, fault
        with self._lock:
            self._mode = fault

    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    def counts(self, kind: str | None = None) -> Counter:
        """How many requests (of `kind`, or all faultable ones) got each fault."""
        return Counter(
            e.fault for e in self.exchanges() if (e.kind == kind if kind else e.kind != OTHER)
        )

    # -- the event loop -----------------------------------------------------------------------

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=READ_LIMIT)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = next(self._conns)
        link = UpstreamLink()
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                exchange = self._begin(conn, request)
                try:
                    keep = await self._serve(exchange, request, reader, writer, link)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                        HttpFramingError) as e:
                    exchange.error = f"{type(e).__name__}: {e}"
                    keep = False
                finally:
                    exchange.ended = time.monotonic()
                if not keep:
                    return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpFramingError):
            return
        except asyncio.CancelledError:
            return
        finally:
            link.drop()
            close(writer)
            self._tasks.discard(task)

    def _begin(self, conn: int, request: Message) -> Exchange:
        method, _, rest = request.start_line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        kind = classify(method, target)
        with self._lock:
            if self._mode is not None and kind != OTHER:
                fault, rng = self._mode, None
            else:
                fault, rng = self._schedule.draw(kind)
            variant = ""
            if fault == DRIP:
                count = (rng or random).randint(*DRIP_BYTES)
                variant = f"{count}B-{(rng or random).choice(['then-rest', 'then-close'])}"
            elif fault == HUGE:
                variant = "chunked" if next(self._huge_chunked) else "content-length"
            exchange = Exchange(
                seq=next(self._seq),
                conn=conn,
                kind=kind,
                method=method,
                target=target,
                request_id=request.headers.get("x-request-id"),
                fault=fault,
                variant=variant,
            )
            self._exchanges.append(exchange)
        return exchange

    async def _serve(
        self,
        ex: Exchange,
        request: Message,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: UpstreamLink,
    ) -> bool:
        """Applies the exchange's fault; whether the client connection carries on."""
        if ex.fault == RESET_BEFORE or self.upstream is None:
            rst(writer)
            return False
        await link.send(self.upstream, request.raw)
        ex.forwarded = True
        if ex.fault == RESET_AFTER:
            rst(writer)
            await self._drain_upstream(ex, link)
            return False
        if ex.fault == STALL:
            await asyncio.gather(self._drain_upstream(ex, link), _hold(reader))
            return False
        response = await self._answer(ex, link)
        if response.closes():
            link.drop()
        if ex.fault == PASS:
            await self._send(ex, writer, response.raw)
            return not response.closes()
        if ex.fault == TRUNCATE:
            if response.body:
                cut = len(response.head) + len(response.body) // 2
            else:
                cut = len(response.head) // 2
            await self._send(ex, writer, response.raw[:cut])
            close(writer)
            return False
        if ex.fault == DRIP:
            return await self._drip(ex, writer, response) and not response.closes()
        if ex.fault == HUGE:
            link.drop()
            await self._huge(ex, writer)
            return False
        raise AssertionError(f"unknown fault {ex.fault}")

    async def _answer(self, ex: Exchange, link: UpstreamLink) -> Message:
        response = await asyncio.wait_for(link.receive(ex.method), UPSTREAM_TIMEOUT_S)
        ex.upstream_status = _status_of(response.start_line)
        return response

    async def _drain_upstream(self, ex: Exchange, link: UpstreamLink) -> None:
        """Reads (and records) the upstream's answer that the client will not get."""
        try:
            await self._answer(ex, link)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, HttpFramingError) as e:
            ex.error = f"upstream answer not read: {type(e).__name__}: {e}"
        finally:
            link.drop()

    async def _send(self, ex: Exchange, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        ex.bytes_to_client += len(data)

    async def _drip(self, ex: Exchange, writer: asyncio.StreamWriter, response: Message) -> bool:
        """One byte a second, then the rest or a close; `True` if the whole answer was sent."""
        count_text, _, then = ex.variant.partition("B-")
        count = min(int(count_text), len(response.raw))
        for i in range(count):
            await self._send(ex, writer, response.raw[i:i + 1])
            await asyncio.sleep(1.0)
        if then == "then-close":
            close(writer)
            return False
        await self._send(ex, writer, response.raw[count:])
        return True

    async def _huge(self, ex: Exchange, writer: asyncio.StreamWriter) -> None:
        """A 200 with a JSON-looking body of `huge_bytes`, streamed until its end or until the
        client closes the connection (at most `MAX_HOLD_S`)."""
        chunked = ex.variant == "chunked"
        prefix = b'{"code":200,"msg":"success","data":{"b64_json":"'
        suffix = b'"}}'
        filler = self.huge_bytes - len(prefix) - len(suffix)
        framing = (
            b"transfer-encoding: chunked\r\n"
            if chunked
            else f"content-length: {self.huge_bytes}\r\n".encode()
        )
        await self._send(
            ex,
            writer,
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + framing
            + b"\r\n",
        )
        filling = [b"A" * min(HUGE_PIECE, filler - i) for i in range(0, filler, HUGE_PIECE)]
        pieces = [prefix, *filling, suffix]

        async def stream() -> None:
            for piece in pieces:
                data = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                await self._send(ex, writer, data)
            if chunked:
                await self._send(ex, writer, b"0\r\n\r\n")

        try:
            await asyncio.wait_for(stream(), MAX_HOLD_S)
        except (OSError, asyncio.TimeoutError):
            pass
        close(writer)


async def _hold(reader: asyncio.StreamReader) -> None:
    """Waits until the peer closes (or `MAX_HOLD_S`), discarding anything it sends."""
    async def until_eof() -> None:
        while await reader.read(65536):
            pass

    try:
        await asyncio.wait_for(until_eof(), MAX_HOLD_S)
    except (OSError, asyncio.TimeoutError):
        pass
