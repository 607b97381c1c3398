"""Recovery from PostgreSQL when Redis lost everything, and a graceful worker stop."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.queue import RedisQueue
from dispatch_engine.redis_keys import SWEEPER_MARKER_KEY
from dispatch_engine.store import Store
from dispatch_engine.sweeper import Sweeper

from .support.app_client import AppClient, Start
from .support.helpers import auth, just_after_next_window, new_token, wait_for
from .support.processes import Proc
from .support.smtp_sink import SmtpSink


async def test_emails_only_in_postgresql_are_requeued_at_start(
    make_client: Start, store: Store, redis: Redis
) -> None:
    api = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    payload = {"subject": "s", "body": "b", "recipients": [f"x{i}@example.com" for i in range(40)]}
    assert (await api.post("/api/emails/schedule", json=payload, headers=headers)).status == 201
    await redis.flushall()  # Redis lost everything (no persistence, or an operator's mistake)

    await make_client(roles=frozenset({"worker", "sweeper"}))

    async def all_sent() -> bool:
        count = await store.pool.fetchval("SELECT count(*) FROM dispatches WHERE status='sent'")
        return bool(count == 40)

    await wait_for(all_sent)
    deliveries = await store.pool.fetchval("SELECT sum(deliveries) FROM captured_messages")
    assert deliveries == 40


async def test_sigterm_lets_in_flight_sends_finish_and_records_them(
    make_client: Start, settings: Settings, store: Store, env: dict[str, str], tmp_path: Path
) -> None:
    with SmtpSink() as smtp:
        smtp.sink.data_delay_s = 1.0  # every DATA takes a second: sends are in flight for long
        worker_env = env | {
            "DISPATCH_TRANSPORT": "smtp",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_TLS": "none",
            "SMTP_POOL_SIZE": "8",
        }
        worker = Proc(["run", "--role", "worker"], worker_env, tmp_path / "worker.log")
        worker.wait_for_output(r"Running worker on")
        api = await make_client(replace(settings, transport="smtp"), frozenset({"api"}))
        headers = auth(await new_token(store))
        payload: dict[str, Any] = {
            "subject": "s",
            "body": "b",
            "recipients": [f"y{i}@example.com" for i in range(40)],
        }
        assert (await api.post("/api/emails/schedule", json=payload, headers=headers)).status == 201

        async def sending() -> bool:
            return smtp.sink.data_started >= 4

        try:
            await wait_for(sending, within=10)
        except AssertionError:
            raise AssertionError(worker.output()) from None
        assert await asyncio.to_thread(worker.stop) == 0, worker.output()  # SIGTERM
        started = smtp.sink.data_started
        rows = await store.pool.fetch("SELECT status, count(*) FROM dispatches GROUP BY status")
        by_status = {r["status"]: r["count"] for r in rows}
        received = smtp.sink.message_ids()
        # Every email the server accepted is recorded as sent; nothing is left half-done.
        assert by_status.get("sent", 0) == len(received) == started
        assert by_status.get("sending", 0) == 0
        assert by_status.get("sent", 0) + by_status.get("scheduled", 0) == 40


async def test_a_campaign_its_process_never_queued_is_queued_by_the_next_sweep(
    make_client: Start, store: Store, redis: Redis, queue: RedisQueue
) -> None:
    api = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    payload = {
        "subject": "s",
        "body": "b",
        "start_at": "2099-01-01T00:00:00Z",
        "recipients": [f"o{i}@example.com" for i in range(25)],
    }
    response = await api.post("/api/emails/schedule", json=payload, headers=headers)
    campaign = (await response.json())["campaign"]["id"]
    sender = (await response.json())["campaign"]["sender"]["id"]
    # As if the API died between its commit and its enqueue: rows in PostgreSQL only.
    ids = [r["id"] for r in await store.pool.fetch("SELECT id FROM dispatches")]
    await queue.remove(sender, ids)
    await store.pool.execute(
        "UPDATE campaigns SET enqueued_at = NULL, updated_at = now() - interval '1 minute'"
    )
    await redis.set(SWEEPER_MARKER_KEY, "1")  # Redis itself lost nothing: no full re-queue
    sweeper = Sweeper(store, queue, redis, interval_s=1, max_stalls=5)
    assert await sweeper.sweep() == (0, 25)
    assert await queue.depth(sender) == 25
    assert await store.pool.fetchval(
        "SELECT enqueued_at IS NOT NULL FROM campaigns WHERE id = $1", campaign
    )
    assert await sweeper.sweep() == (0, 0), "the next sweep has nothing left to do"


async def test_the_sweeper_deletes_long_expired_sessions(
    store: Store, redis: Redis, queue: RedisQueue
) -> None:
    user = await store.ensure_user("old@example.com")
    for token, expires in (
        (b"old", "now() - interval '30 days'"),
        (b"live", "now() + interval '1 day'"),
    ):
        await store.pool.execute(
            f"INSERT INTO sessions (user_id, token_hash, provider, expires_at)"
            f" VALUES ($1, $2, 'dev', {expires})",
            user.id,
            token,
        )
    await Sweeper(store, queue, redis, interval_s=1, max_stalls=5).sweep()
    left = await store.pool.fetch("SELECT token_hash FROM sessions")
    assert [bytes(r["token_hash"]) for r in left] == [b"live"]


async def _held_back(store: Store, campaign: int) -> dict[str, int]:
    rows = await store.pool.fetch(
        "SELECT status, count(*) FROM dispatches WHERE campaign_id = $1 GROUP BY status", campaign
    )
    return {r["status"]: r["count"] for r in rows}


async def _schedule_limited(api: AppClient, store: Store, payload: dict[str, Any]) -> int:
    headers = auth(await new_token(store))
    response = await api.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    campaign: int = (await response.json())["campaign"]["id"]

    async def limited() -> bool:
        return await _held_back(store, campaign) == {"sent": 4, "rate_limited": 4}

    await wait_for(limited)
    return campaign


async def _completed(store: Store, campaign: int) -> None:
    async def done() -> bool:
        status = await store.pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign)
        return bool(status == "completed")

    await wait_for(done)
    assert await _held_back(store, campaign) == {"sent": 8}
    deliveries = await store.pool.fetch("SELECT deliveries FROM captured_messages")
    assert len(deliveries) == 8 and {r["deliveries"] for r in deliveries} == {1}


async def test_emails_held_back_by_the_hourly_limit_are_requeued_after_a_flushall(
    make_client: Start, settings: Settings, store: Store, redis: Redis
) -> None:
    api = await make_client()
    payload = {"subject": "s", "body": "b", "hourly_limit": 4,
               "recipients": [f"r{i}@example.com" for i in range(8)]}  # fmt: skip
    campaign = await _schedule_limited(api, store, payload)
    # Redis lost everything, the hour's count with it: the sweeper's re-queue is all that
    # brings the four held-back emails back, and they may go at once.
    await redis.flushall()
    await _completed(store, campaign)


async def test_resuming_a_paused_campaign_requeues_its_rate_limited_emails(
    make_client: Start, settings: Settings, store: Store
) -> None:
    window = 4  # seconds: the four held back go when the next window opens
    api = await make_client(replace(settings, rate_window_seconds=window))
    payload = {"subject": "s", "body": "b", "hourly_limit": 4,
               "start_at": just_after_next_window(window),
               "recipients": [f"p{i}@example.com" for i in range(8)]}  # fmt: skip
    campaign = await _schedule_limited(api, store, payload)
    headers = auth(await new_token(store))
    assert (await api.post(f"/api/campaigns/{campaign}/pause", headers=headers)).status == 200
    assert await _held_back(store, campaign) == {"sent": 4, "rate_limited": 4}, (
        "the pause must land within the window, while four are held back"
    )
    assert (await api.post(f"/api/campaigns/{campaign}/resume", headers=headers)).status == 200
    await _completed(store, campaign)
