"""The private PostgreSQL: initdb, its password, loopback scram-sha-256 logins, the database.

When we run as root it runs as an unprivileged account (PostgreSQL refuses root).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import socket
import stat
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .binaries import PostgresBinaries
from .errors import EmbeddedError
from .processes import READY_TIMEOUT, spawn, tail
from .state import credentials, write_private

log = logging.getLogger(__name__)

DATABASE = "dispatch"
SERVICE_USER = "dispatch-engine"
# The first line of the pg_hba.conf we write; a PGDATA without it predates the passwords.
HBA_MARKER = "# dispatch-engine: scram-sha-256 on loopback, nothing else"
HBA = f"""{HBA_MARKER} (rewritten when missing)
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


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


def _has_our_hba(pgdata: Path) -> bool:
    try:
        return (pgdata / "pg_hba.conf").read_text().startswith(HBA_MARKER)
    except OSError:
        return False


def postgres_ready(port: int) -> bool:
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


def create_database(port: int, password: str) -> None:
    """Create the `dispatch` database if it is missing."""
    import asyncpg  # here: the package imports without asyncpg (test_embedded runs python -S)

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


def start_postgres(
    data_dir: Path, pg: PostgresBinaries, port: int, password: str, *, new_password: bool = False
) -> subprocess.Popen[bytes]:
    """Start PostgreSQL on `data_dir`/postgres (made by initdb first if new) on `port`."""
    pgdata = data_dir / "postgres"
    user = _service_user()
    ids: dict[str, Any] = {}
    if user is not None:
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        _make_traversable(data_dir)
        _make_traversable(pg.bin_dir)
        if pg.from_wheel:
            _make_readable(pg.bin_dir.parent)
    if not (pgdata / "PG_VERSION").exists():
        _initdb(data_dir, pg, user, ids)
    elif user is not None and pgdata.stat().st_uid != user.pw_uid:
        _chown_tree(pgdata, user)  # e.g. first run as another user
    if new_password or not _has_our_hba(pgdata):
        # A folder from before the passwords (or whose credentials.json was lost): set the
        # password offline, then allow password logins only. The data stays as it was.
        _secure(data_dir, pg, password, user, ids)
    args = [str(pg.bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port)]
    # TCP on loopback only: unix socket paths under deep CI checkouts exceed 107 chars.
    settings = "listen_addresses=127.0.0.1 unix_socket_directories= fsync=on"
    settings += " password_encryption=scram-sha-256"
    for setting in f"{settings} max_connections=200 shared_buffers=128MB".split():
        args += ["-c", setting]
    return spawn(args, data_dir / "postgres.log", **ids)


def _initdb(
    data_dir: Path, pg: PostgresBinaries, user: pwd.struct_passwd | None, ids: dict[str, Any]
) -> None:
    pgdata = data_dir / "postgres"
    if pgdata.exists() and any(pgdata.iterdir()):
        raise EmbeddedError(f"{pgdata} is not empty but holds no PostgreSQL data; move it away")
    # Initialise beside and rename, so a crash mid-initdb never leaves a half-made PGDATA.
    scratch = data_dir / "postgres.initdb"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    if user is not None:
        os.chown(scratch, user.pw_uid, user.pw_gid)
    args = [str(pg.bin_dir / "initdb"), "-D", str(scratch), "-U", "postgres"]
    args += ["--auth=trust", "--encoding=UTF8", "--locale=C"]
    log.info("initialising PostgreSQL data in %s", pgdata)
    log_path = data_dir / "postgres.log"
    if (code := spawn(args, log_path, **ids).wait()) != 0:
        raise EmbeddedError(f"initdb failed (exit {code}); {tail(log_path)}")
    with contextlib.suppress(FileNotFoundError):
        pgdata.rmdir()
    scratch.rename(pgdata)


def _secure(
    data_dir: Path,
    pg: PostgresBinaries,
    password: str,
    user: pwd.struct_passwd | None,
    ids: dict[str, Any],
) -> None:
    """Set the superuser's password in single-user mode (no network), then write pg_hba."""
    pgdata = data_dir / "postgres"
    log_path = data_dir / "postgres.log"
    log.info("setting the PostgreSQL password and scram-sha-256 logins in %s", pgdata)
    args = [str(pg.bin_dir / "postgres"), "--single", "-D", str(pgdata)]
    args += ["-c", "password_encryption=scram-sha-256", "-c", "log_statement=none"]
    statement = f"ALTER ROLE postgres WITH PASSWORD '{password}'\n"
    with log_path.open("ab") as out:
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
        raise EmbeddedError(
            f"setting the PostgreSQL password failed (exit {done.returncode}); {tail(log_path)}"
        )
    hba = pgdata / "pg_hba.conf"
    write_private(hba, HBA)
    if user is not None:
        os.chown(hba, user.pw_uid, user.pw_gid)
    credentials(data_dir, postgres_set=True)
