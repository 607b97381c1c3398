"""Signed tokens that name one dispatch: the unsubscribe URL's and the VERP return path's.

A token is the dispatch id and a truncated HMAC-SHA256 of it, in lower-case base32 without
padding (29 characters). Lower case and case-insensitive, because a token in a return path's
local part may come back lowered by an MTA. Each purpose has its own key (derived from
DISPATCH_SECRET_KEY), so an unsubscribe token is no bounce token; DISPATCH_OLD_SECRET_KEYS
still verify while keys rotate. Tokens do not expire: an unsubscribe link must work for as
long as the email is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from enum import StrEnum

from ..config import Settings, ensure_secret_key

MAC_BYTES = 10  # 80 bits: a forgery needs 2**80 tries, each one an HTTP request or a bounce
TOKEN_LENGTH = 29  # base32 of 8 + 10 bytes, unpadded


class Purpose(StrEnum):
    UNSUBSCRIBE = "unsubscribe"
    BOUNCE = "bounce"


def _key(secret: str, purpose: Purpose) -> bytes:
    return hmac.new(secret.encode(), f"dispatch-engine:{purpose}".encode(), hashlib.sha256).digest()


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


class DispatchTokens:
    """Makes and checks the tokens of one purpose with the current and the old secrets."""

    def __init__(self, secret: str, purpose: Purpose, old_secrets: Sequence[str] = ()) -> None:
        if not secret:
            raise ValueError("a secret key is needed to sign dispatch tokens")
        self.purpose = purpose
        self._keys = [_key(s, purpose) for s in (secret, *old_secrets) if s]

    @classmethod
    def for_settings(cls, settings: Settings, purpose: Purpose) -> DispatchTokens:
        """The process's tokens of a purpose: DISPATCH_SECRET_KEY (in local mode, the key kept
        in the data folder), so api, worker and sweeper processes agree on every token."""
        keyed = ensure_secret_key(settings)
        assert keyed.secret_key is not None
        return cls(keyed.secret_key, purpose, keyed.old_secret_keys)

    def make(self, dispatch_id: int) -> str:
        payload = dispatch_id.to_bytes(8, "big")
        return _encode(payload + _mac(self._keys[0], payload))

    def read(self, token: str) -> int | None:
        """The dispatch id a genuine token names, else None (never raises on any input)."""
        if len(token) != TOKEN_LENGTH or not token.isascii():
            return None
        try:
            raw = base64.b32decode(token.upper() + "===")
        except (binascii.Error, ValueError):
            return None
        if _encode(raw) != token.lower():  # the last character's spare bit must be 0
            return None
        payload, mac = raw[:8], raw[8:]
        if not any(hmac.compare_digest(mac, _mac(key, payload)) for key in self._keys):
            return None
        return int.from_bytes(payload, "big")
