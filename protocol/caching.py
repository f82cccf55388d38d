"""computed_once: a value worked out on first use and kept on the object (txids, serializations).

It is functools.cached_property as Python 3.12 has it. Python 3.10 and 3.11
take one lock, shared by every object of every class, on each first read;
a node reads a txid, a serialization and a signed form of every
transaction it sees, and that lock was a tenth of the time to parse one.
It writes straight into the object's __dict__, so it works on frozen
dataclasses, and it is safe without a lock: two threads that race compute
the same value, and one of the two is kept.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class computed_once(Generic[T]):  # noqa: N801 (named as the decorator it is)
    def __init__(self, compute: Callable[[Any], T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> T:
        if instance is None:
            return self  # type: ignore[return-value]  (looked up on the class: the descriptor itself)
        value = instance.__dict__[self.name] = self.compute(instance)
        return value
