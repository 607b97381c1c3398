"""Outbound targets: a sender's host must be a public address, unless the operator allows more.

A user chooses where a webhook or SMTP sender connects. Without this check, any user could
make the server reach loopback, the cloud metadata address (169.254.169.254), private
ranges or other containers by name. So a sender's host is resolved and every address it
resolves to must be public (`is_public`): checked when the sender is saved (422 naming the
field) and again on every connection, which then goes to an address just checked, never to
a second lookup (DNS rebinding). `DISPATCH_ALLOW_PRIVATE_TARGETS` turns the check off; by
default it is off only in local mode (see `Settings.private_targets_allowed`).

A sender test (`POST /api/senders/{id}/test`) answers with `describe_failure`: a short code
(`refused`, `timeout`, `tls_error`, `auth_failed`, `http_<status>`, `not_public` …) and words
of ours, never the remote's reply text or banner.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib
from aiohttp.abc import AbstractResolver, ResolveResult

from .transport import PermanentError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int, int], Awaitable[list[str]]]  # (host, port, family) -> addresses

RESOLVE_TIMEOUT_S = 10.0
WEBHOOK_TIMEOUT_S = 10.0  # a webhook sender's default `timeout`
WEBHOOK_MAX_TIMEOUT_S = 30.0  # a slow receiver holds a send slot at most this long
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address


class NotPublicError(PermanentError):
    """A sender's target resolves to an address that is not public."""

    failure_code = "not_public"


class UnresolvableError(TransientError):
    """A sender's host name does not resolve (now)."""

    failure_code = "dns_error"


class CheckFailedError(PermanentError):
    """A sender test's outcome in our own words, with its short code."""

    def __init__(self, failure_code: str, message: str) -> None:
        super().__init__(message)
        self.failure_code = failure_code


def webhook_timeout(value: Any) -> float:
    """A webhook sender's `timeout` in seconds; ValueError unless 0 < value <= the maximum."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number of seconds")
    if not 0 < value <= WEBHOOK_MAX_TIMEOUT_S:
        raise ValueError(f"must be more than 0 and at most {WEBHOOK_MAX_TIMEOUT_S:g} seconds")
    return float(value)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: IPv4-mapped, 6to4, Teredo's server, NAT64."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[0]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Globally reachable unicast: not loopback, link-local, private, CGNAT (100.64/10),
    multicast, unspecified, reserved or documentation; an IPv6 address carrying an IPv4 one
    (::ffff:a.b.c.d, 2002::/16, NAT64) is judged by that IPv4 address too."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and not is_public(inner):
            return False
        if ip.ipv4_mapped is not None or ip in _NAT64:  # judged by their IPv4 address alone
            return True  # (Python < 3.13 calls all of ::ffff:0:0/96 private)
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_reserved
    )


def literal(host: str) -> IPAddress | None:
    """`host` as an IP address when it is one (brackets and an IPv6 zone allowed)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def system_resolve(host: str, port: int, family: int = 0) -> list[str]:
    """The machine's resolver (getaddrinfo), as the connection itself would use it."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# The lookup every check goes through. Tests swap it (`set_resolver`) for DNS rebinding:
# getaddrinfo reads the machine's /etc/resolv.conf and hosts file, which a test cannot point
# at a DNS server of its own that changes its answers between two lookups.
_resolve: Resolve = system_resolve


def set_resolver(resolve: Resolve) -> Resolve:
    """Use `resolve` for every lookup from now on; returns the previous one (for tests)."""
    global _resolve
    previous, _resolve = _resolve, resolve
    return previous


def check_address(host: str, address: str, *, allow_private: bool) -> None:
    """Raise NotPublicError unless `address` (an address `host` resolved to) is allowed."""
    ip = literal(address)
    if allow_private:
        return
    if ip is None or not is_public(ip):
        shown = host if host == address else f"{host} ({address})"
        raise NotPublicError(
            f"{shown} is not a public address; this server does not connect to loopback, "
            "link-local or private addresses"
        )


async def resolve_public(
    host: str, port: int, *, allow_private: bool, family: int = 0
) -> list[str]:
    """The addresses `host` resolves to, each checked; any refused one refuses them all."""
    if not host or any(c in host for c in "\r\n\0 "):
        raise NotPublicError(f"{host!r} is not a host name")
    ip = literal(host)
    if ip is not None:
        addresses = [str(ip)]
    else:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                addresses = await _resolve(host, port, family)
        except (OSError, TimeoutError, UnicodeError):
            raise UnresolvableError(f"{host} cannot be resolved") from None
        if not addresses:
            raise UnresolvableError(f"{host} cannot be resolved")
    for address in addresses:
        check_address(host, address, allow_private=allow_private)
    return addresses


async def open_socket(
    host: str, port: int, *, allow_private: bool, connect_timeout: float
) -> socket.socket:
    """A TCP connection to one of `host`'s checked addresses, tried in order (for SMTP)."""
    loop = asyncio.get_running_loop()
    failure: OSError | None = None
    for address in await resolve_public(host, port, allow_private=allow_private):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.sock_connect(sock, (address, port))
            return sock
        except OSError as exc:
            sock.close()
            failure = exc
        except BaseException:
            sock.close()
            raise
    assert failure is not None
    raise failure


