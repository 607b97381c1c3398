"""What the end-to-end benchmarks share: servers, dispatch-engine processes, loops, tables.

Imported by every script in this folder, beside `machine.py` (CPU accounting), `sinks.py`
(the SMTP sinks) and `arguments.py` (the shared command line). Python puts a script's
folder first on sys.path: no file here may be named after a module of the standard library
or of a dependency.

- `private_servers`: PostgreSQL + Redis from dispatch_engine.embedded (or given URLs);
  `versions_of` them; `redis_name`;
- `Engine`: `dispatch-engine run [--role …]` as a subprocess; `engine_env`, `smtp_env`,
  `create_token`, `schedule`, `wait_all_sent`;
- `client_commands` (MONITOR), `profiler` (py-spy), `run_on_loop`, `loop_name`;
- `percentile`, `fmt`, `span`, `table`, `revision`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
BIN = Path(sys.executable).parent / "dispatch-engine"


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


def redis_version(server: dict[str, Any]) -> str:
    """ "Redis 7.0.15" (or Valkey …) from INFO server."""
    if "valkey_version" in server:
        return f"Valkey {server['valkey_version']}"
    return f"Redis {server['redis_version']}"


async def versions_of(srv: Servers) -> str:
    """ "Redis 7.0.15, PostgreSQL 15.20" (or Valkey …)."""
    import asyncpg
    from redis.asyncio import Redis

    redis = Redis.from_url(srv.redis_url)
    server = await redis.info("server")
    await redis.aclose()
    db = await asyncpg.connect(srv.database_url)
    pg = await db.fetchval("SHOW server_version")
    await db.close()
    return f"{redis_version(server)}, PostgreSQL {pg}"


async def client_commands(redis_url: str, seconds: float) -> Counter[str]:
    """The commands clients send Redis during `seconds`, by name. Read with MONITOR, so the
    commands Lua scripts run inside Redis are left out: a script call is one round trip."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    seen: Counter[str] = Counter()
    try:
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
    return seen


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
