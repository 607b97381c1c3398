"""Private Postfix instances (Debian's, as root) for the tests: `RelayPostfix`, a real MTA
between Dispatch Engine and another peer, and `BouncingPostfix`, which bounces like a real
MTA: the peer of the asynchronous bounce tests (docs/bounces.md).

`BouncingPostfix` listens on 127.0.0.1:`port`, accepts any recipient of `LOCAL_DOMAIN` at SMTP time
(`local_recipient_maps =` empty, so nothing is refused at RCPT) and hands it to its `local`
delivery agent, which bounces a user the machine does not have: Postfix's `bounce` daemon
then writes a real RFC 3464 DSN to the envelope sender. Mail for `BOUNCE_DOMAIN` (the
VERP return path, `bounce+<token>@bounce.example.net`; `recipient_delimiter = +`) goes through the
`virtual` delivery agent into `maildir`, the Maildir a `Dovecot` (tests/support/dovecot.py)
serves over IMAP. Its config, queue and data live in a temporary folder of their own, not
under pytest's tmp_path: the daemons run as `postfix`/`nobody`, and that path is 0700.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

import pytest

from .helpers import poll_until

POSTFIX = Path("/usr/sbin/postfix")
LOCAL_DOMAIN = "dest.example.net"  # its local recipients: none exists, so each one bounces
BOUNCE_DOMAIN = "bounce.example.net"  # the return path's domain, delivered to the bounce Maildir
BOUNCE_MAILBOX = "bounce"  # bounce+anything@bounce.example.net lands here
MAIL_USER = "nobody"  # owns the Maildir, for Postfix's virtual agent and Dovecot alike

_SERVICES = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def mail_ids() -> tuple[int, int]:
    """The uid and gid that own the bounce Maildir."""
    entry = pwd.getpwnam(MAIL_USER)
    return entry.pw_uid, entry.pw_gid


class PrivatePostfix:
    """A private Postfix (Debian's, as root) on 127.0.0.1:`port` with its own config, queue
    and data in a temporary folder; `main_cf` is added to the settings every instance has."""

    def __init__(self, port: int, main_cf: str, prefix: str = "dispatch-postfix-") -> None:
        if not POSTFIX.exists():
            pytest.skip("Postfix is not installed (make system-deps installs it as root)")
        if os.geteuid() != 0:
            pytest.skip("a private Postfix instance needs root")
        self.folder = folder = Path(tempfile.mkdtemp(prefix=prefix))
        folder.chmod(0o755)
        self.conf, queue, data = folder / "conf", folder / "queue", folder / "data"
        for made in (self.conf, queue, data):
            made.mkdir(parents=True)
        shutil.chown(data, "postfix")
        (self.conf / "master.cf").write_text(_SERVICES.format(port=port))
        (self.conf / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {queue}\ndata_directory = {data}\n"
            "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n"
            "alias_maps =\nalias_database =\nsmtputf8_enable = yes\n" + main_cf
        )
        self.port = port
        try:
            self._postfix("start")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _postfix(self, command: str) -> None:
        done = subprocess.run(
            [str(POSTFIX), "-c", str(self.conf), command],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:  # its log goes to syslog, if the machine has one
            raise AssertionError(f"postfix {command} failed: {done.stderr}{done.stdout}")

    def stop(self) -> None:
        try:
            self._postfix("stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RelayPostfix(PrivatePostfix):
    """Relays everything from loopback to 127.0.0.1:`relay_port` (a real MTA in between)."""

    def __init__(self, port: int, relay_port: int) -> None:
        super().__init__(
            port,
            f"myhostname = relay.test\nmydestination =\nrelayhost = [127.0.0.1]:{relay_port}\n",
        )


class BouncingPostfix(PrivatePostfix):
    """Postfix on 127.0.0.1:`port` that bounces `<anyone>@dest.example.net` to the sender and
    delivers the DSNs for `@bounce.example.net` into `maildir` (created here, owned by `nobody`)."""

    def __init__(self, port: int) -> None:
        uid, gid = mail_ids()
        root = Path(tempfile.mkdtemp(prefix="dispatch-bounce-mail-"))
        root.chmod(0o755)
        self.mail_root = mail_root = root / "mail"
        mail_root.mkdir()
        os.chown(mail_root, uid, gid)
        self.maildir = mail_root / BOUNCE_MAILBOX
        self._mail_folder = root
        main_cf = (
            "myhostname = mta.test\n"
            f"mydestination = {LOCAL_DOMAIN}\nlocal_recipient_maps =\nrelayhost =\n"
            "recipient_delimiter = +\nbiff = no\n"
            f"virtual_mailbox_domains = {BOUNCE_DOMAIN}\n"
            f"virtual_mailbox_base = {mail_root}\n"
            f"virtual_mailbox_maps = inline:{{ {BOUNCE_MAILBOX}@{BOUNCE_DOMAIN}="
            f"{BOUNCE_MAILBOX}/ }}\n"
            f"virtual_uid_maps = static:{uid}\nvirtual_gid_maps = static:{gid}\n"
            "virtual_minimum_uid = 1\n"
            # Bounce at once, never defer: the test waits for one DSN, not a retry schedule.
            "maximal_queue_lifetime = 0\nbounce_queue_lifetime = 0\n"
        )
        try:
            super().__init__(port, main_cf, prefix="dispatch-postfix-bounce-")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def delivered(self) -> list[Path]:
        """The messages the virtual agent has written into the bounce Maildir so far."""
        new, cur = self.maildir / "new", self.maildir / "cur"
        return sorted(p for d in (new, cur) if d.is_dir() for p in d.iterdir())

    def wait_for_delivery(self, count: int = 1, within: float = 60.0) -> list[Path]:
        return poll_until(
            lambda: found if len(found := self.delivered()) >= count else None,
            within,
            lambda: f"Postfix delivered {len(self.delivered())} of {count} DSNs to the Maildir",
        )

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self._mail_folder, ignore_errors=True)
