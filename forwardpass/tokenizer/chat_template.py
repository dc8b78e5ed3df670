"""Chat templates (``tokenizer.chat_template``), rendered like transformers' apply_chat_template, but guarded.

A GGUF file's template is untrusted code. It runs in jinja2's ImmutableSandboxedEnvironment (no dunder
attributes, no mutation of lists/dicts) configured as transformers configures it (trim_blocks, lstrip_blocks,
loopcontrols, a non-escaping ``tojson``, ``raise_exception``, ``strftime_now``), plus resource guards so a
hostile template cannot hang or exhaust the server (docs/reliability.md, template sandbox):

* a deadline (0.9 s by default, so that a render is aborted within 1 s), checked between output chunks,
  inside every loop (each ``for`` iterable is wrapped in a checking iterator at parse time), and on every
  call, attribute and item access;
* an output cap (1 MiB by default), checked between chunks;
* size caps that stop memory bombs before they allocate: ``range`` (100,000 items), results of ``+``/``*``,
  ``**`` exponents, integer arguments of calls and filters, and widths in format strings.

Every failure (syntax, sandbox violation, undefined variable printed, guard tripped, exception raised by the
template) is raised as ChatTemplateError.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ..errors import ChatTemplateError
from .vocab import KEY

MAX_RANGE = 100_000  # items a template's range() may produce
MAX_SIZE = 1_000_000  # items/characters a + or * may produce; largest int argument to a call or filter
MAX_EXPONENT_BITS = 4096
_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar("chat_template_deadline", default=float("inf"))
# a width or precision >= 1,000,000 in a printf-style or str.format format string
_FORMAT_NUMBER = re.compile(r"%[-#0 +]*(?:\d{7,}|\d*\.\d{7,})|\{[^{}]*:[^{}]*\d{7,}[^{}]*\}")


class _TemplateLimitError(SecurityError):
    """A resource guard tripped."""


def _check_deadline() -> None:
    if time.monotonic() > _DEADLINE.get():
        raise _TemplateLimitError("chat template exceeded its time limit")


def _check_format_string(fmt: str) -> None:
    if _FORMAT_NUMBER.search(fmt):
        raise _TemplateLimitError("chat template format string asks for a huge width or precision")


def _check_int_args(args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and abs(arg) > MAX_SIZE:
            raise _TemplateLimitError(f"chat template passed an integer argument above {MAX_SIZE:,}")


def _check_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """No huge integers (widths, counts) and no oversized strings or lists into a call or filter."""
    values = (*args, *kwargs.values())
    _check_int_args(values)
    for arg in values:
        if isinstance(arg, (str, list, tuple)) and len(arg) > MAX_SIZE:
            raise _TemplateLimitError("chat template passed an oversized argument")


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _check_growth(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Bound the str operations whose result can be the product of two input sizes (each already capped):
    replace (matches x replacement), join (separator x items) and indent (lines x indentation)."""
    estimate = 0
    if name == "replace":
        text, old, new = args[0] if args else None, _arg(args, kwargs, 1, "old"), _arg(args, kwargs, 2, "new")
        if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
            matches = text.count(old) if old else len(text) + 1
            estimate = len(text) + matches * max(len(new) - len(old), 0)
    elif name == "join":
        sep, items = _arg(args, kwargs, 0, "d", ""), _arg(args, kwargs, 1, "items")
        if isinstance(sep, str) and hasattr(items, "__len__"):
            estimate = len(sep) * len(items)
    elif name == "indent" and args and isinstance(args[0], str):
        width = _arg(args, kwargs, 1, "width", 4)
        estimate = len(args[0]) + args[0].count("\n") * (len(width) if isinstance(width, str) else int(width))
    if estimate > MAX_SIZE:
        raise _TemplateLimitError(f"chat template {name}() would build an oversized value")


def _guarded_range(*args: int) -> Iterator[int]:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise _TemplateLimitError(f"chat template range() of {len(rng):,} items exceeds {MAX_RANGE:,}")
    return _loop_guard(rng)


