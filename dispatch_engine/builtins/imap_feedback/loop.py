"""The loop every IMAP reader runs: one process at a time per mailbox, one session, IDLE.

It runs in every sweeper-role process; a Redis lock per mailbox (`key`, with expiry,
renewed by its holder like the sweeper's leader lock) lets one of them read. The holder
keeps one IMAP session: a pass reads what is new, then it waits for new mail with IDLE where
the server offers it, else sleeps, at most the poll interval either way: no busy loop. What
a pass reads and what it does with it is the subclass's (`open_session`, `read_pass`): the
bounce mailbox (reader.py) and each sender's reply mailbox (builtins/imap_replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from redis.asyncio import Redis

from .mailbox import MailboxSession

T = TypeVar("T")
IDLE_MAX_S = 25 * 60.0  # RFC 2177: a server may drop an IDLE after 30 minutes

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


class MailboxLoop:
    """Hold the mailbox's lock, keep a session, read a pass whenever mail may be new."""

    label = "the mailbox"  # for the log

    def __init__(self, key: str, redis: Redis, poll_s: float, log: logging.Logger) -> None:
        self.key = key
        self.identity = secrets.token_hex(8)
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)
        self.poll_s = poll_s
        self.log = log
        self.passes = 0  # passes done over the mailbox (what a test waits on)
        self.lock_ms = int(max(30.0, 3 * self.poll_s) * 1000)  # outlives two missed renewals
        # One thread per mailbox: its calls run in order, so a close queued by a cancelled
        # task still comes after the open it interrupted (no connection left behind).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="imap-reader")

    async def _call(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    async def new_session(self) -> MailboxSession:
        """A session not yet open (the loop opens it in the mailbox's thread)."""
        raise NotImplementedError

    async def read_pass(self, session: MailboxSession) -> Any:
        raise NotImplementedError

    async def failed(self, exc: Exception) -> None:
        """A session failed (logged); a subclass may record it too."""

    async def run(self) -> None:
        """Until cancelled: hold the lock, then read; on any failure wait a poll interval."""
        while True:
            try:
                if await self.hold():
                    await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("reading %s failed: %s: %s", self.label, type(exc).__name__, exc)
                with contextlib.suppress(Exception):
                    await self.failed(exc)
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
        session = await self.new_session()
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
