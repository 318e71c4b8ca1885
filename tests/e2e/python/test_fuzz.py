"""A black-box fuzz corpus against the real `imagegate serve` binary: 1,200 malformed requests,
generated from a fixed seed, each invalid by construction, sent over raw sockets to one gateway
with its own simulator.

Three families, one generator module each (their docstrings list the invalid elements):

- **json** (`fuzz_json`): malformed JSON bodies to `POST /v1/images/generations`, JSON
  `POST /v1/images/edits` and the admin routes that take a body: broken syntax, wrong types and
  out-of-range values for every field, bogus job and routing headers, wrong content types.
- **header** (`fuzz_headers`): malformed HTTP over a raw socket: framing and `Content-Length`,
  header bytes, sizes and counts, `Authorization`, methods, request lines and paths.
- **multipart** (`fuzz_multipart`): malformed `multipart/form-data` edits mixed with harmless
  noise.

`fuzz_common` holds what they share: the case type and its wire form, images, field values.

Every case carries at least one element the gateway must refuse before any upstream call.
Invariants checked:

- no 5xx answer, and no 2xx or 3xx (that would be a valid request: a bug in the generator);
- json and multipart: a 4xx whose body is the OpenAI error object
  `{"error":{"message","type","param","code"}}`;
- header: the same for every answer the application wrote (it carries `x-request-id`); an empty
  4xx from the HTTP layer itself, or a connection closed without an answer, is accepted;
- after every batch of cases and at the end: the process is alive and `GET /healthz` answers 200;
- the simulator's counters (`GET /_sim/stats`) do not move during the corpus: no upstream call;
- no `panicked` line in the gateway's log.

A failure lists the first cases that broke an invariant with their index, what makes them invalid,
the answer and the bytes sent. Case `i` is rebuilt alone by `build_case(i)` (its generator is
seeded by `SEED` and `i`); `IMAGEGATE_FUZZ_CASES=3,141,590` sends only those cases. Run with `-s`
for the one-line summary: cases per family, status histogram, upstream calls leaked.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fuzz_common import VALID_BODY, Case
from fuzz_headers import header_case
from fuzz_json import ADMIN_TARGET_KEY, ADMIN_TARGET_TEAM, json_case
from fuzz_multipart import multipart_case
from served import ADMIN_KEY, CLIENT_KEY, OwnSimulator, ServedGateway
from support import Simulator, http

SEED = 20260430
JSON_CASES = 500
HEADER_CASES = 350
MULTIPART_CASES = 350
TOTAL_CASES = JSON_CASES + HEADER_CASES + MULTIPART_CASES
# Liveness (process and /healthz) is checked after every batch of this many cases.
BATCH = 20
SOCKET_TIMEOUT_S = 5.0
# Failures listed in the assertion message.
SHOWN_FAILURES = 12
FAMILIES = ("json", "header", "multipart")


# --------------------------------------------------------------------------------------------------
# The corpus.
# --------------------------------------------------------------------------------------------------


def build_case(index: int) -> Case:
    """Case `index` of the corpus, built from its own seeded generator."""
    rng = random.Random(f"imagegate-fuzz/{SEED}/{index}")
    if index < JSON_CASES:
        return json_case(index, index, rng)
    if index < JSON_CASES + HEADER_CASES:
        return header_case(index, index - JSON_CASES, rng)
    return multipart_case(index, index - JSON_CASES - HEADER_CASES, rng)


def selected_indices() -> list[int]:
    """Every index of the corpus, or only those listed in `IMAGEGATE_FUZZ_CASES` (`3,141,590`)."""
    only = os.environ.get("IMAGEGATE_FUZZ_CASES", "").strip()
    if only:
        return [int(i) for i in only.split(",") if i.strip()]
    return list(range(TOTAL_CASES))


# --------------------------------------------------------------------------------------------------
# Sending a case and reading the answer.
# --------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    # None: no status line (the connection closed, was reset or the wait timed out).
    status: int | None
    headers: dict[str, str]
    body: bytes
    # `answered`, `closed`, `reset`, `timeout` or `garbled`.
    end: str


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]] | None:
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(parts[1]), headers


def read_answer(sock: socket.socket) -> Answer:
    buf = b""
    status: int | None = None
    headers: dict[str, str] = {}
    try:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                chunk = sock.recv(65536)
                if not chunk:
                    return Answer(None, {}, buf, "closed" if not buf else "garbled")
                buf += chunk
                continue
            parsed = _parse_head(buf[:end])
            if parsed is None:
                return Answer(None, {}, buf, "garbled")
            status, headers = parsed
            buf = buf[end + 4:]
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue): the real one follows
            break
        length = headers.get("content-length")
        while length is None or len(buf) < int(length):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return Answer(status, headers, buf, "answered")
    except socket.timeout:
        return Answer(status, headers, buf, "timeout")
    except (ConnectionResetError, BrokenPipeError):
        return Answer(status, headers, buf, "reset" if status is None else "answered")


def send(addr: tuple[str, int], case: Case) -> Answer:
    try:
        sock = socket.create_connection(addr, timeout=SOCKET_TIMEOUT_S)
    except OSError as e:
        return Answer(None, {}, b"", f"connect failed ({e})")
    with sock:
        try:
            sock.sendall(case.data)
            if case.shut_wr:
                sock.shutdown(socket.SHUT_WR)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server answered (or closed) before reading everything: read what it said
        except socket.timeout:
            return Answer(None, {}, b"", "timeout")
        return read_answer(sock)


# --------------------------------------------------------------------------------------------------
# Judging an answer.
# --------------------------------------------------------------------------------------------------


def from_http_layer(answer: Answer) -> bool:
    """An answer written by the HTTP layer itself (malformed request): no request id, no body."""
    return "x-request-id" not in answer.headers and not answer.body


def label(case: Case, answer: Answer) -> str:
    if answer.status is None:
        return answer.end
    if case.family == "header" and from_http_layer(answer):
        return f"{answer.status} (hyper)"
    return str(answer.status)


def error_shape_problem(answer: Answer) -> str | None:
    content_type = answer.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        return f"error body is not JSON (content-type {content_type!r})"
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return "error body does not parse as JSON"
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return "no `error` object"
    if not isinstance(error.get("message"), str) or not isinstance(error.get("type"), str):
        return "`error.message` or `error.type` is not a string"
    if "param" not in error or "code" not in error:
        return "`error.param` or `error.code` is missing"
    return None


def problem(case: Case, answer: Answer) -> str | None:
    """Why this answer breaks an invariant, or None."""
    if answer.status is None:
        if answer.end == "timeout":
            return f"no answer and no close within {SOCKET_TIMEOUT_S:.0f}s"
        if answer.end == "garbled":
            return "the answer is not HTTP"
        if case.family == "header" and answer.end in ("closed", "reset"):
            return None  # closed without an answer: acceptable for a malformed request
        return f"connection {answer.end} without an answer"
    if answer.end == "timeout":
        return f"answer {answer.status} not finished within {SOCKET_TIMEOUT_S:.0f}s"
    if answer.status >= 500:
        return f"server error {answer.status}"
    if answer.status < 400:
        return f"accepted with {answer.status}: the case is not invalid (generator bug)"
    if case.family == "header" and from_http_layer(answer):
        return None
    return error_shape_problem(answer)


# --------------------------------------------------------------------------------------------------
# The gateway's health and the upstream's counters.
# --------------------------------------------------------------------------------------------------

COUNTERS = ("requests", "creates", "polls", "downloads")


def upstream_counters(sim: Simulator) -> dict[str, int]:
    stats = sim.stats()
    return {name: stats[name] for name in COUNTERS}


def create_admin_targets(gateway: ServedGateway) -> None:
    """A key and a team for the corpus's malformed PATCH bodies (no upstream call)."""
    for path, body in (("/admin/keys", {"id": ADMIN_TARGET_KEY}),
                       ("/admin/teams", {"id": ADMIN_TARGET_TEAM})):
        res = http("POST", f"http://{gateway.addr}{path}", body=json.dumps(body).encode(),
                   headers={"Authorization": f"Bearer {ADMIN_KEY}",
                            "Content-Type": "application/json"})
        assert res.status in (200, 201), f"POST {path} -> {res.status}: {res.body[:300]!r}"


