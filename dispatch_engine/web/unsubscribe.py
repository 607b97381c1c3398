"""The one-click unsubscribe routes every campaign email links to (RFC 8058).

`GET /u/{token}` only shows a page with a button: link scanners and previews follow GETs, so
a GET never unsubscribes. `POST /u/{token}` with `List-Unsubscribe=One-Click` (a mail
provider's one-click, or the page's button) unsubscribes at once through the one feedback
handler. Neither needs a login, a cookie or a CSRF token (web/guard.py exempts the path): the
signed token is the capability, and it names one dispatch, so it acts only on that email's
recipient in its owner's list. The pages are the recipient's: nothing of the sender's account
shows but the From name.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import aiohttp_jinja2
from aiohttp import web

from ..consent.addresses import AddressError, normalize_address
from ..consent.feedback import FeedbackEvent, FeedbackKind, SuppressionReason
from ..consent.unsubscribe import ONE_CLICK_FIELD, ONE_CLICK_VALUE, PATH, UnsubscribeLinks
from ..store.feedback import FeedbackTarget
from .app_keys import FEEDBACK, SETTINGS, STORE
from .bodies import form
from .responses import too_large

log = logging.getLogger("dispatch_engine.unsubscribe")
LINKS = web.AppKey("unsubscribe_links", UnsubscribeLinks)
MAX_BODY_BYTES = 4096  # `List-Unsubscribe=One-Click` is 26 bytes; a browser's form, a few more
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
SOURCE = "one_click"
TITLES = {
    "confirm": "Unsubscribe",
    "done": "You are unsubscribed",
    "no_field": "Nothing was done",
    "invalid": "This link does not work",
}

routes = web.RouteTableDef()


def _page(request: web.Request, state: str, status: int = 200, **context: Any) -> web.Response:
    context |= {"state": state, "title": TITLES[state], "action": request.path}
    response = aiohttp_jinja2.render_template("unsubscribe.html", request, context, status=status)
    headers = response.headers
    headers["Cache-Control"] = "no-store"
    headers["Referrer-Policy"] = "no-referrer"  # the URL is the capability: never pass it on
    headers["X-Robots-Tag"] = "noindex"
    return response


def _email(target: FeedbackTarget) -> str:
    try:
        return normalize_address(target.recipient)
    except AddressError:  # schedule-time validation makes this unreachable for new rows
        return target.recipient.strip().lower()


async def _target(request: web.Request) -> FeedbackTarget | None:
    """The dispatch a genuine token names (None: forged, of another purpose, or gone)."""
    dispatch_id = request.app[LINKS].read(request.match_info["token"])
    if dispatch_id is None:
        return None
    return await request.app[STORE].feedback_target(dispatch_id, None)


async def _from_name(request: web.Request, target: FeedbackTarget) -> str:
    sender = (await request.app[STORE].senders_by_id([target.sender_id])).get(target.sender_id)
    if sender is None:
        return "this sender"
    return sender.display_name or sender.from_address


async def _says_one_click(request: web.Request) -> bool:
    """The body holds `List-Unsubscribe=One-Click` (urlencoded or multipart, RFC 8058 §3.1;
    any other type is read as urlencoded)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large(MAX_BODY_BYTES)
    if request.content_type in _FORMS:
        value = (await form(request)).get(ONE_CLICK_FIELD)  # a malformed form is a 400
        values = [value] if isinstance(value, str) else []
    else:
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            raise too_large(MAX_BODY_BYTES)
        values = parse_qs(raw.decode("utf-8", "replace")).get(ONE_CLICK_FIELD, [])
    return any(v.strip().lower() == ONE_CLICK_VALUE.lower() for v in values)


@routes.get(PATH + "{token}")
async def confirm_page(request: web.Request) -> web.Response:
    """A page with the button; never unsubscribes by itself."""
    target = await _target(request)
    if target is None:
        return _page(request, "invalid", 404)
    email = _email(target)
    done = await request.app[STORE].suppression(target.owner_id, email) is not None
    return _page(
        request,
        "done" if done else "confirm",
        email=target.recipient,
        from_name=await _from_name(request, target),
    )


@routes.post(PATH + "{token}")
async def one_click(request: web.Request) -> web.Response:
    """Unsubscribe the email's recipient from its owner's campaigns, at once; idempotent."""
    target = await _target(request)
    if target is None:
        return _page(request, "invalid", 404)
    if not await _says_one_click(request):
        return _page(request, "no_field", 400)
    event = FeedbackEvent(
        FeedbackKind.UNSUBSCRIBE,
        SOURCE,
        f"unsubscribe:{target.dispatch_id}",  # the same email's link twice is one event
        dispatch_id=target.dispatch_id,
        detail="one-click unsubscribe (RFC 8058)",
    )
    result = await request.app[FEEDBACK].handle([event])
    if result.unmatched:  # its campaign was deleted in between
        return _page(request, "invalid", 404)
    if not result.applied:  # clicked before; if the owner lifted it since, this asks again
        await request.app[STORE].suppress(
            target.owner_id,
            [_email(target)],
            SuppressionReason.UNSUBSCRIBED.value,
            SOURCE,
            event.detail,
            target.dispatch_id,
        )
    log.info("dispatch %d: its recipient unsubscribed (one-click)", target.dispatch_id)
    return _page(
        request, "done", email=target.recipient, from_name=await _from_name(request, target)
    )


async def _links(app: web.Application) -> AsyncIterator[None]:
    app[LINKS] = UnsubscribeLinks(app[SETTINGS])  # the worker's key: config.ensure_secret_key
    yield


def setup(app: web.Application) -> None:
    """Add the unsubscribe routes to `app` (api role)."""
    app.cleanup_ctx.append(_links)
    app.add_routes(routes)
