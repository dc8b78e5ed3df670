"""`forwardpass serve --tensor-parallel-size 2`: the server runs on two ranks, and SIGTERM leaves no worker
behind."""

from __future__ import annotations

import signal

import psutil
from server_helpers import ServerProcess


def test_tensor_parallel_server_serves_and_stops_its_workers(tiny_chat_model):
    s = ServerProcess(tiny_chat_model, "--tensor-parallel-size", "2", "--threads", "2")
    try:
        workers = [p for p in psutil.Process(s.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 1  # rank 1 (rank 0 is the server process)
        body = {"model": "default", "prompt": [5, 6, 7, 8], "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        r = s.post("/v1/completions", json=body)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
        streamed = s.post("/v1/completions", json={**body, "stream": True})
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive
    finally:
        s.stop()
