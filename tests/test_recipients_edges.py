"""Recipient lists at their edges: short rows, rows shorter than the header, long junk.

Each test here was written for a mutant of recipients.py that the suite let through
(docs/testing.md, surviving mutants)."""

from __future__ import annotations

from dispatch_engine.recipients import from_csv, from_json


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
