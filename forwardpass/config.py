"""`EngineConfig`: every option of a loaded engine, declared, checked and defaulted once.

`LLM`, the server (`server/config.py` holds an `EngineConfig` next to its HTTP options), `bench` and both CLIs
take this one object. Each field carries its command-line flags and help text, so `add_engine_args` builds the
same flags for `run`, `chat`, `perplexity`, `bench` and `serve`, and `EngineConfig.from_args` reads them back.
No torch here: the CLI's `--help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# The CPU kernel builds `cpu` may name (kernels/native.py builds them): "auto" picks the best this CPU runs,
# "torch" runs the PyTorch layers only.
CPU_VARIANTS = ("avx512", "avx2", "neon")
CPU_CHOICES = ("auto", *CPU_VARIANTS, "torch")
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
DEFAULT_MAX_CTX = 8192  # ctx when not given: the model's context length, up to this
DEFAULT_KV_TOKENS = 16384  # kv_tokens when neither it nor kv_memory is given: max(ctx, this)
MAX_NUM_SEQS_LIMIT = 1 << 16
MAX_BATCHED_TOKENS_LIMIT = 1 << 20
MAX_TENSOR_PARALLEL = 64

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def memory_size(text: str) -> int:
    """argparse type: '512M', '2G', '1.5GiB', '800MB' or plain bytes -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    try:
        value = float(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 2G, got {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive size, got {text!r}")
    return int(value)


SPEC_METHODS = ("ngram", "draft")
MAX_SPEC_TOKENS = 32


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding (vLLM's shape): `method` "ngram" proposes the tokens that followed the latest earlier
    occurrence of the sequence's last `prompt_lookup_max` .. `prompt_lookup_min` tokens (prompt lookup); "draft"
    runs the smaller model `model` (a path or short name, same vocabulary) ahead. Up to `num_speculative_tokens`
    proposals per sequence and step are verified by the target model in one pass."""

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    model: str | None = None
    adaptive: bool = True  # shrink a sequence's k while its proposals are mostly rejected

    def __post_init__(self) -> None:
        if self.method not in SPEC_METHODS:
            raise ValueError(f"speculative_config.method must be one of {', '.join(SPEC_METHODS)}, got {self.method!r}")
        for name, hi in (
            ("num_speculative_tokens", MAX_SPEC_TOKENS),
            ("prompt_lookup_min", 64),
            ("prompt_lookup_max", 64),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise ValueError(f"speculative_config.{name} must be an integer in 1..{hi}, got {value!r}")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"speculative_config.prompt_lookup_min ({self.prompt_lookup_min}) must not exceed "
                f"prompt_lookup_max ({self.prompt_lookup_max})"
            )
        if self.method == "draft" and (not isinstance(self.model, str) or not self.model):
            raise ValueError(
                f"speculative_config.model must name the draft model for method 'draft', got {self.model!r}"
            )
        if self.method == "ngram" and self.model is not None:
            raise ValueError("speculative_config.model is only for method 'draft'")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"speculative_config.adaptive must be True or False, got {self.adaptive!r}")

    @classmethod
    def parse(cls, value: SpeculativeConfig | dict[str, Any] | str) -> SpeculativeConfig:
        """From a dict or its JSON text (the `--speculative-config` flag); unknown keys are an error."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a JSON object, got {value!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(
                f"speculative_config: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(names))})"
            )
        return cls(**value)


def speculative_json(text: str) -> SpeculativeConfig:
    """argparse type: --speculative-config JSON."""
    try:
        return SpeculativeConfig.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _option(default: Any, help: str, *flags: str, **argparse_kwargs: Any) -> Any:
    """A field with its command-line flags (none: not on the command line) and help text."""
    return field(default=default, metadata={"help": help, "flags": flags, "argparse": argparse_kwargs})


@dataclass(frozen=True)
class EngineConfig:
    """What to load and how to run it. A bad value raises `ValueError` naming the field.

    The model's own limits (ctx above its context length, a KV budget too small for one request) are checked
    at load, where the model is known."""

    model: str | None = _option(None, "path to a .gguf file or a short name (default: the default model)")
    reference: bool = _option(
        False, "exact float32 math on dequantized weights (slow)", "--reference", action="store_true"
    )
    threads: int | None = _option(None, "CPU threads (default: physical cores)", "--threads", "-t", type=positive_int)
    device: str = _option("cpu", "cpu or cuda (default cpu)", "--device")
    cpu: str | None = _option(
        None,
        "CPU kernels: auto (the best this CPU runs), avx512, avx2, neon or torch (default $FORWARDPASS_CPU, else auto)",
        "--cpu",
        choices=CPU_CHOICES,
        metavar="KERNELS",
    )
    ctx: int | None = _option(
        None,
        f"most tokens one sequence holds (default: the model's, <= {DEFAULT_MAX_CTX})",
        "--ctx",
        "-c",
        type=positive_int,
    )
    kv_tokens: int | None = _option(
        None,
        f"KV cache budget in tokens of whole contexts (default max(ctx, {DEFAULT_KV_TOKENS}))",
        "--kv-tokens",
        type=positive_int,
    )
    kv_memory: int | None = _option(
        None, "KV cache budget in bytes, e.g. 512M or 2G: the cache never takes more", "--kv-memory", type=memory_size
    )
    max_num_seqs: int = _option(
        64, "sequences one engine step may hold (default 64)", "--max-num-seqs", type=positive_int
    )
    max_num_batched_tokens: int = _option(
        512,
        "tokens one engine step computes, so also the prefill chunk size (default 512)",
        "--max-num-batched-tokens",
        type=positive_int,
    )
    enable_prefix_caching: bool = _option(
        True,
        "reuse the KV blocks of prompt prefixes seen before (default on)",
        "--no-prefix-caching",
        action="store_false",
    )
    speculative_config: SpeculativeConfig | None = _option(
        None,
        'speculative decoding, JSON: {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, '
        '"prompt_lookup_max": 4} or {"method": "draft", "model": NAME, "num_speculative_tokens": 4}',
        "--speculative-config",
        type=speculative_json,
        metavar="JSON",
    )
    tensor_parallel_size: int = _option(
        1,
        "split every layer's heads and FFN over this many processes (torch.distributed: gloo on CPU, NCCL on "
        "CUDA); each gets threads / size CPU threads (default 1)",
        "--tensor-parallel-size",
        "-tp",
        type=positive_int,
    )

    def __post_init__(self) -> None:
        if self.speculative_config is not None:  # a dict or JSON text becomes the validated dataclass
            object.__setattr__(self, "speculative_config", SpeculativeConfig.parse(self.speculative_config))
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValueError(f"model must be a path or a model name, got {self.model!r}")
        for name in ("reference", "enable_prefix_caching"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("threads", "ctx", "kv_tokens", "kv_memory"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.ctx is not None and self.ctx < 2:
            raise ValueError(f"ctx must be at least 2, got {self.ctx!r}")
        if self.kv_tokens is not None and self.kv_memory is not None:
            raise ValueError("give kv_tokens or kv_memory, not both")
        for name, hi in (("max_num_seqs", MAX_NUM_SEQS_LIMIT), ("max_num_batched_tokens", MAX_BATCHED_TOKENS_LIMIT)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise ValueError(f"{name} must be an integer in 1..{hi}, got {value!r}")
        tp = self.tensor_parallel_size
        if isinstance(tp, bool) or not isinstance(tp, int) or not 1 <= tp <= MAX_TENSOR_PARALLEL:
            raise ValueError(f"tensor_parallel_size must be an integer in 1..{MAX_TENSOR_PARALLEL}, got {tp!r}")
        kind, _, index = self.device.partition(":") if isinstance(self.device, str) else ("", "", "")
        if kind not in DEVICE_TYPES or (index and not index.isdigit()):
            raise ValueError(f"device must be one of {', '.join(DEVICE_TYPES)} (optionally ':N'), got {self.device!r}")
        if self.cpu is not None and (not isinstance(self.cpu, str) or self.cpu.strip().lower() not in CPU_CHOICES):
            raise ValueError(f"cpu must be one of {', '.join(CPU_CHOICES)}, got {self.cpu!r}")

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with `changes`, validated again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> EngineConfig:
        """The options `add_engine_args` put on `args` (those given), then `overrides`."""
        given = {
            f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None
        }
        return cls(**{**given, **overrides})


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Add every `EngineConfig` option that has flags to `parser` (`--kv-tokens` and `--kv-memory` exclusive)."""
    kv = parser.add_mutually_exclusive_group()
    for f in dataclasses.fields(EngineConfig):
        flags = f.metadata["flags"]
        if not flags:
            continue
        target = kv if f.name in ("kv_tokens", "kv_memory") else parser
        # default None: `from_args` keeps only what was given, so every default lives in the dataclass
        target.add_argument(*flags, dest=f.name, default=None, help=f.metadata["help"], **f.metadata["argparse"])
