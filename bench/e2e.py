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
import tempfile
from pathlib import Path

import arguments
import harness
import machine
import sinks
from e2e_report import report
from e2e_runs import SinkResults, SinkRuns, idle_commands
from harness import Engine, Servers
from sinks import Sink


async def bench_sink(
    args: argparse.Namespace, srv: Servers, engine: Engine, token: str, sink: Sink, kind: str,
    idle_s: float,
) -> SinkResults:  # fmt: skip
    """The warm-up, --repeat pairs of runs (ceiling, e2e) and the idle window, on one sink."""
    import aiohttp
    import asyncpg

    db = await asyncpg.connect(srv.database_url)
    out = SinkResults(kind, sink.name, [], [], [], [])
    try:
        async with aiohttp.ClientSession() as http:
            runs = SinkRuns(args, srv, engine, token, sink, kind, http, db)
            await runs.warm_up()
            for attempt in range(args.repeat):
                ceiling, e2e = await runs.pair(attempt, out.discarded)
                out.ceilings.append(ceiling)
                out.e2e.append(e2e)
                await asyncio.sleep(0.5)
        out.idle = await idle_commands(srv.redis_url, idle_s)
    finally:
        await db.close()
    out.problems = engine.problems()
    return out


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
    parser = arguments.parser(__doc__)
    parser.add_argument(
        "--sink",
        nargs="+",
        choices=sinks.SINKS,
        default=list(sinks.SINKS),
        help="SMTP sinks, one after the other (default: smtp-sink aiosmtpd)",
    )
    parser.add_argument("--n", type=int, default=10_000, help="emails per run (10000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per sink (median; 3)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed first campaign (500)")
    arguments.add_worker_concurrency(parser)
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
    arguments.add_loop(parser, "this script, where the bare loop runs")
    arguments.add_quiet(parser, max_load=1.0, max_wait=300, retries=2)
    arguments.add_servers(parser)
    return arguments.parse(parser, argv, positive=("n", "repeat", "concurrency", "connections"))


def engine_environment(args: argparse.Namespace, srv: Servers, tmp: Path) -> dict[str, str]:
    extra = dict(setting.partition("=")[::2] for setting in args.env)
    return harness.engine_env(
        srv,
        tmp,
        MAX_EMAILS_PER_HOUR=10_000_000,  # the highest value config.py accepts
        WORKER_CONCURRENCY=args.concurrency,
        DISPATCH_TRANSPORT="smtp",  # the token's default sender gets this transport
        **extra,
    )


def run_sink(
    args: argparse.Namespace, srv: Servers, env: dict[str, str], token: str, tmp: Path,
    kind: str, idle_s: float,
) -> SinkResults:  # fmt: skip
    """Start the sink and a `dispatch-engine run` sending into it, bench them, stop both."""
    sink = sinks.start_sink(kind, tmp)
    engine = Engine(
        harness.with_settings(env, **harness.smtp_env(sink.port, args.connections)), tmp
    )
    try:
        engine.wait_ready()
        with harness.profiler(
            profile_path(args.profile, kind, len(args.sink) > 1), engine.proc.pid
        ):
            return harness.run_on_loop(
                bench_sink(args, srv, engine, token, sink, kind, idle_s), args.loop
            )
    finally:
        engine.stop()
        sink.stop()


def main() -> None:
    args = parse_args()
    load = machine.wait_for_quiet(args.max_load, args.max_wait)
    with tempfile.TemporaryDirectory(prefix="dispatch-e2e-") as name:
        tmp = Path(name)
        with harness.private_servers(tmp / "servers", args.database_url, args.redis_url) as srv:
            env = engine_environment(args, srv, tmp)
            token = harness.create_token(env, tmp, "bench@example.com")  # + migrations
            if args.pg_setting:
                asyncio.run(apply_pg_settings(srv.database_url, args.pg_setting))
            versions = f"{asyncio.run(harness.versions_of(srv))} ({srv.description})"
            results = [
                # the idle window once, after the first sink's runs
                run_sink(args, srv, env, token, tmp, kind, args.idle_seconds if i == 0 else 0.0)
                for i, kind in enumerate(args.sink)
            ]
    report(args, results, versions, load)


if __name__ == "__main__":
    main()
