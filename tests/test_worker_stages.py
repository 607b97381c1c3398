"""The worker's stages: where a promise is one stage's arithmetic, on its own (each owner's
fair share of the send slots, share.py; the retry back-off, send.py); else a real worker."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from dispatch_engine.models import CampaignStatus, DispatchJob, DispatchStatus
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import Store
from dispatch_engine.worker.send import retry_delay_s
from dispatch_engine.worker.share import OwnerShare

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for


def _job(dispatch_id: int, owner_id: int) -> DispatchJob:
    return DispatchJob(
        id=dispatch_id,
        campaign_id=owner_id,
        sender_id=owner_id,
        owner_id=owner_id,
        recipient=f"r{dispatch_id}@example.com",
        vars={},
        status=DispatchStatus.SCHEDULED,
        campaign_status=CampaignStatus.RUNNING,
        idempotency_key=bytes(16),
        attempts=0,
        scheduled_at=datetime.now(UTC),
    )


def _ids(jobs: list[DispatchJob]) -> list[int]:
    return [job.id for job in jobs]


def test_an_owner_alone_may_use_every_send_slot() -> None:
    share = OwnerShare(slots=4)
    go, held = share.admit([_job(i, owner_id=1) for i in range(1, 7)])
    assert _ids(go) == [1, 2, 3, 4] and _ids(held) == [5, 6]
    assert not share.freed.is_set()  # held back: the claim loop waits for a slot to free


def test_two_active_owners_get_half_the_slots_each_counting_sends_in_flight() -> None:
    share = OwnerShare(slots=4)
    share.started(1)  # owner 1 already has a send in flight
    go, held = share.admit([_job(i, owner_id=1 + i % 2) for i in range(1, 9)])
    # Owner 1 may add one to its send in flight, owner 2 two; the batch's order is kept.
    assert _ids(go) == [1, 2, 3] and _ids(held) == [4, 5, 6, 7, 8]
    assert share.cap() == 2


def test_a_finished_send_frees_its_slot_for_its_owner() -> None:
    share = OwnerShare(slots=2)
    share.started(1)
    share.started(1)
    assert _ids(share.admit([_job(1, owner_id=1)])[0]) == []
    share.finished(1)
    assert share.freed.is_set()
    assert share.in_flight[1] == 1
    assert _ids(share.admit([_job(2, owner_id=1)])[0]) == [2]
    share.finished(1)
    assert 1 not in share.in_flight  # no owner with nothing in flight stays counted


def test_an_owner_quiet_for_the_window_stops_counting_against_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("dispatch_engine.worker.share.time.monotonic", lambda: clock[0])
    share = OwnerShare(slots=4, window_s=2.0)
    share.admit([_job(1, owner_id=2)])  # owner 2 seen once, nothing started
    clock[0] += 2.0  # exactly the window: still active
    assert _ids(share.admit([_job(i, owner_id=1) for i in range(10, 14)])[0]) == [10, 11]
    clock[0] += 0.5  # owner 2 quiet for longer than the window: owner 1 alone
    assert _ids(share.admit([_job(i, owner_id=1) for i in range(20, 24)])[0]) == [
        20, 21, 22, 23,
    ]  # fmt: skip


def test_an_owner_with_a_send_in_flight_stays_active_past_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("dispatch_engine.worker.share.time.monotonic", lambda: clock[0])
    share = OwnerShare(slots=4, window_s=2.0)
    share.started(2)  # a slow send of owner 2's
    clock[0] += 60.0
    assert _ids(share.admit([_job(i, owner_id=1) for i in range(1, 5)])[0]) == [1, 2]


def test_a_claim_waits_for_enough_free_slots_to_be_worth_it() -> None:
    share = OwnerShare(slots=50)
    # Alone: half a batch and one (fewer, bigger claims), never more than the slots allow.
    assert share.worth_claiming(20) == 11
    assert share.worth_claiming(500) == 26
    share.admit([_job(1, owner_id=1)])
    assert share.worth_claiming(500) == 26  # one owner active is still alone
    share.admit([_job(2, owner_id=2)])
    assert share.worth_claiming(500) == 12  # two: half of each one's 25 slots
    share.admit([_job(3, owner_id=3)])
    # Three active owners: half an owner's share (50 // 3 = 16), so each share is claimable.
    assert share.worth_claiming(500) == 8
    assert share.worth_claiming(6) == 4  # a small batch: half of it and one
    crowded = OwnerShare(slots=4)
    crowded.admit([_job(i, owner_id=i) for i in range(1, 6)])
    assert crowded.worth_claiming(500) == 1  # never less than one free slot


def test_retries_back_off_exponentially_with_a_fifth_of_jitter_up_to_an_hour() -> None:
    random.seed(12)
    for attempt, base_s in [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0)]:
        delays = [retry_delay_s(attempt, 500) for _ in range(200)]
        assert base_s * 0.8 <= min(delays) and max(delays) <= base_s * 1.2, attempt
        assert max(delays) - min(delays) > base_s * 0.3, "jittered, not fixed"
    capped = [retry_delay_s(40, 500) for _ in range(200)]
    assert min(capped) >= 3600 * 0.8 and max(capped) <= 3600 * 1.2


async def test_a_queued_id_whose_email_is_gone_is_dropped_from_redis(
    make_client: Start, queue: RedisQueue
) -> None:
    """An id PostgreSQL no longer has (its campaign deleted) is claimed once and acked: it
    neither stays leased (holding a send slot, renewed for ever) nor comes back."""
    await make_client()
    seconds, micros = await queue.redis.time()
    await queue.enqueue(5, [(987_654, int(seconds) * 1000 + int(micros) // 1000 - 1)])

    async def gone() -> bool:
        return await queue.depth(5) == 0 and await queue.leased_count() == 0

    await wait_for(gone, within=15)


async def test_a_claimed_email_of_a_paused_campaign_is_dropped_unsent(
    make_client: Start, queue: RedisQueue, store: Store
) -> None:
    """Pausing takes a campaign's ids out of Redis, but one claimed just before (or queued
    again by a sweep) still reaches the worker: it must not be sent."""
    client = await make_client()
    headers = auth(await new_token(store))
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    payload = {"subject": "s", "body": "b", "recipients": ["p@example.com"], "start_at": later}
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    created = (await response.json())["campaign"]
    paused = await client.post(f"/api/campaigns/{created['id']}/pause", headers=headers)
    assert paused.status == 200
    sender, dispatch_id = (
        created["sender"]["id"],
        await store.pool.fetchval("SELECT id FROM dispatches"),
    )
    seconds, micros = await queue.redis.time()
    await queue.enqueue(sender, [(dispatch_id, int(seconds) * 1000 + int(micros) // 1000 - 1)])

    async def claimed_and_dropped() -> bool:
        return await queue.depth(sender) == 0 and await queue.leased_count() == 0

    await wait_for(claimed_and_dropped, within=15)
    assert await store.pool.fetchval("SELECT count(*) FROM captured_messages") == 0
    assert await store.pool.fetchval("SELECT status FROM dispatches") == "scheduled"
