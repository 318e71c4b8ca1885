"""The gateway driven by the official OpenAI Python SDK, against the upstream simulator."""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from urllib.parse import urlsplit

import openai
import pytest
from openai import OpenAI
from openai.types import ImagesResponse
from PIL import Image

from support import (
    DEFAULT_MODEL,
    JPEG_MAGIC,
    MODELS,
    PNG_MAGIC,
    ROUTED_NAMES,
    REQUEST_TIMEOUT_S,
    gradient_png,
    http,
    png_size,
)

IMAGE_PART = re.compile(r"image(\[\d*\])?")
# Models whose edits take reference URLs only: an uploaded file cannot be forwarded.
URL_ONLY_EDIT_MODELS = ["gpt-image-2-beta", "sparkpix"]


def prompt(text: str) -> str:
    """A prompt made unique per call, so no cache or dedup can answer it."""
    return f"{text} #{uuid.uuid4().hex[:8]}"


def decode_b64(item) -> bytes:
    assert item.b64_json, f"no b64_json in {item!r}"
    return base64.b64decode(item.b64_json, validate=True)


def assert_png(data: bytes) -> None:
    assert data[:8] == PNG_MAGIC, f"not a PNG: {data[:16]!r}"
    width, height = png_size(data)
    assert width > 0 and height > 0


def image_parts(record: dict) -> list[dict]:
    return [p for p in record.get("multipart") or [] if IMAGE_PART.fullmatch(p.get("name", ""))]


def only_create_call(rec) -> dict:
    calls = rec.with_body()
    assert len(calls) == 1, f"expected one upstream create call, got {json.dumps(rec.requests)}"
    return calls[0]


def assert_no_upstream_call(rec) -> None:
    assert rec.requests == [], f"a rejected request reached the upstream: {json.dumps(rec.requests)}"


def assert_error_body(err: openai.APIStatusError) -> dict:
    """The error must be OpenAI-shaped, with an `x-request-id`."""
    body = err.response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert isinstance(body["error"]["type"], str) and body["error"]["type"], body
    assert err.request_id, "error response without x-request-id"
    return body["error"]


# --------------------------------------------------------------------------------------------------
# Generations.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_generate_b64_on_each_model(client: OpenAI, sim, model: str):
    with sim.recording() as rec:
        res = client.images.generate(model=model, prompt=prompt("a lighthouse at dusk"))

    assert isinstance(res.created, int) and res.created > 1_600_000_000
    assert res.data is not None and len(res.data) == 1
    assert res.output_format == "png", f"{model}: output_format {res.output_format!r}"
    assert_png(decode_b64(res.data[0]))
    assert res.size and re.fullmatch(r"\d+x\d+", res.size), res.size
    # quality is optional in the response; when echoed it must be a concrete value (never "auto").
    assert res.quality in (None, "low", "medium", "high"), res.quality
    assert res._request_id
    assert rec.with_body(), f"{model}: no upstream call was made"


def test_generate_without_model_uses_default(client: OpenAI, sim):
    with sim.recording() as rec:
        res = client.images.generate(prompt=prompt("a red bicycle"))
    assert_png(decode_b64(res.data[0]))
    call = only_create_call(rec)
    upstream_model = call.get("model") or (call.get("json") or {}).get("model")
    assert upstream_model == DEFAULT_MODEL, call


def test_generate_explicit_nulls_are_absent(client: OpenAI):
    # The Python SDK sends JSON null for parameters passed as None.
    res = client.images.generate(prompt=prompt("a teapot"), n=None, size=None, quality=None)
    assert len(res.data) == 1
    assert_png(decode_b64(res.data[0]))


def test_generate_url_format(client: OpenAI):
    res = client.images.generate(
        model=DEFAULT_MODEL, prompt=prompt("a quiet harbor"), response_format="url"
    )
    assert len(res.data) == 1
    url = res.data[0].url
    assert url and url.startswith(("http://", "https://")), res.data[0]
    fetched = http("GET", url)
    assert fetched.status == 200, f"GET {url} -> {fetched.status}"
    assert_png(fetched.body)


