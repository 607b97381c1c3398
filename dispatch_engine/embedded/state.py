"""The data folder's own files: credentials.json, servers.json and the owner's lock.

The URLs carry the passwords, so credentials.json and servers.json are readable by their
owner only (0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EmbeddedError

PRIVATE = 0o600  # credentials.json, servers.json, redis.conf: they hold passwords


@dataclass(frozen=True)
class EmbeddedURLs:
    database_url: str
    redis_url: str


def write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only, atomically (readers never see half a file)."""
    scratch = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        scratch.unlink()
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(scratch, path)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when it is missing or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def credentials(data_dir: Path, *, postgres_set: bool = False) -> tuple[dict[str, str], bool]:
    """The servers' passwords (made on first use, kept 0600) and whether PostgreSQL has its.

    `postgres_set=True` notes that PostgreSQL now has the password: until then (a crash in
    between included) every start sets it again.
    """
    path = data_dir / "credentials.json"
    known = read_json(path)
    made = {name: secrets.token_urlsafe(24) for name in ("postgres", "redis")}
    creds = {name: str(known.get(name) or made[name]) for name in made}
    is_set = postgres_set or known.get("postgres_set") is True
    if {**creds, "postgres_set": is_set} != known:
        write_private(path, json.dumps({**creds, "postgres_set": is_set}, indent=2) + "\n")
    elif stat.S_IMODE(path.stat().st_mode) != PRIVATE:
        path.chmod(PRIVATE)
    return creds, is_set


def acquire_lock(data_dir: Path, shown: str) -> int:
    """Take the folder's lock for this process (its pid written in it); returns the fd."""
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    for attempt in range(3):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == 2:
                owner = os.pread(fd, 32, 0).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise EmbeddedError(
                    f"data folder {shown} is in use by another dispatch-engine "
                    f"(pid {owner}); stop it first or set DISPATCH_DATA_DIR"
                ) from None
            time.sleep(0.1)  # running_urls() holds a shared lock for an instant
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


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
    state = read_json(data_dir / "servers.json")
    if state.get("running") is True and str(state.get("owner_pid")) == owner:
        return EmbeddedURLs(str(state["database_url"]), str(state["redis_url"]))
    return None  # the owner is still starting
