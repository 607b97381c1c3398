"""Recipient lists: CSV (with or without a header, any common delimiter) and JSON; a bad row
is reported with its line number and value, and never fails the good ones."""

from __future__ import annotations

import random
from typing import Any

import pytest
from email_validator import EmailNotValidError, validate_email

from dispatch_engine.errors import ValidationError
from dispatch_engine.recipients import (
    Limits,
    ParsedRecipients,
    from_csv,
    from_json,
    normalize,
)


def accepted(parsed: ParsedRecipients) -> list[tuple[str, dict[str, Any]]]:
    return [(r.email, r.vars) for r in parsed.accepted]


def rejected(parsed: ParsedRecipients) -> list[tuple[int, str]]:
    return [(r["line"], r["value"]) for r in parsed.rejected]


def test_header_csv_extra_columns_become_variables() -> None:
    parsed = from_csv(
        "Email,First Name,company\n"
        "ada@example.com,Ada,Analytical Engines\n"
        'alan@example.com, Alan ,"Bletchley, Park"\n'
    )
    assert accepted(parsed) == [
        ("ada@example.com", {"first name": "Ada", "company": "Analytical Engines"}),
        ("alan@example.com", {"first name": "Alan", "company": "Bletchley, Park"}),
    ]
    assert parsed.columns == {"first name", "company"}
    assert parsed.rejected == []


def test_email_column_need_not_be_first() -> None:
    parsed = from_csv("name,email\nAda,ada@example.com\n")
    assert accepted(parsed) == [("ada@example.com", {"name": "Ada"})]


def test_bare_list_one_address_per_line() -> None:
    parsed = from_csv("ada@example.com\nalan@example.com\r\ngrace@example.org\n")
    assert accepted(parsed) == [
        ("ada@example.com", {}),
        ("alan@example.com", {}),
        ("grace@example.org", {}),
    ]
    assert parsed.columns == set()
    assert parsed.rejected == []


def test_semicolon_separated_csv() -> None:
    parsed = from_csv(
        "email;name;city\nada@example.com;Ada;London\nalan@example.com;Alan;Wilmslow\n"
    )
    assert accepted(parsed) == [
        ("ada@example.com", {"name": "Ada", "city": "London"}),
        ("alan@example.com", {"name": "Alan", "city": "Wilmslow"}),
    ]


def test_tab_separated_csv() -> None:
    parsed = from_csv("email\tname\nada@example.com\tAda\n")
    assert accepted(parsed) == [("ada@example.com", {"name": "Ada"})]


def test_byte_order_mark_is_ignored() -> None:
    with_header = from_csv("\ufeffemail,name\nada@example.com,Ada\n")
    assert accepted(with_header) == [("ada@example.com", {"name": "Ada"})]
    bare = from_csv("\ufeffada@example.com\nalan@example.com\n")
    assert accepted(bare) == [("ada@example.com", {}), ("alan@example.com", {})]
    assert bare.rejected == []


def test_blank_lines_are_skipped_and_line_numbers_stay_true() -> None:
    parsed = from_csv(
        "\n"  # 1
        "email,name\n"  # 2
        "ada@example.com,Ada\n"  # 3
        "\n"  # 4
        "   \n"  # 5
        "not-an-address,Nobody\n"  # 6
        "alan@example.com,Alan\n"  # 7
        "\n"
    )
    assert accepted(parsed) == [
        ("ada@example.com", {"name": "Ada"}),
        ("alan@example.com", {"name": "Alan"}),
    ]
    assert rejected(parsed) == [(6, "not-an-address")]


def test_invalid_and_duplicate_addresses_are_reported_by_line() -> None:
    parsed = from_csv(
        "email,name\n"  # 1
        "ada@example.com,Ada\n"  # 2
        "bad@,Broken\n"  # 3
        "alan@example.com,Alan\n"  # 4
        "ADA@example.com,Ada again\n"  # 5
        "no-at-sign,X\n"  # 6
        "alan@example.com,Alan again\n"  # 7
    )
    assert accepted(parsed) == [
        ("ada@example.com", {"name": "Ada"}),
        ("alan@example.com", {"name": "Alan"}),
    ]
    assert rejected(parsed) == [
        (3, "bad@"),
        (5, "ADA@example.com"),
        (6, "no-at-sign"),
        (7, "alan@example.com"),
    ]
    reasons = {r["line"]: r["reason"] for r in parsed.rejected}
    assert "line 2" in reasons[5]  # a duplicate says which line it repeats
    assert "line 4" in reasons[7]
    assert all(reasons.values())


def test_bare_list_reports_bad_lines() -> None:
    parsed = from_csv("ada@example.com\n\nnope\nada@example.com\n")
    assert accepted(parsed) == [("ada@example.com", {})]
    assert rejected(parsed) == [(3, "nope"), (4, "ada@example.com")]


