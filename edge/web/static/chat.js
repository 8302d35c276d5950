// The chat page: streamed answers rendered as sanitised Markdown, a stop button, the cost of
// each answer, conversations kept in this browser only (localStorage).
"use strict";

const { el } = ck;
let store = null;      // { chats: [...], current: id, model }
let models = [];
let prices = {};       // model -> its row of /api/pricing
let running = null;    // the AbortController of the answer being streamed

marked.use({ gfm: true, breaks: true });
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
});

// Model output is untrusted: beyond scripts and handlers (DOMPurify's defaults), no forms or
// inputs to phish with, no styles to restyle the page, no id or name to clobber the page's own.
const PURIFY = {
  FORBID_TAGS: ["form", "input", "button", "textarea", "select", "option", "style"],
  FORBID_ATTR: ["style", "id", "name"],
};

function render_markdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(marked.parse(text || ""), PURIFY);
  for (const block of target.querySelectorAll("pre code")) hljs.highlightElement(block);
}

// --- conversations, kept per user in this browser ----------------------------------------

function storageKey() { return `chatkore.chats.${ck.me.user_id}`; }
function load() {
  try { store = JSON.parse(localStorage.getItem(storageKey())) || null; } catch (e) { store = null; }
  if (!store || !Array.isArray(store.chats)) store = { chats: [], current: null, model: null };
}
function save() { localStorage.setItem(storageKey(), JSON.stringify(store)); }
function currentChat() { return store.chats.find((c) => c.id === store.current) || null; }
function newChat() {
  store.current = null;
  save();
  draw();
  document.getElementById("prompt").focus();
}

// --- the page ------------------------------------------------------------------------------

async function start() {
  await ck.loadMe();
  ck.topbar("chat");
  const root = document.getElementById("root");
  if (!ck.me) {
    ck.authCard(root, ck.t("chat.signin_lead"), start);
    return;
  }
  load();
  models = (await ck.api("GET", "/api/models")).data.map((m) => m.id).filter((m) => !m.includes("embedding") && !m.includes("instruct"));
  try {
    prices = Object.fromEntries((await ck.api("GET", "/api/pricing")).data.map((p) => [p.model, p]));
  } catch (e) { prices = {}; }  // the chat works without the price line
  if (!models.includes(store.model)) store.model = models.includes("gpt-3.5-turbo") ? "gpt-3.5-turbo" : models[0] || null;
  layout(root);
  draw();
}

function layout(root) {
  const side = el("aside", { class: "chat-side", id: "chat-side" },
    el("button", { class: "new", id: "new-chat", onclick: () => { side.classList.remove("open"); newChat(); } }, ck.t("chat.new")),
    el("div", { class: "conv-list", id: "conv-list" }));
  const select = el("select", { id: "model", "aria-label": ck.t("usage.model") },
    models.map((m) => el("option", { value: m, selected: m === store.model }, m)));
  const price = el("span", { class: "hint", id: "model-price" });
  const showPrice = () => {
    const p = prices[store.model];
    price.textContent = p ? ck.t("chat.price", { prompt: ck.credits(p.prompt), completion: ck.credits(p.completion) }) : "";
  };
  select.addEventListener("change", () => { store.model = select.value; save(); showPrice(); });
  showPrice();
  const prompt = el("textarea", { id: "prompt", rows: "1", placeholder: ck.t("chat.placeholder"), "aria-label": ck.t("chat.message") });
  prompt.addEventListener("input", () => { prompt.style.height = "auto"; prompt.style.height = `${Math.min(prompt.scrollHeight, 200)}px`; });
  prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); form.requestSubmit(); }
  });
  const send = el("button", { type: "submit", id: "send" }, ck.t("chat.send"));
  const stop = el("button", { type: "button", class: "danger", id: "stop", hidden: true, onclick: () => running && running.abort() }, ck.t("chat.stop"));
  const form = el("form", { id: "composer" }, prompt, send, stop);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); ask(prompt.value); });
  root.replaceChildren(side, el("section", { class: "chat-main" },
    el("div", { class: "chat-head" },
      el("button", { class: "secondary small menu", id: "menu", "aria-label": ck.t("chat.conversations"), onclick: () => side.classList.toggle("open") }, "☰"),
      select, price, el("a", { href: "/pricing", class: "hint" }, ck.t("chat.all_prices"))),
    el("div", { class: "messages", id: "messages" }, el("div", { class: "messages-inner", id: "thread" })),
    el("div", { class: "composer" }, form,
      el("p", { class: "hint", text: ck.t("chat.footer_hint") }))));
  if (!models.length) { send.disabled = true; prompt.placeholder = ck.t("chat.no_model"); }
}

