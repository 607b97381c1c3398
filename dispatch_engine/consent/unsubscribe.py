"""One email's opt-out: its one-click URL, its List-Unsubscribe header lines (RFC 2369,
RFC 8058 §3.1) and the footer that a body without the link gets.

The worker makes one per email (one HMAC, consent/tokens.py) and web/unsubscribe.py reads
the token back. Both derive the key from DISPATCH_SECRET_KEY (local mode keeps it in the data
folder, `config.ensure_secret_key`), so api and worker processes agree on every link.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote

from markupsafe import escape

from ..config import Settings
from ..setting import settings_of
from .settings import ConsentSettings
from .tokens import DispatchTokens, Purpose

log = logging.getLogger("dispatch_engine.unsubscribe")
PATH = "/u/"  # + the token: the one-click URL's path (web/unsubscribe.py serves it)
VARIABLE = "unsubscribe_url"  # what templates call the link
ONE_CLICK_FIELD, ONE_CLICK_VALUE = "List-Unsubscribe", "One-Click"  # the RFC 8058 POST body
_POST_LINE = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
# What a URL may hold as is (RFC 3986 reserved and unreserved): the rest is percent-encoded,
# so no space, CR/LF or non-ASCII character reaches the header.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%-._~"
_MAILTO_SAFE = "@!$'*+-._~="  # RFC 6068: `?`, `%`, `&` and the like are encoded in an address


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """The opt-out of one email (`CompiledCampaign.render` takes it)."""

    url: str
    head: bytes  # the List-Unsubscribe and List-Unsubscribe-Post lines, each ending in CRLF
    footer: str  # DISPATCH_UNSUBSCRIBE_FOOTER, where `{url}` stands for the link

    def text_footer(self) -> str:
        return self.footer.replace("{url}", self.url)

    def html_footer(self) -> str:
        url = escape(self.url)
        lines = str(escape(self.footer)).replace("{url}", f'<a href="{url}">{url}</a>')
        return f'<p style="font-size:12px;color:#666">{"<br>".join(lines.splitlines())}</p>'


class UnsubscribeLinks:
    """Makes each dispatch's `Unsubscribe` and reads the tokens of its links back."""

    def __init__(self, settings: Settings) -> None:
        self.tokens = DispatchTokens.for_settings(settings, Purpose.UNSUBSCRIBE)
        consent = settings_of(ConsentSettings, settings)
        self._base = quote(settings.public_url.rstrip("/"), safe=_URL_SAFE) + PATH
        if settings.base_url is None and not settings.loopback_bind:
            log.warning("DISPATCH_BASE_URL is not set: unsubscribe links start %s", self._base)
        mailto = consent.unsubscribe_mailto
        self._mailto = None if mailto is None else quote(mailto, safe=_MAILTO_SAFE)
        footer = consent.unsubscribe_footer
        self._footer = footer if "{url}" in footer else f"{footer} {{url}}".strip()

    def for_dispatch(self, dispatch_id: int) -> Unsubscribe:
        token = self.tokens.make(dispatch_id)
        url = self._base + token
        if self._mailto is None:
            line = f"List-Unsubscribe: <{url}>\r\n"
        else:  # folded between the two: each part stays well under 998 octets
            line = (
                f"List-Unsubscribe: <{url}>,\r\n"
                f" <mailto:{self._mailto}?subject=unsubscribe-{token}>\r\n"
            )
        return Unsubscribe(url, line.encode() + _POST_LINE, self._footer)

    def read(self, token: str) -> int | None:
        """The dispatch id a genuine unsubscribe token names, else None (never raises)."""
        return self.tokens.read(token)
