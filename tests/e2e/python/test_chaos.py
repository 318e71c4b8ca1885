"""Chaos on the upstream path: imagegate → `ChaosProxy` → `imagegate sim`.

Every request the gateway sends upstream — creates, task polls and result downloads (the
simulator's result links name the proxy, `--public-base-url`) — passes a fault-injecting proxy
(`chaos_proxy.py`) that, per request, lets it through or resets the connection before forwarding
it, resets it after forwarding it, truncates the answer, drips it at one byte a second, stalls
until the gateway gives up, or answers a 200 whose body is larger than
`upstream.max_response_bytes`. A mixed load of image requests (`n` = 1) over the four models
(gpt-image-2-all in both its sync and async shapes) runs a few at a time through the official
OpenAI SDK (no retries) while the proxy injects its faults.

Invariants checked afterwards:

- every request ended, within its model's deadline plus the result download time and slack;
- no panic: none in the gateway's log, no `imagegate_errors_total{fault="gateway_panic"}`, and the
  gateway still runs;
- every answer is a 200 with one decodable image, or an OpenAI-shaped error whose status and code
  are in the README's errors table, naming its job; a 502 `upstream_outcome_unknown` carries
  `x-should-retry: false`;
- no double create: per gateway request (its `x-request-id`, which the gateway sends upstream and
  the simulator logs), at most one create reached the simulator, and every create that reached
  it made a task;
- money: once every job is terminal and every task the simulator made is finished, the ledger
  books at least what the simulator billed; after each `unknown` job is resolved from the
  simulator's truth (billed when a create of its request reached the simulator), the ledger
  equals `/_sim/stats` `billed_micros` exactly;
- every fault was injected at least once (into creates; the report shows polls and downloads).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import openai
import pytest
from openai import OpenAI

from chaos_proxy import CREATE, DOWNLOAD, FAULTS, PASS, POLL, ChaosProxy
from conftest import REPO_ROOT, _log_tail, _require_binary
from served import ADMIN_KEY, CLIENT_KEY, Child, OwnSimulator, ServedGateway, gateway_config
from support import PNG_MAGIC, Simulator, http, wait_until

# The fault schedule and the load's order; `IMAGEGATE_CHAOS_SEED` explores others.
SEED = int(os.environ.get("IMAGEGATE_CHAOS_SEED", "20261130"))
CONCURRENCY = 8
REQUESTS_PER_KIND = 20
# Model timings: a stalled create ends at the deadline, a stalled poll when the job gives up.
DEADLINE_S = 6
GIVE_UP_S = 15
RESULTS_TIMEOUT_S = 4
MODEL_SETTINGS = {
    "deadline": f"{DEADLINE_S}s",
    "give_up_after": f"{GIVE_UP_S}s",
    "first_poll_delay": "100ms",
    "poll_interval": "1s",
}
MAX_RESPONSE_BYTES = 1 << 20
RESULT_MAX_BYTES = 2 << 20
HUGE_BYTES = 4 << 20
# A caller waits at most the deadline, then the result downloads (retried within the results
# timeout, the last attempt started before it ends), plus generous slack for a shared machine.
SLACK_S = 15
REQUEST_BOUND_S = DEADLINE_S + 2 * RESULTS_TIMEOUT_S + SLACK_S
# A job ends at the latest when it gives up on its task, then its downloads.
JOBS_SETTLE_S = GIVE_UP_S + 2 * RESULTS_TIMEOUT_S + SLACK_S
SIM_SETTLE_S = 20.0
RUNNING = {"queued", "submitting", "in_progress"}
JOB_HEADER = "x-imagegate-job-id"
# The simulator's create endpoints (`/_sim/stats` counts these as creates).
CREATE_PATHS = {
    "/api/v1/images/generations",
    "/api/v1/images/edits",
    "/api/v1/images/generations-sync",
    "/api/v1/images/edit",
}


@dataclass(frozen=True)
class Kind:
    """One kind of request of the load: a model and its parameters."""

    label: str
    model: str
    params: dict[str, Any]


KINDS = [
    Kind("gpt-image-2-lite", "gpt-image-2-lite", {"size": "1024x640"}),
    Kind("gpt-image-2-all sync", "gpt-image-2-all", {"size": "1024x640", "quality": "low"}),
    Kind(
        "gpt-image-2-all async",
        "gpt-image-2-all",
        {"quality": "low", "extra_body": {"aspect_ratio": "16:9", "resolution": "1K"}},
    ),
    Kind("gpt-image-2-beta", "gpt-image-2-beta", {"size": "1024x1024"}),
    Kind("sparkpix", "sparkpix", {"size": "256x256"}),
]


# --------------------------------------------------------------------------------------------------
# The stack: simulator ← proxy ← gateway.
# --------------------------------------------------------------------------------------------------


class ProxiedSimulator(OwnSimulator):
    """`imagegate sim` whose result links point at the proxy (`--public-base-url`), so result
    downloads take the faulty path too."""

    def __init__(self, binary: Path, log_dir: Path, public_base_url: str, time_scale: float = 0.01):
        self.api_key = f"sk-sim-{uuid.uuid4().hex}"
        self.child = Child.spawn(
            [str(binary), "sim", "--listen", "127.0.0.1:0", "--api-key", self.api_key,
             "--time-scale", str(time_scale), "--public-base-url", public_base_url],
            log_dir / "imagegate-sim.stderr.log",
        )
        self.addr = self.child.listening_addr("simulator")
        Simulator.__init__(self, f"http://{self.addr}")


def chaos_config(*, proxy: ChaosProxy, sim: OwnSimulator, data_dir: Path) -> str:
    """A serve configuration whose upstream (API and result files) is the proxy; the circuit
    breaker is off so that every request meets the faults."""
    return gateway_config(
        sim=sim,
        data_dir=data_dir,
        upstream_addr=proxy.addr,
        upstream={"connect_timeout": "2s", "max_response_bytes": MAX_RESPONSE_BYTES},
        results={"timeout": f"{RESULTS_TIMEOUT_S}s", "max_bytes": RESULT_MAX_BYTES},
        tables={"routing.circuit": {"enabled": False}},
        models={kind: dict(MODEL_SETTINGS) for kind in sorted({k.model for k in KINDS})},
    )


@dataclass
class Stack:
    proxy: ChaosProxy
    sim: ProxiedSimulator
    gateway: ServedGateway

    @property
    def gateway_root(self) -> str:
        return f"http://{self.gateway.addr}"

    def admin_get(self, path: str) -> Any:
        res = http("GET", self.gateway_root + path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert res.status == 200, f"GET {path} -> {res.status}: {res.body[:500]!r}"
        return res.json()

    def admin_post(self, path: str, body: dict) -> Any:
        res = http(
            "POST",
            self.gateway_root + path,
            headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"},
            body=json.dumps(body).encode(),
        )
        assert res.status == 200, f"POST {path} {body} -> {res.status}: {res.body[:500]!r}"
        return res.json()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    binary = _require_binary()
    proxy = ChaosProxy(seed=SEED, huge_bytes=HUGE_BYTES).start()
    sim: ProxiedSimulator | None = None
    gateway: ServedGateway | None = None
    try:
        sim = ProxiedSimulator(binary, tmp_path, public_base_url=f"http://{proxy.addr}")
        host, port = sim.addr.rsplit(":", 1)
        proxy.upstream = (host, int(port))
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        config = tmp_path / "imagegate.toml"
        config.write_text(chaos_config(proxy=proxy, sim=sim, data_dir=data_dir))
        gateway = ServedGateway(binary, config, tmp_path).start()
        yield Stack(proxy, sim, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        if sim is not None:
            sim.child.terminate()
        proxy.stop()
        for log in sorted(tmp_path.glob("imagegate-*.stderr.log")):
            print(f"--- {log} (tail) ---\n{_log_tail(log, 15)}")


# --------------------------------------------------------------------------------------------------
# The load and what each request got.
# --------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one client request got."""

    index: int
    kind: Kind
    request_id: str
    seconds: float = 0.0
    status: int | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    # Why the answer is not one the gateway may give (`None`: it is).
    problem: str | None = None

    @property
    def job_id(self) -> str | None:
        return self.headers.get(JOB_HEADER)

    @property
    def label(self) -> str:
        return f"{self.status} {self.code}" if self.code else str(self.status)

    def describe(self) -> str:
        return (
            f"#{self.index} {self.kind.label} request_id={self.request_id} job={self.job_id} "
            f"{self.label} in {self.seconds:.1f}s{': ' + self.problem if self.problem else ''}"
        )


