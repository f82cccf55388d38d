"""A bounded set that forgets its oldest entries: "have I seen this id before?"."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable


class SeenFilter:
    """Remembers the last `capacity` keys, so memory stays bounded under any flood."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()  # guards _keys
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """Remember key; True if it is new, False if it was already known."""
        with self._lock:
            if key in self._keys:
                return False
            self._keys[key] = None
            if len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
            return True

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._keys

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)
