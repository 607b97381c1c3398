"""The Emails page: Scheduled and Sent as tabs with their counts, filters (status, campaign,
sender, a search in the address) and keyset pages forward and back.

Links only (no script needed): each tab, filter and page is a URL. A filter the page cannot
read shows its error above an empty list, with the status the API gives it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..errors import ValidationError
from .app_keys import STORE
from .bodies import off_loop
from .email_filters import TABS, Filters, read_filters, read_tab
from .middleware import current_user
from .page_views import shown_subjects
from .paging import decode_cursor, decode_id_cursor, encode_cursor, lenient
from .responses import status_of
from .templating import render

routes = web.RouteTableDef()
PAGE_SIZE = 25
COUNT_CAP = 10_000  # a tab counts this far, then says "10,000+"
CHOICES = 200  # campaigns offered in the filter (a campaign_id in the URL is kept beyond it)
ORDER_COLUMN = {"scheduled": "scheduled_at", "sent": "finished_at"}


def _href(tab: str, filters: Filters, **page: str) -> str:
    return "/emails?" + urlencode({"tab": tab, **filters.query(), **page})


async def _page_of(
    request: web.Request, tab: str, filters: Filters
) -> tuple[list[Any], str | None, str | None]:
    """One page of the tab: its rows in order, and the links to the next and previous page."""
    user, store, q = current_user(request), request.app[STORE], request.query
    after = lenient(decode_cursor, q.get("after"))
    before = None if after else lenient(decode_cursor, q.get("before"))
    backward = before is not None
    fetch = store.list_scheduled if tab == "scheduled" else store.list_finished
    rows = list(
        await fetch(user.id, PAGE_SIZE + 1, before or after, filters.match(tab), backward=backward)
    )
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    if backward:
        rows.reverse()
    column = ORDER_COLUMN[tab]
    has_next, has_prev = (True, more) if backward else (more, after is not None)
    next_href = prev_href = None
    if rows and has_next:
        next_href = _href(tab, filters, after=encode_cursor(rows[-1][column], rows[-1]["id"]))
    if rows and has_prev:
        prev_href = _href(tab, filters, before=encode_cursor(rows[0][column], rows[0]["id"]))
    return rows, next_href, prev_href


async def _tabs(request: web.Request, tab: str, filters: Filters) -> list[dict[str, Any]]:
    """Each tab with its count under the filters (but the status, which is the tab's own)."""
    user, store = current_user(request), request.app[STORE]
    across = Filters(None, filters.campaign_id, filters.sender_id, filters.q)
    tabs = []
    for name in TABS:
        n = await store.count_listed(user.id, filters.without_status(name), COUNT_CAP + 1)
        tabs.append({
            "name": name, "label": name.capitalize(), "current": name == tab,
            "count": f"{COUNT_CAP:,}+" if n > COUNT_CAP else f"{n:,}",
            "href": _href(name, filters if name == tab else across),
        })  # fmt: skip
    return tabs


@routes.get("/emails")
async def emails(request: web.Request) -> web.Response:
    user, store, q = current_user(request), request.app[STORE], request.query
    error: ValidationError | None = None
    tab, filters = "scheduled", Filters()
    try:
        tab = read_tab(q.get("tab"))
        filters = read_filters(q, tab)
    except ValidationError as exc:
        error = exc
    rows: list[Any] = []
    next_href = prev_href = None
    if error is None:
        rows, next_href, prev_href = await _page_of(request, tab, filters)
    flash = None
    scheduled_id = lenient(decode_id_cursor, q.get("scheduled"))  # the campaign just scheduled
    if scheduled_id is not None:
        flash = await store.campaign_detail(user.id, scheduled_id)
    context = {
        "title": "Emails",
        "tab": tab,
        "tabs": await _tabs(request, tab, filters),
        "statuses": TABS[tab],
        "filters": filters,
        "query": dict(q),
        "error": error,
        "rows": rows,
        "subjects": await off_loop(shown_subjects, rows),
        "next_href": next_href,
        "prev_href": prev_href,
        "first_href": _href(tab, filters) if prev_href else None,
        "campaign_choices": await store.campaign_choices(user.id, CHOICES),
        "senders": await store.senders_of(user.id),
        "flash": flash,
    }
    status = status_of(error) if error is not None else 200
    return render(request, "emails.html", context, status=status, partial="_emails_live.html")
