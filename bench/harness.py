"""What the end-to-end benchmarks share: servers, SMTP sinks, dispatch-engine processes, CPU.

Imported by `e2e.py`, `scale_out.py`, `pacing.py` and `store.py`. Each of them first moves
this folder from the front of sys.path to its end (bench/queue.py would shadow the standard
library's `queue`), so `import harness` still finds this file.

- `private_servers`: PostgreSQL + Redis from dispatch_engine.embedded (or given URLs);
- `PostfixSink` (Postfix's C `smtp-sink`, one file per message on tmpfs) and `AiosmtpdSink`
  (pure Python, its own process): both give (Message-ID, received at) per message;
- `Engine`: `dispatch-engine run [--role …]` as a subprocess; `create_token`;
- `Cpu`, `machine_busy`, `wait_for_quiet`, `wait_until_idle`: CPU accounting on a shared
  machine; `received_lags`, `percentile`, `table`, `span`, `revision`, `run_on_loop`,
  `profiler` (py-spy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
BIN = Path(sys.executable).parent / "dispatch-engine"
SMTP_SINK = Path("/usr/sbin/smtp-sink")
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
SINKS = ("smtp-sink", "aiosmtpd")


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


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (every core, every process) so far."""
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


def add_quiet_arguments(
    parser: Any, *, max_load: float, max_wait: float, retries: int, max_others: float = 0.3
) -> None:
    """--max-load, --max-wait, --max-others, --retries: measuring on a shared machine."""
    parser.add_argument(
        "--max-load",
        type=float,
        default=max_load,
        help=f"first wait while the 1-minute load average is above this ({max_load})",
    )
    parser.add_argument(
        "--max-wait", type=float, default=max_wait, help=f"wait at most this many s ({max_wait})"
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=max_others,
        help="redo a run during which other processes used more than this share of a core "
        f"({max_others})",
    )
    parser.add_argument(
        "--retries", type=int, default=retries, help=f"redos per run at most ({retries})"
    )


class Cpu:
    """CPU seconds (user + system, reaped children included) of some processes, or trees."""

    def __init__(self, pids: Iterable[int | None], tree: bool = False) -> None:
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
                        total += t.user + t.system + t.children_user + t.children_system
        return total


class CpuMeters:
    """Named `Cpu` meters read together; `others` = the machine's busy time minus theirs."""

    def __init__(self, meters: dict[str, Cpu]) -> None:
        self.meters = meters
        self._start: dict[str, float] = {}
        self._busy = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._start = {name: m.seconds() for name, m in self.meters.items()}
        self._busy = machine_busy()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per meter since start(), plus `others` and `wall` (seconds)."""
        cpu = {name: m.seconds() - self._start[name] for name, m in self.meters.items()}
        ours = sum(v for v in cpu.values() if v == v)  # NaN: a meter without a process
        cpu["others"] = max(0.0, machine_busy() - self._busy - ours)  # ticks can dip below 0
        cpu["wall"] = time.monotonic() - self._t0
        return cpu


# ---- processes ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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


# ---- the SMTP sinks ----


class Sink(Protocol):
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def take(self) -> list[tuple[str, float]]: ...

    def stop(self) -> None: ...


class PostfixSink:
    """Postfix's smtp-sink, dumping each message to a file on tmpfs (mtime = received)."""

    name = "Postfix smtp-sink (C), one file per message on tmpfs"

    def __init__(self, tmp: Path) -> None:
        if not SMTP_SINK.exists():
            raise SystemExit(f"{SMTP_SINK} is missing (Debian: apt-get install postfix)")
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
        self.path = tmp / f"sink-records-{secrets.token_hex(3)}.txt"
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


def start_sink(kind: str, tmp: Path) -> Sink:
    """ "smtp-sink", "aiosmtpd", or "auto" (smtp-sink when installed)."""
    if kind == "smtp-sink" or (kind == "auto" and SMTP_SINK.exists()):
        return PostfixSink(tmp)
    return AiosmtpdSink(tmp)


@dataclass
class Received:
    """What a sink received of one campaign, matched with its dispatches."""

    lags_ms: list[float]  # received - scheduled_at, one per dispatch received
    first: float  # the first message's receive time (epoch s)
    last: float
    duplicates: int
    missing: int


def received_lags(records: list[tuple[str, float]], rows: Iterable[Any]) -> Received:
    """Match sink records (Message-ID, at) with rows of (message_id, scheduled_at)."""
    received: dict[str, float] = {}
    duplicates = 0
    for message_id, at in records:
        if message_id in received:
            duplicates += 1
            received[message_id] = min(received[message_id], at)
        else:
            received[message_id] = at
    rows = list(rows)
    lags = [
        (received[r["message_id"]] - r["scheduled_at"].timestamp()) * 1000
        for r in rows
        if r["message_id"] in received
    ]
    ats = [received[r["message_id"]] for r in rows if r["message_id"] in received]
    return Received(lags, min(ats), max(ats), duplicates, len(rows) - len(lags))


# ---- servers and dispatch-engine ----


@dataclass
class Servers:
    database_url: str
    redis_url: str
    postgres_pid: int | None
    redis_pid: int | None
    description: str = "dispatch_engine.embedded"


