"""SPV: the wallet's own header chain, and the check of a merkle proof against it.

Mastering Bitcoin's simplified payment verification: a light wallet keeps
every block header (80 bytes each) but no blocks. It checks each header as a
full node does (proof of work, the expected difficulty, a time after the
median of the last 11: protocol.consensus), links each to its parent, and
follows the chain with the most work. A transaction counts as confirmed only
when a merkle branch leads from its txid to the merkle root of a header on
that chain; its depth in the chain is its number of confirmations.

What SPV cannot prove: that a coin is still unspent, or that the node told the
wallet about every coin. A node that lies about those can hide payments or make
a payment fail, but it cannot make the wallet count money that no block holds
without out-mining the network.

The headers live in SQLite next to the keystore. They are public data, so the
file is not encrypted.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from dataclasses import dataclass

from protocol.block import BlockHeader, work_for
from protocol.consensus import ConsensusError, check_header, check_header_context
from protocol.messages.wallet import Proof
from protocol.networks import Network

FINAL_CONFIRMATIONS = 6  # Mastering Bitcoin: six blocks deep is, by convention, irreversible
MAX_LOCATOR_DENSE = 10  # as the node's locator: the last 10 ids one by one, then doubling steps

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS headers (
    id        TEXT PRIMARY KEY,
    prev      TEXT NOT NULL,
    height    INTEGER NOT NULL,
    chainwork TEXT NOT NULL,   -- cumulative work as 64 hex digits: text order is numeric order
    header    BLOB NOT NULL    -- the 80 bytes
);
CREATE TABLE IF NOT EXISTS active (height INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
"""


class ProofError(Exception):
    """A merkle proof the wallet does not accept; str() says why, for the person."""


@dataclass(frozen=True)
class StoredHeader:
    header: BlockHeader
    height: int
    chainwork: int

    @property
    def block_id(self) -> str:
        return self.header.block_id


