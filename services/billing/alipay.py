"""Alipay's open platform, the parts chatkore uses: page pay, precreate (a QR code), and the
verification of its asynchronous notifications. RSA2 = SHA256withRSA (PKCS#1 v1.5) over the
parameters sorted by name, `k=v` joined with `&` — signed with the app's key, verified with
Alipay's. The signatures are `cryptography`'s; the HTTP call is aiohttp's (README: why not an SDK).
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
from collections.abc import Mapping
from urllib.parse import urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.billing.config import AlipayConfig
from services.common.config import ConfigError

log = logging.getLogger(__name__)

CHINA = dt.timezone(dt.timedelta(hours=8))  # Alipay's timestamps are Beijing time
TIMEOUT_S = 15


def _private_key(text: str) -> rsa.RSAPrivateKey:
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = serialization.load_der_private_key(base64.b64decode("".join(text.split())), password=None)
    except (ValueError, TypeError, binascii.Error):
        raise ConfigError("CHATKORE_ALIPAY_PRIVATE_KEY is not an RSA private key (PEM or base64)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("CHATKORE_ALIPAY_PRIVATE_KEY is not an RSA private key")
    return key


def _public_key(text: str) -> rsa.RSAPublicKey:
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode("".join(text.split())))
    except (ValueError, TypeError, binascii.Error):
        raise ConfigError("CHATKORE_ALIPAY_PUBLIC_KEY is not an RSA public key (PEM or base64)") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError("CHATKORE_ALIPAY_PUBLIC_KEY is not an RSA public key")
    return key


def signing_string(params: Mapping[str, str]) -> str:
    """What is signed: every parameter but `sign` and `sign_type`, sorted, `k=v&k=v`."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type"))


def yuan(amount_fen: int) -> str:
    """Alipay's total_amount: yuan with exactly two decimals."""
    return f"{amount_fen // 100}.{amount_fen % 100:02d}"


class AlipayError(Exception):
    """Alipay could not be reached, or answered something other than a verified success."""


class Alipay:
    def __init__(self, cfg: AlipayConfig, public_url: str) -> None:
        self.app_id = cfg.app_id
        self.gateway = cfg.gateway
        self._key = _private_key(cfg.private_key.reveal())
        self._alipay_key = _public_key(cfg.public_key)
        self.notify_url = f"{public_url}/payments/alipay/notify"
        self.return_url = f"{public_url}/payments/alipay/return"

    # --- signatures -------------------------------------------------------------------

    def _sign(self, params: dict[str, str]) -> str:
        # Requests sign sign_type too (unlike notifications): everything but `sign`.
        content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign")
        return base64.b64encode(self._key.sign(content.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()

    def verified(self, content: str, sign: str) -> bool:
        try:
            signature = base64.b64decode(sign, validate=True)
            self._alipay_key.verify(signature, content.encode(), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    def notification_verified(self, params: Mapping[str, str]) -> bool:
        """An asynchronous notification's RSA2 signature, with Alipay's public key."""
        if params.get("sign_type", "RSA2") != "RSA2" or not params.get("sign"):
            return False
        return self.verified(signing_string(params), params["sign"])

    # --- requests ------------------------------------------------------------------

    def _request(self, method: str, biz: dict[str, str], **extra: str) -> dict[str, str]:
        params = {
            "app_id": self.app_id, "method": method, "charset": "utf-8", "sign_type": "RSA2",
            "timestamp": dt.datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S"), "version": "1.0",
            "notify_url": self.notify_url, "biz_content": json.dumps(biz, separators=(",", ":"), ensure_ascii=False),
            **extra,
        }
        params["sign"] = self._sign(params)
        return params

    def page_pay_url(self, order_id: str, amount_fen: int, subject: str, ttl_s: int) -> str:
        """The desktop checkout: a signed URL of the gateway the buyer's browser opens."""
        params = self._request("alipay.trade.page.pay", {
            "out_trade_no": order_id, "total_amount": yuan(amount_fen), "subject": subject,
            "product_code": "FAST_INSTANT_TRADE_PAY", "timeout_express": f"{max(1, ttl_s // 60)}m",
        }, return_url=self.return_url)
        return f"{self.gateway}?{urlencode(params)}"

    async def precreate(self, order_id: str, amount_fen: int, subject: str, ttl_s: int) -> str:
        """A QR code to scan with the Alipay app (alipay.trade.precreate); its content."""
        params = self._request("alipay.trade.precreate", {
            "out_trade_no": order_id, "total_amount": yuan(amount_fen), "subject": subject,
            "timeout_express": f"{max(1, ttl_s // 60)}m",
        })
        import aiohttp  # only here: billing without Alipay's QR codes loads no HTTP client (issue 16)

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http, \
                    http.post(self.gateway, data=params) as resp:
                raw = (await resp.content.read(1 << 16)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AlipayError(f"Alipay could not be reached: {type(exc).__name__}") from None
        name = "alipay_trade_precreate_response"
        content = _response_text(raw, name)
        try:
            answer = json.loads(raw)
            result = json.loads(content) if content else {}
        except ValueError:
            raise AlipayError("Alipay answered something that is not JSON") from None
        if not isinstance(answer, dict) or not content or not self.verified(content, str(answer.get("sign", ""))):
            raise AlipayError("Alipay's answer to precreate is not signed by Alipay")
        if result.get("code") != "10000" or not isinstance(result.get("qr_code"), str):
            raise AlipayError(f"Alipay refused precreate: {result.get('code')} {result.get('sub_code', '')}")
        return result["qr_code"]


def _response_text(raw: str, name: str) -> str:
    """The exact text of `"name": {...}` in Alipay's answer: what its `sign` covers."""
    at = raw.find(f'"{name}"')
    if at < 0:
        return ""
    start = raw.find("{", at)
    if start < 0:
        return ""
    try:
        _, end = json.JSONDecoder().raw_decode(raw, start)
    except ValueError:
        return ""
    return raw[start:end]
