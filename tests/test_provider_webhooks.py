"""The provider webhooks' verifiers and payload readers, each as its provider documents it.

No real provider can sign for a test, so the keys are the test's own (no peer can do it):
an RSA certificate for SNS, an EC P-256 key for SendGrid, an HMAC key for Mailgun. SendGrid's
verifier also passes the test vector of SendGrid's own SDKs. Payloads are the documented
examples' shapes (each cited where it is built).
"""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime

import pytest

from dispatch_engine.builtins.provider_webhooks import mailgun, postmark, sendgrid, ses, sns
from dispatch_engine.builtins.provider_webhooks.reported import verp_token
from dispatch_engine.builtins.provider_webhooks.settings import (
    SNS_CERT_HOSTS,
    ProviderWebhookSettings,
    ec_public_key,
)
from dispatch_engine.config import Settings
from dispatch_engine.setting import SettingsError, settings_of

from .support.provider_signers import (
    mailgun_body,
    sendgrid_headers,
    sendgrid_key,
    sign_sns,
    signing_certificate,
)

# sendgrid-nodejs packages/eventwebhook/src/eventwebhook.spec.js (and the Python SDK's test).
SG_PUBLIC_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7"
    "yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="
)
SG_SIGNATURE = (
    "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDW"
    "YNH2j/0="
)
SG_PAYLOAD = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'


def test_sendgrid_signatures_verify_as_sendgrids_own_sdk_test_vector_says() -> None:
    key = ec_public_key("K", SG_PUBLIC_KEY)
    sendgrid.verify(key, SG_PAYLOAD, SG_SIGNATURE, "1588788367", max_age_s=10**10)
    for body, stamp in ((SG_PAYLOAD + b" ", "1588788367"), (SG_PAYLOAD, "1588788368")):
        with pytest.raises(sendgrid.SendGridRefused, match="does not match"):
            sendgrid.verify(key, body, SG_SIGNATURE, stamp, max_age_s=10**10)


def test_sendgrid_refuses_a_stale_or_missing_timestamp_and_a_foreign_key() -> None:
    private, public = sendgrid_key()
    key = ec_public_key("K", public)
    body = b'[{"event":"bounce"}]'
    headers = sendgrid_headers(private, body)
    signature, stamp = headers[sendgrid.SIGNATURE_HEADER], headers[sendgrid.TIMESTAMP_HEADER]
    sendgrid.verify(key, body, signature, stamp, max_age_s=300)
    old = sendgrid_headers(private, body, timestamp=int(time.time()) - 301)
    with pytest.raises(sendgrid.SendGridRefused, match="older"):
        sendgrid.verify(key, body, old[sendgrid.SIGNATURE_HEADER],
                        old[sendgrid.TIMESTAMP_HEADER], max_age_s=300)  # fmt: skip
    for bad_signature, bad_stamp in ((None, stamp), (signature, None), (signature, "¹²")):
        with pytest.raises(sendgrid.SendGridRefused):
            sendgrid.verify(key, body, bad_signature, bad_stamp, max_age_s=300)
    other = ec_public_key("K", sendgrid_key()[1])
    with pytest.raises(sendgrid.SendGridRefused, match="does not match"):
        sendgrid.verify(other, body, signature, stamp, max_age_s=300)


