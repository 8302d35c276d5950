// The console: balance, spend per day, redeem codes, API keys and usage, for the signed-in user.
"use strict";

const { el } = ck;
const SECTIONS = [["overview", "console.nav.overview"], ["topup", "console.nav.topup"], ["keys", "console.nav.keys"], ["usage", "console.nav.usage"]];
let spendChart = null;

function section() {
  const name = location.hash.slice(1);
  return SECTIONS.some(([s]) => s === name) ? name : "overview";
}

async function start() {
  await ck.loadMe();
  const next = new URLSearchParams(location.search).get("next");
  const resetToken = new URLSearchParams(location.search).get("reset");
  const verifyToken = new URLSearchParams(location.search).get("verify");
  if (verifyToken) {
    ck.topbar("console");
    await verifyCard(document.getElementById("root"), verifyToken);
    return;
  }
  if (resetToken) {
    ck.topbar("console");
    resetForm(document.getElementById("root"), resetToken);
    return;
  }
  if (!ck.me) {
    ck.topbar("console");
    ck.authCard(document.getElementById("root"), ck.t("console.signin_lead"), () => {
      if (next === "/ops" && ck.me.role === "operator") location.assign("/ops");
      else start();
    });
    return;
  }
  ck.topbar("console");
  window.onhashchange = render;
  render();
}

let rendering = 0;  // the latest render: an earlier one still waiting on the network gives way to it

async function render() {
  // The section the link asks for replaces the one shown at once, before anything is fetched: a
  // form of the old section cannot take typing that a re-render is about to throw away.
  const generation = ++rendering;
  const current = section();
  const nav = el("nav", { class: "sidenav" },
    SECTIONS.map(([s, text]) => el("a", { href: `#${s}`, class: s === current ? "active" : "", id: `nav-${s}` }, ck.t(text))));
  const content = el("main", { class: "content", id: "content" });
  document.getElementById("root").replaceChildren(nav, content);
  const signedIn = await ck.loadMe();
  if (generation !== rendering) return;
  if (!signedIn) { start(); return; }
  ck.setBalance(ck.me.balance);
  const shown = await banners();
  if (generation !== rendering) return;
  content.append(...shown);
  ({ overview, topup, keys, usage })[current](content);
}

// The address verification link from the mail: verified, and the sign-up credits if they came.
async function verifyCard(root, token) {
  history.replaceState(null, "", "/console");  // the token is used up: keep it out of the history
  const card = el("div", { class: "card auth-card", id: "verify-card" }, el("h1", { text: ck.t("verify.title") }));
  root.replaceChildren(el("div", { class: "auth-wrap" }, card));
  try {
    const reply = await ck.api("POST", "/api/email/verify", { token });
    card.append(el("p", { class: "notice", id: "verify-result",
      text: reply.bonus ? ck.t("verify.done_bonus", { email: reply.email, n: ck.credits(reply.bonus) }) : ck.t("verify.done", { email: reply.email }) }));
  } catch (e) {
    card.append(el("p", { class: "error", id: "verify-result", text: e.message }));
  }
  card.append(el("a", { class: "button", href: "/console", id: "verify-continue" }, ck.t("verify.continue")));
}

