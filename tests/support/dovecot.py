"""A private Dovecot (Debian's `dovecot-imapd`, as root) serving one Maildir over IMAP on
loopback: the bounce mailbox of the feedback tests (docs/bounces.md).

`Dovecot(port, maildir)` writes its own config (passwd-file users, `ssl = no`, every path
in a temporary folder), runs `dovecot -F` in the foreground as a child process and stops it
with SIGTERM. The Maildir is shared with Postfix's virtual agent (tests/support/postfix.py):
both act as `nobody`. `append` puts a message in as a client would (a hand-made fixture such
as an ARF report, which no peer on this machine produces).
"""

from __future__ import annotations

import imaplib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .helpers import poll_until
from .postfix import mail_ids
from .smtp_peer import PrivateCa

DOVECOT = Path("/usr/sbin/dovecot")
USER, PASSWORD = "bounce", "bounce-secret"

_CONFIG = """\
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:~
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {folder}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {folder}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
"""


class Dovecot:
    """Dovecot on 127.0.0.1:`port`; user `USER` (password `PASSWORD`) reads `maildir`.
    Given `ca` (tests/support/smtp_peer.py's PrivateCa), it offers STARTTLS on `port` and
    implicit TLS on `tls_port` with the CA's certificate for 127.0.0.1."""

    def __init__(
        self, port: int, maildir: Path, ca: PrivateCa | None = None, tls_port: int = 0
    ) -> None:
        if not DOVECOT.exists():
            pytest.skip("Dovecot is not installed (make system-deps installs dovecot-imapd)")
        if os.geteuid() != 0:
            pytest.skip("a private Dovecot instance needs root")
        self.folder = folder = Path(tempfile.mkdtemp(prefix="dispatch-dovecot-"))
        folder.chmod(0o755)
        uid, gid = mail_ids()
        maildir.mkdir(parents=True, exist_ok=True)
        os.chown(maildir, uid, gid)
        self.maildir, self.port = maildir, port
        (folder / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{maildir}::\n")
        self.conf = folder / "dovecot.conf"
        ssl = "ssl = no"
        if ca is not None:
            ssl = f"ssl = required\nssl_cert = <{ca.cert_file}\nssl_key = <{ca.key_file}"
        self.tls_port = tls_port
        self.conf.write_text(_CONFIG.format(folder=folder, port=port, ssl=ssl, tls_port=tls_port))
        self.log = folder / "dovecot.log"
        self.proc = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            poll_until(self._answers, 30, self._failure)
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self._failure())
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                return conn.recv(100).startswith(b"* OK")
        except OSError:
            return False

    def _failure(self) -> str:
        log = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"dovecot did not answer on 127.0.0.1:{self.port} (exit {self.proc.poll()}):\n{log}"

    def client(self) -> imaplib.IMAP4:
        """A logged-in stdlib client (the test's own look at the mailbox, not the reader's)."""
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        imap.login(USER, PASSWORD)
        return imap

    def append(self, message: bytes, folder: str = "INBOX") -> None:
        with self.client() as imap:
            status, _ = imap.append(folder, "", imaplib.Time2Internaldate(time.time()), message)
            assert status == "OK", status

    def flags(self, folder: str = "INBOX") -> list[str]:
        """Each message's flags, in order (e.g. `\\Seen` once the reader processed it)."""
        with self.client() as imap:
            if not _count(imap, folder):
                return []
            status, data = imap.fetch("1:*", "(FLAGS)")
            assert status == "OK", data
            return [d.decode() if isinstance(d, bytes) else str(d) for d in data]

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        """Each message's bytes, in order, read without flagging it \\Seen."""
        with self.client() as imap:
            if not _count(imap, folder):
                return []
            status, data = imap.fetch("1:*", "(BODY.PEEK[])")
            assert status == "OK", data
            return [part[1] for part in data if isinstance(part, tuple)]

    def logins(self) -> list[str]:
        """Dovecot's log lines of the logins so far (`…, TLS, …` when over TLS)."""
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in log.splitlines() if "imap-login: Info: Login:" in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _count(imap: imaplib.IMAP4, folder: str) -> int:
    """Select `folder` read-only; how many messages it holds."""
    status, data = imap.select(folder, readonly=True)
    assert status == "OK", data
    return int(data[0] or 0)
