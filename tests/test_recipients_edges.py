"""Recipient lists at their edges: short rows, rows shorter than the header, long junk.

Each test here was written for a mutant of recipients.py that the suite let through
(docs/testing.md, surviving mutants)."""

from __future__ import annotations

import pytest

from dispatch_engine.config import Settings
from dispatch_engine.errors import ValidationError
from dispatch_engine.recipients import Limits, from_csv, from_json
from dispatch_engine.web.responses import status_of


def test_a_row_without_the_email_column_is_rejected_and_the_rest_still_read() -> None:
    parsed = from_csv("name,email\nAnn\nBob,bob@example.com\n")
    assert [(r["line"], r["reason"]) for r in parsed.rejected] == [(2, "no email column")]
    assert [(p.email, p.vars) for p in parsed.accepted] == [("bob@example.com", {"name": "Bob"})]


def test_a_row_shorter_than_the_header_keeps_its_cells_and_the_missing_ones_are_empty() -> None:
    parsed = from_csv("email,name,city\nann@example.com,Ann\n")
    assert parsed.rejected == []
    expected = [("ann@example.com", {"name": "Ann", "city": ""})]
    assert [(p.email, p.vars) for p in parsed.accepted] == expected


def test_a_list_without_a_header_takes_the_address_from_the_first_column() -> None:
    parsed = from_csv("ann@example.com,Ann\nbob@example.com,Bob\n")
    assert [p.email for p in parsed.accepted] == ["ann@example.com", "bob@example.com"]


def test_a_rejected_json_item_is_quoted_at_most_200_characters() -> None:
    parsed = from_json([{"no": "x" * 500}])
    assert len(parsed.rejected) == 1 and len(parsed.rejected[0]["value"]) == 200


def test_a_long_rejected_csv_value_is_quoted_at_most_200_characters() -> None:
    parsed = from_csv("email\n" + "x" * 500 + "\n")
    assert [(r["line"], len(r["value"])) for r in parsed.rejected] == [(2, 200)]


def test_without_given_limits_the_documented_caps_apply() -> None:
    """DISPATCH_MAX_RECIPIENTS and DISPATCH_MAX_UPLOAD_LINES' defaults (docs/operations.md)."""
    settings = Settings()
    assert (Limits().max_recipients, Limits().max_lines) == (
        settings.max_recipients,
        settings.max_upload_lines,
    )


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("trailing", [True, False])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_file_over_the_line_cap_is_refused_before_any_row_is_read(
    end: str, trailing: bool, as_bytes: bool
) -> None:
    """Counted before the parse: a row the parse would refuse (a cell past the CSV field
    limit) cannot hide that the upload is over the cap, whatever its line ends."""
    rows = [
        "email,note",
        "a@example.com," + "x" * 200_000,
        *(f"u{n}@example.com," for n in range(4)),
    ]
    text = end.join(rows) + (end if trailing else "")
    with pytest.raises(ValidationError) as caught:
        from_csv(text.encode() if as_bytes else text, Limits(max_lines=5))
    assert (status_of(caught.value), caught.value.code) == (422, "too_many_lines")
    assert caught.value.field == "recipients_csv"
