"""What a message in a reply mailbox is (consent/replies.py, pure): the headers and subjects
real mail systems put on automatic answers, out-of-office return dates in a few languages,
a reply's own first lines, and the event detail "sequences" reads the return date from."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, date, datetime
from email.message import EmailMessage

import pytest

from dispatch_engine.consent import replies
from dispatch_engine.store.replies import subject_pattern

from .test_dsn import ARF


def message(headers: str, body: str = "Thanks!") -> EmailMessage:
    raw = f"From: Ann <Ann@Receiver.example>\r\n{headers}\r\n\r\n{body}\r\n".encode()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ("Subject: Re: Hello", "reply"),
        ("Subject: Re: Hello\r\nAuto-Submitted: no", "reply"),
        ("Subject: Re: Hello\r\nAuto-Submitted: auto-replied", "auto_reply"),  # RFC 3834
        ("Subject: Re: Hello\r\nAuto-Submitted: auto-generated; owner-email=x@y", "auto_reply"),
        ("Subject: Re: Hello\r\nX-Autoreply: yes", "auto_reply"),
        ("Subject: Re: Hello\r\nX-Autorespond: Hello", "auto_reply"),
        ("Subject: Re: Hello\r\nPrecedence: auto_reply", "auto_reply"),
        ("Subject: Re: Hello\r\nPrecedence: bulk", "auto_reply"),
        ("Subject: Re: Hello\r\nPrecedence: junk", "auto_reply"),
        ("Subject: Automatic reply: Hello", "auto_reply"),  # Outlook
        ("Subject: Out of Office: Hello", "auto_reply"),
        ("Subject: Abwesenheitsnotiz: Hello", "auto_reply"),
        ("Subject: Réponse automatique : Hello", "auto_reply"),
        ("Subject: Respuesta automática: Hello", "auto_reply"),
        ("Subject: Risposta automatica: Hello", "auto_reply"),
        ("Subject: Automatisch antwoord: Hello", "auto_reply"),
        ("Subject: Re: Hello\r\nReturn-Path: <>", "auto_reply"),
        ("Subject: Re: Absence of data in the report", "reply"),  # a word, not a prefix
        ("Subject: Out of office", "auto_reply"),
        (
            "Subject: Undelivered\r\nContent-Type: multipart/report; report-type=delivery-status",
            "report",
        ),
    ],
)
def test_auto_replies_and_reports_are_told_from_replies(headers: str, kind: str) -> None:
    assert replies.classify(message(headers)).kind == kind


def test_an_arf_report_is_a_report_not_a_reply() -> None:
    parsed = email.message_from_bytes(ARF, policy=email.policy.default)
    assert replies.classify(parsed).kind == "report"


RECEIVED = date(2026, 12, 2)


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("I am out of the office until 2026-12-12.", date(2026, 12, 12)),
        ("I'm back on 12 December.", date(2026, 12, 12)),
        ("I will return on December 15th, 2026.", date(2026, 12, 15)),
        ("Ich bin bis 14.12.2026 nicht im Büro.", date(2026, 12, 14)),
        ("Ich bin ab dem 3. Januar zurück; bis 2.1. im Urlaub.", date(2027, 1, 2)),
        ("Je serai de retour le 5 janvier.", date(2027, 1, 5)),  # the next 5 January
        ("Estaré fuera hasta el 20 de diciembre.", date(2026, 12, 20)),
        ("Sono fuori ufficio fino al 18 dicembre.", date(2026, 12, 18)),
        ("Back on Monday.", None),
        ("Back on 2019-01-01.", None),  # long past: not a return date
        ("Thanks, sounds good.", None),
    ],
)
def test_an_out_of_office_return_date_is_read_in_several_languages(
    text: str, back: date | None
) -> None:
    assert replies.return_date(text, RECEIVED) == back


def test_the_detail_carries_the_return_date_sequences_read_back() -> None:
    when = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    detail = replies.detail_of("ann@x.example", when, "Away | back soon", date(2026, 12, 14))
    assert detail == (
        "from=ann@x.example date=2026-12-02T09:00:00+00:00 returns_on=2026-12-14 | Away | back soon"
    )
    assert replies.returns_on_in(detail) == date(2026, 12, 14)
    assert replies.returns_on_in(replies.detail_of("ann@x.example", when, "Yes")) is None


def test_a_reply_shows_its_own_first_lines_without_quotes_or_signature() -> None:
    text = (
        "Yes, let's talk\non Friday.\n\n> earlier\n--\nAnn\nOn Tue, 1 Dec 2026 Ops wrote:\n> Hello"
    )
    assert replies.snippet(text) == "Yes, let's talk on Friday."
    assert len(replies.snippet("word " * 500)) <= replies.SNIPPET_CHARS


def test_an_html_only_reply_is_read_as_text() -> None:
    parsed = message(
        "Subject: Re: Hello\r\nContent-Type: text/html; charset=utf-8",
        "<html><style>p{}</style><p>Sure &amp; thanks</p><script>x()</script></html>",
    )
    assert replies.snippet(replies.plain_text(parsed)) == "Sure & thanks"


def test_threads_and_subjects() -> None:
    parsed = message(
        "Subject: AW: RE:  [EXT] Hello Ann\r\nIn-Reply-To: <b@x>\r\nReferences: <a@x> <b@x>"
    )
    assert replies.referenced_ids(parsed) == ["<b@x>", "<a@x>"]
    assert replies.normalize_subject(str(parsed["Subject"])) == "hello ann"
    assert replies.from_address(parsed) == "ann@receiver.example"
    pattern = subject_pattern("Hello {{ name }}", replies.normalize_subject)
    assert pattern.fullmatch("hello ann") and not pattern.fullmatch("lunch?")
