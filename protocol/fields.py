"""Checks for the fields of a message body, each failing with a MessageError.

A body is untrusted JSON: any key may be missing, of the wrong type or out of
range. Each message class states its fields with these helpers, so the rules
read like a schema and a new field is one line.
"""

from __future__ import annotations

import re
from typing import Any

MAX_UINT64 = 2**64 - 1
MAX_INT63 = 2**63 - 1  # counts and heights: what a signed 64-bit integer holds in other languages
HASH_ID = re.compile(r"[0-9a-f]{64}")  # a block id, txid or merkle hash: 64 lowercase hex digits


MALFORMED_PENALTY = 10  # misbehaviour points for a malformed command; 100 gets a peer banned


class MessageError(ValueError):
    """A payload names a known command but its body breaks the command's schema.

    `penalty` is how much the sender's misbehaviour score rises (see the routing role).
    """

    def __init__(self, reason: str, penalty: int = MALFORMED_PENALTY) -> None:
        super().__init__(reason)
        self.penalty = penalty


_REQUIRED = object()


def integer(body: dict[str, Any], name: str, *, minimum: int = 0, maximum: int = MAX_UINT64,
            default: Any = _REQUIRED) -> int:
    """An integer field within [minimum, maximum]; JSON true/false are not integers."""
    value = _get(body, name, default)
    if value is default and default is not _REQUIRED:
        return value
    if type(value) is not int:
        raise MessageError(f"field '{name}' must be an integer")
    if not minimum <= value <= maximum:
        raise MessageError(f"field '{name}' must be between {minimum} and {maximum}")
    return value


def text(body: dict[str, Any], name: str, *, max_length: int, pattern: re.Pattern[str] | None = None,
         default: Any = _REQUIRED) -> str:
    """A string field of at most max_length characters, optionally matching pattern."""
    value = _get(body, name, default)
    if value is default and default is not _REQUIRED:
        return value
    if not isinstance(value, str):
        raise MessageError(f"field '{name}' must be a string")
    if len(value) > max_length:
        raise MessageError(f"field '{name}' is longer than {max_length} characters")
    check_printable(value, f"field '{name}'")
    if pattern is not None and not pattern.fullmatch(value):
        raise MessageError(f"field '{name}' has an invalid format")
    return value


def check_printable(value: str, what: str, penalty: int = MALFORMED_PENALTY) -> None:
    """Refuse control characters (they would let one peer repaint another's terminal or forge
    log lines) and lone surrogates (JSON can escape them, UTF-8 cannot encode them)."""
    if _CONTROL.search(value):
        raise MessageError(f"{what} contains control characters", penalty=penalty)
    if not utf8_encodable(value):
        raise MessageError(f"{what} is not valid Unicode text", penalty=penalty)


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # C0 and C1 controls; tab is allowed


def utf8_encodable(text: str) -> bool:
    """False for a lone surrogate: JSON can escape one ("\\ud800"), UTF-8 (and so a hash of it) cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def number(body: dict[str, Any], name: str, *, maximum: float = 1e300) -> float:
    """A non-negative number field, integer or not (hash rates, difficulty); JSON true/false are not numbers."""
    value = _get(body, name, _REQUIRED)
    if type(value) not in (int, float) or not 0 <= value < maximum:
        raise MessageError(f"field '{name}' must be a non-negative number")
    return float(value)


def _get(body: dict[str, Any], name: str, default: Any) -> Any:
    if name in body:
        return body[name]
    if default is _REQUIRED:
        raise MessageError(f"missing field '{name}'")
    return default