def documented_errors() -> dict[int, set[str]]:
    """The README's errors table: status → the codes it lists."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Errors", 1)[1].split("\n## ", 1)[0]
    table: dict[int, set[str]] = defaultdict(set)
    for line in section.splitlines():
        row = re.match(r"\|\s*(\d{3})\s*\|([^|]*)\|", line)
        if row:
            table[int(row[1])].update(re.findall(r"`([a-z_]+)`", row[2]))
    assert table, "no errors table in README.md"
    return dict(table)


def image_problem(raw: Any) -> str | None:
    """Why a 200 is not one decodable PNG image (`None`: it is)."""
    data = raw.parse().data or []
    if len(data) != 1:
        return f"{len(data)} images in a 200"
    b64 = data[0].b64_json
    if not b64:
        return "a 200 without b64_json"
    if not base64.b64decode(b64, validate=True).startswith(PNG_MAGIC):
        return "b64_json is not a PNG"
    return None


def error_problem(
    status: int, headers: dict[str, str], body: str, table: dict[int, set[str]]
) -> tuple[str | None, str | None]:
    """The error's code, and why the answer is not a documented OpenAI-shaped error."""
    try:
        error = json.loads(body)["error"]
        code, message, kind = error["code"], error["message"], error["type"]
        assert "param" in error
        assert isinstance(message, str) and isinstance(kind, str) and isinstance(code, str)
    except (ValueError, KeyError, TypeError, AssertionError):
        return None, f"not an OpenAI-shaped error: {body[:300]!r}"
    if code not in table.get(status, set()):
        return code, f"{status} {code} is not in the README's errors table"
    if code == "upstream_outcome_unknown" and headers.get("x-should-retry") != "false":
        return code, f"x-should-retry is {headers.get('x-should-retry')!r}"
    return code, None


