"""The feedback policy: a permanent refusal at RCPT or DATA from a real SMTP server
(nodemailer's smtp-server) is a hard bounce when it is the recipient's (RFC 3463), through the
core's one feedback handler after the result is committed; the hooks it fires; the counts per
campaign, per sender and in the Sent list."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatch_engine.config import Settings
from dispatch_engine.consent.feedback import FeedbackEvent, FeedbackKind
from dispatch_engine.consent.smtp_status import bounce_of
from dispatch_engine.store import Store
from dispatch_engine.transport import PermanentReply
from dispatch_engine.web.app_keys import FEEDBACK

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for
from .support.plugin_dirs import events, plugin_dir
from .support.smtp_peer import SmtpPeer

RECORD_FEEDBACK = """
@hookimpl
def dispatch_bounced(dispatch_id, campaign_id, recipient, kind, detail):
    record("dispatch_bounced", dispatch_id=dispatch_id, campaign_id=campaign_id,
           recipient=recipient, kind=kind, detail=detail)

@hookimpl
async def dispatch_complained(dispatch_id, campaign_id, recipient, detail, settings):
    record("dispatch_complained", dispatch_id=dispatch_id, campaign_id=campaign_id,
           recipient=recipient, detail=detail)

@hookimpl
def dispatch_failed(dispatch_id, recipient, error):
    record("dispatch_failed", dispatch_id=dispatch_id, recipient=recipient, error=error)