class PublicResolver(AbstractResolver):
    """aiohttp's resolver for a sender's connector: the connection goes only to addresses
    checked here, and the URL's host name stays what TLS (SNI, certificate) and Host see."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await resolve_public(
            host, port, allow_private=self.allow_private, family=family
        )
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it was raised from or while handling (`raise … from None` keeps it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, aiohttp.ClientConnectorError):
            yield current.os_error
        current = current.__cause__ or current.__context__


def _code(exc: BaseException) -> str:
    for error in _chain(exc):
        code = getattr(error, "failure_code", None)
        if isinstance(code, str):
            return code
        if isinstance(error, aiosmtplib.SMTPAuthenticationError):
            return "auth_failed"
        if isinstance(error, ssl.SSLError | ssl.CertificateError | aiohttp.ClientSSLError):
            return "tls_error"
        if isinstance(error, aiosmtplib.SMTPNotSupported):
            return "not_supported"
        if isinstance(error, TimeoutError | aiosmtplib.SMTPTimeoutError):
            return "timeout"
        if isinstance(error, ConnectionRefusedError):
            return "refused"
        if isinstance(error, aiosmtplib.SMTPResponseException) and 100 <= error.code < 1000:
            return f"smtp_{error.code}"
        if isinstance(error, aiosmtplib.SMTPServerDisconnected | ConnectionResetError):
            return "disconnected"
    for error in _chain(exc):
        if isinstance(error, OSError | aiohttp.ClientError | aiosmtplib.SMTPException):
            return "unreachable"
    return "failed"


_MESSAGES = {
    "not_public": "{where} is not a public address; this server does not connect there",
    "dns_error": "{where}: the host name does not resolve",
    "auth_failed": "{where} refused the login",
    "tls_error": "{where}: the TLS handshake or certificate check failed",
    "not_supported": "{where} does not support what the settings ask for (STARTTLS or AUTH)",
    "timeout": "{where} did not answer in time",
    "refused": "{where} refused the connection",
    "disconnected": "{where} closed the connection",
    "unreachable": "{where} cannot be reached",
    "failed": "the check of {where} failed",
}


def describe_failure(exc: BaseException, where: str) -> dict[str, Any]:
    """A failed sender test as the API shows it: a code and our words, never the remote's."""
    code = _code(exc)
    if isinstance(exc, CheckFailedError):
        message = str(exc)
    elif code.startswith("smtp_"):
        message = f"{where} answered with SMTP code {code[5:]}"
    elif code.startswith("http_"):
        message = f"{where} answered with HTTP status {code[5:]}"
    else:
        message = _MESSAGES.get(code, _MESSAGES["failed"]).format(where=where)
    return {"ok": False, "error": code, "message": message}


def target_of(transport: str, settings: Mapping[str, Any]) -> str:
    """Where a sender connects, as its owner wrote it (without credentials of a URL)."""
    url = settings.get("url")
    if isinstance(url, str):
        return urlsplit(url).netloc.rpartition("@")[2] or transport
    host = settings.get("host")
    if isinstance(host, str):
        return f"{host}:{settings.get('port', 587)}"
    return f"the {transport} transport"
