"""Asynchronous bounces and complaints through real peers: Dispatch Engine sends through a
private Postfix (tests/support/postfix.py) to a recipient it does not have; Postfix writes a
real DSN to the VERP return path, which it delivers into the Maildir a private Dovecot
(tests/support/dovecot.py) serves; the imap_feedback reader reads it over IMAP and hands it
to the core's feedback handler. The ARF complaint is a hand-written report (no program on
this machine produces ARF) put into the same mailbox over IMAP.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch_engine.builtins.imap_feedback import READER, reader_for
from dispatch_engine.builtins.imap_feedback.mailbox import MailboxSession
from dispatch_engine.builtins.imap_feedback.reader import MailboxReader, PassResult
from dispatch_engine.config import Settings
from dispatch_engine.consent.tokens import DispatchTokens, Purpose
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.dovecot import PASSWORD, USER, Dovecot
from .support.helpers import auth, new_token, wait_for
from .support.postfix import BOUNCE_DOMAIN, LOCAL_DOMAIN, BouncingPostfix
from .support.smtp_peer import PrivateCa
from .support.smtp_sink import free_port
from .test_dsn import ARF

POLL_S = 20  # the reader's poll interval: the bounce must be handled within one
UNKNOWN = f"nobody-here@{LOCAL_DOMAIN}"


@pytest.fixture
def peers() -> Iterator[tuple[BouncingPostfix, Dovecot]]:
    with BouncingPostfix(free_port()) as mta, Dovecot(free_port(), mta.maildir) as mailbox:
        yield mta, mailbox


def reading(settings: Settings, mailbox: Dovecot, **extra: str) -> Settings:
    """The test's settings with VERP on and the reader pointed at `mailbox`."""
    return settings.with_environ(
        **{
            "DISPATCH_BOUNCE_DOMAIN": BOUNCE_DOMAIN,
            "DISPATCH_FEEDBACK_IMAP_HOST": "127.0.0.1",
            "DISPATCH_FEEDBACK_IMAP_PORT": str(mailbox.port),
            "DISPATCH_FEEDBACK_IMAP_TLS": "none",
            "DISPATCH_FEEDBACK_IMAP_USER": USER,
            "DISPATCH_FEEDBACK_IMAP_PASSWORD": PASSWORD,
            "DISPATCH_FEEDBACK_IMAP_POLL_SECONDS": str(POLL_S),
            **extra,
        }
    )


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def send_one(
    client: AppClient, store: Store, recipient: str, transport: dict[str, Any]
) -> dict[str, Any]:
    """Schedule one email through a new sender; its dispatch row once it is sent."""
    headers = auth(await new_token(store))
    body = {"from_address": "ops@example.com", **transport}
    sender = await _json(await client.post("/api/senders", json=body, headers=headers), 201)
    payload = {"subject": "Hello", "body": "Hello", "sender": sender["id"],
               "recipients": [recipient]}  # fmt: skip
    await _json(await client.post("/api/emails/schedule", json=payload, headers=headers), 201)

    async def sent() -> bool:
        return await store.pool.fetchval("SELECT status FROM dispatches") == "sent"

    await wait_for(sent, within=60)
    row = await store.pool.fetchrow("SELECT * FROM dispatches")
    assert row is not None
    return dict(row)


def through(mta: BouncingPostfix) -> dict[str, Any]:
    return {"transport": "smtp", "settings": {"host": "127.0.0.1", "port": mta.port, "tls": "none"}}


async def state(store: Store) -> tuple[Any, ...]:
    """Everything a report can change: statuses, suppressions, recorded events."""
    return (
        await store.pool.fetch("SELECT id, status, last_error FROM dispatches ORDER BY id"),
        await store.pool.fetch("SELECT owner_id, email_normalized, reason FROM suppressions"),
        await store.pool.fetch("SELECT fingerprint, kind, dispatch_id FROM feedback_events"),
    )


async def one_pass(reader: MailboxReader) -> PassResult:
    session = MailboxSession(reader.settings)
    await asyncio.to_thread(session.open)
    try:
        return await reader.read_pass(session)
    finally:
        await asyncio.to_thread(session.close)


