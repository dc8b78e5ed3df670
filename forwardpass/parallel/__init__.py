"""Tensor parallelism: one model split over processes (`LLM(..., tensor_parallel_size=N)`).

`plan.py` says which heads and FFN columns each rank holds (no torch), `shard.py` slices a rank's weights out of
the GGUF file and adds the all-gathers around `attn_output` / `ffn_down`, `group.py` builds the process group (gloo on
CPU, NCCL on CUDA), `runner.py` starts the worker processes and runs each step on every rank. Imports `engine/`
and `models/`; nothing below imports this package.
"""

from .runner import ParallelRunner, start_tensor_parallel

__all__ = ["ParallelRunner", "start_tensor_parallel"]
