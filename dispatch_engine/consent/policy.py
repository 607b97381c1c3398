"""What follows new feedback, after `Feedback.handle` committed it: the hooks, and a campaign
that pauses itself when its hard-bounce or complaint rate passes its threshold.

Rates are a campaign's bounced (or complained) emails over its emails sent so far (sent +
bounced + complained), counted from its `rates_since` (a user's resume of a campaign that
paused itself starts a fresh count). They are looked at after each handled batch that holds
a hard bounce or a complaint of the campaign, and only from DISPATCH_PAUSE_MIN_SENT sends
on. The pause is a user's pause (the same guarded transition, the queue emptied of the
campaign's emails) with its reason kept in `campaigns.paused_reason`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .feedback import Applied, FeedbackKind
from .settings import ConsentSettings

if TYPE_CHECKING:
    from ..campaigns import CampaignService
    from ..hooks import Hooks
    from ..store import Store
    from ..store.policy import CampaignRates

log = logging.getLogger("dispatch_engine.feedback")

Publish = Callable[[dict[str, Any]], Awaitable[None]]
_RATED = frozenset({FeedbackKind.HARD_BOUNCE, FeedbackKind.COMPLAINT})
_SENDING = frozenset({"scheduled", "running"})
COUNTED_CAMPAIGNS = 10_000


def pause_reason(rates: CampaignRates, settings: ConsentSettings) -> str | None:
    """Why the campaign must pause now (the line users read), or None."""
    if rates.status not in _SENDING or rates.sent < settings.pause_min_sent:
        return None
    for count, limit, what, variable in (
        (rates.bounced, settings.pause_bounce_percent, "hard-bounce", "BOUNCE"),
        (rates.complained, settings.pause_complaint_percent, "complaint", "COMPLAINT"),
    ):
        if count * 100 > limit * rates.sent:  # exact: no float rounding at the threshold
            return (
                f"{what} rate {100 * count / rates.sent:.1f} % ({count} of {rates.sent} sent) "
                f"is over {limit:g} % (DISPATCH_PAUSE_{variable}_PERCENT)"
            )
    return None


class _Counted:
    """A campaign's last count in this process. Counting a big campaign's emails is a scan
    of its rows (~290 ms for 1,000,000: docs/bounce-policy.md), so it is counted again only
    when the events applied here since could have passed a threshold: rates only rise with
    new bounces, and the stale count of sends is smaller than the true one (so this errs
    toward counting early). Events other processes applied are theirs to count."""

    def __init__(self, since: datetime | None, rates: CampaignRates) -> None:
        self.since = since  # the campaign's rates_since then: a resume starts a new count
        self.rates = rates
        self.added: Counter[FeedbackKind] = Counter()

    def could_pass(self, new: Counter[FeedbackKind], settings: ConsentSettings) -> bool:
        self.added += new
        sent = self.rates.sent
        if sent < settings.pause_min_sent:
            return True
        bounced = self.rates.bounced + self.added[FeedbackKind.HARD_BOUNCE]
        complained = self.rates.complained + self.added[FeedbackKind.COMPLAINT]
        return (
            bounced * 100 > settings.pause_bounce_percent * sent
            or complained * 100 > settings.pause_complaint_percent * sent
        )


class FeedbackPolicy:
    """`Feedback`'s aftermath: fires `dispatch_bounced` / `dispatch_complained` for each new
    event and `campaign_paused` for each pause. Never raises: the events are committed, and
    a failure here is logged (the next event of the campaign looks at its rates again)."""

    def __init__(
        self,
        store: Store,
        campaigns: CampaignService,
        hooks: Hooks,
        settings: ConsentSettings,
        publish: Publish | None = None,
    ) -> None:
        self.store = store
        self.campaigns = campaigns
        self.hooks = hooks
        self.settings = settings
        self.publish = publish  # live pages hear of a pause
        self._counted: dict[int, _Counted] = {}  # by campaign: its last count, and since

    async def applied(self, applied: Sequence[Applied]) -> None:
        for one in applied:
            await self._announce(one)
        rated: dict[tuple[int, int], Counter[FeedbackKind]] = {}  # (campaign, owner): new
        for a in applied:
            if a.event.kind in _RATED:
                key = (a.target.campaign_id, a.target.owner_id)
                rated.setdefault(key, Counter())[a.event.kind] += 1
        for (campaign_id, owner_id), kinds in rated.items():
            try:
                await self.check(campaign_id, owner_id, kinds)
            except Exception:
                log.exception("could not check the rates of campaign %d", campaign_id)

    async def _announce(self, one: Applied) -> None:
        target, event = one.target, one.event
        ids = {"dispatch_id": target.dispatch_id, "campaign_id": target.campaign_id}
        if event.kind in (FeedbackKind.HARD_BOUNCE, FeedbackKind.SOFT_BOUNCE):
            kind = "hard" if event.kind == FeedbackKind.HARD_BOUNCE else "soft"
            await self.hooks.dispatch_bounced(
                **ids, recipient=target.recipient, kind=kind, detail=event.detail
            )
        elif event.kind == FeedbackKind.COMPLAINT:
            await self.hooks.dispatch_complained(
                **ids, recipient=target.recipient, detail=event.detail
            )

    async def check(
        self, campaign_id: int, owner_id: int, new: Counter[FeedbackKind] | None = None
    ) -> str | None:
        """Pause the campaign if its rates are over; the reason when this call paused it.
        `new`: the hard bounces and complaints just applied here (the last count stands
        until they could have passed a threshold)."""
        head = await self.store.campaign_head(campaign_id)
        if head is None or head[0] not in _SENDING:
            self._counted.pop(campaign_id, None)
            return None
        counted = self._counted.get(campaign_id)
        if (
            counted is not None
            and counted.since == head[1]
            and not counted.could_pass(new or Counter(), self.settings)
        ):
            return None
        rates = await self.store.campaign_rates(campaign_id)
        if rates is None:
            return None
        if len(self._counted) >= COUNTED_CAMPAIGNS:
            self._counted.clear()  # a cache: counting again is only slower
        self._counted[campaign_id] = _Counted(head[1], rates)
        reason = pause_reason(rates, self.settings)
        if reason is None or not await self.campaigns.pause_itself(owner_id, campaign_id, reason):
            return None
        self._counted.pop(campaign_id, None)
        log.warning("campaign %d paused itself: %s", campaign_id, reason,
                    extra={"campaign_id": campaign_id})  # fmt: skip
        await self.hooks.campaign_paused(campaign_id=campaign_id, owner_id=owner_id, reason=reason)
        if self.publish is not None:
            await self.publish({"type": "campaign", "id": campaign_id, "owner_id": owner_id})
        return reason
