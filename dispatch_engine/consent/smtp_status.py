"""Which permanent SMTP refusals are bounces: the recipient's address is bad (a hard bounce,
suppressed at once), its mailbox is full (a soft bounce, counted), or the refusal is not the
recipient's fault at all (our message, our reputation, our account: the email fails, nobody
is suppressed). docs/bounce-policy.md has the table.

The RFC 3463 enhanced status decides where the server gives one (RFC 2034): it names the
subject of the failure, which the basic code does not. Without one, only the basic codes
RFC 5321 reserves for the mailbox at RCPT count (550, 551, 553; 521/556 of RFC 7504), and a
refusal at DATA or at MAIL never does: a 550 to the content is as often a spam filter's.
"""

from __future__ import annotations

from ..transport import PermanentReply
from .feedback import FeedbackKind

# X.1.x addressing and X.2.x mailbox status: the recipient's address or mailbox.
_HARD = frozenset(
    {
        "5.1.0",  # other address status
        "5.1.1",  # bad destination mailbox address (no such user)
        "5.1.2",  # bad destination system address (no such domain)
        "5.1.3",  # bad destination mailbox address syntax
        "5.1.4",  # destination mailbox address ambiguous
        "5.1.6",  # destination mailbox has moved, no forwarding address
        "5.1.10",  # RFC 7505: the recipient's domain has a null MX
        "5.2.0",  # other or undefined mailbox status
        "5.2.1",  # mailbox disabled, not accepting messages
        "5.7.13",  # user account disabled (IANA registry)
        "5.7.17",  # RFC 7293: mailbox owner has changed
        "5.7.18",  # RFC 7293: domain owner has changed
    }
)
# The mailbox exists but cannot take mail now: counted toward DISPATCH_SOFT_BOUNCE_LIMIT.
_SOFT = frozenset(
    {
        "5.2.2",  # mailbox full
        "5.3.1",  # mail system full
    }
)
# Without an enhanced status: the basic codes that mean the mailbox, when they answer RCPT.
_HARD_AT_RCPT = frozenset({550, 551, 553, 521, 556})
_SOFT_AT_RCPT = frozenset({552})  # RFC 5321 §4.5.3.1.10: "exceeded storage allocation"


def bounce_of(reply: PermanentReply) -> FeedbackKind | None:
    """HARD_BOUNCE, SOFT_BOUNCE, or None when the refusal is not the recipient's (5.7.x
    policy, 5.3.4 / 5.2.3 size, 5.5.x / 5.6.x our syntax or content, 5.1.7 / 5.1.8 our
    sender address, any refusal of MAIL FROM)."""
    if reply.stage == "mail":
        return None
    if reply.enhanced is not None:
        if reply.enhanced in _HARD:
            return FeedbackKind.HARD_BOUNCE
        return FeedbackKind.SOFT_BOUNCE if reply.enhanced in _SOFT else None
    if reply.stage != "rcpt":
        return None
    if reply.code in _HARD_AT_RCPT:
        return FeedbackKind.HARD_BOUNCE
    return FeedbackKind.SOFT_BOUNCE if reply.code in _SOFT_AT_RCPT else None
