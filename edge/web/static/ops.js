// The operator pages: a dashboard per model, users, channels, prices, redeem codes, payment orders,
// every user's usage (filters, CSV), the notice every page shows, and the audit log.
// Everything here goes through the admin API (/admin/v1), which lets an operator's session in.
"use strict";

const { el } = ck;
const SECTIONS = [["dashboard", "ops.nav.dashboard"], ["users", "ops.nav.users"], ["channels", "ops.nav.channels"], ["prices", "ops.nav.prices"], ["codes", "ops.nav.codes"], ["orders", "ops.nav.orders"], ["usage", "ops.nav.usage"], ["notice", "ops.nav.notice"], ["audit", "ops.nav.audit"]];
const COLORS = ["#3b5bdb", "#f08c00", "#2b8a3e", "#c2255c", "#1098ad", "#7048e8", "#5c940d", "#e8590c"];
let charts = [];

function section() {
  const name = location.hash.slice(1);
  return SECTIONS.some(([s]) => s === name) ? name : "dashboard";
}

async function start() {
  await ck.loadMe();
  if (!ck.me || ck.me.role !== "operator") { location.assign("/console?next=/ops"); return; }
  ck.topbar("ops");
  window.onhashchange = render;
  render();
}

function render() {
  const current = section();
  for (const c of charts) c.destroy();
  charts = [];
  const content = el("main", { class: "content", id: "content" });
  document.getElementById("root").replaceChildren(
    el("nav", { class: "sidenav" }, SECTIONS.map(([s, t]) => el("a", { href: `#${s}`, id: `nav-${s}`, class: s === current ? "active" : "" }, ck.t(t)))),
    content);
  ({ dashboard, users, channels, prices, codes, orders, usage, notice, audit })[current](content).catch((e) => content.append(el("div", { class: "error", text: e.message })));
}

function table(headers, id) {
  const body = el("tbody", { id });
  const wrap = el("div", { class: "table-wrap" }, el("table", {},
    el("thead", {}, el("tr", {}, headers.map(([h, cls]) => el("th", { class: cls || "", text: h && ck.t(h) })))), body));
  return [wrap, body];
}

function flash(target, ok, text) {
  target.className = ok ? "notice" : "error";
  target.textContent = text;
  target.hidden = false;
}

// --- dashboard --------------------------------------------------------------------------

