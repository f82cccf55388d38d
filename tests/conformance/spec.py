"""`@spec("§2.4", "…")`: every conformance check cites the section of docs/protocol.md it tests.

Levels:
- MUST: a MUST / MUST NOT statement of the spec.
- SHOULD: a SHOULD statement; the check still fails when the advice is not followed,
  because the spec gives a measurable reason (e.g. the Nagle delay of §2.3).
- stated: a rule the spec states as fact without an RFC 2119 keyword ("the node closes
  the connection"); conforming implementations are expected to follow it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

LEVELS = ("MUST", "SHOULD", "stated")
SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_HEADING = re.compile(r"^#{2,4} (§\d+(?:\.\d+)*)\s*(.*)$", re.MULTILINE)

F = TypeVar("F", bound=Callable)


def spec(section: str, title: str, level: str = "MUST", also: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Mark a check with the section it tests, a one-line statement of the rule, and its level."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}")
    if not re.fullmatch(r"§\d+(\.\d+)*", section):
        raise ValueError(f"section must look like §2.4, got {section!r}")
    return pytest.mark.spec(section, title, level=level, also=also)


def section_titles(path: Path = SPEC_PATH) -> dict[str, str]:
    """{"§2.4": "Size", …} from the spec's headings; empty if the file is not there."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    return {number: title.replace("`", "").strip() for number, title in _HEADING.findall(text)}


def section_key(section: str) -> tuple[int, ...]:
    return tuple(int(part) for part in section.lstrip("§").split("."))
