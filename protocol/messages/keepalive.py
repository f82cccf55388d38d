"""`ping` and `pong`: is the peer still there, and how far away is it?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import fields
from protocol.messages.base import Message, register


@register
@dataclass(frozen=True)
class Ping(Message):
    """Asks for a `pong` echoing the same nonce. A bare `ping` gets a bare `pong`."""

    command = "ping"

    nonce: int | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Ping":
        return cls(nonce=fields.integer(body, "nonce", default=None))


@register
@dataclass(frozen=True)
class Pong(Message):
    """The answer to a `ping`, carrying its nonce."""

    command = "pong"
    is_answer = True

    nonce: int | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Pong":
        return cls(nonce=fields.integer(body, "nonce", default=None))
