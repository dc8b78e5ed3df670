"""The `forwardpass` command: run, chat, pull, list, inspect."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import registry
from .config import EngineConfig, add_engine_args
from .errors import ForwardpassError
from .server.cli import add_server_commands

logger = logging.getLogger("forwardpass")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", "--temp", type=float, default=0.8, help="0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="0 = disabled (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="default 0.95")
    g.add_argument("--min-p", type=float, default=0.05, help="default 0.05")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty (default 1.0 = off)")
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument(
        "--max-tokens",
        "-n",
        type=int,
        default=None,
        help="most tokens to generate (default: until end of generation or the context is full)",
    )
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-generation tokens")
    g.add_argument("--min-tokens", type=int, default=0, help="generate at least this many tokens")
    g.add_argument(
        "--logit-bias",
        action="append",
        default=None,
        metavar="TOKEN=BIAS",
        help="add BIAS (-100..100) to a token id's logit (repeatable)",
    )


def _sampling_params(args: argparse.Namespace):
    from .sampling import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repeat_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
        max_tokens=args.max_tokens,
        stop=args.stop,
        ignore_eos=args.ignore_eos,
        min_tokens=args.min_tokens,
        logit_bias=_parse_logit_bias(args.logit_bias),
    )


def _parse_logit_bias(items: list[str] | None) -> dict[int, float] | None:
    if not items:
        return None
    bias = {}
    for item in items:
        token, sep, value = item.partition("=")
        try:
            bias[int(token)] = float(value)
        except ValueError:
            raise ValueError(f"--logit-bias expects TOKEN=BIAS (e.g. 13=-100), got {item!r}") from None
        if not sep:
            raise ValueError(f"--logit-bias expects TOKEN=BIAS (e.g. 13=-100), got {item!r}")
    return bias


def _load(args: argparse.Namespace, model: str | None):
    from .llm import LLM, freeze_heap

    llm = LLM(config=EngineConfig.from_args(args, model=model))
    freeze_heap()
    print(llm.system_info(), file=sys.stderr, flush=True)
    return llm


def _split_model_prompt(first: str | None, second: str | None) -> tuple[str | None, str | None]:
    """`run PROMPT` or `run MODEL PROMPT`: a lone argument is the model only if it names one."""
    if second is not None:
        return first, second
    if first is not None and (first in registry.MODELS or first.endswith(".gguf") or os.path.isfile(first)):
        return first, None
    return None, first


def _print_stats(stats, spec=None) -> None:
    """The closing line; `spec`: this answer's speculative decoding totals (a `SpecStats`), if on."""
    cached = f" ({stats.cached_tokens} cached)" if stats.cached_tokens else ""
    speculation = ""
    if spec is not None:
        speculation = (
            f" | spec: acceptance {100 * spec.acceptance_rate:.1f}%, "
            f"mean accepted length {spec.mean_accepted_length:.2f}"
        )
    sys.stderr.write(
        f"\nprompt: {stats.prompt_tokens} tokens{cached}, {stats.prompt_tok_s:.1f} tok/s | "
        f"first token: {stats.ttft_s * 1000:.0f} ms | "
        f"generated: {stats.generated_tokens} tokens, {stats.decode_tok_s:.1f} tok/s{speculation}\n"
    )
    sys.stderr.flush()


def _stream_answer(llm, prompt, params) -> str:
    from .engine.spec_decode import SpecStats
    from .outputs import GenerationStats

    stats = GenerationStats()
    before = llm.engine.stats().spec
    parts = []
    for delta in llm.stream(prompt, params, stats=stats):
        parts.append(delta)
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    after = llm.engine.stats().spec
    spec = None
    if before is not None and after is not None:  # this answer's share of the engine's totals
        spec = SpecStats(after.steps - before.steps, after.proposed - before.proposed, after.accepted - before.accepted)
    _print_stats(stats, spec)
    return "".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    model, prompt = _split_model_prompt(args.model, args.prompt)
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    llm = _load(args, model)
    params = _sampling_params(args)
    constraint = _constraint(args)
    if constraint is not None:
        import dataclasses

        params = dataclasses.replace(params, structured_outputs=constraint)
    if llm.chat_template is not None and not args.raw:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        prompt = llm.chat_prompt(messages + [{"role": "user", "content": prompt}])
    _stream_answer(llm, prompt, params)
    return 0


