"""`forwardpass bench` reports what the issue asks for; releasing the file's pages never loses data."""
from __future__ import annotations

import numpy as np
import torch

from forwardpass.bench import run_bench
from forwardpass.gguf.reader import GGUFFile
from forwardpass.gguf.weights import WeightStore
from tiny_models import write_tiny_model


def test_bench_reports_speeds_memory_and_its_budget(tmp_path):
    path = str(write_tiny_model(tmp_path / "m.gguf", "llama", tile_types=True))
    r = run_bench(path, prompt_tokens=24, gen_tokens=4, repeat=1, batch=2)
    for key in ("pp_tok_s", "tg_tok_s", "ttft_ms", "load_s", "rss_mb", "kv_mb", "rss_budget_mb"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert r["batch"] == 2 and r["prompt_tokens"] == 24 and r["gen_tokens"] == 4
    assert abs(r["rss_budget_mb"] - (r["file_mb"] + r["kv_mb"] + 400)) < 0.2


def test_releasing_pages_keeps_file_bytes_and_never_touches_copies(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", "llama")
    gguf = GGUFFile(path)
    store = WeightStore(gguf)
    weight = store.get("blk.0.ffn_up.weight", (512, 256))
    before = weight.raw.clone()
    store.release(weight.raw)  # pages of the mapping: dropped, then read from the file again
    assert torch.equal(weight.raw, before)
    gguf.release_pages()
    assert torch.equal(weight.raw, before)
    copy = torch.from_numpy(np.full(1 << 16, 7, dtype=np.uint8))  # anonymous memory: must be left alone
    store.release(copy)
    gguf.release_range(copy.data_ptr(), copy.numel())
    assert int(copy.min()) == 7 and int(copy.max()) == 7