def test_generate_jpeg(client: OpenAI):
    res = client.images.generate(
        model=DEFAULT_MODEL, prompt=prompt("a snowy forest"), output_format="jpeg"
    )
    assert decode_b64(res.data[0])[:3] == JPEG_MAGIC
    assert res.output_format == "jpeg"


def test_generate_n2(client: OpenAI):
    res = client.images.generate(model=DEFAULT_MODEL, prompt=prompt("two cats"), n=2)
    assert len(res.data) == 2
    for item in res.data:
        assert_png(decode_b64(item))


def test_generate_echoes_size_and_quality(client: OpenAI):
    res = client.images.generate(
        model=DEFAULT_MODEL, prompt=prompt("a wide canyon"), size="1536x1024", quality="low"
    )
    assert_png(decode_b64(res.data[0]))
    assert res.size == "1536x1024"
    assert res.quality == "low"


def test_concurrent_generations(client: OpenAI):
    def one(model: str):
        return client.images.generate(model=model, prompt=prompt("a paper boat"))

    with ThreadPoolExecutor(max_workers=len(MODELS)) as pool:
        results = list(pool.map(one, MODELS))
    ids = set()
    for res in results:
        assert_image_matches_format(res)
        ids.add(res._request_id)
    assert len(ids) == len(MODELS), "request ids are not unique"


# --------------------------------------------------------------------------------------------------
# Edits (multipart uploads).
# --------------------------------------------------------------------------------------------------


def test_edit_single_file(client: OpenAI, sim, image_files):
    (path,) = image_files(1)
    with sim.recording() as rec, open(path, "rb") as f:
        res = client.images.edit(model=DEFAULT_MODEL, image=f, prompt=prompt("add a hat"))
    assert_png(decode_b64(res.data[0]))
    parts = image_parts(only_create_call(rec))
    assert len(parts) == 1, rec.requests
    assert parts[0]["len"] == path.stat().st_size, "the uploaded image changed on its way upstream"


def test_edit_image_list_reaches_upstream_as_two_parts(client: OpenAI, sim, image_files):
    paths = image_files(2)
    with sim.recording() as rec, open(paths[0], "rb") as f1, open(paths[1], "rb") as f2:
        res = client.images.edit(model=DEFAULT_MODEL, image=[f1, f2], prompt=prompt("merge them"))
    assert_png(decode_b64(res.data[0]))
    parts = image_parts(only_create_call(rec))
    assert len(parts) == 2, f"expected 2 image parts upstream: {json.dumps(rec.requests)}"
    assert sorted(p["len"] for p in parts) == sorted(p.stat().st_size for p in paths)


def test_edit_one_element_list(client: OpenAI, sim, image_files):
    # A one-element list is sent as `image[]`, not `image`.
    (path,) = image_files(1)
    with sim.recording() as rec:
        res = client.images.edit(model=DEFAULT_MODEL, image=[path], prompt=prompt("make it blue"))
    assert_png(decode_b64(res.data[0]))
    assert len(image_parts(only_create_call(rec))) == 1


def test_edit_with_mask(client: OpenAI, sim, image_files):
    (path,) = image_files(1)
    with sim.recording() as rec, open(path, "rb") as f, open(image_files.mask, "rb") as m:
        res = client.images.edit(
            model=DEFAULT_MODEL, image=f, mask=m, prompt=prompt("fill the hole with flowers")
        )
    assert_png(decode_b64(res.data[0]))
    call = only_create_call(rec)
    masks = [p for p in call.get("multipart") or [] if p.get("name") == "mask"]
    assert len(masks) == 1, f"the mask did not reach the upstream: {json.dumps(call)}"
    assert masks[0]["len"] == image_files.mask.stat().st_size


