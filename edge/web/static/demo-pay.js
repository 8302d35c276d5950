// The demo provider's pay page: no money moves. Its Pay button completes the order through
// the same crediting path a real payment takes. Only there while no real provider is set up.
"use strict";

const { el } = ck;
const orderId = decodeURIComponent(location.pathname.split("/").pop());

async function start() {
  await ck.loadMe();
  ck.topbar("console");
  const root = document.getElementById("root");
  if (!ck.me) {
    ck.authCard(root, ck.t("demo.signin_lead"), start);
    return;
  }
  let order;
  try {
    order = await ck.api("GET", `/api/payments/${encodeURIComponent(orderId)}`);
  } catch (e) {
    root.replaceChildren(el("main", { class: "content", id: "content" }, el("div", { class: "error", role: "alert", text: e.message })));
    return;
  }
  const message = el("div", { role: "status", id: "demo-message", hidden: true });
  const pay = el("button", { type: "button", id: "demo-pay" }, ck.t("topup.pay"));
  const status = el("span", { class: "badge", id: "demo-status", "data-status": order.status, text: ck.t(`topup.status.${order.status}`) });
  pay.disabled = order.status !== "pending";
  pay.addEventListener("click", async () => {
    pay.disabled = true;
    try {
      const paid = await ck.api("POST", `/api/payments/${encodeURIComponent(orderId)}/pay`);
      status.textContent = ck.t(`topup.status.${paid.status}`);
      status.dataset.status = paid.status;
      await ck.loadMe();
      ck.setBalance(ck.me.balance);
      message.className = "notice";
      message.replaceChildren(ck.t("demo.paid", { credits: ck.credits(paid.credits) }), " ",
        el("a", { href: "/console#topup", id: "demo-back" }, ck.t("demo.back")));
    } catch (e) {
      message.className = "error";
      message.textContent = e.message;
      pay.disabled = false;
    }
    message.hidden = false;
  });
  root.replaceChildren(el("main", { class: "content", id: "content" },
    el("h1", { text: ck.t("title.demo_pay") }),
    el("div", { class: "card" },
      el("p", { class: "notice", id: "demo-warning", text: ck.t("demo.warning") }),
      el("p", {}, ck.t("demo.order"), " ", el("code", { text: order.id }), " — ", status),
      el("p", { text: ck.t("demo.buys", { amount: order.amount.toFixed(2), currency: order.currency, credits: ck.credits(order.credits) }) }),
      pay, message)));
}

start();