def test_sendgrid_events_map_to_bounces_complaints_and_unsubscribes() -> None:
    # Shapes of the "Event Webhook reference" (twilio.com/docs/sendgrid/for-developers/
    # tracking-events/event): smtp-id is the Message-ID header, custom args are top-level.
    def event(name: str, **more: str) -> dict[str, str]:
        return {"email": "a@example.com", "event": name, "sg_event_id": f"id-{name}",
                "smtp-id": "<abc@example.com>", **more}  # fmt: skip

    found = sendgrid.reported([
        event("bounce", type="bounce"), event("bounce", type="blocked", sg_event_id="b2"),
        event("dropped", reason="Bounced Address", sg_event_id="d1"),
        event("dropped", reason="Spam Content", sg_event_id="d2"),  # about the message only
        event("spamreport"), event("unsubscribe", dispatch_token="tok"), event("delivered"),
        "not an event",
    ])  # fmt: skip
    assert [(r.kind, r.fingerprint) for r in found] == [
        ("hard_bounce", "sendgrid:id-bounce"), ("soft_bounce", "sendgrid:b2"),
        ("hard_bounce", "sendgrid:d1"), ("complaint", "sendgrid:id-spamreport"),
        ("unsubscribe", "sendgrid:id-unsubscribe"),
    ]  # fmt: skip
    assert found[0].message_ids == ("<abc@example.com>",) and found[-1].token == "tok"
    with pytest.raises(sendgrid.SendGridRefused):
        sendgrid.reported({"event": "bounce"})


def test_mailgun_signature_is_hmac_of_timestamp_and_token_and_must_be_fresh() -> None:
    import orjson

    key = "key-mailgun-test"
    body = orjson.loads(mailgun_body(key, {}, token="t" * 50))
    assert mailgun.signed_token(body, key, max_age_s=300) == "t" * 50
    with pytest.raises(mailgun.MailgunRefused, match="does not match"):
        mailgun.signed_token(body, "another-key", max_age_s=300)
    tampered = {**body, "signature": {**body["signature"], "token": "u" * 50}}
    with pytest.raises(mailgun.MailgunRefused, match="does not match"):
        mailgun.signed_token(tampered, key, max_age_s=300)
    stale = orjson.loads(mailgun_body(key, {}, timestamp=int(time.time()) - 301))
    with pytest.raises(mailgun.MailgunRefused, match="older"):
        mailgun.signed_token(stale, key, max_age_s=300)
    bad_bodies: list[object] = [{}, {"signature": "x"}, {"signature": {"timestamp": "1"}}, []]
    for bad in bad_bodies:
        with pytest.raises(mailgun.MailgunRefused):
            mailgun.signed_token(bad, key, max_age_s=300)


def test_mailgun_events_map_by_event_and_severity() -> None:
    # "Events" reference (documentation.mailgun.com …/events): message-id without brackets.
    def data(event: str, **more: object) -> dict[str, object]:
        return {"event-data": {"id": f"ev-{event}", "event": event, "recipient": "a@example.com",
                "message": {"headers": {"message-id": "abc@example.com"}}, **more}}  # fmt: skip

    hard = mailgun.reported(data("failed", severity="permanent"))
    assert [(r.kind, r.message_ids, r.fingerprint) for r in hard] == [
        ("hard_bounce", ("<abc@example.com>",), "mailgun:ev-failed")
    ]
    assert mailgun.reported(data("failed", severity="temporary"))[0].kind == "soft_bounce"
    assert mailgun.reported(data("complained"))[0].kind == "complaint"
    assert mailgun.reported(data("unsubscribed"))[0].kind == "unsubscribe"
    assert mailgun.reported(data("delivered")) == []
    with pytest.raises(mailgun.MailgunRefused):
        mailgun.reported({"signature": {}})


def test_sns_signatures_of_both_versions_verify_and_any_change_breaks_them() -> None:
    from cryptography import x509

    key, pem = signing_certificate()
    cert = x509.load_pem_x509_certificate(pem)
    base = {
        "Type": "Notification", "MessageId": "m1", "TopicArn": "arn:t", "Message": "hi\n",
        "Timestamp": "2026-01-01T00:00:00.000Z", "SigningCertURL": "https://x/c.pem",
    }  # fmt: skip
    for version in ("1", "2"):
        signed = sign_sns({**base, "SignatureVersion": version}, key)
        sns.verify_signature(signed, cert)
        for field, value in (("Message", "hi"), ("TopicArn", "arn:u"), ("Subject", "")):
            with pytest.raises(sns.SnsRefused, match="does not match"):
                sns.verify_signature({**signed, field: value}, cert)
    with pytest.raises(sns.SnsRefused, match="SignatureVersion"):
        sns.verify_signature({**sign_sns({**base, "SignatureVersion": "2"}, key),
                              "SignatureVersion": "3"}, cert)  # fmt: skip
    # AWS's canonical form: "Name\nValue\n" per field, Subject only when present.
    assert sns.canonical({**base, "Subject": "S"}).startswith(b"Message\nhi\n\nMessageId\nm1\n")
    assert b"Subject\nS\n" in sns.canonical({**base, "Subject": "S"})
    assert b"Subject" not in sns.canonical(base)