def test_edit_raw_bytes_without_filename(client: OpenAI):
    # Raw bytes go out as filename "upload", application/octet-stream: the gateway must sniff.
    res = client.images.edit(
        model=DEFAULT_MODEL, image=gradient_png(seed=7), prompt=prompt("add stars")
    )
    assert_png(decode_b64(res.data[0]))


def test_chunked_upload_with_late_terminator_gets_full_response(demo, sim):
    """A streaming client (the Node SDK) sends the last chunk of a chunked body after the
    multipart data. The gateway must still read the body to its end: closing the connection with
    unread request bytes makes the kernel reset it, and the client loses the response."""
    url = urlsplit(demo.gateway_url)
    boundary = "e2e-" + uuid.uuid4().hex
    png = gradient_png(seed=21)
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{DEFAULT_MODEL}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n{prompt("add a moon")}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + png + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST {url.path}/images/edits HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {demo.api_key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with sim.recording() as rec, socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head + b"%x\r\n" % len(body) + body + b"\r\n")
        # The multipart data is complete: wait (on a condition, not a clock) until the gateway
        # has made its upstream call, then send the last chunk.
        def upstream_called() -> bool:
            return any(r.get("multipart") for r in sim.requests()[rec.start:])

        deadline = time.monotonic() + 20
        while not upstream_called() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upstream_called(), "the gateway never called the upstream"
        # An answer now, before the body has ended, is the bug itself: the gateway would then
        # close on the unread last chunk. It comes within milliseconds if it comes; wait up to 1 s.
        readable, _, _ = select.select([sock], [], [], 1.0)
        assert not readable, "the gateway answered before reading the request body to its end"
        sock.sendall(b"0\r\n\r\n")
        raw = b""
        try:
            while b"\r\n\r\n" not in raw or len(raw) < _expected_len(raw):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
        except ConnectionResetError:
            pytest.fail(f"connection reset after {len(raw)} response bytes ({raw[:40]!r})")
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert len(raw) >= _expected_len(raw), f"truncated response: {len(raw)} < {_expected_len(raw)}"
    body_start = raw.index(b"\r\n\r\n") + 4
    res = json.loads(raw[body_start:_expected_len(raw)])
    assert_png(base64.b64decode(res["data"][0]["b64_json"]))


def _expected_len(raw: bytes) -> int:
    """Header length + Content-Length of a buffered HTTP response (large if not known yet)."""
    if b"\r\n\r\n" not in raw:
        return 1 << 62
    head, _, _ = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    pytest.fail(f"response without Content-Length: {head!r}")


def test_edit_lite_single_upload(client: OpenAI, sim, image_files):
    (path,) = image_files(1)
    with sim.recording() as rec, open(path, "rb") as f:
        res = client.images.edit(model="gpt-image-2-lite", image=f, prompt=prompt("sepia tone"))
    assert_png(decode_b64(res.data[0]))
    assert rec.with_body(), "no upstream call was made"


def test_edit_lite_rejects_two_uploads(client: OpenAI, sim, image_files):
    paths = image_files(2)
    with sim.recording() as rec:
        with pytest.raises(openai.BadRequestError) as exc:
            client.images.edit(model="gpt-image-2-lite", image=paths, prompt=prompt("combine"))
    assert exc.value.status_code == 400
    assert_error_body(exc.value)
    assert_no_upstream_call(rec)


@pytest.mark.parametrize("model", URL_ONLY_EDIT_MODELS)
def test_edit_upload_on_url_only_model_is_rejected(client: OpenAI, sim, image_files, model: str):
    (path,) = image_files(1)
    with sim.recording() as rec, open(path, "rb") as f:
        with pytest.raises(openai.BadRequestError) as exc:
            client.images.edit(model=model, image=f, prompt=prompt("add a hat"))
    assert exc.value.status_code == 400
    assert_error_body(exc.value)
    assert_no_upstream_call(rec)


