"""The dashboard's own view models: the campaign bar's parts, a campaign's pace, the subjects
of listed emails as their recipients get them. (Shapes the API shares are presenters.py's.)"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from ..config import Settings
from ..models import DispatchStatus
from ..render import TemplateProblem, render_preview
from ..waiting import Pace

# The bar's parts, in this order: how each email ended. What is still to go is the empty rest.
BAR_PARTS: tuple[tuple[DispatchStatus, str], ...] = (
    (DispatchStatus.SENT, "sent"),
    (DispatchStatus.BOUNCED, "bounced"),
    (DispatchStatus.COMPLAINED, "complained"),
    (DispatchStatus.FAILED, "failed"),
    (DispatchStatus.SUPPRESSED, "suppressed"),
    (DispatchStatus.CANCELLED, "cancelled"),
)


def progress(counts: dict[str, int], total: int) -> dict[str, Any]:
    """A campaign's progress bar: done of total, and one labelled part per way an email
    ended (so an all-failed or cancelled campaign is not a full green bar)."""
    ended = [
        (s.value, label, n) for s, label in BAR_PARTS if total and (n := counts.get(s.value, 0))
    ]
    parts = [
        {"status": status, "label": label, "count": n, "width": round(100 * n / total, 2)}
        for status, label, n in ended
    ]
    done = sum(n for _, _, n in ended)
    summary = ", ".join(f"{n:,} {label}" for _, label, n in ended)
    return {
        "done": done,
        "total": total,
        "percent": round(100 * done / total) if total else 100,
        "parts": parts,
        "summary": summary or "none yet",
    }


def pace_view(pace: Pace, settings: Settings) -> dict[str, Any]:
    """The most a campaign may send an hour and a day under every limit (None: no limit)."""
    per_hour = pace.per_window * 3600 / settings.rate_window_seconds
    return {
        "per_hour": None if math.isinf(per_hour) else math.floor(per_hour),
        "per_day": None if math.isinf(pace.per_day) else int(pace.per_day),
    }


def shown_subjects(rows: list[Any]) -> dict[int, str]:
    """Each listed email's subject as its recipient gets it (the template when it cannot be
    rendered): the worker's sandbox and budget. CPU work: the pages call it off the loop."""
    shown = {}
    for row in rows:
        subject = row["subject"]
        if "{" in subject:  # only a template with a tag or a variable needs rendering
            context = {**(row["vars"] or {}), "email": row["recipient"]}
            with contextlib.suppress(TemplateProblem):  # shown as written
                subject = render_preview({"subject": subject}, context)["subject"]
        shown[row["id"]] = subject
    return shown
