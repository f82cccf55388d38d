"""Blocks: an 80-byte header that proof of work seals, and the transactions it commits to.

The header has Bitcoin's layout, so mining hashes the same 80 bytes a Bitcoin
miner does: version, previous block id, merkle root, time, target bits and
nonce, integers little-endian. The block id is sha256d of those bytes, read as
a big-endian number and shown in that order, so a valid block's id visibly
starts with zeros (Bitcoin shows its ids byte-reversed; see
docs/differences-from-bitcoin.md).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from protocol.caching import computed_once
from protocol.hashing import merkle_root, sha256d
from protocol.transaction import Transaction, TransactionFormatError, canonical_json

HEADER_SIZE = 80
HEADER_PREFIX_SIZE = 76  # everything but the nonce: what a miner hashes once per template (the midstate)
_HEADER_LAYOUT = struct.Struct("<I32s32sIII")
_HEX64 = re.compile(r"[0-9a-f]{64}")
NULL_ID = "00" * 32  # the genesis block's previous block


def bits_to_target(bits: int) -> int:
    """Bitcoin's compact target: one exponent byte, a three-byte mantissa."""
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    if bits & 0x00800000:
        raise ValueError("negative target")
    return mantissa >> 8 * (3 - exponent) if exponent <= 3 else mantissa << 8 * (exponent - 3)


def target_to_bits(target: int) -> int:
    """The compact form of a target, rounded down as Bitcoin's GetCompact does."""
    size = (target.bit_length() + 7) // 8
    mantissa = target >> 8 * (size - 3) if size > 3 else target << 8 * (3 - size)
    if mantissa & 0x00800000:  # the sign bit: shift into the next exponent
        mantissa >>= 8
        size += 1
    return size << 24 | mantissa


def work_for(bits: int) -> int:
    """Expected hashes to find a block at this target: what "most work" adds up."""
    return 2**256 // (bits_to_target(bits) + 1)


@dataclass(frozen=True)
class BlockHeader:
    version: int
    prev: str  # the previous block's id, 64 hex digits
    merkle_root: str
    time: int  # seconds since 1970
    bits: int  # compact target
    nonce: int

    def serialize(self) -> bytes:
        return _HEADER_LAYOUT.pack(self.version, bytes.fromhex(self.prev), bytes.fromhex(self.merkle_root),
                                   self.time, self.bits, self.nonce)

    @computed_once
    def block_id(self) -> str:
        return sha256d(self.serialize()).hex()

    @property
    def hash_value(self) -> int:
        return int(self.block_id, 16)

    def meets_target(self) -> bool:
        return self.hash_value <= bits_to_target(self.bits)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "prev": self.prev, "merkle_root": self.merkle_root,
                "time": self.time, "bits": self.bits, "nonce": self.nonce}

    @classmethod
    def from_json(cls, value: Any) -> "BlockHeader":
        if not isinstance(value, dict):
            raise TransactionFormatError("a block header must be a JSON object")
        prev, root = value.get("prev"), value.get("merkle_root")
        numbers = [value.get(name) for name in ("version", "time", "bits", "nonce")]
        if not all(isinstance(h, str) and _HEX64.fullmatch(h) for h in (prev, root)):
            raise TransactionFormatError("header prev and merkle_root must be 64 lowercase hex digits")
        if not all(type(n) is int and 0 <= n < 2**32 for n in numbers):
            raise TransactionFormatError("header version, time, bits and nonce must be 32-bit unsigned integers")
        version, time, bits, nonce = numbers
        return cls(version=version, prev=prev, merkle_root=root, time=time, bits=bits, nonce=nonce)


@dataclass(frozen=True)
class Block:
    header: BlockHeader
    transactions: tuple[Transaction, ...]

    @property
    def block_id(self) -> str:
        return self.header.block_id

    def computed_merkle_root(self) -> str:
        return merkle_root([bytes.fromhex(tx.txid) for tx in self.transactions]).hex()

    def to_json(self) -> dict[str, Any]:
        return {"header": self.header.to_json(), "txs": [tx.to_json() for tx in self.transactions]}

    @classmethod
    def from_json(cls, value: Any) -> "Block":
        if not isinstance(value, dict) or not isinstance(value.get("txs"), list):
            raise TransactionFormatError("a block is {\"header\": {...}, \"txs\": [...]}")
        return cls(header=BlockHeader.from_json(value.get("header")),
                   transactions=tuple([Transaction.from_json(tx) for tx in value["txs"]]))

    @computed_once
    def size(self) -> int:
        """Bytes of the block's canonical JSON: what the size limit counts."""
        # {"header":H,"txs":[T1,...,Tn]}, counted from the serializations the txids already made.
        header = len(canonical_json(self.header.to_json()))
        txs = sum(len(tx.serialized) for tx in self.transactions) + max(0, len(self.transactions) - 1)
        return len('{"header":') + header + len(',"txs":[') + txs + len("]}")
