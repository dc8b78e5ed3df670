"""The native library's calls run in another process: a build for another instruction set under qemu (neon on an
x86 machine), or the host's build under AddressSanitizer and UBSan.

`RemoteLibrary` has the call interface of `kernels.native.NativeLibrary` (the same C function names with the same
ctypes arguments), so `TileMatrix`, `NativeDecoder` and the rest run on it unchanged. Each call records every
memory region the C function reads or writes (its tensors, the structs and what their pointers reach, sized from
the other arguments as the C code sizes them), writes them to a file for `tests/native/driver.c`, runs the driver,
and copies the regions the function writes back into this process's memory.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from forwardpass.kernels import native

DRIVER_SOURCE = Path(__file__).with_name("native") / "driver.c"
CROSS = {"neon": ("aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"])}


def build_driver(out: Path, variant: str, flags: list[str] = (), compiler: str | None = None) -> None:
    cc = compiler or ("cc" if variant not in CROSS else CROSS[variant][0])
    cmd = [
        cc,
        *[f for f in native.COMMON_FLAGS if f not in ("-shared", "-fPIC")],
        *native.WARNING_FLAGS,
        *native.variant_flags(variant),
        *flags,
        "-I",
        str(native.CSRC),
        str(DRIVER_SOURCE),
        *map(str, native.sources()),
        "-o",
        str(out),
        "-lm",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}:\n{done.stderr[-3000:]}")


def cross_tools_present(variant: str) -> bool:
    cc, runner = CROSS[variant]
    return shutil.which(cc) is not None and shutil.which(runner[0]) is not None


@dataclass
class Region:
    addr: int
    size: int
    index: int
    pointers: tuple[int, ...] = ()  # offsets of the pointers it holds: relocated to where their targets land
    output: bool = False


def _pointer_offsets(ctype: type) -> list[int]:
    out = []
    for name, ftype, *_ in ctype._fields_:
        off = getattr(ctype, name).offset
        if ftype is ctypes.c_void_p or hasattr(ftype, "contents"):
            out.append(off)
        elif issubclass(ftype, ctypes.Array) and hasattr(ftype._type_, "contents"):
            out += [off + 8 * i for i in range(ftype._length_)]
    return out


def _u64(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def _i64s(addr: int, n: int) -> list[int]:
    return list((ctypes.c_int64 * n).from_address(addr)) if n else []


class Call:
    """The memory one call touches, as regions of this process's address space."""

    def __init__(self) -> None:
        self.regions: list[Region] = []

    def add(
        self,
        addr: int,
        size: int,
        ctype: type | None = None,
        count: int = 1,
        output: bool = False,
        pointers: tuple[int, ...] = (),
    ) -> None:
        """Region [addr, addr + size); `ctype`: an array of `count` such structs, whose pointer fields move."""
        if not addr or size <= 0:
            return
        if ctype is not None:
            pointers = tuple(e * ctypes.sizeof(ctype) + off for e in range(count) for off in _pointer_offsets(ctype))
        for r in self.regions:
            if r.addr == addr:
                r.size, r.output = max(r.size, size), r.output or output
                return
        self.regions.append(Region(addr, size, len(self.regions), pointers, output))

    def add_tmat(self, addr: int) -> None:
        if not addr or any(r.addr == addr for r in self.regions):
            return
        m = native.TMat.from_address(addr)
        self.add(addr, ctypes.sizeof(native.TMat), native.TMat)
        nt, g = m.n // 16, m.k // 32
        self.add(m.codes, nt * g * (512 if m.bits == 8 else 256))
        if m.bits > 4:
            self.add(m.planes, nt * g * 64 * (m.bits - 4))
        if m.smode in (0, 1):
            self.add(m.d16, nt * g * 32)
            if m.smode == 1:
                self.add(m.m16, nt * g * 32)
        else:
            self.add(m.sc, nt * g * (16 if m.smode == 2 else 32))
            self.add(m.dsb, nt * (g // 8) * 64)
            if m.smode == 2:
                self.add(m.mn, nt * g * 16)
                self.add(m.msb, nt * (g // 8) * 64)

    def _locate(self, p: int) -> tuple[int, int]:
        for r in self.regions:
            if r.addr <= p <= r.addr + r.size:
                return r.index, p - r.addr
        raise ValueError(f"pointer {p:#x} outside every recorded region")

    def encode(self, name: str, args: list[tuple[int, int]]) -> bytes:
        """args: (kind, value): kind 0 integer, 1 pointer (an address here), 2 float32."""
        out = [b"FPDRV001", struct.pack("<Q", len(self.regions))]
        relocs = []
        for r in self.regions:
            out += [struct.pack("<Q", r.size), ctypes.string_at(r.addr, r.size)]
            for at in r.pointers:
                p = _u64(r.addr + at)
                if p:
                    relocs.append((r.index, at, *self._locate(p)))
        out.append(struct.pack("<Q", len(relocs)))
        out += [struct.pack("<4Q", *rel) for rel in relocs]
        out += [name.encode().ljust(32, b"\0"), struct.pack("<Q", len(args))]
        for kind, value in args:
            if kind == 1:
                out.append(struct.pack("<3Q", 1, *self._locate(value)))
            elif kind == 2:
                out.append(struct.pack("<QIIQ", 2, struct.unpack("<I", struct.pack("<f", value))[0], 0, 0))
            else:
                out.append(struct.pack("<Qq Q", 0, value, 0))
        return b"".join(out)


def _addr(arg) -> int:
    """The address behind a ctypes argument: an int, a byref(...) or a ctypes object."""
    if arg is None:
        return 0
    if isinstance(arg, int):
        return arg
    if hasattr(arg, "_obj"):
        return ctypes.addressof(arg._obj)
    return ctypes.addressof(arg)


class RemoteLibrary(native.NativeLibrary):
    """A `NativeLibrary` whose C functions run in `tests/native/driver.c` (built for `variant`, run by `runner`)."""

    def __init__(self, driver: Path, variant: str, runner: list[str], name: str | None = None) -> None:
        self.driver, self.variant, self.runner = driver, variant, runner
        self.path = driver
        self.name = name or variant
        self.calls = 0
        self.caches: dict[int, int] = {}

    def _run(self, call: Call, name: str, args: list[tuple[int, int]]) -> int:
        self.calls += 1
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in", Path(tmp) / "out"
            src.write_bytes(call.encode(name, args))
            env = dict(
                os.environ,
                ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1",
                UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
                OMP_NUM_THREADS="2",
            )
            done = subprocess.run(
                [*self.runner, str(self.driver), str(src), str(dst)], capture_output=True, text=True, env=env
            )
            if done.returncode:
                raise RuntimeError(
                    f"{name} in the {self.name} driver failed ({done.returncode}):\n{done.stderr[-4000:]}"
                )
            data = dst.read_bytes()
        ret = struct.unpack("<q", data[:8])[0]
        at = 8
        for r in call.regions:
            if r.output:
                ctypes.memmove(r.addr, data[at : at + r.size], r.size)
            at += r.size
        return ret

    # ---- the C functions, with NativeLibrary's ctypes arguments ----
    def fp_abi_layout(self, out, cap) -> int:
        call = Call()
        call.add(_addr(out), 8 * cap, output=True)
        return self._run(call, "fp_abi_layout", [(1, _addr(out)), (0, cap)])

    def tile_matmul(self, mats, nm, x, t, q, dx, sx, s16, y, ldy, nthreads) -> None:
        call = Call()
        base = _addr(mats)
        call.add(base, 8 * nm, pointers=tuple(8 * i for i in range(nm)))
        for i in range(nm):
            call.add_tmat(_u64(base + 8 * i))
        k = native.TMat.from_address(_u64(base)).k
        call.add(x, 4 * t * k)
        for p, size in (
            (q, t * k),
            (dx, 4 * t * k // 32),
            (sx, 4 * t * k // 32),
            (s16, 4 * t * k // 16),
            (y, 4 * t * ldy),
        ):
            call.add(p, size, output=True)
        self._run(
            call,
            "tile_matmul",
            [(1, base), (0, nm), (1, x), (0, t), (1, q), (1, dx), (1, sx), (1, s16), (1, y), (0, ldy), (0, nthreads)],
        )

    def tile_dequant(self, w, rt0, rt1, out, bf16, nthreads) -> None:
        call = Call()
        m = _addr(w)
        call.add_tmat(m)
        k = native.TMat.from_address(m).k
        call.add(out, (rt1 - rt0) * 16 * k * (2 if bf16 else 4), output=True)
        self._run(call, "tile_dequant", [(1, m), (0, rt0), (0, rt1), (1, out), (0, bf16), (0, nthreads)])

    def paged_attention(
        self, q, k, v, ctx, ctx_stride, seq, lens, rows, heads, kv_heads, dim, scale, window, out, n_threads
    ) -> None:
        call = Call()
        seqs, ls = _i64s(seq, rows), _i64s(lens, rows)
        n_seq = max(seqs) + 1 if rows else 0
        slots = [s for r in range(rows) for s in _i64s(ctx + 8 * seqs[r] * ctx_stride, ls[r])]
        n_slots = max(slots) + 1 if slots else 1
        for p, size in (
            (q, 4 * rows * heads * dim),
            (k, 2 * n_slots * kv_heads * dim),
            (ctx, 8 * n_seq * ctx_stride),
            (v, 2 * n_slots * kv_heads * dim),
            (seq, 8 * rows),
            (lens, 8 * rows),
        ):
            call.add(p, size)
        call.add(out, 4 * rows * heads * dim, output=True)
        self._run(
            call,
            "paged_attention",
            [
                (1, q),
                (1, k),
                (1, v),
                (1, ctx),
                (0, ctx_stride),
                (1, seq),
                (1, lens),
                (0, rows),
                (0, heads),
                (0, kv_heads),
                (0, dim),
                (2, scale),
                (0, window),
                (1, out),
                (0, n_threads),
            ],
        )

    def argmax_rows(self, x, rows, n, out, nthreads) -> None:
        call = Call()
        call.add(x, 4 * rows * n)
        call.add(out, 8 * rows, output=True)
        self._run(call, "argmax_rows", [(1, x), (0, rows), (0, n), (1, out), (0, nthreads)])

    def sample_rows(self, x, rows, n, temp, top_p, min_p, u, out, nthreads) -> int:
        call = Call()
        call.add(x, 4 * rows * n)
        for p in (temp, top_p, min_p):
            if p:
                call.add(p, 4 * rows)
        call.add(u, 8 * rows)
        call.add(out, 8 * rows, output=True)
        args = [(1, x), (0, rows), (0, n), (1, temp), (1 if top_p else 0, top_p), (1 if min_p else 0, min_p)]
        return self._run(call, "sample_rows", [*args, (1, u), (1, out), (0, nthreads)])

    def _model(self, call: Call, m_addr: int, caches: dict[int, int]) -> native.DModel:
        m = native.DModel.from_address(m_addr)
        call.add(m_addr, ctypes.sizeof(native.DModel), native.DModel)
        layers = ctypes.cast(m.layers, ctypes.c_void_p).value
        call.add(layers, m.n_layers * ctypes.sizeof(native.DLayer), native.DLayer, m.n_layers)
        hd, qo = m.head_dim, m.n_heads * m.head_dim
        for i in range(m.n_layers):
            layer = m.layers[i]
            for p, size in (
                (layer.attn_norm, m.d_model),
                (layer.ffn_norm, m.d_model),
                (layer.q_norm, hd),
                (layer.k_norm, hd),
                (layer.post_attn_norm, m.d_model),
                (layer.post_ffn_norm, m.d_model),
                (layer.qkv_bias, qo + 2 * m.n_kv * hd),
            ):
                call.add(p or 0, 4 * size)
            for t in (*layer.qkv[: layer.n_qkv], layer.o, *layer.gu[: layer.n_gu], layer.down):
                call.add_tmat(ctypes.cast(t, ctypes.c_void_p).value)
            for p in (layer.kc, layer.vc):
                if p not in caches:
                    raise ValueError("register the KV cache tensors first (RemoteLibrary.caches)")
                call.add(p, caches[p], output=True)
        call.add(m.out_norm or 0, 4 * m.d_model)
        if m.head:
            call.add_tmat(ctypes.cast(m.head, ctypes.c_void_p).value)
        return m

    def decoder_workspace(self, m, b, lmax, nthreads) -> int:
        call = Call()
        self._model(call, _addr(m), self.caches)
        return self._run(call, "decoder_workspace", [(1, _addr(m)), (0, b), (0, lmax), (0, nthreads)])

    def decoder_step(
        self, m, x, b, rope, slots, ctx, ctx_stride, ctx_group_stride, seq, lens, out_rows, n_out, logits, ws, nthreads
    ) -> int:
        call = Call()
        model = self._model(call, _addr(m), self.caches)
        if model.gather:
            raise ValueError("a tensor-parallel step calls back into this process: it cannot run in another one")
        groups = max(model.layers[i].group for i in range(model.n_layers)) + 1
        n_rope = max(model.layers[i].rope for i in range(model.n_layers)) + 1
        ls = _i64s(lens, b)
        ws_size = self.decoder_workspace(m, b, max([1, *ls]), nthreads)
        call.add(x, 4 * b * model.d_model, output=True)
        for p, size in (
            (rope, 4 * n_rope * b * 2 * model.rope_dims),
            (slots, 8 * groups * b),
            (ctx, 8 * groups * ctx_group_stride),
            (seq, 8 * b),
            (lens, 8 * b),
            (out_rows or 0, 8 * n_out),
        ):
            call.add(p, size)
        call.add(
            logits or 0,
            4
            * n_out
            * (native.TMat.from_address(ctypes.cast(model.head, ctypes.c_void_p).value).n if model.head else 0),
            output=True,
        )
        call.add(ws, ws_size, output=True)
        return self._run(
            call,
            "decoder_step",
            [
                (1, _addr(m)),
                (1, x),
                (0, b),
                (1, rope),
                (1, slots),
                (1, ctx),
                (0, ctx_stride),
                (0, ctx_group_stride),
                (1, seq),
                (1, lens),
                (1 if out_rows else 0, out_rows or 0),
                (0, n_out),
                (1 if logits else 0, logits or 0),
                (1, ws),
                (0, nthreads),
            ],
        )

    def register_cache(self, cache) -> None:
        """The KV cache tensors the native step writes (their whole size: the step addresses them by slot)."""
        self.caches = {t.data_ptr(): t.numel() * t.element_size() for t in (*cache.k, *cache.v)}


def remote_library(variant: str, tmp: Path, sanitize: bool = False) -> RemoteLibrary:
    """The driver for `variant`, built into `tmp`: cross-compiled and run under qemu where CROSS names it, else
    built for this machine (with AddressSanitizer and UBSan when `sanitize`)."""
    driver = tmp / f"driver-{variant}{'-asan' if sanitize else ''}"
    flags = native.SANITIZE_FLAGS if sanitize else []
    build_driver(driver, variant, flags)
    runner = CROSS[variant][1] if variant in CROSS and not native.cpu_runs(variant) else []
    return RemoteLibrary(driver, variant, runner, name=f"{variant}{'+asan' if sanitize else ''}")
