"""The worker: a pipeline of stages an email passes through, one module each, in order:
claim.py → prepare.py → pace.py → begin.py → send.py → record.py → settle.py.

leases.py owns the leases in flight; share.py the fair share of send slots per owner;
sender_health.py what a refused login does to a sender; pool.py wires the stages up.
The stages log as `dispatch_engine.worker`, the logger name from before the split.
"""

from .deps import WorkerDeps
from .leases import Leases
from .pool import WorkerPool
from .send import retry_delay_s

__all__ = ["Leases", "WorkerDeps", "WorkerPool", "retry_delay_s"]
