// The public price list: every model on offer, in credits and what they cost in yuan and dollars.
"use strict";

const { el } = ck;

// Money for an amount of credits, with enough digits that a small price does not show as 0.
function money(credits, perUnit, symbol) {
  const value = credits / perUnit;
  const digits = value >= 1 ? 2 : value >= 0.01 ? 4 : 6;
  return symbol + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: digits });
}

async function start() {
  await ck.loadMe();
  ck.topbar("pricing");
  const prices = await ck.api("GET", "/api/pricing");
  const body = el("tbody", { id: "pricing-body" });
  const hasCached = prices.data.some((p) => p.cached_prompt !== undefined);
  const heads = ["Model", "Prompt", "Completion"].concat(hasCached ? ["Cached prompt"] : [], ["Minimum charge", "Max output"]);
  const cell = (credits) => el("td", { class: "num" }, el("div", { text: ck.credits(credits) }),
    el("div", { class: "hint", text: `${money(credits, prices.credits_per_cny, "¥")} · ${money(credits, prices.credits_per_usd, "$")}` }));
  for (const p of prices.data) {
    body.append(el("tr", { "data-model": p.model },
      el("td", { class: "mono", text: p.model }), cell(p.prompt), cell(p.completion),
      hasCached ? cell(p.cached_prompt === undefined ? p.prompt : p.cached_prompt) : null,
      cell(p.min_charge),
      el("td", { class: "num", text: p.max_output ? p.max_output.toLocaleString("en-US") : "—" })));
  }
  if (!prices.data.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: String(heads.length), text: "No model is on offer right now." })));
  const content = el("main", { class: "content", id: "content" },
    el("h1", { text: "Pricing" }),
    el("div", { class: "card" },
      el("p", { id: "pricing-rates" },
        `Prices are in credits per 1,000 tokens. 1 yuan buys ${ck.credits(prices.credits_per_cny)} credits; `
        + `1 US dollar buys ${ck.credits(prices.credits_per_usd)} credits. A call costs prompt tokens × the prompt price `
        + "plus completion tokens × the completion price, never less than the model's minimum charge."),
      el("p", {}, ck.me ? el("a", { href: "/console#topup", id: "pricing-topup" }, "Top up your credits")
        : el("a", { href: "/console", id: "pricing-signup" }, "Create an account: 100 free credits to start")),
      el("div", { class: "table-wrap" }, el("table", { id: "pricing-table" },
        el("thead", {}, el("tr", {}, heads.map((h, i) => el("th", { class: i ? "num" : "", text: h })))), body))));
  ck.label(body);
  document.getElementById("root").replaceChildren(content);
}

start();
