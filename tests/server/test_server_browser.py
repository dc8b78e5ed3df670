"""The web chat page in headless Chromium (Debian's chromium driven by Playwright): type a message, watch the
answer stream in token by token with tokens/s shown, keep the conversation, clear it, and use an API key."""

from __future__ import annotations

import os
import shutil

import pytest
from server_helpers import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # headless Chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
# Counts how often the assistant's bubble changed, to prove the reply arrived in pieces.
COUNT_UPDATES = """() => {
  window.__updates = 0;
  new MutationObserver(() => { window.__updates += 1; })
    .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser():
    missing = pytest.fail if os.environ.get("CI") else pytest.skip  # CI installs both: never skip there
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')")
    if not os.path.exists(CHROMIUM):
        missing("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def paced_server(tiny_chat_model):
    """A server whose engine steps take 10 ms more (test fault ``slow_steps``): the tiny model's tokens arrive
    over half a second, as a real model's do, instead of faster than the browser paints (which showed 5 updates
    for a 48-token reply once on a busy machine)."""
    s = ServerProcess(tiny_chat_model, env={"FORWARDPASS_TEST_FAULT": "slow_steps:0.01"})
    yield s
    s.stop()


def _send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_chat_page_streams_a_reply(browser, paced_server):
    server = paced_server
    page = browser.new_page(bypass_csp=True)  # the page's CSP forbids the eval wait_for_function uses
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny-chat'")
    page.click("summary")  # open the settings
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "48")
    page.evaluate(COUNT_UPDATES)
    _send(page, "Hello there")
    page.wait_for_selector(".msg.user")
    page.wait_for_function(
        "document.getElementById('send').textContent === 'Send' && "
        "document.querySelectorAll('.msg.assistant').length === 1 && "
        "!document.querySelector('.msg.streaming')",
        timeout=30_000,
    )
    answer = page.text_content(".msg.assistant")
    assert answer and "[" not in answer[:1]
    assert page.evaluate("window.__updates") > 5  # many updates: streamed, not one block
    # the same answer as the API gives at temperature 0, and the token count of its usage (48, or fewer when the
    # random model happens to end the reply)
    api = server.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello there"}], "temperature": 0, "max_tokens": 48},
    ).json()
    assert answer == (api["choices"][0]["message"]["content"] or "(empty reply)")
    stats = page.text_content("#stats")
    assert "tok/s" in stats and stats.startswith(f"{api['usage']['completion_tokens']} tokens")

    # the conversation is kept: a second turn sends both messages
    _send(page, "And then?")
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant').length === 2 && !document.querySelector('.msg.streaming')",
        timeout=30_000,
    )
    assert page.locator(".msg.user").count() == 2
    page.click("#clear")
    assert page.locator(".msg").count() == 0
    page.close()


def test_chat_page_with_an_api_key(browser, auth_server):
    """Under the page's own Content-Security-Policy (no bypass: only locator waits here)."""
    from playwright.sync_api import expect
    from server_helpers import API_KEY

    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    page.goto(auth_server.url + "/")  # the page itself is public; its API calls need the key
    expect(page.locator("#model")).to_contain_text("401")
    page.click("summary")
    page.fill("#max-tokens", "8")
    _send(page, "hi")
    expect(page.locator(".msg.assistant.error")).to_contain_text("API key")

    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model")).to_have_text("tiny-chat")
    page.click("#clear")
    _send(page, "hi")
    expect(page.locator(".msg.assistant")).to_have_count(1)
    expect(page.locator("#send")).to_have_text("Send", timeout=30_000)
    expect(page.locator(".msg.error")).to_have_count(0)
    expect(page.locator("#stats")).to_contain_text("tok/s")
    page.reload()  # the key is remembered in localStorage
    expect(page.locator("#api-key")).to_have_value(API_KEY)
    expect(page.locator("#model")).to_have_text("tiny-chat")
    assert not [m for m in console if "Content Security Policy" in m], console
    page.close()