def test_sns_certificate_urls_must_be_https_on_an_sns_host() -> None:
    hosts = re.compile(SNS_CERT_HOSTS, re.IGNORECASE)
    good = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"
    assert sns.check_url(good, hosts, "SigningCertURL", pem=True) == good
    for bad in (
        good.replace("https", "http"),
        "https://sns.eu-west-1.amazonaws.com.evil.example/c.pem",
        "https://evilsns.eu-west-1.amazonaws.com/c.pem",
        "https://sns.eu-west-1.amazonaws.com@evil.example/c.pem",
        "https://user@sns.eu-west-1.amazonaws.com/c.pem",
        "https://s3.amazonaws.com/c.pem",
        "https://sns.eu-west-1.amazonaws.com/?Action=Publish",
        None,
    ):
        with pytest.raises(sns.SnsRefused):
            sns.check_url(bad, hosts, "SigningCertURL", pem=True)


def test_sns_refuses_a_stale_timestamp() -> None:
    now = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    sns.check_fresh({"Timestamp": "2026-01-01T00:30:00.000Z"}, 3600, now)
    for stamp in ("2025-12-31T23:59:00Z", "2026-01-01T02:00:00Z", "yesterday", "2026-01-01"):
        with pytest.raises(sns.SnsRefused):
            sns.check_fresh({"Timestamp": stamp}, 3600, now)


def test_ses_bounces_and_complaints_become_events_per_recipient() -> None:
    # "Amazon SES notification contents"
    # (https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html)
    mail = {"messageId": "ses-1", "commonHeaders": {"messageId": "<abc@example.com>"},
            "headers": [{"name": "Message-ID", "value": "<abc@example.com>"}]}  # fmt: skip
    bounce = {
        "notificationType": "Bounce",
        "mail": mail,
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "feedbackId": "fb-1",
            "bouncedRecipients": [{"emailAddress": "a@example.com"}, {"emailAddress": "b@x.org"}],
        },
    }
    found = ses.reported(bounce, "sns-1")
    assert [(r.kind, r.recipient, r.fingerprint) for r in found] == [
        ("hard_bounce", "a@example.com", "ses:fb-1:a@example.com"),
        ("hard_bounce", "b@x.org", "ses:fb-1:b@x.org"),
    ]
    assert found[0].message_ids == ("<abc@example.com>",)
    bounce["bounce"]["bounceType"] = "Transient"  # type: ignore[index]
    assert ses.reported(bounce, "sns-1")[0].kind == "soft_bounce"
    complaint = {
        "eventType": "Complaint",
        "mail": mail,
        "complaint": {
            "feedbackId": "fb-2",
            "complainedRecipients": [{"emailAddress": "a@example.com"}],
        },
    }
    assert [r.kind for r in ses.reported(complaint, "sns-2")] == ["complaint"]
    assert ses.reported({"notificationType": "Delivery", "mail": mail}, "s") == []
    assert ses.reported("not json", "s") == []


