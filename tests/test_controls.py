"""Campaign controls on the real app: pause, resume, cancel, retry-failed; and /api/stats."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_sink import SmtpSink


async def _counts(client: AppClient, campaign: int, token: str) -> dict[str, Any]:
    response = await client.get(f"/api/campaigns/{campaign}", headers=auth(token))
    body: dict[str, Any] = await response.json()
    return body


async def _post(client: AppClient, path: str, token: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(path, headers=auth(token))
    return response.status, await response.json()


async def test_pause_stops_sending_and_resume_never_resends(
    make_client: Start, store: Store, queue: RedisQueue
) -> None:
    client = await make_client()
    token = await new_token(store)
    payload = {
        "subject": "s",
        "body": "b",
        "delay_between_ms": 50,
        "recipients": [f"p{i}@example.com" for i in range(60)],
    }
    created = await (
        await client.post("/api/emails/schedule", json=payload, headers=auth(token))
    ).json()
    campaign, sender = created["campaign"]["id"], created["campaign"]["sender"]["id"]

    async def some_sent() -> bool:
        return (await _counts(client, campaign, token))["counts"]["sent"] >= 10

    await wait_for(some_sent)
    status, body = await _post(client, f"/api/campaigns/{campaign}/pause", token)
    assert status == 200 and body["campaign"]["status"] == "paused"

    async def settled() -> bool:
        # A worker may hold an id it claimed just before the pause: the pacer gives it back
        # (the 50 ms gap) after the pause took the queued ids out, so it sits in Redis until
        # it is claimed again and dropped, unsent, because the campaign is paused. Settled is
        # when nothing of the campaign is in flight, leased or queued.
        if (await _counts(client, campaign, token))["counts"]["sending"]:
            return False
        return await queue.depth(sender) == 0 and await queue.leased_count() == 0

    await wait_for(settled)
    paused_sent = (await _counts(client, campaign, token))["counts"]["sent"]
    assert paused_sent < 60

    status, body = await _post(client, f"/api/campaigns/{campaign}/pause", token)
    assert status == 409 and body["error"]["code"] == "invalid_state"
    # Nothing of the campaign is left to claim: no new email started while paused.
    assert (await _counts(client, campaign, token))["counts"]["sent"] == paused_sent
    assert await queue.depth(sender) == 0
    status, body = await _post(client, f"/api/campaigns/{campaign}/resume", token)
    assert status == 200 and body["campaign"]["status"] == "running"

    async def all_sent() -> bool:
        return (await _counts(client, campaign, token))["status"] == "completed"

    await wait_for(all_sent)
    detail = await _counts(client, campaign, token)
    assert detail["counts"]["sent"] == 60
    deliveries = await store.pool.fetch("SELECT deliveries FROM captured_messages")
    assert len(deliveries) == 60 and {r["deliveries"] for r in deliveries} == {1}


async def test_cancel_stops_what_has_not_started(make_client: Start, store: Store) -> None:
    client = await make_client()
    token = await new_token(store)
    payload = {
        "subject": "s",
        "body": "b",
        "start_at": "2099-01-01T00:00:00Z",
        "recipients": [f"c{i}@example.com" for i in range(30)],
    }
    created = await (
        await client.post("/api/emails/schedule", json=payload, headers=auth(token))
    ).json()
    campaign = created["campaign"]["id"]
    status, body = await _post(client, f"/api/campaigns/{campaign}/cancel", token)
    assert status == 200 and body["affected"] == 30
    assert body["campaign"]["status"] == "cancelled"
    assert body["campaign"]["counts"]["cancelled"] == 30
    status, body = await _post(client, f"/api/campaigns/{campaign}/resume", token)
    assert status == 409
    other = await new_token(store, "eve@example.com")
    status, body = await _post(client, f"/api/campaigns/{campaign}/cancel", other)
    assert status == 404


async def test_retry_failed_sends_only_the_failed_again(
    make_client: Start, settings: Settings, store: Store
) -> None:
    with SmtpSink() as smtp:
        # A refusal that is not the address's (a bounce is never retried: it is suppressed).
        smtp.sink.faults["gone@example.com"] = ("554 5.7.1 rejected by policy", 1)
        client = await make_client(
            replace(settings, transport="smtp").with_environ(
                SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port), SMTP_TLS="none"
            )
        )
        token = await new_token(store)
        recipients = ["gone@example.com", *(f"ok{i}@example.com" for i in range(5))]
        created = await (
            await client.post(
                "/api/emails/schedule",
                json={"subject": "s", "body": "b", "recipients": recipients},
                headers=auth(token),
            )
        ).json()
        campaign = created["campaign"]["id"]

        async def completed() -> bool:
            return (await _counts(client, campaign, token))["status"] == "completed"

        await wait_for(completed)
        assert (await _counts(client, campaign, token))["counts"]["failed"] == 1
        status, body = await _post(client, f"/api/campaigns/{campaign}/retry-failed", token)
        assert status == 200 and body["affected"] == 1
        await wait_for(completed)
        assert (await _counts(client, campaign, token))["counts"]["sent"] == 6
        received = smtp.sink.message_ids()
        assert len(received) == 6 and max(received.values()) == 1


async def test_stats_show_pace_backlog_and_parking(
    make_client: Start, settings: Settings, store: Store, redis: Redis
) -> None:
    client = await make_client(replace(settings, max_emails_per_hour=3, rate_window_seconds=60))
    token = await new_token(store)
    payload = {"subject": "s", "body": "b", "recipients": [f"t{i}@example.com" for i in range(8)]}
    assert (
        await client.post("/api/emails/schedule", json=payload, headers=auth(token))
    ).status == 201

    async def parked() -> bool:  # and the three granted sends recorded (a group commit later)
        stats = await (await client.get("/api/stats", headers=auth(token))).json()
        return stats["senders"][0]["parked_until"] is not None and stats["dispatches"]["sent"] == 3

    await wait_for(parked)
    stats = await (await client.get("/api/stats", headers=auth(token))).json()
    sender = stats["senders"][0]
    assert sender["hourly_limit"] == 3
    assert sender["sent_this_window"] == 3
    assert sender["queue_depth"] == 5
    assert sender["window_seconds"] == 60
    assert stats["dispatches"]["sent"] == 3


COMPLETED_PLUGIN = """
from pathlib import Path
from dispatch_engine import hookimpl

