"""What generation returns: vLLM-shaped `RequestOutput` and `CompletionOutput`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the `top` most likely alternatives at that step."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length" or "abort"; None while running
    logprobs: list[TokenLogprob] | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    tool_calls: list | None = None  # LLM.chat with tools: the calls (forwardpass.tools.ToolCall) the model made
    reasoning_content: str | None = None  # LLM.chat on a reasoning template: the <think> part, apart from text

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt: str | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(o.finished for o in self.outputs)

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids


@dataclass
class GenerationStats:
    """Timings of one generation, as `llama.cpp` and `ollama --verbose` print them."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float = 0.0  # from the request to its first sampled token (prompt processing included)
    total_s: float = 0.0

    @property
    def prompt_tok_s(self) -> float:
        return (self.prompt_tokens - self.cached_tokens) / self.ttft_s if self.ttft_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        decode_s = self.total_s - self.ttft_s
        return (self.generated_tokens - 1) / decode_s if self.generated_tokens > 1 and decode_s > 0 else 0.0


@dataclass
class EmbeddingOutput:
    """The pooled final hidden states of one input (L2-normalized unless asked otherwise)."""

    request_id: str
    prompt_token_ids: list[int]
    embedding: list[float] | None  # None only if the request was aborted
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return True
