"""What a request must satisfy before it can run: the model's context and vocabulary, and a constraint that
compiles. The engine runs these checks, and so does a server front that holds no weights (`ray/front.py`)."""

from __future__ import annotations

from ..errors import ContextLengthError
from ..sampling import SamplingParams
from ..structured.compiler import GrammarCompiler
from ..tokenizer import Tokenizer


class RequestChecks:
    """The checks for a model of `vocab_size` tokens and a context of `ctx`; `grammars` compiles constraints."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, ctx: int) -> None:
        self.vocab_size, self.ctx = vocab_size, ctx
        self.grammars = GrammarCompiler(tokenizer, vocab_size)

    def check(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise `ContextLengthError` or `ValueError` if the request can never run (no compiling)."""
        n_prompt = len(prompt_token_ids)
        if n_prompt == 0:
            raise ValueError("the prompt must contain at least one token")
        if n_prompt >= self.ctx:
            raise ContextLengthError(
                f"the prompt has {n_prompt} tokens but the context holds {self.ctx}, and at least one token "
                f"must be generated",
                n_prompt_tokens=n_prompt,
                n_ctx=self.ctx,
            )
        self._check_ids(prompt_token_ids, "prompt")
        params.verify_vocab(self.vocab_size)

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """`check`, then compile a structured-output constraint in the caller's thread (`StructuredOutputError`
        if it cannot be), so the engine loop later finds it in the compiler's cache."""
        self.check(prompt_token_ids, params)
        if params.structured_outputs is not None:
            self.grammars.compile(params.structured_outputs)

    def validate_embed(self, prompt_token_ids: list[int]) -> None:
        """Raise `ContextLengthError` or `ValueError` if an embedding input can never run."""
        n_prompt = len(prompt_token_ids)
        if n_prompt == 0:
            raise ValueError("an embedding input must contain at least one token")
        if n_prompt > self.ctx:
            raise ContextLengthError(
                f"the input has {n_prompt} tokens but the model's context holds {self.ctx} tokens",
                n_prompt_tokens=n_prompt,
                n_ctx=self.ctx,
            )
        self._check_ids(prompt_token_ids, "input")

    def _check_ids(self, ids: list[int], field: str) -> None:
        vocab = self.vocab_size
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                raise ValueError(f"{field}: token id {t!r} is out of vocabulary (0..{vocab - 1})")
