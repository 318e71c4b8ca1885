"""Gateways started as `imagegate serve --config FILE`, each with its own simulator
(`imagegate sim`): for the tests that need model settings the demo does not have, a data
directory, or a gateway that is stopped and started again.

Both processes log to a file; the address they listen on is read from their log line
`simulator listening addr=…` / `imagegate listening addr=…`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from support import Simulator, wait_until

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# The client key of every served gateway (keys need at least 16 characters).
CLIENT_KEY = "sk-test-client-key-0123456789"
# Signs the client key's webhooks (Standard Webhooks: `whsec_` and base64).
WEBHOOK_SECRET = "whsec_c2VydmVkLWdhdGV3YXktd2ViaG9vay1zZWNyZXQ="
ADMIN_KEY = "sk-admin-0123456789abcdef"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Child:
    """A child process whose stderr goes to `log_path`."""

    cmd: list[str]
    log_path: Path
    process: subprocess.Popen

    @classmethod
    def spawn(cls, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> "Child":
        full_env = {**os.environ, **(env or {})}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=full_env
            )
        return cls(cmd, log_path, process)

    def log(self) -> str:
        try:
            return _ANSI.sub("", self.log_path.read_text(errors="replace"))
        except OSError as e:
            return f"<could not read {self.log_path}: {e}>"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or "<empty>"

    def listening_addr(self, what: str) -> str:
        """Waits for `{what} listening addr=HOST:PORT` in the log and returns the address."""
        pattern = re.compile(rf"{re.escape(what)} listening addr=(\S+)")
        found: list[str] = []

        def listening() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{' '.join(self.cmd)} exited with {self.process.returncode} before listening\n"
                    f"--- stderr ({self.log_path}) ---\n{self.log_tail()}"
                )
            m = pattern.search(self.log())
            if m:
                found.append(m.group(1))
            return bool(m)

        wait_until(
            listening,
            START_TIMEOUT_S,
            lambda: f"no `{what} listening` line in {self.log_path}:\n{self.log_tail()}",
        )
        return found[0]

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then waits for the exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{' '.join(self.cmd)} did not exit within {timeout:.0f}s of SIGTERM\n"
                f"--- stderr ---\n{self.log_tail()}"
            ) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class OwnSimulator(Simulator):
    """`imagegate sim` on an ephemeral port: counters that only one test's requests move."""

    def __init__(self, binary: Path, log_dir: Path, time_scale: float = 0.01):
        self.api_key = f"sk-sim-{uuid.uuid4().hex}"
        self.child = Child.spawn(
            [str(binary), "sim", "--listen", "127.0.0.1:0", "--api-key", self.api_key,
             "--time-scale", str(time_scale)],
            log_dir / "imagegate-sim.stderr.log",
        )
        self.addr = self.child.listening_addr("simulator")
        super().__init__(f"http://{self.addr}")


@dataclass
class ServedGateway:
    """`imagegate serve` on one config file; `start()` may be called again after a stop, and then
    runs on the same port and data directory."""

    binary: Path
    config_path: Path
    log_dir: Path
    child: Child | None = None
    addr: str = ""
    starts: int = 0

    def start(self, env: dict[str, str] | None = None) -> "ServedGateway":
        """Starts `imagegate serve`; `env` adds environment variables (e.g. a crash point,
        `IMAGEGATE_FAILPOINT`, which the test build compiles in)."""
        assert self.child is None or self.child.process.poll() is not None, "already running"
        self.starts += 1
        self.child = Child.spawn(
            [str(self.binary), "serve", "--config", str(self.config_path)],
            self.log_dir / f"imagegate-serve-{self.starts}.stderr.log",
            env,
        )
        self.addr = self.child.listening_addr("imagegate")
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.addr}/v1"

    def terminate(self) -> int:
        assert self.child is not None
        return self.child.terminate()

    def stop(self) -> None:
        if self.child is not None and self.child.process.poll() is None:
            self.child.terminate()


def _toml(value: object) -> str:
    """A TOML value: numbers and booleans bare, lists as arrays, anything else a quoted string."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return f'"{value}"'


def _table(name: str, settings: dict[str, object]) -> str:
    return f"\n[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items())


def gateway_config(
    *,
    sim: OwnSimulator,
    data_dir: Path,
    listen: str = "127.0.0.1:0",
    models: dict[str, dict[str, str]] | None = None,
    upstream_addr: str | None = None,
    upstream: dict[str, object] | None = None,
    results: dict[str, object] | None = None,
    tables: dict[str, dict[str, object]] | None = None,
) -> str:
    """A serve configuration (TOML) pointed at `sim`, with one client key (`CLIENT_KEY`).

    `upstream_addr` puts another address (a proxy) in front of the simulator, for the API and
    the result files; `upstream` and `results` add to those sections, `tables` adds sections.
    """
    addr = upstream_addr or sim.addr
    text = f"""
[server]
listen = "{listen}"
drain_timeout = "1s"
"""
    text += _table("upstream", {"base_url": f"http://{addr}", "api_key": sim.api_key, **(upstream or {})})
    text += _table("results", {"allowed_hosts": [addr], "timeout": "10s", **(results or {})})
    text += f"""
[urls]
allow_http = true
allow_loopback = true

[data]
dir = "{data_dir}"

[admin]
key = "{ADMIN_KEY}"

[jobs]
webhook_retry_base = "100ms"

[[keys]]
id = "t"
key = "{CLIENT_KEY}"
webhook_secret = "{WEBHOOK_SECRET}"
"""
    for name, settings in (tables or {}).items():
        text += _table(name, settings)
    for model, settings in (models or {}).items():
        text += _table(f"models.{model}", settings)
    return text
