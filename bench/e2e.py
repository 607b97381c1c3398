"""End to end: N emails through the real HTTP API, the real worker and SMTP, into a sink.

    .venv-bench/bin/python bench/e2e.py [--sink smtp-sink aiosmtpd] [--n 10000] [--repeat 3]

What runs, all on this machine (see harness.py):
- a private PostgreSQL + Redis (dispatch_engine.embedded), unless --database-url and
  --redis-url are given;
- per sink of --sink: the SMTP sink in its own process on loopback (Postfix's C `smtp-sink`,
  one file per message on tmpfs, or aiosmtpd, pure Python), and one `dispatch-engine run`
  (all roles in one process, as users run it) with DISPATCH_TRANSPORT=smtp pointed at it,
  MAX_EMAILS_PER_HOUR=10000000 and WORKER_CONCURRENCY=--concurrency; SMTP_POOL_SIZE is the
  package's default unless --connections. The API token comes from `dispatch-engine token
  create`.

One run = one POST /api/emails/schedule of N recipients, all due now. Figures:
- emails/s = N / (last message received - just before the POST);
- lag = received (sink clock) - the dispatch's scheduled_at; with every email due at once it
  is mostly queueing behind the others, so p99 ≈ N / throughput;
- CPU seconds of each process from just before the POST until every dispatch is recorded
  `sent` in PostgreSQL (psutil; PostgreSQL = the postmaster and all its backends), and what
  other processes on the machine used meanwhile ("others": a run during which they used more
  than --max-others of a core is redone, --retries times at most).
Beside it, the transport ceiling: a bare aiosmtplib loop in this script over as many
connections as the transport's pool, sending N messages pre-rendered by the worker's own
renderer (before the clock) to the same sink. Runs are interleaved (ceiling, e2e, …); the
table shows medians over --repeat. A warm-up campaign of --warmup emails comes first, excluded.

Also printed: the worker's group-commit size (one `dispatch:events` message per commit), Redis
commands per email, and (--idle-seconds) the commands/s clients send Redis while
dispatch-engine is idle (MONITOR; design target <= 1/s). --profile FILE.svg samples
dispatch-engine with py-spy (a flame graph per sink: FILE-<sink>.svg when several).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import Cpu, CpuMeters, Engine, Servers, Sink, fmt

SUBJECT = "Benchmark {{ email }}"
BODY = "Hello {{ email }},\n\nthis is one of the benchmark's emails.\n\n-- \nDispatch Engine\n"
CPU_COLUMNS = ("dispatch-engine", "postgres", "redis", "sink", "bench script", "others")


@dataclass
class Run:
    n: int
    seconds: float  # just before the POST (or the first send) → last message received
    cpu: dict[str, float]
    post_s: float = float("nan")
    lag_p50_ms: float = float("nan")
    lag_p99_ms: float = float("nan")
    lag_min_ms: float = float("nan")
    record_s: float = float("nan")  # POST → every dispatch recorded `sent`
    duplicates: int = 0
    missing: int = 0
    record_batches: float = float("nan")  # group commits (one dispatch:events each)
    redis_by_command: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def others_share(self) -> float:
        return self.cpu["others"] / self.cpu["wall"]


class EventCounter:
    """Counts the worker's group commits (each publishes one dispatch:events message) and
    every client's Redis commands (INFO commandstats, commands inside scripts included)."""

    def __init__(self, redis_url: str) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(redis_url)
        self.batches = 0
        self.by_command: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventCounter:
        import orjson

        pubsub = self.redis.pubsub()
        await pubsub.subscribe("dispatch:events")
        self._stats0 = await self.redis.info("commandstats")

        async def listen() -> None:
            async for message in pubsub.listen():
                data = message["data"] if message.get("type") == "message" else b"{}"
                if orjson.loads(data).get("type") == "dispatches":
                    self.batches += 1

        self._task = asyncio.create_task(listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        after = await self.redis.info("commandstats")
        calls = {
            name.removeprefix("cmdstat_"): int(v["calls"])
            - int(self._stats0.get(name, {}).get("calls", 0))
            for name, v in after.items()
        }
        calls["info"] = calls.get("info", 1) - 1  # less our own
        self.by_command = {k: v for k, v in calls.items() if v > 0}
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()


async def e2e_run(
    http: Any, db: Any, srv: Servers, engine: Engine, token: str, sink: Sink, meters: CpuMeters,
    n: int, tag: str,
) -> Run:  # fmt: skip
    payload = {
        "subject": SUBJECT,
        "body": BODY,
        "recipients": [f"{tag}-{i}@example.com" for i in range(n)],
    }
    sink.take()
    async with EventCounter(srv.redis_url) as events:
        meters.start()
        t0 = time.time()
        answer = await harness.schedule(http, engine.url, token, payload)
        post_s = time.time() - t0
        campaign_id = int(answer["campaign"]["id"])
        await harness.wait_all_sent(db, campaign_id, n, max(120.0, n / 20))
        record_s = time.time() - t0
        cpu = meters.stop()
    records = sink.take()
    rows = await db.fetch(
        "SELECT message_id, scheduled_at FROM dispatches WHERE campaign_id = $1", campaign_id
    )
    got = harness.received_lags(records, rows)
    return Run(
        n=n,
        seconds=got.last - t0,
        cpu=cpu,
        post_s=post_s,
        lag_p50_ms=harness.percentile(got.lags_ms, 0.50),
        lag_p99_ms=harness.percentile(got.lags_ms, 0.99),
        lag_min_ms=min(got.lags_ms),
        record_s=record_s,
        duplicates=got.duplicates,
        missing=got.missing,
        record_batches=events.batches,
        redis_by_command=events.by_command,
    )


def prerender(n: int) -> list[tuple[str, str, bytes]]:
    """N messages rendered the way the worker renders them (same headers and body)."""
    from dispatch_engine.models import CampaignContent, Sender
    from dispatch_engine.render import CompiledCampaign, idempotency_key, message_id_for

    sender = Sender(1, 1, "bench@example.com", "", None, "smtp", {}, 10_000_000, 0)
    content = CampaignContent(1, 1, 1, SUBJECT, BODY, None, 0, None)
    compiled = CompiledCampaign(content, sender)
    out = []
    for i in range(n):
        rcpt = f"ceiling-{i}@example.com"
        mid = message_id_for(idempotency_key(1, rcpt, i), sender.from_address)
        out.append((sender.from_address, rcpt, compiled.render(rcpt, {}, mid)[1]))
    return out


async def ceiling_run(sink: Sink, n: int, connections: int, meters: CpuMeters) -> Run:
    """A bare aiosmtplib loop: `connections` clients, pre-rendered bytes, nothing else."""
    import aiosmtplib

    messages = prerender(n)
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, use_tls=False, start_tls=False)
        for _ in range(connections)
    ]
    for client in clients:  # opened before the clock, as the transport's pool reuses them
        await client.connect()
    sink.take()
    meters.start()
    t0 = time.time()

    async def pump(client: aiosmtplib.SMTP, share: list[tuple[str, str, bytes]]) -> None:
        for mail_from, rcpt, raw in share:
            await client.sendmail(mail_from, [rcpt], raw)

    await asyncio.gather(*(pump(c, messages[i::connections]) for i, c in enumerate(clients)))
    cpu = meters.stop()
    records = sink.take()
    for client in clients:
        await client.quit()
    return Run(n=n, seconds=max(at for _, at in records) - t0, cpu=cpu)


