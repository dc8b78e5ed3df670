"""The native CPU library: C sources in `csrc/`, one build per instruction set, chosen at run time.

Variants (the same kernels in each: the tile matmul, the one-call native step, paged attention, argmax, the
prefill dequantization), best first:

- ``avx512``: x86-64 with AVX-512 F/BW/VL and VNNI (`vpdpbusd` on 16 rows at once);
- ``avx2``: x86-64 with AVX2, FMA and F16C (`vpmaddubsw` + `vpmaddwd`, as llama.cpp does), using AVX-VNNI's
  256-bit `vpdpbusd` where the CPU has it;
- ``neon``: AArch64 with the dot-product extension (`sdot`).

`kernels/select.py` picks the variant to run (``select_kernels(cpu)``) and loads it. Each variant is compiled on first use with the system C compiler (about a second per file) into
``$FORWARDPASS_HOME/kernels`` (default ``~/.cache/forwardpass/kernels``), through a temporary file in that folder
and under a file lock, so parallel processes build it once; a failed build logs a WARNING with the compiler's
last lines and what is lost. On load the library reports its struct layout (`fp_abi_layout`), which must equal
the ctypes mirror below, and passes a self-test before any model uses it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from ..config import CPU_VARIANTS

logger = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
VARIANTS = CPU_VARIANTS

COMMON_FLAGS = ["-std=gnu11", "-O3", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fvisibility=hidden"]
WARNING_FLAGS = ["-Wall", "-Wextra", "-Werror"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
VARIANT_FLAGS = {
    "avx512": ["-DFP_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-DFP_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "neon": ["-DFP_NEON", "-march=armv8.2-a+dotprod+fp16"],
}
AVXVNNI_FLAGS = ["-DFP_AVXVNNI", "-mavxvnni"]  # added to avx2 where the CPU has AVX-VNNI
DESCRIPTIONS = {"avx512": "AVX-512 VNNI", "avx2": "AVX2", "avx2+vnni": "AVX2 + AVX-VNNI", "neon": "NEON dotprod"}


# ---- what this CPU runs ----


@functools.lru_cache(maxsize=None)
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features` of /proc/cpuinfo); empty where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _is_arm64() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def cpu_runs(variant: str) -> bool:
    """Whether this CPU executes `variant`'s instructions."""
    f = cpu_features()
    if variant == "avx512":
        return _is_x86() and {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma", "f16c"} <= f
    if variant == "avx2":
        return _is_x86() and {"avx2", "fma", "f16c"} <= f
    if variant == "neon":  # every Apple Silicon core has the dot-product extension
        return _is_arm64() and ("asimddp" in f or sys.platform == "darwin")
    return False


def runnable_variants() -> list[str]:
    """The variants this CPU executes, best first."""
    return [v for v in VARIANTS if cpu_runs(v)]


def variant_flags(variant: str, avxvnni: bool | None = None) -> list[str]:
    """Compiler flags of `variant`; avx2 adds AVX-VNNI where `avxvnni` (default: where this CPU has it)."""
    flags = list(VARIANT_FLAGS[variant])
    if variant == "avx2" and (("avx_vnni" in cpu_features()) if avxvnni is None else avxvnni):
        flags += AVXVNNI_FLAGS
    return flags


# ---- the build ----


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.c"))


def _compiler() -> str:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise BuildError("no C compiler found (install gcc or clang, or set CC)")
    return cc


class BuildError(RuntimeError):
    """The C compiler failed or is missing; the message ends with its last lines."""


def kernel_cache() -> Path:
    from ..registry import home  # noqa: PLC0415 (registry imports the network client lazily too)

    return home() / "kernels"


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def compile_library(out: Path, flags: list[str], compiler: str | None = None) -> None:
    """Compile every csrc/*.c with `flags` into `out` (no caching: tests and CI call this for -Werror builds)."""
    cc = compiler or _compiler()
    cmd = [cc, *COMMON_FLAGS, *flags, "-I", str(CSRC), *map(str, sources()), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise BuildError(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{tail}")


def build(variant: str, avxvnni: bool | None = None, extra_flags: tuple[str, ...] = ()) -> Path:
    """The shared library of `variant` for this CPU, compiled once per source, flags and compiler."""
    cc = _compiler()
    flags = [*variant_flags(variant, avxvnni), *(["-mtune=native"] if variant != "neon" else []), *extra_flags]
    text = b"".join(p.read_bytes() for p in sorted(CSRC.iterdir()) if p.suffix in (".c", ".h"))
    key = hashlib.sha256(b"\0".join([text, " ".join([cc, *COMMON_FLAGS, *flags]).encode()])).hexdigest()[:16]
    folder = kernel_cache()
    out = folder / f"forwardpass_{variant}_{key}.so"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / f".{out.name}.lock"):
        if out.exists():  # another process built it while we waited
            return out
        tmp = folder / f".{out.name}.{os.getpid()}.tmp"  # same folder: the rename below is atomic
        try:
            compile_library(tmp, flags, cc)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


# ---- the ABI: ctypes mirrors of forwardpass.h ----


class TMat(ctypes.Structure):
    _fields_ = [
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("bits", ctypes.c_int64),
        ("smode", ctypes.c_int64),
        ("mconst", ctypes.c_float),
        ("codes", ctypes.c_void_p),
        ("planes", ctypes.c_void_p),
        ("d16", ctypes.c_void_p),
        ("m16", ctypes.c_void_p),
        ("sc", ctypes.c_void_p),
        ("mn", ctypes.c_void_p),
        ("dsb", ctypes.c_void_p),
        ("msb", ctypes.c_void_p),
    ]


_PT = ctypes.POINTER(TMat)


class DLayer(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_void_p)
        for n in ("attn_norm", "q_norm", "k_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm", "qkv_bias")
    ] + [
        ("qkv", _PT * 3),
        ("n_qkv", ctypes.c_int64),
        ("o", _PT),
        ("gu", _PT * 2),
        ("n_gu", ctypes.c_int64),
        ("down", _PT),
        ("kc", ctypes.c_void_p),
        ("vc", ctypes.c_void_p),
        ("window", ctypes.c_int64),
        ("rope", ctypes.c_int64),
        ("group", ctypes.c_int64),
    ]


# fp_gather_fn: (ctx, what, local, rows, full) -> 0, or nonzero on failure
GATHER_FN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p
)
GATHER_ATT, GATHER_O, GATHER_FF, GATHER_DOWN = range(4)  # forwardpass.h's FP_GATHER_*: what a rank gathers


