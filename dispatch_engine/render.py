"""Render each email's bytes straight from a campaign's pre-compiled templates.

Building an `email.message.EmailMessage` per recipient costs ~0.5 ms; here the constant
headers are encoded once per campaign and only the per-recipient parts are rendered.
Templates run in Jinja's sandbox: campaign authors are users, not trusted code. A template
made only of text and `{{ name }}` (most are) is rendered by joining its parts, without
Jinja's per-call runtime (~13 µs a template); anything else goes through Jinja.
"""

from __future__ import annotations

import binascii
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate
from typing import Any, Protocol

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

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


class Renderer(Protocol):
    def render(self, context: Mapping[str, Any]) -> str: ...


class _TextAndNames:
    """A template of only text and `{{ name }}`: what Jinja renders, by joining strings.

    A name missing from the context (or one of Jinja's globals) goes through Jinja, which
    raises or renders it as it always does."""

    def __init__(self, template: jinja2.Template, parts: list[tuple[bool, str]], html: bool):
        self.template = template
        self.parts = parts  # (is a name, text or name)
        self.html = html

    def render(self, context: Mapping[str, Any]) -> str:
        out = []
        try:
            for is_name, value in self.parts:
                if not is_name:
                    out.append(value)
                elif self.html:
                    out.append(str(escape(context[value])))
                else:
                    out.append(str(context[value]))
        except KeyError:
            return self.template.render(context)
        return "".join(out)


def compile_template(source: str, *, html: bool = False) -> Renderer:
    env = _HTML_ENV if html else _ENV
    template = env.from_string(source)
    parts: list[tuple[bool, str]] = []
    for node in env.parse(source).body:
        if not isinstance(node, nodes.Output):
            return template
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append((False, child.data))
            elif isinstance(child, nodes.Name) and child.ctx == "load":
                parts.append((True, child.name))
            else:
                return template
    return _TextAndNames(template, parts, html)


_date = (0, "")


def _date_header() -> str:
    """RFC 5322 date of now, formatted once per second."""
    global _date
    now = int(time.time())
    if now != _date[0]:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


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
        self._subject = compile_template(self.campaign.subject)
        self._text = compile_template(self.campaign.body_text)
        self._html = (
            compile_template(self.campaign.body_html, html=True)
            if self.campaign.body_html
            else None
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
            f"Date: {_date_header()}\r\nMessage-ID: {message_id}\r\n"
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
