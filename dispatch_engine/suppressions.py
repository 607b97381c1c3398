"""An owner's suppression list, the domain side (no HTTP): add, import, export, and the
schedule-time check that leaves suppressed recipients out.

Addresses are compared in one form, `consent.addresses.normalize_address` (lower case, the
domain in IDNA ASCII); the queries are `store/suppressions.py`. The worker's send-time check
is `worker/prepare.py`. Users add `manual` entries; the other reasons come from feedback
(unsubscribes, bounces, complaints), or from a CSV import (an export read back, or a list
kept by another tool).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

from email_validator import EmailNotValidError

from .consent.addresses import AddressError, normalize_address
from .consent.feedback import SuppressionReason
from .errors import ValidationError
from .recipients import Limits, ParsedRecipients, from_csv, normalize
from .store import Store
from .store.suppressions import Suppression

MAX_ADD = 10_000  # addresses in one POST /api/suppressions; more: the CSV import
MAX_DETAIL = 1000
EXPORT_PAGE = 5000  # rows per query while an export streams
EXPORT_COLUMNS = ("email", "reason", "source", "detail", "created_at")
REASONS = frozenset(r.value for r in SuppressionReason)
USER_REASONS = frozenset({SuppressionReason.MANUAL.value})  # what POST /api/suppressions takes
IN_THREAD = 20_000  # recipients past which the check's CPU work leaves the event loop
T = TypeVar("T")


def address_key(email: str) -> str:
    """`normalize_address` of an address the schedule already validated (its recipients,
    the worker's dispatches). An ASCII one is its lower case (no IDNA to apply): ~10x
    faster, which a 1,000,000-recipient schedule notices."""
    if email.isascii():
        return email.strip().lower()
    try:
        return normalize_address(email)
    except AddressError:  # not one the schedule accepts: compared as typed, lowered
        return email.strip().lower()


def suppression_key(value: str) -> str:
    """A user's address, checked as the schedule checks recipients, in its one form."""
    return address_key(normalize(value.strip()))


def why_suppressed(entry: Suppression) -> str:
    """The reason a suppressed recipient is left out or not sent, as its line reports it."""
    return f"suppressed: {entry.reason} on {entry.created_at.astimezone(UTC):%Y-%m-%d}"


async def _suppressed_among(store: Store, owner_id: int, keys: list[str]) -> dict[str, Suppression]:
    """The owner's entries among `keys`. A list shorter than the upload (the usual case) is
    read whole and compared here, and only its matches are read in full: shipping 1,000,000
    addresses to PostgreSQL as an array costs ~1-2.5 s, reading a list of 10,000 ~20 ms. A
    longer list is joined with the array."""
    listed = await store.suppressed_emails(owner_id, len(keys))
    if len(listed) < len(keys):  # that was the whole list
        hits = await _cpu(len(keys), set(listed).intersection, keys)
        return await store.suppressions_among(owner_id, hits) if hits else {}
    return await store.suppressions_among(owner_id, keys)


async def _cpu(size: int, fn: Callable[..., T], /, *args: Any) -> T:
    """Work over a big upload in a thread (the event loop keeps serving), a small one here."""
    return await asyncio.to_thread(fn, *args) if size > IN_THREAD else fn(*args)


def _keys(parsed: ParsedRecipients) -> list[str]:
    return [address_key(person.email) for person in parsed.accepted]


def _leave_out(parsed: ParsedRecipients, keys: list[str], found: dict[str, Suppression]) -> int:
    reasons = {
        person.email: why_suppressed(found[key])
        for person, key in zip(parsed.accepted, keys, strict=True)
        if key in found
    }
    return parsed.leave_out(reasons)


async def leave_out_suppressed(store: Store, owner_id: int, parsed: ParsedRecipients) -> int:
    """Drop the owner's suppressed addresses from parsed recipients, reported as rejected
    lines with reason and date; at most two queries whatever the size. Returns how many."""
    size = len(parsed.accepted)
    if not size:
        return 0
    keys = await _cpu(size, _keys, parsed)
    found = await _suppressed_among(store, owner_id, keys)
    return await _cpu(size, _leave_out, parsed, keys, found) if found else 0


def _reason(value: Any, allowed: frozenset[str], field: str = "reason") -> str:
    if value is None or value == "":
        return SuppressionReason.MANUAL.value
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise ValidationError(field, f"must be one of {', '.join(sorted(allowed))}")
    return value.strip().lower()


def _detail(value: Any, field: str = "detail") -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_DETAIL:
        raise ValidationError(field, f"must be text of at most {MAX_DETAIL} characters")
    return value.strip()


@dataclass
class Entries:
    """Addresses to suppress in their one form, each with its reason and detail (the first
    of a repeated address wins), and what was refused, with its index or line."""

    rows: dict[str, tuple[str, str]] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rejected_total: int = 0
    listed: int = 100

    def reject(self, where: dict[str, Any], value: str, reason: str) -> None:
        self.rejected_total += 1
        if len(self.rejected) < self.listed:
            self.rejected.append({**where, "value": value[:200], "reason": reason})


def parse_add(body: dict[str, Any]) -> tuple[Entries, str, str]:
    """`{"emails": [...], "reason": "manual", "detail": ...}` (or one `"email"`): the
    entries, their reason and detail. A bad address is reported with its index."""
    emails = body.get("emails")
    if emails is None and isinstance(body.get("email"), str):
        emails = [body["email"]]
    if not isinstance(emails, list) or not emails:
        raise ValidationError("emails", "must be a non-empty list of addresses")
    if len(emails) > MAX_ADD:
        raise ValidationError(
            "emails",
            f"at most {MAX_ADD} addresses at once; import a CSV for more",
            code="too_many_addresses",
        )
    reason = _reason(body.get("reason"), USER_REASONS)
    detail = _detail(body.get("detail"))
    entries = Entries()
    for index, value in enumerate(emails):
        if not isinstance(value, str):
            entries.reject({"index": index}, str(value), "not an address")
            continue
        try:
            key = suppression_key(value)
        except EmailNotValidError as exc:
            entries.reject({"index": index}, value, str(exc))
            continue
        entries.rows.setdefault(key, (reason, detail))
    if not entries.rows:
        raise ValidationError(
            "emails",
            "no valid address found",
            code="no_valid_addresses",
            details={"rejected": entries.rejected, "rejected_total": entries.rejected_total},
        )
    return entries, reason, detail


def parse_import(source: bytes, max_lines: int, field: str = "file") -> Entries:
    """A CSV with an `email` column and optional `reason` and `detail` columns (or bare
    addresses, one a line), read as a campaign's recipients are: bad rows with their line."""
    parsed = from_csv(source, Limits(max_recipients=max_lines, max_lines=max_lines), field)
    entries = Entries(rejected=parsed.rejected, rejected_total=parsed.rejected_total)
    for person in parsed.accepted:
        try:
            reason = _reason(person.vars.get("reason"), REASONS)
            detail = _detail(person.vars.get("detail"))
        except ValidationError as exc:
            entries.reject({"line": parsed.line_of(person.email)}, person.email, exc.message)
            continue
        entries.rows.setdefault(address_key(person.email), (reason, detail))
    entries.rejected.sort(key=lambda row: int(row["line"]))
    if not entries.rows:
        raise ValidationError(
            field,
            "no valid address found",
            code="no_valid_addresses",
            details={"rejected": entries.rejected, "rejected_total": entries.rejected_total},
        )
    return entries


async def save(store: Store, owner_id: int, entries: Entries, source: str) -> dict[str, Any]:
    """Suppress the entries; the answer says how many were new, already there, refused."""
    emails = list(entries.rows)
    added = await store.suppress_rows(
        owner_id,
        emails,
        [reason for reason, _ in entries.rows.values()],
        [detail for _, detail in entries.rows.values()],
        source,
    )
    return {
        "added": added,
        "already_suppressed": len(emails) - added,
        "rejected": entries.rejected,
        "rejected_total": entries.rejected_total,
    }


def _csv_chunk(rows: list[Suppression]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        at = row.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        writer.writerow((row.email, row.reason, row.source, row.detail, at))
    return out.getvalue()


async def export_csv(store: Store, owner_id: int) -> AsyncIterator[bytes]:
    """The owner's list as CSV, newest first, a page of rows at a time (the header first)."""
    yield (",".join(EXPORT_COLUMNS) + "\r\n").encode()
    before: int | None = None
    while True:
        rows = await store.list_suppressions(owner_id, EXPORT_PAGE, before)
        if not rows:
            return
        yield _csv_chunk(rows).encode()
        if len(rows) < EXPORT_PAGE:
            return
        before = rows[-1].id