async function dashboard(root) {
  const hours = el("select", { id: "dash-hours", "aria-label": ck.t("ops.dash.window") },
    [[24, "ops.dash.24h"], [168, "ops.dash.7d"], [720, "ops.dash.30d"]].map(([h, t]) => el("option", { value: h }, ck.t(t))));
  const cards = el("div", { class: "grid stats", id: "dash-totals" });
  const boxes = el("div", { class: "grid charts" });
  root.append(el("div", { class: "card-head" }, el("h1", { text: ck.t("ops.nav.dashboard") }), hours), cards, boxes);
  const draw = async () => {
    const h = Number(hours.value);
    const bucket = h <= 24 ? 3600 : h <= 168 ? 6 * 3600 : 86400;
    const rows = (await ck.api("GET", `/admin/v1/stats?hours=${h}&bucket=${bucket}`)).data;
    const totals = { requests: 0, tokens: 0, credits: 0, errors: 0, unbilled: 0, unpaid: 0 };
    for (const r of rows) {
      totals.requests += r.requests; totals.tokens += r.prompt_tokens + r.completion_tokens;
      totals.credits += r.credits; totals.errors += r.errors;
      totals.unbilled += r.unbilled_tokens || 0; totals.unpaid += r.unpaid_credits || 0;
    }
    // What the operator may owe its upstreams that no client pays: failed attempts' tokens, usage past what a balance could pay.
    cards.replaceChildren(...[[ck.t("ops.dash.requests"), ck.num(totals.requests)], [ck.t("ops.dash.tokens"), ck.num(totals.tokens)],
      [ck.t("ops.dash.credits_charged"), ck.credits(totals.credits)], [ck.t("ops.dash.errors"), ck.num(totals.errors)],
      [ck.t("ops.dash.unbilled_tokens"), ck.num(totals.unbilled)], [ck.t("ops.dash.unpaid_credits"), ck.credits(totals.unpaid)]].map(([label, value]) =>
      el("div", { class: "card stat" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }))));
    const start = Math.floor((Date.now() / 1000 - h * 3600) / bucket) * bucket;
    const buckets = [];
    for (let t = start; t <= Date.now() / 1000; t += bucket) buckets.push(t);
    const label = (t) => ck.date(new Date(t * 1000), bucket < 86400);
    // The six busiest models by name, the rest together as "other", so the legend stays readable.
    const busy = {};
    for (const r of rows) busy[r.model] = (busy[r.model] || 0) + r.requests;
    const top = Object.keys(busy).sort((a, b) => busy[b] - busy[a]).slice(0, 6);
    const other = ck.t("ops.dash.other");
    for (const r of rows) if (!top.includes(r.model)) r.model = other;
    const modelNames = [...top.sort(), ...(rows.some((r) => r.model === other) ? [other] : [])];
    for (const c of charts) c.destroy();
    charts = [];
    boxes.replaceChildren();
    for (const [title, pick] of [["ops.dash.requests_per_model", (r) => r.requests], ["ops.dash.tokens_per_model", (r) => r.prompt_tokens + r.completion_tokens],
      ["ops.dash.credits_per_model", (r) => r.credits], ["ops.dash.errors_per_model", (r) => r.errors]]) {
      const canvas = el("canvas", { "aria-label": ck.t(title) });
      boxes.append(el("div", { class: "card" }, el("h2", { text: ck.t(title) }), el("div", { class: "chart-box" }, canvas)));
      charts.push(new Chart(canvas, {
        type: "bar",
        data: {
          labels: buckets.map(label),
          datasets: modelNames.map((m, i) => ({
            label: m, backgroundColor: m === other ? "#adb5bd" : COLORS[i % COLORS.length], borderRadius: 3,
            data: buckets.map((b) => rows.filter((r) => r.model === m && r.bucket === b).reduce((s, r) => s + pick(r), 0)),
          })),
        },
        options: {
          maintainAspectRatio: false, animation: false,
          plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
          scales: { x: { stacked: true, grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
            y: { stacked: true, beginAtZero: true, grid: { color: "#eef0f3" } } },
        },
      }));
    }
  };
  hours.addEventListener("change", draw);
  await draw();
}

// --- users -----------------------------------------------------------------------------

