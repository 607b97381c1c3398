"""The bounce mailbox reader: one process at a time reads the mailbox and hands each report
to the core's `Feedback.handle`.

It runs in every sweeper-role process, in the loop of loop.py (a Redis lock per mailbox,
`lock_key`; one session; IDLE or the poll interval). A pass reads what is not yet \\Seen.
A message is flagged \\Seen (or moved) only after its events are recorded, so
a database outage leaves it for the next pass; a report the handler already recorded
changes nothing (its fingerprint). A report over the size cap, malformed, or not a report
at all is skipped and logged, never retried.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from dispatch_engine.plugin import Feedback, FeedbackEvent, dsn, verp

from .loop import IDLE_MAX_S, MailboxLoop
from .mailbox import MailboxSession
from .reports import interpret
from .settings import ImapFeedbackSettings

__all__ = ["IDLE_MAX_S", "LOCK_PREFIX", "MailboxReader", "PassResult", "lock_key"]
log = logging.getLogger("dispatch_engine.feedback.imap")
LOCK_PREFIX = "dispatch:{feedback}:imap:"  # + a digest of the mailbox: its reader's identity


def lock_key(settings: ImapFeedbackSettings) -> str:
    mailbox = f"{settings.user}@{settings.host}:{settings.effective_port}/{settings.folder}"
    return LOCK_PREFIX + hashlib.sha256(mailbox.encode()).hexdigest()[:24]


@dataclass
class PassResult:
    """What one pass over the mailbox did."""

    read: int = 0
    applied: int = 0
    duplicates: int = 0
    unmatched: int = 0
    skipped: int = 0  # malformed, oversized, or not a report


class MailboxReader(MailboxLoop):
    label = "the bounce mailbox"

    def __init__(
        self,
        settings: ImapFeedbackSettings,
        feedback: Feedback,
        redis: Redis,
        paths: verp.ReturnPaths,
    ) -> None:
        super().__init__(lock_key(settings), redis, float(settings.poll_seconds), log)
        self.settings = settings
        self.feedback = feedback
        self.paths = paths

    async def new_session(self) -> MailboxSession:
        return MailboxSession(self.settings)

    async def read_pass(self, session: MailboxSession) -> PassResult:
        """Read what is unread, hand the events over, mark what was handled."""
        result = PassResult()
        done: list[int] = []
        for fetched in await self._call(session.unread):
            result.read += 1
            event = self._event_of(fetched.uid, fetched.raw, fetched.size)
            if event is None:
                result.skipped += 1
            else:
                handled = await self.feedback.handle([event])  # raises: left for the next pass
                result.applied += len(handled.applied)
                result.duplicates += handled.duplicates
                result.unmatched += handled.unmatched
            done.append(fetched.uid)
        await self._call(session.done, done)
        self.passes += 1
        if result.read:
            log.info("bounce mailbox: %s", result)
        return result

    def _event_of(self, uid: int, raw: bytes | None, size: int) -> FeedbackEvent | None:
        cap = self.settings.max_report_bytes
        if raw is None:
            log.warning(
                "bounce mailbox: message %d of %d bytes is over the cap; skipped", uid, size
            )
            return None
        try:
            found = interpret(raw, cap, self.paths)
        except dsn.MalformedReport as exc:
            log.warning("bounce mailbox: message %d is a malformed report; skipped: %s", uid, exc)
            return None
        except Exception:  # a parser bug must not stop the mailbox: skip it, say so
            log.exception("bounce mailbox: message %d could not be read; skipped", uid)
            return None
        if found.event is None:
            log.info("bounce mailbox: message %d skipped: %s", uid, found.note)
        return found.event
