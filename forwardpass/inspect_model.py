"""`forwardpass inspect`: what a GGUF file holds, without loading its weights."""

from __future__ import annotations

import os
from collections import Counter

import gguf

from .gguf.reader import GGUFFile

_LONG = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores", "tokenizer.ggml.merges")


def _type_name(t: int) -> str:
    try:
        return gguf.GGMLQuantizationType(t).name
    except ValueError:
        return str(t)


def describe(path: str) -> str:
    with GGUFFile(path) as f:
        lines = [f"file: {path}", f"size: {os.path.getsize(path) / 1e6:.1f} MB, GGUF v{f.version}", "", "metadata:"]
        for key, value in f.metadata.items():
            if key in _LONG:
                lines.append(f"  {key}: [{len(value)} entries]")
            elif key == "tokenizer.chat_template":
                lines.append(f"  {key}: ({len(value)} characters)")
            else:
                text = repr(value.tolist() if hasattr(value, "tolist") else value)
                lines.append(f"  {key}: {text[:100]}{'...' if len(text) > 100 else ''}")
        params = sum(t.n_elements for t in f.tensors.values())
        types = Counter(_type_name(t.ggml_type) for t in f.tensors.values())
        lines += [
            "",
            f"tensors: {len(f.tensors)}, parameters: {params / 1e6:.1f} M",
            "types: " + ", ".join(f"{name} x{n}" for name, n in types.most_common()),
        ]
    return "\n".join(lines)
