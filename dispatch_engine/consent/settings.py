"""The consent and feedback settings (read with `settings_of(ConsentSettings, settings)`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..setting import Parse, SettingsError, setting, text, whole_number


def percent(maximum: float) -> Parse[float]:
    """A percentage such as `5` or `0.3` (not a fraction: 0.3 means 0.3 %)."""

    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip().removesuffix("%"))
        except ValueError:
            raise SettingsError(
                f"{name} must be a percentage such as 5 or 0.3, got {raw!r}"
            ) from None
        if not 0 < value <= maximum:
            raise SettingsError(f"{name} must be more than 0 and at most {maximum}, got {raw!r}")
        return value

    return parse


def mailbox(name: str, raw: str) -> str:
    local, at, domain = raw.strip().rpartition("@")
    if not at or not local or "." not in domain or any(c in raw for c in "<>\r\n ,;"):
        raise SettingsError(f"{name} must be one email address such as unsubscribe@example.com")
    return raw.strip()


@dataclass(frozen=True)
class ConsentSettings:
    unsubscribe_mailto: str | None = setting(
        "DISPATCH_UNSUBSCRIBE_MAILTO",
        None,
        mailbox,
        "an address List-Unsubscribe also names (mailto:), beside the one-click URL",
    )
    soft_bounce_limit: int = setting(
        "DISPATCH_SOFT_BOUNCE_LIMIT",
        3,
        whole_number(1, 1000),
        "soft bounces of one address within DISPATCH_SOFT_BOUNCE_DAYS that suppress it",
    )
    soft_bounce_days: int = setting(
        "DISPATCH_SOFT_BOUNCE_DAYS", 7, whole_number(1, 365), "the period soft bounces count in"
    )
    pause_bounce_percent: float = setting(
        "DISPATCH_PAUSE_BOUNCE_PERCENT",
        5.0,
        percent(100),
        "a campaign pauses itself above this hard-bounce rate (of its sends)",
    )
    pause_complaint_percent: float = setting(
        "DISPATCH_PAUSE_COMPLAINT_PERCENT",
        0.3,
        percent(100),
        "a campaign pauses itself above this complaint rate (of its sends)",
    )
    pause_min_sent: int = setting(
        "DISPATCH_PAUSE_MIN_SENT",
        100,
        whole_number(1, 10_000_000),
        "sends of a campaign before its rates can pause it",
    )
    unsubscribe_footer: str = setting(
        "DISPATCH_UNSUBSCRIBE_FOOTER",
        "Unsubscribe: {url}",
        text,
        "the footer added to a body without {{ unsubscribe_url }} ({url} is the link)",
    )
