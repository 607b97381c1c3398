"""DKIM signing: signatures that dkimpy's verifier accepts after a real SMTP server received
them (pipelined and one command at a time), and that a changed message fails."""

from __future__ import annotations

import base64
import re
from dataclasses import replace

import dkim
import pytest

from dispatch_engine.builtins import smtp
from dispatch_engine.config import load_settings
from dispatch_engine.dkim import DkimSigner, generate_key
from dispatch_engine.dkim.keys import DkimKeyPair, record_value
from dispatch_engine.models import Sender
from dispatch_engine.secretbox import SecretBox
from dispatch_engine.transport import OutgoingMessage, PermanentError, TransportContext

from .support.smtp_peer import SmtpPeer

BOX = SecretBox("a-test-secret-key-for-dkim-0123456789")
PAIR = generate_key("s2026", "example.com")


def signing_sender(pair: DkimKeyPair = PAIR, box: SecretBox = BOX) -> Sender:
    return Sender(
        7, 1, "news@example.com", "News", None, "smtp", {}, 100, 0,
        dkim_selector=pair.selector, dkim_domain=pair.domain,
        dkim_private_key=box.seal(pair.private_pem), dkim_public_key=pair.public_b64,
    )  # fmt: skip


def published(pair: DkimKeyPair = PAIR) -> object:
    """dkimpy's dnsfunc answering the record `dkim-keygen` prints for `pair`."""
    name = f"{pair.selector}._domainkey.{pair.domain}.".encode()

    def txt(query: bytes, timeout: float = 5) -> bytes | None:
        return record_value(pair.public_b64).encode() if query == name else None

    return txt


def email(n: int = 0, extra: bytes = b"") -> bytes:
    return (
        b"From: News <news@example.com>\r\nTo: reader%d@example.org\r\n"
        b"Subject: Issue %d of the letter\r\nDate: Wed, 02 Dec 2026 01:00:00 +0000\r\n"
        b"Message-ID: <m%d@example.com>\r\nMIME-Version: 1.0\r\n%s"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Hello reader,\r\n.a line that starts with a dot (SMTP stuffs it)\r\n.\r\n"
        b"Regards   \r\n" % (n, n, n, extra)
    )


UNSUBSCRIBE = (
    b"List-Unsubscribe: <https://dispatch.example.com/u/abc>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
)


def signed_names(message: bytes) -> list[str]:
    field = re.search(rb"DKIM-Signature:(.*?)\r\n(?=\S)", message, re.S)
    assert field is not None
    h = re.search(rb"h=([^;]*);", field.group(1))
    assert h is not None
    return [n.strip() for n in h.group(1).decode().replace("\r\n", "").split(":")]


def test_a_signed_email_verifies_and_a_changed_one_does_not() -> None:
    signed = DkimSigner(BOX).sign(signing_sender(), email(extra=UNSUBSCRIBE))
    assert signed.startswith(
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;"
    )
    assert dkim.verify(signed, dnsfunc=published())
    assert not dkim.verify(signed.replace(b"Hello reader", b"Hello victim"), dnsfunc=published())
    assert not dkim.verify(signed.replace(b"Issue 0", b"Issue 9"), dnsfunc=published())
    changed_link = signed.replace(b"/u/abc", b"/u/evil")
    assert not dkim.verify(changed_link, dnsfunc=published())
    other = generate_key("s2026", "example.com")  # the wrong key published
    assert not dkim.verify(signed, dnsfunc=published(other))


def test_the_unsubscribe_headers_are_signed_and_cannot_be_added_later() -> None:
    """RFC 8058 3: List-Unsubscribe and List-Unsubscribe-Post are covered by the signature;
    each signed header is listed once more than present, so one added after signing (a
    second From, an unsubscribe link on an email that had none) breaks it."""
    signer = DkimSigner(BOX)
    with_links = signer.sign(signing_sender(), email(extra=UNSUBSCRIBE))
    names = signed_names(with_links)
    for header in ("from", "to", "subject", "date", "message-id", "mime-version",
                   "content-type", "list-unsubscribe", "list-unsubscribe-post"):  # fmt: skip
        assert names.count(header) == 2, (header, names)
    assert names.count("reply-to") == 1  # absent: listed once, so it cannot be added
    without = signer.sign(signing_sender(), email())
    assert dkim.verify(without, dnsfunc=published())
    added = without.replace(b"MIME-Version", UNSUBSCRIBE + b"MIME-Version", 1)
    assert not dkim.verify(added, dnsfunc=published())
    second_from = b"From: someone@evil.example\r\n" + without
    assert not dkim.verify(second_from, dnsfunc=published())


class CountingBox(SecretBox):
    opened = 0

    def open(self, sealed: str) -> str:
        self.opened += 1
        return super().open(sealed)


def test_a_senders_key_is_opened_once_not_per_email() -> None:
    box = CountingBox("a-test-secret-key-for-dkim-0123456789")
    signer = DkimSigner(box)
    sender = signing_sender()
    for n in range(5):
        assert dkim.verify(signer.sign(sender, email(n)), dnsfunc=published())
    assert box.opened == 1
    new = generate_key("s2027", "example.com")  # keygen again: the next batch has the new key
    signed = signer.sign(signing_sender(new), email())
    assert box.opened == 2 and dkim.verify(signed, dnsfunc=published(new))


def test_a_sender_without_a_key_sends_the_email_unchanged() -> None:
    plain = replace(signing_sender(), dkim_selector=None, dkim_domain=None,
                    dkim_private_key=None, dkim_public_key=None)  # fmt: skip
    assert DkimSigner(BOX).sign(plain, email()) == email()


def test_a_key_sealed_with_another_secret_fails_the_email_with_a_reason() -> None:
    other_box = SecretBox("some-other-secret-key-0123456789")
    with pytest.raises(PermanentError, match="DKIM key cannot be used"):
        DkimSigner(BOX).sign(signing_sender(box=other_box), email())


@pytest.mark.parametrize("pipelining", [True, False])
async def test_signatures_verify_after_a_real_smtp_server_received_them(pipelining: bool) -> None:
    """Into nodemailer's smtp-server, over the pipelined path (RFC 2920: it announces
    PIPELINING) and over aiosmtplib's one command at a time: dot-stuffing and all, what
    arrives verifies, and the same bytes with a changed body do not."""
    signer = DkimSigner(BOX)
    sender = signing_sender()
    with SmtpPeer(pipelining=pipelining) as peer:
        own = {"host": "127.0.0.1", "port": peer.port, "tls": "none", "pool_size": 2}
        transport = smtp.SmtpTransport(TransportContext(load_settings({}), own))
        try:
            for n in range(3):
                raw = signer.sign(sender, email(n, UNSUBSCRIBE))
                message = OutgoingMessage(n, 1, sender.from_address, (f"reader{n}@example.org",),
                                          f"<m{n}@example.com>", "Issue", raw)  # fmt: skip
                await transport.send(message)
            assert transport._pipelined is pipelining  # the path this case is about was taken
            assert bool(transport._sessions) is pipelining
        finally:
            await transport.close()
        received = [base64.b64decode(m["raw"]) for m in peer.messages()]
    assert len(received) == 3
    for raw in received:
        assert raw.startswith(b"DKIM-Signature:")
        assert b"\r\n..a line" not in raw  # the server undid the dot-stuffing
        assert dkim.verify(raw, dnsfunc=published()), raw[:400]
        assert not dkim.verify(raw.replace(b"Regards", b"Regard$"), dnsfunc=published())
