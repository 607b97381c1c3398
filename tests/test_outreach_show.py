"""Issue 16 shown as a user runs it: a sequence over a warming pool with real replies read
from Dovecot, and recipients in Tokyo and Los Angeles each reached inside their own hours.

Pacing days are `DISPATCH_DAY_SECONDS` long (a few seconds, as in test_warmup.py); replies
are put into each sender's reply mailbox by IMAP APPEND, as tests/test_replies.py does.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dispatch_engine.config import Settings
from dispatch_engine.recipient_hours import SendWindow
from dispatch_engine.store import Store
from dispatch_engine.worker.hours import opening_for

from .support.app_client import AppClient, Start
from .support.dovecot import Dovecot
from .support.helpers import auth, just_after_next_window, new_token, wait_for
from .support.plugin_dirs import plugin_dir
from .test_recipient_hours import _campaign, _job
from .test_replies import cursor_at, mailbox, mailbox_of, reading, reply
from .test_sequences import received, states, until_states

__all__ = ["mailbox"]  # the Dovecot fixture, used by name

DAY_S = 8  # long enough for a reply to be read (IDLE) before the next step is due, under load
TOKYO, LOS_ANGELES = "Asia/Tokyo", "America/Los_Angeles"


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def _sender(
    client: AppClient, headers: dict[str, str], address: str, box: dict[str, Any], **extra: Any
) -> int:
    body = {"from_address": address, "transport": "capture", "daily_limit": 10,
            "reply_mailbox": box, **extra}  # fmt: skip
    created = await _json(await client.post("/api/senders", json=body, headers=headers), 201)
    return int(created["id"])


async def _step_sent(store: Store, campaign_id: int, recipient: str, step: int) -> dict[str, Any]:
    async def sent() -> bool:
        return bool(
            await store.pool.fetchval(
                """SELECT count(*) FROM dispatches WHERE campaign_id = $1 AND recipient = $2
                   AND step = $3 AND status = 'sent'""",
                campaign_id,
                recipient,
                step,
            )
        )

    await wait_for(sent, within=90)
    row = await store.pool.fetchrow(
        "SELECT * FROM dispatches WHERE campaign_id = $1 AND recipient = $2 AND step = $3",
        campaign_id,
        recipient,
        step,
    )
    assert row is not None
    return dict(row)


async def test_a_three_step_sequence_over_a_warming_pool_stops_for_those_who_reply(
    mailbox: Dovecot, make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    """30 recipients, three steps a day apart, a pool of three mailboxes at 10 a day, one
    ramping from 5 (+5 a day). Each mailbox's sends per day stay within its limit, each
    recipient has one mailbox for every step. Three recipients (one per mailbox) reply:
    two after the first email (they get only it); the third sends an out-of-office first,
    still gets step 2, then replies and never gets step 3. Everyone else gets all three,
    threaded to the first email."""
    app = replace(reading(settings, plugin_dir(tmp_path, recorder="")), day_seconds=DAY_S)
    client = await make_client(app)
    headers = auth(await new_token(store))
    with mailbox.client() as imap:
        for folder in ("A", "B", "C"):
            assert imap.create(folder)[0] == "OK"
    a = await _sender(client, headers, "a@example.com", mailbox_of(mailbox, "A"))
    b = await _sender(client, headers, "b@example.com", mailbox_of(mailbox, "B"))
    c = await _sender(client, headers, "c@example.com", mailbox_of(mailbox, "C"),
                      warmup={"start": 5, "step": 5, "max": 10})  # fmt: skip
    folder_of = {a: "A", b: "B", c: "C"}
    address_of = {a: "a@example.com", b: "b@example.com", c: "c@example.com"}
    start_at = just_after_next_window(DAY_S)
    await store.pool.execute(  # the ramp's day 0 is the campaign's first day
        "UPDATE senders SET warmup_started_at = $2 WHERE id = $1",
        c,
        datetime.fromisoformat(start_at),
    )
    people = [f"r{i}@receiver.example" for i in range(30)]
    payload = {
        "subject": "Hello {{ name }}", "body": "Step one for {{ name }}", "start_at": start_at,
        "senders": [a, b, c],
        "recipients": [{"email": e, "vars": {"name": e.split("@")[0]}} for e in people],
        "steps": [
            {"after_days": 1, "subject": None, "body": "Step two for {{ name }}"},
            {"after_days": 1, "subject": "Last note, {{ name }}", "body": "Step three"},
        ],
    }  # fmt: skip
    created = await _json(
        await client.post("/api/emails/schedule", json=payload, headers=headers), 201
    )
    campaign_id = int(created["campaign"]["id"])
    first_rows = await store.pool.fetch(
        "SELECT recipient, sender_id FROM dispatches WHERE campaign_id = $1 AND step = 0"
        " ORDER BY id",
        campaign_id,
    )
    mailbox_by_person = {r["recipient"]: r["sender_id"] for r in first_rows}
    assert Counter(mailbox_by_person.values()) == {a: 12, b: 12, c: 6}
    # The first recipient of each mailbox replies; the one on b sends an auto-reply first.
    repliers = {s: next(p for p, m in mailbox_by_person.items() if m == s) for s in (a, b, c)}
    auto = repliers[b]

    async def deliver(person: str, message_id: str, uid: int, **kw: Any) -> None:
        sender_id = mailbox_by_person[person]
        message = reply(message_id, author=person, own_id=f"<{uid}.{person}>", **kw)
        await asyncio.to_thread(mailbox.append, message, folder_of[sender_id])
        await cursor_at(store, sender_id, uid)

    for person in repliers.values():
        first = await _step_sent(store, campaign_id, person, 0)
        if person == auto:
            await deliver(person, first["message_id"], 1, subject="Automatic reply: Hello",
                          body="I am away this week.",
                          extra="Auto-Submitted: auto-replied\r\n")  # fmt: skip
            assert (await states(store, campaign_id))[person][0] != "replied"
        else:
            await deliver(person, first["message_id"], 1)
            await until_states(store, campaign_id, {person: "replied"})
    # The auto-reply did not stop its sequence: step 2 arrives; then the real reply stops it.
    await _step_sent(store, campaign_id, auto, 1)
    first = await _step_sent(store, campaign_id, auto, 0)
    await deliver(auto, first["message_id"], 2)
    await until_states(store, campaign_id, {auto: "replied"})

    others = [p for p in people if p not in repliers.values()]
    await until_states(store, campaign_id, dict.fromkeys(others, "finished"))
    final = await states(store, campaign_id)
    for person in repliers.values():
        assert final[person] == ("replied", "replied"), (person, final[person])
        assert len(await received(store, person)) == (2 if person == auto else 1), person
    for person in others:
        first_msg, second, third = await received(store, person)  # exactly three each
        name = person.split("@")[0]
        assert first_msg["Subject"] == f"Hello {name}" and first_msg["In-Reply-To"] is None
        assert second["Subject"] == f"Re: Hello {name}"
        assert third["Subject"] == f"Last note, {name}"
        for follow_up in (second, third):
            assert follow_up["In-Reply-To"] == first_msg["Message-ID"]
            assert follow_up["References"] == first_msg["Message-ID"]
        # Sent by its own mailbox of the pool, every step (From, as DKIM signs it).
        own = address_of[mailbox_by_person[person]]
        assert [m["From"] for m in (first_msg, second, third)] == [own] * 3, person

    rows = await store.pool.fetch(
        "SELECT recipient, step, sender_id, sent_at FROM dispatches WHERE campaign_id = $1",
        campaign_id,
    )
    assert len(rows) == 27 * 3 + 1 + 1 + 2
    for r in rows:  # each recipient keeps its mailbox for every step
        assert r["sender_id"] == mailbox_by_person[r["recipient"]], dict(r)
    first_day = int(datetime.fromisoformat(start_at).timestamp() // DAY_S)
    per_day = Counter((r["sender_id"], int(r["sent_at"].timestamp() // DAY_S)) for r in rows)
    for (sender_id, day), n in per_day.items():
        limit = 10 if sender_id != c else min(10, 5 + 5 * (day - first_day))
        assert n <= limit, (sender_id, day - first_day, n, dict(per_day))
    assert per_day[(c, first_day)] <= 5


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _own_window(zone: str, at: datetime, start_h: int, end_h: int) -> datetime:
    """Independently of the product: `at` if inside [start_h, end_h) local, else the next
    local start_h (every day of the week), in UTC."""
    local = at.astimezone(ZoneInfo(zone))
    if start_h <= local.hour < end_h:
        return at
    opens = local.replace(hour=start_h, minute=0, second=0, microsecond=0)
    if local.hour >= start_h:
        opens += timedelta(days=1)
    return opens.astimezone(UTC)


def test_tokyo_and_los_angeles_each_get_mail_only_inside_their_own_9_to_5() -> None:
    """Every 15 minutes across a UTC day (and its neighbour), at the worker's window
    stage: Tokyo (UTC+9) is open 00:00-08:00 UTC, Los Angeles (PST, UTC-8) 17:00-01:00
    UTC; outside, each is held until its own next 09:00."""
    campaign = _campaign(SendWindow("Mon-Sun 09:00-17:00", "UTC", ()))
    day = _utc("2026-12-01T00:00")
    for quarter in range(-8, 4 * 24 + 8):
        at = day + timedelta(minutes=15 * quarter)
        for zone in (TOKYO, LOS_ANGELES):
            assert opening_for(_job(zone), campaign, at) == _own_window(zone, at, 9, 17), (
                zone,
                at,
            )
    tuesday = _utc("2026-12-01T12:00")  # 21:00 in Tokyo, 04:00 in Los Angeles
    assert opening_for(_job(TOKYO), campaign, tuesday) == _utc("2026-12-02T00:00")
    assert opening_for(_job(LOS_ANGELES), campaign, tuesday) == _utc("2026-12-01T17:00")
    assert opening_for(_job(TOKYO), campaign, _utc("2026-12-01T07:59")) == _utc("2026-12-01T07:59")
    assert opening_for(_job(LOS_ANGELES), campaign, _utc("2026-12-02T00:59")) == _utc(
        "2026-12-02T00:59"
    )


def _pick_window(now: datetime) -> tuple[str, str, int, int]:
    """(inside zone, outside zone, start hour, end hour) true now with an hour to spare:
    09:00-17:00 if that already holds, else two hours from one zone's current hour (the
    zones are 16 or 17 hours apart, so the other is outside it)."""
    hours = {z: now.astimezone(ZoneInfo(z)).hour for z in (TOKYO, LOS_ANGELES)}
    for inside, outside in ((TOKYO, LOS_ANGELES), (LOS_ANGELES, TOKYO)):
        if 9 <= hours[inside] <= 15 and not 9 <= hours[outside] < 17:
            return inside, outside, 9, 17
    inside = TOKYO if hours[TOKYO] <= 21 else LOS_ANGELES
    outside = LOS_ANGELES if inside == TOKYO else TOKYO
    return inside, outside, hours[inside], hours[inside] + 2


async def test_now_the_recipient_inside_their_hours_is_sent_and_the_other_waits(
    make_client: Start, settings: Settings, store: Store
) -> None:
    now = datetime.now(UTC)
    inside, outside, start_h, end_h = _pick_window(now)
    client = await make_client(settings)
    token = await new_token(store)
    by_zone = {TOKYO: "kenji@receiver.example", LOS_ANGELES: "lena@receiver.example"}
    csv = "email,timezone\n" + "".join(f"{e},{z}\n" for z, e in by_zone.items())
    payload = {"subject": "s", "body": "b", "recipients_csv": csv,
               "send_window": f"Mon-Sun {start_h:02d}:00-{end_h:02d}:00"}  # fmt: skip
    body = await _json(
        await client.post("/api/emails/schedule", json=payload, headers=auth(token)), 201
    )
    campaign = body["campaign"]["id"]

    async def settled() -> bool:
        rows = await store.pool.fetch(
            "SELECT recipient, status, wait_reason FROM dispatches WHERE campaign_id = $1",
            campaign,
        )
        return {r["recipient"]: (r["status"], r["wait_reason"]) for r in rows} == {
            by_zone[inside]: ("sent", None),
            by_zone[outside]: ("rate_limited", "recipient_hours"),
        }

    await wait_for(settled)
    until = await store.pool.fetchval(
        "SELECT wait_until FROM dispatches WHERE recipient = $1", by_zone[outside]
    )
    assert until == _own_window(outside, now, start_h, end_h)
    assert until.astimezone(ZoneInfo(outside)).hour == start_h
    assert len(await received(store, by_zone[inside])) == 1
    assert await received(store, by_zone[outside]) == []
