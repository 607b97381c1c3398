"""Parse recipients from JSON lists, CSV text or a bare list of addresses, line by line.

A bad row never fails the good ones: it is reported with its line number and reason (the
first `Limits.listed_rejects` of them, plus a count). Under a header, a cell a row lacks is
an empty string, as in every spreadsheet, so every accepted row can be sent. The parse
streams over its input and is capped in lines and recipients; it is plain CPU work, run off
the event loop by the web layer (`web/bodies.off_loop`, a pool of 2 threads).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any, NamedTuple

from email_validator import EmailNotValidError, EmailSyntaxError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOT_ATOM_TEXT,
    EMAIL_MAX_LENGTH,
)

from .errors import ValidationError

_ROLE_NAMES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)  # the library lowercases these


def _library_message(value: str) -> str:
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    raise AssertionError(f"{value!r} is valid")


# The library's verdict on any ASCII text without "@" or "<" (its scan finds no special).
_NO_AT_SIGN = _library_message("a")


@lru_cache(maxsize=4096)
def _plain_domain(domain: str) -> str | None:
    """The library's normalized form of `domain`, or None when the full check must decide.

    Only a domain the library accepts and keeps ASCII and of the same length qualifies: then
    it changes neither verdict nor message of an address with a plain local part (checked
    before the domain, always valid) nor its length checks.
    """
    try:
        checked = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    if checked.domain != checked.ascii_domain or len(checked.domain) != len(domain):
        return None
    return str(checked.domain)


def normalize(value: str) -> str:
    """`validate_email(value, check_deliverability=False).normalized`, with its verdicts.

    Most addresses are plain ASCII (a dot-atom before the @-sign) at a handful of domains:
    those are answered from a cache of domain checks, about 30 times faster than a full
    check (which dominated scheduling 100,000 recipients). Anything else takes the full
    check, so its errors are the library's. Syntax only: a DNS lookup per address would
    make scheduling slow and flaky.
    """
    if "@" not in value and "<" not in value and value.isascii():
        # What the library says, without its per-character scan: ~30x faster on the junk
        # lines a hostile or broken upload is made of.
        raise EmailSyntaxError(_NO_AT_SIGN)
    local, at, domain = value.rpartition("@")
    if (
        at
        and len(value) <= EMAIL_MAX_LENGTH
        and value.isascii()
        and DOT_ATOM_TEXT.match(local)
        and local.lower() not in _ROLE_NAMES
    ):
        plain = _plain_domain(domain)
        if plain is not None:
            return f"{local}@{plain}"
    return str(validate_email(value, check_deliverability=False).normalized)


class Recipient(NamedTuple):
    email: str
    vars: dict[str, Any]


@dataclass(frozen=True)
class Limits:
    """Caps on one request's recipients (DISPATCH_MAX_RECIPIENTS, DISPATCH_MAX_UPLOAD_LINES)."""

    max_recipients: int = 1_000_000
    max_lines: int = 1_500_000
    listed_rejects: int = 100  # the answer lists this many rejected lines, plus their count


@dataclass
class ParsedRecipients:
    accepted: list[Recipient] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # the first listed_rejects
    columns: set[str] = field(default_factory=set)
    rejected_total: int = 0
    suppressed: int = 0  # of rejected_total: left out as suppressed by their owner
    limits: Limits = field(default_factory=Limits)
    source: str = "recipients"  # the request field the recipients came from
    _seen: dict[str, int] = field(default_factory=dict)

    def reject(self, line: int, value: str, reason: str) -> None:
        self.rejected_total += 1
        if len(self.rejected) < self.limits.listed_rejects:
            self.rejected.append({"line": line, "value": value[:200], "reason": reason})

    def add(self, line: int, raw: str, variables: dict[str, Any]) -> None:
        value = raw.strip()
        if not value:
            self.reject(line, raw, "empty address")
            return
        try:
            address = normalize(value)
        except EmailNotValidError as exc:
            self.reject(line, value, str(exc))
            return
        key = address.lower()
        if key in self._seen:
            self.reject(line, value, f"duplicate of line {self._seen[key]}")
            return
        if len(self.accepted) >= self.limits.max_recipients:
            raise ValidationError(
                self.source,
                f"more than {self.limits.max_recipients} recipients in one "
                f"campaign (line {line}); split the list into several campaigns",
                code="too_many_recipients",
            )
        self._seen[key] = line
        self.accepted.append(Recipient(address, variables))

    def require_some(self) -> None:
        """A 422 on `recipients`, with the rejected lines, when no address is left."""
        if not self.accepted:
            raise ValidationError(
                "recipients",
                "no valid address found",
                code="no_valid_recipients",
                details={"rejected": self.rejected, "rejected_total": self.rejected_total},
            )

    def line_of(self, address: str) -> int:
        """The line an accepted address came from."""
        return self._seen.get(address.lower(), 0)

    def leave_out(self, reasons: Mapping[str, str]) -> int:
        """Drop the accepted addresses named in `reasons` (address -> why), reported as
        rejected lines (the schedule-time suppression check); returns how many."""
        if not reasons:
            return 0
        self.accepted = [person for person in self.accepted if person.email not in reasons]
        dropped = [{"line": self.line_of(email), "value": email[:200], "reason": why}
                   for email, why in reasons.items()]  # fmt: skip
        self.rejected_total += len(dropped)
        self.suppressed += len(dropped)
        merged = sorted([*self.rejected, *dropped], key=lambda row: int(row["line"]))
        self.rejected = merged[: self.limits.listed_rejects]
        return len(dropped)

    def check_lines(self, line: int) -> None:
        if line > self.limits.max_lines:
            raise ValidationError(
                self.source, f"more than {self.limits.max_lines} lines", code="too_many_lines"
            )


