"""`dispatch-engine sender dkim-keygen`: the key is made, sealed at rest, never shown by the
API, and the record it prints is what a verifier needs; an email the worker sends through
the SMTP transport then verifies against that record served by a real DNS server."""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import replace
from pathlib import Path

import dkim
import orjson
from cryptography.hazmat.primitives import serialization

from dispatch_engine.config import Settings
from dispatch_engine.secretbox import SecretBox
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.dns_peer import DnsPeer, dkim_dnsfunc
from .support.helpers import auth, new_token, wait_for
from .support.processes import run_cli
from .support.smtp_peer import SmtpPeer


def parse_record(printed: str) -> tuple[str, str]:
    """(name, value) of the `name. IN TXT "…" "…"` line keygen prints."""
    line = next(line for line in printed.splitlines() if " IN TXT " in line)
    name = line.split(" ", 1)[0].rstrip(".")
    return name, "".join(re.findall(r'"([^"]*)"', line))


async def default_sender_id(store: Store, email: str = "ada@example.com") -> int:
    user = await store.ensure_user(email, "Ada")
    return (await store.ensure_default_sender(user, transport="smtp", hourly_limit=1000)).id


async def test_keygen_seals_the_key_and_the_api_shows_only_the_record(
    make_client: Start, store: Store, settings: Settings, env: dict[str, str]
) -> None:
    token = await new_token(store)
    sender_id = await default_sender_id(store)
    made = await asyncio.to_thread(
        run_cli, ["sender", "dkim-keygen", "--selector", "mail2026", str(sender_id)], env
    )
    assert made.returncode == 0, made.stderr
    name, value = parse_record(made.stdout)
    assert name == "mail2026._domainkey.example.com"
    assert value.startswith("v=DKIM1; k=rsa; p=")
    assert max(len(s) for s in re.findall(r'"([^"]*)"', made.stdout)) <= 255  # DNS strings

    sealed = await store.pool.fetchval(
        "SELECT dkim_private_key FROM senders WHERE id = $1", sender_id
    )
    pem = SecretBox(settings.secret_key).open(sealed)
    pem_body = "".join(pem.strip().splitlines()[1:-1])
    assert sealed.startswith("sealed:v1:") and "PRIVATE KEY" not in sealed
    assert pem_body[:40] not in sealed and pem_body[-40:] not in sealed
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert value.endswith("p=" + base64.b64encode(public).decode())  # the printed key is its

    client = await make_client()
    for path in ("/api/senders", f"/api/senders/{sender_id}"):
        response = await client.get(path, headers=auth(token))
        text = await response.text()
        assert response.status == 200
        assert "sealed:" not in text and "PRIVATE" not in text and pem_body[:40] not in text
    shown = orjson.loads(text)
    shown = shown.get("sender", shown)
    assert shown["dkim"]["selector"] == "mail2026" and shown["dkim"]["domain"] == "example.com"
    assert shown["dkim"]["dns_record"] == next(
        line for line in made.stdout.splitlines() if " IN TXT " in line
    )


async def test_keygen_refuses_a_bad_selector_and_an_unknown_sender(
    store: Store, env: dict[str, str]
) -> None:
    sender_id = await default_sender_id(store)
    bad = await asyncio.to_thread(
        run_cli, ["sender", "dkim-keygen", "--selector", "no spaces;", str(sender_id)], env
    )
    assert bad.returncode != 0 and "selector" in bad.stderr
    unknown = await asyncio.to_thread(run_cli, ["sender", "dkim-keygen", "999999"], env)
    assert unknown.returncode != 0 and "no sender 999999" in unknown.stderr
    assert await store.pool.fetchval("SELECT count(dkim_selector) FROM senders") == 0


