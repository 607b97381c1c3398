"""One IMAP session with a mailbox (the bounce mailbox, a sender's reply mailbox): blocking
imapclient calls, run in the mailbox's own thread by loop.py, one call at a time.

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
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from imapclient import IMAPClient, imap4, tls

log = logging.getLogger(__name__)
TIMEOUT_S = 30.0  # a server that stops answering mid-command
BATCH = 50  # messages fetched per pass: a backlog drains over passes, memory stays bounded
SEEN = b"\\Seen"


@dataclass(frozen=True)
class Fetched:
    uid: int
    raw: bytes | None  # None: over the size cap, not downloaded
    size: int


class Account(Protocol):
    """What a session needs to know of its mailbox (ImapFeedbackSettings is one)."""

    @property
    def host(self) -> str | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def tls(self) -> str: ...
    @property
    def effective_port(self) -> int: ...
    @property
    def folder(self) -> str: ...
    @property
    def processed_folder(self) -> str | None: ...
    @property
    def max_report_bytes(self) -> int: ...
    @property
    def ca_file(self) -> Path | None: ...


class _PinnedClient(IMAPClient):  # type: ignore[misc]
    """Connects to `address` (one outbound.py just checked) while TLS still checks `host`:
    a second lookup by imaplib could be answered differently (DNS rebinding)."""

    def __init__(self, host: str, address: str, **kwargs: Any) -> None:
        self._address = address
        super().__init__(host, **kwargs)

    def _create_IMAP4(self) -> Any:
        address, timeout = self._address, getattr(self._timeout, "connect", None)

        def connect(port: int, wait: float | None) -> socket.socket:
            return socket.create_connection((address, port), wait if wait is not None else timeout)

        if self.ssl:

            class PinnedTls(tls.IMAP4_TLS):  # type: ignore[misc]
                def _create_socket(self, timeout: float | None = None) -> socket.socket:
                    sock = connect(self.port, timeout)
                    wrapped: socket.socket = tls.wrap_socket(sock, self.ssl_context, self.host)
                    return wrapped

            return PinnedTls(self.host, self.port, self.ssl_context, timeout)

        class Pinned(imap4.IMAP4WithTimeout):  # type: ignore[misc]
            def _create_socket(self, timeout: float | None = None) -> socket.socket:
                return connect(self.port, timeout)

        return Pinned(self.host, self.port, timeout)


class MailboxSession:
    def __init__(
        self, settings: Account, address: str | None = None, *, readonly: bool = False
    ) -> None:
        self.settings = settings
        self.address = address  # connect there (checked), not to a new lookup of the host
        self.readonly = readonly  # EXAMINE: a person's own inbox keeps every flag it had
        self._client: IMAPClient | None = None
        self.idle_supported = False
        self.uidvalidity = 0  # of the selected folder: UIDs are kept only while it holds
        self.uidnext = 1  # of the selected folder when it was opened

    def open(self) -> None:
        s = self.settings
        assert s.host and s.user
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        options: dict[str, Any] = {
            "port": s.effective_port,
            "ssl": s.tls == "tls",
            "ssl_context": context if s.tls == "tls" else None,
            "timeout": TIMEOUT_S,
        }
        client = (
            IMAPClient(s.host, **options)
            if self.address is None
            else _PinnedClient(s.host, self.address, **options)
        )
        try:
            if s.tls == "starttls":
                client.starttls(context)
            client.login(s.user, s.password or "")
            selected = client.select_folder(s.folder, readonly=self.readonly)
            value = selected.get(b"UIDVALIDITY", 0)
            self.uidvalidity = value if isinstance(value, int) else 0
            uidnext = selected.get(b"UIDNEXT", 1)
            self.uidnext = uidnext if isinstance(uidnext, int) else 1
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
        return self._fetch(sorted(self.client.search(["UNSEEN"]))[:BATCH])

    def after(self, last_uid: int | None, since: date, head_bytes: int) -> list[Fetched]:
        """Up to BATCH messages after UID `last_uid` (None: those of `since` or later), the
        oldest first: each one's header and the first `head_bytes` of its body (a reply's
        attachments are never downloaded), read with PEEK: no flag of the mailbox changes."""
        if last_uid is None:
            uids = self.client.search(["SINCE", since])
        else:  # "n:*" names the last message even when its UID is below n: filtered
            uids = [u for u in self.client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid]
        uids = sorted(uids)[:BATCH]
        if not uids:
            return []
        parts = self.client.fetch(
            uids, ["RFC822.SIZE", "BODY.PEEK[HEADER]", f"BODY.PEEK[TEXT]<0.{head_bytes}>"]
        )
        out = []
        for uid in uids:
            got = parts.get(uid, {})
            head, text = got.get(b"BODY[HEADER]"), got.get(b"BODY[TEXT]<0>")
            raw = head + text if isinstance(head, bytes) and isinstance(text, bytes) else head
            out.append(Fetched(uid, raw if isinstance(raw, bytes) else None, _size(parts, uid)))
        return out

    def _fetch(self, uids: list[int]) -> list[Fetched]:
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
