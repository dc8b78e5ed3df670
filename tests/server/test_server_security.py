"""docs/reliability.md, Security: API keys on every route, path tricks, CORS, Host checks, size limits, hostile chat
templates, template kwargs, log injection."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from server_helpers import API_KEY, CHATML, ServerProcess, assert_error, chat_body, raw_http
from starlette.testclient import TestClient
from tiny_models import write_tiny_model

from forwardpass.server import security
from forwardpass.server.app import create_app
from forwardpass.server.config import ServerConfig

PUBLIC = {"/health", "/", "/chat.js", "/chat.css"}  # the asserted allowlist: a new route is protected by default


def _route_calls() -> list[tuple[str, str]]:
    app = create_app(ServerConfig(api_keys=("k",)))
    calls = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                calls.append((method, route.path))
    return calls


def test_every_route_needs_the_key_but_the_allowlist(auth_server):
    """Every route needs the key: walk app.routes; without a key every route is 401 authentication_error except the
    public allowlist."""
    assert security.PUBLIC_PATHS == PUBLIC
    calls = _route_calls()
    assert {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/metrics",
        "/slots",
        "/tokenize",
        "/detokenize",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
    } <= {path for _, path in calls}
    for method, path in calls:
        r = auth_server.client.request(method, path, json={})
        if path in PUBLIC:
            assert r.status_code == 200, (method, path, r.status_code)
        elif path.startswith("/v1/messages"):  # Anthropic's routes answer in Anthropic's error shape
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
            assert r.headers["www-authenticate"] == "Bearer"
        else:
            assert_error(r, 401, "authentication_error", code="invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer"
        keyed = auth_server.client.request(method, path, json={}, headers=auth_server.auth_headers)
        assert keyed.status_code != 401, (method, path)


def test_keys_are_exact(auth_server):
    """Every route needs the key: the right key as Bearer -> 200; a key differing in case, a prefix, or another scheme
    -> 401."""
    ok = {"Authorization": f"Bearer {API_KEY}"}
    assert auth_server.get("/v1/models", headers=ok).status_code == 200
    assert auth_server.get("/v1/models", headers={"Authorization": "bearer second-key"}).status_code == 200
    for bad in (
        f"Bearer {API_KEY.lower()}",
        f"Bearer {API_KEY[:-1]}",
        f"Bearer {API_KEY}x",
        f"Basic {API_KEY}",
        API_KEY,
        "Bearer",
        "x",
    ):
        assert_error(auth_server.get("/v1/models", headers={"Authorization": bad}), 401, "authentication_error")


TRICKS = [
    "//v1/chat/completions",
    "/v1/./chat/completions",
    "/v1/%2e%2e/v1/chat/completions",
    "/V1/chat/completions",
    "/v1/chat/completions/",
    "/health/../v1/models",
    "/health/",
    "/%68ealth",
    "/./health",
    "/metrics?x=/health",
    "/health%00",
]


@pytest.mark.parametrize("path", TRICKS)
def test_path_tricks_without_a_key_are_401(auth_server, path):
    """Path spellings: no path spelling reaches a protected route (or any unknown one) without the key."""
    status, raw = raw_http(
        auth_server.port,
        f"POST {path} HTTP/1.1\nHost: localhost\nContent-Type: "
        "application/json\nContent-Length: 2\nConnection: close\n",
        b"{}",
    )
    assert status in (400, 401), raw[:200]


@pytest.fixture(scope="module")
def edge_server(tiny_chat_model):
    """A key, one CORS origin, and a root_path (as behind a path-prefixing proxy)."""
    s = ServerProcess(tiny_chat_model, "--api-key", API_KEY, "--cors-origin", "http://a.example", "--root-path", "/api")
    yield s
    s.stop()


def test_root_path_does_not_open_routes(edge_server):
    """Path spellings with root_path set: protected paths stay protected under every spelling; /health stays public."""
    for path in ("/v1/models", "/api/v1/models", "/api//v1/models", "/metrics", "/api/metrics"):
        assert_error(edge_server.get(path), 401, "authentication_error")
    assert edge_server.get("/health").status_code == 200
    assert edge_server.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def _preflight(server, origin: str) -> httpx.Response:
    return server.client.options(
        "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def test_cors_is_off_by_default(server):
    """CORS: with no --cors-origin, no Access-Control-Allow-Origin for anyone."""
    for r in (
        _preflight(server, "http://evil.example"),
        server.get("/v1/models", headers={"Origin": "http://evil.example"}),
    ):
        assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_listed_origin(edge_server):
    """CORS: --cors-origin http://a.example allows that origin only, never with credentials."""
    ok = _preflight(edge_server, "http://a.example")
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://a.example"
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    evil = _preflight(edge_server, "http://evil.example")
    assert "access-control-allow-origin" not in evil.headers
    r = edge_server.get("/v1/models", headers={"Origin": "http://a.example", "Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://a.example"
    for resp in (ok, evil, r):
        assert "access-control-allow-credentials" not in resp.headers


def test_cors_wildcard_never_sends_credentials():
    """CORS: `--cors-origin '*'` answers `*` and never Allow-Credentials (checked on the app in-process)."""
    app = create_app(ServerConfig(cors_origins=("*",)))
    with TestClient(app, base_url="http://localhost") as c:
        r = c.get("/health", headers={"Origin": "http://anything.example"})
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers


def test_foreign_host_header_is_403(server):
    """Host check: bound to 127.0.0.1, Host: attacker.example -> 403; loopback names -> 200."""
    assert_error(server.get("/health", headers={"Host": "attacker.example"}), 403, "permission_error")
    assert_error(server.post("/v1/completions", json={"prompt": "x"}, headers={"Host": "evil:80"}), 403)
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "localhost", f"[::1]:{server.port}"):
        assert server.get("/health", headers={"Host": host}).status_code == 200, host


def test_size_limits(server):
    """Size limits: a 5 MiB body -> 413; headers over 16 KiB -> 400/431; more than 100 headers -> 400/431."""
    assert_error(
        server.post("/v1/chat/completions", content=b"{" + b" " * (5 << 20) + b"}"), 413, code="request_too_large"
    )
    status, _ = raw_http(server.port, f"GET /health HTTP/1.1\nHost: localhost\nX-Big: {'a' * 20_000}\n")
    assert status in (400, 431)
    many = "".join(f"X-H{i}: v\n" for i in range(120))
    status, _ = raw_http(server.port, f"GET /health HTTP/1.1\nHost: localhost\n{many}")
    assert status in (400, 431)


def test_chunked_body_over_the_limit_is_413(server):
    """Size limits: a body without Content-Length is counted as it arrives."""

    def chunks():
        for _ in range(40):
            yield b" " * (128 << 10)

    r = server.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, code="request_too_large")


