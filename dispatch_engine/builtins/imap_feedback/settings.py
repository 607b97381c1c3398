"""The DISPATCH_FEEDBACK_IMAP_* settings: the bounce mailbox the reader reads (docs/bounces.md);
DISPATCH_REPLY_IMAP_*: how senders' reply mailboxes are read (docs/replies.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dispatch_engine.plugin import ca_file, choice, setting, text, whole_number

_CA_FILE = ca_file  # the field `ca_file` below hides the parser's name in the class body
TLS_ALIASES = {
    **dict.fromkeys(("off", "false", "0", "no"), "none"),
    **dict.fromkeys(("ssl", "implicit", "true", "1", "yes"), "tls"),
}


@dataclass(frozen=True)
class ImapFeedbackSettings:
    host: str | None = setting(
        "DISPATCH_FEEDBACK_IMAP_HOST",
        None,
        text,
        "the IMAP server of the bounce mailbox (unset: no mailbox is read)",
    )
    port: int | None = setting(
        "DISPATCH_FEEDBACK_IMAP_PORT",
        None,
        whole_number(1, 65535),
        "its port (unset: 993 with tls, else 143)",
    )
    tls: str = setting(
        "DISPATCH_FEEDBACK_IMAP_TLS",
        "tls",
        choice("tls", "starttls", "none", aliases=TLS_ALIASES),
        "tls (implicit, port 993), starttls or none (loopback only)",
    )
    user: str | None = setting("DISPATCH_FEEDBACK_IMAP_USER", None, text, "the mailbox's login")
    password: str | None = setting(
        "DISPATCH_FEEDBACK_IMAP_PASSWORD", None, text, "its password", secret=True
    )
    folder: str = setting(
        "DISPATCH_FEEDBACK_IMAP_FOLDER", "INBOX", text, "the folder bounces and complaints land in"
    )
    processed_folder: str | None = setting(
        "DISPATCH_FEEDBACK_IMAP_PROCESSED_FOLDER",
        None,
        text,
        "move each processed message there (unset: flag it \\Seen and leave it)",
    )
    poll_seconds: int = setting(
        "DISPATCH_FEEDBACK_IMAP_POLL_SECONDS",
        60,
        whole_number(1, 3600),
        "how often the mailbox is checked (with IDLE, new mail is read at once as well)",
    )
    max_report_bytes: int = setting(
        "DISPATCH_FEEDBACK_MAX_REPORT_BYTES",
        1_048_576,
        whole_number(10_000, 50_000_000),
        "a larger message in the bounce mailbox is skipped unread (and logged)",
    )
    ca_file: Path | None = setting(
        "DISPATCH_FEEDBACK_IMAP_CA_FILE",
        None,
        ca_file,
        "a PEM file of CA certificates trusted for the IMAP server besides the system's",
    )
    # Each sender's reply mailbox (replies.py; the mailboxes are set per sender in the API).
    reply_poll_seconds: int = setting(
        "DISPATCH_REPLY_IMAP_POLL_SECONDS",
        60,
        whole_number(1, 3600),
        "how often each sender's reply mailbox is checked (IDLE reads new mail at once too)",
    )
    reply_lookback_days: int = setting(
        "DISPATCH_REPLY_IMAP_LOOKBACK_DAYS",
        14,
        whole_number(0, 365),
        "a reply mailbox read for the first time: its messages of the last days are read",
    )
    reply_ca_file: Path | None = setting(
        "DISPATCH_REPLY_IMAP_CA_FILE",
        None,
        _CA_FILE,
        "a PEM file of CA certificates trusted for reply mailboxes besides the system's",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.user)

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.tls == "tls" else 143)
