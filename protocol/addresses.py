"""Peer addresses as text: `host:port`, with IPv6 hosts in brackets (`[::1]:5050`)."""

from __future__ import annotations

import enum
import ipaddress

from protocol.framing import PORT


def format_address(host: str, port: int) -> str:
    """`host:port`, bracketing IPv6 hosts as URLs do."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, default_port: int = PORT) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `[IPV6]:PORT` as (host, port); ValueError with a reason a person can read."""
    host, port = text, str(default_port)
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not HOST[:PORT]")
        if rest:
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text and not _is_ipv6(text):  # several colons: only a bare IPv6 address is allowed
        raise ValueError(f"{text!r} is not HOST[:PORT] (write IPv6 as [ADDRESS]:PORT)")
    if not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST[:PORT] with a port from 0 to 65535")
    return host, int(port)


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


class Scope(enum.IntEnum):
    """Where an address can be reached from; decides which addresses a node keeps and shares."""

    UNUSABLE = 0  # unspecified, multicast, link-local, reserved, broadcast, not an IP
    LOOPBACK = 1  # 127.0.0.0/8, ::1: this machine only (the demo network)
    PRIVATE = 2  # RFC 1918, ULA, CGNAT: one site's network (a classroom LAN)
    PUBLIC = 3  # the internet


def scope_of(host: str) -> Scope:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return Scope.UNUSABLE
    if ip.is_loopback:  # before is_reserved, which ::1 also is
        return Scope.LOOPBACK
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local or ip.is_reserved:
        return Scope.UNUSABLE
    if ip.is_global:
        return Scope.PUBLIC
    if ip.is_private or ip in _SHARED_ADDRESS_SPACE:  # is_private includes documentation ranges
        return Scope.PRIVATE
    return Scope.UNUSABLE


_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598

# Which scopes a node keeps, by the scope it listens in. A loopback network (the
# demo) keeps loopback addresses only; a LAN node also keeps public ones; a public
# node keeps public ones only, as Bitcoin keeps only routable addresses.
ACCEPTED_SCOPES = {
    Scope.LOOPBACK: frozenset({Scope.LOOPBACK}),
    Scope.PRIVATE: frozenset({Scope.PRIVATE, Scope.PUBLIC}),
    Scope.PUBLIC: frozenset({Scope.PUBLIC}),
}


def listening_scope(host: str) -> Scope:
    """The scope of a listening address; 0.0.0.0 / :: (every interface) counts as a LAN node."""
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return Scope.PRIVATE
    except ValueError:
        return Scope.PRIVATE  # a host name: be as permissive as a LAN node
    scope = scope_of(host)
    return scope if scope is not Scope.UNUSABLE else Scope.PRIVATE


def is_routable(host: str, from_scope: Scope) -> bool:
    """Whether a node listening in from_scope should keep and share this address."""
    return scope_of(host) in ACCEPTED_SCOPES[from_scope]