EVIL_TEMPLATE = (
    "{%- if messages[0]['content'] == 'mro' -%}{{ ''.__class__.__mro__[1].__subclasses__() }}"
    "{%- elif messages[0]['content'] == 'popen' -%}{{ cycler.__init__.__globals__.os.popen('touch pwned_marker') }}"
    "{%- elif messages[0]['content'] == 'dos' -%}{% for i in range(10**8) %}x{% endfor %}"
    "{%- else -%}" + CHATML + "{%- endif -%}"
)


@pytest.mark.slow
def test_hostile_chat_templates(make_server, tmp_path):
    """Template sandbox: sandbox escapes and a template DoS -> 500 with a clear message, nothing executed, the server
    keeps serving (also while the DoS render runs)."""
    model = write_tiny_model(tmp_path / "evil.gguf", "llama", chat_template=EVIL_TEMPLATE)
    s = make_server(model=str(model), cwd=str(tmp_path))
    for content in ("mro", "popen"):
        err = assert_error(s.post("/v1/chat/completions", json=chat_body(content)), 500, "server_error")
        assert "template" in err["message"]
    results = {}
    t = threading.Thread(target=lambda: results.update(dos=s.post("/v1/chat/completions", json=chat_body("dos"))))
    t.start()
    assert s.post("/v1/chat/completions", json=chat_body("fine", max_tokens=2)).status_code == 200
    t.join()  # the client's 60 s timeout is the deadline against a render that never ends
    assert_error(results["dos"], 500, "server_error")
    assert not (tmp_path / "pwned_marker").exists()
    assert s.get("/health").status_code == 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tokenize": True},
        {"add_generation_prompt": False},
        {"messages": []},
        {"enable_thinking": "x" * 100_000},
        {"enable_thinking": {"a": 1}},
        "str",
    ],
)
def test_chat_template_kwargs_allowlist(server, kwargs):
    """Template kwargs: keys outside the allowlist, huge or non-scalar values -> 400."""
    assert_error(
        server.post("/v1/chat/completions", json=chat_body(chat_template_kwargs=kwargs)),
        400,
        param="chat_template_kwargs",
    )


def test_chat_template_kwargs_allowed_and_no_request_template(server):
    r = server.post("/v1/chat/completions", json=chat_body(max_tokens=2, chat_template_kwargs={"enable_thinking": 0}))
    assert r.status_code == 200
    assert_error(
        server.post("/v1/chat/completions", json=chat_body(chat_template="{{ 7*7 }}")), 400, param="chat_template"
    )


def test_log_injection_is_escaped(server):
    """Log injection: CR/LF in user-controlled fields never start a forged log line."""
    forged = "\r\nFORGED line\nFORGED"
    server.post("/v1/chat/completions", json=chat_body(forged, user=forged, max_tokens=2))
    server.post("/v1/completions", json={"prompt": "x", "model": forged})
    server.get("/health", headers={"Host": "evil FORGED"})
    raw_http(server.port, "GET /v1/%0d%0aFORGED%0aFORGED HTTP/1.1\nHost: localhost\n")
    time.sleep(0.2)
    logs = server.logs()
    assert "FORGED" in logs  # the user field was logged, escaped
    assert not any(re.match(r"\s*FORGED", line) for line in logs.splitlines())
