"""Chat templates: transformers-identical rendering, and a sandbox that hostile templates cannot escape or stall
(docs/reliability.md, template sandbox)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forwardpass.errors import ChatTemplateError
from forwardpass.gguf.reader import GGUFFile
from forwardpass.tokenizer import ChatTemplate

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the GPU..."},
        {"role": "user", "content": "Another one, with émojis 😀 and 中文."},
    ],
    [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c\n\nd"},
        {"role": "assistant", "content": "e"},
    ],
]


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2_path: str) -> dict:
    return GGUFFile(smollm2_path).metadata


@pytest.fixture(scope="module")
def smollm2_template(smollm2_metadata: dict) -> ChatTemplate:
    template = ChatTemplate.from_metadata(smollm2_metadata)
    assert template is not None
    return template


@pytest.mark.slow
def test_smollm2_renders_chatml(smollm2_template: ChatTemplate) -> None:
    """A hand-written expectation, so this runs without transformers."""
    assert (smollm2_template.bos_token, smollm2_template.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert smollm2_template.render(CONVERSATIONS[0]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    assert smollm2_template.render(CONVERSATIONS[1], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    )


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_path: str):  # noqa: ANN201  (a transformers tokenizer)
    transformers = pytest.importorskip("transformers")
    path = Path(smollm2_path)
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.slow
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_matches_transformers(
    hf_tokenizer, smollm2_template: ChatTemplate, conversation: list[dict], add_generation_prompt: bool
) -> None:
    want = hf_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert smollm2_template.render(conversation, add_generation_prompt=add_generation_prompt) == want


@pytest.mark.slow
def test_no_template_gives_none(gemma3_path: str) -> None:
    assert ChatTemplate.from_metadata(GGUFFile(gemma3_path).metadata) is None


def test_transformers_environment_features() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{{ m | tojson }}\n{% endfor %}{{ tools | tojson }}{{ extra_flag }}"
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"
        "{{ strftime_now('%Y') | length }}{{ dict(a=1) | tojson }}"
    )
    out = ChatTemplate(source, "<s>", "</s>").render(
        [{"role": "user", "content": "café <b>"}, {"role": "user", "content": "x"}, {"role": "user"}],
        tools=[{"name": "f"}],
        extra_flag="!",
    )
    assert out == (
        '<s>{"role": "user", "content": "café <b>"}\n{"role": "user", "content": "x"}\n[{"name": "f"}]!34{"a": 1}'
    )


def test_template_errors_become_chat_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="invalid chat template"):
        ChatTemplate("{% for m in messages %}", "", "")
    with pytest.raises(ChatTemplateError, match="no system messages"):
        ChatTemplate("{{ raise_exception('no system messages') }}", "", "").render([])
    # missing keys stay lenient, as in transformers' templates
    assert ChatTemplate("{{ messages[0].name }}|{% if tools %}t{% endif %}", "", "").render([{}]) == "|"


MALICIOUS = {
    "mro_subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler_popen": "{{ cycler.__init__.__globals__.os.popen('touch pwned_marker') }}",
    "self_globals": "{{ self.__init__.__globals__ }}",
    "lipsum_globals": "{{ lipsum.__globals__['os'].popen('touch pwned_marker') }}",
    "joiner_globals": "{{ joiner.__init__.__globals__ }}",
    "config": "{{ config }}",
    "request": "{{ request }}",
    "mutate_messages": "{{ messages.append({'role': 'x'}) }}",
    "namespace_dunder": "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "range_1e8": "{% for i in range(10**8) %}x{% endfor %}",
    "range_99999_squared": "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
    "nested_no_output": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "nested_strings": "{% for a in 'x' * 99999 %}{% for b in 'y' * 99999 %}{% endfor %}{% endfor %}",
    "string_bomb": "{{ 'x' * 10**9 }}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "power": "{{ 7 ** (10 ** 9) }}",
    "center": "{{ 'x' | center(10**9) }}",
    "format_width": "{{ '%999999999d' | format(1) }}",
    "str_format_width": "{{ '{:999999999}'.format(1) }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "replace_bomb": "{{ ('a' * 100000) | replace('a', 'b' * 100000) }}",
    "join_bomb": "{{ ('y' * 100000).join('x' * 100000) }}",
    "indent_bomb": "{{ ('\\n' * 100000) | indent(100000) }}",
    "lipsum": "{{ lipsum(100000) }}",
}


@pytest.mark.parametrize("source", MALICIOUS.values(), ids=MALICIOUS.keys())
def test_malicious_templates_fail_fast_and_run_nothing(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ChatTemplateError):  # aborted (by the sandbox, an output cap or the render deadline)
        ChatTemplate(source, "<s>", "</s>").render([{"role": "user", "content": "hi"}])
    assert not os.path.exists(tmp_path / "pwned_marker")


@pytest.mark.slow
def test_legitimate_large_conversation_still_renders(smollm2_template: ChatTemplate) -> None:
    conversation = [{"role": "user" if i % 2 else "assistant", "content": f"message {i} " * 20} for i in range(2000)]
    out = smollm2_template.render(conversation)
    assert out.count("<|im_start|>") == 2002 and len(out) < 1 << 20
