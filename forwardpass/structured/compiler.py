"""Grammar compilation off the engine loop, with a cache.

``GrammarCompiler.compile`` (blocking: validation in a request's own thread) and ``GrammarCompiler.future``
(non-blocking: the engine loop) share one cache of futures keyed by the constraint, so a schema is compiled
once however many requests use it, and a request whose grammar is still compiling waits without holding up
the others. Compilation runs in a small thread pool (llguidance releases the GIL while it builds a lexer).
Each sequence gets its own matcher: a deep copy of the compiled one (microseconds).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import StructuredOutputError
from ..tokenizer import Tokenizer
from .lltokenizer import build_lltokenizer
from .params import StructuredOutputsParams

logger = logging.getLogger(__name__)

MAX_CACHED = 128


def parser_limits() -> Any:
    """llguidance's resource limits: its defaults, with error messages that do not echo the parser state."""
    import llguidance

    return llguidance.LLParserLimits(verbose_errors=False)


class CompiledGrammar:
    """A compiled constraint: a matcher in its initial state, copied for every sequence that uses it."""

    def __init__(self, params: StructuredOutputsParams, matcher: Any) -> None:
        self.params = params
        self._matcher = matcher
        self._lock = threading.Lock()  # deep_copy from the engine thread and from validation threads

    def new_matcher(self) -> Any:
        with self._lock:
            return self._matcher.deep_copy()


class GrammarCompiler:
    """Compiles ``StructuredOutputsParams`` for one tokenizer; thread-safe."""

    def __init__(
        self, tokenizer: Tokenizer, vocab_size: int, *, workers: int = 1, max_cached: int = MAX_CACHED
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_cached = max_cached
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="forwardpass-grammar")
        self._cache: OrderedDict[tuple[str, str], Future[CompiledGrammar]] = OrderedDict()
        self._lock = threading.Lock()
        self._lltokenizer: Any = None
        self._tok_lock = threading.Lock()

    @property
    def lltokenizer(self) -> Any:
        """The llguidance tokenizer, built on first use (a fraction of a second for a 150k vocabulary)."""
        with self._tok_lock:
            if self._lltokenizer is None:
                self._lltokenizer = build_lltokenizer(self.tokenizer, self.vocab_size)
            return self._lltokenizer

    def future(self, params: StructuredOutputsParams) -> Future[CompiledGrammar]:
        """The compiled grammar, now or later; a failure is a ``StructuredOutputError`` in the future."""
        key = params.key
        with self._lock:
            fut = self._cache.get(key)
            if fut is not None:
                self._cache.move_to_end(key)
                return fut
            fut = self._pool.submit(self._compile, params)
            self._cache[key] = fut
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
            return fut

    def compile(self, params: StructuredOutputsParams) -> CompiledGrammar:
        """Compile (or find) ``params``' grammar, waiting for it; raises ``StructuredOutputError``."""
        return self.future(params).result()

    def _compile(self, params: StructuredOutputsParams) -> CompiledGrammar:
        import llguidance

        field = "json" if params.kind == "json_object" else params.kind
        try:
            source = params.grammar_source()
        except StructuredOutputError:
            raise
        except (ValueError, TypeError) as e:
            raise StructuredOutputError(f"structured_outputs.{field}: {str(e)[:300]}", field=field) from None
        matcher = llguidance.LLMatcher(self.lltokenizer, source, log_level=0, limits=parser_limits())
        if matcher.is_error():
            raise StructuredOutputError(f"structured_outputs.{field}: {_first_line(matcher.get_error())}", field=field)
        logger.debug("compiled a %s constraint", params.kind)
        return CompiledGrammar(params, matcher)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _first_line(message: str, limit: int = 300) -> str:
    """llguidance's errors can quote the whole grammar; keep the part that says what is wrong."""
    text = " ".join(line.strip() for line in message.strip().splitlines()[:4] if line.strip())
    return text[:limit]
