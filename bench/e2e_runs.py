"""The runs of bench/e2e.py: one campaign through dispatch-engine into a sink (`SinkRuns.e2e`),
the bare aiosmtplib loop beside it (`SinkRuns.ceiling`), and the idle window after them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import harness
import machine
import sinks
from harness import Engine, Servers
from machine import Cpu, CpuMeters
from sinks import Sink

SUBJECT = "Benchmark {{ email }}"
BODY = "Hello {{ email }},\n\nthis is one of the benchmark's emails.\n\n-- \nDispatch Engine\n"
DEFAULT_POOL = 8  # the package's SMTP_POOL_SIZE default


@dataclass
class Run:
    n: int
    seconds: float  # just before the POST (or the first send) → last message received
    cpu: dict[str, float]
    post_s: float = float("nan")
    lag_p50_ms: float = float("nan")
    lag_p99_ms: float = float("nan")
    lag_min_ms: float = float("nan")
    record_s: float = float("nan")  # POST → every dispatch recorded `sent`
    duplicates: int = 0
    missing: int = 0
    record_batches: float = float("nan")  # group commits (one dispatch:events each)
    redis_by_command: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def others_share(self) -> float:
        return self.cpu["others"] / self.cpu["wall"]


class EventCounter:
    """Counts the worker's group commits (each publishes one dispatch:events message) and
    every client's Redis commands (INFO commandstats, commands inside scripts included)."""

    def __init__(self, redis_url: str) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(redis_url)
        self.batches = 0
        self.by_command: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventCounter:
        import orjson

        pubsub = self.redis.pubsub()
        await pubsub.subscribe("dispatch:events")
        self._stats0 = await self.redis.info("commandstats")

        async def listen() -> None:
            async for message in pubsub.listen():
                data = message["data"] if message.get("type") == "message" else b"{}"
                if orjson.loads(data).get("type") == "dispatches":
                    self.batches += 1

        self._task = asyncio.create_task(listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        after = await self.redis.info("commandstats")
        calls = {
            name.removeprefix("cmdstat_"): int(v["calls"])
            - int(self._stats0.get(name, {}).get("calls", 0))
            for name, v in after.items()
        }
        calls["info"] = calls.get("info", 1) - 1  # less our own
        self.by_command = {k: v for k, v in calls.items() if v > 0}
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()


@dataclass
class SinkResults:
    kind: str
    name: str
    e2e: list[Run]
    ceilings: list[Run]
    discarded: list[Run]
    problems: list[str]
    idle: tuple[float, Counter[str]] | None = None


def prerender(n: int) -> list[tuple[str, str, bytes]]:
    """N messages rendered the way the worker renders them (same headers and body)."""
    from dispatch_engine.message_ids import idempotency_key, message_id_for
    from dispatch_engine.models import CampaignContent, Sender
    from dispatch_engine.render import CompiledCampaign

    sender = Sender(1, 1, "bench@example.com", "", None, "smtp", {}, 10_000_000, 0)
    content = CampaignContent(1, 1, 1, SUBJECT, BODY, None, 0, None)
    compiled = CompiledCampaign(content, sender)
    out = []
    for i in range(n):
        rcpt = f"ceiling-{i}@example.com"
        mid = message_id_for(idempotency_key(1, rcpt, i), sender.from_address)
        out.append((sender.from_address, rcpt, compiled.render(rcpt, {}, mid)[1]))
    return out


class SinkRuns:
    """The runs against one sink: dispatch-engine's (`e2e`) and the bare loop's (`ceiling`),
    each read by its own CPU meters."""

    def __init__(
        self, args: argparse.Namespace, srv: Servers, engine: Engine, token: str, sink: Sink,
        kind: str, http: Any, db: Any,
    ) -> None:  # fmt: skip
        self.args, self.srv, self.engine, self.token = args, srv, engine, token
        self.sink, self.kind, self.http, self.db = sink, kind, http, db
        self.pool = args.connections or DEFAULT_POOL
        common = {
            "postgres": Cpu([srv.postgres_pid], tree=True),
            "redis": Cpu([srv.redis_pid]),
            "sink": Cpu([sink.proc.pid], tree=True),
        }
        script = {"bench script": Cpu([os.getpid()])}
        self.engine_meters = CpuMeters(
            {"dispatch-engine": Cpu([engine.proc.pid]), **common, **script}
        )
        # The bare loop runs in this script: here the script is the sender.
        self.ceiling_meters = CpuMeters({"dispatch-engine": Cpu([]), **common, **script})

    async def e2e(self, n: int, tag: str) -> Run:
        """One POST of `n` recipients due now, until every dispatch is recorded `sent`."""
        payload = {
            "subject": SUBJECT,
            "body": BODY,
            "recipients": [f"{tag}-{i}@example.com" for i in range(n)],
        }
        self.sink.take()
        async with EventCounter(self.srv.redis_url) as events:
            self.engine_meters.start()
            t0 = time.time()
            answer = await harness.schedule(self.http, self.engine.url, self.token, payload)
            post_s = time.time() - t0
            campaign_id = int(answer["campaign"]["id"])
            await harness.wait_all_sent(self.db, campaign_id, n, max(120.0, n / 20))
            record_s = time.time() - t0
            cpu = self.engine_meters.stop()
        records = self.sink.take()
        rows = await self.db.fetch(
            "SELECT message_id, scheduled_at FROM dispatches WHERE campaign_id = $1", campaign_id
        )
        got = sinks.received_lags(records, rows)
        return Run(
            n=n,
            seconds=got.last - t0,
            cpu=cpu,
            post_s=post_s,
            lag_p50_ms=harness.percentile(got.lags_ms, 0.50),
            lag_p99_ms=harness.percentile(got.lags_ms, 0.99),
            lag_min_ms=min(got.lags_ms),
            record_s=record_s,
            duplicates=got.duplicates,
            missing=got.missing,
            record_batches=events.batches,
            redis_by_command=events.by_command,
        )

    async def ceiling(self, n: int) -> Run:
        """A bare aiosmtplib loop: as many clients as the pool, pre-rendered bytes, nothing else."""
        import aiosmtplib

        messages = prerender(n)
        clients = [
            aiosmtplib.SMTP(
                hostname="127.0.0.1", port=self.sink.port, use_tls=False, start_tls=False
            )
            for _ in range(self.pool)
        ]
        for client in clients:  # opened before the clock, as the transport's pool reuses them
            await client.connect()
        self.sink.take()
        self.ceiling_meters.start()
        t0 = time.time()

        async def pump(client: aiosmtplib.SMTP, share: list[tuple[str, str, bytes]]) -> None:
            for mail_from, rcpt, raw in share:
                await client.sendmail(mail_from, [rcpt], raw)

        await asyncio.gather(*(pump(c, messages[i :: self.pool]) for i, c in enumerate(clients)))
        cpu = self.ceiling_meters.stop()
        records = self.sink.take()
        for client in clients:
            await client.quit()
        return Run(n=n, seconds=max(at for _, at in records) - t0, cpu=cpu)

    async def warm_up(self) -> None:
        """Untimed: a first campaign and a first bare loop (--warmup emails)."""
        if not self.args.warmup:
            return
        print(f"[{self.kind}] warm-up: {self.args.warmup} emails (excluded)…", file=sys.stderr)
        await self.e2e(self.args.warmup, f"{self.kind}-w")
        await self.ceiling(min(self.args.warmup, self.args.n))

    async def pair(self, attempt: int, discarded: list[Run]) -> tuple[Run, Run]:
        """(ceiling, e2e) of one repeat, redone (--retries) while others' load was too high;
        the e2e runs redone go to `discarded`."""
        args = self.args
        for retry in range(args.retries + 1):
            machine.wait_until_idle(args.max_others, args.max_wait)
            c = await self.ceiling(args.n)
            await asyncio.sleep(0.5)
            r = await self.e2e(args.n, f"{self.kind}-r{attempt}-{retry}")
            noisy = max(r.others_share, c.others_share) > args.max_others
            print(
                f"  [{self.kind}] run {attempt + 1}/{args.repeat}: ceiling {c.rate:,.0f}/s, "
                f"e2e {r.rate:,.0f}/s (POST {r.post_s:.2f} s, lag p50 "
                f"{r.lag_p50_ms:,.0f} ms p99 {r.lag_p99_ms:,.0f} ms, dispatch-engine CPU "
                f"{r.cpu['dispatch-engine']:.2f} s, others {r.cpu['others']:.2f} s)"
                + (" — noisy, redone" if noisy and retry < args.retries else ""),
                file=sys.stderr,
            )
            if not noisy or retry == args.retries:
                break
            discarded.append(r)
        return c, r


async def idle_commands(redis_url: str, seconds: float) -> tuple[float, Counter[str]] | None:
    """Commands/s (and by name) that clients send Redis while dispatch-engine has nothing to do."""
    if seconds <= 0:
        return None
    await asyncio.sleep(1.0)  # let the last records and acks land
    seen = await harness.client_commands(redis_url, seconds)
    return seen.total() / seconds, seen
