#!/usr/bin/env python3
"""imagegate benchmark suite: image-sized work, gateway vs the same load sent directly to the
simulator (and, for the small-body path, vs a bare nginx `proxy_pass` hop). Standard library only.

Run it through `bench/run.sh` (which installs wrk and nginx and builds the release binary):

    bench/run.sh                       # every scenario, full durations
    bench/run.sh --quick               # short durations, smaller holds (a smoke run)
    bench/run.sh --scenarios 1,2       # a subset (1 small, 2 large, 3 waiting, 4 uploads, 5 downloads)
    bench/run.sh --scenarios 1,6       # 6: one replica on PostgreSQL + Redis vs the embedded
                                       # store (run.sh starts both through scripts/services.sh)
    bench/run.sh --scenarios 1 --profile   # and where the gateway's CPU goes (perf)

Gateway, simulator and load generator share this machine, so every number is reported next to
the same load sent straight to the simulator: compare ratios, not absolute times. Results go to
`bench/results/<date>-<short commit>.md` (a suffix is added rather than overwrite a file).
"""
import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import sqlite3
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM_KEY = "sk-sim-bench-upstream"
CLIENT_KEY = "sk-imagegate-bench"
HOST = "127.0.0.1"

# Answer sizes: base64 text of 1 KiB, 2 MiB and 12 MiB (a 2K and a 4K image) => file bytes.
SMALL_FILE = 768
SIZES = {"2 MiB": 2 * 1024 * 1024 * 3 // 4, "12 MiB": 12 * 1024 * 1024 * 3 // 4}
UPLOAD_FILES, UPLOAD_FILE_BYTES = 16, 2 * 1024 * 1024
BETA_FIRST_POLL, BETA_INTERVAL = 5.0, 2.0
POLL_JITTER = 0.1  # the gateway's spread of a poll interval (upstream/task.rs `next_poll`)


# ---------------------------------------------------------------- processes and /proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def rss_kib(pid: int) -> int:
    return int(status(pid)["VmRSS"].split()[0])


def hwm_kib(pid: int) -> int:
    return int(status(pid)["VmHWM"].split()[0])


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux `clear_refs` 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_secs(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class PeakSampler:
    """Peak RSS of a process over a block: VmHWM after a reset, or 5 ms sampling as a fallback."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        self.before = rss_kib(self.pid)
        self.hwm = reset_peak(self.pid)
        self.peak = self.before
        self.stop = threading.Event()
        if not self.hwm:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        if self.hwm:
            self.peak = hwm_kib(self.pid)
        else:
            self.thread.join()
        self.after = rss_kib(self.pid)


class Stack:
    """Simulator, gateway and (optionally) nginx, each its own process, stopped at exit."""

    def __init__(self, binary: str, tmp: str, need_nginx: bool, need_mem_gateway: bool = False,
                 hop_binary: str | None = None):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.sim_port, self.gw_port = free_port(), free_port()
        self.sim = f"http://{HOST}:{self.sim_port}"
        self.gw = f"http://{HOST}:{self.gw_port}"
        self.sim_log = open(os.path.join(tmp, "sim.log"), "wb")
        sim = subprocess.Popen(
            [binary, "sim", "--listen", f"{HOST}:{self.sim_port}", "--time-scale", "0",
             "--api-key", SIM_KEY],
            stdout=self.sim_log, stderr=subprocess.STDOUT)
        self.procs.append(sim)
        self.sim_pid = sim.pid
        wait_port(self.sim_port, sim, "simulator")
        conf = os.path.join(tmp, "gateway.toml")
        with open(conf, "w") as f:
            f.write(gateway_config(self.gw_port, self.sim_port, os.path.join(tmp, "data")))
        self.binary, self.gw_conf = binary, conf
        self.gw_log = open(os.path.join(tmp, "gateway.log"), "wb")
        self.gw_proc = None
        self.restart_gateway()
        # The same gateway with its store in memory: the disk's share of a request's CPU.
        self.gw_mem = None
        if need_mem_gateway:
            self.gw_mem_port = free_port()
            mem_conf = os.path.join(tmp, "gateway-mem.toml")
            with open(mem_conf, "w") as f:
                f.write(gateway_config(self.gw_mem_port, self.sim_port, "").replace(
                    'dir = ""', "in_memory = true"))
            gw_mem = subprocess.Popen([binary, "serve", "--config", mem_conf],
                                      stdout=self.gw_log, stderr=subprocess.STDOUT)
            self.procs.append(gw_mem)
            wait_port(self.gw_mem_port, gw_mem, "gateway (store in memory)")
            self.gw_mem, self.gw_mem_pid = f"http://{HOST}:{self.gw_mem_port}", gw_mem.pid
        # The gateway's HTTP stack alone (examples/bare_hop.rs): the floor of a Rust hop.
        self.hop = None
        if hop_binary:
            self.hop_port = free_port()
            hop = subprocess.Popen([hop_binary, f"{HOST}:{self.hop_port}", self.sim],
                                   stdout=self.gw_log, stderr=subprocess.STDOUT)
            self.procs.append(hop)
            wait_port(self.hop_port, hop, "bare Rust hop")
            self.hop, self.hop_pid = f"http://{HOST}:{self.hop_port}", hop.pid
        self.nginx = None
        if need_nginx:
            self.nginx_port = free_port()
            nginx = start_nginx(tmp, self.nginx_port, self.sim_port)
            self.procs.append(nginx)
            wait_port(self.nginx_port, nginx, "nginx")
            self.nginx = f"http://{HOST}:{self.nginx_port}"
            self.nginx_master = nginx.pid

    def nginx_pids(self) -> list[int]:
        """nginx's master and its workers: the hop's CPU is theirs."""
        pids = [self.nginx_master]
        try:
            with open(f"/proc/{self.nginx_master}/task/{self.nginx_master}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return pids

    def restart_gateway(self):
        """A fresh gateway process, so a memory measurement starts from a clean heap."""
        if self.gw_proc is not None:
            self.gw_proc.send_signal(signal.SIGTERM)
            self.gw_proc.wait(timeout=15)
            self.procs.remove(self.gw_proc)
        gw = subprocess.Popen([self.binary, "serve", "--config", self.gw_conf],
                              stdout=self.gw_log, stderr=subprocess.STDOUT)
        self.procs.append(gw)
        self.gw_proc, self.gw_pid = gw, gw.pid
        wait_port(self.gw_port, gw, "gateway")

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def sim_reset(self):
        urllib.request.urlopen(urllib.request.Request(f"{self.sim}/_sim/reset", method="POST")).read()

    def sim_stats(self) -> dict:
        return json.load(urllib.request.urlopen(f"{self.sim}/_sim/stats"))


def gateway_config(port: int, sim_port: int, data_dir: str) -> str:
    return f"""# imagegate benchmark configuration (written by bench/bench.py)
[server]
listen = "{HOST}:{port}"
drain_timeout = "5s"
# Scenario 3 holds 10,000 connections from one address.
max_connections = 20000
max_connections_per_ip = 20000

[upstream]
base_url = "http://{HOST}:{sim_port}"
api_key = "{SIM_KEY}"

[results]
allowed_hosts = ["{HOST}:{sim_port}"]

[urls]
allow_http = true
allow_loopback = true

[logging]
filter = "info"

# The job store on, as in production: every request is a durable job (SQLite, WAL).
[data]
dir = "{data_dir}"

[[keys]]
id = "bench"
key = "{CLIENT_KEY}"

# Scenario 5: the async task completes at once ([sim:slow=0]); poll right after the create.
[models.gpt-image-2-all]
first_poll_delay = "10ms"
poll_interval = "1s"

# Scenario 3 holds 10,000 tasks at once: past the default cap of concurrent beta requests.
[limits.models.gpt-image-2-beta]
max_concurrent = 20000

# Scenario 3: the shipped defaults for gpt-image-2-beta.
[models.gpt-image-2-beta]
first_poll_delay = "{int(BETA_FIRST_POLL)}s"
poll_interval = "{int(BETA_INTERVAL)}s"
"""


def start_nginx(tmp: str, port: int, sim_port: int) -> subprocess.Popen:
    prefix = os.path.join(tmp, "nginx")
    os.makedirs(prefix, exist_ok=True)
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""{user}
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 64m;
    upstream sim {{ server {HOST}:{sim_port}; keepalive 64; }}
    server {{
        listen {HOST}:{port};
        location /v1/images/generations {{
            proxy_pass http://sim/api/v1/images/generations;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {SIM_KEY}";
        }}
    }}
}}
""")
    return subprocess.Popen(["nginx", "-p", prefix, "-c", conf, "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- wrk


WRK_LUA = r"""
local f = assert(io.open(BODY_FILE, "rb"))
local body = f:read("*a")
f:close()
wrk.method = METHOD
if #body > 0 then wrk.body = body end
for k, v in pairs(HEADERS) do wrk.headers[k] = v end
if DELAY_MS > 0 then
  function delay() return DELAY_MS end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
"""


def lua_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid Lua string literal for ASCII text


def wrk(tmp: str, url: str, *, body_file: str = "", method: str = "POST", headers=None,
        conns: int, threads: int, secs: float, delay_ms: int = 0, pid: int | None = None,
        cpu_pids: list[int] | None = None, meters: dict | None = None) -> dict:
    """One wrk run. `pid`: the process whose RSS is sampled and whose CPU is counted;
    `cpu_pids`: the processes whose CPU is counted instead (nginx's master and workers);
    `meters`: more CPU counters (name: a function returning CPU seconds so far), reported as
    `r["meters"][name]` in µs per request."""
    script = os.path.join(tmp, f"wrk-{time.monotonic_ns()}.lua")
    hdrs = ", ".join(f"[{lua_str(k)}] = {lua_str(v)}" for k, v in (headers or {}).items())
    empty = os.path.join(tmp, "empty")
    open(empty, "wb").close()
    with open(script, "w") as f:
        f.write(f"BODY_FILE = {lua_str(body_file or empty)}\nMETHOD = {lua_str(method)}\n"
                f"HEADERS = {{{hdrs}}}\nDELAY_MS = {delay_ms}\n" + WRK_LUA)
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(secs))}s", "--timeout", "30s",
           "-s", script, url]
    counted = cpu_pids or ([pid] if pid else [])
    cpu0 = sum(cpu_secs(p) for p in counted)
    meter0 = {name: f() for name, f in (meters or {}).items()}
    with PeakSampler(pid or os.getpid()) as peak:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    meter1 = {name: f() for name, f in (meters or {}).items()}
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        sys.exit(f"wrk failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRKJSON "):])
    secs_run = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / secs_run
    r["mb_s"] = r["bytes"] / secs_run / 1e6
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    r["cmd"] = " ".join(cmd[:-3] + [cmd[-1]])
    if pid:
        r["peak_rss_kib"] = peak.peak
        r["rss_before_kib"] = peak.before
    if counted:
        spent = sum(cpu_secs(p) for p in counted) - cpu0
        r["cpu_pct"] = 100 * spent / secs_run
        r["cpu_us_per_req"] = spent * 1e6 / max(1, r["requests"])
    r["meters"] = {name: (meter1[name] - meter0[name]) * 1e6 / max(1, r["requests"])
                   for name in meter0}
    return r


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