class DModel(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_int64)
        for n in ("n_layers", "d_model", "n_ff", "n_heads", "n_kv", "head_dim", "rope_dims", "neox", "act")
    ] + [
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("layers", ctypes.POINTER(DLayer)),
        ("out_norm", ctypes.c_void_p),
        ("head", _PT),
        ("gather", GATHER_FN),  # tensor parallelism (NULL: one process)
        ("gather_ctx", ctypes.c_void_p),
        ("q_out_full", ctypes.c_int64),
        ("n_ff_full", ctypes.c_int64),
        ("d_local", ctypes.c_int64),
    ]


ABI_STRUCTS = (TMat, DLayer, DModel)  # in the order of forwardpass.h's FP_ABI_FIELDS


def abi_layout() -> list[int]:
    """What `fp_abi_layout` must report: the structs' sizes, then every field's offset."""
    return [ctypes.sizeof(s) for s in ABI_STRUCTS] + [
        getattr(s, name).offset for s in ABI_STRUCTS for name, *_ in s._fields_
    ]


class ABIError(RuntimeError):
    """The library's struct layout differs from the ctypes mirror: using it would corrupt memory."""


_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
_SIGNATURES = {  # name -> (restype, argtypes)
    "fp_variant": (ctypes.c_char_p, []),
    "fp_abi_layout": (_I64, [_PTR, _I64]),
    "quantize_rows": (None, [_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR]),
    "tile_matmul": (None, [_PTR, _I64, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64]),
    "tile_dequant": (None, [_PTR, _I64, _I64, _PTR, _I64, _I64]),
    "paged_attention": (
        None,
        [_PTR, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _I64, _F32, _I64, _PTR, _I64],
    ),
    "argmax_rows": (None, [_PTR, _I64, _I64, _PTR, _I64]),
    "sample_rows": (_I64, [_PTR, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64]),
    "mask_rows": (None, [_PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _I64]),
    "decoder_workspace": (_I64, [_PTR, _I64, _I64, _I64]),
    "decoder_step": (_I64, [_PTR, _PTR, _I64, _PTR, _PTR, _PTR, _I64, _I64, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _I64]),
}


