"""Leaving the rotation: a pool's sender whose password breaks is parked (worker/
sender_health.py), leaves the rotation, and its queued recipients are sent by the others,
none twice, none lost; another owner's campaigns are never touched. nodemailer's
`smtp-server` is the SMTP peer (tests/support/smtp_peer.py), AUTH required."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.config import Settings
from dispatch_engine.pools.rotation import Rotation, rehome
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_peer import PrivateCa, SmtpPeer
from .support.web_session import dev_login

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    return PrivateCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def peer(ca: PrivateCa) -> Iterator[SmtpPeer]:
    with SmtpPeer(ca=ca, users={"ann": PASSWORD, "ben": PASSWORD, "cat": PASSWORD}) as p:
        yield p


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def _smtp_sender(
    client: AppClient, headers: dict[str, str], port: int, user: str, password: str
) -> int:
    body = {
        "from_address": f"{user}@example.com",
        "transport": "smtp",
        "settings": {"host": "127.0.0.1", "port": port, "tls": "starttls", "username": user,
                     "password": password},
    }  # fmt: skip
    return int(
        (await _json(await client.post("/api/senders", json=body, headers=headers), 201))["id"]
    )


async def test_a_mailbox_whose_password_breaks_mid_campaign_leaves_and_the_others_finish(
    make_client: Start, settings: Settings, store: Store, peer: SmtpPeer, ca: PrivateCa
) -> None:
    """ann sends its first emails, then its password breaks (a wrong one is saved): its
    logins are refused, it is parked, it leaves the rotation, and ben and cat send the rest
    of its recipients; each of the 30 arrives exactly once."""
    configured = replace(settings, retry_base_ms=50).with_environ(SMTP_CA_FILE=str(ca.ca_file))
    client = await make_client(configured)
    headers = auth(await new_token(store, DEV_EMAIL))  # the dashboard's dev user
    broken = await _smtp_sender(client, headers, peer.port, "ann", PASSWORD)
    ben = await _smtp_sender(client, headers, peer.port, "ben", PASSWORD)
    cat = await _smtp_sender(client, headers, peer.port, "cat", PASSWORD)
    # Another owner's campaign on its own pool: the move must leave it as it is.
    other = auth(await new_token(store, "other@example.com"))
    o1 = await _smtp_sender(client, other, peer.port, "ben", PASSWORD)
    o2 = await _smtp_sender(client, other, peer.port, "cat", PASSWORD)
    theirs = {"subject": "Theirs", "body": "b", "senders": [o1, o2],
              "recipients": [f"o{i}@example.com" for i in range(6)],
              "start_at": "2099-01-01T00:00:00Z"}  # fmt: skip
    their_id = (
        await _json(await client.post("/api/emails/schedule", json=theirs, headers=other), 201)
    )["campaign"]["id"]
    before = await store.pool.fetch(
        "SELECT id, sender_id FROM dispatches WHERE campaign_id = $1 ORDER BY id", their_id
    )

    recipients = [f"r{i}@example.com" for i in range(30)]
    payload = {"subject": "Hi {{ email }}", "body": "Hello", "senders": [broken, ben, cat],
               "recipients": recipients, "delay_between_ms": 300}  # fmt: skip
    created = await _json(
        await client.post("/api/emails/schedule", json=payload, headers=headers), 201
    )
    campaign_id = created["campaign"]["id"]
    assigned = {p["id"]: p["assigned"] for p in created["campaign"]["pool"]}
    assert assigned == {broken: 10, ben: 10, cat: 10}

    async def ann_sent_two() -> bool:
        return sum(m["user"] == "ann" for m in peer.messages()) >= 2

    await wait_for(ann_sent_two)
    patched = await client.patch(
        f"/api/senders/{broken}", json={"settings": {"password": "broken"}}, headers=headers
    )
    await _json(patched)

    async def all_sent() -> bool:
        n = await store.pool.fetchval(
            "SELECT count(*) FROM dispatches WHERE campaign_id = $1 AND status = 'sent'",
            campaign_id,
        )
        return int(n) == 30

    await wait_for(all_sent, within=60)
    received = peer.message_ids()
    assert len(received) == 30 and set(received.values()) == {1}, "each email exactly once"
    assert sorted(r for m in peer.messages() for r in m["rcpt_to"]) == sorted(recipients)
    by_user = Counter(m["user"] for m in peer.messages())
    ann_sent = by_user["ann"]
    assert 2 <= ann_sent < 10 and by_user["ben"] + by_user["cat"] == 30 - ann_sent
    rows = await store.pool.fetch(
        "SELECT sender_id FROM dispatches WHERE campaign_id = $1", campaign_id
    )
    assert Counter(r["sender_id"] for r in rows)[broken] == ann_sent  # only what it sent

    detail = await _json(await client.get(f"/api/campaigns/{campaign_id}", headers=headers))
    by_id = {p["id"]: p for p in detail["pool"]}
    left = by_id[broken]["left"]
    assert by_id[broken]["in_rotation"] is False and left is not None
    assert left["reason"].startswith("parked: ") and "535" in left["reason"]
    assert left["moved"] == 10 - ann_sent
    assert left["message"] == (
        f"sender ann@example.com left the rotation: {left['reason']}; "
        f"{10 - ann_sent} recipients moved"
    )
    assert by_id[broken]["sent"] == ann_sent and by_id[broken]["queued"] == 0
    assert by_id[ben]["sent"] + by_id[cat]["sent"] == 30 - ann_sent
    assert Counter(r["sender_id"] for r in rows) == {
        broken: ann_sent,
        ben: by_id[ben]["sent"],
        cat: by_id[cat]["sent"],
    }
    # The other owner's campaign: untouched (same rows, same senders, nothing left).
    after = await store.pool.fetch(
        "SELECT id, sender_id FROM dispatches WHERE campaign_id = $1 ORDER BY id", their_id
    )
    assert after == before
    theirs_now = await _json(await client.get(f"/api/campaigns/{their_id}", headers=other))
    assert all(p["left"] is None for p in theirs_now["pool"])
    # The campaign page says so too.
    await dev_login(client)
    page = await client.get(f"/campaigns/{campaign_id}")
    assert page.status == 200
    assert left["message"].replace("'", "&#39;") in await page.text()


async def test_a_sender_over_its_bounce_threshold_leaves_and_its_queue_moves_in_redis_too(
    make_client: Start, settings: Settings, store: Store, queue: RedisQueue
) -> None:
    """DISPATCH_PAUSE_BOUNCE_PERCENT over the sender's last 30 days (from
    DISPATCH_PAUSE_MIN_SENT sends): it leaves the rotation of its live pools; the others'
    senders, and another owner, are untouched. Run as the sweeper leader runs it, twice
    (idempotent)."""
    configured = settings.with_environ(DISPATCH_PAUSE_MIN_SENT="2")
    client = await make_client(configured, roles=frozenset({"api"}))  # no sweeper, no worker
    headers = auth(await new_token(store, "owner@example.com"))
    a = await _capture(client, headers, "a@example.com")
    b = await _capture(client, headers, "b@example.com")
    payload = {"subject": "s", "body": "b", "senders": [a, b], "start_at": "2099-01-01T00:00:00Z",
               "recipients": [f"r{i}@example.com" for i in range(10)]}  # fmt: skip
    made = await _json(
        await client.post("/api/emails/schedule", json=payload, headers=headers), 201
    )
    campaign_id = made["campaign"]["id"]
    assert await queue.depth(a) == 5 and await queue.depth(b) == 5
    # Two of a's emails went out (elsewhere) and one of them bounced hard: 50 % > 5 %.
    earlier = {"subject": "s", "body": "b", "sender": a, "start_at": "2099-01-01T00:00:00Z",
               "recipients": ["x@example.com", "y@example.com"]}  # fmt: skip
    other_id = (
        await _json(await client.post("/api/emails/schedule", json=earlier, headers=headers), 201)
    )["campaign"]["id"]
    sent = await store.pool.fetch(
        """UPDATE dispatches SET status = 'sent', sent_at = now(), finished_at = now()
           WHERE campaign_id = $1 RETURNING id, owner_id""",
        other_id,
    )
    await store.pool.execute(
        """INSERT INTO feedback_events (fingerprint, owner_id, dispatch_id, campaign_id,
                                        sender_id, kind, source, email_normalized)
           VALUES ('fp-1', $1, $2, $3, $4, 'hard_bounce', 'test', 'x@example.com')""",
        sent[0]["owner_id"],
        sent[0]["id"],
        other_id,
        a,
    )
    rotation = Rotation(store, queue, configured)
    assert await rotation.run() == 5
    assert await rotation.run() == 0  # nothing left to do
    rows = await store.pool.fetch(
        "SELECT sender_id, count(*) AS n FROM dispatches WHERE campaign_id = $1 GROUP BY 1",
        campaign_id,
    )
    assert {r["sender_id"]: r["n"] for r in rows} == {b: 10}
    # Redis follows: a keeps only its other campaign's 2 ids (not of a pool: they stay).
    assert await queue.depth(a) == 2 and await queue.depth(b) == 10
    detail = await _json(await client.get(f"/api/campaigns/{campaign_id}", headers=headers))
    left = {p["id"]: p["left"] for p in detail["pool"]}
    assert left[b] is None and left[a] is not None
    assert left[a]["reason"] == (
        "hard-bounce rate 50.0 % (1 of 2 sent in 30 days) is over 5 % "
        "(DISPATCH_PAUSE_BOUNCE_PERCENT)"
    )
    assert left[a]["moved"] == 5


async def _capture(client: AppClient, headers: dict[str, str], address: str) -> int:
    body = {"from_address": address, "transport": "capture"}
    return int(
        (await _json(await client.post("/api/senders", json=body, headers=headers), 201))["id"]
    )


async def test_a_lease_of_the_old_sender_never_begins_a_moved_email(
    make_client: Start, settings: Settings, store: Store, queue: RedisQueue
) -> None:
    """The race a move can lose: a worker claimed an email of the old sender just before it
    moved. The ledger's begin refuses it under that lease (no send by the old sender), and
    `rehome` puts the id in its new sender's queue (no email lost)."""
    client = await make_client(settings, roles=frozenset({"api"}))
    headers = auth(await new_token(store, "owner@example.com"))
    a = await _capture(client, headers, "a@example.com")
    b = await _capture(client, headers, "b@example.com")
    payload = {"subject": "s", "body": "b", "senders": [a, b],
               "recipients": ["x@example.com", "y@example.com"]}  # fmt: skip
    made = await _json(
        await client.post("/api/emails/schedule", json=payload, headers=headers), 201
    )
    campaign_id = made["campaign"]["id"]
    on_a = await store.pool.fetchval(
        "SELECT id FROM dispatches WHERE campaign_id = $1 AND sender_id = $2", campaign_id, a
    )
    owner = await store.pool.fetchval("SELECT owner_id FROM campaigns WHERE id = $1", campaign_id)
    # A move names the campaign's owner and its pool: nothing else is touched.
    stranger = await _capture(client, auth(await new_token(store, "eve@example.com")), "e@x.io")
    assert await store.move_dispatches(campaign_id, owner + 1000, a, [on_a], [b]) == []
    assert await store.move_dispatches(campaign_id, owner, a, [on_a], [stranger]) == []
    moved = await store.move_dispatches(campaign_id, owner, a, [on_a], [b])
    assert [r["id"] for r in moved] == [on_a]
    go, sent = await store.begin_sends([on_a], ["<m@x>"], ["capture"], "t:1", [a])
    assert go == set() and sent == set(), "not begun under the old sender's lease"
    assert await store.pool.fetchval("SELECT status FROM dispatches WHERE id = $1", on_a) == (
        "scheduled"
    )
    await queue.remove(a, [on_a])
    assert await rehome(queue, await store.queued_elsewhere([on_a])) == 1
    assert await queue.depth(a) == 0 and await queue.depth(b) == 2
    go, _ = await store.begin_sends([on_a], ["<m@x>"], ["capture"], "t:2", [b])
    assert go == {on_a}, "its new sender's lease begins it"
