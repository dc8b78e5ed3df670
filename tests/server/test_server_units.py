"""Unit tests of the server's pure parts: body parsing, field validation, SSE encoding, Host parsing, slots,
truncation, config."""

from __future__ import annotations

import argparse
import json

import pytest

from forwardpass.engine.llm_engine import SeqProgress
from forwardpass.server.config import ServerConfig
from forwardpass.server.errors import APIError, short_repr
from forwardpass.server.jsonbody import parse_json_object
from forwardpass.server.openai_routes import truncate_prompts
from forwardpass.server.protocol import Limits, parse_chat_request, parse_completion_request
from forwardpass.server.security import GuardMiddleware, is_loopback
from forwardpass.server.slots import SlotTable, describe
from forwardpass.server.sse import event

LIMITS = Limits(vocab_size=384, n_ctx=256)


def test_surrogates_are_replaced_everywhere():
    body = parse_json_object(b'{"a": ["\\ud800x", {"\\udfff": "ok \\ud83d"}], "b": "\\ud83d\\ude00"}')
    assert body == {"a": ["\ufffdx", {"\ufffd": "ok \ufffd"}], "b": "\U0001f600"}


@pytest.mark.parametrize("raw", [b"\xff", b"[1]", b"", b"  ", b"{" * 200 + b"}" * 200, b'{"a": 1' + b"0" * 5000 + b"}"])
def test_bad_bodies(raw):
    with pytest.raises(APIError) as e:
        parse_json_object(raw)
    assert e.value.status == 400


def test_short_repr_bounds_messages():
    assert len(short_repr("x" * 10_000)) <= 80
    assert short_repr(list(range(1000))) == "<list of 1000 items>"
    assert short_repr(10**5000).startswith("<int")


def test_chat_request_defaults_and_max_tokens_alias():
    req = parse_chat_request(
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "max_completion_tokens": 7,
            "max_tokens": 9,
        },
        LIMITS,
    )
    assert req.messages == [{"role": "user", "content": "ab"}]
    assert req.params.max_tokens == 7 and req.params.temperature == 1.0 and req.params.n == 1
    assert not req.stream and not req.include_usage and req.params.logprobs is None


def test_logprobs_map_to_sampling_params():
    chat = parse_chat_request(
        {
            "messages": [{"role": "user", "content": "a"}],
            "logprobs": True,
            "top_logprobs": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        LIMITS,
    )
    assert chat.params.logprobs == 3 and chat.include_usage
    comp = parse_completion_request({"prompt": [[1, 2], [3]], "logprobs": 0, "logit_bias": {"7": -500}}, LIMITS)
    assert comp.prompts == [[1, 2], [3]] and comp.params.logprobs == 0 and comp.params.logit_bias == {7: -100.0}


def test_event_escapes_unicode_line_breaks():
    """One SSE event is one line for every client, also those splitting like str.splitlines()."""
    raw = event({"text": "a\u2028b\x85c\u2029d\x1ce\n"})
    payload = raw.decode("utf-8")
    assert payload.endswith("\n\n") and len(payload[:-2].splitlines()) == 1
    assert json.loads(payload[6:])["text"] == "a\u2028b\x85c\u2029d\x1ce\n"


@pytest.mark.parametrize(
    "host,name",
    [
        (b"localhost:8080", "localhost"),
        (b"[::1]:80", "[::1]"),
        (b"127.0.0.1", "127.0.0.1"),
        (b"Evil.Example:1", "evil.example"),
        (b"::1", "::1"),
    ],
)
def test_host_names(host, name):
    assert GuardMiddleware._hostname(host) == name


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")


def _seq(rid: str, computed: int = 5) -> SeqProgress:
    return SeqProgress(rid, 10, computed, max(0, computed - 10))


def test_slot_numbers_are_stable():
    """A running sequence keeps its slot; a freed slot is reused lowest first; n > 1 sequences get one each;
    sequences beyond the slot count (forks may exceed max_num_seqs) are left out."""
    table = SlotTable(3)
    assert table.update([]) == [None, None, None]
    a, b = _seq("a"), _seq("b")
    assert table.update([a, b]) == [a, b, None]
    c, b2 = _seq("c"), _seq("b", 12)
    assert table.update([b2, c]) == [c, b2, None]  # b stays in slot 1, c takes the free slot 0
    n1, n2 = _seq("n"), _seq("n")
    assert table.update([b2, c, n1, n2]) == [c, b2, n1]  # the newest sequence does not fit
    slots = describe(table.update([b2]), n_ctx=64)
    assert [s["is_processing"] for s in slots] == [False, True, False]
    assert slots[1] == {
        "id": 1,
        "n_ctx": 64,
        "is_processing": True,
        "id_task": "b",
        "n_prompt_tokens": 10,
        "n_prompt_tokens_processed": 10,
        "n_decoded": 2,
    }


def test_truncate_prompts():
    assert truncate_prompts([[1, 2, 3, 4], [5]], 2, None, 16) == ([[3, 4], [5]], [True, False])
    assert truncate_prompts([list(range(20))], -1, 6, 16) == ([list(range(10, 20))], [True])
    assert truncate_prompts([list(range(20))], -1, None, 16) == ([list(range(5, 20))], [True])


def test_context_shift_and_truncation_fields_parse():
    req = parse_completion_request(
        {"prompt": "x", "n_keep": -1, "n_discard": 256, "truncate_prompt_tokens": 255}, LIMITS
    )
    assert req.truncate_prompt_tokens == 255
    assert parse_chat_request({"messages": [{"role": "user", "content": "a"}]}, LIMITS).truncate_prompt_tokens is None
    for field, value in (
        ("n_keep", -2),
        ("n_discard", 257),
        ("truncate_prompt_tokens", 256),
        ("truncate_prompt_tokens", 0),
    ):
        with pytest.raises(APIError) as e:
            parse_completion_request({"prompt": "x", field: value}, LIMITS)
        assert e.value.status == 400 and e.value.param == field


@pytest.mark.parametrize(
    "kw",
    [
        {"queue_timeout": -1},
        {"queue_timeout": float("nan")},
        {"queue_timeout": True},
        {"port": 70000},
        {"engine": {"max_num_seqs": 8}},
    ],
)
def test_bad_server_config(kw):
    with pytest.raises(ValueError):
        ServerConfig(**kw)


def test_kv_memory_sizes_parse():
    from forwardpass.config import memory_size as _memory_size

    assert _memory_size("512M") == 512 << 20 and _memory_size("2G") == 2 << 30
    assert _memory_size("1.5GiB") == 3 << 29 and _memory_size("800MB") == 800 << 20 and _memory_size("4096") == 4096
    for bad in ("", "G", "abc", "0", "-1G"):
        with pytest.raises(argparse.ArgumentTypeError):
            _memory_size(bad)
