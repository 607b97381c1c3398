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
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arguments
import harness
import machine
import sinks
from harness import Engine, Servers
from machine import Cpu, CpuMeters
from scale_out_report import Result, report
from sinks import Sink

SENT_METRIC = re.compile(r'^dispatch_emails_total\{status="sent"\}\s+(\S+)', re.MULTILINE)
SUBJECT = "Scale-out {{ email }}"
BODY = "Hello {{ email }},\n\nthis is one of the scale-out benchmark's emails.\n\n-- \nDispatch\n"


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


@dataclass
class Cluster:
    """What stays up for the whole invocation: the servers, the sink, the api and sweeper
    processes, the environment the workers start with, and the API token."""

    args: argparse.Namespace
    env: dict[str, str]
    tmp: Path
    srv: Servers
    api: Engine
    sweeper: Engine
    sink: Sink
    token: str

    def meters(self, workers: list[Engine]) -> CpuMeters:
        return CpuMeters(
            {
                "workers": Cpu([w.proc.pid for w in workers]),
                "api": Cpu([self.api.proc.pid]),
                "sweeper": Cpu([self.sweeper.proc.pid]),
                "postgres": Cpu([self.srv.postgres_pid], tree=True),
                "redis": Cpu([self.srv.redis_pid]),
                "sink": Cpu([self.sink.proc.pid], tree=True),
                "bench script": Cpu([os.getpid()]),
            }
        )


async def one_run(cluster: Cluster, db: Any, k: int, tag: str) -> Result:
    """k worker processes started for this run: a warm-up, the timed campaign, stopped."""
    import aiohttp

    args, api, token = cluster.args, cluster.api, cluster.token
    workers = [
        Engine(cluster.env, cluster.tmp, ["--role", "worker", "--no-migrate"]) for _ in range(k)
    ]
    try:
        for w in workers:
            w.wait_ready()
        async with aiohttp.ClientSession() as http:
            if args.warmup:
                await campaign(http, db, api, token, args.warmup, f"{tag}w", 60)
                await asyncio.sleep(0.5)
            cluster.sink.take()
            meters = cluster.meters(workers)
            split0 = await sent_counts(http, workers)
            meters.start()
            campaign_id, post_s = await campaign(
                http, db, api, token, args.n, tag, max(120.0, args.n / 20)
            )
            cpu = meters.stop()
            split = [b - a for a, b in zip(split0, await sent_counts(http, workers), strict=True)]
        await asyncio.sleep(0.3)  # a late duplicate would arrive now
        records = cluster.sink.take()
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


async def kept_run(
    cluster: Cluster, db: Any, k: int, round_no: int, discarded: list[Result]
) -> Result:
    """One run with k workers, redone (--retries) while other processes used too much CPU."""
    args = cluster.args
    for attempt in range(args.retries + 1):
        machine.wait_until_idle(args.max_others, args.max_wait)
        r = await one_run(cluster, db, k, f"r{round_no}k{k}a{attempt}")
        share = r.cpu["others"] / r.wall
        if share <= args.max_others or attempt == args.retries:
            return r
        discarded.append(r)
        print(
            f"  {k} worker(s): {r.rate:,.0f} emails/s discarded: other processes "
            f"used {share:.0%} of a core meanwhile",
            file=sys.stderr,
        )
    raise AssertionError("unreachable")


async def bench(cluster: Cluster, discarded: list[Result]) -> list[Result]:
    """--repeat rounds over --workers, k = 1, 2, 3 then 3, 2, 1, …"""
    import asyncpg

    args = cluster.args
    db = await asyncpg.connect(cluster.srv.database_url)
    results = []
    try:
        for round_no in range(args.repeat):
            order = args.workers if round_no % 2 == 0 else list(reversed(args.workers))
            for k in order:
                r = await kept_run(cluster, db, k, round_no, discarded)
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
                cluster = Cluster(args, env, tmp, srv, api, sweeper, sink, token)
                results = asyncio.run(bench(cluster, discarded))
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
