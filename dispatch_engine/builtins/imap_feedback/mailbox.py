"""One IMAP session with the bounce mailbox: blocking imapclient calls, run in a thread by
reader.py (`asyncio.to_thread`), one call at a time.

imapclient (not aioimaplib): it speaks STARTTLS, which aioimaplib 2.0.3 lacks, and parses
FETCH and SEARCH answers, literals included; a bounce mailbox is a trickle, so one thread per
mailbox costs nothing that matters.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass

from imapclient import IMAPClient

from .settings import ImapFeedbackSettings

log = logging.getLogger(__name__)
TIMEOUT_S = 30.0  # a server that stops answering mid-command
BATCH = 50  # messages fetched per pass: a backlog drains over passes, memory stays bounded
SEEN = b"\\Seen"


@dataclass(frozen=True)
class Fetched:
    uid: int
    raw: bytes | None  # None: over the size cap, not downloaded
    size: int


class MailboxSession:
    def __init__(self, settings: ImapFeedbackSettings) -> None:
        self.settings = settings
        self._client: IMAPClient | None = None
        self.idle_supported = False

    def open(self) -> None:
        s = self.settings
        assert s.host and s.user
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        client = IMAPClient(
            s.host,
            port=s.effective_port,
            ssl=s.tls == "tls",
            ssl_context=context if s.tls == "tls" else None,
            timeout=TIMEOUT_S,
        )
        try:
            if s.tls == "starttls":
                client.starttls(context)
            client.login(s.user, s.password or "")
            client.select_folder(s.folder)
            self.idle_supported = client.has_capability("IDLE")
        except BaseException:
            client.shutdown()
            raise
        self._client = client

    @property
    def client(self) -> IMAPClient:
        if self._client is None:
            raise RuntimeError("the mailbox session is not open")
        return self._client

    def unread(self) -> list[Fetched]:
        """Up to BATCH messages not yet processed (not \\Seen), the oldest first; a message
        over the size cap is listed with no body, so it is skipped without downloading it."""
        uids = sorted(self.client.search(["UNSEEN"]))[:BATCH]
        if not uids:
            return []
        sizes = self.client.fetch(uids, ["RFC822.SIZE"])
        small = [u for u in uids if _size(sizes, u) <= self.settings.max_report_bytes]
        bodies = self.client.fetch(small, ["BODY.PEEK[]"]) if small else {}
        out = []
        for uid in uids:
            raw = bodies.get(uid, {}).get(b"BODY[]")
            out.append(Fetched(uid, raw if isinstance(raw, bytes) else None, _size(sizes, uid)))
        return out

    def done(self, uids: list[int]) -> None:
        """Processed: flagged \\Seen, and moved to the processed folder when one is set."""
        if not uids:
            return
        self.client.add_flags(uids, [SEEN], silent=True)
        target = self.settings.processed_folder
        if target:
            if not self.client.folder_exists(target):
                self.client.create_folder(target)
            self.client.move(uids, target)

    def wait(self, timeout_s: float) -> bool:
        """IDLE until the server announces new mail or `timeout_s` passes; True if it did.
        Without IDLE, returns False at once (the reader then sleeps its poll interval)."""
        if not self.idle_supported:
            return False
        self.client.idle()
        try:
            answers = self.client.idle_check(timeout=timeout_s)
        finally:
            self.client.idle_done()
        return any(len(a) > 1 and a[1] in (b"EXISTS", b"RECENT") for a in answers)

    def abort(self) -> None:
        """Cut the connection from another thread (a stop during IDLE returns at once)."""
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.socket().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:  # already gone: nothing to tell the server
            try:
                client.shutdown()
            except Exception:
                log.debug("closing the IMAP connection failed", exc_info=True)


def _size(sizes: dict[int, dict[bytes, object]], uid: int) -> int:
    value = sizes.get(uid, {}).get(b"RFC822.SIZE")
    return value if isinstance(value, int) else 0