def test_edit_more_than_16_images_is_rejected(client: OpenAI, sim):
    images = [(f"r{i}.png", gradient_png(8, 8, seed=i), "image/png") for i in range(17)]
    with sim.recording() as rec:
        with pytest.raises(openai.BadRequestError):
            client.images.edit(model=DEFAULT_MODEL, image=images, prompt=prompt("collage"))
    assert_no_upstream_call(rec)


# --------------------------------------------------------------------------------------------------
# Streaming (SSE): `stream=True` gives `image_generation.completed` / `image_edit.completed` events.
# --------------------------------------------------------------------------------------------------


def test_stream_generate(client: OpenAI):
    stream = client.images.generate(model=DEFAULT_MODEL, prompt=prompt("a comet"), stream=True)
    events = list(stream)
    completed = [e for e in events if e.type == "image_generation.completed"]
    assert len(completed) == 1, [e.type for e in events]
    assert_png(base64.b64decode(completed[0].b64_json))
    assert completed[0].output_format == "png"


def test_stream_generate_async_model_n2(client: OpenAI):
    stream = client.images.generate(
        model="gpt-image-2-beta", prompt=prompt("twin moons"), n=2, stream=True
    )
    completed = [e for e in stream if e.type == "image_generation.completed"]
    assert len(completed) == 2
    for event in completed:
        assert_png(base64.b64decode(event.b64_json))


def test_stream_edit(client: OpenAI, image_files):
    (path,) = image_files(1)
    with open(path, "rb") as f:
        stream = client.images.edit(
            model=DEFAULT_MODEL, image=f, prompt=prompt("add snow"), stream=True
        )
        completed = [e for e in stream if e.type == "image_edit.completed"]
    assert len(completed) == 1
    assert_png(base64.b64decode(completed[0].b64_json))


def test_stream_upstream_refusal_is_an_error_event(client: OpenAI):
    stream = client.images.generate(
        model=DEFAULT_MODEL, prompt=prompt("[sim:policy] something"), stream=True
    )
    with pytest.raises(openai.APIError) as exc:
        list(stream)
    assert exc.value.code == "moderation_blocked"


def test_stream_validation_error_is_refused_before_streaming(client: OpenAI, sim):
    with sim.recording() as rec:
        with pytest.raises(openai.BadRequestError) as exc:
            client.images.generate(
                model=DEFAULT_MODEL, prompt=prompt("tiny"), size="100x100", stream=True
            )
    assert exc.value.param == "size"
    assert_no_upstream_call(rec)


# --------------------------------------------------------------------------------------------------
# Edits with a JSON body: `images: [{image_url}]` (URL or data URL), as Codex sends them.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_url(client: OpenAI) -> str:
    res = client.images.generate(
        model=DEFAULT_MODEL, prompt=prompt("a reference image"), response_format="url"
    )
    assert res.data[0].url
    return res.data[0].url


def assert_image_matches_format(res: ImagesResponse) -> None:
    data = decode_b64(res.data[0])
    if res.output_format == "jpeg":
        assert data[:3] == JPEG_MAGIC, f"output_format jpeg but bytes {data[:8]!r}"
    else:
        assert res.output_format in (None, "png"), res.output_format
        assert_png(data)


@pytest.mark.parametrize("model", MODELS)
def test_json_edit_with_url_reference(client: OpenAI, sim, reference_url: str, model: str):
    with sim.recording() as rec:
        res = client.post(
            "/images/edits",
            body={"model": model, "prompt": prompt("make it night"), "images": [{"image_url": reference_url}]},
            cast_to=ImagesResponse,
        )
    assert_image_matches_format(res)
    calls = rec.with_body()
    assert calls, "no upstream call was made"
    assert reference_url in json.dumps(calls[0].get("json")), f"URL not forwarded: {json.dumps(calls)}"


