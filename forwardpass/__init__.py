"""forwardpass: an LLM inference engine in Python."""
from .errors import (
    ChatTemplateError,
    ContextLengthError,
    ForwardpassError,
    GGUFError,
    ModelNotFoundError,
    TokenizerError,
    UnsupportedModelError,
)
from .llm import LLM

__all__ = [
    "LLM",
    "ChatTemplateError",
    "ContextLengthError",
    "ForwardpassError",
    "GGUFError",
    "ModelNotFoundError",
    "TokenizerError",
    "UnsupportedModelError",
]
__version__ = "0.1.0"
