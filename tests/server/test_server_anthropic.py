"""POST /v1/messages and /v1/messages/count_tokens through the official `anthropic` client and raw HTTP: the
message shape, the event stream joined to the non-streamed text, stop reasons, prefill, max_tokens capped to the
context, x-api-key auth, and every malformed field answered in Anthropic's error shape with the right status."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from server_helpers import API_KEY, N_CTX

T0 = {"temperature": 0}  # this client version has no sampling arguments of its own
USER = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def assert_anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    assert body["error"]["message"] and "Traceback" not in r.text
    return body["error"]["message"]


def test_message_shape(client):
    m = client.messages.create(model="tiny-chat", max_tokens=10, messages=USER, system="Be brief.", extra_body=T0)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_") and m.model == "tiny-chat"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text
    assert m.stop_reason == "max_tokens" and m.stop_sequence is None
    assert m.usage.output_tokens == 10 and m.usage.input_tokens + m.usage.cache_read_input_tokens > 5
    counted = client.messages.count_tokens(model="tiny-chat", messages=USER, system="Be brief.")
    assert counted.input_tokens == m.usage.input_tokens + m.usage.cache_read_input_tokens


def test_stream_joins_to_the_whole_message(client, server):
    kw = dict(
        model="default", max_tokens=16, messages=USER, system=[{"type": "text", "text": "Be brief."}], extra_body=T0
    )
    whole = client.messages.create(**kw)
    with client.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 16
    events = []
    raw = {k: v for k, v in kw.items() if k != "extra_body"} | T0 | {"stream": True}
    with httpx.stream("POST", server.url + "/v1/messages", json=raw) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
    n = events.count("content_block_delta")
    assert events == ["message_start", "ping", "content_block_start"] + ["content_block_delta"] * n + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_stop_sequence_and_prefill(client, server):
    whole = client.messages.create(model="default", max_tokens=24, messages=USER, extra_body=T0).content[0].text
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    m = client.messages.create(model="default", max_tokens=24, messages=USER, stop_sequences=[stop], extra_body=T0)
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert whole.startswith(m.content[0].text) and stop not in m.content[0].text
    prefill = whole[:5]
    continued = client.messages.create(
        model="default", max_tokens=8, extra_body=T0, messages=[*USER, {"role": "assistant", "content": prefill}]
    )
    # the prompt ends with the prefill after the generation prompt; the reply carries only the new text
    with_prefill = client.messages.count_tokens(
        model="default", messages=[*USER, {"role": "assistant", "content": prefill}]
    )
    without = client.messages.count_tokens(model="default", messages=USER)
    n_prefill = len(server.post("/tokenize", json={"content": prefill}).json()["tokens"])
    assert with_prefill.input_tokens == without.input_tokens + n_prefill
    assert continued.usage.input_tokens + continued.usage.cache_read_input_tokens == with_prefill.input_tokens
    assert continued.content[0].text and not continued.content[0].text.startswith(prefill)


def test_max_tokens_is_capped_to_the_context(server):
    r = server.post(
        "/v1/messages", json={"model": "default", "max_tokens": 10**6, "messages": USER, "temperature": 1, "top_k": 40}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    used = body["usage"]
    assert used["input_tokens"] + used["cache_read_input_tokens"] + used["output_tokens"] <= N_CTX
    assert body["stop_reason"] in ("max_tokens", "end_turn")
    too_long = {"model": "default", "max_tokens": 5, "messages": [{"role": "user", "content": "word " * N_CTX}]}
    assert "context" in assert_anthropic_error(server.post("/v1/messages", json=too_long), 400, "invalid_request_error")


def test_keys_in_x_api_key_or_bearer(auth_server):
    ok = anthropic.Anthropic(base_url=auth_server.url, api_key=API_KEY, max_retries=0)
    assert ok.messages.create(model="default", max_tokens=2, messages=USER).content
    assert ok.messages.count_tokens(model="default", messages=USER).input_tokens > 0
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=auth_server.url, api_key="wrong", max_retries=0).messages.create(
            model="default", max_tokens=2, messages=USER
        )
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=auth_server.url, api_key=API_KEY.upper(), max_retries=0).messages.count_tokens(
            model="default", messages=USER
        )
    bearer = auth_server.post(
        "/v1/messages",
        json={"model": "default", "max_tokens": 2, "messages": USER},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert bearer.status_code == 200
    chat = auth_server.post(
        "/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, headers={"x-api-key": API_KEY}
    )
    assert chat.status_code == 200  # the OpenAI routes take x-api-key too
    assert_anthropic_error(auth_server.post("/v1/messages", json={}), 401, "authentication_error")


OK = {"model": "default", "max_tokens": 4, "messages": USER}
BAD = [
    {"max_tokens": None},
    {"max_tokens": 0},
    {"max_tokens": "4"},
    {"max_tokens": 1.5},
    {"max_tokens": 2**40},
    {"model": None},
    {"model": 5},
    {"messages": None},
    {"messages": []},
    {"messages": "hi"},
    {"messages": [5]},
    {"messages": [{"role": "system", "content": "x"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
    {"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
    {"messages": [{"role": "assistant", "content": "only a prefill"}]},
    {"system": 5},
    {"system": [{"type": "image"}]},
    {"temperature": 1.5},
    {"temperature": "hot"},
    {"top_p": 0},
    {"top_k": -1},
    {"top_k": 1.5},
    {"stop_sequences": "x"},
    {"stop_sequences": [5]},
    {"stop_sequences": [""]},
    {"tools": "f"},
    {"tools": [{"name": "f"}]},
    {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    {"tool_choice": "auto"},
    {"tool_choice": {"type": "bogus"}},
    {"tool_choice": {"type": "tool"}},
    {"stream": "yes"},
    {"output_config": {"format": {"type": "xml"}}},
    {"metadata": {"user_id": 5}},
]


@pytest.mark.parametrize("change", BAD, ids=[str(b)[:60] for b in BAD])
def test_malformed_fields_are_anthropic_400s(server, change):
    body = {k: v for k, v in {**OK, **change}.items() if v is not None}
    assert_anthropic_error(server.post("/v1/messages", json=body), 400, "invalid_request_error")
    if "max_tokens" not in change:  # count_tokens takes the same fields but max_tokens
        body.pop("max_tokens", None)
        assert_anthropic_error(server.post("/v1/messages/count_tokens", json=body), 400, "invalid_request_error")


def test_bad_bodies_routes_and_sizes(server):
    for raw in (b'{"model": "x"', b"[]", b"null", b"123", b"\xff\xfe"):
        assert_anthropic_error(server.post("/v1/messages", content=raw), 400, "invalid_request_error")
    assert_anthropic_error(server.post("/v1/messages", json={**OK, "model": "claude-x"}), 404, "not_found_error")
    assert_anthropic_error(server.get("/v1/messages"), 405, "invalid_request_error")
    big = (
        b'{"model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": "' + b"x" * (3 << 20) + b'"}]}'
    )
    assert_anthropic_error(server.post("/v1/messages", content=big), 413, "request_too_large")
    assert server.post("/v1/chat/completions", content=b"[]").json()["error"]["type"] == "invalid_request_error"


def test_stream_disconnect_frees_the_engine(server):
    body = {**OK, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if "content_block_delta" in line:
                break
    server.assert_idle(timeout=2)
