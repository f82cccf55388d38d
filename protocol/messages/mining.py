"""`getmininginfo` -> `mininginfo`: how fast this node mines, and on what (Bitcoin's RPC of that name)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import fields
from protocol.messages.base import Message, register




@register
@dataclass(frozen=True)
class GetMiningInfo(Message):
    command = "getmininginfo"


@register
@dataclass(frozen=True)
class MiningInfo(Message):
    command = "mininginfo"
    is_answer = True

    hashrate: float  # hashes per second, all workers, over the last 10 s
    difficulty: float
    height: int  # of the tip being built on
    template_txs: int  # transactions in the current template, besides the coinbase
    blocks_found: int
    workers: int
    address: str  # where the rewards go

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "MiningInfo":
        return cls(hashrate=fields.number(body, "hashrate"), difficulty=fields.number(body, "difficulty"),
                   height=fields.integer(body, "height", maximum=fields.MAX_INT63),
                   template_txs=fields.integer(body, "template_txs", maximum=fields.MAX_INT63),
                   blocks_found=fields.integer(body, "blocks_found", maximum=fields.MAX_INT63),
                   workers=fields.integer(body, "workers", maximum=fields.MAX_INT63),
                   address=fields.text(body, "address", max_length=40))
