"""Peer addresses as text: `host:port`, with IPv6 hosts in brackets (`[::1]:5050`)."""

from __future__ import annotations

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
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST[:PORT] with a port from 0 to 65535")
    return host, int(port)
