"""A validating, memory-mapped GGUF reader.

`GGUFFile(path)` parses and checks the whole header (metadata and tensor index) before any tensor data is
touched, and raises `GGUFError` naming the key or tensor for anything malformed. The file is mapped once with
`numpy.memmap(mode="c")`: the header is parsed from that mapping (never slurped into memory), and
`tensor_bytes()` hands out zero-copy views of it. Copy-on-write keeps the views writable, so `torch.from_numpy`
wraps them without a copy or a warning, while the file on disk can never be modified.

Hostile input is the design case (see docs/reliability.md, corrupt GGUF): every count, length and offset read from the
file is checked against the bytes actually left before it is used, all size arithmetic is done with Python ints, and
nothing is allocated in proportion to a count before that check.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from ..errors import GGUFError

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit counts and lengths; nobody writes it any more
DEFAULT_ALIGNMENT = 32
# A sanity bound, not a format rule: real files use 32; anything beyond a huge page is corruption.
MAX_ALIGNMENT = 1 << 24
GGML_MAX_NAME = 64  # ggml stores names NUL-terminated in char[64], so at most 63 bytes
GGML_MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1

_HEADER_BYTES = 4 + 4 + 8 + 8  # magic, version, n_tensors, n_kv
# The smallest possible encodings, used to bound counts by the file size before looping over them.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, 1-byte name, n_dims, one dim, type, offset

_VT = gguf.GGUFValueType
# Fixed-size value types: little-endian struct format and numpy dtype.
_FIXED: dict[int, tuple[struct.Struct, np.dtype]] = {
    vtype: (struct.Struct(fmt), np.dtype(dtype))
    for vtype, fmt, dtype in [
        (_VT.UINT8, "<B", "<u1"),
        (_VT.INT8, "<b", "<i1"),
        (_VT.UINT16, "<H", "<u2"),
        (_VT.INT16, "<h", "<i2"),
        (_VT.UINT32, "<I", "<u4"),
        (_VT.INT32, "<i", "<i4"),
        (_VT.UINT64, "<Q", "<u8"),
        (_VT.INT64, "<q", "<i8"),
        (_VT.FLOAT32, "<f", "<f4"),
        (_VT.FLOAT64, "<d", "<f8"),
        (_VT.BOOL, "<B", "|b1"),
    ]
}
# Real vocabularies hold byte-level tokens that are not valid UTF-8 on their own (and merges built from them);
# those are decoded leniently so such models still load. Every other string must be valid UTF-8.
_LENIENT_STRING_KEYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor index. `dims` is in GGUF order (`dims[0]` is contiguous); `offset` is absolute."""

    name: str
    ggml_type: int
    dims: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape in torch order (outermost dimension first)."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        return math.prod(self.dims)


def _type_name(ggml_type: int) -> str:
    try:
        return gguf.GGMLQuantizationType(ggml_type).name
    except ValueError:
        return str(ggml_type)


def _vtype_name(vtype: int) -> str:
    try:
        return _VT(vtype).name
    except ValueError:
        return str(vtype)


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every short read raises `GGUFError` naming `what`."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise GGUFError(
                f"truncated or corrupt GGUF: {what} needs {n} bytes at offset {self.pos}, "
                f"but only {self.size - self.pos} remain"
            )

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def u32(self, what: str) -> int:
        return self.unpack(_U32, what)

    def u64(self, what: str) -> int:
        return self.unpack(_U64, what)

    def raw_string(self, what: str) -> memoryview:
        """A length-prefixed string's bytes (not decoded)."""
        n = self.u64(f"length of {what}")
        self.need(n, what)
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def string(self, what: str) -> str:
        data = self.raw_string(what)
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None


