"""Rendered message bytes: what a mail client parses back is what the campaign said."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage, MIMEPart
from email.utils import parsedate_to_datetime
from typing import Any

import jinja2
import pytest

from dispatch_engine.message_ids import idempotency_key, message_id_for
from dispatch_engine.models import CampaignContent, Sender
from dispatch_engine.render import (
    CompiledCampaign,
    TemplateProblem,
    check_templates,
)

RECIPIENT = "ada@example.com"


def sender(display_name: str = "Zoë Ürban, Ltd.", reply_to: str | None = None) -> Sender:
    return Sender(
        id=1,
        owner_id=1,
        from_address="news@example.com",
        display_name=display_name,
        reply_to=reply_to,
        transport="capture",
        transport_settings={},
        hourly_limit=50,
        min_gap_ms=0,
    )


def campaign(subject: str, body: str, html: str | None = None) -> CampaignContent:
    return CampaignContent(
        id=7,
        owner_id=1,
        sender_id=1,
        subject=subject,
        body_text=body,
        body_html=html,
        delay_between_ms=0,
        hourly_limit=None,
    )


def render(
    content: CampaignContent, variables: dict[str, Any] | None = None, from_: Sender | None = None
) -> tuple[str, bytes, str]:
    the_sender = from_ or sender()
    key = idempotency_key(content.id, RECIPIENT, 1_700_000_000_000_000)
    message_id = message_id_for(key, the_sender.from_address)
    subject, raw = CompiledCampaign(content, the_sender).render(
        RECIPIENT, variables or {}, message_id
    )
    return subject, raw, message_id


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(part: MIMEPart) -> str:
    # The parser keeps the wire's CRLF line ends inside payloads.
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def test_plain_message_headers_and_body_round_trip() -> None:
    long_line = "word " * 300  # 1,500 characters: longer than SMTP's 998-octet line limit
    body = "Hello {{ name }}, ça va? ✓\n" + long_line + "\nBye"
    subject, raw, message_id = render(campaign("Grüße, {{ name }}!", body), {"name": "Ada"})
    message = parse(raw)

    assert subject == "Grüße, Ada!"
    assert message["Subject"] == "Grüße, Ada!"
    (address,) = message["From"].addresses
    assert address.display_name == "Zoë Ürban, Ltd."
    assert address.addr_spec == "news@example.com"
    assert message["To"] == RECIPIENT
    assert message["Message-ID"] == message_id
    # "-0000" is UTC (RFC 5322 3.3); the date is when the message was rendered.
    sent = parsedate_to_datetime(message["Date"]).replace(tzinfo=UTC)
    assert abs((sent - datetime.now(UTC)).total_seconds()) < 300
    assert message.get_content_type() == "text/plain"
    assert text_of(message) == f"Hello Ada, ça va? ✓\n{long_line}\nBye"
    assert not message.defects
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_ascii_body_round_trips() -> None:
    _, raw, _ = render(campaign("Hi", "Line one\nLine two for {{ email }}"))
    message = parse(raw)
    assert text_of(message) == f"Line one\nLine two for {RECIPIENT}"
    assert message["From"].addresses[0].display_name == "Zoë Ürban, Ltd."


def test_without_display_name_from_is_the_bare_address() -> None:
    _, raw, _ = render(campaign("Hi", "Body"), from_=sender(display_name=""))
    (address,) = parse(raw)["From"].addresses
    assert address.addr_spec == "news@example.com"
    assert address.display_name == ""


def test_reply_to_is_set_when_the_sender_has_one() -> None:
    _, raw, _ = render(campaign("Hi", "Body"), from_=sender(reply_to="help@example.com"))
    assert parse(raw)["Reply-To"] == "help@example.com"


def test_html_campaign_is_multipart_alternative_with_escaped_variables() -> None:
    content = campaign(
        "News for {{ name }}",
        "Hi {{ name }} ✓",
        "<p>Hi <b>{{ name }}</b> ✓</p>",
    )
    _, raw, message_id = render(content, {"name": "<script>alert(1)</script>"})
    message = parse(raw)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Message-ID"] == message_id
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    plain, html = (text_of(p) for p in parts)
    assert plain == "Hi <script>alert(1)</script> ✓"  # text is not HTML: left as written
    assert html == "<p>Hi <b>&lt;script&gt;alert(1)&lt;/script&gt;</b> ✓</p>"
    assert "<script>" not in html
    assert not message.defects and not any(p.defects for p in parts)


def test_a_variable_cannot_inject_headers_through_the_subject() -> None:
    _, raw, _ = render(
        campaign("Hello {{ name }}", "Body"), {"name": "Ada\r\nBcc: victim@example.net"}
    )
    message = parse(raw)
    assert message["Bcc"] is None
    assert re.search(rb"(?im)^bcc:", raw) is None
    assert "Bcc" in str(message["Subject"])  # kept as text, inside the one Subject header
    assert len(message.get_all("Subject") or []) == 1


def test_long_non_ascii_subject_uses_only_crlf_line_ends() -> None:
    subject = "Grüße — " + "a fairly long subject line " * 6
    _, raw, _ = render(campaign(subject, "Body"))
    assert parse(raw)["Subject"] == subject
    assert re.search(rb"(?<!\r)\n", raw) is None, "bare LF in the message"


def test_message_id_is_stable_per_key() -> None:
    key = idempotency_key(7, RECIPIENT, 1_700_000_000_000_000)
    same = idempotency_key(7, RECIPIENT, 1_700_000_000_000_000)
    other = idempotency_key(7, "alan@example.com", 1_700_000_000_000_000)
    first = message_id_for(key, "news@example.com")
    assert first == message_id_for(same, "news@example.com")
    assert first != message_id_for(other, "news@example.com")
    assert re.fullmatch(r"<[0-9a-f]+@example\.com>", first)
    # Rendering twice (a retry) carries the same Message-ID.
    content = campaign("Hi", "Body")
    assert parse(render(content)[1])["Message-ID"] == parse(render(content)[1])["Message-ID"]


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ email.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ name.__len__ }}",
    ],
)
def test_sandbox_refuses_unsafe_template_code(source: str) -> None:
    compiled = CompiledCampaign(campaign("Hi", source), sender())
    with pytest.raises(jinja2.exceptions.SecurityError):
        compiled.render(RECIPIENT, {"name": "Ada"}, "<x@example.com>")


def test_unsafe_template_code_is_refused_at_schedule_time() -> None:
    with pytest.raises(TemplateProblem, match="not allowed in the template sandbox") as caught:
        check_templates("Hi", "{{ ''.__class__.__mro__ }}", None, set(), (RECIPIENT, {}))
    assert caught.value.field == "body"


def test_sandbox_still_allows_safe_expressions() -> None:
    _, raw, _ = render(campaign("Hi", "{{ email.upper() }} {{ name|title }}"), {"name": "ada l"})
    assert text_of(parse(raw)) == "ADA@EXAMPLE.COM Ada L"


@pytest.mark.parametrize(
    ("subject", "body", "html", "field", "needle"),
    [
        ("Hi {{ nmae }}", "Body", None, "subject", "nmae"),
        ("Hi", "Dear {{ first }}", None, "body", "first"),
        ("Hi", "Body", "<p>{{ company }}</p>", "html", "company"),
        ("Hi", "Dear {{ name", None, "body", "line 1"),
        ("{% if %}", "Body", None, "subject", "line 1"),
        ("Hi", "Body", "<p>\n{% for x in %}</p>", "html", "line 2"),
    ],
)
def test_check_templates_names_the_field(
    subject: str, body: str, html: str | None, field: str, needle: str
) -> None:
    with pytest.raises(TemplateProblem) as caught:
        check_templates(subject, body, html, {"name"})
    assert caught.value.field == field
    assert field in str(caught.value)
    assert needle in str(caught.value)


def test_check_templates_accepts_known_variables() -> None:
    check_templates("Hi {{ name }}", "{{ email }} {{ name|upper }}", "<p>{{ name }}</p>", {"name"})


@pytest.mark.parametrize(
    ("source", "html"),
    [
        ("Hello {{ email }},\n\nline {{ n }}\n", False),
        ("{{ email }}{{ email }}", False),
        ("<p>{{ name }} &amp; {{ n }}</p>", True),
        ("{{ name|upper }} {% if n %}yes{% endif %}", False),
        ("{{ flag }} {{ none }} {{ items }}", False),
        ("plain text, no names", False),
    ],
)
def test_text_and_names_templates_render_as_jinja_does(source: str, html: bool) -> None:
    from dispatch_engine.render import _ENV, _HTML_ENV, compile_template

    context = {"email": "a@example.com", "name": "<b>R&D</b>", "n": 3, "flag": True,
               "none": None, "items": [1, "x"]}  # fmt: skip
    jinja = (_HTML_ENV if html else _ENV).from_string(source).render(context)
    assert compile_template(source, html=html).render(context) == jinja


def test_a_missing_name_fails_as_in_jinja() -> None:
    from jinja2.exceptions import UndefinedError

    from dispatch_engine.render import compile_template

    with pytest.raises(UndefinedError, match="'nope' is undefined"):
        compile_template("Hi {{ nope }}").render({"email": "a@example.com"})


# ---- limits: what a hostile template can cost (sandbox.py) ----

POISON = "{% for a in [1] %}" * 21 + "x" + "{% endfor %}" * 21  # CPython: 20 nested blocks max

# A work limit: the step count or, on a busy machine, the deadline comes first.
WORK = ("loop iterations", "took longer")


def _alternatives(needle: str | tuple[str, ...]) -> tuple[str, ...]:
    return needle if isinstance(needle, tuple) else (needle,)


@pytest.mark.parametrize(
    ("subject", "body", "html", "field", "needle"),
    [
        ("Hi", POISON, None, "body", "too many statically nested blocks"),
        ("{{ 7 ** 3000000 }}", "Body", None, "subject", "integers are limited"),
        ("Hi", "{% for c in 'x' * 100000 %}{% for d in 'y' * 100000 %}{% endfor %}{% endfor %}",
         None, "body", WORK),
        ("Hi", "{{ email * 1000000000 }}", None, "body", "would exceed"),
        ("Hi", "Body", "<p>{{ email|center(1000000000) }}</p>", "html", "|center"),
        ("Hi", "{{ email.ljust(1000000000) }}", None, "body", "ljust"),
        ("Hi", "{{ '{:>999999999}'.format(email) }}", None, "body", "format"),
        ("Hi", "{{ '%999999999s' % email }}", None, "body", "%"),
        ("Hi", "{% set a = email * 50000 %}{{ a ~ a ~ a ~ a ~ a ~ a ~ a ~ a }}", None, "body",
         "~ would exceed"),
        ("Hi", "{% set s = email * 10000 %}{{ [s, s, s, s, s, s, s, s, s, s] }}", None, "body",
         "output would exceed"),
        ("Hi", "{% set s = email * 1000 %}{{ s|replace('', s) }}", None, "body", "|replace"),
        ("Hi", "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}"
         "{{ m(40) }}", None, "body", "rendering took longer"),
        ("Hi", "{{ email }}" * 2000, None, "body", "Jinja tokens"),
        ("Hi", "{{ " + "(" * 400 + "1" + ")" * 400 + " }}", None, "body", "nested too deeply"),
        ("Hi", "{% set s = email * 1000 %}{% for i in range(200) %}{{ s }}{% endfor %}", None,
         "body", "longer than 2,000,000 characters"),
        ("{% for i in range(300) %}{{ email }}{% endfor %}", "Body", None, "subject",
         "longer than 2,000 characters"),
    ],
)  # fmt: skip
def test_check_templates_compiles_and_renders_under_limits(
    subject: str, body: str, html: str | None, field: str, needle: str | tuple[str, ...]
) -> None:
    with pytest.raises(TemplateProblem) as caught:
        check_templates(subject, body, html, set(), (RECIPIENT, {}))
    assert caught.value.field == field
    assert any(n in str(caught.value) for n in _alternatives(needle)), str(caught.value)


def test_limits_leave_ordinary_templates_alone() -> None:
    source = (
        "{% for i in range(3) %}{{ i }}{% endfor %} {{ 'a' ~ email }} {{ 2 * 3 }} "
        "{{ 10 ** 5 }} {{ '%05d' % 42 }} {{ ['x'] * 2 }} {{ email|center(30)|trim }}"
    )
    check_templates("Hi {{ email }}", source, None, set(), (RECIPIENT, {}))
    _, raw, _ = render(campaign("Hi", source))
    assert text_of(parse(raw)) == (f"012 a{RECIPIENT} 6 100000 00042 ['x', 'x'] {RECIPIENT}")


def test_a_template_heavy_for_some_recipients_fails_their_emails_then_the_campaign() -> None:
    """Heavy only for some data (so past the schedule-time render): those emails fail with
    the reason; after STRIKES, the campaign's other emails fail at once."""
    from dispatch_engine.render import STRIKES
    from dispatch_engine.sandbox import TemplateLimitError

    body = "{% for i in range(n|int) %}{% for j in range(n|int) %}{% endfor %}{% endfor %}ok"
    compiled = CompiledCampaign(campaign("Hi", body), sender())
    assert b"ok" in compiled.render(RECIPIENT, {"n": "2"}, "<a@example.com>")[1]
    for _ in range(STRIKES):
        with pytest.raises(TemplateLimitError, match=r"loop iterations|took longer"):
            compiled.render(RECIPIENT, {"n": "3000"}, "<a@example.com>")
    with pytest.raises(TemplateLimitError, match=f"went over a limit {STRIKES} times"):
        compiled.render(RECIPIENT, {"n": "2"}, "<a@example.com>")
    # Another campaign is not affected.
    other = CompiledCampaign(campaign("Hi", body), sender())
    assert b"ok" in other.render(RECIPIENT, {"n": "2"}, "<a@example.com>")[1]