def liveness_problem(gateway: ServedGateway) -> str | None:
    code = gateway.child.process.poll()
    if code is not None:
        return f"the gateway exited with {code}"
    try:
        res = http("GET", f"http://{gateway.addr}/healthz")
    except OSError as e:
        return f"GET /healthz failed: {e}"
    if res.status != 200:
        return f"GET /healthz answered {res.status}: {res.body[:200]!r}"
    return None


@dataclass
class Failure:
    case: Case
    reason: str
    answer: Answer | None = None

    def render(self) -> str:
        c = self.case
        sent = c.data if len(c.data) <= 600 else c.data[:600] + b"...(%d bytes)" % len(c.data)
        text = f"#{c.index} [{c.family}] {c.what}\n    -> {self.reason}"
        if self.answer is not None:
            text += f"\n    answer: {self.answer.status} {self.answer.end} {self.answer.body[:300]!r}"
        return text + f"\n    sent{' (then half-closed)' if c.shut_wr else ''}: {sent!r}"


def summary(
    cases: list[Case], statuses: Counter[tuple[str, str]], leaked: dict[str, int], seconds: float
) -> str:
    """One line: cases per family, each family's status histogram, upstream calls leaked."""
    counts = Counter(c.family for c in cases)
    per_family = ", ".join(f"{f} {counts[f]}" for f in FAMILIES)
    histograms = "; ".join(
        f"{f} {{" + ", ".join(f"{s}: {n}" for (g, s), n in sorted(statuses.items()) if g == f) + "}"
        for f in FAMILIES
    )
    return (f"fuzz corpus: {len(cases)} cases ({per_family}) in {seconds:.1f}s; "
            f"statuses: {histograms}; upstream calls leaked: {leaked}")


