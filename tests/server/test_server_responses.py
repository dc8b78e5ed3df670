"""POST /v1/responses through the official `openai` client and raw HTTP: the response object, the typed event
stream (order, sequence numbers, deltas that join to the non-streamed text), previous_response_id against the
bounded store, retrieve and delete, every malformed field a 400 naming it, and disconnects."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI
from server_helpers import N_CTX, assert_error

from forwardpass.server.responses_api import ResponseStore

TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)


def test_response_object(client):
    r = client.responses.create(
        model="default",
        input="Tell me a story",
        instructions="Be brief.",
        max_output_tokens=12,
        temperature=0,
        metadata={"k": "v"},
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny-chat"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in r.output] == ["message"]
    msg = r.output[0]
    assert msg.role == "assistant" and msg.status == "incomplete" and msg.content[0].type == "output_text"
    assert r.output_text == msg.content[0].text and r.output_text
    assert r.usage.output_tokens == 12 and r.usage.total_tokens == r.usage.input_tokens + 12
    assert r.instructions == "Be brief." and r.metadata == {"k": "v"} and r.max_output_tokens == 12
    assert r.temperature == 0 and r.tools == [] and r.text.format.type == "text"


def test_stream_events_in_order_and_equal_to_the_whole(client):
    kw = dict(
        model="default",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
        max_output_tokens=16,
        temperature=0,
    )
    whole = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    types = [e.type for e in events]
    n_deltas = types.count("response.output_text.delta")
    assert n_deltas >= 1
    assert types == TEXT_EVENTS + ["response.output_text.delta"] * n_deltas + CLOSING + ["response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == events[-4].text
    final = events[-1].response
    assert final.output_text == deltas and final.usage.output_tokens == 16 and final.id == events[0].response.id
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {final.output[0].id}


def test_previous_response_continues_the_conversation(client):
    first = client.responses.create(
        model="default",
        input="Say something",
        max_output_tokens=8,
        temperature=0,
        instructions="Instructions are not carried over",
    )
    second = client.responses.create(
        model="default", input="And then?", previous_response_id=first.id, max_output_tokens=4, temperature=0
    )
    alone = client.responses.create(model="default", input="And then?", max_output_tokens=4, temperature=0)
    assert second.previous_response_id == first.id
    # the history (first input and output) precedes the new input; the first instructions do not
    history = second.usage.input_tokens - alone.usage.input_tokens
    assert first.usage.output_tokens <= history < first.usage.input_tokens + first.usage.output_tokens
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="default", input="x", previous_response_id=first.id)
    assert e.value.code == "previous_response_not_found" and e.value.param == "previous_response_id"
    unstored = client.responses.create(model="default", input="x", max_output_tokens=2, store=False)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="default", input="x", previous_response_id=unstored.id)


def test_store_is_bounded():
    store = ResponseStore(max_entries=3, max_chars=10_000)
    for i in range(5):
        store.put({"id": f"r{i}", "output_text": "x"}, [])
    assert len(store) == 3 and store.get("r0") is None and store.get("r4") is not None
    store.get("r2")  # recently used: survives the next eviction
    store.put({"id": "r5", "output_text": "x"}, [])
    assert store.get("r2") is not None and store.get("r3") is None
    store.put({"id": "big", "output_text": "x" * 6000}, [{"content": "y" * 3900}])
    assert store.get("big") is not None and store.chars <= 10_000 and len(store) < 3
    store.put({"id": "huge", "output_text": "x" * 20_000}, [])
    assert store.get("huge") is None and store.get("big") is not None


BAD = [
    ({}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": 5}, "input"),
    ({"input": [5]}, "input"),
    ({"input": [{"role": "bogus", "content": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": 5}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input"),
    ({"input": [{"type": "web_search_call", "id": "x"}]}, "input"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input"),
    ({"input": "x", "instructions": 5}, "instructions"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": "10"}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": 10**12}, "max_output_tokens"),
    ({"input": "x", "temperature": 2.5}, "temperature"),
    ({"input": "x", "temperature": "hot"}, "temperature"),
    ({"input": "x", "top_p": 0}, "top_p"),
    ({"input": "x", "top_p": 1.5}, "top_p"),
    ({"input": "x", "tools": "f"}, "tools"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"input": "x", "text": 5}, "text"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format"),
    ({"input": "x", "text": {"format": "json"}}, "text.format"),
    ({"input": "x", "stream": "yes"}, "stream"),
    ({"input": "x", "store": "no"}, "store"),
    ({"input": "x", "parallel_tool_calls": 1}, "parallel_tool_calls"),
    ({"input": "x", "previous_response_id": 5}, "previous_response_id"),
    ({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"input": "x", "metadata": {"k": 5}}, "metadata"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "model": 5}, "model"),
]


@pytest.mark.parametrize("body, param", BAD)
def test_malformed_fields_are_400_naming_the_field(server, body, param):
    assert_error(server.post("/v1/responses", json=body), 400, "invalid_request_error", param)


def test_bad_bodies_unknown_model_and_context(server):
    for raw in (b'{"input": "x"', b"[]", b"null", b'"x"', b"\xff\xfe"):
        assert_error(server.post("/v1/responses", content=raw), 400, "invalid_request_error")
    assert_error(
        server.post("/v1/responses", json={"input": "x", "model": "gpt-9"}), 404, param="model", code="model_not_found"
    )
    err = assert_error(
        server.post("/v1/responses", json={"input": "word " * N_CTX}),
        400,
        param="input",
        code="context_length_exceeded",
    )
    assert err["n_ctx"] == N_CTX
    assert_error(
        server.post("/v1/responses", json={"input": "x", "stream": True, "instructions": "word " * N_CTX}),
        400,
        code="context_length_exceeded",
    )
    assert_error(server.get("/v1/responses/resp_missing"), 404)
    assert_error(server.client.delete("/v1/responses/resp_missing"), 404)


def test_stream_disconnect_frees_the_engine(server):
    body = {"input": "go on", "max_output_tokens": 200, "stream": True}
    with httpx.stream("POST", server.url + "/v1/responses", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if "response.output_text.delta" in line:
                break
    server.assert_idle(timeout=2)