class NativeLibrary:
    """One loaded build: its C functions with their ctypes signatures, and what it is (`name`, e.g. "avx2+vnni")."""

    def __init__(self, path: Path, variant: str) -> None:
        self.path, self.variant = path, variant
        self.cdll = ctypes.CDLL(str(path))
        for fn_name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.cdll, fn_name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, fn_name, fn)
        self.name: str = self.fp_variant().decode()
        self._check_abi()

    def _check_abi(self) -> None:
        want = abi_layout()
        buf = (ctypes.c_int64 * (len(want) + 8))()
        n = self.fp_abi_layout(buf, len(buf))
        got = list(buf[: min(n, len(buf))])
        if got != want:
            raise ABIError(
                f"{self.path}: struct layout {got} differs from the ctypes mirror {want} "
                "(forwardpass.h and kernels/native.py are out of step)"
            )

    @property
    def description(self) -> str:
        return DESCRIPTIONS.get(self.name, self.name)

    def __repr__(self) -> str:
        return f"NativeLibrary({self.name!r}, {str(self.path)!r})"

    # ---- the calls torch tensors make ----
    def paged_attention_into(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        ctx: torch.Tensor,
        seq: torch.Tensor,
        lens: torch.Tensor,
        scale: float,
        window: int,
    ) -> torch.Tensor:
        rows, heads, dim = q.shape
        q = q.float().contiguous()
        ctx, seq, lens = ctx.contiguous(), seq.contiguous(), lens.contiguous()
        out = torch.empty(rows, heads, dim)
        self.paged_attention(
            q.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            ctx.data_ptr(),
            ctx.shape[1],
            seq.data_ptr(),
            lens.data_ptr(),
            rows,
            heads,
            k_cache.shape[1],
            dim,
            scale,
            window,
            out.data_ptr(),
            torch.get_num_threads(),
        )
        return out

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty(x.shape[0], dtype=torch.int64)
        self.argmax_rows(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr(), torch.get_num_threads())
        return out

    def sample(
        self,
        x: torch.Tensor,
        temperature: torch.Tensor,
        u: torch.Tensor,
        top_p: torch.Tensor | None = None,
        min_p: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Row r of x (R, V) float32: a token drawn from softmax(x[r] / temperature[r]), after top-p and min-p
        where given (per row; 1 and 0 are off), with u[r] (two uniform numbers in [0, 1)), as `sampler.draw`
        draws. (R,) int64."""
        assert x.dtype == torch.float32 and x.dim() == 2 and x.shape[1] > 0
        rows = x.shape[0]
        x, temperature, u = x.contiguous(), temperature.float().contiguous(), u.float().contiguous()
        assert temperature.shape == (rows,) and u.shape == (rows, 2)
        filters = [None if f is None else f.float().contiguous() for f in (top_p, min_p)]
        assert all(f is None or f.shape == (rows,) for f in filters)
        out = torch.empty(rows, dtype=torch.int64)
        status = self.sample_rows(
            x.data_ptr(),
            rows,
            x.shape[1],
            temperature.data_ptr(),
            *[0 if f is None else f.data_ptr() for f in filters],
            u.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError(f"sample_rows: no memory for the scratch of {rows} rows of {x.shape[1]} logits")
        return out

    def mask(self, x: torch.Tensor, rows: list[int], words: np.ndarray) -> np.ndarray:
        """In place on x (B, V) float32, contiguous: row rows[k] keeps the logits whose bit is set in words[k]
        (int32, bit j of word w = token 32 w + j) and gets -inf elsewhere. Returns, per listed row, whether
        nothing it keeps is above -inf."""
        assert x.dtype == torch.float32 and x.is_contiguous() and words.dtype == np.int32 and words.flags.c_contiguous
        assert words.shape == (len(rows), (x.shape[1] + 31) // 32) and all(0 <= r < x.shape[0] for r in rows)
        idx = np.asarray(rows, dtype=np.int64)
        empty = np.zeros(len(rows), dtype=np.uint8)
        self.mask_rows(
            x.data_ptr(),
            x.shape[1],
            idx.ctypes.data,
            len(rows),
            words.ctypes.data,
            words.shape[1],
            empty.ctypes.data,
            torch.get_num_threads(),
        )
        return empty.astype(bool)


def describe(lib: NativeLibrary | None) -> str:
    """One line on what runs, for the CLI's start-up line and `bench --json`."""
    return f"{lib.name} ({lib.description})" if lib is not None else "torch (PyTorch layers, no native kernels)"


def torch_argmax(x: torch.Tensor) -> torch.Tensor:
    return x.argmax(dim=-1)


def mask_fn(lib: NativeLibrary | None):
    """The grammar-mask writer for `structured.guide.apply_masks`: `lib.mask`, or None (numpy) without a library."""
    return None if lib is None else lib.mask


def sample_fn(lib: NativeLibrary | None):
    """The sampler's draw for rows without top-k (`Sampler`'s `native_draw`): `lib.sample` for CPU float32
    logits, or None without a library (the sampler's PyTorch path then)."""
    return None if lib is None else lib.sample


def argmax_fn(lib: NativeLibrary | None):
    """`x.argmax(-1)` of 2-D float32 CPU logits through `lib` (torch's CPU argmax over a (16, 49152) batch took
    ~1 ms, 25x its `amax`); other tensors, or without a library, through torch. NaN counts as the maximum."""
    if lib is None:
        return torch_argmax

    def argmax(x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] == 0:
            return x.argmax(dim=-1)
        return lib.argmax(x)

    return argmax
