"""Where a channel may send its calls: checked on the address a connection actually opens to.

A `base_url` names a host; what it resolves to can change between the check and the call (DNS
rebinding), so the check sits in the socket factory of the upstream connector: it sees every
address right before the connect, IP literals and resolved names alike. Link-local and cloud
metadata addresses are refused always; loopback, private and other non-public ranges only
when CHATKORE_UPSTREAM_ALLOW lists them; public addresses are allowed.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from services.common.config import ConfigError

log = logging.getLogger(__name__)

ALLOW_VAR = "CHATKORE_UPSTREAM_ALLOW"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Never a destination, whatever is allowed: link-local (169.254.169.254 is the metadata service
# of AWS, GCP, Azure, OpenStack), the cloud metadata addresses outside it (AWS's IPv6 one,
# Alibaba Cloud's, Oracle's), "this host" and multicast/broadcast.
ALWAYS_REFUSED: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32",
    "0.0.0.0/8", "::/128", "224.0.0.0/4", "255.255.255.255/32", "ff00::/8",
))


class RefusedDestination(OSError):
    """A connection the policy does not allow; the connector treats it as a failed connect."""


def _address(host: str) -> Address:
    addr = ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 scope id is not part of the address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return addr


def _entry(text: str) -> tuple[Network, int | None]:
    """`10.0.0.0/8`, `127.0.0.1:8090`, `fd00::/8`, `[::1]:8090` → (network, port or None)."""
    port: int | None = None
    host = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(text)
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isdigit():
            raise ValueError(text)
        port = int(number)
    if port is not None and not 0 < port < 65536:
        raise ValueError(text)
    return ipaddress.ip_network(host, strict=False), port


@dataclass(frozen=True)
class DestinationPolicy:
    allowed: tuple[tuple[Network, int | None], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> DestinationPolicy:
        entries = []
        for part in spec.replace(" ", ",").split(","):
            if part:
                try:
                    entries.append(_entry(part))
                except ValueError:
                    raise ConfigError(f"{ALLOW_VAR}: {part!r} is not an address or network, with an optional port"
                                      " (e.g. 127.0.0.1:8090, 10.0.0.0/8, [::1]:8090)") from None
        return cls(tuple(entries))

    def refusal(self, host: str, port: int | None) -> str | None:
        """Why a connection to `host` (an IP address) on `port` is refused; None when it is allowed."""
        try:
            addr = _address(host)
        except ValueError:
            return "not an IP address"
        if any(addr in net for net in ALWAYS_REFUSED):
            return f"{addr} is a link-local or metadata address, which a channel may never reach"
        if addr.is_global:
            return None
        if any(addr in net and (allowed_port is None or allowed_port == port) for net, allowed_port in self.allowed):
            return None
        where = f"{addr}:{port}" if port is not None else str(addr)
        return f"{where} is a loopback or private address not listed in {ALLOW_VAR}"

    def socket_factory(self, addr_info: Any) -> socket.socket:
        """For aiohttp's TCPConnector: open the socket only for an allowed address."""
        family, kind, proto, _, sockaddr = addr_info
        reason = self.refusal(sockaddr[0], sockaddr[1])
        if reason:
            log.warning("refused an upstream connection: %s", reason)
            raise RefusedDestination(reason)
        return socket.socket(family=family, type=kind, proto=proto)
