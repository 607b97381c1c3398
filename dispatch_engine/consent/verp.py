"""VERP return paths: the envelope sender `bounce+<token>@<bounce domain>` names its dispatch.

A bounce goes to the envelope sender (MAIL FROM), not to the From: header, and a DSN that
says nothing useful (no Message-ID, a mangled report) still arrives at that address: its
local part carries the signed per-dispatch token of `tokens.py` (purpose "bounce"), lower
case base32, so an MTA that lowers local parts does not break it. The From: header never
changes. The token depends only on the dispatch id and the key, so a resend of the same
email keeps the same return path.

The bounce domain is the operator's (its MX delivers to the bounce mailbox the IMAP reader
reads), so it is a setting, not a sender field a user could point elsewhere:
`DISPATCH_BOUNCE_DOMAIN` for every sender, and `DISPATCH_BOUNCE_DOMAINS` per From: domain
(`example.com=bounces.example.com,…`) so the return path aligns with the From: domain for
DMARC's SPF alignment. Neither set: the return path stays the sender's From address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..config import Settings
from ..setting import SettingsError, setting, settings_of
from .tokens import TOKEN_LENGTH, DispatchTokens, Purpose

LOCAL_PREFIX = "bounce+"
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
_RETURN_PATH = re.compile(
    rf"(?i)^bounce\+([a-z2-7]{{{TOKEN_LENGTH}}})@([^@\s<>]+)$"  # base32 alphabet, no padding
)


def _domain(name: str, raw: str) -> str:
    value = raw.strip().lower().rstrip(".")
    if not _DOMAIN.match(value):
        raise SettingsError(f"{name} must be a domain such as bounces.example.com, got {raw!r}")
    return value


def _domain_pairs(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        sender_domain, eq, bounce_domain = pair.partition("=")
        if not eq:
            raise SettingsError(f"{name} must be from-domain=bounce-domain pairs, got {pair!r}")
        out.append((_domain(name, sender_domain), _domain(name, bounce_domain)))
    return tuple(out)


@dataclass(frozen=True)
class VerpSettings:
    bounce_domain: str | None = setting(
        "DISPATCH_BOUNCE_DOMAIN",
        None,
        _domain,
        "envelope senders become bounce+<token>@this domain (unset: the sender's address)",
    )
    bounce_domains: tuple[tuple[str, str], ...] = setting(
        "DISPATCH_BOUNCE_DOMAINS",
        (),
        _domain_pairs,
        "per From: domain bounce domains, example.com=bounces.example.com,… (over the above)",
    )

    def domain_for(self, from_address: str) -> str | None:
        sender_domain = from_address.rpartition("@")[2].strip().lower().rstrip(".")
        return dict(self.bounce_domains).get(sender_domain, self.bounce_domain)


class ReturnPaths:
    """The envelope sender of each email: VERP where a bounce domain applies."""

    def __init__(self, settings: VerpSettings, tokens: DispatchTokens) -> None:
        self.settings = settings
        self.tokens = tokens

    @classmethod
    def of(cls, settings: Settings) -> ReturnPaths:
        """From the process's settings: DISPATCH_SECRET_KEY signs, the old keys still read."""
        tokens = DispatchTokens.for_settings(settings, Purpose.BOUNCE)
        return cls(settings_of(VerpSettings, settings), tokens)

    def for_dispatch(self, dispatch_id: int, from_address: str) -> str:
        domain = self.settings.domain_for(from_address)
        if domain is None:
            return from_address
        return make_return_path(self.tokens, dispatch_id, domain)

    def dispatch_in(self, addresses: Iterable[str]) -> int | None:
        """The dispatch a genuine VERP address among `addresses` names (a report's)."""
        return dispatch_of(self.tokens, addresses)


def make_return_path(tokens: DispatchTokens, dispatch_id: int, domain: str) -> str:
    return f"{LOCAL_PREFIX}{tokens.make(dispatch_id)}@{domain}"


def token_of(address: str) -> str | None:
    """The token in a `bounce+<token>@domain` address (any case), else None."""
    found = _RETURN_PATH.match(address.strip().strip("<>").strip())
    return found.group(1).lower() if found else None


def dispatch_of(tokens: DispatchTokens, addresses: Iterable[str]) -> int | None:
    """The dispatch the first genuine VERP address among `addresses` names (forgeries and
    other addresses are passed over)."""
    for address in addresses:
        token = token_of(address)
        if token is not None and (dispatch_id := tokens.read(token)) is not None:
            return dispatch_id
    return None
