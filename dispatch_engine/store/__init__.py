"""Every SQL query of Dispatch Engine, one module per concern, one `Store` to call them.

Each state change of a dispatch is one statement guarded by the states it may come from,
so two processes can never both win.
"""

from .accounts import AccountQueries
from .base import NewDispatch, SendOutcome, hash_token
from .campaigns import CampaignQueries
from .delivery import DeliveryQueries
from .feedback import FeedbackQueries
from .listings import ListingQueries
from .policy import PolicyQueries
from .pools import PoolQueries
from .replies import ReplyQueries
from .senders import SenderQueries
from .suppressions import SuppressionQueries


class Store(
    AccountQueries,
    SenderQueries,
    CampaignQueries,
    ListingQueries,
    DeliveryQueries,
    SuppressionQueries,
    FeedbackQueries,
    PolicyQueries,
    PoolQueries,
    ReplyQueries,
):
    """The queries of every module, on one asyncpg pool."""


__all__ = ["NewDispatch", "SendOutcome", "Store", "hash_token"]
