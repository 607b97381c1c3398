"""A dispatch belongs to a campaign, with the campaign's owner and sender (migration 0005:
one check per statement instead of three foreign keys per row), and goes with it."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from dispatch_engine.store import NewDispatch, Store


async def _campaign(store: Store, email: str) -> tuple[int, int, int]:
    user = await store.ensure_user(email)
    sender = await store.ensure_default_sender(user, transport="capture", hourly_limit=100)
    async with store.pool.acquire() as conn:
        campaign_id = await store.create_campaign(
            conn,
            owner_id=user.id,
            sender_id=sender.id,
            subject="s",
            body_text="b",
            body_html=None,
            start_at=datetime.now(UTC),
            delay_between_ms=0,
            hourly_limit=None,
            total=2,
            idempotency_key=None,
        )
    return campaign_id, user.id, sender.id


async def _copy(store: Store, campaign_id: int, owner_id: int, sender_id: int, tag: str) -> None:
    ids = await store.reserve_dispatch_ids(2)
    rows = [
        NewDispatch(i, f"{tag}{i}@example.com", {}, datetime.now(UTC), f"{tag}{i}".encode())
        for i in ids
    ]
    async with store.pool.acquire() as conn, conn.transaction():
        await store.copy_dispatches(
            conn, campaign_id=campaign_id, owner_id=owner_id, sender_id=sender_id, rows=rows
        )


async def test_dispatches_must_match_their_campaign(store: Store) -> None:
    campaign_id, owner_id, sender_id = await _campaign(store, "ada@example.com")
    _, other_owner, other_sender = await _campaign(store, "alan@example.com")
    await _copy(store, campaign_id, owner_id, sender_id, "ok")
    for wrong in (
        (campaign_id + 1000, owner_id, sender_id),  # no such campaign
        (campaign_id, other_owner, sender_id),  # someone else's
        (campaign_id, owner_id, other_sender),  # another sender
    ):
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await _copy(store, *wrong, "bad")
    count = await store.pool.fetchval("SELECT count(*) FROM dispatches")
    assert count == 2


async def test_deleting_a_campaign_or_its_owner_deletes_the_dispatches(store: Store) -> None:
    first, owner_id, sender_id = await _campaign(store, "ada@example.com")
    second, *_ = await _campaign(store, "ada@example.com")
    await _copy(store, first, owner_id, sender_id, "a")
    await _copy(store, second, owner_id, sender_id, "b")
    await store.pool.execute("DELETE FROM campaigns WHERE id = $1", first)
    assert await store.pool.fetchval("SELECT count(*) FROM dispatches") == 2
    await store.pool.execute("DELETE FROM users WHERE id = $1", owner_id)
    assert await store.pool.fetchval("SELECT count(*) FROM dispatches") == 0
    assert await store.pool.fetchval("SELECT count(*) FROM ledger") == 0
