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
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent / "dispatch-engine"
SMTP_SINK = Path("/usr/sbin/smtp-sink")
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
SENT_METRIC = re.compile(r'^dispatch_emails_total\{status="sent"\}\s+(\S+)', re.MULTILINE)
SUBJECT = "Scale-out {{ email }}"
BODY = "Hello {{ email }},\n\nthis is one of the scale-out benchmark's emails.\n\n-- \nDispatch\n"


# ---- the machine ----


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(threshold: float, max_wait_s: float, poll_s: float = 30.0) -> str:
    """Wait (up to max_wait_s) until the 1-minute load average is at most `threshold`."""
    start = time.monotonic()
    load = load_average()
    while load > threshold and time.monotonic() - start < max_wait_s:
        print(
            f"load average {load:.2f} > {threshold}: another job runs; waiting {poll_s:.0f} s…",
            file=sys.stderr,
        )
        time.sleep(poll_s)
        load = load_average()
    waited = time.monotonic() - start
    verdict = "quiet" if load <= threshold else "still busy, measured anyway"
    return f"1-min load average {load:.2f} at start ({verdict}; waited {waited:.0f} s)"


class Cpu:
    """CPU seconds (user + system) of some processes, or of them and their children."""

    def __init__(self, pids: list[int | None], tree: bool = False) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in pids if pid]
        self.tree = tree

    def seconds(self) -> float:
        import psutil

        if not self.procs:
            return float("nan")
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                family = [proc, *(proc.children(recursive=True) if self.tree else [])]
                for p in family:
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        total += t.user + t.system
        return total


def machine_busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def wait_until_idle(max_share: float, max_wait_s: float, sample_s: float = 3.0) -> float:
    """Wait until the whole machine used at most `max_share` of a core over `sample_s`.

    Between runs nothing of ours is busy, so this is other people's work (a test suite)."""
    start = time.monotonic()
    while True:
        busy = machine_busy()
        time.sleep(sample_s)
        share = (machine_busy() - busy) / sample_s
        if share <= max_share or time.monotonic() - start > max_wait_s:
            return share
        print(
            f"the machine is busy ({share:.0%} of a core over {sample_s:.0f} s): waiting 20 s…",
            file=sys.stderr,
        )
        time.sleep(20)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the SMTP sinks ----


