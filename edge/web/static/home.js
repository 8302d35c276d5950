// The home page: what chatkore is, what it costs, and the way in (sign up, docs, chat).
"use strict";

const { el } = ck;

async function start() {
  await ck.loadMe();
  ck.topbar("home");
  const base = `${location.origin}/v1`;
  const prices = el("tbody", { id: "home-prices" });
  const cta = ck.me
    ? el("a", { class: "button", href: "/console", id: "home-console" }, ck.t("home.open_console"))
    : el("a", { class: "button", href: "/console", id: "home-signup" }, ck.t("home.sign_up"));
  const content = el("main", { class: "content home", id: "content" },
    el("section", { class: "hero" },
      el("h1", { text: ck.t("home.title") }),
      el("p", { class: "lead", text: ck.t("home.lead") }),
      el("div", { class: "hero-actions" }, cta,
        el("a", { class: "button secondary", href: "/docs", id: "home-docs" }, ck.t("home.read_docs")),
        el("a", { class: "button secondary", href: "/chat", id: "home-chat" }, ck.t("home.try_chat"))),
      el("p", { class: "hint" }, ck.t("home.base_url"), " ", el("code", { id: "home-base-url", text: base }))),
    el("div", { class: "grid features" },
      ["compatible", "credits", "reliable", "private"].map((f) => el("div", { class: "card" },
        el("h2", { text: ck.t(`home.feature.${f}`) }), el("p", { text: ck.t(`home.feature.${f}.body`) })))),
    el("div", { class: "card" },
      el("div", { class: "card-head" }, el("h2", { text: ck.t("title.pricing") }),
        el("a", { href: "/pricing", id: "home-pricing" }, ck.t("chat.all_prices"))),
      el("p", { class: "hint", text: ck.t("home.prices_hint") }),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ["usage.model", "usage.prompt", "usage.completion"].map(
          (h, i) => el("th", { class: i ? "num" : "", text: ck.t(h) })))), prices))));
  document.getElementById("root").replaceChildren(content);
  try {
    const list = (await ck.api("GET", "/api/pricing")).data.slice(0, 8);
    prices.replaceChildren(...list.map((r) => el("tr", { "data-model": r.model },
      el("td", { class: "mono", text: r.model }), el("td", { class: "num", text: ck.credits(r.prompt) }),
      el("td", { class: "num", text: ck.credits(r.completion) }))));
    if (!list.length) prices.append(el("tr", {}, el("td", { class: "empty", colspan: "3", text: ck.t("pricing.none") })));
  } catch (e) {
    prices.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: "3", text: e.message })));
  }
  ck.label(prices);
}

start();
