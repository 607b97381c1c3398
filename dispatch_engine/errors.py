"""What the domain refuses, and why: the errors services raise (no HTTP in them).

Each kind says what went wrong; `web/responses.py` alone gives it an HTTP status and the
`{"error": {"code", "message", "field"?, "details"?}}` body. The CLI prints the message.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """A refusal a user can act on: a stable `code` and a message that says what to do."""

    default_code: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.field = field
        self.details = details


class ValidationError(DomainError):
    """A field that is present but wrong (or missing); the message starts with its name."""

    default_code = "invalid_field"

    def __init__(
        self, field: str, reason: str, *, code: str | None = None, details: Any = None
    ) -> None:
        super().__init__(f"{field}: {reason}", code=code, field=field, details=details)


class Malformed(DomainError):
    """Input that is not even of the expected shape (a body that is not a JSON object)."""

    default_code = "invalid_json"


class NotFound(DomainError):
    """No such object, or not the caller's: the two are never told apart."""

    default_code = "not_found"


class InvalidState(DomainError):
    """The object exists, but its state forbids the action (a cancelled campaign…)."""

    default_code = "invalid_state"


class Conflict(DomainError):
    """The action collides with what the user already holds (too many live tokens…)."""

    default_code = "conflict"
