"""Transport secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) keyed from DISPATCH_SECRET_KEY.

The key is derived with HKDF, so the secret key itself never encrypts anything directly.
Rotation: put the old key in DISPATCH_OLD_SECRET_KEYS, set the new DISPATCH_SECRET_KEY, and
run `dispatch-engine sender reseal`; values sealed with any listed key still open meanwhile.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from .config import Settings

PREFIX = "sealed:v1:"


class SecretError(ValueError):
    """A sealed value cannot be opened with any configured key."""


def _fernet(secret_key: str) -> Fernet:
    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"dispatch-engine", info=b"transport-secrets"
    ).derive(secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(raw))


class SecretBox:
    def __init__(self, secret_key: str, old_keys: Sequence[str] = ()) -> None:
        if not secret_key:
            raise ValueError("a secret key is needed to seal transport passwords")
        self._box = MultiFernet([_fernet(k) for k in (secret_key, *old_keys)])

    def seal(self, plaintext: str) -> str:
        return PREFIX + self._box.encrypt(plaintext.encode()).decode()

    def open(self, sealed: str) -> str:
        if not sealed.startswith(PREFIX):
            raise SecretError("not a sealed value")
        try:
            return self._box.decrypt(sealed.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretError(
                "a stored transport password cannot be decrypted with DISPATCH_SECRET_KEY "
                "(or DISPATCH_OLD_SECRET_KEYS); was the key changed without rotating?"
            ) from None

    def reseal(self, sealed: str) -> str:
        """Re-encrypt with the current key (after a rotation)."""
        return PREFIX + self._box.rotate(sealed.removeprefix(PREFIX).encode()).decode()


def secret_box(settings: Settings) -> SecretBox:
    return SecretBox(settings.secret_key, settings.old_secret_keys)
