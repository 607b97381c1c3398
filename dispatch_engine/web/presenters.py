"""What the API and the dashboard show of each object: its JSON, and the pages' view models.

One shape per object (campaign, dispatch, sender, token, inbox message), used by the API,
the dashboard pages and the CLI's JSON, so they cannot drift apart. Times are ISO 8601 in
UTC with a `Z`; secrets never appear (a sender's password shows only as `password_set`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import nh3

from ..config import Settings
from ..dkim.keys import sender_dns_record
from ..models import TERMINAL_STATES, DispatchStatus, Sender, User
from ..pools.present import pool_json
from ..reply_mailbox import reply_mailbox_json
from ..store.accounts import ApiToken
from ..store.suppressions import Suppression
from ..waiting import CampaignWait, wait_of
from ..warmup import daily_limit_now, warmup_json
from .page_views import progress

_FINISHED = tuple(s.value for s in TERMINAL_STATES)  # every way an email ends


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def iso_ms(ms: int | None) -> str | None:
    return iso(datetime.fromtimestamp(ms / 1000, UTC)) if ms is not None else None


def listing(items: list[dict[str, Any]], next_cursor: str | int | None) -> dict[str, Any]:
    """One page of an API listing: its items and the cursor of the next page (or null)."""
    return {"items": items, "next_cursor": None if next_cursor is None else str(next_cursor)}


def reply_json(row: Any) -> dict[str, Any]:
    """A reply (or auto-reply) to a campaign's email: who, when, its first lines;
    `matched_by` says how (thread: In-Reply-To/References; or subject)."""
    keys = ("id", "dispatch_id", "recipient", "kind", "matched_by", "subject", "snippet")
    return {**{k: row[k] for k in keys}, "from": row["from_address"],
            "received_at": row["received_at"].isoformat(),
            "returns_on": row["returns_on"].isoformat() if row["returns_on"] else None}  # fmt: skip


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "name": user.name, "avatar_url": user.avatar_url}


# ---- campaigns ----


def campaign_json(detail: dict[str, Any]) -> dict[str, Any]:
    """A campaign with its counts by status and its progress (0..1)."""
    counts = detail["counts"]
    total = detail["total"]
    done = sum(counts[s] for s in _FINISHED)
    return {
        "id": detail["id"],
        "subject": detail["subject"],
        "status": detail["status"],
        "sender": {"id": detail["sender_id"], "from_address": detail["from_address"]},
        "start_at": iso(detail["start_at"]),
        "delay_between_ms": detail["delay_between_ms"],
        "delay_jitter_ms": detail.get("delay_jitter_ms", 0),
        "hourly_limit": detail["hourly_limit"],
        "daily_limit": detail.get("daily_limit"),
        # In each recipient's own zone (its `timezone` variable, else this one).
        "send_window": None
        if not detail.get("send_window")
        else {
            "days_and_hours": detail["send_window"],
            "timezone": detail["timezone"],
            "holidays": [d.isoformat() for d in detail.get("holidays") or ()],
        },
        "total": total,
        "counts": counts,
        # Of every email it sends (a sequence's follow-ups too: store "emails").
        "progress": round(done / (detail.get("emails") or total), 4) if total else 1.0,
        "created_at": iso(detail["created_at"]),
        "pool": pool_json(detail.get("pool") or []),  # its senders, if it has several
        **campaign_feedback_json(detail),
        **campaign_naming(detail),
        # Follow-ups (without their bodies) and recipients by state; null: no steps.
        "sequence": detail.get("sequence"),
    }


def campaign_item_json(row: Any) -> dict[str, Any]:
    """A campaign in the API's list: every status counted, zero when it has none."""
    counts = row["counts"] or {}
    return {
        "id": row["id"],
        "subject": row["subject"],
        "status": row["status"],
        "total": row["total"],
        "sender": {"id": row["sender_id"], "from_address": row["from_address"]},
        "start_at": iso(row["start_at"]),
        "created_at": iso(row["created_at"]),
        "counts": {status.value: counts.get(status.value, 0) for status in DispatchStatus},
        **campaign_naming(row),
    }


def campaign_naming(row: Any) -> dict[str, Any]:
    """A campaign's name (null when it has none) and its subject as its first recipient got
    it (null for campaigns scheduled before it was kept); `subject` stays the template."""
    return {"name": row["name"], "first_subject": row["first_subject"]}


def wait_json(wait: CampaignWait) -> dict[str, Any]:
    """`eta` and `waiting` (reason, count, until) of a campaign, for the API and its page."""
    return {
        "eta": iso(wait.eta),
        "waiting": [
            {"reason": w.reason, "count": w.count, "until": iso(w.until)} for w in wait.waiting
        ],
    }


