"""Signed webhooks, verified by an independent implementation (the `standardwebhooks` package):
a job's end posted to the request's `callback_url`, retried with the same `webhook-id` through
refusals and a gateway restart, and sent again after a crash right after the receiver's 2xx
(at least once)."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai import OpenAI
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from served import CLIENT_KEY, WEBHOOK_SECRET
from support import REQUEST_TIMEOUT_S, wait_until

DELIVERY_TIMEOUT_S = 30.0


class Receiver:
    """A webhook receiver on an ephemeral loopback port that answers 500 to its first `fail`
    deliveries, then 204. Keeps every delivery: (headers, body bytes)."""

    def __init__(self, fail: int = 0):
        self.fail = fail
        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(receiver.got) <= receiver.fail else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def until(self, n: int) -> list[tuple[dict[str, str], bytes]]:
        wait_until(lambda: len(self.got) >= n, DELIVERY_TIMEOUT_S, lambda: f"{n} deliveries never came: {self.got!r}")
        return list(self.got)

    def close(self):
        self.server.shutdown()


def verified(headers: dict[str, str], body: bytes) -> dict:
    """The payload, verified as any Standard Webhooks receiver would (raises if it is not)."""
    return Webhook(WEBHOOK_SECRET).verify(body, headers)


def client(gateway) -> OpenAI:
    return OpenAI(api_key=CLIENT_KEY, base_url=gateway.base_url, timeout=REQUEST_TIMEOUT_S)


def test_a_webhook_is_verified_and_retried_with_its_id_through_a_restart(serve_gateway):
    hook = Receiver(fail=2)
    gateway = serve_gateway()
    try:
        raw = client(gateway).images.with_raw_response.generate(
            model="sparkpix",
            prompt=f"a wren #{uuid.uuid4().hex[:8]}",
            extra_body={"callback_url": hook.url},
        )
        assert raw.status_code == 200
        job_id = raw.headers["x-imagegate-job-id"]
        hook.until(1)
        # A restart between the refusals: the outbox is in the database.
        gateway.terminate()
        gateway.start()
        got = hook.until(3)
    finally:
        hook.close()
    ids = {headers["webhook-id"] for headers, _ in got}
    assert len(ids) == 1 and next(iter(ids)).startswith("msg_"), ids
    for headers, body in got:
        payload = verified(headers, body)
        assert payload["type"] == "image.job.completed"
        assert payload["data"]["id"] == job_id
        assert payload["data"]["status"] == "completed"
        assert payload["data"]["url"] == f"/v1/images/jobs/{job_id}"
        assert b"b64_json" not in body
    # A forged signature is refused by the same verifier.
    headers, body = got[-1]
    try:
        Webhook("whsec_" + "d3Jvbmctc2VjcmV0LWZvci10ZXN0cw==").verify(body, headers)
    except WebhookVerificationError:
        pass
    else:
        raise AssertionError("a webhook verified with the wrong secret")


def test_a_crash_right_after_the_receivers_2xx_sends_the_webhook_again(serve_gateway):
    hook = Receiver(fail=0)
    gateway = serve_gateway()
    gateway.terminate()
    gateway.start(env={"IMAGEGATE_FAILPOINT": "after_webhook_delivered"})
    try:
        try:
            client(gateway).with_options(max_retries=0).images.generate(
                model="sparkpix",
                prompt=f"a wren #{uuid.uuid4().hex[:8]}",
                extra_body={"callback_url": hook.url},
            )
        except Exception:  # noqa: BLE001 — the process may die before it answers
            pass
        hook.until(1)
        wait_until(lambda: gateway.child.process.poll() is not None, DELIVERY_TIMEOUT_S, "the gateway did not crash")
        gateway.start()
        got = hook.until(2)
    finally:
        hook.close()
    # The same webhook (id and job), each delivery signed and verified on its own.
    assert got[0][0]["webhook-id"] == got[1][0]["webhook-id"]
    assert verified(*got[0])["data"]["id"] == verified(*got[1])["data"]["id"]
