"""Mailbox pools: a campaign's recipients spread over several senders by what each can still
send, each sender within its own limits, and a pool refused another owner's senders."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from multidict import MultiDict

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.campaigns import parse_schedule_request
from dispatch_engine.config import Settings
from dispatch_engine.errors import ValidationError
from dispatch_engine.models import Sender, Warmup
from dispatch_engine.pools.capacity import PacingFrame, interleave, split
from dispatch_engine.pools.request import plan_pool
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, just_after_next_window, new_token, wait_for
from .support.web_session import dev_login

DAY_MS = 86_400_000
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def _sender(n: int, **kw: Any) -> Sender:
    return Sender(n, 1, f"s{n}@example.com", "", None, "capture", {}, 1_000, 0, **kw)


def _frame(**kw: Any) -> PacingFrame:
    return PacingFrame(int(T0.timestamp() * 1000), DAY_MS, 3_600_000, **kw)


def test_recipients_split_by_capacity_a_warming_sender_gets_less() -> None:
    """The issue's pool: 10 a day each, one warming up from 5 (+5 a day): 30 recipients fill
    day 0 (10 + 10 + 5) and share day 1's last 5 by each one's room that day."""
    warming = _sender(3, daily_limit=10, warmup=Warmup(5, 5, 10, T0))
    pool = [_sender(1, daily_limit=10), _sender(2, daily_limit=10), warming]
    assert split(30, pool, _frame()) == [12, 12, 6]
    # A sender at 10 a day gets a tenth of what one at 100 a day gets.
    assert split(110, [_sender(1, daily_limit=10), _sender(2, daily_limit=100)], _frame()) == [
        10,
        100,
    ]
    # Hourly limits count over the day's windows; a parked sender gets nothing.
    hourly = [replace(_sender(1), hourly_limit=1), replace(_sender(2), hourly_limit=3)]
    assert split(96, hourly, _frame()) == [24, 72]
    parked = _sender(2, daily_limit=10, parked_reason="535")
    assert split(20, [_sender(1, daily_limit=10), parked], _frame()) == [20, 0]
    assert split(5, [parked], _frame()) is None
    # Past ten years of days the rest still goes by each one's room (no "parked" refusal).
    slow = [_sender(1, daily_limit=1), _sender(2, daily_limit=3)]
    assert split(40_000, slow, _frame()) == [10_000, 30_000]


def test_what_a_sender_already_has_to_send_counts_against_its_room() -> None:
    pool = [_sender(1, daily_limit=10), _sender(2, daily_limit=10)]
    assert split(10, pool, _frame(), [10, 0]) == [0, 10]  # day 0: only the second has room
    assert split(20, pool, _frame(), [5, 0]) == [8, 12]  # 5 + 10 on day 0; 5 left: 3 + 2


def test_each_senders_share_is_spread_over_the_campaign() -> None:
    picks = interleave([4, 2, 2])
    assert Counter(picks) == {0: 4, 1: 2, 2: 2}
    assert picks[:4].count(0) == 2 and picks[4:].count(0) == 2


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"a": 1}, "senders"),
        ([1, {"id": 2}], "senders[1]"),
        ([1, "not an address"], "senders[1]"),
        ([1, 0], "senders[1]"),
        (list(range(1, 52)), "senders"),
    ],
)
def test_a_bad_pool_is_refused_naming_its_item(value: object, field: str) -> None:
    data = {"subject": "s", "body": "b", "recipients": ["a@example.com"], "senders": value}
    with pytest.raises(ValidationError) as refused:
        parse_schedule_request(data, now=T0)
    assert refused.value.field == field


def test_a_pool_and_a_sender_together_are_refused() -> None:
    data = {"subject": "s", "body": "b", "recipients": ["a@example.com"], "sender": 1,
            "senders": [1, 2]}  # fmt: skip
    with pytest.raises(ValidationError) as refused:
        parse_schedule_request(data, now=T0)
    assert refused.value.field == "senders"


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def _new_sender(client: AppClient, headers: dict[str, str], **body: Any) -> int:
    body = {"transport": "capture", **body}
    return int(
        (await _json(await client.post("/api/senders", json=body, headers=headers), 201))["id"]
    )


async def test_a_pool_of_three_sends_each_share_within_each_senders_own_limits(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """Days of 4 s: three senders at 10 a day, one warming up from 5. 30 recipients are split
    12 / 12 / 6 at schedule time, each row in its sender's queue, and each sender sends no
    more than its own limit on any day."""
    day_s = 4
    client = await make_client(replace(settings, day_seconds=day_s))
    headers = auth(await new_token(store))
    a = await _new_sender(client, headers, from_address="a@example.com", daily_limit=10)
    b = await _new_sender(client, headers, from_address="b@example.com", daily_limit=10)
    c = await _new_sender(client, headers, from_address="c@example.com", daily_limit=10,
                          warmup={"start": 5, "step": 5, "max": 10})  # fmt: skip
    start_at = just_after_next_window(day_s)
    # The ramp's day 0 is the campaign's first day (set, not raced against the clock).
    await store.pool.execute(
        "UPDATE senders SET warmup_started_at = $2 WHERE id = $1",
        c,
        datetime.fromisoformat(start_at),
    )
    recipients = [f"r{i}@example.com" for i in range(30)]
    payload = {"subject": "Hi", "body": "Hello {{ email }}", "start_at": start_at,
               "senders": [a, "b@example.com", c], "recipients": recipients}  # fmt: skip
    created = await _json(
        await client.post("/api/emails/schedule", json=payload, headers=headers), 201
    )
    campaign = created["campaign"]
    assert [(p["from_address"], p["assigned"]) for p in campaign["pool"]] == [
        ("a@example.com", 12),
        ("b@example.com", 12),
        ("c@example.com", 6),
    ]
    assert campaign["sender"]["id"] == a

    async def all_sent() -> bool:
        n = await store.pool.fetchval("SELECT count(*) FROM dispatches WHERE status = 'sent'")
        return int(n) == 30

    await wait_for(all_sent, within=60)
    rows = await store.pool.fetch("SELECT sender_id, recipient, sent_at FROM dispatches")
    assert Counter(r["sender_id"] for r in rows) == {a: 12, b: 12, c: 6}
    assert sorted(r["recipient"] for r in rows) == sorted(recipients)
    first_day = int(datetime.fromisoformat(start_at).timestamp() // day_s)
    per_day = Counter((r["sender_id"], int(r["sent_at"].timestamp() // day_s)) for r in rows)
    for (sender_id, day), n in per_day.items():
        limit = 10 if sender_id != c else min(10, 5 + 5 * (day - first_day))
        assert n <= limit, (sender_id, day - first_day, n, dict(per_day))
    assert per_day[(c, first_day)] <= 5
    # The captured emails come from their own sender (From), as the API lists them.
    froms = await store.pool.fetch("SELECT raw FROM captured_messages")
    by_from = Counter(
        next(line for line in bytes(r["raw"]).split(b"\r\n") if line.startswith(b"From:"))
        for r in froms
    )
    assert sorted(by_from.values()) == [6, 12, 12]
    got = await _json(await client.get(f"/api/campaigns/{campaign['id']}", headers=headers))
    assert [(p["id"], p["sent"], p["queued"], p["in_rotation"]) for p in got["pool"]] == [
        (a, 12, 0, True),
        (b, 12, 0, True),
        (c, 6, 0, True),
    ]
    # Each one's day so far: its effective daily limit (the ramp's for c) and its sends.
    today = {p["id"]: p["today"] for p in got["pool"]}
    assert today[a]["daily_limit"] == today[b]["daily_limit"] == 10
    assert today[c]["daily_limit"] in (5, 10)
    assert all(0 <= t["sent"] <= t["daily_limit"] for t in today.values())


async def test_a_pool_names_only_its_owners_own_senders(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client(settings)
    ada = auth(await new_token(store, "ada@example.com"))
    bob = auth(await new_token(store, "bob@example.com"))
    mine = await _new_sender(client, bob, from_address="bob1@example.com")
    theirs = await _new_sender(client, ada, from_address="ada1@example.com")
    for ref in (theirs, "ada1@example.com"):
        payload = {"subject": "s", "body": "b", "recipients": ["x@example.com"],
                   "senders": [mine, ref]}  # fmt: skip
        refused = await client.post("/api/emails/schedule", json=payload, headers=bob)
        body = await _json(refused, 422)
        assert body["error"]["field"] == "senders[1]", body
        assert "ada1" not in body["error"]["message"] or ref == "ada1@example.com"
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 0
    twice = {"subject": "s", "body": "b", "recipients": ["x@example.com"],
             "senders": [mine, "BOB1@example.com"]}  # fmt: skip
    body = await _json(await client.post("/api/emails/schedule", json=twice, headers=bob), 422)
    assert body["error"]["field"] == "senders[1]"


async def test_the_database_keeps_a_pool_to_its_owner_and_its_dispatches_to_the_pool(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """The checks of migration 0020: a pool row naming another owner's sender, and a
    dispatch whose sender is not its campaign's pool, are refused by PostgreSQL itself."""
    client = await make_client(settings)
    ada = auth(await new_token(store, "ada@example.com"))
    bob = auth(await new_token(store, "bob@example.com"))
    b1 = await _new_sender(client, bob, from_address="b1@example.com")
    b2 = await _new_sender(client, bob, from_address="b2@example.com")
    b3 = await _new_sender(client, bob, from_address="b3@example.com")
    a1 = await _new_sender(client, ada, from_address="a1@example.com")
    payload = {"subject": "s", "body": "b", "recipients": ["x@example.com", "y@example.com"],
               "senders": [b1, b2], "start_at": "2099-01-01T00:00:00Z"}  # fmt: skip
    created = await _json(await client.post("/api/emails/schedule", json=payload, headers=bob), 201)
    campaign_id = created["campaign"]["id"]
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await store.pool.execute(
            "INSERT INTO campaign_senders (campaign_id, sender_id, position) VALUES ($1, $2, 9)",
            campaign_id,
            a1,
        )
    owner = await store.pool.fetchval("SELECT owner_id FROM campaigns WHERE id = $1", campaign_id)
    for sender_id, ok in ((b2, True), (b3, False)):
        insert = store.pool.execute(
            """INSERT INTO dispatches (id, campaign_id, owner_id, sender_id, recipient, vars,
                                       scheduled_at, idempotency_key)
               VALUES (nextval('dispatches_id_seq'), $1, $2, $3, 'z@example.com', '{}',
                       now(), sha256(random()::text::bytea))""",
            campaign_id,
            owner,
            sender_id,
        )
        if ok:
            await insert
        else:
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await insert


