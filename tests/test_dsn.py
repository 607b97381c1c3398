"""The bounce and complaint parsers (consent/dsn.py, consent/arf.py), VERP return paths
(consent/verp.py) and what a mailbox message becomes (builtins/imap_feedback/reports.py).

`postfix_unknown_user.eml` is a real DSN: Debian's Postfix (tests/support/postfix.py)
bouncing an email to an unknown local user, as delivered to the bounce Maildir, with the
return path `bounce+<token of dispatch 42 under the key "k" * 32>@bounce.example.net`.
`arf_abuse.eml` is written by hand after RFC 5965's example: no program on this machine
produces ARF reports (they come from mailbox providers' feedback loops).
"""

from __future__ import annotations

import contextlib
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_engine.builtins.imap_feedback.reports import interpret
from dispatch_engine.config import Settings
from dispatch_engine.consent.arf import parse_arf
from dispatch_engine.consent.dsn import (
    BounceKind,
    MalformedReport,
    parse_dsn,
    parse_message,
    report_type,
)
from dispatch_engine.consent.feedback import FeedbackKind
from dispatch_engine.consent.tokens import DispatchTokens, Purpose
from dispatch_engine.consent.verp import ReturnPaths, VerpSettings, dispatch_of, token_of
from dispatch_engine.setting import SettingsError, read_settings

FIXTURES = Path(__file__).parent / "fixtures" / "feedback"
POSTFIX_DSN = (FIXTURES / "postfix_unknown_user.eml").read_bytes()
ARF = (FIXTURES / "arf_abuse.eml").read_bytes()
KEY = "k" * 32
OUR_ID = "<0123456789abcdef0123456789abcdef01234567@example.com>"
CAP = 1_000_000


def paths(**environ: str) -> ReturnPaths:
    return ReturnPaths(read_settings(VerpSettings, environ), DispatchTokens(KEY, Purpose.BOUNCE))


def message(raw: bytes) -> EmailMessage:
    return parse_message(raw, CAP)


def with_status(action: str, status: str, raw: bytes = POSTFIX_DSN) -> bytes:
    return raw.replace(b"Action: failed", f"Action: {action}".encode()).replace(
        b"Status: 5.1.1", f"Status: {status}".encode()
    )


# ---- RFC 3464: the real Postfix DSN ----


def test_the_real_postfix_dsn_names_its_recipient_status_and_our_message_id() -> None:
    parsed = message(POSTFIX_DSN)
    assert report_type(parsed) == "delivery-status"
    report = parse_dsn(parsed)
    (recipient,) = report.recipients
    assert recipient.recipient == "nobody-here@dest.example.net"
    assert (recipient.action, recipient.status) == ("failed", "5.1.1")
    assert recipient.diagnostic == 'X-Postfix; unknown user: "nobody-here"'
    assert recipient.kind is BounceKind.HARD
    assert report.original_message_id == OUR_ID
    assert report.report_message_id is not None and report.report_message_id.endswith("@mta.test>")
    token = DispatchTokens(KEY, Purpose.BOUNCE).make(42)
    assert f"bounce+{token}@bounce.example.net" in report.addressed_to
    assert report.return_paths == (f"bounce+{token}@bounce.example.net",)


@pytest.mark.parametrize(
    ("action", "status", "kind"),
    [
        ("failed", "5.1.1", BounceKind.HARD),
        ("failed", "5.2.2 (mailbox full)", BounceKind.HARD),
        ("Failed", "4.4.7", BounceKind.SOFT),  # failed, but a transient status
        ("delayed", "4.4.1", BounceKind.SOFT),
        ("delivered", "2.0.0", None),
        ("relayed", "2.0.0", None),
        ("expanded", "2.0.0", None),
    ],
)
def test_action_and_status_decide_hard_soft_or_no_bounce(
    action: str, status: str, kind: BounceKind | None
) -> None:
    (recipient,) = parse_dsn(message(with_status(action, status))).recipients
    assert recipient.kind is kind


def test_returned_headers_alone_still_give_the_original_message_id() -> None:
    raw = POSTFIX_DSN.replace(b"Content-Type: message/rfc822", b"Content-Type: text/rfc822-headers")
    assert parse_dsn(message(raw)).original_message_id == OUR_ID


