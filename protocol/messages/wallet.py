"""What a light wallet asks a wallet-services node: its coins (`getutxos`) and proofs (`getproof`).

A light wallet keeps only block headers; it asks a node which coins pay its
addresses, and for a merkle branch that proves a transaction is in a block it
can check against a header it holds (Mastering Bitcoin's SPV).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from protocol import fields
from protocol.block import BlockHeader
from protocol.coin_address import MAX_ADDRESS_LENGTH
from protocol.messages.base import Message, register
from protocol.tokens import TICKER
from protocol.transaction import TransactionFormatError

MAX_ADDRESSES_PER_QUERY = 100
MAX_UTXOS_PER_ANSWER = 1000  # more are paged: ask again with `after`
MAX_BRANCH = 64  # a merkle branch of 64 hashes covers 2^64 transactions
_CURSOR = re.compile(r"[0-9a-f]{64}:[0-9]{1,10}")


@register
@dataclass(frozen=True)
class GetUtxos(Message):
    command = "getutxos"

    addresses: tuple[str, ...]
    after: str | None = None  # "txid:index" of the last coin of the previous page

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "GetUtxos":
        addresses = body.get("addresses")
        if not isinstance(addresses, list) or not 0 < len(addresses) <= MAX_ADDRESSES_PER_QUERY or not all(
                isinstance(a, str) and 0 < len(a) <= MAX_ADDRESS_LENGTH for a in addresses):
            raise fields.MessageError(f"field 'addresses' must be a list of 1 to {MAX_ADDRESSES_PER_QUERY} addresses")
        for address in addresses:
            fields.check_printable(address, "an address")
        return cls(addresses=tuple(addresses),
                   after=fields.text(body, "after", max_length=80, pattern=_CURSOR, default=None))

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"addresses": list(self.addresses)}
        if self.after is not None:
            body["after"] = self.after
        return body


@dataclass(frozen=True)
class UtxoRow:
    txid: str
    index: int
    amount: int
    address: str
    height: int | None  # None while the creating transaction waits in the mempool
    confirmations: int
    coinbase: bool
    token: str | None = None  # None: `amount` is EPS base units; else units of this token

    @classmethod
    def from_item(cls, item: Any) -> "UtxoRow":
        if not isinstance(item, dict) or type(item.get("coinbase")) is not bool:
            raise fields.MessageError("each utxo must be an object with a boolean 'coinbase'")
        height = item.get("height")
        return cls(txid=fields.text(item, "txid", max_length=64, pattern=fields.HASH_ID),
                   index=fields.integer(item, "index", maximum=2**32 - 1),
                   amount=fields.integer(item, "amount", maximum=fields.MAX_INT63),
                   address=fields.text(item, "address", max_length=MAX_ADDRESS_LENGTH),
                   height=None if height is None else fields.integer(item, "height", maximum=fields.MAX_INT63),
                   confirmations=fields.integer(item, "confirmations", maximum=fields.MAX_INT63),
                   coinbase=item["coinbase"],
                   token=fields.text(item, "token", max_length=8, pattern=TICKER, default=None))


@register
@dataclass(frozen=True)
class Utxos(Message):
    """Unspent outputs paying the asked addresses, confirmed and waiting, minus those waiting to be spent."""

    command = "utxos"
    is_answer = True

    utxos: tuple[UtxoRow, ...]
    next: str | None = None  # the cursor for the next page; None when this is the last

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Utxos":
        rows = body.get("utxos")
        if not isinstance(rows, list) or len(rows) > MAX_UTXOS_PER_ANSWER:
            raise fields.MessageError(f"field 'utxos' must be a list of at most {MAX_UTXOS_PER_ANSWER}")
        return cls(utxos=tuple(UtxoRow.from_item(row) for row in rows),
                   next=fields.text(body, "next", max_length=80, pattern=_CURSOR, default=None))

    def to_body(self) -> dict[str, Any]:
        return {"utxos": [asdict(row) for row in self.utxos], "next": self.next}


@register
@dataclass(frozen=True)
class GetProof(Message):
    command = "getproof"

    txid: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "GetProof":
        return cls(txid=fields.text(body, "txid", max_length=64, pattern=fields.HASH_ID))


@register
@dataclass(frozen=True)
class Proof(Message):
    """The block header holding a transaction, and the merkle branch from the txid to its root."""

    command = "proof"
    is_answer = True

    txid: str
    header: BlockHeader
    height: int
    position: int  # the transaction's index in the block
    branch: tuple[str, ...]  # sibling hashes, leaf level first

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Proof":
        branch = body.get("branch")
        if not isinstance(branch, list) or len(branch) > MAX_BRANCH or not all(
                isinstance(h, str) and fields.HASH_ID.fullmatch(h) for h in branch):
            raise fields.MessageError(f"field 'branch' must be a list of at most {MAX_BRANCH} hashes")
        try:
            header = BlockHeader.from_json(body.get("header"))
        except TransactionFormatError as error:
            raise fields.MessageError(str(error)) from None
        return cls(txid=fields.text(body, "txid", max_length=64, pattern=fields.HASH_ID), header=header,
                   height=fields.integer(body, "height", maximum=fields.MAX_INT63),
                   position=fields.integer(body, "position", maximum=2**32 - 1), branch=tuple(branch))

    def to_body(self) -> dict[str, Any]:
        return {"txid": self.txid, "header": self.header.to_json(), "height": self.height,
                "position": self.position, "branch": list(self.branch)}

    def verifies(self) -> bool:
        """Whether the branch leads from the txid to the header's merkle root (check PoW and the chain apart)."""
        from protocol.hashing import root_from_branch
        root = root_from_branch(bytes.fromhex(self.txid), [bytes.fromhex(h) for h in self.branch], self.position)
        return root.hex() == self.header.merkle_root
