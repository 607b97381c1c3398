"""The SMTP sinks the end-to-end benchmarks send to, and matching what they received.

- `PostfixSink` (Postfix's C `smtp-sink`, one file per message on tmpfs) and `AiosmtpdSink`
  (pure Python, its own process): both give (Message-ID, received at) per message;
- `start_sink` picks one by name (`SINKS`); `received_lags` matches a sink's records with
  the dispatches of a campaign.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness import free_port, stop_process

SMTP_SINK = Path("/usr/sbin/smtp-sink")
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
SINKS = ("smtp-sink", "aiosmtpd")


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
