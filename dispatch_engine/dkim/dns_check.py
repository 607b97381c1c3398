"""`sender check-dns`: are SPF, DKIM and DMARC published for a sender's domain?

Each check is one line: what was found, or what to publish. The resolver can be pointed at
one nameserver (`--nameserver`, `--dns-port`): the system's otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from ..errors import ValidationError
from ..models import Sender
from .keys import dns_record, record_name

_SPF = re.compile(r"v=spf1(\s|$)", re.I)
_TAG = re.compile(r"\s*([a-zA-Z0-9_]+)\s*=\s*([^;]*?)\s*(?:;|$)")


@dataclass(frozen=True)
class Check:
    name: str  # SPF, DKIM or DMARC
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:<5} {self.detail}"


class Lookup:
    """TXT records of a name: [] when there are none, DnsError when nobody answers."""

    def __init__(self, nameserver: str | None, port: int = 53, timeout: float = 5.0) -> None:
        if nameserver:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            try:
                self.resolver.nameservers = [nameserver]
            except ValueError:
                raise ValidationError("nameserver", "must be an IP address") from None
            self.resolver.port = port
        else:
            self.resolver = dns.asyncresolver.Resolver()
        self.resolver.lifetime = timeout

    async def txt(self, name: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DnsError(f"cannot look up {name}: {exc}") from None
        # one record may be split in several strings of 255 bytes: they join with nothing
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


class DnsError(Exception):
    pass


def tags(record: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in _TAG.finditer(record)}


def _domain(sender: Sender) -> str:
    return sender.from_address.rpartition("@")[2].encode("idna").decode().lower()


async def check_spf(lookup: Lookup, domain: str) -> Check:
    spf = [r for r in await lookup.txt(domain) if _SPF.match(r)]
    if not spf:
        return Check("SPF", False, f'{domain}: no SPF record; publish {domain}. IN TXT '
                     '"v=spf1 include:<your provider\'s SPF domain> ~all"')  # fmt: skip
    if len(spf) > 1:  # RFC 7208 4.5: more than one is a permanent error
        return Check("SPF", False, f"{domain}: {len(spf)} SPF records, keep exactly one")
    return Check("SPF", True, f"{domain}: {spf[0]}")


async def check_dkim(lookup: Lookup, sender: Sender) -> Check:
    if sender.dkim_selector is None or sender.dkim_domain is None or not sender.dkim_public_key:
        return Check("DKIM", False, f"sender {sender.id} has no DKIM key; run "
                     f"`dispatch-engine sender dkim-keygen {sender.id}`")  # fmt: skip
    name = record_name(sender.dkim_selector, sender.dkim_domain)
    publish = dns_record(sender.dkim_selector, sender.dkim_domain, sender.dkim_public_key)
    records = [tags(r) for r in await lookup.txt(name)]
    keys = [t.get("p", "").replace(" ", "") for t in records if "p" in t]
    if not keys:
        return Check("DKIM", False, f"{name}: no DKIM record; publish {publish}")
    if sender.dkim_public_key not in keys:
        return Check("DKIM", False, f"{name}: the published key is not this sender's; "
                     f"publish {publish}")  # fmt: skip
    return Check("DKIM", True, f"{name}: the published key matches")


async def _dmarc_record(lookup: Lookup, domain: str) -> tuple[str, dict[str, str]] | None:
    """The DMARC record of `domain`, or of a parent (RFC 7489 6.6.3: the organizational
    domain's; without the public suffix list each parent up to two labels is tried)."""
    labels = domain.split(".")
    for start in range(0, max(1, len(labels) - 1)):
        name = "_dmarc." + ".".join(labels[start:])
        for record in await lookup.txt(name):
            if record.replace(" ", "").lower().startswith("v=dmarc1"):
                return name, tags(record)
    return None


def _aligned(dkim_domain: str, from_domain: str, strict: bool) -> bool:
    if strict:
        return dkim_domain == from_domain
    return (
        from_domain == dkim_domain
        or from_domain.endswith("." + dkim_domain)
        or (dkim_domain.endswith("." + from_domain))
    )


async def check_dmarc(lookup: Lookup, sender: Sender, domain: str) -> Check:
    found = await _dmarc_record(lookup, domain)
    if found is None:
        return Check("DMARC", False, f"_dmarc.{domain}: no DMARC record; publish "
                     f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@{domain}" '
                     "(then p=quarantine or p=reject once reports look right)")  # fmt: skip
    name, record = found
    policy = record.get("p", "")
    if policy not in ("none", "quarantine", "reject"):
        return Check("DMARC", False, f"{name}: p={policy or '(missing)'} is not a policy")
    strict = record.get("adkim", "r").lower() == "s"
    note = f"{name}: p={policy}, adkim={'s' if strict else 'r'}"
    if sender.dkim_domain is not None:
        if not _aligned(sender.dkim_domain, domain, strict):
            return Check("DMARC", False, f"{note}; DKIM d={sender.dkim_domain} is not aligned "
                         f"with the From domain {domain}")  # fmt: skip
        note += f"; DKIM d={sender.dkim_domain} aligns with From {domain}"
    return Check("DMARC", True, note)


async def check_sender(lookup: Lookup, sender: Sender) -> list[Check]:
    domain = _domain(sender)
    checks: list[Check] = []
    for name, check in (
        ("SPF", check_spf(lookup, domain)),
        ("DKIM", check_dkim(lookup, sender)),
        ("DMARC", check_dmarc(lookup, sender, domain)),
    ):
        try:
            checks.append(await check)
        except DnsError as exc:  # this check is unknown, not passed
            checks.append(Check(name, False, str(exc)))
    return checks
