"""Mail from auth: over SMTP (aiosmtplib) when CHATKORE_SMTP_URL is set, else written to the log.

A mail is sent in the background: the caller's answer must not wait for (or reveal, by its
timing) whether there was anyone to write to.
"""
from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib

log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 30


class Mailer:
    def __init__(self, smtp_url: str | None, sender: str) -> None:
        self._sender = sender
        self._smtp: dict[str, object] | None = None
        if smtp_url:
            url = urlsplit(smtp_url)
            if url.scheme not in ("smtp", "smtps") or not url.hostname:
                raise ValueError("CHATKORE_SMTP_URL must look like smtp://user:password@host:587 or smtps://...")
            self._smtp = {
                "hostname": url.hostname, "port": url.port or (465 if url.scheme == "smtps" else 25),
                "username": unquote(url.username) if url.username else None,
                "password": unquote(url.password) if url.password else None,
                "use_tls": url.scheme == "smtps", "timeout": SEND_TIMEOUT_S,
            }
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def configured(self) -> bool:
        return self._smtp is not None

    def post(self, to: str, subject: str, text: str) -> None:
        """Send in the background; a failure is logged, never raised to the caller."""
        task = asyncio.create_task(self._send(to, subject, text))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, to: str, subject: str, text: str) -> None:
        if self._smtp is None:
            log.info("mail (no CHATKORE_SMTP_URL, so here instead of sent) to %s: %s\n%s", to, subject, text)
            return
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self._sender, to, subject
        message.set_content(text)
        try:
            await aiosmtplib.send(message, **self._smtp)  # type: ignore[arg-type]
            log.info("mail sent to %s: %s", to, subject)
        except Exception as exc:  # noqa: BLE001 - an SMTP server down must not fail the caller
            log.warning("mail to %s failed: %s", to, type(exc).__name__)

    async def close(self) -> None:
        if self._sending:
            await asyncio.wait(self._sending, timeout=SEND_TIMEOUT_S)