async def test_reseal_reencrypts_the_dkim_key_with_the_new_secret(
    store: Store, settings: Settings, env: dict[str, str]
) -> None:
    sender_id = await default_sender_id(store)
    made = await asyncio.to_thread(run_cli, ["sender", "dkim-keygen", str(sender_id)], env)
    assert made.returncode == 0, made.stderr
    query = "SELECT dkim_private_key FROM senders WHERE id = $1"
    before = await store.pool.fetchval(query, sender_id)
    new_secret = "a-brand-new-secret-key-987654"
    rotated = env | {"DISPATCH_SECRET_KEY": new_secret, "DISPATCH_OLD_SECRET_KEYS": env[
        "DISPATCH_SECRET_KEY"]}  # fmt: skip
    resealed = await asyncio.to_thread(run_cli, ["sender", "reseal"], rotated)
    assert resealed.returncode == 0 and "Resealed 1 DKIM key(s)" in resealed.stdout
    after = await store.pool.fetchval(query, sender_id)
    assert after != before
    assert SecretBox(new_secret).open(after) == SecretBox(settings.secret_key).open(before)


async def test_the_worker_signs_what_it_sends_and_the_published_record_verifies_it(
    make_client: Start, store: Store, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """End to end: keygen, the printed record served by dnsmasq, a campaign sent by the
    worker into nodemailer's smtp-server (pipelining); dkimpy verifies what arrived."""
    token = await new_token(store)
    sender_id = await default_sender_id(store)
    made = await asyncio.to_thread(run_cli, ["sender", "dkim-keygen", str(sender_id)], env)
    assert made.returncode == 0, made.stderr
    name, value = parse_record(made.stdout)
    with SmtpPeer() as peer, DnsPeer(tmp_path / "dns", {name: [value]}) as dns:
        app_settings = replace(settings, transport="smtp").with_environ(
            SMTP_HOST="127.0.0.1", SMTP_PORT=str(peer.port), SMTP_TLS="none"
        )
        client = await make_client(app_settings)
        payload = {"subject": "Hello {{ email }}", "body": "Dear {{ email }},\n.\nbye",
                   "recipients": ["r1@example.org", "r2@example.org"]}  # fmt: skip
        response = await client.post("/api/emails/schedule", json=payload, headers=auth(token))
        assert response.status == 201, await response.text()

        async def arrived() -> bool:
            return len(peer.messages()) == 2

        await wait_for(arrived)
        received = [base64.b64decode(m["raw"]) for m in peer.messages()]
        for raw in received:
            assert dkim.verify(raw, dnsfunc=dkim_dnsfunc(dns)), raw[:300]
            assert not dkim.verify(raw.replace(b"bye", b"BYE"), dnsfunc=dkim_dnsfunc(dns))


async def test_keygen_keeps_a_selectors_key_unless_told_to_replace_it(
    store: Store, env: dict[str, str]
) -> None:
    """A new key under the selector receivers already know would fail the mail in flight:
    rotation is a new selector; replacing takes --replace."""
    sender_id = await default_sender_id(store)
    query = "SELECT dkim_selector, dkim_public_key FROM senders WHERE id = $1"
    first = await asyncio.to_thread(run_cli, ["sender", "dkim-keygen", str(sender_id)], env)
    assert first.returncode == 0, first.stderr
    kept = await store.pool.fetchrow(query, sender_id)
    assert kept is not None
    again = await asyncio.to_thread(run_cli, ["sender", "dkim-keygen", str(sender_id)], env)
    assert again.returncode != 0 and "already signs with selector 'dispatch'" in again.stderr
    assert await store.pool.fetchrow(query, sender_id) == kept
    rotated = await asyncio.to_thread(
        run_cli, ["sender", "dkim-keygen", "--selector", "dispatch2", str(sender_id)], env
    )
    assert rotated.returncode == 0 and "dispatch2._domainkey.example.com." in rotated.stdout
    replaced = await asyncio.to_thread(
        run_cli, ["sender", "dkim-keygen", "--selector", "dispatch2", "--replace", str(sender_id)],
        env,
    )  # fmt: skip
    assert replaced.returncode == 0
    now = await store.pool.fetchrow(query, sender_id)
    assert now is not None
    assert now["dkim_selector"] == "dispatch2" and now["dkim_public_key"] != kept["dkim_public_key"]
