"""Fixtures of the server tests: the tiny chat model, a shared server, one with API keys, and a factory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server_helpers import API_KEY, CHATML, ServerProcess
from tiny_models import write_tiny_model


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("server") / "tiny-chat.gguf", "llama", chat_template=CHATML))


@pytest.fixture(scope="session")
def server(tiny_chat_model) -> Iterator[ServerProcess]:
    """The shared server: no API key, 8 running sequences, a queue deep enough for the load tests."""
    s = ServerProcess(tiny_chat_model, "--max-num-seqs", "8", "--max-queue", "256")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def auth_server(tiny_chat_model) -> Iterator[ServerProcess]:
    s = ServerProcess(tiny_chat_model, "--api-key", API_KEY, "--api-key", "second-key")
    s.auth_headers = {"Authorization": f"Bearer {API_KEY}"}
    yield s
    s.stop()


@pytest.fixture
def make_server(tiny_chat_model) -> Iterator:
    """Start servers with extra arguments for one test; all are killed at teardown."""
    started: list[ServerProcess] = []

    def make(*args: str, model: str | None = None, **kw) -> ServerProcess:
        s = ServerProcess(model or tiny_chat_model, *args, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
