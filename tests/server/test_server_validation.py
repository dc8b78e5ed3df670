"""docs/reliability.md, Validation and Context and length: every bad request is a 4xx in OpenAI's error shape,
never a 500 or a traceback; opt-in prompt truncation reports what it kept."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from server_helpers import N_CTX, assert_error, chat_body

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def post_raw(server, path: str, raw: bytes) -> httpx.Response:
    return server.post(path, content=raw, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m","messages":',
        b"[]",
        b"null",
        b"123",
        b'"x"',
        b"",
        b"{",
        b'{"messages": [{"role":"user","content":"\xff\xfe"}]}',
    ],
)
def test_malformed_bodies_are_400(server, raw):
    """Malformed body: truncated JSON, non-object bodies, invalid UTF-8."""
    assert_error(post_raw(server, CHAT, raw), 400, "invalid_request_error")


@pytest.mark.parametrize(
    "messages",
    [
        "missing",
        "str",
        [123],
        [{}],
        [{"role": 123}],
        [{"role": "user", "content": 123}],
        [{"role": "wizard", "content": "x"}],
        [{"role": "user", "content": [{"type": "image_url"}]}],
        [],
    ],
)
def test_bad_messages(server, messages):
    """Malformed messages, `messages: []` included."""
    body = {"model": "default"} if messages == "missing" else {"messages": messages}
    assert_error(server.post(CHAT, json=body), 400, "invalid_request_error", "messages")


def test_lone_surrogate_is_replaced(server):
    """Lone surrogate: "\\ud800" in content -> 200 (U+FFFD substituted), no crash."""
    raw = b'{"messages":[{"role":"user","content":"hi \\ud800 there"}],"max_tokens":2}'
    assert post_raw(server, CHAT, raw).status_code == 200


BAD_FIELDS = [
    ("temperature", -1),
    ("temperature", 2.5),
    ("temperature", "hot"),
    ("temperature", True),
    ("top_p", 0),
    ("top_p", -0.1),
    ("top_p", 1.5),
    ("top_k", -2),
    ("top_k", 1.5),
    ("min_p", 1.5),
    ("n", 0),
    ("n", 10**9),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_tokens", 10**12),
    ("max_tokens", "a"),
    ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", ""),
    ("stop", "x" * 10_000),
    ("stop", [1]),
    ("logit_bias", {"abc": 1}),
    ("logit_bias", {"99999999": 1}),
    ("logit_bias", {"5": "x"}),
    ("logit_bias", [1]),
    ("presence_penalty", 3),
    ("frequency_penalty", -2.5),
    ("repetition_penalty", 0),
    ("seed", 1.5),
    ("ignore_eos", "yes"),
    ("stream", "yes"),
    ("model", 5),
    ("user", 5),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={str(v)[:20]}" for f, v in BAD_FIELDS])
def test_bad_sampling_fields(server, field, value):
    """Sampling fields: 400 naming the field, on both endpoints."""
    assert_error(server.post(CHAT, json=chat_body(**{field: value})), 400, "invalid_request_error", field)
    assert_error(server.post(COMPLETIONS, json={"prompt": "hi", field: value}), 400, "invalid_request_error", field)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(server, constant):
    """Sampling fields: non-finite numbers never reach the sampler."""
    raw = ('{"messages":[{"role":"user","content":"x"}],"temperature":%s}' % constant).encode()
    assert_error(post_raw(server, CHAT, raw), 400, "invalid_request_error", "temperature")


@pytest.mark.parametrize(
    "field,value",
    [
        ("top_p", 1.0),
        ("top_k", 0),
        ("top_k", -1),
        ("min_p", 0.5),
        ("logit_bias", {"5": 1e9}),
        ("temperature", 0),
        ("stop", ["a", "b"]),
    ],
)
def test_valid_edge_values(server, field, value):
    """Sampling fields: top_p 1.0 is accepted, top_k 0/-1 disable, a huge bias is clamped."""
    assert server.post(CHAT, json=chat_body(max_tokens=2, **{field: value})).status_code == 200


def test_n_is_checked_fast_and_needs_sampling(server):
    """N is bounded: n=10^9 is refused before anything is allocated; n>1 at temperature 0 is refused."""
    assert_error(server.post(CHAT, json=chat_body(n=10**9)), 400, param="n")
    assert_error(server.post(CHAT, json=chat_body(n=2, temperature=0)), 400, param="n")


def test_logprob_limits(server):
    """Logprob limits: top_logprobs 21 (chat) and logprobs 1000 (completions) -> 400."""
    assert_error(server.post(CHAT, json=chat_body(logprobs=True, top_logprobs=21)), 400, param="top_logprobs")
    assert_error(server.post(COMPLETIONS, json={"prompt": "x", "logprobs": 1000}), 400, param="logprobs")
    assert_error(server.post(CHAT, json=chat_body(top_logprobs=2)), 400, param="top_logprobs")


@pytest.mark.parametrize("prompt", [[999999], [-1], [1, 2, "x"], "", [], [""], [[]], 5, [{"a": 1}]])
def test_bad_prompts(server, prompt):
    """Prompt ids and empty prompts: out-of-vocabulary ids, empty prompts."""
    err = assert_error(server.post(COMPLETIONS, json={"prompt": prompt}), 400, "invalid_request_error", "prompt")
    if prompt in ([999999], [-1]):
        assert "out of vocabulary" in err["message"]


@pytest.mark.parametrize(
    "field,value",
    [
        ("response_format", "json"),
        ("response_format", {"type": 5}),
        ("response_format", {"type": "json_schema"}),
        ("tools", "x"),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"pattern": 5}}}]),
    ],
)
def test_unsupported_or_malformed_features(server, field, value):
    """Malformed constraints: malformed response_format/tools -> 400 (and features we lack are refused, not ignored)."""
    assert_error(server.post(CHAT, json=chat_body(**{field: value})), 400, "invalid_request_error", field)


def test_many_invalid_items_give_a_small_error(server):
    """Small error bodies: 10,000 invalid items -> 400 with a body of at most 4 KiB."""
    for body in (
        chat_body() | {"messages": [123] * 10_000},
        chat_body(logit_bias={f"x{i}": 1 for i in range(1000)}),
        {"prompt": [[-1] * 10_000]},
    ):
        r = server.post(CHAT if "messages" in body else COMPLETIONS, json=body)
        assert_error(r, 400)
        assert len(r.content) <= 4096


def test_deep_nesting_and_huge_integers(server):
    """Deep nesting: JSON nested 100k deep and a 10^6-digit integer -> 400."""
    for raw in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"messages": ' + b"[" * 100_000,
        b'{"max_tokens": 1' + b"0" * 1_000_000 + b"}",
    ):
        assert_error(post_raw(server, CHAT, raw), 400, "invalid_request_error")


@pytest.mark.parametrize("model", ["nope", "../../etc/passwd", "/abs/path.gguf", "file:///etc/passwd"])
def test_unknown_model_is_404(server, model):
    """Unknown model: 404 model_not_found; a path-like name is just an unknown name (no file access)."""
    assert_error(server.post(CHAT, json=chat_body() | {"model": model}), 404, code="model_not_found", param="model")
    assert_error(server.post(COMPLETIONS, json={"prompt": "x", "model": model}), 404, code="model_not_found")


def test_unknown_fields_are_ignored_and_model_names_accepted(server):
    """Unknown model: unknown extra fields are ignored; `model` may be the served name, "default", or omitted."""
    for extra in ({"model": "tiny-chat", "frobnicate": {"x": [1]}}, {"model": "default"}, {}):
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **extra}
        assert server.post(CHAT, json=body).status_code == 200


# ---- context and length ----
def _context_error(r: httpx.Response, n_prompt: int | None) -> None:
    err = assert_error(r, 400, "invalid_request_error", code="context_length_exceeded")
    assert err["n_ctx"] == N_CTX and str(N_CTX) in err["message"]
    if n_prompt is not None:
        assert err["n_prompt_tokens"] == n_prompt and str(n_prompt) in err["message"]
    else:
        assert err["n_prompt_tokens"] > N_CTX


def test_prompt_longer_than_context(server):
    """Prompt over the context: non-streaming -> 400 context_length_exceeded with n_prompt_tokens and n_ctx."""
    _context_error(server.post(COMPLETIONS, json={"prompt": [10] * 300}), 300)
    _context_error(server.post(CHAT, json=chat_body("word " * 400)), None)


def test_prompt_longer_than_context_streaming(server):
    """Prompt over the context: with stream=true the 400 comes before any SSE byte."""
    for path, body in ((COMPLETIONS, {"prompt": [10] * 300}), (CHAT, chat_body("word " * 400))):
        r = server.post(path, json=body | {"stream": True})
        assert r.headers["content-type"].startswith("application/json") and not r.text.startswith("data:")
        _context_error(r, 300 if path == COMPLETIONS else None)


def test_max_tokens_and_context(server):
    """Max_tokens and the context: explicit max_tokens past the context -> 400; omitted -> capped, finish_reason
    length."""
    _context_error(server.post(COMPLETIONS, json={"prompt": [10] * 200, "max_tokens": 100}), 200)
    r = server.post(COMPLETIONS, json={"prompt": [10] * 200, "ignore_eos": True, "temperature": 0}).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == N_CTX - 200


def test_prompt_of_context_minus_one(server):
    """Max_tokens and the context: n_ctx - 1 prompt tokens -> 200 with exactly one token and `length`."""
    r = server.post(COMPLETIONS, json={"prompt": [10] * (N_CTX - 1), "ignore_eos": True}).json()
    assert r["usage"]["completion_tokens"] == 1 and r["choices"][0]["finish_reason"] == "length"


def test_huge_prompt_is_413_and_health_stays_fast(server):
    """Huge prompt: a 3 MiB prompt -> 413 before tokenization, while /health keeps answering."""
    results = {}

    def big() -> None:
        body = json.dumps({"prompt": "x" * (3 << 20)}).encode()
        results["r"] = post_raw(server, COMPLETIONS, body)

    thread = threading.Thread(target=big)
    thread.start()
    answered = 0
    with httpx.Client(base_url=server.url) as c:
        while thread.is_alive() or answered < 20:
            assert c.get("/health").status_code == 200
            answered += 1
    thread.join()
    assert_error(results["r"], 413, code="request_too_large")


# ---- context-shift fields: llama.cpp's context-shift fields (validated, then ignored: there is no context shift) ----
BAD_SHIFT = [
    ("n_keep", -2),
    ("n_keep", -(2**63)),
    ("n_keep", N_CTX + 1),
    ("n_keep", 10**12),
    ("n_keep", 1.5),
    ("n_keep", "all"),
    ("n_keep", True),
    ("n_discard", -1),
    ("n_discard", -(2**31)),
    ("n_discard", N_CTX + 1),
    ("n_discard", 10**30),
    ("n_discard", "1"),
]


@pytest.mark.parametrize("field,value", BAD_SHIFT, ids=[f"{f}={str(v)[:20]}" for f, v in BAD_SHIFT])
def test_bad_context_shift_fields(server, field, value):
    """Context-shift fields: n_keep / n_discard negative (n_keep -1 means "all") or beyond the context -> 400 naming the
    field."""
    for path, body in ((CHAT, chat_body()), (COMPLETIONS, {"prompt": "hi"})):
        r = server.post(path, json=body | {field: value, "max_tokens": 2})
        err = assert_error(r, 400, "invalid_request_error", field)
        assert str(N_CTX) in err["message"]


def test_valid_context_shift_fields_are_ignored(server):
    """Context-shift fields: in-range values are accepted and change nothing (same greedy text as without them)."""
    body = {"prompt": "the cat", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    plain = server.post(COMPLETIONS, json=body).json()["choices"][0]["text"]
    for extra in (
        {"n_keep": -1},
        {"n_keep": 0, "n_discard": 0},
        {"n_keep": N_CTX, "n_discard": N_CTX},
        {"n_keep": 4, "n_discard": 16},
    ):
        r = server.post(COMPLETIONS, json=body | extra)
        assert r.status_code == 200, (extra, r.text)
        assert r.json()["choices"][0]["text"] == plain


# ---- opt-in truncation (vLLM's truncate_prompt_tokens: keep the last N tokens) ----
def test_truncation_is_off_by_default(server):
    """Opt-in truncation: without truncate_prompt_tokens an over-long prompt stays a 400 context_length_exceeded."""
    _context_error(server.post(COMPLETIONS, json={"prompt": [10] * 300}), 300)


def test_truncate_prompt_tokens_completions(server):
    """Opt-in truncation: usage.prompt_tokens is the kept count, `truncated: true` is reported, and the kept tokens are
    the last N (same greedy text as sending those N tokens alone)."""
    prompt = [(7 * i) % 300 + 4 for i in range(300)]
    body = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}
    r = server.post(COMPLETIONS, json=body | {"prompt": prompt, "truncate_prompt_tokens": 100})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["truncated"] is True and out["usage"]["prompt_tokens"] == 100
    alone = server.post(COMPLETIONS, json=body | {"prompt": prompt[-100:]}).json()
    assert out["choices"][0]["text"] == alone["choices"][0]["text"] and "truncated" not in alone
    # a prompt already short enough is not cut, and says so
    short = server.post(COMPLETIONS, json=body | {"prompt": prompt[:50], "truncate_prompt_tokens": 100}).json()
    assert short["truncated"] is False and short["usage"]["prompt_tokens"] == 50
    # -1: as many as fit next to max_tokens
    fit = server.post(COMPLETIONS, json=body | {"prompt": prompt, "truncate_prompt_tokens": -1}).json()
    assert fit["truncated"] is True and fit["usage"]["prompt_tokens"] == N_CTX - 8
    # echo shows what was kept
    echo = server.post(
        COMPLETIONS, json=body | {"prompt": "abcdefghij" * 40, "truncate_prompt_tokens": 20, "echo": True}
    ).json()
    assert echo["choices"][0]["text"].startswith("abcdefghij" * 2) and echo["usage"]["prompt_tokens"] == 20


def test_truncate_prompt_tokens_chat_and_stream(server):
    """Opt-in truncation on chat, streamed and not: the usage chunk counts the kept tokens and carries `truncated:
    true`."""
    body = chat_body("word " * 400, max_tokens=4, truncate_prompt_tokens=64)
    r = server.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["truncated"] is True and r.json()["usage"]["prompt_tokens"] == 64
    r = server.post(CHAT, json=body | {"stream": True, "stream_options": {"include_usage": True}})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["usage"]["prompt_tokens"] == 64 and events[-1]["truncated"] is True
    assert any(e["choices"] and e["choices"][0]["finish_reason"] and e["truncated"] is True for e in events)


def test_truncation_still_needs_room_for_max_tokens(server):
    """Opt-in truncation: the kept prompt plus an explicit max_tokens must fit the context; bad values name the
    field."""
    r = server.post(COMPLETIONS, json={"prompt": [10] * 300, "truncate_prompt_tokens": 200, "max_tokens": 100})
    err = assert_error(r, 400, "invalid_request_error", "max_tokens", code="context_length_exceeded")
    assert err["n_prompt_tokens"] == 200
    for value in (0, -2, N_CTX, 10**9, 1.5, "10", True):
        r = server.post(COMPLETIONS, json={"prompt": [10] * 300, "truncate_prompt_tokens": value})
        assert_error(r, 400, "invalid_request_error", "truncate_prompt_tokens")
