// The console: balance, spend per day, redeem codes, API keys and usage, for the signed-in user.
"use strict";

const { el } = ck;
const SECTIONS = [["overview", "Overview"], ["keys", "API keys"], ["usage", "Usage"]];
let spendChart = null;

function section() {
  const name = location.hash.slice(1);
  return SECTIONS.some(([s]) => s === name) ? name : "overview";
}

async function start() {
  await ck.loadMe();
  const next = new URLSearchParams(location.search).get("next");
  if (!ck.me) {
    ck.topbar("console");
    ck.authCard(document.getElementById("root"), "Sign in to manage your keys and credits.", () => {
      if (next === "/ops" && ck.me.role === "operator") location.assign("/ops");
      else start();
    });
    return;
  }
  ck.topbar("console");
  window.onhashchange = render;
  render();
}

async function render() {
  const current = section();
  if (!(await ck.loadMe())) { start(); return; }
  ck.setBalance(ck.me.balance);
  const nav = el("nav", { class: "sidenav" },
    SECTIONS.map(([s, text]) => el("a", { href: `#${s}`, class: s === current ? "active" : "", id: `nav-${s}` }, text)));
  const content = el("main", { class: "content", id: "content" });
  document.getElementById("root").replaceChildren(nav, content);
  ({ overview, keys, usage })[current](content);
}

// --- overview ---------------------------------------------------------------------

async function overview(root) {
  const balance = el("div", { class: "value", id: "overview-balance" }, ck.credits(ck.me.balance));
  const spent = el("div", { class: "value", id: "overview-spent" }, "…");
  const calls = el("div", { class: "value", id: "overview-requests" }, "…");
  const canvas = el("canvas", { id: "spend-chart", "aria-label": "Credits spent per day" });
  const message = el("div", { hidden: true, role: "status", id: "redeem-message" });
  const code = el("input", { id: "redeem-code", placeholder: "ck-…", autocomplete: "off", required: true });
  const form = el("form", { class: "row", id: "redeem-form" },
    el("div", { class: "field grow" }, el("label", { for: "redeem-code", text: "Top-up code" }), code),
    el("button", { type: "submit" }, "Redeem"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message.hidden = true;
    try {
      const reply = await ck.api("POST", "/api/redeem", { code: code.value.trim() });
      ck.setBalance(reply.balance);
      balance.textContent = ck.credits(reply.balance);
      message.className = "notice";
      message.textContent = `Code redeemed. Your balance is now ${ck.credits(reply.balance)} credits.`;
      code.value = "";
    } catch (e) {
      message.className = "error";
      message.textContent = e.message;
    }
    message.hidden = false;
  });
  root.append(
    el("h1", { text: "Overview" }),
    el("div", { class: "grid stats" },
      el("div", { class: "card stat" }, el("div", { class: "label", text: "Balance (credits)" }), balance),
      el("div", { class: "card stat" }, el("div", { class: "label", text: "Spent, last 30 days" }), spent),
      el("div", { class: "card stat" }, el("div", { class: "label", text: "Requests, last 30 days" }), calls)),
    el("div", { class: "card" },
      el("div", { class: "card-head" }, el("h2", { text: "Credits spent per day" }), el("span", { class: "hint", text: "UTC days" })),
      el("div", { class: "chart-box" }, canvas)),
    el("div", { class: "card" }, el("h2", { text: "Redeem a top-up code" }),
      el("p", { class: "hint", text: "Codes come from your operator. Each works once." }), form, message));
  const days = (await ck.api("GET", "/api/spend?days=30")).data;
  spent.textContent = ck.credits(days.reduce((s, d) => s + d.credits, 0));
  calls.textContent = days.reduce((s, d) => s + d.requests, 0).toLocaleString("en-US");
  if (spendChart) spendChart.destroy();
  spendChart = new Chart(canvas, {
    type: "bar",
    data: {
      labels: days.map((d) => d.day.slice(5)),
      datasets: [{ label: "Credits", data: days.map((d) => d.credits), backgroundColor: "#3b5bdb", borderRadius: 4 }],
    },
    options: {
      maintainAspectRatio: false, animation: false,
      plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, grid: { color: "#eef0f3" } }, x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 8 } } },
    },
  });
}

// --- keys ---------------------------------------------------------------------------

