"""The Message base class, the command registry, and payload decoding.

A payload is either `COMMAND`, `COMMAND {json object}`, or chat text:

    ping                      -> Ping(nonce=None)
    ping {"nonce":7}          -> Ping(nonce=7)
    hello everyone            -> None (the caller treats it as chat)

Each message type is one small frozen dataclass that knows its command, how to
check a body (`from_body`) and how to write one (`to_body`). `register` puts
it in MESSAGE_TYPES, the one table every decoder consults, so a role can add
a command without touching the decoder.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any, ClassVar, TypeVar

from protocol.fields import MessageError

MESSAGE_TYPES: dict[str, type["Message"]] = {}
_COMMAND_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Counted before a body is parsed: JSON can cost far more than its size. 4 MB of "[]," parse into
# 1.3 million lists (about 90 MB), in one call that holds the interpreter lock while every other
# peer waits. The largest honest bodies stay well below: an inv of 50,000 items has 50,002
# objects and arrays and 100,001 commas, a full block about 16,000 and 50,000.
MAX_BODY_CONTAINERS = 60_000  # "{" and "[" characters
MAX_BODY_COMMAS = 250_000

M = TypeVar("M", bound="Message")


@dataclasses.dataclass(frozen=True)
class Message:
    """One protocol message: a command word and a JSON-object body."""

    command: ClassVar[str]
    # Answers (verack, pong, ack, error, goodbye) are never answered in turn,
    # so two nodes can never bounce frames back and forth forever.
    is_answer: ClassVar[bool] = False
    # Flooded messages (chat) are relayed unchanged and encoded one way, so a flood brings the
    # same bytes over every link: a node may drop a copy it has handled before, undecoded.
    flooded: ClassVar[bool] = False

    @classmethod
    def from_body(cls: type[M], body: dict[str, Any]) -> M:
        """Build the message from an untrusted body, or raise MessageError.

        Messages without fields (verack, getaddr, ...) need not override this.
        """
        if dataclasses.fields(cls):
            raise NotImplementedError(f"{cls.__name__} has fields and must check them in from_body")
        return cls()

    def to_body(self) -> dict[str, Any]:
        """The JSON body; fields that are None are left out."""
        body = {}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return body

    def encode(self) -> str:
        """The payload text: the bare command when the body is empty."""
        body = self.to_body()
        if not body:
            return self.command
        return f"{self.command} {_ENCODER.encode(body)}"


@functools.cache
def _field_names(message_type: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(message_type))


def register(cls: type[M]) -> type[M]:
    """Class decorator: make `cls.command` a known command."""
    if not _COMMAND_PATTERN.fullmatch(cls.command):
        raise ValueError(f"command {cls.command!r} must be a short lowercase word")
    if cls.command in MESSAGE_TYPES:
        raise ValueError(f"command {cls.command!r} is registered twice")
    MESSAGE_TYPES[cls.command] = cls
    return cls


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads() and json.dumps() given any option build a new decoder or
# encoder on every call, which costs more than a small body itself.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def decode_message(text: str) -> Message | None:
    """The message a payload carries, None when it is chat, MessageError when malformed."""
    command, _, rest = text.partition(" ")
    message_type = MESSAGE_TYPES.get(command)
    if message_type is None:
        return None
    rest = rest.strip()
    body: Any = {}
    if rest and not rest.startswith("{"):
        # "block party tonight": a sentence that starts with a command word, most likely typed
        # by a person. Still an error (the grammar is strict), but no misbehaviour.
        raise MessageError(f"body of '{command}' must be a JSON object (to chat, do not start with "
                           f"'{command}')", penalty=0)
    if rest:
        if rest.count("{") + rest.count("[") > MAX_BODY_CONTAINERS or rest.count(",") > MAX_BODY_COMMAS:
            raise MessageError(f"body of '{command}' holds more than {MAX_BODY_CONTAINERS} objects and arrays "
                               f"or {MAX_BODY_COMMAS} commas")
        try:
            body = _DECODER.decode(rest)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            raise MessageError(f"body of '{command}' is not valid JSON") from None
        if not isinstance(body, dict):
            raise MessageError(f"body of '{command}' must be a JSON object")
    return message_type.from_body(body)
