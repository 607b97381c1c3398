"""API tokens: what a user may ask for (a name, an expiry) and how a token is shown.

The CLI, the API and the dashboard page share these checks and limits. A token's secret
is returned once, when it is made; lists show its id and first characters only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from .errors import ApiError, invalid
from .models import User
from .store import Store
from .store.accounts import ApiToken, NewToken

MAX_NAME_CHARS = 100
MAX_LIVE_TOKENS = 100  # per user: a leaked token cannot mint tokens without bound
MAX_EXPIRY_DAYS = 3650
LIST_LIMIT = 200  # newest first; older revoked tokens are not listed
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]{1,7})([mhdw])")  # ASCII digits only, not str.isdigit()
_INT64_MAX = 2**63 - 1


def parse_duration(text: str) -> int:
    """'30d', '12h', '90m' or '2w' in seconds; ValueError says what is accepted."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError("must be a number and a unit: m, h, d or w (for example 30d)")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 60 <= seconds <= MAX_EXPIRY_DAYS * 86400:
        raise ValueError(f"must be from 1m to {MAX_EXPIRY_DAYS}d")
    return seconds


def check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"must be at most {MAX_NAME_CHARS} characters")
    if any(not ch.isprintable() for ch in name):
        raise ValueError("must not contain control characters")
    return name


def parse_id(raw: str) -> int | None:
    """A token id from a path or a command line: ASCII digits within int64, else None."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > _INT64_MAX:
        return None
    return int(raw)


def public(token: ApiToken, now: datetime | None = None) -> dict[str, Any]:
    """A token as the API and the page show it: never the secret."""

    def iso(at: datetime | None) -> str | None:
        return at.astimezone(UTC).isoformat().replace("+00:00", "Z") if at else None

    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "status": token.status(now or datetime.now(UTC)),
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
    }


def read_request(body: object) -> tuple[str, int | None]:
    """(name, expiry in seconds or None) from `{"name": …, "expires_in": "30d" | null}`."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    unknown = sorted(set(body) - {"name", "expires_in"})
    if unknown:
        raise invalid(unknown[0], "is not a token field (name, expires_in)")
    name = body.get("name", "api")
    if not isinstance(name, str):
        raise invalid("name", "must be a string")
    try:
        name = check_name(name)
    except ValueError as exc:
        raise invalid("name", str(exc)) from None
    expires = body.get("expires_in")
    if expires is None:
        return name, None
    if not isinstance(expires, str) or len(expires) > 20:
        raise invalid("expires_in", "must be a string such as 30d, or null for no expiry")
    try:
        return name, parse_duration(expires)
    except ValueError as exc:
        raise invalid("expires_in", str(exc)) from None


async def create_for(
    store: Store,
    user: User,
    name: str,
    expires_in_s: int | None,
    created_by: int | None = None,
) -> NewToken:
    """A new token for `user`, unless they already hold MAX_LIVE_TOKENS live ones."""
    made = await store.issue_token(
        user.id, name, expires_in_s=expires_in_s, created_by=created_by, max_live=MAX_LIVE_TOKENS
    )
    if made is None:
        raise ApiError(
            409,
            "too_many_tokens",
            f"you already have {MAX_LIVE_TOKENS} live API tokens; revoke some first",
        )
    return made