def test_the_text_and_names_fast_path_is_kept() -> None:
    from dispatch_engine.render import _TextAndNames, compile_template

    assert isinstance(compile_template("Hi {{ name }}, {{ email }}"), _TextAndNames)


# ---- headers: nothing a user sets or sends can start a new header line ----

INJECTIONS = [
    "Eve\r\nBcc: victim@example.net",
    "Eve\nBcc: victim@example.net",
    "Eve\rBcc: victim@example.net",
    "Évé\r\nBcc: victim@example.net",
    "Eve\u2028Bcc: victim@example.net",
    "Eve\x85Bcc: victim@example.net",
]


def headers_of(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", head) is None, "a bare CR or LF in the head"
    return [line.split(b":", 1)[0].decode().lower() for line in head.split(b"\r\n")
            if line and not line[:1].isspace()]  # fmt: skip


@pytest.mark.parametrize("evil", INJECTIONS)
def test_a_display_name_cannot_inject_headers(evil: str) -> None:
    _, raw, _ = render(campaign("Hi", "Body"), from_=sender(display_name=evil))
    names = headers_of(raw)
    assert "bcc" not in names and names.count("from") == 1
    message = parse(raw)
    (address,) = message["From"].addresses
    assert address.addr_spec == "news@example.com"
    assert "Bcc" in address.display_name  # kept as text, inside the one From header


@pytest.mark.parametrize("evil", INJECTIONS)
def test_reply_to_and_subject_variables_cannot_inject_headers(evil: str) -> None:
    reply_to = "help@example.com\r\nBcc: victim@example.net"
    _, raw, _ = render(
        campaign("Hello {{ name }}", "Body"), {"name": evil}, from_=sender(reply_to=reply_to)
    )
    names = headers_of(raw)
    assert "bcc" not in names
    assert names.count("subject") == 1 and names.count("reply-to") == 1
