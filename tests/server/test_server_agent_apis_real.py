"""The Responses, Messages and embeddings APIs on the real default model (SmolLM2-135M-Instruct) through the
official `openai` and `anthropic` clients: streamed text equals the whole at temperature 0, and embeddings rank a
paraphrase above an unrelated sentence."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import jsonschema
import pytest
import torch
from openai import OpenAI
from server_helpers import ServerProcess

pytestmark = pytest.mark.slow

# (sentence, its paraphrase, an unrelated sentence)
TRIPLES = [
    ("The cat is sleeping on the sofa.", "A cat naps on the couch.", "The stock market fell sharply today."),
    (
        "How do I reset my password?",
        "What are the steps to change my login password?",
        "The recipe needs two cups of flour.",
    ),
    (
        "It is raining heavily outside.",
        "There is a lot of rain falling outdoors.",
        "She plays the violin in an orchestra.",
    ),
    (
        "The train to Paris leaves at noon.",
        "The Paris train departs at twelve o'clock.",
        "Photosynthesis converts light into chemical energy.",
    ),
    ("He bought a new car yesterday.", "Yesterday he purchased a new automobile.", "The museum is closed on Mondays."),
]


@pytest.fixture(scope="module")
def real_server(smollm2_path) -> Iterator[ServerProcess]:
    s = ServerProcess(smollm2_path, "--threads", "2", "--ctx", "2048")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oai(real_server) -> OpenAI:
    return OpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_responses_plain_and_streamed(oai):
    kw = dict(
        model="default",
        input="What is the capital of France?",
        instructions="Answer in one sentence.",
        max_output_tokens=40,
        temperature=0,
    )
    whole = oai.responses.create(**kw)
    assert whole.status in ("completed", "incomplete") and "Paris" in whole.output_text
    events = list(oai.responses.create(stream=True, **kw))
    assert events[0].type == "response.created" and events[-1].type == f"response.{whole.status}"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    follow = oai.responses.create(
        model="default", input="And of Germany?", previous_response_id=whole.id, max_output_tokens=40, temperature=0
    )
    assert "Berlin" in follow.output_text


def test_embeddings_rank_paraphrases_first(oai):
    sentences = [s for triple in TRIPLES for s in triple]
    r = oai.embeddings.create(model="default", input=sentences)
    vecs = torch.tensor([d.embedding for d in r.data])
    assert vecs.shape == (len(sentences), 576)  # SmolLM2-135M's width
    assert torch.allclose(vecs.norm(dim=1), torch.ones(len(sentences)), atol=1e-4)
    for i in range(len(TRIPLES)):
        a, para, other = vecs[3 * i : 3 * i + 3]
        assert a @ para > a @ other, TRIPLES[i]


def test_messages_plain_streamed_and_counted(real_server):
    client = anthropic.Anthropic(base_url=real_server.url, api_key="x", max_retries=0, timeout=120)
    kw = dict(
        model="default",
        max_tokens=40,
        system="Answer in one sentence.",
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    whole = client.messages.create(**kw)
    assert "Paris" in whole.content[0].text and whole.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(**kw) as stream:
        assert "".join(stream.text_stream) == whole.content[0].text
        assert stream.get_final_message().stop_reason == whole.stop_reason
    counted = client.messages.count_tokens(model="default", system=kw["system"], messages=kw["messages"])
    assert counted.input_tokens == whole.usage.input_tokens + whole.usage.cache_read_input_tokens


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
QUESTION = "What is the weather in Paris?"


def test_responses_required_tool_and_json_schema(oai):
    tool = {"type": "function", "name": "get_weather", "description": "The weather of a city", "parameters": WEATHER}
    kw = dict(
        model="default",
        input=QUESTION,
        tools=[tool],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=60,
        temperature=0,
    )
    r = oai.responses.create(**kw)
    calls = [o for o in r.output if o.type == "function_call"]
    assert r.status == "completed" and len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
    events = list(oai.responses.create(stream=True, **kw))
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == calls[0].arguments
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == calls[0].arguments
    answer = oai.responses.create(
        model="default",
        previous_response_id=r.id,
        tools=[tool],
        tool_choice="none",
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"}],
        max_output_tokens=40,
        temperature=0,
    )
    fresh = oai.responses.create(model="default", input=QUESTION, tools=[tool], tool_choice="none", max_output_tokens=1)
    assert answer.status in ("completed", "incomplete") and answer.output_text
    assert answer.usage.input_tokens > fresh.usage.input_tokens  # the call and its result are in the prompt
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    doc = oai.responses.create(
        model="default",
        input="Give a JSON object with a number a",
        temperature=0,
        text={"format": {"type": "json_schema", "name": "doc", "schema": schema}},
        max_output_tokens=30,
    )
    jsonschema.validate(json.loads(doc.output_text), schema)


def test_messages_tool_use_and_tool_result(real_server):
    client = anthropic.Anthropic(base_url=real_server.url, api_key="x", max_retries=0, timeout=120)
    tools = [{"name": "get_weather", "description": "The weather of a city", "input_schema": WEATHER}]
    user = [{"role": "user", "content": QUESTION}]
    kw = dict(
        model="default",
        max_tokens=60,
        messages=user,
        tools=tools,
        extra_body={"temperature": 0},
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    m = client.messages.create(**kw)
    assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["tool_use"]
    jsonschema.validate(m.content[0].input, WEATHER)
    with client.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == m.content[0].input
    call = m.content[0]
    reply = client.messages.create(
        model="default",
        max_tokens=40,
        tools=tools,
        tool_choice={"type": "none"},
        extra_body={"temperature": 0},
        messages=[
            *user,
            {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}]},
        ],
    )
    assert reply.stop_reason in ("end_turn", "max_tokens") and reply.content[0].type == "text"
    assert reply.content[0].text
    assert (
        client.messages.count_tokens(model="default", messages=user, tools=tools).input_tokens
        > client.messages.count_tokens(model="default", messages=user).input_tokens
    )
