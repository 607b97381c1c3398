"""The recorder never acknowledges a send PostgreSQL did not record.

Two real failures of the real server (no mock), each while results wait in the recorder:
a trigger the test installs raises on the `sending → sent` update of a dispatch (each
refusal bumps a sequence: `nextval` is not rolled back with the failed transaction, which
is how the test knows the recorder has failed and tried again); and the database going
away, every session ended and no new one let in, while the SMTP server holds its replies
so that the results arrive exactly then.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.queue import ShardKeys, member
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_sink import Sink, SmtpSink

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


@pytest.mark.timeout(120)  # outlasts 8 refusals: 12 s of the recorder's back-off
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
        return refused >= 8 or (refused >= 1 and not await in_redis())

    # Eight refusals: over 12 s of backoff (0.1 s doubling, up to 10 s), longer than a
    # PostgreSQL restart; the recorder must still be holding the result, not give up.
    await wait_for(retried_or_dropped, within=60)
    # The message went out, PostgreSQL refused to record it 8 times: it is still leased.
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


class GatedSink(Sink):
    """The test's SMTP server holds every DATA reply until `gate` opens: the messages are
    on the server, and their results reach the recorder only when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.data_started += 1
        await asyncio.to_thread(self.gate.wait, 60)
        with self.lock:
            self.messages.append(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


async def test_postgresql_away_while_results_wait_in_the_recorder(
    make_client: Start,
    settings: Settings,
    store: Store,
    redis: Redis,
    servers: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert settings.database_url
    database = settings.database_url.rsplit("/", 1)[1]
    smtp = SmtpSink()
    smtp.sink = GatedSink()
    smtp.controller.handler = smtp.sink
    with smtp:
        client = await make_client(
            replace(settings, transport="smtp").with_environ(
                SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port), SMTP_TLS="none"
            )
        )
        payload = {
            "subject": "s",
            "body": "b",
            "recipients": [f"w{i}@example.com" for i in range(3)],
        }
        headers = auth(await new_token(store))
        response = await client.post("/api/emails/schedule", json=payload, headers=headers)
        assert response.status == 201
        sender = (await response.json())["campaign"]["sender"]["id"]
        ids = [r["id"] for r in await store.pool.fetch("SELECT id FROM dispatches")]

        async def all_on_the_server() -> bool:
            return smtp.sink.data_started == 3

        await wait_for(all_on_the_server)
        # PostgreSQL goes away: every session of the database is ended and no new one is
        # let in (what clients see while a server restarts).
        admin = await asyncpg.connect(servers[0])
        try:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database,
            )
            caplog.clear()
            smtp.sink.gate.set()  # the three results now wait in the recorder

            async def leased() -> list[bool]:
                return [await redis.hexists(ShardKeys(0).key("lease"), member(i)) for i in ids]

            async def retried_or_acked() -> bool:
                failures = [r for r in caplog.records if "results failed; retrying" in r.message]
                return len(failures) >= 2 or not all(await leased())

            await wait_for(retried_or_acked)
            assert await leased() == [True] * 3, "a result PostgreSQL did not record was acked"
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await admin.close()

        async def all_sent() -> bool:
            try:
                sent = await store.pool.fetchval(
                    "SELECT count(*) FROM dispatches WHERE status = 'sent'"
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return False  # the test's own pool reconnects too
            return bool(sent == 3)

        await wait_for(all_sent)
        ledger = await store.pool.fetch("SELECT state, count(*) FROM ledger GROUP BY state")
        assert {r["state"]: r["count"] for r in ledger} == {"sent": 3}
        assert sorted(smtp.sink.message_ids().values()) == [1, 1, 1], "each received once"
        assert await queue_is_empty(redis, sender)


async def queue_is_empty(redis: Redis, sender: int) -> bool:
    keys = ShardKeys(0)
    return not await redis.hlen(keys.key("lease")) and not await redis.zcard(keys.sender(sender))
