"""Inventory: `inv` announces blocks and transactions by id, `getdata` asks for them,
`notfound` says which are not here, and `mempool` asks for an `inv` of the mempool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import fields
from protocol.messages.base import Message, register

MAX_INV_ITEMS = 50_000  # Bitcoin's MAX_INV_SZ
MAX_GETDATA_ITEMS = 1000  # a getdata asks for at most this many objects
INVENTORY_TYPES = ("block", "tx")


@dataclass(frozen=True)
class InvItem:
    type: str  # "block" or "tx"
    id: str  # block id or txid, 64 hex digits

    @classmethod
    def from_item(cls, item: Any) -> "InvItem":
        if not isinstance(item, dict):
            raise fields.MessageError("each inventory item must be a JSON object")
        kind = item.get("type")
        if kind not in INVENTORY_TYPES:
            raise fields.MessageError("inventory type must be 'block' or 'tx'")
        return cls(type=kind, id=fields.text(item, "id", max_length=64, pattern=fields.HASH_ID))


def _items(body: dict[str, Any], limit: int, command: str) -> tuple[InvItem, ...]:
    items = body.get("items")
    if not isinstance(items, list):
        raise fields.MessageError("field 'items' must be a list")
    if len(items) > limit:
        raise fields.MessageError(f"{command} has {len(items)} items; at most {limit}", penalty=20)
    return tuple(InvItem.from_item(item) for item in items)


@dataclass(frozen=True)
class _Inventory(Message):
    items: tuple[InvItem, ...]
    limit = MAX_INV_ITEMS

    @classmethod
    def from_body(cls, body: dict[str, Any]):
        return cls(items=_items(body, cls.limit, cls.command))

    def to_body(self) -> dict[str, Any]:
        return {"items": [{"type": item.type, "id": item.id} for item in self.items]}


@register
@dataclass(frozen=True)
class Inv(_Inventory):
    """"I have these": new blocks and transactions, announced by id."""

    command = "inv"


@register
@dataclass(frozen=True)
class GetData(_Inventory):
    """"Send me these": answered with one `block` or `tx` each, and one `notfound` for the rest."""

    command = "getdata"
    limit = MAX_GETDATA_ITEMS


@register
@dataclass(frozen=True)
class NotFound(_Inventory):
    """The items of a getdata this node does not have."""

    command = "notfound"
    is_answer = True


@register
@dataclass(frozen=True)
class MempoolRequest(Message):
    """"What is in your mempool?" Answered with an `inv` of its transactions."""

    command = "mempool"
