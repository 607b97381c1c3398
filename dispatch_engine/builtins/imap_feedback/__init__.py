"""IMAP feedback: reads the bounce mailbox (DSNs, ARF complaints) and hands each report to
the core's feedback handler, which marks the dispatch `bounced` or `complained` and
suppresses the address (docs/bounces.md).

It also reads each sender's own reply mailbox, when the sender names one (replies.py,
docs/replies.md): replies and auto-replies become feedback events.

Set DISPATCH_FEEDBACK_IMAP_HOST and _USER (and the rest of DISPATCH_FEEDBACK_IMAP_*);
unset, no bounce mailbox is read. It reads in sweeper-role processes only, one at a time per
mailbox (reader.py). Pair it with DISPATCH_BOUNCE_DOMAIN so every email's return path names
its dispatch (VERP, dispatch_engine/consent/verp.py).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from dispatch_engine.plugin import (
    Settings,
    feedback_of,
    hookimpl,
    redis_of,
    reply_intake_of,
    roles_of,
    settings_of,
    verp,
)

from .reader import MailboxReader
from .replies import ReplyReaders
from .settings import ImapFeedbackSettings

SETTINGS = ImapFeedbackSettings  # checked when the process starts
log = logging.getLogger(__name__)
READER = web.AppKey("imap_feedback_reader", MailboxReader)
TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("imap_feedback_task")
REPLY_READERS = web.AppKey("imap_reply_readers", ReplyReaders)  # each sender's reply mailbox
REPLY_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("imap_reply_task")


def reader_for(settings: Settings, app: web.Application) -> MailboxReader | None:
    """The reader of the configured mailbox, or None when none is configured."""
    mailbox = settings_of(ImapFeedbackSettings, settings)
    if not mailbox.enabled:
        return None
    paths = verp.ReturnPaths.of(settings)
    return MailboxReader(mailbox, feedback_of(app), redis_of(app), paths)


@hookimpl(trylast=True)
def startup(settings: Settings, app: web.Application) -> None:
    if "sweeper" not in roles_of(app):
        return
    loop = asyncio.get_running_loop()
    mailbox = settings_of(ImapFeedbackSettings, settings)
    readers = ReplyReaders(reply_intake_of(app), redis_of(app), verp.ReturnPaths.of(settings),
                           mailbox)  # fmt: skip
    app[REPLY_READERS] = readers
    app[REPLY_TASK] = loop.create_task(readers.run(), name="imap-replies")
    reader = reader_for(settings, app)
    if reader is None:
        return
    app[READER] = reader
    app[TASK] = loop.create_task(reader.run(), name="imap-feedback")
    log.info("reading the bounce mailbox %s every %d s", reader.settings.host, reader.poll_s)


@hookimpl(trylast=True)
async def shutdown(settings: Settings, app: web.Application) -> None:
    task = app.get(TASK)
    if task is not None:
        await app[READER].stop(task)
    replies = app.get(REPLY_TASK)
    if replies is not None:
        await app[REPLY_READERS].stop(replies)
