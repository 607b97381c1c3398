"""A pool's emails are sent by several senders: one compiled campaign, a variant per sender
(`CompiledCampaign.as_sender`: its From, Reply-To, transport), kept on the campaign."""

from __future__ import annotations

from collections.abc import Mapping

from ..models import DispatchJob, Sender
from ..render import CompiledCampaign


def for_sender(compiled: CompiledCampaign, sender: Sender) -> CompiledCampaign:
    """The campaign as `sender` sends it; made once, again when that sender changes."""
    if sender == compiled.sender:
        return compiled
    variant = compiled.variants.get(sender.id)
    if variant is None or variant.sender != sender:
        variant = compiled.variants[sender.id] = compiled.as_sender(sender)
    return variant


def for_job(compiled: Mapping[int, CompiledCampaign], job: DispatchJob) -> CompiledCampaign:
    """What this email is sent with: its own sender's (prepared by `for_sender`)."""
    base = compiled[job.campaign_id]
    return base if job.sender_id == base.sender.id else base.variants[job.sender_id]
