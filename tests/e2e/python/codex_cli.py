"""The real Codex CLI (`@openai/codex`, pinned in tests/e2e/codex/package.json) run by the tests.

`codex exec` runs one turn non-interactively against a model provider whose `base_url` is a test's
gateway (or a stand-in), with the image tool offered: the provider sends the
`x-openai-actor-authorization` header. Each run gets its own `CODEX_HOME` (config, sessions and
`generated_images/`) and `HOME`.

Codex must not reach the internet: the update check, analytics and the plugin and app features
(which sync from GitHub and chatgpt.com at startup) are off in the config, and every proxy
variable names a closed loopback port, so any other outbound call fails at once; loopback
addresses bypass it (`NO_PROXY`).
"""

from __future__ import annotations

import base64
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fake_text import Recorded, function_call_item

CODEX_DIR = Path(__file__).resolve().parents[1] / "codex"
CODEX_VERSION = "0.171.0"
# Any non-empty value: Codex offers its image tool only when the provider sends this header.
ACTOR_HEADER = "x-openai-actor-authorization"
ACTOR_VALUE = "imagegate-e2e"
API_KEY_ENV = "IMAGEGATE_API_KEY"
CODEX_TIMEOUT_S = float(os.environ.get("IMAGEGATE_CODEX_TIMEOUT", "180"))
# A closed port: an outbound call through this "proxy" fails immediately.
DEAD_PROXY = "http://127.0.0.1:9"
_TARGETS = {
    "x86_64": ("codex-linux-x64", "x86_64-unknown-linux-musl"),
    "aarch64": ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
}


def codex_binary() -> Path | None:
    """`CODEX_BIN`, else the native binary `npm ci` put under tests/e2e/codex (None: neither)."""
    if os.environ.get("CODEX_BIN"):
        path = Path(os.environ["CODEX_BIN"])
        return path if path.is_file() and os.access(path, os.X_OK) else None
    target = _TARGETS.get(platform.machine())
    if target is None:
        return None
    package, triple = target
    path = CODEX_DIR / "node_modules" / "@openai" / package / "vendor" / triple / "bin" / "codex"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_codex() -> Path:
    """The Codex binary, or a skip saying how to install it."""
    binary = codex_binary()
    if binary is None:
        pytest.skip(
            f"the Codex CLI {CODEX_VERSION} is not installed: run `npm ci` in tests/e2e/codex "
            "(or set CODEX_BIN to a codex binary)"
        )
    return binary


@dataclass(frozen=True)
class CodexHome:
    """A `CODEX_HOME` whose config points Codex at `base_url` (an OpenAI-compatible `/v1`)."""

    path: Path

    @classmethod
    def create(cls, root: Path, base_url: str, *, model: str = "gpt-5.5") -> "CodexHome":
        path = root / "codex-home"
        path.mkdir()
        (path / "config.toml").write_text(
            f"""\
model = "{model}"
model_provider = "gw"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false

[model_providers.gw]
name = "imagegate"
base_url = "{base_url}"
env_key = "{API_KEY_ENV}"
wire_api = "responses"
http_headers = {{ "{ACTOR_HEADER}" = "{ACTOR_VALUE}" }}
"""
        )
        return cls(path)

    def generated_images(self) -> list[Path]:
        """Every file under `generated_images/` (Codex saves `<thread>/<call_id>.png` there)."""
        root = self.path / "generated_images"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


@dataclass(frozen=True)
class CodexRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (
            f"codex exec exited with {self.returncode} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-3000:] or '<empty>'}\n"
            f"--- stderr ---\n{self.stderr[-6000:] or '<empty>'}"
        )


def run_codex(
    binary: Path, home: CodexHome, workdir: Path, prompt: str, *, api_key: str
) -> CodexRun:
    """`codex exec --skip-git-repo-check PROMPT` in `workdir`, bounded by `CODEX_TIMEOUT_S`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home.path),
        "CODEX_HOME": str(home.path),
        API_KEY_ENV: api_key,
        "HTTP_PROXY": DEAD_PROXY,
        "HTTPS_PROXY": DEAD_PROXY,
        "ALL_PROXY": DEAD_PROXY,
        "http_proxy": DEAD_PROXY,
        "https_proxy": DEAD_PROXY,
        "all_proxy": DEAD_PROXY,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(binary), "exec", "--strict-config", "--skip-git-repo-check", prompt],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CODEX_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"codex exec did not finish within {CODEX_TIMEOUT_S:.0f}s\n"
            f"--- stdout ---\n{_text(e.stdout)[-3000:]}\n--- stderr ---\n{_text(e.stderr)[-6000:]}"
        ) from None
    return CodexRun(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


# --------------------------------------------------------------------------------------------------
# What the model says and what Codex sends back.
# --------------------------------------------------------------------------------------------------


def imagegen_call(call_id: str, prompt: str, **arguments: Any) -> dict:
    """The model's call of Codex's image tool: `image_gen.imagegen` as a namespaced
    `function_call` (other spellings are refused by Codex as an unsupported call)."""
    return function_call_item(
        "imagegen", {"prompt": prompt, **arguments}, call_id, namespace="image_gen"
    )


def function_call_output(request: Recorded, call_id: str) -> Any:
    """The `output` of the `function_call_output` for `call_id` in a recorded turn's `input`."""
    items = [
        item
        for item in (request.json or {}).get("input", [])
        if isinstance(item, dict)
        and item.get("type") == "function_call_output"
        and item.get("call_id") == call_id
    ]
    assert len(items) == 1, f"expected one function_call_output for {call_id}, got {items!r}"
    return items[0]["output"]


def returned_image(request: Recorded, call_id: str) -> tuple[str, bytes]:
    """The image Codex gave back to the model for `call_id`: its MIME type and bytes, from the
    `input_image` data URL of the `function_call_output`."""
    output = function_call_output(request, call_id)
    assert isinstance(output, list), f"the tool output is not a list of parts: {output!r}"
    images = [p for p in output if isinstance(p, dict) and p.get("type") == "input_image"]
    assert len(images) == 1, f"expected one input_image in the tool output: {json.dumps(output)[:2000]}"
    url = images[0]["image_url"]
    head, sep, data = url.partition(",")
    assert sep and head.startswith("data:") and head.endswith(";base64"), f"not a data URL: {url[:80]}"
    return head[len("data:"):-len(";base64")], base64.b64decode(data, validate=True)