// What the user should know first: a debt (a refund of credits already spent: the next top-up
// pays it first), an address to verify (the sign-up credits wait for it), a balance below the
// alert threshold.
async function banners() {
  const out = [];
  if (ck.me.owed > 0) {
    out.push(el("div", { class: "banner warn", id: "owed-banner", role: "alert" },
      ck.t("console.owed", { n: ck.credits(ck.me.owed) }), " ", el("a", { href: "#topup", text: ck.t("alert.top_up") })));
  }
  if (ck.me.verification_pending) {
    const message = el("span", { text: ck.t("verify.pending", { email: ck.me.email }) });
    const resend = el("button", { type: "button", class: "secondary small", id: "verify-resend" }, ck.t("verify.resend"));
    const box = el("div", { class: "banner", id: "verify-banner", role: "status" }, message, " ", resend);
    resend.addEventListener("click", async () => {
      resend.disabled = true;
      try {
        await ck.api("POST", "/api/email/verify/resend", {});
        message.textContent = ck.t("verify.sent", { email: ck.me.email });
      } catch (e) {
        message.textContent = e.message;
        resend.disabled = false;
      }
    });
    out.push(box);
  }
  try {
    const alert = await ck.api("GET", "/api/alerts");
    if (alert.below) {
      out.push(el("div", { class: "banner warn", id: "low-balance-banner", role: "alert" },
        ck.t("alert.below", { n: ck.credits(alert.threshold) }), " ", el("a", { href: "#topup", text: ck.t("alert.top_up") })));
    }
  } catch (e) { /* the banner is a courtesy: the page works without it */ }
  return out;
}

// The low-balance alert: a threshold; one mail and the banner each time charges take the balance below it.
function alertCard() {
  const threshold = el("input", { id: "alert-threshold", type: "number", min: "0", step: "0.000001", required: true });
  const message = el("div", { hidden: true, role: "status", id: "alert-message" });
  const form = el("form", { class: "row", id: "alert-form" },
    el("div", { class: "field grow" }, el("label", { for: "alert-threshold", text: ck.t("alert.threshold") }), threshold),
    el("button", { type: "submit", id: "alert-save" }, ck.t("alert.save")));
  ck.api("GET", "/api/alerts").then((a) => { threshold.value = a.threshold || ""; }).catch(() => {});
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const a = await ck.api("PUT", "/api/alerts", { threshold: Number(threshold.value || 0) });
      message.className = "notice";
      message.textContent = a.threshold ? ck.t("alert.saved", { n: ck.credits(a.threshold) }) : ck.t("alert.off");
    } catch (e) {
      message.className = "error";
      message.textContent = e.message;
    }
    message.hidden = false;
  });
  return el("div", { class: "card", id: "alert-card" }, el("h2", { text: ck.t("alert.title") }),
    el("p", { class: "hint", text: ck.t("alert.hint") }), form, message);
}

// --- overview ---------------------------------------------------------------------

