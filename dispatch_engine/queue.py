"""The Redis delayed queue: per-sender ZSETs, a ready-senders ZSET, leases with fencing tokens.

Redis holds ids and times only (the email lives in PostgreSQL). Every mutation is one Lua
script from `lua/`, so it is atomic; scripts read Redis' clock (`TIME`), one clock for every
host. Keys of one shard share a hash tag (`dispatch:{q0}:…`), so the queue runs unchanged
on Redis Cluster. See docs/queue.md for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from redis.asyncio import Redis

from .events import WAKE_CHANNEL, Subscription

log = logging.getLogger(__name__)

ENQUEUE_CHUNK = 1000
# An idle claim loop asks Redis at most once per this many seconds. Wake-ups travel by
# pub/sub, and a (re)subscription triggers a claim, so this only bounds a lost PUBLISH.
IDLE_CAP_S = 30.0


def member(dispatch_id: int) -> str:
    """A dispatch id as a ZSET member that sorts like the number: "b10" after "a9".

    Ids due at the same millisecond are popped in member order, so this keeps a campaign's
    order (plain decimal strings would put 10 before 2). It costs one byte.
    """
    digits = str(dispatch_id)
    return chr(96 + len(digits)) + digits


def dispatch_id_of(raw: bytes | str) -> int:
    return int(raw[1:])


def _script(name: str, *, with_refund: bool = False) -> str:
    lua = resources.files("dispatch_engine").joinpath("lua")
    text = lua.joinpath(f"{name}.lua").read_text()
    return lua.joinpath("refund.lua").read_text() + text if with_refund else text


def shard_for(sender_id: int, shards: int) -> ShardKeys:
    """The queue shard of a sender; its pacing keys live there too (one slot, one script)."""
    return ShardKeys(zlib.crc32(str(sender_id).encode()) % shards)


@dataclass(frozen=True)
class ShardKeys:
    """Every key name of one queue shard comes from here."""

    shard: int

    @property
    def prefix(self) -> str:
        return f"dispatch:{{q{self.shard}}}:"

    def key(self, name: str) -> str:
        return self.prefix + name

    def keys(self, *names: str) -> list[str]:
        return [self.prefix + name for name in names]

    @property
    def sender_prefix(self) -> str:
        return self.prefix + "s:"

    @property
    def pacing_prefix(self) -> str:
        """Pacing counters of the shard's senders: `p:<sender>:w:<window>` and so on."""
        return self.prefix + "p:"

    def sender(self, sender_id: int | str) -> str:
        return f"{self.sender_prefix}{sender_id}"


@dataclass(frozen=True)
class Lease:
    dispatch_id: int
    sender_id: int
    token: str
    shard: int


@dataclass(frozen=True)
class ClaimResult:
    leases: list[Lease]
    now_ms: int
    next_due_ms: int | None  # earliest ready time over all shards when nothing was claimed


@dataclass(frozen=True)
class Settlement:
    """What to do with a lease: ack it, drop it (finished unsent: its pacing grant is
    refunded), retry it at `due_ms`, or give it back unchanged."""

    lease: Lease
    action: str  # "ack" | "drop" | "retry" | "release"
    due_ms: int | None = None


