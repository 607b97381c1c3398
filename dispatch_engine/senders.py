"""Senders: validate what a user sends, seal passwords, check an account, archive safely."""

from __future__ import annotations

from typing import Any

from email_validator import EmailNotValidError, validate_email

from .errors import ApiError, invalid
from .models import Sender, User
from .queue import RedisQueue
from .secretbox import SecretBox
from .store import Store
from .transport import TransportRegistry, TransportSpec

FIELDS = {
    "from_address", "display_name", "reply_to", "transport", "settings", "hourly_limit",
    "min_gap_ms", "is_default",
}  # fmt: skip
SMTP_TLS = ("none", "starttls", "tls")


def public(sender: Sender) -> dict[str, Any]:
    """A sender as the API shows it: the password is write-only, only its presence shows."""
    settings = {k: v for k, v in sender.transport_settings.items() if k != "password"}
    settings["password_set"] = "password" in sender.transport_settings
    return {
        "id": sender.id,
        "from_address": sender.from_address,
        "display_name": sender.display_name,
        "reply_to": sender.reply_to,
        "transport": sender.transport,
        "settings": settings,
        "hourly_limit": sender.hourly_limit,
        "min_gap_ms": sender.min_gap_ms,
        "is_default": sender.is_default,
        # Set when its server kept refusing its account: every email of it waits.
        "parked": {"reason": sender.parked_reason, "since": sender.parked_at.isoformat()}
        if sender.parked_reason is not None and sender.parked_at is not None
        else None,
    }


def _address(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, "must be an email address")
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise invalid(field, str(exc)) from None


def _int(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(field, f"must be a whole number from {low} to {high}")
    return value


def _smtp_settings(raw: dict[str, Any], old: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    out = {k: v for k, v in old.items()}
    for key in raw:
        if key not in ("host", "port", "username", "password", "tls", "pipelining"):
            known = "host, port, username, password, tls, pipelining"
            raise invalid(f"settings.{key}", f"is not an SMTP setting ({known})")
    if "host" in raw:
        if not isinstance(raw["host"], str) or not raw["host"].strip():
            raise invalid("settings.host", "must be a host name")
        out["host"] = raw["host"].strip()
    if "port" in raw:
        out["port"] = _int("settings.port", raw["port"], 1, 65535)
    if "username" in raw:
        if raw["username"] is not None and not isinstance(raw["username"], str):
            raise invalid("settings.username", "must be a string")
        out["username"] = raw["username"] or None
    if "tls" in raw:
        if raw["tls"] not in SMTP_TLS:
            raise invalid("settings.tls", f"must be one of {', '.join(SMTP_TLS)}")
        out["tls"] = raw["tls"]
    if "pipelining" in raw:  # off for a server that announces PIPELINING but mishandles it
        if not isinstance(raw["pipelining"], bool):
            raise invalid("settings.pipelining", "must be true or false")
        out["pipelining"] = raw["pipelining"]
    if "password" in raw:
        if raw["password"] in (None, ""):
            out.pop("password", None)
        elif not isinstance(raw["password"], str):
            raise invalid("settings.password", "must be a string")
        else:
            out["password"] = box.seal(raw["password"])
    if "host" not in out:
        raise invalid("settings.host", "is required for the smtp transport")
    return out


class SenderService:
    def __init__(
        self, store: Store, queue: RedisQueue, box: SecretBox, transports: list[TransportSpec]
    ) -> None:
        self.store = store
        self.queue = queue
        self.box = box
        self.transports = {spec.name: spec for spec in transports}

    def _validate(self, data: Any, current: Sender | None) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "the request body must be a JSON object")
        unknown = set(data) - FIELDS
        if unknown:
            raise invalid(
                sorted(unknown)[0], f"is not a sender field ({', '.join(sorted(FIELDS))})"
            )
        fields: dict[str, Any] = {}
        if current is None or "from_address" in data:
            fields["from_address"] = _address("from_address", data.get("from_address"))
        if "display_name" in data:
            if not isinstance(data["display_name"], str) or len(data["display_name"]) > 200:
                raise invalid("display_name", "must be a string of at most 200 characters")
            fields["display_name"] = data["display_name"].strip()
        if "reply_to" in data:
            fields["reply_to"] = (
                _address("reply_to", data["reply_to"]) if data["reply_to"] else None
            )
        transport = data.get("transport", current.transport if current else None)
        if transport not in self.transports:
            raise invalid("transport", f"must be one of {', '.join(sorted(self.transports))}")
        fields["transport"] = transport
        raw_settings = data.get("settings", {})
        if not isinstance(raw_settings, dict):
            raise invalid("settings", "must be an object")
        old = current.transport_settings if current and current.transport == transport else {}
        if transport == "smtp":
            fields["transport_settings"] = _smtp_settings(raw_settings, old, self.box)
        elif "settings" in data or current is None or current.transport != transport:
            sealed = dict(raw_settings)
            if isinstance(sealed.get("password"), str):
                sealed["password"] = self.box.seal(sealed["password"])
            fields["transport_settings"] = {**old, **sealed}
        if "hourly_limit" in data:
            fields["hourly_limit"] = _int("hourly_limit", data["hourly_limit"], 1, 1_000_000_000)
        if "min_gap_ms" in data:
            fields["min_gap_ms"] = _int("min_gap_ms", data["min_gap_ms"], 0, 86_400_000)
        if "is_default" in data:
            if not isinstance(data["is_default"], bool):
                raise invalid("is_default", "must be true or false")
            fields["is_default"] = data["is_default"]
        return fields

    async def create(self, user: User, data: Any, default_limit: int) -> Sender:
        fields = self._validate(data, None)
        fields.setdefault("hourly_limit", default_limit)
        if await self.store.find_sender(user.id, fields["from_address"]):
            raise invalid("from_address", "you already have a sender with this address")
        return await self.store.save_sender(user.id, None, fields)

    async def update(self, user: User, sender_id: int, data: Any) -> Sender:
        current = await self.get(user, sender_id)
        fields = self._validate(data, current)
        if (
            "from_address" in fields
            and fields["from_address"].lower() != current.from_address.lower()
        ) and await self.store.find_sender(user.id, fields["from_address"]):
            raise invalid("from_address", "you already have a sender with this address")
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
            raise ApiError(409, "sender_not_parked", "this sender is not parked")
        await self._unparked(sender)
        return await self.get(user, sender_id)

    async def _unparked(self, sender: Sender) -> None:
        await self.store.mark_waiting(sender.id, None)
        await self.queue.unpark_sender(sender.id)

    async def get(self, user: User, sender_id: int) -> Sender:
        sender = await self.store.find_sender(user.id, sender_id)
        if sender is None:
            raise ApiError(404, "not_found", "no such sender")
        return sender

    async def delete(self, user: User, sender_id: int, *, cancel_queued: bool) -> int:
        """Archive a sender. With queued emails it refuses, unless told to cancel them."""
        sender = await self.get(user, sender_id)
        if len(await self.store.senders_of(user.id)) == 1:
            raise ApiError(409, "last_sender", "you need at least one sender; add another first")
        queued = await self.store.queued_of_sender(sender.id)
        if queued and not cancel_queued:
            raise ApiError(
                409,
                "sender_has_queued_emails",
                f"this sender has {len(queued)} queued emails; cancel them first, or delete "
                "with ?cancel_queued=true to cancel them",
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
