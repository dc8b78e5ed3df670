"""Native CPU kernels that multiply straight from GGUF blocks: exact (float32), no repacked copy in memory.

Why: torch has no kernel for the 5-, 6- and 8-bit group formats. `_weight_int8pack_mm` wants one scale per
row, which costs a requantization (1-2 % relative weight error on the real models, most of the fast path's KL:
on Gemma 3 4.9e-3 with it, 6e-4 with these kernels) and a second copy of the weight (168 MB for Gemma 3's tied
262k-row output head), and it reads that head at 13 GB/s where the C kernel reads 31 GB/s. For Q4_0 / Q4_1 /
Q4_K torch's int4 kernel decodes faster than ours, so `fast_linear` uses ours for their prefill dequantization.

The C source (`native_src.py`) is compiled on first use with the system C compiler (`cc`, about a second) into
the user cache, and used only on x86-64 CPUs with AVX-512 when the build and a self-test pass; otherwise
`fast_linear` falls back to the torch backends. FORWARDPASS_NATIVE=0 turns them off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..gguf.dequant import block_info
from ..gguf.weights import QuantWeight
from .attention_src import ATTENTION_SOURCE
from .decoder_src import DECODER_SOURCE
from .gemm import gemm_in_chunks
from .native_src import KERNELS, SOURCE as KERNEL_SOURCE
from .tiles_src import TILE_SOURCE

SOURCE = KERNEL_SOURCE + ATTENTION_SOURCE + TILE_SOURCE + DECODER_SOURCE

logger = logging.getLogger(__name__)

CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
NEEDED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "f16c")
DENSE_CHUNK_BYTES = 8 << 20  # float32 rows dequantized at once on the prefill path: cache-sized chunks (the
# 262k-row Gemma 3 head ran 2-3x faster at T = 16-64 with 4-8 MB chunks than with 32 MB; every layer fits one)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "forwardpass" / "kernels"


def _build() -> Path:
    """Compile SOURCE (once per source, flags and CPU) and return the shared library's path."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found")
    key = hashlib.sha256("\0".join([SOURCE, *CFLAGS, platform.processor(), str(sorted(_cpu_flags()))])
                         .encode()).hexdigest()[:16]
    out = _cache_dir() / f"forwardpass_native_{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "native.c"
        src.write_text(SOURCE)
        built = Path(tmp) / out.name
        subprocess.run([compiler, *CFLAGS, str(src), "-o", str(built)], check=True, capture_output=True)
        os.replace(built, out)  # atomic: concurrent builders never see a partial file
    return out


def _bind(lib: ctypes.CDLL) -> dict[int, tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]]:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    kernels = {}
    for ggml_type, (name, _) in KERNELS.items():
        matmul, dequant = getattr(lib, f"{name}_matmul"), getattr(lib, f"{name}_dequant")
        matmul.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, i64]
        dequant.argtypes = [ptr, i64, i64, i64, ptr, i64]
        matmul.restype = dequant.restype = None
        kernels[ggml_type] = (matmul, dequant)
    return kernels


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when unavailable (not x86-64 with AVX-512, no compiler) or disabled."""
    if os.environ.get("FORWARDPASS_NATIVE", "1") == "0":
        return None
    if platform.machine() not in ("x86_64", "AMD64") or not set(NEEDED_CPU_FLAGS) <= _cpu_flags():
        return None
    try:
        return ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        logger.info("native kernels unavailable (%s); using torch's", e)
        return None


@functools.lru_cache(maxsize=None)
def native_kernels() -> dict[int, tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]]:
    """ggml type -> (matmul, dequant) C functions; empty when native kernels are unavailable or disabled."""
    lib = _library()
    if lib is None:
        return {}
    return {t: fns for t, fns in _bind(lib).items() if _self_test(t, fns)}


@functools.lru_cache(maxsize=None)
def _c_function(name: str, *argtypes: type) -> ctypes._CFuncPtr | None:
    """The library's function `name` (returning nothing) with its argument types set, or None without the library."""
    lib = _library()
    if lib is None:
        return None
    fn = getattr(lib, name)
    fn.argtypes, fn.restype = list(argtypes), None
    return fn


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


