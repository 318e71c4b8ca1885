"""A black-box fuzz corpus against the real `imagegate serve` binary: 1,200 malformed requests,
generated from a fixed seed, each invalid by construction, sent over raw sockets to one gateway
with its own simulator.

Three families:

- **json**: malformed JSON bodies to `POST /v1/images/generations`, JSON `POST /v1/images/edits`
  and, one case in ten, an admin route that takes a body (`POST /admin/keys`, `/admin/teams`,
  `/admin/jobs/{id}/resolve`, `PATCH /admin/keys/{id}`, `/admin/teams/{id}`): truncated JSON,
  wrong types and out-of-range values for every field, unknown models, empty and overlong
  prompts, invalid UTF-8, lone surrogates, nesting past the parser's depth limit, NaN/Infinity
  and other non-JSON tokens, duplicate keys (the last one invalid), non-object top levels,
  trailing garbage, wrong content types, and bogus job and routing headers (`Idempotency-Key`,
  `x-imagegate-max-latency-s`, …).
- **header**: malformed HTTP over a raw socket: invalid or conflicting `Content-Length`,
  broken chunked framing, bodies shorter or longer than announced (and, rarely, one past
  `server.max_body_bytes`), invalid bytes in header lines, header values below and above the
  server's header size cap, too many headers, missing or wrong `Authorization` (client and admin
  routes), unknown methods, garbage request lines, and absurd or percent-encoded paths (ids that
  decode to invalid UTF-8 included).
- **multipart**: malformed `multipart/form-data` edits: no, empty or mismatched boundary,
  unterminated streams, image parts that are not images, too many images or text parts,
  oversized and non-UTF-8 text parts, a mask without an image or not a PNG, wrong field names,
  and a wrong content type; mixed with harmless noise (nameless parts, unquoted part names, odd
  file names, truncated or huge-dimension PNGs, thousands of parts with one name, preambles,
  chunked bodies).

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

import base64
import json
import os
import random
import socket
import string
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from served import ADMIN_KEY, CLIENT_KEY, ServedGateway
from support import MODELS, ROUTED_NAMES, Simulator, gradient_png, http, mask_png

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

VALID_MODELS = frozenset(MODELS + ROUTED_NAMES)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PROMPT_CHARS = 32_000
MAX_TEXT_PART_BYTES = 128 * 1024
MAX_TEXT_PARTS = 64
MAX_IMAGES = 16
# The HTTP layer refuses a request head past its read buffer (somewhere between 450 and 500 KiB)
# with an empty 431: header values are sent on both sides of it.
HEADER_VALUE_SIZES = [8 * 1024, 64 * 1024, 200 * 1024, 380 * 1024, 600 * 1024, 1024 * 1024]
# The default `server.max_body_bytes`.
MAX_BODY_BYTES = 64 * 1024 * 1024
# Admin resources created before the corpus, so that malformed PATCH bodies reach the parser.
ADMIN_TARGET_KEY = "fuzz-target-key"
ADMIN_TARGET_TEAM = "fuzz-target-team"

Headers = list[tuple[str, "str | bytes"]]


# --------------------------------------------------------------------------------------------------
# Cases and their wire form.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    index: int
    family: str
    # The invalid elements (and notable noise), for the report.
    what: str
    # The bytes written to the socket.
    data: bytes
    # Half-close after writing: the server must see EOF instead of waiting for a promised body.
    shut_wr: bool = False


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def chunked(body: bytes, rng: random.Random) -> bytes:
    """`body` in valid chunked transfer coding, cut at random sizes."""
    out = bytearray()
    pos = 0
    while pos < len(body):
        size = min(len(body) - pos, rng.randint(1, 4096))
        out += b"%x\r\n" % size + body[pos:pos + size] + b"\r\n"
        pos += size
    return bytes(out + b"0\r\n\r\n")


def http_request(
    method: str,
    target: str | bytes,
    headers: Headers,
    body: bytes = b"",
    *,
    key: str | None = CLIENT_KEY,
    framing: str = "length",
    rng: random.Random | None = None,
) -> bytes:
    """A well-formed HTTP/1.1 request (`Connection: close`); `framing` is `length` or `chunked`
    (random chunk sizes, needs `rng`)."""
    lines = [_b(method) + b" " + _b(target) + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if key is not None:
        lines.append(b"Authorization: Bearer " + key.encode())
    lines += [_b(name) + b": " + _b(value) for name, value in headers]
    lines.append(b"Connection: close")
    if framing == "chunked":
        assert rng is not None
        lines.append(b"Transfer-Encoding: chunked")
        body = chunked(body, rng)
    else:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def junk(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


# --------------------------------------------------------------------------------------------------
# Images: real ones and things that only look like them.
# --------------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


REAL_PNG = gradient_png(8, 8)
MASK_PNG = mask_png(8, 8)
# A well-formed PNG whose header declares 100000x100000 pixels (its data is one empty row).
HUGE_PNG = (
    PNG_MAGIC
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 6, 0, 0, 0))
    + _png_chunk(b"IDAT", zlib.compress(b"\x00"))
    + _png_chunk(b"IEND", b"")
)
JPEG_STUB = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)
WEBP_STUB = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(24)


def image_payload(rng: random.Random) -> tuple[str, bytes]:
    """Bytes the gateway sniffs as an image (it does not decode uploads): noise, not an error."""
    return rng.choice([
        ("png", REAL_PNG),
        ("png", REAL_PNG),
        ("truncated png", REAL_PNG[: rng.randint(9, len(REAL_PNG) - 1)]),
        ("100000x100000 png", HUGE_PNG),
        ("jpeg stub", JPEG_STUB),
        ("webp stub", WEBP_STUB),
        ("png + junk", REAL_PNG + rng.randbytes(rng.randint(1, 64))),
    ])


def not_an_image(rng: random.Random) -> tuple[str, bytes]:
    """Bytes that start with no PNG, JPEG or WEBP signature."""
    noise = rng.randbytes(rng.randint(1, 2048))
    return rng.choice([
        ("random bytes", bytes([rng.randrange(0x00, 0x52)]) + noise),
        ("gif", b"GIF89a" + noise),
        ("bmp", b"BM" + noise),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>'),
        ("pdf", b"%PDF-1.4\n" + noise),
        ("png magic cut", PNG_MAGIC[: rng.randint(1, 7)]),
        ("png magic garbled", b"\x89PNX\r\n\x1a\n" + REAL_PNG[8:]),
        ("jpeg magic cut", b"\xff\xd8"),
        ("riff without webp", b"RIFF\x00\x00\x00\x00WEBX" + noise),
        ("text", b"hello, I am an image"),
    ])


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# --------------------------------------------------------------------------------------------------
# Values: valid ones (noise) and invalid ones, per field.
# --------------------------------------------------------------------------------------------------

PROMPTS = [
    "a lighthouse at dusk",
    "a red bicycle leaning on a wall",
    "一只在窗台上睡觉的猫",
    "an emoji garden 🌷🌻",
    "a\ttab and\na newline",
]
BAD_TYPES: list[Any] = [True, False, 7, -3, 2.5, [], {}, [1, 2], {"a": 1}]

# Valid values of the optional fields (null means absent).
NEUTRAL: dict[str, list[Any]] = {
    "n": [1, 2, "2", " 3 ", None],
    "size": ["1024x1024", "auto", "1536x1024", "1024X1536", None],
    "quality": ["low", "medium", "high", "auto", "standard", "hd", None],
    "response_format": ["b64_json", "url", None],
    "output_format": ["png", "jpeg", "jpg", "webp", None],
    "background": ["auto", "opaque", None],
    "output_compression": [0, 50, 100, "80", None],
    "moderation": ["low", "auto", None],
    "stream": [False, True, "false", "0", None],
    "user": ["user-1234", ""],
    "seed": [42],
}

# Invalid values per field (for text parts, only the strings apply).
INVALID: dict[str, list[Any]] = {
    "prompt": [None, "", " ", "\n\t ", 5, 1.5, True, [], {}, ["a cat"], {"text": "a cat"}],
    "n": [0, -1, 11, 100, 10**9, 2**63, 2**64 + 1, 10**30, -(10**30), 1.5, 2.0, 1e9, -0.5,
          "abc", "", "1.5", "0", "11", "-3", "0x2", "1e1", True, False, [], [1], {}, {"n": 1}],
    "size": [1024, 1024.5, True, [], {}, ["1024x1024"], "", "big", "1024", "1024x", "x1024",
             "1024*1024", "0x0", "0x1024", "1024x0", "-1024x1024", "1024x-1024", "1024x1024x1024",
             "99999999999x1", "4294967296x1", "1024 x 1024", "１０２４x１０２４", "1024×1024",
             "auto ", "AUTO"],
    "quality": BAD_TYPES + ["", "HIGH", "High", "ultra", "xhigh", "max", "hd ", " low", "best"],
    "response_format": BAD_TYPES + ["", "json", "URL", "b64", "B64_JSON", "base64", "url "],
    "output_format": BAD_TYPES + ["", "gif", "PNG", "bmp", "jpeg2000", "svg", "tiff", " png"],
    "background": BAD_TYPES + ["", "clear", "Transparent", "none", "white"],
    "output_compression": [-1, 101, 1000, 10**20, 50.5, "fifty", "", "101", True, [], {}],
    "moderation": ["high", "", "none", "LOW", 1, True, [], {}],
    "stream": ["yes", "no", "TRUE", "True", "on", "", 1, 0, 2, [], {}],
    "image_urls": [5, True, {}, {"url": "https://example.com/a.png"}, [5], [None],
                   ["ftp://example.com/a.png"], ["not a url"], ["javascript:alert(1)"],
                   ["https://"], ["/relative/a.png"], ["file:///etc/passwd"],
                   "ftp://example.com/a.png", "not a url"],
    "callback_url": [5, True, [], {}, "", "not a url", "ftp://example.com/hook",
                     "file:///etc/passwd", "javascript:alert(1)", "http://10.0.0.1/hook",
                     "http://169.254.169.254/latest/meta-data", "http://192.168.1.1/"],
}


def overlong_prompt(rng: random.Random) -> str:
    unit = rng.choice(["a", "é", "🙂", "猫"])
    return unit * rng.randint(MAX_PROMPT_CHARS + 1, MAX_PROMPT_CHARS + 2000)


def unknown_model(rng: random.Random) -> str:
    name = rng.choice([
        "GPT-IMAGE-2", "gpt-image-2-all ", " auto", "dall-e-4", "gpt-image-3", "sparkpix-edit",
        "gpt-image-2-lite\x00", "../gpt-image-2", "", "*", "auto,sparkpix", "null",
        f"gpt-image-{rng.randint(3, 99)}", junk(rng, rng.randint(1, 40)),
        "m" * rng.randint(1000, 10_000),
    ])
    return name if name not in VALID_MODELS else name + "-x"


def invalid_value(rng: random.Random, name: str) -> Any:
    if name == "prompt" and rng.random() < 0.25:
        return overlong_prompt(rng)
    if name == "model":
        return rng.choice(BAD_TYPES) if rng.random() < 0.3 else unknown_model(rng)
    return rng.choice(INVALID[name])


def invalid_text(rng: random.Random, name: str) -> str:
    """An invalid value of `name` as a multipart text part (a string)."""
    if name == "model":
        return unknown_model(rng)
    if name == "prompt":
        return rng.choice(["", " ", "\r\n", overlong_prompt(rng)])
    return rng.choice([v for v in INVALID[name] if isinstance(v, str)])


class Raw(str):
    """A token written into the body as is: `NaN`, `01`, `'single'`, … (never valid JSON)."""


RAW_TOKENS = ["NaN", "Infinity", "-Infinity", "01", "+1", ".5", "1.", "0x10", "1e", "-", "True",
              "None", "undefined", "'single'", "unquoted", "\"unterminated", "[1,]", "{,}",
              "{\"a\" 1}", "\"\\x41\"", "\"\\u12\""]


def dumps(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    return json.dumps(value, ensure_ascii=True, allow_nan=True)


def encode_object(pairs: list[tuple[str, Any]]) -> bytes:
    """A JSON object from ordered pairs: keys may repeat and values may be `Raw` tokens."""
    return ("{" + ",".join(f"{dumps(k)}:{dumps(v)}" for k, v in pairs) + "}").encode()


def nested(rng: random.Random, depth: int) -> Raw:
    if rng.random() < 0.5:
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# --------------------------------------------------------------------------------------------------
# Family 1: malformed JSON requests.
# --------------------------------------------------------------------------------------------------


@dataclass
class JsonRequest:
    method: str
    path: str
    pairs: list[tuple[str, Any]]
    headers: dict[str, str | bytes] = field(default_factory=dict)
    content_type: str | None = "application/json"
    key: str | None = CLIENT_KEY
    # The serialized body's last step (truncation, a BOM, …): at most one.
    transform: Callable[[bytes], bytes] | None = None

    def set(self, name: str, value: Any) -> None:
        self.drop(name)
        self.pairs.append((name, value))

    def drop(self, name: str) -> None:
        self.pairs = [(k, v) for k, v in self.pairs if k != name]

    def has(self, name: str) -> bool:
        return any(k == name for k, _ in self.pairs)


Mutation = Callable[[random.Random, JsonRequest], str]


def short(value: Any, limit: int = 48) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


def field_mutation(name: str) -> Mutation:
    def mutate(rng: random.Random, req: JsonRequest) -> str:
        value = invalid_value(rng, name)
        if name == "prompt" and value is None and rng.random() < 0.5:
            req.drop("prompt")
            return "prompt missing"
        req.set(name, value)
        return f"{name}={short(value)}"

    return mutate


def transparent_jpeg(rng: random.Random, req: JsonRequest) -> str:
    req.set("background", "transparent")
    req.set("output_format", rng.choice(["jpeg", "jpg"]))
    return "transparent background with jpeg"


def raw_token(rng: random.Random, req: JsonRequest) -> str:
    name = rng.choice([k for k, _ in req.pairs] + ["n", "x_extra"])
    token = rng.choice(RAW_TOKENS)
    req.set(name, Raw(token))
    return f"{name}: token {token}"


def lone_surrogate(rng: random.Random, req: JsonRequest) -> str:
    escape = rng.choice(["\\ud800", "\\udfff", "\\ud83d", "\\udc00\\ud800"])
    req.set("prompt", Raw(f'"a cat {escape}"'))
    return f"prompt with lone surrogate {escape}"


def deep_nesting(rng: random.Random, req: JsonRequest) -> str:
    name = rng.choice(["prompt", "n", "size", "x_extra", "metadata"])
    depth = rng.choice([rng.randint(130, 400), rng.randint(1000, 20_000)])
    req.set(name, nested(rng, depth))
    return f"{name} nested {depth} deep"


def duplicate_key(rng: random.Random, req: JsonRequest) -> str:
    # The last of duplicate keys wins: it is the invalid one.
    name = rng.choice(["prompt", "n", "size", "quality", "response_format"])
    if not req.has(name):
        req.pairs.append((name, rng.choice(NEUTRAL.get(name, PROMPTS)) or "a cat"))
    value = invalid_value(rng, name)
    if value is None:
        value = ""
    req.pairs.append((name, value))
    return f"duplicate {name}, last={short(value)}"


def truncated(rng: random.Random, req: JsonRequest) -> str:
    # At least one byte is kept: a strict, non-empty prefix of an object is never JSON.
    cut_at = rng.random()
    req.transform = lambda body: body[: max(1, int(len(body) * cut_at))]
    return f"truncated at {cut_at:.0%}"


def top_level(rng: random.Random, req: JsonRequest) -> str:
    choice = rng.randrange(7)
    if choice == 0:
        req.transform = lambda body: b"[" + body + b"]"
        return "object wrapped in an array"
    token = [b"[]", b"null", b"true", b"42", b'"a cat"', b"-0.5e3"][choice - 1]
    req.transform = lambda _body: token
    return f"top level {token.decode()}"


def invalid_utf8(rng: random.Random, req: JsonRequest) -> str:
    bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xf5\x80\x80\x80",
                      b"\xe2\x82", b"\xc3"])
    where = rng.random()
    # The body is ASCII (escaped), so the bytes land between characters: inside a string they are
    # invalid UTF-8, outside one a syntax error.
    req.transform = lambda body: body[: int(len(body) * where)] + bad + body[int(len(body) * where):]
    return f"invalid UTF-8 {bad!r} at {where:.0%}"


def trailing_garbage(rng: random.Random, req: JsonRequest) -> str:
    tail = rng.choice([b" x", b"}", b"{}", b",", b"\x00", b"]", b'{"prompt":"a"}', b"\n\x1a"])
    req.transform = lambda body: body + tail
    return f"trailing {tail!r}"


def not_quite_json(rng: random.Random, req: JsonRequest) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        req.transform = lambda body: b"\xef\xbb\xbf" + body
        return "UTF-8 BOM"
    if choice == 1:
        req.transform = lambda body: b"// comment\n" + body
        return "comment"
    if choice == 2:
        req.transform = lambda body: body.replace(b'"', b"'")
        return "single quotes"
    req.transform = lambda body: body.replace(b":", b"=", 1)
    return "key=value"


def empty_body(rng: random.Random, req: JsonRequest) -> str:
    tail = rng.choice([b"", b" ", b"\r\n", b"\x00" * 16])
    req.transform = lambda _body: tail
    return f"body {tail!r}"


def blank_body(rng: random.Random, req: JsonRequest) -> str:
    # Not empty: the admin API reads an empty body as `{}`.
    tail = rng.choice([b" ", b"\r\n", b"\t\n ", b"\x00" * 16])
    req.transform = lambda _body: tail
    return f"body {tail!r}"


def bad_header(name: str, values: list[str | bytes]) -> Mutation:
    def mutate(rng: random.Random, req: JsonRequest) -> str:
        value = rng.choice(values)
        if value == "LONG":
            value = junk(rng, rng.randint(256, 4000))
        req.headers[name] = value
        return f"{name}: {short(value, 32)}"

    return mutate


ROUTING_NUMBERS: list[str | bytes] = ["-1", "-0.001", "nan", "NaN", "inf", "-inf", "infinity",
                                      "1e400", "abc", "", "1,5", "0x10", "--1", "1e20e", "1 2",
                                      "½".encode(), "\t"]
idempotency_key = bad_header("Idempotency-Key", ["", "   ", "\t", "LONG", "été-clé".encode()])
max_latency = bad_header("x-imagegate-max-latency-s", ROUTING_NUMBERS)
max_cost = bad_header("x-imagegate-max-cost-usd", ROUTING_NUMBERS)
size_policy = bad_header("x-imagegate-size-policy",
                         ["", "closest", "exact,nearest", "EXACTLY", "near", "exact nearest", "0"])
HEADER_MUTATIONS: list[Mutation] = [idempotency_key, max_latency, max_cost, size_policy]

GENERATION_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                    "multipart/form-data; boundary=x", "application/jsonx", "application/xml",
                    "text/json", "json", "", "*/*", "application/json-patch+json"]
# An edit without a content type is JSON, and any `application/json…` prefix is too.
EDIT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
              "multipart/form-data; boundary=zzz", "text/json", "application/xml", "image/png",
              "*/*", "application/octet-stream"]


def content_type(types: list[str]) -> Mutation:
    def mutate(rng: random.Random, req: JsonRequest) -> str:
        req.content_type = rng.choice(types)
        return f"content-type {req.content_type!r}"

    return mutate


# Edits only: the reference images and the mask.
def bad_images(rng: random.Random, req: JsonRequest) -> str:
    junk_name, junk_bytes = not_an_image(rng)
    item = rng.choice([
        {"file_id": "file-abc123"}, {}, {"image_url": 5}, {"image_url": ""}, {"image_url": None},
        {"image_url": "ftp://example.com/a.png"}, {"image_url": "javascript:alert(1)"},
        {"image_url": "data:image/png,abc"}, {"image_url": "data:image/png;base64,!!!not-base64"},
        {"image_url": data_url(junk_bytes)}, {"url": "https://example.com/a.png"},
        "https://example.com/a.png", 5, None,
    ])
    choice = rng.randrange(5)
    if choice == 0:
        value: Any = rng.choice(["https://example.com/a.png", 5, True, "data:image/png;base64,AAAA",
                                 {"image_url": "https://example.com/a.png"}])
        req.set("images", value)
        return f"images={short(value)}"
    if choice == 1:
        req.set("images", [])
        return "images=[]"
    if choice == 2:
        count = rng.randint(MAX_IMAGES + 1, MAX_IMAGES + 8)
        req.set("images", [{"image_url": data_url(REAL_PNG)}] * count)
        return f"{count} images"
    images = [{"image_url": data_url(REAL_PNG)}] * rng.randint(0, 3)
    images.insert(rng.randint(0, len(images)), item)
    req.set("images", images)
    label = junk_name if item == {"image_url": data_url(junk_bytes)} else short(item)
    return f"images item {label}"


def bad_mask(rng: random.Random, req: JsonRequest) -> str:
    junk_name, junk_bytes = not_an_image(rng)
    choice = rng.randrange(4)
    if choice == 0:
        req.drop("images")
        req.set("mask", {"image_url": data_url(MASK_PNG)})
        return "mask without images"
    value = [
        None,
        {"image_url": data_url(JPEG_STUB, "image/jpeg")},
        {"image_url": data_url(junk_bytes)},
        rng.choice(["mask.png", 5, [], {"file_id": "file-1"}]),
    ][choice]
    req.set("mask", value)
    return f"mask={junk_name if choice == 2 else short(value)}"


COMMON_FIELDS = ["prompt", "model", "n", "size", "quality", "response_format", "output_format",
                 "background", "output_compression", "moderation", "stream", "image_urls",
                 "callback_url"]
SYNTAX_MUTATIONS: list[Mutation] = [truncated, top_level, raw_token, invalid_utf8, lone_surrogate,
                                    deep_nesting, duplicate_key, trailing_garbage, not_quite_json,
                                    empty_body]
FIELD_MUTATIONS: list[Mutation] = [field_mutation(n) for n in COMMON_FIELDS] + [transparent_jpeg]
GENERATION_MUTATIONS: list[Mutation] = (
    FIELD_MUTATIONS + SYNTAX_MUTATIONS + HEADER_MUTATIONS + [content_type(GENERATION_TYPES)]
)
EDIT_MUTATIONS: list[Mutation] = (
    FIELD_MUTATIONS + [bad_images, bad_images, bad_mask] + SYNTAX_MUTATIONS + HEADER_MUTATIONS
    + [content_type(EDIT_TYPES)]
)
# Admin bodies: only unparseable ones (a well-formed one could create a key or a team).
ADMIN_MUTATIONS: list[Mutation] = [truncated, top_level, raw_token, invalid_utf8, lone_surrogate,
                                   deep_nesting, trailing_garbage, not_quite_json, blank_body]
TRANSFORMS = {truncated, top_level, invalid_utf8, trailing_garbage, not_quite_json, empty_body,
              blank_body}


def neutral_headers(rng: random.Random) -> dict[str, str | bytes]:
    """Valid job and routing headers, and harmless extras."""
    pool: dict[str, list[str]] = {
        "Idempotency-Key": [f"fuzz-{rng.getrandbits(64):016x}"],
        "Prefer": ["respond-async", "return=minimal"],
        "x-imagegate-max-latency-s": ["1e20", "600", " 30 "],
        "x-imagegate-max-cost-usd": ["1e20", "10"],
        "x-imagegate-size-policy": ["nearest", "EXACT", " exact "],
        "x-stainless-retry-count": ["0", "1"],
        "X-Request-Id": [f"{rng.getrandbits(128):032x}"],
        "User-Agent": [junk(rng, rng.randint(1, 200), string.printable[:94])],
        "Accept": ["*/*", "application/json"],
        "X-Forwarded-For": ["203.0.113.7, garbage"],
    }
    chosen = rng.sample(sorted(pool), rng.randint(0, 4))
    return {name: rng.choice(pool[name]) for name in chosen}


def base_json_request(rng: random.Random, edit: bool) -> JsonRequest:
    pairs: list[tuple[str, Any]] = [("prompt", rng.choice(PROMPTS))]
    if rng.random() < 0.8:
        pairs.append(("model", rng.choice(sorted(VALID_MODELS))))
    for name in rng.sample(sorted(NEUTRAL), rng.randint(0, 4)):
        pairs.append((name, rng.choice(NEUTRAL[name])))
    if rng.random() < 0.3:
        pairs.append((f"x_{junk(rng, 6)}", rng.choice([1, "v", None, [1, {"a": []}], {"k": "v"}])))
    if edit:
        refs = [{"image_url": rng.choice([data_url(REAL_PNG), "https://example.com/ref.png"])}
                for _ in range(rng.randint(1, 3))]
        pairs.append(("images", refs))
        if rng.random() < 0.3:
            pairs.append(("mask", {"image_url": data_url(MASK_PNG)}))
    rng.shuffle(pairs)
    content = rng.choice(["application/json", "application/json; charset=utf-8", None])
    return JsonRequest("POST", "/v1/images/edits" if edit else "/v1/images/generations", pairs,
                       neutral_headers(rng), content)


def base_admin_request(rng: random.Random, nth: int) -> JsonRequest:
    # Known failure: `POST /admin/jobs/{id}/resolve` reads its body with axum's `Json` extractor,
    # whose rejections are plain text (415 "Expected request with `Content-Type:
    # application/json`", 400 "Failed to parse the request body as JSON: …"), not the OpenAI
    # error object every other route answers: the corpus fails on these cases until it does.
    method, path, pairs = [
        ("POST", f"/admin/jobs/imgjob_{rng.getrandbits(128):032x}/resolve", [("outcome", "billed")]),
        ("POST", "/admin/keys", [("id", f"fuzz-{junk(rng, 8)}"), ("name", "fuzz")]),
        ("POST", "/admin/teams", [("id", f"fuzz-{junk(rng, 8)}")]),
        ("PATCH", f"/admin/keys/{ADMIN_TARGET_KEY}", [("name", "fuzz")]),
        ("PATCH", f"/admin/teams/{ADMIN_TARGET_TEAM}", [("name", "fuzz")]),
    ][nth % 5]
    content = rng.choice(["application/json", "application/json", None, "text/plain"])
    return JsonRequest(method, path, pairs, {}, content, key=ADMIN_KEY)


# Per block of ten JSON cases: six generations, three edits, one admin request.
JSON_ROUTES = ["gen", "edit", "gen", "gen", "edit", "gen", "admin", "gen", "edit", "gen"]


def json_case(index: int, j: int, rng: random.Random) -> Case:
    route = JSON_ROUTES[j % len(JSON_ROUTES)]
    # This case is the route's nth: its first invalid element cycles through every mutation of
    # the route (and admin routes through the five targets); up to two more are random.
    slots = [i for i, r in enumerate(JSON_ROUTES) if r == route]
    nth = (j // len(JSON_ROUTES)) * len(slots) + slots.index(j % len(JSON_ROUTES))
    if route == "admin":
        req, mutations = base_admin_request(rng, nth), ADMIN_MUTATIONS
    else:
        req = base_json_request(rng, edit=route == "edit")
        mutations = EDIT_MUTATIONS if route == "edit" else GENERATION_MUTATIONS
    chosen = [mutations[nth % len(mutations)]]
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
        extra = rng.choice(mutations)
        if not (extra in TRANSFORMS and any(m in TRANSFORMS for m in chosen)):
            chosen.append(extra)
    what = [mutation(rng, req) for mutation in chosen]
    body = encode_object(req.pairs)
    if req.transform is not None:
        body = req.transform(body)
    headers: Headers = list(req.headers.items())
    if req.content_type is not None:
        headers.append(("Content-Type", req.content_type))
    framing = "chunked" if rng.random() < 0.15 else "length"
    data = http_request(req.method, req.path, headers, body, key=req.key, framing=framing, rng=rng)
    label = f"{req.method} {req.path}: " + "; ".join(what)
    return Case(index, "json", label + (" [chunked]" if framing == "chunked" else ""), data)


# --------------------------------------------------------------------------------------------------
# Family 2: malformed HTTP over a raw socket.
# --------------------------------------------------------------------------------------------------

# Bodies the application refuses whatever the framing around them turns out to be.
REFUSED_BODIES = [b'{"prompt":""}', b"{}", b'{"prompt":"a cat","n":0}', b"not json",
                  b'{"prompt":"a cat","model":"no-such-model"}', b'{"prompt":"a cat","size":"big"}']
VALID_BODY = b'{"prompt":"a lighthouse at dusk","model":"gpt-image-2-all","size":"1024x1024"}'
IMAGE_ROUTES = ["/v1/images/generations", "/v1/images/edits", "/images/generations"]

RawCase = tuple[str, bytes, bool]


def head(method: bytes, target: bytes, lines: list[bytes], *, key: str | None = CLIENT_KEY) -> bytes:
    """A request head (`Connection: close`) with `lines` as they are."""
    out = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if key is not None:
        out.append(b"Authorization: Bearer " + key.encode())
    out += lines + [b"Connection: close"]
    return b"\r\n".join(out) + b"\r\n\r\n"


def raw_content_length(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    value = rng.choice([b"-1", b"abc", b"1.5", b"0x10", b"99999999999999999999999", b"+2",
                        b"2 2", b"", b" ", b"2,3", "١٢".encode(), b"2\x0b", b"1e2", b"-0"])
    return (f"Content-Length: {value!r}",
            head(b"POST", rng.choice(IMAGE_ROUTES).encode(), [b"Content-Length: " + value]) + body,
            True)


def raw_content_length_twice(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    n = len(body)
    a, b = rng.choice([(n, n + 5), (n, 0), (n + 1, n), (n, n)])
    lines = [b"Content-Length: %d" % a, b"Content-Length: %d" % b]
    if rng.random() < 0.3:
        lines = [b"Content-Length: %d, %d" % (a, b)]
    # Two different lengths may leave the server waiting for more: it sees EOF instead.
    return (f"two Content-Length {a}, {b}" + (" (one line)" if len(lines) == 1 else ""),
            head(b"POST", rng.choice(IMAGE_ROUTES).encode(), lines) + body, a != b)


def raw_body_short(rng: random.Random) -> RawCase:
    if rng.random() < 0.08:
        return raw_body_too_large(rng)
    body = rng.choice([VALID_BODY, *REFUSED_BODIES])
    sent = body[: rng.randint(0, len(body) - 1)]
    length = rng.choice([len(body), len(body) + rng.randint(1, 10_000), 10**11])
    return (f"Content-Length {length}, {len(sent)} bytes sent, then EOF",
            head(b"POST", rng.choice(IMAGE_ROUTES).encode(), [b"Content-Length: %d" % length]) + sent,
            True)


def raw_body_too_large(rng: random.Random) -> RawCase:
    """A whole body past `server.max_body_bytes` (rare: 64 MiB each)."""
    size = MAX_BODY_BYTES + rng.randint(1, 4096)
    prefix = b'{"prompt":"a cat","x_pad":"'
    body = prefix + b"a" * (size - len(prefix) - 2) + b'"}'
    route = rng.choice(IMAGE_ROUTES)
    return (f"a {size}-byte body to {route}",
            head(b"POST", route.encode(), [b"Content-Length: %d" % size]) + body, False)


def raw_body_long(rng: random.Random) -> RawCase:
    # A strict prefix of a JSON object is never valid; the rest would be a pipelined request.
    body = VALID_BODY
    length = rng.randint(0, len(body) - 1)
    return (f"Content-Length {length} < {len(body)} bytes sent",
            head(b"POST", rng.choice(IMAGE_ROUTES).encode(), [b"Content-Length: %d" % length]) + body,
            True)


def raw_chunked(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    n = b"%x" % len(body)
    # The last item says whether the chunks end short of their framing (then the server sees EOF).
    label, framed, short_of_framing = rng.choice([
        ("bad hex size", b"zz\r\n" + body + b"\r\n0\r\n\r\n", False),
        ("negative size", b"-1\r\n" + body + b"\r\n0\r\n\r\n", False),
        ("overflowing size", b"FFFFFFFFFFFFFFFFFFFF\r\n" + body + b"\r\n0\r\n\r\n", False),
        ("size past the data", b"%x\r\n" % (len(body) + 100) + body, True),
        ("no CRLF after data", n + b"\r\n" + body + b"0\r\n\r\n", False),
        ("control byte in extension", n + b";\x01\r\n" + body + b"\r\n0\r\n\r\n", False),
        ("0x prefix", b"0x" + n + b"\r\n" + body + b"\r\n0\r\n\r\n", False),
        ("space before size", b" " + n + b"\r\n" + body + b"\r\n0\r\n\r\n", False),
        ("no last chunk", n + b"\r\n" + body + b"\r\n", True),
        ("bad trailer", n + b"\r\n" + body + b"\r\n0\r\nBad Trailer\r\n\r\n", False),
        ("empty size line", b"\r\n" + body + b"\r\n0\r\n\r\n", False),
        ("huge extension", n + b";" + b"e" * 70_000 + b"\r\n" + body + b"\r\n0\r\n\r\n", False),
    ])
    lines = [b"Transfer-Encoding: chunked"]
    return (f"chunked: {label}",
            head(b"POST", rng.choice(IMAGE_ROUTES).encode(), lines) + framed, short_of_framing)


def raw_transfer_encoding(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    value = rng.choice([b"gzip", b"chunked, gzip", b"identity", b"chunked\x0b", b"Chunked",
                        b"x-custom", b"chunked, chunked", b""])
    lines = [b"Transfer-Encoding: " + value]
    if rng.random() < 0.5:
        lines.append(b"Content-Length: %d" % len(body))
    chunks = b"hunked" in value
    framed = (b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n") if chunks else body
    # A chunked body is complete as sent; any other framing may leave the server waiting.
    return (f"Transfer-Encoding: {value!r}" + (", and Content-Length" if len(lines) > 1 else ""),
            head(b"POST", rng.choice(IMAGE_ROUTES).encode(), lines) + framed, not chunks)


def raw_header_bytes(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    label, line = rng.choice([
        ("NUL in value", b"X-Fuzz: a\x00b"),
        ("control byte in value", b"X-Fuzz: a\x01\x02b"),
        ("bare CR in value", b"X-Fuzz: a\rb"),
        ("DEL in value", b"X-Fuzz: a\x7fb"),
        ("space in name", b"X Fuzz: v"),
        ("space before colon", b"X-Fuzz : v"),
        ("paren in name", b"X(Fuzz): v"),
        ("non-ASCII name", "X-Fü: v".encode()),
        ("no colon", b"X-Fuzz v"),
        ("empty name", b": v"),
        ("obs-fold", b"X-Fuzz: a\r\n b"),
        ("high bytes in value", b"X-Fuzz: \xff\xfe\x80"),
        ("Host with NUL", b"Host: a\x00b"),
        ("second Host", b"Host: evil.example"),
        ("garbage Forwarded", b"Forwarded: for=\"[::1\";proto=%%%"),
        ("X-Forwarded-For garbage", b"X-Forwarded-For: \xff, 999.1.1.1, ::ffff:zz"),
    ])
    request = head(b"POST", rng.choice(IMAGE_ROUTES).encode(),
                   [line, b"Content-Length: %d" % len(body)]) + body
    if rng.random() < 0.25:
        label += ", LF-only line ends"
        request = request.replace(b"\r\n", b"\n")
    return (f"header line: {label}", request, False)


def raw_long_header(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    size = rng.choice(HEADER_VALUE_SIZES)
    name = rng.choice([b"X-Fuzz-Pad", b"Cookie", b"User-Agent", b"Accept-Language", b"Referer"])
    value = junk(rng, 16).encode() * (size // 16)
    lines = [name + b": " + value, b"Content-Length: %d" % len(body)]
    return (f"{name.decode()} of {size // 1024} KiB",
            head(b"POST", rng.choice(IMAGE_ROUTES).encode(), lines) + body, False)


def raw_many_headers(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    count = rng.choice([50, 99, 101, 150, 1000, 5000])
    lines = [b"X-H%d: %s" % (i, junk(rng, 4).encode()) for i in range(count)]
    lines.append(b"Content-Length: %d" % len(body))
    return (f"{count} headers", head(b"POST", rng.choice(IMAGE_ROUTES).encode(), lines) + body,
            False)


def raw_authorization(rng: random.Random) -> RawCase:
    # The body is valid: only the key is wrong.
    label, lines = rng.choice([
        ("no Authorization", []),
        ("Basic", [b"Authorization: Basic dXNlcjpwYXNz"]),
        ("Bearer without a key", [b"Authorization: Bearer"]),
        ("Bearer and spaces", [b"Authorization: Bearer    "]),
        ("Token scheme", [b"Authorization: Token " + CLIENT_KEY.encode()]),
        ("BEARER scheme", [b"Authorization: BEARER " + CLIENT_KEY.encode()]),
        ("no scheme", [b"Authorization: " + CLIENT_KEY.encode()]),
        ("unknown sk-ig- key", [b"Authorization: Bearer sk-ig-%064x" % rng.getrandbits(256)]),
        ("key plus a byte", [b"Authorization: Bearer " + CLIENT_KEY.encode() + b"x"]),
        ("key minus a byte", [b"Authorization: Bearer " + CLIENT_KEY[:-1].encode()]),
        ("key with inner tab", [b"Authorization: Bearer " + CLIENT_KEY[:8].encode() + b"\t"
                                + CLIENT_KEY[8:].encode()]),
        ("admin key on the client API", [b"Authorization: Bearer " + ADMIN_KEY.encode()]),
        ("high bytes", [b"Authorization: Bearer \xff\xfe" + CLIENT_KEY.encode()]),
        ("a bad then a good Authorization", [b"Authorization: Bearer nope",
                                             b"Authorization: Bearer " + CLIENT_KEY.encode()]),
        ("10 KiB key", [b"Authorization: Bearer " + junk(rng, 10_240).encode()]),
        ("empty", [b"Authorization: "]),
    ])
    route = rng.choice(IMAGE_ROUTES + ["/v1/models", "/v1/images/jobs/imgjob_x"])
    method = b"POST" if "images/g" in route or "edits" in route else b"GET"
    body = VALID_BODY if method == b"POST" else b""
    lines = lines + [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    return (f"{label} on {method.decode()} {route}",
            head(method, route.encode(), lines, key=None) + body, False)


def raw_admin_authorization(rng: random.Random) -> RawCase:
    label, key = rng.choice([("client key", CLIENT_KEY), ("no key", None),
                             ("admin key plus a byte", ADMIN_KEY + "x"), ("empty key", "")])
    method, path = rng.choice([(b"GET", b"/admin/keys"), (b"GET", b"/admin/jobs"),
                               (b"GET", b"/admin/spend"), (b"POST", b"/admin/keys"),
                               (b"GET", b"/admin"), (b"GET", b"/admin/upstreams")])
    body = b'{"id":"fuzz-new-key"}' if method == b"POST" else b""
    return (f"{label} on {method.decode()} {path.decode()}",
            head(method, path, [b"Content-Length: %d" % len(body)], key=key) + body, False)


def raw_method(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    method = rng.choice([b"FOO", b"GETT", b"post", b"PURGE", b"PROPFIND", b"BREW", b"M-SEARCH",
                         b"TRACE", b"DELETE", b"PUT", b"PATCH", b"OPTIONS", b"GET", b"CONNECT",
                         b"PO ST", b"P\x00ST", "ÜBER".encode(), b"A" * rng.choice([100, 10_000]),
                         b"GET\t"])
    route = rng.choice(IMAGE_ROUTES)
    return (f"method {method[:24]!r} on {route}",
            head(method, route.encode(), [b"Content-Length: %d" % len(body)]) + body, False)


def percent_garbage(rng: random.Random) -> bytes:
    """Percent-encoded bytes that are no valid id: high bytes (valid UTF-8 or not) or controls."""
    kind = rng.randrange(3)
    if kind == 0:
        raw = bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randint(1, 12)))
    elif kind == 1:
        raw = "".join(rng.choice("éß猫🙂\u202e") for _ in range(rng.randint(1, 6))).encode()
    else:
        raw = bytes(rng.randrange(0x00, 0x20) for _ in range(rng.randint(1, 6))) + b"x"
    return b"".join(b"%%%02X" % c for c in raw)


def raw_path(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    garbage = percent_garbage(rng)
    # Known failure: on every `{id}` route (`/v1/images/jobs/{id}`, `/v1/models/{id}`,
    # `/admin/keys/{id}`, `/admin/jobs/{id}[/resolve]`, `/admin/teams/{id}`), an id that decodes to
    # invalid UTF-8 gets axum's `Path` rejection, 400 text/plain "Invalid URL: Invalid UTF-8 in
    # `id`", not the OpenAI error object: the corpus fails on these cases until it does.
    method, target, key = rng.choice([
        (b"POST", b"/v1/images/generations/../..", CLIENT_KEY),
        (b"POST", b"/v1/images/%2e%2e/generations", CLIENT_KEY),
        (b"POST", b"/v1/images/generations%00", CLIENT_KEY),
        (b"POST", b"/v1/images/generations%20", CLIENT_KEY),
        (b"POST", b"//v1//images//generations", CLIENT_KEY),
        (b"POST", b"/v1/images/generations?%ff=%fe&&&=", CLIENT_KEY),
        (b"POST", b"/v1/images/generations#fragment", CLIENT_KEY),
        (b"POST", b"*", CLIENT_KEY),
        (b"POST", b"http://evil.example/v1/images/generations", CLIENT_KEY),
        (b"POST", b"/v1/images/generations/" + garbage, CLIENT_KEY),
        (b"POST", b"/v1/images/" + garbage, CLIENT_KEY),
        (b"GET", b"/v1/images/jobs/" + garbage, CLIENT_KEY),
        (b"GET", b"/v1/images/jobs/%", CLIENT_KEY),
        (b"GET", b"/v1/images/jobs/%zz", CLIENT_KEY),
        (b"GET", b"/v1/images/jobs/..%2F..%2Fadmin%2Fkeys", CLIENT_KEY),
        (b"GET", b"/v1/images/jobs/" + b"a" * rng.choice([8_000, 70_000]), CLIENT_KEY),
        (b"GET", b"/v1/images/jobs?limit=" + garbage, CLIENT_KEY),
        (b"GET", b"/v1/images/jobs?limit=-1", CLIENT_KEY),
        (b"GET", b"/v1/models/" + garbage, CLIENT_KEY),
        (b"GET", b"/models/" + garbage, CLIENT_KEY),
        (b"GET", b"/admin/keys/" + garbage, ADMIN_KEY),
        (b"GET", b"/admin/jobs/" + garbage, ADMIN_KEY),
        (b"POST", b"/admin/jobs/" + garbage + b"/resolve", ADMIN_KEY),
        (b"DELETE", b"/admin/teams/" + garbage, ADMIN_KEY),
        (b"GET", b"/admin/usage?from=" + garbage, ADMIN_KEY),
        (b"GET", b"/" + garbage, CLIENT_KEY),
        (b"POST", b"/v1/images/\xff\xfe", CLIENT_KEY),
        (b"POST", b"/v1/images/gene rations", CLIENT_KEY),
    ])
    if method == b"GET":
        body = b""
    lines = [b"Content-Length: %d" % len(body)]
    if key == ADMIN_KEY and method == b"POST":
        lines.append(b"Content-Type: application/json")
        body = b'{"outcome":"billed"}'
        lines[0] = b"Content-Length: %d" % len(body)
    return (f"{method.decode()} {target[:80]!r}", head(method, target, lines, key=key) + body, False)


def raw_request_line(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    rest = b"Host: 127.0.0.1\r\nAuthorization: Bearer " + CLIENT_KEY.encode() + \
        b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    # Half-closed after writing when the bytes are no complete request.
    label, data, shut_wr = rng.choice([
        ("HTTP/9.9", b"POST /v1/images/generations HTTP/9.9\r\n" + rest, False),
        ("HTTP/2.0", b"POST /v1/images/generations HTTP/2.0\r\n" + rest, False),
        ("lowercase version", b"POST /v1/images/generations http/1.1\r\n" + rest, False),
        ("extra token", b"POST /v1/images/generations HTTP/1.1 extra\r\n" + rest, False),
        ("double space", b"POST  /v1/images/generations HTTP/1.1\r\n" + rest, False),
        ("tabs", b"POST\t/v1/images/generations\tHTTP/1.1\r\n" + rest, False),
        ("no version", b"POST /v1/images/generations\r\n" + rest, False),
        ("HTTP/0.9", b"GET /\r\n\r\n", True),
        ("leading CRLFs", b"\r\n\r\nPOST /v1/images/generations HTTP/1.1\r\n" + rest, False),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", True),
        ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(64), True),
        ("random bytes", rng.randbytes(rng.randint(1, 512)), True),
        ("NUL bytes", b"\x00" * rng.randint(1, 512), True),
        ("headers never end", b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nX-A: b", True),
        ("HTTP/1.0 without Host", b"POST /v1/images/generations HTTP/1.0\r\nAuthorization: Bearer "
         + CLIENT_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body, False),
    ])
    return (f"request line: {label}", data, shut_wr)


def raw_connection_headers(rng: random.Random) -> RawCase:
    body = rng.choice(REFUSED_BODIES)
    label, lines = rng.choice([
        ("Expect: 100-continue", [b"Expect: 100-continue"]),
        ("Expect: bogus", [b"Expect: 200-ok"]),
        ("Upgrade: websocket", [b"Upgrade: websocket", b"Connection: Upgrade",
                                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                b"Sec-WebSocket-Version: 13"]),
        ("Upgrade: h2c", [b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings",
                          b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"]),
        ("Connection: keep-alive, then close", [b"Connection: keep-alive"]),
        ("Content-Encoding: gzip", [b"Content-Encoding: gzip"]),
        ("Content-Type garbage", [b"Content-Type: application/json; charset=\xff\xfe"]),
    ])
    lines = lines + [b"Content-Length: %d" % len(body)]
    return (label, head(b"POST", rng.choice(IMAGE_ROUTES).encode(), lines) + body, False)


HEADER_GENERATORS: list[Callable[[random.Random], RawCase]] = [
    raw_content_length, raw_content_length_twice, raw_body_short, raw_body_long, raw_chunked,
    raw_transfer_encoding, raw_header_bytes, raw_long_header, raw_many_headers, raw_authorization,
    raw_admin_authorization, raw_method, raw_path, raw_path, raw_request_line,
    raw_connection_headers,
]


def header_case(index: int, j: int, rng: random.Random) -> Case:
    what, data, shut_wr = HEADER_GENERATORS[j % len(HEADER_GENERATORS)](rng)
    return Case(index, "header", what, data, shut_wr)


# --------------------------------------------------------------------------------------------------
# Family 3: malformed multipart edits.
# --------------------------------------------------------------------------------------------------


@dataclass
class Part:
    # None: a Content-Disposition without a name.
    name: str | None
    body: bytes
    filename: str | None = None
    content_type: str | None = None

    def encode(self, quote_names: bool = True) -> bytes:
        disposition = b"Content-Disposition: form-data"
        if self.name is not None:
            name = self.name.encode()
            disposition += b'; name="' + name + b'"' if quote_names else b"; name=" + name
        if self.filename is not None:
            disposition += b'; filename="' + self.filename.encode() + b'"'
        lines = [disposition]
        if self.content_type is not None:
            lines.append(b"Content-Type: " + self.content_type.encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


@dataclass
class MultipartRequest:
    parts: list[Part]
    # The delimiter in the body, and the `boundary` parameter of the Content-Type (maybe quoted).
    boundary: str
    header_boundary: str
    # A whole Content-Type instead of `multipart/form-data; boundary=…`.
    content_type: str | None = None
    # Without the close delimiter, the body may also be cut at this fraction.
    terminated: bool = True
    cut: float | None = None
    preamble: bytes = b""
    epilogue: bytes = b""
    framing: str = "length"
    quote_names: bool = True
    upper_case_type: bool = False

    def images(self) -> list[Part]:
        """The image parts (and those whose wrong name still starts with `image`)."""
        return [p for p in self.parts if p.name is not None and p.name.startswith("image")]

    def drop(self, name: str) -> None:
        self.parts = [p for p in self.parts if p.name != name]

    def set_text(self, name: str, value: bytes) -> None:
        self.drop(name)
        self.parts.append(Part(name, value))

    def body(self) -> bytes:
        delimiter = b"--" + self.boundary.encode()
        out = self.preamble
        for part in self.parts:
            out += delimiter + b"\r\n" + part.encode(self.quote_names) + b"\r\n"
        if self.terminated:
            out += delimiter + b"--\r\n" + self.epilogue
        elif self.cut is not None:
            out = out[: int(len(out) * self.cut)]
        return out

    def header(self) -> str:
        if self.content_type is not None:
            return self.content_type
        media = "multipart/form-data; boundary="
        return (media.upper() if self.upper_case_type else media) + self.header_boundary


MultipartMutation = Callable[[random.Random, MultipartRequest], str]


def image_part(name: str, data: bytes, rng: random.Random) -> Part:
    return Part(name, data, rng.choice(["ref.png", "a.jpg", None, ""]),
                rng.choice(["image/png", "image/jpeg", "application/octet-stream", None]))


def mp_no_image(rng: random.Random, req: MultipartRequest) -> str:
    images = req.images()
    req.parts = [p for p in req.parts if all(p is not i for i in images)]
    return "no image part"


def mp_not_image(rng: random.Random, req: MultipartRequest) -> str:
    label, data = not_an_image(rng)
    images = req.images()
    if images:
        rng.choice(images).body = data
    else:
        req.parts.append(image_part("image", data, rng))
    return f"image part is {label}"


def mp_empty_image(rng: random.Random, req: MultipartRequest) -> str:
    images = req.images()
    if images:
        rng.choice(images).body = b""
    else:
        req.parts.append(image_part("image", b"", rng))
    return "empty image part"


def mp_mask_without_image(rng: random.Random, req: MultipartRequest) -> str:
    mp_no_image(rng, req)
    req.drop("mask")
    req.parts.append(image_part("mask", MASK_PNG, rng))
    return "mask without image"


def mp_bad_mask(rng: random.Random, req: MultipartRequest) -> str:
    label, data = rng.choice([("jpeg", JPEG_STUB), ("webp", WEBP_STUB), ("empty", b""),
                              not_an_image(rng)])
    req.drop("mask")
    req.parts.append(image_part("mask", data, rng))
    return f"mask is {label}"


def mp_too_many_images(rng: random.Random, req: MultipartRequest) -> str:
    count = rng.randint(MAX_IMAGES + 1, MAX_IMAGES + 8)
    for _ in range(count - len(req.images())):
        req.parts.append(image_part(rng.choice(["image[]", "image"]), image_payload(rng)[1], rng))
    return f"{count} image parts"


def mp_too_many_text_parts(rng: random.Random, req: MultipartRequest) -> str:
    count = rng.randint(MAX_TEXT_PARTS + 1, MAX_TEXT_PARTS + 60)
    for i in range(count):
        req.parts.append(Part(f"x_fuzz_{i}", b"v"))
    return f"{count} extra text parts"


def mp_oversized_text(rng: random.Random, req: MultipartRequest) -> str:
    name = rng.choice(["prompt", "x_notes", "user", "model"])
    size = rng.randint(MAX_TEXT_PART_BYTES + 1, MAX_TEXT_PART_BYTES + 64 * 1024)
    req.set_text(name, b"a" * size)
    return f"{name} part of {size} bytes"


def mp_non_utf8_text(rng: random.Random, req: MultipartRequest) -> str:
    name = rng.choice(["prompt", "model", "n", "size", "x_notes", "quality"])
    bad = rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80\x80", b"\xe2\x82"])
    req.set_text(name, b"a cat " + bad + b" on a mat")
    return f"{name} part not UTF-8 ({bad!r})"


def mp_markup(rng: random.Random, req: MultipartRequest) -> str:
    req.parts.append(image_part("markup", rng.choice([REAL_PNG, b"arrows"]), rng))
    return "markup part"


def mp_bad_field(rng: random.Random, req: MultipartRequest) -> str:
    name = rng.choice(["prompt", "prompt", "model", "n", "size", "quality", "response_format",
                       "output_format", "background", "output_compression", "moderation",
                       "stream", "image_urls", "callback_url"])
    if name == "prompt" and rng.random() < 0.3:
        req.drop("prompt")
        return "no prompt part"
    value = invalid_text(rng, name)
    req.set_text(name, value.encode())
    return f"{name}={short(value)}"


def mp_no_boundary(rng: random.Random, req: MultipartRequest) -> str:
    req.content_type = rng.choice([
        "multipart/form-data", "multipart/form-data;", "multipart/form-data; boundary=",
        'multipart/form-data; boundary=""', "multipart/form-data; charset=utf-8",
        f"multipart/form-data; boundry={req.boundary}",
    ])
    return f"content-type {req.content_type!r}"


def mp_boundary_mismatch(rng: random.Random, req: MultipartRequest) -> str:
    other = junk(rng, 24)
    while other in req.boundary or req.boundary in other:
        other = junk(rng, 24)
    req.header_boundary = other
    return "boundary in the header differs from the body's"


def mp_unterminated(rng: random.Random, req: MultipartRequest) -> str:
    req.terminated = False
    if rng.random() < 0.5:
        req.cut = rng.random()
        return f"no close delimiter, cut at {req.cut:.0%}"
    return "no close delimiter"


def mp_wrong_image_names(rng: random.Random, req: MultipartRequest) -> str:
    name = rng.choice(["images", "Image", "IMAGE", "file", "img", "image[x]", "image[]x",
                       "image[", "image[-1]", " image", "image ", "images[]"])
    if not req.images():
        req.parts.append(image_part("image", REAL_PNG, rng))
    for part in req.images():
        part.name = name
    return f"image parts named {name!r}"


def mp_wrong_content_type(rng: random.Random, req: MultipartRequest) -> str:
    kind = rng.choice(["text/plain", "application/octet-stream", "multipart/mixed",
                       "multipart/related", "image/png", "application/x-www-form-urlencoded",
                       "application/json", "form-data"])
    req.content_type = f"{kind}; boundary={req.boundary}"
    return f"content-type {kind}"


MULTIPART_MUTATIONS: list[MultipartMutation] = [
    mp_no_image, mp_not_image, mp_empty_image, mp_mask_without_image, mp_bad_mask,
    mp_too_many_images, mp_too_many_text_parts, mp_oversized_text, mp_non_utf8_text, mp_markup,
    mp_bad_field, mp_bad_field, mp_no_boundary, mp_boundary_mismatch, mp_unterminated,
    mp_wrong_image_names, mp_wrong_content_type,
]
NEUTRAL_TEXT = {
    "n": ["1", "2", "4"], "size": ["1024x1024", "auto", "1536x1024"],
    "quality": ["low", "high", "auto"], "response_format": ["b64_json", "url"],
    "output_format": ["png", "webp"], "background": ["auto", "opaque"], "stream": ["false"],
    "moderation": ["auto"], "user": ["u-1"],
}


def boundary(rng: random.Random) -> str:
    return rng.choice([
        "----WebKitFormBoundary" + junk(rng, 16),
        "-" * 24 + f"{rng.getrandbits(64):016x}",
        "=_" + junk(rng, 30),
        junk(rng, 70),
        "x",
    ])


def base_multipart(rng: random.Random) -> tuple[MultipartRequest, list[str]]:
    """A valid edit plus harmless noise; returns the noise applied."""
    noise: list[str] = []
    parts = [Part("prompt", rng.choice(PROMPTS).encode())]
    if rng.random() < 0.7:
        parts.append(Part("model", rng.choice(["gpt-image-2-all", "gpt-image-2-lite", "auto",
                                               "gpt-image-2", "gpt-image-1"]).encode()))
    count = rng.randint(1, 3)
    for i in range(count):
        name = "image" if count == 1 else rng.choice(["image[]", f"image[{i}]"])
        parts.append(image_part(name, REAL_PNG, rng))
    if rng.random() < 0.3:
        parts.append(image_part("mask", MASK_PNG, rng))
    for name in rng.sample(sorted(NEUTRAL_TEXT), rng.randint(0, 3)):
        parts.append(Part(name, rng.choice(NEUTRAL_TEXT[name]).encode()))
    if rng.random() < 0.3:
        label, data = image_payload(rng)
        for part in parts:
            if part.name is not None and part.name.startswith("image"):
                part.body = data
        noise.append(f"images are {label}")
    if rng.random() < 0.2:
        parts.append(Part(None, b"a part without a name"))
        noise.append("nameless part")
    if rng.random() < 0.2:
        parts.append(Part(f"x_{junk(rng, 5)}", junk(rng, rng.randint(0, 300)).encode()))
        noise.append("unknown text part")
    if rng.random() < 0.15:
        odd = rng.choice(["../../etc/passwd", "", "a;b.png", "図.png", "x" * 2000])
        for part in parts:
            if part.filename is not None:
                part.filename = odd
        noise.append(f"file names {short(odd, 20)}")
    if rng.random() < 0.05:
        count = rng.randint(1000, 3000)
        parts += [Part("x_same", b"v")] * count
        noise.append(f"{count} parts named x_same")
    if rng.random() < 0.5:
        rng.shuffle(parts)
    b = boundary(rng)
    # A boundary with a character outside the token set must be quoted in the header.
    quoted = b.startswith("=") or rng.random() < 0.2
    req = MultipartRequest(parts, b, f'"{b}"' if quoted else b)
    if rng.random() < 0.1:
        req.preamble = b"This is the preamble.\r\n"
        req.epilogue = b"This is the epilogue.\r\n"
        noise.append("preamble and epilogue")
    if rng.random() < 0.3:
        req.framing = "chunked"
        noise.append("chunked")
    if rng.random() < 0.1:
        req.quote_names = False
        noise.append("unquoted part names")
    if rng.random() < 0.1:
        req.upper_case_type = True
        noise.append("upper-case media type")
    return req, noise


def multipart_case(index: int, j: int, rng: random.Random) -> Case:
    req, noise = base_multipart(rng)
    chosen = [MULTIPART_MUTATIONS[j % len(MULTIPART_MUTATIONS)]]
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        chosen.append(rng.choice(MULTIPART_MUTATIONS))
    what = [mutation(rng, req) for mutation in chosen]
    data = http_request("POST", "/v1/images/edits", [("Content-Type", req.header())], req.body(),
                        framing=req.framing, rng=rng)
    return Case(index, "multipart", "; ".join(what + [f"noise: {n}" for n in noise]), data)


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


FAMILIES = ("json", "header", "multipart")


def summary(cases: list[Case], statuses: Counter, leaked: dict[str, int], seconds: float) -> str:
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


def test_the_corpus_is_seeded_large_and_covers_three_families():
    sample = range(0, TOTAL_CASES, 7)
    first = [build_case(i) for i in sample]
    assert first == [build_case(i) for i in sample], "the corpus is not deterministic"
    assert TOTAL_CASES >= 600 and min(JSON_CASES, HEADER_CASES, MULTIPART_CASES) >= 150
    assert {c.family for c in first} == set(FAMILIES)
    assert all(c.what and c.data for c in first)


def test_malformed_requests_are_refused_before_any_upstream_call(serve_gateway, own_sim):
    gateway = serve_gateway()
    create_admin_targets(gateway)
    host, port = gateway.addr.rsplit(":", 1)
    addr = (host, int(port))
    before = upstream_counters(own_sim)
    started = time.monotonic()

    cases: list[Case] = []
    failures: list[Failure] = []
    statuses: Counter = Counter()
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