async function overview(root) {
  // The key made at sign-up, shown this once (it lives only in this page's memory).
  const firstKey = ck.firstKey && el("div", { class: "card first-key", id: "first-key" },
    el("h2", { text: ck.t("console.key.first_title") }), ...secret(ck.firstKey, "first-key-value"));
  ck.firstKey = null;
  const balance = el("div", { class: "value", id: "overview-balance" }, ck.credits(ck.me.balance));
  const spent = el("div", { class: "value", id: "overview-spent" }, "…");
  const calls = el("div", { class: "value", id: "overview-requests" }, "…");
  const canvas = el("canvas", { id: "spend-chart", "aria-label": ck.t("console.spend_chart") });
  const message = el("div", { hidden: true, role: "status", id: "redeem-message" });
  const code = el("input", { id: "redeem-code", placeholder: "ck-…", autocomplete: "off", required: true });
  const form = el("form", { class: "row", id: "redeem-form" },
    el("div", { class: "field grow" }, el("label", { for: "redeem-code", text: ck.t("console.redeem.code") }), code),
    el("button", { type: "submit" }, ck.t("console.redeem.submit")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message.hidden = true;
    try {
      const reply = await ck.api("POST", "/api/redeem", { code: code.value.trim() });
      ck.setBalance(reply.balance);
      balance.textContent = ck.credits(reply.balance);
      message.className = "notice";
      message.textContent = ck.t("console.redeem.done", { balance: ck.credits(reply.balance) });
      code.value = "";
    } catch (e) {
      message.className = "error";
      message.textContent = e.message;
    }
    message.hidden = false;
  });
  root.append(
    el("h1", { text: ck.t("console.nav.overview") }), ...(firstKey ? [firstKey] : []),
    el("div", { class: "grid stats" },
      el("div", { class: "card stat" }, el("div", { class: "label", text: ck.t("console.stat.balance") }), balance),
      el("div", { class: "card stat" }, el("div", { class: "label", text: ck.t("console.stat.spent") }), spent),
      el("div", { class: "card stat" }, el("div", { class: "label", text: ck.t("console.stat.requests") }), calls)),
    el("div", { class: "card" },
      el("div", { class: "card-head" }, el("h2", { text: ck.t("console.spend_chart") }), el("span", { class: "hint", text: ck.t("console.utc_days") })),
      el("div", { class: "chart-box" }, canvas)),
    el("div", { class: "card" }, el("h2", { text: ck.t("console.redeem.title") }),
      el("p", { class: "hint", text: ck.t("console.redeem.hint") }), form, message),
    alertCard(), passwordCard());
  const days = (await ck.api("GET", "/api/spend?days=30")).data;
  spent.textContent = ck.credits(days.reduce((s, d) => s + d.credits, 0));
  calls.textContent = ck.num(days.reduce((s, d) => s + d.requests, 0));
  if (!canvas.isConnected) return;  // a later render replaced this one meanwhile: its chart stands
  if (spendChart) spendChart.destroy();
  spendChart = new Chart(canvas, {
    type: "bar",
    data: {
      labels: days.map((d) => ck.date(new Date(`${d.day}T00:00:00Z`), false, "UTC")),
      datasets: [{ label: ck.t("common.credits"), data: days.map((d) => d.credits), backgroundColor: "#3b5bdb", borderRadius: 4 }],
    },
    options: {
      maintainAspectRatio: false, animation: false,
      plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, grid: { color: "#eef0f3" } }, x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 8 } } },
    },
  });
}

// --- top up: pay with a provider, watch the order until it is paid; order history; invites ---

let watching = null;  // the timer polling the open order's status

const CURRENCY_OF = { alipay: "CNY", stripe: "USD", demo: "CNY" };
const providerName = (p) => (CURRENCY_OF[p] ? ck.t(`topup.provider.${p}`) : p);
const orderStatus = (s) => (["pending", "paid", "expired", "refunded", "closed"].includes(s) ? ck.t(`topup.status.${s}`) : s);

