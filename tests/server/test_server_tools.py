"""`forwardpass bench-serve` and scripts/soak.py run against the tiny model; docs/reliability.md, valid SSE lines (every
SSE line is one valid JSON object over valid UTF-8, under random sampling)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from server_helpers import API_KEY

from forwardpass.server.bench_serve import percentile

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _bench_serve(url: str, flags: str) -> subprocess.CompletedProcess:
    return _run("-m", "forwardpass.cli", "bench-serve", "--url", url, *flags.split())


def test_percentile():
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == 99.0


def test_bench_serve_reports_every_level(server):
    r = _bench_serve(server.url, "--concurrency 1,4 --requests 6 --max-tokens 12 --prompt-tokens 24 --json")
    assert r.returncode == 0, r.stderr + r.stdout
    results = json.loads(r.stdout)["results"]
    assert [x["concurrency"] for x in results] == [1, 4]
    for level in results:
        assert level["errors"] == 0 and level["output_tokens"] == 6 * 12
        assert level["output_tok_s"] > 0 and level["ttft_ms"]["p50"] > 0 and level["itl_ms"]["p99"] > 0


def test_bench_serve_with_key_and_chat_table(auth_server):
    r = _bench_serve(
        auth_server.url, f"--concurrency 2 --requests 4 --max-tokens 8 --endpoint chat --api-key {API_KEY}"
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "out tok/s" in r.stdout and "TTFT p99" in r.stdout
    bad = _bench_serve(auth_server.url, "--concurrency 1 --requests 2 --max-tokens 4 --warmup 0")
    assert bad.returncode == 1 and "HTTP 401" in bad.stdout


@pytest.mark.slow
def test_soak_smoke(server):
    r = _run(
        "scripts/soak.py",
        "--url",
        server.url,
        "--duration",
        "6",
        "--concurrency",
        "4",
        "--max-tokens",
        "24",
        "--sample-every",
        "0.5",
        timeout=60,
    )
    result = json.loads(r.stdout)
    assert r.returncode == 0 and result["ok"], result
    assert result["5xx"] == 0 and result["requests"]["normal"] > 0
    assert result["idle_gauges"] == {
        "forwardpass_requests_running": 0.0,
        "forwardpass_requests_waiting": 0.0,
        "forwardpass_kv_blocks_used": 0.0,
    }


def test_random_sampling_streams_are_valid_json_lines(server):
    """Valid SSE lines (reduced): random-sampling streams at temperature 1.5; read with a strict line splitter (httpx's,
    which also splits on U+2028 and friends), every SSE line is one JSON object over valid UTF-8."""

    async def one(c: httpx.AsyncClient, seed: int) -> int:
        n = 0
        body = {
            "prompt": f"fuzz {seed}",
            "max_tokens": 96,
            "temperature": 1.5,
            "seed": seed,
            "stream": True,
            "logprobs": 2,
        }
        async with c.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    obj = json.loads(line[6:])
                    assert "error" not in obj
                    n += 1
                else:
                    assert line in ("", "data: [DONE]"), line
        return n

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*(one(c, seed) for seed in range(32)))

    assert all(n > 1 for n in asyncio.run(run()))