async def test_the_compose_form_picks_a_pool_of_senders(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """The form's multiple select (no script: the form's own POST) schedules one campaign
    over the chosen senders; a sender not the user's is shown as the pool's error."""
    client = await make_client(settings)
    csrf = await dev_login(client)
    headers = auth(await new_token(store, DEV_EMAIL))
    a = await _new_sender(client, headers, from_address="pa@example.com")
    b = await _new_sender(client, headers, from_address="pb@example.com")
    page = await (await client.get("/compose")).text()
    assert 'name="senders" multiple' in page and f'<option value="{b}"' in page
    form = MultiDict(
        [("csrf_token", csrf), ("subject", "s"), ("body", "b"), ("sender", str(a)),
         ("recipients_csv", "email\nx@example.com\ny@example.com\n"),
         ("senders", str(a)), ("senders", str(b))]
    )  # fmt: skip
    done = await client.post("/compose", data=form, allow_redirects=False)
    assert done.status == 303, await done.text()
    campaign_id = int(done.headers["Location"].rsplit("=", 1)[1])
    got = await _json(await client.get(f"/api/campaigns/{campaign_id}", headers=headers))
    assert [p["id"] for p in got["pool"]] == [a, b]
    assert sum(p["assigned"] for p in got["pool"]) == 2
    stranger = await _new_sender(
        client, auth(await new_token(store, "eve@example.com")), from_address="e@example.com"
    )
    form.update({"senders": str(stranger)})
    refused = await client.post("/compose", data=form, allow_redirects=False)
    assert refused.status == 422
    assert "no sender" in await refused.text()


async def test_a_big_pool_split_is_the_same_off_the_event_loop(queue: RedisQueue) -> None:
    """Past 10,000 recipients the interleaving runs in a thread: the same rows, each sender's
    share exactly, as on the loop."""
    pool = [_sender(1, daily_limit=100), _sender(2, daily_limit=300)]
    frame = {"start_at": T0, "now": T0, "day_seconds": 86_400, "window_seconds": 3600,
             "campaign": (0, None, None)}  # fmt: skip
    plan = await plan_pool(queue, pool, 20_000, **frame)  # type: ignore[arg-type]
    assert plan.counts == [5_000, 15_000]
    assert Counter(plan.of_row) == {1: 5_000, 2: 15_000}
    assert plan.of_row[:8].count(1) == 2  # spread: a quarter of every stretch
    small = await plan_pool(queue, pool, 8, **frame)  # type: ignore[arg-type]
    assert Counter(small.of_row) == {1: 2, 2: 6}


async def test_a_pool_splits_only_the_recipients_left_after_suppressions(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """The schedule-time suppression check leaves an address out first; the split is of
    what is left (each row still gets exactly one sender)."""
    client = await make_client(settings)
    headers = auth(await new_token(store, "ada@example.com"))
    a = await _new_sender(client, headers, from_address="qa@example.com")
    b = await _new_sender(client, headers, from_address="qb@example.com")
    owner = await store.pool.fetchval("SELECT id FROM users WHERE email = 'ada@example.com'")
    await store.pool.execute(
        """INSERT INTO suppressions (owner_id, email_normalized, reason, source)
           VALUES ($1, 'r0@example.com', 'manual', 'api')""",
        owner,
    )
    payload = {"subject": "s", "body": "b", "senders": [a, b], "start_at": "2099-01-01T00:00:00Z",
               "recipients": [f"r{i}@example.com" for i in range(5)]}  # fmt: skip
    made = await _json(
        await client.post("/api/emails/schedule", json=payload, headers=headers), 201
    )
    assert made["accepted"] == 4
    assert sorted(p["assigned"] for p in made["campaign"]["pool"]) == [2, 2]
    rows = await store.pool.fetch("SELECT recipient, sender_id FROM dispatches")
    assert sorted(r["recipient"] for r in rows) == [f"r{i}@example.com" for i in range(1, 5)]
    assert Counter(r["sender_id"] for r in rows) == {a: 2, b: 2}