@contextlib.contextmanager
def private_servers(
    folder: Path, database_url: str | None = None, redis_url: str | None = None
) -> Iterator[Servers]:
    """PostgreSQL + Redis: the given URLs, or private ones in `folder` (stopped after)."""
    if database_url and redis_url:
        yield Servers(database_url, redis_url, None, None, "given URLs")
        return
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


async def versions_of(srv: Servers) -> str:
    """ "Redis 7.0.15, PostgreSQL 15.20" (or Valkey …)."""
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


def engine_env(srv: Servers, tmp: Path, **settings: str | int | None) -> dict[str, str]:
    """The environment of `dispatch-engine` processes; `settings` add or (None) remove."""
    env: dict[str, str] = {
        **os.environ,
        "DATABASE_URL": srv.database_url,
        "REDIS_URL": srv.redis_url,
        "DISPATCH_HOST": "127.0.0.1",
        "DISPATCH_PORT": "0",
        "DISPATCH_DATA_DIR": str(tmp / "data"),
        "DISPATCH_SECRET_KEY": secrets.token_urlsafe(24),
        "DISPATCH_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }
    return with_settings(env, **settings)


def with_settings(env: dict[str, str], **settings: str | int | None) -> dict[str, str]:
    """A copy of `env` with `settings` added, or removed where None."""
    out = dict(env)
    for name, value in settings.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = str(value)
    return out


def smtp_env(port: int, pool_size: int | None) -> dict[str, str | int | None]:
    """Settings that point the SMTP transport at a sink on loopback."""
    return {
        "DISPATCH_TRANSPORT": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": port,
        "SMTP_TLS": "none",
        "SMTP_POOL_SIZE": pool_size,  # None: the package's default
    }


class Engine:
    """`dispatch-engine run [args]` as a subprocess, stopped with SIGTERM like a service manager."""

    def __init__(self, env: dict[str, str], cwd: Path, args: list[str] | None = None) -> None:
        self.args = args or []
        self.role = self.args[self.args.index("--role") + 1] if "--role" in self.args else ""
        self.log_path = cwd / f"dispatch-engine-{self.role or 'all'}-{secrets.token_hex(3)}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN), "run", *self.args],
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
                raise RuntimeError(f"dispatch-engine exited:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"dispatch-engine not ready in {within} s:\n{self.output()[-3000:]}")

    def problems(self) -> list[str]:
        prefix = f"[{self.role}] " if self.role else ""
        return [
            prefix + line
            for line in self.output().splitlines()
            if " WARNING " in line or " ERROR " in line or "Traceback" in line
        ]

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def create_token(env: dict[str, str], cwd: Path, email: str) -> str:
    """`dispatch-engine token create` (also applies the migrations); returns the token."""
    done = subprocess.run(
        [str(BIN), "token", "create", "--email", email, "--name", "bench"],
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


async def schedule(http: Any, url: str, token: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST /api/emails/schedule; the answer's JSON."""
    import orjson

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with http.post(
        f"{url}/api/emails/schedule", data=orjson.dumps(payload), headers=headers
    ) as r:
        answer: dict[str, Any] = await r.json()
        if r.status != 201:
            raise RuntimeError(f"POST answered {r.status}: {answer}")
    return answer


async def wait_all_sent(db: Any, campaign_id: int, n: int, within: float) -> None:
    """Poll PostgreSQL until n dispatches of the campaign are recorded `sent`."""
    deadline = time.monotonic() + within
    while True:
        sent = await db.fetchval(
            "SELECT count(*) FROM dispatches WHERE campaign_id = $1 AND status = 'sent'",
            campaign_id,
        )
        if sent >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sent} of {n} sent within {within:.0f} s")
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def profiler(path: str | None, pid: int, rate: int = 200) -> Iterator[None]:
    """py-spy record on `pid` while the block runs: an SVG flame graph for *.svg paths, idle
    samples (waits on the event loop) included, else collapsed stacks ("raw")."""
    if not path:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        raise SystemExit(f"--profile: {spy} is missing (the bench extra installs py-spy)")
    fmt = "flamegraph" if path.endswith(".svg") else "raw"
    command = [str(spy), "record", "--idle", "--pid", str(pid), "--rate", str(rate)]
    proc = subprocess.Popen(
        [*command, "--format", fmt, "--nonblocking", "--output", path], stdout=sys.stderr
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---- event loops ----


def run_on_loop(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
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


def loop_name(loop: str = "auto") -> str:
    if loop == "asyncio":
        return "asyncio"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"uvloop {version('uvloop')}"
    except PackageNotFoundError:
        return "asyncio (uvloop not installed)"


# ---- report ----


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def fmt(value: float, spec: str = ",.0f") -> str:
    return "—" if value != value else format(value, spec)  # NaN → dash


def span(values: list[float], spec: str = ",.0f") -> str:
    """One value, or the range over runs: "a-b"."""
    lo, hi = min(values), max(values)
    if format(lo, spec) == format(hi, spec):
        return format(lo, spec)
    return f"{format(lo, spec)}-{format(hi, spec)}"


def table(rows: list[list[str]]) -> str:
    """A Markdown table; the first row is the header, the first column left-aligned."""
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
        paths = ["dispatch_engine"]
        clean = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", *paths], check=False)
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return head + ("" if clean.returncode == 0 else "+uncommitted changes")