def test_line_numbers_after_a_multiline_quoted_cell() -> None:
    parsed = from_csv(
        "email,note\n"  # 1
        'ada@example.com,"first line\n'  # 2
        'second line"\n'  # 3
        "bad-address,x\n"  # 4
    )
    assert accepted(parsed) == [("ada@example.com", {"note": "first line\nsecond line"})]
    assert rejected(parsed) == [(4, "bad-address")]


def test_a_rejected_row_spanning_lines_is_reported_at_its_first_line() -> None:
    parsed = from_csv(
        "email,note\n"  # 1
        'not-an-address,"a note\n'  # 2
        "on three\n"  # 3
        'lines"\n'  # 4
        "ada@example.com,ok\n"  # 5
        'ada@example.com,"again\n'  # 6: duplicate, over two lines
        'twice"\n'  # 7
    )
    assert accepted(parsed) == [("ada@example.com", {"note": "ok"})]
    assert rejected(parsed) == [(2, "not-an-address"), (6, "ada@example.com")]
    assert "line 5" in parsed.rejected[1]["reason"]


def test_missing_trailing_cells_are_empty_strings() -> None:
    """`heidi@example.com` alone under `email,name`: accepted, and sendable with name ""."""
    parsed = from_csv("email,name,city\nheidi@example.com\nada@example.com,Ada\n")
    assert accepted(parsed) == [
        ("heidi@example.com", {"name": "", "city": ""}),
        ("ada@example.com", {"name": "Ada", "city": ""}),
    ]
    assert parsed.rejected == []


def test_bytes_are_parsed_as_utf8_with_the_same_line_numbers() -> None:
    text = '\ufeffemail,name\r\nbad,x\r\n\r\nzoë@example.com,"Zoë\r\nB"\rnope\n'
    from_text, from_bytes = from_csv(text), from_csv(text.encode())
    assert (
        accepted(from_bytes) == accepted(from_text) == [("zoë@example.com", {"name": "Zoë\r\nB"})]
    )
    assert rejected(from_bytes) == rejected(from_text) == [(2, "bad"), (6, "nope")]
    with pytest.raises(ValidationError) as caught:
        from_csv(b"email\n\xff@example.com\n", field="recipients_file")
    assert caught.value.field == "recipients_file"


def test_rejected_lines_are_listed_up_to_the_cap_and_counted() -> None:
    parsed = from_csv("".join(f"bad{n}\n" for n in range(500)) + "ada@example.com\n")
    assert len(parsed.rejected) == 100 and parsed.rejected_total == 500
    assert parsed.rejected[-1]["line"] == 100
    assert accepted(parsed) == [("ada@example.com", {})]


def test_caps_on_lines_and_recipients_name_the_field() -> None:
    limits = Limits(max_recipients=3, max_lines=10)
    three = "".join(f"u{n}@example.com\n" for n in range(3))
    assert len(from_csv(three, limits).accepted) == 3
    with pytest.raises(ValidationError) as caught:
        from_csv(three + "u9@example.com\n", limits, field="recipients_file")
    assert caught.value.code == "too_many_recipients"  # a ValidationError: a 422
    assert caught.value.field == "recipients_file"
    with pytest.raises(ValidationError) as caught:
        from_csv("nope\n" * 11, limits)
    assert (caught.value.code, caught.value.field) == ("too_many_lines", "recipients_csv")
    with pytest.raises(ValidationError) as caught:
        from_json(["nope"] * 11, limits)
    assert (caught.value.code, caught.value.field) == ("too_many_lines", "recipients")


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("trailing", [True, False])
def test_the_line_cap_counts_lines_as_the_parse_does(end: str, trailing: bool) -> None:
    limits = Limits(max_lines=5)
    for count in (5, 6):
        text = end.join(["email", *(f"u{n}@example.com" for n in range(count - 1))])
        text += end if trailing else ""
        for source in (text, text.encode()):
            if count == 5:
                assert len(from_csv(source, limits).accepted) == 4
            else:
                with pytest.raises(ValidationError, match="more than 5 lines"):
                    from_csv(source, limits)


def test_a_cell_past_the_csv_field_limit_is_a_field_error_with_its_line() -> None:
    with pytest.raises(ValidationError) as caught:
        from_csv("email,note\nada@example.com,ok\nb@example.com," + "x" * 200_000 + "\n")
    assert caught.value.field == "recipients_csv"
    assert "line 3" in caught.value.message


def test_empty_text_gives_nothing() -> None:
    parsed = from_csv("\n  \n")
    assert parsed.accepted == []
    assert parsed.rejected == []


