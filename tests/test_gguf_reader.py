"""Tests of the validating GGUF reader: round trips, the malformed-file corpus and fuzzing
(docs/reliability.md, corrupt GGUF and GGUF fuzzing), real models."""

from __future__ import annotations

import logging
import os
import struct
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf_corrupt import VT, build, gstr, kv, kv_array, kv_str, kv_u32, malformed_cases, tinfo
from hypothesis import event, given, settings
from hypothesis import strategies as st

from forwardpass.errors import GGUFError
from forwardpass.gguf.reader import GGUFFile, TensorInfo

CASES = malformed_cases()
# What each rejection message must name (the key, the tensor or the problem); cases not listed only need GGUFError.
EXPECT = {
    "bad_magic": "not a GGUF file",
    "version_0": "version 0",
    "version_1": "version 1",
    "version_4": "version 4",
    "version_u32_max": "version 4294967295",
    "big_endian": "big-endian",
    "n_tensors_u64_max": "cannot fit",
    "n_kv_u64_max": "cannot fit",
    "zero_length": "empty",
    "magic_only": "version",
    "key_length_u64_max": "metadata key #1",
    "empty_key": "metadata key #1 is empty",
    "key_invalid_utf8": "UTF-8",
    "value_type_13": "'general.x' has invalid value type 13",
    "value_type_u32_max": "invalid value type",
    "string_length_past_eof": "'general.name'",
    "string_length_u64_max": "'general.name'",
    "string_value_invalid_utf8": "'general.name' is not valid UTF-8",
    "string_array_invalid_utf8": "general.tags",
    "bool_value_2": "general.flag",
    "array_count_past_eof": "'general.x'",
    "array_bytes_overflow_u64": "'general.x'",
    "string_array_count_u64_max": "'general.x'",
    "string_array_item_past_eof": "'general.x'[1]",
    "array_elem_type_13": "element type 13",
    "nested_array": "nested array",
    "duplicate_key": "duplicate metadata key 'general.architecture'",
    "alignment_0": "general.alignment",
    "alignment_13": "general.alignment",
    "alignment_2_31": "general.alignment",
    "alignment_as_string": "must be a UINT32",
    "alignment_as_u64": "must be a UINT32",
    "n_dims_0": "'b' has 0 dimensions",
    "n_dims_5": "'b' has 5 dimensions",
    "n_dims_u32_max": "'b'",
    "zero_dim": "'b' has an invalid dimension",
    "dim_over_int64": "'b'",
    "dims_product_over_2_63": "'b'",
    "f64_nbytes_over_2_64": "'b'",
    "quant_ne_times_type_size_over_2_64": "'b'",
    "ggml_type_u32_max": "ggml type 4294967295",
    "ggml_type_4_removed": "ggml type 4",
    "ggml_type_31_removed": "ggml type 31",
    "ggml_type_past_count": "'b' has unknown",
    "row_not_multiple_of_block": "block size",
    "offset_past_eof": "'b'",
    "offset_plus_size_past_eof": "'b'",
    "offset_u64_max_unaligned": "'b'",
    "offset_u64_max_aligned": "'b'",
    "overlapping": "overlap",
    "partly_overlapping": "overlap",
    "misaligned_offset": "alignment",
    "duplicate_tensor_name": "duplicate tensor",
    "name_64_bytes": "too long",
    "name_65_bytes": "too long",
    "name_1000_bytes": "too long",
    "empty_tensor_name": "empty name",
    "tensor_name_invalid_utf8": "UTF-8",
    "truncated_data": "'b'",
}
N_HEADER_CUTS = 20


# -- the valid tiny file ----------------------------------------------------------------------------------------


def _q4_k_blocks(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """Random Q4_K blocks whose fp16 scales (d, dmin) are small and finite, so they dequantize sanely."""
    blocks = rng.integers(0, 256, size=(n_blocks, 144), dtype=np.uint8)  # (n_blocks, type_size)
    scales = rng.uniform(0.001, 0.1, size=(n_blocks, 2)).astype("<f2")
    blocks[:, :4] = scales.view(np.uint8)
    return blocks


def _tiny_tensors() -> dict[str, tuple[np.ndarray, QT | None]]:
    """name -> (array handed to GGUFWriter.add_tensor, raw_dtype)."""
    rng = np.random.default_rng(0)
    return {
        "f32": (rng.standard_normal((3, 8)).astype(np.float32), None),
        "f16": (rng.standard_normal((2, 4, 6)).astype(np.float16), None),
        "i32": (np.arange(5, dtype=np.int32), None),
        "q8_0": (gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), QT.Q8_0), QT.Q8_0),
        "q4_0": (gguf.quants.quantize(rng.standard_normal((4, 32)).astype(np.float32), QT.Q4_0), QT.Q4_0),
        "q4_k": (_q4_k_blocks(rng, 2), QT.Q4_K),  # 2 rows of 256
    }


