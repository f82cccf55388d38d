"""Questions a person asks a node: `getpeerinfo` -> `peerinfo`, `getnetworkinfo` -> `networkinfo`.

Named after Bitcoin Core's RPCs of the same names, answered over the wire here
so the chat REPL can show them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from protocol import fields
from protocol.messages.base import Message, register
from protocol.messages.handshake import MAX_ADDRESS_TEXT, MAX_USER_AGENT

MAX_PEER_ROWS = 10_000  # rows in one peerinfo; far above any node's connection limit


@register
@dataclass(frozen=True)
class GetPeerInfo(Message):
    """"Who are you connected to?" Answered with `peerinfo`."""

    command = "getpeerinfo"


@dataclass(frozen=True)
class PeerRow:
    """One connection as the node sees it."""

    address: str
    direction: str  # "inbound" or "outbound"
    services: int
    user_agent: str
    version: int
    height: int
    ping_ms: float | None  # last ping round trip; None before the first pong
    bytes_sent: int
    bytes_received: int
    connected_since: int  # unix seconds
    score: int  # misbehaviour points; 100 bans

    @classmethod
    def from_item(cls, item: Any) -> "PeerRow":
        if not isinstance(item, dict):
            raise fields.MessageError("each peerinfo row must be a JSON object")
        ping = item.get("ping_ms")
        if ping is not None and (type(ping) not in (int, float) or not 0 <= ping < 1e9):
            raise fields.MessageError("field 'ping_ms' must be a non-negative number or null")
        return cls(
            address=fields.text(item, "address", max_length=MAX_ADDRESS_TEXT),
            direction=fields.text(item, "direction", max_length=16),
            services=fields.integer(item, "services"),
            user_agent=fields.text(item, "user_agent", max_length=MAX_USER_AGENT),
            version=fields.integer(item, "version", maximum=fields.MAX_INT63),
            height=fields.integer(item, "height", maximum=fields.MAX_INT63),
            ping_ms=ping,
            bytes_sent=fields.integer(item, "bytes_sent", maximum=fields.MAX_INT63),
            bytes_received=fields.integer(item, "bytes_received", maximum=fields.MAX_INT63),
            connected_since=fields.integer(item, "connected_since", maximum=fields.MAX_INT63),
            score=fields.integer(item, "score", maximum=fields.MAX_INT63),
        )


@register
@dataclass(frozen=True)
class PeerInfo(Message):
    """The answer to `getpeerinfo`: one row per connected peer."""

    command = "peerinfo"
    is_answer = True

    peers: tuple[PeerRow, ...]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "PeerInfo":
        rows = body.get("peers")
        if not isinstance(rows, list) or len(rows) > MAX_PEER_ROWS:
            raise fields.MessageError(f"field 'peers' must be a list of at most {MAX_PEER_ROWS} rows")
        return cls(peers=tuple(PeerRow.from_item(row) for row in rows))

    def to_body(self) -> dict[str, Any]:
        return {"peers": [asdict(row) for row in self.peers]}


@register
@dataclass(frozen=True)
class GetNetworkInfo(Message):
    """"How is your networking?" Answered with `networkinfo`."""

    command = "getnetworkinfo"


@register
@dataclass(frozen=True)
class NetworkInfo(Message):
    """Counts a person (or the demo's summary line) wants at a glance."""

    command = "networkinfo"
    is_answer = True

    address: str  # where the node listens
    user_agent: str
    peers: int
    inbound: int
    outbound: int
    addresses_known: int  # entries in the address book
    banned: int  # IPs banned now
    addrs_dropped: int  # addr entries dropped by the rate limit since start

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "NetworkInfo":
        counts = {name: fields.integer(body, name, maximum=fields.MAX_INT63)
                  for name in ("peers", "inbound", "outbound", "addresses_known", "banned", "addrs_dropped")}
        return cls(address=fields.text(body, "address", max_length=MAX_ADDRESS_TEXT),
                   user_agent=fields.text(body, "user_agent", max_length=MAX_USER_AGENT), **counts)
