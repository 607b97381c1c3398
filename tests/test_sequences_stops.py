"""A recipient's sequence stops on a reply, an unsubscribe, a bounce, a complaint, a
suppression at send time or a manual stop; the others go on.

The first step is sent by an app without the sweeper role (so without the sequencer); the
reports are applied while every recipient waits; only then does a process with the
sequencer start. What is due by then is made at once: no race with the wait.
"""

from __future__ import annotations

from dataclasses import replace

from dispatch_engine.config import Settings
from dispatch_engine.consent.feedback import Feedback, FeedbackEvent, FeedbackKind
from dispatch_engine.consent.settings import ConsentSettings
from dispatch_engine.setting import settings_of
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .test_sequences import DAY_S, received, schedule, sequence_payload, states, until_states


async def _first_steps(store: Store, campaign_id: int) -> dict[str, dict[str, object]]:
    rows = await store.pool.fetch(
        "SELECT id, recipient, message_id, owner_id FROM dispatches WHERE campaign_id = $1"
        " AND step = 0",
        campaign_id,
    )
    return {r["recipient"]: dict(r) for r in rows}


async def test_a_reply_an_unsubscribe_a_bounce_or_a_complaint_stops_only_that_sequence(
    make_client: Start, settings: Settings, store: Store
) -> None:
    days = replace(settings, day_seconds=DAY_S)
    client = await make_client(days, {"api", "worker"})
    token = await new_token(store)
    people = [f"{who}@example.com" for who in ("unsub", "bounce", "reply", "spam", "ok1", "ok2")]
    campaign_id = await schedule(client, token, sequence_payload(people))
    await until_states(store, campaign_id, {p: "waiting" for p in people})

    first = await _first_steps(store, campaign_id)
    feedback = Feedback(store, settings_of(ConsentSettings, settings))

    def mid(who: str) -> str:
        return str(first[f"{who}@example.com"]["message_id"])

    result = await feedback.handle(
        [
            FeedbackEvent(
                FeedbackKind.UNSUBSCRIBE, "one_click", "u-1",
                dispatch_id=int(first["unsub@example.com"]["id"]),  # type: ignore[call-overload]
            ),
            FeedbackEvent(FeedbackKind.HARD_BOUNCE, "imap", "b-1", message_id=mid("bounce")),
            FeedbackEvent(FeedbackKind.REPLY, "imap", "r-1", message_id=mid("reply")),
            FeedbackEvent(FeedbackKind.COMPLAINT, "ses", "c-1", message_id=mid("spam")),
            # An auto-reply is not a reply: that sequence goes on.
            FeedbackEvent(FeedbackKind.AUTO_REPLY, "imap", "a-1", message_id=mid("ok1")),
        ]
    )  # fmt: skip
    assert len(result.applied) == 5

    await make_client(days, {"sweeper"})  # the sequencer starts: step 2 is due already
    await until_states(
        store, campaign_id, {"ok1@example.com": "finished", "ok2@example.com": "finished"}
    )
    assert await states(store, campaign_id) == {
        "unsub@example.com": ("stopped", "unsubscribed"),
        "bounce@example.com": ("stopped", "bounced"),
        "reply@example.com": ("replied", "replied"),
        "spam@example.com": ("stopped", "complained"),
        "ok1@example.com": ("finished", None),
        "ok2@example.com": ("finished", None),
    }
    for person in ("unsub", "bounce", "reply", "spam"):
        assert len(await received(store, f"{person}@example.com")) == 1, person
    for person in ("ok1", "ok2"):
        assert len(await received(store, f"{person}@example.com")) == 3, person
    listed = await client.get(
        f"/api/campaigns/{campaign_id}/recipients?state=stopped", headers=auth(token)
    )
    body = await listed.json()
    assert {i["recipient"]: i["stop_reason"] for i in body["items"]} == {
        "unsub@example.com": "unsubscribed",
        "bounce@example.com": "bounced",
        "spam@example.com": "complained",
    }