def campaign_row_view(row: Any) -> dict[str, Any]:
    """A row of the dashboard's campaigns table."""
    counts = row["counts"] or {}
    return {**dict(row), "counts": counts, "progress": progress(counts, row["total"])}


# ---- bounces and complaints (the feedback policy: consent/policy.py) ----


def rate_percent(count: int, sent: int) -> float | None:
    """`count` of `sent` in percent, to 2 places; None before anything was sent."""
    return round(100 * count / sent, 2) if sent else None


def campaign_feedback_json(detail: dict[str, Any]) -> dict[str, Any]:
    """Why a campaign paused itself (null: it did not, or a user paused it) and its feedback:
    reports by kind, and its hard-bounce and complaint rates of its emails sent so far."""
    counts, reports = detail["counts"], detail.get("feedback") or {}
    sent = sum(counts.get(s, 0) for s in ("sent", "bounced", "complained"))
    return {
        "paused_reason": detail.get("paused_reason"),
        "feedback": {
            "sent": sent,
            "hard_bounces": reports.get("hard_bounce", 0),
            "soft_bounces": reports.get("soft_bounce", 0),
            "complaints": reports.get("complaint", 0),
            "unsubscribes": reports.get("unsubscribe", 0),
            "bounce_rate": rate_percent(counts.get("bounced", 0), sent),
            "complaint_rate": rate_percent(counts.get("complained", 0), sent),
        },
    }


def sender_feedback_json(found: dict[str, int] | None, days: int) -> dict[str, Any]:
    """A sender's feedback over its last `days` days (store.sender_feedback's counts)."""
    found = found or {}
    sent = found.get("sent", 0)
    return {
        "days": days,
        "sent": sent,
        "hard_bounces": found.get("hard_bounce", 0),
        "soft_bounces": found.get("soft_bounce", 0),
        "complaints": found.get("complaint", 0),
        "unsubscribes": found.get("unsubscribe", 0),
        "bounce_rate": rate_percent(found.get("hard_bounce", 0), sent),
        "complaint_rate": rate_percent(found.get("complaint", 0), sent),
    }


# ---- dispatches (one email each) ----


def scheduled_json(row: Any, now: datetime) -> dict[str, Any]:
    """A queued email, with why it waits and until when (null when due or in flight)."""
    reason, until = wait_of(row, now)
    return {
        "id": row["id"],
        "email": row["recipient"],
        "subject": row["subject"],
        "scheduled_at": iso(row["scheduled_at"]),
        "status": row["status"],
        "campaign_id": row["campaign_id"],
        "attempts": row["attempts"],
        "error": row["last_error"],
        "waiting": {"reason": reason, "until": iso(until)} if reason else None,
    }


def sent_json(row: Any) -> dict[str, Any]:
    """A finished email (sent or failed): the server's answer and its Message-ID."""
    return {
        "id": row["id"],
        "email": row["recipient"],
        "subject": row["subject"],
        "scheduled_at": iso(row["scheduled_at"]),
        "sent_at": iso(row["sent_at"]),
        "finished_at": iso(row["finished_at"]),
        "status": row["status"],
        "campaign_id": row["campaign_id"],
        "message_id": row["message_id"],
        "attempts": row["attempts"],
        "error": row["last_error"],
        "response": row["response"],
        "preview_url": preview_url(row["response"]),
    }


def preview_url(response: str | None) -> str | None:
    """A transport may leave a preview link in its reply (the SMTP one does for Ethereal)."""
    match = re.search(r"preview: (https://\S+)", response or "")
    return match.group(1) if match else None


# ---- the capture inbox ----


@dataclass(frozen=True)
class MessageParts:
    headers: list[tuple[str, str]]
    text: str | None
    html: str | None  # as sent: `sanitize_html` it before showing it in a page


def sanitize_html(html: str) -> str:
    """Email HTML made safe to show: no scripts, handlers or frames (Ammonia, via nh3)."""
    return nh3.clean(html, link_rel="noopener noreferrer nofollow")


def message_parts(raw: bytes) -> MessageParts:
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    text = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    return MessageParts(
        headers=[(k, str(v)) for k, v in parsed.items()],
        text=text.get_content() if isinstance(text, EmailMessage) else None,
        html=html.get_content() if isinstance(html, EmailMessage) else None,
    )


def inbox_item_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "dispatch_id": row["dispatch_id"],
        "message_id": row["message_id"],
        "from": row["mail_from"],
        "to": list(row["recipients"]),
        "subject": row["subject"],
        "received_at": iso(row["received_at"]),
        "deliveries": row["deliveries"],
    }


