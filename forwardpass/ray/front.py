"""The ingress's view of the model: everything the server reads of an `LLM` but its weights.

The ingress tokenizes, renders chat templates, checks limits and compiles constraints itself, so replicas only run
the engine; it reads the GGUF's metadata (memory-mapped, no tensor is touched).
"""

from __future__ import annotations

from ..config import EngineConfig
from ..engine.checks import RequestChecks
from ..engine.pooling import pooling_from_metadata
from ..gguf.reader import GGUFFile
from ..llm import LLM
from ..models.registry import architecture_of
from ..registry import resolve_model
from ..tokenizer import ChatTemplate, tokenizer_from_metadata


class FrontLLM(LLM):
    """An `LLM` without weights or engine: tokenizer, chat template, limits (`engine` holds only the request
    checks and the grammar compiler). Generation goes through the replicas."""

    def __init__(self, config: EngineConfig, replicas: int = 1) -> None:  # noqa: D107 - no LLM.__init__ here
        self.engine_config, self.replicas = config, replicas
        self.device, self.reference = config.device, config.reference
        self.path = resolve_model(config.model)
        self.gguf = GGUFFile(self.path)
        self.metadata = self.gguf.metadata
        self.config = architecture_of(self.metadata).config_from_metadata(self.metadata)
        self.ctx = self._context_size(config.ctx)
        self.tokenizer = tokenizer_from_metadata(self.metadata)
        self.chat_template = ChatTemplate.from_metadata(self.metadata)
        self.pooling = pooling_from_metadata(self.metadata, self.config.arch)
        self.engine = RequestChecks(self.tokenizer, self.config.vocab_size, self.ctx)  # type: ignore[assignment]
        self.runner = None  # type: ignore[assignment]

    def system_info(self) -> str:
        return f"forwardpass: {self.config.arch} | {self.replicas} engine replicas behind one ingress"

    def close(self) -> None:
        pass
