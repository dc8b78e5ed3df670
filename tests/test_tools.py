"""The tools package: format detection, prompt rendering, tool_choice grammars, and the incremental parser
(a stream cut at every character boundary parses the same as the whole output)."""

from __future__ import annotations

import json

import pytest

from forwardpass.tokenizer import ChatTemplate
from forwardpass.tools import OutputParser, ToolError, plan_tools
from forwardpass.tools.formats import FORMATS, detect_format
from forwardpass.tools.parser import CallSyntax

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
        },
    },
]
HERMES = CallSyntax(start="<tool_call>", end="</tool_call>", bare_json=True)
OUTPUTS = [
    (
        HERMES,
        'Sure, é😀 <b>.\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Pa\\"ris}"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": -2.5e3}}\n</tool_call>',
        "Sure, é😀 <b>.",
        [("get_weather", {"city": 'Pa"ris}'}), ("add", {"a": 1, "b": -2500.0})],
        None,
    ),
    (HERMES, '{"name": "add", "arguments": {"a": 1, "b": 2}}', "", [("add", {"a": 1, "b": 2})], None),
    (
        HERMES,
        '<think>\nmaybe <tool_call> later</think>\n\nok <tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>',
        "ok",
        [("add", {})],
        "maybe <tool_call> later",
    ),
    (HERMES, "a < b and <tool_ca is not a call", "a < b and <tool_ca is not a call", [], None),
    (CallSyntax(envelope=True), '{"content": "Hi \\"you\\" \\u00e9\\ud83d\\ude00\\n"}', 'Hi "you" é😀\n', [], None),
    (
        CallSyntax(envelope=True),
        '{"tool_calls": [{"name": "add", "arguments": {"a": [1, {"x": "]}"}]}}, '
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}]}',
        "",
        [("add", {"a": [1, {"x": "]}"}]}), ("get_weather", {"city": "Oslo"})],
        None,
    ),
    (CallSyntax(envelope=True), "not json at all {", "not json at all {", [], None),
    (
        CallSyntax(start="[TOOL_CALLS]", array=True),
        'x[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}]',
        "x",
        [("add", {"a": 1})],
        None,
    ),
    (
        CallSyntax(start="<|python_tag|>", bare_json=True, args_key="parameters"),
        '{"name": "get_weather", "parameters": {"city": "Rome"}}',
        "",
        [("get_weather", {"city": "Rome"})],
        None,
    ),
]


def run(parser: OutputParser, pieces: list[str]):
    events = [e for p in pieces for e in parser.feed(p)] + parser.finish()
    return events, parser.result()


@pytest.mark.parametrize("syntax, text, content, calls, reasoning", OUTPUTS)
def test_stream_cut_at_every_boundary_parses_the_same(syntax, text, content, calls, reasoning):
    _, whole = run(OutputParser(syntax, reasoning=True), [text])
    assert whole.content == content and whole.reasoning == reasoning
    assert [(c.name, json.loads(c.arguments)) for c in whole.tool_calls] == calls
    for cut in range(len(text) + 1):
        for pieces in ([text[:cut], text[cut:]], list(text) if cut == 0 else [text[:cut], "", text[cut:]]):
            events, out = run(OutputParser(syntax, reasoning=True), pieces)
            assert (out.content, out.reasoning) == (whole.content, whole.reasoning), (cut, pieces[:2])
            assert [(c.name, c.arguments) for c in out.tool_calls] == [(c.name, c.arguments) for c in whole.tool_calls]
            starts = [e for e in events if e.kind == "call_start"]
            # every call's start (id and name) comes before any of its argument pieces
            for e in events:
                if e.kind == "call_args":
                    assert any(s.index == e.index for s in starts[: e.index + 1])


def test_held_back_text_is_released_only_when_decided():
    parser = OutputParser(HERMES)
    assert [e.text for e in parser.feed("Hello <tool")] == ["Hello"]  # "<tool" may open a call
    assert parser.feed("_c") == []
    assert [e.text for e in parser.feed("ar is fine")] == [" <tool_car is fine"]


@pytest.mark.parametrize(
    "source, name",
    [
        ("{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>", "hermes"),
        ("{{ '[TOOL_CALLS]' }}{% if tools %}{% endif %}", "mistral"),
        ('<|start_header_id|>{% if tools %}"parameters"<|python_tag|>{% endif %}', "llama3"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "generic"),
        (None, "generic"),
    ],
)
def test_format_detected_from_the_template(source, name):
    assert detect_format(source).name == name


@pytest.mark.parametrize(
    "tools, choice, param",
    [
        ("x", None, "tools"),
        ([{"type": "function"}], None, "tools"),
        ([{"type": "function", "function": {"name": "bad name!"}}], None, "tools"),
        ([{"type": "function", "function": {"name": "f", "parameters": "nope"}}], None, "tools"),
        ([TOOLS[0], TOOLS[0]], None, "tools"),
        (TOOLS, "sometimes", "tool_choice"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        (None, "required", "tool_choice"),
        (TOOLS, {"function": 3}, "tool_choice"),
    ],
)
def test_bad_tools_name_the_field(tools, choice, param):
    with pytest.raises(ToolError) as info:
        plan_tools(None, tools, choice)
    assert info.value.param == param


def test_generic_format_renders_history_for_any_template():
    """Tools go in a system message; calls become the JSON envelope; results become a user turn."""
    template = ChatTemplate("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}", "", "")
    plan = plan_tools(template.source, TOOLS, "auto")
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    text = plan.render(template, history)
    assert text.startswith("[system]You can call these functions") and '"get_weather"' in text
    assert '[assistant]{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}' in text
    assert "[user]Result of get_weather: sunny" in text
    none = plan_tools(template.source, TOOLS, "none")
    assert "You can call" not in none.render(template, history) and none.constraint() is None


def test_choice_constraints():
    hermes = plan_tools("<tool_call>{{ tools }}", TOOLS, {"type": "function", "function": {"name": "add"}})
    grammar = hermes.constraint().grammar
    assert '"add"' in grammar and "get_weather" not in grammar and "call (" not in grammar  # one call of add
    assert "additionalProperties" in grammar
    auto = plan_tools("<tool_call>{{ tools }}", TOOLS, "auto").constraint().grammar
    assert "head[lazy]" in auto
    generic = plan_tools(None, TOOLS, "required").constraint()
    assert json.loads(generic.json)["required"] == ["tool_calls"]
    assert FORMATS["generic"].constraint([], plan_tools(None, None, None).choice, True) is None
