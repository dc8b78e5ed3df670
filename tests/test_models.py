"""Reference logits agree with Hugging Face transformers, for every architecture and on the real models."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import write_tiny_model

from forwardpass import LLM, GGUFError, UnsupportedModelError

ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]


def hf_logits(path: str, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def assert_close_logits(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    bound = 1e-3 * ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= bound, f"max |ours - ref| = {err:.3g} > {bound:.3g}"
    assert torch.equal(ours.argmax(-1), ref.argmax(-1)), "top-1 differs at some position"


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_matches_transformers(tmp_path, arch, device):
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch)
    llm = LLM(str(path), reference=True, device=device)
    ids = [(7 * i + 3) % 380 + 4 for i in range(24)]  # 24 tokens: past gemma3's 8-token test window
    ours = llm.logits(ids)
    assert ours.dtype == torch.float32 and ours.shape == (24, llm.vocab_size)
    assert_close_logits(ours, hf_logits(str(path), ids))


@pytest.mark.parametrize("device", DEVICES)
# llama in the working loop; test_kernels.py (fast vs exact logits) and test_native_decoder.py cover every arch there
@pytest.mark.parametrize("arch", ["llama"] + [pytest.param(a, marks=pytest.mark.slow) for a in ARCHS if a != "llama"])
def test_default_path_matches_reference(tmp_path, arch, device):
    path = str(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    ids = [(5 * i + 1) % 380 + 4 for i in range(20)]
    exact = LLM(path, reference=True).logits(ids)  # on the CPU: the yardstick for every device
    fast = LLM(path, device=device).logits(ids)
    # the default path keeps weights quantized and may use bf16 activations and KV cache
    assert (fast - exact).abs().max().item() <= 0.05 * exact.abs().max().item()


def test_unknown_architecture_lists_supported(tmp_path):
    import gguf

    path = tmp_path / "bert.gguf"
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_tensor("x", torch.zeros(32).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="gemma3.*llama.*qwen2.*qwen3"):
        LLM(str(path))


def test_strict_loader_rejects_extra_and_missing_tensors(tmp_path):
    import gguf
    from gguf import GGUFReader

    src = write_tiny_model(tmp_path / "llama.gguf", "llama")
    reader = GGUFReader(str(src))
    for drop, extra, message in [("blk.1.ffn_up.weight", None, "missing"), (None, "blk.9.extra.weight", "unexpected")]:
        out = tmp_path / f"edited-{message}.gguf"
        w = gguf.GGUFWriter(str(out), "llama")
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue
            w.add_key_value(
                field.name,
                field.contents(),
                field.types[0],
                field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None,
            )
        for t in reader.tensors:
            if t.name != drop:
                w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
        if extra:
            w.add_tensor(extra, torch.ones(8).numpy())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises(GGUFError, match=message):
            LLM(str(out), reference=True)


def test_logits_rejects_bad_token_ids(tmp_path):
    llm = LLM(str(write_tiny_model(tmp_path / "llama.gguf", "llama")), reference=True)
    for bad in ([], [llm.vocab_size], [-1], [1.5]):
        with pytest.raises(ValueError):
            llm.logits(bad)


REAL_PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based inks and a wooden press adapted from those used to make "
    "wine. Within fifty years, presses had spread to more than two hundred cities across Europe, and "
    "the cost of books fell so far that reading, once the privilege of clergy and nobles, became part "
    "of everyday life for merchants and craftsmen. Historians still argue about how much the press "
    "changed religion, science and politics, but few doubt that it changed them. Printers became "
    "publishers, editors and booksellers at once; they standardized spelling, invented title pages "
    "and page numbers, and argued with censors in a dozen languages."
)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_real_model_matches_transformers(request, model):
    path = request.getfixturevalue(f"{model}_path")
    llm = LLM(path, reference=True)
    ids = llm.tokenizer.encode(REAL_PROMPT, add_bos=True)[:128]
    assert len(ids) == 128
    assert_close_logits(llm.logits(ids), hf_logits(path, ids))