def test_json_list_of_strings() -> None:
    parsed = from_json(["ada@example.com", "alan@example.com"])
    assert accepted(parsed) == [("ada@example.com", {}), ("alan@example.com", {})]
    assert parsed.rejected == []


def test_json_list_of_objects_with_vars() -> None:
    parsed = from_json(
        [
            {"email": "ada@example.com", "vars": {"name": "Ada", "visits": 3}},
            {"email": "alan@example.com"},
        ]
    )
    assert accepted(parsed) == [
        ("ada@example.com", {"name": "Ada", "visits": 3}),
        ("alan@example.com", {"name": "", "visits": ""}),  # what another has is "" here
    ]
    assert parsed.columns == {"name", "visits"}


def test_json_bad_items_are_reported_by_position() -> None:
    parsed = from_json(
        [
            "ada@example.com",  # 1
            42,  # 2
            {"email": 5},  # 3
            {"email": "x@example.com", "vars": ["not", "an", "object"]},  # 4
            "not-an-address",  # 5
            "Ada@Example.com",  # 6: duplicate of 1
            None,  # 7
            {"name": "no email"},  # 8
            {"email": "grace@example.org", "vars": {"name": "Grace"}},  # 9
        ]
    )
    assert accepted(parsed) == [
        ("ada@example.com", {"name": ""}),
        ("grace@example.org", {"name": "Grace"}),
    ]
    assert [r["line"] for r in parsed.rejected] == [2, 3, 4, 5, 6, 7, 8]
    by_line = {r["line"]: r for r in parsed.rejected}
    assert by_line[4]["value"] == "x@example.com"
    assert by_line[5]["value"] == "not-an-address"
    assert by_line[6]["value"] == "Ada@Example.com"
    assert "line 1" in by_line[6]["reason"]
    assert "42" in by_line[2]["value"]


def test_json_that_is_not_a_list_is_a_field_error() -> None:
    with pytest.raises(ValidationError) as caught:
        from_json({"email": "ada@example.com"})
    assert caught.value.code == "invalid_field"
    assert caught.value.field == "recipients"


def _verdict(check: Any, value: str) -> tuple[str, str]:
    try:
        return "accepted", str(check(value))
    except EmailNotValidError as exc:
        return "rejected", str(exc)


TRICKY = [
    "ada@example.com",
    "Ada.Lovelace@Example.COM",
    "user+tag@example.org",
    "o'neil@example.com",
    "Postmaster@example.com",
    "SALES@example.com",
    "a..b@example.com",
    ".a@example.com",
    "a.@example.com",
    "a" * 64 + "@example.com",
    "a" * 65 + "@example.com",
    "a" * 240 + "@example.com",
    "a@" + "b" * 63 + ".com",
    "a@" + "b" * 64 + ".com",
    "a@" + ".".join(["b" * 60] * 4) + ".com",
    "a@example",
    "a@localhost",
    "a@x.test",
    "a@example.local",
    "a@example.com.",
    "a@-example.com",
    "a@example-.com",
    "a@example..com",
    "a@123.com",
    "a@example.123",
    "a@xn--bcher-kva.example",
    "a@XN--BCHER-KVA.example",
    "a@xn--zz.example",
    "a@bücher.example",
    "ädä@example.com",
    "a@[127.0.0.1]",
    '"quoted"@example.com',
    '"a b"@example.com',
    "Ada <ada@example.com>",
    "<ada@example.com>",
    "ada@example.com>",
    "a@b@example.com",
    "a@",
    "@example.com",
    "a@ example.com",
    "a@exam_ple.com",
    "a@example.c",
    "",  # no @-sign at all: answered without the library's per-character scan
    " ",
    "plain",
    '"quoted',
    "a b,c;d",
    "\t\x00",
    "Ada <ada>",
    "fullwidth\uff20example.com",
]


def test_fast_path_keeps_the_library_verdicts_and_messages() -> None:
    """normalize() answers plain addresses from a cache: it must agree with the library."""
    rng = random.Random(8)
    locals_ = ["a", "Ada", "a.b", "a+b", "postmaster", "x" * 70, "", ".", "a..b", '"q"', "ä", "a b"]
    domains = ["example.com", "EXAMPLE.com", "example", "x.test", "xn--bcher-kva.example",
               "", "[1.2.3.4]", "ex_ample.com", "-a.com", "a.b.c.d.e.f", "b" * 64 + ".com",
               "bü.de"]  # fmt: skip
    generated = [
        rng.choice(locals_) + rng.choice(["@", "@@", "", "<"]) + rng.choice(domains)
        for _ in range(1500)
    ]
    for value in TRICKY + generated:
        library = _verdict(
            lambda v: validate_email(v, check_deliverability=False).normalized, value
        )
        assert _verdict(normalize, value) == library, value