async function topup(root) {
  if (watching) { clearTimeout(watching); watching = null; }
  const pricing = await ck.api("GET", "/api/pricing");
  const providers = pricing.payment_providers;
  const amount = el("input", { id: "topup-amount", type: "number", min: "0.01", step: "0.01", value: "10", required: true });
  const provider = el("select", { id: "topup-provider" }, providers.map((p) => el("option", { value: p, text: providerName(p) })));
  const unit = el("span", { class: "hint", id: "topup-unit" });
  const preview = () => {
    const currency = CURRENCY_OF[provider.value];
    const rate = currency === "USD" ? pricing.credits_per_usd : pricing.credits_per_cny;
    unit.textContent = ck.t("topup.buys", { currency, credits: ck.credits(Math.floor(Number(amount.value || 0) * rate * 1e6) / 1e6) });
  };
  amount.addEventListener("input", preview);
  provider.addEventListener("change", preview);
  preview();
  const error = el("div", { class: "error", hidden: true, role: "alert", id: "topup-error" });
  const current = el("div", { id: "topup-order" });
  const form = el("form", { class: "row", id: "topup-form" },
    el("div", { class: "field" }, el("label", { for: "topup-amount", text: ck.t("topup.amount") }), amount),
    el("div", { class: "field" }, el("label", { for: "topup-provider", text: ck.t("topup.pay_with") }), provider),
    el("button", { type: "submit", id: "topup-submit" }, ck.t("topup.submit")));
  const body = el("tbody", { id: "orders-body" });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      const order = await ck.api("POST", "/api/payments", { provider: provider.value, amount: Number(amount.value) });
      show(order);
      await fill();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  });
  const invite = el("div", { id: "invite" });
  const heads = ["topup.time", "topup.amount", "topup.credits", "topup.pay_with", "common.status"];
  root.append(
    el("h1", { text: ck.t("console.nav.topup") }),
    el("div", { class: "card" }, el("h2", { text: ck.t("topup.title") }),
      el("p", { class: "hint" }, ck.t("topup.no_minimum"), " ", el("a", { href: "/pricing", text: ck.t("topup.price_list") })),
      form, unit, error, current),
    el("div", { class: "card" },
      el("div", { class: "card-head" }, el("h2", { text: ck.t("topup.orders") }),
        el("button", { class: "secondary small", id: "orders-refresh", onclick: () => fill() }, ck.t("common.refresh"))),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, heads.map((h, i) => el("th", { class: i === 1 || i === 2 ? "num" : "", text: ck.t(h) })))),
        body))),
    el("div", { class: "card" }, el("h2", { text: ck.t("topup.invite_title") }), invite));

  function badge(status) {
    return el("span", { class: status === "paid" ? "badge ok" : status === "pending" ? "badge warn" : "badge bad",
      "data-status": status, text: orderStatus(status) });
  }

  function show(order) {
    const status = el("span", { id: "topup-status" }, badge(order.status));
    const pay = el("a", { class: "button", id: "topup-pay", href: order.pay_url,
      target: order.provider === "demo" ? null : "_blank", rel: "noopener" },
      ck.t(order.provider === "alipay" ? "topup.pay_page" : "topup.pay"));
    current.replaceChildren(el("div", { class: "card inset", "data-order-id": order.id },
      el("p", {}, ck.t("topup.order_line", { amount: order.amount.toFixed(2), currency: order.currency, credits: ck.credits(order.credits) }), " — ", status),
      order.qr_code ? el("div", {}, el("p", { class: "hint", text: ck.t("topup.scan") }),
        el("img", { id: "topup-qr", src: `/api/payments/${order.id}/qr.svg`, alt: ck.t("topup.qr_alt"), width: "220", height: "220" })) : null,
      el("p", {}, pay),
      el("p", { class: "hint", text: ck.t("topup.expires", { when: ck.when(order.expires_at) }) })));
    const poll = async () => {
      watching = null;
      if (!document.body.contains(current)) return;
      try {
        const now = await ck.api("GET", `/api/payments/${order.id}`);
        status.replaceChildren(badge(now.status));
        if (now.status === "paid") {
          await ck.loadMe();
          ck.setBalance(ck.me.balance);
          await fill();
          return;
        }
        if (now.status !== "pending") return;
      } catch (e) { /* try again at the next tick */ }
      watching = setTimeout(poll, 2000);
    };
    watching = setTimeout(poll, 2000);
  }

  async function fill() {
    const orders = (await ck.api("GET", "/api/payments")).data;
    body.replaceChildren();
    if (!orders.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "5", text: ck.t("topup.none") })));
    for (const o of orders) {
      body.append(el("tr", { "data-order-id": o.id },
        el("td", { text: ck.when(o.created) }), el("td", { class: "num", text: `${o.amount.toFixed(2)} ${o.currency}` }),
        el("td", { class: "num", text: ck.credits(o.credits) }), el("td", { text: providerName(o.provider) }),
        el("td", {}, badge(o.status))));
    }
    ck.label(body);
  }

  async function fillInvite() {
    const info = await ck.api("GET", "/api/invite");
    const link = `${location.origin}${info.url}`;
    const copy = el("button", { type: "button", class: "secondary small" }, ck.t("common.copy"));
    copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(link));
    invite.replaceChildren(
      el("p", { class: "hint", text: ck.t("topup.invite_hint", { pct: info.reward_pct }) }),
      el("div", { class: "secret" }, el("code", { id: "invite-link", text: link }), copy),
      el("p", { id: "invite-stats", text: ck.t("topup.invite_stats", { invited: info.invited, earned: ck.credits(info.earned) }) }));
  }

  await Promise.all([fill(), fillInvite()]);
}

