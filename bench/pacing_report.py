"""The results of bench/pacing.py's runs (per sender, per run) and their report."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field

import harness
from harness import span, table


@dataclass
class SenderResult:
    limit: int
    sender_id: int
    per_window: list[int]  # received per observed window
    per_window_counter: list[int]  # the fixed_window counter of the same windows
    counted: list[int]  # the windows (of per_window) with a backlog at their end
    received: int  # by the end of the observation
    max_received: int  # the largest window by received_at, partial first window included
    max_sent_at: int  # the same by dispatches.sent_at
    max_counter: int  # the largest fixed_window counter read in Redis
    duplicates: int

    @property
    def mean(self) -> float:
        return statistics.mean(self.counted) if self.counted else float("nan")


@dataclass
class RunResult:
    senders: list[SenderResult]
    n: int
    windows: int
    window_s: float
    redis_commands: int
    redis_by_command: dict[str, int]
    received: int  # all senders, observed windows only
    cpu: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def report(args: argparse.Namespace, runs: list[RunResult], load: str, discarded: int) -> None:
    print()
    print(conditions(args, runs, load, discarded))
    print()
    print(table(table_rows(args, runs)))
    print()
    for line in totals(args, runs) + per_window_lines(runs):
        print(line)


def table_rows(args: argparse.Namespace, runs: list[RunResult]) -> list[list[str]]:
    """A row per sender: its sends per window against its limit, ranges over the runs."""
    rows = [
        [
            "sender",
            "limit / window",
            "sent / window: mean",
            "min",
            "max",
            "mean ÷ limit",
            "windows counted",
            f"backlog left after {args.windows} windows",
            "max in any window: received_at",
            "sent_at",
            "Redis counter",
            "over the limit by",
        ]
    ]
    for i, limit in enumerate(args.limits):
        per = [r.senders[i] for r in runs]
        over = [
            name
            for name, attr in (
                ("received_at", "max_received"),
                ("sent_at", "max_sent_at"),
                ("counter", "max_counter"),
            )
            if any(getattr(s, attr) > limit for s in per)
        ]
        rows.append(
            [
                f"{i + 1}",
                f"{limit:,}",
                span([s.mean for s in per]),
                span([min(s.counted or [0]) for s in per]),
                span([max(s.counted or [0]) for s in per]),
                span([s.mean / limit for s in per], ".0%"),
                span([len(s.counted) for s in per]),
                span([args.n - s.received for s in per]),
                span([s.max_received for s in per]),
                span([s.max_sent_at for s in per]),
                span([s.max_counter for s in per]),
                ", ".join(over) or "no",
            ]
        )
    return rows


def conditions(args: argparse.Namespace, runs: list[RunResult], load: str, discarded: int) -> str:
    """The line above the table: sizes, limits, settings, versions and others' load."""
    return (
        f"3 senders x {args.n:,} emails due now, limits {', '.join(f'{x:,}' for x in args.limits)} "
        f"per window of {args.window} s (DISPATCH_RATE_WINDOW_SECONDS), {args.windows} whole "
        f"windows observed per run, {len(runs)} runs (ranges over runs); capture transport, "
        f"`dispatch-engine run` (all roles), WORKER_CONCURRENCY={args.concurrency}; Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; dispatch_engine at "
        f"{harness.revision()}; {load}; other processes used "
        f"{span([r.cpu['others'] / r.cpu['wall'] for r in runs], '.0%')} of a core during the "
        f"runs ({discarded} run(s) discarded and redone for more than {args.max_others:.0%})"
    )


def totals(args: argparse.Namespace, runs: list[RunResult]) -> list[str]:
    """All senders together: emails/s, Redis per email, CPU per process, duplicates, problems."""
    received = [r.received for r in runs]
    per_email = [r.redis_commands / max(r.received, 1) for r in runs]
    scripts = [
        (r.redis_by_command.get("evalsha", 0) + r.redis_by_command.get("eval", 0))
        / max(r.received, 1)
        for r in runs
    ]
    top = sorted(runs[0].redis_by_command.items(), key=lambda kv: -kv[1])[:8]
    lines = [
        f"all senders: {span([x / (args.windows * args.window) for x in received])} emails/s "
        f"received over the observed windows; Redis {span(per_email, '.2f')} commands per "
        f"email (inside scripts included), {span(scripts, '.3f')} script calls per email; "
        f"run 1's commands per email: "
        + ", ".join(f"{k} {v / max(runs[0].received, 1):.2f}" for k, v in top)
    ]
    for name in ("dispatch-engine", "postgres", "redis", "others"):
        values = [r.cpu[name] for r in runs]
        micros = [1e6 * r.cpu[name] / max(r.received, 1) for r in runs]
        lines.append(
            f"CPU {name}: {span(values, '.2f')} s over {span([r.cpu['wall'] for r in runs], '.1f')}"
            f" s ({span(micros, ',.0f')} µs per email)"
        )
    dups = sum(s.duplicates for r in runs for s in r.senders)
    problems = [p for r in runs for p in r.problems]
    lines.append(
        f"duplicates received: {dups}; dispatch-engine logged {len(problems)} warnings/errors"
    )
    return lines + [f"  {line}" for line in problems[:5]]


def per_window_lines(runs: list[RunResult]) -> list[str]:
    """Every run's sends per window and sender, with the Redis counter of each window."""
    return [
        f"run {n} sender {i + 1} per window, received_at (Redis counter): "
        + " ".join(f"{v}({c})" for v, c in zip(s.per_window, s.per_window_counter, strict=True))
        for n, r in enumerate(runs, 1)
        for i, s in enumerate(r.senders)
    ]