def from_json(
    items: Any, limits: Limits | None = None, source: str = "recipients"
) -> ParsedRecipients:
    if not isinstance(items, list):
        raise ValidationError(source, "must be a list of addresses or of {email, vars} objects")
    parsed = ParsedRecipients(limits=limits or Limits(), source=source)
    parsed.check_lines(len(items))
    for n, item in enumerate(items, start=1):
        if isinstance(item, str):
            parsed.add(n, item, {})
        elif isinstance(item, dict) and isinstance(item.get("email"), str):
            variables = item.get("vars") or {}
            if not isinstance(variables, dict):
                parsed.reject(n, item["email"], "vars must be an object")
                continue
            parsed.columns.update(str(k) for k in variables)
            parsed.add(n, item["email"], {str(k): v for k, v in variables.items()})
        else:
            parsed.reject(n, str(item)[:200], "not an address or {email, vars}")
    # Like a spreadsheet's empty cell: a variable another recipient has is "" for this one.
    width = len(parsed.columns)
    for person in parsed.accepted:
        if len(person.vars) < width:
            for name in parsed.columns - person.vars.keys():
                person.vars[name] = ""
    return parsed


def _lines(source: str | bytes) -> Iterator[str]:
    """Physical lines as csv wants them (newline=""): split on \n, \r\n or \r, kept."""
    if isinstance(source, bytes):
        return iter(io.TextIOWrapper(io.BytesIO(source), encoding="utf-8-sig", newline=""))
    return iter(io.StringIO(source.removeprefix("\ufeff"), newline=""))


def _line_count(source: str | bytes) -> int:
    """Physical lines as `_lines` yields them: \n, \r\n and a lone \r each end one."""
    if isinstance(source, str):
        breaks = source.count("\n") + source.count("\r") - source.count("\r\n")
        ended = source.endswith(("\n", "\r"))
    else:
        breaks = source.count(b"\n") + source.count(b"\r") - source.count(b"\r\n")
        ended = source.endswith((b"\n", b"\r"))
    return breaks + (0 if ended or not source else 1)


def from_csv(
    source: str | bytes, limits: Limits | None = None, field: str = "recipients_csv"
) -> ParsedRecipients:
    """A header row with an `email` column (other columns become variables), or bare lines.

    Bytes are decoded as UTF-8 while they are read. A missing trailing cell is "".
    """
    parsed = ParsedRecipients(limits=limits or Limits(), source=field)
    parsed.check_lines(_line_count(source))  # at C speed, before a line is parsed
    try:
        _parse_csv(_lines(source), parsed)
    except UnicodeDecodeError:
        raise ValidationError(field, "must be UTF-8 text (save the CSV as UTF-8)") from None
    return parsed


def _parse_csv(lines: Iterator[str], parsed: ParsedRecipients) -> None:
    first = 0
    for line in lines:
        first += 1
        parsed.check_lines(first)
        if line.strip():
            break
    else:
        return
    # Spreadsheets export with commas, semicolons (European locales) or tabs.
    delimiter = max(",;\t", key=line.count)
    header = [h.strip().lower() for h in next(csv.reader([line], delimiter=delimiter), [])]
    has_header = "email" in header
    email_col = header.index("email") if has_header else 0
    names = [(i, h) for i, h in enumerate(header) if h and h != "email"] if has_header else []
    parsed.columns.update(h for _, h in names)
    # Line numbers count from the file's first line: `base` lines come before the reader's.
    base = first if has_header else first - 1
    reader = csv.reader(lines if has_header else chain([line], lines), delimiter=delimiter)
    end = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValidationError(parsed.source, f"line {base + end + 1}: {exc}") from None
        # The line this record starts on: a quoted cell may span several lines.
        n, end = base + end + 1, reader.line_num
        parsed.check_lines(base + end)
        if not any(c.strip() for c in row):
            continue
        if len(row) <= email_col:
            parsed.reject(n, delimiter.join(row), "no email column")
            continue
        variables = {h: row[i].strip() if i < len(row) else "" for i, h in names}
        parsed.add(n, row[email_col], variables)


def from_request(data: Mapping[str, Any], limits: Limits | None = None) -> ParsedRecipients:
    """The recipients of a schedule request or of the Compose pre-check: one code path.

    Exactly one of `recipients` (a JSON list), `recipients_csv` (text) or `recipients_file`
    (uploaded bytes) is given.
    """
    given = [name for name in ("recipients", "recipients_csv", "recipients_file")
             if data.get(name) is not None]  # fmt: skip
    if len(given) > 1:
        raise ValidationError("recipients", f"give only one of {', '.join(given)}")
    if not given:
        raise ValidationError(
            "recipients", "is required (or recipients_csv, or a recipients_file upload)"
        )
    name = given[0]
    value = data[name]
    if name == "recipients":
        return from_json(value, limits)
    if not isinstance(value, str | bytes):
        raise ValidationError(name, "must be CSV text")
    return from_csv(value, limits, field=name)
