"""Built-in pacing policies: the sender's window (fixed or sliding), the minimum gap.

Listing them in DISPATCH_PACING chooses which built-in limits apply; the Pacer then decides
all of them, with the daily limits and each campaign's caps, in one atomic script call per
sender per claimed batch (`dispatch_engine/limits.py`), charging only what is granted.
"""

from __future__ import annotations

from typing import Any

from dispatch_engine.plugin import BuiltinLimit, PacingPolicySpec, Settings, hookimpl


class FixedWindow(BuiltinLimit):
    """At most `hourly_limit` emails per sender per clock window, and daily limits."""

    kind = "fixed_window"


class SlidingWindow(BuiltinLimit):
    """At most `hourly_limit` emails in any window ending now (no burst at a boundary).

    It keeps one timestamp per send of the last window in Redis.
    """

    kind = "sliding_window"


class MinimumGap(BuiltinLimit):
    """At least the gap (plus its random part) between two emails of one sender."""

    kind = "min_gap"


@hookimpl(trylast=True)
def register_pacing_policies(settings: Settings) -> list[Any]:
    return [
        PacingPolicySpec("fixed_window", FixedWindow, "hourly and daily limits per clock window"),
        PacingPolicySpec("sliding_window", SlidingWindow, "hourly limit over any window"),
        PacingPolicySpec("min_gap", MinimumGap, "minimum gap between two emails of a sender"),
    ]