def test_postmark_checks_basic_auth_and_the_ip_list() -> None:
    good = "Basic " + base64.b64encode(b"hook:s3cret").decode()
    postmark.check_credentials(good, ("hook", "s3cret"))
    for bad in (None, "", "Basic " + base64.b64encode(b"hook:wrong").decode(), "Basic %%%",
                good.replace("Basic", "Bearer")):  # fmt: skip
        with pytest.raises(postmark.PostmarkRefused):
            postmark.check_credentials(bad, ("hook", "s3cret"))
    allowed = settings_of(
        ProviderWebhookSettings,
        Settings().with_environ(DISPATCH_POSTMARK_ALLOWED_IPS="3.134.147.250, 50.31.156.0/24"),
    ).postmark_networks
    postmark.check_address("50.31.156.7", allowed)
    postmark.check_address("10.0.0.1", ())  # no list: any address
    for bad_address in ("10.0.0.1", None, "nonsense"):
        with pytest.raises(postmark.PostmarkRefused):
            postmark.check_address(bad_address, allowed)


def test_postmark_records_map_by_type() -> None:
    # "Bounce webhook", "Spam complaint webhook", "Subscription change webhook"
    # (postmarkapp.com/developer/webhooks/…): Postmark's MessageID is its own.
    bounce = {
        "RecordType": "Bounce", "ID": 4323372036854775807, "Type": "HardBounce",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Email": "a@example.com",
        "Metadata": {"dispatch_token": "tok"},
        "Content": "Message-ID: <dsn@mx>\r\n\r\nMessage-ID: <abc@example.com>\r\n",
    }  # fmt: skip
    found = postmark.reported(bounce)[0]
    assert (found.kind, found.token, found.fingerprint) == (
        "hard_bounce",
        "tok",
        "postmark:4323372036854775807",
    )
    assert found.message_ids == ("<dsn@mx>", "<abc@example.com>")
    assert postmark.reported({**bounce, "Type": "SoftBounce"})[0].kind == "soft_bounce"
    assert postmark.reported({**bounce, "Type": "AutoResponder"}) == []
    assert postmark.reported({**bounce, "RecordType": "SpamComplaint"})[0].kind == "complaint"
    change = {"RecordType": "SubscriptionChange", "MessageID": "m", "Recipient": "a@example.com",
              "ChangedAt": "2020-02-01T10:53:34.416071Z", "Origin": "Recipient",
              "SuppressSending": True, "SuppressionReason": "ManualSuppression"}  # fmt: skip
    assert postmark.reported(change)[0].kind == "unsubscribe"
    assert postmark.reported({**change, "SuppressSending": False}) == []  # a reactivation
    with pytest.raises(postmark.PostmarkRefused):
        postmark.reported([bounce])


def test_bad_settings_stop_the_start_naming_the_variable() -> None:
    for variable, value in (
        ("DISPATCH_SENDGRID_PUBLIC_KEY", "not base64!"),
        ("DISPATCH_SENDGRID_PUBLIC_KEY", base64.b64encode(b"\x30\x00").decode()),
        ("DISPATCH_SNS_CERT_HOSTS", "sns.(unclosed"),
        ("DISPATCH_POSTMARK_CREDENTIALS", "no-colon"),
        ("DISPATCH_POSTMARK_ALLOWED_IPS", "1.2.3.4, nope"),
        ("DISPATCH_PROVIDER_WEBHOOK_MAX_AGE_S", "5"),
    ):
        with pytest.raises(SettingsError, match=variable):
            settings_of(ProviderWebhookSettings, Settings().with_environ(**{variable: value}))
    assert settings_of(ProviderWebhookSettings, Settings()).mounted() == ()


def test_a_verp_envelope_sender_carries_the_bounce_token() -> None:
    token = "abcdefghijklmnopqrstuvwxyz234"
    assert verp_token(f"bounce+{token}@bounces.example.com") == token
    assert verp_token(f"<BOUNCE+{token.upper()}@bounces.example.com>") == token  # any case
    for other in ("ada@example.com", f"bounce+{token}x@b.example", f"x+{token}@b.example", None):
        assert verp_token(other) is None