function draw() {
  const list = document.getElementById("conv-list");
  list.replaceChildren(...store.chats.map((c) => el("div", { class: c.id === store.current ? "conv active" : "conv" },
    el("a", { href: "#", title: c.title, onclick: (ev) => {
      ev.preventDefault(); store.current = c.id; save(); document.getElementById("chat-side").classList.remove("open"); draw();
    } }, c.title),
    el("button", { class: "ghost small", title: ck.t("common.delete"), "aria-label": ck.t("chat.delete_named", { title: c.title }), onclick: () => {
      store.chats = store.chats.filter((x) => x.id !== c.id);
      if (store.current === c.id) store.current = null;
      save(); draw();
    } }, "✕"))));
  if (!store.chats.length) list.append(el("p", { class: "hint", text: ck.t("chat.no_conversations") }));
  const thread = document.getElementById("thread");
  const chat = currentChat();
  if (!chat) {
    thread.replaceChildren(el("div", { class: "welcome" }, el("h1", { text: ck.t("chat.welcome") }),
      el("p", { text: ck.t("chat.welcome_hint", { balance: ck.credits(ck.me.balance) }) })));
    return;
  }
  thread.replaceChildren(...chat.messages.map(message));
  scrollDown();
}

function message(m) {
  const bubble = el("div", { class: "bubble" });
  if (m.role === "user") bubble.textContent = m.content;
  else render_markdown(bubble, m.content);
  const node = el("div", { class: `msg ${m.role}` }, el("div", { class: "who-label", text: m.role === "user" ? ck.t("chat.you") : m.model || ck.t("chat.assistant") }), bubble);
  if (m.role === "assistant") node.append(el("div", { class: m.error ? "meta error" : "meta", text: meta(m) }));
  return node;
}

function meta(m) {
  if (m.error) return m.error;
  if (m.pending) return "…";
  const parts = [];
  if (m.stopped) parts.push(ck.t("chat.stopped"));
  if (m.tokens) parts.push(ck.t("chat.tokens", { prompt: ck.num(m.tokens.prompt), completion: ck.num(m.tokens.completion) }));
  if (m.cost !== undefined) parts.push(ck.t("chat.cost", { cost: ck.credits(m.cost) }));
  if (m.balance !== undefined) parts.push(ck.t("chat.balance", { balance: ck.credits(m.balance) }));
  return parts.join(" · ");
}

function scrollDown() {
  const box = document.getElementById("messages");
  box.scrollTop = box.scrollHeight;
}

// --- asking and streaming ----------------------------------------------------------------

async function ask(text) {
  text = text.trim();
  if (!text || running || !store.model) return;
  let chat = currentChat();
  if (!chat) {
    chat = { id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`, title: text.slice(0, 48), messages: [] };
    store.chats.unshift(chat);
    store.current = chat.id;
  }
  chat.messages.push({ role: "user", content: text });
  const answer = { role: "assistant", content: "", model: store.model, pending: true };
  chat.messages.push(answer);
  save();
  const prompt = document.getElementById("prompt");
  prompt.value = "";
  prompt.style.height = "auto";
  draw();
  const node = document.getElementById("thread").lastElementChild;
  const bubble = node.querySelector(".bubble");
  const metaLine = node.querySelector(".meta");
  bubble.classList.add("typing");
  busy(true);
  running = new AbortController();
  let requestId = null;
  try {
    const resp = await fetch("/api/chat/completions", {
      method: "POST", credentials: "same-origin", signal: running.signal,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": ck.csrf },
      body: JSON.stringify({
        model: answer.model, stream: true, stream_options: { include_usage: true },
        messages: chat.messages.filter((m) => m !== answer && !m.error).map((m) => ({ role: m.role, content: m.content })),
      }),
    });
    requestId = resp.headers.get("x-request-id");
    if (!resp.ok) {
      let msg = ck.t("common.request_failed", { status: resp.status });
      try { msg = (await resp.json()).error.message; } catch (e) { /* keep the status */ }
      throw new Error(msg);
    }
    await readStream(resp, answer, bubble);
  } catch (e) {
    if (e.name === "AbortError") answer.stopped = true;
    else answer.error = e.message;
  } finally {
    running = null;
    answer.pending = false;
    bubble.classList.remove("typing");
    render_markdown(bubble, answer.content);
    metaLine.className = answer.error ? "meta error" : "meta";
    metaLine.textContent = meta(answer);
    busy(false);
    save();
  }
  if (requestId && (!answer.error || answer.content)) await showCost(requestId, answer, metaLine);
}

async function readStream(resp, answer, bubble) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let scheduled = false;
  const paint = () => { scheduled = false; render_markdown(bubble, answer.content); scrollDown(); };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || ck.t("chat.broke_off"));
        if (chunk.usage) answer.tokens = { prompt: chunk.usage.prompt_tokens, completion: chunk.usage.completion_tokens };
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          answer.content += delta.content;
          if (!scheduled) { scheduled = true; requestAnimationFrame(paint); }
        }
      }
    }
  }
}

// The charge is settled by billing as the stream ends (or, when stopped, a moment later).
async function showCost(requestId, answer, metaLine) {
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    const rows = (await ck.api("GET", `/api/usage?request_id=${encodeURIComponent(requestId)}`)).data;
    if (rows.length) {
      answer.cost = rows[0].credits;
      answer.tokens = { prompt: rows[0].prompt_tokens, completion: rows[0].completion_tokens };
      break;
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  const me = await ck.loadMe();
  if (me) { answer.balance = me.balance; ck.setBalance(me.balance); }
  metaLine.textContent = meta(answer);
  metaLine.dataset.cost = answer.cost === undefined ? "" : String(answer.cost);
  save();
}

function busy(on) {
  document.getElementById("send").hidden = on;
  document.getElementById("stop").hidden = !on;
  document.getElementById("model").disabled = on;
}

start();
