"""The `forwardpass` command, run as a user would: a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import write_tiny_model

from forwardpass import registry


def forwardpass(
    *args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forwardpass.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("cli") / "tiny.gguf", "llama"))


def test_run_streams_and_prints_timings(tiny_path):
    r = forwardpass("run", tiny_path, "the cat", "-n", "12", "--temperature", "0", "--ignore-eos")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert "prompt:" in r.stderr and "tok/s" in r.stderr and "first token" in r.stderr
    assert "generated: 12 tokens" in r.stderr


@pytest.mark.slow
def test_run_reads_the_prompt_from_stdin(tiny_path):
    a = forwardpass("run", tiny_path, "-", "-n", "6", "--temperature", "0", stdin="the cat")
    b = forwardpass("run", tiny_path, "the cat", "-n", "6", "--temperature", "0")
    assert a.returncode == 0 and a.stdout == b.stdout


@pytest.mark.slow  # three processes; test_config.py checks the same options in-process
def test_bad_input_gives_a_clear_error(tiny_path, tmp_path):
    r = forwardpass("run", tiny_path, "x", "--temperature", "-1")
    assert r.returncode != 0 and "temperature" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    r = forwardpass("run", str(bad), "x")
    assert r.returncode != 0 and "error:" in r.stderr and "Traceback" not in r.stderr
    r = forwardpass("run", "no-such-model.gguf", "x")
    assert r.returncode != 0 and "no such model" in r.stderr


@pytest.mark.slow
def test_chat_keeps_history_and_clears(tiny_path):
    # the tiny model has no chat template: chat must say so clearly
    r = forwardpass("chat", tiny_path, stdin="hi\n/exit\n")
    assert r.returncode != 0 and "no chat template" in r.stderr


def test_inspect_and_list(tiny_path, tmp_path):
    r = forwardpass("inspect", tiny_path)
    assert r.returncode == 0 and "general.architecture: 'llama'" in r.stdout and "Q4_K" in r.stdout
    r = forwardpass("list", env={"FORWARDPASS_HOME": str(tmp_path)})
    assert r.returncode == 0 and "not pulled yet" in r.stdout


@pytest.mark.slow
def test_run_default_model_offline(smollm2_path):
    # after the first pull, `run` needs no network: make any pip call fail loudly
    env = {
        "FORWARDPASS_HOME": str(Path(smollm2_path).parent.parent),
        "PIP_INDEX_URL": "http://127.0.0.1:9/none",
        "PIP_NO_INDEX": "1",
    }
    r = forwardpass("run", "Say hello.", "-n", "8", "--temperature", "0", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "generated: 8 tokens" in r.stderr
    r = forwardpass("chat", stdin="Hi!\n/clear\nWhat is 2+2?\n/exit\n", env={**env}, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "(conversation cleared)" in r.stderr


@pytest.mark.slow
def test_pull_is_atomic_and_idempotent(tmp_path, monkeypatch, smollm2_path):
    monkeypatch.setenv("FORWARDPASS_HOME", str(tmp_path))

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry.pull("smollm2-135m-instruct", progress=interrupt)
    models = tmp_path / "models"
    assert list(models.iterdir()) == []  # no half file, no temporary folder left
    path = registry.pull("smollm2-135m-instruct", progress=lambda d, t: None)
    assert path.stat().st_size == registry.MODELS["smollm2-135m-instruct"].size
    mtime = path.stat().st_mtime_ns

    def no_network(*a, **k):
        raise AssertionError("a second pull must not download")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert registry.pull("smollm2-135m-instruct") == path and path.stat().st_mtime_ns == mtime
    assert [name for name, _, _ in registry.list_cached()] == ["smollm2-135m-instruct"]
