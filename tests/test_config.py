"""`EngineConfig`: one validated set of engine options for `LLM`, the server, `bench` and the CLIs."""

from __future__ import annotations

import argparse

import pytest

from forwardpass.config import EngineConfig, add_engine_args
from forwardpass.server.config import ServerConfig


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"threads": 0}, "threads"),
        ({"threads": True}, "threads"),
        ({"ctx": 1}, "ctx"),
        ({"ctx": 2.5}, "ctx"),
        ({"kv_tokens": 0}, "kv_tokens"),
        ({"kv_memory": -1}, "kv_memory"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_num_batched_tokens": 1.5}, "max_num_batched_tokens"),
        ({"device": "tpu"}, "device"),
        ({"cpu": "sse2"}, "cpu"),
        ({"reference": 1}, "reference"),
        ({"enable_prefix_caching": "no"}, "enable_prefix"),
        ({"kv_tokens": 64, "kv_memory": 1 << 20}, "not both"),
    ],
)
def test_a_bad_option_names_its_field(kw, field):
    with pytest.raises(ValueError, match=field):
        EngineConfig(**kw)


def test_every_command_parses_the_same_options_into_one_config():
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    assert EngineConfig.from_args(parser.parse_args([])) == EngineConfig()
    args = parser.parse_args(
        [
            "-t",
            "2",
            "--ctx",
            "128",
            "--kv-memory",
            "2M",
            "--max-num-seqs",
            "8",
            "--max-num-batched-tokens",
            "32",
            "--no-prefix-caching",
            "--cpu",
            "torch",
            "--reference",
        ]
    )
    config = EngineConfig.from_args(args, model="m.gguf")
    assert config == EngineConfig(
        model="m.gguf",
        threads=2,
        ctx=128,
        kv_memory=2 << 20,
        max_num_seqs=8,
        max_num_batched_tokens=32,
        enable_prefix_caching=False,
        cpu="torch",
        reference=True,
    )
    with pytest.raises(SystemExit):  # argparse: one KV budget at most
        parser.parse_args(["--kv-tokens", "64", "--kv-memory", "2M"])


def test_serve_builds_its_engine_config_from_the_shared_flags():
    from forwardpass.cli import build_parser

    args = build_parser().parse_args(["serve", "m.gguf", "--max-num-seqs", "4", "--port", "0", "--ctx", "64"])
    engine = EngineConfig.from_args(args)
    assert engine == EngineConfig(model="m.gguf", max_num_seqs=4, ctx=64)
    assert ServerConfig(engine=engine, port=0).model_name == "m"
    bench = build_parser().parse_args(["bench", "--kv-tokens", "99"])
    assert EngineConfig.from_args(bench).kv_tokens == 99


def test_llm_takes_keywords_or_a_config(tmp_path):
    from tiny_models import write_tiny_model

    from forwardpass import LLM

    path = str(write_tiny_model(tmp_path / "m.gguf", "llama"))
    a = LLM(path, ctx=64, max_num_seqs=3, cpu="torch")
    b = LLM(config=EngineConfig(model=path, ctx=64, max_num_seqs=3, cpu="torch"))
    assert a.engine_config == b.engine_config and a.ctx == b.ctx == 64
    assert a.engine.scheduler.config.max_num_seqs == 3
    with pytest.raises(TypeError, match="max_seqs"):
        LLM(path, max_seqs=3)
    with pytest.raises(ValueError, match="ctx must be"):
        LLM(path, ctx=100_000)  # beyond the model's context: checked at load