async def test_an_address_suppressed_after_the_first_step_gets_no_follow_up(
    make_client: Start, settings: Settings, store: Store
) -> None:
    days = replace(settings, day_seconds=DAY_S)
    client = await make_client(days, {"api", "worker"})
    token = await new_token(store)
    people = ["supp@example.com", "ok@example.com"]
    campaign_id = await schedule(client, token, sequence_payload(people))
    await until_states(store, campaign_id, {p: "waiting" for p in people})
    owner = await store.pool.fetchval("SELECT owner_id FROM campaigns WHERE id = $1", campaign_id)
    await store.suppress(owner, ["supp@example.com"], "manual", "api")  # by hand, meanwhile

    await make_client(days, {"sweeper"})
    await until_states(store, campaign_id, {"ok@example.com": "finished"})
    await until_states(store, campaign_id, {"supp@example.com": "stopped"})
    assert (await states(store, campaign_id))["supp@example.com"] == ("stopped", "suppressed")
    status = await store.pool.fetchval(
        "SELECT status FROM dispatches WHERE campaign_id = $1 AND recipient = $2 AND step = 1",
        campaign_id,
        "supp@example.com",
    )
    assert status == "suppressed"  # made, then left out at send time: never sent
    assert len(await received(store, "supp@example.com")) == 1
    assert len(await received(store, "ok@example.com")) == 3


async def test_a_manual_stop_cancels_the_queued_step_and_only_the_owner_may_stop(
    make_client: Start, settings: Settings, store: Store
) -> None:
    days = replace(settings, day_seconds=DAY_S)
    sender = await make_client(days, {"api", "worker"})
    token = await new_token(store)
    people = ["stop@example.com", "go@example.com", "late@example.com"]
    payload = sequence_payload(people)
    payload["steps"] = payload["steps"][:1]  # one follow-up
    campaign_id = await schedule(sender, token, payload)
    await until_states(store, campaign_id, {p: "waiting" for p in people})
    await sender.close()  # no worker now: the follow-ups wait in the queue once made

    api = await make_client(days, {"api", "sweeper"})
    await until_states(store, campaign_id, {p: "active" for p in people})  # step 1 made
    intruder = await new_token(store, "eve@example.com")
    for path, method in (
        (f"/api/campaigns/{campaign_id}/recipients/go@example.com/stop", "POST"),
        (f"/api/campaigns/{campaign_id}/recipients", "GET"),
    ):
        answer = await api.request(method, path, headers=auth(intruder))
        assert answer.status == 404, await answer.text()
    stopped = await api.post(
        f"/api/campaigns/{campaign_id}/recipients/stop@example.com/stop", headers=auth(token)
    )
    assert stopped.status == 200, await stopped.text()
    member = (await stopped.json())["member"]
    assert (member["state"], member["stop_reason"], member["step"]) == ("stopped", "manual", 1)
    again = await api.post(
        f"/api/campaigns/{campaign_id}/recipients/stop@example.com/stop", headers=auth(token)
    )
    assert again.status == 409
    unknown = await api.post(
        f"/api/campaigns/{campaign_id}/recipients/nobody@example.com/stop", headers=auth(token)
    )
    assert unknown.status == 404
    # A report naming the follow-up (not the first email) finds the same recipient's sequence.
    late = await store.pool.fetchval(
        "SELECT id FROM dispatches WHERE recipient = 'late@example.com' AND step = 1"
    )
    feedback = Feedback(store, settings_of(ConsentSettings, settings))
    reply = FeedbackEvent(FeedbackKind.REPLY, "imap", "r-late", dispatch_id=late)
    assert len((await feedback.handle([reply])).applied) == 1

    await make_client(days, {"worker"})
    await until_states(store, campaign_id, {"go@example.com": "finished"})
    rows = await store.pool.fetch(
        "SELECT recipient, status FROM dispatches WHERE campaign_id = $1 AND step = 1",
        campaign_id,
    )
    statuses = {r["recipient"]: r["status"] for r in rows}
    assert statuses == {
        "stop@example.com": "cancelled",
        "go@example.com": "sent",
        "late@example.com": "cancelled",
    }
    assert (await states(store, campaign_id))["late@example.com"] == ("replied", "replied")
    assert len(await received(store, "stop@example.com")) == 1
    assert len(await received(store, "late@example.com")) == 1
    assert len(await received(store, "go@example.com")) == 2

    async def completed() -> bool:
        answer = await api.get(f"/api/campaigns/{campaign_id}", headers=auth(token))
        return bool((await answer.json())["status"] == "completed")

    await wait_for(completed)
