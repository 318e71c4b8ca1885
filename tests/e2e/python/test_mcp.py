"""The gateway's MCP server driven by the official MCP Python SDK (`mcp`), as an MCP client would:
over stdio (`imagegate mcp --url … --api-key-env …`, which talks to a running gateway) and over
Streamable HTTP (`/mcp` on the gateway, the client key as a bearer token).

Each test opens its own session; the SDK calls run in `anyio.run`, bounded by `SESSION_TIMEOUT_S`.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from contextlib import asynccontextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult
from PIL import Image

from conftest import _require_binary
from served import ADMIN_KEY, CLIENT_KEY, ServedGateway, gateway_config
from support import MODELS, gradient_png, http

TOOLS = {"generate_image", "edit_image", "list_models"}
KEY_ENV = "IMAGEGATE_API_KEY"
SESSION_TIMEOUT_S = 60.0
# One 1024x1024 image at quality low on gpt-image-2-all, and its price.
ALL_LOW_1K = {"model": "gpt-image-2-all", "size": "1024x1024", "quality": "low"}
ALL_LOW_1K_USD = Decimal("0.005")
WRONG_KEY = "sk-wrong-key-0123456789abcdef"


def run(scenario, *args) -> Any:
    """Runs an async scenario to its end, bounded in time."""

    async def bounded():
        with anyio.fail_after(SESSION_TIMEOUT_S):
            return await scenario(*args)

    return anyio.run(bounded)


def root_of(gateway_url: str) -> str:
    """The gateway's root URL (the demo's `gateway_url` ends in `/v1`)."""
    return gateway_url.removesuffix("/v1")


@asynccontextmanager
async def stdio_session(url: str, key: str, log_path: Path) -> AsyncIterator[ClientSession]:
    """`imagegate mcp --url URL --api-key-env IMAGEGATE_API_KEY`, the key in that variable; its
    stderr goes to `log_path`."""
    params = StdioServerParameters(
        command=str(_require_binary()),
        args=["mcp", "--url", url, "--api-key-env", KEY_ENV],
        env={KEY_ENV: key},
    )
    with open(log_path, "a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=SESSION_TIMEOUT_S) as session:
                await session.initialize()
                yield session


def http_client(key: str, statuses: list[int] | None = None) -> httpx2.AsyncClient:
    """The HTTP client the SDK's transport uses: the key as a bearer token; `statuses` collects the
    status of every answer."""

    async def record(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx2.Timeout(SESSION_TIMEOUT_S, read=SESSION_TIMEOUT_S),
        event_hooks={"response": [record]},
    )


@asynccontextmanager
async def http_session(root_url: str, key: str) -> AsyncIterator[ClientSession]:
    """A Streamable HTTP session with `{root_url}/mcp`."""
    async with http_client(key) as client:
        async with streamable_http_client(f"{root_url}/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=SESSION_TIMEOUT_S) as session:
                await session.initialize()
                yield session


def session_for(transport: str, gateway_url: str, key: str, tmp_path: Path):
    if transport == "stdio":
        return stdio_session(gateway_url, key, tmp_path / "imagegate-mcp.stderr.log")
    return http_session(root_of(gateway_url), key)


def texts(result: CallToolResult) -> list[str]:
    return [c.text for c in result.content if c.type == "text"]


def error_text(result: CallToolResult) -> str:
    """The text of a tool error: `isError` set, the gateway's error in a text item."""
    assert result.is_error is True, f"expected a tool error, got {summary(result)}"
    got = texts(result)
    assert got, f"a tool error without a text item: {summary(result)}"
    return "\n".join(got)


def summary(result: CallToolResult) -> str:
    """The result without the image bytes, for assertion messages."""
    items = [
        {"type": c.type, "mime_type": getattr(c, "mime_type", None), "bytes": len(c.data)}
        if c.type == "image"
        else c.model_dump(exclude_none=True)
        for c in result.content
    ]
    structured = result.structured_content
    return json.dumps({"is_error": result.is_error, "content": items, "structured": structured})


