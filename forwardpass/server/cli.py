"""`forwardpass serve` and `forwardpass bench-serve`: their arguments, registered on the main parser."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..config import EngineConfig, add_engine_args, positive_int
from .config import DEFAULT_MAX_BODY, ServerConfig


def _concurrency_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be positive, got {text!r}")
    return values


def add_server_commands(sub: argparse._SubParsersAction) -> None:
    """Add `serve` and `bench-serve` to the `forwardpass` subcommands."""
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a web chat page")
    p.add_argument("model", nargs="?", default=None, help="path to a .gguf file or a model name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="require 'Authorization: Bearer KEY' (repeatable; also $FORWARDPASS_API_KEY)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="sequences allowed to wait beyond the running ones; more get 503 (default 64)",
    )
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=0.0,
        help="seconds a request may wait for a free slot; then it gets 503 and leaves the queue (default 0: no limit)",
    )
    add_engine_args(p)
    p.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        help="allow browser calls from this origin (repeatable; default: none)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take to finish after SIGTERM (default 30)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="/health turns 503 when the engine has work but no step finished for this long (default 30)",
    )
    p.add_argument(
        "--max-body-bytes", type=positive_int, default=DEFAULT_MAX_BODY, help="largest request body (default 2 MiB)"
    )
    p.add_argument("--root-path", default="", help="ASGI root_path when served behind a path-prefixing proxy")
    p.add_argument("--served-model-name", default=None, help="the model name clients use (default: from the file)")
    p.add_argument(
        "--replicas",
        type=positive_int,
        default=1,
        help="engine replicas on Ray Serve behind one ingress, requests routed by prompt prefix (needs "
        "forwardpass[ray]; default 1: this process serves alone)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting a local Ray instance",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench-serve", help="load-test an OpenAI-compatible server (TTFT, ITL, tok/s)")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    p.add_argument("--concurrency", type=_concurrency_list, default=[1, 8, 32], help="e.g. 1,8,32")
    p.add_argument(
        "--requests",
        type=positive_int,
        default=None,
        help="requests per concurrency level (default: 4 x concurrency, at least 8)",
    )
    p.add_argument("--max-tokens", type=positive_int, default=64, help="output tokens per request (default 64)")
    p.add_argument("--prompt-tokens", type=positive_int, default=128, help="prompt length (default 128)")
    p.add_argument("--api-key", default=None, help="API key (default $FORWARDPASS_API_KEY)")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--model", default="default", help="model field sent in requests")
    p.add_argument("--warmup", type=int, default=2, help="requests sent before measuring (default 2)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_bench_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .runner import run_server

    logging.getLogger("forwardpass").setLevel(logging.INFO)
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)
    keys = list(args.api_key or [])
    if os.environ.get("FORWARDPASS_API_KEY"):
        keys.append(os.environ["FORWARDPASS_API_KEY"])
    config = ServerConfig(
        engine=EngineConfig.from_args(args),
        host=args.host,
        port=args.port,
        api_keys=tuple(keys),
        max_queue=args.max_queue,
        cors_origins=tuple(args.cors_origin or ()),
        shutdown_timeout=args.shutdown_timeout,
        stall_timeout=args.stall_timeout,
        max_body_bytes=args.max_body_bytes,
        root_path=args.root_path,
        served_model_name=args.served_model_name,
        queue_timeout=args.queue_timeout,
    )
    if args.replicas > 1 or args.ray_address is not None:
        try:
            from ..ray.deploy import serve_replicas
        except ImportError as e:
            print(f"error: --replicas needs Ray Serve: pip install 'forwardpass[ray]' ({e})", file=sys.stderr)
            return 2
        return serve_replicas(config, args.replicas, args.ray_address)
    return run_server(config)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from .bench_serve import BenchConfig
    from .bench_serve import main as bench_main

    key = args.api_key or os.environ.get("FORWARDPASS_API_KEY")
    config = BenchConfig(
        url=args.url,
        concurrency=args.concurrency,
        requests=args.requests,
        max_tokens=args.max_tokens,
        prompt_tokens=args.prompt_tokens,
        api_key=key,
        endpoint=args.endpoint,
        temperature=args.temperature,
        model=args.model,
        warmup=args.warmup,
        timeout=args.timeout,
    )
    return bench_main(config, as_json=args.json)