async function users(root) {
  const q = el("input", { id: "user-query", type: "search", placeholder: ck.t("ops.users.query") });
  const message = el("div", { hidden: true, role: "status", id: "users-message" });
  const form = el("form", { class: "row", id: "user-search" }, el("div", { class: "field grow" }, q), el("button", { type: "submit" }, ck.t("ops.users.search")));
  const [wrap, body] = table([["ops.users.id"], ["ops.users.email"], ["ops.users.balance", "num"], ["ops.users.owed", "num"], ["ops.users.role"], ["common.status"], ["ops.users.top_up"], [""]], "users-body");
  form.addEventListener("submit", (ev) => { ev.preventDefault(); fill(); });
  root.append(el("h1", { text: ck.t("ops.nav.users") }), el("div", { class: "card" }, form, message, wrap));
  // Refills can overlap (the first list, a search, a top-up): only the latest one started may
  // replace the rows, and what the operator has typed into a row survives it. The table is
  // aria-busy while any refill is out.
  let latest = 0;
  let pending = 0;
  async function fill() {
    const mine = ++latest;
    pending += 1;
    body.setAttribute("aria-busy", "true");
    try {
      const list = (await ck.api("GET", `/admin/v1/users?q=${encodeURIComponent(q.value.trim())}&limit=100`)).data;
      if (mine === latest) show(list);  // else a later refill is under way: its rows win
    } finally {
      pending -= 1;
      if (!pending) body.setAttribute("aria-busy", "false");
    }
  }
  function show(list) {
    const typed = new Map();
    let focused = null;
    for (const input of body.querySelectorAll(".topup-amount")) {
      const id = input.closest("tr").dataset.userId;
      if (input.value) typed.set(id, input.value);
      if (input === document.activeElement) focused = id;
    }
    body.replaceChildren();
    if (!list.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "8", text: ck.t("ops.users.none") })));
    for (const u of list) {
      const amount = el("input", { type: "number", min: "0.01", step: "0.01", placeholder: ck.t("common.credits"), class: "topup-amount", "aria-label": ck.t("ops.users.top_up_user", { id: u.id }) });
      const topup = el("form", { class: "inline-form" }, amount, el("button", { type: "submit", class: "secondary small" }, ck.t("ops.users.add")));
      topup.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        try {
          const reply = await ck.api("POST", `/admin/v1/users/${u.id}/topups`, { credits: Number(amount.value) });
          flash(message, true, ck.t("ops.users.added", { credits: ck.credits(amount.value), id: u.id, balance: ck.credits(reply.balance) }));
          amount.value = "";  // added: not to be carried into the refilled row
          await fill();
        } catch (e) { flash(message, false, e.message); }
      });
      const toggle = el("button", { class: u.disabled ? "secondary small" : "danger small", onclick: async () => {
        try {
          await ck.api("PATCH", `/admin/v1/users/${u.id}`, { disabled: !u.disabled });
          flash(message, true, ck.t(u.disabled ? "ops.users.enabled" : "ops.users.disabled", { id: u.id }));
          await fill();
        } catch (e) { flash(message, false, e.message); }
      } }, ck.t(u.disabled ? "common.enable" : "common.disable"));
      body.append(el("tr", { "data-user-id": u.id },
        el("td", { text: u.id }), el("td", { class: "wrap", text: u.email || u.name }),
        el("td", { class: "num", text: ck.credits(u.balance) }),
        el("td", { class: u.owed > 0 ? "num owed" : "num", text: ck.credits(u.owed) }),
        el("td", {}, u.role ? el("span", { class: u.role === "operator" ? "badge warn" : "badge", text: ck.t(`ops.role.${u.role === "operator" ? "operator" : "user"}`) }) : el("span", { class: "hint", text: ck.t("ops.users.api_only") })),
        el("td", {}, el("span", { class: u.disabled ? "badge bad" : "badge ok", text: ck.t(u.disabled ? "common.disabled" : "common.active") })),
        el("td", {}, topup), el("td", {}, el("div", { class: "actions" }, toggle))));
      const id = String(u.id);
      if (typed.has(id)) amount.value = typed.get(id);
      if (focused === id) amount.focus();
    }
    ck.label(body);
  }
  await fill();
}

// --- channels -----------------------------------------------------------------------------