class RedisQueue:
    def __init__(self, redis: Redis, *, shards: int = 1, lease_ms: int = 60_000) -> None:
        self.redis = redis
        self.shards = [ShardKeys(n) for n in range(shards)]
        self.lease_ms = lease_ms
        self._claim = redis.register_script(_script("claim"))
        self._enqueue = redis.register_script(_script("enqueue"))
        self._settle = redis.register_script(_script("settle", with_refund=True))
        self._defer = redis.register_script(_script("defer_sender"))
        self._unpark = redis.register_script(_script("unpark_sender"))
        self._reap = redis.register_script(_script("reap", with_refund=True))
        self._renew = redis.register_script(_script("renew"))
        self._remove = redis.register_script(_script("remove"))
        self._next_shard = 0

    def shard_of(self, sender_id: int) -> ShardKeys:
        return self.shards[shard_for(sender_id, len(self.shards)).shard]

    async def enqueue(
        self, sender_id: int, items: Iterable[tuple[int, int]], *, claim_cap: int = 0
    ) -> int:
        """Queue (dispatch_id, due_ms) pairs of one sender; ids already queued or leased stay."""
        keys = self.shard_of(sender_id)
        script_keys = [*keys.keys("ready", "lease", "resume", "caps"), keys.sender(sender_id)]
        added = 0
        chunk: list[str | int] = []
        for dispatch_id, due_ms in items:
            chunk += (member(dispatch_id), due_ms)
            if len(chunk) >= 2 * ENQUEUE_CHUNK:
                added += await self._enqueue(
                    keys=script_keys, args=[sender_id, claim_cap, WAKE_CHANNEL, *chunk]
                )
                chunk = []
        if chunk:
            added += await self._enqueue(
                keys=script_keys, args=[sender_id, claim_cap, WAKE_CHANNEL, *chunk]
            )
        return added

    async def claim(self, limit: int) -> ClaimResult:
        """Lease up to `limit` due ids, trying the shards in turn until one has work."""
        next_due: int | None = None
        now_ms = 0
        for _ in range(len(self.shards)):
            keys = self.shards[self._next_shard]
            self._next_shard = (self._next_shard + 1) % len(self.shards)
            raw: list[Any] = await self._claim(
                keys=keys.keys("ready", "leases", "lease", "token", "resume", "caps"),
                args=[limit, self.lease_ms, keys.sender_prefix],
            )
            now_ms = int(raw[0])
            if len(raw) > 3:
                token = str(int(raw[2]))
                leases = [
                    Lease(dispatch_id_of(raw[i]), int(raw[i + 1]), token, keys.shard)
                    for i in range(3, len(raw), 2)
                ]
                return ClaimResult(leases, now_ms, None)
            due = int(float(raw[1]))
            if due >= 0 and (next_due is None or due < next_due):
                next_due = due
        return ClaimResult([], now_ms, next_due)

    async def settle(self, settlements: Sequence[Settlement]) -> list[int]:
        """Ack / retry / release leases in one call per shard; returns ids refused as stale."""
        by_shard: dict[int, list[Any]] = {}
        for s in settlements:
            due = {"ack": "ack", "drop": "drop", "release": ""}.get(s.action, s.due_ms)
            by_shard.setdefault(s.lease.shard, []).extend(
                (member(s.lease.dispatch_id), s.lease.token, due)
            )
        refused: list[int] = []
        for shard, args in by_shard.items():
            keys = self.shards[shard]
            raw = await self._settle(
                keys=keys.keys("ready", "leases", "lease", "resume", "stalls", "grants"),
                args=[keys.sender_prefix, WAKE_CHANNEL, *args],
            )
            refused.extend(dispatch_id_of(x) for x in raw)
        return refused

    async def ack(self, leases: Sequence[Lease]) -> list[int]:
        return await self.settle([Settlement(lease, "ack") for lease in leases])

    async def drop(self, leases: Sequence[Lease]) -> list[int]:
        """Finish leases that were granted but will not be sent (their grants go back)."""
        return await self.settle([Settlement(lease, "drop") for lease in leases])

    async def retry(self, lease: Lease, due_ms: int) -> list[int]:
        return await self.settle([Settlement(lease, "retry", due_ms)])

    async def release(self, leases: Sequence[Lease]) -> list[int]:
        return await self.settle([Settlement(lease, "release") for lease in leases])

    async def defer_sender(self, sender_id: int, until_ms: int) -> None:
        """Park a sender: none of its ids is claimed before `until_ms`."""
        keys = self.shard_of(sender_id)
        await self._defer(
            keys=[*keys.keys("ready", "resume"), keys.sender(sender_id)],
            args=[sender_id, until_ms],
        )

    async def unpark_sender(self, sender_id: int) -> None:
        """End any parking of a sender now (a pacing policy parks it again if it must)."""
        keys = self.shard_of(sender_id)
        await self._unpark(
            keys=[*keys.keys("ready", "resume"), keys.sender(sender_id)],
            args=[sender_id, WAKE_CHANNEL],
        )

    async def reap(self, *, batch: int = 1000, max_stalls: int = 5) -> tuple[int, list[int]]:
        """Return expired leases to their queues; ids stalled too often come back as dead."""
        reaped = 0
        dead: list[int] = []
        for keys in self.shards:
            while True:
                raw = await self._reap(
                    keys=keys.keys("ready", "leases", "lease", "resume", "stalls", "grants"),
                    args=[keys.sender_prefix, batch, max_stalls, WAKE_CHANNEL],
                )
                count = int(raw[0])
                reaped += count
                dead.extend(dispatch_id_of(x) for x in raw[1:])
                if count < batch:
                    break
        return reaped, dead

    async def renew(self, leases: Sequence[Lease]) -> list[int]:
        """Push back the expiry of leases still held; returns ids this worker no longer holds."""
        by_shard: dict[int, list[Any]] = {}
        for lease in leases:
            by_shard.setdefault(lease.shard, []).extend((member(lease.dispatch_id), lease.token))
        lost: list[int] = []
        for shard, args in by_shard.items():
            keys = self.shards[shard]
            raw = await self._renew(keys=keys.keys("leases", "lease"), args=[self.lease_ms, *args])
            lost.extend(dispatch_id_of(x) for x in raw)
        return lost

    async def remove(self, sender_id: int, ids: Sequence[int]) -> int:
        """Take queued ids of one sender out of Redis (leased ones finish or are dropped)."""
        keys = self.shard_of(sender_id)
        removed = 0
        for start in range(0, len(ids), ENQUEUE_CHUNK):
            removed += await self._remove(
                keys=[*keys.keys("ready", "resume"), keys.sender(sender_id)],
                args=[sender_id, *(member(i) for i in ids[start : start + ENQUEUE_CHUNK])],
            )
        return removed

    async def forget_campaign_slots(self, sender_id: int, campaign_id: int) -> None:
        """Drop the places a campaign's capped emails reserved in later windows (pace.lua)."""
        prefix = f"{self.shard_of(sender_id).pacing_prefix}{sender_id}:c:{campaign_id}:"
        await self.redis.delete(f"{prefix}next", f"{prefix}dnext")

    async def sender_state(self, sender_id: int) -> dict[str, int | None]:
        """Queue depth, earliest due time and parked-until of one sender (for /api/stats)."""
        keys = self.shard_of(sender_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.sender(sender_id))
            pipe.zrange(keys.sender(sender_id), 0, 0, withscores=True)
            pipe.hget(keys.key("resume"), str(sender_id))
            depth, head, resume = await pipe.execute()
        seconds, micros = await self.redis.time()  # not in the pipeline: clusters refuse it
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        parked = int(resume) if resume is not None and int(resume) > now_ms else None
        return {
            "queue_depth": int(depth),
            "next_due_ms": int(head[0][1]) if head else None,
            "parked_until_ms": parked,
            "now_ms": now_ms,
        }

    async def deepest_senders(self, limit: int = 50) -> list[tuple[int, int]]:
        """(sender id, queued emails) of up to `limit` senders with work, deepest first."""
        depths: list[tuple[int, int]] = []
        for keys in self.shards:
            raw = await self.redis.zrange(keys.key("ready"), 0, 4 * limit - 1)
            senders = [int(cast(bytes, sender)) for sender in raw]
            async with self.redis.pipeline(transaction=False) as pipe:
                for sender in senders:
                    pipe.zcard(keys.sender(sender))
                counts = await pipe.execute()
            depths += [(s, int(n)) for s, n in zip(senders, counts, strict=True)]
        return sorted(depths, key=lambda pair: -pair[1])[:limit]

    async def depth(self, sender_id: int) -> int:
        return int(await self.redis.zcard(self.shard_of(sender_id).sender(sender_id)))

    async def leased_count(self) -> int:
        return sum([int(await self.redis.zcard(k.key("leases"))) for k in self.shards])


