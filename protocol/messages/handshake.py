"""The handshake: `version` introduces a peer, `verack` acknowledges it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import fields
from protocol.messages.base import Message, register

PROTOCOL_VERSION = 1
MAX_USER_AGENT = 256  # Bitcoin's MAX_SUBVERSION_LENGTH
MAX_ADDRESS_TEXT = 100  # "host:port"; the longest IPv6 form is 47 characters

# Service bits in `version.services`, as in Bitcoin.
NODE_NETWORK = 1  # a full peer of the network: relays addresses (and later blocks); 0 is a chat client


@register
@dataclass(frozen=True)
class Version(Message):
    """Who the sender is. Every field is optional, so a person can type a bare `version`."""

    command = "version"

    version: int = PROTOCOL_VERSION
    nonce: int = 0  # random per node; a node that hears its own nonce has dialled itself
    services: int = 0  # bit field of what the sender serves; 0 for a chat client
    user_agent: str = ""
    height: int = 0  # the sender's best block height
    addr_from: str = ""  # the sender's listening "host:port", empty if it does not listen
    time: int = 0  # the sender's clock, seconds since 1970
    network: str = ""  # "main", "demo", "regtest"; empty from a chat client: any network
    genesis: str = ""  # the network's genesis block id; nodes of different chains refuse each other

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Version":
        return cls(
            version=fields.integer(body, "version", maximum=2**31 - 1, default=PROTOCOL_VERSION),
            nonce=fields.integer(body, "nonce", default=0),
            services=fields.integer(body, "services", default=0),
            user_agent=fields.text(body, "user_agent", max_length=MAX_USER_AGENT, default=""),
            height=fields.integer(body, "height", maximum=2**31 - 1, default=0),
            addr_from=fields.text(body, "addr_from", max_length=MAX_ADDRESS_TEXT, default=""),
            time=fields.integer(body, "time", maximum=2**63 - 1, default=0),
            network=fields.text(body, "network", max_length=16, default=""),
            genesis=fields.text(body, "genesis", max_length=64, default=""),
        )


@register
@dataclass(frozen=True)
class Verack(Message):
    """"I have your version." Has no body."""

    command = "verack"
    is_answer = True