class PostfixSink:
    """Postfix's smtp-sink, dumping each message to a file on tmpfs (mtime = received)."""

    name = "Postfix smtp-sink (C), one file per message on tmpfs"

    def __init__(self, tmp: Path) -> None:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp
        self.dump = Path(tempfile.mkdtemp(prefix="dispatch-sink-", dir=base))
        self.dump.chmod(0o777)  # smtp-sink drops to `nobody` before it writes
        self.port = free_port()
        command = [str(SMTP_SINK), "-m", "2048", "-d", f"{self.dump}/%H%M%S."]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        self.proc = subprocess.Popen(
            [*command, f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        wait_for_port(self.port, self.proc)

    def take(self) -> list[tuple[str, float]]:
        """(Message-ID, received at) of the messages since the last take; removes them."""
        records = []
        for entry in os.scandir(self.dump):
            if not entry.is_file():
                continue
            at = entry.stat().st_mtime_ns / 1e9
            with open(entry.path, "rb") as f:
                head = f.read(8192)
            match = MESSAGE_ID.search(head)
            records.append((match.group(1).decode() if match else "", at))
            os.unlink(entry.path)
        return records

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dump, ignore_errors=True)


_AIOSMTPD_SINK = r"""
import asyncio, os, re, signal, sys, time
from aiosmtpd.smtp import SMTP
import logging
logging.getLogger("mail.log").setLevel(logging.ERROR)
MID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.M | re.I)
port, path = int(sys.argv[1]), sys.argv[2]
out = open(path, "a", buffering=1 << 20)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        at = time.time()
        content = envelope.original_content or envelope.content
        end = content.find(b"\r\n\r\n")
        m = MID.search(content, 0, end if end >= 0 else len(content))
        out.write(f"{at:.6f} {m.group(1).decode() if m else '-'}\n")
        return "250 2.0.0 OK"

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Handler(), hostname="bench-sink"),
                                      "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async def flush():
        while True:
            await asyncio.sleep(0.1)
            out.flush()
    task = asyncio.create_task(flush())
    await stop.wait()
    task.cancel()
    server.close()
    out.flush()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


class AiosmtpdSink:
    """aiosmtpd (pure Python) in its own process, appending (received at, Message-ID) lines."""

    name = "aiosmtpd (Python) in its own process"

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "sink-records.txt"
        self.path.touch()
        self._offset = 0
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _AIOSMTPD_SINK, str(self.port), str(self.path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        wait_for_port(self.port, self.proc)

    def take(self) -> list[tuple[str, float]]:
        time.sleep(0.3)  # the sink flushes every 0.1 s
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self._offset += cut
        records = []
        for line in data[:cut].splitlines():
            at, _, mid = line.decode().partition(" ")
            records.append((mid, float(at)))
        return records

    def stop(self) -> None:
        stop_process(self.proc)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"the SMTP sink exited: {err[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError("the SMTP sink did not start")


def stop_process(proc: subprocess.Popen[Any], grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---- dispatch-engine processes ----


class Engine:
    """`dispatch-engine run [--role …]` as a subprocess, stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], cwd: Path, role: str) -> None:
        self.role = role
        self.log_path = cwd / f"dispatch-engine-{role}-{secrets.token_hex(3)}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN), "run", "--role", role, "--no-migrate"],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = ""

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, within: float = 60.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            match = re.search(r"Running .* on (http://\S+)", self.output())
            if match:
                self.url = match.group(1)
                return self.url
            if self.proc.poll() is not None:
                raise RuntimeError(f"dispatch-engine {self.role} exited:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"dispatch-engine {self.role} not ready:\n{self.output()[-3000:]}")

    def problems(self) -> list[str]:
        return [
            f"[{self.role}] {line}"
            for line in self.output().splitlines()
            if " WARNING " in line or " ERROR " in line or "Traceback" in line
        ]

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def create_token(env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [str(BIN), "token", "create", "--email", "scale@example.com", "--name", "bench"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"token create failed: {done.stderr or done.stdout}")
    return done.stdout.strip().splitlines()[-1]


@dataclass
class Servers:
    database_url: str
    redis_url: str
    postgres_pid: int | None
    redis_pid: int | None


@contextlib.contextmanager
def private_servers(folder: Path) -> Iterator[Servers]:
    from dispatch_engine.embedded import EmbeddedServers

    print("starting private PostgreSQL + Redis (dispatch_engine.embedded)…", file=sys.stderr)
    with EmbeddedServers(folder) as embedded:
        state = json.loads((folder / "servers.json").read_text())
        yield Servers(
            embedded.urls.database_url,
            embedded.urls.redis_url,
            state.get("postgres_pid"),
            state.get("redis_pid"),
        )


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def sent_counts(http: Any, workers: list[Engine]) -> list[int]:
    counts = []
    for w in workers:
        async with http.get(f"{w.url}/metrics") as r:
            match = SENT_METRIC.search(await r.text())
        counts.append(int(float(match.group(1))) if match else 0)
    return counts


async def campaign(
    http: Any,
    db: Any,
    api: Engine,
    token: str,
    n: int,
    tag: str,
    within: float,
) -> tuple[int, float]:
    """POST n recipients due now; wait until every one is recorded `sent`."""
    import orjson

    payload = orjson.dumps(
        {
            "subject": SUBJECT,
            "body": BODY,
            "recipients": [f"{tag}-{i}@example.com" for i in range(n)],
        }
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    t0 = time.time()
    async with http.post(f"{api.url}/api/emails/schedule", data=payload, headers=headers) as r:
        answer = await r.json()
        if r.status != 201:
            raise RuntimeError(f"POST answered {r.status}: {answer}")
    post_s = time.time() - t0
    campaign_id = int(answer["campaign"]["id"])
    deadline = time.monotonic() + within
    while True:
        sent = await db.fetchval(
            "SELECT count(*) FROM dispatches WHERE campaign_id = $1 AND status = 'sent'",
            campaign_id,
        )
        if sent >= n:
            return campaign_id, post_s
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sent} of {n} sent within {within:.0f} s")
        await asyncio.sleep(0.02)


async def one_run(
    args: argparse.Namespace,
    k: int,
    tag: str,
    env: dict[str, str],
    tmp: Path,
    srv: Servers,
    api: Engine,
    sweeper: Engine,
    sink: PostfixSink | AiosmtpdSink,
    token: str,
    db: Any,
) -> Result:
    import aiohttp

    workers = [Engine(env, tmp, "worker") for _ in range(k)]
    try:
        for w in workers:
            w.wait_ready()
        async with aiohttp.ClientSession() as http:
            if args.warmup:
                await campaign(http, db, api, token, args.warmup, f"{tag}w", 60)
                await asyncio.sleep(0.5)
            sink.take()
            meters = {
                "workers": Cpu([w.proc.pid for w in workers]),
                "api": Cpu([api.proc.pid]),
                "sweeper": Cpu([sweeper.proc.pid]),
                "postgres": Cpu([srv.postgres_pid], tree=True),
                "redis": Cpu([srv.redis_pid]),
                "sink": Cpu([sink.proc.pid], tree=True),
                "bench script": Cpu([os.getpid()]),
            }
            split0 = await sent_counts(http, workers)
            cpu0 = {name: m.seconds() for name, m in meters.items()}
            busy0 = machine_busy()
            t0 = time.monotonic()
            campaign_id, post_s = await campaign(
                http, db, api, token, args.n, tag, max(120.0, args.n / 20)
            )
            cpu = {name: m.seconds() - cpu0[name] for name, m in meters.items()}
            cpu["others"] = max(0.0, machine_busy() - busy0 - sum(cpu.values()))
            wall = time.monotonic() - t0
            split = [b - a for a, b in zip(split0, await sent_counts(http, workers), strict=True)]
        await asyncio.sleep(0.3)  # a late duplicate would arrive now
        records = sink.take()
        rows = await db.fetch(
            "SELECT message_id, scheduled_at FROM dispatches WHERE campaign_id = $1", campaign_id
        )
    finally:
        for w in workers:
            w.stop()
    received: dict[str, float] = {}
    duplicates = 0
    for message_id, at in records:
        if message_id in received:
            duplicates += 1
            received[message_id] = min(received[message_id], at)
        else:
            received[message_id] = at
    due = min(r["scheduled_at"].timestamp() for r in rows)
    lags = [(received[r["message_id"]] - due) * 1000 for r in rows if r["message_id"] in received]
    return Result(
        workers=k,
        n=args.n,
        seconds=max(received.values()) - due,
        wall=wall,
        post_s=post_s,
        lag_min_ms=min(lags),
        lag_p50_ms=percentile(lags, 0.50),
        lag_p99_ms=percentile(lags, 0.99),
        cpu=cpu,
        split=split,
        duplicates=duplicates,
        missing=args.n - len(lags),
        problems=[p for w in workers for p in w.problems()],
    )


# ---- report ----


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
        f"{args.warmup} emails per run excluded; dispatch_engine at {revision()}; {load}; "
        f"other processes used {min(shares):.0%}-{max(shares):.0%} of a core during the runs "
        f"({len(discarded)} run(s) discarded and redone for more than {args.max_others:.0%}"
        + (f": {', '.join(f'{r.rate:,.0f}/s' for r in discarded)}" if discarded else "")
        + ")"
    )
    print()
    print(table(rows))
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


async def versions_of(srv: Servers) -> str:
    import asyncpg
    from redis.asyncio import Redis

    redis = Redis.from_url(srv.redis_url)
    server = await redis.info("server")
    await redis.aclose()
    name = "Valkey" if "valkey_version" in server else "Redis"
    db = await asyncpg.connect(srv.database_url)
    pg = await db.fetchval("SHOW server_version")
    await db.close()
    return f"{name} {server.get('valkey_version') or server['redis_version']}, PostgreSQL {pg}"


async def bench(
    args: argparse.Namespace,
    env: dict[str, str],
    tmp: Path,
    srv: Servers,
    api: Engine,
    sweeper: Engine,
    sink: PostfixSink | AiosmtpdSink,
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
                    wait_until_idle(args.max_others, args.max_wait)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="emails per run (default 10000)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 3], help="worker process counts"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds over --workers (3)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed emails per run (200)")
    parser.add_argument("--concurrency", type=int, default=200, help="WORKER_CONCURRENCY (200)")
    parser.add_argument("--pool-size", type=int, help="SMTP_POOL_SIZE (default: the package's)")
    parser.add_argument(
        "--sink",
        choices=["auto", "smtp-sink", "aiosmtpd"],
        default="auto",
        help=f"auto: {SMTP_SINK} when it exists (apt-get install postfix), else aiosmtpd",
    )
    parser.add_argument(
        "--max-load",
        type=float,
        default=0.8,
        help="wait while the 1-minute load average is above this (0.8)",
    )
    parser.add_argument(
        "--max-wait", type=float, default=600, help="wait at most this many seconds (600)"
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.3,
        help="redo a run during which other processes used more than this share of a core (0.3)",
    )
    parser.add_argument("--retries", type=int, default=3, help="redos per run at most (3)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.concurrency < 1 or min(args.workers) < 1:
        parser.error("--n, --repeat, --concurrency and --workers must be positive")
    if args.sink == "smtp-sink" and not SMTP_SINK.exists():
        parser.error(f"{SMTP_SINK} is missing (Debian: apt-get install postfix)")
    return args


def main() -> None:
    args = parse_args()
    use_postfix = args.sink == "smtp-sink" or (args.sink == "auto" and SMTP_SINK.exists())
    load = wait_for_quiet(args.max_load, args.max_wait)
    print(load, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="dispatch-scale-") as name:
        tmp = Path(name)
        with private_servers(tmp / "servers") as srv:
            sink: PostfixSink | AiosmtpdSink
            sink = PostfixSink(tmp) if use_postfix else AiosmtpdSink(tmp)
            started: list[Engine] = []
            try:
                env = {
                    **os.environ,
                    "DATABASE_URL": srv.database_url,
                    "REDIS_URL": srv.redis_url,
                    "DISPATCH_TRANSPORT": "smtp",
                    "SMTP_HOST": "127.0.0.1",
                    "SMTP_PORT": str(sink.port),
                    "SMTP_TLS": "none",
                    "MAX_EMAILS_PER_HOUR": "1000000000",
                    "WORKER_CONCURRENCY": str(args.concurrency),
                    "DISPATCH_HOST": "127.0.0.1",
                    "DISPATCH_PORT": "0",
                    "DISPATCH_DATA_DIR": str(tmp / "data"),
                    "DISPATCH_SECRET_KEY": secrets.token_urlsafe(24),
                    "DISPATCH_LOG_LEVEL": "warning",
                    "PYTHONUNBUFFERED": "1",
                }
                if args.pool_size:
                    env["SMTP_POOL_SIZE"] = str(args.pool_size)
                else:
                    env.pop("SMTP_POOL_SIZE", None)
                token = create_token(env, tmp)  # also applies the migrations
                api = Engine(env, tmp, "api")
                started.append(api)
                sweeper = Engine(env, tmp, "sweeper")
                started.append(sweeper)
                api.wait_ready()
                sweeper.wait_ready()
                versions = asyncio.run(versions_of(srv))
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
