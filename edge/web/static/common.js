// What every chatkore page shares: calling the API with the session, building DOM safely,
// the page's language (its catalogue, /i18n/<lang>.js, loads first), the top bar and the
// sign-in card. Text always goes in as text, never as HTML.
"use strict";

const CK_LANGUAGES = [["zh-CN", "中文"], ["en", "English"]];
{
  const chosen = localStorage.getItem("ck.theme");
  if (chosen === "dark" || chosen === "light") document.documentElement.dataset.theme = chosen;
}

const ck = {
  csrf: "",
  me: null,
  firstKey: null,
  lang: (window.CK_I18N && window.CK_I18N.lang) || document.documentElement.lang || "en",
  messages: (window.CK_I18N && window.CK_I18N.messages) || {},

  // The text of `key` in the page's language, `{name}` filled from `values`.
  t(key, values) {
    const text = ck.messages[key];
    if (text === undefined) { console.warn(`i18n: no text for ${key}`); return key; }
    return text.replace(/\{(\w+)\}/g, (m, name) => (values && values[name] !== undefined ? String(values[name]) : m));
  },

  // A text whose `backticked` parts are code (commands, headers, field names): nodes, never HTML.
  rich(key, values) {
    return ck.t(key, values).split("`").map((part, i) => (i % 2 ? ck.el("code", { text: part }) : document.createTextNode(part)));
  },

  // The switch sets a cookie the server reads (pages and /api errors come in that language).
  setLang(lang) {
    document.cookie = `ck_lang=${encodeURIComponent(lang)}; path=/; max-age=31536000; samesite=lax`;
    location.reload();
  },

  async api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && ck.csrf) headers["X-CSRF-Token"] = ck.csrf;
    const resp = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 204) return null;
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const err = new Error((data && data.error && data.error.message) || ck.t("common.request_failed", { status: resp.status }));
      err.status = resp.status;
      err.code = data && data.error && data.error.code;
      throw err;
    }
    return data;
  },

  async loadMe() {
    try {
      ck.me = await ck.api("GET", "/api/me");
      ck.csrf = ck.me.csrf_token;
    } catch (e) {
      if (e.status !== 401) throw e;
      ck.me = null;
    }
    return ck.me;
  },

  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  },

  credits(n) {
    // Exact to the micro-credit (what billing keeps), but 2 decimals when that is all there is.
    return new Intl.NumberFormat(ck.lang, { minimumFractionDigits: 2, maximumFractionDigits: 6 }).format(Number(n || 0));
  },

  num(n) {
    return new Intl.NumberFormat(ck.lang).format(Number(n || 0));
  },

  when(unix) {
    return new Intl.DateTimeFormat(ck.lang, { year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit" })
      .format(new Date(unix * 1000));
  },

  // A date (or date and hour) as the page's language writes it, for chart axes.
  date(d, withHour, timeZone) {
    const opts = withHour ? { day: "2-digit", hour: "2-digit", minute: "2-digit" } : { month: "short", day: "2-digit" };
    return new Intl.DateTimeFormat(ck.lang, { ...opts, timeZone }).format(d);
  },

  // How a call ended (usage rows' `status`), in words when the catalogue has them.
  status(s) {
    return ck.messages[`status.${s}`] || s;
  },

  // Light or dark: the system's choice until the toggle makes one, which this browser remembers.
  theme() {
    const chosen = localStorage.getItem("ck.theme");
    if (chosen === "dark" || chosen === "light") return chosen;
    return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  },

  themeToggle() {
    const button = ck.el("button", { type: "button", id: "theme-toggle", class: "ghost small theme-toggle" });
    const show = () => {
      const next = ck.theme() === "dark" ? "light" : "dark";
      button.textContent = next === "dark" ? "☾" : "☀";
      button.title = ck.t(`common.theme_${next}`);
      button.setAttribute("aria-label", button.title);
    };
    button.addEventListener("click", () => {
      const next = ck.theme() === "dark" ? "light" : "dark";
      localStorage.setItem("ck.theme", next);
      document.documentElement.dataset.theme = next;
      show();
    });
    show();
    return button;
  },

  langSwitch() {
    const select = ck.el("select", { id: "lang-switch", class: "lang-switch", "aria-label": ck.t("common.language") },
      CK_LANGUAGES.map(([code, name]) => ck.el("option", { value: code, lang: code, selected: code === ck.lang }, name)));
    select.addEventListener("change", () => ck.setLang(select.value));
    return select;
  },

  // The top bar: brand, the pages, and who is signed in with the balance.
  topbar(active) {
    const bar = document.getElementById("topbar");
    bar.replaceChildren();
    const link = (href, text, name) => ck.el("a", { href, class: name === active ? "active" : "", text });
    bar.append(
      ck.el("a", { class: "brand", href: "/" }, ck.el("span", { class: "dot" }), "chatkore"),
      ck.el("nav", { class: "topnav" },
        link("/chat", ck.t("nav.chat"), "chat"), link("/console", ck.t("nav.console"), "console"), link("/pricing", ck.t("nav.pricing"), "pricing"), link("/docs", ck.t("nav.docs"), "docs"),
        ck.me && ck.me.role === "operator" ? link("/ops", ck.t("nav.ops"), "ops") : null),
      ck.el("div", { class: "spacer" }),
    );
    const who = ck.el("div", { class: "who" });
    if (ck.me) {
      who.append(
        ck.el("span", { class: "pill", id: "balance", title: ck.t("common.your_balance") }, ck.t("common.credits_n", { n: ck.credits(ck.me.balance) })),
        ck.el("span", { class: "email", text: ck.me.email }));
    }
    who.append(ck.themeToggle(), ck.langSwitch());
    if (ck.me) who.append(ck.el("button", { class: "secondary small", id: "signout", onclick: ck.signOut }, ck.t("common.sign_out")));
    bar.append(who);
    if (!ck.noticeAsked) { ck.noticeAsked = true; ck.notice(); }
  },

  // The operator's notice (an announcement and a contact line) under the top bar of every page.
  // Plain text from the server, put in as text: it can never become markup.
  async notice() {
    let n = null;
    try { n = await ck.api("GET", "/api/notice"); } catch (e) { return; }
    const old = document.getElementById("site-notice");
    if (old) old.remove();
    if (!n || (!n.announcement && !n.contact)) return;
    const box = ck.el("div", { id: "site-notice", class: "site-notice", role: "note" },
      n.announcement ? ck.el("div", { class: "site-notice-text", id: "site-notice-text", text: n.announcement }) : null,
      n.contact ? ck.el("div", { class: "site-notice-contact" }, ck.el("strong", { text: ck.t("notice.contact") }), " ",
        ck.el("span", { id: "site-notice-contact", text: n.contact })) : null);
    document.getElementById("topbar").after(box);
  },

  // Filters of a usage listing (model, key, dates, status; an operator's also the user) and the
  // CSV link of the same filter. `keys` is [[id, name]] for a select, or null for a number field.
  usageFilter(base, keys, withUser, onApply) {
    const id = (name) => `usage-${name}`;
    const field = (label, input) => ck.el("div", { class: "field" }, ck.el("label", { for: input.id, text: ck.t(label) }), input);
    const model = ck.el("input", { id: id("model"), autocomplete: "off", placeholder: ck.t("usage.any_model") });
    const key = keys
      ? ck.el("select", { id: id("key") }, ck.el("option", { value: "" }, ck.t("usage.any_key")), keys.map(([k, name]) => ck.el("option", { value: k, text: name })))
      : ck.el("input", { id: id("key"), type: "number", min: "1", placeholder: ck.t("usage.any_key") });
    const user = withUser ? ck.el("input", { id: id("user"), type: "number", min: "1", placeholder: ck.t("ops.orders.user_id") }) : null;
    const since = ck.el("input", { id: id("since"), type: "date" });
    const until = ck.el("input", { id: id("until"), type: "date" });
    const status = ck.el("select", { id: id("status") }, ck.el("option", { value: "" }, ck.t("usage.any_status")),
      ["complete", "client_gone", "upstream_error", "timeout", "expired", "released"].map((s) => ck.el("option", { value: s, text: ck.status(s) })));
    const csvLink = ck.el("a", { id: id("csv"), class: "button secondary", download: "usage.csv" }, ck.t("usage.csv"));
    const params = () => {
      const q = new URLSearchParams();
      if (model.value.trim()) q.set("model", model.value.trim());
      if (key.value) q.set("key_id", key.value);
      if (user && user.value) q.set("user_id", user.value);
      // Dates are the user's calendar days, sent as the instants they begin.
      if (since.value) q.set("since", String(Math.floor(new Date(`${since.value}T00:00`).getTime() / 1000)));
      if (until.value) q.set("until", String(Math.floor(new Date(`${until.value}T00:00`).getTime() / 1000) + 86400));
      if (status.value) q.set("status", status.value);
      return q;
    };
    const form = ck.el("form", { class: "row usage-filter", id: id("filter") },
      field("usage.model", model), field("usage.key", key), user ? field("ops.orders.user_id", user) : null,
      field("usage.since", since), field("usage.until", until), field("common.status", status),
      ck.el("button", { type: "submit", class: "secondary", id: id("apply") }, ck.t("usage.filter")), csvLink);
    const sync = () => { const q = params(); q.set("format", "csv"); csvLink.href = `${base}?${q}`; };
    form.addEventListener("input", sync);
    form.addEventListener("change", sync);
    form.addEventListener("submit", (ev) => { ev.preventDefault(); sync(); onApply(params()); });
    sync();
    return { form, params };
  },

  // Each cell learns its column's name, which a phone shows beside it (tables stack there).
  label(tbody) {
    const heads = [...tbody.closest("table").querySelectorAll("thead th")].map((th) => th.textContent);
    for (const row of tbody.rows) [...row.cells].forEach((td, i) => { if (!td.colSpan || td.colSpan === 1) td.dataset.label = heads[i] || ""; });
  },

  setBalance(balance) {
    if (ck.me) ck.me.balance = balance;
    const pill = document.getElementById("balance");
    if (pill) pill.textContent = ck.t("common.credits_n", { n: ck.credits(balance) });
  },

  async signOut() {
    try { await ck.api("POST", "/api/logout"); } finally { location.reload(); }
  },

  // The sign-in / create-account card; calls onDone() once a session exists.
  authCard(root, lead, onDone) {
    let mode = "login";
    const error = ck.el("div", { class: "error", hidden: true, role: "alert" });
    const email = ck.el("input", { type: "email", id: "email", name: "email", autocomplete: "email", required: true });
    const password = ck.el("input", { type: "password", id: "password", name: "password", required: true,
      minlength: "8", autocomplete: "current-password" });
    const submit = ck.el("button", { type: "submit", id: "auth-submit" }, ck.t("auth.sign_in"));
    const note = ck.el("p", { class: "hint" });
    // The sign-up captcha, when the server configured one (edge/captcha.py puts this meta in).
    const captcha = document.querySelector('meta[name="ck-captcha"]');
    const captchaBox = captcha ? ck.el("div", { id: "captcha", class: "captcha", hidden: true }) : null;
    let captchaToken = "";
    let captchaWidget = null;
    const captchaApi = () => (captcha && captcha.content === "turnstile" ? window.turnstile : window.hcaptcha);
    const showCaptcha = () => {
      if (!captchaBox || captchaWidget !== null) return;
      if (!captchaApi()) { window.ckCaptchaReady = showCaptcha; return; }  // its script calls this once loaded
      captchaWidget = captchaApi().render(captchaBox, {
        sitekey: captcha.dataset.siteKey,
        callback: (token) => { captchaToken = token; },
        "expired-callback": () => { captchaToken = ""; },
      });
    };
    const tabs = ck.el("div", { class: "tabs", role: "tablist" });
    const setMode = (m) => {
      mode = m;
      for (const b of tabs.children) b.classList.toggle("active", b.dataset.mode === m);
      submit.textContent = ck.t(m === "login" ? "auth.sign_in" : "auth.create_account");
      password.setAttribute("autocomplete", m === "login" ? "current-password" : "new-password");
      note.textContent = m === "login" ? "" : ck.t("auth.register_note");
      error.hidden = true;
      if (captchaBox) { captchaBox.hidden = m === "login"; if (m === "register") showCaptcha(); }
    };
    for (const [m, text] of [["login", ck.t("auth.sign_in")], ["register", ck.t("auth.create_account")]]) {
      const b = ck.el("button", { type: "button", id: `tab-${m}`, onclick: () => setMode(m) }, text);
      b.dataset.mode = m;
      tabs.append(b);
    }
    // Forgotten password: the reset link goes by mail; the answer is the same for any address.
    const forgot = ck.el("button", { type: "button", class: "ghost small", id: "forgot" }, ck.t("password.forgot"));
    forgot.addEventListener("click", async () => {
      error.hidden = true;
      if (!email.value) { email.focus(); note.textContent = ck.t("password.forgot_hint"); return; }
      try {
        await ck.api("POST", "/api/password/reset", { email: email.value });
        note.textContent = ck.t("password.sent");
      } catch (e) {
        error.textContent = e.message;
        error.hidden = false;
      }
    });
    const form = ck.el("form", { class: "card auth-card", id: "auth-form" },
      ck.el("h1", { text: "chatkore" }), ck.el("p", { class: "lead", text: lead }), tabs,
      ck.el("div", { class: "field" }, ck.el("label", { for: "email", text: ck.t("auth.email") }), email),
      ck.el("div", { class: "field" }, ck.el("label", { for: "password", text: ck.t("auth.password") }), password),
      captchaBox, note, error, submit, forgot);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      error.hidden = true;
      try {
        const body = { email: email.value, password: password.value };
        const invite = new URLSearchParams(location.search).get("invite");
        if (mode === "register" && invite) body.invite = invite;
        if (mode === "register" && captchaBox) body.captcha = captchaToken;
        const reply = await ck.api("POST", mode === "login" ? "/api/login" : "/api/register", body);
        ck.firstKey = (reply && reply.first_key) || null;  // the console shows it once
        await ck.loadMe();
        onDone();
      } catch (e) {
        error.textContent = e.message;
        error.hidden = false;
        // A captcha answer works once: the next try needs a fresh one.
        if (mode === "register" && captchaWidget !== null && captchaApi()) { captchaApi().reset(captchaWidget); captchaToken = ""; }
      } finally {
        submit.disabled = false;
      }
    });
    setMode(new URLSearchParams(location.search).get("invite") ? "register" : "login");
    root.replaceChildren(ck.el("div", { class: "auth-wrap" }, form));
  },
};