def test_a_report_over_the_cap_is_refused_before_parsing() -> None:
    with pytest.raises(MalformedReport, match="cap"):
        parse_message(POSTFIX_DSN, len(POSTFIX_DSN) - 1)


def test_a_dsn_without_its_status_part_or_recipient_is_malformed() -> None:
    no_part = POSTFIX_DSN.replace(b"message/delivery-status", b"text/plain")
    with pytest.raises(MalformedReport):
        parse_dsn(message(no_part))
    no_recipient = POSTFIX_DSN.replace(b"Final-Recipient:", b"X-Final:").replace(
        b"Original-Recipient:", b"X-Original:"
    )
    with pytest.raises(MalformedReport, match="no recipient"):
        parse_dsn(message(no_recipient))


# ---- RFC 5965: ARF ----


def test_an_arf_abuse_report_names_the_complaint_our_message_and_the_return_path() -> None:
    parsed = message(ARF)
    assert report_type(parsed) == "feedback-report"
    report = parse_arf(parsed)
    assert report.feedback_type == "abuse" and report.is_complaint
    assert report.original_message_id == OUR_ID
    assert report.original_rcpt_to == ("ann@receiver.example",)
    token = DispatchTokens(KEY, Purpose.BOUNCE).make(42)
    assert report.return_paths == (f"bounce+{token}@bounce.example.net",)
    assert report.report_message_id == "<arf-20261202-0001@receiver.example>"


@pytest.mark.parametrize("kind", ["not-spam", "auth-failure", "virus", "other"])
def test_feedback_that_is_no_complaint_is_not_one(kind: str) -> None:
    report = parse_arf(
        message(ARF.replace(b"Feedback-Type: abuse", f"Feedback-Type: {kind}".encode()))
    )
    assert not report.is_complaint


def test_an_arf_report_without_feedback_type_is_malformed() -> None:
    with pytest.raises(MalformedReport):
        parse_arf(message(ARF.replace(b"Feedback-Type: abuse", b"X-Type: abuse")))


# ---- VERP ----


def test_a_return_path_names_its_dispatch_and_survives_a_lowered_or_raised_case() -> None:
    made = paths(DISPATCH_BOUNCE_DOMAIN="Bounces.Example.com").for_dispatch(7, "ops@example.com")
    local, _, domain = made.partition("@")
    assert local.startswith("bounce+") and domain == "bounces.example.com"
    tokens = DispatchTokens(KEY, Purpose.BOUNCE)
    assert dispatch_of(tokens, [made]) == 7
    assert dispatch_of(tokens, [made.upper()]) == 7  # an MTA that changes the local part's case
    assert token_of(f"<{made}>") == token_of(made)


def test_a_resend_keeps_the_same_return_path() -> None:
    verp = paths(DISPATCH_BOUNCE_DOMAIN="bounces.example.com")
    assert verp.for_dispatch(7, "ops@example.com") == verp.for_dispatch(7, "ops@example.com")
    assert verp.for_dispatch(7, "ops@example.com") != verp.for_dispatch(8, "ops@example.com")


def test_without_a_bounce_domain_the_envelope_sender_is_the_from_address() -> None:
    assert paths().for_dispatch(7, "ops@example.com") == "ops@example.com"


def test_a_from_domain_of_its_own_gets_its_aligned_bounce_domain() -> None:
    verp = paths(
        DISPATCH_BOUNCE_DOMAIN="bounces.example.com",
        DISPATCH_BOUNCE_DOMAINS="shop.example.org=bounce.shop.example.org",
    )
    assert verp.for_dispatch(1, "sales@Shop.Example.org").endswith("@bounce.shop.example.org")
    assert verp.for_dispatch(1, "ops@example.com").endswith("@bounces.example.com")


