"""Structured output and tools over HTTP on the tiny model (generic tool format): response_format and
structured_outputs outputs validate, tool_choice required / named give valid calls with finish_reason
tool_calls, streamed deltas join into the same calls, and malformed schemas, grammars and tools are 400s
naming the field while the server keeps serving."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from openai import OpenAI
from server_helpers import CHATML, ServerProcess, assert_error, chat_body
from tiny_models import write_tiny_model

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 999}, "tag": {"enum": ["a", "b"]}},
    "required": ["n", "tag"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up",
            "parameters": {
                "type": "object",
                "properties": {"word": {"type": "string", "maxLength": 6}, "lang": {"enum": ["en", "fr"]}},
                "required": ["word", "lang"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "count",
            "parameters": {
                "type": "object",
                "properties": {"k": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["k"],
            },
        },
    },
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The tiny chat model with a context of 1024 tokens: the generic format's tool instructions take ~600."""
    path = write_tiny_model(
        tmp_path_factory.mktemp("structured") / "tiny-1k.gguf", "llama", chat_template=CHATML, context_length=1024
    )
    s = ServerProcess(str(path), "--ctx", "1024", "--max-num-seqs", "4")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def test_json_schema_and_json_object(client):
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "json"}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "obj"}],
        max_tokens=200,
        temperature=0.7,
        seed=3,
        response_format={"type": "json_object"},
    )
    if r.choices[0].finish_reason == "stop":  # a random model may write a long object; valid when complete
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert r.choices[0].message.content.startswith("{")


def test_structured_outputs_on_completions(server):
    r = server.post(
        "/v1/completions",
        json={"prompt": "x", "max_tokens": 20, "temperature": 0, "structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}},
    )
    assert r.status_code == 200 and re.fullmatch("[0-9]{3}-[a-z]{2}", r.json()["choices"][0]["text"])
    r = server.post(
        "/v1/completions",
        json={
            "prompt": "x",
            "max_tokens": 20,
            "temperature": 1.0,
            "n": 3,
            "seed": 1,
            "structured_outputs": {"choice": ["left", "right"]},
        },
    )
    assert all(c["text"] in ("left", "right") for c in r.json()["choices"])


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "count"}}])
def test_tool_choice_gives_valid_calls_streamed_or_not(client, choice):
    kw = dict(
        model="default",
        messages=[{"role": "user", "content": "help"}],
        tools=TOOLS,
        tool_choice=choice,
        temperature=0,
        max_tokens=120,
        parallel_tool_calls=False,
    )
    r = client.chat.completions.create(**kw)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls and not c.message.content
    call = c.message.tool_calls[0]
    assert len(c.message.tool_calls) == 1 and call.type == "function" and call.id.startswith("call_")
    if isinstance(choice, dict):
        assert call.function.name == "count"
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(**kw, stream=True):
        delta = chunk.choices[0].delta
        assert not delta.content
        for tc in delta.tool_calls or []:
            if tc.index not in calls:  # the first delta of a call carries its id and name
                assert tc.id and tc.function.name
                calls[tc.index] = {"name": tc.function.name, "arguments": ""}
            calls[tc.index]["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls.values()) == [{"name": call.function.name, "arguments": call.function.arguments}]


def test_none_gives_text_and_history_renders(client):
    history = [
        {"role": "user", "content": "look up cat"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"word": "cat", "lang": "en"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a small animal"},
    ]
    r = client.chat.completions.create(
        model="default", messages=history, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=8
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    assert isinstance(r.choices[0].message.content, str)


@pytest.mark.parametrize(
    "extra, param",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": 5}}},
                    },
                }
            },
            "response_format",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(?<=a)b"}},
                }
            },
            "response_format",
        ),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": "json"}, "response_format"),
        ({"structured_outputs": {"grammar": "start: nothing_here"}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "(a", "choice": ["a"]}}, "structured_outputs"),
        ({"structured_outputs": {"json": "{bad"}}, "structured_outputs"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"type": "string", "pattern": 5}}},
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools"),
        ({"tools": "f"}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"function": 3}]}]}, "messages"),
    ],
)
def test_malformed_constraints_and_tools_are_400s_naming_the_field(server, extra, param):
    for stream in (False, True):
        r = server.post("/v1/chat/completions", json={**chat_body("x", max_tokens=4), **extra, "stream": stream})
        assert_error(r, 400, "invalid_request_error", param)
    r = server.post("/v1/completions", json={"prompt": "x", "max_tokens": 4})
    assert r.status_code == 200
