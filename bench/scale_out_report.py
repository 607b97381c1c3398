"""The results of bench/scale_out.py's runs and their report."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field

import harness

CPU_COLUMNS = ("workers", "api", "sweeper", "postgres", "redis", "sink", "others")


@dataclass
class Result:
    workers: int
    n: int
    seconds: float  # due → last message received
    wall: float  # just before the POST → every dispatch recorded `sent`
    post_s: float
    lag_min_ms: float  # due → the first message received (mostly the POST itself)
    lag_p50_ms: float
    lag_p99_ms: float
    cpu: dict[str, float]
    split: list[int]  # emails sent by each worker
    duplicates: int
    missing: int
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def report(
    args: argparse.Namespace,
    results: list[Result],
    sink_name: str,
    load: str,
    versions: str,
    discarded: list[Result],
) -> None:
    print()
    print(conditions(args, results, sink_name, load, versions, discarded))
    print()
    print(harness.table(table_rows(args, results)))
    print()
    for line in details(args, results):
        print(line)


def table_rows(args: argparse.Namespace, results: list[Result]) -> list[list[str]]:
    """A row per worker count: medians over its runs, the emails/s range, the split."""
    rows = [
        [
            "worker processes",
            "emails/s (median)",
            "range",
            "first email ms",
            "lag p50 ms",
            "lag p99 ms",
            *(f"{c} CPU s" for c in CPU_COLUMNS),
            "CPU µs / email (all)",
            "sends per worker",
        ]
    ]
    for k in args.workers:
        mine = [r for r in results if r.workers == k]
        med_cpu = {c: statistics.median(r.cpu[c] for r in mine) for c in CPU_COLUMNS}
        ours = [c for c in CPU_COLUMNS if c != "others"]
        per_email = statistics.median(
            1e6 * (sum(r.cpu[c] for c in ours) + r.cpu["bench script"]) / r.n for r in mine
        )
        middle = sorted(mine, key=lambda r: r.rate)[len(mine) // 2]
        rows.append(
            [
                str(k),
                f"{statistics.median(r.rate for r in mine):,.0f}",
                f"{min(r.rate for r in mine):,.0f}-{max(r.rate for r in mine):,.0f}",
                f"{statistics.median(r.lag_min_ms for r in mine):,.0f}",
                f"{statistics.median(r.lag_p50_ms for r in mine):,.0f}",
                f"{statistics.median(r.lag_p99_ms for r in mine):,.0f}",
                *(f"{med_cpu[c]:.2f}" for c in CPU_COLUMNS),
                f"{per_email:,.0f}",
                " / ".join(f"{x:,}" for x in middle.split),
            ]
        )
    return rows


def conditions(
    args: argparse.Namespace,
    results: list[Result],
    sink_name: str,
    load: str,
    versions: str,
    discarded: list[Result],
) -> str:
    """The line above the table: sizes, processes, settings, versions and others' load."""
    shares = [r.cpu["others"] / r.wall for r in results]
    return (
        f"N = {args.n:,} emails per run, all due now, scheduled through the API; "
        f"{len(results) // len(args.workers)} runs per worker count (emails/s median and range); "
        f"k x `dispatch-engine run --role worker` + 1 `--role api` + 1 `--role sweeper`; "
        f"WORKER_CONCURRENCY={args.concurrency}, SMTP_POOL_SIZE="
        f"{args.pool_size or 'default (8)'}, MAX_EMAILS_PER_HOUR=1000000000; sink: {sink_name}; "
        f"{versions}; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs (3 workers contend "
        f"with each other and with PostgreSQL, Redis, the API and the sink); warm-up of "
        f"{args.warmup} emails per run excluded; dispatch_engine at {harness.revision()}; {load}; "
        f"other processes used {min(shares):.0%}-{max(shares):.0%} of a core during the runs "
        f"({len(discarded)} run(s) discarded and redone for more than {args.max_others:.0%}"
        + (f": {', '.join(f'{r.rate:,.0f}/s' for r in discarded)}" if discarded else "")
        + ")"
    )


def details(args: argparse.Namespace, results: list[Result]) -> list[str]:
    """The lines below the table: the POSTs, duplicates, every run, the workers' problems."""
    posts = [r.post_s for r in results]
    lines = [
        f"POST of {args.n:,}: {min(posts):.2f}-{max(posts):.2f} s (included in emails/s and lag); "
        f"duplicates {sum(r.duplicates for r in results)}, missing "
        f"{sum(r.missing for r in results)} over all runs; bench script CPU "
        f"{statistics.median(r.cpu['bench script'] for r in results):.2f} s per run (median)"
    ]
    for r in results:
        lines.append(
            f"  {r.workers} worker(s): {r.rate:,.0f}/s, first email {r.lag_min_ms:,.0f} ms, "
            f"{r.n / (r.seconds - r.lag_min_ms / 1000):,.0f}/s from the first, lag p50 "
            f"{r.lag_p50_ms:,.0f} ms p99 {r.lag_p99_ms:,.0f} ms, CPU workers "
            f"{r.cpu['workers']:.2f} s postgres {r.cpu['postgres']:.2f} s sink "
            f"{r.cpu['sink']:.2f} s others {r.cpu['others']:.2f} s"
        )
    problems = [p for r in results for p in r.problems]
    lines.append(f"worker processes logged {len(problems)} warnings/errors")
    return lines + [f"  {line}" for line in problems[:5]]