def test_json_edit_with_data_url(client: OpenAI, sim):
    data_url = "data:image/png;base64," + base64.b64encode(gradient_png(seed=99)).decode()
    with sim.recording() as rec:
        res = client.post(
            "/images/edits",
            body={"model": DEFAULT_MODEL, "prompt": prompt("add rain"), "images": [{"image_url": data_url}]},
            cast_to=ImagesResponse,
        )
    assert_png(decode_b64(res.data[0]))
    assert rec.with_body(), "no upstream call was made"


# --------------------------------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------------------------------


def test_models_list(client: OpenAI):
    page = client.models.list()
    models = list(page)
    assert sorted(m.id for m in models) == sorted(MODELS + ROUTED_NAMES)
    for m in models:
        assert m.object == "model"
        assert isinstance(m.created, int)
        assert isinstance(m.owned_by, str) and m.owned_by


@pytest.mark.parametrize("model", MODELS)
def test_models_retrieve(client: OpenAI, model: str):
    m = client.models.retrieve(model)
    assert m.id == model
    assert m.object == "model"


def test_models_retrieve_unknown_is_404(client: OpenAI):
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.status_code == 404
    assert_error_body(exc.value)


# --------------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------------


def test_wrong_api_key(demo, sim):
    bad = OpenAI(api_key="sk-wrong", base_url=demo.gateway_url, max_retries=0)
    with sim.recording() as rec:
        with pytest.raises(openai.AuthenticationError) as exc:
            bad.images.generate(model=DEFAULT_MODEL, prompt=prompt("anything"))
    assert exc.value.status_code == 401
    assert_error_body(exc.value)
    assert_no_upstream_call(rec)


def test_wrong_api_key_on_models(demo):
    bad = OpenAI(api_key="sk-wrong", base_url=demo.gateway_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_missing_authorization_header(demo):
    res = http(
        "POST",
        f"{demo.gateway_url}/images/generations",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"prompt": "no key"}).encode(),
    )
    assert res.status == 401
    assert res.headers.get("content-type", "").startswith("application/json")
    assert res.headers.get("x-request-id")
    err = res.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err)


def test_bad_size(client: OpenAI, sim):
    with sim.recording() as rec:
        with pytest.raises(openai.BadRequestError) as exc:
            client.images.generate(model=DEFAULT_MODEL, prompt=prompt("tiny"), size="100x100")
    assert exc.value.status_code == 400
    assert exc.value.param == "size"
    assert assert_error_body(exc.value)["param"] == "size"
    assert_no_upstream_call(rec)


@pytest.mark.parametrize("n", [0, 11])
def test_n_out_of_range(client: OpenAI, sim, n: int):
    with sim.recording() as rec:
        with pytest.raises(openai.BadRequestError) as exc:
            client.images.generate(model=DEFAULT_MODEL, prompt=prompt("many"), n=n)
    assert exc.value.status_code == 400
    assert_error_body(exc.value)
    assert_no_upstream_call(rec)


def test_unknown_model_on_generate(client: OpenAI, sim):
    with sim.recording() as rec:
        with pytest.raises(openai.NotFoundError) as exc:
            client.images.generate(model="no-such-model", prompt=prompt("x"))
    assert exc.value.status_code == 404
    assert exc.value.code == "model_not_found"
    assert_error_body(exc.value)
    assert_no_upstream_call(rec)


def test_malformed_json_body(demo, sim):
    with sim.recording() as rec:
        res = http(
            "POST",
            f"{demo.gateway_url}/images/generations",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {demo.api_key}"},
            body=b'{"prompt": ',
        )
    assert res.status == 400, res.body
    assert "error" in res.json()
    assert_no_upstream_call(rec)


@pytest.mark.parametrize("model", MODELS)
def test_content_policy(client: OpenAI, model: str):
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model=model, prompt=prompt("[sim:policy] something"))
    assert exc.value.status_code == 400
    assert exc.value.code == "moderation_blocked"
    assert_error_body(exc.value)


