"""Suppressions are checked twice: at schedule time a suppressed recipient is left out and
reported like a rejected line (reason and date), and at send time an email queued before
its address was suppressed ends `suppressed` and never reaches a transport. Whatever the
case or the spelling of an IDN domain, and per owner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from redis.asyncio import Redis

from dispatch_engine.recipients import from_json
from dispatch_engine.store import Store
from dispatch_engine.suppressions import IN_THREAD, leave_out_suppressed

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for

API = frozenset({"api"})
WORKER = frozenset({"worker", "sweeper"})
TODAY = datetime.now(UTC).strftime("%Y-%m-%d")


async def _json(response: aiohttp.ClientResponse, status: int) -> Any:
    body = await response.json()
    assert response.status == status, body
    return body


async def _suppress(
    client: AppClient, headers: dict[str, str], source: str
) -> None:  # a CSV, to set reasons other than manual
    response = await client.post(
        "/api/suppressions/import", data=source, headers={**headers, "Content-Type": "text/csv"}
    )
    await _json(response, 201)


async def test_suppressed_recipients_are_left_out_at_schedule_time_with_reason_and_date(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    ada = auth(await new_token(store))
    await _suppress(client, ada, "email,reason\nBob@BÜCHER.example,manual\n"
                                 "carol@example.com,unsubscribed\n")  # fmt: skip
    payload = {
        "subject": "Hi {{ name }}",
        "body": "Hello",
        "recipients_csv": "email,name\nann@example.com,Ann\nbob@xn--bcher-kva.example,Bob\n"
        "CAROL@Example.com,Carol\nnot-an-address,X\n",
        "start_at": "2099-01-01T00:00:00Z",
    }
    made = await _json(await client.post("/api/emails/schedule", json=payload, headers=ada), 201)
    assert made["accepted"] == 1 and made["campaign"]["total"] == 1
    assert made["rejected_total"] == 3 and made["suppressed_total"] == 2
    assert [(r["line"], r["reason"]) for r in made["rejected"][:2]] == [
        (3, f"suppressed: manual on {TODAY}"),
        (4, f"suppressed: unsubscribed on {TODAY}"),
    ]
    assert made["rejected"][2]["line"] == 5 and "@" in made["rejected"][2]["reason"]
    rows = await store.pool.fetch(
        "SELECT recipient FROM dispatches WHERE campaign_id = $1", made["campaign"]["id"]
    )
    assert [r["recipient"] for r in rows] == ["ann@example.com"]

    # A JSON list reports its entries' positions the same way.
    listed = {
        **payload,
        "subject": "Hi",
        "recipients_csv": None,
        "recipients": ["ann@example.com", "carol@example.com"],
    }
    made = await _json(await client.post("/api/emails/schedule", json=listed, headers=ada), 201)
    assert [(r["line"], r["value"]) for r in made["rejected"]] == [(2, "carol@example.com")]

    # The compose page's check before scheduling says the same.
    pasted = {"recipients_csv": payload["recipients_csv"]}
    check = await client.post("/api/compose/recipients", json=pasted, headers=ada)
    checked = await _json(check, 200)
    assert checked["valid"] == 1 and checked["suppressed_total"] == 2
    assert [r["line"] for r in checked["rejected"]] == [3, 4, 5]

    # Only suppressed addresses: nothing to schedule, and the answer says why.
    only = {**payload, "recipients_csv": "carol@example.com\n"}
    refused = await _json(await client.post("/api/emails/schedule", json=only, headers=ada), 422)
    assert refused["error"]["code"] == "no_valid_recipients"
    assert refused["error"]["details"]["rejected"][0]["reason"].startswith("suppressed: ")

    # Another owner's campaign to the same addresses is not touched by Ada's list.
    eve = auth(await new_token(store, "eve@example.com"))
    theirs = await client.post("/api/emails/schedule", json=payload, headers=eve)
    assert (await _json(theirs, 201))["accepted"] == 3


async def _queued_anywhere(redis: Redis, dispatch_id: int) -> bool:
    async for key in redis.scan_iter(match="dispatch:*"):
        if await redis.type(key) == b"zset" and await redis.zscore(key, str(dispatch_id)):
            return True
    return False


async def test_an_email_queued_before_its_address_was_suppressed_is_never_sent(
    make_client: Start, store: Store, redis: Redis
) -> None:
    api = await make_client(roles=API)  # no worker yet: both emails wait in the queue
    ada = auth(await new_token(store))
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    payload = {
        "subject": "News",
        "body": "Hello",
        "recipients": ["keep@example.com", "bob@xn--bcher-kva.example"],
        "start_at": later,
    }
    made = await _json(await api.post("/api/emails/schedule", json=payload, headers=ada), 201)
    assert made["accepted"] == 2  # nobody was suppressed when it was scheduled
    campaign = made["campaign"]["id"]
    # Another owner's email to the same address, in the same batches: not Ada's to stop.
    eve = auth(await new_token(store, "eve@example.com"))
    theirs = {**payload, "recipients": ["BOB@xn--bcher-kva.example"]}
    eves = await _json(await api.post("/api/emails/schedule", json=theirs, headers=eve), 201)
    body = {"emails": ["Bob@BÜCHER.example"], "detail": "asked us by phone"}
    await _json(await api.post("/api/suppressions", json=body, headers=ada), 201)

    await make_client(roles=WORKER)  # the emails come due and a worker claims them

    async def both_finished() -> bool:
        statuses = await store.pool.fetch(
            "SELECT status FROM dispatches WHERE campaign_id = $1", campaign
        )
        return all(r["status"] in ("sent", "suppressed") for r in statuses)

    await wait_for(both_finished)

    async def eves_sent() -> bool:
        status = await store.pool.fetchval(
            "SELECT status FROM dispatches WHERE campaign_id = $1", eves["campaign"]["id"]
        )
        return bool(status == "sent")

    await wait_for(eves_sent)
    rows = {
        r["recipient"]: r
        for r in await store.pool.fetch(
            "SELECT id, recipient, status, last_error, finished_at, attempts FROM dispatches "
            "WHERE campaign_id = $1",
            campaign,
        )
    }
    kept, bob = rows["keep@example.com"], rows["bob@bücher.example"]
    assert kept["status"] == "sent"
    assert bob["status"] == "suppressed" and bob["finished_at"] is not None
    assert bob["last_error"] == f"suppressed: manual on {TODAY}"
    captured = await store.pool.fetch(
        "SELECT recipients, dispatch_id FROM captured_messages WHERE owner_id = $1",
        await store.pool.fetchval("SELECT owner_id FROM campaigns WHERE id = $1", campaign),
    )
    assert [c["dispatch_id"] for c in captured] == [kept["id"]]  # never handed to a transport
    assert all("bücher" not in r and "xn--" not in r for c in captured for r in c["recipients"])
    assert not await _queued_anywhere(redis, bob["id"])  # acked, not left to its lease

    async def completed() -> bool:
        status = await store.pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign)
        return bool(status == "completed")

    await wait_for(completed)


async def test_a_big_upload_is_checked_the_same_way(store: Store) -> None:
    """Past IN_THREAD recipients the check works in a thread; its verdicts are the same."""
    ada = await store.ensure_user("ada@example.com", "Ada")
    people = [f"person{n}@example.com" for n in range(IN_THREAD + 5)]
    await store.suppress(
        ada.id, ["person7@example.com", "person20003@example.com"], "manual", "api"
    )
    parsed = from_json(people)
    assert await leave_out_suppressed(store, ada.id, parsed) == 2
    assert [r["line"] for r in parsed.rejected] == [8, 20004]
    assert len(parsed.accepted) == len(people) - 2 and parsed.suppressed == 2
