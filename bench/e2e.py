"""End to end: N emails through the real HTTP API, the real worker and SMTP, into a sink.

    .venv/bin/python bench/e2e.py [--n 5000] [--repeat 3] [--concurrency 200]

What runs, all on this machine:
- a private PostgreSQL + Redis (dispatch_engine.embedded), unless --database-url and
  --redis-url are given;
- an SMTP sink (aiosmtpd) in its own process on loopback: it only counts and records each
  message's Message-ID with the time it finished receiving it (the sink's clock);
- `dispatch-engine run` (all roles in one process, as users run it) with
  DISPATCH_TRANSPORT=smtp pointed at the sink, MAX_EMAILS_PER_HOUR=10000000 and
  WORKER_CONCURRENCY=--concurrency; the API token comes from `dispatch-engine token create`.

One run = one POST /api/emails/schedule of N recipients, all due now. Figures:
- emails/s = N / (last message received - just before the POST);
- lag = received (sink clock) - the dispatch's scheduled_at; with every email due at once it
  is mostly queueing behind the others, so p99 ≈ N / throughput;
- CPU seconds of each process from just before the POST until every dispatch is recorded
  `sent` in PostgreSQL (psutil; PostgreSQL = the postmaster and all its backends).
Beside it, the transport ceiling: a bare aiosmtplib loop over --connections connections (like
the transport's pool, SMTP_POOL_SIZE) sending N pre-rendered messages to the same sink. Runs
are interleaved (ceiling, e2e, ceiling, e2e, …); medians over --repeat. A warm-up campaign of
--warmup emails runs first and is excluded (connections opened, templates compiled).

Also printed: the CPU that other processes used meanwhile ("others'": on a shared machine it
skews every figure), the worker's group-commit size (one `dispatch:events` message per
commit), Redis commands per email, and, after the runs, the commands/s clients send Redis
while dispatch-engine is idle (MONITOR; design target <= 1/s). --profile FILE samples
dispatch-engine with py-spy; --pg-setting NAME=VALUE tries a PostgreSQL setting.
"""

from __future__ import annotations

# Python puts this folder first on sys.path, where bench/queue.py would shadow the standard
# library's `queue` (imported by concurrent.futures, redis-py, …): take it off first.
import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import re
import secrets
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
BIN = Path(sys.executable).parent / "dispatch-engine"
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
SUBJECT = "Benchmark {{ email }}"
BODY = "Hello {{ email }},\n\nthis is one of the benchmark's emails.\n\n-- \nDispatch Engine\n"


# ---- the SMTP sink (its own process) ----


