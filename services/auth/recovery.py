"""Accounts that can be recovered: password reset by mail, and password change.

A reset token is mailed as a link, stored only as its SHA-256, lives an hour and works once;
using it sets the new password and ends every session of the account. Asking for a reset
answers the same whether or not the address has an account. A change needs the current
password and ends every other session.
"""
from __future__ import annotations

import hashlib
import secrets

from psycopg_pool import AsyncConnectionPool

from services.auth import store
from services.auth.accounts import check_password, session_hash, spelled_as_stored
from services.auth.errors import InvalidApiKey, InvalidRequest
from services.auth.mail import Mailer
from services.auth.passwords import MAX_LENGTH, Passwords

RESET_TTL_S = 3600
_BAD_LINK = "This link is invalid, used or expired. Ask for a new one."
LETTERS = {
    "zh-CN": ("重置你的 chatkore 密码",
              "有人（希望是你）请求重置 chatkore 账号 {email} 的密码。\n\n"
              "在 1 小时内打开下面的链接设置新密码（只能用一次）：\n{link}\n\n"
              "如果不是你本人操作，请忽略这封邮件，你的密码不会改变。"),
    "en": ("Reset your chatkore password",
           "Someone (we hope you) asked to reset the password of the chatkore account {email}.\n\n"
           "Open this link within an hour to set a new password (it works once):\n{link}\n\n"
           "If it was not you, ignore this mail: your password stays as it is."),
}


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Recovery:
    def __init__(self, pool: AsyncConnectionPool, passwords: Passwords, mailer: Mailer, public_url: str) -> None:
        self._pool = pool
        self._passwords = passwords
        self._mailer = mailer
        self._public_url = public_url.rstrip("/")

    async def request_reset(self, email: str, lang: str) -> None:
        async with self._pool.connection() as conn:
            account = await store.find_account(conn, spelled_as_stored(email.strip()[:254]))
            if account is None or account.user_id is None or account.user_disabled:
                return
            token = secrets.token_urlsafe(32)
            await store.insert_account_token(conn, token_hash(token), account.id, "reset", RESET_TTL_S)
        subject, text = LETTERS.get(lang, LETTERS["en"])
        link = f"{self._public_url}/console?reset={token}"
        self._mailer.post(account.email, subject, text.format(email=account.email, link=link))

    async def reset(self, token: str, password: str) -> None:
        check_password(password)
        hashed = await self._passwords.hash(password)
        if not token or len(token) > 200:
            raise InvalidRequest(_BAD_LINK, param="token", code="invalid_token")
        async with self._pool.connection() as conn, conn.transaction():
            account_id = await store.use_account_token(conn, token_hash(token), "reset")
            if account_id is None:
                raise InvalidRequest(_BAD_LINK, param="token", code="invalid_token")
            await store.set_password(conn, account_id, hashed)
            await store.end_sessions(conn, account_id)

    async def change(self, session_token: str, current: str, new: str) -> None:
        check_password(new)
        async with self._pool.connection() as conn:
            found = await store.find_session(conn, session_hash(session_token)) if session_token else None
        if found is None:
            raise InvalidApiKey("Your session has expired or is not valid. Please sign in.", code="session_required")
        account = found[0]
        if not await self._passwords.verify(account.password_hash, current[:MAX_LENGTH]):
            raise InvalidRequest("The current password is not right.", param="current", code="wrong_password")
        hashed = await self._passwords.hash(new)
        async with self._pool.connection() as conn, conn.transaction():
            await store.set_password(conn, account.id, hashed)
            await store.end_sessions(conn, account.id, keep=session_hash(session_token))
