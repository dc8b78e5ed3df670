"""`forwardpass bench-serve`: a closed-loop streaming load generator for OpenAI-compatible servers.

For each concurrency level, ``concurrency`` clients send streaming requests back to back until ``requests`` are
done; each records its time to first token, the gaps between content chunks (inter-token latency) and its
end-to-end time. Requests use ``ignore_eos`` so every one generates exactly ``max_tokens`` tokens (llama.cpp's
server honours it too), and a prompt of exactly ``prompt_tokens`` ids when the server has ``/tokenize``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

logger = logging.getLogger(__name__)

FILLER = "The quick brown fox jumps over the lazy dog while the cat watches from the old stone wall. "


@dataclass
class BenchConfig:
    url: str = "http://127.0.0.1:8080"
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    requests: int | None = None
    max_tokens: int = 64
    prompt_tokens: int = 128
    api_key: str | None = None
    endpoint: str = "completions"  # or "chat"
    temperature: float = 0.7
    model: str = "default"
    warmup: int = 2
    timeout: float = 600.0


@dataclass
class RequestResult:
    ok: bool
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    e2e: float = 0.0
    output_tokens: int = 0
    error: str | None = None


@dataclass
class LevelReport:
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    output_tokens: int
    output_tok_s: float
    requests_per_s: float
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2e_s: dict[str, float]
    error_examples: list[str]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _summary(values: list[float], scale: float) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * scale, 2),
        "p99": round(percentile(values, 99) * scale, 2),
        "mean": round(sum(values) / len(values) * scale, 2) if values else 0.0,
    }


def make_client(config: BenchConfig, connections: int) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limits = httpx.Limits(max_connections=connections + 4, max_keepalive_connections=connections + 4)
    return httpx.AsyncClient(
        base_url=config.url.rstrip("/"),
        headers=headers,
        limits=limits,
        timeout=httpx.Timeout(config.timeout, connect=30),
    )


async def build_prompt(client: httpx.AsyncClient, config: BenchConfig) -> str | list[int]:
    """Exactly ``prompt_tokens`` ids via /tokenize when available, else text of about that many tokens."""
    text = FILLER * (config.prompt_tokens // 10 + 2)
    try:
        r = await client.post("/tokenize", json={"content": text})
        ids = r.json()["tokens"][: config.prompt_tokens] if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError):
        ids = []
    if len(ids) == config.prompt_tokens:
        if config.endpoint == "completions":
            return ids
        r = await client.post("/detokenize", json={"tokens": ids})
        if r.status_code == 200:
            return r.json()["content"]
    return text[: config.prompt_tokens * 4]


def request_body(config: BenchConfig, prompt: str | list[int]) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {
        "model": config.model,
        "max_tokens": config.max_tokens,
        "stream": True,
        "temperature": config.temperature,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    if config.endpoint == "chat":
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        return "/v1/chat/completions", body | {"messages": [{"role": "user", "content": text}]}
    return "/v1/completions", body | {"prompt": prompt}


def _chunk_text(obj: dict[str, Any]) -> str:
    texts = []
    for choice in obj.get("choices") or []:
        delta = choice.get("delta")
        texts.append((delta.get("content") if delta else choice.get("text")) or "")
    return "".join(texts)


async def stream_request(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], stop_after_chunks: int | None = None
) -> RequestResult:
    """One streaming request, timed; ``stop_after_chunks`` disconnects early (for soak tests)."""
    t0 = time.perf_counter()
    times: list[float] = []
    usage_tokens = None
    try:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                text = (await r.aread())[:300].decode("utf-8", "replace")
                return RequestResult(False, e2e=time.perf_counter() - t0, error=f"HTTP {r.status_code}: {text}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    return RequestResult(False, e2e=time.perf_counter() - t0, error=str(obj["error"])[:300])
                if obj.get("usage"):
                    usage_tokens = obj["usage"].get("completion_tokens")
                if _chunk_text(obj):
                    times.append(time.perf_counter())
                    if stop_after_chunks is not None and len(times) >= stop_after_chunks:
                        break
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return RequestResult(False, e2e=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"[:300])
    end = time.perf_counter()
    return RequestResult(
        True,
        ttft=times[0] - t0 if times else None,
        itls=[b - a for a, b in zip(times, times[1:])],
        e2e=end - t0,
        output_tokens=usage_tokens if usage_tokens is not None else len(times),
    )


async def run_level(
    client: httpx.AsyncClient, config: BenchConfig, concurrency: int, prompt: str | list[int]
) -> LevelReport:
    """``concurrency`` closed-loop clients share ``requests`` requests."""
    n = config.requests or max(8, 4 * concurrency)
    path, body = request_body(config, prompt)
    remaining = iter(range(n))
    results: list[RequestResult] = []

    async def worker() -> None:
        for _ in remaining:
            results.append(await stream_request(client, path, body))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    duration = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    return LevelReport(
        concurrency=concurrency,
        requests=n,
        errors=n - len(ok),
        duration_s=round(duration, 3),
        output_tokens=tokens,
        output_tok_s=round(tokens / duration, 1) if duration > 0 else 0.0,
        requests_per_s=round(len(ok) / duration, 2) if duration > 0 else 0.0,
        ttft_ms=_summary([r.ttft for r in ok if r.ttft is not None], 1000),
        itl_ms=_summary([x for r in ok for x in r.itls], 1000),
        e2e_s=_summary([r.e2e for r in ok], 1),
        error_examples=sorted({r.error for r in results if r.error})[:3],
    )


async def run_bench(config: BenchConfig) -> list[LevelReport]:
    async with make_client(config, max(config.concurrency)) as client:
        prompt = await build_prompt(client, config)
        path, body = request_body(config, prompt)
        for _ in range(config.warmup):
            await stream_request(client, path, body)
        return [await run_level(client, config, c, prompt) for c in config.concurrency]


def format_table(reports: list[LevelReport]) -> str:
    head = (
        f"{'conc':>5} {'reqs':>5} {'errs':>5} {'out tok/s':>10} {'req/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'ITL p50':>8} {'ITL p99':>8} {'E2E p50':>8} {'E2E p99':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        lines.append(
            f"{r.concurrency:>5} {r.requests:>5} {r.errors:>5} {r.output_tok_s:>10.1f} "
            f"{r.requests_per_s:>7.2f} {r.ttft_ms['p50']:>7.1f}ms {r.ttft_ms['p99']:>7.1f}ms "
            f"{r.itl_ms['p50']:>6.1f}ms {r.itl_ms['p99']:>6.1f}ms {r.e2e_s['p50']:>7.2f}s "
            f"{r.e2e_s['p99']:>7.2f}s"
        )
        lines += [f"      error: {e}" for e in r.error_examples]
    return "\n".join(lines)


def main(config: BenchConfig, as_json: bool = False) -> int:
    """Run every level, print a table (or JSON) to stdout; exit status 1 if any request failed."""
    reports = asyncio.run(run_bench(config))
    if as_json:
        sys.stdout.write(
            json.dumps({"config": asdict(config), "results": [asdict(r) for r in reports]}, indent=2) + "\n"
        )
    else:
        sys.stdout.write(
            f"bench-serve {config.url} ({config.endpoint}, prompt {config.prompt_tokens} tokens, "
            f"{config.max_tokens} output tokens)\n{format_table(reports)}\n"
        )
    return 1 if any(r.errors for r in reports) else 0
