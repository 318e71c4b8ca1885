"""The header family of imagegate's fuzz corpus (`test_fuzz.py`): malformed HTTP over a raw socket.

The invalid elements: invalid or conflicting `Content-Length`, broken chunked framing, bodies
shorter or longer than announced (and, rarely, one past `server.max_body_bytes`), invalid bytes in
header lines, header values below and above the server's header size cap, too many headers,
missing or wrong `Authorization` (client and admin routes), unknown methods, garbage request lines,
and absurd or percent-encoded paths (ids that decode to invalid UTF-8 included).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from fuzz_common import VALID_BODY, Case, junk
from served import ADMIN_KEY, CLIENT_KEY

# The HTTP layer refuses a request head past its read buffer (somewhere between 450 and 500 KiB)
# with an empty 431: header values are sent on both sides of it.
HEADER_VALUE_SIZES = [8 * 1024, 64 * 1024, 200 * 1024, 380 * 1024, 600 * 1024, 1024 * 1024]
# The default `server.max_body_bytes`.
MAX_BODY_BYTES = 64 * 1024 * 1024

# Bodies the application refuses whatever the framing around them turns out to be.
REFUSED_BODIES = [b'{"prompt":""}', b"{}", b'{"prompt":"a cat","n":0}', b"not json",
                  b'{"prompt":"a cat","model":"no-such-model"}', b'{"prompt":"a cat","size":"big"}']
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
    # `garbage` percent-decodes to invalid UTF-8, control bytes or non-ASCII text: on every `{id}`
    # route (`/v1/images/jobs/{id}`, `/v1/models/{id}`, `/admin/keys/{id}`, `/admin/teams/{id}`,
    # `/admin/jobs/{id}[/resolve]`) such an id must get the OpenAI error object.
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
