// The chatedge playground: plain JavaScript against the app's own HTTP API (same origin), no
// framework and nothing from a CDN. Everything a model or a program says is set as text, never
// parsed as HTML.
"use strict";

const TOKEN_KEY = "chatedge.playground.token";
const state = { token: null, conversationId: null, models: [] };
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function status(message, isError) {
  const node = $("status");
  node.textContent = message || "";
  node.className = isError ? "error" : "dim";
}

/// A request to the app with the caller's token; throws the error envelope's code and message.
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      if (body && body.error) detail = `${body.error.code}: ${body.error.message}`;
    } catch (_) { /* not JSON */ }
    throw new Error(`${response.status} ${detail}`);
  }
  return response;
}

/// The token's claims, for showing who is signed in (the server verifies it; this only reads).
function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch (_) {
    return {};
  }
}

async function signIn(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  const c = claims(token);
  $("who").textContent = `signed in as ${c.email || c.sub || c.role || "token holder"}`;
  $("signin").open = false;
  status("");
  await Promise.all([loadModels(), loadConversations(), loadFiles()]).catch((e) => status(e.message, true));
}

async function supabaseSignIn(event) {
  event.preventDefault();
  const url = $("sb-url").value.replace(/\/+$/, "");
  const key = $("sb-key").value;
  try {
    const response = await fetch(`${url}/auth/v1/token?grant_type=password`, {
      method: "POST",
      headers: { apikey: key, "content-type": "application/json" },
      body: JSON.stringify({ email: $("sb-email").value, password: $("sb-password").value }),
    });
    const body = await response.json();
    if (!response.ok || !body.access_token) throw new Error(body.error_description || body.msg || response.statusText);
    await signIn(body.access_token);
  } catch (e) {
    status(`Supabase sign-in failed: ${e.message}`, true);
  }
}

async function loadModels() {
  const body = await (await api("/v1/models")).json();
  state.models = body.data || [];
  const providers = [...new Set(state.models.map((m) => m.owned_by))];
  const select = $("provider");
  select.replaceChildren(new Option("default", ""));
  for (const p of providers) select.append(new Option(p, p));
  fillModels();
}

function fillModels() {
  const provider = $("provider").value;
  const select = $("model");
  select.replaceChildren(new Option("default", ""));
  for (const m of state.models.filter((m) => !provider || m.owned_by === provider)) select.append(new Option(m.id, m.id));
}

async function loadConversations() {
  const body = await (await api("/functions/v1/conversations?limit=50")).json();
  const list = $("conversation-list");
  list.replaceChildren();
  for (const c of body.data || []) {
    const item = el("li", c.id === state.conversationId ? "active" : "", c.title);
    item.dataset.id = c.id;
    item.addEventListener("click", () => openConversation(c.id));
    list.append(item);
  }
}

async function openConversation(id) {
  state.conversationId = id;
  const body = await (await api(`/functions/v1/conversations/${id}/messages?limit=100`)).json();
  const box = $("messages");
  box.replaceChildren();
  for (const m of body.data || []) {
    if (m.role === "user" || m.role === "assistant") box.append(el("div", `message ${m.role}`, m.content || ""));
  }
  await loadConversations();
}

/// Reads a server-sent-event body, calling `onData` with each `data:` payload.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) onData(data);
    }
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  const box = $("messages");
  box.append(el("div", "message user", text));
  const answer = el("div", "message assistant", "");
  box.append(answer);
  const body = { message: text, stream: true };
  if (state.conversationId) body.conversation_id = state.conversationId;
  if ($("provider").value) body.provider = $("provider").value;
  if ($("model").value) body.model = $("model").value;
  $("send").disabled = true;
  try {
    const response = await api("/functions/v1/chat-completion", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    await readEvents(response, (data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        answer.className = "message error";
        answer.textContent += ` [${chunk.error.code || "error"}: ${chunk.error.message}]`;
        return;
      }
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) answer.textContent += delta.content;
      if (chunk.usage) {
        const meta = chunk.chatedge || {};
        const cost = typeof meta.cost_usd === "number" ? ` · $${meta.cost_usd.toFixed(6)}` : "";
        $("usage").textContent =
          `${chunk.model || ""} · ${chunk.usage.prompt_tokens} in / ${chunk.usage.completion_tokens} out${cost}`;
        if (meta.conversation_id) state.conversationId = meta.conversation_id;
      }
    });
    await loadConversations();
  } catch (e) {
    answer.className = "message error";
    answer.textContent = e.message;
  } finally {
    $("send").disabled = false;
  }
}

async function runCode(event) {
  event.preventDefault();
  $("stdout").textContent = "";
  $("stderr").textContent = "";
  $("charts").replaceChildren();
  $("code-status").textContent = "running…";
  try {
    const response = await api("/functions/v1/code-execution", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ language: $("language").value, code: $("source").value, conversation_id: state.conversationId || undefined }),
    });
    const outcome = await response.json();
    $("stdout").textContent = outcome.stdout;
    $("stderr").textContent = outcome.stderr;
    $("code-status").textContent = `${outcome.status} · ${outcome.duration_ms.toFixed(1)} ms`;
    const kept = (outcome.visualizations || []).filter((v) => v.url);
    const images = kept.length
      ? kept.map((v) => ({ src: v.url, title: (v.chart && v.chart.title) || v.kind || "chart" }))
      : (outcome.artifacts || [])
          .filter((a) => a.mime_type.startsWith("image/") && a.mime_type !== "image/svg+xml")
          .map((a) => ({ src: `data:${a.mime_type};base64,${a.data}`, title: a.name }));
    for (const image of images) {
      const img = el("img", "chart");
      img.alt = image.title;
      img.src = image.src;
      $("charts").append(img);
    }
  } catch (e) {
    $("code-status").textContent = "";
    $("stderr").textContent = e.message;
  }
}

async function loadFiles() {
  const body = await (await api("/functions/v1/file-upload?limit=50")).json();
  const list = $("file-list");
  list.replaceChildren();
  for (const f of body.data || []) {
    const item = el("li", "", `${f.original_name} (${f.size_bytes} B)`);
    item.dataset.id = f.id;
    list.append(item);
  }
}

async function upload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  if (state.conversationId) form.append("conversation_id", state.conversationId);
  try {
    await api("/functions/v1/file-upload", { method: "POST", body: form });
    $("file").value = "";
    await loadFiles();
  } catch (e) {
    status(`upload failed: ${e.message}`, true);
  }
}

function start() {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (token) signIn(token);
  });
  $("supabase-form").addEventListener("submit", supabaseSignIn);
  $("chat-form").addEventListener("submit", send);
  $("code-form").addEventListener("submit", runCode);
  $("upload-form").addEventListener("submit", upload);
  $("provider").addEventListener("change", fillModels);
  $("new-chat").addEventListener("click", () => {
    state.conversationId = null;
    $("messages").replaceChildren();
    $("usage").textContent = "";
    loadConversations().catch((e) => status(e.message, true));
  });
  // A token after `#token=` (the link `./dev up` prints): taken, then dropped from the address bar.
  const fromLink = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromLink) history.replaceState(null, "", location.pathname);
  const token = fromLink || sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
}

start();
