"""Mailbox pools: a campaign sent from several senders (docs/pools.md).

`request.py` reads and checks a schedule request's `senders`; `capacity.py` splits the
recipients over them by what each can still send (limits, warm-up, parking); `rotation.py`
takes a sender out of its pools' rotation (parked, or its bounce or complaint rate over its
threshold) and moves its queued recipients to the others (`store/pools.py` holds the SQL).
"""
