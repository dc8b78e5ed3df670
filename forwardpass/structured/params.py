"""``StructuredOutputsParams``: what a request's output must match (vLLM's shape), validated and normalized.

Exactly one of ``json`` (a JSON schema, as a dict or its text), ``json_object`` (any JSON object), ``regex``,
``choice`` (one of these strings) or ``grammar`` (llguidance's Lark syntax; llama.cpp's GBNF is converted) is
given. ``grammar_source()`` turns it into the llguidance grammar that ``compiler.GrammarCompiler`` compiles.

Schemas are tightened where they leave a small model room to loop (``tightened``), as llama.cpp's schema
converter does: objects that list their ``properties`` and say nothing of others get no others, and numbers
without bounds get at most 16 integral digits (|x| <= 1e15). Every output still validates against the schema
as given; the model just cannot pad a document with invented keys or digits until it runs out of tokens.

JSON is compact by default: the separators are fixed at ``", "`` and ``": "`` (what ``json.dumps`` and most
training data use) and no other whitespace is allowed, so a small model cannot loop on blank lines. A schema
may override that with llguidance's top-level ``"x-guidance"`` options.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StructuredOutputError

# llguidance's JSON options applied to every schema unless the schema's own "x-guidance" says otherwise.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_SOURCE_CHARS = 1 << 20  # a schema, regex or grammar larger than this is refused before compiling
MAX_CHOICES = 4096
FIELDS = ("json", "json_object", "regex", "choice", "grammar")


_OPEN_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "$ref")


NUMBER_LIMIT = 10**15


def tightened(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists ``properties`` and has no
    keyword that could admit or merge in others (``allOf``, ``$ref``, pattern or unevaluated properties), and
    +-1e15 bounds on integers and numbers that have none."""
    if isinstance(schema, list):
        return [tightened(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("items", "anyOf", "oneOf", "prefixItems", "not", "additionalItems"):
        if key in schema:
            out[key] = tightened(schema[key])
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {k: tightened(v) for k, v in schema[key].items()}
    if isinstance(schema.get("properties"), dict) and not any(k in schema for k in _OPEN_KEYS):
        out["additionalProperties"] = False
    if schema.get("type") in ("integer", "number"):
        if "minimum" not in schema and "exclusiveMinimum" not in schema:
            out["minimum"] = -NUMBER_LIMIT
        if "maximum" not in schema and "exclusiveMaximum" not in schema:
            out["maximum"] = NUMBER_LIMIT
    return out


def _fail(field: str, message: str) -> StructuredOutputError:
    return StructuredOutputError(f"structured_outputs.{field}: {message}", field=field)


def _normalize_schema(schema: Any) -> str:
    """A schema dict or JSON text -> canonical JSON text of an object or a boolean schema."""
    if isinstance(schema, str):
        if len(schema) > MAX_SOURCE_CHARS:
            raise _fail("json", f"the schema is larger than {MAX_SOURCE_CHARS} characters")
        try:
            schema = json.loads(schema)
        except (ValueError, RecursionError) as e:
            raise _fail("json", f"not valid JSON: {str(e)[:200]}") from None
    if not isinstance(schema, (dict, bool)):
        raise _fail("json", f"a JSON schema must be an object, got {type(schema).__name__}")
    try:
        text = json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as e:
        raise _fail("json", f"the schema cannot be serialized as JSON: {str(e)[:200]}") from None
    if len(text) > MAX_SOURCE_CHARS:
        raise _fail("json", f"the schema is larger than {MAX_SOURCE_CHARS} characters")
    return text


@dataclass(frozen=True)
class StructuredOutputsParams:
    """One structural constraint on a request's output; see the module docstring."""

    json: dict | str | bool | None = None
    json_object: bool = False
    regex: str | None = None
    choice: Sequence[str] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [f for f in FIELDS if (getattr(self, f) not in (None, False))]
        if len(given) != 1:
            what = "none" if not given else ", ".join(given)
            raise _fail(given[1] if len(given) > 1 else "json", f"give exactly one of {', '.join(FIELDS)}; got {what}")
        if not isinstance(self.json_object, bool):
            raise _fail("json_object", f"must be a bool, got {self.json_object!r}")
        if self.json is not None:
            object.__setattr__(self, "json", _normalize_schema(self.json))
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_SOURCE_CHARS):
                raise _fail(name, f"must be a non-empty string of at most {MAX_SOURCE_CHARS} characters")
        if self.choice is not None:
            choice = self.choice
            if (
                isinstance(choice, str)
                or not isinstance(choice, Sequence)
                or not choice
                or len(choice) > MAX_CHOICES
                or not all(isinstance(c, str) and c for c in choice)
            ):
                raise _fail("choice", f"must be a list of 1 to {MAX_CHOICES} non-empty strings")
            object.__setattr__(self, "choice", tuple(choice))

    @property
    def kind(self) -> str:
        """Which field is set: json, json_object, regex, choice or grammar."""
        return next(f for f in FIELDS if getattr(self, f) not in (None, False))

    @property
    def key(self) -> tuple[str, str]:
        """A hashable identity of the constraint (the compiler's cache key)."""
        kind = self.kind
        value = getattr(self, kind)
        return kind, json.dumps(value) if kind == "choice" else str(value)

    def grammar_source(self) -> str:
        """The llguidance grammar (its JSON form) for this constraint (a schema's grammar is checked, not compiled
        for a tokenizer)."""
        import llguidance

        kind = self.kind
        if kind in ("json", "json_object"):
            text: str = self.json if kind == "json" else '{"type": "object"}'  # type: ignore[assignment]
            schema = tightened(json.loads(text))
            strict = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
            if "Unknown format" not in llguidance.LLMatcher.validate_grammar(strict):
                return strict
            # JSON Schema makes an unknown "format" an annotation: any string. llguidance's lenient mode ignores
            # it, and other unsupported keywords too, which would let an output fail the schema: taken only
            # when every warning is an unknown format.
            lenient = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={**JSON_OPTIONS, "lenient": True})
            failed, warnings = llguidance.LLMatcher.validate_grammar_with_warnings(lenient)
            if not failed and all(w.startswith("Unknown format") for w in warnings):
                return lenient
            return strict
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.regex)  # type: ignore[arg-type]
        if kind == "choice":
            return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in self.choice))  # type: ignore[union-attr]
        try:  # Lark as it is; GBNF (llama.cpp's grammars) is converted to Lark
            return llguidance.grammar_from("grammar", self.grammar)  # type: ignore[arg-type]
        except ValueError as e:
            raise _fail("grammar", str(e)[:300]) from None
