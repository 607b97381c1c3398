"""API tokens: what a user may ask for (a name, an expiry), and the per-user cap.

The CLI, the API and the dashboard page share these checks and limits. A token's secret
is returned once, when it is made; lists show its id and first characters only
(`web/presenters.token_json`).
"""

from __future__ import annotations

import re

from .errors import Conflict, Malformed, ValidationError
from .models import User
from .parsing import row_id
from .store import Store
from .store.accounts import NewToken

MAX_NAME_CHARS = 100
MAX_LIVE_TOKENS = 100  # per user: a leaked token cannot mint tokens without bound
MAX_EXPIRY_DAYS = 3650
LIST_LIMIT = 200  # newest first; older revoked tokens are not listed
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]{1,7})([mhdw])")  # ASCII digits only, not str.isdigit()


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
    try:
        return row_id(raw)
    except ValidationError:
        return None


def read_request(body: object) -> tuple[str, int | None]:
    """(name, expiry in seconds or None) from `{"name": …, "expires_in": "30d" | null}`."""
    if not isinstance(body, dict):
        raise Malformed("the request body must be a JSON object")
    unknown = sorted(set(body) - {"name", "expires_in"})
    if unknown:
        raise ValidationError(unknown[0], "is not a token field (name, expires_in)")
    name = body.get("name", "api")
    if not isinstance(name, str):
        raise ValidationError("name", "must be a string")
    try:
        name = check_name(name)
    except ValueError as exc:
        raise ValidationError("name", str(exc)) from None
    expires = body.get("expires_in")
    if expires is None:
        return name, None
    if not isinstance(expires, str) or len(expires) > 20:
        raise ValidationError("expires_in", "must be a string such as 30d, or null for no expiry")
    try:
        return name, parse_duration(expires)
    except ValueError as exc:
        raise ValidationError("expires_in", str(exc)) from None


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
        raise Conflict(
            f"you already have {MAX_LIVE_TOKENS} live API tokens; revoke some first",
            code="too_many_tokens",
        )
    return made
