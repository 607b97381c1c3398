"""The filters of the emails lists (API and dashboard): which tab, status, campaign, sender,
and a search in the address; each parameter read strictly (a 422 naming it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ValidationError
from ..models import DispatchStatus
from ..parsing import row_id
from ..store.listings import FINISHED_LISTED, QUEUED_LISTED, EmailFilter

TABS: dict[str, tuple[str, ...]] = {"scheduled": QUEUED_LISTED, "sent": FINISHED_LISTED}
MAX_SEARCH = 320  # the longest address RFC 5321 allows
# What the page and the API call each filter in a query string.
PARAMS = ("status", "campaign_id", "sender_id", "q")


@dataclass(frozen=True)
class Filters:
    """The parameters as given (for links and the form), and what the store matches."""

    status: str | None = None
    campaign_id: int | None = None
    sender_id: int | None = None
    q: str | None = None

    def match(self, tab: str) -> EmailFilter:
        statuses = (self.status,) if self.status else TABS[tab]
        return EmailFilter(statuses, self.campaign_id, self.sender_id, self.q)

    def without_status(self, tab: str) -> EmailFilter:
        """The same filters over every status of `tab` (what its count shows)."""
        return EmailFilter(TABS[tab], self.campaign_id, self.sender_id, self.q)

    def query(self) -> dict[str, str]:
        """The filters as query parameters, for the page's links (none empty)."""
        values = {"status": self.status, "campaign_id": self.campaign_id,
                  "sender_id": self.sender_id, "q": self.q}  # fmt: skip
        return {k: str(v) for k, v in values.items() if v is not None}

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.status, self.campaign_id, self.sender_id, self.q))


def read_tab(value: str | None) -> str:
    if value in (None, ""):
        return "scheduled"
    if value not in TABS:
        raise ValidationError("tab", "must be scheduled or sent")
    return value


def _status(value: str, tab: str) -> str:
    allowed = TABS[tab]
    if value not in allowed:
        known = value in {s.value for s in DispatchStatus}
        where = f"the {tab} list" if known else "an email"
        raise ValidationError(
            "status", f"{value[:40]!r} is not a status of {where}: one of {', '.join(allowed)}"
        )
    return value


def _search(value: str) -> str | None:
    text = value.strip()
    if not text:
        return None
    if len(text) > MAX_SEARCH:
        raise ValidationError("q", f"must be at most {MAX_SEARCH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValidationError("q", "must not contain control characters")
    return text


def read_filters(query: Mapping[str, str], tab: str) -> Filters:
    """The filters of `query` for the list `tab` (blank parameters are no filter)."""
    got = {name: query.get(name, "") for name in PARAMS}
    return Filters(
        status=_status(got["status"], tab) if got["status"] else None,
        campaign_id=row_id(got["campaign_id"], "campaign_id") if got["campaign_id"] else None,
        sender_id=row_id(got["sender_id"], "sender_id") if got["sender_id"] else None,
        q=_search(got["q"]),
    )
