"""Fixtures for the end-to-end tests: a running `imagegate demo` and clients for it.

The gateway binary comes from `IMAGEGATE_BIN` (default: `target/debug/imagegate`, relative to the
repository root; a relative `IMAGEGATE_BIN` is resolved against the repository root too).  It is
started once per session as `imagegate demo --listen 127.0.0.1:0 --time-scale 0.01`, which starts
the upstream simulator and the gateway on ephemeral loopback ports and prints one line
`IMAGEGATE_READY {json}` once both listen.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from served import OwnSimulator, ServedGateway, gateway_config
from support import REQUEST_TIMEOUT_S, Simulator, gradient_png, mask_png

REPO_ROOT = Path(__file__).resolve().parents[3]
READY_PREFIX = "IMAGEGATE_READY "
READY_TIMEOUT_S = float(os.environ.get("IMAGEGATE_READY_TIMEOUT", "60"))
STOP_TIMEOUT_S = 15.0
_LOG_PATH_KEY = pytest.StashKey[Path]()


# --------------------------------------------------------------------------------------------------
# The running demo.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    gateway_url: str
    simulator_url: str
    api_key: str
    # A key limited to one request per minute.
    limited_api_key: str
    log_path: Path
    process: subprocess.Popen


def _binary() -> Path:
    raw = os.environ.get("IMAGEGATE_BIN", "target/debug/imagegate")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def _require_binary() -> Path:
    binary = _binary()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"gateway binary not found or not executable: {binary} "
            "(build it with `cargo build` or set IMAGEGATE_BIN)",
            pytrace=False,
        )
    return binary


def _log_tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<could not read {path}: {e}>"
    tail = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()[-lines:]
    return "\n".join(tail) if tail else "<empty>"


def _pump_stdout(stream, out: queue.Queue, seen: list[str]) -> None:
    """Reads the child's stdout to the end so it never blocks on a full pipe."""
    for line in stream:
        line = line.rstrip("\r\n")
        seen.append(line)
        out.put(line)
    out.put(None)  # EOF


@pytest.fixture(scope="session")
def demo(tmp_path_factory, pytestconfig) -> Demo:
    binary = _require_binary()

    log_path = tmp_path_factory.mktemp("gateway") / "imagegate-demo.stderr.log"
    pytestconfig.stash[_LOG_PATH_KEY] = log_path
    log_file = open(log_path, "wb")
    cmd = [str(binary), "demo", "--listen", "127.0.0.1:0", "--time-scale", "0.01"]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        bufsize=1,
    )
    log_file.close()  # the child holds its own descriptor

    lines: queue.Queue = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=_pump_stdout, args=(proc.stdout, lines, seen), daemon=True).start()

    def abort(reason: str):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stdout = "\n".join(seen) or "<empty>"
        pytest.fail(
            f"{reason}\ncommand: {' '.join(cmd)}\nexit code: {proc.returncode}\n"
            f"--- stdout ---\n{stdout}\n--- stderr ({log_path}) ---\n{_log_tail(log_path)}",
            pytrace=False,
        )

    ready = None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while ready is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            abort(f"no IMAGEGATE_READY line on stdout within {READY_TIMEOUT_S:.0f}s")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            proc.wait(timeout=5)
            abort("the demo closed its stdout (exited?) before printing IMAGEGATE_READY")
        if line.startswith(READY_PREFIX):
            try:
                ready = json.loads(line[len(READY_PREFIX):])
            except json.JSONDecodeError as e:
                abort(f"IMAGEGATE_READY line is not followed by JSON ({e}): {line!r}")

    for key in ("gateway_url", "simulator_url", "api_key", "limited_api_key"):
        if not isinstance(ready.get(key), str) or not ready[key]:
            abort(f"IMAGEGATE_READY JSON lacks a non-empty string {key!r}: {ready!r}")

    demo = Demo(
        gateway_url=ready["gateway_url"].rstrip("/"),
        simulator_url=ready["simulator_url"].rstrip("/"),
        api_key=ready["api_key"],
        limited_api_key=ready["limited_api_key"],
        log_path=log_path,
        process=proc,
    )
    yield demo

    # Teardown: the gateway must still be alive after the whole suite, and must stop on SIGTERM.
    crashed = proc.poll()
    if crashed is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(
                f"the demo did not exit within {STOP_TIMEOUT_S:.0f}s of SIGTERM\n"
                f"--- stderr ---\n{_log_tail(log_path)}",
                pytrace=False,
            )
    else:
        pytest.fail(
            f"the demo exited during the tests (exit code {crashed})\n"
            f"--- stderr ---\n{_log_tail(log_path)}",
            pytrace=False,
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    log_path = config.stash.get(_LOG_PATH_KEY, None)
    if log_path is None:
        return
    terminalreporter.write_line(f"gateway stderr log: {log_path}")
    if exitstatus != 0:
        terminalreporter.section("gateway stderr (tail)")
        terminalreporter.write_line(_log_tail(log_path, 60))


# --------------------------------------------------------------------------------------------------
# Clients.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def client(demo: Demo) -> OpenAI:
    # No retries: every test sees the first answer, and no request reaches the upstream twice.
    return OpenAI(
        api_key=demo.api_key, base_url=demo.gateway_url, max_retries=0, timeout=REQUEST_TIMEOUT_S
    )


@pytest.fixture(scope="session")
def sim(demo: Demo) -> Simulator:
    return Simulator(demo.simulator_url)


@pytest.fixture
def image_files(tmp_path):
    """Writes real PNG files and returns their paths: `image_files(n)`, plus `.mask` (32x32)."""

    def make(count: int = 1) -> list[Path]:
        paths = []
        for i in range(count):
            p = tmp_path / f"ref{i}.png"
            p.write_bytes(gradient_png(seed=i * 40))
            paths.append(p)
        return paths

    mask = tmp_path / "mask.png"
    mask.write_bytes(mask_png())
    make.mask = mask
    return make


# --------------------------------------------------------------------------------------------------
# Gateways of one test: `imagegate serve` on a config file, with the test's own simulator.
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def own_sim(tmp_path) -> OwnSimulator:
    """A simulator (`imagegate sim`, time scale 0.01) whose counters only this test moves."""
    sim = OwnSimulator(_require_binary(), tmp_path)
    yield sim
    sim.child.terminate()


@pytest.fixture
def serve_gateway(tmp_path, own_sim: OwnSimulator):
    """`serve_gateway(listen=..., models={...})` writes a serve config pointed at `own_sim` (data
    in the test's tmp dir) and starts `imagegate serve` on it. Every gateway is stopped after the
    test; on a failure the tails of their logs are printed."""
    binary = _require_binary()
    started: list[ServedGateway] = []

    def make(*, listen: str = "127.0.0.1:0", models: dict | None = None) -> ServedGateway:
        n = len(started) + 1
        data_dir = tmp_path / f"data{n}"
        data_dir.mkdir()
        config = tmp_path / f"imagegate{n}.toml"
        config.write_text(gateway_config(sim=own_sim, data_dir=data_dir, listen=listen, models=models))
        gateway = ServedGateway(binary, config, tmp_path)
        started.append(gateway)
        return gateway.start()

    yield make
    for gateway in started:
        gateway.stop()
    for log in sorted(tmp_path.glob("imagegate-*.stderr.log")):
        print(f"--- {log.name} (tail) ---\n{_log_tail(log, 30)}")