def send(client: OpenAI, table: dict[int, set[str]], index: int, kind: Kind) -> Outcome:
    """One image request; every way it can end is recorded, none raised."""
    outcome = Outcome(index, kind, f"chaos-{index:03d}-{uuid.uuid4().hex[:8]}")
    started = time.monotonic()
    try:
        raw = client.images.with_raw_response.generate(
            model=kind.model,
            prompt=f"chaos {kind.label} #{index}",
            n=1,
            extra_headers={"x-request-id": outcome.request_id},
            **kind.params,
        )
        outcome.status = raw.status_code
        outcome.headers = {k.lower(): v for k, v in raw.headers.items()}
        outcome.problem = image_problem(raw)
    except openai.APIStatusError as e:
        outcome.status = e.status_code
        outcome.headers = {k.lower(): v for k, v in e.response.headers.items()}
        outcome.body = e.response.text
        outcome.code, outcome.problem = error_problem(
            e.status_code, outcome.headers, outcome.body, table
        )
    except openai.APIError as e:  # no answer at all: a timeout or a broken connection
        outcome.problem = f"no answer: {type(e).__name__}: {e}"
    outcome.seconds = time.monotonic() - started
    if outcome.status is not None and not outcome.job_id:
        outcome.problem = outcome.problem or f"no {JOB_HEADER} header"
    return outcome


def load_plan() -> list[Kind]:
    plan = [kind for kind in KINDS for _ in range(REQUESTS_PER_KIND)]
    random.Random(SEED).shuffle(plan)
    return plan


def drive(stack: Stack, plan: list[Kind]) -> list[Outcome]:
    client = OpenAI(
        api_key=CLIENT_KEY, base_url=stack.gateway.base_url, max_retries=0,
        timeout=REQUEST_BOUND_S + 30,
    )
    table = documented_errors()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        return list(pool.map(lambda item: send(client, table, *item), enumerate(plan)))


