"""Render each email's bytes straight from a campaign's pre-compiled templates.

Building an `email.message.EmailMessage` per recipient costs ~0.5 ms; here the constant
headers are encoded once per campaign and only the per-recipient parts are rendered.
Templates run in a sandbox with limits on work and size (`sandbox.py`): campaign authors are
users, not trusted code. A template made only of text and `{{ name }}` (most are) is
rendered by joining its parts, without Jinja's per-call runtime (~13 µs a template);
anything else goes through Jinja. Every header value is encoded here: no CR/LF reaches the
head of a message, whatever a sender's settings or a recipient's variables hold.

Each email carries its opt-out (`consent/unsubscribe.py`): the List-Unsubscribe headers,
`{{ unsubscribe_url }}` for the templates, and a footer with the link on a body that does not
show it (a transactional sender's bodies go without).
"""

from __future__ import annotations

import binascii
import copy
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate
from typing import Any, Protocol

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from markupsafe import escape

from .consent.unsubscribe import VARIABLE as UNSUBSCRIBE_VARIABLE
from .consent.unsubscribe import Unsubscribe
from .models import CampaignContent, Sender
from .sandbox import MAX_RENDERED, LimitedEnvironment, TemplateLimitError, budget, render_limited

_ENV = LimitedEnvironment(autoescape=False)
_HTML_ENV = LimitedEnvironment(autoescape=True)
STRIKES = 3  # work-limit failures after which a campaign's other emails fail at once
# The link a schedule-time check and a preview render with: as long as a real one.
SAMPLE_UNSUBSCRIBE_URL = "https://unsubscribe.invalid/u/" + "a" * 29


