"""Rendered bytes at their edges: the 998-octet line, quoted-printable line ends, a bare CR
in a header, the Message-ID's form, plain text never HTML-escaped. Written for mutants of
render.py the suite let through (docs/testing.md)."""

from __future__ import annotations

import re

import pytest

from dispatch_engine.render import (
    STRIKES,
    CompiledCampaign,
    TemplateProblem,
    check_templates,
    compile_template,
    render_preview,
)
from dispatch_engine.sandbox import MAX_RENDERED, TemplateLimitError

from .test_render import campaign, parse, render, sender, text_of


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


def test_template_text_is_never_taken_for_a_variable_of_the_same_name() -> None:
    """A recipient may have a column named like a piece of the template's text."""
    context = {"Dear ": "EVIL", "name": "Ada", "email": "a@example.com"}
    assert compile_template("Dear {{ name }}").render(context) == "Dear Ada"
    assert compile_template("Dear {{ name }}", html=True).render(context) == "Dear Ada"


def test_an_ascii_display_name_is_written_as_is() -> None:
    """Readable in any client's raw view; encoded words are for names that need them."""
    _, raw, _ = render(campaign("s", "b"), from_=sender(display_name="Ada Lovelace"))
    assert b"\r\nFrom: Ada Lovelace <news@example.com>\r\n" in b"\r\n" + raw
    _, raw, _ = render(campaign("s", "b"), from_=sender(display_name="Lovelace, Ada"))
    assert b'\r\nFrom: "Lovelace, Ada" <news@example.com>\r\n' in b"\r\n" + raw


def test_the_subjects_variables_are_the_ones_checked_for_line_breaks() -> None:
    """They become a header: scheduling refuses a recipient whose value breaks the line."""
    used = check_templates("Hi {{ name }}", "{{ city }} {{ email }}", "<p>{{ zip }}</p>",
                           {"name", "city", "zip"})  # fmt: skip
    assert used == {"name"}


def test_a_campaign_keeps_sending_until_its_strikes_are_used_up() -> None:
    """Each work-limit failure fails one email; only the STRIKES-th stops the campaign."""
    body = "{% for i in range(n|int) %}{% for j in range(n|int) %}{% endfor %}{% endfor %}ok"
    compiled = CompiledCampaign(campaign("Hi", body), sender())
    for _ in range(STRIKES - 1):
        with pytest.raises(TemplateLimitError):
            compiled.render("a@example.com", {"n": "3000"}, "<a@example.com>")
        assert b"ok" in compiled.render("a@example.com", {"n": "2"}, "<a@example.com>")[1]
    with pytest.raises(TemplateLimitError):
        compiled.render("a@example.com", {"n": "3000"}, "<a@example.com>")
    with pytest.raises(TemplateLimitError, match=f"went over a limit {STRIKES} times"):
        compiled.render("a@example.com", {"n": "2"}, "<a@example.com>")


def test_an_ascii_subject_is_written_as_is() -> None:
    _, raw, _ = render(campaign("Hello {{ name }}, news", "b"), {"name": "Ada"})
    assert b"\r\nSubject: Hello Ada, news\r\n" in raw


@pytest.mark.parametrize("field", ["subject", "body"])
def test_a_rendered_field_may_be_exactly_as_long_as_its_limit(field: str) -> None:
    limit = MAX_RENDERED[field]
    templates = {"subject": "s", "body": "b", field: "{{ text }}"}
    fits = render_preview(templates, {"text": "x" * limit})
    assert len(fits[field]) == limit
    with pytest.raises(TemplateProblem, match=f"longer than {limit:,} characters"):
        render_preview(templates, {"text": "x" * (limit + 1)})


def test_the_schedule_check_renders_plain_text_unescaped() -> None:
    """A plain-text body full of `&` is as long as its text, not as its HTML escape."""
    text = "&" * (MAX_RENDERED["body"] // 2)
    check_templates("s", "{{ text }}", None, {"text"}, ("a@example.com", {"text": text}))
    with pytest.raises(TemplateProblem, match="over a template limit"):
        check_templates("s", "b", "{{ text }}", {"text"}, ("a@example.com", {"text": text}))


def test_a_sample_recipient_whose_data_breaks_the_template_does_not_block_scheduling() -> None:
    """A data error is one recipient's: the worker reports it on that email alone."""
    used = check_templates("Hi", "{{ n + 1 }}", None, {"n"}, ("a@example.com", {"n": "two"}))
    assert used == set()
