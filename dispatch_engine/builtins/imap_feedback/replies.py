"""Each sender's reply mailbox, read by the loop of loop.py (docs/replies.md).

`ReplyReaders` keeps one `ReplyReader` per configured mailbox (the senders' `reply_mailbox`,
re-read every poll interval: a new, changed or removed mailbox starts, restarts or stops its
reader). A reader holds its own Redis lock (one process at a time per sender's mailbox),
connects only to an address outbound.py has just checked, opens the folder read-only
(EXAMINE: it is a person's own inbox, no flag changes) and keeps where it got to as the last
UID read (`reply_mailbox_cursors`). Each message goes to the core's `ReplyIntake.take`:
a reply, an auto-reply, or a report (a DSN or ARF report then goes the bounce path, acting
only on the mailbox owner's own emails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from dispatch_engine.plugin import (
    ReplyIntake,
    ReplyMailbox,
    dsn,
    outbound,
    verp,
)

from .loop import MailboxLoop
from .mailbox import MailboxSession
from .reports import interpret
from .settings import ImapFeedbackSettings

log = logging.getLogger("dispatch_engine.replies.imap")
LOCK_PREFIX = "dispatch:{feedback}:replies:"  # + sender id and mailbox digest
HEAD_BYTES = 65_536  # of each body fetched: the first lines and a return date are in there


class ReplyReader(MailboxLoop):
    label = "a reply mailbox"

    def __init__(
        self,
        mailbox: ReplyMailbox,
        intake: ReplyIntake,
        redis: Redis,
        paths: verp.ReturnPaths,
        settings: ImapFeedbackSettings,
    ) -> None:
        key = f"{LOCK_PREFIX}{mailbox.sender_id}:{mailbox.digest}"
        super().__init__(key, redis, float(settings.reply_poll_seconds), log)
        self.mailbox = mailbox
        self.intake = intake
        self.paths = paths
        self.lookback = timedelta(days=settings.reply_lookback_days)
        self.label = f"sender {mailbox.sender_id}'s reply mailbox"

    async def new_session(self) -> MailboxSession:
        m = self.mailbox
        addresses = await outbound.resolve_public(
            m.host, m.port, allow_private=self.intake.allow_private
        )
        return MailboxSession(m, addresses[0], readonly=True)

    async def failed(self, exc: Exception) -> None:
        where = f"{self.mailbox.host}:{self.mailbox.port}"
        await self.intake.failed(self.mailbox, outbound.describe_failure(exc, where)["message"])

    async def read_pass(self, session: MailboxSession) -> dict[str, int]:
        """Read what came after the last UID read; the cursor moves past what was handled."""
        m, counts = self.mailbox, dict[str, int]()
        cursor = await self.intake.cursor(m)
        last = cursor[1] if cursor is not None and cursor[0] == session.uidvalidity else None
        since = (datetime.now(UTC) - self.lookback).date()
        fetched = await self._call(session.after, last, since, HEAD_BYTES)
        done = last
        try:
            for item in fetched:
                outcome = "skipped" if item.raw is None else await self._take(item.raw)
                counts[outcome] = counts.get(outcome, 0) + 1
                done = item.uid
        finally:  # what was handled stays handled, even when a later message failed
            if done is not None and done != last:
                await self.intake.save_cursor(m, session.uidvalidity, done)
        if not fetched and last is None:  # nothing of the last days: start from what comes
            await self.intake.save_cursor(m, session.uidvalidity, session.uidnext - 1)
        self.passes += 1
        if counts:
            log.info("sender %d's reply mailbox: %s", m.sender_id, counts)
        return counts

    async def _take(self, raw: bytes) -> str:
        taken = await self.intake.take(self.mailbox, raw)  # raises: read again next pass
        if taken.outcome != "report":
            return taken.outcome
        try:
            event = interpret(raw, self.mailbox.max_report_bytes, self.paths).event
        except dsn.MalformedReport:
            return "skipped"
        if event is None or not await self.intake.owned_target(self.mailbox, event):
            return "report"
        await self.intake.feedback.handle([event])
        return "report"


class ReplyReaders:
    """One reader per configured reply mailbox, kept in step with the senders."""

    def __init__(
        self,
        intake: ReplyIntake,
        redis: Redis,
        paths: verp.ReturnPaths,
        settings: ImapFeedbackSettings,
    ) -> None:
        self.intake, self.redis, self.paths, self.settings = intake, redis, paths, settings
        self.readers: dict[ReplyMailbox, tuple[ReplyReader, asyncio.Task[None]]] = {}
        self.poll_s = float(settings.reply_poll_seconds)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listing the reply mailboxes failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.poll_s)

    async def refresh(self) -> None:
        """Start a reader for each new or changed mailbox, stop those no longer set."""
        cap = max(self.settings.max_report_bytes, HEAD_BYTES * 4)
        wanted = set(await self.intake.mailboxes(cap, self.settings.reply_ca_file))
        for mailbox in [m for m in self.readers if m not in wanted]:
            reader, task = self.readers.pop(mailbox)
            await reader.stop(task)
        loop = asyncio.get_running_loop()
        for mailbox in wanted - set(self.readers):
            reader = ReplyReader(mailbox, self.intake, self.redis, self.paths, self.settings)
            name = f"imap-replies-{mailbox.sender_id}"
            self.readers[mailbox] = (reader, loop.create_task(reader.run(), name=name))

    def reader_of(self, sender_id: int) -> ReplyReader | None:
        return next((r for m, (r, _) in self.readers.items() if m.sender_id == sender_id), None)

    async def stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for reader, reading in list(self.readers.values()):
            await reader.stop(reading)
        self.readers.clear()
