#!/usr/bin/env python3
"""Soak test for `forwardpass serve` (docs/reliability.md, soak; issue 6 acceptance 5).

Closed-loop streaming clients run for ``--duration`` seconds. Each request is, at random, a normal streaming
request (run to the end), a client that disconnects after a few chunks (``--disconnect``, 10%), or an invalid
request (``--invalid``, 5%, must get a 4xx). Run it at 70% load by giving 70% of the concurrency that saturates
the server. Reports the 5xx count, the RSS growth after the first minute (or the first third of a shorter run),
open file descriptors, and the engine gauges once idle. Exit status 0 only if requests were served, there was no
5xx, no connection error, RSS grew under 5%, and running == waiting == kv_blocks_used == 0 at idle.

    python scripts/soak.py --url http://127.0.0.1:8080 --duration 300 --concurrency 22
    python scripts/soak.py --model tiny.gguf --duration 30 --concurrency 6      # starts its own server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from forwardpass.server.bench_serve import BenchConfig, build_prompt, make_client, request_body, stream_request

INVALID_BODIES = [
    {"messages": []},
    {"messages": "hi"},
    {"messages": [{"role": "user", "content": "x"}], "temperature": -1},
    {"messages": [{"role": "user", "content": "x"}], "n": 0},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": "x"}], "max_tokens": "a"},
    {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}},
]
GAUGES = ("forwardpass_requests_running", "forwardpass_requests_waiting", "forwardpass_kv_blocks_used")


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (elapsed s, bytes)
    fds: list[float] = field(default_factory=list)


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


async def one_request(
    client: httpx.AsyncClient, args: argparse.Namespace, path: str, body: dict, rng: random.Random, tally: Tally
) -> None:
    roll = rng.random()
    if roll < args.invalid:
        tally.kinds["invalid"] += 1
        r = await client.post("/v1/chat/completions", json=rng.choice(INVALID_BODIES))
        tally.statuses[r.status_code] += 1
        if r.status_code < 400 or r.status_code >= 500:
            tally.errors.append(f"invalid request answered {r.status_code}: {r.text[:200]}")
        return
    leave = roll < args.invalid + args.disconnect
    tally.kinds["disconnect" if leave else "normal"] += 1
    result = await stream_request(client, path, body, stop_after_chunks=rng.randint(1, 8) if leave else None)
    if result.ok:
        tally.statuses[200] += 1
    else:
        status = re.match(r"HTTP (\d+)", result.error or "")
        tally.statuses[int(status.group(1)) if status else "conn-error"] += 1
        tally.errors.append(result.error or "?")


async def soak(args: argparse.Namespace) -> dict:
    config = BenchConfig(
        url=args.url,
        max_tokens=args.max_tokens,
        prompt_tokens=args.prompt_tokens,
        api_key=args.api_key,
        endpoint=args.endpoint,
        temperature=0.8,
    )
    tally = Tally()
    async with make_client(config, args.concurrency + 2) as client:
        prompt = await build_prompt(client, config)
        path, body = request_body(config, prompt)
        t0 = time.monotonic()
        deadline = t0 + args.duration

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                await one_request(client, args, path, body, rng, tally)

        async def sampler() -> None:
            while time.monotonic() < deadline:
                m = await scrape(client)
                tally.rss.append((time.monotonic() - t0, m.get("process_resident_memory_bytes", 0.0)))
                tally.fds.append(m.get("process_open_fds", 0.0))
                await asyncio.sleep(args.sample_every)

        await asyncio.gather(sampler(), *(worker(i) for i in range(args.concurrency)))
        idle = await wait_idle(client)
    return report(args, tally, idle)


async def wait_idle(client: httpx.AsyncClient, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = await scrape(client)
        if all(m.get(g) == 0 for g in GAUGES) or time.monotonic() > deadline:
            return {g: m.get(g, -1.0) for g in GAUGES}
        await asyncio.sleep(0.1)


def report(args: argparse.Namespace, tally: Tally, idle: dict[str, float]) -> dict:
    warm = min(60.0, args.duration / 3)
    after = [rss for t, rss in tally.rss if t >= warm]
    baseline, final = (after[0], after[-1]) if after else (0.0, 0.0)
    growth = (final - baseline) / baseline * 100 if baseline else 0.0
    n5xx = sum(n for s, n in tally.statuses.items() if isinstance(s, int) and s >= 500)
    conn = tally.statuses.get("conn-error", 0)
    served = tally.statuses.get(200, 0)  # a run whose every request was refused proves nothing
    ok = served > 0 and n5xx == 0 and conn == 0 and growth < 5.0 and all(v == 0 for v in idle.values())
    return {
        "ok": ok,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "requests": dict(tally.kinds),
        "statuses": {str(k): v for k, v in tally.statuses.items()},
        "5xx": n5xx,
        "connection_errors": conn,
        "rss_baseline_mb": round(baseline / 2**20, 1),
        "rss_final_mb": round(final / 2**20, 1),
        "rss_growth_pct": round(growth, 2),
        "open_fds_first_last": [tally.fds[0], tally.fds[-1]] if tally.fds else [],
        "idle_gauges": idle,
        "error_examples": sorted(set(tally.errors))[:5],
    }


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "forwardpass.cli", "serve", model, "--port", str(port), *extra])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become healthy")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (else --model starts one)")
    p.add_argument("--model", default=None, help="start `forwardpass serve MODEL` for the run")
    p.add_argument("--server-args", default="", help="extra `serve` arguments with --model, e.g. '--ctx 256'")
    p.add_argument("--duration", type=float, default=300.0)
    p.add_argument("--concurrency", type=int, default=8, help="closed-loop clients (70%% of the saturating count)")
    p.add_argument("--disconnect", type=float, default=0.10)
    p.add_argument("--invalid", type=float, default=0.05)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--sample-every", type=float, default=2.0, help="seconds between /metrics samples")
    p.add_argument("--api-key", default=None)
    p.add_argument(
        "--endpoint",
        choices=["chat", "completions"],
        default="chat",
        help="completions for models without a chat template",
    )
    args = p.parse_args()
    proc = None
    if args.url is None:
        if args.model is None:
            p.error("give --url or --model")
        proc, args.url = start_server(args.model, args.server_args.split())
    try:
        result = asyncio.run(soak(args))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
