"""Acceptance on the real models through the official openai client: SmolLM2 (its template has no tools: the
generic format) and Qwen2.5-Coder-0.5B (its own <tool_call> format). required and named tool_choice give valid
calls of declared tools with validating arguments and finish_reason tool_calls; streamed deltas join into the
same calls; none gives text; a tool result sent back gets an answer; json_object and json_schema validate."""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai import OpenAI
from server_helpers import ServerProcess

from forwardpass import registry

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
ADD = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
}


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def client(request):
    server = ServerProcess(registry.resolve_model(request.param), "--ctx", "4096", "--threads", "2")
    yield request.param, OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)
    server.stop()


def create(client: OpenAI, **kw):
    return client.chat.completions.create(**{"model": "default", "temperature": 0, "max_tokens": 120, **kw})


def check_calls(calls, names: set[str]) -> list[tuple[str, str]]:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return [(c.function.name, c.function.arguments) for c in calls]


def streamed_calls(client: OpenAI, **kw) -> tuple[list[tuple[str, str]], str | None, str]:
    calls: dict[int, list[str]] = {}
    content, finish = "", None
    for chunk in create(client, **kw, stream=True):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            if tc.index not in calls:
                assert tc.id and tc.function.name, "id and name come first"
                calls[tc.index] = [tc.function.name, ""]
            calls[tc.index][1] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return [tuple(calls[i]) for i in sorted(calls)], finish, content


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_required_and_named_calls_streamed_and_not(client, choice):
    _, c = client
    kw = dict(messages=ASK, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False)
    r = create(c, **kw)
    assert r.choices[0].finish_reason == "tool_calls"
    names = {"get_weather"} if isinstance(choice, dict) else set(SCHEMAS)
    calls = check_calls(r.choices[0].message.tool_calls, names)
    streamed, finish, content = streamed_calls(c, **kw)
    assert finish == "tool_calls" and streamed == calls and not content


def test_none_gives_text(client):
    _, c = client
    r = create(c, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=40)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content.strip()


def test_tool_result_gets_an_answer(client):
    _, c = client
    first = create(c, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    r = create(c, messages=history, tools=TOOLS, tool_choice="none", max_tokens=60)
    answer = r.choices[0].message.content
    assert r.choices[0].message.tool_calls is None and answer.strip()


def test_json_object_and_json_schema(client):
    _, c = client
    ask = [{"role": "user", "content": "Describe a person (name, age, city) as a JSON object."}]
    r = create(
        c,
        messages=ask,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    r = create(c, messages=ask, response_format={"type": "json_object"}, max_tokens=200)
    assert r.choices[0].finish_reason == "stop" and isinstance(json.loads(r.choices[0].message.content), dict)
