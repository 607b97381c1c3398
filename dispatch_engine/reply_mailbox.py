"""A sender's reply mailbox: the IMAP inbox its replies land in (docs/replies.md).

`POST/PATCH /api/senders` take `reply_mailbox: {host, port, tls, username, password,
folder}` (null: no longer read). Validated field by field (`reply_mailbox.<field>` names a
bad one), the password sealed like a transport password (secretbox.py) and never shown, and
the host checked by outbound.py like an SMTP host: public addresses only unless private
targets are allowed (the reader checks again at each connection).
"""

from __future__ import annotations

from typing import Any

from . import outbound
from .errors import ValidationError
from .secretbox import SecretBox

KEYS = ("host", "port", "tls", "username", "password", "folder")
TLS = ("tls", "starttls", "none")
MAX_HOST_CHARS = 253
MAX_TEXT_CHARS = 320  # a login is often an address: RFC 5321's path limit
MAX_FOLDER_CHARS = 200
FIELD = "reply_mailbox"


def port_of(mailbox: dict[str, Any]) -> int:
    """Its port: the one given, else 993 with implicit TLS, else 143."""
    port = mailbox.get("port")
    return port if isinstance(port, int) else (993 if mailbox.get("tls", "tls") == "tls" else 143)


def _text(key: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValidationError(f"{FIELD}.{key}", f"must be a string of 1 to {limit} characters")
    if any(c in value for c in "\r\n\0"):
        raise ValidationError(f"{FIELD}.{key}", "must be a single line")
    return value.strip()


def parse_reply_mailbox(
    raw: Any, old: dict[str, Any] | None, box: SecretBox
) -> dict[str, Any] | None:
    """The mailbox to store (its password sealed), from what a user sent; None: remove it."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValidationError(FIELD, "must be an object (host, port, tls, username, password, "
                              "folder) or null")  # fmt: skip
    for key in raw:
        if key not in KEYS:
            raise ValidationError(f"{FIELD}.{key}", f"is not a mailbox setting ({', '.join(KEYS)})")
    out = dict(old or {})
    if "host" in raw:
        out["host"] = _text("host", raw["host"], MAX_HOST_CHARS)
        if any(c in out["host"] for c in " /@"):
            raise ValidationError(f"{FIELD}.host", "must be a host name or an IP address")
    if "port" in raw:
        port = raw["port"]
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
        ):
            raise ValidationError(f"{FIELD}.port", "must be a whole number from 1 to 65535")
        out["port"] = port
    if "tls" in raw:
        if raw["tls"] not in TLS:
            raise ValidationError(f"{FIELD}.tls", f"must be one of {', '.join(TLS)}")
        out["tls"] = raw["tls"]
    if "username" in raw:
        out["username"] = _text("username", raw["username"], MAX_TEXT_CHARS)
    if "folder" in raw:
        out["folder"] = _text("folder", raw["folder"], MAX_FOLDER_CHARS)
    if "password" in raw:
        if (
            not isinstance(raw["password"], str)
            or not raw["password"]
            or len(raw["password"]) > 1000
        ):
            raise ValidationError(f"{FIELD}.password", "must be a string of 1 to 1000 characters")
        out["password"] = box.seal(raw["password"])
    out.setdefault("tls", "tls")
    out.setdefault("folder", "INBOX")
    for key in ("host", "username", "password"):
        if key not in out:
            raise ValidationError(f"{FIELD}.{key}", "is required for a reply mailbox")
    return {k: out[k] for k in KEYS if out.get(k) is not None}


async def check_reply_target(mailbox: dict[str, Any], *, allow_private: bool) -> None:
    """422 naming `reply_mailbox.host` unless it resolves to public addresses only."""
    if allow_private:
        return
    try:
        await outbound.resolve_public(mailbox["host"], port_of(mailbox), allow_private=False)
    except outbound.NotPublicError as exc:
        raise ValidationError(f"{FIELD}.host", str(exc)) from None
    except outbound.UnresolvableError as exc:
        raise ValidationError(
            f"{FIELD}.host", f"{exc}, so it cannot be checked to be a public address"
        ) from None


def reply_mailbox_json(mailbox: dict[str, Any] | None) -> dict[str, Any] | None:
    """As the API shows it: the password is write-only, only its presence shows."""
    if mailbox is None:
        return None
    shown = {k: v for k, v in mailbox.items() if k != "password"}
    shown["port"] = port_of(mailbox)
    shown["password_set"] = "password" in mailbox
    return shown
