"""Transactions in the UTXO model, as Bitcoin's, written as canonical JSON.

    {"version":1,
     "inputs":[{"txid":"9c..","index":0,"pubkey":"02ab..","signature":"3044.."}],
     "outputs":[{"amount":4999990000,"address":"E5mx.."}],
     "locktime":0}

An output may carry a token instead of EPS (`"token":"XSHOP"`, the amount
then counts token units), and a transaction may issue or burn tokens
(`"issue"`, `"burn"`: protocol/tokens.py). Fields that are absent are left out
of the JSON, so a plain EPS transaction reads exactly as above.

An input spends an earlier output (txid, index) and proves ownership with the
public key whose hash the output's address holds, and a secp256k1 signature.
A coinbase transaction has one input `{"coinbase": HEIGHT, "data": TEXT}` and
creates the block reward. Amounts are integers of base units (1 EPS = 10^8),
never floats.

Ids: the txid is sha256d of the canonical JSON (keys sorted, no spaces,
UTF-8). What input i signs is sha256d of b"epscoin-sighash", i as 4 bytes,
and the canonical JSON with every signature set to "" (docs/protocol.md).
The canonical JSON is written field by field (_canonical_transaction), which
gives the same bytes as canonical_json(tx.to_json()), only faster, and the
signed form is those bytes with the signatures blanked.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import coincurve

from protocol.caching import computed_once
from protocol.fields import utf8_encodable
from protocol.hashing import sha256d
from protocol.tokens import TokenBurn, TokenFormatError, TokenIssue, burns_from_json, check_ticker

COIN = 100_000_000  # base units in 1 EPS
MAX_MONEY = 21_000_000 * COIN  # Bitcoin's MAX_MONEY: no amount, nor any sum of amounts, may exceed it
MAX_COINBASE_DATA = 100  # characters; Bitcoin's coinbase scriptSig is at most 100 bytes
MAX_TX_SIZE = 1_000_000  # bytes of canonical JSON; a transaction must fit in a block
SIGHASH_TAG = b"epscoin-sighash"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_PUBKEY = re.compile(r"0[23][0-9a-f]{64}")  # compressed secp256k1 point
_SIGNATURE = re.compile(r"[0-9a-f]{16,144}")  # DER, 8 to 72 bytes (an even count of digits, checked apart:
# the pattern (?:[0-9a-f]{2}){8,72} says it in one go, but runs seven times slower)
_SIGNATURE_VALUE = re.compile(rb'"signature":"[^"\\]*(?:\\.[^"\\]*)*"')  # the key and its JSON string, escapes included


class TransactionFormatError(ValueError):
    """The JSON is not a well-formed transaction (before any rule about money or signatures)."""


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # built once: json.dumps
# with these options would build a new encoder on every call


def canonical_json(value: Any) -> bytes:
    """The one byte string every implementation hashes: sorted keys, no spaces, UTF-8."""
    return _CANONICAL.encode(value).encode("utf-8")


class OutPoint(NamedTuple):
    """An output of an earlier transaction. A named tuple, not a dataclass: a node hashes and
    builds millions of these, and a tuple does both in C."""

    txid: str
    index: int


@dataclass(frozen=True)
class TxIn:
    """Spends `prevout`; for a coinbase, prevout is None and `coinbase_height` is set."""

    prevout: OutPoint | None
    pubkey: str = ""
    signature: str = ""
    coinbase_height: int | None = None
    coinbase_data: str = ""

    @property
    def is_coinbase(self) -> bool:
        return self.prevout is None

    def to_json(self) -> dict[str, Any]:
        if self.prevout is None:
            return {"coinbase": self.coinbase_height, "data": self.coinbase_data}
        return {"txid": self.prevout.txid, "index": self.prevout.index, "pubkey": self.pubkey,
                "signature": self.signature}

    @classmethod
    def from_json(cls, item: Any) -> "TxIn":
        if not isinstance(item, dict):
            raise TransactionFormatError("an input must be a JSON object")
        if "coinbase" in item:
            height, data = item.get("coinbase"), item.get("data", "")
            if type(height) is not int or not 0 <= height < 2**31:
                raise TransactionFormatError("coinbase height must be an integer from 0")
            if not isinstance(data, str) or len(data) > MAX_COINBASE_DATA or not utf8_encodable(data):
                raise TransactionFormatError(f"coinbase data must be text of at most {MAX_COINBASE_DATA} characters")
            return cls(prevout=None, coinbase_height=height, coinbase_data=data)
        txid, index = item.get("txid"), item.get("index")
        pubkey, signature = item.get("pubkey"), item.get("signature", "")
        if not isinstance(txid, str) or not _HEX64.fullmatch(txid):
            raise TransactionFormatError("input txid must be 64 lowercase hex digits")
        if type(index) is not int or not 0 <= index < 2**32:
            raise TransactionFormatError("input index must be an integer from 0 to 2^32-1")
        if not isinstance(pubkey, str) or not _PUBKEY.fullmatch(pubkey):
            raise TransactionFormatError("input pubkey must be a compressed public key in hex (66 digits)")
        if not isinstance(signature, str) or (signature and not (_SIGNATURE.fullmatch(signature)
                                                                 and len(signature) % 2 == 0)):
            raise TransactionFormatError("input signature must be a DER signature in hex")
        return cls(prevout=OutPoint(txid, index), pubkey=pubkey, signature=signature)


@dataclass(frozen=True)
class TxOut:
    amount: int  # base units of EPS, or whole units of `token`
    address: str
    token: str | None = None  # None: EPS

    def to_json(self) -> dict[str, Any]:
        if self.token is None:
            return {"amount": self.amount, "address": self.address}
        return {"amount": self.amount, "address": self.address, "token": self.token}

    @classmethod
    def from_json(cls, item: Any) -> "TxOut":
        if not isinstance(item, dict):
            raise TransactionFormatError("an output must be a JSON object")
        amount, address = item.get("amount"), item.get("address")
        if type(amount) is not int:
            raise TransactionFormatError("output amount must be an integer number of base units")
        if not isinstance(address, str) or not 0 < len(address) <= 40 or not utf8_encodable(address):
            raise TransactionFormatError("output address must be text of 1 to 40 characters")
        token = None
        if "token" in item:  # present means a ticker: a null would give two spellings of one txid
            try:
                token = check_ticker(item["token"])
            except TokenFormatError as error:
                raise TransactionFormatError(f"output token: {error}") from None
        return cls(amount=amount, address=address, token=token)


@dataclass(frozen=True)
class Transaction:
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    version: int = 1
    locktime: int = 0
    issue: TokenIssue | None = None
    burn: tuple[TokenBurn, ...] = ()

    @property
    def is_coinbase(self) -> bool:
        return len(self.inputs) == 1 and self.inputs[0].is_coinbase

    @property
    def has_tokens(self) -> bool:
        return self.issue is not None or bool(self.burn) or any(o.token is not None for o in self.outputs)

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"version": self.version, "inputs": [i.to_json() for i in self.inputs],
                                 "outputs": [o.to_json() for o in self.outputs], "locktime": self.locktime}
        if self.issue is not None:
            value["issue"] = self.issue.to_json()
        if self.burn:
            value["burn"] = [burn.to_json() for burn in self.burn]
        return value

    @classmethod
    def from_json(cls, value: Any) -> "Transaction":
        if not isinstance(value, dict):
            raise TransactionFormatError("a transaction must be a JSON object")
        inputs, outputs = value.get("inputs"), value.get("outputs")
        version, locktime = value.get("version", 1), value.get("locktime", 0)
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            raise TransactionFormatError("a transaction needs lists 'inputs' and 'outputs'")
        if type(version) is not int or not 0 <= version < 2**31 or type(locktime) is not int \
                or not 0 <= locktime < 2**32:
            raise TransactionFormatError("version must be an integer from 0 to 2^31-1, locktime from 0 to 2^32-1")
        try:
            issue = TokenIssue.from_json(value["issue"]) if "issue" in value else None
            burn = burns_from_json(value["burn"]) if "burn" in value else ()
        except TokenFormatError as error:
            raise TransactionFormatError(str(error)) from None
        return cls(inputs=tuple([TxIn.from_json(i) for i in inputs]),
                   outputs=tuple([TxOut.from_json(o) for o in outputs]), version=version, locktime=locktime,
                   issue=issue, burn=burn)

    @computed_once
    def serialized(self) -> bytes:
        """canonical_json(self.to_json()), written directly: a node serializes every transaction it
        sees, and this is three times faster than building the dicts and encoding them
        (tests/test_serialization.py holds the two equal for any transaction)."""
        return _canonical_transaction(self)

    @computed_once
    def txid(self) -> str:
        return sha256d(self.serialized).hex()

    @property
    def size(self) -> int:
        return len(self.serialized)

    @computed_once
    def _unsigned(self) -> bytes:
        """The canonical JSON with every signature "" (what the signature hash covers).

        Made from the serialized bytes by blanking each "signature" value: in canonical JSON a
        quote inside a string is always escaped, so `"signature":"` can only be that key."""
        return _SIGNATURE_VALUE.sub(b'"signature":""', self.serialized)

    def signature_hash(self, index: int) -> bytes:
        """What input `index` signs: the transaction with every signature blanked, and the index."""
        return sha256d(SIGHASH_TAG + struct.pack("<I", index) + self._unsigned)

    def signed(self, keys: dict[int, coincurve.PrivateKey]) -> "Transaction":
        """A copy with inputs signed by the given private keys (input index -> key)."""
        # The pubkeys are part of what is signed, so they go in first.
        inputs = list(self.inputs)
        for index, key in keys.items():
            inputs[index] = replace(inputs[index], pubkey=key.public_key.format().hex())
        with_keys = replace(self, inputs=tuple(inputs))
        for index, key in keys.items():
            signature = key.sign(with_keys.signature_hash(index), hasher=None).hex()
            inputs[index] = replace(inputs[index], signature=signature)
        return replace(self, inputs=tuple(inputs))

    def signature_check(self, index: int) -> "SignatureCheck":
        """What verifying input `index` takes, so many checks can run at once (see verify_signature)."""
        txin = self.inputs[index]
        return SignatureCheck(txin.pubkey, txin.signature, self.signature_hash(index))

    def signature_valid(self, index: int) -> bool:
        """Whether input `index` carries a valid low-S signature by its pubkey (libsecp256k1)."""
        return verify_signature(self.signature_check(index))


def _json_string(text: str) -> str:
    """A JSON string as canonical_json writes it; most fields (hex, Base58, tickers) need no escaping."""
    return f'"{text}"' if text.isalnum() and text.isascii() else _CANONICAL.encode(text)


def _canonical_transaction(tx: Transaction) -> bytes:
    """The canonical JSON of a transaction, keys in sorted order at every level (§11.1)."""
    fields = []
    if tx.burn:
        fields.append('"burn":[' + ",".join(f'{{"amount":{burn.amount},"token":{_json_string(burn.token)}}}'
                                            for burn in tx.burn) + "]")
    inputs = []
    for txin in tx.inputs:
        if txin.prevout is None:
            inputs.append(f'{{"coinbase":{txin.coinbase_height},"data":{_json_string(txin.coinbase_data)}}}')
        else:
            inputs.append(f'{{"index":{txin.prevout.index},"pubkey":{_json_string(txin.pubkey)},'
                          f'"signature":{_json_string(txin.signature)},"txid":{_json_string(txin.prevout.txid)}}}')
    fields.append('"inputs":[' + ",".join(inputs) + "]")
    if tx.issue is not None:
        fields.append(f'"issue":{{"name":{_json_string(tx.issue.name)},"supply":{tx.issue.supply},'
                      f'"ticker":{_json_string(tx.issue.ticker)}}}')
    fields.append(f'"locktime":{tx.locktime}')
    outputs = []
    for output in tx.outputs:
        token = "" if output.token is None else f',"token":{_json_string(output.token)}'
        outputs.append(f'{{"address":{_json_string(output.address)},"amount":{output.amount}{token}}}')
    fields.append('"outputs":[' + ",".join(outputs) + "]")
    fields.append(f'"version":{tx.version}')
    return ("{" + ",".join(fields) + "}").encode("utf-8")


class SignatureCheck(NamedTuple):
    """What verifying one input takes (a named tuple: one is made per input of every block)."""

    pubkey: str  # hex, as in the input
    signature: str  # hex DER
    message_hash: bytes  # the input's signature hash


def verify_signature(check: SignatureCheck) -> bool:
    """libsecp256k1's verdict. It releases the GIL, so threads verify on every core at once."""
    try:
        key = coincurve.PublicKey(bytes.fromhex(check.pubkey))
        return key.verify(bytes.fromhex(check.signature), check.message_hash, hasher=None)
    except (ValueError, TypeError):
        return False


def verify_all(checks: list[SignatureCheck]) -> list[bool]:
    """verify_signature for each check, in order."""
    return [verify_signature(check) for check in checks]


def coinbase_transaction(height: int, outputs: tuple[TxOut, ...], data: str = "") -> Transaction:
    return Transaction(inputs=(TxIn(prevout=None, coinbase_height=height, coinbase_data=data),), outputs=outputs)
