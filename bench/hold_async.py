#!/usr/bin/env python3
"""Holds N concurrent async-model requests against a running gateway and reports the gateway's
memory while they wait. Standard library only.

    python3 bench/hold_async.py --gateway 127.0.0.1:8080 --pid PID --n 2000 [--model gpt-image-2-beta]
"""
import argparse
import asyncio
import json
import time


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


async def one(host: str, port: int, key: str, model: str, i: int) -> int:
    body = json.dumps({"model": model, "prompt": f"hold {i}", "response_format": "url"}).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/images/generations HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + key.encode()
        + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1])


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", default="127.0.0.1:8080")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--model", default="gpt-image-2-beta")
    ap.add_argument("--key", default="sk-imagegate-demo")
    a = ap.parse_args()
    host, port = a.gateway.rsplit(":", 1)
    base_rss, _ = rss_kib(a.pid)
    t0, c0 = time.monotonic(), cpu_ticks(a.pid)
    tasks = [asyncio.create_task(one(host, int(port), a.key, a.model, i)) for i in range(a.n)]
    peak = 0
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.5)
        peak = max(peak, rss_kib(a.pid)[0])
    statuses = [t.result() for t in tasks]
    elapsed, cpu = time.monotonic() - t0, (cpu_ticks(a.pid) - c0) / 100
    print(json.dumps({
        "requests": a.n,
        "ok": statuses.count(200),
        "other": {s: statuses.count(s) for s in set(statuses) if s != 200},
        "seconds": round(elapsed, 1),
        "gateway_rss_before_kib": base_rss,
        "gateway_rss_peak_kib": peak,
        "kib_per_waiting_request": round((peak - base_rss) / a.n, 1),
        "gateway_cpu_seconds": cpu,
        "gateway_cpu_pct_of_one_core": round(100 * cpu / elapsed, 1),
    }))


asyncio.run(main())
