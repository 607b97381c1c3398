"""Business-hours pacing: a sender sends only inside a weekly window in a time zone.

Set `DISPATCH_BUSINESS_HOURS="Mon-Fri 09:00-17:00 Europe/Berlin"` and list the policy in
`DISPATCH_PACING`: `DISPATCH_PACING=business_hours,fixed_window,min_gap`. Like every plugin
policy it is asked before the built-in limits, so they never count what it holds back.
Outside the window the sender is parked until the window opens (its backlog stays queued in
order, costing nothing meanwhile).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from dispatch_engine.plugin import (
    PacingDecision,
    PacingPolicySpec,
    PacingRequest,
    Settings,
    SettingsError,
    WeeklyWindow,
    hookimpl,
    setting,
    settings_of,
    weekly,
)

EXAMPLE = weekly.EXAMPLE


def _weekly(name: str, raw: str) -> WeeklyWindow:
    try:
        return weekly.parse_weekly_window(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must look like {EXAMPLE!r}: {exc}") from None


@dataclass(frozen=True)
class BusinessHoursSettings:
    window: WeeklyWindow | None = setting(
        "DISPATCH_BUSINESS_HOURS",
        None,
        _weekly,
        "the business_hours policy's weekly window, e.g. Mon-Fri 09:00-17:00 Europe/Berlin",
    )


SETTINGS = BusinessHoursSettings  # checked when the process starts


class BusinessHours:
    """Allows everything inside the window; outside it, nothing until it next opens."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        window = settings_of(BusinessHoursSettings, settings).window
        if window is None:
            raise SettingsError(
                "DISPATCH_PACING lists business_hours, so DISPATCH_BUSINESS_HOURS must be set "
                f"(for example {EXAMPLE!r})"
            )
        self.window: WeeklyWindow = window

    async def check(self, request: PacingRequest) -> PacingDecision:
        """How many may go now; it keeps no count, so there is nothing to commit."""
        now = datetime.fromtimestamp(request.now_ms / 1000, UTC)
        opening = self.window.next_opening(now)
        if opening <= now:
            return PacingDecision(request.count)
        return PacingDecision(
            0,
            int(opening.timestamp() * 1000),
            f"outside business hours ({self.window}); "
            f"opens {opening.astimezone(self.window.zone):%a %Y-%m-%d %H:%M %Z}",
            code="business_hours",
        )

    acquire = check  # the older protocol's name


@hookimpl(trylast=True)
def register_pacing_policies(settings: Settings) -> list[PacingPolicySpec]:
    return [
        PacingPolicySpec(
            "business_hours", BusinessHours, "sends only inside DISPATCH_BUSINESS_HOURS"
        )
    ]
