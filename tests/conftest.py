"""Fixtures: `node` is a fresh node process with short timeouts for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conformance.conftest import pytest_addoption  # noqa: F401  (--target etc. in a whole-suite run)
from tests.support import NodeProcess

# Short enough that timeout tests run in about a second, long enough for a loaded 2-core CI box.
TEST_TIMEOUTS = ("--handshake-timeout", "1.5", "--frame-timeout", "1.5")
# A test node finds no peers by itself: the built-in seed list points at the demo network.
ISOLATED = ("--no-fixed-seeds",)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start nodes with extra arguments; every node started is stopped after the test."""
    started: list[NodeProcess] = []

    def start(*args: str, name: str | None = None, **kwargs) -> NodeProcess:
        data_dir = tmp_path / (name or f"node{len(started)}")
        node = NodeProcess(data_dir, *TEST_TIMEOUTS, *ISOLATED, *args, **kwargs)
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()


@pytest.fixture
def node(start_node) -> NodeProcess:
    return start_node()
