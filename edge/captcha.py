"""An optional captcha on console sign-up (Cloudflare Turnstile or hCaptcha), verified here,
server-side, before any account is made.

`CHATKORE_CAPTCHA=turnstile|hcaptcha` with `CHATKORE_CAPTCHA_SITE_KEY` (public, for the widget)
and `CHATKORE_CAPTCHA_SECRET` (for the provider's siteverify); `CHATKORE_CAPTCHA_VERIFY_URL`
replaces the provider's siteverify (a fake on loopback in tests). Only when it is configured
does the console page load the provider's script, and only then does its CSP allow it.
"""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from edge.errors import OpenAIError, invalid
from services.common.config import ConfigError, Secret, env_optional

log = logging.getLogger(__name__)
VERIFY_TIMEOUT_S = 10
MAX_TOKEN_CHARS = 4096  # Turnstile's tokens are at most 2048


@dataclass(frozen=True)
class Provider:
    script: str              # the widget's script (explicit rendering; it calls ckCaptchaReady)
    verify_url: str          # the provider's siteverify
    origins: tuple[str, ...]  # what the page's CSP must allow for the widget (script, frame, connect, style)


PROVIDERS = {
    "turnstile": Provider("https://challenges.cloudflare.com/turnstile/v0/api.js?render=explicit&onload=ckCaptchaReady",
                          "https://challenges.cloudflare.com/turnstile/v0/siteverify",
                          ("https://challenges.cloudflare.com",)),
    "hcaptcha": Provider("https://js.hcaptcha.com/1/api.js?render=explicit&onload=ckCaptchaReady",
                         "https://api.hcaptcha.com/siteverify",
                         ("https://hcaptcha.com", "https://*.hcaptcha.com")),
}


@dataclass(frozen=True)
class CaptchaConfig:
    kind: str
    site_key: str
    secret: Secret
    verify_url: str

    @property
    def provider(self) -> Provider:
        return PROVIDERS[self.kind]

    @classmethod
    def from_env(cls) -> CaptchaConfig | None:
        kind = (env_optional("CHATKORE_CAPTCHA") or "").strip().lower()
        if not kind:
            return None
        if kind not in PROVIDERS:
            raise ConfigError(f"CHATKORE_CAPTCHA must be one of {', '.join(PROVIDERS)} (or unset), not {kind!r}")
        site_key, secret = env_optional("CHATKORE_CAPTCHA_SITE_KEY"), env_optional("CHATKORE_CAPTCHA_SECRET")
        if not site_key:
            raise ConfigError("CHATKORE_CAPTCHA_SITE_KEY is required when CHATKORE_CAPTCHA is set")
        if not secret:
            raise ConfigError("CHATKORE_CAPTCHA_SECRET is required when CHATKORE_CAPTCHA is set")
        return cls(kind, site_key, Secret(secret),
                   env_optional("CHATKORE_CAPTCHA_VERIFY_URL") or PROVIDERS[kind].verify_url)


def head_tags(cfg: CaptchaConfig | None) -> str:
    """What the console page's <head> gets: the provider and site key for common.js, and the script."""
    if cfg is None:
        return ""
    return (f'<meta name="ck-captcha" content="{html.escape(cfg.kind)}" data-site-key="{html.escape(cfg.site_key)}">'
            f'\n  <script src="{html.escape(cfg.provider.script)}" async defer></script>')


def csp(base: str, cfg: CaptchaConfig | None) -> str:
    """The pages' CSP, widened for the provider's widget only when a captcha is configured."""
    if cfg is None:
        return base
    allowed = " ".join(cfg.provider.origins)
    out = []
    for directive in base.split(";"):
        name = directive.strip().split(" ", 1)[0]
        out.append(f"{directive} {allowed}" if name in ("script-src", "style-src", "connect-src") else directive)
    return ";".join(out) + f"; frame-src {allowed}"


def _failed() -> OpenAIError:
    return invalid("The captcha was not solved. Please try again.", "captcha", "captcha_failed")


class Captcha:
    def __init__(self, cfg: CaptchaConfig) -> None:
        self._cfg = cfg
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=VERIFY_TIMEOUT_S))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def check(self, token: object, address: str) -> None:
        """Passes a solved captcha; 400 captcha_failed otherwise, 503 when the provider cannot be asked."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise _failed()
        assert self._http is not None
        form = {"secret": self._cfg.secret.reveal(), "response": token, "remoteip": address}
        try:
            async with self._http.post(self._cfg.verify_url, data=form) as resp:
                answer = await resp.json(content_type=None) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("captcha: %s siteverify failed: %s", self._cfg.kind, type(exc).__name__)
            raise OpenAIError(503, "The captcha could not be checked just now. Please try again.",
                              type="server_error", code="captcha_unavailable", headers={"retry-after": "5"}) from None
        if not isinstance(answer, dict) or answer.get("success") is not True:
            codes = answer.get("error-codes") if isinstance(answer, dict) else None
            log.info("captcha: %s refused a sign-up (%s)", self._cfg.kind, codes)
            raise _failed()


CAPTCHA = web.AppKey("captcha", Captcha)

