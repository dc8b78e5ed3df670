"""Structured output: constrain a request's tokens to a JSON schema, a regex, a choice or a grammar.

- ``StructuredOutputsParams`` (``params.py``): the constraint, as ``SamplingParams.structured_outputs``.
- ``GrammarCompiler`` (``compiler.py``): compiles constraints with llguidance off the engine loop, cached.
- ``Guide`` and the batched mask (``guide.py``): per-sequence state and what the sampler applies each step.
"""

from .params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]