# key -> (value, type): one scalar of every type.
TINY_META: dict[str, tuple[Any, VT]] = {
    "test.u8": (255, VT.UINT8),
    "test.i8": (-1, VT.INT8),
    "test.u16": (65535, VT.UINT16),
    "test.i16": (-300, VT.INT16),
    "test.u32": (7, VT.UINT32),
    "test.i32": (-5, VT.INT32),
    "test.u64": (2**40, VT.UINT64),
    "test.i64": (-(2**40), VT.INT64),
    "test.f32": (0.5, VT.FLOAT32),
    "test.f64": (1e-300, VT.FLOAT64),
    "test.bool": (True, VT.BOOL),
    "test.str": ("héllo ✓", VT.STRING),
}


def _write_tiny(path: Path) -> None:
    w = gguf.GGUFWriter(path, "llama")
    for key, (value, vtype) in TINY_META.items():
        w.add_key_value(key, value, vtype)
    w.add_array("test.ints", [1, -2, 3])
    w.add_array("test.floats", [0.5, 1.5])
    w.add_array("test.bools", [True, False, True])
    w.add_array("test.strings", ["a", "bc", "日本"])
    w.add_token_list(["<s>", "</s>", "hello"])
    for name, (array, raw_dtype) in _tiny_tensors().items():
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    _write_tiny(path)
    return path


def test_tiny_round_trip(tiny_path: Path) -> None:
    with GGUFFile(tiny_path) as f:
        assert (f.version, f.alignment) == (3, 32)
        assert f.data_offset % 32 == 0
        md = f.metadata
        assert md["general.architecture"] == "llama"
        for key, (value, _) in TINY_META.items():
            assert md[key] == value and type(md[key]) is type(value), key
        np.testing.assert_array_equal(md["test.ints"], [1, -2, 3])
        assert md["test.ints"].dtype == np.dtype("<i4") and md["test.floats"].dtype == np.dtype("<f4")
        assert md["test.bools"].dtype == np.bool_ and md["test.bools"].tolist() == [True, False, True]
        assert not md["test.floats"].flags.writeable
        assert md["test.strings"] == ["a", "bc", "日本"]
        assert md["tokenizer.ggml.tokens"] == ["<s>", "</s>", "hello"]
        written = _tiny_tensors()
        assert list(f.tensors) == list(written)
        for name, (array, raw_dtype) in written.items():
            info = f.tensors[name]
            assert isinstance(info, TensorInfo)
            if raw_dtype is not None:
                assert info.ggml_type == raw_dtype
                assert info.shape == tuple(gguf.quant_shape_from_byte_shape(array.shape, raw_dtype))
            else:
                assert info.shape == array.shape
            assert info.dims == tuple(reversed(info.shape))
            assert info.n_elements == int(np.prod(info.shape))
            raw = f.tensor_bytes(name)
            assert raw.dtype == np.uint8 and raw.ndim == 1 and raw.nbytes == info.nbytes
            assert raw.tobytes() == array.tobytes()
        assert [f.tensors[n].ggml_type for n in ("f32", "f16", "i32")] == [QT.F32, QT.F16, QT.I32]


def test_tiny_matches_gguf_reader(tiny_path: Path) -> None:
    ref = gguf.GGUFReader(tiny_path)
    with GGUFFile(tiny_path) as f:
        assert ref.data_offset == f.data_offset and ref.alignment == f.alignment
        fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(fields) == list(f.metadata)
        for key, field in fields.items():
            ours, theirs = f.metadata[key], field.contents()
            if isinstance(ours, np.ndarray):
                np.testing.assert_array_equal(ours, theirs)
            else:
                assert ours == pytest.approx(theirs) if isinstance(ours, float) else ours == theirs, key
        assert [t.name for t in ref.tensors] == list(f.tensors)
        for t in ref.tensors:
            info = f.tensors[t.name]
            assert (info.ggml_type, info.dims, info.offset, info.nbytes) == (
                t.tensor_type,
                tuple(int(d) for d in t.shape),
                t.data_offset,
                t.n_bytes,
            )
            np.testing.assert_array_equal(f.tensor_bytes(t.name), t.data.reshape(-1).view(np.uint8))


