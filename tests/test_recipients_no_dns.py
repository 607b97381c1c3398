"""Validating recipients checks their syntax only: a DNS look-up per address would make
scheduling 100,000 recipients slow and flaky (`recipients.normalize`).

dnspython's default resolver (the one email_validator asks) is pointed at a DNS server on
loopback that answers NXDOMAIN to every question and counts them: an address checked for
deliverability would then be refused, and the question counted."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import pytest

from dispatch_engine.recipients import from_csv, from_json, normalize


class NxdomainServer:
    """A UDP DNS server on loopback: every question gets NXDOMAIN, and is counted."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port: int = self.socket.getsockname()[1]
        self.questions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.socket.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            self.questions += [str(q.name) for q in query.question]
            answer = dns.message.make_response(query)
            answer.set_rcode(dns.rcode.NXDOMAIN)
            answer.flags |= dns.flags.RA
            self.socket.sendto(answer.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


@pytest.fixture
def dns_server() -> Iterator[NxdomainServer]:
    server = NxdomainServer()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], server.port
    saved = dns.resolver.default_resolver
    dns.resolver.default_resolver = resolver
    try:
        yield server
    finally:
        dns.resolver.default_resolver = saved
        server.close()


def test_the_server_answers_as_a_resolver_expects(dns_server: NxdomainServer) -> None:
    """The control: a look-up through the default resolver reaches it and fails."""
    with pytest.raises(dns.resolver.NXDOMAIN):
        dns.resolver.resolve("nowhere.example.com", "MX")
    assert dns_server.questions == ["nowhere.example.com."]


def test_recipients_at_domains_that_do_not_exist_are_accepted_without_a_dns_query(
    dns_server: NxdomainServer,
) -> None:
    # Domains no earlier test checked: the parse's cache of domain checks cannot answer.
    plain, other = (f"d{uuid.uuid4().hex[:12]}.example.com" for _ in range(2))
    assert normalize(f"Ada@{plain}") == f"Ada@{plain}"
    assert [r.email for r in from_csv(f"email\nbob@{other}\n").accepted] == [f"bob@{other}"]
    assert [r.email for r in from_json([f"José@{other}"]).accepted] == [f"José@{other}"]
    assert dns_server.questions == []