async function channels(root) {
  const f = {
    name: el("input", { id: "ch-name", required: true, placeholder: ck.t("ops.ch.name_placeholder") }),
    base_url: el("input", { id: "ch-base-url", required: true, placeholder: "https://api.openai.com/v1" }),
    api_key: el("input", { id: "ch-api-key", type: "password", autocomplete: "off", placeholder: "sk-…" }),
    models: el("input", { id: "ch-models", required: true, placeholder: "gpt-3.5-turbo, gpt-4" }),
    priority: el("input", { id: "ch-priority", type: "number", value: "0" }),
    weight: el("input", { id: "ch-weight", type: "number", min: "0", value: "1" }),
  };
  let editing = null;
  const title = el("h2", { text: ck.t("ops.ch.add_title") });
  const save = el("button", { type: "submit", id: "ch-save" }, ck.t("ops.ch.add"));
  const cancel = el("button", { type: "button", class: "secondary", hidden: true, onclick: () => reset() }, ck.t("common.cancel"));
  const message = el("div", { hidden: true, role: "status", id: "channels-message" });
  const field = (label, input, cls) => el("div", { class: `field ${cls || "grow"}` }, el("label", { for: input.id, text: label }), input);
  const form = el("form", { id: "channel-form" },
    el("div", { class: "row" }, field(ck.t("ops.ch.name"), f.name), field(ck.t("ops.ch.base_url_v1"), f.base_url)),
    el("div", { class: "row" }, field(ck.t("ops.ch.api_key"), f.api_key), field(ck.t("ops.ch.models_comma"), f.models)),
    el("div", { class: "row" }, field(ck.t("ops.ch.priority"), f.priority, ""), field(ck.t("ops.ch.weight"), f.weight, ""), el("div", { class: "spacer" }), cancel, save));
  const [wrap, body] = table([["ops.ch.name"], ["ops.ch.base_url"], ["ops.ch.models"], ["ops.ch.priority", "num"], ["ops.ch.weight", "num"], ["ops.ch.health"], [""]], "channels-body");
  const reset = () => {
    editing = null; form.reset(); f.priority.value = "0"; f.weight.value = "1";
    title.textContent = ck.t("ops.ch.add_title"); save.textContent = ck.t("ops.ch.add"); cancel.hidden = true; f.api_key.placeholder = "sk-…";
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const req = { name: f.name.value.trim(), base_url: f.base_url.value.trim(),
      models: f.models.value.split(",").map((m) => m.trim()).filter(Boolean),
      priority: Number(f.priority.value || 0), weight: Number(f.weight.value || 1) };
    if (f.api_key.value || !editing) req.api_key = f.api_key.value;
    try {
      if (editing) await ck.api("PATCH", `/admin/v1/channels/${editing}`, req);
      else await ck.api("POST", "/admin/v1/channels", req);
      flash(message, true, ck.t(editing ? "ops.ch.saved" : "ops.ch.added", { name: req.name }));
      reset();
      await fill();
    } catch (e) { flash(message, false, e.message); }
  });
  root.append(el("h1", { text: ck.t("ops.nav.channels") }), el("div", { class: "card" }, title, form, message),
    el("div", { class: "card" }, el("h2", { text: ck.t("ops.ch.upstreams") }), wrap));

  async function fill() {
    const list = (await ck.api("GET", "/admin/v1/channels")).data;
    body.replaceChildren();
    if (!list.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "8", text: ck.t("ops.ch.none") })));
    for (const c of list) {
      const result = el("span", { class: "test-result sub" });
      const test = el("button", { class: "secondary small", onclick: async () => {
        result.className = "test-result sub hint"; result.textContent = ck.t("ops.ch.testing");
        try {
          const r = await ck.api("POST", `/admin/v1/channels/${c.id}/test`, {});
          result.className = r.ok ? "test-result sub badge ok" : "test-result sub badge bad";
          result.textContent = r.ok ? ck.t("ops.ch.test_ok", { ms: Math.round(r.latency_ms) }) : r.error;
        } catch (e) { result.className = "test-result sub badge bad"; result.textContent = e.message; }
      } }, ck.t("ops.ch.test"));
      const edit = el("button", { class: "secondary small", onclick: () => {
        editing = c.id; f.name.value = c.name; f.base_url.value = c.base_url; f.api_key.value = "";
        f.api_key.placeholder = ck.t("ops.ch.key_unchanged", { key: c.api_key || "—" }); f.models.value = c.models.join(", ");
        f.priority.value = c.priority; f.weight.value = c.weight;
        title.textContent = ck.t("ops.ch.edit_title", { name: c.name }); save.textContent = ck.t("common.save"); cancel.hidden = false;
        form.scrollIntoView({ behavior: "smooth" });
      } }, ck.t("common.edit"));
      const toggle = el("button", { class: c.enabled ? "danger small" : "secondary small", onclick: async () => {
        await ck.api("PATCH", `/admin/v1/channels/${c.id}`, { enabled: !c.enabled });
        await fill();
      } }, ck.t(c.enabled ? "common.disable" : "common.enable"));
      const health = !c.enabled ? [ck.t("common.disabled"), "badge"] : [ck.messages[`health.${c.health}`] || c.health, c.health === "healthy" ? "badge ok" : "badge warn"];
      body.append(el("tr", { "data-channel-id": c.id },
        el("td", { text: c.name }), el("td", { class: "mono url", text: c.base_url }),
        el("td", { class: "wrap", text: c.models.join(", ") }),
        el("td", { class: "num", text: c.priority }), el("td", { class: "num", text: c.weight }),
        el("td", {}, el("div", {}, el("span", { class: health[1], text: health[0] }), result)),
        el("td", {}, el("div", { class: "actions" }, test, edit, toggle))));
    }
    ck.label(body);
  }
  await fill();
}

