"""Compose's helpers over the API: a recipients check, a preview and the form's own check,
all before scheduling.

The compose page (web/compose.py) calls them as the user types; they parse and render as
the schedule and the worker do, so their verdicts agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ...campaigns import MAX_BODY, MAX_SUBJECT
from ...errors import ValidationError
from ...recipients import from_request
from ...render import TemplateProblem, render_preview
from ...suppressions import leave_out_suppressed
from ..app_keys import SETTINGS, STORE
from ..bodies import json_object, multipart_fields, off_loop, upload_limits, utf8
from ..compose_check import check_form
from ..middleware import current_user
from ..presenters import sanitize_html
from ..responses import json_response

routes = web.RouteTableDef()


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


@routes.post("/api/compose/recipients")
async def check_recipients(request: web.Request) -> web.Response:
    """How many valid addresses a CSV/TXT holds, and the first rejected lines, before scheduling.

    The same parse as the schedule's (`recipients.from_request`), so the verdicts agree.
    """
    user = current_user(request)
    data = await _recipients_fields(request)
    limits = upload_limits(request.app[SETTINGS])
    parsed = await off_loop(from_request, data, limits)
    await leave_out_suppressed(request.app[STORE], user.id, parsed)  # as the schedule will
    first = parsed.accepted[0] if parsed.accepted else None
    return json_response(
        {
            "valid": len(parsed.accepted),
            "rejected": parsed.rejected,
            "rejected_total": parsed.rejected_total,
            "suppressed_total": parsed.suppressed,
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
            raise ValidationError(field, f"must be text of at most {limit} characters")
        if source:
            templates[field] = source
    try:
        rendered = await off_loop(render_preview, templates, ctx)
    except TemplateProblem as exc:
        raise ValidationError(exc.field, str(exc).removeprefix(f"{exc.field}: ")) from None
    html = rendered.get("html")
    return json_response(
        {
            "recipient": ctx["email"],
            "subject": rendered.get("subject", ""),
            "body": rendered.get("body", ""),
            "html": sanitize_html(html) if html else None,
        }
    )


@routes.post("/api/compose/check")
async def check(request: web.Request) -> web.Response:
    """The compose form's fields checked at once, in its own words: errors and warnings."""
    user = current_user(request)
    body = await json_object(request)
    senders = await request.app[STORE].senders_of(user.id)
    found = check_form(body, senders, datetime.now(UTC))
    return json_response({"errors": found.errors, "warnings": found.warnings})
