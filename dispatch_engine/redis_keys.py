"""Every Redis key outside the queue's shards, by what it holds.

The queue's keys (and the pacing counters beside them) carry their shard's hash tag
(`dispatch:{q<N>}:…`) and come from `queue.ShardKeys`; the pub/sub channels are in
`events.py`. Redis holds only what PostgreSQL can rebuild, or what may be lost (a login in
progress starts again).
"""

from __future__ import annotations

# The sweeper's: one hash slot (the `{sweeper}` tag), so one script reads both in a cluster.
SWEEPER_LEADER_KEY = "dispatch:{sweeper}:leader"  # the acting sweeper's identity, with expiry
SWEEPER_MARKER_KEY = "dispatch:{sweeper}:synced"  # gone after FLUSHALL or a restart without
# persistence: the sweeper then re-queues everything from PostgreSQL.

LOGIN_FLOW_PREFIX = "auth:flow:"  # + SHA-256(browser, state): one login in progress, expiring


def login_flow_key(digest: str) -> str:
    """The key of one login in progress (`auth.LoginFlows`)."""
    return LOGIN_FLOW_PREFIX + digest


# The imap_feedback plugin's (it imports only dispatch_engine.plugin, so it names its own):
# `dispatch:{feedback}:imap:<digest of the mailbox>`, the reader's identity, with expiry.
