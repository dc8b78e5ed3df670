"""Builders of malformed GGUF files for the reader tests (docs/reliability.md, corrupt GGUF; mirrors llama.cpp's
test-gguf.cpp).

`build()` writes a GGUF file from raw parts with `struct.pack`, so each case can break exactly one thing;
`build()` with no arguments is a small valid file. `malformed_cases()` returns name -> bytes for every case.
"""

from __future__ import annotations

import random
import struct

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import GGUFValueType as VT

U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
F32 = int(GGMLQuantizationType.F32)
F64 = int(GGMLQuantizationType.F64)
Q8_0 = int(GGMLQuantizationType.Q8_0)


def gstr(s: str | bytes, length: int | None = None) -> bytes:
    """A GGUF string: u64 length, then the bytes (`length` overrides the stored length)."""
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(data) if length is None else length) + data


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    """One metadata entry: key, u32 value type, then the already-encoded value."""
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, VT.UINT32, struct.pack("<I", value))


def kv_str(key: str, value: str | bytes) -> bytes:
    return kv(key, VT.STRING, gstr(value))


def kv_array(key: str, elem_type: int, count: int, items: bytes) -> bytes:
    return kv(key, VT.ARRAY, struct.pack("<IQ", elem_type, count) + items)


def tinfo(
    name: str | bytes, dims: list[int], ggml_type: int = F32, offset: int = 0, n_dims: int | None = None
) -> bytes:
    """One tensor index entry (`n_dims` overrides the stored count)."""
    return (
        gstr(name)
        + struct.pack("<I", len(dims) if n_dims is None else n_dims)
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


BASE_KVS = [kv_str("general.architecture", "test"), kv_u32("general.alignment", 32)]
BASE_INFOS = [tinfo("a", [8], F32, 0), tinfo("b", [4, 2], F32, 32)]
BASE_DATA = bytes(range(64))


def build(
    kvs: list[bytes] | None = None,
    infos: list[bytes] | None = None,
    data: bytes = BASE_DATA,
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
) -> bytes:
    """A GGUF file from raw parts; with no arguments, a valid one (two F32 tensors "a" and "b")."""
    kvs = BASE_KVS if kvs is None else kvs
    infos = BASE_INFOS if infos is None else infos
    head = magic + struct.pack(
        "<IQQ", version, len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(infos)
    return body + bytes(-len(body) % alignment) + data


def _with_arch(*extra: bytes) -> bytes:
    return build([BASE_KVS[0], *extra])


def _header_cases() -> dict[str, bytes]:
    valid = build()
    big_endian = b"GGUF" + struct.pack(">IQQ", 3, 2, 2) + valid[24:]
    return {
        "bad_magic": b"GGUX" + valid[4:],
        "version_0": build(version=0),
        "version_1": build(version=1),
        "version_4": build(version=4),
        "version_u32_max": build(version=U32_MAX),
        "big_endian": big_endian,
        "n_tensors_u64_max": build(n_tensors=U64_MAX),
        "n_kv_u64_max": build(n_kv=U64_MAX),
        "n_kv_one_too_many": build(n_kv=3),
        "zero_length": b"",
        "magic_only": b"GGUF",
        "truncated_counts": valid[:20],
    }


def _kv_cases() -> dict[str, bytes]:
    return {
        "key_length_u64_max": _with_arch(gstr(b"general.name", U64_MAX) + struct.pack("<I", VT.UINT32)),
        "key_length_past_eof": _with_arch(gstr(b"general.name", 10_000) + struct.pack("<I", VT.UINT32)),
        "empty_key": _with_arch(kv("", VT.UINT32, struct.pack("<I", 1))),
        "key_invalid_utf8": _with_arch(kv(b"general.\xff\xfe", VT.UINT32, struct.pack("<I", 1))),
        "value_type_13": _with_arch(kv("general.x", 13, struct.pack("<I", 1))),
        "value_type_u32_max": _with_arch(kv("general.x", U32_MAX, struct.pack("<I", 1))),
        "string_length_past_eof": _with_arch(kv("general.name", VT.STRING, gstr(b"abc", 1 << 40))),
        "string_length_u64_max": _with_arch(kv("general.name", VT.STRING, gstr(b"abc", U64_MAX))),
        "string_value_invalid_utf8": _with_arch(kv_str("general.name", b"bad \xc3\x28 utf8")),
        "string_array_invalid_utf8": _with_arch(kv_array("general.tags", VT.STRING, 2, gstr("ok") + gstr(b"\xff"))),
        "bool_value_2": _with_arch(kv("general.flag", VT.BOOL, b"\x02")),
        "array_count_past_eof": _with_arch(kv_array("general.x", VT.UINT32, 1 << 40, b"\0" * 16)),
        "array_bytes_overflow_u64": _with_arch(kv_array("general.x", VT.UINT64, 1 << 62, b"\0" * 16)),
        "string_array_count_u64_max": _with_arch(kv_array("general.x", VT.STRING, U64_MAX, gstr("a"))),
        "string_array_item_past_eof": _with_arch(kv_array("general.x", VT.STRING, 2, gstr("a") + gstr("b", 999))),
        "array_elem_type_13": _with_arch(kv_array("general.x", 13, 1, b"\0" * 8)),
        "nested_array": _with_arch(kv_array("general.x", VT.ARRAY, 1, struct.pack("<IQI", VT.UINT32, 1, 7))),
        "duplicate_key": build([*BASE_KVS, BASE_KVS[0]]),
        "alignment_0": _with_arch(kv_u32("general.alignment", 0)),
        "alignment_13": _with_arch(kv_u32("general.alignment", 13)),
        "alignment_2_31": _with_arch(kv_u32("general.alignment", 2**31)),
        "alignment_as_string": _with_arch(kv_str("general.alignment", "32")),
        "alignment_as_u64": _with_arch(kv("general.alignment", VT.UINT64, struct.pack("<Q", 32))),
    }


def _tensor_cases() -> dict[str, bytes]:
    a = BASE_INFOS[0]

    def with_b(dims: list[int], ggml_type: int, offset: int, n_dims: int | None = None) -> bytes:
        """The baseline file with tensor "b" replaced."""
        return build(infos=[a, tinfo("b", dims, ggml_type, offset, n_dims)])

    max_type = max(int(t) for t in GGML_QUANT_SIZES)
    return {
        "n_dims_0": with_b([], F32, 32),
        "n_dims_5": with_b([1, 1, 1, 1, 8], F32, 32),
        "n_dims_u32_max": with_b([8], F32, 32, n_dims=U32_MAX),
        "zero_dim": with_b([8, 0], F32, 32),
        "dim_over_int64": with_b([2**63], F32, 32),
        "dims_product_over_2_63": with_b([2**32, 2**32], F32, 32),
        "f64_nbytes_over_2_64": with_b([2**62], F64, 32),
        "quant_ne_times_type_size_over_2_64": with_b([2**62], Q8_0, 32),
        "ggml_type_u32_max": with_b([8], U32_MAX, 32),
        "ggml_type_4_removed": with_b([32], 4, 32),
        "ggml_type_31_removed": with_b([32], 31, 32),
        "ggml_type_past_count": with_b([32], max_type + 1, 32),
        "row_not_multiple_of_block": with_b([16], Q8_0, 32),
        "offset_past_eof": with_b([8], F32, 1 << 40),
        "offset_plus_size_past_eof": with_b([16], F32, 32),
        "offset_u64_max_unaligned": with_b([8], F32, U64_MAX),
        "offset_u64_max_aligned": with_b([8], F32, U64_MAX - 31),
        "overlapping": with_b([8], F32, 0),
        "partly_overlapping": build(infos=[tinfo("a", [16], F32, 0), tinfo("b", [8], F32, 32)]),
        "misaligned_offset": with_b([4], F32, 36),
        "duplicate_tensor_name": build(infos=[a, tinfo("a", [8], F32, 32)]),
        "empty_tensor_name": build(infos=[a, tinfo("", [8], F32, 32)]),
        "tensor_name_invalid_utf8": build(infos=[a, tinfo(b"\xff", [8], F32, 32)]),
        "tensor_name_length_past_eof": build(infos=[a, gstr(b"b", 1 << 40)]),
        "truncated_data": build()[:-1],
        "data_offset_past_eof": build()[:-64],
    }


def _name_cases() -> dict[str, bytes]:
    a = BASE_INFOS[0]
    return {
        "name_64_bytes": build(infos=[a, tinfo("x" * 64, [8], F32, 32)]),  # llama.cpp allows at most 63
        "name_65_bytes": build(infos=[a, tinfo("x" * 65, [8], F32, 32)]),
        "name_1000_bytes": build(infos=[a, tinfo("x" * 1000, [8], F32, 32)]),
    }


def garbage_cases(n: int = 4) -> dict[str, bytes]:
    """Seeded random bytes, bare and behind a valid magic and version."""
    out: dict[str, bytes] = {}
    for seed in range(n):
        rng = random.Random(seed)
        blob = rng.randbytes(rng.randrange(1, 4096))
        out[f"garbage_{seed}"] = blob
        out[f"garbage_after_header_{seed}"] = b"GGUF" + struct.pack("<I", 3) + blob
        out[f"garbage_after_counts_{seed}"] = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + blob
    return out


def malformed_cases() -> dict[str, bytes]:
    """Every malformed file, by name; each must make `GGUFFile` raise `GGUFError`."""
    cases = {**_header_cases(), **_kv_cases(), **_tensor_cases(), **_name_cases(), **garbage_cases()}
    return cases