async def idle_commands(redis_url: str, seconds: float) -> tuple[float, Counter[str]] | None:
    """Commands/s that clients send Redis while dispatch-engine has nothing to do, by name.

    Read with MONITOR, so commands that Lua scripts run inside Redis are not counted: a
    script call is one command, one round trip."""
    if seconds <= 0:
        return None
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    seen: Counter[str] = Counter()
    try:
        await asyncio.sleep(1.0)  # let the last records and acks land
        async with redis.monitor() as monitor:

            async def watch() -> None:
                while True:
                    info = await monitor.next_command()
                    if info["client_type"] != "lua":
                        seen[info["command"].split(" ", 1)[0].lower()] += 1

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch(), seconds)
    finally:
        await redis.aclose()
    return sum(seen.values()) / seconds, seen


@dataclass
class SinkResults:
    kind: str
    name: str
    e2e: list[Run]
    ceilings: list[Run]
    discarded: list[Run]
    problems: list[str]
    idle: tuple[float, Counter[str]] | None = None


async def bench_sink(
    args: argparse.Namespace, srv: Servers, engine: Engine, token: str, sink: Sink, kind: str,
    idle_s: float,
) -> SinkResults:  # fmt: skip
    import aiohttp
    import asyncpg

    pool = args.connections or 8  # the package's SMTP_POOL_SIZE default
    db = await asyncpg.connect(srv.database_url)
    common = {
        "postgres": Cpu([srv.postgres_pid], tree=True),
        "redis": Cpu([srv.redis_pid]),
        "sink": Cpu([sink.proc.pid], tree=True),
    }
    engine_meters = CpuMeters(
        {"dispatch-engine": Cpu([engine.proc.pid]), **common, "bench script": Cpu([os.getpid()])}
    )
    # The bare loop runs in this script: here the script is the sender.
    ceiling_meters = CpuMeters(
        {"dispatch-engine": Cpu([]), **common, "bench script": Cpu([os.getpid()])}
    )
    out = SinkResults(kind, sink.name, [], [], [], [])
    try:
        async with aiohttp.ClientSession() as http:
            if args.warmup:
                print(f"[{kind}] warm-up: {args.warmup} emails (excluded)…", file=sys.stderr)
                await e2e_run(
                    http, db, srv, engine, token, sink, engine_meters, args.warmup, f"{kind}-w"
                )
                await ceiling_run(sink, min(args.warmup, args.n), pool, ceiling_meters)
            for attempt in range(args.repeat):
                for retry in range(args.retries + 1):
                    harness.wait_until_idle(args.max_others, args.max_wait)
                    c = await ceiling_run(sink, args.n, pool, ceiling_meters)
                    await asyncio.sleep(0.5)
                    tag = f"{kind}-r{attempt}-{retry}"
                    r = await e2e_run(
                        http, db, srv, engine, token, sink, engine_meters, args.n, tag
                    )
                    noisy = max(r.others_share, c.others_share) > args.max_others
                    print(
                        f"  [{kind}] run {attempt + 1}/{args.repeat}: ceiling {c.rate:,.0f}/s, "
                        f"e2e {r.rate:,.0f}/s (POST {r.post_s:.2f} s, lag p50 "
                        f"{r.lag_p50_ms:,.0f} ms p99 {r.lag_p99_ms:,.0f} ms, dispatch-engine CPU "
                        f"{r.cpu['dispatch-engine']:.2f} s, others {r.cpu['others']:.2f} s)"
                        + (" — noisy, redone" if noisy and retry < args.retries else ""),
                        file=sys.stderr,
                    )
                    if not noisy or retry == args.retries:
                        break
                    out.discarded.append(r)
                out.ceilings.append(c)
                out.e2e.append(r)
                await asyncio.sleep(0.5)
        out.idle = await idle_commands(srv.redis_url, idle_s)
    finally:
        await db.close()
    out.problems = engine.problems()
    return out


