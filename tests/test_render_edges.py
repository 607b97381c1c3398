"""Rendered bytes at their edges: the 998-octet line, quoted-printable line ends, a bare CR
in a header, the Message-ID's form, plain text never HTML-escaped. Written for mutants of
render.py the suite let through (docs/testing.md)."""

from __future__ import annotations

import re

from dispatch_engine.render import compile_template

from .test_render import campaign, parse, render, text_of


def _encoding(body: str) -> str:
    _, raw, _ = render(campaign("s", body))
    return str(parse(raw)["Content-Transfer-Encoding"])


def test_a_line_of_998_octets_goes_as_is_and_one_longer_is_encoded() -> None:
    assert _encoding("x" * 998 + "\nend") == "7bit"
    assert _encoding("x" * 999 + "\nend") == "quoted-printable"
    assert _encoding("short, but ✓ not ascii") == "quoted-printable"


def test_quoted_printable_keeps_line_ends_as_line_ends() -> None:
    body = "ça va?\nline two\nline three"
    _, raw, _ = render(campaign("s", body))
    assert b"=0A" not in raw and b"=0D" not in raw, "line breaks are not encoded as octets"
    assert text_of(parse(raw)) == body


def test_a_bare_carriage_return_in_a_subject_variable_cannot_start_a_header() -> None:
    _, raw, _ = render(campaign("Hi {{ name }}", "b"), {"name": "x\rBcc: evil@example.com"})
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\rBcc" not in head and not re.search(rb"(?m)^Bcc:", head.replace(b"\r", b"\n"))
    assert parse(raw)["Bcc"] is None


def test_a_non_ascii_subject_is_encoded_on_the_wire() -> None:
    _, raw, _ = render(campaign("Grüße", "b"))
    (line,) = [x for x in raw.split(b"\r\n") if x.startswith(b"Subject:")]
    assert line.isascii() and b"=?utf-8?" in line


def test_the_message_id_carries_40_hex_digits_of_the_key() -> None:
    _, _, message_id = render(campaign("s", "b"))
    assert re.fullmatch(r"<[0-9a-f]{40}@example\.com>", message_id), message_id


def test_a_plain_text_template_is_never_html_escaped() -> None:
    assert compile_template("{{ name|trim }}").render({"name": " R&D <x> "}) == "R&D <x>"