def image_result(result: CallToolResult, n: int) -> tuple[list[bytes], dict]:
    """A successful image tool result: `n` image items (real PNGs, decoded with Pillow), then one
    text item holding the JSON that `structuredContent` carries too. Returns (images, info)."""
    assert not result.is_error, summary(result)
    kinds = [c.type for c in result.content]
    assert kinds == ["image"] * n + ["text"], f"content is {kinds}: {summary(result)}"
    images = []
    for item in result.content[:n]:
        assert item.mime_type == "image/png", summary(result)
        data = base64.b64decode(item.data, validate=True)
        with Image.open(BytesIO(data)) as im:
            assert im.format == "PNG"
            im.load()  # decodes every pixel: a truncated or corrupt file raises here
            assert im.width > 0 and im.height > 0
        images.append(data)
    info = json.loads(result.content[-1].text)
    assert result.structured_content == info, summary(result)
    assert info["images"] == n, info
    assert isinstance(info["model"], str) and info["model"], info
    assert isinstance(info["cost_usd"], str) and Decimal(info["cost_usd"]) > 0, info
    return images, info


def list_models_result(result: CallToolResult) -> dict[str, dict]:
    """`list_models`: a text item with `{"models": [...]}`, the same as `structuredContent`; by id."""
    assert not result.is_error, summary(result)
    got = texts(result)
    assert len(got) == 1, summary(result)
    listing = json.loads(got[0])
    assert result.structured_content == listing, summary(result)
    models = {m["id"]: m for m in listing["models"]}
    assert all(m["kind"] in ("image", "group", "text") for m in models.values()), listing
    return models


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in leaves(e)]
    return [error]


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def prompt(text: str) -> str:
    """A prompt made unique per call, so no cache or dedup can answer it."""
    return f"{text} #{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------------
# Tools listed.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_the_tools_are_listed_with_input_schemas(demo, tmp_path, transport):
    async def scenario():
        async with session_for(transport, demo.gateway_url, demo.api_key, tmp_path) as session:
            return (await session.list_tools()).tools

    tools = {t.name: t for t in run(scenario)}
    assert TOOLS <= set(tools), sorted(tools)
    for name in TOOLS:
        assert tools[name].input_schema.get("type") == "object", tools[name].input_schema
    gen = tools["generate_image"].input_schema
    assert "prompt" in gen.get("required", []), gen
    for field in ("prompt", "model", "size", "quality", "n", "background", "output_format"):
        assert field in gen["properties"], f"generate_image lacks {field}: {gen}"
    edit = tools["edit_image"].input_schema
    assert {"prompt", "images"} <= set(edit.get("required", [])), edit
    assert edit["properties"]["images"].get("type") == "array", edit
    assert "mask" in edit["properties"], edit
    if transport == "stdio":
        assert "output_dir" in gen["properties"] and "output_dir" in edit["properties"], (gen, edit)


# --------------------------------------------------------------------------------------------------
# generate_image and edit_image.
# --------------------------------------------------------------------------------------------------