// --- prices --------------------------------------------------------------------------------

async function prices(root) {
  const f = {
    model: el("input", { id: "price-model", required: true, placeholder: "gpt-4o" }),
    prompt: el("input", { id: "price-prompt", type: "number", min: "0", step: "any", required: true }),
    completion: el("input", { id: "price-completion", type: "number", min: "0", step: "any", required: true }),
    min_charge: el("input", { id: "price-min", type: "number", min: "0", step: "any", placeholder: ck.t("ops.price.keep") }),
  };
  const message = el("div", { hidden: true, role: "status" });
  const field = (label, input) => el("div", { class: "field grow" }, el("label", { for: input.id, text: label }), input);
  const form = el("form", { class: "row", id: "price-form" }, field(ck.t("usage.model"), f.model), field(ck.t("ops.price.prompt_1k_tokens"), f.prompt),
    field(ck.t("ops.price.completion_1k_tokens"), f.completion), field(ck.t("ops.price.min_charge"), f.min_charge), el("button", { type: "submit" }, ck.t("ops.price.save")));
  const [wrap, body] = table([["usage.model"], ["ops.price.prompt_1k", "num"], ["ops.price.completion_1k", "num"], ["ops.price.minimum", "num"], ["ops.price.context", "num"], [""]], "prices-body");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const req = { prompt: Number(f.prompt.value), completion: Number(f.completion.value) };
    if (f.min_charge.value !== "") req.min_charge = Number(f.min_charge.value);
    try {
      await ck.api("PUT", `/admin/v1/prices/${encodeURIComponent(f.model.value.trim())}`, req);
      flash(message, true, ck.t("ops.price.saved", { model: f.model.value.trim() }));
      form.reset();
      await fill();
    } catch (e) { flash(message, false, e.message); }
  });
  root.append(el("h1", { text: ck.t("ops.nav.prices") }),
    el("div", { class: "card" }, el("h2", { text: ck.t("ops.price.set") }), el("p", { class: "hint", text: ck.t("ops.price.hint") }), form, message),
    el("div", { class: "card" }, wrap));
  async function fill() {
    body.replaceChildren(...(await ck.api("GET", "/admin/v1/prices")).data.map((p) => el("tr", {},
      el("td", { text: p.model }), el("td", { class: "num", text: p.prompt }), el("td", { class: "num", text: p.completion }),
      el("td", { class: "num", text: p.min_charge }), el("td", { class: "num", text: ck.num(p.context_window) }),
      el("td", {}, el("div", { class: "actions" }, el("button", { class: "secondary small", onclick: () => {
        f.model.value = p.model; f.prompt.value = p.prompt; f.completion.value = p.completion; f.min_charge.value = p.min_charge;
        form.scrollIntoView({ behavior: "smooth" });
      } }, ck.t("common.edit")))))));
    ck.label(body);
  }
  await fill();
}

// --- redeem codes ------------------------------------------------------------------------------

