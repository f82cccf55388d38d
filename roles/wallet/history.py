"""The transactions the wallet has seen: its payments in and out, and where each was proven.

Each is stored as the node sent it, after the wallet checked that its content
hashes to its txid (so the node cannot change an amount). A confirmed one
also records the block its merkle proof led to. The table sits in the same
SQLite file as the headers: public data, not encrypted.

History is computed from them: what a transaction paid to the wallet's
addresses, less what it spent of the wallet's own coins (the outputs of
earlier stored transactions).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from protocol.transaction import Transaction
from roles.wallet.coins import EPS

SCHEMA = """
CREATE TABLE IF NOT EXISTS txs (
    txid   TEXT PRIMARY KEY,
    tx     TEXT NOT NULL,      -- canonical JSON, checked against the txid
    mine   INTEGER NOT NULL,   -- 1 when this wallet made and sent it
    seen   REAL NOT NULL,      -- when the wallet first saw it
    block  TEXT,               -- the block its merkle proof led to, NULL while unconfirmed
    height INTEGER
);
"""


@dataclass(frozen=True)
class StoredTx:
    tx: Transaction
    mine: bool
    seen: float
    block: str | None
    height: int | None


@dataclass(frozen=True)
class HistoryEntry:
    txid: str
    seen: float
    net: dict[str, int]  # asset -> what the wallet gained (negative: spent), fee included for EPS
    fee: int | None  # EPS paid to the miner, when the wallet made the transaction
    height: int | None  # on the wallet's best chain; None while unconfirmed (or no longer on it)
    issued: str | None = None  # the ticker, when the transaction issued a token


class TxStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._lock = threading.RLock()  # guards the txs table
        with self._lock:
            db.executescript(SCHEMA)

    def put(self, tx: Transaction, mine: bool = False) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO txs (txid, tx, mine, seen) VALUES (?, ?, ?, ?)",
                             (tx.txid, tx.serialized.decode("utf-8"), int(mine), time.time()))
            if mine:
                self._db.execute("UPDATE txs SET mine = 1 WHERE txid = ?", (tx.txid,))

    def get(self, txid: str) -> StoredTx | None:
        with self._lock:
            row = self._db.execute("SELECT tx, mine, seen, block, height FROM txs WHERE txid = ?",
                                   (txid,)).fetchone()
        return _stored(row) if row else None

    def set_block(self, txid: str, block_id: str | None, height: int | None) -> None:
        with self._lock:
            self._db.execute("UPDATE txs SET block = ?, height = ? WHERE txid = ?", (block_id, height, txid))

    def all(self) -> list[StoredTx]:
        with self._lock:
            rows = self._db.execute("SELECT tx, mine, seen, block, height FROM txs ORDER BY seen").fetchall()
        return [_stored(row) for row in rows]


def _stored(row) -> StoredTx:
    return StoredTx(Transaction.from_json(json.loads(row[0])), bool(row[1]), row[2], row[3], row[4])


def history(store: TxStore, addresses: set[str], active_height) -> list[HistoryEntry]:
    """Every stored transaction with its effect on the wallet, oldest first.

    `active_height(block_id)` is the block's height on the wallet's best chain, or None.
    """
    stored = store.all()
    by_txid = {entry.tx.txid: entry.tx for entry in stored}
    entries = []
    for entry in stored:
        tx = entry.tx
        net: dict[str, int] = defaultdict(int)
        for output in tx.outputs:
            if output.address in addresses:
                net[output.token or EPS] += output.amount
        eps_in, all_inputs_known = 0, True
        for txin in tx.inputs:
            parent = by_txid.get(txin.prevout.txid) if txin.prevout else None
            if parent is None or txin.prevout.index >= len(parent.outputs):
                all_inputs_known = False
                continue
            spent = parent.outputs[txin.prevout.index]
            if spent.address in addresses:
                net[spent.token or EPS] -= spent.amount
                if spent.token is None:
                    eps_in += spent.amount
        fee = None
        if entry.mine and all_inputs_known and not tx.is_coinbase:
            fee = eps_in - sum(o.amount for o in tx.outputs if o.token is None)
        height = active_height(entry.block) if entry.block else None
        entries.append(HistoryEntry(tx.txid, entry.seen, {k: v for k, v in net.items() if v}, fee, height,
                                    tx.issue.ticker if tx.issue else None))
    return entries
