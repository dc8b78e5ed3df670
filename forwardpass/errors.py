"""The exceptions forwardpass raises: one base class, one subclass per concern."""

from __future__ import annotations


class ForwardpassError(Exception):
    """Base class of every error forwardpass raises on purpose."""


class GGUFError(ForwardpassError, ValueError):
    """A GGUF file is malformed, truncated, or uses something forwardpass cannot read."""


class UnsupportedModelError(ForwardpassError, ValueError):
    """The model's architecture or one of its tensor types is not supported."""


class TokenizerError(ForwardpassError, ValueError):
    """The tokenizer metadata is missing or inconsistent, or text cannot be tokenized."""


class ChatTemplateError(ForwardpassError, ValueError):
    """The chat template is missing, unsafe, or failed to render."""


class ContextLengthError(ForwardpassError, ValueError):
    """A request does not fit in the model's context window."""

    def __init__(self, message: str, *, n_prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(message)
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx


class ModelNotFoundError(ForwardpassError, LookupError):
    """A model name or path does not resolve to a GGUF file."""


class StructuredOutputError(ForwardpassError, ValueError):
    """A JSON schema, regex, choice list or grammar the constraint library cannot take.

    ``field`` names the offending field of ``StructuredOutputsParams`` (``json``, ``regex``, ``choice``,
    ``grammar``, ``json_object``), so that the server can name the request field it came from."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class TensorParallelError(ForwardpassError, RuntimeError):
    """A tensor-parallel rank failed to start or died: the engine cannot run any more (load a new one)."""