async function keys(root) {
  const name = el("input", { id: "key-name", placeholder: "e.g. laptop, CI, my app", maxlength: "200" });
  const limit = el("input", { id: "key-limit", type: "number", min: "0", step: "0.01", placeholder: "no limit" });
  const shown = el("div", { id: "new-key", hidden: true });
  const error = el("div", { class: "error", hidden: true, role: "alert" });
  const form = el("form", { class: "row", id: "key-form" },
    el("div", { class: "field grow" }, el("label", { for: "key-name", text: "Name" }), name),
    el("div", { class: "field" }, el("label", { for: "key-limit", text: "Credit limit (optional)" }), limit),
    el("button", { type: "submit", id: "create-key" }, "Create key"));
  const body = el("tbody", { id: "keys-body" });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      const req = { name: name.value.trim() };
      if (limit.value) req.credit_limit = Number(limit.value);
      const key = await ck.api("POST", "/api/keys", req);
      const copy = el("button", { type: "button", class: "secondary small" }, "Copy");
      copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(key.key));
      shown.replaceChildren(
        el("p", { text: "Your new key. Copy it now: it will not be shown again." }),
        el("div", { class: "secret" }, el("code", { id: "new-key-value", text: key.key }), copy));
      shown.hidden = false;
      name.value = "";
      limit.value = "";
      await fill();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  });
  root.append(
    el("h1", { text: "API keys" }),
    el("div", { class: "card" }, el("h2", { text: "Create a key" }),
      el("p", { class: "hint" }, "Use a key with any OpenAI client: base URL ", el("code", { text: `${location.origin}/v1` }), "."),
      form, error, shown),
    el("div", { class: "card" }, el("h2", { text: "Your keys" }),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ["Name", "Key", "Credit limit", "Created", "Status", ""].map((h) => el("th", { text: h })))),
        body))));

  async function fill() {
    const list = (await ck.api("GET", "/api/keys")).data.filter((k) => !k.web);
    body.replaceChildren();
    if (!list.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "6", text: "No keys yet." })));
    for (const k of list.reverse()) {
      const revoke = k.revoked ? null : el("button", { class: "danger small", onclick: async () => {
        if (!confirm(`Revoke the key “${k.name || k.hint}”? Programs using it stop working.`)) return;
        await ck.api("DELETE", `/api/keys/${k.id}`);
        await fill();
      } }, "Revoke");
      body.append(el("tr", { "data-key-id": k.id },
        el("td", { class: "wrap", text: k.name || "—" }), el("td", { class: "mono", text: k.hint }),
        el("td", { class: "num", text: k.credit_limit === null ? "—" : ck.credits(k.credit_limit) }),
        el("td", { text: ck.when(k.created) }),
        el("td", {}, el("span", { class: k.revoked ? "badge bad" : "badge ok", text: k.revoked ? "revoked" : "active" })),
        el("td", {}, el("div", { class: "actions" }, revoke))));
    }
    ck.label(body);
  }
  await fill();
}

// --- usage --------------------------------------------------------------------------

async function usage(root) {
  const body = el("tbody", { id: "usage-body" });
  root.append(el("h1", { text: "Usage" }),
    el("div", { class: "card" },
      el("div", { class: "card-head" }, el("h2", { text: "Recent requests" }),
        el("button", { class: "secondary small", id: "usage-refresh", onclick: () => fill() }, "Refresh")),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ["Time", "Model", "Key", "Prompt", "Completion", "Credits", "Status"].map(
          (h, i) => el("th", { class: i >= 3 && i <= 5 ? "num" : "", text: h })))),
        body))));
  async function fill() {
    const [rows, keyList] = await Promise.all([ck.api("GET", "/api/usage?limit=100"), ck.api("GET", "/api/keys")]);
    const names = Object.fromEntries(keyList.data.map((k) => [k.id, k.web ? "chat page" : k.name || k.hint]));
    body.replaceChildren();
    if (!rows.data.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "7", text: "No requests yet." })));
    for (const r of rows.data) {
      body.append(el("tr", { "data-request-id": r.request_id },
        el("td", { text: ck.when(r.created) }), el("td", { text: r.model }), el("td", { text: names[r.key_id] || `#${r.key_id}` }),
        el("td", { class: "num", text: r.prompt_tokens.toLocaleString("en-US") }),
        el("td", { class: "num", text: r.completion_tokens.toLocaleString("en-US") }),
        el("td", { class: "num", text: ck.credits(r.credits) }),
        el("td", {}, el("span", { class: r.status === "complete" ? "badge ok" : "badge warn", text: r.status }))));
    }
    ck.label(body);
  }
  await fill();
}

start();
