"""Checks for the fields of a message body, each failing with a MessageError.

A body is untrusted JSON: any key may be missing, of the wrong type or out of
range. Each message class states its fields with these helpers, so the rules
read like a schema and a new field is one line.
"""

from __future__ import annotations

import re
from typing import Any

MAX_UINT64 = 2**64 - 1


class MessageError(ValueError):
    """A payload names a known command but its body breaks the command's schema."""


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
    if pattern is not None and not pattern.fullmatch(value):
        raise MessageError(f"field '{name}' has an invalid format")
    return value


def _get(body: dict[str, Any], name: str, default: Any) -> Any:
    if name in body:
        return body[name]
    if default is _REQUIRED:
        raise MessageError(f"missing field '{name}'")
    return default
