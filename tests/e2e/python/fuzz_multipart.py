"""The multipart family of imagegate's fuzz corpus (`test_fuzz.py`): malformed
`multipart/form-data` edits to `POST /v1/images/edits`.

The invalid elements: no, empty or mismatched boundary, unterminated streams, image parts that are
not images, too many images or text parts, oversized and non-UTF-8 text parts, a mask without an
image or not a PNG, wrong field names, and a wrong content type. They are mixed with harmless noise:
nameless parts, unquoted part names, odd file names, truncated or huge-dimension PNGs, thousands of
parts with one name, preambles, chunked bodies.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from fuzz_common import (
    INVALID, JPEG_STUB, MASK_PNG, MAX_IMAGES, PROMPTS, REAL_PNG, WEBP_STUB, Case, http_request,
    image_payload, junk, not_an_image, overlong_prompt, short, unknown_model,
)

MAX_TEXT_PART_BYTES = 128 * 1024
MAX_TEXT_PARTS = 64


def invalid_text(rng: random.Random, name: str) -> str:
    """An invalid value of `name` as a multipart text part (a string)."""
    if name == "model":
        return unknown_model(rng)
    if name == "prompt":
        return rng.choice(["", " ", "\r\n", overlong_prompt(rng)])
    return rng.choice([v for v in INVALID[name] if isinstance(v, str)])


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
