"""Helpers of the server tests. The harness (as llama.cpp's): a `ServerProcess` runs `forwardpass serve` as a
subprocess on a free port, waits for /health 200, and kills the process tree at teardown. The model is a tiny
random llama with a ChatML template and a context of 256 tokens, written by a session fixture."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import psutil

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
T = TypeVar("T")
API_KEY = "sk-test-Key-123"
N_CTX = 256


def wait_until(condition: Callable[[], T], what: str, timeout: float = 30, poll: float = 0.01) -> T:
    """Poll `condition` until it returns a true value, and return that value; an AssertionError naming `what` if it
    never does within `timeout` s. A deadline against an event that never comes, not a bound on how fast it comes."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {timeout} s)")
        time.sleep(poll)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _busy(m: dict[str, float]) -> tuple[float, float, float]:
    return m["forwardpass_requests_running"], m["forwardpass_requests_waiting"], m["forwardpass_kv_blocks_used"]


class ServerProcess:
    """`python -m forwardpass.cli serve MODEL --port P --ctx 256 ARGS...` as a subprocess."""

    def __init__(
        self, model: str, *args: str, env: dict[str, str] | None = None, wait: bool = True, cwd: str | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile("w+b", prefix="fp-server-", suffix=".log", delete=False)
        cmd = [
            sys.executable,
            "-m",
            "forwardpass.cli",
            "serve",
            model,
            "--port",
            str(self.port),
            "--ctx",
            str(N_CTX),
            "--threads",
            "1",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.client = httpx.Client(base_url=self.url, timeout=300)
        self.auth_headers: dict[str, str] = {}
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.logs()}")

    def wait_listening(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/health", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.02)
        raise TimeoutError(self.logs())

    def logs(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def get(self, path: str, **kw) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.client.post(path, **kw)

    def metrics(self) -> dict[str, float]:
        """The forwardpass_* samples without labels, by name."""
        text = self.get("/metrics", headers=self.auth_headers).text
        out = {}
        for line in text.splitlines():
            m = re.match(r"^(forwardpass_\w+) ([0-9.e+-]+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def wait_idle(self, timeout: float = 5.0) -> dict[str, float]:
        """Poll /metrics until running, waiting and kv_blocks_used are all 0; return the last sample."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if _busy(m) == (0, 0, 0) or time.monotonic() > deadline:
                return m
            time.sleep(0.02)

    def assert_idle(self, timeout: float = 5.0) -> dict[str, float]:
        """Nothing running or waiting and no KV block in use, within `timeout` seconds; the last sample."""
        m = self.wait_idle(timeout)
        assert _busy(m) == (0, 0, 0), m
        return m

    def stop(self) -> None:
        self.client.close()
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=5)
        self.proc.wait(timeout=5)
        self._log.close()
        os.unlink(self._log.name)


def chat_body(content: str = "hello", **kw) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": content}], **kw}


def assert_error(
    r: httpx.Response, status: int, type_: str | None = None, param: str | None = None, code: str | None = None
) -> dict:
    """The response is `status` with OpenAI's error shape (and the given type/param/code)."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in r.text
    if type_ is not None:
        assert err["type"] == type_, err
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def raw_http(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send an exact request (no client-side path normalization); return the status and the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


class RawConnection:
    """A keep-alive HTTP/1.1 connection over asyncio streams: a client with almost no overhead of its own, for
    latency measurements that httpx (about 1 ms per request in Python) would blur."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "RawConnection":
        import asyncio

        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post_json(self, path: str, body: dict) -> tuple[int, dict[str, str], bytes]:
        import json as _json

        data = _json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, payload

    def close(self) -> None:
        self.writer.close()


async def stream_completion_text(c: httpx.AsyncClient, body: dict) -> str:
    """The text of a streamed /v1/completions request, its SSE chunks joined."""
    parts = []
    async with c.stream("POST", "/v1/completions", json=body | {"stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                parts.append(json.loads(line[6:])["choices"][0]["text"])
    return "".join(parts)
