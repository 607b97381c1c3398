"""Auto-pause: a campaign whose hard-bounce rate passes DISPATCH_PAUSE_BOUNCE_PERCENT (after
DISPATCH_PAUSE_MIN_SENT sends) pauses itself, says why (API, page, hook, notify), and sends
nothing more until a user resumes it; a resume clears the reason and starts a fresh count."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.config import Settings
from dispatch_engine.consent.feedback import FeedbackEvent, FeedbackKind
from dispatch_engine.consent.policy import FeedbackPolicy, pause_reason
from dispatch_engine.consent.settings import ConsentSettings
from dispatch_engine.queue import RedisQueue, dispatch_id_of
from dispatch_engine.store import Store
from dispatch_engine.store.policy import CampaignRates
from dispatch_engine.web.app_keys import FEEDBACK

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for
from .support.http_receiver import Receiver
from .support.plugin_dirs import events, plugin_dir
from .support.smtp_peer import SmtpPeer
from .support.web_session import dev_login

RECORD_PAUSED = """
@hookimpl
def campaign_paused(campaign_id, owner_id, reason, settings):
    record("campaign_paused", campaign_id=campaign_id, owner_id=owner_id, reason=reason)
"""
REASON = re.compile(
    r"hard-bounce rate (\d+\.\d) % \((\d+) of (\d+) sent\) is over 5 % "
    r"\(DISPATCH_PAUSE_BOUNCE_PERCENT\)"
)
EMAILS = 400


def test_a_rate_pauses_only_over_its_threshold_and_after_the_minimum() -> None:
    settings = ConsentSettings()  # 5 %, 0.3 %, after 100
    assert pause_reason(CampaignRates("running", 100, 5, 0), settings) is None  # 5 % is not over
    assert pause_reason(CampaignRates("running", 100, 6, 0), settings) == (
        "hard-bounce rate 6.0 % (6 of 100 sent) is over 5 % (DISPATCH_PAUSE_BOUNCE_PERCENT)"
    )
    assert pause_reason(CampaignRates("running", 99, 50, 0), settings) is None  # too few yet
    assert pause_reason(CampaignRates("running", 1000, 0, 3), settings) is None  # 0.3 %
    assert pause_reason(CampaignRates("running", 1000, 0, 4), settings) == (
        "complaint rate 0.4 % (4 of 1000 sent) is over 0.3 % (DISPATCH_PAUSE_COMPLAINT_PERCENT)"
    )
    assert pause_reason(CampaignRates("paused", 100, 60, 0), settings) is None
    assert pause_reason(CampaignRates("completed", 100, 60, 0), settings) is None


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def _counts(store: Store, campaign: int) -> dict[str, int]:
    rows = await store.pool.fetch(
        "SELECT status, count(*) AS n FROM dispatches WHERE campaign_id = $1 GROUP BY status",
        campaign,
    )
    return {r["status"]: r["n"] for r in rows}


async def _status(store: Store, campaign: int) -> str:
    return str(await store.pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign))


async def _quiet(store: Store, queue: RedisQueue, campaign: int, sender: int) -> dict[str, int]:
    """Once the sends in flight at the pause are recorded: its counts (nothing queued)."""

    async def settled() -> bool:  # the queue is emptied just after the pause is committed
        depth = (await queue.sender_state(sender))["queue_depth"]
        return depth == 0 and "sending" not in await _counts(store, campaign)

    await wait_for(settled)
    return await _counts(store, campaign)


async def test_hook_campaign_paused(
    make_client: Start, settings: Settings, store: Store, queue: RedisQueue, tmp_path: Path
) -> None:
    """400 emails, every tenth refused 550 5.1.1 at RCPT by a real server (10 % hard bounces):
    the campaign pauses itself after its first 100 sends, says why, and sends nothing more
    while paused. A resume clears the reason; the fresh count pauses it again only after
    another 100 sends; resumed until fewer than 100 are left, it finishes."""
    folder = plugin_dir(tmp_path, recorder=RECORD_PAUSED)
    people = [f"p{i:03}@example.com" for i in range(EMAILS)]
    refused = people[9::10]
    async with Receiver() as receiver:
        with SmtpPeer() as peer:
            peer.set_faults(rcpt={r: {"code": 550, "message": "5.1.1 no such user", "times": -1}
                                  for r in refused})  # fmt: skip
            configured = replace(settings, plugins_dir=folder).with_environ(
                DISPATCH_NOTIFY_WEBHOOK_URL=f"{receiver.url}/hook"
            )
            client = await make_client(configured)
            headers = auth(await new_token(store, DEV_EMAIL))
            smtp = {"host": "127.0.0.1", "port": peer.port, "tls": "none"}
            body = {"from_address": "news@example.com", "transport": "smtp", "settings": smtp}
            made = await client.post("/api/senders", json=body, headers=headers)
            sender = (await _json(made, 201))["id"]
            payload = {"subject": "News", "body": "Hello", "sender": sender, "recipients": people}
            made = await client.post("/api/emails/schedule", json=payload, headers=headers)
            campaign = (await _json(made, 201))["campaign"]["id"]

            async def paused() -> bool:
                return await _status(store, campaign) == "paused"

            await wait_for(paused)
            counts = await _quiet(store, queue, campaign, sender)
            detail = await _json(await client.get(f"/api/campaigns/{campaign}", headers=headers))
            assert detail["status"] == "paused"
            found = REASON.fullmatch(detail["paused_reason"] or "")
            assert found, detail["paused_reason"]
            assert int(found.group(3)) >= 100, "not before its first 100 sends"
            sent_so_far = counts.get("sent", 0) + counts.get("bounced", 0)
            assert 100 <= sent_so_far < EMAILS, counts
            waiting = counts.get("scheduled", 0) + counts.get("rate_limited", 0)
            assert waiting == EMAILS - sent_so_far, counts  # and none of them queued
            # What went is exactly what the server took: nothing more is on its way.
            assert len(peer.messages()) == counts["sent"]
            assert detail["feedback"]["bounce_rate"] is not None
            assert detail["feedback"]["bounce_rate"] > 5
            (hook,) = events(folder, "campaign_paused")
            assert hook["campaign_id"] == campaign and hook["reason"] == detail["paused_reason"]

            await dev_login(client)
            page = await client.get(f"/campaigns/{campaign}")
            assert page.status == 200
            assert f"Paused itself: {detail['paused_reason']}" in await page.text()

            async def notified() -> bool:
                return any(":octagonal_sign:" in r.json()["text"] for r in receiver.requests)

            await wait_for(notified)
            (post,) = [r.json()["text"] for r in receiver.requests if "paused" in r.json()["text"]]
            assert post.startswith(
                f":octagonal_sign: Campaign {campaign} paused itself: {detail['paused_reason']}."
            )

            # Resume until it finishes: each later pause comes after 100 sends of its own.
            pauses, gone_before = 1, sent_so_far
            while True:
                resumed = await _json(
                    await client.post(f"/api/campaigns/{campaign}/resume", headers=headers)
                )
                # Completed at once when its last emails went in flight as it paused.
                assert resumed["campaign"]["status"] in ("running", "completed")
                assert resumed["campaign"]["paused_reason"] is None

                async def paused_or_done() -> bool:
                    return await _status(store, campaign) in ("paused", "completed")

                await wait_for(paused_or_done)
                if await _status(store, campaign) == "completed":
                    break
                again = await _quiet(store, queue, campaign, sender)
                now = await client.get(f"/api/campaigns/{campaign}", headers=headers)
                reason = (await _json(now))["paused_reason"]
                found = REASON.fullmatch(reason or "")
                assert found, reason
                gone = again["sent"] + again["bounced"]
                assert int(found.group(3)) >= 100 and gone - gone_before >= 100, "a fresh count"
                pauses, gone_before = pauses + 1, gone
            assert pauses >= 2, "a resumed campaign still pauses itself"
            assert len(events(folder, "campaign_paused")) == pauses
            final = await _counts(store, campaign)
            assert final == {"sent": EMAILS - len(refused), "bounced": len(refused)}
            assert sorted(r for m in peer.messages() for r in m["rcpt_to"]) == sorted(
                set(people) - set(refused)
            )

            async def all_suppressed() -> bool:  # the last bounces follow their commit
                rows = await store.pool.fetch(
                    "SELECT email_normalized FROM suppressions WHERE reason = 'hard_bounce'"
                )
                return sorted(r[0] for r in rows) == refused

            await wait_for(all_suppressed)


async def _scheduled_later(client: AppClient, headers: dict[str, str], count: int) -> int:
    """A campaign whose emails are due tomorrow: nothing sends while the test sets its rows."""
    payload = {"subject": "s", "body": "b", "start_at": "2099-01-01T00:00:00Z",
               "recipients": [f"c{i}@example.com" for i in range(count)]}  # fmt: skip
    made = await client.post("/api/emails/schedule", json=payload, headers=headers)
    return int((await _json(made, 201))["campaign"]["id"])


async def _complaints(client: AppClient, store: Store, campaign: int, n: int) -> None:
    rows = await store.pool.fetch(
        "SELECT id FROM dispatches WHERE campaign_id = $1 AND status = 'sent' ORDER BY id LIMIT $2",
        campaign,
        n,
    )
    reports = [FeedbackEvent(FeedbackKind.COMPLAINT, "imap", f"arf:{r['id']}", dispatch_id=r["id"])
               for r in rows]  # fmt: skip
    await client.app[FEEDBACK].handle(reports)


async def test_a_complaint_rate_over_its_threshold_pauses_the_campaign_and_empties_its_queue(
    make_client: Start, settings: Settings, store: Store, queue: RedisQueue
) -> None:
    """The complaints a reader hands to the feedback handler count against 0.3 %: 1 of 99
    sent pauses nothing (too few), 1 of 150 pauses; its queued emails leave the queue."""
    client = await make_client(settings, {"api"})  # no worker: the rows say what was sent
    headers = auth(await new_token(store))
    early, late = (
        await _scheduled_later(client, headers, 120),
        await _scheduled_later(client, headers, 200),
    )
    for campaign, sent in ((early, 99), (late, 150)):
        await store.pool.execute(
            """UPDATE dispatches SET status = 'sent', sent_at = now(), finished_at = now()
               WHERE id IN (SELECT id FROM dispatches WHERE campaign_id = $1 ORDER BY id
                            LIMIT $2)""",
            campaign,
            sent,
        )
        await store.pool.execute("UPDATE campaigns SET status = 'running' WHERE id = $1", campaign)
        await _complaints(client, store, campaign, 1)
    assert await _status(store, early) == "running"
    assert await _status(store, late) == "paused"
    detail = await _json(await client.get(f"/api/campaigns/{late}", headers=headers))
    assert detail["paused_reason"] == (
        "complaint rate 0.7 % (1 of 150 sent) is over 0.3 % (DISPATCH_PAUSE_COMPLAINT_PERCENT)"
    )
    sender = detail["sender"]["id"]
    members = await queue.redis.zrange(queue.shard_of(sender).sender(sender), 0, -1)
    queued = {dispatch_id_of(cast(bytes, m)) for m in members}
    waiting = {
        r[0]
        for r in await store.pool.fetch(
            "SELECT id FROM dispatches WHERE campaign_id = $1 AND status = 'scheduled'", late
        )
    }
    assert len(waiting) == 50 and not queued & waiting, "its emails to send left the queue"
    assert queued, "the other campaign's are still queued"  # fmt: skip
    # A user's pause and resume: no reason of its own, and resuming clears the campaign's.
    resumed = await _json(await client.post(f"/api/campaigns/{late}/resume", headers=headers))
    assert resumed["campaign"]["paused_reason"] is None
    await _json(await client.post(f"/api/campaigns/{late}/pause", headers=headers))
    user_paused = await _json(await client.get(f"/api/campaigns/{late}", headers=headers))
    assert user_paused["status"] == "paused" and user_paused["paused_reason"] is None


async def test_a_big_campaign_is_counted_again_only_when_its_new_bounces_could_pass(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """Counting a campaign's emails scans its rows, so between two counts the policy adds
    the bounces it applied itself, and counts again only once they could pass 5 %."""
    from collections import Counter

    from dispatch_engine.hooks import Hooks
    from dispatch_engine.web.app_keys import CAMPAIGNS

    class CountingStore(Store):
        counts = 0

        async def campaign_rates(self, campaign_id: int) -> CampaignRates | None:
            CountingStore.counts += 1
            return await super().campaign_rates(campaign_id)

    client = await make_client(settings, {"api"})
    headers = auth(await new_token(store))
    campaign = await _scheduled_later(client, headers, 300)
    await store.pool.execute(
        """UPDATE dispatches SET status = CASE WHEN id % 50 = 0 THEN 'bounced' ELSE 'sent' END,
                  sent_at = now(), finished_at = now()
           WHERE id IN (SELECT id FROM dispatches WHERE campaign_id = $1 ORDER BY id LIMIT 200)""",
        campaign,
    )  # 4 of 200 bounced: 2 %
    await store.pool.execute("UPDATE campaigns SET status = 'running' WHERE id = $1", campaign)
    policy = FeedbackPolicy(CountingStore(store.pool), client.app[CAMPAIGNS], Hooks.none(),
                            ConsentSettings())  # fmt: skip
    owner = int(await store.pool.fetchval("SELECT owner_id FROM campaigns WHERE id = $1", campaign))
    hard = FeedbackKind.HARD_BOUNCE
    assert await policy.check(campaign, owner, Counter({hard: 1})) is None
    assert CountingStore.counts == 1
    for _ in range(6):  # 4 + 6 = 10 of 200: not over 5 % yet, whatever the sends since
        assert await policy.check(campaign, owner, Counter({hard: 1})) is None
    assert CountingStore.counts == 1, "no count while the new bounces cannot pass"
    assert await policy.check(campaign, owner, Counter({hard: 1})) is None  # 11: could pass
    assert CountingStore.counts == 2  # counted: only 4 are (the test added none)
    await store.pool.execute(
        """UPDATE dispatches SET status = 'bounced' WHERE campaign_id = $1 AND status = 'sent'
             AND id IN (SELECT id FROM dispatches WHERE campaign_id = $1 AND status = 'sent'
                        ORDER BY id LIMIT 10)""",
        campaign,
    )
    reason = await policy.check(campaign, owner, Counter({hard: 10}))
    assert reason == (
        "hard-bounce rate 7.0 % (14 of 200 sent) is over 5 % (DISPATCH_PAUSE_BOUNCE_PERCENT)"
    )
    assert await _status(store, campaign) == "paused" and CountingStore.counts == 3
