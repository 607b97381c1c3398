"""A schedule request (or the Compose pre-check) gives its recipients in exactly one field:
`recipients` (a JSON list), `recipients_csv` (text) or `recipients_file` (uploaded bytes).
The answer names the field the recipients came from, and the caps given apply to it."""

from __future__ import annotations

from typing import Any

import pytest

from dispatch_engine.errors import ValidationError
from dispatch_engine.recipients import Limits, from_request
from dispatch_engine.web.responses import status_of


def _refusal(data: dict[str, Any]) -> tuple[int, str | None, str]:
    with pytest.raises(ValidationError) as caught:
        from_request(data)
    return status_of(caught.value), caught.value.field, str(caught.value)


def test_a_json_list_of_recipients_is_read_as_json() -> None:
    parsed = from_request({"recipients": ["ada@example.com", {"email": "bob@example.com"}]})
    assert [r.email for r in parsed.accepted] == ["ada@example.com", "bob@example.com"]
    assert parsed.source == "recipients"


@pytest.mark.parametrize(
    ("name", "value"),
    [("recipients_csv", "email,name\nada@example.com,Ada\nnope,X\n"),
     ("recipients_file", b"email,name\nada@example.com,Ada\nnope,X\n")],
)  # fmt: skip
def test_csv_text_or_an_uploaded_file_is_read_as_csv_and_named_in_the_answer(
    name: str, value: str | bytes
) -> None:
    parsed = from_request({name: value, "recipients": None})
    assert [(r.email, r.vars) for r in parsed.accepted] == [("ada@example.com", {"name": "Ada"})]
    assert [r["line"] for r in parsed.rejected] == [3]
    assert parsed.source == name


def test_recipients_in_two_fields_are_refused_naming_both() -> None:
    status, field, message = _refusal(
        {"recipients": ["ada@example.com"], "recipients_csv": "bob@example.com"}
    )
    assert (status, field) == (422, "recipients")
    assert "give only one of recipients, recipients_csv" in message


def test_a_request_without_recipients_is_refused() -> None:
    status, field, message = _refusal({"subject": "hi", "recipients": None})
    assert (status, field) == (422, "recipients")
    assert "is required" in message


def test_csv_that_is_not_text_is_refused_naming_its_field() -> None:
    status, field, message = _refusal({"recipients_csv": ["ada@example.com"]})
    assert (status, field) == (422, "recipients_csv")
    assert "must be CSV text" in message


@pytest.mark.parametrize(
    "data",
    [{"recipients": ["a@example.com", "b@example.com"]},
     {"recipients_csv": "a@example.com\nb@example.com\n"}],
)  # fmt: skip
def test_the_caps_given_apply_to_every_field(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        from_request(data, Limits(max_lines=1))
    assert caught.value.code == "too_many_lines"