class TemplateProblem(ValueError):
    """A campaign template does not compile, exceeds a limit or names an unknown variable."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _problem(field: str, exc: Exception) -> TemplateProblem:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return TemplateProblem(
            field, f"{field}: template error on line {exc.lineno}: {exc.message}"
        )
    if isinstance(exc, TemplateLimitError):
        return TemplateProblem(field, f"{field}: over a template limit: {exc}")
    if isinstance(exc, SecurityError):
        return TemplateProblem(field, f"{field}: not allowed in the template sandbox: {exc}")
    if isinstance(exc, RecursionError | MemoryError):
        return TemplateProblem(field, f"{field}: the template is nested too deeply")
    # CPython's own limits (e.g. "too many statically nested blocks") and the like
    return TemplateProblem(field, f"{field}: the template cannot be compiled: {exc}")


def _parse(source: str, field: str) -> nodes.Template:
    try:
        return (_HTML_ENV if field == "html" else _ENV).parse(source)
    except Exception as exc:
        raise _problem(field, exc) from None


def check_templates(
    subject: str,
    body: str,
    html: str | None,
    columns: set[str],
    sample: tuple[str, Mapping[str, Any]] | None = None,
) -> set[str]:
    """Compile each template; raise TemplateProblem naming the field when one cannot compile,
    uses an unknown variable, or (rendered for `sample`, one recipient) exceeds a limit.

    Returns the variables the subject uses (they become a header: no line breaks allowed)."""
    known = columns | {"email", UNSUBSCRIBE_VARIABLE}
    subject_vars: set[str] = set()
    for field, source in (("subject", subject), ("body", body), ("html", html)):
        if source is None:
            continue
        tree = _parse(source, field)
        used = set(meta.find_undeclared_variables(tree))
        missing = used - known
        if missing:
            raise TemplateProblem(
                field,
                f"{field} uses {', '.join(sorted(missing))}, which the recipients do not have "
                f"(known: {', '.join(sorted(known))})",
            )
        try:
            renderer = compile_template(tree, html=field == "html")
        except Exception as exc:
            raise _problem(field, exc) from None
        if field == "subject":
            subject_vars = used
        if sample is not None:
            try:
                with budget():
                    context = {**sample[1], "email": sample[0]}
                    context[UNSUBSCRIBE_VARIABLE] = SAMPLE_UNSUBSCRIBE_URL
                    _render_capped(renderer, context, field)
            except SecurityError as exc:  # a limit, or what the sandbox never allows
                raise _problem(field, exc) from None
            except Exception:
                pass  # a data error for this one recipient: the worker reports it per email
    return subject_vars


class Renderer(Protocol):
    def render(self, context: Mapping[str, Any]) -> str: ...


class _Limited:
    """A template rendered through Jinja, stopped as soon as its output passes the cap."""

    def __init__(self, template: jinja2.Template) -> None:
        self.template = template

    def render(self, context: Mapping[str, Any], limit: int = MAX_RENDERED["body"]) -> str:
        return render_limited(self.template, context, limit)


def _render_capped(renderer: Renderer, context: Mapping[str, Any], field: str) -> str:
    limit = MAX_RENDERED[field]
    if isinstance(renderer, _Limited):
        return renderer.render(context, limit)
    text = renderer.render(context)
    if len(text) > limit:
        raise TemplateLimitError(f"the rendered {field} is longer than {limit:,} characters")
    return text


class _TextAndNames:
    """A template of only text and `{{ name }}`: what Jinja renders, by joining strings.

    A name missing from the context (or one of Jinja's globals) goes through Jinja, which
    raises or renders it as it always does."""

    def __init__(self, template: _Limited, parts: list[tuple[bool, str]], html: bool):
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


def compile_template(source: str | nodes.Template, *, html: bool = False) -> Renderer:
    env = _HTML_ENV if html else _ENV
    tree = env.parse(source) if isinstance(source, str) else source
    template = _Limited(env.from_string(tree))
    parts: list[tuple[bool, str]] = []
    for node in tree.body:
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


def _compile_field(source: str, field: str) -> Renderer:
    """Compile one template, or raise TemplateProblem naming the field and the reason."""
    try:
        return compile_template(source, html=field == "html")
    except Exception as exc:
        raise _problem(field, exc) from None


def render_preview(templates: Mapping[str, str], recipient: Mapping[str, Any]) -> dict[str, str]:
    """What one recipient would get: compiled and rendered as the worker does (the same
    sandbox, one message's budget); TemplateProblem names the field. CPU work: off the loop."""
    renderers = {field: _compile_field(source, field) for field, source in templates.items()}
    context = {**recipient, UNSUBSCRIBE_VARIABLE: SAMPLE_UNSUBSCRIBE_URL}
    out = {}
    with budget():
        for field, renderer in renderers.items():
            try:
                out[field] = _render_capped(renderer, context, field)
            except jinja2.UndefinedError as exc:
                known = ", ".join(sorted(recipient))
                message = f"{field}: {exc.message} (this recipient has: {known})"
                raise TemplateProblem(field, message) from None
            except SecurityError as exc:
                raise _problem(field, exc) from None
            # A filter's bad argument (FilterArgumentError) is a TemplateError, like the rest.
            except (
                TypeError,
                ValueError,
                ArithmeticError,
                LookupError,
                jinja2.TemplateError,
            ) as exc:
                raise TemplateProblem(field, f"{field}: cannot be rendered: {exc}") from None
    return out


_date = (0, "")


def _date_header() -> str:
    """RFC 5322 date of now, formatted once per second."""
    global _date
    now = int(time.time())
    if now != _date[0]:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


_LINE_BREAKS = str.maketrans({c: " " for c in "\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def one_line(value: str) -> str:
    """A header value with every line break (what str.splitlines splits on) made a space."""
    return value.translate(_LINE_BREAKS)


def _header(value: str) -> str:
    if value.isascii() and len(value) < 900 and "\n" not in value and "\r" not in value:
        return value
    # Header.encode folds with a bare LF unless told: the wire wants CRLF.
    return Header(one_line(value), "utf-8").encode(linesep="\r\n")


def from_header(display_name: str, address: str) -> str:
    """`Name <address>`: quoted, or RFC 2047 encoded when not ASCII; never a raw line break."""
    name = one_line(display_name).strip()
    if not name:
        return one_line(address)
    if not name.isascii():
        encoded = Header(name, "utf-8").encode(linesep="\r\n")
        return f"{encoded} <{one_line(address)}>"
    return formataddr((name, one_line(address)))


def _body_part(text: str) -> bytes:
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        body = "\r\n".join(text.splitlines()).encode()
        return b"Content-Transfer-Encoding: 7bit\r\n\r\n" + body
    qp = binascii.b2a_qp(text.encode(), istext=True).replace(b"\r\n", b"\n")
    return b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp.replace(b"\n", b"\r\n")


def _sender_head(sender: Sender) -> bytes:
    head = [f"From: {from_header(sender.display_name, sender.from_address)}"]
    if sender.reply_to:
        head.append(f"Reply-To: {from_header('', sender.reply_to)}")
    head.append("MIME-Version: 1.0")
    return ("\r\n".join(head) + "\r\n").encode()


@dataclass
class CompiledCampaign:
    """One campaign's templates and constant headers, compiled once per worker process."""

    campaign: CampaignContent
    sender: Sender

    def __post_init__(self) -> None:
        self._subject = _compile_field(self.campaign.subject, "subject")
        self._text = _compile_field(self.campaign.body_text, "body")
        self._html = (
            _compile_field(self.campaign.body_html, "html") if self.campaign.body_html else None
        )
        self._fast = self._html is None and all(
            isinstance(r, _TextAndNames) for r in (self._subject, self._text)
        )
        # Footers: never for a transactional sender; else where the rendered body lacks the
        # link (a template that never names it cannot show it: no search in the body then).
        self._footers = not self.sender.transactional
        self._text_names_link = UNSUBSCRIBE_VARIABLE in self.campaign.body_text
        self._html_names_link = UNSUBSCRIBE_VARIABLE in (self.campaign.body_html or "")
        self.broken: str | None = None  # set after STRIKES work-limit failures
        self._strikes = 0
        self._constant = _sender_head(self.sender)
        self.variants: dict[int, CompiledCampaign] = {}  # by sender id: a pool's other senders
        digest = hashlib.sha256(self.campaign.body_text.encode()).hexdigest()[:16]
        self._boundary = f"=_dispatch_{self.campaign.id}_{digest}"

    def as_sender(self, sender: Sender) -> CompiledCampaign:
        """The same templates sent by another sender of a pool (pools/compiled.py)."""
        other = copy.copy(self)
        other.sender, other.variants, other._footers = sender, {}, not sender.transactional
        other._constant = _sender_head(sender)
        return other

    def render(
        self,
        recipient: str,
        variables: Mapping[str, Any],
        message_id: str,
        unsubscribe: Unsubscribe | None = None,
    ) -> tuple[str, bytes]:
        """Return (subject, raw message bytes) for one recipient; with `unsubscribe` (the
        worker always passes it), its headers, `{{ unsubscribe_url }}` and the footer.

        Raises TemplateLimitError when a template goes over a limit; after STRIKES of them the
        campaign's other emails fail at once, without spending the budget again."""
        if self.broken is not None:
            raise TemplateLimitError(self.broken)
        context = {**variables, "email": recipient}
        if unsubscribe is not None:  # after the variables: a recipient cannot set their link
            context[UNSUBSCRIBE_VARIABLE] = unsubscribe.url
        try:
            if self._fast:  # no Jinja runtime, nothing to budget: sizes follow the inputs
                subject = _render_capped(self._subject, context, "subject")
                text = _render_capped(self._text, context, "body")
                html = None
            else:
                with budget():
                    subject = _render_capped(self._subject, context, "subject")
                    text = _render_capped(self._text, context, "body")
                    html = (
                        None if self._html is None else _render_capped(self._html, context, "html")
                    )
        except TemplateLimitError as exc:
            self._strikes += 1
            if self._strikes >= STRIKES:
                self.broken = f"the campaign's templates went over a limit {STRIKES} times: {exc}"
            raise
        lines = (
            f"To: {recipient}\r\nSubject: {_header(subject)}\r\n"
            f"Date: {_date_header()}\r\nMessage-ID: {message_id}\r\n"
        ).encode()
        if unsubscribe is not None:
            lines += unsubscribe.head
            if self._footers:
                text, html = self._with_footers(unsubscribe, text, html)
        if html is None:
            body = b"Content-Type: text/plain; charset=utf-8\r\n" + _body_part(text)
        else:
            b = self._boundary.encode()
            assert html is not None
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

    def _with_footers(
        self, unsubscribe: Unsubscribe, text: str, html: str | None
    ) -> tuple[str, str | None]:
        """Each body that does not show the link gets the footer (HTML: before </body>)."""
        url = unsubscribe.url
        if not (self._text_names_link and url in text):
            text = f"{text.rstrip()}\n\n{unsubscribe.text_footer()}\n"
        if html is not None and not (self._html_names_link and str(escape(url)) in html):
            end = max(html.rfind("</body"), html.rfind("</BODY"))
            end = len(html) if end < 0 else end
            html = f"{html[:end]}{unsubscribe.html_footer()}\n{html[end:]}"
        return text, html
