"""Senders: validate what a user sends, seal passwords, check an account, archive safely."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from . import outbound
from .config import Settings
from .errors import InvalidState, Malformed, NotFound, ValidationError
from .models import Sender, User
from .queue import RedisQueue
from .render import one_line
from .reply_mailbox import check_reply_target, parse_reply_mailbox
from .secretbox import SecretBox
from .store import Store
from .transport import TransportRegistry, TransportSpec
from .warmup import parse_warmup

FIELDS = {
    "from_address", "display_name", "reply_to", "transport", "settings", "hourly_limit",
    "min_gap_ms", "is_default", "daily_limit", "delay_jitter_ms", "warmup", "transactional",
    "reply_mailbox",
}  # fmt: skip
SMTP_TLS = ("none", "starttls", "tls")
WEBHOOK_KEYS = ("url", "password", "timeout")
MAX_URL_CHARS = 2000
MAX_HOST_CHARS = 253  # the longest DNS name


def _address(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, "must be an email address")
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValidationError(field, str(exc)) from None


def _int(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(field, f"must be a whole number from {low} to {high}")
    return value


def _smtp_settings(raw: dict[str, Any], old: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    out = {k: v for k, v in old.items()}
    for key in raw:
        if key not in ("host", "port", "username", "password", "tls", "pipelining"):
            known = "host, port, username, password, tls, pipelining"
            raise ValidationError(f"settings.{key}", f"is not an SMTP setting ({known})")
    if "host" in raw:
        host = raw["host"]
        if not isinstance(host, str) or not host.strip() or len(host.strip()) > MAX_HOST_CHARS:
            raise ValidationError(
                "settings.host", f"must be a host name of at most {MAX_HOST_CHARS} chars"
            )
        out["host"] = raw["host"].strip()
    if "port" in raw:
        out["port"] = _int("settings.port", raw["port"], 1, 65535)
    if "username" in raw:
        if raw["username"] is not None and not isinstance(raw["username"], str):
            raise ValidationError("settings.username", "must be a string")
        out["username"] = raw["username"] or None
    if "tls" in raw:
        if raw["tls"] not in SMTP_TLS:
            raise ValidationError("settings.tls", f"must be one of {', '.join(SMTP_TLS)}")
        out["tls"] = raw["tls"]
    if "pipelining" in raw:  # off for a server that announces PIPELINING but mishandles it
        if not isinstance(raw["pipelining"], bool):
            raise ValidationError("settings.pipelining", "must be true or false")
        out["pipelining"] = raw["pipelining"]
    if "password" in raw:
        if raw["password"] in (None, ""):
            out.pop("password", None)
        elif not isinstance(raw["password"], str):
            raise ValidationError("settings.password", "must be a string")
        else:
            out["password"] = box.seal(raw["password"])
    if "host" not in out:
        raise ValidationError("settings.host", "is required for the smtp transport")
    return out


def _webhook_settings(raw: dict[str, Any], old: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    out = dict(old)
    for key in raw:
        if key not in WEBHOOK_KEYS:
            raise ValidationError(
                f"settings.{key}", f"is not a webhook setting ({', '.join(WEBHOOK_KEYS)})"
            )
    if "url" in raw:
        url = raw["url"]
        if not _http_url(url):
            raise ValidationError(
                "settings.url", f"must be an http(s):// URL of at most {MAX_URL_CHARS} chars"
            )
        out["url"] = url
    if "timeout" in raw:
        try:
            out["timeout"] = outbound.webhook_timeout(raw["timeout"])
        except ValueError as exc:
            raise ValidationError("settings.timeout", str(exc)) from None
    if "password" in raw:
        if not isinstance(raw["password"], str) or not raw["password"]:
            raise ValidationError("settings.password", "must be the signing secret, a string")
        out["password"] = box.seal(raw["password"])
    for key in ("url", "password"):
        if key not in out:
            raise ValidationError(f"settings.{key}", "is required for the webhook transport")
    return out


def _http_url(url: Any) -> bool:
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS or any(c in url for c in "\r\n\t "):
        return False
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


async def check_target(transport: str, settings: dict[str, Any], *, allow_private: bool) -> None:
    """422 naming the field unless a webhook's URL or an SMTP host resolves to public addresses."""
    if allow_private:
        return
    if transport == "webhook":
        field, parts = "settings.url", urlsplit(settings["url"])
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    elif transport == "smtp":
        field, host, port = "settings.host", settings["host"], int(settings.get("port", 587))
    else:
        return
    try:
        await outbound.resolve_public(host, port, allow_private=False)
    except outbound.NotPublicError as exc:
        raise ValidationError(field, str(exc)) from None
    except outbound.UnresolvableError as exc:
        raise ValidationError(
            field, f"{exc}, so it cannot be checked to be a public address"
        ) from None


