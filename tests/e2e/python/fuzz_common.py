"""The shared pieces of imagegate's fuzz corpus (`test_fuzz.py`): the case type and its HTTP wire
form, images real and fake, and the field values (valid noise and invalid ones) that the three
families' generators (`fuzz_json`, `fuzz_headers`, `fuzz_multipart`) draw from.
"""

from __future__ import annotations

import base64
import random
import string
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from served import CLIENT_KEY
from support import MODELS, PNG_MAGIC, ROUTED_NAMES, gradient_png, mask_png

VALID_MODELS = frozenset(MODELS + ROUTED_NAMES)
MAX_PROMPT_CHARS = 32_000
MAX_IMAGES = 16
# A valid generation: header cases send it with broken framing or a wrong key; the test sends it
# as is, as its control request.
VALID_BODY = b'{"prompt":"a lighthouse at dusk","model":"gpt-image-2-all","size":"1024x1024"}'

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
    target: str,
    headers: Headers,
    body: bytes = b"",
    *,
    key: str = CLIENT_KEY,
    framing: str = "length",
    rng: random.Random | None = None,
) -> bytes:
    """A well-formed HTTP/1.1 request (`Connection: close`); `framing` is `length` or `chunked`
    (random chunk sizes, needs `rng`)."""
    lines = [method.encode() + b" " + target.encode() + b" HTTP/1.1", b"Host: 127.0.0.1",
             b"Authorization: Bearer " + key.encode()]
    lines += [name.encode() + b": " + _b(value) for name, value in headers]
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


def short(value: Any, limit: int = 48) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


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
# Values: valid prompts (noise), and invalid values per field.
# --------------------------------------------------------------------------------------------------

PROMPTS = [
    "a lighthouse at dusk",
    "a red bicycle leaning on a wall",
    "一只在窗台上睡觉的猫",
    "an emoji garden 🌷🌻",
    "a\ttab and\na newline",
]
BAD_TYPES: list[Any] = [True, False, 7, -3, 2.5, [], {}, [1, 2], {"a": 1}]

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