async function codes(root) {
  const credits = el("input", { id: "code-credits", type: "number", min: "0.01", step: "0.01", required: true, value: "10" });
  const count = el("input", { id: "code-count", type: "number", min: "1", max: "1000", required: true, value: "10" });
  const out = el("div", { id: "codes-out", hidden: true });
  const message = el("div", { hidden: true, role: "status" });
  const form = el("form", { class: "row", id: "codes-form" },
    el("div", { class: "field grow" }, el("label", { for: "code-credits", text: ck.t("ops.codes.credits_each") }), credits),
    el("div", { class: "field grow" }, el("label", { for: "code-count", text: ck.t("ops.codes.count") }), count),
    el("button", { type: "submit" }, ck.t("ops.codes.create")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const reply = await ck.api("POST", "/admin/v1/redeem-codes", { credits: Number(credits.value), count: Number(count.value) });
      const copy = el("button", { type: "button", class: "secondary small", onclick: () => navigator.clipboard && navigator.clipboard.writeText(reply.codes.join("\n")) }, ck.t("common.copy_all"));
      out.replaceChildren(
        el("div", { class: "card-head" }, el("p", { text: ck.t("ops.codes.made", { count: ck.num(reply.codes.length), credits: ck.credits(credits.value) }) }), copy),
        el("div", { class: "codes" }, reply.codes.map((c) => el("code", { class: "redeem-code", text: c }))));
      out.hidden = false;
      message.hidden = true;
    } catch (e) { flash(message, false, e.message); }
  });
  root.append(el("h1", { text: ck.t("ops.nav.codes") }),
    el("div", { class: "card" }, el("h2", { text: ck.t("ops.codes.batch") }),
      el("p", { class: "hint", text: ck.t("ops.codes.hint") }), form, message, out));
}

// --- audit log -------------------------------------------------------------------------------

// Every change made with the admin key or an operator's session, newest first. Only text is
// written into the page (textContent): what an entry holds never becomes markup.
async function audit(root) {
  const [wrap, body] = table([["ops.audit.when"], ["ops.audit.who"], ["ops.audit.what"], ["ops.audit.target"],
    ["ops.audit.status", "num"], ["ops.audit.from"], ["ops.audit.details"]], "audit-body");
  const older = el("button", { type: "button", class: "secondary small", id: "audit-older", hidden: true }, ck.t("ops.audit.older"));
  root.append(el("h1", { text: ck.t("ops.nav.audit") }),
    el("div", { class: "card" }, el("p", { class: "hint", text: ck.t("ops.audit.hint") }), wrap, older));
  let last = 0;
  const details = (d) => {
    const values = d.values || {};
    return (d.fields || []).map((f) => (f in values ? `${f}=${JSON.stringify(values[f])}` : f)).join(", ");
  };
  async function more() {
    const rows = (await ck.api("GET", `/admin/v1/audit?limit=100${last ? `&before=${last}` : ""}`)).data;
    body.append(...rows.map((r) => el("tr", { "data-audit-id": r.id },
      el("td", { text: ck.date(new Date(r.created * 1000), true) }), el("td", { text: r.actor }),
      el("td", {}, el("code", { text: r.action })), el("td", { text: r.target }),
      el("td", { class: "num", text: r.status }), el("td", { text: r.address }), el("td", { class: "audit-details", text: details(r.details) }))));
    if (rows.length) last = rows[rows.length - 1].id;
    older.hidden = rows.length < 100;
    if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "hint", text: ck.t("ops.audit.empty") })));
    ck.label(body);
  }
  older.addEventListener("click", () => more().catch((e) => root.append(el("div", { class: "error", text: e.message }))));
  await more();
}


// --- payment orders: filter, mark for review, the notifications kept for each ----------------

