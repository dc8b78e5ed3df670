"""The CPU decode step in one native call (`kernels/csrc/decoder.c`), for models whose weights are all tiles.

An architecture opts in by describing each layer as a `LayerSpec` (`DecoderLM.decoder_layer`): which norms,
projections and activation it has. The PyTorch `block` of the architecture file stays the definition: prompt
tokens and every other device run it, and tests check that this step gives the same logits within the int8
activation rounding. This module knows the model only through what it is handed (its shape, the layer specs,
the head): it imports nothing from `models/`.

Tensor parallelism: a rank builds this step over its share of each layer (its heads and FFN columns, its output
rows of `attn_output` and `ffn_down`) with a `StepGather`, which the C step calls back (from the calling thread)
for the all-gathers before and after those two projections. Every value is then computed from the same input by
the same kernel as on one process, so the ranks' logits are bit-identical to one process's native step.
"""

from __future__ import annotations

import ctypes
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from .fused import MultiLinear
from .linear import Linear
from .native import GATHER_ATT, GATHER_DOWN, GATHER_FF, GATHER_FN, GATHER_O, DLayer, DModel, NativeLibrary
from .tiles import TileLinear, TileMatrix

ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}


class DecoderShape(Protocol):
    """The hyperparameters the step needs (a `models.config.ModelConfig`)."""

    n_layers: int
    d_model: int
    n_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_dims: int
    rms_eps: float
    scale: float
    vocab_size: int
    sliding_window: list[int]


class StepGather(Protocol):
    """A tensor-parallel rank's side of the step (`parallel.shard.NativeGather`): the all-gather among the ranks,
    and the rank's own part of each `attn_output` / `ffn_down` (split by output rows over the gathered input)."""

    rank: int

    def split(self, linear: object) -> tuple[Linear, list[int], list[int]] | None:
        """(the rank's Linear of its output rows, every rank's input columns, every rank's output rows) of a
        row-split projection; None for one held otherwise (the native step then does not run)."""
        ...

    def all_gather_columns(self, x: torch.Tensor, widths: list[int], out: torch.Tensor | None = None) -> torch.Tensor:
        """(T, widths[rank]) on each rank -> (T, sum(widths)): the ranks' columns side by side, in rank order, into
        `out` (the step's buffer)."""
        ...


class StepError(RuntimeError):
    """A gather of a tensor-parallel native step failed (its cause chained)."""


@dataclass
class LayerSpec:
    attn_norm: torch.Tensor
    qkv: MultiLinear  # -> q, k, v
    o: Linear
    ffn_norm: torch.Tensor
    gate_up: MultiLinear  # -> gate, up
    down: Linear
    act: str = "silu"
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    post_attn_norm: torch.Tensor | None = None
    post_ffn_norm: torch.Tensor | None = None


def _tiles(linear: object) -> tuple[list[TileMatrix], list[torch.Tensor | None]] | None:
    """The tile matrices (and biases) behind a Linear or MultiLinear, or None if any part is not tiled."""
    linears = getattr(linear, "linears", [linear])
    if not all(isinstance(lin, TileLinear) for lin in linears):
        return None
    return [lin.tiles for lin in linears], [lin.bias for lin in linears]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


Widths = tuple[list[int], list[int], list[int]]


def _rank_specs(specs: list[LayerSpec], gather: StepGather) -> tuple[list[LayerSpec], Widths] | None:
    """A tensor-parallel rank's layers: each with the rank's own `attn_output` / `ffn_down` (its output rows), and
    every rank's (attention output columns, FFN columns, output rows of those two), the same in every layer; None
    where a layer's o or down is not split by output rows."""
    local, found = [], set()
    for s in specs:
        o, down = gather.split(s.o), gather.split(s.down)
        if o is None or down is None or o[2] != down[2]:
            return None
        local.append(replace(s, o=o[0], down=down[0]))
        found.add((tuple(o[1]), tuple(down[1]), tuple(o[2])))
    if len(found) != 1:
        return None
    q, ff, rows = found.pop()
    return local, (list(q), list(ff), list(rows))


