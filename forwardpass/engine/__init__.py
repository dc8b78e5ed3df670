"""The engine: requests in, tokens out. Owns sequences (`sequence.py`), the paged KV cache's bookkeeping
(`block_manager.py`, `kv_groups.py`), the scheduler (`scheduler.py`: what runs each step, forking n > 1 samples),
the runner that turns a step into tensors (`model_runner.py`), requests and their outputs (`request.py`,
`pooling.py`), the step loop (`llm_engine.py`) and its thread for the server (`async_engine.py`). The scheduler
and block manager import no torch."""