"""


@pytest.mark.parametrize(
    ("code", "message", "stage", "kind"),
    [
        (550, "5.1.1 <gone@example.com>: Recipient address rejected: User unknown", "rcpt",
         FeedbackKind.HARD_BOUNCE),
        (550, "5.1.1 user unknown", "data", FeedbackKind.HARD_BOUNCE),  # checked after DATA
        (553, "5.1.3 bad destination mailbox address syntax", "rcpt", FeedbackKind.HARD_BOUNCE),
        (550, "5.2.1 mailbox disabled", "rcpt", FeedbackKind.HARD_BOUNCE),
        (556, "5.1.10 recipient domain has a null MX", "rcpt", FeedbackKind.HARD_BOUNCE),
        (550, "No such user here", "rcpt", FeedbackKind.HARD_BOUNCE),  # no enhanced status
        (553, "mailbox name not allowed", "rcpt", FeedbackKind.HARD_BOUNCE),
        (550, "4.1.1 user unknown", "rcpt", FeedbackKind.HARD_BOUNCE),  # class disagrees: basic
        (552, "5.2.2 mailbox full", "rcpt", FeedbackKind.SOFT_BOUNCE),
        (552, "Requested mail action aborted: exceeded storage allocation", "rcpt",
         FeedbackKind.SOFT_BOUNCE),
        (550, "5.7.1 Message rejected as spam", "data", None),  # our reputation
        (554, "5.7.1 Relay access denied", "rcpt", None),  # our account
        (550, "5.7.26 DMARC policy violation", "data", None),  # our authentication
        (552, "5.3.4 Message size exceeds fixed limit", "data", None),  # our message
        (554, "5.6.0 malformed content", "data", None),
        (550, "Message content rejected", "data", None),  # a bare 550 to DATA: a filter's
        (554, "Transaction failed", "rcpt", None),
        (550, "5.1.1 user unknown", "mail", None),  # a refusal of MAIL FROM is never theirs
        (553, "5.1.8 bad sender's system address", "rcpt", None),
    ],
)  # fmt: skip
def test_a_refusal_is_a_bounce_only_when_it_is_the_recipients(
    code: int, message: str, stage: str, kind: FeedbackKind | None
) -> None:
    reply = PermanentReply(f"server answered {code} {message}", code=code, reply=message,
                           stage=stage)  # fmt: skip
    assert bounce_of(reply) == kind


def test_the_enhanced_status_is_read_from_the_start_of_the_reply_only() -> None:
    def enhanced(code: int, reply: str) -> str | None:
        return PermanentReply("x", code=code, reply=reply, stage="rcpt").enhanced

    assert enhanced(550, "5.1.1 <a@b.c>: unknown") == "5.1.1"
    assert enhanced(550, "5.7.13 disabled") == "5.7.13"
    assert enhanced(550, "user 5.1.1 unknown") is None
    assert enhanced(550, "4.2.2 full") is None  # RFC 3463: its class must be the code's
    assert enhanced(550, "5.1.1x unknown") is None


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def _smtp_sender(client: AppClient, headers: dict[str, str], peer: SmtpPeer) -> int:
    body = {"from_address": "news@example.com", "transport": "smtp",
            "settings": {"host": "127.0.0.1", "port": peer.port, "tls": "none"}}  # fmt: skip
    return int(
        (await _json(await client.post("/api/senders", json=body, headers=headers), 201))["id"]
    )


async def _schedule(
    client: AppClient, headers: dict[str, str], recipients: list[str], **extra: Any
) -> int:
    payload = {"subject": "Hi", "body": "Hello {{ email }}", "recipients": recipients, **extra}
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    return int((await _json(response, 201))["campaign"]["id"])


async def _settled(store: Store, campaign: int) -> bool:
    status = await store.pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign)
    return bool(status == "completed")


@pytest.mark.parametrize("pipelining", [True, False])
async def test_hook_dispatch_bounced(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path, pipelining: bool
) -> None:
    """A 550 5.1.1 at RCPT and one after DATA end `bounced` and suppress the address (hard
    bounce, source smtp); a 554 5.7.1 (policy) fails without suppressing anyone; a 552 5.2.2
    (mailbox full) fails and counts a soft bounce. Pipelined or one command at a time."""
    folder = plugin_dir(tmp_path, recorder=RECORD_FEEDBACK)
    with SmtpPeer(pipelining=pipelining) as peer:
        peer.set_faults(
            rcpt={"gone@example.com": {"code": 550, "message": "5.1.1 no such user", "times": -1}},
            data={"moved@example.com": {"code": 550, "message": "5.1.1 user unknown", "times": -1},
                  "spam@example.com": {"code": 554, "message": "5.7.1 spam", "times": -1},
                  "full@example.com": {"code": 552, "message": "5.2.2 mailbox full", "times": -1}},
        )  # fmt: skip
        client = await make_client(replace(settings, plugins_dir=folder))
        headers = auth(await new_token(store))
        sender = await _smtp_sender(client, headers, peer)
        people = ["ok@example.com", "gone@example.com", "moved@example.com", "spam@example.com",
                  "full@example.com"]  # fmt: skip
        campaign = await _schedule(client, headers, people, sender=sender)
        await wait_for(lambda: _settled(store, campaign))

        async def bounced_twice() -> bool:
            return len(events(folder, "dispatch_bounced")) >= 3  # two hard, one soft

        await wait_for(bounced_twice)
        rows = await store.pool.fetch("SELECT id, recipient, status, last_error FROM dispatches")
        by = {r["recipient"]: r for r in rows}
        assert {r: by[r]["status"] for r in people} == {
            "ok@example.com": "sent", "gone@example.com": "bounced",
            "moved@example.com": "bounced", "spam@example.com": "failed",
            "full@example.com": "failed",
        }  # fmt: skip
        assert "550 5.1.1 no such user" in by["gone@example.com"]["last_error"]
        suppressed = await store.pool.fetch(
            "SELECT email_normalized, reason, source, dispatch_id FROM suppressions ORDER BY id"
        )
        assert sorted((r["email_normalized"], r["reason"], r["source"], r["dispatch_id"])
                      for r in suppressed) == [
            ("gone@example.com", "hard_bounce", "smtp", by["gone@example.com"]["id"]),
            ("moved@example.com", "hard_bounce", "smtp", by["moved@example.com"]["id"]),
        ]  # fmt: skip
        kinds = await store.pool.fetch("SELECT fingerprint, kind, source FROM feedback_events")
        assert sorted(tuple(r) for r in kinds) == sorted([
            (f"smtp:{by['gone@example.com']['id']}", "hard_bounce", "smtp"),
            (f"smtp:{by['moved@example.com']['id']}", "hard_bounce", "smtp"),
            (f"smtp:{by['full@example.com']['id']}", "soft_bounce", "smtp"),
        ])  # fmt: skip
        bounced = sorted((e["recipient"], e["kind"], e["dispatch_id"], e["campaign_id"])
                         for e in events(folder, "dispatch_bounced"))  # fmt: skip
        assert bounced == [
            ("full@example.com", "soft", by["full@example.com"]["id"], campaign),
            ("gone@example.com", "hard", by["gone@example.com"]["id"], campaign),
            ("moved@example.com", "hard", by["moved@example.com"]["id"], campaign),
        ]
        assert all("5." in e["detail"] for e in events(folder, "dispatch_bounced"))
        # A bounced email is no failure: dispatch_failed is for what is not the address's.
        assert sorted(e["recipient"] for e in events(folder, "dispatch_failed")) == [
            "full@example.com", "spam@example.com"
        ]  # fmt: skip
        assert sorted(r for m in peer.messages() for r in m["rcpt_to"]) == ["ok@example.com"]

        detail = await _json(await client.get(f"/api/campaigns/{campaign}", headers=headers))
        assert detail["counts"]["bounced"] == 2 and detail["counts"]["failed"] == 2
        assert detail["progress"] == 1.0
        assert detail["paused_reason"] is None
        assert detail["feedback"] == {
            "sent": 3, "hard_bounces": 2, "soft_bounces": 1, "complaints": 0, "unsubscribes": 0,
            "bounce_rate": 66.67, "complaint_rate": 0.0,
        }  # fmt: skip
        sent = await _json(await client.get("/api/emails/sent", headers=headers))
        assert sorted((i["email"], i["status"]) for i in sent["items"]) == sorted(
            (r, by[r]["status"]) for r in people
        )
        stats = await _json(await client.get("/api/stats", headers=headers))
        (mine,) = [s for s in stats["senders"] if s["id"] == sender]
        assert mine["feedback"] | {"days": 30} == {
            "days": 30, "sent": 3, "hard_bounces": 2, "soft_bounces": 1, "complaints": 0,
            "unsubscribes": 0, "bounce_rate": 66.67, "complaint_rate": 0.0,
        }  # fmt: skip


async def test_hook_dispatch_complained(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    """A complaint a reader hands to the app's feedback handler marks the email, suppresses
    the address and fires the hook once, however often the report is read."""
    folder = plugin_dir(tmp_path, recorder=RECORD_FEEDBACK)
    client = await make_client(replace(settings, plugins_dir=folder))
    headers = auth(await new_token(store))
    campaign = await _schedule(client, headers, ["ann@example.com", "bob@example.com"])
    await wait_for(lambda: _settled(store, campaign))
    ann = await store.pool.fetchrow(
        "SELECT id, message_id FROM dispatches WHERE recipient = 'ann@example.com'"
    )
    assert ann is not None
    report = FeedbackEvent(FeedbackKind.COMPLAINT, "imap", "arf:1", message_id=ann["message_id"],
                           detail="abuse")  # fmt: skip
    for _ in range(2):
        await client.app[FEEDBACK].handle([report])
    assert events(folder, "dispatch_complained") == [
        {"hook": "dispatch_complained", "dispatch_id": ann["id"], "campaign_id": campaign,
         "recipient": "ann@example.com", "detail": "abuse"}
    ]  # fmt: skip
    detail = await _json(await client.get(f"/api/campaigns/{campaign}", headers=headers))
    assert detail["counts"]["complained"] == 1 and detail["feedback"]["complaints"] == 1
    assert detail["feedback"]["complaint_rate"] == 50.0
    reason = await store.pool.fetchval(
        "SELECT reason FROM suppressions WHERE email_normalized = 'ann@example.com'"
    )
    assert reason == "complaint"
    # The owner's counts are the owner's: another user sees none of them.
    other = auth(await new_token(store, "eve@example.com"))
    assert (await client.get(f"/api/campaigns/{campaign}", headers=other)).status == 404
    theirs = await _json(await client.get("/api/stats", headers=other))
    assert all(s["feedback"]["complaints"] == 0 for s in theirs["senders"])
    assert (await _json(await client.get("/api/emails/sent", headers=other)))["items"] == []


async def test_notify_posts_the_first_bounce_of_a_campaign_then_counts_the_rest_quietly(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign bouncing a thousand times is one message per kind per quiet time, the next
    one saying how many it stands for; complaints likewise, each campaign on its own."""
    from dispatch_engine.builtins import notify

    from .support.http_receiver import Receiver

    monkeypatch.setattr(notify, "_last_feedback", {})
    async with Receiver() as receiver:
        configured = settings.with_environ(DISPATCH_NOTIFY_WEBHOOK_URL=f"{receiver.url}/hook")
        for n in range(5):
            notify.dispatch_bounced(n, 7, f"r{n}@example.com", "hard", "550 5.1.1 gone", configured)
        notify.dispatch_bounced(9, 8, "x@example.com", "hard", "550 5.1.1 gone", configured)
        notify.dispatch_complained(10, 7, "y@example.com", "abuse", configured)
        monkeypatch.setattr(notify, "QUIET_S", 0.0)  # the quiet time is over
        notify.dispatch_bounced(11, 7, "z@example.com", "hard", "550 5.1.1 gone", configured)
        await notify.shutdown(configured, None)
        # Each post is its own task: they may arrive in any order.
        assert sorted(r.json()["text"] for r in receiver.requests) == sorted([
            ":leftwards_arrow_with_hook: A hard bounce in campaign 7: r0@example.com: "
            "550 5.1.1 gone",
            ":leftwards_arrow_with_hook: A hard bounce in campaign 8: x@example.com: "
            "550 5.1.1 gone",
            ":warning: y@example.com reported an email of campaign 7 as spam",
            ":leftwards_arrow_with_hook: A hard bounce in campaign 7 (5 hard bounces since the "
            "last message): z@example.com: 550 5.1.1 gone",
        ])  # fmt: skip
