"""A provider's "slow down" parks its sender in the queue until the time the provider gave:
none of the sender's other emails is claimed before then."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from dispatch_engine.config import Settings
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.plugin_dirs import events, plugin_dir
from .test_hooks_events import _picky_sender, _schedule

# Says "too many, retry in 10 minutes" to every message.
TOO_MANY = """
from dispatch_engine.transport import SenderRateLimitedError, TransportSpec

class Picky:
    def __init__(self, context):
        pass

    async def send(self, message):
        raise SenderRateLimitedError("421 4.7.0 too many messages, slow down", 600)

    async def close(self):
        pass

@hookimpl
def register_transports(settings):
    return [TransportSpec("picky", Picky)]

@hookimpl
def sender_limited(sender_id, resume_at_ms, reason):
    record("sender_limited", resume_at_ms=resume_at_ms)
"""


async def test_a_provider_saying_too_many_parks_the_sender_until_the_time_it_gave(
    make_client: Start, settings: Settings, store: Store, queue: RedisQueue, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, picky=TOO_MANY)
    client = await make_client(replace(settings, plugins_dir=folder))
    headers = auth(await new_token(store))
    sender = await _picky_sender(client, headers)
    asked = time.time()
    await _schedule(client, headers, sender=sender, recipients=["a@example.com"])

    async def retry_recorded() -> bool:  # the sender is parked before the retry is recorded
        sql = "SELECT last_error IS NOT NULL AND status = 'scheduled' FROM dispatches"
        return bool(await store.pool.fetchval(sql))

    await wait_for(retry_recorded)
    until = (await queue.sender_state(sender))["parked_until_ms"]
    assert until is not None, "not parked"
    # Parked for the provider's 10 minutes from about now (not a moment in the past).
    assert asked + 590 < until / 1000 < time.time() + 610
    # and `sender_limited` says until when, in ms, as the queue has it
    assert [e["resume_at_ms"] for e in events(folder, "sender_limited")] == [until]


REFUSED = """
from dispatch_engine.transport import SenderAuthError, TransportSpec

class Picky:
    def __init__(self, context):
        pass

    async def send(self, message):
        raise SenderAuthError("535 5.7.8 authentication failed")

    async def close(self):
        pass

@hookimpl
def register_transports(settings):
    return [TransportSpec("picky", Picky)]
"""


async def test_an_email_whose_sender_login_was_refused_waits_its_back_off(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, picky=REFUSED)
    # Ten minutes of back-off after the first refusal: far beyond any delay here.
    client = await make_client(replace(settings, plugins_dir=folder, retry_base_ms=600_000))
    headers = auth(await new_token(store))
    sender = await _picky_sender(client, headers)
    await _schedule(client, headers, sender=sender, recipients=["a@example.com"])

    async def waiting() -> bool:
        sql = "SELECT last_error IS NOT NULL AND status = 'scheduled' FROM dispatches"
        return bool(await store.pool.fetchval(sql))

    await wait_for(waiting)
    row = await store.pool.fetchrow("SELECT scheduled_at, attempts FROM dispatches")
    assert row is not None
    assert row["scheduled_at"].timestamp() > time.time() + 400, "due again at once"
    assert row["attempts"] == 0  # the account's fault, not the email's: no attempt spent


async def test_emails_held_by_the_hourly_limit_say_why_while_their_sender_is_parked(
    make_client: Start, settings: Settings, store: Store, queue: RedisQueue
) -> None:
    client = await make_client(replace(settings, max_emails_per_hour=1, rate_window_seconds=3600))
    headers = auth(await new_token(store))
    recipients = ["a@example.com", "b@example.com", "c@example.com"]
    await _schedule(client, headers, recipients=recipients)
    sender = await store.pool.fetchval("SELECT sender_id FROM campaigns")

    async def parked() -> bool:  # the held emails are marked before the sender is parked
        return (await queue.sender_state(sender))["parked_until_ms"] is not None

    await wait_for(parked)
    rows = await store.pool.fetch("SELECT status, wait_reason FROM dispatches ORDER BY id")
    assert [r["status"] for r in rows].count("sent") == 1
    # Those the parking held back (the others were not claimed yet) say it is the limit.
    held = [r["wait_reason"] for r in rows if r["status"] == "rate_limited"]
    assert held and set(held) == {"sender_window"}, rows


BROKEN = """
from dispatch_engine.transport import TransportSpec

class Picky:
    def __init__(self, context):
        pass

    async def send(self, message):
        raise RuntimeError("a bug in the transport plugin")

    async def close(self):
        pass

@hookimpl
def register_transports(settings):
    return [TransportSpec("picky", Picky)]
"""


async def test_a_transport_plugin_raising_a_bug_fails_that_email_and_the_worker_goes_on(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, picky=BROKEN)
    client = await make_client(replace(settings, plugins_dir=folder))
    headers = auth(await new_token(store))
    sender = await _picky_sender(client, headers)
    broken = await _schedule(client, headers, sender=sender, recipients=["a@example.com"])
    fine = await _schedule(client, headers, recipients=["b@example.com"])

    async def finished() -> bool:
        sql = "SELECT count(*) FROM dispatches WHERE status IN ('sent', 'failed')"
        return int(await store.pool.fetchval(sql)) == 2

    await wait_for(finished)
    rows = await store.pool.fetch("SELECT campaign_id, status, last_error FROM dispatches")
    by_campaign = {r["campaign_id"]: r for r in rows}
    assert by_campaign[broken]["status"] == "failed"
    assert by_campaign[broken]["last_error"] == "RuntimeError: a bug in the transport plugin"
    assert by_campaign[fine]["status"] == "sent"
