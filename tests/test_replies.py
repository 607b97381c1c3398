"""Reply detection through real peers: a sender names its reply mailbox, a private Dovecot
(tests/support/dovecot.py); Dispatch Engine sends through the capture transport; the test
puts replies into the mailbox by IMAP APPEND as a mail client's delivery would; the
sweeper-role reader reads them (IDLE) and the campaign lists them (docs/replies.md).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from dispatch_engine.builtins.imap_feedback import REPLY_READERS
from dispatch_engine.config import Settings
from dispatch_engine.plugin import DEV_EMAIL
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.dovecot import PASSWORD, USER, Dovecot
from .support.helpers import auth, new_token, wait_for
from .support.plugin_dirs import events, plugin_dir
from .support.smtp_sink import free_port
from .support.web_session import dev_login
from .test_sequences import states, until_states

ANN = "ann@receiver.example"
RETURNS = (datetime.now(UTC) + timedelta(days=12)).date().isoformat()
WRITTEN = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)  # replies' Date
RECORD_REPLIES = """
@hookimpl
def reply_received(dispatch_id, campaign_id, recipient, from_address, snippet):
    record("reply_received", dispatch_id=dispatch_id, campaign_id=campaign_id,
           recipient=recipient, from_address=from_address, snippet=snippet)
"""


@pytest.fixture
def mailbox() -> Iterator[Dovecot]:
    folder = Path(tempfile.mkdtemp(prefix="dispatch-maildir-"))
    folder.chmod(0o755)  # Dovecot reads it as `nobody`; pytest's tmp_path is 0700
    with Dovecot(free_port(), folder / "replies") as dovecot:
        yield dovecot


def reading(settings: Settings, folder: Path) -> Settings:
    return replace(settings, plugins_dir=folder).with_environ(DISPATCH_REPLY_IMAP_POLL_SECONDS="1")


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


def mailbox_of(dovecot: Dovecot, folder: str = "INBOX") -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": dovecot.port, "tls": "none", "username": USER,
            "password": PASSWORD, "folder": folder}  # fmt: skip


async def campaign_to(
    client: AppClient, store: Store, headers: dict[str, str], reply_mailbox: dict[str, Any],
    recipients: list[str], subject: str = "Hello", **extra: Any,
) -> tuple[int, dict[str, dict[str, Any]]]:  # fmt: skip
    """A sender with this reply mailbox, a campaign from it; (sender id, dispatch rows by
    recipient) once every email is sent."""
    body = {"from_address": "ops@example.com", "transport": "capture",
            "reply_mailbox": reply_mailbox}  # fmt: skip
    sender = await _json(await client.post("/api/senders", json=body, headers=headers), 201)
    assert "password" not in sender["reply_mailbox"] and sender["reply_mailbox"]["password_set"]
    payload = {"subject": subject, "body": "Hello there", "sender": sender["id"],
               "recipients": recipients, **extra}  # fmt: skip
    await _json(await client.post("/api/emails/schedule", json=payload, headers=headers), 201)

    async def sent() -> bool:
        return await store.pool.fetchval(
            "SELECT count(*) FROM dispatches WHERE sender_id = $1 AND status = 'sent'",
            sender["id"],
        ) == len(recipients)

    await wait_for(sent, within=60)
    rows = await store.pool.fetch("SELECT * FROM dispatches WHERE sender_id = $1", sender["id"])
    return sender["id"], {r["recipient"]: dict(r) for r in rows}


def reply(
    message_id: str | None, *, subject: str = "Re: Hello", body: str = "Yes, tell me more.",
    own_id: str = "<r1@receiver.example>", author: str = ANN, extra: str = "",
) -> bytes:  # fmt: skip
    thread = f"In-Reply-To: {message_id}\r\nReferences: {message_id}\r\n" if message_id else ""
    return (
        f"From: Ann <{author}>\r\nTo: ops@example.com\r\nSubject: {subject}\r\n"
        f"Date: {format_datetime(WRITTEN)}\r\nMessage-ID: {own_id}\r\n{thread}{extra}"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n\r\n"
        "On Tue, 1 Dec 2026, ops@example.com wrote:\r\n> Hello there\r\n"
    ).encode()


async def cursor_at(store: Store, sender_id: int, uid: int) -> None:
    """Wait until the sender's reader has read its mailbox up to `uid`."""

    async def read() -> bool:
        last = await store.pool.fetchval(
            "SELECT last_uid FROM reply_mailbox_cursors WHERE sender_id = $1", sender_id
        )
        return last is not None and last >= uid

    await wait_for(read)