def test_tensor_bytes_is_a_writable_zero_copy_view(tiny_path: Path) -> None:
    torch = pytest.importorskip("torch")
    f = GGUFFile(tiny_path)
    raw = f.tensor_bytes("q8_0")
    assert raw.flags.writeable and not raw.flags.owndata
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when wrapping a read-only array
        t = torch.from_numpy(raw)
    assert t.data_ptr() == raw.ctypes.data
    f.close()
    assert bytes(raw[:4]) == tiny_path.read_bytes()[f.tensors["q8_0"].offset :][:4]  # views outlive close()
    raw[0] ^= 0xFF  # copy-on-write: the file itself never changes
    assert GGUFFile(tiny_path).tensor_bytes("q8_0")[0] != raw[0]
    with pytest.raises(GGUFError, match="closed"):
        f.tensor_bytes("q8_0")


def test_unknown_tensor_and_bad_paths(tiny_path: Path, tmp_path: Path) -> None:
    with GGUFFile(tiny_path) as f, pytest.raises(GGUFError, match="no tensor named 'nope'"):
        f.tensor_bytes("nope")
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="not a regular file"):
        GGUFFile(tmp_path)


# -- valid edge cases from raw parts ----------------------------------------------------------------------------


def _open_bytes(tmp_path: Path, data: bytes) -> GGUFFile:
    path = tmp_path / "f.gguf"
    path.write_bytes(data)
    return GGUFFile(path)


def test_raw_builder_baseline_and_variants(tmp_path: Path) -> None:
    f = _open_bytes(tmp_path, build())
    assert f.tensors["b"].shape == (2, 4) and f.tensor_bytes("b").tobytes() == bytes(range(32, 64))
    assert _open_bytes(tmp_path, build(version=2)).version == 2
    arch = kv_str("general.architecture", "test")
    assert _open_bytes(tmp_path, build([arch])).alignment == 32  # the default
    infos = [tinfo("a", [8], offset=0), tinfo("b", [8], offset=64)]
    f = _open_bytes(tmp_path, build([arch, kv_u32("general.alignment", 64)], infos, bytes(96), alignment=64))
    assert f.alignment == 64 and f.data_offset % 64 == 0 and f.tensors["b"].offset == f.data_offset + 64
    f = _open_bytes(tmp_path, build([arch], infos=[], data=b"", alignment=1))  # no tensors, no padding
    assert f.tensors == {}
    f = _open_bytes(tmp_path, build([arch, kv_array("e", VT.UINT8, 0, b""), kv_array("s", VT.STRING, 0, b"")]))
    assert f.metadata["e"].shape == (0,) and f.metadata["s"] == []
    f = _open_bytes(tmp_path, build([arch, kv("nan", VT.FLOAT32, struct.pack("<f", float("nan")))]))
    assert np.isnan(f.metadata["nan"])


def test_tokens_with_invalid_utf8_are_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = gstr("a") + gstr(b"\xe2\x96") + gstr(b"\xff")
    data = build([kv_str("general.architecture", "test"), kv_array("tokenizer.ggml.tokens", VT.STRING, 3, tokens)])
    with caplog.at_level(logging.WARNING, logger="forwardpass.gguf.reader"):
        f = _open_bytes(tmp_path, data)
    assert f.metadata["tokenizer.ggml.tokens"] == ["a", "\ufffd", "\ufffd"]
    assert len([r for r in caplog.records if "tokenizer.ggml.tokens" in r.getMessage()]) == 1


def test_large_vocabulary_parses(tmp_path: Path) -> None:
    n = 262_144
    items = b"".join(gstr(f"tok{i}") for i in range(n))
    data = build([kv_str("general.architecture", "test"), kv_array("tokenizer.ggml.tokens", VT.STRING, n, items)])
    path = tmp_path / "vocab.gguf"
    path.write_bytes(data)
    tokens = GGUFFile(path).metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == n and tokens[0] == "tok0" and tokens[-1] == f"tok{n - 1}"


# -- the malformed corpus ----------------------------------------------------------------------------------------


