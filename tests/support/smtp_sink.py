"""A real SMTP server (aiosmtpd) on loopback that records what it receives and can be told
to answer some recipients with an error a number of times."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sink:
    messages: list[bytes] = field(default_factory=list)
    # recipient -> (reply, how many times); e.g. "451 4.7.1 try later"
    faults: dict[str, tuple[str, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    data_delay_s: float = 0.0  # hold every DATA this long: sends stay in flight
    data_started: int = 0
    fail_ratio: float = 0.0  # answer this share of messages with a 451
    drop_ratio: float = 0.0  # drop the connection instead of answering this share
    rejected: int = 0
    dropped: int = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        with self.lock:
            reply, times = self.faults.get(address, ("", 0))
            if times > 0:
                self.faults[address] = (reply, times - 1)
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.data_started += 1
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        roll = random.random()
        if roll < self.drop_ratio:
            with self.lock:
                self.dropped += 1
            server.transport.close()  # the client sees the connection lost mid-DATA
            return "421 4.4.2 connection dropped"
        if roll < self.drop_ratio + self.fail_ratio:
            with self.lock:
                self.rejected += 1
            return "451 4.3.0 temporary local problem, try again"
        with self.lock:
            self.messages.append(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"

    def message_ids(self) -> Counter[str]:
        with self.lock:
            return Counter(str(message_from_bytes(m)["Message-ID"]) for m in self.messages)


class SmtpSink:
    def __init__(self, authenticator: Any = None) -> None:
        self.sink = Sink()
        self.port = free_port()
        auth: dict[str, Any] = {}
        if authenticator is not None:  # AUTH over plain TCP is fine on loopback, in tests
            auth = {"authenticator": authenticator, "auth_require_tls": False}
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port, **auth)

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
