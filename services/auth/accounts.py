"""Console accounts: registration across auth and billing, sign-in, sessions and roles.

Registration is a small saga in three steps, ordered so that no failure between them can
leave an account that signs in without its credits, or credits that anyone can spend:

1. auth stores the credentials with no user attached. Such an account cannot sign in
   (sign-in and sessions require `accounts.user_id`).
2. billing creates the user with the sign-up bonus, idempotent by the reference
   `account:<id>`: asking again answers the same user and grants nothing more.
3. auth attaches that user to the account. Only now can it sign in, and it has its credits.

A failure after 1 leaves an unfinished account; after 2, also a user with its bonus that
nobody can reach (no credentials lead to it, it has no keys). Registering again with the
same email and password resumes at step 2 and ends with the one user and the one grant.
An unfinished account that nobody resumes for `STALE_PENDING_S` may be taken over by a new
registration of the same email (no one ever signed in to it, so nothing is lost).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from services.auth import store
from services.auth.billing_peer import BillingPeer
from services.auth.errors import Conflict, InvalidApiKey, InvalidRequest, NotFound, TooManySignIns
from services.auth.passwords import MAX_LENGTH, MIN_LENGTH, Passwords
from services.auth.store import AccountRow
from services.auth.verification import idna_domain

ROLES = ("user", "operator")
STALE_PENDING_S = 15 * 60
FAILED_LOGIN_LIMIT = 10
LOCK_S = 15 * 60
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_WRONG_LOGIN = "Incorrect email or password."
_LOCKED = "Too many failed sign-ins for this email from your address. Try again in 15 minutes."
_NO_SESSION = "Your session has expired or is not valid. Please sign in."
_TAKEN = "An account with this email already exists. Sign in instead."


def session_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Session:
    token: str  # empty except right after sign-in
    csrf_token: str
    account: AccountRow
    expires_at: int


def _check_email(email: str) -> str:
    """A sign-up address in one spelling per mailbox (what the bonus is keyed on): an ASCII
    local part, unquoted, at an IDNA-encoded domain without a trailing dot."""
    email = unicodedata.normalize("NFKC", email.strip())
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise InvalidRequest("Enter a valid email address.", param="email", code="invalid_email")
    local, _, domain = email.rpartition("@")
    if '"' in local or "\\" in local:
        raise InvalidRequest("Email addresses with a quoted local part are not accepted.", param="email",
                             code="email_quoted_local_part")
    if not local.isascii():
        raise InvalidRequest("The part of the email address before the @ must be ASCII.", param="email",
                             code="email_non_ascii_local_part")
    if domain.endswith("."):
        raise InvalidRequest("The email address's domain must not end with a dot.", param="email",
                             code="email_domain_trailing_dot")
    if idna_domain(domain) is None:
        raise InvalidRequest("Enter a valid email address.", param="email", code="invalid_email")
    return spelled_as_stored(email)


def spelled_as_stored(email: str) -> str:
    """An address as sign-up stores it: NFKC, the domain in IDNA when it is not ASCII (an ASCII
    domain kept as typed), no trailing dot. Every lookup of an account by address goes through
    this (sign-in, password reset), and store.find_account compares it case-insensitively, so
    user@bücher.example, user@BÜCHER.example and user@xn--bcher-kva.example find one account."""
    local, at, domain = unicodedata.normalize("NFKC", email.strip()).rpartition("@")
    if not at:
        return email.strip()
    domain = domain.rstrip(".")
    return f"{local}@{domain if domain.isascii() else idna_domain(domain) or domain}"


def check_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise InvalidRequest(f"The password must have at least {MIN_LENGTH} characters.",
                             param="password", code="password_too_short")
    if len(password) > MAX_LENGTH:
        raise InvalidRequest(f"The password may have at most {MAX_LENGTH} characters.", param="password",
                             code="password_too_long")


class Accounts:
    def __init__(self, pool: AsyncConnectionPool, billing: BillingPeer, passwords: Passwords,
                 session_ttl_s: int) -> None:
        self._pool = pool
        self._passwords = passwords
        self._billing = billing
        self._ttl_s = session_ttl_s

    async def register(self, email: str, password: str, *, bonus_on_verify: bool = False) -> AccountRow:
        """With `bonus_on_verify` (mail configured), the user starts with no credits: the bonus
        comes when the address is verified (services/auth/verification.py)."""
        email = _check_email(email)
        check_password(password)
        hashed = await self._passwords.hash(password)
        async with self._pool.connection() as conn:
            account = await store.insert_account(conn, email, hashed, bonus_on_verify)  # step 1
            if account is None:
                account = await store.find_account(conn, email)
                if account is None or account.user_id is not None:
                    raise Conflict(_TAKEN, param="email", code="email_taken")
                # Someone else's sign-up under way is theirs to finish, unless long abandoned.
                resumable = await self._passwords.verify(account.password_hash, password) or (
                    account.pending_age_s >= STALE_PENDING_S
                    and await store.restart_registration(conn, account.id, hashed))
                if not resumable:
                    raise Conflict(_TAKEN, param="email", code="email_taken")
        user_id = await self._billing.create_user(email, f"account:{account.id}",  # step 2
                                                  bonus=not account.verification_pending)
        async with self._pool.connection() as conn:
            done = await store.attach_user(conn, account.id, user_id)  # step 3
        if done is None:
            raise Conflict(_TAKEN, param="email", code="email_taken")
        return done

    async def login(self, email: str, password: str, address: str) -> Session:
        """A new session. Wrong passwords lock out (email, address) pairs, whether the email has an
        account or not, so neither the answer nor its timing tells which emails exist."""
        email = spelled_as_stored(email.strip()[:254])
        who = email.lower()
        async with self._pool.connection() as conn:
            if await store.sign_in_locked(conn, who, address):
                raise TooManySignIns(_LOCKED, retry_after_s=LOCK_S, code="account_locked")
            account = await store.find_account(conn, email)
        # An unknown email costs one hash too.
        ok = await self._passwords.verify(account.password_hash if account else None, password[:MAX_LENGTH])
        if not ok:
            async with self._pool.connection() as conn:
                await store.record_failed_login(conn, who, address, FAILED_LOGIN_LIMIT, LOCK_S)
            raise InvalidApiKey(_WRONG_LOGIN, code="invalid_credentials")
        if account is None or account.user_id is None or account.user_disabled:
            raise InvalidApiKey(_WRONG_LOGIN, code="invalid_credentials")
        async with self._pool.connection() as conn:
            await store.clear_failed_logins(conn, who, address)
            rehashed = None
            if self._passwords.needs_rehash(account.password_hash):
                rehashed = await self._passwords.hash(password)
            await store.record_login(conn, account.id, rehashed)
            token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            expires = await store.insert_session(conn, session_hash(token), account.id, csrf, self._ttl_s)
        return Session(token, csrf, account, expires)

    async def resolve(self, token: str) -> Session:
        if not token or len(token) > 200:
            raise InvalidApiKey(_NO_SESSION, code="session_required")
        async with self._pool.connection() as conn:
            found = await store.find_session(conn, session_hash(token))
        if found is None or found[0].user_disabled:
            raise InvalidApiKey(_NO_SESSION, code="session_required")
        account, csrf, expires = found
        return Session("", csrf, account, expires)

    async def logout(self, token: str) -> None:
        if token and len(token) <= 200:
            async with self._pool.connection() as conn:
                await store.delete_session(conn, session_hash(token))

    async def set_role(self, user_id: int, role: str) -> AccountRow:
        if role not in ROLES:
            raise InvalidRequest(f"'role' must be one of {', '.join(ROLES)}", param="role")
        async with self._pool.connection() as conn:
            account = await store.set_role(conn, user_id, role)
        if account is None:
            raise NotFound(f"No console account for user {user_id}")
        return account

    async def of_users(self, user_ids: list[int]) -> list[AccountRow]:
        async with self._pool.connection() as conn:
            return await store.accounts_of(conn, user_ids[:1000])
