"""`dispatch-engine sender check-dns`: SPF, DKIM and DMARC of a sender's domain, asked of a
real DNS server (dnsmasq on loopback); exit 0 only when all three are right."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dispatch_engine.config import Settings
from dispatch_engine.dkim import generate_key
from dispatch_engine.dkim.keys import DkimKeyPair, record_value, store_key
from dispatch_engine.secretbox import SecretBox
from dispatch_engine.store import Store

from .support.dns_peer import DnsPeer
from .support.processes import run_cli
from .support.smtp_sink import free_port

PAIR = generate_key("mail", "example.com")
OTHER = generate_key("mail", "example.com")
SPF = "v=spf1 ip4:192.0.2.10 -all"
DMARC = "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"


def zone(
    dkim: DkimKeyPair | None = PAIR, spf: bool = True, dmarc: str | None = DMARC
) -> dict[str, list[str]]:
    records: dict[str, list[str]] = {"example.com": [SPF] if spf else ["google-site=abc"]}
    if dkim is not None:
        records["mail._domainkey.example.com"] = [record_value(dkim.public_b64)]
    if dmarc is not None:
        records["_dmarc.example.com"] = [dmarc]
    return records


async def sender_with_key(store: Store, settings: Settings, pair: DkimKeyPair | None) -> int:
    user = await store.ensure_user("ops@example.com", "Ops")
    sender = await store.ensure_default_sender(user, transport="smtp", hourly_limit=100)
    if pair is not None:
        await store_key(store.pool, SecretBox(settings.secret_key), sender.id, pair)
    return sender.id


async def check(env: dict[str, str], port: int, sender_id: int) -> tuple[int, list[str]]:
    args = ["sender", "check-dns", "--nameserver", "127.0.0.1", "--dns-port", str(port),
            "--timeout", "2", str(sender_id)]  # fmt: skip
    done = await asyncio.to_thread(run_cli, args, env)
    return done.returncode, done.stdout.splitlines()


def line_of(lines: list[str], name: str) -> str:
    (line,) = [line for line in lines if line.split()[1:2] == [name]]
    return line


async def test_all_three_published_passes(
    store: Store, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    sender_id = await sender_with_key(store, settings, PAIR)
    with DnsPeer(tmp_path / "dns", zone()) as dns:
        code, lines = await check(env, dns.port, sender_id)
    assert code == 0, lines
    assert len(lines) == 3 and all(line.startswith("ok ") for line in lines), lines
    assert SPF in line_of(lines, "SPF")
    assert "the published key matches" in line_of(lines, "DKIM")
    dmarc = line_of(lines, "DMARC")
    assert "p=reject" in dmarc and "DKIM d=example.com aligns with From example.com" in dmarc


@pytest.mark.parametrize(
    ("records", "failing", "says"),
    [
        (zone(dmarc=None), "DMARC", '_dmarc.example.com. IN TXT "v=DMARC1; p=none'),
        (zone(dkim=OTHER), "DKIM", "the published key is not this sender's; publish mail."),
        (zone(dkim=None), "DKIM", "mail._domainkey.example.com: no DKIM record; publish"),
        (zone(spf=False), "SPF", 'example.com: no SPF record; publish example.com. IN TXT "v=spf1'),
        (zone(dmarc="v=DMARC1; p=sometimes"), "DMARC", "p=sometimes is not a policy"),
    ],
)
async def test_a_missing_or_wrong_record_fails_naming_it(
    store: Store,
    settings: Settings,
    env: dict[str, str],
    tmp_path: Path,
    records: dict[str, list[str]],
    failing: str,
    says: str,
) -> None:
    sender_id = await sender_with_key(store, settings, PAIR)
    with DnsPeer(tmp_path / "dns", records) as dns:
        code, lines = await check(env, dns.port, sender_id)
    assert code == 1, lines
    failed = line_of(lines, failing)
    assert failed.startswith("FAIL") and says in failed, failed
    assert [line for line in lines if line.startswith("FAIL")] == [failed]  # only that one
    if failing == "DKIM":
        assert PAIR.public_b64[:60] in failed  # says which key to publish


async def test_a_sender_without_a_key_and_a_silent_nameserver_fail(
    store: Store, settings: Settings, env: dict[str, str]
) -> None:
    sender_id = await sender_with_key(store, settings, None)
    code, lines = await check(env, free_port(), sender_id)  # nobody listens there
    assert code == 1
    assert "cannot look up example.com" in line_of(lines, "SPF")
    assert f"run `dispatch-engine sender dkim-keygen {sender_id}`" in line_of(lines, "DKIM")
    assert line_of(lines, "DMARC").startswith("FAIL")


async def test_a_dkim_domain_that_does_not_align_with_from_fails_dmarc(
    store: Store, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """DMARC passes on DKIM only when d= is the From domain or shares its organizational
    domain: a key of the provider's own domain signs, but does not align."""
    elsewhere = generate_key("mail", "provider.example.net")
    sender_id = await sender_with_key(store, settings, elsewhere)
    records = zone(dkim=None) | {
        "mail._domainkey.provider.example.net": [record_value(elsewhere.public_b64)]
    }
    with DnsPeer(tmp_path / "dns", records) as dns:
        code, lines = await check(env, dns.port, sender_id)
    assert code == 1
    assert line_of(lines, "DKIM").startswith("ok ")
    dmarc = line_of(lines, "DMARC")
    assert dmarc.startswith("FAIL") and "d=provider.example.net is not aligned" in dmarc