async function orders(root) {
  const status = el("select", { id: "orders-status", "aria-label": ck.t("common.status") },
    ["", "pending", "expired", "paid", "refunded", "closed"].map((v) => el("option", { value: v }, v ? ck.t(`topup.status.${v}`) : ck.t("ops.orders.any_status"))));
  const provider = el("select", { id: "orders-provider", "aria-label": ck.t("topup.pay_with") },
    ["", "alipay", "stripe", "demo"].map((v) => el("option", { value: v }, v ? ck.t(`topup.provider.${v}`) : ck.t("ops.orders.any_provider"))));
  const user = el("input", { id: "orders-user", type: "number", min: "1", placeholder: ck.t("ops.orders.user_id"), "aria-label": ck.t("ops.orders.user_id") });
  const review = el("input", { id: "orders-review", type: "checkbox" });
  const form = el("form", { class: "row", id: "orders-filter" },
    el("div", { class: "field" }, status), el("div", { class: "field" }, provider), el("div", { class: "field" }, user),
    el("label", { class: "field inline-form" }, review, ck.t("ops.orders.review_only")),
    el("button", { type: "submit", class: "secondary" }, ck.t("ops.orders.filter")));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); fill(); });
  const message = el("div", { hidden: true, role: "status", id: "orders-message" });
  const [wrap, body] = table([["topup.time"], ["ops.orders.order"], ["ops.orders.user_id"], ["topup.amount", "num"],
    ["topup.credits", "num"], ["topup.pay_with"], ["common.status"], ["ops.orders.review"], [""]], "ops-orders-body");
  wrap.classList.add("orders-wrap");
  const notes = el("div", { id: "order-notes" });
  root.append(el("h1", { text: ck.t("ops.nav.orders") }), el("div", { class: "card" }, form, message, wrap), notes);

  async function showNotes(o) {
    const list = (await ck.api("GET", `/admin/v1/payment-notifications?order_id=${encodeURIComponent(o.id)}&limit=100`)).data;
    const [nwrap, nbody] = table([["topup.time"], ["topup.pay_with"], ["ops.orders.event"], ["ops.orders.verdict"], ["ops.orders.reason"]], "order-notes-body");
    if (!list.length) nbody.append(el("tr", {}, el("td", { class: "empty", colspan: "5", text: ck.t("ops.orders.no_notes") })));
    for (const n of list) {
      nbody.append(el("tr", {}, el("td", { text: ck.when(n.received) }), el("td", { text: n.provider }), el("td", { class: "mono", text: n.event }),
        el("td", {}, el("span", { class: n.verdict === "credited" ? "badge ok" : n.verdict === "refused" ? "badge bad" : "badge warn", text: n.verdict })),
        el("td", { class: "wrap", text: n.reason })));
    }
    ck.label(nbody);
    notes.replaceChildren(el("div", { class: "card" }, el("h2", {}, ck.t("ops.orders.notes_of"), " ", el("code", { text: o.id })), nwrap));
  }

  async function fill() {
    const q = new URLSearchParams({ limit: "200" });
    if (status.value) q.set("status", status.value);
    if (provider.value) q.set("provider", provider.value);
    if (user.value) q.set("user_id", user.value);
    if (review.checked) q.set("review", "true");
    let list;
    try {
      list = (await ck.api("GET", `/admin/v1/orders?${q}`)).data;
    } catch (e) { flash(message, false, e.message); return; }
    body.replaceChildren();
    if (!list.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "9", text: ck.t("topup.none") })));
    for (const o of list) {
      const mark = el("button", { class: o.review ? "secondary small" : "danger small", "data-action": "review" },
        ck.t(o.review ? "ops.orders.clear_review" : "ops.orders.mark_review"));
      mark.addEventListener("click", async () => {
        try {
          const note = o.review ? "" : ck.t("ops.orders.marked_by_operator");
          await ck.api("PATCH", `/admin/v1/orders/${o.id}`, { review: !o.review, note });
          flash(message, true, ck.t(o.review ? "ops.orders.cleared" : "ops.orders.marked", { id: o.id }));
          await fill();
        } catch (e) { flash(message, false, e.message); }
      });
      const show = el("button", { class: "secondary small", "data-action": "notes", onclick: () => showNotes(o) }, ck.t("ops.orders.notes"));
      body.append(el("tr", { "data-order-id": o.id },
        el("td", { text: ck.when(o.created) }), el("td", { class: "mono", text: o.id }), el("td", { text: String(o.user_id) }),
        el("td", { class: "num", text: `${o.amount.toFixed(2)} ${o.currency}` }), el("td", { class: "num", text: ck.credits(o.credits) }),
        el("td", { class: "mono", text: o.provider }),
        el("td", {}, el("span", { class: o.status === "paid" ? "badge ok" : o.status === "pending" ? "badge warn" : "badge bad", text: ck.t(`topup.status.${o.status}`) })),
        el("td", {}, o.review ? el("span", { class: "badge bad", title: o.review_note, text: ck.t("ops.orders.under_review") }) : "—"),
        el("td", {}, el("div", { class: "actions" }, show, mark))));
    }
    ck.label(body);
  }
  await fill();
}

