"""The report of bench/e2e.py: the table of medians per sink, the conditions line above it
and the details per sink below it."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter

import harness
from e2e_runs import DEFAULT_POOL, Run, SinkResults
from harness import fmt

CPU_COLUMNS = ("dispatch-engine", "postgres", "redis", "sink", "bench script", "others")


def median(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def median_cpu(runs: list[Run], name: str) -> float:
    return float(statistics.median(r.cpu.get(name, float("nan")) for r in runs))


def report(args: argparse.Namespace, results: list[SinkResults], versions: str, load: str) -> None:
    print()
    print(conditions(args, results, versions, load))
    print("sinks: " + "; ".join(f"{r.kind} = {r.name}" for r in results))
    print()
    print(harness.table(table_rows(args, results)))
    print()
    for res in results:
        print(details(args, res))


def conditions(
    args: argparse.Namespace, results: list[SinkResults], versions: str, load: str
) -> str:
    """The line above the table: sizes, settings, versions and others' load."""
    shares = [r.others_share for res in results for r in res.e2e + res.ceilings]
    return (
        f"N = {args.n:,} emails per run, all due now, {args.repeat} runs per sink (medians); "
        f"one `dispatch-engine run` (all roles), WORKER_CONCURRENCY={args.concurrency}, "
        f"SMTP_POOL_SIZE={args.connections or f'default ({DEFAULT_POOL})'}; {versions}; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; bench loop on "
        f"{harness.loop_name(args.loop)}; dispatch_engine at {harness.revision()}; warm-up of "
        f"{args.warmup} emails excluded; {load}; other processes used {min(shares):.0%}-"
        f"{max(shares):.0%} of a core during the runs "
        f"({sum(len(r.discarded) for r in results)} noisy run(s) redone)"
        + (f"; PostgreSQL settings: {', '.join(args.pg_setting)}" if args.pg_setting else "")
    )


def table_rows(args: argparse.Namespace, results: list[SinkResults]) -> list[list[str]]:
    """Per sink, a row for dispatch-engine and one for the bare loop (the ceiling)."""
    rows = [
        [
            "sink",
            "measurement",
            "emails/s (median)",
            "range",
            "of ceiling",
            "lag p50 ms",
            "lag p99 ms",
            *(f"{c} CPU s" for c in CPU_COLUMNS),
            "sender CPU µs / email",
        ]
    ]
    pool = args.connections or DEFAULT_POOL
    for res in results:
        ceiling = median(res.ceilings, "rate")
        for label, runs, sender in (
            ("dispatch-engine run (all roles)", res.e2e, "dispatch-engine"),
            (f"bare aiosmtplib x{pool}, pre-rendered", res.ceilings, "bench script"),
        ):
            rate = median(runs, "rate")
            rows.append(
                [
                    res.kind,
                    label,
                    f"{rate:,.0f}",
                    harness.span([r.rate for r in runs]),
                    f"{rate / ceiling:.0%}",
                    fmt(median(runs, "lag_p50_ms")),
                    fmt(median(runs, "lag_p99_ms")),
                    *(fmt(median_cpu(runs, c), ".2f") for c in CPU_COLUMNS),
                    fmt(1e6 * median_cpu(runs, sender) / args.n),
                ]
            )
    return rows


def details(args: argparse.Namespace, res: SinkResults) -> str:
    """The lines below the table for one sink: timings, group commits, Redis, problems, idle."""
    e = res.e2e
    calls: Counter[str] = Counter()
    for r in e:
        calls.update(r.redis_by_command)
    batches = median(e, "record_batches")
    scripts = (calls["evalsha"] + calls["eval"]) / len(e)
    lines = [
        f"[{res.kind}] POST {median(e, 'post_s'):.2f} s; first email "
        f"{median(e, 'lag_min_ms'):,.0f} ms after its due time; all recorded `sent` "
        f"{median(e, 'record_s'):.2f} s after "
        f"the POST began; {batches:,.0f} group commits per run "
        f"({args.n / max(batches, 1):,.1f} emails each); Redis "
        f"{scripts / args.n:.3f} script calls, "
        f"{sum(calls.values()) / len(e) / args.n:.2f} commands per email (inside scripts "
        f"included); duplicates {sum(r.duplicates for r in e)}, missing "
        f"{sum(r.missing for r in e)}; dispatch-engine logged {len(res.problems)} "
        "warnings/errors"
    ]
    lines += [f"  {line}" for line in res.problems[:5]]
    if res.idle is not None:
        rate, by_command = res.idle
        lines.append(
            f"[{res.kind}] idle: clients sent Redis {rate:.2f} commands/s over "
            f"{args.idle_seconds:.0f} s after the runs (design target <= 1/s): "
            + (", ".join(f"{k} {v}" for k, v in by_command.most_common()) or "none")
        )
    return "\n".join(lines)
