"""DKIM (RFC 6376) for senders: keys made and sealed per sender, signing of each rendered
email before any transport sends it, and the DNS checks (SPF, DKIM, DMARC) of its domain."""

from .keys import DkimKeyPair, dns_record, generate_key, txt_strings
from .signer import SIGNED_HEADERS, DkimSigner

__all__ = ["SIGNED_HEADERS", "DkimKeyPair", "DkimSigner", "dns_record", "generate_key",
           "txt_strings"]  # fmt: skip