async def feedback(store: Store) -> list[tuple[Any, ...]]:
    rows = await store.pool.fetch(
        "SELECT kind, dispatch_id, detail FROM feedback_events ORDER BY id"
    )
    return [tuple(r) for r in rows]


async def test_hook_reply_received(
    mailbox: Dovecot, make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    """A reply naming our Message-ID in In-Reply-To: listed on its campaign, one REPLY
    event for its dispatch, the hook fired once; the same message delivered again (a second
    copy) changes nothing."""
    folder = plugin_dir(tmp_path, recorder=RECORD_REPLIES)
    client = await make_client(reading(settings, folder))
    headers = auth(await new_token(store, DEV_EMAIL))  # the dashboard's dev user: its page too
    sender_id, sent = await campaign_to(client, store, headers, mailbox_of(mailbox), [ANN])
    dispatch = sent[ANN]
    await asyncio.to_thread(mailbox.append, reply(dispatch["message_id"]))
    url = f"/api/campaigns/{dispatch['campaign_id']}/replies"

    async def listed() -> bool:
        return bool((await _json(await client.get(url, headers=headers)))["items"])

    await wait_for(listed)
    (item,) = (await _json(await client.get(url, headers=headers)))["items"]
    assert (item["from"], item["recipient"], item["matched_by"]) == (ANN, ANN, "thread")
    assert item["snippet"] == "Yes, tell me more."  # the quoted email left out
    assert datetime.fromisoformat(item["received_at"]) == WRITTEN
    ((kind, dispatch_id, detail),) = await feedback(store)
    assert (kind, dispatch_id) == ("reply", dispatch["id"])
    assert detail == f"from={ANN} date={WRITTEN.isoformat()} | Yes, tell me more."
    await wait_for(lambda: _async(bool(events(folder, "reply_received"))))
    assert events(folder, "reply_received") == [
        {"hook": "reply_received", "dispatch_id": dispatch["id"],
         "campaign_id": dispatch["campaign_id"], "recipient": ANN, "from_address": ANN,
         "snippet": "Yes, tell me more."}
    ]  # fmt: skip
    await dev_login(client)
    page = await client.get(f"/campaigns/{dispatch['campaign_id']}")
    html = await page.text()
    assert page.status == 200 and "Yes, tell me more." in html and ANN in html
    before = await feedback(store)
    await asyncio.to_thread(mailbox.append, reply(dispatch["message_id"]))  # delivered twice
    await cursor_at(store, sender_id, 2)
    assert await feedback(store) == before
    assert len((await _json(await client.get(url, headers=headers)))["items"]) == 1
    assert len(events(folder, "reply_received")) == 1
    flags = mailbox.flags()  # a person's own inbox: nothing marked read
    assert len(flags) == 2 and not any("Seen" in f for f in flags), flags


async def _async(value: bool) -> bool:
    return value


async def test_auto_replies_and_out_of_office_are_not_replies_and_keep_the_return_date(
    mailbox: Dovecot, make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, recorder=RECORD_REPLIES)
    client = await make_client(reading(settings, folder))
    headers = auth(await new_token(store))
    bob = "bob@receiver.example"
    sender_id, sent = await campaign_to(client, store, headers, mailbox_of(mailbox), [ANN, bob])
    vacation = reply(sent[ANN]["message_id"], own_id="<a1@receiver.example>",
                     body="I am on vacation, answering slowly.",
                     extra="Auto-Submitted: auto-replied\r\n")  # fmt: skip
    away = f"I am out of the office until {RETURNS} with no email."
    out_of_office = reply(sent[bob]["message_id"], subject="Automatic reply: Hello",
                          own_id="<a2@receiver.example>", author=bob, body=away)  # fmt: skip
    for message in (vacation, out_of_office):
        await asyncio.to_thread(mailbox.append, message)
    await cursor_at(store, sender_id, 2)
    assert [k for k, _, _ in await feedback(store)] == ["auto_reply", "auto_reply"]
    url = f"/api/campaigns/{sent[ANN]['campaign_id']}/replies"
    assert (await _json(await client.get(url, headers=headers)))["items"] == []
    automatic = (await _json(await client.get(url + "?kind=auto_reply", headers=headers)))["items"]
    assert {(a["from"], a["returns_on"]) for a in automatic} == {
        (ANN, None),
        (bob, RETURNS),
    }
    details = [d for _, _, d in await feedback(store)]
    assert any(f" returns_on={RETURNS} | " in d for d in details), details
    assert events(folder, "reply_received") == []


async def test_a_reply_without_thread_headers_is_matched_by_address_and_subject(
    mailbox: Dovecot, make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    client = await make_client(reading(settings, plugin_dir(tmp_path, recorder="")))
    headers = auth(await new_token(store))
    sender_id, sent = await campaign_to(client, store, headers, mailbox_of(mailbox), [ANN],
                                        subject="Hello {{ email }}")  # fmt: skip
    await asyncio.to_thread(
        mailbox.append, reply(None, subject=f"AW: RE:  Hello {ANN}", own_id="<s1@x.example>")
    )
    await asyncio.to_thread(  # another subject from the same address: not a reply to us
        mailbox.append, reply(None, subject="Lunch?", own_id="<s2@x.example>")
    )
    await cursor_at(store, sender_id, 2)
    assert [(k, d) for k, d, _ in await feedback(store)] == [("reply", sent[ANN]["id"])]
    url = f"/api/campaigns/{sent[ANN]['campaign_id']}/replies"
    (item,) = (await _json(await client.get(url, headers=headers)))["items"]
    assert item["matched_by"] == "subject"


async def test_another_owners_mailbox_cannot_act_on_this_owners_emails(
    mailbox: Dovecot, make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    """Bob's sender reads a folder of its own; a mail there naming Ada's Message-ID, from
    Ada's recipient and with her subject, is no reply to Ada's campaign; the same mail in
    Ada's own mailbox is."""
    client = await make_client(reading(settings, plugin_dir(tmp_path, recorder="")))
    with mailbox.client() as imap:
        assert imap.create("Bob")[0] == "OK"
    ada = auth(await new_token(store, "ada@example.com"))
    bob = auth(await new_token(store, "bob@example.com"))
    ada_sender, sent = await campaign_to(client, store, ada, mailbox_of(mailbox), [ANN])
    bob_sender, _ = await campaign_to(
        client, store, bob, mailbox_of(mailbox, "Bob"), [ANN], subject="News from Bob"
    )
    await asyncio.to_thread(mailbox.append, reply(sent[ANN]["message_id"]), "Bob")
    await cursor_at(store, bob_sender, 1)
    assert await feedback(store) == []
    url = f"/api/campaigns/{sent[ANN]['campaign_id']}/replies"
    assert (await _json(await client.get(url, headers=ada)))["items"] == []
    await _json(await client.get(url, headers=bob), 404)  # nor can Bob list Ada's
    await asyncio.to_thread(mailbox.append, reply(sent[ANN]["message_id"]))
    await cursor_at(store, ada_sender, 1)
    assert [(k, d) for k, d, _ in await feedback(store)] == [("reply", sent[ANN]["id"])]


async def test_readers_follow_the_senders_mailboxes(
    mailbox: Dovecot, make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    """A sender's mailbox removed through the API: its reader stops."""
    client = await make_client(reading(settings, plugin_dir(tmp_path, recorder="")))
    headers = auth(await new_token(store))
    sender_id, _ = await campaign_to(client, store, headers, mailbox_of(mailbox), [ANN])
    readers = client.app[REPLY_READERS]
    await wait_for(lambda: _async(readers.reader_of(sender_id) is not None))
    patch = {"reply_mailbox": None}
    got = await _json(await client.patch(f"/api/senders/{sender_id}", json=patch, headers=headers))
    assert got["reply_mailbox"] is None
    await wait_for(lambda: _async(readers.reader_of(sender_id) is None))


async def test_a_reply_stops_its_recipients_sequence_and_an_auto_reply_does_not(
    mailbox: Dovecot, make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    """With "sequences": the reply read from the mailbox stops Ann's follow-ups; Bob's
    out-of-office leaves his waiting for the next step."""
    client = await make_client(reading(settings, plugin_dir(tmp_path, recorder="")))
    headers = auth(await new_token(store))
    bob = "bob@receiver.example"
    steps = [{"after_days": 3, "subject": None, "body": "A follow-up"}]
    sender_id, sent = await campaign_to(
        client, store, headers, mailbox_of(mailbox), [ANN, bob], steps=steps
    )
    campaign_id = sent[ANN]["campaign_id"]
    await until_states(store, campaign_id, {ANN: "waiting", bob: "waiting"})
    await asyncio.to_thread(mailbox.append, reply(sent[ANN]["message_id"]))
    away = reply(sent[bob]["message_id"], subject="Out of Office: Hello", author=bob,
                 own_id="<a3@receiver.example>", body="Away until next week.")  # fmt: skip
    await asyncio.to_thread(mailbox.append, away)
    await cursor_at(store, sender_id, 2)
    now = await states(store, campaign_id)
    assert now[ANN] == ("replied", "replied") and now[bob][0] == "waiting", now
