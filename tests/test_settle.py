"""Settling recorded results in Redis: what PostgreSQL recorded is what Redis then does.

Through the public path (the schedule API, the worker, a real SMTP server answering per
recipient); the test reads the queue's keys on the suite's real Redis.
"""

from __future__ import annotations

import time
from dataclasses import replace

from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.queue import ShardKeys, member
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_sink import SmtpSink
from .test_delivery import smtp_settings


async def test_a_retried_email_waits_in_redis_until_the_retry_time_postgresql_recorded(
    make_client: Start, store: Store, settings: Settings, redis: Redis
) -> None:
    with SmtpSink() as smtp:
        smtp.sink.faults["later@example.com"] = ("451 4.3.0 temporary failure", 99)
        # Ten minutes of back-off: the retry is far from now, whatever the machine's load.
        paced = replace(smtp_settings(settings, smtp.port), retry_base_ms=600_000)
        client = await make_client(paced)
        payload = {"subject": "s", "body": "b", "recipients": ["later@example.com"]}
        response = await client.post(
            "/api/emails/schedule", json=payload, headers=auth(await new_token(store))
        )
        assert response.status == 201
        sender = (await response.json())["campaign"]["sender"]["id"]
        dispatch_id = await store.pool.fetchval("SELECT id FROM dispatches")
        queued = ShardKeys(0).sender(sender)

        async def retry_settled_or_failed() -> bool:
            row = await store.pool.fetchrow("SELECT status, attempts FROM dispatches")
            if row is not None and row["status"] == "failed":
                return True  # retried at once until it gave up: the assertions say so
            recorded = row is not None and row["status"] == "scheduled" and row["attempts"] == 1
            return recorded and await redis.zscore(queued, member(dispatch_id)) is not None

        await wait_for(retry_settled_or_failed)
        assert await store.pool.fetchval("SELECT status FROM dispatches") == "scheduled"
        due_ms = await redis.zscore(queued, member(dispatch_id))
        retry_at = await store.pool.fetchval("SELECT scheduled_at FROM dispatches")
        # Queued again for exactly the time PostgreSQL shows (to the millisecond), not now:
        # the first retry waits its back-off, 10 minutes ± 20 % (far beyond any delay here).
        assert due_ms == int(retry_at.timestamp() * 1000)
        assert retry_at.timestamp() > time.time() + 400
        assert smtp.sink.message_ids() == {}