// --- passwords -----------------------------------------------------------------------

// The page a reset mail links to: a new password, then sign in with it.
function resetForm(root, token) {
  const password = el("input", { type: "password", id: "reset-password", minlength: "8", required: true, autocomplete: "new-password" });
  const message = el("div", { hidden: true, role: "alert", id: "reset-message" });
  const form = el("form", { class: "card auth-card", id: "reset-form" },
    el("h1", { text: ck.t("password.reset_title") }),
    el("div", { class: "field" }, el("label", { for: "reset-password", text: ck.t("password.new") }), password),
    message, el("button", { type: "submit", id: "reset-submit" }, ck.t("password.set")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await ck.api("POST", "/api/password/reset/confirm", { token, password: password.value });
      history.replaceState(null, "", "/console");
      start();
    } catch (e) {
      message.className = "error";
      message.textContent = e.message;
      message.hidden = false;
    }
  });
  root.replaceChildren(el("div", { class: "auth-wrap" }, form));
}

function passwordCard() {
  const current = el("input", { type: "password", id: "pw-current", required: true, autocomplete: "current-password" });
  const fresh = el("input", { type: "password", id: "pw-new", minlength: "8", required: true, autocomplete: "new-password" });
  const message = el("div", { hidden: true, role: "status", id: "pw-message" });
  const form = el("form", { class: "row", id: "pw-form" },
    el("div", { class: "field grow" }, el("label", { for: "pw-current", text: ck.t("password.current") }), current),
    el("div", { class: "field grow" }, el("label", { for: "pw-new", text: ck.t("password.new") }), fresh),
    el("button", { type: "submit", class: "secondary" }, ck.t("password.change")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await ck.api("POST", "/api/password/change", { current: current.value, new: fresh.value });
      message.className = "notice";
      message.textContent = ck.t("password.changed");
      form.reset();
    } catch (e) {
      message.className = "error";
      message.textContent = e.message;
    }
    message.hidden = false;
  });
  return el("div", { class: "card" }, el("h2", { text: ck.t("password.change_title") }),
    el("p", { class: "hint", text: ck.t("password.change_hint") }), form, message);
}

// --- keys ---------------------------------------------------------------------------

