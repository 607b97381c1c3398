"""The Compose page, and its no-JavaScript submit.

With JavaScript the page posts to `POST /api/emails/schedule` itself (and checks the
recipients and previews with `web/api/compose.py`); without it the form posts to
`POST /compose`, which schedules the same way and re-renders with the errors next to
their fields.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from ..errors import DomainError, ValidationError
from ..parsing import whole_number
from ..senders import default_sender
from .api.campaigns import schedule_campaign
from .app_keys import SETTINGS, STORE
from .bodies import form as read_form
from .compose_check import FormCheck, check_form
from .middleware import current_user
from .responses import status_of
from .templating import render

routes = web.RouteTableDef()
# The page's field names differ from the API's where the browser helps (time zone, seconds).
PAGE_FIELDS = {
    "start_at": "start_local",
    "tz_offset": "start_local",
    "delay_between_ms": "delay_seconds",
    "delay_jitter_ms": "jitter_seconds",
    "recipients_csv": "recipients",
    "recipients_file": "recipients",
}


def _upload_named(form: MultiDictProxy[Any]) -> web.FileField | None:
    upload = form.get("recipients_file")
    return upload if isinstance(upload, web.FileField) and upload.filename else None


def _upload(form: MultiDictProxy[Any]) -> bytes | None:
    upload = _upload_named(form)
    return upload.file.read() if upload is not None else None


async def _compose_page(
    request: web.Request,
    *,
    values: dict[str, Any],
    errors: dict[str, str],
    status: int = 200,
    warnings: dict[str, str] | None = None,
) -> web.Response:
    user = current_user(request)
    settings, store = request.app[SETTINGS], request.app[STORE]
    await default_sender(store, user, settings)  # the form offers it
    senders = await store.senders_of(user.id)
    context = {"senders": senders, "values": values, "errors": errors, "title": "Compose",
               "warnings": warnings or {}}  # fmt: skip
    return render(request, "compose.html", context, status=status)


@routes.get("/compose")
async def compose(request: web.Request) -> web.Response:
    return await _compose_page(request, values={}, errors={})


def _start_at(form: MultiDictProxy[Any]) -> str | None:
    local = str(form.get("start_local") or "").strip()
    if not local:
        return None
    try:
        at = datetime.fromisoformat(local[:64])
    except ValueError:
        raise ValidationError("start_at", f"is not a date and time: {local[:40]!r}") from None
    offset = whole_number(str(form.get("tz_offset") or "0"), "tz_offset", minimum=-1080,
                          maximum=1080)  # fmt: skip
    return at.replace(tzinfo=timezone(timedelta(minutes=offset))).isoformat()


def _delay_ms(form: MultiDictProxy[Any], name: str = "delay_seconds") -> int | str | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return raw  # the schedule's validation names the field
    return round(seconds * 1000) if math.isfinite(seconds) else raw


async def _form_check(request: web.Request, form: MultiDictProxy[Any]) -> FormCheck:
    """Every field of the form checked at once (web/compose_check.py), as the page's script
    asks `POST /api/compose/check` before it schedules."""
    values: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    values["has_recipients"] = bool(_upload_named(form) or values.get("recipients_csv", "").strip())
    start_error = None
    try:
        values["start_at"] = _start_at(form)
    except ValidationError as exc:
        values["start_at"], start_error = None, exc.message
    senders = await request.app[STORE].senders_of(current_user(request).id)
    found = check_form(values, senders, datetime.now(UTC))
    if start_error:
        found.errors["start_local"] = f"Start {start_error}"
    return found


@routes.post("/compose")
async def compose_submit(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    form = await read_form(request)
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}
    found = await _form_check(request, form)
    if found.errors:
        return await _compose_page(
            request, values=values, errors=found.errors, warnings=found.warnings, status=422
        )
    try:
        data: dict[str, Any] = {
            k: form.get(k)
            for k in ("name", "subject", "body", "html", "hourly_limit", "daily_limit", "sender")
        }
        pool = [str(v) for v in form.getall("senders", [])]  # a pool (pools/): not `sender`
        if pool:
            data["senders"], data["sender"] = pool, None
            values["senders"] = ",".join(pool)
        data["start_at"] = _start_at(form)
        data["delay_between_ms"] = _delay_ms(form)
        data["delay_jitter_ms"] = _delay_ms(form, "jitter_seconds")
        upload = _upload(form)
        if upload is not None:
            data["recipients_file"] = upload
        else:
            data["recipients_csv"] = str(form.get("recipients_csv") or "")
        result = await schedule_campaign(request, user, data)
    except DomainError as exc:
        field = PAGE_FIELDS.get(exc.field or "", exc.field or "form")
        field = "senders" if field.startswith("senders[") else field
        return await _compose_page(
            request, values=values, errors={field: exc.message}, status=status_of(exc),
            warnings=found.warnings,
        )  # fmt: skip
    raise web.HTTPSeeOther(f"/emails?scheduled={result.campaign_id}")
