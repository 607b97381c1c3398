"""The servers as child processes: free ports, spawning with a log, readiness, stopping."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import EmbeddedError

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
PG_STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL)  # fast, immediate, kill
REDIS_STOP_SIGNALS = (signal.SIGTERM, signal.SIGKILL)  # SIGTERM = SHUTDOWN (flushes the AOF)


def pick_port(previous: object, taken: int = 0) -> int:
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


def alive(pid: int) -> bool:
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


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode("utf-8", "replace")
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        ps = ["ps", "-o", "command=", "-p", str(pid)]
        return subprocess.run(ps, capture_output=True, text=True, check=True).stdout
    return ""


def stop_process(
    pid: int, signals: tuple[signal.Signals, ...], what: str, proc: subprocess.Popen[bytes] | None
) -> None:
    """Signal `pid` with each of `signals` until it exits (60 s for the first, then 10 s)."""

    def gone() -> bool:
        return proc.poll() is not None if proc is not None else not alive(pid)

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


def spawn(args: list[str], log_path: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start `args` with stdout and stderr appended to `log_path`."""
    with log_path.open("ab") as out:
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


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[int], bool],
    port: int,
    name: str,
    log_path: Path,
) -> None:
    """Wait until `ready(port)`; EmbeddedError (with the log's end) if it exits or times out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while proc.poll() is None and not ready(port):
        if time.monotonic() > deadline:
            problem = f"did not accept connections on 127.0.0.1:{port} in {READY_TIMEOUT:.0f} s"
            raise EmbeddedError(f"{name} {problem}; {tail(log_path)}")
        time.sleep(0.05)
    if proc.returncode is not None:
        problem = f"exited with code {proc.returncode} while starting"
        raise EmbeddedError(f"{name} {problem}; {tail(log_path)}")


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a server's log, on one line (for an error message)."""
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - 4096))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return f"no log at {path}"
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return f"{path} ends with: {' | '.join(last)}"