@pytest.mark.parametrize("model", MODELS)
def test_upstream_500_is_502(client: OpenAI, model: str):
    with pytest.raises(openai.InternalServerError) as exc:
        client.images.generate(model=model, prompt=prompt("[sim:500] something"))
    assert exc.value.status_code == 502
    assert_error_body(exc.value)


@pytest.mark.parametrize("model", MODELS)
def test_upstream_insufficient_credits(client: OpenAI, model: str):
    with pytest.raises(openai.InternalServerError) as exc:
        client.images.generate(model=model, prompt=prompt("[sim:402] something"))
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_insufficient_credits"
    assert_error_body(exc.value)


def test_upstream_500_on_edit(client: OpenAI, image_files):
    (path,) = image_files(1)
    with open(path, "rb") as f, pytest.raises(openai.InternalServerError) as exc:
        client.images.edit(model=DEFAULT_MODEL, image=f, prompt=prompt("[sim:500] add a hat"))
    assert exc.value.status_code == 502


def test_request_id_on_success(client: OpenAI):
    raw = client.images.with_raw_response.generate(
        model="gpt-image-2-lite", prompt=prompt("a small cactus")
    )
    assert raw.headers.get("x-request-id")
    assert raw.headers.get("content-type", "").startswith("application/json")
    res = raw.parse()
    assert res._request_id == raw.headers["x-request-id"]
    assert_png(decode_b64(res.data[0]))


def test_request_id_on_models(client: OpenAI):
    raw = client.models.with_raw_response.list()
    assert raw.headers.get("x-request-id")


def test_sim_stats_reachable(sim):
    stats = sim.stats()
    assert isinstance(stats, dict) and stats



def test_unknown_route_is_openai_shaped_404(demo):
    res = http("GET", f"{demo.gateway_url}/no-such-route", headers={"Authorization": f"Bearer {demo.api_key}"})
    assert res.status == 404
    assert res.headers.get("x-request-id")
    assert "error" in res.json()


def test_base_url_without_v1_prefix(demo):
    # Users often configure the bare host; the SDK then calls `/models`, `/images/...`.
    assert demo.gateway_url.endswith("/v1")
    bare = OpenAI(api_key=demo.api_key, base_url=demo.gateway_url[: -len("/v1")], max_retries=0)
    assert sorted(m.id for m in bare.models.list()) == sorted(MODELS + ROUTED_NAMES)
    res = bare.images.generate(model="gpt-image-2-lite", prompt=prompt("a kite"))
    assert_png(decode_b64(res.data[0]))


# --------------------------------------------------------------------------------------------------
# Routing: groups and OpenAI's own model names.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "quality", "upstream", "cost"),
    [
        ("gpt-image-1", "1024x1024", "low", "gpt-image-2-all", "0.005"),
        # No size: beta is cheapest. An explicit size goes only to a model that makes it exactly.
        ("dall-e-3", "auto", "high", "gpt-image-2-beta", "0.03"),
        ("dall-e-3", "1024x1024", "high", "gpt-image-2-lite", "0.04"),
        ("auto", "512x512", "medium", "sparkpix", "0.01"),
    ],
)
def test_routed_names_pick_the_cheapest_model(
    client: OpenAI, model: str, size: str, quality: str, upstream: str, cost: str
):
    raw = client.images.with_raw_response.generate(
        model=model, prompt=prompt("a paper boat"), size=size, quality=quality
    )
    assert raw.headers["x-imagegate-upstream"] == upstream
    assert raw.headers["x-imagegate-cost-usd"] == cost
    assert raw.headers["x-imagegate-attempts"] == "1"
    res = raw.parse()
    assert res.data and res.data[0].b64_json