JSON_CT = {"Content-Type": "application/json"}


# ---------------------------------------------------------------- raw asyncio HTTP/1.1 client


async def http_call(host: str, port: int, method: str, path: str, headers: dict,
                    body: bytes) -> tuple[int, int, float]:
    """One request on its own connection; reads (and discards) the whole answer.
    Returns (status, body bytes, seconds)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    first = await reader.readuntil(b"\r\n\r\n")
    code = int(first.split(b" ", 2)[1])
    n = 0
    while chunk := await reader.read(1 << 20):
        n += len(chunk)
    writer.close()
    return code, n, time.monotonic() - t0


def burst(url: str, path: str, headers: dict, body: bytes, n: int, pid: int) -> dict:
    """Sends n requests at once; peak RSS of `pid` meanwhile."""
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def run():
        return await asyncio.gather(*(http_call(host, int(port), "POST", path, headers, body)
                                      for _ in range(n)))

    with PeakSampler(pid) as peak:
        t0 = time.monotonic()
        results = asyncio.run(run())
        secs = time.monotonic() - t0
    codes = [r[0] for r in results]
    return {"n": n, "ok": codes.count(200), "codes": sorted(set(codes)), "secs": secs,
            "rss_before_kib": peak.before, "peak_rss_kib": peak.peak,
            "answer_bytes": max(r[1] for r in results)}


# ---------------------------------------------------------------- scenario helpers


def gen_body(prompt: str, **extra) -> bytes:
    return json.dumps({"model": "gpt-image-2-all", "prompt": prompt, "size": "1024x1024",
                       **extra}).encode()


def write(tmp: str, name: str, data: bytes) -> str:
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def png_file(total: int, seed: int) -> bytes:
    """A valid 64x64 PNG padded to `total` bytes with a private ancillary chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"".join(b"\0" + bytes([seed % 256]) * 192
                                                 for _ in range(64))))
    end = chunk(b"IEND", b"")
    head = b"\x89PNG\r\n\x1a\n" + ihdr + idat
    pad = total - len(head) - len(end) - 12
    return head + chunk(b"siMp", os.urandom(pad)) + end


def multipart(prompt: str) -> tuple[bytes, str]:
    boundary = "imagegate-bench-boundary-7d1c"
    parts = []
    for name, value in [("model", "gpt-image-2-all"), ("prompt", prompt), ("size", "1024x1024")]:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for i in range(UPLOAD_FILES):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image[]"; '
                     f'filename="ref-{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                     + png_file(UPLOAD_FILE_BYTES, i) + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def mib(kib: float) -> float:
    return kib / 1024


# ---------------------------------------------------------------- scenarios


class Report:
    def __init__(self):
        self.sections: list[str] = []
        self.targets: list[tuple[str, str, str, str]] = []  # (target, wanted, measured, verdict)
        self.headline: list[str] = []

    def section(self, title: str, lines: list[str]):
        self.sections.append(f"## {title}\n\n" + "\n".join(lines) + "\n")

    def target(self, what: str, wanted: str, measured: str, ok: bool | None, gap: str = ""):
        verdict = "n/a" if ok is None else ("met" if ok else f"**missed** {gap}".strip())
        self.targets.append((what, wanted, measured, verdict))


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def fmt_delta(us: float) -> str:
    return f"{us / 1000:+.2f} ms"


def cpu_cell(r: dict) -> str:
    return f"{r['cpu_us_per_req']:,.0f} µs" if "cpu_us_per_req" in r else "-"


