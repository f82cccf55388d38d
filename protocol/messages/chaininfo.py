"""Questions a person asks about the chain, named after Bitcoin Core's RPCs:
`getblockchaininfo`, `getblock {id | height}`, `gettx {txid}`, and `gettoken {ticker}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import fields
from protocol.block import BlockHeader
from protocol.coin_address import MAX_ADDRESS_LENGTH
from protocol.messages.base import Message, register
from protocol.tokens import MAX_TOKEN_NAME, MAX_TOKEN_SUPPLY, TICKER
from protocol.transaction import Transaction, TransactionFormatError

MAX_TXIDS_SHOWN = 20_000  # a block of 1 MB holds at most a few thousand transactions



def _optional_int(body: dict[str, Any], name: str) -> int | None:
    return None if body.get(name) is None else fields.integer(body, name, maximum=fields.MAX_INT63)


@register
@dataclass(frozen=True)
class GetBlockchainInfo(Message):
    command = "getblockchaininfo"


@register
@dataclass(frozen=True)
class BlockchainInfo(Message):
    command = "blockchaininfo"
    is_answer = True

    network: str
    height: int  # of the active chain's tip
    tip: str
    difficulty: float  # how many times harder than the network's easiest target
    headers: int  # height of the best header known (ahead of `height` while syncing)
    mempool_size: int  # transactions
    mempool_bytes: int

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "BlockchainInfo":
        return cls(network=fields.text(body, "network", max_length=16),
                   height=fields.integer(body, "height", maximum=fields.MAX_INT63),
                   tip=fields.text(body, "tip", max_length=64, pattern=fields.HASH_ID),
                   difficulty=fields.number(body, "difficulty"),
                   headers=fields.integer(body, "headers", maximum=fields.MAX_INT63),
                   mempool_size=fields.integer(body, "mempool_size", maximum=fields.MAX_INT63),
                   mempool_bytes=fields.integer(body, "mempool_bytes", maximum=fields.MAX_INT63))


@register
@dataclass(frozen=True)
class GetBlock(Message):
    """By id or by height on the active chain: `getblock {"height": 0}`."""

    command = "getblock"

    id: str | None = None
    height: int | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "GetBlock":
        block_id = fields.text(body, "id", max_length=64, pattern=fields.HASH_ID, default=None)
        height = fields.integer(body, "height", maximum=2**31 - 1, default=None)
        if (block_id is None) == (height is None):
            raise fields.MessageError("getblock takes exactly one of 'id' or 'height'", penalty=0)
        return cls(id=block_id, height=height)


@register
@dataclass(frozen=True)
class BlockInfo(Message):
    command = "blockinfo"
    is_answer = True

    id: str
    height: int
    confirmations: int  # 0 when the block is not on the active chain
    header: BlockHeader
    size: int
    txids: tuple[str, ...]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "BlockInfo":
        txids = body.get("txids")
        if not isinstance(txids, list) or len(txids) > MAX_TXIDS_SHOWN or not all(
                isinstance(t, str) and fields.HASH_ID.fullmatch(t) for t in txids):
            raise fields.MessageError("field 'txids' must be a list of txids")
        try:
            header = BlockHeader.from_json(body.get("header"))
        except TransactionFormatError as error:
            raise fields.MessageError(str(error)) from None
        return cls(id=fields.text(body, "id", max_length=64, pattern=fields.HASH_ID),
                   height=fields.integer(body, "height", maximum=fields.MAX_INT63),
                   confirmations=fields.integer(body, "confirmations", maximum=fields.MAX_INT63),
                   header=header, size=fields.integer(body, "size", maximum=fields.MAX_INT63), txids=tuple(txids))

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "height": self.height, "confirmations": self.confirmations,
                "header": self.header.to_json(), "size": self.size, "txids": list(self.txids)}


@register
@dataclass(frozen=True)
class GetTx(Message):
    command = "gettx"

    txid: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "GetTx":
        return cls(txid=fields.text(body, "txid", max_length=64, pattern=fields.HASH_ID))


@register
@dataclass(frozen=True)
class TxInfo(Message):
    command = "txinfo"
    is_answer = True

    txid: str
    tx: Transaction
    block: str | None  # the block holding it on the active chain; None while in the mempool
    height: int | None
    confirmations: int  # 0 while in the mempool

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "TxInfo":
        try:
            tx = Transaction.from_json(body.get("tx"))
        except TransactionFormatError as error:
            raise fields.MessageError(str(error)) from None
        return cls(txid=fields.text(body, "txid", max_length=64, pattern=fields.HASH_ID), tx=tx,
                   block=fields.text(body, "block", max_length=64, pattern=fields.HASH_ID, default=None),
                   height=_optional_int(body, "height"),
                   confirmations=fields.integer(body, "confirmations", maximum=fields.MAX_INT63))

    def to_body(self) -> dict[str, Any]:
        return {"txid": self.txid, "tx": self.tx.to_json(), "block": self.block, "height": self.height,
                "confirmations": self.confirmations}


@register
@dataclass(frozen=True)
class GetToken(Message):
    """What the chain knows of a token: its issue, what was burned, and how many addresses hold it."""

    command = "gettoken"

    ticker: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "GetToken":
        return cls(ticker=fields.text(body, "ticker", max_length=8, pattern=TICKER))


@register
@dataclass(frozen=True)
class TokenInfo(Message):
    command = "token"
    is_answer = True

    ticker: str
    name: str
    supply: int  # as issued
    burned: int
    issuer: str  # the address that paid for the issue (its first input's coin)
    txid: str  # the issue transaction
    height: int
    holders: int  # addresses holding unspent outputs of the token now

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "TokenInfo":
        return cls(ticker=fields.text(body, "ticker", max_length=8, pattern=TICKER),
                   name=fields.text(body, "name", max_length=MAX_TOKEN_NAME),
                   supply=fields.integer(body, "supply", maximum=MAX_TOKEN_SUPPLY),
                   burned=fields.integer(body, "burned", maximum=MAX_TOKEN_SUPPLY),
                   issuer=fields.text(body, "issuer", max_length=MAX_ADDRESS_LENGTH),
                   txid=fields.text(body, "txid", max_length=64, pattern=fields.HASH_ID),
                   height=fields.integer(body, "height", maximum=fields.MAX_INT63),
                   holders=fields.integer(body, "holders", maximum=fields.MAX_INT63))
