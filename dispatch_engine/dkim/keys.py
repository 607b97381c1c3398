"""DKIM keys: an RSA key pair made here, its private half sealed, its public half published."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import NotFound, ValidationError
from ..models import Sender
from ..secretbox import SecretBox
from ..store.base import sender_from

# RFC 6376 3.3.3: verifiers take 512 to 2048 bits; 1024 is the floor receivers still accept
# (Gmail asks for 2048), 4096 does not fit many DNS control panels.
KEY_BITS = (1024, 2048, 3072, 4096)
# A selector is one or more DNS labels (RFC 6376 3.1).
_SELECTOR = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")
_DOMAIN = re.compile(r"(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+")
TXT_CHUNK = 255  # one DNS character-string holds at most 255 bytes (RFC 1035 3.3)


@dataclass(frozen=True)
class DkimKeyPair:
    selector: str
    domain: str
    private_pem: str  # PKCS#8 PEM: sealed before it is stored
    public_b64: str  # base64 SubjectPublicKeyInfo: the record's p=


def check_selector(selector: str) -> str:
    value = selector.strip().lower()
    if len(value) > 253 or not _SELECTOR.fullmatch(value):
        raise ValidationError("selector", "must be DNS labels: letters, digits and hyphens")
    return value


def check_domain(domain: str) -> str:
    try:
        value = domain.strip().rstrip(".").encode("idna").decode().lower()
    except UnicodeError:
        raise ValidationError("domain", "is not a valid domain name") from None
    if not _DOMAIN.fullmatch(value):
        raise ValidationError("domain", "is not a valid domain name")
    return value


def generate_key(selector: str, domain: str, bits: int = 2048) -> DkimKeyPair:
    if bits not in KEY_BITS:
        raise ValidationError("bits", f"must be one of {', '.join(map(str, KEY_BITS))}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DkimKeyPair(
        check_selector(selector),
        check_domain(domain),
        private_pem,
        base64.b64encode(public_der).decode(),
    )


def record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def record_value(public_b64: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_b64}"


def txt_strings(value: str) -> list[str]:
    """A TXT value as the character-strings of at most 255 bytes that DNS carries."""
    return [value[i : i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)] or [""]


def dns_record(selector: str, domain: str, public_b64: str) -> str:
    """The zone-file line to publish (a 2048-bit key needs two strings: servers join them)."""
    quoted = " ".join(f'"{s}"' for s in txt_strings(record_value(public_b64)))
    return f"{record_name(selector, domain)}. IN TXT {quoted}"


def sender_dns_record(sender: Sender) -> str | None:
    if sender.dkim_selector is None or sender.dkim_domain is None or not sender.dkim_public_key:
        return None
    return dns_record(sender.dkim_selector, sender.dkim_domain, sender.dkim_public_key)


async def sender_by_id(pool: asyncpg.Pool, sender_id: int) -> Sender:
    """Any owner's sender (operator commands), archived ones excluded."""
    row = await pool.fetchrow(
        "SELECT * FROM senders WHERE id = $1 AND archived_at IS NULL", sender_id
    )
    if row is None:
        raise NotFound(f"no sender {sender_id}")
    return sender_from(row)


async def store_key(pool: asyncpg.Pool, box: SecretBox, sender_id: int, pair: DkimKeyPair) -> None:
    """Replace a sender's DKIM key; the worker signs with it from its next batch on."""
    await pool.execute(
        """UPDATE senders SET dkim_selector = $2, dkim_domain = $3, dkim_private_key = $4,
                  dkim_public_key = $5, updated_at = now()
           WHERE id = $1""",
        sender_id,
        pair.selector,
        pair.domain,
        box.seal(pair.private_pem),
        pair.public_b64,
    )


async def reseal_keys(pool: asyncpg.Pool, box: SecretBox) -> int:
    """Re-encrypt every stored DKIM key with the current secret key (after a rotation)."""
    rows = await pool.fetch(
        "SELECT id, dkim_private_key FROM senders WHERE dkim_private_key IS NOT NULL"
    )
    for row in rows:
        await pool.execute(
            "UPDATE senders SET dkim_private_key = $2 WHERE id = $1",
            row["id"],
            box.reseal(row["dkim_private_key"]),
        )
    return len(rows)
