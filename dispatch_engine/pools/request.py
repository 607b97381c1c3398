"""Which sender(s) a schedule request names: `sender` (one), or `senders` (a pool) parsed,
resolved to the owner's senders, and the recipients split over them (capacity.py) before
the COPY writes each row's sender."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..config import Settings
from ..errors import ValidationError
from ..models import Sender
from ..pacing import claim_cap
from ..parsing import whole_number
from ..queue import RedisQueue
from ..store import Store
from .capacity import PacingFrame, interleave, split

MAX_POOL = 50
OFF_LOOP = 10_000  # recipients split on the event loop (4.5 ms); more go to a thread
MAX_REF = 320


def sender_ref(value: Any) -> str | int | None:
    """`sender`: a sender's id (a number) or from address; anything else is a field error."""
    if value is None or value == "":
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return whole_number(value, "sender", minimum=1)
    if not isinstance(value, str) or len(value) > MAX_REF:
        raise ValidationError("sender", "must be a sender's id or from address")
    return value


def parse_senders(value: Any, sender: str | int | None = None) -> tuple[str | int, ...]:
    """`senders`: a list (or a comma-separated line, from a form) of ids or from addresses;
    () when absent; never beside a `sender`. Errors name the item: `senders[2]`."""
    if value is None or value == "" or value == []:
        return ()
    if sender is not None:
        raise ValidationError("senders", "give either sender or senders, not both")
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ValidationError("senders", "must be a list of senders' ids or from addresses")
    if len(value) > MAX_POOL:
        raise ValidationError("senders", f"must name at most {MAX_POOL} senders")
    refs: list[str | int] = []
    for i, item in enumerate(value):
        field = f"senders[{i}]"
        if isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit()):
            refs.append(whole_number(item, field, minimum=1))
        elif isinstance(item, str) and 0 < len(item) <= MAX_REF and "@" in item:
            refs.append(item.strip())
        else:
            raise ValidationError(field, "must be a sender's id or from address")
    return tuple(refs)


async def resolve_pool(store: Store, owner_id: int, refs: Sequence[str | int]) -> list[Sender]:
    """The owner's own senders, not archived, each named once; a 422 names `senders[i]`.
    Another owner's sender is "not yours" exactly as a missing one: nothing is revealed."""
    pool: list[Sender] = []
    seen: dict[int, int] = {}
    for i, ref in enumerate(refs):
        sender = await store.find_sender(owner_id, ref)
        if sender is None:
            raise ValidationError(f"senders[{i}]", f"no sender {ref!r} belongs to you")
        if sender.id in seen:
            raise ValidationError(
                f"senders[{i}]", f"names the same sender as senders[{seen[sender.id]}]"
            )
        seen[sender.id] = i
        pool.append(sender)
    return pool


@dataclass(frozen=True)
class PoolPlan:
    """A pool and its split: `counts[i]` recipients for `senders[i]`, `of_row[n]`: the
    sender id of the n-th recipient (spread over the campaign, capacity.interleave)."""

    senders: list[Sender]
    counts: list[int]
    of_row: list[int]

    @property
    def ids(self) -> list[int]:
        return [s.id for s in self.senders]


async def taken_now(queue: RedisQueue, sender: Sender, now_ms: int, day_ms: int) -> int:
    """What a sender already has to send before this campaign: sent today (its pacing day
    counter, lua/pace.lua) and still queued."""
    keys = queue.shard_of(sender.id)
    today = await queue.redis.get(f"{keys.pacing_prefix}{sender.id}:d:{now_ms // day_ms}")
    return int(today or 0) + await queue.depth(sender.id)


def by_sender(
    sender: Sender, pool: PoolPlan | None, ids: Sequence[int], dues: Sequence[int]
) -> list[tuple[Sender, list[tuple[int, int]]]]:
    """(sender, its (id, due ms)) to enqueue: all on `sender`, or each on its pool sender's."""
    if pool is None:
        return [(sender, list(zip(ids, dues, strict=True)))]
    items: dict[int, list[tuple[int, int]]] = {s.id: [] for s in pool.senders}
    for i, due, sender_id in zip(ids, dues, pool.of_row, strict=True):
        items[sender_id].append((i, due))
    return [(s, items[s.id]) for s in pool.senders if items[s.id]]


async def enqueue_all(
    queue: RedisQueue,
    sender: Sender,
    pool: PoolPlan | None,
    ids: Sequence[int],
    dues: Sequence[int],
    delay_ms: int,
) -> None:
    """A new campaign's ids into Redis, each on its sender's queue with that one's claim cap."""
    for one, items in by_sender(sender, pool, ids, dues):
        gap = max(one.min_gap_ms, delay_ms)
        await queue.enqueue(one.id, items, claim_cap=claim_cap(one.hourly_limit, gap))


async def pool_for(
    store: Store, queue: RedisQueue, settings: Settings | None, owner_id: int, request: Any
) -> PoolPlan | None:
    """The pool a schedule request names (a `campaigns.ScheduleRequest`) and the split of
    its recipients over it; None when it names none."""
    if not request.senders:
        return None
    assert settings is not None, "a pool needs the settings (its pacing days)"
    found = await resolve_pool(store, owner_id, request.senders)
    return await plan_pool(
        queue,
        found,
        len(request.recipients.accepted),
        start_at=request.start_at,
        now=datetime.now(request.start_at.tzinfo),
        day_seconds=settings.day_seconds,
        window_seconds=settings.rate_window_seconds,
        campaign=(request.delay_between_ms, request.hourly_limit, request.daily_limit),
    )


async def plan_pool(
    queue: RedisQueue,
    pool: list[Sender],
    count: int,
    *,
    start_at: datetime,
    now: datetime,
    day_seconds: int,
    window_seconds: int,
    campaign: tuple[int, int | None, int | None],  # gap ms, hourly limit, daily limit
) -> PoolPlan:
    now_ms = int(now.timestamp() * 1000)
    start_ms = max(now_ms, int(start_at.timestamp() * 1000))
    day_ms = day_seconds * 1000
    frame = PacingFrame(start_ms, day_ms, window_seconds * 1000, *campaign)
    same_day = start_ms // day_ms == now_ms // day_ms
    taken = [await taken_now(queue, s, now_ms, day_ms) if same_day else 0 for s in pool]
    counts = split(count, pool, frame, taken)
    if counts is None:
        raise ValidationError("senders", "every sender of the pool is parked: none can send")
    ids = [s.id for s in pool]
    if count <= OFF_LOOP:
        return PoolPlan(pool, counts, [ids[i] for i in interleave(counts)])
    # 100,000 recipients: ~120 ms of sorting, in a thread so the loop keeps serving
    order = await asyncio.to_thread(interleave, counts)
    return PoolPlan(pool, counts, [ids[i] for i in order])
