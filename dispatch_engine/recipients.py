"""Parse recipients from JSON lists, CSV text or a bare list of addresses, line by line.

A bad row never fails the good ones: it is reported with its line number and reason.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOT_ATOM_TEXT,
    EMAIL_MAX_LENGTH,
)

from .errors import invalid

MAX_RECIPIENTS = 1_000_000
_ROLE_NAMES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)  # the library lowercases these


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


@dataclass
class ParsedRecipients:
    accepted: list[Recipient] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    columns: set[str] = field(default_factory=set)
    _seen: dict[str, int] = field(default_factory=dict)

    def add(self, line: int, raw: str, variables: dict[str, Any]) -> None:
        value = raw.strip()
        if not value:
            self.rejected.append({"line": line, "value": raw, "reason": "empty address"})
            return
        try:
            address = normalize(value)
        except EmailNotValidError as exc:
            self.rejected.append({"line": line, "value": value, "reason": str(exc)})
            return
        key = address.lower()
        if key in self._seen:
            reason = f"duplicate of line {self._seen[key]}"
            self.rejected.append({"line": line, "value": value, "reason": reason})
            return
        if len(self.accepted) >= MAX_RECIPIENTS:
            reason = f"more than {MAX_RECIPIENTS} recipients in one campaign"
            self.rejected.append({"line": line, "value": value, "reason": reason})
            return
        self._seen[key] = line
        self.accepted.append(Recipient(address, variables))


def from_json(items: Any) -> ParsedRecipients:
    if not isinstance(items, list):
        raise invalid("recipients", "must be a list of addresses or of {email, vars} objects")
    parsed = ParsedRecipients()
    for n, item in enumerate(items, start=1):
        if isinstance(item, str):
            parsed.add(n, item, {})
        elif isinstance(item, dict) and isinstance(item.get("email"), str):
            variables = item.get("vars") or {}
            if not isinstance(variables, dict):
                parsed.rejected.append(
                    {"line": n, "value": item["email"], "reason": "vars must be an object"}
                )
                continue
            parsed.columns.update(str(k) for k in variables)
            parsed.add(n, item["email"], {str(k): v for k, v in variables.items()})
        else:
            parsed.rejected.append(
                {"line": n, "value": str(item)[:200], "reason": "not an address or {email, vars}"}
            )
    return parsed


def from_csv(text: str) -> ParsedRecipients:
    """A header row with an `email` column (other columns become variables), or bare lines."""
    parsed = ParsedRecipients()
    lines = text.lstrip("\ufeff").splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return parsed
    # Spreadsheets export with commas, semicolons (European locales) or tabs.
    delimiter = max(",;\t", key=lines[first].count)
    header = [h.strip().lower() for h in next(csv.reader([lines[first]], delimiter=delimiter))]
    has_header = "email" in header
    email_col = header.index("email") if has_header else 0
    if has_header:
        parsed.columns.update(h for h in header if h and h != "email")
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    end = 0
    for row in reader:
        # The line this record starts on: a quoted cell may span several lines.
        n, end = end + 1, reader.line_num
        if n - 1 < first or (has_header and n - 1 == first) or not any(c.strip() for c in row):
            continue
        if len(row) <= email_col:
            parsed.rejected.append({"line": n, "value": ",".join(row), "reason": "no email column"})
            continue
        variables = (
            {h: v.strip() for h, v in zip(header, row, strict=False) if h and h != "email"}
            if has_header
            else {}
        )
        parsed.add(n, row[email_col], variables)
    return parsed
