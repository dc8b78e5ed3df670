"""One rank's part of a model: its weights sliced out of the GGUF file, and the gathers around the projections that
read every head or FFN column.

Column-parallel (`attn_q`, `attn_k`, `attn_v` with their biases, `ffn_gate`, `ffn_up`): a rank holds the output
rows of its heads / FFN columns, whole rows of GGUF blocks. `attn_output` and `ffn_down`, which read all of them,
are split by output rows too, never by input columns: each rank gathers the whole input (every rank's heads or FFN
columns), computes its share of the output rows (whole 16-row tiles) over the full input, and a second all-gather
puts the rows side by side. No rank ever sums a partial product, so every output value is computed over the same
input, in the same order, by the same kernel as on one process: the result is bit-identical to it (an all-reduce
of partial sums would change the summation order, and the int8 requantization downstream amplifies that).
Everything else (embedding, norms, the output head) is held whole by every rank.

A float-typed `attn_output` / `ffn_down` (F32, F16, BF16: a bf16 GEMM, whose blocking may depend on the output
width) is held whole instead: the input gathered, then one device's whole product on every rank.

On a CPU with the native kernels each rank runs the one-call native step (`kernels/native_decoder.py`) over its
part, as one process runs it over the whole model: the C step calls back into `NativeGather` for the same two
all-gathers around `attn_output` and `ffn_down`, so the ranks' logits are bit-identical to one process's default
(native) step. Where the step cannot run (a float-typed `attn_output` / `ffn_down`, an architecture without a
layer spec) every rank runs the per-layer path through `SplitOutputLinear` / `GatherLinear`, bit-identical to one
process's per-layer path.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import GGUFError
from ..gguf.dequant import block_info
from ..gguf.reader import GGUFFile
from ..gguf.weights import QuantWeight, WeightStore
from ..kernels import Linear
from ..kernels.repack import FLOAT_TYPES
from ..models.config import ModelConfig
from .group import Collective
from .plan import RankShard, plan_shards

COLUMN_PARALLEL = ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up")
ROW_PARALLEL = ("attn_output", "ffn_down")  # read every rank's heads / FFN columns: gathered, split by output rows
TILE_ROWS = 16  # the tile kernels' rows per tile (`kernels/tiles.py`): output splits fall on tile boundaries


def output_rows(rows: int, world: int) -> list[range]:
    """Each rank's output rows of a gathered projection: whole 16-row tiles, as evenly as they go."""
    unit = TILE_ROWS if rows % TILE_ROWS == 0 else 1
    base, extra = divmod(rows // unit, world)
    out, start = [], 0
    for i in range(world):
        size = (base + (1 if i < extra else 0)) * unit
        out.append(range(start, start + size))
        start += size
    return out


def _role(name: str) -> str | None:
    """'blk.3.attn_q.weight' -> 'attn_q'; None for tensors outside the layers."""
    parts = name.split(".")
    return parts[2] if len(parts) == 4 and parts[0] == "blk" else None


def plan_for(gguf: GGUFFile, config: ModelConfig, world: int) -> list[RankShard]:
    """The ranks' shards of this model: `plan.plan_shards` in whole 16-row tiles. No weight is split by input
    columns any more (`attn_output` and `ffn_down` are split by output rows), so GGUF blocks never constrain it."""
    return plan_shards(config.n_heads, config.n_kv_heads, config.head_dim, config.n_ff, TILE_ROWS, TILE_ROWS, world)


def slice_weight(w: QuantWeight, dim: int, start: int, stop: int) -> QuantWeight:
    """Rows (dim 0 of a matrix) or input columns (the last dim) start..stop of `w`, never cutting a GGUF block."""
    shape = list(w.shape)
    if dim == 0 and len(shape) == 2:  # whole rows: a view of the file's bytes
        shape[0] = stop - start
        return QuantWeight(w.name, w.ggml_type, tuple(shape), w.raw[start:stop])
    block, type_size = block_info(w.ggml_type)
    cols = shape[-1]
    if start % block or (stop % block and stop != cols):
        raise GGUFError(f"{w.name}: columns {start}..{stop} would cut a block of {block}")
    lo, hi = start // block * type_size, -(-stop // block) * type_size
    shape[-1] = stop - start
    return QuantWeight(w.name, w.ggml_type, tuple(shape), w.raw[:, lo:hi].contiguous())


class ShardedWeightStore(WeightStore):
    """A `WeightStore` that hands a rank its slice of each split tensor. The model asks with its local shape (its
    config holds the rank's heads and FFN columns); the file's tensor must have the full shape that slices to it."""

    def __init__(self, gguf: GGUFFile, shard: RankShard, head_dim: int, world: int) -> None:
        super().__init__(gguf)
        self.rank, self.world = shard.rank, world
        self.whole: set[str] = set()  # float-typed attn_output / ffn_down held whole (`GatherLinear`)
        self.out_rows: dict[str, list[range]] = {}  # the others: every rank's output rows (`SplitOutputLinear`)
        q = range(shard.q_heads.start * head_dim, shard.q_heads.stop * head_dim)
        kv = range(shard.kv_heads.start * head_dim, shard.kv_heads.stop * head_dim)
        self.splits = {
            "attn_q": q,
            "attn_k": kv,
            "attn_v": kv,
            "attn_output": q,
            "ffn_gate": shard.ff,
            "ffn_up": shard.ff,
            "ffn_down": shard.ff,
        }

    def get(self, name: str, shape: tuple[int, ...]) -> QuantWeight:
        role = _role(name)
        part = self.splits.get(role) if role else None
        info = self.gguf.tensors.get(name)
        if part is None or info is None:
            return super().get(name, shape)
        full = tuple(info.shape)
        dim = len(full) - 1 if role in ROW_PARALLEL else 0
        expected = full[:dim] + (len(part),) + full[dim + 1 :]
        if expected != tuple(shape):
            raise GGUFError(f"tensor {name!r} has shape {full}, which does not split to {tuple(shape)}")
        if role in ROW_PARALLEL:
            if info.ggml_type in FLOAT_TYPES or len(full) != 2:
                self.whole.add(name)
                return super().get(name, full)
            rows = self.out_rows[name] = output_rows(full[0], self.world)
            mine = rows[self.rank]
            return slice_weight(super().get(name, full), 0, mine.start, mine.stop)
        return slice_weight(super().get(name, full), dim, part.start, part.stop)


class SplitOutputLinear:
    """`attn_output` / `ffn_down` on one rank: every rank's input columns gathered, this rank's output rows
    computed over the full input, and the ranks' rows gathered side by side. Two all-gathers, no sum."""

    def __init__(self, inner: Linear, collective: Collective, in_widths: list[int], out_rows: list[range]) -> None:
        self.inner, self.collective, self.in_widths = inner, collective, in_widths
        self.out_widths = [len(r) for r in out_rows]
        self.in_features, self.out_features = in_widths[collective.rank], sum(self.out_widths)

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        y = self.inner(self.collective.all_gather_columns(x, self.in_widths), prefill)
        return self.collective.all_gather_columns(y, self.out_widths)


class GatherLinear:
    """A row-parallel projection held whole: the ranks' input columns gathered, then one device's product."""

    def __init__(self, inner: Linear, collective: Collective, widths: list[int]) -> None:
        self.inner, self.collective, self.widths = inner, collective, widths
        self.in_features, self.out_features = widths[collective.rank], inner.out_features

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        return self.inner(self.collective.all_gather_columns(x, self.widths), prefill)


@dataclasses.dataclass
class NativeGather:
    """A rank's side of the native step (`kernels.native_decoder.StepGather`): its own part of each row-split
    projection, and the all-gather the C step calls back for around them."""

    collective: Collective

    @property
    def rank(self) -> int:
        return self.collective.rank

    def split(self, linear: object) -> tuple[Linear, list[int], list[int]] | None:
        if not isinstance(linear, SplitOutputLinear):
            return None
        return linear.inner, linear.in_widths, linear.out_widths

    def all_gather_columns(self, x: torch.Tensor, widths: list[int], out: torch.Tensor | None = None) -> torch.Tensor:
        return self.collective.all_gather_columns(x, widths, out)


@dataclasses.dataclass
class TensorParallelLoad:
    """`LoadOptions.parallel`: how one rank loads its part (`models/registry.load_model` and `DecoderLM.linear`
    call it, and `DecoderLM._native_decoder` builds the native step with `native_gather`)."""

    shards: list[RankShard]  # every rank's (the gathers need each one's width)
    collective: Collective
    _store: ShardedWeightStore | None = dataclasses.field(default=None, init=False)  # set by `store`
    _head_dim: int = dataclasses.field(default=0, init=False)

    def native_gather(self) -> NativeGather:
        return NativeGather(self.collective)

    @property
    def shard(self) -> RankShard:
        return self.shards[self.collective.rank]

    def local_config(self, config: ModelConfig) -> ModelConfig:
        s = self.shard
        return dataclasses.replace(config, n_heads=len(s.q_heads), n_kv_heads=len(s.kv_heads), n_ff=len(s.ff))

    def store(self, gguf: GGUFFile, config: ModelConfig) -> WeightStore:
        self._store = ShardedWeightStore(gguf, self.shard, config.head_dim, len(self.shards))
        self._head_dim = config.head_dim
        return self._store

    def wrap(self, weight: QuantWeight, linear: Linear) -> Linear:
        role = _role(weight.name)
        if role not in ROW_PARALLEL:
            return linear
        assert self._store is not None, "store() hands out the weights before they are wrapped"
        hd = self._head_dim
        widths = [len(s.q_heads) * hd if role == "attn_output" else len(s.ff) for s in self.shards]
        if weight.name in self._store.whole:
            return GatherLinear(linear, self.collective, widths)
        return SplitOutputLinear(linear, self.collective, widths, self._store.out_rows[weight.name])
