// forwardpass web chat: streams replies from /v1/chat/completions (fetch + ReadableStream SSE parsing),
// keeps the conversation in memory, shows tokens/s, and sends the API key stored in localStorage.
"use strict";

const KEY_STORAGE = "forwardpass.apiKey";
const $ = (id) => document.getElementById(id);
let history = [];
let controller = null;

function authHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;  // never innerHTML: model output is untrusted text
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function errorText(status, body) {
  const message = body && body.error && body.error.message ? body.error.message : "request failed";
  if (status === 401) return "401: invalid or missing API key. Enter it at the top right.";
  return status + ": " + message;
}

// Yields each parsed `data:` JSON object of an SSE response until `data: [DONE]`.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function showStats(tokens, t0, tFirst, tNow) {
  if (tFirst === null) return;
  const decodeS = (tNow - tFirst) / 1000;
  const rate = tokens > 1 && decodeS > 0 ? (tokens - 1) / decodeS : 0;
  $("stats").textContent = tokens + " tokens · " + rate.toFixed(1) + " tok/s · first token " +
    Math.round(tFirst - t0) + " ms";
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  const body = { model: "default", messages: messages.concat(history), stream: true,
                 stream_options: { include_usage: true } };
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

async function send() {
  if (controller) { controller.abort(); return; }  // the Send button doubles as Stop
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.classList.add("streaming");
  controller = new AbortController();
  $("send").textContent = "Stop";
  const t0 = performance.now();
  let tFirst = null, tokens = 0, reply = "";
  try {
    const response = await fetch("v1/chat/completions", { method: "POST", headers: authHeaders(),
      body: JSON.stringify(requestBody()), signal: controller.signal });
    if (!response.ok) throw new Error(errorText(response.status, await response.json().catch(() => null)));
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta && choice.delta.content;
        if (!delta) continue;
        if (tFirst === null) tFirst = performance.now();
        reply += delta;
        tokens += 1;
        out.textContent = reply;
        out.scrollIntoView({ block: "end" });
      }
      showStats(tokens, t0, tFirst, performance.now());
    }
    history.push({ role: "assistant", content: reply });
    if (!reply) out.textContent = "(empty reply)";
  } catch (err) {
    history.pop();  // the failed turn is not part of the conversation
    out.classList.add("error");
    out.textContent = reply + (err.name === "AbortError" ? " [stopped]" : "[" + err.message + "]");
  } finally {
    out.classList.remove("streaming");
    controller = null;
    $("send").textContent = "Send";
  }
}

async function loadModel() {
  try {
    const response = await fetch("v1/models", { headers: authHeaders() });
    if (!response.ok) throw new Error(errorText(response.status, await response.json().catch(() => null)));
    const data = await response.json();
    $("model").textContent = data.data.length ? data.data[0].id : "no model";
  } catch (err) {
    $("model").textContent = err.message;
  }
}

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadModel();
  });
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
  });
  $("clear").addEventListener("click", () => {
    if (controller) controller.abort();
    history = [];
    $("messages").replaceChildren();
    $("stats").textContent = "";
  });
  loadModel();
}

init();
