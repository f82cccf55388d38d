"""`addr` shares peer addresses; `getaddr` asks for them. Discovery rides on these two."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from protocol import fields
from protocol.addresses import format_address, parse_host_port
from protocol.messages.base import Message, register

MAX_ADDR_ENTRIES = 1000  # Bitcoin's MAX_ADDR_TO_SEND
OVERSIZED_ADDR_PENALTY = 20  # Bitcoin scores an oversized addr 20


@dataclass(frozen=True)
class AddressEntry:
    """One known peer: its IP and port, what it serves, and when it was last heard of."""

    addr: str  # "ip:port"; IPv6 in brackets
    services: int
    time: int  # seconds since 1970 when the address was last known to be active

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_host_port(self.addr)

    @classmethod
    def from_item(cls, item: Any) -> "AddressEntry":
        if not isinstance(item, dict):
            raise fields.MessageError("each addr entry must be a JSON object")
        text = fields.text(item, "addr", max_length=60)
        try:
            host, port = parse_host_port(text, default_port=-1)
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise fields.MessageError(f"addr entry {text[:60]!r} is not IP:PORT") from None
        if port <= 0:
            raise fields.MessageError(f"addr entry {text!r} needs a port from 1 to 65535")
        return cls(addr=format_address(str(ip), port),
                   services=fields.integer(item, "services", default=0),
                   time=fields.integer(item, "time", maximum=2**63 - 1))

    def to_item(self) -> dict[str, Any]:
        return {"addr": self.addr, "services": self.services, "time": self.time}


@register
@dataclass(frozen=True)
class Addr(Message):
    """Addresses of peers, at most 1,000: a node's own, relayed ones, or a getaddr answer."""

    command = "addr"

    addrs: tuple[AddressEntry, ...]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Addr":
        items = body.get("addrs")
        if not isinstance(items, list):
            raise fields.MessageError("field 'addrs' must be a list")
        if len(items) > MAX_ADDR_ENTRIES:
            raise fields.MessageError(f"addr has {len(items)} entries; at most {MAX_ADDR_ENTRIES}",
                                      penalty=OVERSIZED_ADDR_PENALTY)
        return cls(addrs=tuple(AddressEntry.from_item(item) for item in items))

    def to_body(self) -> dict[str, Any]:
        return {"addrs": [entry.to_item() for entry in self.addrs]}


@register
@dataclass(frozen=True)
class GetAddr(Message):
    """"Which peers do you know?" Answered with one `addr`, once per inbound connection."""

    command = "getaddr"
