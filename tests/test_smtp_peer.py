"""Sending through nodemailer's `smtp-server` (a real, widely used SMTP server) on loopback:
STARTTLS with a CA the test makes, required AUTH, PIPELINING, SMTPUTF8 on and off, and
faults at RCPT or after DATA. Every email goes the real worker path (the app's own workers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.config import Settings
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import Store
from dispatch_engine.worker.sender_health import LOGIN_FAILURES_TO_PARK

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for
from .support.plugin_dirs import events, plugin_dir
from .support.postfix import RelayPostfix
from .support.processes import run_cli
from .support.smtp_peer import PrivateCa, SmtpPeer
from .support.smtp_sink import free_port
from .support.web_session import dev_login

PASSWORD = "correct-horse-battery-staple"

RECORD_PARKED = """
@hookimpl
def sender_parked(sender_id, reason, settings):
    record("sender_parked", sender_id=sender_id, reason=reason)
"""


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    return PrivateCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls_peer(ca: PrivateCa) -> Iterator[SmtpPeer]:
    with SmtpPeer(ca=ca, users={"ops": PASSWORD}) as peer:
        yield peer


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def _sender(
    client: AppClient, headers: dict[str, str], port: int, **settings: Any
) -> dict[str, Any]:
    body = {
        "from_address": "ops@example.com",
        "transport": "smtp",
        "settings": {"host": "127.0.0.1", "port": port, "tls": "starttls", **settings},
    }
    return dict(await _json(await client.post("/api/senders", json=body, headers=headers), 201))


async def _schedule(
    client: AppClient, headers: dict[str, str], sender: int, recipients: list[str]
) -> int:
    payload = {"subject": "Hi {{ email }}", "body": "Hello", "sender": sender,
               "recipients": recipients}  # fmt: skip
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    return int((await _json(response, 201))["campaign"]["id"])


async def _statuses(store: Store) -> dict[str, int]:
    rows = await store.pool.fetch("SELECT status, count(*) FROM dispatches GROUP BY status")
    return {r["status"]: r["count"] for r in rows}


async def test_hook_sender_parked(
    make_client: Start, settings: Settings, store: Store, tls_peer: SmtpPeer, ca: PrivateCa,
    tmp_path: Path, redis: Redis, queue: RedisQueue,
) -> None:  # fmt: skip
    """A wrong password: a 50-email campaign costs a few logins (not one or two per email),
    the sender is parked with the server's reason, the hook fires once; after the password is
    fixed every email goes exactly once, with its attempts untouched by the refusals."""
    folder = plugin_dir(tmp_path, recorder=RECORD_PARKED)
    configured = replace(settings, retry_base_ms=50, plugins_dir=folder).with_environ(
        SMTP_CA_FILE=str(ca.ca_file)
    )
    client = await make_client(configured)
    await make_client(configured, roles=frozenset({"worker"}))  # a second worker pool
    headers = auth(await new_token(store, DEV_EMAIL))  # the dashboard's dev user too
    sender = await _sender(client, headers, tls_peer.port, username="ops", password="wrong")
    recipients = [f"r{i}@example.com" for i in range(50)]
    await _schedule(client, headers, sender["id"], recipients)

    async def parked() -> bool:
        got = await _json(await client.get(f"/api/senders/{sender['id']}", headers=headers))
        return got["parked"] is not None

    await wait_for(parked)
    await wait_for(lambda: _no_email_in_flight(store, queue))
    logins = tls_peer.logins()
    print(f"[wrong password] 50 emails, 2 worker pools: {len(logins)} login attempts")
    # At most LOGIN_FAILURES_TO_PARK refusals per worker pool, however many emails wait.
    assert 1 <= len(logins) <= 2 * LOGIN_FAILURES_TO_PARK, logins
    assert {e["method"] for e in logins} == {"PLAIN"}, "no LOGIN after PLAIN was refused"
    assert not any(e["ok"] for e in logins) and tls_peer.messages() == []

    got = await _json(await client.get(f"/api/senders/{sender['id']}", headers=headers))
    assert "535 5.7.8 Authentication credentials invalid" in got["parked"]["reason"]
    stats = await _json(await client.get("/api/stats", headers=headers))
    (row,) = [s for s in stats["senders"] if s["id"] == sender["id"]]
    assert "535" in row["parked_reason"] and row["parked_until"] is None
    assert await _statuses(store) == {"scheduled": 50}, "parked emails wait, never fail"
    waiting = await store.pool.fetch("SELECT attempts, last_error FROM dispatches")
    assert all(r["attempts"] == 0 for r in waiting), "a refused login is not an attempt"
    assert all("waiting for the sender's account" in r["last_error"] for r in waiting)
    (event,) = events(folder, "sender_parked")
    assert event == {"hook": "sender_parked", "sender_id": sender["id"],
                     "reason": got["parked"]["reason"]}  # fmt: skip
    await dev_login(client)
    page = await client.get(f"/campaigns/{await store.pool.fetchval('SELECT id FROM campaigns')}")
    assert "parked</span> the server refused the login of &#39;ops&#39;: 535" in await page.text()
    campaign_id = await store.pool.fetchval("SELECT id FROM campaigns")
    detail = await _json(await client.get(f"/api/campaigns/{campaign_id}", headers=headers))
    assert {w["reason"]: w["count"] for w in detail["waiting"]} == {"auth_failure": 50}

    # Redis loses everything (FLUSHALL): the sweeper re-queues from PostgreSQL, and the first
    # worker to claim an email of the parked sender parks it again without a login.
    login_count = len(tls_peer.logins())
    await redis.flushdb()

    async def parked_again() -> bool:
        state = await queue.sender_state(sender["id"])
        return bool(state["parked_until_ms"]) and await _no_email_in_flight(store, queue)

    await wait_for(parked_again)
    assert len(tls_peer.logins()) == login_count and await _statuses(store) == {"scheduled": 50}

    # Fixing the password (a sender update) unparks it: all 50 go, each exactly once.
    fixed = await client.patch(
        f"/api/senders/{sender['id']}", json={"settings": {"password": PASSWORD}}, headers=headers
    )
    assert (await _json(fixed))["parked"] is None

    async def all_sent() -> bool:
        return await _statuses(store) == {"sent": 50}

    await wait_for(all_sent)
    received = tls_peer.message_ids()
    assert len(received) == 50 and set(received.values()) == {1}
    assert sorted(r for m in tls_peer.messages() for r in m["rcpt_to"]) == sorted(recipients)
    assert all(m["tls"] and m["user"] == "ops" for m in tls_peer.messages())
    attempts = await store.pool.fetch("SELECT attempts, last_error FROM dispatches")
    assert all(r["attempts"] == 1 and r["last_error"] is None for r in attempts)


async def _no_email_in_flight(store: Store, queue: RedisQueue) -> bool:
    sending = await store.pool.fetchval("SELECT count(*) FROM dispatches WHERE status = 'sending'")
    return int(sending) == 0 and await queue.leased_count() == 0


@pytest.mark.parametrize("how", ["api", "cli"])
async def test_a_resumed_sender_tries_its_account_again(
    make_client: Start, settings: Settings, store: Store, tls_peer: SmtpPeer, ca: PrivateCa,
    env: dict[str, str], how: str,
) -> None:  # fmt: skip
    """The password was fixed on the server's side: `resume` (API, or `dispatch-engine sender
    resume`) sends the waiting emails without any settings change."""
    configured = replace(settings, retry_base_ms=50).with_environ(SMTP_CA_FILE=str(ca.ca_file))
    client = await make_client(configured)
    headers = auth(await new_token(store))
    sender = await _sender(client, headers, tls_peer.port, username="ops", password="s3cret-new")
    not_parked = await client.post(f"/api/senders/{sender['id']}/resume", headers=headers)
    assert (await _json(not_parked, 409))["error"]["code"] == "sender_not_parked"
    await _schedule(client, headers, sender["id"], ["a@example.com", "b@example.com"])

    async def parked() -> bool:
        sql = "SELECT parked_reason FROM senders WHERE id = $1"
        return await store.pool.fetchval(sql, sender["id"]) is not None

    await wait_for(parked)
    # The server's side is fixed: the account now has the password the sender holds.
    tls_peer.set_users({"ops": "s3cret-new"})
    if how == "api":
        resumed = await client.post(f"/api/senders/{sender['id']}/resume", headers=headers)
        assert (await _json(resumed))["parked"] is None
    else:
        args = ["sender", "resume", "--email", "ada@example.com", str(sender["id"])]
        done = await asyncio.to_thread(run_cli, args, env)
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["parked"] is None

    async def both_sent() -> bool:
        return await _statuses(store) == {"sent": 2}

    await wait_for(both_sent)
    assert sorted(tls_peer.message_ids().values()) == [1, 1]


async def test_starttls_with_the_test_ca_works_and_a_wrong_ca_fails_clearly(
    make_client: Start, settings: Settings, store: Store, tls_peer: SmtpPeer, ca: PrivateCa,
    tmp_path: Path,
) -> None:  # fmt: skip
    client = await make_client(settings.with_environ(SMTP_CA_FILE=str(ca.ca_file)))
    headers = auth(await new_token(store))
    sender = await _sender(client, headers, tls_peer.port, username="ops", password=PASSWORD)
    check = await _json(await client.post(f"/api/senders/{sender['id']}/test", headers=headers))
    assert check == {"ok": True, "message": f"connected to 127.0.0.1:{tls_peer.port} "
                     "(STARTTLS), logged in as ops"}  # fmt: skip
    await _schedule(client, headers, sender["id"], ["one@example.com", "two@example.com"])

    async def sent() -> bool:
        return await _statuses(store) == {"sent": 2}

    await wait_for(sent)
    assert all(m["tls"] and m["user"] == "ops" for m in tls_peer.messages())

    logins = len(tls_peer.logins())
    other = PrivateCa(tmp_path / "other", name="Some other CA")
    wrong = await make_client(
        settings.with_environ(SMTP_CA_FILE=str(other.ca_file)), frozenset({"api"})
    )
    check = await _json(await wrong.post(f"/api/senders/{sender['id']}/test", headers=headers))
    assert check["ok"] is False
    assert check["error"] == "tls_error", check  # classified: never the server's own words
    assert len(tls_peer.logins()) == logins, "no login is tried over an untrusted connection"


async def test_a_4xx_or_5xx_to_pipelined_data_is_retried_or_failed_never_sent(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """The server announces PIPELINING and answers the final dot of some messages with 451 or
    550: those are retried (and go once) or failed, never counted as sent."""
    with SmtpPeer() as peer:
        peer.set_faults(data={"late@example.com": {"code": 451, "times": 2},
                              "spam@example.com": {"code": 554, "message": "5.7.1 spam",
                                                   "times": -1}})  # fmt: skip
        client = await make_client(replace(settings, retry_base_ms=50))
        headers = auth(await new_token(store))
        sender = await _sender(client, headers, peer.port, tls="none")
        recipients = [f"ok{i}@example.com" for i in range(8)]
        await _schedule(
            client, headers, sender["id"], [*recipients, "late@example.com", "spam@example.com"]
        )

        async def done() -> bool:
            return await _statuses(store) == {"sent": 9, "failed": 1}

        await wait_for(done)
        refused = peer.of("refused")
        assert sorted(r["rcpt"][0] for r in refused) == [
            "late@example.com", "late@example.com", "spam@example.com"
        ]  # fmt: skip
        received = peer.message_ids()
        assert len(received) == 9 and set(received.values()) == {1}
        assert sorted(r for m in peer.messages() for r in m["rcpt_to"]) == sorted(
            [*recipients, "late@example.com"]
        )
        late = await store.pool.fetchrow(
            "SELECT attempts, message_id FROM dispatches WHERE recipient = 'late@example.com'"
        )
        assert late is not None and late["attempts"] == 3 and received[late["message_id"]] == 1
        spam = await store.pool.fetchrow(
            "SELECT attempts, last_error FROM dispatches WHERE recipient = 'spam@example.com'"
        )
        assert spam is not None and spam["attempts"] == 1 and "554 5.7.1 spam" in spam["last_error"]
        sent = await store.pool.fetch("SELECT state FROM ledger WHERE state = 'sent'")
        assert len(sent) == 9


@pytest.mark.parametrize("pipelining", [True, False])
async def test_without_smtputf8_a_unicode_local_part_fails_at_once_and_idn_goes_as_a_label(
    make_client: Start, settings: Settings, store: Store, pipelining: bool
) -> None:
    with SmtpPeer(smtputf8=False, pipelining=pipelining) as peer:
        client = await make_client(replace(settings, retry_base_ms=50))
        headers = auth(await new_token(store))
        sender = await _sender(client, headers, peer.port, tls="none")
        await _schedule(
            client, headers, sender["id"], ["jöhn@example.com", "ann@bücher.example.com"]
        )

        async def done() -> bool:
            return await _statuses(store) == {"sent": 1, "failed": 1}

        await wait_for(done)
        john = await store.pool.fetchrow(
            "SELECT attempts, last_error FROM dispatches WHERE recipient = 'jöhn@example.com'"
        )
        assert john is not None
        assert john["attempts"] == 1, "a condition no retry can change fails at once"
        assert "SMTPUTF8" in john["last_error"] and "jöhn@example.com" in john["last_error"]
        (message,) = peer.messages()
        assert message["utf8"] is False
        commands = [e["line"] for e in peer.of("command")]
        assert "RCPT TO:<ann@xn--bcher-kva.example.com>" in commands, commands
        assert "To: ann@xn--bcher-kva.example.com" in message["header"]
        assert message["header"].isascii()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_with_smtputf8_unicode_addresses_go_as_they_are(
    make_client: Start, settings: Settings, store: Store, pipelining: bool
) -> None:
    with SmtpPeer(smtputf8=True, pipelining=pipelining) as peer:
        client = await make_client(settings)
        headers = auth(await new_token(store))
        sender = await _sender(client, headers, peer.port, tls="none")
        await _schedule(client, headers, sender["id"], ["jöhn@bücher.example.com"])

        async def sent() -> bool:
            return await _statuses(store) == {"sent": 1}

        await wait_for(sent)
        (message,) = peer.messages()
        assert message["rcpt_to"] == ["jöhn@bücher.example.com"] and message["utf8"] is True


async def test_sending_through_a_real_postfix_relay(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """Postfix (it announces PIPELINING) takes the emails and relays them to smtp-server:
    each Message-ID arrives once, envelope intact."""
    with SmtpPeer() as peer, RelayPostfix(free_port(), peer.port) as mta:
        client = await make_client(settings)
        headers = auth(await new_token(store))
        sender = await _sender(client, headers, mta.port, tls="none")
        recipients = [f"p{i}@example.com" for i in range(20)]
        await _schedule(client, headers, sender["id"], recipients)

        async def relayed() -> bool:
            return len(peer.messages()) >= 20

        await wait_for(relayed, within=60)
        assert await _statuses(store) == {"sent": 20}
        sql = """SELECT d.message_id, l.response
                 FROM dispatches d JOIN ledger l ON l.dispatch_id = d.id"""
        rows = await store.pool.fetch(sql)
        assert all("queued as" in r["response"] for r in rows), rows[0]["response"]
        assert peer.message_ids() == {r["message_id"]: 1 for r in rows}
        assert sorted(r for m in peer.messages() for r in m["rcpt_to"]) == sorted(recipients)
        assert {m["mail_from"] for m in peer.messages()} == {"ops@example.com"}