def s1_small(stack: Stack, tmp: str, a, rep: Report):
    prompt = f"bench small [sim:slow=0] [sim:filebytes={SMALL_FILE}]"
    body = write(tmp, "small.json", gen_body(prompt))
    gw_h = {**JSON_CT, **auth(CLIENT_KEY)}
    # name: (url, headers, pid sampled, processes whose CPU counts)
    targets = {
        "direct": (f"{stack.sim}/api/v1/images/generations", {**JSON_CT, **auth(SIM_KEY)},
                   stack.sim_pid, None),
        "nginx": (f"{stack.nginx}/v1/images/generations", JSON_CT, None, stack.nginx_pids()),
        "gateway": (f"{stack.gw}/v1/images/generations", gw_h, stack.gw_pid, None),
        "gateway, store in memory": (f"{stack.gw_mem}/v1/images/generations", gw_h,
                                     stack.gw_mem_pid, None),
    }
    if stack.hop:
        targets["bare Rust hop"] = (f"{stack.hop}/v1/images/generations",
                                    {**JSON_CT, **auth(SIM_KEY)}, stack.hop_pid, None)
    # Warm-up (connection pools, result cache).
    for url, h, _, _ in targets.values():
        wrk(tmp, url, body_file=body, headers=h, conns=8, threads=1, secs=1)
    maxr, rate, one = {}, {}, {}
    for name, (url, h, pid, cpus) in targets.items():
        maxr[name] = wrk(tmp, url, body_file=body, headers=h, conns=a.max_conns, threads=1,
                         secs=a.secs, pid=pid, cpu_pids=cpus)
    # Unloaded: one connection, one request at a time.
    for name, (url, h, pid, cpus) in targets.items():
        one[name] = wrk(tmp, url, body_file=body, headers=h, conns=1, threads=1,
                        secs=a.rate_secs / 3, pid=pid, cpu_pids=cpus)
    # Fixed rate: every connection waits `delay` ms between requests.
    conns = 40
    per_conn_ms = round(conns * 1000 / a.rate)
    for name, (url, h, pid, cpus) in targets.items():
        rate[name] = wrk(tmp, url, body_file=body, headers=h, conns=conns, threads=2,
                         secs=a.rate_secs, delay_ms=per_conn_ms, pid=pid, cpu_pids=cpus)
    lines = [
        f"Request: `gpt-image-2-all`, size 1024x1024, `b64_json`, prompt `{prompt}` "
        f"(answer {maxr['gateway']['bytes'] / max(1, maxr['gateway']['requests']):.0f} bytes "
        "with headers). Simulator at time scale 0. CPU per request counts the target's own "
        "processes only: the simulator for direct, nginx's master and workers for the hop, the "
        "gateway for the gateway (auth, limits, budgets, the job store, metrics and the access "
        "log all on). The second gateway is the same binary with `[data] in_memory = true`: "
        "the difference is the disk's share (the store's statements run in both: its writer "
        "thread's share is in the profile, 1a). The bare Rust hop (`examples/bare_hop.rs`) is "
        "the gateway's HTTP stack alone — tokio, hyper through axum, reqwest — forwarding the "
        "request and its answer with nothing else: the floor of any gateway built on that stack.",
        "",
        f"Max throughput: `wrk -t1 -c{a.max_conns} -d{round(a.secs)}s`.",
        "",
        "| target | req/s | p50 | p99 | errors | CPU | CPU per request |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in maxr.items():
        cpu = f"{r['cpu_pct']:.0f}% of a core" if "cpu_pct" in r else "-"
        lines.append(f"| {name} | {r['rps']:,.0f} | {fmt_us(r['p50_us'])} | "
                     f"{fmt_us(r['p99_us'])} | {r['errors']} | {cpu} | {cpu_cell(r)} |")
    lines += ["", f"Unloaded: `wrk -t1 -c1 -d{max(1, round(a.rate_secs / 3))}s`. wrk corrects "
              "its percentiles for coordinated omission (`stats_correct`): a stall of S ms on one "
              "connection also counts the requests that would have been sent meanwhile, about "
              "S / (the mean time per request) samples between the mean and S, so a few stalls "
              "of tens of milliseconds set the p99.", "",
              "| target | req/s | p50 | p99 | added p50 | added p99 | CPU per request |",
              "|---|---|---|---|---|---|---|"]
    for name, r in one.items():
        d50 = r["p50_us"] - one["direct"]["p50_us"]
        d99 = r["p99_us"] - one["direct"]["p99_us"]
        lines.append(f"| {name} | {r['rps']:,.0f} | {fmt_us(r['p50_us'])} | {fmt_us(r['p99_us'])} | "
                     f"{fmt_delta(d50) if name != 'direct' else '-'} | "
                     f"{fmt_delta(d99) if name != 'direct' else '-'} | {cpu_cell(r)} |")
    lines += [
        "",
        f"Fixed rate: `wrk -t2 -c{conns} -d{round(a.rate_secs)}s`, each connection waiting "
        f"{per_conn_ms} ms between requests (≈{a.rate} req/s).",
        "",
        "| target | req/s | p50 | p90 | p99 | max | errors | CPU per request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rate.items():
        lines.append(f"| {name} | {r['rps']:,.0f} | {fmt_us(r['p50_us'])} | "
                     f"{fmt_us(r['p90_us'])} | {fmt_us(r['p99_us'])} | {fmt_us(r['max_us'])} | "
                     f"{r['errors']} | {cpu_cell(r)} |")
    over50 = rate["gateway"]["p50_us"] - rate["direct"]["p50_us"]
    over99 = rate["gateway"]["p99_us"] - rate["direct"]["p99_us"]
    nginx99 = rate["nginx"]["p99_us"] - rate["direct"]["p99_us"]
    lines += ["", f"Gateway overhead at ≈{rate['gateway']['rps']:,.0f} req/s: p50 "
              f"{fmt_delta(over50)}, p99 {fmt_delta(over99)} (nginx hop: p99 {fmt_delta(nginx99)})."]
    ratio = maxr["gateway"]["rps"] / maxr["nginx"]["rps"]
    cpu_gw, cpu_ng = maxr["gateway"]["cpu_us_per_req"], maxr["nginx"]["cpu_us_per_req"]
    cpu_mem = maxr["gateway, store in memory"]["cpu_us_per_req"]
    store = cpu_gw - cpu_mem
    lines.append(f"Max throughput: gateway {ratio:.2f}× the nginx hop, "
                 f"{maxr['gateway']['rps'] / maxr['direct']['rps']:.2f}× direct. CPU per request: "
                 f"gateway {cpu_gw:,.0f} µs = {cpu_gw / cpu_ng:.1f}× the nginx hop's {cpu_ng:,.0f} µs; "
                 f"the disk's share ≈ {store:,.0f} µs ({100 * store / cpu_gw:.0f}%), the rest "
                 f"{cpu_mem:,.0f} µs ({cpu_mem / cpu_ng:.1f}× nginx).")
    if "bare Rust hop" in maxr:
        cpu_hop = maxr["bare Rust hop"]["cpu_us_per_req"]
        lines.append(f"The bare Rust hop costs {cpu_hop:,.0f} µs per request "
                     f"({cpu_hop / cpu_ng:.1f}× the nginx hop): of the gateway's {cpu_gw:,.0f} µs, "
                     f"≈ {cpu_hop:,.0f} µs is the HTTP stack's floor, ≈ {store:,.0f} µs the "
                     f"disk, ≈ {max(0, cpu_mem - cpu_hop):,.0f} µs the gateway's own work "
                     "(auth, limits, budgets, routing, the job store's statements and commits, "
                     "the job's bookkeeping, metrics, the access log, parsing and rendering).")
    rep.section("1. Fast sync path, small body", lines)
    if a.profile:
        rep.section("1a. Where the gateway's CPU goes (small body)",
                    profile(stack, tmp, a, f"{stack.gw}/v1/images/generations", body, gw_h))
    u50 = one["gateway"]["p50_us"] - one["direct"]["p50_us"]
    u99 = one["gateway"]["p99_us"] - one["direct"]["p99_us"]
    rep.target("Small body: CPU per request vs the nginx hop", "≤ 2×",
               f"{cpu_gw / cpu_ng:.1f}× ({cpu_gw:,.0f} vs {cpu_ng:,.0f} µs; disk ≈ {store:,.0f} µs)",
               cpu_gw <= 2 * cpu_ng, f"by {cpu_gw / cpu_ng - 2:.1f}×")
    rep.target("Small body: max throughput vs nginx proxy_pass hop", "≥ 0.5×",
               f"{ratio:.2f}× ({maxr['gateway']['rps']:,.0f} vs {maxr['nginx']['rps']:,.0f} req/s)",
               ratio >= 0.5, f"by {0.5 - ratio:.2f}×")
    rep.target("Small body: unloaded added latency p50 / p99", "≤ 0.1 ms / ≤ 0.5 ms",
               f"{fmt_delta(u50)} / {fmt_delta(u99)}", u50 <= 100 and u99 <= 500,
               f"by {fmt_us(max(0, u50 - 100))} / {fmt_us(max(0, u99 - 500))}")
    rep.target("Small body: gateway overhead p99 at 1,000 req/s", "≤ 1 ms",
               f"{fmt_delta(over99)} (p99 {fmt_us(rate['gateway']['p99_us'])} vs direct "
               f"{fmt_us(rate['direct']['p99_us'])})", over99 <= 1000,
               f"by {fmt_us(over99 - 1000)}")
    rep.headline.append(f"small body: {cpu_gw:,.0f} µs CPU per request ({cpu_gw / cpu_ng:.1f}× an "
                        f"nginx hop; disk ≈ {store:,.0f} µs); overhead p50 {fmt_delta(over50)}, "
                        f"p99 {fmt_delta(over99)} at {rate['gateway']['rps']:,.0f} req/s; max "
                        f"throughput {ratio:.2f}× the nginx hop")


def perf_top(data: str, sort: str, limit: int, *extra: str) -> list[tuple[float, str]]:
    """`perf report`'s self-time shares, as (percent, name), the largest first."""
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort,
                          "--stdio", "-g", "none", "--percent-limit", "0.5", *extra],
                         capture_output=True, text=True, check=False).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+(.*\S)", line)
        if m and not line.lstrip().startswith("#"):
            name = re.sub(r"\s{2,}", " ", m.group(2)).replace("|", "\\|")
            rows.append((float(m.group(1)), name[:110]))
    return rows[:limit]


