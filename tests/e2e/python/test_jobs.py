"""Durable image jobs driven by the official OpenAI Python SDK: the async API
(`Prefer: respond-async`, `GET /v1/images/jobs/{id}`), `Idempotency-Key`, SDK retries that join
their job, deadlines that do not lose paid work, and a gateway restart under a waiting call."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import openai
import pytest
from openai import OpenAI
from openai.types import ImagesResponse
from PIL import Image

from served import CLIENT_KEY, free_port
from support import DEFAULT_MODEL, REQUEST_TIMEOUT_S, wait_until

JOB_HEADER = "x-imagegate-job-id"
JOB_KEYS = {"id", "object", "status", "model", "created_at", "completed_at"}
RUNNING = {"queued", "submitting", "in_progress"}
JOB_TIMEOUT_S = 30.0
# Short model settings for the served gateways (poll_interval and deadline are at least 1s).
FAST_POLLS = {"first_poll_delay": "10ms", "poll_interval": "1s"}


def prompt(text: str) -> str:
    """A prompt made unique per call, so no cache or dedup can answer it."""
    return f"{text} #{uuid.uuid4().hex[:8]}"


def decoded_png(b64: str | None) -> Image.Image:
    assert b64, "no b64_json in the answer"
    image = Image.open(BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    assert image.format == "PNG", image.format
    assert image.size[0] > 0 and image.size[1] > 0
    return image


def get_job(client: OpenAI, job_id: str) -> dict:
    job = client.get(f"/images/jobs/{job_id}", cast_to=object)
    assert isinstance(job, dict) and JOB_KEYS <= set(job), f"not a job object: {job!r}"
    assert (job["id"], job["object"]) == (job_id, "image.job"), job
    return job


def wait_for_job(client: OpenAI, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict:
    """Polls `GET /v1/images/jobs/{id}` until the job leaves the running states; it must have
    completed, with a `result` that parses as the synchronous answer."""
    last: dict = {}

    def finished() -> bool:
        last.update(get_job(client, job_id))
        assert last["status"] in RUNNING | {"completed", "failed", "unknown"}, last
        return last["status"] not in RUNNING

    wait_until(finished, timeout, lambda: f"job {job_id} still running after {timeout:.0f}s: {last!r}")
    assert last["status"] == "completed", f"job {job_id} did not complete: {json.dumps(last)[:1000]}"
    assert "error" not in last, last
    assert isinstance(last["completed_at"], int) and last["completed_at"] >= last["created_at"], last
    return last


def served_client(gateway, **kwargs) -> OpenAI:
    return OpenAI(api_key=CLIENT_KEY, base_url=gateway.base_url, timeout=REQUEST_TIMEOUT_S, **kwargs)


class Traffic:
    """Every HTTP answer an SDK client got (its own retries included): `(status, headers, body)`
    with the body read for error answers; and the `x-stainless-retry-count` of each request."""

    def __init__(self):
        self.answers: list[tuple[int, dict, bytes]] = []
        self.retry_counts: list[str | None] = []
        self._lock = threading.Lock()

    def http_client(self):
        def on_request(request):
            with self._lock:
                self.retry_counts.append(request.headers.get("x-stainless-retry-count"))

        def on_response(response):
            body = response.read() if response.status_code >= 400 else b""
            with self._lock:
                self.answers.append((response.status_code, dict(response.headers), body))

        return openai.DefaultHttpxClient(
            timeout=REQUEST_TIMEOUT_S, event_hooks={"request": [on_request], "response": [on_response]}
        )

    def statuses(self) -> list[int]:
        return [status for status, _, _ in self.answers]


# --------------------------------------------------------------------------------------------------
# The async API: 202 with the job, then the job's result.
# --------------------------------------------------------------------------------------------------


def test_respond_async_gives_a_job_to_poll(client: OpenAI, demo, sim):
    before = sim.creates()
    raw = client.images.with_raw_response.generate(
        model=DEFAULT_MODEL,
        prompt=prompt("a lighthouse at dusk [sim:slow=1]"),
        extra_headers={"Prefer": "respond-async"},
    )
    assert raw.status_code == 202, raw.http_response.text[:500]
    job = raw.http_response.json()
    assert JOB_KEYS <= set(job), job
    job_id = job["id"]
    assert job_id.startswith("imgjob_"), job
    assert job["object"] == "image.job"
    assert job["model"] == DEFAULT_MODEL
    # The upstream task takes a second: the answer came before the work ended.
    assert job["status"] in RUNNING, job
    assert job["completed_at"] is None, job
    assert "result" not in job, job
    assert raw.headers["location"] == f"/v1/images/jobs/{job_id}"
    assert raw.headers[JOB_HEADER] == job_id

    # Newest first in the caller's list.
    listing = client.get("/images/jobs", cast_to=object, options={"params": {"limit": 1}})
    assert listing["object"] == "list" and isinstance(listing["has_more"], bool), listing
    assert [j["id"] for j in listing["data"]] == [job_id], listing

    done = wait_for_job(client, job_id)
    result = ImagesResponse.model_validate(done["result"])
    assert isinstance(result.created, int) and result.created > 1_600_000_000
    assert result.data is not None and len(result.data) == 1
    decoded_png(result.data[0].b64_json)
    assert sim.creates() - before == 1

    # Another key (the demo's limited one) does not see the job.
    other = OpenAI(
        api_key=demo.limited_api_key, base_url=demo.gateway_url, max_retries=0, timeout=REQUEST_TIMEOUT_S
    )
    with pytest.raises(openai.NotFoundError) as exc:
        other.get(f"/images/jobs/{job_id}", cast_to=object)
    assert exc.value.status_code == 404
    listing = other.get("/images/jobs", cast_to=object)
    assert job_id not in [j["id"] for j in listing["data"]], listing


# --------------------------------------------------------------------------------------------------
# Result downloads are retried inside the gateway.
# --------------------------------------------------------------------------------------------------


def test_missing_result_file_is_fetched_again_by_the_gateway(demo, sim):
    traffic = Traffic()
    # The SDK's default retries: any retry it made would show in `traffic`.
    sdk = OpenAI(
        api_key=demo.api_key, base_url=demo.gateway_url, timeout=REQUEST_TIMEOUT_S,
        http_client=traffic.http_client(),
    )
    assert sdk.max_retries == 2
    before = sim.stats()
    # gpt-image-2-lite's answer is a result URL the gateway downloads for `b64_json`.
    raw = sdk.images.with_raw_response.generate(
        model="gpt-image-2-lite", prompt=prompt("a quiet harbor [sim:nofile=2]")
    )
    after = sim.stats()
    assert raw.status_code == 200
    assert raw.headers[JOB_HEADER].startswith("imgjob_")
    decoded_png(raw.parse().data[0].b64_json)
    assert after["creates"] - before["creates"] == 1
    # Two downloads answered 404, the third the file.
    assert after["downloads"] - before["downloads"] >= 3, (before, after)
    assert traffic.statuses() == [200], f"the SDK had to retry: {traffic.answers}"


# --------------------------------------------------------------------------------------------------
# The deadline answers 504, the work goes on, and the job has the image.
# --------------------------------------------------------------------------------------------------


def test_deadline_is_504_naming_the_job_that_completes(own_sim, serve_gateway):
    gateway = serve_gateway(models={"gpt-image-2-beta": {"deadline": "2s", **FAST_POLLS}})
    sdk = served_client(gateway)  # default retries
    assert sdk.max_retries == 2

    with pytest.raises(openai.APIStatusError) as exc:
        sdk.images.generate(model="gpt-image-2-beta", prompt=prompt("a slow dune [sim:slow=4]"))
    err = exc.value
    assert err.status_code == 504, err.response.text
    assert err.code == "upstream_timeout", err.body
    assert err.response.headers["x-should-retry"] == "false"
    job_id = err.response.headers[JOB_HEADER]
    assert job_id.startswith("imgjob_")
    assert job_id in err.message, err.message
    # The SDK did not send it again.
    assert own_sim.creates() == 1

    done = wait_for_job(sdk, job_id)
    assert done["model"] == "gpt-image-2-beta"
    decoded_png(ImagesResponse.model_validate(done["result"]).data[0].b64_json)
    stats = own_sim.stats()
    assert (stats["creates"], stats["tasks_billed"]) == (1, 1), stats


# --------------------------------------------------------------------------------------------------
# Idempotency-Key.
# --------------------------------------------------------------------------------------------------


def test_idempotency_key_runs_one_job_for_concurrent_calls(client: OpenAI, sim):
    key = f"e2e-{uuid.uuid4().hex}"
    body = {"model": DEFAULT_MODEL, "prompt": prompt("a paper boat [sim:slow=1]")}
    before = sim.creates()

    def one(_):
        return client.images.with_raw_response.generate(**body, extra_headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(one, range(10)))
    assert sim.creates() - before == 1
    assert {a.status_code for a in answers} == {200}
    assert len({a.headers[JOB_HEADER] for a in answers}) == 1, [a.headers[JOB_HEADER] for a in answers]
    datas = [[d.model_dump() for d in a.parse().data] for a in answers]
    assert all(d == datas[0] for d in datas), "the answers of one job differ"
    decoded_png(datas[0][0]["b64_json"])

    # The same key for another request is refused, and reaches no upstream.
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        client.images.generate(
            model=DEFAULT_MODEL, prompt=prompt("another boat"), extra_headers={"Idempotency-Key": key}
        )
    assert exc.value.status_code == 422
    assert exc.value.code == "idempotency_key_reused", exc.value.body
    assert sim.creates() - before == 1


# --------------------------------------------------------------------------------------------------
# SIGTERM under a waiting call: the next process resumes the job, the SDK's retry joins it.
# --------------------------------------------------------------------------------------------------


def test_restart_resumes_the_job_an_sdk_call_waits_on(own_sim, serve_gateway):
    port = free_port()
    gateway = serve_gateway(
        listen=f"127.0.0.1:{port}", models={"gpt-image-2-beta": {"deadline": "30s", **FAST_POLLS}}
    )
    traffic = Traffic()
    sdk = served_client(gateway, max_retries=5, http_client=traffic.http_client())
    observer = served_client(gateway, max_retries=0)

    with ThreadPoolExecutor(max_workers=1) as pool:
        call = pool.submit(
            sdk.images.with_raw_response.generate,
            model="gpt-image-2-beta",
            prompt=prompt("a long night [sim:slow=6]"),
        )
        wait_until(
            lambda: own_sim.creates() >= 1 or call.done(), JOB_TIMEOUT_S, "the upstream never got the create"
        )
        # The upstream task exists, and the gateway knows it: the job is in progress.
        job: dict = {}

        def in_progress() -> bool:
            listing = observer.get("/images/jobs", cast_to=object, options={"params": {"limit": 1}})
            job.update(listing["data"][0] if listing["data"] else {})
            return job.get("status") == "in_progress" or call.done()

        wait_until(in_progress, JOB_TIMEOUT_S, lambda: f"the job is not in progress: {job!r}")
        assert not call.done(), f"the call ended before the restart: {traffic.answers}"

        gateway.terminate()
        gateway.start()
        assert gateway.addr == f"127.0.0.1:{port}"
        raw = call.result(timeout=REQUEST_TIMEOUT_S)

    assert raw.status_code == 200
    assert raw.headers[JOB_HEADER] == job["id"]
    decoded_png(raw.parse().data[0].b64_json)
    stats = own_sim.stats()
    assert (stats["creates"], stats["tasks_billed"]) == (1, 1), stats

    # The first process answered the waiting call 503 `shutting_down` (retryable), and the
    # SDK's retry reached the second process.
    shutting = [
        (s, h, b) for s, h, b in traffic.answers if s == 503 and b"shutting_down" in b
    ]
    assert shutting, f"no 503 shutting_down among {traffic.answers}"
    assert traffic.statuses()[-1] == 200
    assert traffic.retry_counts[0] == "0" and int(traffic.retry_counts[-1]) >= 1, traffic.retry_counts
    assert get_job(observer, job["id"])["status"] == "completed"
