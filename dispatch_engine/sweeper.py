"""Recovery: put back into Redis what PostgreSQL says is queued, and reap expired leases.

PostgreSQL is the truth and Redis may lose everything. Only one sweeper acts at a time (a
Redis lock with expiry); a full re-queue runs at start and whenever Redis lost its marker.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from redis.asyncio import Redis

from .metrics import Metrics
from .pools.rotation import Rotation
from .queue import RedisQueue
from .redis_keys import SWEEPER_LEADER_KEY, SWEEPER_MARKER_KEY
from .requeue import requeue
from .store import Store

log = logging.getLogger(__name__)

# One hash slot, so one script reads both (in a cluster too).
OUTBOX_GRACE_S = 5.0
HOUSEKEEPING_EVERY_S = 3600.0  # the scheduling process itself queues within this time

# Take or renew the leader lock and, for the leader, check the marker: one command per
# pass, so an idle process costs Redis little. 0: not the leader; 1: leader; 2: leader, and
# Redis lost its data (the marker is gone).
_TICK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
return 2 - redis.call('EXISTS', KEYS[2])
"""
NOT_LEADER, LEADER, LEADER_DATA_LOST = 0, 1, 2


class Sweeper:
    def __init__(
        self,
        store: Store,
        queue: RedisQueue,
        redis: Redis,
        *,
        interval_s: float,
        max_stalls: int,
        metrics: Metrics | None = None,
        rotation: Rotation | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.rotation = rotation  # pools: senders leaving the rotation (pools/rotation.py)
        self.store = store
        self.queue = queue
        self.redis = redis
        self.interval_s = interval_s
        self.max_stalls = max_stalls
        self.identity = secrets.token_hex(8)
        self._tick = redis.register_script(_TICK)
        self._housekept_at = -HOUSEKEEPING_EVERY_S
        self.leader = False  # held the leader lock at the last pass (the sequencer asks)

    async def tick(self) -> int:
        """NOT_LEADER, LEADER or LEADER_DATA_LOST; the lock outlives three missed passes."""
        ttl_ms = int(self.interval_s * 3000)
        return int(
            await self._tick(
                keys=[SWEEPER_LEADER_KEY, SWEEPER_MARKER_KEY], args=[self.identity, ttl_ms]
            )
        )

    async def sweep(self, *, full: bool = False) -> tuple[int, int]:
        """One pass: reap expired leases; `full` re-queues everything (start, Redis lost data)."""
        reaped, dead = await self.queue.reap(max_stalls=self.max_stalls)
        self.metrics.lease_reaps.inc(reaped)
        if dead:
            reason = f"stalled: its worker stopped responding {self.max_stalls + 1} times"
            await self.store.fail_dispatches(dead, reason)
        requeued = 0
        # Campaigns a process committed but died before queueing (the outbox marker).
        for campaign_id in await self.store.campaigns_not_enqueued(OUTBOX_GRACE_S):
            requeued += await requeue(self.store, self.queue, campaign_id=campaign_id)
            await self.store.mark_enqueued(campaign_id, True)
            log.info("queued campaign %d that its process left unqueued", campaign_id)
        if full:
            requeued += await requeue(self.store, self.queue)
            await self.redis.set(SWEEPER_MARKER_KEY, "1")
            if requeued:
                log.info("recovery re-queued %d dispatches from PostgreSQL", requeued)
        self.metrics.requeued.inc(requeued)
        if self.rotation is not None:
            try:
                await self.rotation.run()
            except Exception:  # idempotent: the next pass finishes it
                log.warning("moving recipients off senders that left a pool failed", exc_info=True)
        if time.monotonic() - self._housekept_at >= HOUSEKEEPING_EVERY_S:
            self._housekept_at = time.monotonic()
            pruned = await self.store.prune_sessions()
            if pruned:
                log.info("deleted %d expired or revoked dashboard sessions", pruned)
        return reaped, requeued

    async def run(self) -> None:
        # A process that died between its COPY and its enqueue left rows only in PostgreSQL.
        full = True
        while True:
            try:
                state = await self.tick()
                self.leader = state != NOT_LEADER
                if state != NOT_LEADER:
                    await self.sweep(full=full or state == LEADER_DATA_LOST)
                    full = False
            except Exception:
                log.warning("sweep failed; trying again", exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def release(self) -> None:
        if await self.redis.get(SWEEPER_LEADER_KEY) == self.identity.encode():
            await self.redis.delete(SWEEPER_LEADER_KEY)
