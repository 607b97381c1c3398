"""The one form of an address that suppressions are keyed and compared on."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import idna

MAX_ADDRESS_LENGTH = 320  # RFC 3696's 64 + 1 + 255: longer is no address


class AddressError(ValueError):
    """Not an address that can be suppressed (no @, an empty part, a domain IDNA refuses)."""


@lru_cache(maxsize=4096)
def normalize_address(address: str) -> str:
    """`local@domain`, lower case, the domain in its IDNA ASCII (punycode) form.

    The domain is case-insensitive by RFC 5321 and its Unicode and punycode spellings are one
    domain (UTS 46 mapping). The local part is lowered too, although RFC 5321 lets a server
    treat it case-sensitively: no mailbox provider does, and a missed opt-out is the worse
    mistake. `Ünïcode` local parts are NFC-lowered, not encoded."""
    value = address.strip()
    if len(value) > MAX_ADDRESS_LENGTH:
        raise AddressError(f"an address is at most {MAX_ADDRESS_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):  # NUL, CR, LF…: never an address
        raise AddressError(f"{value[:80]!r} holds a control character")
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise AddressError(f"{value[:80]!r} is not an email address")
    domain = domain.rstrip(".")
    try:
        ascii_domain = domain if domain.isascii() else idna.encode(domain, uts46=True).decode()
    except idna.IDNAError as exc:
        raise AddressError(f"{domain[:80]!r} is not a valid domain: {exc}") from None
    return f"{unicodedata.normalize('NFC', local).lower()}@{ascii_domain.lower()}"