def test_forged_or_foreign_return_paths_name_no_dispatch() -> None:
    tokens = DispatchTokens(KEY, Purpose.BOUNCE)
    other_key = DispatchTokens("j" * 32, Purpose.BOUNCE).make(7)
    unsubscribe = DispatchTokens(KEY, Purpose.UNSUBSCRIBE).make(7)
    forged = "bounce+" + "a" * 29 + "@bounces.example.com"
    assert dispatch_of(tokens, [forged, f"bounce+{other_key}@x.example", "ops@example.com"]) is None
    assert dispatch_of(tokens, [f"bounce+{unsubscribe}@bounces.example.com"]) is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DISPATCH_BOUNCE_DOMAIN", "not a domain"),
        ("DISPATCH_BOUNCE_DOMAIN", "bounce@example.com"),
        ("DISPATCH_BOUNCE_DOMAINS", "example.com"),
        ("DISPATCH_BOUNCE_DOMAINS", "example.com=bad domain"),
    ],
)
def test_a_malformed_bounce_domain_is_refused_naming_its_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        read_settings(VerpSettings, {variable: value})


def test_the_worker_settings_carry_the_bounce_domain() -> None:
    settings = Settings(secret_key=KEY).with_environ(DISPATCH_BOUNCE_DOMAIN="bounces.example.com")
    assert ReturnPaths.of(settings).for_dispatch(3, "a@example.com").startswith("bounce+")


def test_a_return_path_signed_before_a_key_rotation_still_names_its_dispatch() -> None:
    before = paths(DISPATCH_BOUNCE_DOMAIN="bounces.example.com").for_dispatch(9, "a@example.com")
    rotated = Settings(secret_key="n" * 32, old_secret_keys=(KEY,))
    assert ReturnPaths.of(rotated).dispatch_in([before]) == 9
    assert ReturnPaths.of(Settings(secret_key="n" * 32)).dispatch_in([before]) is None


# ---- a mailbox message → its event ----


def test_the_postfix_dsn_becomes_a_hard_bounce_of_the_dispatch_its_return_path_names() -> None:
    found = interpret(POSTFIX_DSN, CAP, paths())
    event = found.event
    assert event is not None and event.kind is FeedbackKind.HARD_BOUNCE
    assert event.dispatch_id == 42 and event.message_id == OUR_ID
    assert "5.1.1" in event.detail and "nobody-here@dest.example.net" in event.detail
    again = interpret(POSTFIX_DSN, CAP, paths()).event
    assert again is not None and again.fingerprint == event.fingerprint  # read twice: one event


def test_without_a_genuine_token_the_message_id_names_the_dispatch() -> None:
    found = interpret(
        POSTFIX_DSN,
        CAP,
        ReturnPaths(read_settings(VerpSettings, {}), DispatchTokens("j" * 32, Purpose.BOUNCE)),
    )
    assert found.event is not None
    assert found.event.dispatch_id is None and found.event.message_id == OUR_ID


def test_a_delay_notice_is_a_soft_bounce_and_a_success_notice_nothing() -> None:
    soft = interpret(with_status("delayed", "4.4.1"), CAP, paths()).event
    assert soft is not None and soft.kind is FeedbackKind.SOFT_BOUNCE
    assert interpret(with_status("delivered", "2.0.0"), CAP, paths()).event is None


def test_the_arf_report_becomes_a_complaint_of_its_dispatch() -> None:
    event = interpret(ARF, CAP, paths()).event
    assert event is not None and event.kind is FeedbackKind.COMPLAINT
    assert event.dispatch_id == 42 and event.message_id == OUR_ID
    assert event.fingerprint == "imap:arf:<arf-20261202-0001@receiver.example>"


def test_plain_mail_in_the_bounce_mailbox_makes_no_event() -> None:
    raw = b"From: a@example.com\r\nTo: bounce@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
    assert interpret(raw, CAP, paths()).event is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(0, len(POSTFIX_DSN)),
    noise=st.binary(max_size=200),
    base=st.sampled_from([POSTFIX_DSN, ARF]),
)
def test_hostile_reports_only_ever_raise_malformed(cut: int, noise: bytes, base: bytes) -> None:
    """Truncated and corrupted reports: an event, no event, or MalformedReport; nothing else."""
    raw = base[:cut] + noise + base[cut + len(noise) :]
    with contextlib.suppress(MalformedReport):
        interpret(raw, CAP, paths())
