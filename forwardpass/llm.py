"""`LLM`: the Python API. Load a GGUF model once, then score, generate, stream and chat."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, Any, Union

import psutil
import torch

from .config import DEFAULT_KV_TOKENS, DEFAULT_MAX_CTX, EngineConfig, SpeculativeConfig
from .engine.draft import DraftProposer, check_same_vocabulary
from .engine.kv_groups import plan_kv_groups
from .engine.llm_engine import LLMEngine
from .engine.model_runner import ModelRunner
from .engine.pooling import POOLING_METHODS, pooling_from_metadata
from .engine.scheduler import SchedulerConfig
from .engine.spec_decode import NgramProposer, Speculator
from .errors import ChatTemplateError, ContextLengthError
from .gguf.reader import GGUFFile
from .kernels import KernelChoice, release_heap
from .kernels.native import describe
from .kernels.select import select_kernels
from .models.attention import KVGroup
from .models.base import DecoderLM, LoadOptions
from .models.registry import architecture_of, load_model
from .outputs import EmbeddingOutput, GenerationStats, RequestOutput
from .registry import resolve_model
from .sampling import SamplingParams
from .tokenizer import ChatTemplate, tokenizer_from_metadata

if TYPE_CHECKING:
    from .engine.async_engine import AsyncEngine

logger = logging.getLogger(__name__)

BLOCK_SIZE = 16
Prompt = Union[str, list[int]]


def default_threads() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def freeze_heap() -> None:
    """For a process that lives with one model (the CLI's commands, the server), called once it is loaded: every
    object alive leaves the cyclic garbage collector's reach (`gc.freeze`). Its full passes walk every object it
    tracks, the tokenizer's and the model's included: 72-90 ms a pass with Gemma 3's 262k-token vocabulary (three
    run while it loads), a stall of every stream whenever a long-lived server's surviving objects have grown by a
    quarter. Not done by `LLM()` itself: a library must not take its caller's objects out of the collector (the
    tokenizer's, in reference cycles, are freed by it alone)."""
    gc.collect()
    gc.freeze()


