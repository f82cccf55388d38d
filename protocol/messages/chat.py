"""`chat` carries a line of text across the network; `ack` confirms receipt."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from protocol import fields
from protocol.messages.base import Message, register
from protocol.messages.handshake import MAX_ADDRESS_TEXT

MAX_CHAT_TEXT = 1000  # characters in one chat line
CHAT_ID_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,64}")


def new_chat_id() -> str:
    """A random id; 64 bits make a collision in a classroom network unthinkable."""
    return secrets.token_hex(8)


@register
@dataclass(frozen=True)
class Chat(Message):
    """A chat line. `id` is unique per line, so every node relays it exactly once."""

    command = "chat"
    flooded = True

    id: str
    sender: str  # "from" on the wire: the address of the peer that typed the line
    text: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Chat":
        return cls(
            id=fields.text(body, "id", max_length=64, pattern=CHAT_ID_PATTERN),
            sender=fields.text(body, "from", max_length=MAX_ADDRESS_TEXT),
            text=fields.text(body, "text", max_length=MAX_CHAT_TEXT),
        )

    @classmethod
    def typed(cls, text: str, sender: str) -> "Chat":
        """A line a person typed (a payload that is no command) becomes a chat message."""
        # A person's typing mistake is not misbehaviour: no penalty.
        if len(text) > MAX_CHAT_TEXT:
            raise fields.MessageError(f"chat text is longer than {MAX_CHAT_TEXT} characters", penalty=0)
        fields.check_printable(text, "chat text", penalty=0)
        return cls(id=new_chat_id(), sender=sender, text=text)

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "from": self.sender, "text": self.text}


@register
@dataclass(frozen=True)
class Ack(Message):
    """"Your chat line arrived"; a person's client waits for a frame after each line."""

    command = "ack"
    is_answer = True

    id: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Ack":
        return cls(id=fields.text(body, "id", max_length=64, pattern=CHAT_ID_PATTERN))
