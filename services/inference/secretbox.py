"""Upstream keys encrypted at rest with AES-256-GCM under CHATKORE_SECRET_KEY."""
from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.config import Secret

_VERSION = b"\x01"


class SecretBox:
    def __init__(self, secret: Secret) -> None:
        # A fixed label separates this use of the operator's secret from any other.
        self._aead = AESGCM(hashlib.sha256(b"chatkore/channel-keys/v1\x00" + secret.reveal().encode()).digest())

    def seal(self, plaintext: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), _VERSION)

    def open(self, sealed: bytes) -> str:
        if sealed[:1] != _VERSION:
            raise ValueError("unknown sealed-key version")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], _VERSION).decode()
        except InvalidTag:
            raise ValueError("channel key cannot be decrypted: wrong CHATKORE_SECRET_KEY?") from None


def mask(key: str) -> str:
    """What a listing shows of an upstream key."""
    if len(key) <= 8:
        return "****"
    return f"{key[:3]}...{key[-4:]}"
