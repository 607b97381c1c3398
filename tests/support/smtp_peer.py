"""nodemailer's `smtp-server` (npm, tests/peers) started on loopback for a test, and a test CA.

`SmtpPeer` runs tests/peers/smtp_server.mjs: STARTTLS with a certificate from `PrivateCa`
(optional), AUTH required for the users it is given, PIPELINING and SMTPUTF8 announced unless
turned off, and faults the test sets at any time (`set_faults`). Every event the server
prints (auth attempts, received messages, refusals) is collected by a reader thread.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEERS = Path(__file__).parents[1] / "peers"
LAUNCHER = PEERS / "smtp_server.mjs"


class PrivateCa:
    """A private CA and a server certificate for 127.0.0.1/localhost, written under `folder`."""

    def __init__(self, folder: Path, name: str = "Dispatch Engine test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = folder / "ca.pem"
        self.cert_file = folder / "server.pem"
        self.key_file = folder / "server.key"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


class SmtpPeer:
    def __init__(
        self,
        *,
        ca: PrivateCa | None = None,
        users: dict[str, str] | None = None,
        smtputf8: bool = True,
        pipelining: bool = True,
    ) -> None:
        node = shutil.which("node")
        if node is None or not (PEERS / "node_modules" / "smtp-server").is_dir():
            pytest.fail("smtp-server is not installed: run `make test` (npm ci in tests/peers)")
        config: dict[str, Any] = {"users": users, "smtputf8": smtputf8, "pipelining": pipelining}
        if ca is not None:
            config |= {"key": str(ca.key_file), "cert": str(ca.cert_file)}
        self.proc = subprocess.Popen(
            [node, str(LAUNCHER), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=PEERS,
        )
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.wait_for(lambda e: e["event"] == "ready")
        self.port: int = ready["port"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.events.append(json.loads(line))
                self._lock.notify_all()

    def wait_for(self, match: Any, within: float = 30.0) -> dict[str, Any]:
        """The first event (from the start) that `match` accepts; fails after `within` s."""
        deadline = time.monotonic() + within
        with self._lock:
            while True:
                for event in self.events:
                    if match(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no such event from smtp-server: {self.events[-5:]}")
                self._lock.wait(min(left, 0.5))

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == kind]

    def messages(self) -> list[dict[str, Any]]:
        return self.of("message")

    def message_ids(self) -> Counter[str]:
        return Counter(str(m["message_id"]) for m in self.messages())

    def logins(self) -> list[dict[str, Any]]:
        return self.of("auth")

    def set_faults(self, **faults: Any) -> None:
        """Replace the faults (see smtp_server.mjs); returns once the server applied them."""
        self._command({"faults": faults})

    def set_users(self, users: dict[str, str]) -> None:
        """Replace the accounts and their passwords (e.g. a password fixed on the server)."""
        self._command({"users": users})

    def _command(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        acks = len(self.of("ok"))
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        self.wait_for(lambda e: e["event"] == "ok" and len(self.of("ok")) > acks)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the launcher closes the server and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> SmtpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