class Waker:
    """How a claim loop sleeps: until the next due time, an earlier enqueue, or `set()`.

    A claim that found nothing says when the earliest queued id falls due (on Redis' clock);
    `until_due` sleeps that long, `idle_cap_s` at most. An enqueue, retry or reap that makes
    work due sooner publishes its time on WAKE_CHANNEL, and `heard` cuts the sleep short
    when that time is earlier than the one the loop sleeps until.
    """

    def __init__(self, *, idle_cap_s: float = IDLE_CAP_S) -> None:
        self.idle_cap_s = idle_cap_s
        self.stopped = False
        self._event = asyncio.Event()
        self._wake_at_ms = 0.0

    def set(self) -> None:
        self._event.set()

    def stop(self) -> None:
        self.stopped = True
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`; `set()` or `stop()` end it sooner."""
        self._event.clear()
        if seconds > 0 and not self.stopped:  # stop() may have set the event just before
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), seconds)

    async def until_due(self, result: ClaimResult) -> None:
        """After an empty claim: sleep until its next due time (or the idle cap)."""
        if result.next_due_ms is None:
            delay = self.idle_cap_s
        else:
            delay = min(self.idle_cap_s, max(0.0, (result.next_due_ms - result.now_ms) / 1000))
        self._wake_at_ms = result.now_ms + delay * 1000
        await self.wait(delay)

    def heard(self, raw: bytes) -> None:
        """A WAKE_CHANNEL message: work falls due at `raw` (ms), maybe before our timer."""
        if float(raw) < self._wake_at_ms:
            self._event.set()

    def listen_on(self, subscription: Subscription) -> None:
        """Hear WAKE_CHANNEL there; each (re)subscription claims what it may have missed."""
        subscription.listen(WAKE_CHANNEL, self.heard, on_subscribed=self.set)
