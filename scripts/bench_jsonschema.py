"""JSON-schema benchmark through an OpenAI-compatible server (ours or llama.cpp's), JSONSchemaBench style.

For every schema in DATA (files named CATEGORY__ID.json), one chat request asks for an example document with
``response_format: json_schema``, temperature 0 and max_tokens 256, and the answer is counted per category:
valid (finished, parses and validates with ``jsonschema``), invalid (finished but does not parse or validate),
incomplete (hit max_tokens), rejected (a 400: the server refused the schema), error (any other failure).

    forwardpass serve smollm2-135m-instruct --port 8080 &
    python scripts/bench_jsonschema.py --url http://127.0.0.1:8080 --label forwardpass --out ours.json
    python scripts/bench_jsonschema.py --url http://127.0.0.1:8081 --label llama-server --llama-cpp-python \
        --concurrency 1 --out theirs.json --server-cmd "python -m llama_cpp.server --model ... --port 8081"

llama-cpp-python's server takes the schema as ``{"type": "json_object", "schema": ...}`` (it refuses
OpenAI's ``json_schema`` type) and turns it into a GBNF grammar with llama.cpp's converter; the flag
``--llama-cpp-python`` sends that shape. Same prompt, same sampling.
    python scripts/bench_jsonschema.py --table ours.json theirs.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import jsonschema

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsonschema"
KINDS = ("valid", "invalid", "incomplete", "rejected", "error")
PROMPT = (
    "Write an example JSON document that follows this JSON schema. Reply with the JSON document only.\n\n"
    "Schema:\n{schema}"
)


def classify(status: int, body: dict, schema: dict) -> str:
    if status in (400, 422) or (status == 500 and "grammar" in json.dumps(body).lower()):
        return "rejected"
    if status != 200:
        return "error"
    choice = body["choices"][0]
    if choice["finish_reason"] == "length":
        return "incomplete"
    try:
        doc = json.loads(choice["message"]["content"])
        cls = jsonschema.validators.validator_for(schema)
        cls(schema).validate(doc)
    except (ValueError, jsonschema.ValidationError):
        return "invalid"
    except jsonschema.SchemaError:
        return "error"  # the schema itself is broken for the validator: counted apart
    return "valid"


async def one(client: httpx.AsyncClient, path: Path, model: str, max_tokens: int, lcp: bool) -> dict:
    schema = json.loads(path.read_text())
    fmt = (
        {"type": "json_object", "schema": schema}
        if lcp
        else {"type": "json_schema", "json_schema": {"name": "document", "schema": schema}}
    )
    body = {
        "model": model,
        "temperature": 0,
        "max_tokens": max_tokens,
        "response_format": fmt,
        "messages": [{"role": "user", "content": PROMPT.format(schema=json.dumps(schema))}],
    }
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/chat/completions", json=body)
        status, payload = (
            r.status_code,
            (r.json() if r.headers.get("content-type", "").startswith("application/json") else {}),
        )
    except httpx.HTTPError as e:
        status, payload = 0, {"error": repr(e)}
    kind = classify(status, payload, schema) if status in (200, 400, 422, 500) else "error"
    out = {
        "schema": path.name,
        "category": path.name.split("__")[0],
        "result": kind,
        "status": status,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if kind in ("invalid", "error", "rejected"):
        out["detail"] = json.dumps(payload)[:300]
    return out


class Supervisor:
    """Starts the server under test (``--server-cmd``) and starts it again whenever a request finds it dead:
    llama-cpp-python's server process dies on some grammars; that schema counts as an error."""

    def __init__(self, cmd: str | None, url: str) -> None:
        self.cmd, self.url, self.proc = cmd, url, None
        self.restarts, self.ready = 0, False

    async def ensure(self) -> None:
        if self.cmd is None:
            if not self.ready:  # a server started by hand may still be loading its model
                await self._wait_ready()
                self.ready = True
            return
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            self.restarts += 1
        self.proc = subprocess.Popen(shlex.split(self.cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as c:
            for _ in range(300):
                try:
                    if (await c.get("/health")).status_code == 200:  # both servers: 503 while loading
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(1)
        raise RuntimeError(f"the server did not start: {self.cmd}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


async def run(args: argparse.Namespace, sup: Supervisor) -> list[dict]:
    files = sorted(Path(args.data).glob("*.json"))[: args.limit or None]
    if args.per_category:  # the first K schemas of each category (a subset both engines can run)
        seen: Counter = Counter()
        files = [
            f for f in files if seen.update([f.name.split("__")[0]]) or seen[f.name.split("__")[0]] <= args.per_category
        ]
    sem = asyncio.Semaphore(args.concurrency)
    await sup.ensure()
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout) as client:

        async def task(p: Path) -> dict:
            async with sem:
                await sup.ensure()
                r = await one(client, p, args.model, args.max_tokens, args.llama_cpp_python)
                if r["status"] == 0 and sup.cmd is not None:
                    r["detail"] = "the server process died"
                print(json.dumps(r), flush=True)
                return r

        return await asyncio.gather(*(task(p) for p in files))


def table(reports: list[dict]) -> str:
    """Markdown: per category and engine, the counts of each kind and coverage (valid / all)."""
    rows = ["| category | engine | " + " | ".join(KINDS) + " | coverage |", "|---" * (len(KINDS) + 3) + "|"]
    cats = sorted({r["category"] for rep in reports for r in rep["results"]}) + ["all"]
    for cat in cats:
        for rep in reports:
            res = [r for r in rep["results"] if cat in ("all", r["category"])]
            c = Counter(r["result"] for r in res)
            cov = c["valid"] / len(res) if res else 0
            rows.append(f"| {cat} | {rep['label']} | " + " | ".join(str(c[k]) for k in KINDS) + f" | {cov:.0%} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--label", default="server")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--per-category", type=int, default=0, metavar="K", help="only the first K schemas per category")
    ap.add_argument(
        "--only", nargs="+", metavar="REPORT", help="with --table: restrict to the schemas of the first report"
    )
    ap.add_argument("--server-cmd", default=None, help="start this server, and again whenever it dies")
    ap.add_argument("--llama-cpp-python", action="store_true", help="send llama-cpp-python's response_format shape")
    ap.add_argument("--out")
    ap.add_argument("--table", nargs="+", metavar="REPORT", help="print the comparison table of saved reports")
    args = ap.parse_args()
    if args.table:
        reports = [json.loads(Path(p).read_text()) for p in args.table]
        if args.only:
            keep = {r["schema"] for r in json.loads(Path(args.only[0]).read_text())["results"]}
            for rep in reports:
                rep["results"] = [r for r in rep["results"] if r["schema"] in keep]
        print(table(reports))
        return
    t0 = time.perf_counter()
    sup = Supervisor(args.server_cmd, args.url)
    try:
        results = asyncio.run(run(args, sup))
    finally:
        sup.stop()
    report = {
        "label": args.label,
        "url": args.url,
        "max_tokens": args.max_tokens,
        "server_cmd": args.server_cmd,
        "server_restarts": sup.restarts,
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    by_cat: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_cat[r["category"]][r["result"]] += 1
    print(table([report]))


if __name__ == "__main__":
    main()
