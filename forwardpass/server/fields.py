"""Validators for single request fields: each returns a typed value or raises a 400 naming the field.

``null`` counts as "not given" for every optional field, as OpenAI treats it. Booleans are never accepted
as numbers, numbers must be finite, and every message quotes the value through ``short_repr``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import APIError, invalid, short_repr
from .jsonbody import json_type

T = TypeVar("T")

MAX_STOP = 4  # OpenAI's limit
MAX_STOP_CHARS = 1000
MAX_LOGIT_BIAS = 1024
LOGIT_BIAS_LIMIT = 100.0
MAX_INT_FIELD = 2**63 - 1


def _wrong_type(name: str, kind: str, value: Any) -> APIError:
    """The 400 for a field `name` that is not `kind` (e.g. "a number")."""
    return invalid(f"{name} must be {kind}, got {json_type(value)} {short_repr(value)}", name)


def number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(name, "a number", value)
    value = float(value)
    low_ok = value > lo if lo_open else value >= lo
    if not (math.isfinite(value) and low_ok and value <= hi):
        low = "greater than" if lo_open else "at least"
        raise invalid(f"{name} must be {low} {lo:g} and at most {hi:g}, got {short_repr(value)}", name)
    return value


def integer(body: Mapping[str, Any], name: str, default: T, lo: int, hi: int = MAX_INT_FIELD) -> int | T:
    """An integer in ``[lo, hi]``; floats such as 1.5 are refused (2.0 too: OpenAI's fields are integers)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(name, "an integer", value)
    if not lo <= value <= hi:
        raise invalid(f"{name} must be between {lo} and {hi}, got {short_repr(value)}", name)
    return value


def boolean(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _wrong_type(name, "a boolean", value)
    return value


def string(body: Mapping[str, Any], name: str, max_chars: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    if len(value) > max_chars:
        raise invalid(f"{name} must be at most {max_chars} characters, got {len(value)}", name)
    return value


def obj(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong_type(name, "an object", value)
    return value


def array(value: Any, name: str, what: str = "", max_items: int | None = None, required: bool = False) -> list[Any]:
    """A JSON array (``what`` names its items in the message); ``null`` is ``[]`` unless ``required``, when it and
    an empty array are refused."""
    if value is None:
        if required:
            raise invalid(f"{name} is required", name)
        return []
    if not isinstance(value, list):
        raise invalid(f"{name} must be an array{' of ' + what if what else ''}, got {json_type(value)}", name)
    if required and not value:
        raise invalid(f"{name} must not be empty", name)
    if max_items is not None and len(value) > max_items:
        raise invalid(f"{name} may hold at most {max_items} {what or 'items'}, got {len(value)}", name)
    return value


def prompts(body: Mapping[str, Any], name: str, vocab_size: int, max_items: int) -> list[str | list[int]]:
    """A completions ``prompt`` or an embeddings ``input``: a string, a list of token ids, a list of strings, or a
    list of token-id lists; never empty, strings non-empty, ids in the vocabulary."""
    value = body.get(name)
    if value is None:
        raise invalid(f"{name} is required", name)
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise invalid(
            f"{name} must be a string, an array of strings or an array of token ids, got {json_type(value)}", name
        )
    array(items, name, f"{name}s", max_items, required=True)
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise invalid(f"{name}[{i}] must not be an empty string", name)
        elif isinstance(item, list):
            token_ids(item, name, vocab_size)
        else:
            raise invalid(f"{name} items must be strings or token id lists, got {short_repr(item)}", name)
    return items


def stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    """``stop``: a string or up to 4 non-empty strings of at most 1000 characters."""
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise invalid(f"stop must be a string or a list of strings, got {json_type(value)}", "stop")
    if len(items) > MAX_STOP:
        raise invalid(f"stop may hold at most {MAX_STOP} strings, got {len(items)}", "stop")
    for item in items:
        if not isinstance(item, str) or not item:
            raise invalid(f"stop must hold non-empty strings, got {short_repr(item)}", "stop")
        if len(item) > MAX_STOP_CHARS:
            raise invalid(f"each stop string must be at most {MAX_STOP_CHARS} characters, got {len(item)}", "stop")
    return tuple(items)


def logit_bias(body: Mapping[str, Any], vocab_size: int) -> dict[int, float] | None:
    """``logit_bias``: {"token id": bias}; ids must be in the vocabulary, biases are clamped to +-100."""
    value = obj(body, "logit_bias")
    if value is None:
        return None
    if len(value) > MAX_LOGIT_BIAS:
        raise invalid(f"logit_bias may hold at most {MAX_LOGIT_BIAS} entries, got {len(value)}", "logit_bias")
    out: dict[int, float] = {}
    for key, bias in value.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 12):
            raise invalid(f"logit_bias keys must be token ids (decimal integers), got {short_repr(key)}", "logit_bias")
        token = int(key)
        if token >= vocab_size:
            raise invalid(f"logit_bias: token id {token} is out of vocabulary (0..{vocab_size - 1})", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise invalid(f"logit_bias values must be finite numbers, got {short_repr(bias)}", "logit_bias")
        out[token] = min(max(float(bias), -LOGIT_BIAS_LIMIT), LOGIT_BIAS_LIMIT)
    return out


def token_ids(value: list[Any], name: str, vocab_size: int) -> list[int]:
    """A non-empty list of in-vocabulary token ids."""
    if not value:
        raise invalid(f"{name} must not be empty", name)
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int):
            raise invalid(f"{name}: token ids must be integers, got {short_repr(t)}", name)
        if not 0 <= t < vocab_size:
            raise invalid(f"{name}: token id {short_repr(t)} is out of vocabulary (0..{vocab_size - 1})", name)
    return value