def test_stdio_generate_image_writes_the_files_it_returns(demo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()

    async def scenario():
        # The gateway's root URL here; the demo's URL with /v1 in the other stdio tests.
        async with stdio_session(root_of(demo.gateway_url), demo.api_key, tmp_path / "mcp.log") as session:
            return await session.call_tool(
                "generate_image",
                {"prompt": prompt("a lighthouse at dusk"), **ALL_LOW_1K, "output_dir": str(out)},
            )

    images, info = image_result(run(scenario), 1)
    assert info["model"] == "gpt-image-2-all", info
    assert Decimal(info["cost_usd"]) == ALL_LOW_1K_USD, info
    with Image.open(BytesIO(images[0])) as im:
        assert im.size == (1024, 1024)
    files = [Path(f) for f in info["files"]]
    assert len(files) == 1, info
    assert files[0].is_absolute() and files[0].parent == out, info
    assert files[0].read_bytes() == images[0]
    assert sorted(out.iterdir()) == files


def test_stdio_edit_image_uploads_a_local_png(demo, sim, tmp_path, image_files):
    ref = image_files(1)[0]
    out = tmp_path / "edits"
    out.mkdir()

    async def scenario():
        async with stdio_session(demo.gateway_url, demo.api_key, tmp_path / "mcp.log") as session:
            return await session.call_tool(
                "edit_image",
                {
                    "prompt": prompt("add a red scarf"),
                    "images": [str(ref)],
                    "model": "gpt-image-2-all",
                    "output_dir": str(out),
                },
            )

    with sim.recording() as rec:
        result = run(scenario)
    images, info = image_result(result, 1)
    assert info["model"] == "gpt-image-2-all", info
    assert [Path(f).read_bytes() for f in info["files"]] == images
    assert all(Path(f).parent == out for f in info["files"]), info
    # The local file itself went upstream.
    calls = rec.with_body()
    assert len(calls) == 1, json.dumps(rec.requests)
    parts = [p for p in calls[0].get("multipart") or [] if p.get("name", "").startswith("image")]
    assert [p["len"] for p in parts] == [ref.stat().st_size], json.dumps(calls[0])


def test_http_generate_image_n2_at_the_model_price(demo, tmp_path):
    async def scenario():
        async with http_session(root_of(demo.gateway_url), demo.api_key) as session:
            return await session.call_tool(
                "generate_image",
                {"prompt": prompt("two paper boats"), **ALL_LOW_1K, "n": 2},
            )

    images, info = image_result(run(scenario), 2)
    assert info["model"] == "gpt-image-2-all", info
    assert Decimal(info["cost_usd"]) == 2 * ALL_LOW_1K_USD, info
    assert "files" not in info, info
    assert images[0] != images[1]


def test_http_edit_image_with_a_data_url(demo, sim):
    png = gradient_png(seed=7)

    async def scenario():
        async with http_session(root_of(demo.gateway_url), demo.api_key) as session:
            return await session.call_tool(
                "edit_image",
                {"prompt": prompt("make it night"), "images": [data_url(png)], "model": "gpt-image-2-all"},
            )

    with sim.recording() as rec:
        result = run(scenario)
    _, info = image_result(result, 1)
    assert info["model"] == "gpt-image-2-all", info
    assert len(rec.with_body()) == 1, json.dumps(rec.requests)


def test_default_model_is_gpt_image_2(demo, tmp_path):
    async def scenario():
        async with stdio_session(demo.gateway_url, demo.api_key, tmp_path / "mcp.log") as session:
            return await session.call_tool("generate_image", {"prompt": prompt("a comet")})

    _, info = image_result(run(scenario), 1)
    # gpt-image-2 is a group: the answer names the model that served it.
    assert info["model"] in MODELS and info["model"].startswith("gpt-image-2"), info


# --------------------------------------------------------------------------------------------------
# list_models.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_list_models(demo, tmp_path, transport):
    async def scenario():
        async with session_for(transport, demo.gateway_url, demo.api_key, tmp_path) as session:
            return await session.call_tool("list_models", {})

    models = list_models_result(run(scenario))
    for model in MODELS:
        assert models.get(model, {}).get("kind") == "image", models.get(model)
    assert models.get("gpt-image-2", {}).get("kind") == "group", models.get("gpt-image-2")
    assert "price_usd" in models["gpt-image-2-all"], models["gpt-image-2-all"]


class TextModels:
    """A text upstream that only lists its models (`GET /v1/models`), on an ephemeral port."""

    KEY = "sk-text-upstream-secret"

    def __init__(self, ids: list[str]):
        listed = [{"id": i, "object": "model", "created": 0, "owned_by": "e2e"} for i in ids]
        body = json.dumps({"object": "list", "data": listed}).encode()
        key = self.KEY

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                ok = self.path == "/v1/models" and self.headers.get("authorization") == f"Bearer {key}"
                self.send_response(200 if ok else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body) if ok else 2))
                self.end_headers()
                self.wfile.write(body if ok else b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_list_models_names_the_text_models_of_the_pass_through(own_sim, tmp_path, transport):
    text = TextModels(["gpt-5.5", "gpt-5.5-mini"])
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "imagegate.toml"
    config.write_text(
        gateway_config(
            sim=own_sim,
            data_dir=data_dir,
            tables={
                "passthrough": {"base_url": text.base_url, "api_key": TextModels.KEY},
                'passthrough.prices."gpt-5.5"': {"input_usd_per_1m": 1.25, "output_usd_per_1m": 10.0},
            },
        )
    )
    gateway = ServedGateway(_require_binary(), config, tmp_path).start()
    try:

        async def scenario():
            async with session_for(transport, gateway.base_url, CLIENT_KEY, tmp_path) as session:
                return await session.call_tool("list_models", {})

        models = list_models_result(run(scenario))
    finally:
        gateway.stop()
        text.close()
    for model in ("gpt-5.5", "gpt-5.5-mini"):
        assert models.get(model, {}).get("kind") == "text", models.get(model)
    assert models.get("gpt-image-2-all", {}).get("kind") == "image", models.get("gpt-image-2-all")


# --------------------------------------------------------------------------------------------------
# Refusals: errors are tool results, and the session goes on.
# --------------------------------------------------------------------------------------------------


def test_http_wrong_key_gets_401_before_any_mcp_exchange(demo):
    root = root_of(demo.gateway_url)
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "0"},
        },
    }

    def post_initialize(key: str | None):
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        return http("POST", f"{root}/mcp", headers=headers, body=json.dumps(initialize).encode())

    for key in (WRONG_KEY, None):
        res = post_initialize(key)
        assert res.status == 401, (key, res.status, res.body[:500])
        assert "mcp-session-id" not in res.headers, res.headers
    # The same request with the right key is answered by the MCP server.
    ok = post_initialize(demo.api_key)
    assert ok.status == 200 and b'"result"' in ok.body, (ok.status, ok.body[:500])
    if "mcp-session-id" in ok.headers:
        auth = {"authorization": f"Bearer {demo.api_key}", "mcp-session-id": ok.headers["mcp-session-id"]}
        http("DELETE", f"{root}/mcp", headers=auth)

    # The SDK client: initialize fails, and the only answers it got were 401s.
    statuses: list[int] = []

    async def scenario():
        async with http_client(WRONG_KEY, statuses) as client:
            async with streamable_http_client(f"{root}/mcp", http_client=client) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=SESSION_TIMEOUT_S) as session:
                    await session.initialize()

    with pytest.raises(Exception) as failed:
        run(scenario)
    # The SDK raises MCPError (in its task groups' exception groups), not a timeout.
    assert all(isinstance(e, MCPError) for e in leaves(failed.value)), repr(failed.value)
    assert statuses and set(statuses) == {401}, statuses