// --- every user's calls: the console's filters, plus the user; CSV of the same filter -------------

async function usage(root) {
  const [wrap, body] = table([["usage.time"], ["ops.orders.user_id"], ["usage.model"], ["usage.key"], ["usage.prompt", "num"],
    ["usage.completion", "num"], ["common.credits", "num"], ["common.status"]], "ops-usage-body");
  const message = el("div", { hidden: true, role: "status", id: "ops-usage-message" });
  const filter = ck.usageFilter("/admin/v1/usage", null, true, (q) => fill(q));
  root.append(el("h1", { text: ck.t("ops.nav.usage") }), el("div", { class: "card" }, filter.form, message, wrap));
  async function fill(q) {
    q.set("limit", "200");
    let rows;
    try {
      rows = (await ck.api("GET", `/admin/v1/usage?${q}`)).data;
    } catch (e) { flash(message, false, e.message); return; }
    message.hidden = true;
    body.replaceChildren();
    if (!rows.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "8", text: ck.t("usage.none") })));
    for (const r of rows) {
      body.append(el("tr", { "data-request-id": r.request_id },
        el("td", { text: ck.when(r.created) }), el("td", { text: String(r.user_id) }), el("td", { text: r.model }),
        el("td", { text: `#${r.key_id}` }), el("td", { class: "num", text: ck.num(r.prompt_tokens) }),
        el("td", { class: "num", text: ck.num(r.completion_tokens) }), el("td", { class: "num", text: ck.credits(r.credits) }),
        el("td", {}, el("span", { class: r.status === "complete" ? "badge ok" : "badge warn", text: ck.status(r.status) }))));
    }
    ck.label(body);
  }
  await fill(filter.params());
}

// --- the notice on every page: an announcement and a contact line, plain text ---------------------

async function notice(root) {
  const current = await ck.api("GET", "/api/notice");
  const text = el("textarea", { id: "notice-announcement", rows: "4", maxlength: "2000" });
  text.value = current.announcement;
  const contact = el("input", { id: "notice-contact", maxlength: "300", placeholder: ck.t("ops.notice.contact_example") });
  contact.value = current.contact;
  const message = el("div", { hidden: true, role: "status", id: "notice-message" });
  const form = el("form", { id: "notice-form" },
    el("div", { class: "field" }, el("label", { for: "notice-announcement", text: ck.t("ops.notice.announcement") }), text),
    el("div", { class: "field" }, el("label", { for: "notice-contact", text: ck.t("ops.notice.contact") }), contact),
    el("button", { type: "submit", id: "notice-save" }, ck.t("ops.notice.save")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await ck.api("PUT", "/admin/v1/notice", { announcement: text.value, contact: contact.value });
      flash(message, true, ck.t("ops.notice.saved"));
      await ck.notice();
    } catch (e) { flash(message, false, e.message); }
  });
  root.append(el("h1", { text: ck.t("ops.nav.notice") }),
    el("div", { class: "card" }, el("p", { class: "hint", text: ck.t("ops.notice.hint") }), form, message));
}

start();
