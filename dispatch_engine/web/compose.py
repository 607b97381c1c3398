"""The Compose page and its helpers: a recipients check and a preview, both before scheduling.

With JavaScript the page posts to `POST /api/emails/schedule` itself; without it the form
posts to `POST /compose`, which schedules the same way and re-renders with the errors next
to their fields.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import nh3
from aiohttp import web
from multidict import MultiDictProxy

from ..campaigns import MAX_BODY, MAX_SUBJECT, parse_schedule_request
from ..errors import ApiError, invalid
from ..parsing import whole_number
from ..recipients import from_request
from ..render import TemplateProblem, render_preview
from .bodies import form as read_form
from .bodies import json_object, multipart_fields, off_loop, upload_limits, utf8
from .events import publish
from .keys import CAMPAIGNS, SETTINGS, STORE
from .middleware import current_user, json_response
from .views import render

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


def sanitize_html(html: str) -> str:
    """Email HTML made safe to show: no scripts, handlers or frames (Ammonia, via nh3)."""
    return nh3.clean(html, link_rel="noopener noreferrer nofollow")


async def _recipients_fields(request: web.Request) -> dict[str, Any]:
    """The recipients fields of a schedule request: a CSV upload, CSV text or a JSON list."""
    if request.content_type.startswith("multipart/"):
        parts = await multipart_fields(request)
        data: dict[str, Any] = {"recipients_file": parts.get("recipients_file") or None}
        if "recipients_csv" in parts:
            data["recipients_csv"] = utf8(parts["recipients_csv"], "recipients_csv")
        return data
    body = await json_object(request)
    return {k: body.get(k) for k in ("recipients", "recipients_csv")}


def _upload(form: MultiDictProxy[Any]) -> bytes | None:
    upload = form.get("recipients_file")
    if isinstance(upload, web.FileField) and upload.filename:
        return upload.file.read()
    return None


@routes.post("/api/compose/recipients")
async def check_recipients(request: web.Request) -> web.Response:
    """How many valid addresses a CSV/TXT holds, and the first rejected lines, before scheduling.

    The same parse as the schedule's (`recipients.from_request`), so the verdicts agree.
    """
    current_user(request)
    data = await _recipients_fields(request)
    limits = upload_limits(request.app[SETTINGS])
    parsed = await off_loop(from_request, data, limits)
    first = parsed.accepted[0] if parsed.accepted else None
    return json_response(
        {
            "valid": len(parsed.accepted),
            "rejected": parsed.rejected,
            "rejected_total": parsed.rejected_total,
            "columns": sorted(parsed.columns),
            "first": {"email": first.email, "vars": first.vars} if first else None,
        }
    )


@routes.post("/api/compose/preview")
async def preview(request: web.Request) -> web.Response:
    """The email one recipient would get: the worker's own sandbox, limits and budget."""
    current_user(request)
    body = await json_object(request)
    recipient = body.get("recipient") or {}
    email = recipient.get("email") if isinstance(recipient, dict) else None
    variables = recipient.get("vars") if isinstance(recipient, dict) else None
    ctx = {
        **(variables if isinstance(variables, dict) else {}),
        "email": email if isinstance(email, str) else "someone@example.com",
    }
    templates: dict[str, str] = {}
    for field, limit in (("subject", MAX_SUBJECT), ("body", MAX_BODY), ("html", MAX_BODY)):
        source = body.get(field) or ""
        if not isinstance(source, str) or len(source) > limit:
            raise invalid(field, f"must be text of at most {limit} characters")
        if source:
            templates[field] = source
    try:
        rendered = await off_loop(render_preview, templates, ctx)
    except TemplateProblem as exc:
        raise invalid(exc.field, str(exc).removeprefix(f"{exc.field}: ")) from None
    html = rendered.get("html")
    return json_response(
        {
            "recipient": ctx["email"],
            "subject": rendered.get("subject", ""),
            "body": rendered.get("body", ""),
            "html": sanitize_html(html) if html else None,
        }
    )


# ---- the page (and its no-JavaScript submit) ----


async def _compose_page(
    request: web.Request, *, values: dict[str, Any], errors: dict[str, str], status: int = 200
) -> web.Response:
    user = current_user(request)
    settings, store = request.app[SETTINGS], request.app[STORE]
    await store.ensure_default_sender(
        user, transport=settings.transport, hourly_limit=settings.max_emails_per_hour
    )
    senders = await store.senders_of(user.id)
    context = {"senders": senders, "values": values, "errors": errors, "title": "Compose"}
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
        raise invalid("start_at", f"is not a date and time: {local[:40]!r}") from None
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


@routes.post("/compose")
async def compose_submit(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    form = await read_form(request)
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}
    try:
        data: dict[str, Any] = {
            k: form.get(k)
            for k in ("subject", "body", "html", "hourly_limit", "daily_limit", "sender")
        }
        data["start_at"] = _start_at(form)
        data["delay_between_ms"] = _delay_ms(form)
        data["delay_jitter_ms"] = _delay_ms(form, "jitter_seconds")
        upload = _upload(form)
        if upload is not None:
            data["recipients_file"] = upload
        else:
            data["recipients_csv"] = str(form.get("recipients_csv") or "")
        settings, store = request.app[SETTINGS], request.app[STORE]
        parsed = await off_loop(
            parse_schedule_request, data, now=datetime.now(UTC), limits=upload_limits(settings)
        )
        sender = await store.ensure_default_sender(
            user, transport=settings.transport, hourly_limit=settings.max_emails_per_hour
        )
        result = await request.app[CAMPAIGNS].schedule(
            user, parsed, default_sender=sender, idempotency_header=None
        )
    except ApiError as exc:
        field = PAGE_FIELDS.get(exc.field or "", exc.field or "form")
        return await _compose_page(
            request, values=values, errors={field: exc.message}, status=exc.status
        )
    await publish(request.app, {"type": "campaign", "id": result.campaign_id, "owner_id": user.id})
    raise web.HTTPSeeOther(f"/emails?scheduled={result.campaign_id}")