class _Recorder:
    """aiosmtpd handler: accept everything, keep (Message-ID, received at) per message."""

    def __init__(self, count: Any) -> None:
        self.count = count
        self.records: list[tuple[str, float]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        at = time.time()
        content: bytes = envelope.original_content or envelope.content
        end = content.find(b"\r\n\r\n")
        match = MESSAGE_ID.search(content, 0, end if end >= 0 else len(content))
        self.records.append((match.group(1).decode() if match else "", at))
        with self.count.get_lock():
            self.count.value += 1
        return "250 2.0.0 OK"


def _sink_main(count: Any, conn: Connection, loop: str) -> None:
    import logging

    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd logs each connection

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        recorder = _Recorder(count)
        server = await loop.create_server(
            lambda: SMTP(recorder, hostname="bench-sink", ident="bench sink"), "127.0.0.1", 0
        )
        stop = asyncio.Event()

        def on_command() -> None:
            # uvloop's add_reader makes the pipe non-blocking: a big `send` would then fail
            os.set_blocking(conn.fileno(), True)
            try:
                command = conn.recv()
            except EOFError:
                command = "stop"
            if command == "take":
                conn.send(recorder.records)
                recorder.records = []
            elif command == "stop":
                stop.set()

        loop.add_reader(conn.fileno(), on_command)
        conn.send(server.sockets[0].getsockname()[1])
        await stop.wait()
        server.close()

    run_on_loop(serve(), loop)


class SmtpSink:
    def __init__(self, loop: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.count = ctx.Value("q", 0)
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_sink_main, args=(self.count, child, loop), daemon=True)
        self.proc.start()
        if not self._conn.poll(30):
            self.stop()
            raise RuntimeError("the SMTP sink did not start")
        self.port: int = self._conn.recv()

    @property
    def received(self) -> int:
        return int(self.count.value)

    def take(self) -> list[tuple[str, float]]:
        """The records since the last take."""
        self._conn.send("take")
        if not self._conn.poll(60):
            raise RuntimeError("the SMTP sink did not answer")
        records: list[tuple[str, float]] = self._conn.recv()
        return records

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._conn.send("stop")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


# ---- CPU accounting ----


class CpuMeter:
    """CPU seconds (user + system) of a set of processes, children included."""

    def __init__(self, pid: int | None, tree: bool = False) -> None:
        import psutil

        self.proc = psutil.Process(pid) if pid else None
        self.tree = tree

    def seconds(self) -> float:
        import psutil

        if self.proc is None:
            return float("nan")
        procs = [self.proc, *(self.proc.children(recursive=True) if self.tree else [])]
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total


class MachineMeter:
    """Busy CPU seconds of the whole machine (every core, every process)."""

    def seconds(self) -> float:
        import psutil

        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def other_cpu(cpu: dict[str, float]) -> float:
    """CPU used by processes outside the measurement (other users of the machine)."""
    used = cpu["machine"] - sum(v for k, v in cpu.items() if k not in ("machine", "other"))
    return max(0.0, used)  # tick-granular counters can dip a little below zero


# ---- the servers and the dispatch-engine process ----


@dataclass
class Servers:
    database_url: str
    redis_url: str
    postgres_pid: int | None
    redis_pid: int | None
    description: str


@contextlib.contextmanager
def servers(args: argparse.Namespace, tmp: Path) -> Iterator[Servers]:
    if args.database_url and args.redis_url:
        yield Servers(args.database_url, args.redis_url, None, None, "given URLs")
        return
    from dispatch_engine.embedded import EmbeddedServers

    print("starting private PostgreSQL + Redis (dispatch_engine.embedded)…", file=sys.stderr)
    with EmbeddedServers(tmp / "servers") as embedded:
        state = json.loads((tmp / "servers" / "servers.json").read_text())
        yield Servers(
            embedded.urls.database_url,
            embedded.urls.redis_url,
            state.get("postgres_pid"),
            state.get("redis_pid"),
            "dispatch_engine.embedded",
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


class Engine:
    """`dispatch-engine run` as a subprocess, stopped with SIGTERM like a service manager."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.log_path = cwd / "dispatch-engine.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN), "run"],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = self._wait_ready()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, within: float = 60.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            match = re.search(r"Running .* on (http://\S+)", self.output())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"dispatch-engine exited:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"dispatch-engine not ready in {within} s:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def create_token(env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [str(BIN), "token", "create", "--email", "bench@example.com", "--name", "bench"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"token create failed: {done.stderr or done.stdout}")
    return done.stdout.strip().splitlines()[-1]


# ---- one end-to-end run ----


@dataclass
class Result:
    n: int
    seconds: float  # start → last message received
    post_s: float = float("nan")  # the POST's own duration
    lag_p50_ms: float = float("nan")
    lag_p99_ms: float = float("nan")
    lag_max_ms: float = float("nan")
    lag_min_ms: float = float("nan")  # due → the first email received
    record_s: float = float("nan")  # start → every dispatch recorded as sent
    cpu: dict[str, float] | None = None
    duplicates: int = 0
    missing: int = 0
    record_batches: float = float("nan")  # group commits (one dispatch:events each)
    redis_commands: float = float("nan")  # every client's, POST to all recorded
    redis_by_command: dict[str, int] | None = None

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def wait_until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {within:.0f} s")
        await asyncio.sleep(0.005)


class EventCounter:
    """Counts the worker's record batches: each group commit publishes one dispatch:events."""

    def __init__(self, redis_url: str) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(redis_url)
        self.batches = 0
        self.ids = 0
        self.commands = 0
        self.by_command: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventCounter:
        import orjson

        pubsub = self.redis.pubsub()
        await pubsub.subscribe("dispatch:events")
        self._stats0 = await self.redis.info("commandstats")

        async def listen() -> None:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    event = orjson.loads(message["data"])
                    if event.get("type") == "dispatches":
                        self.batches += 1
                        self.ids += len(event.get("ids", []))

        self._task = asyncio.create_task(listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        after = await self.redis.info("commandstats")
        self.by_command = {
            name.removeprefix("cmdstat_"): int(v["calls"])
            - int(self._stats0.get(name, {}).get("calls", 0))
            for name, v in after.items()
        }
        self.by_command["info"] = self.by_command.get("info", 1) - 1  # less our own
        self.by_command = {k: v for k, v in self.by_command.items() if v > 0}
        self.commands = sum(self.by_command.values())
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()


async def e2e_run(
    http: Any,
    db: Any,
    redis_url: str,
    engine: Engine,
    token: str,
    sink: SmtpSink,
    meters: dict[str, CpuMeter | MachineMeter],
    n: int,
    tag: str,
) -> Result:
    import orjson

    payload = orjson.dumps(
        {
            "subject": SUBJECT,
            "body": BODY,
            "recipients": [f"{tag}-{i}@example.com" for i in range(n)],
        }
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sink.take()
    base = sink.received
    async with EventCounter(redis_url) as events:
        cpu0 = {name: m.seconds() for name, m in meters.items()}
        t0 = time.time()
        url = f"{engine.url}/api/emails/schedule"
        async with http.post(url, data=payload, headers=headers) as r:
            answer = await r.json()
            if r.status != 201:
                raise RuntimeError(f"POST answered {r.status}: {answer}")
        post_s = time.time() - t0
        campaign_id = answer["campaign"]["id"]

        async def all_received() -> bool:
            return sink.received - base >= n

        async def all_recorded() -> bool:
            sent = await db.fetchval(
                "SELECT count(*) FROM dispatches WHERE campaign_id = $1 AND status = 'sent'",
                campaign_id,
            )
            return bool(sent >= n)

        await wait_until(all_received, max(60.0, n / 50), f"{n} messages at the sink")
        await wait_until(all_recorded, 60.0, f"{n} dispatches recorded as sent")
        record_s = time.time() - t0
        cpu = {name: m.seconds() - cpu0[name] for name, m in meters.items()}
        cpu["other"] = other_cpu(cpu)
    await asyncio.sleep(0.2)  # a late duplicate would arrive now
    records = sink.take()
    received: dict[str, float] = {}
    duplicates = 0
    for message_id, at in records:
        if message_id in received:
            duplicates += 1
            received[message_id] = min(received[message_id], at)
        else:
            received[message_id] = at
    rows = await db.fetch(
        "SELECT message_id, scheduled_at FROM dispatches WHERE campaign_id = $1", campaign_id
    )
    lags = [
        (received[r["message_id"]] - r["scheduled_at"].timestamp()) * 1000
        for r in rows
        if r["message_id"] in received
    ]
    last = max(at for _, at in records)
    return Result(
        n=n,
        seconds=last - t0,
        post_s=post_s,
        lag_p50_ms=percentile(lags, 0.50),
        lag_p99_ms=percentile(lags, 0.99),
        lag_max_ms=max(lags),
        lag_min_ms=min(lags),
        record_s=record_s,
        cpu=cpu,
        duplicates=duplicates,
        missing=n - len(lags),
        record_batches=events.batches,
        redis_commands=events.commands,
        redis_by_command=events.by_command,
    )


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


# ---- the transport ceiling ----


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


async def ceiling_run(
    sink: SmtpSink, n: int, connections: int, meters: dict[str, CpuMeter | MachineMeter]
) -> Result:
    import aiosmtplib

    messages = prerender(n)
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, use_tls=False, start_tls=False)
        for _ in range(connections)
    ]
    for client in clients:  # open before the clock, as the transport's pool reuses them
        await client.connect()
    sink.take()
    base = sink.received
    cpu0 = {name: m.seconds() for name, m in meters.items()}
    t0 = time.time()

    async def pump(client: aiosmtplib.SMTP, share: list[tuple[str, str, bytes]]) -> None:
        for mail_from, rcpt, raw in share:
            await client.sendmail(mail_from, [rcpt], raw)

    await asyncio.gather(*(pump(c, messages[i::connections]) for i, c in enumerate(clients)))

    async def all_received() -> bool:
        return sink.received - base >= n

    await wait_until(all_received, 60.0, f"{n} messages at the sink")
    cpu = {name: m.seconds() - cpu0[name] for name, m in meters.items()}
    cpu["other"] = other_cpu(cpu)
    records = sink.take()
    last = max(at for _, at in records)
    for client in clients:
        await client.quit()
    return Result(n=n, seconds=last - t0, cpu=cpu)


# ---- driver ----


def run_on_loop(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run `main` on uvloop ("auto": when installed, as dispatch-engine's processes do)."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed") from None
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def loop_name(loop: str) -> str:
    if loop == "asyncio":
        return "asyncio"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"uvloop {version('uvloop')}"
    except PackageNotFoundError:
        return "asyncio (uvloop not installed)"


def revision() -> str:
    """The commit the package comes from, "+changes" when its files differ (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    git = ["git", "--no-optional-locks", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        paths = ["dispatch_engine", "plugins", "migrations"]
        clean = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", *paths], check=False)
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return head + ("" if clean.returncode == 0 else "+uncommitted changes")


@contextlib.contextmanager
def profiler(path: str | None, pid: int) -> Iterator[None]:
    """py-spy record on `pid` while the block runs (the warm-up included)."""
    if not path:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    command = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
    proc = subprocess.Popen([*command, "--nonblocking", "--output", path], stdout=sys.stderr)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def fmt(value: float, spec: str = ",.0f") -> str:
    return "—" if value != value else format(value, spec)  # NaN → dash


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def median_result(results: list[Result]) -> Result:
    def med(attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in results))

    cpu_names = results[0].cpu or {}
    return Result(
        n=results[0].n,
        seconds=med("seconds"),
        post_s=med("post_s"),
        lag_p50_ms=med("lag_p50_ms"),
        lag_p99_ms=med("lag_p99_ms"),
        lag_max_ms=med("lag_max_ms"),
        lag_min_ms=med("lag_min_ms"),
        record_s=med("record_s"),
        cpu={k: statistics.median((r.cpu or {})[k] for r in results) for k in cpu_names},
        record_batches=med("record_batches"),
        redis_commands=med("redis_commands"),
        redis_by_command=results[len(results) // 2].redis_by_command,
        duplicates=sum(r.duplicates for r in results),
        missing=sum(r.missing for r in results),
    )


async def bench(
    args: argparse.Namespace, srv: Servers, engine: Engine, token: str, sink: SmtpSink
) -> None:
    import aiohttp
    import asyncpg
    from redis.asyncio import Redis

    redis = Redis.from_url(srv.redis_url)
    server = await redis.info("server")
    await redis.aclose()
    redis_version = (
        f"Valkey {server['valkey_version']}"
        if "valkey_version" in server
        else f"Redis {server['redis_version']}"
    )
    db = await asyncpg.connect(srv.database_url)
    pg_version = await db.fetchval("SHOW server_version")
    engine_meters: dict[str, CpuMeter | MachineMeter] = {
        "sender": CpuMeter(engine.proc.pid),
        "postgres": CpuMeter(srv.postgres_pid, tree=True),
        "redis": CpuMeter(srv.redis_pid),
        "sink": CpuMeter(sink.proc.pid),
        "driver": CpuMeter(os.getpid()),  # this script: the POST, polling, the sink's pipe
        "machine": MachineMeter(),
    }
    ceiling_meters = {**engine_meters, "sender": CpuMeter(os.getpid())}
    del ceiling_meters["driver"]  # the bare loop runs in this script: it is the sender
    e2e: list[Result] = []
    ceilings: list[Result] = []
    try:
        async with aiohttp.ClientSession() as http:
            if args.warmup:
                print(f"warm-up: {args.warmup} emails (excluded)…", file=sys.stderr)
                await e2e_run(
                    http, db, srv.redis_url, engine, token, sink, engine_meters, args.warmup, "w"
                )
                await ceiling_run(sink, min(args.warmup, args.n), args.connections, ceiling_meters)
            for attempt in range(args.repeat):
                c = await ceiling_run(sink, args.n, args.connections, ceiling_meters)
                ceilings.append(c)
                await asyncio.sleep(0.5)
                tag = f"r{attempt}"
                r = await e2e_run(
                    http, db, srv.redis_url, engine, token, sink, engine_meters, args.n, tag
                )
                e2e.append(r)
                print(
                    f"  run {attempt + 1}/{args.repeat}: ceiling {c.rate:,.0f}/s, "
                    f"e2e {r.rate:,.0f}/s (POST {r.post_s:.2f} s, lag p50 {r.lag_p50_ms:,.0f} ms "
                    f"p99 {r.lag_p99_ms:,.0f} ms, dispatch-engine CPU "
                    f"{(r.cpu or {})['sender']:.2f} s, others {(r.cpu or {})['other']:.2f} s)",
                    file=sys.stderr,
                )
                await asyncio.sleep(0.5)
        idle = await idle_commands(srv.redis_url, args.idle_seconds)
    finally:
        await db.close()

    lines = engine.output().splitlines()
    problems = [line for line in lines if " WARNING " in line or " ERROR " in line]
    e2e_m, ceiling_m = median_result(e2e), median_result(ceilings)
    rows = [
        [
            "measurement",
            "emails",
            "seconds",
            "emails/s",
            "lag p50 ms",
            "lag p99 ms",
            "sender CPU s",
            "postgres CPU s",
            "redis CPU s",
            "sink CPU s",
            "others' CPU s",
        ]
    ]
    for label, r in (
        (f"dispatch-engine run → SMTP sink (median of {args.repeat})", e2e_m),
        (f"bare aiosmtplib x{args.connections}, pre-rendered (median of {args.repeat})", ceiling_m),
    ):
        cpu = r.cpu or {}
        rows.append(
            [
                label,
                f"{r.n:,}",
                f"{r.seconds:.2f}",
                fmt(r.rate),
                fmt(r.lag_p50_ms),
                fmt(r.lag_p99_ms),
                fmt(cpu.get("sender", float("nan")), ".2f"),
                fmt(cpu.get("postgres", float("nan")), ".2f"),
                fmt(cpu.get("redis", float("nan")), ".2f"),
                fmt(cpu.get("sink", float("nan")), ".2f"),
                fmt(cpu.get("other", float("nan")), ".2f"),
            ]
        )
    print()
    print(
        f"N = {args.n:,} emails per run, all due now; WORKER_CONCURRENCY={args.concurrency}, "
        f"SMTP_POOL_SIZE={args.connections}; {redis_version}, PostgreSQL {pg_version} "
        f"({srv.description}); Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
        f"bench loop and sink on {loop_name(args.loop)}; "
        f"dispatch_engine at {revision()}; "
        f"warm-up of {args.warmup} emails excluded"
        + (f"; PostgreSQL settings: {', '.join(args.pg_setting)}" if args.pg_setting else "")
    )
    print()
    print(table(rows))
    print()
    print(
        f"e2e: POST took {e2e_m.post_s:.2f} s (median); last dispatch recorded `sent` "
        f"{e2e_m.record_s:.2f} s after the POST began; lag min (first email) "
        f"{fmt(e2e_m.lag_min_ms)} ms, max {fmt(e2e_m.lag_max_ms)} ms; "
        f"ceiling = sender process CPU is this script's own; duplicates {e2e_m.duplicates}, "
        f"missing {e2e_m.missing}; dispatch-engine logged {len(problems)} warnings/errors"
    )
    for line in problems[:5]:
        print(f"  {line}")
    print(
        f"ratio: dispatch-engine reaches {e2e_m.rate / ceiling_m.rate:.0%} of the bare transport "
        f"loop; CPU per email {1e6 * (e2e_m.cpu or {})['sender'] / args.n:,.0f} µs vs "
        f"{1e6 * (ceiling_m.cpu or {})['sender'] / args.n:,.0f} µs"
    )
    if e2e_m.record_batches == e2e_m.record_batches:
        calls = e2e_m.redis_by_command or {}
        scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
        print(
            f"worker: {e2e_m.record_batches:,.0f} group commits per run "
            f"({args.n / max(e2e_m.record_batches, 1):,.1f} emails each); Redis: "
            f"{scripts / args.n:.3f} script calls and {calls.get('publish', 0) / args.n:.3f} "
            f"PUBLISH per email; {e2e_m.redis_commands / args.n:.2f} commands per email counting "
            "those inside scripts ("
            + ", ".join(f"{name} {n / args.n:.2f}" for name, n in top)
            + ")"
        )
    if idle is not None:
        rate, by_command = idle
        print(
            f"idle: clients sent Redis {rate:.2f} commands/s over {args.idle_seconds:.0f} s after "
            "the runs (dispatch-engine idle; design target <= 1/s): "
            + (", ".join(f"{k} {v}" for k, v in by_command.most_common()) or "none")
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="emails per run (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs (median; default 3)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed first campaign size")
    parser.add_argument("--concurrency", type=int, default=200, help="WORKER_CONCURRENCY")
    parser.add_argument(
        "--connections", type=int, default=4, help="SMTP_POOL_SIZE and the bare loop's connections"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="also sample dispatch-engine with py-spy (pip install py-spy) during the timed "
        "runs and write collapsed stacks to FILE (perturbs the figures: for reading only)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="after the runs, count Redis commands/s while idle for this long (0: skip)",
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="ALTER DATABASE … SET this before dispatch-engine starts (repeatable; for "
        "experiments, e.g. plan_cache_mode=force_custom_plan)",
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop of this script (the bare loop) and of the SMTP sink "
        "(auto: uvloop when installed, like dispatch-engine)",
    )
    parser.add_argument("--database-url", help="use this PostgreSQL (with --redis-url)")
    parser.add_argument("--redis-url", help="use this Redis (with --database-url)")
    args = parser.parse_args(argv)
    if bool(args.database_url) != bool(args.redis_url):
        parser.error("give both --database-url and --redis-url, or neither")
    if args.n < 1 or args.repeat < 1 or args.concurrency < 1 or args.connections < 1:
        parser.error("--n, --repeat, --concurrency and --connections must be positive")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="dispatch-e2e-") as name:
        tmp = Path(name)
        with servers(args, tmp) as srv:
            sink = SmtpSink(args.loop)
            engine: Engine | None = None
            try:
                env = {
                    **os.environ,
                    "DATABASE_URL": srv.database_url,
                    "REDIS_URL": srv.redis_url,
                    "DISPATCH_TRANSPORT": "smtp",
                    "SMTP_HOST": "127.0.0.1",
                    "SMTP_PORT": str(sink.port),
                    "SMTP_TLS": "none",
                    "SMTP_POOL_SIZE": str(args.connections),
                    # the highest value config.py accepts (10,000,000)
                    "MAX_EMAILS_PER_HOUR": "10000000",
                    "WORKER_CONCURRENCY": str(args.concurrency),
                    "DISPATCH_HOST": "127.0.0.1",
                    "DISPATCH_PORT": "0",
                    "DISPATCH_DATA_DIR": str(tmp / "data"),
                    "DISPATCH_SECRET_KEY": secrets.token_urlsafe(24),
                    "DISPATCH_LOG_LEVEL": "warning",
                    "PYTHONUNBUFFERED": "1",
                }
                token = create_token(env, tmp)  # also applies the migrations
                if args.pg_setting:
                    asyncio.run(apply_pg_settings(srv.database_url, args.pg_setting))
                engine = Engine(env, tmp)
                with profiler(args.profile, engine.proc.pid):
                    run_on_loop(bench(args, srv, engine, token, sink), args.loop)
            finally:
                if engine is not None:
                    engine.stop()
                sink.stop()


if __name__ == "__main__":
    main()