class NativeDecoder:
    """The step of every layer for a batch of tokens in one call. `rope_index[i]`: which of the step's rope
    tables layer i uses; `lm_head` and `output_norm`: the head, computed in the same call where it is tiled.
    `gather` and `widths`: a tensor-parallel rank's (`shape` then holds the rank's heads and FFN columns, `specs`
    its own rows of attn_output / ffn_down: `_rank_specs`)."""

    def __init__(
        self,
        shape: DecoderShape,
        specs: list[LayerSpec],
        rope_index: list[int],
        rope_neox: bool,
        lm_head: Linear,
        output_norm: torch.Tensor,
        lib: NativeLibrary,
        gather: StepGather | None = None,
        widths: Widths | None = None,
    ) -> None:
        c = shape
        self.lib = lib
        if (gather is None) != (widths is None):
            raise ValueError("a tensor-parallel step needs both its gather and the ranks' widths")
        if gather is not None and widths is not None:
            q, ff, rows = widths
            r = gather.rank
            if q[r] != c.n_heads * c.head_dim or ff[r] != c.n_ff or sum(rows) != c.d_model:
                raise ValueError("the gathered widths do not match the rank's shape")
            if sum(q) % 32 or sum(ff) % 32 or c.n_ff % 16:
                raise ValueError("gathered widths the kernel does not handle")
        self.config = c
        self._keep: list[object] = []  # tensors the C structs point into
        self.layers = (DLayer * c.n_layers)()
        act = {ACTIVATIONS[s.act] for s in specs}
        if len(act) != 1:
            raise ValueError("layers with different activations")
        for i, spec in enumerate(specs):
            qkv, qkv_biases = _tiles(spec.qkv)
            gu, gu_biases = _tiles(spec.gate_up)
            (o,), (o_bias,) = _tiles(spec.o)
            (down,), (down_bias,) = _tiles(spec.down)
            if any(b is not None for b in gu_biases + [o_bias, down_bias]):
                raise ValueError("biases outside q, k, v are not supported by the native step")
            if gather is not None and widths is not None:  # the rank's output rows over every rank's input columns
                q, ff, rows = widths
                if (o.n, o.k, down.n, down.k) != (rows[gather.rank], sum(q), rows[gather.rank], sum(ff)):
                    raise ValueError("attn_output / ffn_down do not hold this rank's rows over the gathered input")
            bias = None
            if any(b is not None for b in qkv_biases):
                bias = torch.cat([b if b is not None else torch.zeros(m.n) for b, m in zip(qkv_biases, qkv)]).float()
            norms = [
                spec.attn_norm,
                spec.q_norm,
                spec.k_norm,
                spec.post_attn_norm,
                spec.ffn_norm,
                spec.post_ffn_norm,
                bias,
            ]
            norms = [None if t is None else t.float().contiguous() for t in norms]
            self._keep += norms + qkv + gu + [o, down]
            layer = self.layers[i]
            (
                layer.attn_norm,
                layer.q_norm,
                layer.k_norm,
                layer.post_attn_norm,
                layer.ffn_norm,
                layer.post_ffn_norm,
                layer.qkv_bias,
            ) = [_ptr(t) for t in norms]
            for j, m in enumerate(qkv):
                layer.qkv[j] = ctypes.pointer(m.struct)
            layer.n_qkv = len(qkv)
            for j, m in enumerate(gu):
                layer.gu[j] = ctypes.pointer(m.struct)
            layer.n_gu = len(gu)
            layer.o, layer.down = ctypes.pointer(o.struct), ctypes.pointer(down.struct)
            layer.window = c.sliding_window[i]
            layer.rope = rope_index[i]
        self.model = DModel(
            c.n_layers,
            c.d_model,
            c.n_ff,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.rope_dims,
            int(rope_neox),
            act.pop(),
            c.rms_eps,
            c.scale,
            self.layers,
        )
        self.gather = gather
        self.runs = 0  # steps run (tests check that tensor-parallel ranks run this step)
        self._error: BaseException | None = None
        if gather is not None:
            assert widths is not None
            q, ff, rows = widths
            self._widths = {GATHER_ATT: q, GATHER_O: rows, GATHER_FF: ff, GATHER_DOWN: rows}
            # kept alive with the struct that points to it; through a weak reference, so no cycle keeps the
            # decoder (and the process group it gathers over) alive until the interpreter's last collection
            ref = weakref.ref(self)
            self._callback = GATHER_FN(lambda ctx, what, local, rows, full: ref()._gather(what, local, rows, full))
            self.model.gather = self._callback
            self.model.q_out_full, self.model.n_ff_full, self.model.d_local = sum(q), sum(ff), rows[gather.rank]
        head = _tiles(lm_head)
        self.has_head = head is not None and len(head[0]) == 1 and head[1][0] is None
        if self.has_head:  # the final norm and the head in the same call
            out_norm = output_norm.float().contiguous()
            self._keep += [out_norm, head[0][0]]
            self.model.out_norm = out_norm.data_ptr()
            self.model.head = ctypes.pointer(head[0][0].struct)
        self.vocab = c.vocab_size
        self._workspace = torch.empty(0, dtype=torch.uint8)  # grown as needed, reused by every step
        self.threads = AdaptiveThreads()
        self._bound: Any = None

    @classmethod
    def build(
        cls,
        shape: DecoderShape,
        specs: list[LayerSpec | None],
        rope_index: list[int],
        rope_neox: bool,
        lm_head: Linear,
        output_norm: torch.Tensor,
        lib: NativeLibrary | None,
        gather: StepGather | None = None,
    ) -> NativeDecoder | None:
        """A native step, or None where it cannot run (no kernels, a layer the architecture does not describe, a
        weight that is not tiled, a shape the kernel does not handle). With `gather` (a tensor-parallel rank) the
        shape's heads and FFN columns are the rank's: the checks on the widths the kernel reads apply to the
        gathered ones (`__init__`)."""
        c = shape
        if lib is None:
            return None
        if gather is None and (c.n_ff % 32 or (c.n_heads * c.head_dim) % 32):
            return None
        if c.d_model % 32 or c.head_dim % 16:
            return None
        layers = [s for s in specs if s is not None]
        if len(layers) != len(specs):
            return None
        widths = None
        if gather is not None:
            ranked = _rank_specs(layers, gather)
            if ranked is None:
                return None
            layers, widths = ranked
        for s in layers:
            if any(_tiles(lin) is None for lin in (s.qkv, s.o, s.gate_up, s.down)):
                return None
        try:
            return cls(shape, layers, rope_index, rope_neox, lm_head, output_norm, lib, gather, widths)
        except ValueError:
            return None

    def accepts(self, cache: Any) -> bool:
        """Whether this step can run on `cache` (a `models.attention.KVCache`): bf16 pools on the CPU."""
        return cache.dtype == torch.bfloat16 and cache.k[0].device.type == "cpu"

    def _bind(self, cache: Any) -> None:
        for i in range(self.config.n_layers):
            self.layers[i].kc, self.layers[i].vc = cache.k[i].data_ptr(), cache.v[i].data_ptr()
            self.layers[i].group = cache.layer_group[i]
        self._bound = cache

    def step(
        self, x: torch.Tensor, rope: torch.Tensor, meta: Any, cache: Any, logit_rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (T, d_model) float32 embeddings of the batch's T tokens (prompt chunks and generated tokens alike),
        rope: (R, T, 2, rope_dims) cos and sin of each rope table at each token's position, `meta` and `cache`
        the batch's `models.attention.AttentionMetadata` and `KVCache` -> final hidden states before the output
        norm (in place), or with `logit_rows` (and `has_head`) the logits of those rows: (len(logit_rows), vocab)
        float32, before any soft-capping."""
        if cache is not self._bound:
            self._bind(cache)
        x = x.float().contiguous()
        rope = rope.contiguous()
        ctx, seq = meta.ctx_slots.contiguous(), meta.row_seq.contiguous()  # ctx: (G, S, L)
        lens, slots = meta.row_lens.contiguous(), meta.slot_mapping.contiguous()  # slots: (G, B)
        threads = self.threads.pick(x.shape[0])
        need = self.lib.decoder_workspace(ctypes.byref(self.model), x.shape[0], int(lens.max()), threads)
        if self._workspace.numel() < need:
            self._workspace = torch.empty(need + need // 4, dtype=torch.uint8)
        n_out = 0 if logit_rows is None else logit_rows.shape[0]
        logits = torch.empty(n_out, self.vocab) if n_out else None
        rows = logit_rows.contiguous() if n_out else None
        t0 = time.perf_counter()
        failed = self.lib.decoder_step(
            ctypes.byref(self.model),
            x.data_ptr(),
            x.shape[0],
            rope.data_ptr(),
            slots.data_ptr(),
            ctx.data_ptr(),
            ctx.shape[2],
            ctx.shape[1] * ctx.shape[2],
            seq.data_ptr(),
            lens.data_ptr(),
            None if rows is None else rows.data_ptr(),
            n_out,
            None if logits is None else logits.data_ptr(),
            self._workspace.data_ptr(),
            threads,
        )
        self.runs += 1
        if failed or self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, Exception) or error is None:
                raise StepError("a tensor-parallel gather of the native step failed") from error
            raise error  # KeyboardInterrupt and the like, as they came
        self.threads.record(x.shape[0], threads, time.perf_counter() - t0)
        return x if logit_rows is None else logits

    def _gather(self, what: int, local: int, rows: int, full: int) -> int:
        """The C step's gather callback (on the thread that called the step, holding the GIL): every rank's
        columns of `what`, side by side into `full`. Returns 0, or 1 with the exception kept for `step`."""
        try:
            assert self.gather is not None
            widths = self._widths[what]
            mine, total = widths[self.gather.rank], sum(widths)
            src = torch.frombuffer((ctypes.c_float * (rows * mine)).from_address(local), dtype=torch.float32)
            dst = torch.frombuffer((ctypes.c_float * (rows * total)).from_address(full), dtype=torch.float32)
            self.gather.all_gather_columns(src.view(rows, mine), widths, out=dst.view(rows, total))
            return 0
        except BaseException as e:  # noqa: BLE001 (an exception must not cross the C frames: kept for `step`)
            self._error = e
            return 1


class AdaptiveThreads:
    """How many threads a step runs on: all of them (torch's setting) unless fewer measure faster.

    The step's phases end at barriers, so a step is as slow as its slowest thread. With every core free that is
    the right count; with another process busy on one of two cores, the thread sharing a core with it holds up
    every phase and one thread decodes faster than two. Steps are timed per size class (tokens rounded up to a
    power of two) for the full count and for one thread: the faster by its running average is used, the other
    tried again every `explore` steps (more often while the two are close), so the choice follows the load. While
    the full count leads by 1.5x or more (16 tokens on two free cores: one thread takes 2x), one thread is tried
    every 4 * `explore` steps only: each try costs a whole slow step (1.5% of 16-token decoding at every 64th), and
    a neighbour that arrives needs no try to be seen, as it slows the full count's own timings past one thread's.
    A token's result never depends on the thread count (each is computed alone, in a fixed order).

    Noise only slows a step: a host that takes a core for a moment makes one step of the count in use 10x slower
    (seen: 113 ms among steps of 12), which must not look like a busy neighbour. So a timing enters the average of
    the count in use at no more than `cap` times that average (a lasting slowdown still raises it by a quarter per
    step), and the count tried for a step replaces its average with that timing: its old average is stale."""

    explore = 64
    alpha = 0.25  # weight of a new timing in the running average
    cap = 2.0  # a timing counts at no more than this times the average

    def __init__(self) -> None:
        self._avg: dict[tuple[int, int], float] = {}  # (size class, threads) -> seconds per step
        self._calls: dict[int, int] = {}

    @staticmethod
    def _size(tokens: int) -> int:
        return 1 << max(0, tokens - 1).bit_length()

    def pick(self, tokens: int) -> int:
        full = torch.get_num_threads()
        if full <= 1:
            return full
        size = self._size(tokens)
        n = self._calls[size] = self._calls.get(size, 0) + 1
        many, one = self._avg.get((size, full)), self._avg.get((size, 1))
        if many is None or n < 3:  # the first steps: the full count (warm-up, caches)
            return full
        if one is None:
            return 1
        best, other = (1, full) if one < many else (full, 1)
        gap = max(one, many) / min(one, many)
        every = self.explore // 8 if gap < 1.25 else self.explore * 4 if best == full and gap >= 1.5 else self.explore
        return other if n % every == 0 else best

    def record(self, tokens: int, threads: int, seconds: float) -> None:
        size = self._size(tokens)
        old = self._avg.get((size, threads))
        other = self._avg.get((size, 1 if threads != 1 else torch.get_num_threads()))  # the count not timed here
        if old is None or (other is not None and old > other):  # first timing, or the count tried while the other leads
            self._avg[(size, threads)] = seconds
        else:
            self._avg[(size, threads)] = (1 - self.alpha) * old + self.alpha * min(seconds, self.cap * old)