def open_data(path) -> sqlite3.Connection:
    """The wallet's data file (headers and transactions): one connection, guarded by its users' locks."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # headers can be fetched again; nothing here is lost for good
    return db


class HeaderChain:
    """Every header the wallet was shown that passes the header rules, and its most-work chain."""

    def __init__(self, db: sqlite3.Connection, network: Network) -> None:
        self.network = network
        self._db = db
        self._lock = threading.RLock()  # guards the tables below
        with self._lock:
            db.executescript(SCHEMA)
            stored = db.execute("SELECT value FROM meta WHERE key = 'genesis'").fetchone()
            if stored is None:
                self._store_genesis()
            elif stored[0] != network.genesis_id:
                raise ValueError(f"the wallet's header chain belongs to another network (genesis {stored[0][:16]}…)")

    def _store_genesis(self) -> None:
        genesis = self.network.genesis.header
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO meta VALUES ('genesis', ?), ('network', ?)",
                             (genesis.block_id, self.network.name))
            self._db.execute("INSERT INTO headers VALUES (?, ?, 0, ?, ?)",
                             (genesis.block_id, genesis.prev, _work_text(work_for(genesis.bits)), genesis.serialize()))
            self._db.execute("INSERT INTO active VALUES (0, ?)", (genesis.block_id,))

    # -- reading ------------------------------------------------------------------------------

    @property
    def height(self) -> int:
        with self._lock:
            return self._db.execute("SELECT MAX(height) FROM active").fetchone()[0]

    def tip(self) -> StoredHeader:
        with self._lock:
            return self._row(self.active_id(self.height))

    def active_id(self, height: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT id FROM active WHERE height = ?", (height,)).fetchone()
            return row[0] if row else None

    def active_height(self, block_id: str) -> int | None:
        """The height of this block on the wallet's best chain; None when it is not on it."""
        with self._lock:
            row = self._db.execute("SELECT height FROM active WHERE id = ?", (block_id,)).fetchone()
            return row[0] if row else None

    def knows(self, block_id: str) -> bool:
        with self._lock:
            return self._row(block_id) is not None

    def confirmations(self, height: int) -> int:
        """How deep a block at this height of the best chain is: 1 for the tip."""
        return self.height - height + 1

    def locator(self) -> list[str]:
        """Ids from the tip back to genesis, dense at first, then doubling the step (Bitcoin's)."""
        with self._lock:
            height, step, ids = self.height, 1, []
            while height > 0:
                ids.append(self.active_id(height))
                if len(ids) >= MAX_LOCATOR_DENSE:
                    step *= 2
                height -= step
            ids.append(self.network.genesis_id)
            return ids

    def _row(self, block_id: str) -> StoredHeader | None:
        row = self._db.execute("SELECT header, height, chainwork FROM headers WHERE id = ?", (block_id,)).fetchone()
        if row is None:
            return None
        return StoredHeader(_parse_header(row[0]), row[1], int(row[2], 16))

    # -- adding -------------------------------------------------------------------------------

    def add(self, headers: list[BlockHeader], now: float | None = None) -> int:
        """Check and store headers in order; move the best chain to the most work. How many were new.

        ConsensusError at the first header that breaks a rule or does not link to a known one
        (the headers before it are kept).
        """
        added = 0
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for header in headers:
                    added += self._add_one(header, now)
            finally:
                self._db.execute("COMMIT")  # what passed is kept, also when a later header fails
        return added

    def _add_one(self, header: BlockHeader, now: float) -> int:
        if self._row(header.block_id) is not None:
            return 0
        parent = self._row(header.prev)
        if parent is None:
            raise ConsensusError("prev-blk-not-found", f"header {header.block_id} does not link to a header "
                                                       "the wallet holds")
        check_header(header, self.network, now)  # proof of work, the network's limit, the time
        check_header_context(header, parent.height, self._branch_lookup(parent), self.network)
        stored = StoredHeader(header, parent.height + 1, parent.chainwork + work_for(header.bits))
        self._db.execute("INSERT INTO headers VALUES (?, ?, ?, ?, ?)",
                         (header.block_id, header.prev, stored.height, _work_text(stored.chainwork),
                          header.serialize()))
        if stored.chainwork > self.tip().chainwork:  # most work wins; a tie keeps the chain seen first
            self._make_active(stored)
        return 1

    def _make_active(self, stored: StoredHeader) -> None:
        """The best chain now ends at `stored`: replace the active entries above the fork point."""
        path = []
        while self.active_id(stored.height) != stored.block_id:
            path.append(stored)
            stored = self._row(stored.header.prev)
        self._db.execute("DELETE FROM active WHERE height > ?", (stored.height,))
        self._db.executemany("INSERT INTO active VALUES (?, ?)", [(s.height, s.block_id) for s in reversed(path)])

    def _branch_lookup(self, tip: StoredHeader):
        """header_at for the branch ending at `tip`: its own headers above the fork, the best chain's below."""
        off_chain: dict[int, BlockHeader] = {}
        stored = tip
        while self.active_id(stored.height) != stored.block_id:
            off_chain[stored.height] = stored.header
            stored = self._row(stored.header.prev)

        def header_at(height: int) -> BlockHeader:
            if height in off_chain:
                return off_chain[height]
            return self._row(self.active_id(height)).header
        return header_at


def verify_proof(proof: Proof, txid: str, chain: HeaderChain) -> int:
    """The height of the block the proof puts `txid` in; ProofError unless every link holds.

    Three things must hold: the branch leads from the txid to the header's merkle root
    (Proof.verifies); that header is on the wallet's own best chain (so it carries real
    work, checked when the header arrived); and at the height the node claims.
    """
    if proof.txid != txid:
        raise ProofError(f"the node sent a proof for {proof.txid}, not for {txid}")
    if not proof.verifies():
        raise ProofError(f"forged proof for tx {txid}: the merkle branch does not lead to the block header's "
                         "merkle root")
    block_id = proof.header.block_id
    height = chain.active_height(block_id)
    if height is None:
        where = "is not on the wallet's best chain" if chain.knows(block_id) else \
            "is not in the wallet's header chain"
        raise ProofError(f"forged proof for tx {txid}: its block header {block_id[:16]}… {where}")
    if height != proof.height:
        raise ProofError(f"forged proof for tx {txid}: it says height {proof.height}, the block is at {height}")
    return height


def _work_text(work: int) -> str:
    return f"{work:064x}"


def _parse_header(raw: bytes) -> BlockHeader:
    version, prev, root, time_, bits, nonce = struct.unpack("<I32s32sIII", raw)
    return BlockHeader(version, prev.hex(), root.hex(), time_, bits, nonce)