async function keys(root) {
  const name = el("input", { id: "key-name", placeholder: ck.t("console.key.name_placeholder"), maxlength: "200" });
  const limit = el("input", { id: "key-limit", type: "number", min: "0", step: "0.01", placeholder: ck.t("console.key.no_limit") });
  // What the admin API can set on a key, the console offers too (all optional).
  const models = el("select", { id: "key-models", multiple: true, size: "4" });
  const expires = el("input", { id: "key-expires", type: "date" });
  const rpm = el("input", { id: "key-rpm", type: "number", min: "1", step: "1", placeholder: ck.t("console.key.no_limit") });
  const tpm = el("input", { id: "key-tpm", type: "number", min: "1", step: "1", placeholder: ck.t("console.key.no_limit") });
  const ips = el("input", { id: "key-ips", placeholder: "203.0.113.0/24, 198.51.100.7", autocomplete: "off" });
  const shown = el("div", { id: "new-key", hidden: true });
  const error = el("div", { class: "error", hidden: true, role: "alert" });
  const field = (id, label, input, cls) => el("div", { class: `field ${cls || "grow"}` }, el("label", { for: id, text: ck.t(label) }), input);
  const more = el("details", { id: "key-more", class: "key-more" }, el("summary", { text: ck.t("console.key.more") }),
    el("div", { class: "row" }, field("key-models", "console.key.models", models),
      el("div", { class: "grow" }, field("key-expires", "console.key.expires", expires, ""), field("key-ips", "console.key.ips", ips, ""))),
    el("div", { class: "row" }, field("key-rpm", "console.key.rpm", rpm), field("key-tpm", "console.key.tpm", tpm)),
    el("p", { class: "hint", text: ck.t("console.key.more_hint") }));
  const form = el("form", { id: "key-form" },
    el("div", { class: "row" },
      field("key-name", "console.key.name", name),
      field("key-limit", "console.key.limit_optional", limit, ""),
      el("button", { type: "submit", id: "create-key" }, ck.t("console.key.create"))),
    more);
  const body = el("tbody", { id: "keys-body" });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      const req = { name: name.value.trim() };
      if (limit.value) req.credit_limit = Number(limit.value);
      const chosen = [...models.selectedOptions].map((o) => o.value);
      if (chosen.length) req.models = chosen;
      if (expires.value) req.expires_at = `${expires.value}T23:59:59Z`;
      if (rpm.value) req.rpm = Number(rpm.value);
      if (tpm.value) req.tpm = Number(tpm.value);
      const nets = ips.value.split(/[\s,]+/).filter(Boolean);
      if (nets.length) req.ips = nets;
      const key = await ck.api("POST", "/api/keys", req);
      shown.replaceChildren(...secret(key.key, "new-key-value"));
      shown.hidden = false;
      form.reset();
      await fill();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  });
  root.append(
    el("h1", { text: ck.t("console.nav.keys") }),
    el("div", { class: "card" }, el("h2", { text: ck.t("console.key.create_title") }),
      el("p", { class: "hint" }, ck.t("console.key.base_url_hint"), " ", el("code", { text: `${location.origin}/v1` })),
      form, error, shown),
    el("div", { class: "card" }, el("h2", { text: ck.t("console.key.yours") }),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ["console.key.name", "console.key.key", "console.key.limit", "console.key.limits", "console.key.created", "common.status", ""].map((h) => el("th", { text: h && ck.t(h) })))),
        body))));
  ck.api("GET", "/api/models").then((reply) => {
    models.replaceChildren(...reply.data.map((m) => el("option", { value: m.id }, m.id)));
  }).catch(() => { /* the key is then for every model */ });

  async function fill() {
    const list = (await ck.api("GET", "/api/keys")).data.filter((k) => !k.web);
    body.replaceChildren();
    if (!list.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "7", text: ck.t("console.key.none") })));
    for (const k of list.reverse()) {
      const revoke = k.revoked ? null : el("button", { class: "danger small", onclick: async () => {
        if (!confirm(ck.t("console.key.revoke_confirm", { name: k.name || k.hint }))) return;
        await ck.api("DELETE", `/api/keys/${k.id}`);
        await fill();
      } }, ck.t("console.key.revoke"));
      body.append(el("tr", { "data-key-id": k.id },
        el("td", { class: "wrap", text: k.name || "—" }), el("td", { class: "mono", text: k.hint }),
        el("td", { class: "num", text: k.credit_limit === null ? "—" : ck.credits(k.credit_limit) }),
        el("td", { class: "wrap key-limits" }, limits(k)),
        el("td", { text: ck.when(k.created) }),
        el("td", {}, el("span", { class: k.revoked ? "badge bad" : "badge ok", text: ck.t(k.revoked ? "console.key.revoked" : "console.key.active") })),
        el("td", {}, el("div", { class: "actions" }, revoke))));
    }
    ck.label(body);
  }
  await fill();
}