def _loop_guard(iterable: Iterable[Any]) -> Iterator[Any]:
    """Wraps every for-loop's iterable: checks the deadline every 256 items (loops that print nothing too)."""
    for i, item in enumerate(iterable):
        if not i & 255:
            _check_deadline()
        yield item


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "fp_loop_guard", [], [], None, None, lineno=loop.lineno)
        return tree

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_deadline()
        _check_args(args, kwargs)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):  # str.replace / str.join called as methods
            _check_growth(getattr(__obj, "__name__", ""), (owner, *args), kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_deadline()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_deadline()
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # fail at once instead of handing back an Undefined that prints as ''
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format_string(value.__self__)
        return wrapped

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_deadline()
        sized = (str, list, tuple)
        if operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            if len(left) + len(right) > MAX_SIZE:
                raise _TemplateLimitError("chat template built an oversized value with +")
        elif operator == "*":
            seq, n = (left, right) if isinstance(left, sized) else (right, left)
            if isinstance(seq, sized) and isinstance(n, int) and len(seq) * n > MAX_SIZE:
                raise _TemplateLimitError("chat template built an oversized value with *")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > MAX_EXPONENT_BITS:
                raise _TemplateLimitError("chat template computed a huge power")
        elif operator == "%" and isinstance(left, str):
            _check_format_string(left)
            _check_int_args(right if isinstance(right, tuple) else (right,))
        return super().call_binop(context, operator, left, right)


class _StrictNameUndefined(jinja2.Undefined):
    """Undefined that fails when an unknown *variable* is printed (``{{ config }}``), but stays lenient for
    missing keys and for tests (``{% if message.tool_calls %}``), as transformers' templates expect."""

    __slots__ = ()

    def __str__(self) -> str:
        if self._undefined_obj is jinja2.utils.missing:
            self._fail_with_undefined_error()
        return ""


class _TemplateNamespace(jinja2.utils.Namespace):
    """transformers' namespace: no underscore attributes (no route to CPython internals), no huge values."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805  (Namespace's signature trick)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name, value in attrs.items():
            _TemplateNamespace._check(name, value)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name, value)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any, value: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot set underscore attributes on a namespace ({name!r})")
        if isinstance(value, (str, list, tuple)) and len(value) > MAX_SIZE:
            raise _TemplateLimitError("chat template stored an oversized value")


class _TemplateDict:
    """transformers' ``dict`` global: callable like dict, without exposing the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # transformers' tojson: no HTML escaping, unlike jinja2's built-in filter
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _guard_filter(f: Callable[..., Any], name: str) -> Callable[..., Any]:
    # jinja2 passes a context/environment first to filters marked with jinja_pass_arg; skip it in checks
    n_leading = 1 if hasattr(f, "jinja_pass_arg") else 0

    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        data = args[n_leading:]
        _check_args(data, kwargs)
        if name == "join" and data:  # the filter takes (items, separator); str.join is separator.join(items)
            _check_growth(name, (_arg(data, kwargs, 1, "d", ""), data[0]), {})
        else:
            _check_growth(name, data, kwargs)
        if name == "format" and data and isinstance(data[0], str):
            _check_format_string(data[0])
        return f(*args, **kwargs)

    if n_leading:  # keep the marker so jinja2 still passes the context/environment
        guarded.jinja_pass_arg = f.jinja_pass_arg  # type: ignore[attr-defined]
    return guarded


def _make_environment() -> _GuardedEnvironment:
    env = _GuardedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols], undefined=_StrictNameUndefined
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(f, name) for name, f in env.filters.items()}
    env.filters["fp_loop_guard"] = _loop_guard
    del env.globals["lipsum"]  # one call can produce megabytes of lorem ipsum; no template needs it
    env.globals.update(
        range=_guarded_range,
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_TemplateNamespace,
    )
    return env


class ChatTemplate:
    """A model's chat template, compiled once and rendered under the guards above.

    ``render(messages, add_generation_prompt=True, tools=None, **extra)`` gives the template the same
    variables as transformers' apply_chat_template: messages, add_generation_prompt, tools, bos_token,
    eos_token and the extra keyword arguments.
    """

    def __init__(
        self, source: str, bos_token: str, eos_token: str, *, timeout_s: float = 0.9, max_output_bytes: int = 1 << 20
    ) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        try:
            self._template = _make_environment().from_string(source)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"invalid chat template: {exc}") from exc
        except (RecursionError, MemoryError) as exc:
            raise ChatTemplateError(f"chat template is too complex to compile: {type(exc).__name__}") from exc

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], **limits: Any) -> ChatTemplate | None:
        """The template in GGUF metadata (``tokenizer.chat_template``), or None when the model has none."""
        source = metadata.get("tokenizer.chat_template")
        if not source:
            return None
        tokens = metadata.get(KEY + "tokens")
        tokens = [] if tokens is None else tokens

        def text_of(key: str) -> str:
            tid = metadata.get(KEY + key)
            return str(tokens[int(tid)]) if tid is not None and 0 <= int(tid) < len(tokens) else ""

        return cls(str(source), text_of("bos_token_id"), text_of("eos_token_id"), **limits)

    def render(
        self, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None, **extra: Any
    ) -> str:
        """The prompt text for ``messages``; raises ChatTemplateError on any failure or guard."""
        context = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
            "messages": messages,
            "tools": tools,
            "add_generation_prompt": add_generation_prompt,
        }
        token = _DEADLINE.set(time.monotonic() + self.timeout_s)
        try:
            return self._render(context)
        except ChatTemplateError:
            raise
        except _TemplateLimitError as exc:
            raise ChatTemplateError(str(exc)) from exc
        except Exception as exc:  # the template is untrusted code: any error it raises is its own failure
            raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
        finally:
            _DEADLINE.reset(token)

    def _render(self, context: dict[str, Any]) -> str:
        chunks: list[str] = []
        size = 0
        for chunk in self._template.generate(**context):
            size += len(chunk.encode("utf-8", "surrogatepass"))
            if size > self.max_output_bytes:
                raise ChatTemplateError(f"chat template output exceeds {self.max_output_bytes:,} bytes")
            _check_deadline()
            chunks.append(chunk)
        return "".join(chunks)
