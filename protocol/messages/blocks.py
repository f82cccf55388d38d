"""Blocks and transactions on the wire, and headers-first sync.

`getheaders {locator, stop}` asks for the headers after the first locator id
the receiver knows on its best chain; `headers` answers with at most 2,000.
`block` and `tx` carry one object each, their body being the object's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import fields
from protocol.block import NULL_ID, Block, BlockHeader
from protocol.messages.base import Message, register
from protocol.transaction import Transaction, TransactionFormatError

MAX_LOCATOR_SIZE = 101  # Bitcoin's MAX_LOCATOR_SZ
MAX_HEADERS = 2000  # Bitcoin's MAX_HEADERS_RESULTS


@register
@dataclass(frozen=True)
class GetHeaders(Message):
    command = "getheaders"

    locator: tuple[str, ...]  # block ids, newest first, thinning out towards genesis
    stop: str = NULL_ID  # the last header wanted; all zeros for "as many as you may send"

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "GetHeaders":
        locator = body.get("locator")
        if not isinstance(locator, list):
            raise fields.MessageError("field 'locator' must be a list of block ids")
        if len(locator) > MAX_LOCATOR_SIZE:
            raise fields.MessageError(f"a locator has at most {MAX_LOCATOR_SIZE} block ids", penalty=20)
        if not all(isinstance(item, str) and fields.HASH_ID.fullmatch(item) for item in locator):
            raise fields.MessageError("locator entries must be block ids (64 hex digits)")
        return cls(locator=tuple(locator), stop=fields.text(body, "stop", max_length=64, pattern=fields.HASH_ID,
                                                            default=NULL_ID))

    def to_body(self) -> dict[str, Any]:
        return {"locator": list(self.locator), "stop": self.stop}


@register
@dataclass(frozen=True)
class Headers(Message):
    command = "headers"

    headers: tuple[BlockHeader, ...]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Headers":
        items = body.get("headers")
        if not isinstance(items, list):
            raise fields.MessageError("field 'headers' must be a list of headers")
        if len(items) > MAX_HEADERS:
            raise fields.MessageError(f"a headers message has at most {MAX_HEADERS} headers", penalty=20)
        try:
            return cls(headers=tuple(BlockHeader.from_json(item) for item in items))
        except TransactionFormatError as error:
            raise fields.MessageError(str(error)) from None

    def to_body(self) -> dict[str, Any]:
        return {"headers": [header.to_json() for header in self.headers]}


@register
@dataclass(frozen=True)
class BlockMessage(Message):
    command = "block"

    block: Block

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "BlockMessage":
        try:
            return cls(block=Block.from_json(body))
        except TransactionFormatError as error:
            raise fields.MessageError(f"malformed block: {error}") from None

    def to_body(self) -> dict[str, Any]:
        return self.block.to_json()


@register
@dataclass(frozen=True)
class TxMessage(Message):
    command = "tx"

    tx: Transaction

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "TxMessage":
        try:
            return cls(tx=Transaction.from_json(body))
        except TransactionFormatError as error:
            raise fields.MessageError(f"malformed transaction: {error}") from None

    def to_body(self) -> dict[str, Any]:
        return self.tx.to_json()
