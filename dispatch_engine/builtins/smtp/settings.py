"""The SMTP_* settings: the account of senders that have none of their own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dispatch_engine.plugin import ca_file, choice, setting, text, whole_number

TLS_ALIASES = {
    **dict.fromkeys(("off", "false", "0", "no"), "none"),
    **dict.fromkeys(("true", "1", "yes"), "starttls"),
    **dict.fromkeys(("ssl", "implicit"), "tls"),
}


@dataclass(frozen=True)
class SmtpSettings:
    host: str = setting("SMTP_HOST", "localhost", text, "the SMTP server")
    port: int = setting("SMTP_PORT", 587, whole_number(1, 65535), "its port")
    user: str | None = setting("SMTP_USER", None, text, "the login (unset: none)")
    password: str | None = setting("SMTP_PASSWORD", None, text, "its password", secret=True)
    tls: str = setting(
        "SMTP_TLS",
        "starttls",
        choice("none", "starttls", "tls", aliases=TLS_ALIASES),
        "none, starttls or tls (implicit TLS, usually port 465)",
    )
    pool_size: int = setting(
        "SMTP_POOL_SIZE", 8, whole_number(1, 64), "open connections kept per SMTP account"
    )
    ca_file: Path | None = setting(
        "SMTP_CA_FILE",
        None,
        ca_file,
        "a PEM file of CA certificates trusted for SMTP TLS besides the system's",
    )