# --------------------------------------------------------------------------------------------------
# The gateway's and the simulator's books.
# --------------------------------------------------------------------------------------------------


def all_jobs(stack: Stack) -> list[dict]:
    jobs: list[dict] = []
    after = ""
    while True:
        page = stack.admin_get(f"/admin/jobs?limit=100{'&after=' + after if after else ''}")
        jobs.extend(page["data"])
        if not page["has_more"]:
            return jobs
        after = page["last_id"]


def wait_for_terminal_jobs(stack: Stack, expected: int) -> list[dict]:
    seen: list[dict] = []

    def settled() -> bool:
        seen[:] = all_jobs(stack)
        return len(seen) >= expected and not any(j["status"] in RUNNING for j in seen)

    wait_until(
        settled, JOBS_SETTLE_S,
        lambda: f"jobs still running after {JOBS_SETTLE_S}s: "
        f"{[(j['id'], j['status']) for j in seen if j['status'] in RUNNING]} ({len(seen)} jobs)",
        interval=0.5,
    )
    return seen


def wait_for_sim_tasks(sim: Simulator) -> dict:
    """The simulator's stats once every task it made has finished (each one is billed: no fault
    directive makes one fail)."""
    last: dict = {}

    def finished() -> bool:
        last.update(sim.stats())
        return last["tasks_billed"] == len(last["task_ids"])

    wait_until(
        finished, SIM_SETTLE_S,
        lambda: f"simulator tasks unfinished: {len(last['task_ids'])} made, "
        f"{last['tasks_billed']} billed",
        interval=0.2,
    )
    return last


def sim_creates(sim: Simulator) -> Counter:
    """Creates that reached the simulator, per `x-request-id` (`None`: sent without one)."""
    return Counter(
        r.get("request_id")
        for r in sim.requests()
        if r["method"] == "POST" and r["path"] in CREATE_PATHS and r["auth_ok"]
    )


def micros(usd: str) -> int:
    return int(Decimal(usd) * 1_000_000)


def ledger_micros(stack: Stack) -> int:
    """The ledger's total cost (every row, compensating rows included)."""
    usage = stack.admin_get("/admin/usage?group_by=served_model")
    total = sum(row["cost_micros"] for row in usage["rows"])
    assert micros(usage["total_cost_usd"]) == total, usage
    return total


def key_spend(stack: Stack) -> dict:
    spend = stack.admin_get("/admin/spend")
    return next(k["spend"] for k in spend["keys"] if k["id"] == "t")


def panic_count(stack: Stack) -> float:
    res = http("GET", stack.gateway_root + "/metrics")
    assert res.status == 200, res.status
    found = re.findall(
        r'^imagegate_errors_total\{[^}]*fault="gateway_panic"[^}]*\}\s+(\S+)$',
        res.body.decode(), flags=re.M,
    )
    return sum(float(v) for v in found)


def resolve_unknown_jobs(
    stack: Stack, jobs: list[dict], creates: Counter
) -> list[tuple[str, str, str]]:
    """Resolves every `unknown` job from the simulator's truth; returns (job, request, outcome)."""
    resolved = []
    for job in jobs:
        if job["status"] != "unknown":
            continue
        detail = stack.admin_get(f"/admin/jobs/{job['id']}")
        outcome = "billed" if creates[detail["request_id"]] else "not_billed"
        stack.admin_post(f"/admin/jobs/{job['id']}/resolve", {"outcome": outcome})
        resolved.append((job["id"], detail["request_id"], outcome))
    return resolved


# --------------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------------


def create_faults(proxy: ChaosProxy) -> dict[str, list[str]]:
    """The faults each request's creates got, by `x-request-id`."""
    faults: dict[str, list[str]] = defaultdict(list)
    for ex in proxy.exchanges():
        if ex.kind == CREATE:
            faults[ex.request_id or "?"].append(ex.fault)
    return faults


def report(lines: list[str]) -> None:
    print("\n" + "\n".join(["=== chaos report ===", *lines]))