# --------------------------------------------------------------------------------------------------
# The tests.
# --------------------------------------------------------------------------------------------------


def test_the_corpus_is_seeded_large_and_covers_three_families() -> None:
    sample = range(0, TOTAL_CASES, 7)
    first = [build_case(i) for i in sample]
    assert first == [build_case(i) for i in sample], "the corpus is not deterministic"
    assert TOTAL_CASES >= 600 and min(JSON_CASES, HEADER_CASES, MULTIPART_CASES) >= 150
    assert {c.family for c in first} == set(FAMILIES)
    assert all(c.what and c.data for c in first)


def test_malformed_requests_are_refused_before_any_upstream_call(
    serve_gateway: Callable[..., ServedGateway], own_sim: OwnSimulator
) -> None:
    gateway = serve_gateway()
    create_admin_targets(gateway)
    host, port = gateway.addr.rsplit(":", 1)
    addr = (host, int(port))
    before = upstream_counters(own_sim)
    started = time.monotonic()

    cases: list[Case] = []
    failures: list[Failure] = []
    statuses: Counter[tuple[str, str]] = Counter()
    indices = selected_indices()
    for n, index in enumerate(indices, start=1):
        case = build_case(index)
        cases.append(case)
        answer = send(addr, case)
        statuses[(case.family, label(case, answer))] += 1
        why = problem(case, answer)
        if why is not None:
            failures.append(Failure(case, why, answer))
        if n % BATCH == 0 or n == len(indices):
            dead = liveness_problem(gateway)
            if dead is not None:
                batch = ", ".join(f"#{c.index}" for c in cases[-BATCH:])
                failures.append(Failure(case, f"{dead} (after the batch {batch})"))
                break

    seconds = time.monotonic() - started
    after = upstream_counters(own_sim)
    leaked = {name: after[name] - before[name] for name in COUNTERS}
    panics = [line for line in gateway.child.log().splitlines() if "panicked" in line]
    print("\n" + summary(cases, statuses, leaked, seconds))

    report: list[str] = []
    if any(leaked.values()):
        report.append(f"upstream calls during the corpus: {leaked}")
    if panics:
        report.append("the gateway panicked:\n" + "\n".join(panics[:10]))
    if failures:
        report.append(f"{len(failures)} of {len(cases)} cases broke an invariant:")
        report += [f.render() for f in failures[:SHOWN_FAILURES]]
        if len(failures) > SHOWN_FAILURES:
            report.append(f"... and {len(failures) - SHOWN_FAILURES} more")
    if report:
        pytest.fail("\n".join(report), pytrace=False)

    # The counters do see this gateway's calls: one valid generation moves them.
    res = http("POST", f"http://{gateway.addr}/v1/images/generations", body=VALID_BODY,
               headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
    assert res.status == 200, f"the valid control request failed: {res.status} {res.body[:300]!r}"
    assert upstream_counters(own_sim)["creates"] == after["creates"] + 1
