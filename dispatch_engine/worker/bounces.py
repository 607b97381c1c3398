"""After settle: refusals at RCPT or DATA that are bounces go through the core's feedback
handler (`Feedback.handle`, the one path every reader takes): the event is recorded once,
a hard bounce suppresses the address, a soft one is counted, the hooks fire and the campaign
pauses itself when its rates pass their thresholds.

Only what PostgreSQL has committed comes here (`Settle.recorded`), so the recorder's rule
"never ack an unrecorded send" holds. The handler runs in its own task off the recorder's
path: a batch with many bounces does not hold up the next commit. Each event's fingerprint
is `smtp:<dispatch id>`, so a retry after an outage changes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging

from ..consent.feedback import Feedback, FeedbackEvent, FeedbackKind
from ..store import SendOutcome

log = logging.getLogger("dispatch_engine.worker")

BATCH = 500


def event_of(outcome: SendOutcome) -> FeedbackEvent:
    assert outcome.bounce is not None
    return FeedbackEvent(
        kind=FeedbackKind(outcome.bounce),
        source="smtp",
        fingerprint=f"smtp:{outcome.dispatch_id}",
        dispatch_id=outcome.dispatch_id,
        detail=(outcome.error or "")[:1000],
    )


class SyncBounces:
    def __init__(self, feedback: Feedback) -> None:
        self.feedback = feedback
        self.events: asyncio.Queue[FeedbackEvent] = asyncio.Queue()
        self.stopping = False  # then an outage gives up after a few tries: logged

    def recorded(self, outcomes: list[SendOutcome]) -> None:
        """Committed outcomes; the bounces among them are handled next, in order."""
        for outcome in outcomes:
            if outcome.bounce is not None:
                self.events.put_nowait(event_of(outcome))

    async def run(self) -> None:
        while True:
            batch = [await self.events.get()]
            while len(batch) < BATCH and not self.events.empty():
                batch.append(self.events.get_nowait())
            try:
                await self._handle(batch)
            finally:
                for _ in batch:
                    self.events.task_done()

    async def _handle(self, batch: list[FeedbackEvent]) -> None:
        delay = 0.1
        while True:
            try:
                await self.feedback.handle(batch)
                return
            except Exception:  # PostgreSQL away: the events are idempotent, try again
                if self.stopping and delay > 2:
                    log.error("could not record %d bounces before stopping", len(batch))
                    return
                log.warning("handling %d bounces failed; retrying", len(batch), exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