def crosstab(outcomes: list[Outcome], faults: dict[str, list[str]]) -> list[str]:
    table: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        table["+".join(faults.get(o.request_id, ["none"]))][o.label] += 1
    return [f"  create fault {f:>14}: {dict(c)}" for f, c in sorted(table.items())]


def offenders(items: list[Any], describe: Callable[[Any], str], limit: int = 15) -> str:
    return "\n".join(describe(i) for i in items[:limit]) + (
        f"\n… and {len(items) - limit} more" if len(items) > limit else ""
    )


# --------------------------------------------------------------------------------------------------
# The invariants.
# --------------------------------------------------------------------------------------------------


def check_answers(outcomes: list[Outcome], jobs: list[dict]) -> None:
    """Every request ended, in time, with an answer the gateway may give, naming its job."""
    wrong = [o for o in outcomes if o.problem]
    assert not wrong, "answers the gateway may not give:\n" + offenders(wrong, Outcome.describe)
    late = [o for o in outcomes if o.seconds > REQUEST_BOUND_S]
    assert not late, f"requests over {REQUEST_BOUND_S}s:\n" + offenders(late, Outcome.describe)
    job_ids = {j["id"] for j in jobs}
    assert len(jobs) == len(outcomes), f"{len(jobs)} jobs for {len(outcomes)} requests"
    assert {o.job_id for o in outcomes} == job_ids, "answers name jobs the gateway does not list"


def check_no_panic(stack: Stack) -> None:
    log = stack.gateway.child.log()
    panics = [line for line in log.splitlines() if "panicked" in line]
    assert not panics, "\n".join(panics[:20])
    assert panic_count(stack) == 0, "imagegate_errors_total{fault=\"gateway_panic\"} > 0"
    assert stack.gateway.child.process.poll() is None, "the gateway exited"


def check_single_creates(
    stack: Stack, outcomes: list[Outcome], creates: Counter, faults: dict[str, list[str]],
    stats: dict,
) -> None:
    """At most one create per request reached the simulator, and each made a task."""
    doubled = {rid: n for rid, n in creates.items() if n > 1}
    assert not doubled, "requests created upstream more than once:\n" + offenders(
        sorted(doubled.items()),
        lambda item: f"{item[0]}: {item[1]} creates; create faults {faults.get(item[0])}",
    )
    ours = {o.request_id for o in outcomes}
    assert set(creates) <= ours, f"creates of requests never sent: {set(creates) - ours}"
    assert stats["creates"] == len(stats["task_ids"]) == sum(creates.values()), stats
    # The harness itself: the simulator logged exactly the creates the proxy forwarded.
    forwarded = Counter(
        ex.request_id for ex in stack.proxy.exchanges() if ex.kind == CREATE and ex.forwarded
    )
    assert forwarded == creates, f"the proxy forwarded {forwarded}, the simulator logged {creates}"


def booking_problems(jobs: list[dict], outcomes: list[Outcome], creates: Counter) -> list[str]:
    """Jobs whose state or booking contradicts what reached the simulator (before resolving):
    a completed job made one task and books it; a failed one made none and books nothing; an
    unknown one stays booked. Work the simulator took is never in a failed job."""
    request_of = {o.job_id: o for o in outcomes}
    problems = []
    for job in jobs:
        o = request_of[job["id"]]
        booked = micros(job.get("cost_usd", "0"))
        made = creates[o.request_id]
        fine = {
            "completed": made == 1 and booked > 0,
            "failed": made == 0 and booked == 0,
            "unknown": booked > 0,
        }.get(job["status"], False)
        if not fine:
            problems.append(
                f"{job['id']} {job['status']} booked={booked} µ$ upstream_creates={made} "
                f"({o.describe()})"
            )
    return problems


