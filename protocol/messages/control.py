"""`error` explains what went wrong; `goodbye` precedes a closed connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import fields
from protocol.messages.base import Message, register

MAX_REASON = 1000


@register
@dataclass(frozen=True)
class Error(Message):
    """A frame the receiver could not accept, and why. `command` names it, when known."""

    command = "error"
    is_answer = True

    reason: str
    about: str | None = None  # the command the error is about; "command" on the wire

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Error":
        return cls(reason=fields.text(body, "reason", max_length=MAX_REASON),
                   about=fields.text(body, "command", max_length=32, default=None))

    def to_body(self) -> dict[str, Any]:
        body = {"reason": self.reason[:MAX_REASON]}
        if self.about is not None:
            body["command"] = self.about
        return body


@register
@dataclass(frozen=True)
class Goodbye(Message):
    """The last frame before the sender closes the connection."""

    command = "goodbye"
    is_answer = True

    reason: str = ""

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Goodbye":
        return cls(reason=fields.text(body, "reason", max_length=MAX_REASON, default=""))
