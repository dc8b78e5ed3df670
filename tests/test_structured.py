"""Structured output in the engine: masks hold under batching, chunked prefill, n > 1 forks, preemption,
prefix-cache hits, stop strings and max_tokens; bad constraints are clear errors; compiling never stalls others."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
from tiny_models import write_tiny_model

from forwardpass import LLM, SamplingParams, StructuredOutputError, StructuredOutputsParams
from forwardpass.structured.guide import Guide, fill_masks

PROMPTS = [[4 + (i * 7 + j * 3) % 300 for j in range(5 + 9 * i)] for i in range(8)]
SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "s": {"enum": ["x", "yy"]},
        "ok": {"type": "boolean"},
    },
    "required": ["n", "s", "ok"],
    "additionalProperties": False,
}
REGEX = r"[a-c]{3}-[0-9]{2}"
LARK = 'start: "call(" NAME ("," NAME){0,2} ")"\nNAME: /[a-z]{1,4}/'
CHOICE = ["red", "green", "blue"]
CONSTRAINTS = [
    StructuredOutputsParams(json=SCHEMA),
    StructuredOutputsParams(regex=REGEX),
    StructuredOutputsParams(grammar=LARK),
    StructuredOutputsParams(choice=CHOICE),
    None,
]


def check(text: str, so: StructuredOutputsParams | None) -> None:
    """The text satisfies the constraint."""
    if so is None:
        return
    if so.kind == "json":
        jsonschema.validate(json.loads(text), SCHEMA)
        assert "\n" not in text and "  " not in text  # compact: fixed separators only
    elif so.kind == "regex":
        assert re.fullmatch(REGEX, text), text
    elif so.kind == "grammar":
        assert re.fullmatch(r"call\([a-z]{1,4}(,[a-z]{1,4}){0,2}\)", text), text
    else:
        assert text in CHOICE, text


def params(so, **kw) -> SamplingParams:
    return SamplingParams(**{"temperature": 0, "max_tokens": 40, "structured_outputs": so, **kw})


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    """Tile types: the masks do not depend on the kernels, and the native step runs this several times faster than
    the PyTorch layers."""
    return str(write_tiny_model(tmp_path_factory.mktemp("structured") / "llama.gguf", "llama", seed=3, tile_types=True))


@pytest.fixture(scope="module")
def shared_llm(tiny_path) -> LLM:
    return LLM(tiny_path, ctx=256)


@pytest.fixture(scope="module")
def solo(tiny_path) -> list[list[int]]:
    """Each prompt alone, with its constraint (the i-th prompt gets CONSTRAINTS[i % 5])."""
    llm = LLM(tiny_path, ctx=256, enable_prefix_caching=False)
    outs = []
    for i, p in enumerate(PROMPTS):
        out = llm.generate([p], params(CONSTRAINTS[i % 5]))[0]
        if CONSTRAINTS[i % 5] is not None:
            assert out.outputs[0].finish_reason == "stop"
            check(out.text, CONSTRAINTS[i % 5])
        outs.append(out.token_ids)
    return outs


def run_mixed(llm: LLM) -> list[list[int]]:
    engine = llm.engine
    reqs = [engine.add_request(p, params(CONSTRAINTS[i % 5])) for i, p in enumerate(PROMPTS)]
    while engine.has_unfinished():
        engine.step()
    for i, r in enumerate(reqs):
        check(r.completions[0].output.text, CONSTRAINTS[i % 5])
    return [r.completions[0].output.token_ids for r in reqs]


@pytest.mark.parametrize("chunk", [16, 512])
def test_constrained_batch_equals_solo(tiny_path, solo, chunk):
    llm = LLM(tiny_path, ctx=256, max_num_batched_tokens=chunk)
    assert run_mixed(llm) == solo
    assert llm.engine.block_manager.num_used == 0


def test_preemption_and_recompute_keep_matchers_right(tiny_path, solo):
    llm = LLM(tiny_path, ctx=128, kv_tokens=128)  # 8 blocks for 8 sequences: preemption is certain
    assert run_mixed(llm) == solo
    assert llm.engine.scheduler.num_preemptions > 0


def test_prefix_cache_hit_equals_miss(tiny_path, solo):
    llm = LLM(tiny_path, ctx=256)
    llm.generate([PROMPTS[7][:40]], SamplingParams(temperature=0, max_tokens=2))  # caches 2 blocks of prompt 7
    out = llm.generate([PROMPTS[7], PROMPTS[2]], [params(CONSTRAINTS[2])][0])
    assert out[0].num_cached_tokens == 32
    assert out[0].token_ids == solo[7]  # prompt 7 ran with CONSTRAINTS[2] alone too


def test_forks_get_their_own_matchers(tiny_path):
    llm = LLM(tiny_path, ctx=256)
    so = StructuredOutputsParams(regex=REGEX)
    out = llm.generate(
        [PROMPTS[3]], SamplingParams(n=6, temperature=1.5, seed=11, max_tokens=40, structured_outputs=so)
    )[0]
    texts = [o.text for o in out.outputs]
    for text in texts:
        check(text, so)
    assert len(set(texts)) > 1  # independent samples, each valid
    single = llm.generate(
        [PROMPTS[3]], SamplingParams(n=1, temperature=1.5, seed=11, max_tokens=40, structured_outputs=so)
    )[0]
    assert single.text == texts[0]


def test_max_tokens_and_stop_strings_end_constrained_rows(tiny_path):
    llm = LLM(tiny_path, ctx=256)
    so = StructuredOutputsParams(regex=REGEX)
    cut = llm.generate([PROMPTS[1]], params(so, max_tokens=3))[0]
    assert cut.outputs[0].finish_reason == "length" and len(cut.token_ids) == 3
    full = llm.generate([PROMPTS[1]], params(so))[0].text
    assert full.startswith(cut.text)
    stopped = llm.generate([PROMPTS[1]], params(so, stop=["-"]))[0]
    assert stopped.outputs[0].finish_reason == "stop" and stopped.text == full.split("-")[0]


def test_grammar_beats_min_tokens_and_bias(tiny_path):
    """min_tokens bans EOS and a bias bans the only allowed token: the grammar still wins, the output is valid."""
    llm = LLM(tiny_path, ctx=256)
    so = StructuredOutputsParams(choice=["a"])
    a = llm.tokenizer.encode("a")[0]
    out = llm.generate([PROMPTS[0]], params(so, min_tokens=5, logit_bias={a: -100}))[0]
    assert out.text == "a" and out.outputs[0].finish_reason == "stop"


def test_mask_is_exactly_the_grammar(tiny_path):
    """The unpacked batched mask allows a token iff its bytes extend a prefix of an allowed string."""
    llm = LLM(tiny_path, ctx=256)
    grammar = llm.engine.grammars.compile(StructuredOutputsParams(choice=["the cat", "tea"]))
    guides = [Guide(grammar.new_matcher()), Guide(grammar.new_matcher())]
    guides[1].accept(llm.tokenizer.encode("t")[0])
    vocab = llm.vocab_size
    masks = fill_masks(guides, vocab)
    for guide_done, mask in zip(["", "t"], masks):
        expected = set()
        for tid in range(vocab):
            piece = llm.tokenizer.token_to_bytes(tid)
            if (
                piece
                and not llm.tokenizer.is_special(tid)
                and any(s.encode().startswith(guide_done.encode() + piece) for s in ["the cat", "tea"])
            ):
                expected.add(tid)
        assert set(mask.nonzero().flatten().tolist()) == expected
    eos = sorted(llm.tokenizer.eog_ids)
    for t in llm.tokenizer.encode("ea"):
        guides[1].accept(t)
    assert fill_masks(guides[1:], vocab)[0].nonzero().flatten().tolist() == eos  # complete: only EOS


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(json={"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)a"}}}), "json"),
        (dict(json={"type": "string", "pattern": 5}), "json"),
        (dict(json="{not json"), "json"),
        (dict(regex="(unclosed"), "regex"),
        (dict(grammar="start: undefined_rule"), "grammar"),
        (dict(grammar="root ::= [a-"), "grammar"),
        (dict(choice=[]), "choice"),
        (dict(choice="abc"), "choice"),
        (dict(json=SCHEMA, regex="a"), "regex"),
        (dict(), "json"),
    ],
)
def test_bad_constraints_are_errors_naming_the_field(shared_llm, kw, field):
    llm = shared_llm  # one for every case: a refused constraint leaves the LLM as it was
    with pytest.raises(StructuredOutputError) as info:
        llm.generate([PROMPTS[0]], params(StructuredOutputsParams(**kw)))
    assert info.value.field == field and f"structured_outputs.{field}" in str(info.value)
    assert llm.generate([PROMPTS[0]], params(CONSTRAINTS[1]))[0].outputs[0].finish_reason == "stop"


def test_compiling_never_stalls_other_requests(tiny_path, monkeypatch):
    """A grammar still compiling keeps its request out of the batch; the others step on; then it runs."""
    llm = LLM(tiny_path, ctx=256)
    engine = llm.engine
    release = threading.Event()
    compile_ = engine.grammars._compile

    def slow(p):
        release.wait(30)
        return compile_(p)

    monkeypatch.setattr(engine.grammars, "_compile", slow)
    held = engine.add_request(PROMPTS[2], params(StructuredOutputsParams(regex="[a-z]{4}")))
    free = engine.add_request(PROMPTS[3], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    while not free.finished:
        engine.step()
    assert not held.completions[0].output.token_ids
    assert engine.stats().waiting == 1  # the compiling request counts as waiting
    release.set()
    while engine.has_unfinished():
        engine.step()
    assert re.fullmatch("[a-z]{4}", held.completions[0].output.text)
    assert engine.stats().waiting == 0 and engine.block_manager.num_used == 0


def test_unknown_formats_are_annotations_but_unsupported_keywords_are_errors(tiny_path):
    """An unknown "format" constrains nothing (JSON Schema's rule); oneOf, which llguidance can only approximate,
    stays a clear error instead of an output that could fail the schema."""
    llm = LLM(tiny_path, ctx=256)
    schema = {"type": "object", "properties": {"t": {"type": "string", "format": "strict-uri", "maxLength": 3}}}
    schema["required"] = ["t"]
    out = llm.generate([PROMPTS[0]], params(StructuredOutputsParams(json=schema)))[0]
    jsonschema.validate(json.loads(out.text), schema)
    one_of = {"oneOf": [{"type": "integer"}, {"type": "number"}], "format": "strict-uri"}
    with pytest.raises(StructuredOutputError, match="structured_outputs.json: "):
        llm.generate([PROMPTS[0]], params(StructuredOutputsParams(json=one_of)))