def test_group_refusal_names_every_model(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(
            model="gpt-image-2",
            prompt=prompt("a cloud"),
            size="1024x1024",
            extra_headers={"x-imagegate-max-cost-usd": "0.001"},
        )
    assert exc.value.code == "no_eligible_model"
    assert "gpt-image-2-lite costs $0.04" in exc.value.message


def test_rate_limit_is_rate_limit_error(demo):
    """The demo's limited key allows one request per minute: the second is a 429 the SDK raises
    as `openai.RateLimitError`, with the retry and rate-limit headers."""
    limited = OpenAI(
        api_key=demo.limited_api_key, base_url=demo.gateway_url, max_retries=0, timeout=REQUEST_TIMEOUT_S
    )
    first = limited.images.generate(model="sparkpix", prompt="a cat", response_format="url")
    assert first.data[0].url
    with pytest.raises(openai.RateLimitError) as caught:
        limited.images.generate(model="sparkpix", prompt="a cat", response_format="url")
    e = caught.value
    assert e.status_code == 429
    assert e.code == "rate_limit_exceeded"
    headers = e.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"


# --------------------------------------------------------------------------------------------------
# The answer is what was asked: each image decoded (Pillow) and compared with the request.
# --------------------------------------------------------------------------------------------------


def decoded(item) -> Image.Image:
    image = Image.open(BytesIO(decode_b64(item)))
    image.load()
    return image


def test_a_group_makes_the_size_asked_or_says_what_it_made(client: OpenAI):
    raw = client.images.with_raw_response.generate(
        model="gpt-image-2", prompt=prompt("a wide bay"), size="1280x720", quality="high"
    )
    res = raw.parse()
    # beta is cheaper but makes the nearest aspect ratio only: not eligible for an explicit size.
    assert raw.headers["x-imagegate-upstream"] == "gpt-image-2-lite"
    image = decoded(res.data[0])
    assert (image.format, image.size) == ("PNG", (1280, 720))
    assert res.size == "1280x720"

    raw = client.images.with_raw_response.generate(
        model="gpt-image-2",
        prompt=prompt("a wide bay"),
        size="1280x720",
        quality="high",
        extra_headers={"x-imagegate-size-policy": "nearest"},
    )
    res = raw.parse()
    assert raw.headers["x-imagegate-upstream"] == "gpt-image-2-beta"
    image = decoded(res.data[0])
    assert image.size != (1280, 720)
    assert res.size == f"{image.size[0]}x{image.size[1]}"


def test_a_url_answer_does_not_echo_the_requested_size(client: OpenAI):
    res = client.images.generate(
        model="gpt-image-2-beta", prompt=prompt("a dune"), size="1280x720", response_format="url"
    )
    assert res.data[0].url
    assert res.size is None and res.output_format is None, res


@pytest.mark.parametrize("model", MODELS)
def test_webp_is_delivered_as_webp(client: OpenAI, model: str):
    res = client.images.generate(
        model=model, prompt=prompt("a kite"), size="1024x1024", output_format="webp"
    )
    image = decoded(res.data[0])
    assert image.format == "WEBP", f"{model}: {image.format}"
    assert res.output_format == "webp"
    assert res.size == f"{image.size[0]}x{image.size[1]}"


def test_jpeg_answer_states_its_size(client: OpenAI):
    res = client.images.generate(
        model="sparkpix", prompt=prompt("a fern"), size="1024x768", output_format="jpeg"
    )
    image = decoded(res.data[0])
    assert (image.format, image.size) == ("JPEG", (1024, 768))
    assert (res.output_format, res.size) == ("jpeg", "1024x768")


def test_a_url_in_a_format_the_model_cannot_make_is_refused_before_any_call(client: OpenAI, sim):
    with sim.recording() as rec:
        with pytest.raises(openai.BadRequestError) as exc:
            client.images.generate(
                model="sparkpix", prompt=prompt("a fern"), response_format="url", output_format="webp"
            )
    error = assert_error_body(exc.value)
    assert (error["code"], error["param"]) == ("unsupported_for_model", "output_format")
    assert_no_upstream_call(rec)