def inbox_message_json(row: Any) -> dict[str, Any]:
    """A captured message in full: its headers, text and HTML parts (as sent), raw bytes."""
    parts = message_parts(row["raw"])
    return {
        **inbox_item_json(row),
        "headers": [list(h) for h in parts.headers],
        "text": parts.text,
        "html": parts.html,
        "raw": row["raw"].decode("utf-8", "replace"),
    }


# ---- senders and tokens (the CLI prints these too) ----


def sender_json(sender: Sender) -> dict[str, Any]:
    """A sender as the API shows it: the password is write-only, only its presence shows."""
    settings = {k: v for k, v in sender.transport_settings.items() if k != "password"}
    settings["password_set"] = "password" in sender.transport_settings
    return {
        "id": sender.id,
        "from_address": sender.from_address,
        "display_name": sender.display_name,
        "reply_to": sender.reply_to,
        "transport": sender.transport,
        "settings": settings,
        "hourly_limit": sender.hourly_limit,
        "min_gap_ms": sender.min_gap_ms,
        "daily_limit": sender.daily_limit,
        "delay_jitter_ms": sender.delay_jitter_ms,
        "warmup": None
        if sender.warmup is None
        else {
            "start": sender.warmup.start,
            "step": sender.warmup.step,
            "max": sender.warmup.max,
            "started_at": sender.warmup.started_at.isoformat(),
        },
        "is_default": sender.is_default,
        "transactional": sender.transactional,  # its bodies may go without the unsubscribe footer
        # The private key is never shown: only what to publish in DNS (docs/senders.md).
        "dkim": _dkim_json(sender),
        "reply_mailbox": reply_mailbox_json(sender.reply_mailbox),  # docs/replies.md
        # Set when its server kept refusing its account: every email of it waits.
        "parked": {"reason": sender.parked_reason, "since": sender.parked_at.isoformat()}
        if sender.parked_reason is not None and sender.parked_at is not None
        else None,
    }


def _dkim_json(sender: Sender) -> dict[str, Any] | None:
    if sender.dkim_selector is None:
        return None
    record = sender_dns_record(sender)
    return {"selector": sender.dkim_selector, "domain": sender.dkim_domain, "dns_record": record}


def sender_stats_json(
    sender: Sender,
    state: dict[str, Any],
    settings: Settings,
    *,
    window: int | None,
    today: int | None,
) -> dict[str, Any]:
    """A sender's pace, what it sent this window and today, its backlog, whether it is parked.

    `state` is the queue's view of it (`RedisQueue.sender_state`).
    """
    now_ms = state["now_ms"] or int(time.time() * 1000)
    next_due = state["next_due_ms"]
    return {
        "id": sender.id,
        "from_address": sender.from_address,
        "hourly_limit": sender.hourly_limit,
        "min_gap_ms": sender.min_gap_ms,
        "delay_jitter_ms": sender.delay_jitter_ms,
        "daily_limit": sender.daily_limit,
        # Today's: its own daily limit or its warm-up ramp's, whichever is lower.
        "effective_daily_limit": daily_limit_now(sender, now_ms, settings.day_seconds * 1000),
        "warmup": warmup_json(sender, now_ms, settings.day_seconds * 1000),
        "window_seconds": settings.rate_window_seconds,
        "day_seconds": settings.day_seconds,
        "sent_this_window": window,
        "sent_today": today,
        "queue_depth": state["queue_depth"],
        # A sender parked for its account waits until fixed: no "until" then.
        "parked_until": None if sender.parked_reason else iso_ms(state["parked_until_ms"]),
        "parked_reason": sender.parked_reason,
        "due_lag_ms": max(0, now_ms - next_due) if next_due is not None else 0,
    }


def pacing_view(state: dict[str, Any]) -> dict[str, Any]:
    """The campaign page's view of its sender in the queue: queued, next due, parked until."""
    now, due = state["now_ms"] or 0, state["next_due_ms"]
    return {
        "queued": state["queue_depth"],
        "next_ms": due if due is not None and due > now else None,
        "parked_ms": state["parked_until_ms"],
    }


def token_json(token: ApiToken, now: datetime | None = None) -> dict[str, Any]:
    """A token as the API, the page and the CLI show it: never the secret."""
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "status": token.status(now or datetime.now(UTC)),
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
    }


# ---- suppressions (web/api/suppressions.py, web/suppression_pages.py) ----


def suppression_json(entry: Suppression) -> dict[str, Any]:
    """A suppressed address of the owner: its one form, why, where from and since when."""
    return {
        "id": entry.id,
        "email": entry.email,
        "reason": entry.reason,
        "source": entry.source,
        "detail": entry.detail,
        "dispatch_id": entry.dispatch_id,
        "created_at": iso(entry.created_at),
    }
