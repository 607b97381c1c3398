"""Each email's idempotency key and the Message-ID made of it.

The key is made once per email at schedule time and stored with it (the ledger, the
Message-ID, the feedback match all read the stored key, never recompute it). The Message-ID
is its first 40 hex digits, and a DSN in the bounce mailbox (which anyone can mail) is
matched by it (store/feedback.py), so the key holds this process's random salt: else it
could be computed from a campaign id (a sequence), a recipient and a start time an outsider
can guess, and a forged DSN would name another owner's email.
"""

from __future__ import annotations

import hashlib
import secrets

_KEY_SALT = secrets.token_bytes(16)  # in memory only: keys are stored, never recomputed


def message_id_for(idempotency_key: bytes, from_address: str) -> str:
    """Stable per email: a resend carries the same Message-ID, so receivers can drop it."""
    domain = from_address.rpartition("@")[2] or "dispatch-engine.local"
    return f"<{idempotency_key.hex()[:40]}@{domain}>"


def idempotency_key(campaign_id: int, recipient: str, scheduled_at_us: int) -> bytes:
    seed = f"{campaign_id}\x00{recipient}\x00{scheduled_at_us}".encode()
    return hashlib.sha256(_KEY_SALT + seed).digest()
