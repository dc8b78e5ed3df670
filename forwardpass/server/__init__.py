"""The HTTP server (`forwardpass serve`), its web chat page and `forwardpass bench-serve`.

Owns: the app and its state (`app.py`, `state.py`, `config.py`, `cli.py`, `runner.py`: startup, drain, exit),
request validation (`jsonbody.py`, `fields.py`, `protocol.py`; 400s in OpenAI's shape from `errors.py`), the
OpenAI routes (`openai_routes.py`, `generation.py`, `streaming.py`, `sse.py`, `responses.py`, `embeddings.py`),
the Responses and Anthropic Messages APIs translated to chat (`responses_*.py`, `anthropic_*.py`,
`agent_common.py`, `tool_seam.py`), the edge (`security.py`: keys, Host, CORS, body limits), observability
(`metrics.py`, `slots.py`), test-only fault injection (`faults.py`) and the load generator (`bench_serve.py`).
Its guarantees and the tests holding them: docs/reliability.md.
"""
