// The users' guide: a key, the header, examples with this server's own address, clients,
// credits and prices, and what each error means. The structure is here once; the words come
// from the catalogue of the page's language, the code is the same in both.
"use strict";

const { el } = ck;
const BASE = `${location.origin}/v1`;
const SECTIONS = ["key", "auth", "examples", "clients", "credits", "errors"];
// Each error the API answers: HTTP status, `code`, and the catalogue key of what to do.
const ERRORS = [
  [401, "invalid_api_key"], [402, "insufficient_quota"], [429, "rate_limit_exceeded"], [404, "model_not_found"],
  [400, "invalid_request_error"], [413, "request_too_large"], [502, "upstream_error"], [504, "upstream_timeout"],
  [503, "no_available_channel"],
];

const EXAMPLES = {
  curl: `curl ${BASE}/chat/completions \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer $CHATKORE_KEY" \\
  -d '{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hello!"}]}'`,
  python: `from openai import OpenAI

client = OpenAI(base_url="${BASE}", api_key="sk-...")
reply = client.chat.completions.create(
    model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hello!"}])
print(reply.choices[0].message.content)`,
  node: `import OpenAI from "openai";

const client = new OpenAI({ baseURL: "${BASE}", apiKey: process.env.CHATKORE_KEY });
const reply = await client.chat.completions.create({
  model: "gpt-3.5-turbo", messages: [{ role: "user", content: "Hello!" }],
});
console.log(reply.choices[0].message.content);`,
  stream: `curl ${BASE}/chat/completions -N \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer $CHATKORE_KEY" \\
  -d '{"model": "gpt-3.5-turbo", "stream": true, "messages": [{"role": "user", "content": "Hello!"}]}'`,
  chatgptweb: `OPENAI_API_KEY=sk-...
OPENAI_API_BASE_URL=${location.origin}
TIMEOUT_MS=180000`,
};

function code(name) {
  const copy = el("button", { type: "button", class: "secondary small copy" }, ck.t("common.copy"));
  copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(EXAMPLES[name]));
  return el("div", { class: "code-block" }, el("pre", { id: `example-${name}` }, el("code", { text: EXAMPLES[name] })), copy);
}

function section(id, ...children) {
  return el("section", { class: "card doc-section", id: `docs-${id}` }, el("h2", { text: ck.t(`docs.${id}.title`) }), ...children);
}

const p = (key, values) => el("p", {}, ck.rich(key, values));

async function start() {
  await ck.loadMe();
  ck.topbar("docs");
  const toc = el("nav", { class: "sidenav" }, SECTIONS.map((s) => el("a", { href: `#docs-${s}` }, ck.t(`docs.${s}.title`))));
  const prices = el("tbody", { id: "docs-prices" });
  const content = el("main", { class: "content doc", id: "content" },
    el("h1", { text: ck.t("title.docs") }),
    el("p", { class: "lead", text: ck.t("docs.lead") }),
    section("key", p("docs.key.body"),
      el("ol", {}, ["docs.key.step1", "docs.key.step2", "docs.key.step3"].map((k) => el("li", {}, ck.rich(k)))),
      el("p", {}, el("a", { href: "/console", id: "docs-console" }, ck.t("docs.key.open_console")))),
    section("auth", p("docs.auth.body"),
      el("div", { class: "code-block" }, el("pre", {}, el("code", { id: "docs-header", text: "Authorization: Bearer sk-..." }))),
      p("docs.auth.base_url"),
      el("div", { class: "code-block" }, el("pre", {}, el("code", { id: "docs-base-url", text: BASE })))),
    section("examples",
      el("h3", { text: "curl" }), code("curl"),
      el("h3", { text: "Python" }), p("docs.examples.python"), code("python"),
      el("h3", { text: "Node.js" }), p("docs.examples.node"), code("node"),
      el("h3", { text: ck.t("docs.examples.stream") }), p("docs.examples.stream_body"), code("stream")),
    section("clients", p("docs.clients.chatgptweb"), code("chatgptweb"), p("docs.clients.others", { base: BASE })),
    section("credits",
      el("ul", {}, ["docs.credits.formula", "docs.credits.bonus", "docs.credits.embeddings", "docs.credits.hold",
        "docs.credits.failed"].map((k) => el("li", {}, ck.rich(k)))),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ["usage.model", "usage.prompt", "usage.completion", "ops.price.min_charge"].map(
          (h, i) => el("th", { class: i ? "num" : "", text: ck.t(h) })))), prices)),
      el("p", { class: "hint" }, ck.t("docs.credits.unit"), " ", el("a", { href: "/pricing" }, ck.t("chat.all_prices")))),
    section("errors", p("docs.errors.body"),
      el("div", { class: "table-wrap" }, el("table", { id: "docs-errors" },
        el("thead", {}, el("tr", {}, ["docs.errors.status", "docs.errors.code", "docs.errors.todo"].map((h) => el("th", { text: ck.t(h) })))),
        el("tbody", {}, ERRORS.map(([status, c]) => el("tr", { "data-code": c },
          el("td", { text: String(status) }), el("td", { class: "mono", text: c }),
          el("td", { class: "wrap" }, ck.rich(`docs.err.${c}`)))))))));
  document.getElementById("root").replaceChildren(toc, content);
  try {
    const list = (await ck.api("GET", "/api/pricing")).data;
    prices.replaceChildren(...list.map((r) => el("tr", { "data-model": r.model },
      el("td", { class: "mono", text: r.model }), el("td", { class: "num", text: ck.credits(r.prompt) }),
      el("td", { class: "num", text: ck.credits(r.completion) }), el("td", { class: "num", text: ck.credits(r.min_charge) }))));
    if (!list.length) prices.append(el("tr", {}, el("td", { class: "empty", colspan: "4", text: ck.t("pricing.none") })));
  } catch (e) {
    prices.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: "4", text: e.message })));
  }
  ck.label(prices);
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

start();
