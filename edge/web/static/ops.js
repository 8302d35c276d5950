// The operator pages: a dashboard per model, users, channels, prices and redeem codes.
// Everything here goes through the admin API (/admin/v1), which lets an operator's session in.
"use strict";

const { el } = ck;
const SECTIONS = [["dashboard", "Dashboard"], ["users", "Users"], ["channels", "Channels"], ["prices", "Prices"], ["codes", "Redeem codes"]];
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
    el("nav", { class: "sidenav" }, SECTIONS.map(([s, t]) => el("a", { href: `#${s}`, id: `nav-${s}`, class: s === current ? "active" : "" }, t))),
    content);
  ({ dashboard, users, channels, prices, codes })[current](content).catch((e) => content.append(el("div", { class: "error", text: e.message })));
}

function table(headers, id) {
  const body = el("tbody", { id });
  const wrap = el("div", { class: "table-wrap" }, el("table", {},
    el("thead", {}, el("tr", {}, headers.map(([h, cls]) => el("th", { class: cls || "", text: h })))), body));
  return [wrap, body];
}

function flash(target, ok, text) {
  target.className = ok ? "notice" : "error";
  target.textContent = text;
  target.hidden = false;
}

// --- dashboard --------------------------------------------------------------------------

async function dashboard(root) {
  const hours = el("select", { id: "dash-hours", "aria-label": "Window" },
    [[24, "Last 24 hours"], [168, "Last 7 days"], [720, "Last 30 days"]].map(([h, t]) => el("option", { value: h }, t)));
  const cards = el("div", { class: "grid stats", id: "dash-totals" });
  const boxes = el("div", { class: "grid charts" });
  root.append(el("div", { class: "card-head" }, el("h1", { text: "Dashboard" }), hours), cards, boxes);
  const draw = async () => {
    const h = Number(hours.value);
    const bucket = h <= 24 ? 3600 : h <= 168 ? 6 * 3600 : 86400;
    const rows = (await ck.api("GET", `/admin/v1/stats?hours=${h}&bucket=${bucket}`)).data;
    const totals = { requests: 0, tokens: 0, credits: 0, errors: 0 };
    for (const r of rows) {
      totals.requests += r.requests; totals.tokens += r.prompt_tokens + r.completion_tokens;
      totals.credits += r.credits; totals.errors += r.errors;
    }
    cards.replaceChildren(...[["Requests", totals.requests.toLocaleString("en-US")], ["Tokens", totals.tokens.toLocaleString("en-US")],
      ["Credits charged", ck.credits(totals.credits)], ["Errors", totals.errors.toLocaleString("en-US")]].map(([label, value]) =>
      el("div", { class: "card stat" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }))));
    const start = Math.floor((Date.now() / 1000 - h * 3600) / bucket) * bucket;
    const buckets = [];
    for (let t = start; t <= Date.now() / 1000; t += bucket) buckets.push(t);
    const label = (t) => { const d = new Date(t * 1000); return bucket < 86400 ? d.toLocaleString("en-GB", { day: "2-digit", hour: "2-digit", minute: "2-digit" }) : d.toLocaleDateString("en-GB", { month: "short", day: "2-digit" }); };
    // The six busiest models by name, the rest together as "other", so the legend stays readable.
    const busy = {};
    for (const r of rows) busy[r.model] = (busy[r.model] || 0) + r.requests;
    const top = Object.keys(busy).sort((a, b) => busy[b] - busy[a]).slice(0, 6);
    for (const r of rows) if (!top.includes(r.model)) r.model = "other";
    const modelNames = [...top.sort(), ...(rows.some((r) => r.model === "other") ? ["other"] : [])];
    for (const c of charts) c.destroy();
    charts = [];
    boxes.replaceChildren();
    for (const [title, pick] of [["Requests", (r) => r.requests], ["Tokens", (r) => r.prompt_tokens + r.completion_tokens],
      ["Credits", (r) => r.credits], ["Errors", (r) => r.errors]]) {
      const canvas = el("canvas", { "aria-label": `${title} per model` });
      boxes.append(el("div", { class: "card" }, el("h2", { text: `${title} per model` }), el("div", { class: "chart-box" }, canvas)));
      charts.push(new Chart(canvas, {
        type: "bar",
        data: {
          labels: buckets.map(label),
          datasets: modelNames.map((m, i) => ({
            label: m, backgroundColor: m === "other" ? "#adb5bd" : COLORS[i % COLORS.length], borderRadius: 3,
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
  const q = el("input", { id: "user-query", type: "search", placeholder: "Email, name or id" });
  const message = el("div", { hidden: true, role: "status", id: "users-message" });
  const form = el("form", { class: "row", id: "user-search" }, el("div", { class: "field grow" }, q), el("button", { type: "submit" }, "Search"));
  const [wrap, body] = table([["Id"], ["Email / name"], ["Balance", "num"], ["Role"], ["Status"], ["Top up"], [""]], "users-body");
  form.addEventListener("submit", (ev) => { ev.preventDefault(); fill(); });
  root.append(el("h1", { text: "Users" }), el("div", { class: "card" }, form, message, wrap));
  async function fill() {
    const list = (await ck.api("GET", `/admin/v1/users?q=${encodeURIComponent(q.value.trim())}&limit=100`)).data;
    body.replaceChildren();
    if (!list.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "7", text: "No users found." })));
    for (const u of list) {
      const amount = el("input", { type: "number", min: "0.01", step: "0.01", placeholder: "credits", class: "topup-amount", "aria-label": `Top up user ${u.id}` });
      const topup = el("form", { class: "inline-form" }, amount, el("button", { type: "submit", class: "secondary small" }, "Add"));
      topup.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        try {
          const reply = await ck.api("POST", `/admin/v1/users/${u.id}/topups`, { credits: Number(amount.value) });
          flash(message, true, `Added ${ck.credits(amount.value)} credits to user ${u.id}; balance ${ck.credits(reply.balance)}.`);
          await fill();
        } catch (e) { flash(message, false, e.message); }
      });
      const toggle = el("button", { class: u.disabled ? "secondary small" : "danger small", onclick: async () => {
        try {
          await ck.api("PATCH", `/admin/v1/users/${u.id}`, { disabled: !u.disabled });
          flash(message, true, `User ${u.id} ${u.disabled ? "enabled" : "disabled"}.`);
          await fill();
        } catch (e) { flash(message, false, e.message); }
      } }, u.disabled ? "Enable" : "Disable");
      body.append(el("tr", { "data-user-id": u.id },
        el("td", { text: u.id }), el("td", { class: "wrap", text: u.email || u.name }),
        el("td", { class: "num", text: ck.credits(u.balance) }),
        el("td", {}, u.role ? el("span", { class: u.role === "operator" ? "badge warn" : "badge", text: u.role }) : el("span", { class: "hint", text: "API only" })),
        el("td", {}, el("span", { class: u.disabled ? "badge bad" : "badge ok", text: u.disabled ? "disabled" : "active" })),
        el("td", {}, topup), el("td", {}, el("div", { class: "actions" }, toggle))));
    }
    ck.label(body);
  }
  await fill();
}

// --- channels -----------------------------------------------------------------------------

async function channels(root) {
  const f = {
    name: el("input", { id: "ch-name", required: true, placeholder: "openai-main" }),
    base_url: el("input", { id: "ch-base-url", required: true, placeholder: "https://api.openai.com/v1" }),
    api_key: el("input", { id: "ch-api-key", type: "password", autocomplete: "off", placeholder: "sk-…" }),
    models: el("input", { id: "ch-models", required: true, placeholder: "gpt-3.5-turbo, gpt-4" }),
    priority: el("input", { id: "ch-priority", type: "number", value: "0" }),
    weight: el("input", { id: "ch-weight", type: "number", min: "0", value: "1" }),
  };
  let editing = null;
  const title = el("h2", { text: "Add a channel" });
  const save = el("button", { type: "submit", id: "ch-save" }, "Add channel");
  const cancel = el("button", { type: "button", class: "secondary", hidden: true, onclick: () => reset() }, "Cancel");
  const message = el("div", { hidden: true, role: "status", id: "channels-message" });
  const field = (label, input, cls) => el("div", { class: `field ${cls || "grow"}` }, el("label", { for: input.id, text: label }), input);
  const form = el("form", { id: "channel-form" },
    el("div", { class: "row" }, field("Name", f.name), field("Base URL (with /v1)", f.base_url)),
    el("div", { class: "row" }, field("API key", f.api_key), field("Models (comma separated)", f.models)),
    el("div", { class: "row" }, field("Priority", f.priority, ""), field("Weight", f.weight, ""), el("div", { class: "spacer" }), cancel, save));
  const [wrap, body] = table([["Name"], ["Base URL"], ["Models"], ["Priority", "num"], ["Weight", "num"], ["Health"], [""]], "channels-body");
  const reset = () => {
    editing = null; form.reset(); f.priority.value = "0"; f.weight.value = "1";
    title.textContent = "Add a channel"; save.textContent = "Add channel"; cancel.hidden = true; f.api_key.placeholder = "sk-…";
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
      flash(message, true, editing ? `Channel “${req.name}” saved.` : `Channel “${req.name}” added.`);
      reset();
      await fill();
    } catch (e) { flash(message, false, e.message); }
  });
  root.append(el("h1", { text: "Channels" }), el("div", { class: "card" }, title, form, message),
    el("div", { class: "card" }, el("h2", { text: "Upstream channels" }), wrap));

  async function fill() {
    const list = (await ck.api("GET", "/admin/v1/channels")).data;
    body.replaceChildren();
    if (!list.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "8", text: "No channels yet." })));
    for (const c of list) {
      const result = el("span", { class: "test-result sub" });
      const test = el("button", { class: "secondary small", onclick: async () => {
        result.className = "test-result sub hint"; result.textContent = "testing…";
        try {
          const r = await ck.api("POST", `/admin/v1/channels/${c.id}/test`, {});
          result.className = r.ok ? "test-result sub badge ok" : "test-result sub badge bad";
          result.textContent = r.ok ? `ok · ${Math.round(r.latency_ms)} ms` : r.error;
        } catch (e) { result.className = "test-result sub badge bad"; result.textContent = e.message; }
      } }, "Test");
      const edit = el("button", { class: "secondary small", onclick: () => {
        editing = c.id; f.name.value = c.name; f.base_url.value = c.base_url; f.api_key.value = "";
        f.api_key.placeholder = `unchanged (${c.api_key || "none"})`; f.models.value = c.models.join(", ");
        f.priority.value = c.priority; f.weight.value = c.weight;
        title.textContent = `Edit channel “${c.name}”`; save.textContent = "Save"; cancel.hidden = false;
        form.scrollIntoView({ behavior: "smooth" });
      } }, "Edit");
      const toggle = el("button", { class: c.enabled ? "danger small" : "secondary small", onclick: async () => {
        await ck.api("PATCH", `/admin/v1/channels/${c.id}`, { enabled: !c.enabled });
        await fill();
      } }, c.enabled ? "Disable" : "Enable");
      const health = !c.enabled ? ["disabled", "badge"] : c.health === "healthy" ? ["healthy", "badge ok"] : [c.health, "badge warn"];
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
    min_charge: el("input", { id: "price-min", type: "number", min: "0", step: "any", placeholder: "keep" }),
  };
  const message = el("div", { hidden: true, role: "status" });
  const field = (label, input) => el("div", { class: "field grow" }, el("label", { for: input.id, text: label }), input);
  const form = el("form", { class: "row", id: "price-form" }, field("Model", f.model), field("Prompt / 1K tokens", f.prompt),
    field("Completion / 1K tokens", f.completion), field("Minimum charge", f.min_charge), el("button", { type: "submit" }, "Save price"));
  const [wrap, body] = table([["Model"], ["Prompt / 1K", "num"], ["Completion / 1K", "num"], ["Minimum", "num"], ["Context", "num"], [""]], "prices-body");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const req = { prompt: Number(f.prompt.value), completion: Number(f.completion.value) };
    if (f.min_charge.value !== "") req.min_charge = Number(f.min_charge.value);
    try {
      await ck.api("PUT", `/admin/v1/prices/${encodeURIComponent(f.model.value.trim())}`, req);
      flash(message, true, `Price of ${f.model.value.trim()} saved.`);
      form.reset();
      await fill();
    } catch (e) { flash(message, false, e.message); }
  });
  root.append(el("h1", { text: "Prices" }),
    el("div", { class: "card" }, el("h2", { text: "Set a price" }), el("p", { class: "hint", text: "Credits per 1,000 tokens; changes apply within a second." }), form, message),
    el("div", { class: "card" }, wrap));
  async function fill() {
    body.replaceChildren(...(await ck.api("GET", "/admin/v1/prices")).data.map((p) => el("tr", {},
      el("td", { text: p.model }), el("td", { class: "num", text: p.prompt }), el("td", { class: "num", text: p.completion }),
      el("td", { class: "num", text: p.min_charge }), el("td", { class: "num", text: p.context_window.toLocaleString("en-US") }),
      el("td", {}, el("div", { class: "actions" }, el("button", { class: "secondary small", onclick: () => {
        f.model.value = p.model; f.prompt.value = p.prompt; f.completion.value = p.completion; f.min_charge.value = p.min_charge;
        form.scrollIntoView({ behavior: "smooth" });
      } }, "Edit"))))));
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
    el("div", { class: "field grow" }, el("label", { for: "code-credits", text: "Credits per code" }), credits),
    el("div", { class: "field grow" }, el("label", { for: "code-count", text: "How many" }), count),
    el("button", { type: "submit" }, "Create codes"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const reply = await ck.api("POST", "/admin/v1/redeem-codes", { credits: Number(credits.value), count: Number(count.value) });
      const copy = el("button", { type: "button", class: "secondary small", onclick: () => navigator.clipboard && navigator.clipboard.writeText(reply.codes.join("\n")) }, "Copy all");
      out.replaceChildren(
        el("div", { class: "card-head" }, el("p", { text: `${reply.codes.length} codes of ${ck.credits(credits.value)} credits each. They are shown only now.` }), copy),
        el("div", { class: "codes" }, reply.codes.map((c) => el("code", { class: "redeem-code", text: c }))));
      out.hidden = false;
      message.hidden = true;
    } catch (e) { flash(message, false, e.message); }
  });
  root.append(el("h1", { text: "Redeem codes" }),
    el("div", { class: "card" }, el("h2", { text: "Create a batch" }),
      el("p", { class: "hint", text: "Hand codes to users; each adds its credits once, from the console's Overview." }), form, message, out));
}

start();
