"""Stage 2: leave out suppressed emails and compile the campaigns of a claimed batch; one
campaign's failure is its alone.

An email whose address its owner suppressed after it was scheduled ends `suppressed` here
and never reaches a transport. `prepare_campaign` compiles one campaign's templates (in a
thread); `Prepare` keeps the compiled campaigns of this process (recompiled when their
sender was edited) and fails the emails of a campaign that cannot be prepared, with the
reason, while the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable

from ..models import CampaignContent, DispatchJob, DispatchStatus, Sender
from ..pools.compiled import for_sender
from ..render import CompiledCampaign, TemplateProblem
from ..sequences.compiled import compiled_for
from ..store import SendOutcome, Store
from ..suppressions import address_key, why_suppressed
from .settle import Settle

log = logging.getLogger("dispatch_engine.worker")

CAMPAIGN_CACHE = 1024


async def prepare_campaign(
    content: CampaignContent, sender: Sender | None
) -> CompiledCampaign | str:
    """The compiled campaign, or why it cannot be sent (one line, kept as the emails' error).

    Compiling runs in a thread: at the template size limit it takes a few hundred ms of
    CPU, during which the event loop keeps serving the API and renewing leases."""
    if sender is None:
        return "the campaign's sender no longer exists"
    try:
        return await asyncio.to_thread(compiled_for, content, sender)  # with its steps
    except TemplateProblem as exc:  # names the field: "body: the template cannot be …"
        return f"the campaign cannot be prepared: {exc}"[:1000]
    except Exception as exc:
        return f"the campaign cannot be prepared: {type(exc).__name__}: {exc}"[:1000]


def _sender_of(
    content: CampaignContent, jobs: list[DispatchJob], senders: dict[int, Sender]
) -> Sender | None:
    """The campaign's own sender, or (a pool's batch without it) one of its emails' senders."""
    own = senders.get(content.sender_id)
    if own is not None:
        return own
    return next((senders[j.sender_id] for j in jobs
                 if j.campaign_id == content.id and j.sender_id in senders), None)  # fmt: skip


class Prepare:
    def __init__(self, store: Store, settle: Settle) -> None:
        self.store = store
        self.settle = settle
        self._campaigns: OrderedDict[int, CompiledCampaign] = OrderedDict()
        self._unprepared: OrderedDict[int, str] = OrderedDict()  # campaign id -> why

    async def batch(
        self, jobs: list[DispatchJob]
    ) -> tuple[list[DispatchJob], dict[int, CompiledCampaign], list[DispatchJob]]:
        """(emails that go on, their compiled campaigns, emails finished here: suppressed or
        failed); the caller acks their leases with the batch's other finished ones."""
        suppressed = await self._suppressed(jobs)
        if suppressed:
            gone = {j.id for j in suppressed}
            jobs = [j for j in jobs if j.id not in gone]
        compiled, failed = await self._compiled(jobs)
        if not failed:
            return jobs, compiled, suppressed
        bad = [j for j in jobs if j.campaign_id in failed]
        await self._fail(bad, failed)
        return [j for j in jobs if j.campaign_id not in failed], compiled, suppressed + bad

    async def _suppressed(self, jobs: list[DispatchJob]) -> list[DispatchJob]:
        """Emails whose owner suppressed their address since they were scheduled: they end
        `suppressed`, with the reason, and are never sent. One query per batch (it holds
        many owners' emails); the reasons are read only when some are suppressed."""
        if not jobs:
            return []
        keys = {job.id: (job.owner_id, address_key(job.recipient)) for job in jobs}
        hits = await self.store.suppressed_pairs(keys.values())
        if not hits:
            return []
        reasons: dict[tuple[int, str], str] = {}
        for owner in {owner for owner, _ in hits}:
            found = await self.store.suppressions_among(owner, [e for o, e in hits if o == owner])
            reasons.update({(owner, e): why_suppressed(s) for e, s in found.items()})
        # An address unsuppressed in between (no reason found) is sent as usual.
        gone = [job for job in jobs if keys[job.id] in reasons]
        errors = {job.id: reasons[keys[job.id]] for job in gone}
        marked = set(await self.store.suppress_dispatches(errors))
        await self.settle.announce_failed(
            [
                SendOutcome(
                    j.id,
                    j.idempotency_key,
                    DispatchStatus.SUPPRESSED,
                    j.campaign_id,
                    j.recipient,
                    error=reasons[keys[j.id]],
                )
                for j in gone
                if j.id in marked  # the others finished otherwise meanwhile (cancelled…)
            ]
        )
        return gone

    async def _compiled(
        self, jobs: Iterable[DispatchJob]
    ) -> tuple[dict[int, CompiledCampaign], dict[int, str]]:
        """Compiled campaigns of a batch (recompiled when their sender was edited), and why
        the others cannot be prepared: one campaign's failure is never the batch's."""
        jobs = list(jobs)
        if not jobs:
            return {}, {}
        wanted = {job.campaign_id for job in jobs}
        failed = {cid: self._unprepared[cid] for cid in wanted if cid in self._unprepared}
        senders = await self.store.senders_by_id(list({job.sender_id for job in jobs}))
        missing = [cid for cid in wanted if cid not in self._campaigns and cid not in failed]
        if missing:
            contents = await self.store.campaign_contents(missing)
            for cid in missing:
                content = contents.get(cid)
                prepared = (
                    "the campaign no longer exists"
                    if content is None
                    else await prepare_campaign(content, _sender_of(content, jobs, senders))
                )
                if isinstance(prepared, str):
                    failed[cid] = self._unprepared[cid] = prepared
                    log.warning("campaign %d cannot be sent: %s", cid, prepared)
                else:
                    self._campaigns[cid] = prepared
            while len(self._campaigns) > CAMPAIGN_CACHE:
                self._campaigns.popitem(last=False)
            while len(self._unprepared) > CAMPAIGN_CACHE:
                self._unprepared.popitem(last=False)
        out = {}
        for cid in wanted:
            compiled = self._campaigns.get(cid)
            if compiled is None:
                continue
            fresh = senders.get(compiled.sender.id)
            if fresh is not None and fresh != compiled.sender:
                prepared = await prepare_campaign(compiled.campaign, fresh)
                if isinstance(prepared, str):
                    failed[cid] = prepared
                    continue
                compiled = self._campaigns[cid] = prepared
            out[cid] = compiled
        for job in jobs:  # a pool's emails: each is sent by its own sender (docs/pools.md)
            compiled = out.get(job.campaign_id)
            if compiled is not None and job.sender_id != compiled.sender.id:
                other = senders.get(job.sender_id)
                if other is None:
                    failed[job.campaign_id] = "the campaign's sender no longer exists"
                    out.pop(job.campaign_id)
                else:
                    for_sender(compiled, other)
        return out, failed

    async def _fail(self, jobs: list[DispatchJob], reasons: dict[int, str]) -> None:
        """Fail the emails of campaigns that cannot be prepared, with the reason (hooks,
        metrics and progress as for any failure)."""
        by_reason: dict[str, list[int]] = {}
        for job in jobs:
            by_reason.setdefault(reasons[job.campaign_id], []).append(job.id)
        for reason, ids in by_reason.items():
            await self.store.fail_dispatches(ids, reason)
        await self.settle.announce_failed(
            [
                SendOutcome(
                    j.id,
                    j.idempotency_key,
                    DispatchStatus.FAILED,
                    j.campaign_id,
                    j.recipient,
                    error=reasons[j.campaign_id],
                )
                for j in jobs
            ]
        )