def money_detail(
    jobs: list[dict], outcomes: list[Outcome], creates: Counter, faults: dict[str, list[str]],
    stats: dict,
) -> str:
    """Per job, what it booked against whether its request reached the simulator."""
    by_job = {o.job_id: o for o in outcomes}
    rows = []
    for job in jobs:
        o = by_job.get(job["id"])
        rid = o.request_id if o else "?"
        booked = micros(job.get("cost_usd", "0"))
        if bool(booked) != bool(creates[rid]):
            rows.append(
                f"{job['id']} {job['model']} {job['status']} booked={booked} µ$ "
                f"sim_creates={creates[rid]} request_id={rid} create_faults={faults.get(rid)} "
                f"client={o.label if o else '?'}"
            )
    return (
        f"ledger and simulator disagree (simulator billed {stats['billed_micros']} µ$ "
        f"{stats['billed_by_model']}); jobs whose booking and upstream creates differ:\n"
        + offenders(rows, str, 40)
    )


# --------------------------------------------------------------------------------------------------
# The test.
# --------------------------------------------------------------------------------------------------


def test_faults_on_the_upstream_path_keep_every_invariant(stack: Stack):
    started = time.monotonic()
    plan = load_plan()
    outcomes = drive(stack, plan)
    load_s = time.monotonic() - started
    # The faults end with the load: what is left settles over a clean path.
    stack.proxy.set_mode(PASS)

    jobs = wait_for_terminal_jobs(stack, expected=len(plan))
    stats = wait_for_sim_tasks(stack.sim)
    creates = sim_creates(stack.sim)
    faults = create_faults(stack.proxy)
    by_class = {kind: stack.proxy.counts(kind) for kind in (CREATE, POLL, DOWNLOAD)}
    ledger_before = ledger_micros(stack)
    billed = stats["billed_micros"]
    report([
        f"load: {len(plan)} requests in {load_s:.1f}s, {CONCURRENCY} at a time; "
        f"per kind {dict(Counter(k.label for k in plan))}",
        *(f"faults on {kind}s: {dict(c)}" for kind, c in by_class.items()),
        f"outcomes: {dict(Counter(o.label for o in outcomes))}",
        *crosstab(outcomes, faults),
        f"jobs: {dict(Counter(j['status'] for j in jobs))}",
        f"simulator: {stats['creates']} creates, {len(stats['task_ids'])} tasks, "
        f"{stats['tasks_billed']} billed, {billed} µ$ {stats['billed_by_model']}",
        f"ledger before resolving: {ledger_before} µ$ (billed {billed} µ$, "
        f"difference {ledger_before - billed:+} µ$)",
        f"slowest request: {max(o.seconds for o in outcomes):.1f}s (bound {REQUEST_BOUND_S}s)",
    ])

    check_answers(outcomes, jobs)
    check_no_panic(stack)
    check_single_creates(stack, outcomes, creates, faults, stats)
    missing = [f for f in FAULTS if by_class[CREATE][f] == 0]
    assert not missing, f"faults never injected into a create: {missing}"

    # Money: nothing dropped, never less than the platform billed; exact once the unknown jobs
    # are resolved from the simulator's truth.
    problems = booking_problems(jobs, outcomes, creates)
    assert not problems, "bookings that contradict the upstream:\n" + offenders(problems, str, 40)
    assert ledger_before >= billed, money_detail(jobs, outcomes, creates, faults, stats)
    resolved = resolve_unknown_jobs(stack, jobs, creates)
    ledger_after = ledger_micros(stack)
    spend = key_spend(stack)
    report([
        f"unknown jobs resolved: {len(resolved)} "
        f"{dict(Counter(outcome for _, _, outcome in resolved))}",
        *(f"  {job} request_id={rid} create_faults={faults.get(rid)} -> {outcome}"
          for job, rid, outcome in resolved),
        f"ledger after resolving: {ledger_after} µ$ (billed {billed} µ$, "
        f"difference {ledger_after - billed:+} µ$); key spend {spend}",
        f"total: {time.monotonic() - started:.1f}s",
    ])
    assert ledger_after == billed, money_detail(all_jobs(stack), outcomes, creates, faults, stats)
    assert micros(spend["total_spent_usd"]) == ledger_after, spend
    assert micros(spend["reserved_usd"]) == 0, spend
    assert not any(j["status"] == "unknown" for j in all_jobs(stack))