def test_stdio_wrong_key_makes_tool_calls_errors(demo, tmp_path):
    async def scenario():
        async with stdio_session(demo.gateway_url, WRONG_KEY, tmp_path / "mcp.log") as session:
            failed = await session.call_tool("generate_image", {"prompt": prompt("anything")})
            tools = (await session.list_tools()).tools
            return failed, tools

    failed, tools = run(scenario)
    assert "invalid_api_key" in error_text(failed), summary(failed)
    assert TOOLS <= {t.name for t in tools}


def test_http_local_path_in_images_is_a_tool_error(demo, sim, image_files):
    ref = image_files(1)[0]

    async def scenario():
        async with http_session(root_of(demo.gateway_url), demo.api_key) as session:
            failed = await session.call_tool(
                "edit_image",
                {"prompt": prompt("add a hat"), "images": [str(ref)], "model": "gpt-image-2-all"},
            )
            after = await session.call_tool("list_models", {})
            return failed, after

    with sim.recording() as rec:
        failed, after = run(scenario)
    error_text(failed)
    assert rec.with_body() == [], f"a refused edit reached the upstream: {json.dumps(rec.requests)}"
    list_models_result(after)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_an_invalid_size_is_a_tool_error_naming_it(demo, sim, tmp_path, transport):
    async def scenario():
        async with session_for(transport, demo.gateway_url, demo.api_key, tmp_path) as session:
            return await session.call_tool(
                "generate_image", {"prompt": prompt("tiny"), "model": "gpt-image-2-all", "size": "100x100"}
            )

    with sim.recording() as rec:
        failed = run(scenario)
    assert "size" in error_text(failed).lower(), summary(failed)
    assert rec.with_body() == []


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_an_exhausted_budget_is_a_tool_error_and_the_session_goes_on(
    serve_gateway, own_sim, tmp_path, transport
):
    gateway = serve_gateway()
    root = f"http://{gateway.addr}"
    # A key whose whole budget is below the price of any image.
    created = http(
        "POST",
        f"{root}/admin/keys",
        headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"},
        body=json.dumps({"id": f"broke-{transport}", "total_budget_usd": 0.001}).encode(),
    )
    assert created.status in (200, 201), (created.status, created.body[:500])
    key = created.json()["secret"]
    creates_before = own_sim.creates()

    async def scenario():
        async with session_for(transport, gateway.base_url, key, tmp_path) as session:
            failed = await session.call_tool("generate_image", {"prompt": prompt("a wren"), **ALL_LOW_1K})
            after = await session.call_tool("list_models", {})
            return failed, after

    failed, after = run(scenario)
    assert "insufficient_quota" in error_text(failed), summary(failed)
    assert own_sim.creates() == creates_before, "a refused request reached the upstream"
    assert "gpt-image-2-all" in list_models_result(after)
    # The client key with no budget still works on the same gateway.
    with_budget_left = run(_generate_once, transport, gateway.base_url, CLIENT_KEY, tmp_path)
    image_result(with_budget_left, 1)


async def _generate_once(transport: str, gateway_url: str, key: str, tmp_path: Path) -> CallToolResult:
    async with session_for(transport, gateway_url, key, tmp_path) as session:
        return await session.call_tool("generate_image", {"prompt": prompt("a robin"), **ALL_LOW_1K})
