"""Render each email's bytes straight from a campaign's pre-compiled templates.

Building an `email.message.EmailMessage` per recipient costs ~0.5 ms; here the constant
headers are encoded once per campaign and only the per-recipient parts are rendered.
Templates run in Jinja's sandbox: campaign authors are users, not trusted code.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .models import CampaignContent, Sender

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_HTML_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)


class TemplateProblem(ValueError):
    """A campaign template does not compile or names a variable no recipient has."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def template_variables(source: str, field: str, *, html: bool = False) -> set[str]:
    env = _HTML_ENV if html else _ENV
    try:
        return set(meta.find_undeclared_variables(env.parse(source)))
    except jinja2.TemplateSyntaxError as exc:
        message = f"{field}: template error on line {exc.lineno}: {exc.message}"
        raise TemplateProblem(field, message) from None


def check_templates(subject: str, body: str, html: str | None, columns: set[str]) -> None:
    """Raise TemplateProblem naming the field when a template uses an unknown variable."""
    known = columns | {"email"}
    for field, source, is_html in (
        ("subject", subject, False),
        ("body", body, False),
        ("html", html, True),
    ):
        if source is None:
            continue
        missing = template_variables(source, field, html=is_html) - known
        if missing:
            raise TemplateProblem(
                field,
                f"{field} uses {', '.join(sorted(missing))}, which the recipients do not have "
                f"(known: {', '.join(sorted(known))})",
            )


def message_id_for(idempotency_key: bytes, from_address: str) -> str:
    """Stable per email: a resend carries the same Message-ID, so receivers can drop it."""
    domain = from_address.rpartition("@")[2] or "dispatch-engine.local"
    return f"<{idempotency_key.hex()[:40]}@{domain}>"


def idempotency_key(campaign_id: int, recipient: str, scheduled_at_us: int) -> bytes:
    return hashlib.sha256(f"{campaign_id}\x00{recipient}\x00{scheduled_at_us}".encode()).digest()


def _header(value: str) -> str:
    if value.isascii() and "\n" not in value and "\r" not in value:
        return value
    # Header.encode folds with a bare LF unless told: the wire wants CRLF.
    cleaned = value.replace("\r", " ").replace("\n", " ")
    return Header(cleaned, "utf-8").encode(linesep="\r\n")


def _body_part(text: str) -> bytes:
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        body = "\r\n".join(text.splitlines()).encode()
        return b"Content-Transfer-Encoding: 7bit\r\n\r\n" + body
    qp = binascii.b2a_qp(text.encode(), istext=True).replace(b"\r\n", b"\n")
    return b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp.replace(b"\n", b"\r\n")


@dataclass
class CompiledCampaign:
    """One campaign's templates and constant headers, compiled once per worker process."""

    campaign: CampaignContent
    sender: Sender

    def __post_init__(self) -> None:
        self._subject = _ENV.from_string(self.campaign.subject)
        self._text = _ENV.from_string(self.campaign.body_text)
        self._html = (
            _HTML_ENV.from_string(self.campaign.body_html) if self.campaign.body_html else None
        )
        sender = self.sender
        from_header = formataddr((str(Header(sender.display_name, "utf-8")), sender.from_address))
        head = [f"From: {from_header if sender.display_name else sender.from_address}"]
        if sender.reply_to:
            head.append(f"Reply-To: {sender.reply_to}")
        head.append("MIME-Version: 1.0")
        self._constant = ("\r\n".join(head) + "\r\n").encode()
        digest = hashlib.sha256(self.campaign.body_text.encode()).hexdigest()[:16]
        self._boundary = f"=_dispatch_{self.campaign.id}_{digest}"

    def render(
        self, recipient: str, variables: Mapping[str, Any], message_id: str
    ) -> tuple[str, bytes]:
        """Return (subject, raw message bytes) for one recipient."""
        context = {**variables, "email": recipient}
        subject = self._subject.render(context)
        text = self._text.render(context)
        lines = (
            f"To: {recipient}\r\nSubject: {_header(subject)}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\nMessage-ID: {message_id}\r\n"
        ).encode()
        if self._html is None:
            body = b"Content-Type: text/plain; charset=utf-8\r\n" + _body_part(text)
        else:
            b = self._boundary.encode()
            html = self._html.render(context)
            body = (
                b'Content-Type: multipart/alternative; boundary="' + b + b'"\r\n\r\n'
                b"--"
                + b
                + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + _body_part(text)
                + b"\r\n--"
                + b
                + b"\r\n"
                b"Content-Type: text/html; charset=utf-8\r\n"
                + _body_part(html)
                + b"\r\n--"
                + b
                + b"--\r\n"
            )
        return subject, self._constant + lines + body
