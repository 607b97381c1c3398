"""DKIM signing cost per email on the hot path: DkimSigner.sign (dkimpy's canonicalisation,
OpenSSL's RSA, the key parsed once) against dkimpy's own `dkim.sign` (pure-Python RSA, the
PEM parsed per call), on an email rendered by CompiledCampaign, best of 5 x 500.

    .venv/bin/python bench/dkim_sign.py [--bits 2048]
"""

from __future__ import annotations

import argparse
import timeit

import dkim

from dispatch_engine.dkim import DkimSigner, generate_key
from dispatch_engine.models import CampaignContent, Sender
from dispatch_engine.render import CompiledCampaign
from dispatch_engine.secretbox import SecretBox


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--number", type=int, default=500)
    args = parser.parse_args()
    box = SecretBox("bench-secret-key-0123456789abcdef")
    pair = generate_key("bench", "example.com", args.bits)
    sender = Sender(1, 1, "news@example.com", "News", None, "capture", {}, 50, 0,
                    dkim_selector=pair.selector, dkim_domain=pair.domain,
                    dkim_private_key=box.seal(pair.private_pem),
                    dkim_public_key=pair.public_b64)  # fmt: skip
    content = CampaignContent(7, 1, 1, "Hello {{ name }}", "Dear {{ name }},\n" + "text " * 400,
                              None, 0, None)  # fmt: skip
    _, raw = CompiledCampaign(content, sender).render("ada@example.com", {"name": "ada"}, "<x@e>")
    signer = DkimSigner(box)
    signer.sign(sender, raw)  # the key is opened and parsed once, before the timing
    pem = pair.private_pem.encode()
    names = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
             b"content-type"]  # fmt: skip
    cases = {
        "DkimSigner.sign (ours)": lambda: signer.sign(sender, raw),
        "dkim.sign (dkimpy alone)": lambda: dkim.sign(
            raw, b"bench", b"example.com", pem, include_headers=names
        ),
    }
    print(f"RSA-{args.bits}, a {len(raw):,}-byte email")
    for label, once in cases.items():
        best = min(timeit.repeat(once, number=args.number, repeat=5)) / args.number
        print(f"{label:<28} {best * 1e6:8.0f} µs/email  ({1 / best:,.0f} emails/s on one core)")


if __name__ == "__main__":
    main()