async def default_sender(store: Store, user: User, settings: Settings) -> Sender:
    """The user's default sender, made on first use (their own address, the configured
    transport and hourly limit). The one place that makes it: sign-in, the compose page
    and every schedule (API or page) call this, so a new user's first campaign has one."""
    return await store.ensure_default_sender(
        user, transport=settings.transport, hourly_limit=settings.max_emails_per_hour
    )


class SenderService:
    def __init__(
        self,
        store: Store,
        queue: RedisQueue,
        box: SecretBox,
        transports: list[TransportSpec],
        *,
        allow_private_targets: bool,
    ) -> None:
        self.store = store
        self.queue = queue
        self.box = box
        self.transports = {spec.name: spec for spec in transports}
        self.allow_private_targets = allow_private_targets

    def _validate(self, data: Any, current: Sender | None) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise Malformed("the request body must be a JSON object")
        unknown = set(data) - FIELDS
        if unknown:
            raise ValidationError(
                sorted(unknown)[0], f"is not a sender field ({', '.join(sorted(FIELDS))})"
            )
        fields: dict[str, Any] = {}
        if current is None or "from_address" in data:
            fields["from_address"] = _address("from_address", data.get("from_address"))
        if "display_name" in data:
            if not isinstance(data["display_name"], str) or len(data["display_name"]) > 200:
                raise ValidationError("display_name", "must be a string of at most 200 characters")
            if one_line(data["display_name"]) != data["display_name"]:
                # it becomes the From header: a line break there would start a new header
                raise ValidationError("display_name", "must be a single line (no CR or LF)")
            fields["display_name"] = data["display_name"].strip()
        if "reply_to" in data:
            if isinstance(data["reply_to"], str) and one_line(data["reply_to"]) != data["reply_to"]:
                raise ValidationError("reply_to", "must be a single line (no CR or LF)")
            fields["reply_to"] = (
                _address("reply_to", data["reply_to"]) if data["reply_to"] else None
            )
        transport = data.get("transport", current.transport if current else None)
        if transport not in self.transports:
            raise ValidationError(
                "transport", f"must be one of {', '.join(sorted(self.transports))}"
            )
        fields["transport"] = transport
        raw_settings = data.get("settings", {})
        if not isinstance(raw_settings, dict):
            raise ValidationError("settings", "must be an object")
        old = current.transport_settings if current and current.transport == transport else {}
        if transport == "smtp":
            fields["transport_settings"] = _smtp_settings(raw_settings, old, self.box)
        elif transport == "webhook":
            fields["transport_settings"] = _webhook_settings(raw_settings, old, self.box)
        elif "settings" in data or current is None or current.transport != transport:
            sealed = dict(raw_settings)
            if isinstance(sealed.get("password"), str):
                sealed["password"] = self.box.seal(sealed["password"])
            fields["transport_settings"] = {**old, **sealed}
        if "hourly_limit" in data:
            fields["hourly_limit"] = _int("hourly_limit", data["hourly_limit"], 1, 1_000_000_000)
        if "min_gap_ms" in data:
            fields["min_gap_ms"] = _int("min_gap_ms", data["min_gap_ms"], 0, 86_400_000)
        if "daily_limit" in data:  # null: no daily limit
            limit = data["daily_limit"]
            fields["daily_limit"] = None if limit is None else _int("daily_limit", limit, 1, 10**9)
        if "warmup" in data:
            fields.update(parse_warmup(data["warmup"], current.warmup if current else None))
        if "delay_jitter_ms" in data:
            fields["delay_jitter_ms"] = _int(
                "delay_jitter_ms", data["delay_jitter_ms"], 0, 86_400_000
            )
        if "is_default" in data:
            if not isinstance(data["is_default"], bool):
                raise ValidationError("is_default", "must be true or false")
            fields["is_default"] = data["is_default"]
        if "transactional" in data:  # its bodies may go without the unsubscribe footer
            if not isinstance(data["transactional"], bool):
                raise ValidationError("transactional", "must be true or false")
            fields["transactional"] = data["transactional"]
        if "reply_mailbox" in data:  # the IMAP inbox its replies are read from
            old_mailbox = current.reply_mailbox if current else None
            fields["reply_mailbox"] = parse_reply_mailbox(
                data["reply_mailbox"], old_mailbox, self.box
            )
        return fields

    async def create(self, user: User, data: Any, default_limit: int) -> Sender:
        fields = self._validate(data, None)
        await self._check_target(fields, data)
        fields.setdefault("hourly_limit", default_limit)
        if await self.store.find_sender(user.id, fields["from_address"]):
            raise ValidationError("from_address", "you already have a sender with this address")
        return await self.store.save_sender(user.id, None, fields)

    async def update(self, user: User, sender_id: int, data: Any) -> Sender:
        current = await self.get(user, sender_id)
        fields = self._validate(data, current)
        await self._check_target(fields, data)
        if (
            "from_address" in fields
            and fields["from_address"].lower() != current.from_address.lower()
        ) and await self.store.find_sender(user.id, fields["from_address"]):
            raise ValidationError("from_address", "you already have a sender with this address")
        changed = fields.get("transport_settings", current.transport_settings)
        if changed != current.transport_settings or fields["transport"] != current.transport:
            fields["unpark"] = True  # a new account (password, host…) is worth trying again
        sender = await self.store.save_sender(user.id, sender_id, fields)
        if current.parked_reason is not None and sender.parked_reason is None:
            await self._unparked(sender)
        return sender

    async def resume(self, user: User, sender_id: int) -> Sender:
        """A user says the sender's account is fixed: its waiting emails go again."""
        sender = await self.get(user, sender_id)
        if not await self.store.unpark_sender(user.id, sender.id):
            raise InvalidState("this sender is not parked", code="sender_not_parked")
        await self._unparked(sender)
        return await self.get(user, sender_id)

    async def _unparked(self, sender: Sender) -> None:
        await self.store.mark_sender_waiting(sender.id, None)
        await self.queue.unpark_sender(sender.id)

    async def _check_target(self, fields: dict[str, Any], data: dict[str, Any]) -> None:
        """Where a new or changed sender connects must be public (outbound.py)."""
        if "transport_settings" in fields and ("settings" in data or "transport" in data):
            await check_target(
                fields["transport"],
                fields["transport_settings"],
                allow_private=self.allow_private_targets,
            )
        if fields.get("reply_mailbox") is not None:
            await check_reply_target(
                fields["reply_mailbox"], allow_private=self.allow_private_targets
            )

    async def get(self, user: User, sender_id: int) -> Sender:
        sender = await self.store.find_sender(user.id, sender_id)
        if sender is None:
            raise NotFound("no such sender")
        return sender

    async def delete(self, user: User, sender_id: int, *, cancel_queued: bool) -> int:
        """Archive a sender. With queued emails it refuses, unless told to cancel them."""
        sender = await self.get(user, sender_id)
        if len(await self.store.senders_of(user.id)) == 1:
            raise InvalidState(
                "you need at least one sender; add another first", code="last_sender"
            )
        queued = await self.store.queued_of_sender(sender.id)
        if queued and not cancel_queued:
            raise InvalidState(
                f"this sender has {len(queued)} queued emails; cancel them first, or delete "
                "with ?cancel_queued=true to cancel them",
                code="sender_has_queued_emails",
                details={"queued": len(queued)},
            )
        cancelled = await self.store.cancel_sender_queued(sender.id) if queued else []
        if cancelled:
            await self.queue.remove(sender.id, [r["id"] for r in cancelled])
        await self.store.archive_sender(user.id, sender.id)
        return len(cancelled)

    async def check(
        self, registry: TransportRegistry, user: User, sender_id: int, send_test_to: str | None
    ) -> dict[str, Any]:
        """Connect, negotiate TLS, authenticate; send a test email to the owner if asked."""
        sender = await self.get(user, sender_id)
        return await registry.check(sender, send_test_to)