def native_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ctx: torch.Tensor,
                           seq: torch.Tensor, lens: torch.Tensor, scale: float, window: int) -> torch.Tensor | None:
    """Attention of query rows over a bf16 paged cache, each row computed alone in a fixed order, so its result
    never depends on the other rows: row r attends the first lens[r] slots of ctx[seq[r]].

    q: (R, H, D); k_cache, v_cache: (slots, H_kv, D) bf16; ctx: (S, L) int64; seq, lens: (R,) int64.
    Returns (R, H, D) float32, or None when the native kernel cannot run here (the caller falls back)."""
    fn = _c_function("paged_attention", _PTR, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _I64,
                     ctypes.c_float, _I64, _PTR, _I64)
    if fn is None or k_cache.dtype != torch.bfloat16 or q.device.type != "cpu":
        return None
    rows, heads, dim = q.shape
    q = q.float().contiguous()
    ctx, seq, lens = ctx.contiguous(), seq.contiguous(), lens.contiguous()
    out = torch.empty(rows, heads, dim)
    fn(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), ctx.data_ptr(), ctx.shape[1], seq.data_ptr(),
       lens.data_ptr(), rows, heads, k_cache.shape[1], dim, scale, window, out.data_ptr(), torch.get_num_threads())
    return out


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """`x.argmax(dim=-1)` of a 2-D tensor (first index of the maximum; NaN counts as the maximum). On CPU float32
    a native scan: torch's CPU argmax over a (16, 49152) batch of logits took ~1 ms, 25x its `amax`."""
    fn = _c_function("argmax_rows", _PTR, _I64, _I64, _PTR, _I64)
    if fn is None or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] == 0:
        return x.argmax(dim=-1)
    x = x.contiguous()
    out = torch.empty(x.shape[0], dtype=torch.int64)
    fn(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr(), torch.get_num_threads())
    return out


def _self_test(ggml_type: int, fns: tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]) -> bool:
    """The C dequantizer must match ours bit for bit on random blocks (small fp16 scales), and the matmul the
    float32 product closely; a mismatch disables the type rather than computing wrong numbers."""
    block_size, type_size = block_info(ggml_type)
    gen = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (32, 2 * type_size), dtype=torch.uint8, generator=gen)
    blocks = raw.view(-1, type_size)
    for at in KERNELS[ggml_type][1]:
        scales = torch.rand(blocks.shape[0], 1, generator=gen) * 0.01 + 0.001
        blocks[:, at:at + 2] = scales.to(torch.float16).view(torch.uint8)
    weight = QuantWeight("self-test", ggml_type, (32, 2 * block_size), raw)
    x = torch.randn(5, 2 * block_size, generator=gen)
    exact = weight.dequantize()
    ok = torch.equal(_dequant(fns[1], weight, 0, 32), exact)
    ok = ok and torch.allclose(_matmul(fns[0], weight, x), x @ exact.t(), rtol=1e-4, atol=1e-5)
    if not ok:
        logger.warning("native kernel for ggml type %d failed its self-test; using torch's", ggml_type)
    return ok


def _matmul(fn: ctypes._CFuncPtr, weight: QuantWeight, x: torch.Tensor) -> torch.Tensor:
    """x: (T, K) float32 contiguous -> (T, N) float32."""
    n, k = weight.shape
    y = torch.empty(x.shape[0], n)
    fn(weight.raw.data_ptr(), weight.raw.shape[1], n, x.data_ptr(), k, x.shape[0], y.data_ptr(),
       torch.get_num_threads())
    return y


def _dequant(fn: ctypes._CFuncPtr, weight: QuantWeight, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop -> (rows, K) float32."""
    k = weight.shape[1]
    out = torch.empty(stop - start, k)
    row_bytes = weight.raw.shape[1]
    fn(weight.raw[start].data_ptr(), row_bytes, stop - start, k, out.data_ptr(), torch.get_num_threads())
    return out


class NativeLinear:
    """CPU, the types in `KERNELS`: the C kernel on the GGUF bytes for few tokens; for many, a bf16 GEMM on rows
    dequantized just in time. x: (T, K) -> (T, N), float32 from the C kernel, bf16 from the GEMM."""

    # Crossover measured with scripts/bench_linear.py (2 threads): the C kernel is float32-FMA-bound at ~100
    # GFLOP/s whatever T; the dequantize + bf16 GEMM path reaches it at ~16 tokens and ~300 GFLOP/s by 128.
    dense_min_tokens = 16

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None = None) -> None:
        self.matmul, self.dequant = native_kernels()[weight.ggml_type]
        n, k = weight.shape
        block_size, type_size = block_info(weight.ggml_type)
        if k % block_size or tuple(weight.raw.shape) != (n, k // block_size * type_size):
            # the C code trusts these sizes: never let it read past the tensor
            raise ValueError(f"{weight.name}: raw bytes {tuple(weight.raw.shape)} do not match shape {weight.shape}")
        if not weight.raw.is_contiguous():
            weight = QuantWeight(weight.name, weight.ggml_type, weight.shape, weight.raw.contiguous())
        self.weight = weight  # the file's bytes (a view of its memory map): no copy
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        if (x.shape[0] >= self.dense_min_tokens) if prefill is None else prefill:
            y = self.dense(x.to(torch.bfloat16))
        else:
            y = _matmul(self.matmul, self.weight, x.float().contiguous())
        return y if self.bias is None else y + self.bias

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """x: (T, K) bf16 -> (T, N) bf16, dequantizing DENSE_CHUNK_BYTES of float32 rows at a time."""
        n, k = self.weight.shape
        return gemm_in_chunks(x, n, max(1, DENSE_CHUNK_BYTES // (4 * k)),
                              lambda a, b: _dequant(self.dequant, self.weight, a, b).to(torch.bfloat16))


def native_supports(weight: QuantWeight) -> bool:
    return weight.raw.device.type == "cpu" and weight.ggml_type in native_kernels()

