"""Scale-out: emails/s with 1, 2 and 3 worker processes into an SMTP sink on loopback.

    .venv/bin/python bench/scale_out.py [--n 10000] [--workers 1 2 3] [--repeat 3]

Issue 6's scenario. What runs, all on this machine:
- a private PostgreSQL + Redis (dispatch_engine.embedded);
- an SMTP sink in its own process on loopback: Postfix's `smtp-sink` (C; Debian's postfix
  package, only the binary is used: no Postfix service runs) writing each message to a file
  on tmpfs, whose modification time is its receive time; or, without it (or with
  --sink aiosmtpd), an aiosmtpd sink recording (receive time, Message-ID) per message;
- `dispatch-engine run --role api` and `dispatch-engine run --role sweeper`, one each,
  for the whole invocation, and for each k in --workers, k `dispatch-engine run --role
  worker` processes started for that run and stopped (SIGTERM) after it;
- DISPATCH_TRANSPORT=smtp at the sink, MAX_EMAILS_PER_HOUR=1000000000 (no pacing limit),
  WORKER_CONCURRENCY=200 (--concurrency), SMTP_POOL_SIZE left at its default unless
  --pool-size.

One run = a warm-up POST of --warmup emails (excluded: connections, templates, the workers'
wake-up subscriptions), then one POST /api/emails/schedule of N recipients, all due now
(one `scheduled_at` for all). Figures per run:
- emails/s = N / (last message received - the emails' due time), the POST included;
- lag = receive time - due time, p50 and p99 (everything is due at once, so it is mostly
  queueing behind the others);
- CPU seconds of each kind of process from just before the POST until every dispatch is
  recorded `sent` (psutil; PostgreSQL = the postmaster and all its backends), and what other
  processes on the machine used meanwhile ("others");
- how the sends split between the workers (each worker's /metrics).
Runs go k = 1, 2, 3, then 3, 2, 1, … (--repeat rounds); the table shows medians and the
emails/s range. The machine has 2 cores: with 3 workers plus the API, PostgreSQL, Redis and
the sink, processes contend for CPU. Nothing asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arguments
import harness
import machine
import sinks
from harness import Engine, Servers
from machine import Cpu, CpuMeters
from sinks import Sink

SENT_METRIC = re.compile(r'^dispatch_emails_total\{status="sent"\}\s+(\S+)', re.MULTILINE)
SUBJECT = "Scale-out {{ email }}"
BODY = "Hello {{ email }},\n\nthis is one of the scale-out benchmark's emails.\n\n-- \nDispatch\n"


# ---- one run ----


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


async def sent_counts(http: Any, workers: list[Engine]) -> list[int]:
    counts = []
    for w in workers:
        async with http.get(f"{w.url}/metrics") as r:
            match = SENT_METRIC.search(await r.text())
        counts.append(int(float(match.group(1))) if match else 0)
    return counts


async def campaign(
    http: Any, db: Any, api: Engine, token: str, n: int, tag: str, within: float
) -> tuple[int, float]:
    """POST n recipients due now; wait until every one is recorded `sent`."""
    payload = {
        "subject": SUBJECT,
        "body": BODY,
        "recipients": [f"{tag}-{i}@example.com" for i in range(n)],
    }
    t0 = time.time()
    answer = await harness.schedule(http, api.url, token, payload)
    post_s = time.time() - t0
    campaign_id = int(answer["campaign"]["id"])
    await harness.wait_all_sent(db, campaign_id, n, within)
    return campaign_id, post_s


async def one_run(
    args: argparse.Namespace,
    k: int,
    tag: str,
    env: dict[str, str],
    tmp: Path,
    srv: Servers,
    api: Engine,
    sweeper: Engine,
    sink: Sink,
    token: str,
    db: Any,
) -> Result:
    import aiohttp

    workers = [Engine(env, tmp, ["--role", "worker", "--no-migrate"]) for _ in range(k)]
    try:
        for w in workers:
            w.wait_ready()
        async with aiohttp.ClientSession() as http:
            if args.warmup:
                await campaign(http, db, api, token, args.warmup, f"{tag}w", 60)
                await asyncio.sleep(0.5)
            sink.take()
            meters = CpuMeters(
                {
                    "workers": Cpu([w.proc.pid for w in workers]),
                    "api": Cpu([api.proc.pid]),
                    "sweeper": Cpu([sweeper.proc.pid]),
                    "postgres": Cpu([srv.postgres_pid], tree=True),
                    "redis": Cpu([srv.redis_pid]),
                    "sink": Cpu([sink.proc.pid], tree=True),
                    "bench script": Cpu([os.getpid()]),
                }
            )
            split0 = await sent_counts(http, workers)
            meters.start()
            campaign_id, post_s = await campaign(
                http, db, api, token, args.n, tag, max(120.0, args.n / 20)
            )
            cpu = meters.stop()
            split = [b - a for a, b in zip(split0, await sent_counts(http, workers), strict=True)]
        await asyncio.sleep(0.3)  # a late duplicate would arrive now
        records = sink.take()
        rows = await db.fetch(
            "SELECT message_id, scheduled_at FROM dispatches WHERE campaign_id = $1", campaign_id
        )
    finally:
        for w in workers:
            w.stop()
    got = sinks.received_lags(records, rows)
    # One scheduled_at for all: lags are from the emails' common due time.
    due_ms = min(r["scheduled_at"].timestamp() for r in rows) * 1000
    return Result(
        workers=k,
        n=args.n,
        seconds=got.last - due_ms / 1000,
        wall=cpu.pop("wall"),
        post_s=post_s,
        lag_min_ms=min(got.lags_ms),
        lag_p50_ms=harness.percentile(got.lags_ms, 0.50),
        lag_p99_ms=harness.percentile(got.lags_ms, 0.99),
        cpu=cpu,
        split=split,
        duplicates=got.duplicates,
        missing=got.missing,
        problems=[p for w in workers for p in w.problems()],
    )


# ---- report ----


CPU_COLUMNS = ("workers", "api", "sweeper", "postgres", "redis", "sink", "others")


def report(
    args: argparse.Namespace,
    results: list[Result],
    sink_name: str,
    load: str,
    versions: str,
    discarded: list[Result],
) -> None:
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
    shares = [r.cpu["others"] / r.wall for r in results]
    print()
    print(
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
    print()
    print(harness.table(rows))
    print()
    posts = [r.post_s for r in results]
    print(
        f"POST of {args.n:,}: {min(posts):.2f}-{max(posts):.2f} s (included in emails/s and lag); "
        f"duplicates {sum(r.duplicates for r in results)}, missing "
        f"{sum(r.missing for r in results)} over all runs; bench script CPU "
        f"{statistics.median(r.cpu['bench script'] for r in results):.2f} s per run (median)"
    )
    for r in results:
        print(
            f"  {r.workers} worker(s): {r.rate:,.0f}/s, first email {r.lag_min_ms:,.0f} ms, "
            f"{r.n / (r.seconds - r.lag_min_ms / 1000):,.0f}/s from the first, lag p50 "
            f"{r.lag_p50_ms:,.0f} ms p99 {r.lag_p99_ms:,.0f} ms, CPU workers "
            f"{r.cpu['workers']:.2f} s postgres {r.cpu['postgres']:.2f} s sink "
            f"{r.cpu['sink']:.2f} s others {r.cpu['others']:.2f} s"
        )
    problems = [p for r in results for p in r.problems]
    print(f"worker processes logged {len(problems)} warnings/errors")
    for line in problems[:5]:
        print(f"  {line}")


async def bench(
    args: argparse.Namespace,
    env: dict[str, str],
    tmp: Path,
    srv: Servers,
    api: Engine,
    sweeper: Engine,
    sink: Sink,
    token: str,
    discarded: list[Result],
) -> list[Result]:
    import asyncpg

    db = await asyncpg.connect(srv.database_url)
    results = []
    try:
        for round_no in range(args.repeat):
            order = args.workers if round_no % 2 == 0 else list(reversed(args.workers))
            for k in order:
                for attempt in range(args.retries + 1):
                    machine.wait_until_idle(args.max_others, args.max_wait)
                    r = await one_run(
                        args, k, f"r{round_no}k{k}a{attempt}", env, tmp, srv, api, sweeper, sink,
                        token, db,
                    )  # fmt: skip
                    share = r.cpu["others"] / r.wall
                    if share <= args.max_others or attempt == args.retries:
                        break
                    discarded.append(r)
                    print(
                        f"  {k} worker(s): {r.rate:,.0f} emails/s discarded: other processes "
                        f"used {share:.0%} of a core meanwhile",
                        file=sys.stderr,
                    )
                results.append(r)
                print(
                    f"  round {round_no + 1}/{args.repeat}, {k} worker(s): {r.rate:,.0f} emails/s, "
                    f"lag p50 {r.lag_p50_ms:,.0f} ms p99 {r.lag_p99_ms:,.0f} ms, split "
                    f"{r.split}, others' CPU {r.cpu['others']:.2f} s",
                    file=sys.stderr,
                )
                await asyncio.sleep(1.0)
    finally:
        await db.close()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arguments.parser(__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="emails per run (default 10000)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 3], help="worker process counts"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds over --workers (3)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed emails per run (200)")
    arguments.add_worker_concurrency(parser)
    parser.add_argument("--pool-size", type=int, help="SMTP_POOL_SIZE (default: the package's)")
    parser.add_argument(
        "--sink",
        choices=["auto", *sinks.SINKS],
        default="auto",
        help=f"auto: {sinks.SMTP_SINK} when it exists (apt-get install postfix), else aiosmtpd",
    )
    arguments.add_quiet(parser, max_load=0.8, max_wait=600, retries=3)
    args = arguments.parse(parser, argv, positive=("n", "repeat", "concurrency", "workers"))
    if args.sink == "smtp-sink" and not sinks.SMTP_SINK.exists():
        parser.error(f"{sinks.SMTP_SINK} is missing (Debian: apt-get install postfix)")
    return args


def main() -> None:
    args = parse_args()
    load = machine.wait_for_quiet(args.max_load, args.max_wait)
    print(load, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="dispatch-scale-") as name:
        tmp = Path(name)
        with harness.private_servers(tmp / "servers") as srv:
            sink = sinks.start_sink(args.sink, tmp)
            started: list[Engine] = []
            try:
                env = harness.engine_env(
                    srv,
                    tmp,
                    **harness.smtp_env(sink.port, args.pool_size),
                    MAX_EMAILS_PER_HOUR=1_000_000_000,
                    WORKER_CONCURRENCY=args.concurrency,
                )
                token = harness.create_token(env, tmp, "scale@example.com")  # + migrations
                api = Engine(env, tmp, ["--role", "api", "--no-migrate"])
                started.append(api)
                sweeper = Engine(env, tmp, ["--role", "sweeper", "--no-migrate"])
                started.append(sweeper)
                api.wait_ready()
                sweeper.wait_ready()
                versions = asyncio.run(harness.versions_of(srv))
                discarded: list[Result] = []
                results = asyncio.run(
                    bench(args, env, tmp, srv, api, sweeper, sink, token, discarded)
                )
                problems = [p for e in started for p in e.problems()]
            finally:
                for engine in started:
                    engine.stop()
                sink.stop()
    report(args, results, sink.name, load, versions, discarded)
    if problems:
        print(f"api/sweeper logged {len(problems)} warnings/errors")
        for line in problems[:5]:
            print(f"  {line}")


if __name__ == "__main__":
    main()
