// The public price list: every model on offer, in credits and what they cost in yuan and dollars.
"use strict";

const { el } = ck;

// Money for an amount of credits, with enough digits that a small price does not show as 0.
function money(credits, perUnit, symbol) {
  const value = credits / perUnit;
  const digits = value >= 1 ? 2 : value >= 0.01 ? 4 : 6;
  return symbol + new Intl.NumberFormat(ck.lang, { minimumFractionDigits: 2, maximumFractionDigits: digits }).format(value);
}

async function start() {
  await ck.loadMe();
  ck.topbar("pricing");
  const prices = await ck.api("GET", "/api/pricing");
  const body = el("tbody", { id: "pricing-body" });
  const hasCached = prices.data.some((p) => p.cached_prompt !== undefined);
  const heads = ["usage.model", "usage.prompt", "usage.completion"].concat(hasCached ? ["pricing.cached_prompt"] : [], ["ops.price.min_charge", "pricing.max_output"]).map((h) => ck.t(h));
  const cell = (credits) => el("td", { class: "num" }, el("div", { text: ck.credits(credits) }),
    el("div", { class: "hint", text: `${money(credits, prices.credits_per_cny, "¥")} · ${money(credits, prices.credits_per_usd, "$")}` }));
  for (const p of prices.data) {
    body.append(el("tr", { "data-model": p.model },
      el("td", { class: "mono", text: p.model }), cell(p.prompt), cell(p.completion),
      hasCached ? cell(p.cached_prompt === undefined ? p.prompt : p.cached_prompt) : null,
      cell(p.min_charge),
      el("td", { class: "num", text: p.max_output ? ck.num(p.max_output) : "—" })));
  }
  if (!prices.data.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: String(heads.length), text: ck.t("pricing.none") })));
  // Images, speech and transcription: credits per unit ("image/1024x1024/hd": an image of that size and quality).
  const unitNames = { image: ck.t("pricing.unit.image"), "1k_characters": ck.t("pricing.unit.1k_characters"),
    minute: ck.t("pricing.unit.minute") };
  const unitBody = el("tbody", { id: "pricing-units-body" });
  for (const p of prices.data) {
    for (const [unit, credits] of Object.entries(p.units || {})) {
      const [kind, ...variant] = unit.split("/");
      unitBody.append(el("tr", { "data-model": p.model, "data-unit": unit },
        el("td", { class: "mono", text: p.model }),
        el("td", { text: [unitNames[kind] || kind].concat(variant).join(" · ") }), cell(credits)));
    }
  }
  const units = unitBody.children.length ? el("div", { class: "card", id: "pricing-units" },
    el("h2", { text: ck.t("pricing.units_title") }), el("p", { text: ck.t("pricing.units_intro") }),
    el("div", { class: "table-wrap" }, el("table", { id: "pricing-units-table" },
      el("thead", {}, el("tr", {}, [ck.t("usage.model"), ck.t("pricing.unit"), ck.t("pricing.price")]
        .map((h, i) => el("th", { class: i === 2 ? "num" : "", text: h })))), unitBody))) : null;
  const content = el("main", { class: "content", id: "content" },
    el("h1", { text: ck.t("title.pricing") }),
    el("div", { class: "card" },
      el("p", { id: "pricing-rates" },
        ck.t("pricing.rates", { cny: ck.credits(prices.credits_per_cny), usd: ck.credits(prices.credits_per_usd) })),
      el("p", {}, ck.me ? el("a", { href: "/console#topup", id: "pricing-topup" }, ck.t("pricing.top_up"))
        : el("a", { href: "/console", id: "pricing-signup" }, ck.t("pricing.sign_up"))),
      el("div", { class: "table-wrap" }, el("table", { id: "pricing-table" },
        el("thead", {}, el("tr", {}, heads.map((h, i) => el("th", { class: i ? "num" : "", text: h })))), body))),
    units);
  ck.label(body);
  if (units) ck.label(unitBody);
  document.getElementById("root").replaceChildren(content);
}

start();
