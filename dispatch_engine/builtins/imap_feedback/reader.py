"""The bounce mailbox reader: one process at a time reads the mailbox and hands each report
to the core's `Feedback.handle`.

It runs in every sweeper-role process; a Redis lock per mailbox (`lock_key`, with expiry,
renewed by its holder like the sweeper's leader lock) lets one of them read. The holder
keeps one IMAP session: a pass reads what is not yet \\Seen, then it waits for new mail
with IDLE where the server offers it, else sleeps, at most the poll interval either way:
no busy loop. A message is flagged \\Seen (or moved) only after its events are recorded, so
a database outage leaves it for the next pass; a report the handler already recorded
changes nothing (its fingerprint). A report over the size cap, malformed, or not a report
at all is skipped and logged, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis

from dispatch_engine.plugin import Feedback, FeedbackEvent, dsn, verp

from .mailbox import MailboxSession
from .reports import interpret
from .settings import ImapFeedbackSettings

T = TypeVar("T")
log = logging.getLogger("dispatch_engine.feedback.imap")
IDLE_MAX_S = 25 * 60.0  # RFC 2177: a server may drop an IDLE after 30 minutes
LOCK_PREFIX = "dispatch:{feedback}:imap:"  # + a digest of the mailbox: its reader's identity

# Take or renew the lock: 1 if this process holds it now.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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


class MailboxReader:
    def __init__(
        self,
        settings: ImapFeedbackSettings,
        feedback: Feedback,
        redis: Redis,
        paths: verp.ReturnPaths,
    ) -> None:
        self.settings = settings
        self.feedback = feedback
        self.paths = paths
        self.key = lock_key(settings)
        self.identity = secrets.token_hex(8)
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)
        self.poll_s = float(settings.poll_seconds)
        self.passes = 0  # passes done over the mailbox (what a test waits on)
        self.lock_ms = int(max(30.0, 3 * self.poll_s) * 1000)  # outlives two missed renewals
        # One thread per mailbox: its calls run in order, so a close queued by a cancelled
        # task still comes after the open it interrupted (no connection left behind).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="imap-feedback")

    async def _call(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    async def run(self) -> None:
        """Until cancelled: hold the lock, then read; on any failure wait a poll interval."""
        while True:
            try:
                if await self.hold():
                    await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading the bounce mailbox failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.poll_s)

    async def hold(self) -> bool:
        return bool(await self._hold(keys=[self.key], args=[self.identity, self.lock_ms]))

    async def release(self) -> None:
        """Give the mailbox up: another process may read it at once."""
        await self._release(keys=[self.key], args=[self.identity])

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop `task` (its `run`), give the mailbox up, end the thread."""
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.release()
        self._thread.shutdown(wait=False)

    async def _session(self) -> None:
        session = MailboxSession(self.settings)
        try:
            await self._call(session.open)
            while True:
                await self.read_pass(session)
                if not await self.hold():
                    return  # another process took the mailbox over
                try:
                    woken = await self._call(session.wait, min(self.poll_s, IDLE_MAX_S))
                except asyncio.CancelledError:
                    session.abort()  # the thread's IDLE returns at once
                    raise
                if not woken and not session.idle_supported:
                    await asyncio.sleep(self.poll_s)
        finally:
            await self._call(session.close)

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
