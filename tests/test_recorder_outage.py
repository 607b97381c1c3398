"""The recorder never acknowledges a send PostgreSQL did not record.

PostgreSQL itself refuses the recorder's write: a trigger the test installs raises on the
`sending → sent` update of a dispatch, so `record_outcomes` really fails on the real server
(no mock) while the result waits in the recorder. Each refusal bumps a sequence (`nextval`
is not rolled back with the failed transaction), which is how the test knows the recorder
has tried, failed and tried again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from dispatch_engine.queue import ShardKeys, member
from dispatch_engine.store import Store

from .helpers import auth, new_token, wait_for

Start = Callable[..., Awaitable[TestClient]]

REFUSE_SENT = """
CREATE SEQUENCE record_refusals;
CREATE FUNCTION refuse_sent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('record_refusals');
    RAISE EXCEPTION 'could not extend file (test: disk full)' USING ERRCODE = '53100';
END $$;
CREATE TRIGGER refuse_sent BEFORE UPDATE ON dispatches FOR EACH ROW
    WHEN (OLD.status = 'sending' AND NEW.status = 'sent') EXECUTE FUNCTION refuse_sent();
"""
ALLOW_SENT = """
DROP TRIGGER IF EXISTS refuse_sent ON dispatches;
DROP FUNCTION IF EXISTS refuse_sent();
DROP SEQUENCE IF EXISTS record_refusals;
"""


@pytest.fixture
async def refusing_store(store: Store) -> AsyncIterator[Store]:
    """The store, with PostgreSQL refusing to mark any dispatch sent until `ALLOW_SENT`."""
    await store.pool.execute(REFUSE_SENT)
    try:
        yield store
    finally:
        await store.pool.execute(ALLOW_SENT)


async def _refusals(store: Store) -> int:
    row = await store.pool.fetchrow("SELECT last_value, is_called FROM record_refusals")
    assert row is not None
    return int(row["last_value"]) if row["is_called"] else 0


async def test_a_send_is_not_acked_until_postgresql_records_it(
    make_client: Start, refusing_store: Store, redis: Redis
) -> None:
    store = refusing_store
    client = await make_client()
    payload = {"subject": "s", "body": "b", "recipients": ["once@example.com"]}
    response = await client.post(
        "/api/emails/schedule", json=payload, headers=auth(await new_token(store))
    )
    assert response.status == 201
    created = (await response.json())["campaign"]
    campaign, keys = created["id"], ShardKeys(0)
    dispatch_id = await store.pool.fetchval("SELECT id FROM dispatches")
    lease_key, queued_key = keys.key("lease"), keys.sender(created["sender"]["id"])

    async def in_redis() -> bool:
        leased = await redis.hexists(lease_key, member(dispatch_id))
        return bool(leased or await redis.zscore(queued_key, member(dispatch_id)) is not None)

    async def retried_or_dropped() -> bool:
        refused = await _refusals(store)
        return refused >= 2 or (refused >= 1 and not await in_redis())

    await wait_for(retried_or_dropped)
    # The message went out, PostgreSQL refused to record it twice: it is still leased.
    assert await store.pool.fetchval("SELECT sum(deliveries) FROM captured_messages") == 1
    assert await redis.hexists(lease_key, member(dispatch_id)), "acked although unrecorded"
    assert await store.pool.fetchval("SELECT status FROM dispatches") == "sending"

    await store.pool.execute(ALLOW_SENT)  # PostgreSQL takes writes again

    async def completed() -> bool:
        status = await store.pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign)
        return bool(status == "completed")

    await wait_for(completed)
    assert await store.pool.fetchval("SELECT status FROM dispatches") == "sent"
    ledger = await store.pool.fetch("SELECT state FROM ledger")
    assert [r["state"] for r in ledger] == ["sent"]
    assert await store.pool.fetchval("SELECT sum(deliveries) FROM captured_messages") == 1
    assert not await in_redis(), "once recorded, the lease is acked"
