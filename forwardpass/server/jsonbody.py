"""Request bodies to Python objects, safely: strict UTF-8, no NaN/Infinity, bounded nesting and integers.

Every failure becomes a 400 ``APIError``: a truncated document, a body that is not UTF-8, a JSON value that is
not an object, a 100k-deep nesting (``RecursionError``) or a million-digit integer (``ValueError`` from
CPython's int-digits limit). ``NaN`` and ``Infinity`` parse, so that the field validators (which accept only
finite numbers) can refuse them naming the field. Lone surrogates (``"\\ud800"``) are replaced by U+FFFD so that nothing
downstream fails to encode them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import invalid

MAX_DEPTH = 64  # JSON nesting allowed in a request (messages with content parts need about 5)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def _clean(value: Any) -> Any:
    """Replace lone surrogates in every string and check the depth, without recursion."""
    root = [value]
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        container, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise invalid(f"the request body is nested deeper than {MAX_DEPTH} levels")
        if isinstance(container, dict):
            if any(isinstance(k, str) and _SURROGATE.search(k) for k in container):
                items = [(_scrub(k), v) for k, v in container.items()]
                container.clear()
                container.update(items)
            keys: Any = list(container.keys())
        else:
            keys = range(len(container))
        for key in keys:
            item = container[key]
            if isinstance(item, str):
                container[key] = _scrub(item)
            elif isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
    return root[0]


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a dict, or a 400 ``APIError`` saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"the request body is not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise invalid("the request body is empty; send a JSON object")
    try:
        value = json.loads(text)
    except RecursionError:
        raise invalid("the request body is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise invalid(f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # an integer beyond CPython's digit limit
        raise invalid(f"the request body is not valid JSON: {str(e)[:120]}") from None
    if not isinstance(value, dict):
        raise invalid(f"the request body must be a JSON object, not {json_type(value)}")
    return _clean(value)