class LLM:
    """A loaded model, ready to run.

    `LLM(model, **options)` or `LLM(config=EngineConfig(...))` (with `model` and options on top of it): the
    options are `EngineConfig`'s fields (`forwardpass/config.py`, where each is documented and checked). `model`
    is a path to a `.gguf` file or a short name (`forwardpass list` shows the cached ones; the default model is
    pulled on first use). `reference=True` computes every matmul in float32 on dequantized weights: slow and
    exact. `ctx` is the most tokens one sequence may hold (prompt and output), by default the model's context
    length up to 8192; `kv_tokens` sizes the shared KV cache pool (default: max(ctx, 16384) tokens): that many
    tokens' keys and values in every layer, split among the layers' groups (sliding-window layers need only their
    window, so the global layers get the rest), and never less than one request needs. `kv_memory` (bytes) sizes
    it by memory instead: the KV cache never takes more, and a budget too small for one request of `ctx` tokens
    is an error. `cpu` picks the CPU kernels: "auto" (the best this CPU runs), "avx512", "avx2", "neon" or
    "torch" (the PyTorch layers only); the default is $FORWARDPASS_CPU, else "auto". `kernels` (a
    `kernels.KernelChoice`), for tests and benchmarks, names the kernels outright instead of `cpu`.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        config: EngineConfig | None = None,
        kernels: KernelChoice | None = None,
        **options: Any,
    ) -> None:
        t0 = time.perf_counter()
        names = {f.name for f in dataclasses.fields(EngineConfig)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"LLM() got unexpected keyword arguments: {', '.join(unknown)}")
        if model is not None:
            options["model"] = model
        config = (config or EngineConfig()).replace(**options) if options else (config or EngineConfig())
        self.engine_config = config
        tp = config.tensor_parallel_size
        threads = max(1, (config.threads or default_threads()) // tp)  # each rank gets its share of the threads
        torch.set_num_threads(threads)
        self.device, self.reference = config.device, config.reference
        self.path = resolve_model(config.model)
        self.gguf = GGUFFile(self.path)
        self.metadata = self.gguf.metadata
        self.config = architecture_of(self.metadata).config_from_metadata(self.metadata)  # the whole model's
        self.ctx = self._context_size(config.ctx)
        kv_dtype = torch.float32 if config.reference else torch.bfloat16
        groups = self._plan_kv(config, kv_dtype)  # with tensor parallelism: the sum over the ranks' caches
        # the CPU kernels: the best variant this CPU runs, or `cpu` ("avx512", "avx2", "neon", "torch"; default
        # $FORWARDPASS_CPU, else "auto"); only used in fast mode on a CPU
        if kernels is None:
            on_cpu = torch.device(config.device).type == "cpu"
            kernels = KernelChoice(select_kernels(config.cpu) if on_cpu and not config.reference else None)
        mode = "reference" if config.reference else "fast"
        options = LoadOptions(mode=mode, device=config.device, kernels=kernels)
        self.kernels = options.cpu_native  # the native library this model runs on, if any
        if tp > 1:  # the ranks choose their kernels from `config` as this process does
            from .parallel import start_tensor_parallel

            self.runner = start_tensor_parallel(
                self.gguf, self.path, config, self.config, groups, BLOCK_SIZE, kv_dtype, threads
            )
            self.model: DecoderLM = self.runner.model  # rank 0's part
        else:
            self.model = load_model(self.gguf, options)
            release_heap()  # load-time repacking leaves freed heap behind; give it back to the OS
            self.gguf.release_pages()  # the repacked weights replace the file's bytes, read only on demand
            self.runner = ModelRunner(self.model, groups, BLOCK_SIZE, kv_dtype, config.device)
        self.tokenizer = tokenizer_from_metadata(self.metadata)
        self.chat_template = ChatTemplate.from_metadata(self.metadata)
        self.pooling = pooling_from_metadata(self.metadata, self.config.arch)  # how embed() pools by default
        scheduler = SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens)
        self.engine = LLMEngine(
            self.runner,
            self.tokenizer,
            self.ctx,
            scheduler,
            config.enable_prefix_caching,
            self._speculator(config.speculative_config),
        )
        self.load_s = time.perf_counter() - t0
        logger.info("loaded %s (%s) in %.2f s", self.path, self.config.arch, self.load_s)

    def _speculator(self, spec: SpeculativeConfig | None) -> Speculator | None:
        """The proposer of `speculative_config` (a draft model is loaded here, its vocabulary checked)."""
        if spec is None:
            return None
        if spec.method == "ngram":
            proposer = NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
        else:
            proposer = self._draft_proposer(spec.model)
        return Speculator(proposer, spec.num_speculative_tokens, spec.adaptive)

    def _draft_proposer(self, model: str) -> DraftProposer:
        """Load the draft model with the target's options (its own KV cache); its vocabulary must be ours."""
        path = resolve_model(model)
        draft_tokens = GGUFFile(path).metadata.get("tokenizer.ggml.tokens") or []
        check_same_vocabulary(self.metadata.get("tokenizer.ggml.tokens") or [], draft_tokens, path)  # before loading
        self.draft = LLM(config=self.engine_config.replace(model=path, speculative_config=None, ctx=None))
        engine = self.draft.engine
        return DraftProposer(
            self.draft.runner,
            engine.block_manager,
            engine.sampler.argmax,
            min(self.ctx, self.draft.ctx),
            self.vocab_size,
        )

    def close(self) -> None:
        """Stop the tensor-parallel worker processes, if any (they also stop when this process exits). The
        engine cannot run afterwards."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def _plan_kv(self, config: EngineConfig, kv_dtype: torch.dtype) -> list[KVGroup]:
        """The KV cache's groups of layers and their pools, from a budget in tokens or in bytes."""
        kv_tokens, kv_memory = config.kv_tokens, config.kv_memory
        c = self.config
        token_bytes = 2 * c.n_kv_heads * c.head_dim * kv_dtype.itemsize  # keys and values of one token, one layer
        if kv_memory is not None:  # whole blocks: the plan rounds a budget up to blocks
            kv_tokens = kv_memory // (token_bytes * c.n_layers) // BLOCK_SIZE * BLOCK_SIZE
        budget = kv_tokens if kv_tokens is not None else max(self.ctx, DEFAULT_KV_TOKENS)
        groups = plan_kv_groups(
            c.sliding_window, max(budget, 1), BLOCK_SIZE, self.ctx, config.max_num_seqs, config.max_num_batched_tokens
        )
        need = sum(g.num_blocks * BLOCK_SIZE * len(g.layers) * token_bytes for g in groups)
        if kv_memory is not None and need > kv_memory:
            raise ValueError(
                f"kv_memory of {kv_memory / 2**20:.1f} MiB cannot hold one request of ctx {self.ctx} "
                f"tokens (that needs {need / 2**20:.1f} MiB of keys and values); raise kv_memory or "
                f"lower ctx"
            )
        return groups

    def _context_size(self, ctx: int | None) -> int:
        limit = self.config.context_length
        if ctx is None:
            return min(limit, DEFAULT_MAX_CTX)
        if ctx > limit:
            raise ValueError(f"ctx must be an integer in 2..{limit} (the model's context length), got {ctx!r}")
        return ctx

    def system_info(self) -> str:
        """One line on what runs, as llama.cpp's system info: the kernels, threads and device."""
        kernels = "reference (float32)" if self.reference else describe(self.kernels)
        tp = self.engine_config.tensor_parallel_size
        return (
            f"forwardpass: {self.config.arch} | kernels {kernels} | threads {torch.get_num_threads()} | "
            f"device {self.device}" + (f" | tensor parallel {tp} (threads per rank)" if tp > 1 else "")
        )

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    # ---- scoring ----
    def logits(self, token_ids: list[int], *, first: int = 0) -> torch.Tensor:
        """Teacher-forced next-token logits at every position, from an empty cache: (len, vocab) float32.

        `first` skips the logits of the first positions (they are still computed into the cache)."""
        token_ids = list(token_ids)
        self._check_ids(token_ids)
        if len(token_ids) > self.ctx:
            raise ContextLengthError(
                f"{len(token_ids)} tokens do not fit in the context of {self.ctx} tokens",
                n_prompt_tokens=len(token_ids),
                n_ctx=self.ctx,
            )
        return self.engine.score(token_ids, first).cpu()

    def embed(
        self, inputs: Prompt | Seq[Prompt], *, pooling: str | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """One vector per input (a string or a list of token ids): the final hidden states pooled (`pooling`: mean,
        cls or last; by default what the GGUF says, else mean) and L2-normalized. (len(inputs), d_model) float32.

        The inputs run through the engine as one batch, chunked like any prompt."""
        pooling = pooling or self.pooling
        if pooling not in POOLING_METHODS:
            raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {pooling!r}")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not inputs:
            raise ValueError("inputs must not be empty")
        prompts = [self.encode_prompt(p) for p in inputs]
        for ids in prompts:
            self.engine.validate_embed(ids)
        requests = [self.engine.add_embed_request(ids, pooling, normalize=normalize) for ids in prompts]
        results: dict[str, EmbeddingOutput] = {}
        try:
            while len(results) < len(requests):
                for out in self.engine.step():
                    if isinstance(out, EmbeddingOutput):
                        results[out.request_id] = out
        finally:
            for r in requests:
                self.engine.abort(r.request_id)
        return torch.tensor([results[r.request_id].embedding for r in requests], dtype=torch.float32)

    # ---- generation ----
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Text -> ids as llama.cpp's completion does (BOS where the model uses one, special tokens parsed)."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_bos=True, special=True)
            if len(ids) >= 2 and ids[0] == ids[1] == self.tokenizer.bos_id:  # the text brought its own BOS
                ids = ids[1:]
        else:
            ids = list(prompt)
        self._check_ids(ids, "prompt")
        return ids

    def generate(self, prompts: Prompt | Seq[Prompt], params: SamplingParams | None = None) -> list[RequestOutput]:
        """Generate for each prompt (a string or a list of token ids); all run together as one batch."""
        params = params or SamplingParams()
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        encoded = [self.encode_prompt(p) for p in prompts]
        for ids in encoded:  # raises bad input (a grammar that does not compile too) before anything runs
            self.engine.validate(ids, params)
        requests = [
            self.engine.add_request(ids, params, prompt=p if isinstance(p, str) else None)
            for ids, p in zip(encoded, prompts)
        ]
        results: dict[str, RequestOutput] = {}
        try:
            while len(results) < len(requests):
                for out in self.engine.step():
                    if out.finished:
                        results[out.request_id] = out
        finally:
            for r in requests:
                self.engine.abort(r.request_id)  # no-op for finished ones; frees blocks after an exception
        return [results[r.request_id] for r in requests]

    def stream(
        self, prompt: Prompt, params: SamplingParams | None = None, *, stats: GenerationStats | None = None
    ) -> Iterator[str]:
        """Yield the text of the first sample as it grows, one delta per step; fills `stats` at the end."""
        params = params or SamplingParams()
        ids = self.encode_prompt(prompt)
        self.engine.validate(ids, params)
        request = self.engine.add_request(ids, params, prompt=prompt if isinstance(prompt, str) else None)
        sent = 0
        try:
            while not request.finished:
                for out in self.engine.step():
                    if out.request_id == request.request_id and len(out.text) > sent:
                        delta, sent = out.text[sent:], len(out.text)
                        yield delta
        finally:
            self.engine.abort(request.request_id)
            if stats is not None:
                self._fill_stats(stats, request)

    @staticmethod
    def _fill_stats(stats: GenerationStats, request) -> None:
        end = request.finish_time or time.perf_counter()
        stats.prompt_tokens = len(request.prompt_token_ids)
        stats.cached_tokens = request.completions[0].seq.num_cached
        stats.generated_tokens = len(request.completions[0].output.token_ids)
        stats.ttft_s = (request.first_token_time or end) - request.arrival
        stats.total_s = end - request.arrival

    def start_async(self) -> "AsyncEngine":
        """Run the engine loop in a background thread and return its thread-safe front (used by the server).

        While it runs, drive generation through it only (not through `generate`/`stream`)."""
        from .engine.async_engine import AsyncEngine

        engine = AsyncEngine(self.engine)
        engine.start()
        return engine

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> list[int]:
        """Render `messages` with the model's chat template and tokenize the result."""
        if self.chat_template is None:
            raise ChatTemplateError(
                "this model has no chat template (tokenizer.chat_template); use generate() for plain completion"
            )
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode_prompt(text)

    def chat(
        self,
        messages: list[dict],
        params: SamplingParams | None = None,
        *,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
        parallel_tool_calls: bool = True,
    ) -> RequestOutput:
        """Answer a conversation (OpenAI-shaped messages, tool calls and results included) with the chat template.

        With ``tools`` (OpenAI's function definitions) each output's ``tool_calls`` lists the calls the model
        made (``finish_reason`` "tool_calls"), and ``text`` is the rest of the reply; ``tool_choice`` is "auto"
        (default), "none", "required" or {"type": "function", "function": {"name": ...}}, and constrains the
        output as the server does. On templates with ``<think>``, the reasoning goes to ``reasoning_content``."""
        import dataclasses

        from .tools import plan_tools

        if self.chat_template is None:
            raise ChatTemplateError(
                "this model has no chat template (tokenizer.chat_template); use generate() for plain completion"
            )
        params = params or SamplingParams()
        plan = plan_tools(self.chat_template.source, tools, tool_choice, parallel_tool_calls)
        prompt = plan.render(self.chat_template, messages)
        constraint = plan.constraint()
        if constraint is not None:
            params = dataclasses.replace(params, structured_outputs=constraint)
        out = self.generate([self.encode_prompt(prompt)], params)[0]
        if plan.tools or plan.reasoning:
            for o in out.outputs:
                parsed = plan.parse(o.text, prompt)
                o.text, o.reasoning_content = parsed.content, parsed.reasoning
                o.tool_calls = parsed.tool_calls
                if parsed.tool_calls and o.finish_reason == "stop":
                    o.finish_reason = "tool_calls"
        return out

    def _check_ids(self, ids: list[int], field: str = "token_ids") -> None:
        if not ids:
            raise ValueError(f"{field} must not be empty")
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size:
                raise ValueError(f"{field}: token id {t!r} is out of vocabulary (0..{self.vocab_size - 1})")
