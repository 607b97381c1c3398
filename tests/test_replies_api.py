"""A sender's reply mailbox through the senders API (validated, password sealed and never
shown, host checked like an SMTP host) and the replies listing (owner-scoped, paged)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from dispatch_engine.builtins import notify
from dispatch_engine.builtins.imap_feedback.replies import ReplyReader
from dispatch_engine.builtins.imap_feedback.settings import ImapFeedbackSettings
from dispatch_engine.config import Settings
from dispatch_engine.outbound import NotPublicError
from dispatch_engine.plugin import redis_of, reply_intake_of, verp
from dispatch_engine.store import Store
from dispatch_engine.store.feedback import FeedbackTarget

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token
from .support.http_receiver import Receiver

MAILBOX = {"host": "imap.example.com", "port": 993, "tls": "tls", "username": "ops",
           "password": "imap-secret"}  # fmt: skip


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def new_sender(client: AppClient, headers: dict[str, str], **fields: Any) -> Any:
    body = {"from_address": "ops@example.com", "transport": "capture", **fields}
    return await client.post("/api/senders", json=body, headers=headers)


async def test_a_reply_mailbox_password_is_sealed_and_never_shown(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles={"api"})
    headers = auth(await new_token(store))
    sender = await _json(await new_sender(client, headers, reply_mailbox=MAILBOX), 201)
    assert sender["reply_mailbox"] == {"host": "imap.example.com", "port": 993, "tls": "tls",
        "username": "ops", "folder": "INBOX", "password_set": True}  # fmt: skip
    stored = await store.pool.fetchval("SELECT reply_mailbox FROM senders WHERE id = $1",
                                       sender["id"])  # fmt: skip
    assert stored["password"].startswith("sealed:v1:") and "imap-secret" not in str(stored)
    url = f"/api/senders/{sender['id']}"
    patched = await _json(
        await client.patch(url, json={"reply_mailbox": {"folder": "Replies"}}, headers=headers)
    )
    assert patched["reply_mailbox"]["folder"] == "Replies"
    assert patched["reply_mailbox"]["password_set"]  # kept: only the folder changed
    listed = await _json(await client.get("/api/senders", headers=headers))
    assert "imap-secret" not in str(listed) and "sealed:" not in str(listed)
    removed = await _json(await client.patch(url, json={"reply_mailbox": None}, headers=headers))
    assert removed["reply_mailbox"] is None


@pytest.mark.parametrize(
    ("mailbox", "field"),
    [
        ("imap.example.com", "reply_mailbox"),
        ({**MAILBOX, "port": "993"}, "reply_mailbox.port"),
        ({**MAILBOX, "port": 70000}, "reply_mailbox.port"),
        ({**MAILBOX, "tls": "maybe"}, "reply_mailbox.tls"),
        ({**MAILBOX, "shell": "rm"}, "reply_mailbox.shell"),
        ({**MAILBOX, "host": "a\r\nb"}, "reply_mailbox.host"),
        ({**MAILBOX, "host": "x" * 300}, "reply_mailbox.host"),
        ({**MAILBOX, "folder": ""}, "reply_mailbox.folder"),
        ({k: v for k, v in MAILBOX.items() if k != "password"}, "reply_mailbox.password"),
        ({k: v for k, v in MAILBOX.items() if k != "username"}, "reply_mailbox.username"),
    ],
)
async def test_a_bad_reply_mailbox_is_refused_naming_its_field(
    mailbox: Any, field: str, make_client: Start, store: Store
) -> None:
    client = await make_client(roles={"api"})
    headers = auth(await new_token(store))
    body = await _json(await new_sender(client, headers, reply_mailbox=mailbox), 422)
    assert body["error"]["field"] == field


async def test_a_private_reply_mailbox_host_is_refused_at_save_and_at_connection(
    make_client: Start, store: Store, settings: Settings
) -> None:
    public_only = replace(settings, allow_private_targets=False)
    client = await make_client(public_only, roles={"api"})
    headers = auth(await new_token(store))
    for host in ("127.0.0.1", "169.254.169.254", "10.0.0.8"):
        box = {**MAILBOX, "host": host}
        body = await _json(await new_sender(client, headers, reply_mailbox=box), 422)
        assert body["error"]["field"] == "reply_mailbox.host", body
    # Saved while allowed (or its name re-pointed since): the reader refuses to connect.
    intake = reply_intake_of(client.app)
    box = {**MAILBOX, "host": "127.0.0.1", "password": intake.box.seal("x")}
    await store.pool.execute(
        """INSERT INTO senders (owner_id, from_address, display_name, transport, hourly_limit,
                                reply_mailbox)
           SELECT id, 'two@example.com', '', 'capture', 10, $1 FROM users
           WHERE email = 'ada@example.com'""",
        box,
    )
    (mailbox,) = await intake.mailboxes(1_000_000, None)
    paths = verp.ReturnPaths.of(public_only)
    reader = ReplyReader(mailbox, intake, redis_of(client.app), paths, ImapFeedbackSettings())
    with pytest.raises(NotPublicError):
        await reader.new_session()


async def test_replies_are_listed_only_to_their_campaigns_owner_and_paged(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles={"api"})
    ada, bob = auth(await new_token(store)), auth(await new_token(store, "bob@example.com"))
    payload = {"subject": "Hi", "body": "Hi", "recipients": ["r@x.example"]}
    made = await _json(await client.post("/api/emails/schedule", json=payload, headers=ada), 201)
    campaign_id = made["campaign"]["id"]
    row = await store.pool.fetchrow("SELECT * FROM dispatches WHERE campaign_id = $1",
                                    campaign_id)  # fmt: skip
    assert row is not None
    target = FeedbackTarget(row["id"], row["owner_id"], campaign_id, row["sender_id"],
                            row["recipient"], "sent")  # fmt: skip
    for n in range(3):
        fingerprint = f"imap:reply:test:{n}"
        await store.pool.execute(
            """INSERT INTO feedback_events (fingerprint, owner_id, dispatch_id, campaign_id,
                   sender_id, kind, source, email_normalized) VALUES
                   ($1, $2, $3, $4, $5, 'reply', 'imap', 'r@x.example')""",
            fingerprint, row["owner_id"], row["id"], campaign_id, row["sender_id"],
        )  # fmt: skip
        assert await store.record_reply(
            target, fingerprint=fingerprint, kind="reply", matched_by="thread",
            author="r@x.example", subject="Re: Hi", first_lines=f"answer {n}",
            received_at=row["scheduled_at"], returns_on=None,
        )  # fmt: skip
    url = f"/api/campaigns/{campaign_id}/replies"
    first = await _json(await client.get(url + "?limit=2", headers=ada))
    assert [i["snippet"] for i in first["items"]] == ["answer 2", "answer 1"]
    rest = await _json(await client.get(f"{url}?limit=2&cursor={first['next_cursor']}",
                                        headers=ada))  # fmt: skip
    assert [i["snippet"] for i in rest["items"]] == ["answer 0"] and rest["next_cursor"] is None
    assert (await _json(await client.get(url, headers=bob), 404))["error"]["code"]
    for bad in ("?kind=everything", "?cursor=abc", "?limit=0"):
        await _json(await client.get(url + bad, headers=ada), 422)


async def test_notify_posts_a_reply_with_its_text_escaped(settings: Settings) -> None:
    """The reply's words come from anyone who can mail the sender: they cannot ping a
    channel or forge a link in the Slack-style message."""
    async with Receiver() as receiver:
        configured = settings.with_environ(DISPATCH_NOTIFY_WEBHOOK_URL=f"{receiver.url}/hook")
        notify.reply_received(5, "ann@x.example", "Yes <!channel> & <http://evil|x>", configured)
        await notify.shutdown(configured, None)
        (request,) = receiver.requests
        text = str(request.json()["text"])
        assert text.startswith(":speech_balloon: Reply from ann@x.example to campaign 5: Yes")
        assert "&lt;!channel&gt; &amp; &lt;http://evil|x&gt;" in text and "<!" not in text
        assert text.endswith("/campaigns/5")
