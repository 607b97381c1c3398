"""Sign each rendered email with its sender's DKIM key (RFC 6376), just before a transport.

dkimpy does the parts that must match every verifier: parsing the message, relaxed
canonicalisation, the header and body hashes, folding the DKIM-Signature field. The RSA
operation is OpenSSL's (`cryptography`), with the key parsed once per sender: dkimpy's own
RSA is pure Python, about 6 ms per email for a 2048-bit key against 0.25 ms here
(docs/performance.md).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import Counter
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from ..models import Sender
from ..secretbox import SecretBox, SecretError
from ..transport import PermanentError

# What a receiver and a reader rely on; RFC 8058 3 asks that List-Unsubscribe and
# List-Unsubscribe-Post be signed. Each is listed once more than it appears ("oversigned"):
# a header added after signing (a second From, an unsubscribe link on a copy that had none)
# then breaks the signature instead of riding on it.
SIGNED_HEADERS = (
    "from", "reply-to", "to", "cc", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
)  # fmt: skip
# relaxed/relaxed: survives the re-folding of headers and trailing spaces MTAs introduce.
CANON = b"relaxed/relaxed"
_POLICY = CanonicalizationPolicy.from_c_value(CANON)
_FIELD = b"DKIM-Signature"


@dataclass(frozen=True)
class _Key:
    sealed: str  # what it was opened from: a new key (keygen again) replaces it
    selector: bytes
    domain: bytes
    private: rsa.RSAPrivateKey


def include_headers(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list: each signed header as many times as it appears, plus once."""
    present = Counter(name.strip().lower() for name, _ in headers)
    names: list[bytes] = []
    for name in SIGNED_HEADERS:
        names += [name.encode()] * (present[name.encode()] + 1)
    return names


def signature_field(raw: bytes, key: _Key, now: float | None = None) -> bytes:
    """The `DKIM-Signature: …` field (CRLF-terminated) for the message `raw`."""
    headers, body = dkim.rfc822_parse(raw)
    body_hash = base64.b64encode(hashlib.sha256(_POLICY.canonicalize_body(body)).digest())
    names = include_headers(headers)
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", CANON),
        (b"d", key.domain),
        (b"s", key.selector),
        (b"t", str(int(time.time() if now is None else now)).encode()),
        (b"h", b" : ".join(names)),
        (b"bh", body_hash),
        (b"b", b"0" * 60),  # as dkimpy does: b= folds onto its own line, then is filled
    ]
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_FIELD))
    value = dkim.RE_BTAG.sub(b"\\1", value)  # hashed with an empty b=
    digest = hashlib.sha256()
    dkim.hash_headers(
        digest, _POLICY, _POLICY.canonicalize_headers(headers), names, (_FIELD, b" " + value), {}
    )
    signature = key.private.sign(digest.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    fields[-1] = (b"b", base64.b64encode(signature))
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(_FIELD))
    return _FIELD + b": " + bytes(value)


class DkimSigner:
    """One per worker: the senders' keys, opened and parsed on first use."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        self._keys: dict[int, _Key] = {}

    def sign(self, sender: Sender, raw: bytes) -> bytes:
        """`raw` with a DKIM-Signature on top, or `raw` itself for a sender with no key."""
        if sender.dkim_private_key is None:
            return raw
        key = self._keys.get(sender.id)
        if key is None or key.sealed != sender.dkim_private_key:
            key = self._keys[sender.id] = self._open(sender)
        return signature_field(raw, key) + raw

    def _open(self, sender: Sender) -> _Key:
        sealed = sender.dkim_private_key or ""
        try:
            pem = self.box.open(sealed).encode()
            private = serialization.load_pem_private_key(pem, password=None)
        except (SecretError, ValueError) as exc:  # every email of this sender would fail
            raise PermanentError(f"the sender's DKIM key cannot be used: {exc}") from None
        if not isinstance(private, rsa.RSAPrivateKey):
            raise PermanentError("the sender's DKIM key is not an RSA key")
        return _Key(
            sealed, (sender.dkim_selector or "").encode(), (sender.dkim_domain or "").encode(),
            private,
        )  # fmt: skip