def profile(stack: Stack, tmp: str, a, url: str, body: str, headers: dict) -> list[str]:
    """The gateway sampled by `perf record` (999 Hz, its whole process) under the max-throughput
    load: self time by thread, by library and by symbol."""
    data = os.path.join(tmp, "perf.data")
    secs = max(3, round(a.secs))
    rec = subprocess.Popen(["perf", "record", "-F", "999", "-o", data, "-p", str(stack.gw_pid),
                            "--", "sleep", str(secs)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = wrk(tmp, url, body_file=body, headers=headers, conns=a.max_conns, threads=1, secs=secs,
            pid=stack.gw_pid)
    rec.wait()
    lines = [f"`perf record -F 999 -p <gateway>` for {secs} s under `wrk -t1 -c{a.max_conns}` "
             f"({r['rps']:,.0f} req/s, {r['cpu_us_per_req']:,.0f} µs CPU per request); self "
             "time, so a library's share is the time spent in it, whoever called it.", ""]
    for title, sort, limit in [("thread", "comm", 6), ("library", "dso", 6), ("symbol", "dso,sym", 25)]:
        rows = perf_top(data, sort, limit)
        if not rows:
            return lines + ["(perf report gave nothing: is `perf` installed and allowed?)"]
        per_req = r["cpu_us_per_req"] / 100
        lines += [f"| {title} | share | µs per request |", "|---|---|---|"]
        lines += [f"| `{name}` | {pct:.1f}% | {pct * per_req:,.0f} |" for pct, name in rows]
        lines.append("")
    return lines


def s2_large(stack: Stack, tmp: str, a, rep: Report):
    lines = [
        "Request: `gpt-image-2-all`, size 1024x1024, `b64_json`; the simulator's answer carries "
        "the base64 inline, the gateway passes it on. Simulator at time scale 0.",
        "",
        f"Throughput: `wrk -t1 -c{a.large_conns} -d{round(a.secs)}s`.",
        "",
        "| answer (base64) | target | req/s | MB/s | p50 | p99 | errors | gateway peak RSS | CPU per request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    mem_lines = [
        "",
        "Memory per in-flight answer: a fresh gateway process, warmed up by one small request "
        "(its first request's one-time set-up, about 2 MiB, is not memory per answer), then N "
        "requests sent at once, the "
        "simulator answering all of them after 1 s (`[sim:slow=1]`), so N answers cross the "
        "gateway together; (peak RSS − RSS before) / N / base64 size.",
        "",
        "| answer (base64) | N in flight | RSS before | peak RSS | per answer | × base64 size | all 200 |",
        "|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    flat = []
    vs_nginx = []
    for label, file_bytes in SIZES.items():
        b64_len = (file_bytes + 2) // 3 * 4
        prompt = f"bench large [sim:slow=0] [sim:filebytes={file_bytes}]"
        body = write(tmp, f"large-{file_bytes}.json", gen_body(prompt))
        runs = {
            "direct": (f"{stack.sim}/api/v1/images/generations", {**JSON_CT, **auth(SIM_KEY)},
                       None, None),
            "nginx": (f"{stack.nginx}/v1/images/generations", JSON_CT, None, stack.nginx_pids()),
            "gateway": (f"{stack.gw}/v1/images/generations", {**JSON_CT, **auth(CLIENT_KEY)},
                        stack.gw_pid, None),
        }
        got = {}
        for name, (url, h, pid, cpus) in runs.items():
            wrk(tmp, url, body_file=body, headers=h, conns=2, threads=1, secs=1)
            r = wrk(tmp, url, body_file=body, headers=h, conns=a.large_conns, threads=1,
                    secs=a.secs, pid=pid, cpu_pids=cpus)
            got[name] = r
            peak = f"{mib(r['peak_rss_kib']):.0f} MiB" if pid else "-"
            lines.append(f"| {label} | {name} | {r['rps']:,.1f} | {r['mb_s']:,.0f} | "
                         f"{fmt_us(r['p50_us'])} | {fmt_us(r['p99_us'])} | {r['errors']} | {peak} | "
                         f"{cpu_cell(r)} |")
        vs_nginx.append((label, got["gateway"]["cpu_us_per_req"] / got["nginx"]["cpu_us_per_req"],
                         got["gateway"]["rps"] / got["nginx"]["rps"]))
        slow_body = gen_body(f"bench burst [sim:slow=1] [sim:filebytes={file_bytes}]")
        per = {}
        for n in a.bursts:
            stack.restart_gateway()
            # One small request first: what a fresh process sets up on its first request (the
            # upstream connection pool, prepared statements, metric series; about 2 MiB) is not
            # memory held per answer.
            burst(stack.gw, "/v1/images/generations", {**JSON_CT, **auth(CLIENT_KEY)},
                  gen_body("bench warm-up [sim:slow=0] [sim:filebytes=768]"), 1, stack.gw_pid)
            b = burst(stack.gw, "/v1/images/generations", {**JSON_CT, **auth(CLIENT_KEY)},
                      slow_body, n, stack.gw_pid)
            delta = (b["peak_rss_kib"] - b["rss_before_kib"]) * 1024 / n
            x = delta / b64_len
            per[n] = x
            worst = max(worst, x)
            mem_lines.append(f"| {label} | {n} | {mib(b['rss_before_kib']):.0f} MiB | "
                             f"{mib(b['peak_rss_kib']):.0f} MiB | {delta / 2**20:.1f} MiB | "
                             f"{x:.2f}× | {b['ok']}/{n} |")
        flat.append((label, per))
    rep.section("2. Large bodies", lines + mem_lines)
    spread = "; ".join(f"{label}: " + ", ".join(f"{x:.2f}× at {n}" for n, x in per.items())
                       for label, per in flat)
    cpu_worst = max(c for _, c, _ in vs_nginx)
    rps_worst = min(t for _, _, t in vs_nginx)
    each = "; ".join(f"{label}: CPU {c:.2f}×, throughput {t:.2f}×" for label, c, t in vs_nginx)
    rep.target("Large bodies: CPU per request vs the nginx hop", "≤ 1.2×", each,
               cpu_worst <= 1.2, f"by {cpu_worst - 1.2:.2f}×")
    rep.target("Large bodies: throughput vs the nginx hop", "≥ 0.9×", f"worst {rps_worst:.2f}×",
               rps_worst >= 0.9, f"by {0.9 - rps_worst:.2f}×")
    rep.target("Large bodies: memory per in-flight answer", "≤ 1.1× base64 size",
               f"worst {worst:.2f}×", worst <= 1.1, f"by {worst - 1.1:.2f}×")
    top = max(a.bursts)
    grows = any(per[top] > 1.25 * min(per.values()) for _, per in flat)
    rep.target(f"Large bodies: flat as concurrency grows to {top}", "flat", spread, not grows)
    rep.target("Large bodies: `b64_json` from the upstream not decoded and re-encoded", "pass-through",
               "the base64 is a slice of the upstream's answer, written from that buffer to "
               "the job store and the client (`upstream::all::openai_images`, "
               "`model::json_text`; test `answer_images_are_slices_of_the_answer`)", True)
    rep.headline.append(f"large answers: worst {worst:.2f}× the base64 size in gateway memory "
                        f"per in-flight answer")


def s3_waiting(stack: Stack, tmp: str, a, rep: Report):
    lines = [
        f"Requests: `gpt-image-2-beta` (async task), `response_format: url`, prompt "
        f"`hold [sim:slow={a.hold_latency:g}]` (each task completes {a.hold_latency:g} s after "
        f"its creation); gateway polls with the default first_poll_delay {BETA_FIRST_POLL:g} s "
        f"and poll_interval {BETA_INTERVAL:g} s. One connection per request "
        "(Python asyncio, raw HTTP/1.1); a fresh gateway process for each row.",
        "",
        "| waiting | all answered 200 | seconds | gateway RSS before → peak | per waiting request "
        "| gateway CPU while waiting | simulator CPU | polls per task (mean / max / allowed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # Polls at first_poll_delay, then every interval, until the one at or after completion. The
    # gateway spreads each interval by ±10% (so polls never arrive in lockstep): the allowance
    # uses the shortest interval; the mean stays one poll per interval.
    allowed = 1 + math.ceil((a.hold_latency - BETA_FIRST_POLL) / (BETA_INTERVAL * (1 - POLL_JITTER)))
    worst_kib, worst_cpu, worst_polls, all_ok = 0.0, 0.0, 0.0, True
    for n in a.holds:
        stack.restart_gateway()
        stack.sim_reset()
        r = hold(stack, n, a.hold_latency)
        stats = stack.sim_stats()
        polls = list(stats["polls_by_task"].values())
        mean = sum(polls) / max(1, len(polls))
        top = max(polls, default=0)
        per = (r["peak_kib"] - r["before_kib"]) / n
        # The target is per waiting job at the largest hold: a small hold's figure is mostly
        # the process's fixed growth (pools, caches) spread over few requests.
        if n == max(a.holds):
            worst_kib = per
        worst_cpu = max(worst_cpu, r["cpu_pct"])
        worst_polls = max(worst_polls, top)
        all_ok &= r["ok"] == n
        lines.append(
            f"| {n:,} | {r['ok']:,} / {n:,} {r['other'] or ''} | {r['secs']:.1f} | "
            f"{mib(r['before_kib']):.0f} → {mib(r['peak_kib']):.0f} MiB | {per:.1f} KiB | "
            f"{r['cpu_pct']:.1f}% of a core ({r['cpu_s']:.1f} s over {r['wait_s']:.1f} s) | "
            f"{r['sim_cpu_pct']:.1f}% | {mean:.1f} / {top} / {allowed} |")
    lines += ["", "CPU while waiting is measured from the moment every request is sent until the "
              "first answer arrives (the ramp-up of new connections is excluded)."]
    rep.section(f"3. Thousands waiting ({a.hold_latency:g} s async tasks)", lines)
    top_n = max(a.holds)
    rep.target(f"{top_n:,} waiting jobs: memory each", "≤ 30 KB",
               f"{worst_kib:.1f} KiB ({top_n:,} waiting)",
               worst_kib * 1.024 <= 30, f"by {worst_kib * 1.024 - 30:.1f} KB")
    rep.target("Waiting: polls per task", f"≤ {allowed} ({a.hold_latency:g} s task, first poll "
               f"{BETA_FIRST_POLL:g} s, every {BETA_INTERVAL:g} s)", f"max {worst_polls}",
               worst_polls <= allowed, f"by {worst_polls - allowed}")
    rep.target("Waiting: gateway CPU while waiting", "< 25% of one core",
               f"{worst_cpu:.1f}%", worst_cpu < 25, f"by {worst_cpu - 25:.1f} points")
    rep.target("Waiting: all answered", "all 200", "yes" if all_ok else "no", all_ok)
    rep.headline.append(f"{top_n:,} waiting requests: {worst_kib:.1f} KiB each, "
                        f"{worst_cpu:.1f}% of a core")


def hold(stack: Stack, n: int, latency: float) -> dict:
    host, port = stack.gw.removeprefix("http://").rsplit(":", 1)
    pid = stack.gw_pid
    body = json.dumps({"model": "gpt-image-2-beta", "prompt": f"hold [sim:slow={latency:g}]",
                       "response_format": "url"}).encode()
    headers = {**JSON_CT, **auth(CLIENT_KEY)}

    async def run():
        connect_gate = asyncio.Semaphore(256)
        sent = 0
        all_sent = asyncio.Event()
        first_answer = asyncio.Event()

        async def one():
            nonlocal sent
            async with connect_gate:
                reader, writer = await asyncio.open_connection(host, int(port))
                head = (f"POST /v1/images/generations HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                        + f"Content-Length: {len(body)}\r\n\r\n").encode()
                writer.write(head + body)
                await writer.drain()
            sent += 1
            if sent == n:
                all_sent.set()
            data = await reader.read()
            first_answer.set()
            writer.close()
            return int(data.split(b" ", 2)[1]) if data else 0

        t0 = time.monotonic()
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await all_sent.wait()
        t_sent, c_sent, s_sent = time.monotonic(), cpu_secs(pid), cpu_secs(stack.sim_pid)
        await first_answer.wait()
        t_first, c_first, s_first = time.monotonic(), cpu_secs(pid), cpu_secs(stack.sim_pid)
        codes = await asyncio.gather(*tasks)
        return codes, time.monotonic() - t0, (t_first - t_sent, c_first - c_sent, s_first - s_sent)

    with PeakSampler(pid) as peak:
        codes, secs, (wait_s, cpu_s, sim_s) = asyncio.run(run())
    return {"ok": codes.count(200), "other": {c: codes.count(c) for c in set(codes) if c != 200},
            "secs": secs, "before_kib": peak.before, "peak_kib": peak.peak, "wait_s": wait_s,
            "cpu_s": cpu_s, "cpu_pct": 100 * cpu_s / max(wait_s, 1e-9),
            "sim_cpu_pct": 100 * sim_s / max(wait_s, 1e-9)}


def s4_uploads(stack: Stack, tmp: str, a, rep: Report):
    prompt = f"bench upload [sim:slow=0] [sim:filebytes={SMALL_FILE}]"
    data, ct = multipart(prompt)
    body = write(tmp, "upload.multipart", data)
    size = len(data)
    lines = [
        f"Request: `images.edit` multipart with {UPLOAD_FILES} × {UPLOAD_FILE_BYTES / 2**20:.0f} MiB "
        f"PNG files (`image[]`), body {size / 2**20:.1f} MiB; the gateway forwards them to the "
        "upstream's multipart edit endpoint; ~1 KB answer.",
        "",
        f"Throughput: `wrk -t1 -c{a.upload_conns} -d{round(a.secs)}s`.",
        "",
        "| target | req/s | upload MB/s | p50 | p99 | errors | gateway peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    h_direct = {"Content-Type": ct, **auth(SIM_KEY)}
    h_gw = {"Content-Type": ct, **auth(CLIENT_KEY)}
    for name, url, h, pid in [("direct", f"{stack.sim}/api/v1/images/edits", h_direct, None),
                              ("gateway", f"{stack.gw}/v1/images/edits", h_gw, stack.gw_pid)]:
        wrk(tmp, url, body_file=body, headers=h, conns=1, threads=1, secs=1)
        r = wrk(tmp, url, body_file=body, headers=h, conns=a.upload_conns, threads=1,
                secs=a.secs, pid=pid)
        peak = f"{mib(r['peak_rss_kib']):.0f} MiB" if pid else "-"
        lines.append(f"| {name} | {r['rps']:,.1f} | {r['rps'] * size / 1e6:,.0f} | "
                     f"{fmt_us(r['p50_us'])} | {fmt_us(r['p99_us'])} | {r['errors']} | {peak} |")
    lines += ["", "Memory per in-flight upload: a fresh gateway process, then N uploads sent at "
              "once; (peak RSS − RSS before) / N / body size.", "",
              "| N in flight | RSS before | peak RSS | per upload | × body size | all 200 |",
              "|---|---|---|---|---|---|"]
    worst = 0.0
    raw = open(body, "rb").read()
    for n in a.upload_bursts:
        stack.restart_gateway()
        b = burst(stack.gw, "/v1/images/edits", h_gw, raw, n, stack.gw_pid)
        per = (b["peak_rss_kib"] - b["rss_before_kib"]) * 1024 / n
        worst = max(worst, per / size)
        lines.append(f"| {n} | {mib(b['rss_before_kib']):.0f} MiB | {mib(b['peak_rss_kib']):.0f} MiB "
                     f"| {per / 2**20:.1f} MiB | {per / size:.2f}× | {b['ok']}/{n} |")
    rep.section("4. Uploads", lines)
    rep.target("Uploads: at most one copy of each file held", "≤ ~1× the body per upload "
               "(+ one file in flight)", f"worst {worst:.2f}× the body per in-flight upload",
               worst <= 1.0 + 1 / UPLOAD_FILES + 0.1, f"by {worst - 1.0 - 1 / UPLOAD_FILES:.2f}×")
    rep.headline.append(f"16 × 2 MiB uploads: {worst:.2f}× the body in gateway memory per upload")


def s5_download(stack: Stack, tmp: str, a, rep: Report):
    lines = [
        "Request: `gpt-image-2-all` async mode (`aspect_ratio` 1:1, `resolution` 1K), `b64_json`: "
        "the gateway creates the task, polls it once (first_poll_delay 10 ms; the task is done), "
        "downloads the PNG result file and answers it base64-encoded. Direct: the same result "
        "file fetched from the simulator.",
        "",
        f"`wrk -t1 -c{a.download_conns} -d{round(a.secs)}s`.",
        "",
        "| result file | target | req/s | image MB/s | answer MB/s | p50 | p99 | errors | gateway peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for label, file_bytes in SIZES.items():
        prompt = f"bench download [sim:slow=0] [sim:filebytes={file_bytes}]"
        body = json.dumps({"model": "gpt-image-2-all", "prompt": prompt, "aspect_ratio": "1:1",
                           "resolution": "1K", "response_format": "b64_json"}).encode()
        path = write(tmp, f"download-{file_bytes}.json", body)
        file_url = result_file_url(stack, prompt)
        direct = wrk(tmp, file_url, method="GET", conns=a.download_conns, threads=1, secs=a.secs)
        gw_url = f"{stack.gw}/v1/images/generations"
        h = {**JSON_CT, **auth(CLIENT_KEY)}
        wrk(tmp, gw_url, body_file=path, headers=h, conns=2, threads=1, secs=1)
        gw = wrk(tmp, gw_url, body_file=path, headers=h, conns=a.download_conns, threads=1,
                 secs=a.secs, pid=stack.gw_pid)
        mb = file_bytes / 1e6
        for name, r in [("direct (file)", direct), ("gateway", gw)]:
            peak = f"{mib(r['peak_rss_kib']):.0f} MiB" if "peak_rss_kib" in r else "-"
            lines.append(f"| {mb:.1f} MB ({label} base64) | {name} | {r['rps']:,.1f} | "
                         f"{r['rps'] * mb:,.0f} | {r['mb_s']:,.0f} | {fmt_us(r['p50_us'])} | "
                         f"{fmt_us(r['p99_us'])} | {r['errors']} | {peak} |")
        ratios.append((label, gw["rps"] * mb, direct["rps"] * mb))
    rep.section("5. Task result download + base64 encode", lines)
    rep.headline.append("result download + base64: " + ", ".join(
        f"{g:,.0f} MB/s of images ({g / d:.2f}× a direct file download) at {label} base64"
        for label, g, d in ratios))


def result_file_url(stack: Stack, prompt: str) -> str:
    """Creates one async task straight on the simulator and returns its result file URL."""
    def call(req):
        return json.load(urllib.request.urlopen(req))
    body = json.dumps({"model": "gpt-image-2-all", "prompt": prompt, "aspect_ratio": "1:1",
                       "resolution": "1K"}).encode()
    created = call(urllib.request.Request(f"{stack.sim}/api/v1/images/generations", data=body,
                                          headers={**JSON_CT, **auth(SIM_KEY)}))
    task = created["data"]["taskId"]
    for _ in range(200):
        data = call(urllib.request.Request(
            f"{stack.sim}/api/v1/images/generations?task_id={task}", headers=auth(SIM_KEY)))["data"]
        if data["state"] == "completed":
            return data["resultUrls"][0]
        time.sleep(0.02)
    sys.exit("the simulator did not complete a task")


# ---------------------------------------------------------------- scenario 6: a replica


# The bench key of both gateways in scenario 6: a per-minute limit that never refuses (every
# request takes a cell: in Redis on the replica, in the process on the embedded gateway) and a
# monthly budget (a reservation and a booking per request: in PostgreSQL on the replica, in
# SQLite on the embedded gateway). 60,000,000 a minute is the largest limit whose emission
# interval in Redis (60,000,000 µs / limit, in whole µs) is not 0.
S6_RPM = 60_000_000
S6_BUDGET_USD = 1_000_000
S6_NAMESPACE = "imagegate-bench"
# PostgreSQL made durable for the measurement (scripts/services.sh turns these off for tests).
PG_DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def s6_config(port: int, sim_port: int, data_dir: str, database_url: str = "",
              redis_url: str = "") -> str:
    """Scenario 1's configuration with limits and a budget on the key; with `database_url`, a
    replica: PostgreSQL for the store and Redis for the shared state."""
    conf = gateway_config(port, sim_port, data_dir)
    key_line = f'key = "{CLIENT_KEY}"\n'
    assert conf.count(key_line) == 1
    conf = conf.replace(key_line, key_line + f"requests_per_minute = {S6_RPM}\n"
                        f"monthly_budget_usd = {S6_BUDGET_USD}\n")
    if database_url:
        dir_line = f'dir = "{data_dir}"\n'
        assert conf.count(dir_line) == 1
        conf = conf.replace(dir_line, dir_line + f'url = "{database_url}"\n')
        conf += (f'\n[cluster]\nredis_url = "{redis_url}"\nnamespace = "{S6_NAMESPACE}"\n')
    return conf


def tree_cpu_secs(pid: int) -> float:
    """CPU of a process, of its children it has reaped and of its live descendants: a
    PostgreSQL server's postmaster, its backends and background processes."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        kids = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        return 0.0  # gone meanwhile: its CPU is in its parent's reaped children's
    own = sum(int(x) for x in parts[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(tree_cpu_secs(k) for k in kids)


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def ppid(pid: int) -> int:
    return int(status(pid).get("PPid", "0"))


def pgrep(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True,
                         check=False).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


class Services:
    """The PostgreSQL and Redis of scenario 6 (started by scripts/services.sh): their server
    processes, made durable, and a few counters."""

    def __init__(self, database_url: str, redis_url: str):
        self.database_url, self.redis_url = database_url, redis_url
        pg_bin = os.environ.get("IMAGEGATE_TEST_PG_BIN", "")
        self.psql_bin = os.path.join(pg_bin, "psql") if pg_bin else "psql"
        m = re.match(r"redis://([^:/]+):(\d+)", redis_url)
        if not m:
            sys.exit(f"--redis-url: expected redis://HOST:PORT/, got {redis_url}")
        self.redis_host, self.redis_port = m.group(1), int(m.group(2))
        self.pg_version = self.psql("SHOW server_version")
        self.data_dir = self.psql("SHOW data_directory")
        # The postmaster: the process with the data directory on its command line whose parent
        # is not a PostgreSQL process.
        pids = [p for p in pgrep(self.data_dir) if comm(p) == "postgres"
                and comm(ppid(p)) != "postgres"]
        if len(pids) != 1:
            sys.exit(f"PostgreSQL server process for {self.data_dir}: found {pids}")
        self.pg_pid = pids[0]
        pids = [p for p in pgrep(f"redis-server.*:{self.redis_port}")
                if comm(p).startswith("redis-server")]
        if len(pids) != 1:
            sys.exit(f"Redis server process on port {self.redis_port}: found {pids}")
        self.redis_pid = pids[0]
        info = self.redis_info("server")
        self.redis_version = info.get("redis_version", "?")
        save = (self.redis_cmd("CONFIG", "GET", "save") + ["", ""])[1]
        aof = (self.redis_cmd("CONFIG", "GET", "appendonly") + ["", ""])[1]
        self.redis_persistence = f'`save "{save}"`, `appendonly {aof}`'

        self.before = {k: self.psql(f"SHOW {k}") for k in
                       ["fsync", "synchronous_commit", "full_page_writes"]}

    def psql(self, sql: str) -> str:
        p = subprocess.run([self.psql_bin, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-d", self.database_url, "-c", sql],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0:
            sys.exit(f"psql {sql!r}: {p.stderr.strip()}")
        return p.stdout.strip()

    def redis_cmd(self, *args: str) -> list[str]:
        p = subprocess.run(["redis-cli", "-h", self.redis_host, "-p", str(self.redis_port),
                            *args], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            sys.exit(f"redis-cli {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout.splitlines()

    def redis_info(self, section: str) -> dict:
        out = {}
        for line in self.redis_cmd("INFO", section):
            k, sep, v = line.strip().partition(":")
            if sep:
                out[k] = v
        return out

    def make_durable(self) -> dict:
        """ALTER SYSTEM + reload (none of the three needs a restart); returns what SHOW says."""
        for name, value in PG_DURABLE.items():
            self.psql(f"ALTER SYSTEM SET {name} = {value}")
        self.psql("SELECT pg_reload_conf()")
        end = time.monotonic() + 10
        while True:
            now = {k: self.psql(f"SHOW {k}") for k in PG_DURABLE}
            if now == PG_DURABLE or time.monotonic() > end:
                break
            time.sleep(0.2)
        if now != PG_DURABLE:
            sys.exit(f"PostgreSQL settings after reload: {now}, wanted {PG_DURABLE}")
        self.settings = {k: self.psql(f"SHOW {k}") for k in [
            *PG_DURABLE, "wal_sync_method", "wal_level", "shared_buffers", "max_connections",
            "checkpoint_timeout", "max_wal_size"]}
        return now

    def pg_cpu(self) -> float:
        return tree_cpu_secs(self.pg_pid)

    def redis_cpu(self) -> float:
        return cpu_secs(self.redis_pid)

    def wal_lsn(self) -> str:
        return self.psql("SELECT pg_current_wal_insert_lsn()")

    def wal_bytes(self, a: str, b: str) -> int:
        return int(self.psql(f"SELECT pg_wal_lsn_diff('{b}', '{a}')::bigint"))

    def redis_commands(self) -> int:
        return int(self.redis_info("stats")["total_commands_processed"])

    def redis_cmdstats(self) -> dict:
        """Calls so far of each Redis command (`INFO commandstats`)."""
        out = {}
        for k, v in self.redis_info("commandstats").items():
            m = re.match(r"calls=(\d+)", v)
            if k.startswith("cmdstat_") and m:
                out[k.removeprefix("cmdstat_")] = int(m.group(1))
        return out

    def xid(self) -> int:
        """The next transaction id: every transaction that writes takes one (this one too)."""
        return int(self.psql("SELECT pg_current_xact_id()"))


def s6_replica(stack: Stack, tmp: str, a, rep: Report):
    if not (a.database_url and a.redis_url):
        sys.exit("scenario 6 needs --database-url and --redis-url (bench/run.sh starts both "
                 "through scripts/services.sh)")
    svc = Services(a.database_url, a.redis_url)
    test_settings = dict(svc.before)
    svc.make_durable()

    xid0, cmds0 = svc.xid(), svc.redis_cmdstats()
    emb_port, rep_port = free_port(), free_port()
    emb_dir = os.path.join(tmp, "data-embedded")
    rep_dir = os.path.join(tmp, "data-replica")
    confs = {
        "embedded": s6_config(emb_port, stack.sim_port, emb_dir),
        "replica": s6_config(rep_port, stack.sim_port, rep_dir, a.database_url, a.redis_url),
    }
    procs = {}
    for name, port in [("embedded", emb_port), ("replica", rep_port)]:
        conf = os.path.join(tmp, f"gateway-{name}.toml")
        with open(conf, "w") as f:
            f.write(confs[name])
        log = open(os.path.join(tmp, f"gateway-{name}.log"), "wb")
        p = subprocess.Popen([stack.binary, "serve", "--config", conf], stdout=log,
                             stderr=subprocess.STDOUT)
        stack.procs.append(p)
        wait_port(port, p, f"gateway ({name})", timeout=90)
        procs[name] = p

    prompt = f"bench small [sim:slow=0] [sim:filebytes={SMALL_FILE}]"
    body = write(tmp, "small.json", gen_body(prompt))
    gw_h = {**JSON_CT, **auth(CLIENT_KEY)}
    # name: (url, headers, the process whose CPU is the target's own)
    targets = {
        "direct": (f"{stack.sim}/api/v1/images/generations", {**JSON_CT, **auth(SIM_KEY)},
                   stack.sim_pid),
        "embedded": (f"http://{HOST}:{emb_port}/v1/images/generations", gw_h,
                     procs["embedded"].pid),
        "replica": (f"http://{HOST}:{rep_port}/v1/images/generations", gw_h,
                    procs["replica"].pid),
    }
    meters = {"postgres": svc.pg_cpu, "redis": svc.redis_cpu}
    wrk_count = {name: 0 for name in targets}
    for name, (url, h, _) in targets.items():
        r = wrk(tmp, url, body_file=body, headers=h, conns=8, threads=1, secs=1)
        wrk_count[name] += r["requests"]
    # Each repeat: every target at full load, then every target unloaded; the gateways' order
    # alternates between repeats (drift in the machine's other load shows as a difference).
    runs = []  # (repeat, kind, target, result)
    wal, rcmd = [], []
    for i in range(a.s6_repeats):
        order = ["direct", "embedded", "replica"] if i % 2 == 0 else ["direct", "replica",
                                                                       "embedded"]
        for kind, conns, secs in [("max", a.max_conns, a.secs), ("c1", 1, a.rate_secs / 3)]:
            for name in order:
                url, h, pid = targets[name]
                if name == "replica":
                    lsn0, c0 = svc.wal_lsn(), svc.redis_commands()
                r = wrk(tmp, url, body_file=body, headers=h, conns=conns, threads=1, secs=secs,
                        pid=pid, meters=meters)
                if name == "replica":
                    lsn1, c1 = svc.wal_lsn(), svc.redis_commands()
                    wal.append(svc.wal_bytes(lsn0, lsn1) / max(1, r["requests"]))
                    # Less the INFO call of this measurement.
                    rcmd.append((c1 - c0 - 1) / max(1, r["requests"]))
                wrk_count[name] += r["requests"]
                runs.append((i + 1, kind, name, r))

    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        stack.procs.remove(p)
    # What the replica did, all runs and the warm-up together: one ledger row (and job) per
    # request, the key's spend; write transactions and Redis commands per request.
    pg_ledger = int(svc.psql("SELECT count(*) FROM ledger WHERE key_id = 'bench'"))
    pg_jobs = int(svc.psql("SELECT count(*) FROM jobs"))
    pg_spent = int(svc.psql("SELECT coalesce(sum(month_spent), 0) FROM spend "
                            "WHERE payer LIKE '%bench%'") or 0)
    pg_payers = svc.psql("SELECT string_agg(payer, ', ') FROM spend")
    xact = svc.xid() - xid0 - 1
    cmds1 = svc.redis_cmdstats()
    per_cmd = {k: (v - cmds0.get(k, 0)) / max(1, pg_ledger) for k, v in cmds1.items()}
    per_cmd = {k: v for k, v in sorted(per_cmd.items(), key=lambda kv: -kv[1])
               if k not in ("info", "config") and v >= 0.005}
    try:
        db = sqlite3.connect(f"file:{os.path.join(emb_dir, 'imagegate.sqlite3')}?mode=ro",
                             uri=True)
        sq_ledger = db.execute("SELECT count(*) FROM ledger WHERE key_id = 'bench'").fetchone()[0]
        db.close()
    except Exception as e:  # noqa: BLE001 — a sanity count only
        sq_ledger = f"? ({e})"

    # ---- report
    def get(i, kind, name):
        return next(r for (j, k, n, r) in runs if j == i and k == kind and n == name)

    def cpu3(r):
        m = r["meters"]
        return r["cpu_us_per_req"], m["postgres"], m["redis"]

    repeats = range(1, a.s6_repeats + 1)
    lines = [
        f"Request: scenario 1's (`gpt-image-2-all`, size 1024x1024, `b64_json`, prompt `{prompt}`, "
        "simulator at time scale 0), sent to two gateways started for this scenario from the "
        "same binary and configuration as scenario 1's gateway, both running all the time:",
        "",
        f"- **embedded**: the default store, SQLite on disk (`[data] dir`, WAL, "
        "`synchronous = NORMAL`: a commit is not flushed to disk by itself; the WAL is fsynced "
        "at checkpoints by the gateway's checkpointer thread — a crash of the process loses "
        "nothing, a crash of the machine can lose the last commits); rate limits and "
        "concurrency in the process.",
        f"- **replica**: one replica of a scale-out deployment: `[data] url` (PostgreSQL "
        f"{svc.pg_version}, the gateway's pool: default 16 connections) and `[cluster] redis_url` "
        f"(Redis {svc.redis_version}), namespace `{S6_NAMESPACE}`. Jobs, the ledger and budgets "
        "(a hold per request, booked in its own transaction) in PostgreSQL; the key's "
        "per-minute limit in Redis (one GCRA script per request); key and team changes watched "
        "in Redis (a version read every 250 ms).",
        "",
        f"The bench key has the same settings in both: `requests_per_minute = {S6_RPM:,}` "
        f"(never refuses at these rates, but every request takes a cell) and "
        f"`monthly_budget_usd = {S6_BUDGET_USD:,}` (every request reserves and books its cost); "
        "no `max_concurrent`, no `images_per_minute`.",
        "",
        "PostgreSQL and Redis come from `scripts/services.sh` (a throwaway cluster for the "
        "tests, on 127.0.0.1, data in /tmp on the same disk as the SQLite file). Its test "
        f"settings are not durable ({', '.join(f'`{k} = {v}`' for k, v in test_settings.items())}, "
        "plus `max_connections = 300`); for this scenario they were switched with `ALTER "
        "SYSTEM` + `pg_reload_conf()` before the gateways started, and checked with `SHOW`: "
        + ", ".join(f"`{k} = {v}`" for k, v in svc.settings.items()) + ". "
        "So every PostgreSQL commit waits for its WAL to be fsynced: stricter than SQLite's "
        "`synchronous = NORMAL` (`synchronous_commit = off` would be the like-for-like "
        "setting: a machine crash may lose the last commits, never consistency). Redis runs "
        f"without persistence ({svc.redis_persistence}): it holds only rate-limit cells and "
        "change notices, nothing about money.",
        "",
        "CPU per request: the target's own process (the simulator for direct, the gateway for "
        f"the gateways); PostgreSQL: the server's processes (postmaster pid {svc.pg_pid}, found "
        "with `pgrep -f` on its data directory, its backends and background processes, "
        "including those that exited); Redis: the server process (pid "
        f"{svc.redis_pid}, `pgrep -f` on its port). The PostgreSQL and Redis columns of the "
        "direct and embedded rows are their background work while the replica sits idle "
        "(its lease, outbox and key-version polls). Gateway, simulator, PostgreSQL, Redis and "
        "wrk share the 2 cores: the replica's throughput pays for the servers' CPU too.",
        "",
        f"Max throughput: `wrk -t1 -c{a.max_conns} -d{round(a.secs)}s` (scenario 1's). "
        "Added latency: over direct in the same repeat.",
        "",
        "| repeat | target | req/s | p50 | p99 | added p50 | added p99 | errors | gateway CPU/req "
        "| PostgreSQL CPU/req | Redis CPU/req | sum |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(i, kind, name):
        r, d = get(i, kind, name), get(i, kind, "direct")
        g, pg, rd = cpu3(r)
        add50 = fmt_delta(r["p50_us"] - d["p50_us"]) if name != "direct" else "-"
        add99 = fmt_delta(r["p99_us"] - d["p99_us"]) if name != "direct" else "-"
        return (f"| {i} | {name} | {r['rps']:,.0f} | {fmt_us(r['p50_us'])} | "
                f"{fmt_us(r['p99_us'])} | {add50} | {add99} | {r['errors']} | {g:,.0f} µs | "
                f"{pg:,.0f} µs | {rd:,.0f} µs | {g + pg + rd:,.0f} µs |")

    for i in repeats:
        lines += [row(i, "max", n) for n in ["direct", "embedded", "replica"]]
    lines += ["", f"Unloaded: `wrk -t1 -c1 -d{max(1, round(a.rate_secs / 3))}s` (scenario 1's).",
              "",
              "| repeat | target | req/s | p50 | p99 | added p50 | added p99 | errors | gateway "
              "CPU/req | PostgreSQL CPU/req | Redis CPU/req | sum |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i in repeats:
        lines += [row(i, "c1", n) for n in ["direct", "embedded", "replica"]]

    def ratios(i, kind):
        e, r = get(i, kind, "embedded"), get(i, kind, "replica")
        d = get(i, kind, "direct")
        eg, epg, erd = cpu3(e)
        rg, rpg, rrd = cpu3(r)
        return {
            "req/s": r["rps"] / e["rps"],
            "gateway CPU/req": rg / eg,
            "gateway + PostgreSQL + Redis CPU/req": (rg + rpg + rrd) / eg,
            "added p50": (r["p50_us"] - d["p50_us"]) / max(1.0, e["p50_us"] - d["p50_us"]),
            "added p99": (r["p99_us"] - d["p99_us"]) / max(1.0, e["p99_us"] - d["p99_us"]),
        }

    lines += ["", "Replica / embedded (the embedded gateway's own CPU is the denominator of "
              "both CPU ratios: it has no server processes):", "",
              "| measure | " + " | ".join(f"max, repeat {i}" for i in repeats) + " | "
              + " | ".join(f"unloaded, repeat {i}" for i in repeats) + " |",
              "|---|" + "---|" * (2 * len(repeats))]
    table = {(kind, i): ratios(i, kind) for kind in ["max", "c1"] for i in repeats}
    for measure in table[("max", 1)]:
        cells = [f"{table[(kind, i)][measure]:.2f}×" for kind in ["max", "c1"] for i in repeats]
        lines.append(f"| {measure} | " + " | ".join(cells) + " |")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    wal_s = ", ".join(f"{w:,.0f}" for w in wal)
    rcmd_s = ", ".join(f"{c:.2f}" for c in rcmd)
    lines += [
        "",
        f"Per request on the replica (each of its runs, in order): PostgreSQL WAL written "
        f"{wal_s} bytes (`pg_current_wal_insert_lsn`); Redis commands {rcmd_s} "
        "(`total_commands_processed`, the version polls included).",
        f"Over the whole scenario, per ledger row of the replica: ≈ {xact / max(1, pg_ledger):.2f} "
        "PostgreSQL write transactions (transaction ids taken, `pg_current_xact_id()`; its "
        "migrations and idle background writes included); Redis calls "
        + (", ".join(f"`{k}` {v:.2f}" for k, v in per_cmd.items()) or "none")
        + " (`INFO commandstats`: the commands a script runs are counted too).",
        f"Written: PostgreSQL's ledger holds {pg_ledger:,} rows of the bench key and {pg_jobs:,} "
        f"jobs for {wrk_count['replica']:,} requests counted by wrk on the replica (warm-up "
        f"included; wrk does not count requests still in flight at its end); the spend rows "
        f"({pg_payers}) add up to {pg_spent / 1e6:,.2f} USD. SQLite's ledger holds "
        f"{sq_ledger if isinstance(sq_ledger, str) else f'{sq_ledger:,}'} rows for "
        f"{wrk_count['embedded']:,} requests on the embedded gateway.",
    ]
    rep.section("6. One replica on PostgreSQL + Redis vs the embedded store", lines)
    mx = [table[("max", i)] for i in repeats]
    c1 = [table[("c1", i)] for i in repeats]
    rep.headline.append(
        f"one replica on PostgreSQL + Redis vs the embedded SQLite store (mean of "
        f"{a.s6_repeats}): throughput {mean([t['req/s'] for t in mx]):.2f}×, gateway CPU per "
        f"request {mean([t['gateway CPU/req'] for t in mx]):.2f}× "
        f"({mean([t['gateway + PostgreSQL + Redis CPU/req'] for t in mx]):.2f}× with the "
        f"PostgreSQL and Redis servers), unloaded added p50 "
        f"{mean([t['added p50'] for t in c1]):.2f}×, p99 {mean([t['added p99'] for t in c1]):.2f}×")
    a.s6_services = (f"PostgreSQL {svc.pg_version} and Redis {svc.redis_version} "
                     "(scenario 6; scripts/services.sh, on 127.0.0.1)")


# ---------------------------------------------------------------- main


def machine(tmp: str, services: str = "") -> list[str]:
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    tools = []
    for cmd in (["wrk", "-v"], ["nginx", "-v"], ["rustc", "--version"]):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            tools.append((p.stdout + p.stderr).strip().splitlines()[0])
        except (OSError, IndexError):
            pass
    disk = subprocess.run(["df", "--output=source,fstype", tmp], capture_output=True,
                          text=True, check=False).stdout.split()
    lines = [f"- `nproc`: {os.cpu_count()} ({cpu})", f"- memory: {mem}",
             f"- kernel: {platform.release()}", f"- tools: {'; '.join(tools)}",
             f"- Python {platform.python_version()}"]
    if len(disk) >= 4:
        lines.append(f"- temporary files (the gateways' data): {disk[3]} on {disk[2]}")
    if services:
        lines.append(f"- {services}")
    return lines


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()


def results_path(date: str, commit: str) -> str:
    base = os.path.join(ROOT, "bench", "results", f"{date}-{commit}")
    path, i = base + ".md", 2
    while os.path.exists(path):
        path, i = f"{base}-{i}.md", i + 1
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "imagegate"))
    ap.add_argument("--hop-binary", default=None,
                    help="the bare Rust hop (examples/bare_hop.rs), scenario 1's stack floor")
    ap.add_argument("--scenarios", default="1,2,3,4,5")
    ap.add_argument("--quick", action="store_true", help="short durations and holds (smoke run)")
    ap.add_argument("--holds", default=None, help="waiting requests, e.g. 1000,5000,10000")
    ap.add_argument("--hold-latency", type=float, default=None, help="async task seconds (30)")
    ap.add_argument("--out", default=None, help="results file (default bench/results/<date>-<commit>.md)")
    ap.add_argument("--command", default=None, help="the command line to record")
    ap.add_argument("--profile", action="store_true",
                    help="scenario 1: sample the gateway with perf and report its top frames")
    ap.add_argument("--database-url", default=os.environ.get("IMAGEGATE_TEST_DATABASE_URL"),
                    help="scenario 6: PostgreSQL (a superuser role: the bench makes it durable)")
    ap.add_argument("--redis-url", default=os.environ.get("IMAGEGATE_TEST_REDIS_URL"),
                    help="scenario 6: Redis")
    a = ap.parse_args()
    q = a.quick
    a.secs = 3.0 if q else 10.0
    a.rate_secs = 4.0 if q else 15.0
    a.rate = 1000
    a.max_conns = 32
    a.large_conns = 8
    a.upload_conns = 4
    a.download_conns = 8
    a.s6_repeats = 1 if q else 2
    a.s6_services = ""
    a.bursts = [1, 8, 64] if not q else [1, 8]
    a.upload_bursts = [1, 8] if not q else [1, 4]
    a.holds = [int(x) for x in (a.holds or ("1000" if q else "1000,5000,10000")).split(",")]
    a.hold_latency = a.hold_latency or (10.0 if q else 30.0)
    scenarios = {int(s) for s in a.scenarios.split(",") if s.strip()}

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(a.holds) + 1000 > hard and 3 in scenarios:
        print(f"warning: open-file limit {hard} is low for {max(a.holds)} waiting requests",
              file=sys.stderr)
    if 6 in scenarios and not (a.database_url and a.redis_url):
        sys.exit("scenario 6 needs --database-url and --redis-url (bench/run.sh starts PostgreSQL "
                 "and Redis through scripts/services.sh and passes them)")
    for tool in ["wrk"] + (["nginx"] if 1 in scenarios else []) + (["perf"] if a.profile else []):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (bench/run.sh installs it)")

    load_before = open("/proc/loadavg").read().split()[:3]
    tmp = tempfile.mkdtemp(prefix="imagegate-bench-")
    stack = Stack(a.binary, tmp, need_nginx=1 in scenarios or 2 in scenarios,
                  need_mem_gateway=1 in scenarios,
                  hop_binary=a.hop_binary if 1 in scenarios else None)
    rep = Report()
    started = time.monotonic()
    try:
        for n, fn in [(1, s1_small), (2, s2_large), (3, s3_waiting), (4, s4_uploads),
                      (5, s5_download), (6, s6_replica)]:
            if n in scenarios:
                print(f"==> scenario {n}", file=sys.stderr, flush=True)
                fn(stack, tmp, a, rep)
    finally:
        stack.close()
    minutes = (time.monotonic() - started) / 60
    load_after = open("/proc/loadavg").read().split()[:3]

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    date = datetime.date.today().isoformat()
    out = a.out or results_path(date, commit)
    command = a.command or "bench/run.sh " + " ".join(sys.argv[1:])
    doc = [f"# {date}, commit {commit}{dirty}: imagegate benchmark suite", "",
           "Machine (gateway, simulator and load generator all on it):", ""] + machine(
               tmp, a.s6_services) + [
        "", "Command:", "", "```sh", command.strip(), "```", "",
        f"Gateway and simulator are separate release-build processes on 127.0.0.1 (simulator at "
        f"`--time-scale 0`, directives in the prompt set latency and answer size); the gateway "
        f"logs one access line per request as in production. Suite time: {minutes:.1f} min. "
        f"Load average (1/5/15 min) before: {' '.join(load_before)}, after: "
        f"{' '.join(load_after)} (other work on the machine adds noise, mostly to p99).", "",
        "Headline:", ""] + [f"- {h}" for h in rep.headline] + [""]
    doc += rep.sections
    doc += ["## Targets", "", "| target | wanted | measured | verdict |", "|---|---|---|---|"]
    doc += [f"| {t} | {w} | {m} | {v} |" for t, w, m, v in rep.targets]
    doc.append("")
    with open(out, "w") as f:
        f.write("\n".join(doc))
    print(f"results: {os.path.relpath(out, ROOT)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