def _assert_rejected(path: Path, expect: str | None = None) -> None:
    """`GGUFFile(path)` raises GGUFError naming the problem, using less than 2x the file size + 1 MB of memory."""
    with pytest.raises(GGUFError) as excinfo:
        GGUFFile(path)
    message = str(excinfo.value)
    assert str(path) in message
    if expect is not None:
        assert expect in message
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError):
            GGUFFile(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * path.stat().st_size + 2**20, f"peak {peak} bytes"


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_file_is_rejected(case: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(CASES[case])
    _assert_rejected(path, EXPECT.get(case))


@pytest.mark.parametrize("k", range(N_HEADER_CUTS))
def test_header_truncated_anywhere_is_rejected(k: int, tiny_path: Path, tmp_path: Path) -> None:
    data = tiny_path.read_bytes()
    header_end = GGUFFile(tiny_path).data_offset
    cut = 1 + (header_end - 2) * k // (N_HEADER_CUTS - 1)  # 1 .. header_end - 1
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:cut])
    _assert_rejected(path)


def test_tiny_data_section_truncated_is_rejected(tiny_path: Path, tmp_path: Path) -> None:
    last = max(GGUFFile(tiny_path).tensors.values(), key=lambda t: t.offset)
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_path.read_bytes()[: last.offset + last.nbytes - 1])
    _assert_rejected(path, repr(last.name))


# -- fuzzing ----------------------------------------------------------------------------------------------------

INTERESTING = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 64, 13, 4096]


def _mutations(header_end: int, size: int) -> st.SearchStrategy[tuple[Any, ...]]:
    """One mutation; positions land in the header, where the parser looks (data bytes are never interpreted)."""
    pos = st.integers(0, header_end - 1)
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("byte"), pos, st.integers(0, 255)),
        st.tuples(st.just("splice"), pos, st.sampled_from(INTERESTING), st.sampled_from([4, 8])),
        st.tuples(st.just("truncate"), st.integers(0, size)),
    )


def _mutate(data: bytearray, op: tuple[Any, ...]) -> None:
    kind, pos = op[0], op[1]
    if kind == "truncate":
        del data[pos:]
    elif pos >= len(data):
        return  # an earlier truncation removed this byte
    elif kind == "flip":
        data[pos] ^= 1 << op[2]
    elif kind == "byte":
        data[pos] = op[2]
    else:
        value, width = op[2], op[3]
        data[pos : pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")


@pytest.fixture(scope="session")
def tiny_bytes(tiny_path: Path) -> tuple[bytes, int]:
    return tiny_path.read_bytes(), GGUFFile(tiny_path).data_offset


@pytest.mark.fuzz
@settings(
    max_examples=int(os.environ.get("FORWARDPASS_FUZZ_EXAMPLES", "200")), deadline=None, derandomize=True, database=None
)
@given(draw=st.data())
def test_fuzz_mutated_tiny_file(
    draw: st.DataObject, tiny_bytes: tuple[bytes, int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    valid, header_end = tiny_bytes
    data = bytearray(valid)
    for op in draw.draw(st.lists(_mutations(header_end, len(valid)), min_size=1, max_size=4), label="ops"):
        _mutate(data, op)
    path = tmp_path_factory.getbasetemp() / "fuzz.gguf"
    path.unlink(missing_ok=True)  # a fresh inode: never truncate a file another mapping may still see
    path.write_bytes(bytes(data))
    try:
        f = GGUFFile(path)
    except GGUFError:
        event("rejected")  # the accepted/rejected mix shows with --hypothesis-show-statistics
        return
    event("accepted")
    with f:
        for name, info in f.tensors.items():
            raw = f.tensor_bytes(name)
            assert raw.nbytes == info.nbytes and info.offset + info.nbytes <= len(data)
            int(raw.sum())  # touch every page


# -- the real models --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_loads(smollm2_path: str) -> None:
    with GGUFFile(smollm2_path) as f:
        assert f.metadata["general.architecture"] == "llama"
        assert len(f.tensors) == 272
        assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
        emb = f.tensors["token_embd.weight"]
        assert emb.shape == (49152, 576) and f.tensor_bytes(emb.name).nbytes == emb.nbytes


@pytest.mark.slow
def test_gemma3_loads(gemma3_path: str) -> None:
    with GGUFFile(gemma3_path) as f:
        assert f.metadata["general.architecture"] == "gemma3"
        assert len(f.tensors) == 236
        assert len(f.metadata["tokenizer.ggml.tokens"]) == 262_144
        assert f.metadata["tokenizer.ggml.scores"].shape == (262_144,)
        assert {QT(t.ggml_type).name for t in f.tensors.values()} >= {"Q4_K", "F32"}
        for name in f.tensors:
            f.tensor_bytes(name)