// A key's limits in a few words: its models, expiry, rates and networks ("—" for none).
function limits(k) {
  const parts = [];
  if (k.models.length) parts.push(ck.t("console.key.only_models", { models: k.models.join(", ") }));
  if (k.expires_at) parts.push(ck.t("console.key.until", { when: ck.when(k.expires_at) }));
  if (k.rpm) parts.push(ck.t("console.key.rpm_n", { n: ck.num(k.rpm) }));
  if (k.tpm) parts.push(ck.t("console.key.tpm_n", { n: ck.num(k.tpm) }));
  if (k.ips.length) parts.push(ck.t("console.key.ips_n", { ips: k.ips.join(", ") }));
  return parts.length ? parts.join(" · ") : "—";
}

// A key shown once: the key with a copy button, and a curl line ready to paste.
function secret(key, id) {
  const curl = `curl ${location.origin}/v1/chat/completions -H "Authorization: Bearer ${key}" -H "Content-Type: application/json" -d '{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hello!"}]}'`;
  const copy = (text, cls) => {
    const b = el("button", { type: "button", class: `secondary small ${cls}` }, ck.t("common.copy"));
    b.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(text));
    return b;
  };
  return [
    el("p", { text: ck.t("console.key.shown_once") }),
    el("div", { class: "secret" }, el("code", { id, text: key }), copy(key, "copy-key")),
    el("p", { class: "hint", text: ck.t("console.key.try_it") }),
    el("div", { class: "code-block" }, el("pre", { class: "curl-line" }, el("code", { text: curl })), copy(curl, "copy copy-curl")),
  ];
}

// --- usage --------------------------------------------------------------------------

async function usage(root) {
  const body = el("tbody", { id: "usage-body" });
  const keyList = (await ck.api("GET", "/api/keys")).data;
  const names = Object.fromEntries(keyList.map((k) => [k.id, k.web ? ck.t("usage.chat_page") : k.name || k.hint]));
  const filter = ck.usageFilter("/api/usage", keyList.map((k) => [k.id, names[k.id]]), false, (q) => fill(q));
  const more = el("button", { type: "button", class: "secondary small", id: "usage-more", hidden: true }, ck.t("usage.more"));
  root.append(el("h1", { text: ck.t("console.nav.usage") }),
    el("div", { class: "card" },
      el("div", { class: "card-head" }, el("h2", { text: ck.t("console.usage.recent") }),
        el("button", { class: "secondary small", id: "usage-refresh", onclick: () => fill(filter.params()) }, ck.t("common.refresh"))),
      filter.form,
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ["usage.time", "usage.model", "usage.key", "usage.prompt", "usage.completion", "common.credits", "common.status"].map(
          (h, i) => el("th", { class: i >= 3 && i <= 5 ? "num" : "", text: ck.t(h) })))),
        body)), more));
  let query = null;
  let cursor = "";
  more.addEventListener("click", () => page());
  async function page() {
    const q = new URLSearchParams(query);
    q.set("limit", "100");
    if (cursor) q.set("cursor", cursor);
    let rows;
    try {
      rows = await ck.api("GET", `/api/usage?${q}`);
    } catch (e) {
      body.replaceChildren(el("tr", {}, el("td", { class: "error", colspan: "7", text: e.message })));
      return;
    }
    if (!cursor && !rows.data.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "7", text: ck.t("usage.none") })));
    for (const r of rows.data) {
      body.append(el("tr", { "data-request-id": r.request_id },
        el("td", { text: ck.when(r.created) }), el("td", { text: r.model }), el("td", { text: names[r.key_id] || `#${r.key_id}` }),
        el("td", { class: "num", text: ck.num(r.prompt_tokens) }),
        el("td", { class: "num", text: ck.num(r.completion_tokens) }),
        el("td", { class: "num", text: ck.credits(r.credits) }),
        el("td", {}, el("span", { class: r.status === "complete" ? "badge ok" : "badge warn", text: ck.status(r.status) }))));
    }
    cursor = rows.next_cursor || "";
    more.hidden = !cursor;
    ck.label(body);
  }
  async function fill(q) {
    query = q;
    cursor = "";
    body.replaceChildren();
    await page();
  }
  await fill(filter.params());
}

start();
