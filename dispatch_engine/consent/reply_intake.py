"""Replies into feedback: a message read from a sender's reply mailbox → matched to one of
that sender's owner's emails → a REPLY or AUTO_REPLY event through `Feedback.handle`, its
line on the campaign's replies, and the `reply_received` hook (docs/replies.md).

Matching: the Message-IDs it answers (In-Reply-To, then References, newest first) that are
ours AND of the mailbox owner's own emails; else the author's address and the subject
(reply prefixes dropped) against the owner's emails from this sender. A mail in A's
mailbox never acts on B's emails, whatever Message-ID it names.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..hooks import Hooks
from ..message_ids import message_id_for
from ..reply_mailbox import port_of
from ..secretbox import SecretBox, SecretError
from ..store import Store
from ..store.feedback import FeedbackTarget
from . import replies
from .dsn import MalformedReport, parse_message
from .feedback import Feedback, FeedbackEvent, FeedbackKind

log = logging.getLogger("dispatch_engine.replies")
SOURCE = "imap"


@dataclass(frozen=True)
class ReplyMailbox:
    """One sender's reply mailbox, its password opened (an `Account` of the IMAP session)."""

    sender_id: int
    owner_id: int
    from_address: str
    host: str
    port: int
    tls: str
    user: str
    password: str
    folder: str
    max_report_bytes: int
    ca_file: Path | None = None
    processed_folder: str | None = None  # never moved: it is a person's own inbox

    @property
    def effective_port(self) -> int:
        return self.port

    @property
    def digest(self) -> str:
        """Which mailbox this is: a changed host, login or folder is another one."""
        where = f"{self.user}@{self.host}:{self.port}/{self.folder}"
        return hashlib.sha256(where.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Taken:
    """What one message was: reply, auto_reply, report, unmatched, foreign, skipped."""

    outcome: str
    new: bool = False  # its event was recorded now (not read before)
    dispatch_id: int | None = None


class ReplyIntake:
    def __init__(
        self, store: Store, feedback: Feedback, hooks: Hooks, box: SecretBox, *,
        allow_private: bool,
    ) -> None:  # fmt: skip
        self.store = store
        self.feedback = feedback
        self.hooks = hooks
        self.box = box
        self.allow_private = allow_private  # DISPATCH_ALLOW_PRIVATE_TARGETS (outbound.py)

    async def mailboxes(self, max_bytes: int, ca_file: Path | None) -> list[ReplyMailbox]:
        """Every configured reply mailbox; one whose password cannot be opened is skipped."""
        found = []
        for row in await self.store.reply_mailboxes():
            box: dict[str, Any] = row["reply_mailbox"]
            try:
                password = self.box.open(box["password"])
            except (SecretError, KeyError):
                log.warning("sender %d: its reply mailbox password cannot be opened", row["id"])
                continue
            found.append(
                ReplyMailbox(
                    row["id"],
                    row["owner_id"],
                    row["from_address"],
                    box["host"],
                    port_of(box),
                    box.get("tls", "tls"),
                    box["username"],
                    password,
                    box.get("folder", "INBOX"),
                    max_bytes,
                    ca_file,
                )
            )
        return found

    async def cursor(self, mailbox: ReplyMailbox) -> tuple[int, int] | None:
        """(UIDVALIDITY, last UID read) of the mailbox, when it was read before."""
        return await self.store.reply_cursor(mailbox.sender_id, mailbox.digest)

    async def save_cursor(self, mailbox: ReplyMailbox, uidvalidity: int, last_uid: int) -> None:
        await self.store.save_reply_cursor(mailbox.sender_id, mailbox.digest, uidvalidity, last_uid)

    async def failed(self, mailbox: ReplyMailbox, error: str) -> None:
        await self.store.reply_mailbox_failed(mailbox.sender_id, error)

    async def take(self, mailbox: ReplyMailbox, raw: bytes) -> Taken:
        """Match one message and record what it is (once: its fingerprint)."""
        try:
            message = parse_message(raw, mailbox.max_report_bytes)
        except MalformedReport:
            return Taken("skipped")
        classified = replies.classify(message)
        if classified.kind == "report":
            return Taken("report")
        match = await self._match(mailbox, message)
        if match is None:
            return Taken("unmatched")
        if isinstance(match, str):
            return Taken(match)
        target, answered, matched_by = match
        return await self._record(mailbox, message, raw, classified.kind, target, answered,
                                  matched_by)  # fmt: skip

    async def owned_target(self, mailbox: ReplyMailbox, event: FeedbackEvent) -> bool:
        """A bounce or complaint read from a reply mailbox acts only on its owner's emails."""
        target = await self.store.feedback_target(event.dispatch_id, event.message_id)
        return target is not None and target.owner_id == mailbox.owner_id

    async def _match(
        self, mailbox: ReplyMailbox, message: Any
    ) -> tuple[FeedbackTarget, str, str] | str | None:
        foreign = False
        for answered in replies.referenced_ids(message):
            target = await self.store.feedback_target(None, answered)
            if target is None:
                continue
            if target.owner_id == mailbox.owner_id:
                return target, answered, "thread"
            foreign = True  # another owner's email: never acted on from this mailbox
        author = replies.from_address(message)
        subject = replies.normalize_subject(str(message.get("Subject", "")))
        if author and subject:
            found = await self.store.reply_target_by_subject(
                mailbox.owner_id, mailbox.sender_id, author, subject, replies.normalize_subject
            )
            if found is not None:
                target, key = found
                return target, message_id_for(key, mailbox.from_address), "subject"
        return "foreign" if foreign else None

    async def _record(
        self, mailbox: ReplyMailbox, message: Any, raw: bytes, kind: str,
        target: FeedbackTarget, answered: str, matched_by: str,
    ) -> Taken:  # fmt: skip
        text = replies.plain_text(message)
        first_lines = replies.snippet(text)
        now = datetime.now(UTC)
        when = replies.sent_at(message) or now
        when = min(when, now) if when > now - timedelta(days=3650) else now
        subject = " ".join(str(message.get("Subject", "")).split())
        returns_on = None
        if kind == "auto_reply" and replies.is_out_of_office(message, text):
            returns_on = replies.return_date(f"{subject}\n{text}", when.date())
        author = replies.from_address(message)
        own = str(message.get("Message-ID", "")).strip()[:250] or (
            "sha256:" + hashlib.sha256(raw).hexdigest()
        )
        fingerprint = f"{SOURCE}:{kind}:{mailbox.owner_id}:{own}"  # once per owner
        event = FeedbackEvent(
            kind=FeedbackKind.REPLY if kind == "reply" else FeedbackKind.AUTO_REPLY,
            source=SOURCE,
            fingerprint=fingerprint,
            dispatch_id=target.dispatch_id,  # found among the mailbox owner's own emails
            message_id=answered,
            detail=replies.detail_of(author, when, first_lines, returns_on),
            occurred_at=when,
        )
        handled = await self.feedback.handle([event])
        await self.store.record_reply(
            target, fingerprint=fingerprint, kind=kind, matched_by=matched_by, author=author,
            subject=subject, first_lines=first_lines, received_at=when, returns_on=returns_on,
        )  # fmt: skip
        new = bool(handled.applied)
        if new and kind == "reply":
            await self.hooks.reply_received(
                dispatch_id=target.dispatch_id, campaign_id=target.campaign_id,
                recipient=target.recipient, from_address=author, snippet=first_lines,
            )  # fmt: skip
        return Taken(kind, new, target.dispatch_id)