def _constraint(args: argparse.Namespace):
    """--json-schema FILE, --grammar FILE or --regex RE as a StructuredOutputsParams (None without them)."""
    from .structured.params import StructuredOutputsParams

    given = [(k, v) for k, v in (("json", args.json_schema), ("grammar", args.grammar), ("regex", args.regex)) if v]
    if len(given) > 1:
        raise ValueError("give one of --json-schema, --grammar and --regex")
    if not given:
        return None
    kind, value = given[0]
    if kind != "regex":
        with open(value, encoding="utf-8") as f:
            value = f.read()
    return StructuredOutputsParams(**{kind: value})


def cmd_chat(args: argparse.Namespace) -> int:
    llm = _load(args, args.model)
    if llm.chat_template is None:
        raise ForwardpassError(
            f"{os.path.basename(llm.path)} has no chat template: use `forwardpass run` for plain completion"
        )
    params = _sampling_params(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    sys.stderr.write("chat with the model; /clear forgets the conversation, /exit (or Ctrl-D) quits\n")
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            sys.stderr.write("\n")
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/clear":
            history = []
            sys.stderr.write("(conversation cleared)\n")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        answer = _stream_answer(llm, llm.chat_prompt(system + history), params)
        history.append({"role": "assistant", "content": answer})


def cmd_pull(args: argparse.Namespace) -> int:
    path = registry.pull(args.name)
    print(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    cached = registry.list_cached()
    known = {name: src for name, src in registry.MODELS.items()}
    print(f"{'NAME':<26} {'SIZE':>9}  PATH")
    for name, path, size in cached:
        print(f"{name:<26} {size / 1e6:>7.1f}MB  {path}")
    missing = [n for n in known if not registry.cached_path(n).is_file()]
    if missing:
        print(f"\nnot pulled yet: {', '.join(missing)} (forwardpass pull NAME)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect_model import describe

    print(describe(registry.resolve_model(args.model)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .bench import format_table, run_bench

    result = run_bench(
        EngineConfig.from_args(args),
        prompt_tokens=args.prompt_tokens,
        gen_tokens=args.gen_tokens,
        repeat=args.repeat,
        batch=args.batch,
    )
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from .perplexity import perplexity

    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    llm = _load(args, args.model)
    result = perplexity(
        llm, text, args.ctx or 512, on_chunk=lambda i, ppl: sys.stderr.write(f"[{i}]{ppl:.4f},") or sys.stderr.flush()
    )
    sys.stderr.write("\n")
    print(
        f"Final estimate: PPL = {result.ppl:.4f} +/- {result.stderr:.5f} "
        f"({result.chunks} chunks, {result.tokens_scored} tokens scored)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forwardpass", description="Run GGUF language models.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="answer one prompt, streamed to stdout")
    p.add_argument("model", nargs="?", help=f"path to a .gguf file or a model name (default {registry.DEFAULT_MODEL})")
    p.add_argument("prompt", nargs="?", help="the prompt; '-' or none reads stdin")
    p.add_argument("--raw", action="store_true", help="plain completion, without the chat template")
    p.add_argument("--json-schema", metavar="FILE", default=None, help="constrain the answer to this JSON schema")
    p.add_argument(
        "--grammar",
        metavar="FILE",
        default=None,
        help="constrain the answer to this grammar (llguidance Lark, or llama.cpp GBNF)",
    )
    p.add_argument("--regex", default=None, help="constrain the answer to this regular expression")
    p.add_argument("--system", default=None, help="system message (chat models)")
    add_engine_args(p)
    _add_sampling_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive multi-turn chat")
    p.add_argument("model", nargs="?", help="path or name (default %(default)s)", default=None)
    p.add_argument("--system", default=None, help="system message")
    add_engine_args(p)
    _add_sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("bench", help="prompt and generation speed, llama-bench style")
    p.add_argument("model", nargs="?", default=None)
    add_engine_args(p)
    p.add_argument("--prompt-tokens", "-p", type=int, default=512)
    p.add_argument("--gen-tokens", "-n", type=int, default=128)
    p.add_argument("--repeat", "-r", type=int, default=3)
    p.add_argument("--batch", "-b", type=int, default=1, help="sequences decoding together")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("perplexity", help="perplexity of a text file, llama-perplexity's method")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--file", "-f", required=True, help="a UTF-8 text file")
    add_engine_args(p)
    p.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("pull", help="download a model by name into the cache")
    p.add_argument("name", choices=sorted(registry.MODELS))
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("list", help="cached models with sizes")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("inspect", help="metadata, tensor types, parameter count and size of a model")
    p.add_argument("model", nargs="?", default=None)
    p.set_defaults(func=cmd_inspect)
    add_server_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ForwardpassError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
