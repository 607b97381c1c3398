"""A real DNS server on loopback for the tests: Debian's dnsmasq serving the TXT records a
test gives it (SPF, DKIM, DMARC), and nothing else (no upstream, no /etc/hosts)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.resolver
import pytest

from dispatch_engine.dkim import txt_strings

from .helpers import poll_until
from .smtp_sink import free_port

DNSMASQ = Path("/usr/sbin/dnsmasq")


def _quoted(text: str) -> str:
    assert '"' not in text and "\n" not in text, "a test record needs no quotes"
    return f'"{text}"'


class DnsPeer:
    """`records`: name -> TXT values; a value longer than 255 bytes is served as several
    strings of one record, as a zone would (a 2048-bit DKIM key needs two)."""

    def __init__(self, folder: Path, records: Mapping[str, Sequence[str]]) -> None:
        binary = shutil.which("dnsmasq") or (str(DNSMASQ) if DNSMASQ.exists() else None)
        if binary is None:
            pytest.fail("dnsmasq is not installed: run `make system-deps` (dnsmasq-base)")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = [
            f"port={self.port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv",
            "no-hosts", "log-queries", "log-facility=-", f"pid-file={folder / 'dnsmasq.pid'}",
            "user=", "group=",  # stay the test's own user: the pid file and log stay writable
        ]  # fmt: skip
        # Authoritative for the records' domains: an unknown name under them is NXDOMAIN,
        # as a real zone answers, not REFUSED (there is no upstream to ask)
        zones = {".".join(name.rstrip(".").split(".")[-2:]) for name in records}
        lines += [f"local=/{zone}/" for zone in sorted(zones)]
        for name, values in records.items():
            for value in values:
                strings = ",".join(_quoted(s) for s in txt_strings(value))
                lines.append(f"txt-record={name},{strings}")
        config = folder / "dnsmasq.conf"
        config.write_text("\n".join(lines) + "\n")
        self.log = folder / "dnsmasq.log"
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, "--no-daemon", f"--conf-file={config}"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        poll_until(self._answers, 30, lambda: f"dnsmasq did not answer: {self.log.read_text()}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {self.log.read_text()}")
        query = dns.message.make_query("ready.invalid.", "TXT")
        try:
            dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()

    def __enter__(self) -> DnsPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dkim_dnsfunc(peer: DnsPeer) -> Callable[..., bytes | None]:
    """dkimpy's `dnsfunc`: the TXT record of a name, asked of `peer` (not the system's DNS)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = peer.port

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    return txt
