"""Alipay and Stripe as a test plays them, over real HTTP on loopback.

Alipay has its own RSA key pair (the product is given the public half as Alipay's key) and
checks the product's requests with the app's public key; Stripe answers the Checkout Session
create endpoint. Notifications and webhooks are built and signed here the way the real
providers sign them.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

APP_ID = "2021000000000001"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def rsa2(key: rsa.RSAPrivateKey, content: str) -> str:
    return base64.b64encode(key.sign(content.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def alipay_signed(key: rsa.RSAPrivateKey, params: dict[str, str]) -> dict[str, str]:
    """A notification as Alipay signs it: RSA2 over the sorted params without sign/sign_type."""
    content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type"))
    return {**params, "sign_type": "RSA2", "sign": rsa2(key, content)}


def alipay_notification(order_id: str, total_amount: str, *, app_id: str = APP_ID,
                        trade_status: str = "TRADE_SUCCESS") -> dict[str, str]:
    return {
        "notify_time": time.strftime("%Y-%m-%d %H:%M:%S"), "notify_type": "trade_status_sync",
        "notify_id": secrets.token_hex(16), "charset": "utf-8", "version": "1.0", "app_id": app_id,
        "trade_no": f"2026113022001{secrets.randbelow(10**9):09d}", "out_trade_no": order_id,
        "buyer_logon_id": "buy***@example.com", "total_amount": total_amount, "receipt_amount": total_amount,
        "trade_status": trade_status, "subject": "chatkore credits", "gmt_payment": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def stripe_signature(secret: str, payload: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def stripe_event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"id": f"evt_{secrets.token_hex(8)}", "object": "event", "type": kind,
                       "api_version": "2025-01-27", "created": int(time.time()), "livemode": False,
                       "data": {"object": obj}}).encode()


class FakePayments:
    """One loopback server playing Alipay's gateway (/gateway.do) and Stripe's API (/v1/...)."""

    def __init__(self) -> None:
        self.alipay_key = new_key()   # Alipay's own
        self.app_key = new_key()      # the app's, which chatkore signs with
        self.stripe_secret = "sk_test_" + secrets.token_hex(12)
        self.webhook_secret = "whsec_" + secrets.token_hex(16)
        self.alipay_calls: list[dict[str, Any]] = []
        self.stripe_calls: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                if self.path.startswith("/gateway.do"):
                    self._answer(200, fake._alipay(form))
                elif self.path == "/v1/checkout/sessions":
                    status, body = fake._stripe_session(form, self.headers.get("Authorization", ""))
                    self._answer(status, body)
                else:
                    self._answer(404, b"{}")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-payments")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakePayments:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self, public_url: str) -> dict[str, str]:
        return {
            "CHATKORE_PUBLIC_URL": public_url,
            "CHATKORE_ALIPAY_APP_ID": APP_ID,
            "CHATKORE_ALIPAY_PRIVATE_KEY": private_pem(self.app_key),
            "CHATKORE_ALIPAY_PUBLIC_KEY": public_pem(self.alipay_key),
            "CHATKORE_ALIPAY_GATEWAY": f"{self.url}/gateway.do",
            "CHATKORE_STRIPE_SECRET_KEY": self.stripe_secret,
            "CHATKORE_STRIPE_WEBHOOK_SECRET": self.webhook_secret,
            "CHATKORE_STRIPE_API_BASE": self.url,
        }

    def app_signed(self, params: dict[str, str]) -> bool:
        """Whether a request the product sent carries the app's valid RSA2 signature."""
        content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign")
        try:
            self.app_key.public_key().verify(base64.b64decode(params.get("sign", "")), content.encode(),
                                             padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return False
        return True

    def _alipay(self, form: dict[str, str]) -> bytes:
        self.alipay_calls.append({"params": form, "signed": self.app_signed(form)})
        biz = json.loads(form.get("biz_content", "{}"))
        if not self.app_signed(form) or form.get("method") != "alipay.trade.precreate":
            inner = {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature"}
        else:
            inner = {"code": "10000", "msg": "Success", "out_trade_no": biz["out_trade_no"],
                     "qr_code": f"https://qr.alipay.com/fake{biz['out_trade_no']}"}
        text = json.dumps(inner, ensure_ascii=False)
        sign = rsa2(self.alipay_key, text)
        return ('{"alipay_trade_precreate_response":' + text + ',"sign":"' + sign + '"}').encode()

    def _stripe_session(self, form: dict[str, str], authorization: str) -> tuple[int, bytes]:
        self.stripe_calls.append(form)
        if authorization != f"Bearer {self.stripe_secret}":
            return 401, json.dumps({"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}).encode()
        session_id = f"cs_test_{secrets.token_hex(12)}"
        return 200, json.dumps({
            "id": session_id, "object": "checkout.session", "mode": "payment", "status": "open",
            "client_reference_id": form.get("client_reference_id"), "payment_status": "unpaid",
            "amount_total": int(form.get("line_items[0][price_data][unit_amount]", "0")), "currency": "usd",
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
        }).encode()