async def test_a_real_postfix_bounce_read_through_dovecot_marks_the_dispatch_bounced_and_suppresses(
    peers: tuple[BouncingPostfix, Dovecot], make_client: Start, settings: Settings, store: Store
) -> None:
    mta, mailbox = peers
    client = await make_client(reading(settings, mailbox))  # api, worker and sweeper roles
    dispatch = await send_one(client, store, UNKNOWN, through(mta))
    await asyncio.to_thread(mta.wait_for_delivery, 1)

    async def bounced() -> bool:
        status = await store.pool.fetchval("SELECT status FROM dispatches")
        return (
            status == "bounced"
            and await store.suppression(dispatch["owner_id"], UNKNOWN) is not None
        )

    await wait_for(bounced, within=POLL_S)  # from the DSN's arrival: within one poll interval
    suppression = await store.suppression(dispatch["owner_id"], UNKNOWN)
    assert suppression is not None and suppression.reason == "hard_bounce"
    last_error = await store.pool.fetchval("SELECT last_error FROM dispatches")
    assert "5.1.1" in last_error, last_error
    # The envelope sender was the dispatch's VERP address; the From: header stayed the sender's.
    (dsn,) = await asyncio.to_thread(mailbox.messages)
    token = DispatchTokens(settings.secret_key, Purpose.BOUNCE).make(dispatch["id"])
    assert f"X-Postfix-Sender: rfc822; bounce+{token}@{BOUNCE_DOMAIN}".encode() in dsn
    assert b"\nFrom: ops@example.com" in dsn
    await wait_for(lambda: asyncio.to_thread(lambda: "\\Seen" in " ".join(mailbox.flags())))


async def test_the_same_report_read_twice_changes_nothing(
    peers: tuple[BouncingPostfix, Dovecot], make_client: Start, settings: Settings, store: Store
) -> None:
    mta, mailbox = peers
    app_settings = reading(settings, mailbox)
    client = await make_client(app_settings, roles={"api", "worker"})  # passes run by the test
    await send_one(client, store, UNKNOWN, through(mta))
    await asyncio.to_thread(mta.wait_for_delivery, 1)
    reader = reader_for(app_settings, client.app)
    assert reader is not None
    first = await one_pass(reader)
    assert (first.read, first.applied) == (1, 1), first
    after_first = await state(store)
    assert [r["status"] for r in after_first[0]] == ["bounced"]
    with mailbox.client() as imap:  # someone marks it unread: the reader sees it again
        imap.select("INBOX")
        imap.store("1", "-FLAGS", "\\Seen")
    second = await one_pass(reader)
    assert (second.read, second.applied, second.duplicates) == (1, 0, 1), second
    assert await state(store) == after_first


async def test_an_arf_complaint_marks_the_dispatch_complained_and_suppresses(
    peers: tuple[BouncingPostfix, Dovecot], make_client: Start, settings: Settings, store: Store
) -> None:
    _, mailbox = peers
    app_settings = reading(settings, mailbox)
    client = await make_client(app_settings, roles={"api", "worker"})
    dispatch = await send_one(client, store, "ann@receiver.example", {"transport": "capture"})
    await asyncio.to_thread(mailbox.append, complaint_about(dispatch, settings.secret_key))
    reader = reader_for(app_settings, client.app)
    assert reader is not None
    result = await one_pass(reader)
    assert (result.read, result.applied) == (1, 1), result
    assert await store.pool.fetchval("SELECT status FROM dispatches") == "complained"
    suppression = await store.suppression(dispatch["owner_id"], "ann@receiver.example")
    assert suppression is not None and suppression.reason == "complaint"


async def test_malformed_oversized_and_plain_messages_are_skipped_once_and_moved(
    peers: tuple[BouncingPostfix, Dovecot], make_client: Start, settings: Settings, store: Store
) -> None:
    _, mailbox = peers
    app_settings = reading(
        settings,
        mailbox,
        DISPATCH_FEEDBACK_MAX_REPORT_BYTES="10000",
        DISPATCH_FEEDBACK_IMAP_PROCESSED_FOLDER="Processed",
    )
    client = await make_client(app_settings, roles={"api"})
    broken = (
        b"From: MAILER-DAEMON@mta.example\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nno status part\r\n--b--\r\n"
    )
    plain = b"From: ann@example.com\r\nSubject: thanks\r\n\r\nA human reply.\r\n"
    big = b"From: a@example.com\r\nSubject: big\r\n\r\n" + b"x" * 20_000 + b"\r\n"
    for message in (broken, plain, big):
        await asyncio.to_thread(mailbox.append, message)
    reader = reader_for(app_settings, client.app)
    assert reader is not None
    before = await state(store)
    result = await one_pass(reader)
    assert (result.read, result.skipped, result.applied) == (3, 3, 0), result
    assert await state(store) == before
    assert await asyncio.to_thread(mailbox.flags) == []  # moved out of INBOX
    assert len(await asyncio.to_thread(mailbox.flags, "Processed")) == 3
    assert (await one_pass(reader)).read == 0


async def test_one_process_at_a_time_reads_a_mailbox(
    peers: tuple[BouncingPostfix, Dovecot], make_client: Start, settings: Settings
) -> None:
    _, mailbox = peers
    app_settings = reading(settings, mailbox)
    first = await make_client(app_settings)  # its sweeper role starts the reader
    started = first.app[READER]
    assert await started.hold()
    api_only = await make_client(app_settings, roles={"api", "worker"})
    assert READER not in api_only.app  # only sweeper-role processes read
    second = reader_for(app_settings, api_only.app)
    assert second is not None and second.key == started.key
    assert not await second.hold()
    await started.release()
    assert await second.hold()


