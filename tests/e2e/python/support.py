"""Helpers shared by the end-to-end tests: a tiny PNG encoder, raw HTTP calls and the simulator's
introspection endpoints."""

from __future__ import annotations

import json
import struct
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

MODELS = ["gpt-image-2-lite", "gpt-image-2-all", "gpt-image-2-beta", "sparkpix"]
# Groups and OpenAI's own names, routed to the cheapest healthy model that can serve a request.
ROUTED_NAMES = [
    "auto",
    "gpt-image-2",
    "chatgpt-image-latest",
    "dall-e-2",
    "dall-e-3",
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2-2026-04-21",
]
DEFAULT_MODEL = "gpt-image-2-all"

# Every call is bounded; the simulator runs at 1/100 of real latency.
REQUEST_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------------------
# Tiny PNG encoder (zlib + struct): real, valid images without any imaging library.
# --------------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, pixel) -> bytes:
    """Encodes an 8-bit RGBA PNG; `pixel(x, y)` returns an `(r, g, b, a)` tuple."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type: None
        for x in range(width):
            rows.extend(bytes(pixel(x, y)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        PNG_MAGIC
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _png_chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == PNG_MAGIC, f"not a PNG: {data[:16]!r}"
    assert data[12:16] == b"IHDR", "PNG does not start with IHDR"
    return struct.unpack(">II", data[16:24])


def gradient_png(width: int = 32, height: int = 32, seed: int = 0) -> bytes:
    return encode_png(
        width,
        height,
        lambda x, y: ((x * 8 + seed) % 256, (y * 8 + seed) % 256, (x + y + seed) % 256, 255),
    )


def mask_png(width: int = 32, height: int = 32) -> bytes:
    """Opaque everywhere except a transparent square in the middle (the region to repaint)."""
    q = width // 4

    def px(x: int, y: int):
        inside = q <= x < width - q and q <= y < height - q
        return (0, 0, 0, 0 if inside else 255)

    return encode_png(width, height, px)


# --------------------------------------------------------------------------------------------------
# Waiting for a state: a condition polled until a deadline, never a fixed sleep.
# --------------------------------------------------------------------------------------------------


def wait_until(condition, timeout: float, message, interval: float = 0.02):
    """Polls `condition()` until it returns a truthy value (returned) or `timeout` seconds pass
    (AssertionError with `message`, a string or a callable that makes one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# Raw HTTP and the simulator.
# --------------------------------------------------------------------------------------------------


@dataclass
class HttpResult:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, *, headers: dict | None = None, body: bytes | None = None):
    """A plain HTTP call (no SDK) that returns the status instead of raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            return HttpResult(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as e:
        return HttpResult(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


class Simulator:
    """The simulator's introspection endpoints (`/_sim/requests`, `/_sim/stats`)."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def requests(self) -> list[dict]:
        res = http("GET", f"{self.base_url}/_sim/requests")
        assert res.status == 200, f"GET /_sim/requests -> {res.status}: {res.body[:500]!r}"
        records = res.json()
        assert isinstance(records, list), f"/_sim/requests is not a JSON array: {records!r}"
        return [r for r in records if not str(r.get("path", "")).startswith("/_sim")]

    def stats(self) -> dict:
        res = http("GET", f"{self.base_url}/_sim/stats")
        assert res.status == 200, f"GET /_sim/stats -> {res.status}: {res.body[:500]!r}"
        return res.json()

    def creates(self) -> int:
        """Upstream create calls received so far (`creates` in `/_sim/stats`)."""
        return self.stats()["creates"]

    def recording(self) -> "Recording":
        return Recording(self)


class Recording:
    """Upstream requests received between `with sim.recording() as rec:` entry and exit."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self.start = 0
        self.requests: list[dict] = []

    def __enter__(self) -> "Recording":
        self.start = len(self.sim.requests())
        return self

    def __exit__(self, *exc) -> None:
        after = self.sim.requests()
        assert len(after) >= self.start, "the simulator's request log shrank during a test"
        self.requests = after[self.start:]

    def with_body(self) -> list[dict]:
        """The create calls: requests that carried a JSON or multipart body (not polls or downloads)."""
        return [r for r in self.requests if r.get("json") is not None or r.get("multipart")]