def median(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def median_cpu(runs: list[Run], name: str) -> float:
    return float(statistics.median(r.cpu.get(name, float("nan")) for r in runs))


def report(args: argparse.Namespace, results: list[SinkResults], versions: str, load: str) -> None:
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
    pool = args.connections or 8
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
    shares = [r.others_share for res in results for r in res.e2e + res.ceilings]
    print()
    print(
        f"N = {args.n:,} emails per run, all due now, {args.repeat} runs per sink (medians); "
        f"one `dispatch-engine run` (all roles), WORKER_CONCURRENCY={args.concurrency}, "
        f"SMTP_POOL_SIZE={args.connections or 'default (8)'}; {versions}; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; bench loop on "
        f"{harness.loop_name(args.loop)}; dispatch_engine at {harness.revision()}; warm-up of "
        f"{args.warmup} emails excluded; {load}; other processes used {min(shares):.0%}-"
        f"{max(shares):.0%} of a core during the runs "
        f"({sum(len(r.discarded) for r in results)} noisy run(s) redone)"
        + (f"; PostgreSQL settings: {', '.join(args.pg_setting)}" if args.pg_setting else "")
    )
    print("sinks: " + "; ".join(f"{r.kind} = {r.name}" for r in results))
    print()
    print(harness.table(rows))
    print()
    for res in results:
        e = res.e2e
        calls: Counter[str] = Counter()
        for r in e:
            calls.update(r.redis_by_command)
        batches = median(e, "record_batches")
        scripts = (calls["evalsha"] + calls["eval"]) / len(e)
        print(
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
        )
        for line in res.problems[:5]:
            print(f"  {line}")
        if res.idle is not None:
            rate, by_command = res.idle
            print(
                f"[{res.kind}] idle: clients sent Redis {rate:.2f} commands/s over "
                f"{args.idle_seconds:.0f} s after the runs (design target <= 1/s): "
                + (", ".join(f"{k} {v}" for k, v in by_command.most_common()) or "none")
            )


async def apply_pg_settings(database_url: str, settings: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        database = await conn.fetchval("SELECT current_database()")
        for setting in settings:
            name, _, value = setting.partition("=")
            if not name.replace("_", "").replace(".", "").isalnum() or not value:
                raise SystemExit(f"--pg-setting wants NAME=VALUE, got {setting!r}")
            quoted = value.replace("'", "''")
            await conn.execute(f"ALTER DATABASE \"{database}\" SET {name} = '{quoted}'")
    finally:
        await conn.close()


def profile_path(path: str | None, kind: str, several: bool) -> str | None:
    if not path or not several:
        return path
    stem, dot, ext = path.rpartition(".")
    return f"{stem}-{kind}.{ext}" if dot else f"{path}-{kind}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sink",
        nargs="+",
        choices=harness.SINKS,
        default=list(harness.SINKS),
        help="SMTP sinks, one after the other (default: smtp-sink aiosmtpd)",
    )
    parser.add_argument("--n", type=int, default=10_000, help="emails per run (10000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per sink (median; 3)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed first campaign (500)")
    parser.add_argument("--concurrency", type=int, default=200, help="WORKER_CONCURRENCY (200)")
    parser.add_argument(
        "--connections",
        type=int,
        help="SMTP_POOL_SIZE and the bare loop's connections (default: the package's, 8)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="sample dispatch-engine with py-spy (idle included, 200/s) from the warm-up to "
        "the end: FILE.svg a flame graph, else collapsed stacks (perturbs the figures)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="after the first sink's runs, count Redis commands/s while idle this long (0: skip)",
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="ALTER DATABASE … SET this before dispatch-engine starts (repeatable)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of dispatch-engine (repeatable; experiments)",
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop of this script (the bare loop; auto: uvloop when installed)",
    )
    harness.add_quiet_arguments(parser, max_load=1.0, max_wait=300, retries=2)
    parser.add_argument("--database-url", help="use this PostgreSQL (with --redis-url)")
    parser.add_argument("--redis-url", help="use this Redis (with --database-url)")
    args = parser.parse_args(argv)
    if bool(args.database_url) != bool(args.redis_url):
        parser.error("give both --database-url and --redis-url, or neither")
    if min(args.n, args.repeat, args.concurrency, args.connections or 1) < 1:
        parser.error("--n, --repeat, --concurrency and --connections must be positive")
    return args


def main() -> None:
    args = parse_args()
    load = harness.wait_for_quiet(args.max_load, args.max_wait)
    extra = dict(setting.partition("=")[::2] for setting in args.env)
    results: list[SinkResults] = []
    with tempfile.TemporaryDirectory(prefix="dispatch-e2e-") as name:
        tmp = Path(name)
        with harness.private_servers(tmp / "servers", args.database_url, args.redis_url) as srv:
            env = harness.engine_env(
                srv,
                tmp,
                MAX_EMAILS_PER_HOUR=10_000_000,  # the highest value config.py accepts
                WORKER_CONCURRENCY=args.concurrency,
                DISPATCH_TRANSPORT="smtp",  # the token's default sender gets this transport
                **extra,
            )
            token = harness.create_token(env, tmp, "bench@example.com")  # + migrations
            if args.pg_setting:
                asyncio.run(apply_pg_settings(srv.database_url, args.pg_setting))
            versions = f"{asyncio.run(harness.versions_of(srv))} ({srv.description})"
            for i, kind in enumerate(args.sink):
                sink = harness.start_sink(kind, tmp)
                sink_env = harness.with_settings(
                    env, **harness.smtp_env(sink.port, args.connections)
                )
                engine = Engine(sink_env, tmp)
                try:
                    engine.wait_ready()
                    path = profile_path(args.profile, kind, len(args.sink) > 1)
                    with harness.profiler(path, engine.proc.pid):
                        idle_s = args.idle_seconds if i == 0 else 0.0
                        results.append(
                            harness.run_on_loop(
                                bench_sink(args, srv, engine, token, sink, kind, idle_s), args.loop
                            )
                        )
                finally:
                    engine.stop()
                    sink.stop()
    report(args, results, versions, load)


if __name__ == "__main__":
    main()
