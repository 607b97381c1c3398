"""Who signs in: the login provider's client (Google or any OpenID Connect issuer) and
DISPATCH_ALLOWED_EMAILS, parsed and checked for `config.Settings`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from .setting import SettingsError

if TYPE_CHECKING:
    from .config import Settings


def is_loopback_host(host: str) -> bool:
    """`localhost`, or an address of 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


GOOGLE_ISSUER = "https://accounts.google.com"


def _mailbox(address: str) -> tuple[str, str]:
    """(local part, domain) compared case-insensitively, the domain in its ASCII (A-label) form."""
    checked = validate_email(address, check_deliverability=False)
    return checked.local_part.lower(), checked.ascii_domain.lower()


@dataclass(frozen=True)
class AllowedEmails:
    """DISPATCH_ALLOWED_EMAILS: who may sign in. Addresses, `@domain` entries, or `*` (anyone)."""

    addresses: frozenset[tuple[str, str]] = frozenset()
    domains: frozenset[str] = frozenset()
    anyone: bool = False

    def permits(self, email: str) -> bool:
        if self.anyone:
            return True
        try:
            local, domain = _mailbox(email)
        except EmailNotValidError:
            return False
        return domain in self.domains or (local, domain) in self.addresses


def parse_allowed_emails(name: str, raw: str) -> AllowedEmails:
    addresses: set[tuple[str, str]] = set()
    domains: set[str] = set()
    entries = [part.strip() for part in raw.split(",") if part.strip()]
    for entry in entries:
        try:
            if entry.startswith("@"):
                domains.add(_mailbox("a" + entry)[1])
            elif entry != "*":
                addresses.add(_mailbox(entry))
        except EmailNotValidError as exc:
            raise SettingsError(
                f"{name}: {entry!r} is not an email address nor an @domain ({exc})"
            ) from None
    if "*" in entries and len(entries) > 1:
        raise SettingsError(f"{name}: '*' (anyone) cannot be combined with other entries")
    return AllowedEmails(frozenset(addresses), frozenset(domains), anyone="*" in entries)


@dataclass(frozen=True)
class OidcClient:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)


def parse_issuer(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    loopback = is_loopback_host(parts.hostname or "")
    secure = parts.scheme == "https" or (parts.scheme == "http" and loopback)
    if not parts.hostname or not secure:
        raise SettingsError(
            f"{name} must be an https:// URL (http:// only on loopback), got {raw!r}"
        )
    if parts.query or parts.fragment:
        raise SettingsError(f"{name} must have no query or fragment, got {raw!r}")
    return raw.rstrip("/")


def check_login(settings: Settings) -> None:
    """Login: GOOGLE_CLIENT_ID + _SECRET, or OIDC_ISSUER + OIDC_CLIENT_ID + _SECRET, or none."""
    given = {
        "GOOGLE_CLIENT_ID": settings.google_client_id,
        "GOOGLE_CLIENT_SECRET": settings.google_client_secret,
        "OIDC_ISSUER": settings.oidc_issuer,
        "OIDC_CLIENT_ID": settings.oidc_client_id,
        "OIDC_CLIENT_SECRET": settings.oidc_client_secret,
    }
    groups = (list(given)[:2], list(given)[2:])
    for group in groups:
        present = [name for name in group if given[name]]
        if present and len(present) < len(group):
            missing = ", ".join(name for name in group if not given[name])
            raise SettingsError(f"{missing} must be set too (with {', '.join(present)})")
    if settings.google_client_id and settings.oidc_issuer:
        raise SettingsError("set GOOGLE_CLIENT_ID/_SECRET or OIDC_ISSUER/_CLIENT_*, not both")
    if settings.dev_login and (settings.oidc_issuer or settings.google_client_id):
        raise SettingsError("DISPATCH_DEV_LOGIN cannot be on with a login provider (OIDC_*)")
