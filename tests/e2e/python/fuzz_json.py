"""The json family of imagegate's fuzz corpus (`test_fuzz.py`): malformed JSON bodies to
`POST /v1/images/generations`, JSON `POST /v1/images/edits` and, one case in ten, an admin route
that takes a body (`POST /admin/keys`, `/admin/teams`, `/admin/jobs/{id}/resolve`,
`PATCH /admin/keys/{id}`, `/admin/teams/{id}`).

The invalid elements: truncated JSON, wrong types and out-of-range values for every field, unknown
models, empty and overlong prompts, invalid UTF-8, lone surrogates, nesting past the parser's depth
limit, NaN/Infinity and other non-JSON tokens, duplicate keys (the last one invalid), non-object top
levels, trailing garbage, wrong content types, and bogus job and routing headers
(`Idempotency-Key`, `x-imagegate-max-latency-s`, …).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fuzz_common import (
    BAD_TYPES, INVALID, JPEG_STUB, MASK_PNG, MAX_IMAGES, PROMPTS, REAL_PNG, VALID_MODELS, Case,
    Headers, data_url, http_request, junk, not_an_image, overlong_prompt, short, unknown_model,
)
from served import ADMIN_KEY, CLIENT_KEY

# Admin resources created before the corpus, so that malformed PATCH bodies reach the parser.
ADMIN_TARGET_KEY = "fuzz-target-key"
ADMIN_TARGET_TEAM = "fuzz-target-team"


# --------------------------------------------------------------------------------------------------
# Field values and their JSON encoding.
# --------------------------------------------------------------------------------------------------

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


def invalid_value(rng: random.Random, name: str) -> Any:
    if name == "prompt" and rng.random() < 0.25:
        return overlong_prompt(rng)
    if name == "model":
        return rng.choice(BAD_TYPES) if rng.random() < 0.3 else unknown_model(rng)
    return rng.choice(INVALID[name])


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
# Requests and their mutations.
# --------------------------------------------------------------------------------------------------


@dataclass
class JsonRequest:
    method: str
    path: str
    pairs: list[tuple[str, Any]]
    headers: dict[str, str | bytes] = field(default_factory=dict)
    content_type: str | None = "application/json"
    key: str = CLIENT_KEY
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
    # The five admin routes that read a body, in turn. The mutations leave the body unparseable:
    # whatever the content type, each route (`POST /admin/jobs/{id}/resolve` included) must answer
    # with the OpenAI error object.
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