def complaint_about(dispatch: dict[str, Any], secret_key: str) -> bytes:
    """The hand-written ARF fixture, about `dispatch` (its Message-ID and VERP token)."""
    token = DispatchTokens(secret_key, Purpose.BOUNCE).make(dispatch["id"])
    return ARF.replace(
        b"<0123456789abcdef0123456789abcdef01234567@example.com>",
        dispatch["message_id"].encode(),
    ).replace(b"aaaaaaaaaaacvpazrgsqwjo2rhwto", token.encode())


async def test_idle_reads_new_mail_at_once_without_waiting_for_the_poll(
    peers: tuple[BouncingPostfix, Dovecot], make_client: Start, settings: Settings, store: Store
) -> None:
    _, mailbox = peers
    app_settings = reading(settings, mailbox, DISPATCH_FEEDBACK_IMAP_POLL_SECONDS="3600")
    client = await make_client(app_settings)
    dispatch = await send_one(client, store, "ann@receiver.example", {"transport": "capture"})
    reader = client.app[READER]

    async def idle() -> bool:
        return reader.passes >= 1  # the first pass is over: the reader waits in IDLE now

    await wait_for(idle)
    await asyncio.to_thread(mailbox.append, complaint_about(dispatch, settings.secret_key))

    async def complained() -> bool:
        return await store.pool.fetchval("SELECT status FROM dispatches") == "complained"

    await wait_for(complained)  # the next poll is an hour away: only IDLE's push reads it


class FailingOnce:
    """The feedback handler with PostgreSQL away for one call (a fault no peer injects
    mid-test: the session's PostgreSQL serves every other test)."""

    def __init__(self, handler: Any) -> None:
        self.handler, self.failed = handler, False

    async def handle(self, events: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise ConnectionError("PostgreSQL is away")
        return await self.handler.handle(events)


async def test_a_report_whose_result_was_not_recorded_is_read_again(
    peers: tuple[BouncingPostfix, Dovecot], make_client: Start, settings: Settings, store: Store
) -> None:
    _, mailbox = peers
    app_settings = reading(settings, mailbox)
    client = await make_client(app_settings, roles={"api", "worker"})
    dispatch = await send_one(client, store, "ann@receiver.example", {"transport": "capture"})
    await asyncio.to_thread(mailbox.append, complaint_about(dispatch, settings.secret_key))
    reader = reader_for(app_settings, client.app)
    assert reader is not None
    reader.feedback = FailingOnce(reader.feedback)  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await one_pass(reader)
    assert await asyncio.to_thread(mailbox.flags) == ["1 (FLAGS ())"]  # still unread
    result = await one_pass(reader)
    assert (result.read, result.applied) == (1, 1), result
    assert await store.pool.fetchval("SELECT status FROM dispatches") == "complained"


@pytest.mark.parametrize("tls", ["tls", "starttls"])
async def test_the_mailbox_is_read_over_implicit_tls_and_starttls(
    tls: str,
    ca: PrivateCa,
    tmp_path: Path,
    make_client: Start,
    settings: Settings,
    store: Store,
) -> None:
    with Dovecot(free_port(), _maildir(tmp_path), ca=ca, tls_port=free_port()) as mailbox:
        port = mailbox.tls_port if tls == "tls" else mailbox.port
        app_settings = reading(
            settings,
            mailbox,
            DISPATCH_FEEDBACK_IMAP_TLS=tls,
            DISPATCH_FEEDBACK_IMAP_PORT=str(port),
            DISPATCH_FEEDBACK_IMAP_CA_FILE=str(ca.ca_file),
        )
        client = await make_client(app_settings, roles={"api", "worker"})
        dispatch = await send_one(client, store, "ann@receiver.example", {"transport": "capture"})
        await asyncio.to_thread(mailbox.append, complaint_about(dispatch, settings.secret_key))
        reader = reader_for(app_settings, client.app)
        assert reader is not None
        result = await one_pass(reader)
        assert (result.read, result.applied) == (1, 1), result
        readers_login = mailbox.logins()[-1]  # the test's own appends come before it
        assert ", TLS" in readers_login, readers_login


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    return PrivateCa(tmp_path_factory.mktemp("ca"))


def _maildir(tmp_path: Path) -> Path:
    """A Maildir `nobody` can reach (pytest's tmp_path is 0700): under a folder of its own."""
    folder = Path(tempfile.mkdtemp(prefix="dispatch-maildir-"))
    folder.chmod(0o755)
    return folder / "bounce"