class GGUFFile:
    """A GGUF file, validated on open and memory-mapped for its lifetime.

    Attributes: `path`, `version`, `alignment`, `data_offset`, `metadata` (key -> int | float | bool | str,
    read-only 1-D numpy array, or list[str]) and `tensors` (name -> `TensorInfo`, in file order).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.version = 0
        self.alignment = DEFAULT_ALIGNMENT
        self.data_offset = 0
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._mm: np.memmap | None = None
        self._open()
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- public API -------------------------------------------------------------------------------------------

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of tensor `name`: a uint8 1-D view of the mapping (no copy)."""
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(f"{self.path}: no tensor named {name!r}")
        if self._mm is None:
            raise GGUFError(f"{self.path}: file is closed")
        return self._mm[info.offset : info.offset + info.nbytes].view(np.ndarray)

    def release_pages(self) -> None:
        """Drop the mapping's resident pages from this process (they are read from the file again on the next
        access). Call once the loader has repacked what it needs: the file's bytes then stop counting in RSS."""
        raw = getattr(self._mm, "_mmap", None)
        if raw is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                raw.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass  # only memory accounting is lost

    def release_range(self, address: int, nbytes: int) -> None:
        """`release_pages` for the whole pages inside [address, address + nbytes), if they lie in the mapping."""
        raw = getattr(self._mm, "_mmap", None)
        if raw is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        base = self._mm.ctypes.data
        if not (base <= address and address + nbytes <= base + self._mm.size):
            return  # not the file's bytes (a copy): never drop anonymous memory, that would zero it
        page = mmap.PAGESIZE
        lo, hi = -(-(address - base) // page) * page, (address - base + nbytes) // page * page
        if hi > lo:
            try:
                raw.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Drop this object's reference to the mapping. Views from `tensor_bytes` keep it alive while they live
        (an mmap cannot be unmapped under exported buffers), so closing never invalidates memory in use."""
        self._mm = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.path!r}, version={self.version}, n_kv={len(self.metadata)}, n_tensors={len(self.tensors)})"
        )

    # -- parsing ----------------------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise GGUFError(f"cannot open GGUF file {self.path}: {e.strerror or e}") from e
        # Opening a FIFO or device would block or read forever; only regular files are GGUF files.
        if not stat.S_ISREG(st.st_mode):
            raise GGUFError(f"{self.path} is not a regular file")
        if st.st_size == 0:
            raise GGUFError(f"{self.path} is empty (0 bytes), not a GGUF file")
        try:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="c")
        except (OSError, ValueError) as e:
            raise GGUFError(f"cannot memory-map GGUF file {self.path}: {e}") from e

    def _parse(self) -> None:
        assert self._mm is not None
        cur = _Cursor(memoryview(self._mm))
        try:
            n_tensors, n_kv = self._read_header(cur)
            self._read_metadata(cur, n_kv)
            self.alignment = _alignment_from(self.metadata)
            infos = [self._read_tensor_info(cur, i) for i in range(n_tensors)]
            self.data_offset = -(-cur.pos // self.alignment) * self.alignment
            self.tensors = _place_tensors(infos, self.data_offset, self.alignment, cur.size)
        except GGUFError as e:
            raise GGUFError(f"{self.path}: {e}") from None
        finally:
            cur.buf.release()

    def _read_header(self, cur: _Cursor) -> tuple[int, int]:
        magic = bytes(cur.buf[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        cur.pos = 4
        version = cur.u32("version")
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version & 0xFFFF == 0 and swapped in (1, 2, 3):
            raise GGUFError(f"big-endian GGUF (version {swapped}) is not supported; convert it to little-endian")
        if version not in SUPPORTED_VERSIONS:
            hint = " (GGUF v1 is obsolete)" if version == 1 else ""
            raise GGUFError(f"unsupported GGUF version {version}{hint}; supported: {SUPPORTED_VERSIONS}")
        self.version = version
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata key/value count")
        # Bound both counts by the bytes left before looping: a bogus 2**64-1 fails here, not after a long loop.
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > cur.remaining:
            raise GGUFError(
                f"header claims {n_tensors} tensors and {n_kv} metadata entries, "
                f"which cannot fit in the remaining {cur.remaining} bytes"
            )
        return n_tensors, n_kv

    def _read_metadata(self, cur: _Cursor, n_kv: int) -> None:
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if not key:
                raise GGUFError(f"metadata key #{i} is empty")
            if key in self.metadata:
                raise GGUFError(f"duplicate metadata key {key!r}")
            vtype = cur.u32(f"value type of {key!r}")
            if key == gguf.Keys.General.ALIGNMENT and vtype != _VT.UINT32:
                # llama.cpp reads it with gguf_get_val_u32, so any other type is an error there too.
                raise GGUFError(f"metadata {key!r} must be a UINT32, not {_vtype_name(vtype)}")
            self.metadata[key] = _read_value(cur, vtype, key)

    def _read_tensor_info(self, cur: _Cursor, index: int) -> tuple[str, int, tuple[int, ...], int]:
        """One tensor index entry: (name, ggml_type, dims, offset relative to the data section), validated."""
        name = cur.string(f"name of tensor #{index}")
        if not name:
            raise GGUFError(f"tensor #{index} has an empty name")
        if len(name.encode()) >= GGML_MAX_NAME:
            raise GGUFError(
                f"tensor name {name[:32] + '...'!r} is too long ({len(name.encode())} bytes, "
                f"at most {GGML_MAX_NAME - 1})"
            )
        what = f"tensor {name!r}"
        n_dims = cur.u32(f"n_dims of {what}")
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise GGUFError(f"{what} has {n_dims} dimensions (must be 1..{GGML_MAX_DIMS})")
        dims = tuple(cur.u64(f"dimension {d} of {what}") for d in range(n_dims))
        if any(d < 1 or d > INT64_MAX for d in dims):
            raise GGUFError(f"{what} has an invalid dimension in {list(dims)} (each must be 1..2**63-1)")
        if math.prod(dims) > INT64_MAX:
            raise GGUFError(f"{what} has {math.prod(dims)} elements ({list(dims)}), more than 2**63-1")
        ggml_type = cur.u32(f"type of {what}")
        if ggml_type not in gguf.GGML_QUANT_SIZES:
            raise GGUFError(f"{what} has unknown or unsupported ggml type {ggml_type}")
        block_size, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        if dims[0] % block_size:
            raise GGUFError(
                f"{what} of type {_type_name(ggml_type)}: row length {dims[0]} is not a multiple "
                f"of the block size {block_size}"
            )
        offset = cur.u64(f"offset of {what}")
        return name, ggml_type, dims, offset


def _read_value(cur: _Cursor, vtype: int, key: str) -> Any:
    """One metadata value of type `vtype` for `key`."""
    fixed = _FIXED.get(vtype)
    if fixed is not None:
        value = cur.unpack(fixed[0], f"value of {key!r}")
        if vtype == _VT.BOOL:
            if value > 1:
                raise GGUFError(f"metadata {key!r}: bool value {value} is neither 0 nor 1")
            return bool(value)
        return value
    if vtype == _VT.STRING:
        return cur.string(f"value of {key!r}")
    if vtype == _VT.ARRAY:
        return _read_array(cur, key)
    raise GGUFError(f"metadata {key!r} has invalid value type {vtype}")


def _read_array(cur: _Cursor, key: str) -> np.ndarray | list[str]:
    elem_type = cur.u32(f"array element type of {key!r}")
    count = cur.u64(f"array length of {key!r}")
    if elem_type == _VT.ARRAY:
        raise GGUFError(f"metadata {key!r} is a nested array, which is not supported")
    if elem_type == _VT.STRING:
        # Each string takes at least its 8-byte length; check before looping so a huge count fails fast.
        if count * 8 > cur.remaining:
            raise GGUFError(f"metadata {key!r}: {count} strings cannot fit in the remaining {cur.remaining} bytes")
        return _read_string_array(cur, count, key)
    fixed = _FIXED.get(elem_type)
    if fixed is None:
        raise GGUFError(f"metadata {key!r} has invalid array element type {elem_type}")
    dtype = fixed[1]
    cur.need(count * dtype.itemsize, f"array {key!r} of {count} x {_VT(elem_type).name}")
    # A copy, so metadata does not pin the mapping; built from immutable bytes, so it is read-only.
    data = bytes(cur.buf[cur.pos : cur.pos + count * dtype.itemsize])
    cur.pos += count * dtype.itemsize
    if elem_type == _VT.BOOL and any(b > 1 for b in data):
        raise GGUFError(f"metadata {key!r}: bool array holds values other than 0 and 1")
    return np.frombuffer(data, dtype=dtype)


def _read_string_array(cur: _Cursor, count: int, key: str) -> list[str]:
    """`count` length-prefixed strings. A tight loop over the buffer: vocabularies hold 262,144 entries."""
    lenient = key in _LENIENT_STRING_KEYS
    buf, pos, size, unpack = cur.buf, cur.pos, cur.size, _U64.unpack_from
    out: list[str] = []
    append = out.append
    n_replaced = 0
    for i in range(count):
        if pos + 8 > size:
            cur.pos = pos
            cur.need(8, f"length of {key!r}[{i}]")
        (n,) = unpack(buf, pos)
        pos += 8
        if n > size - pos:
            cur.pos = pos
            cur.need(n, f"{key!r}[{i}]")
        try:
            append(str(buf[pos : pos + n], "utf-8"))
        except UnicodeDecodeError as e:
            if not lenient:
                raise GGUFError(f"{key!r}[{i}] is not valid UTF-8 ({e.reason} at byte {e.start})") from None
            append(str(buf[pos : pos + n], "utf-8", "replace"))
            n_replaced += 1
        pos += n
    cur.pos = pos
    if n_replaced:
        logger.warning(
            "%s: %d of %d strings are not valid UTF-8; their invalid bytes were replaced with U+FFFD",
            key,
            n_replaced,
            count,
        )
    return out


def _alignment_from(metadata: dict[str, Any]) -> int:
    """`general.alignment` (already known to be a uint32), checked: a power of two, at most MAX_ALIGNMENT."""
    key = gguf.Keys.General.ALIGNMENT
    alignment = metadata.get(key, DEFAULT_ALIGNMENT)
    if alignment == 0 or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
        raise GGUFError(f"metadata {key!r} is {alignment}; it must be a power of two <= {MAX_ALIGNMENT}")
    return alignment


def _place_tensors(
    infos: list[tuple[str, int, tuple[int, ...], int]], data_offset: int, alignment: int, file_size: int
) -> dict[str, TensorInfo]:
    """Turn index entries into `TensorInfo`s, checking names, alignment, bounds and overlaps."""
    tensors: dict[str, TensorInfo] = {}
    for name, ggml_type, dims, rel_offset in infos:
        if name in tensors:
            raise GGUFError(f"duplicate tensor name {name!r}")
        block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        nbytes = math.prod(dims) // block_size * type_size  # Python ints: no overflow, compared to the file below
        if nbytes > INT64_MAX:
            raise GGUFError(f"tensor {name!r}: size {nbytes} bytes overflows 64 bits")
        if rel_offset % alignment:
            raise GGUFError(f"tensor {name!r}: offset {rel_offset} is not a multiple of the alignment {alignment}")
        start = data_offset + rel_offset
        if start + nbytes > file_size:
            raise GGUFError(
                f"tensor {name!r}: data [{start}, {start + nbytes}) extends past the end of the file "
                f"({file_size} bytes); the file is truncated or the index is corrupt"
            )
        tensors[name] = TensorInfo(name, ggml_type, dims, start, nbytes)
    ordered = sorted(tensors.values(), key=lambda t: t.offset)
    for prev, nxt in zip(ordered, ordered[1:]):
        if nxt.offset < prev.offset + prev.nbytes:
            raise GGUFError(
                f"tensors {prev.name!r} and {nxt.name!r} overlap (at {prev.offset}+{prev.nbytes} and {nxt.offset})"
            )
    return tensors
