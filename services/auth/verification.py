"""Verified addresses, and the sign-up bonus that waits for one (only when mail is configured).

Sign-up mails a link (token stored as its SHA-256, single use, 24 h). Following it asks
billing for the bonus as a top-up whose reference is the normalised mailbox's hash, and only
then marks the address verified and uses the token up. The order matters:

- billing's reference is unique, so the bonus is credited once per mailbox, whichever of its
  accounts (`A+x@…`, `a.b@gmail.com`) asks first, and however many ask at once;
- a link followed again (or billing unreachable half way) asks with the same reference for
  the same user, which billing answers as already granted: never twice, never lost.
"""
from __future__ import annotations

import hashlib
import secrets
import unicodedata

from psycopg_pool import AsyncConnectionPool

from services.auth import store
from services.auth.billing_peer import BillingPeer
from services.auth.errors import InvalidRequest, TooManySignIns
from services.auth.mail import Mailer
from services.auth.store import AccountRow

VERIFY_TTL_S = 24 * 3600
RESEND_GAP_S = 60       # one link a minute at most
RESENDS_PER_DAY = 5
_GMAIL = ("gmail.com", "googlemail.com")
_BAD_LINK = "This verification link is invalid, used or expired. Ask for a new one."
LETTERS = {
    "zh-CN": ("验证你的 chatkore 邮箱",
              "欢迎使用 chatkore！请在 24 小时内打开下面的链接验证邮箱 {email}（只能用一次），"
              "验证后赠送的额度会到账：\n{link}\n\n如果你没有注册 chatkore，请忽略这封邮件。"),
    "en": ("Verify your chatkore email address",
           "Welcome to chatkore! Open this link within 24 hours to verify {email} (it works once);"
           " your sign-up credits arrive when it is verified:\n{link}\n\n"
           "If you did not sign up for chatkore, ignore this mail."),
}


def idna_domain(domain: str) -> str | None:
    """A mail domain in its ASCII (IDNA) spelling, lower case; None if it cannot be one."""
    try:
        return domain.casefold().encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def normalise_email(email: str) -> str:
    """One mailbox, one spelling: NFKC, case folded, `+tag` removed, the domain in IDNA without
    a trailing dot, Gmail's dots removed (and googlemail.com is gmail.com)."""
    local, _, domain = unicodedata.normalize("NFKC", email.strip()).casefold().rpartition("@")
    local = local.split("+", 1)[0]
    domain = domain.rstrip(".")
    domain = idna_domain(domain) or domain
    if domain in _GMAIL:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


def bonus_reference(email: str) -> str:
    """Billing's top-up reference for a mailbox's bonus (a hash: no address in the ledger)."""
    return "signup-bonus:" + hashlib.sha256(normalise_email(email).encode("utf-8", "surrogatepass")).hexdigest()


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Verification:
    def __init__(self, pool: AsyncConnectionPool, billing: BillingPeer, mailer: Mailer, public_url: str) -> None:
        self._pool = pool
        self._billing = billing
        self._mailer = mailer
        self._public_url = public_url.rstrip("/")

    @property
    def required(self) -> bool:
        """The bonus waits for a verified address only when mail can reach the address."""
        return self._mailer.configured

    async def send_link(self, account: AccountRow, lang: str) -> None:
        token = secrets.token_urlsafe(32)
        async with self._pool.connection() as conn:
            await store.insert_account_token(conn, _hash(token), account.id, "verify", VERIFY_TTL_S)
        self._post(account.email, token, lang)

    async def resend(self, user_id: int, lang: str) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            account = await store.lock_account_by_user(conn, user_id)
            if account is None or not account.verification_pending:
                raise InvalidRequest("This address needs no verification.", code="already_verified")
            today, since_last = await store.recent_tokens(conn, account.id, "verify", 86400)
            if since_last < RESEND_GAP_S or today >= RESENDS_PER_DAY:
                wait = RESEND_GAP_S - since_last if since_last < RESEND_GAP_S else 3600
                raise TooManySignIns("A verification mail was sent a moment ago. Please wait before asking again.",
                                     retry_after_s=max(1.0, wait), code="too_many_mails")
            token = secrets.token_urlsafe(32)
            await store.insert_account_token(conn, _hash(token), account.id, "verify", VERIFY_TTL_S)
        self._post(account.email, token, lang)

    def _post(self, email: str, token: str, lang: str) -> None:
        subject, text = LETTERS.get(lang, LETTERS["en"])
        link = f"{self._public_url}/console?verify={token}"
        self._mailer.post(email, subject, text.format(email=email, link=link))

    async def verify(self, token: str) -> tuple[AccountRow, int]:
        """The account, verified now, and the bonus credited by this call (0 if none)."""
        if not token or len(token) > 200:
            raise InvalidRequest(_BAD_LINK, param="token", code="invalid_token")
        async with self._pool.connection() as conn:
            account = await store.account_of_token(conn, _hash(token), "verify")
        if account is None or account.user_id is None:
            raise InvalidRequest(_BAD_LINK, param="token", code="invalid_token")
        bonus = 0
        if account.verification_pending:
            granted, credits = await self._billing.grant_signup_bonus(account.user_id, bonus_reference(account.email))
            bonus = credits if granted else 0
        async with self._pool.connection() as conn, conn.transaction():
            if await store.use_account_token(conn, _hash(token), "verify") is None:
                raise InvalidRequest(_BAD_LINK, param="token", code="invalid_token")  # a twin click won
            account = await store.mark_verified(conn, account.id)
        return account, bonus