@hookimpl
def campaign_completed(campaign_id, owner_id):
    with open(Path(__file__).with_name("completed.log"), "a") as log:
        log.write(f"{campaign_id} {owner_id}\\n")
"""


async def test_resuming_a_campaign_that_finished_while_paused_completes_it(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "record_completed.py").write_text(COMPLETED_PLUGIN)
    client = await make_client(replace(settings, plugins_dir=plugins), frozenset({"api"}))
    token = await new_token(store)
    payload = {
        "subject": "s",
        "body": "b",
        "recipients": ["last@example.com"],
        "start_at": "2099-01-01T00:00:00Z",
    }
    created = await (
        await client.post("/api/emails/schedule", json=payload, headers=auth(token))
    ).json()
    campaign = created["campaign"]["id"]
    assert (await _post(client, f"/api/campaigns/{campaign}/pause", token))[0] == 200
    # Its last email finished in flight while the campaign was paused.
    await store.pool.execute("UPDATE dispatches SET status = 'sent', finished_at = now()")
    status, body = await _post(client, f"/api/campaigns/{campaign}/resume", token)
    assert status == 200 and body["campaign"]["status"] == "completed"
    owner = await store.pool.fetchval("SELECT owner_id FROM campaigns")
    assert (plugins / "completed.log").read_text().split() == [str(campaign), str(owner)]
