"""The chain store: headers, blocks, the UTXO set, undo data and a tx index, in SQLite.

Bitcoin Core keeps these in LevelDB and flat files; epscoin keeps them in one
SQLite file (`chain.sqlite` in the data directory), tables a student can read.
The rules it follows are Bitcoin's:

- every header is stored with its cumulative work; the active chain is the
  connected chain ending at the most work whose blocks we have;
- connecting or disconnecting one block is one SQLite transaction, so a node
  killed at any moment reopens with a UTXO set that equals a replay of its
  active chain; a reorg is a series of such steps, resumed on restart;
- disconnecting a block puts back the coins it spent from its undo data;
- coins are cached in memory, as Bitcoin's CCoinsViewCache: while the
  node syncs (its best header is ahead of its tip), the changes to the utxo
  and txindex tables are written in batches of many blocks, so a coin created
  and spent within one batch never touches the table. `meta.coins_tip` names
  the block those tables are at; a node killed mid-batch replays the blocks above it
  when it reopens (Bitcoin's ReplayBlocks), so the reopened UTXO set still
  equals a replay of the active chain.

Consensus checks come from protocol.consensus; this module decides nothing
about validity itself. One lock (Bitcoin calls its own cs_main) serialises
every change.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from protocol.block import NULL_ID, Block, BlockHeader, work_for
from protocol.consensus import (Coin, ConsensusError, SignatureBatch, check_block_context, check_header,
                                check_header_context, check_inputs, queue_signatures)
from protocol.networks import Network
from protocol.transaction import OutPoint, Transaction, canonical_json
from roles.signature_workers import SignatureWorkers

log = logging.getLogger("epscoin.chain")

# Header status, as Bitcoin's BlockStatus in spirit.
HEADER_ONLY, HAVE_DATA, CONNECTED, INVALID = 0, 1, 2, -1
MAX_LOCATOR_DENSE = 10  # the locator lists the last 10 blocks one by one, then doubles its steps
COIN_CACHE_SIZE = 200_000  # coins kept in memory, about 50 MB; Bitcoin's -dbcache is 450 MB
FLUSH_EVERY_BLOCKS = 2_000  # while syncing, the utxo table is written at least this often
FLUSH_DIRTY_COINS = 200_000  # ... or when this many coin changes wait
WRITE_THROUGH_ROWS = 10_000  # at the tip, a batch of up to this many row changes is written at once
AHEAD_BLOCKS = 4  # blocks whose signatures may be queued before they are connected
RECENT_BLOCKS = 4  # blocks store_block keeps parsed, so connecting them needs no second parse
SQLITE_CACHE_KIB = 64 * 1024  # SQLite's page cache; its default of 2 MB misses on every UTXO lookup

SCHEMA = """
CREATE TABLE IF NOT EXISTS headers (
    id        TEXT PRIMARY KEY,
    prev      TEXT NOT NULL,
    height    INTEGER NOT NULL,
    chainwork TEXT NOT NULL,      -- cumulative work as 64 hex digits: text order is numeric order
    header    BLOB NOT NULL,      -- the 80 bytes
    status    INTEGER NOT NULL,   -- 0 header only, 1 block stored, 2 connected once, -1 invalid
    chain_data INTEGER NOT NULL DEFAULT 0  -- 1 when this block and all its ancestors are stored (nChainTx)
);
CREATE INDEX IF NOT EXISTS headers_by_work ON headers (chainwork);
CREATE INDEX IF NOT EXISTS headers_best ON headers (chainwork DESC, height ASC);  -- best_header without a scan
CREATE INDEX IF NOT EXISTS headers_connectable ON headers (chain_data, chainwork);
CREATE INDEX IF NOT EXISTS headers_by_prev ON headers (prev);
CREATE TABLE IF NOT EXISTS blocks (id TEXT PRIMARY KEY, data BLOB NOT NULL);   -- canonical JSON
CREATE TABLE IF NOT EXISTS active (height INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS utxo (
    txid TEXT NOT NULL, idx INTEGER NOT NULL, amount INTEGER NOT NULL, address TEXT NOT NULL,
    height INTEGER NOT NULL, coinbase INTEGER NOT NULL,
    token TEXT,                   -- NULL: EPS; else the ticker whose units `amount` counts
    PRIMARY KEY (txid, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS utxo_by_address ON utxo (address);
CREATE TABLE IF NOT EXISTS tokens (  -- every token issued on the active chain
    ticker TEXT PRIMARY KEY, name TEXT NOT NULL, supply INTEGER NOT NULL, issuer TEXT NOT NULL,
    txid TEXT NOT NULL, height INTEGER NOT NULL, burned INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS undo (id TEXT PRIMARY KEY, data BLOB NOT NULL);     -- coins the block spent
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);  -- coins_tip: the utxo table's block
CREATE TABLE IF NOT EXISTS txindex (
    txid TEXT PRIMARY KEY, block TEXT NOT NULL, position INTEGER NOT NULL
) WITHOUT ROWID;
"""


def _work_text(work: int) -> str:
    return f"{work:064x}"


@dataclass(frozen=True)
class StoredHeader:
    header: BlockHeader
    height: int
    chainwork: int
    status: int

    @property
    def block_id(self) -> str:
        return self.header.block_id


@dataclass(frozen=True)
class TokenRecord:
    ticker: str
    name: str
    supply: int  # as issued
    burned: int  # destroyed since, by explicit burns
    issuer: str  # the address whose coin the issue's first input spent
    txid: str
    height: int
    holders: int = 0

    @property
    def circulating(self) -> int:
        return self.supply - self.burned


@dataclass(frozen=True)
class ChainChange:
    """What one call to activate_best_chain did, oldest first in each list."""

    disconnected: list[Block]
    connected: list[Block]
    invalid: list[tuple[str, ConsensusError]]


class ChainStore:
    def __init__(self, path: Path, network: Network) -> None:
        self.network = network
        self.lock = threading.RLock()  # guards _db and every multi-step change (Bitcoin's cs_main)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: a process crash loses nothing committed
        self._db.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        self._coins = CoinCache(COIN_CACHE_SIZE)
        self._pending = PendingCoins()  # coin changes of connected blocks not yet in the utxo table
        self._db.executescript(SCHEMA)
        self._add_token_column()
        self._db.execute("CREATE INDEX IF NOT EXISTS utxo_by_token ON utxo (token) WHERE token IS NOT NULL")
        self._path_cache: list[tuple[int, str]] = []  # the best header's branch, see _best_path
        self._recent: OrderedDict[str, Block] = OrderedDict()  # the last blocks store_block kept, parsed
        self._verifier = SignatureWorkers()  # processes, started by prepare_to_sync or the first big block
        self._ahead: OrderedDict[str, SignatureBatch] = OrderedDict()  # signatures queued before the block is stored
        if self._header_row(network.genesis_id) is None:
            self._store_genesis()
        self._replay_coins()

    def _add_token_column(self) -> None:
        """A store made before the token layer has no utxo.token: every coin in it is EPS (NULL)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(utxo)")}
        if "token" not in columns:
            self._db.execute("ALTER TABLE utxo ADD COLUMN token TEXT")

    def flush(self) -> None:
        """Write the changes waiting in memory to the utxo and txindex tables."""
        with self.lock:
            self._flush_coins()

    def prepare_to_sync(self) -> None:
        """Start the signature workers now, not with the first big block: a sync is about to begin."""
        self._verifier.start()

    def verify_ahead(self, block: Block) -> None:
        """Start verifying a block's signatures now, before it is checked further, stored and
        connected: the workers get the time all that takes. The last few such blocks are kept
        (peers may hand over blocks side by side); an older one is verified again if it comes to it."""
        batch = queue_signatures(block, self._verifier)
        with self.lock:
            self._ahead[block.block_id] = batch
            dropped = [self._ahead.popitem(last=False)[1] for _ in range(len(self._ahead) - AHEAD_BLOCKS)]
        for old in dropped:
            old.cancel()

    def close(self) -> None:
        self._verifier.close()
        with self.lock:
            self._flush_coins()
            self._db.close()

    # -- reading -----------------------------------------------------------------------------

    def _header_row(self, block_id: str) -> StoredHeader | None:
        row = self._db.execute("SELECT header, height, chainwork, status FROM headers WHERE id = ?",
                               (block_id,)).fetchone()
        if row is None:
            return None
        return StoredHeader(_parse_header(row[0]), row[1], int(row[2], 16), row[3])

    def header(self, block_id: str) -> StoredHeader | None:
        with self.lock:
            return self._header_row(block_id)

    def tip(self) -> StoredHeader:
        with self.lock:
            (block_id,) = self._db.execute("SELECT id FROM active ORDER BY height DESC LIMIT 1").fetchone()
            return self._header_row(block_id)

    @property
    def height(self) -> int:
        return self.tip().height

    def best_header(self) -> StoredHeader:
        """The valid header with the most cumulative work (ahead of the tip while syncing)."""
        with self.lock:
            (block_id,) = self._db.execute(
                "SELECT id FROM headers WHERE status >= 0 ORDER BY chainwork DESC, height ASC LIMIT 1").fetchone()
            return self._header_row(block_id)

    def active_id(self, height: int) -> str | None:
        with self.lock:
            row = self._db.execute("SELECT id FROM active WHERE height = ?", (height,)).fetchone()
            return row[0] if row else None

    def is_active(self, block_id: str) -> bool:
        with self.lock:
            return self._db.execute("SELECT 1 FROM active WHERE id = ?", (block_id,)).fetchone() is not None

    def has_block(self, block_id: str) -> bool:
        with self.lock:
            return self._db.execute("SELECT 1 FROM blocks WHERE id = ?", (block_id,)).fetchone() is not None

    def block(self, block_id: str) -> Block | None:
        data = self.block_data(block_id)
        return Block.from_json(json.loads(data)) if data is not None else None

    def block_data(self, block_id: str) -> bytes | None:
        """A stored block's canonical JSON, for sending it on without parsing it."""
        with self.lock:
            row = self._db.execute("SELECT data FROM blocks WHERE id = ?", (block_id,)).fetchone()
        return row[0] if row else None

    def coin(self, outpoint: OutPoint) -> Coin | None:
        """The unspent output at outpoint on the active chain (the CoinView the rules read)."""
        with self.lock:
            if outpoint in self._pending.spent:
                return None
            coin = self._pending.created.get(outpoint) or self._coins.get(outpoint)
            if coin is not None:
                return coin
            row = self._db.execute("SELECT amount, address, height, coinbase, token FROM utxo "
                                   "WHERE txid = ? AND idx = ?", (outpoint.txid, outpoint.index)).fetchone()
            if row is None:
                return None
            coin = Coin(row[0], row[1], row[2], bool(row[3]), row[4])
            self._coins.put(outpoint, coin)
            return coin

    def token_issued(self, ticker: str) -> bool:
        with self.lock:
            return self._db.execute("SELECT 1 FROM tokens WHERE ticker = ?", (ticker,)).fetchone() is not None

    def token(self, ticker: str) -> TokenRecord | None:
        """A token issued on the active chain, with how many addresses hold it now."""
        with self.lock:
            row = self._db.execute("SELECT ticker, name, supply, burned, issuer, txid, height FROM tokens "
                                   "WHERE ticker = ?", (ticker,)).fetchone()
            if row is None:
                return None
            self._flush_coins()
            (holders,) = self._db.execute("SELECT COUNT(DISTINCT address) FROM utxo WHERE token = ?",
                                          (ticker,)).fetchone()
        return TokenRecord(*row, holders=holders)

    def coins_for(self, addresses: list[str], limit: int, after: tuple[str, int] | None = None
                  ) -> list[tuple[OutPoint, Coin]]:
        """Unspent outputs paying to any of addresses, in (txid, index) order, for wallet services."""
        marks = ",".join("?" * len(addresses))
        start = after or ("", -1)
        with self.lock:
            self._flush_coins()
            rows = self._db.execute(
                f"SELECT txid, idx, amount, address, height, coinbase, token FROM utxo WHERE address IN ({marks}) "
                "AND (txid, idx) > (?, ?) ORDER BY txid, idx LIMIT ?", (*addresses, *start, limit)).fetchall()
        return [(OutPoint(r[0], r[1]), Coin(r[2], r[3], r[4], bool(r[5]), r[6])) for r in rows]

    def transaction(self, txid: str) -> tuple[Transaction, str, int] | None:
        """A confirmed transaction, its block and the block's height (from the tx index)."""
        with self.lock:
            row = self._pending.txindex.get(txid) or self._db.execute(
                "SELECT block, position FROM txindex WHERE txid = ?", (txid,)).fetchone()
            if row is None:
                return None
            block = self.block(row[0])
            return block.transactions[row[1]], row[0], self._header_row(row[0]).height

    def header_at(self, tip_id: str) -> "HeaderLookup":
        """A function giving the header at a height on the branch ending at tip_id."""
        return HeaderLookup(self, tip_id)

    def locator(self) -> list[str]:
        """Block ids from the tip back to genesis, dense at first, then doubling the step (Bitcoin's)."""
        with self.lock:
            height = self.height
            ids, step = [], 1
            while height > 0:
                ids.append(self.active_id(height))
                if len(ids) >= MAX_LOCATOR_DENSE:
                    step *= 2
                height -= step
            ids.append(self.network.genesis_id)
            return ids

    def headers_after(self, locator: list[str], stop: str, limit: int) -> list[BlockHeader]:
        """Active-chain headers after the first locator entry on our active chain (genesis if none)."""
        with self.lock:
            fork = 0
            for block_id in locator:
                row = self._db.execute("SELECT height FROM active WHERE id = ?", (block_id,)).fetchone()
                if row is not None:
                    fork = row[0]
                    break
            rows = self._db.execute(
                "SELECT h.header, h.id FROM active a JOIN headers h ON h.id = a.id "
                "WHERE a.height > ? ORDER BY a.height LIMIT ?", (fork, limit)).fetchall()
        headers = []
        for raw, block_id in rows:
            headers.append(_parse_header(raw))
            if block_id == stop:
                break
        return headers

    def missing_blocks(self, limit: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[tuple[int, str]]:
        """(height, id) of blocks on the best header's branch that we have no data for, lowest first."""
        with self.lock:
            best, tip = self.best_header(), self.tip()
            if best.chainwork <= tip.chainwork:
                return []
            # From the fork with the active chain up, not from the tip's height up: a branch that
            # forks below the tip needs its blocks below the tip's height too.
            branch = self._best_path(best)  # branch[h] is the block at height h
            fork = min(tip.height, best.height)
            while fork > 0 and not self.is_active(branch[fork][1]):
                fork -= 1
            missing: list[tuple[int, str]] = []
            start, step = fork + 1, max(16, limit + len(exclude))  # the first chunk usually holds them all
            while start < len(branch) and len(missing) < limit:
                chunk = branch[start:start + step]  # never a copy of the whole branch above the fork
                marks = ",".join("?" * len(chunk))
                absent = {row[0] for row in self._db.execute(
                    f"SELECT id FROM headers WHERE status = {HEADER_ONLY} AND id IN ({marks})",
                    [block_id for _, block_id in chunk])}
                missing += [(h, block_id) for h, block_id in chunk if block_id in absent and block_id not in exclude]
                start, step = start + step, min(2 * step, 500)
            return missing[:limit]

    def _best_path(self, best: StoredHeader) -> list[tuple[int, str]]:
        """(height, id) from genesis side up to best, walking back only past what the last call knew."""
        cached = self._path_cache
        if cached and cached[-1][1] == best.block_id:
            return cached
        known = {block_id: i for i, (_, block_id) in enumerate(cached)}
        tail: list[tuple[int, str]] = []
        stored = best
        while stored.block_id not in known and stored.height > 0:
            tail.append((stored.height, stored.block_id))
            stored = self._header_row(stored.header.prev)
        prefix = cached[:known[stored.block_id] + 1] if stored.block_id in known else [(0, stored.block_id)]
        self._path_cache = prefix + tail[::-1]
        return self._path_cache

    # -- writing -------------------------------------------------------------------------------

    def add_header(self, header: BlockHeader, now: float | None = None) -> StoredHeader:
        """Validate a header against its branch and store it. ConsensusError if it breaks a rule."""
        with self.lock:
            known = self._header_row(header.block_id)
            if known is not None:
                if known.status == INVALID:
                    raise ConsensusError("duplicate-invalid", "this block is already known to be invalid")
                return known
            parent = self._header_row(header.prev)
            if parent is None:
                raise ConsensusError("prev-blk-not-found", "the previous block is unknown")
            if parent.status == INVALID:
                raise ConsensusError("bad-prevblk", "the previous block is invalid")
            check_header(header, self.network, time.time() if now is None else now)
            check_header_context(header, parent.height, self.header_at(parent.block_id), self.network)
            stored = StoredHeader(header, parent.height + 1, parent.chainwork + work_for(header.bits), HEADER_ONLY)
            with self._db:
                self._db.execute("INSERT INTO headers (id, prev, height, chainwork, header, status) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (header.block_id, header.prev, stored.height, _work_text(stored.chainwork),
                                  header.serialize(), HEADER_ONLY))
            return stored

    def store_block(self, block: Block) -> None:
        """Keep a block's data (its header must be stored; check_block must have passed)."""
        with self.lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO blocks (id, data) VALUES (?, ?)",
                             (block.block_id, _block_json(block)))
            self._recent[block.block_id] = block
            while len(self._recent) > RECENT_BLOCKS:
                self._recent.popitem(last=False)
            self._db.execute("UPDATE headers SET status = ? WHERE id = ? AND status = ?",
                             (HAVE_DATA, block.block_id, HEADER_ONLY))
            parent = self._db.execute("SELECT chain_data FROM headers WHERE id = ?", (block.header.prev,)).fetchone()
            if parent and parent[0]:
                # This block completes a branch: it, and stored descendants waiting on it, are connectable.
                self._db.execute(
                    "WITH RECURSIVE ready(id) AS (SELECT ? UNION SELECT h.id FROM headers h JOIN ready "
                    "ON h.prev = ready.id JOIN blocks b ON b.id = h.id) "
                    "UPDATE headers SET chain_data = 1 WHERE id IN (SELECT id FROM ready)", (block.block_id,))

    def activate_best_chain(self, hold: str | None = None) -> ChainChange:
        """Move the tip to the most-work branch whose blocks we have, one block per transaction.

        `hold` names a block not to connect yet when it would be the new tip: while syncing, the
        block just received waits for the next one, so its signatures are verified meanwhile."""
        disconnected: list[Block] = []
        connected: list[Block] = []
        invalid: list[tuple[str, ConsensusError]] = []
        with self.lock:
            while True:
                target = self._best_connectable()
                if target is None:
                    break
                path = self._path_from_fork(target.block_id)
                fork_height = path[0].height - 1
                if path[-1].block_id == hold and fork_height == self.height:  # no reorg waits on it
                    path.pop()
                    if not path:
                        break
                while self.height > fork_height:
                    disconnected.append(self._disconnect_tip())
                failed = False
                for stored in path:
                    block = self._recent.pop(stored.block_id, None)
                    if block is None:
                        block = self.block(stored.block_id)
                    try:
                        self._connect(block, stored.height)
                    except ConsensusError as error:
                        log.warning("[INVALID BLOCK] %s at height %d: %s", block.block_id, stored.height, error)
                        self._mark_invalid(block.block_id)
                        invalid.append((block.block_id, error))
                        failed = True
                        break
                    connected.append(block)
                if not failed:
                    break
            at_tip = self.best_header().chainwork <= self.tip().chainwork
            if self._pending.due() or (at_tip and self._pending.rows() <= WRITE_THROUGH_ROWS):
                # At the tip the tables follow every block. A big batch left by a sync is written
                # by the next tick (flush), so the sync's last block is not held up by all of it.
                self._flush_coins()
        disconnected.reverse()  # undone from the tip down; listed oldest first, as connected is
        return ChainChange(disconnected, connected, invalid)

    # -- internals --------------------------------------------------------------------------------

    def _store_genesis(self) -> None:
        genesis = self.network.genesis
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO headers (id, prev, height, chainwork, header, status, chain_data) "
                             "VALUES (?, ?, 0, ?, ?, ?, 1)", (genesis.block_id, NULL_ID,
                                                              _work_text(work_for(genesis.header.bits)),
                                                              genesis.header.serialize(), CONNECTED))
            self._db.execute("INSERT INTO blocks (id, data) VALUES (?, ?)",
                             (genesis.block_id, canonical_json(genesis.to_json())))
            self._db.execute("INSERT INTO active (height, id) VALUES (0, ?)", (genesis.block_id,))
            # As in Bitcoin, the genesis coinbase is not spendable: it never enters the UTXO set.

    def _path_from_fork(self, block_id: str) -> list[StoredHeader]:
        """Headers from just above the fork with the active chain up to block_id, oldest first."""
        path = []
        stored = self._header_row(block_id)
        while not self.is_active(stored.block_id):
            path.append(stored)
            stored = self._header_row(stored.header.prev)
        path.reverse()
        return path

    def _best_connectable(self) -> StoredHeader | None:
        """The most-work valid block whose whole branch is stored, if it beats the tip."""
        row = self._db.execute("SELECT id FROM headers WHERE chain_data = 1 AND status >= 0 AND chainwork > ? "
                               "ORDER BY chainwork DESC LIMIT 1", (_work_text(self.tip().chainwork),)).fetchone()
        return self._header_row(row[0]) if row else None

    def _connect(self, block: Block, height: int) -> None:
        """Apply one block to the UTXO set, atomically; ConsensusError leaves nothing changed."""
        created: dict[OutPoint, Coin] = {}
        spent: list[tuple[OutPoint, Coin]] = []  # coins from the UTXO set: the undo data
        signatures = self._signatures_of(block)  # verified by the workers while the spends are checked
        try:
            fees, issues, burns = self._check_spends(block, height, created, spent)
            check_block_context(block, height, fees, self.network)
        except BaseException:  # a broken rule (or anything else): the verdicts are not wanted
            signatures.cancel()
            raise
        signatures.check()
        coinbase = block.transactions[0]
        for index, output in enumerate(coinbase.outputs):
            created[OutPoint(coinbase.txid, index)] = Coin(output.amount, output.address, height, True)
        undo = [_coin_row(op, c) for op, c in spent]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO tokens (ticker, name, supply, issuer, txid, height) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", issues)
            self._db.executemany("UPDATE tokens SET burned = burned + ? WHERE ticker = ?", burns)
            self._db.execute("INSERT OR REPLACE INTO undo (id, data) VALUES (?, ?)", (block.block_id, json.dumps(undo)))
            self._db.execute("INSERT INTO active (height, id) VALUES (?, ?)", (height, block.block_id))
            self._db.execute("UPDATE headers SET status = ? WHERE id = ?", (CONNECTED, block.block_id))
        # Committed: now the coins may follow (a failed commit raises above and changes nothing).
        for outpoint, _ in spent:
            self._pending.spend(outpoint)
            self._coins.discard(outpoint)
        self._pending.created.update(created)
        where = block.block_id
        self._pending.txindex.update((tx.txid, (where, i)) for i, tx in enumerate(block.transactions))
        self._pending.blocks += 1

    def _signatures_of(self, block: Block) -> SignatureBatch:
        """The block's signatures, queued by verify_ahead or now."""
        with self.lock:
            ahead = self._ahead.pop(block.block_id, None)
        return ahead if ahead is not None else queue_signatures(block, self._verifier)

    def _check_spends(self, block: Block, height: int, created: dict[OutPoint, Coin],
                      spent: list[tuple[OutPoint, Coin]]) -> tuple[int, list[tuple], list[tuple[int, str]]]:
        """Every input of the block but its signatures, in order: the fees, and the rows for the
        tokens table. Fills `created` with the block's new coins and `spent` with the undo data."""
        view = _BlockView(self, created, set())
        fees = 0
        issues: list[tuple] = []
        burns: list[tuple[int, str]] = []
        for tx in block.transactions[1:]:
            if tx.issue is not None:
                first = view.coin(tx.inputs[0].prevout)  # the issuer; check_inputs rejects a missing coin
                issuer = first.address if first is not None else ""
            fees += check_inputs(tx, view, height, self.network, signatures_queued=True)
            if tx.issue is not None:
                view.issued.add(tx.issue.ticker)
                issues.append((tx.issue.ticker, tx.issue.name, tx.issue.supply, issuer, tx.txid, height))
            burns += [(burn.amount, burn.token) for burn in tx.burn]
            for txin in tx.inputs:
                if created.pop(txin.prevout, None) is None:  # made and spent in this block: no undo needed
                    spent.append((txin.prevout, view.fetched[txin.prevout]))
                    view.spent.add(txin.prevout)
            for index, output in enumerate(tx.outputs):
                created[OutPoint(tx.txid, index)] = Coin(output.amount, output.address, height, False, output.token)
        return fees, issues, burns

    def _disconnect_tip(self) -> Block:
        """Undo the tip block, atomically: its outputs leave the UTXO set, the coins it spent return."""
        self._flush_coins()  # a reorg is rare: the table catches up first, then changes block by block
        tip = self.tip()
        block = self.block(tip.block_id)
        (undo_json,) = self._db.execute("SELECT data FROM undo WHERE id = ?", (tip.block_id,)).fetchone()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._set_coins_tip(tip.header.prev)
            for tx in block.transactions:
                self._db.execute("DELETE FROM utxo WHERE txid = ?", (tx.txid,))
                self._db.execute("DELETE FROM txindex WHERE txid = ? AND block = ?", (tx.txid, block.block_id))
                self._db.execute("DELETE FROM tokens WHERE txid = ?", (tx.txid,))
                self._db.executemany("UPDATE tokens SET burned = burned - ? WHERE ticker = ?",
                                     [(burn.amount, burn.token) for burn in tx.burn])
            # Undo rows written before the token layer have six fields: their coins are EPS.
            self._db.executemany(_INSERT_COIN, [(*coin, None)[:7] for coin in json.loads(undo_json)])
            self._db.execute("DELETE FROM active WHERE height = ?", (tip.height,))
        for tx in block.transactions:
            for index in range(len(tx.outputs)):
                self._coins.discard(OutPoint(tx.txid, index))
        return block

    # -- the utxo table behind the coins in memory -----------------------------------------------------

    def _coins_tip(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'coins_tip'").fetchone()
        return row[0] if row else None

    def _set_coins_tip(self, block_id: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('coins_tip', ?)", (block_id,))

    def _flush_coins(self) -> None:
        """Write the waiting coin changes to the utxo table, with the block they bring it to, atomically."""
        pending = self._pending
        if not pending.blocks:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            # In key order: SQLite then walks each B-tree once, page after page (a third faster than
            # in the random order txids come in).
            self._db.executemany("DELETE FROM utxo WHERE txid = ? AND idx = ?", sorted(pending.spent))
            self._db.executemany(_INSERT_COIN, sorted(_coin_row(op, c) for op, c in pending.created.items()))
            self._db.executemany(_INSERT_TXINDEX, sorted((txid, *where) for txid, where in pending.txindex.items()))
            self._set_coins_tip(self.tip().block_id)
        for outpoint, coin in pending.created.items():
            self._coins.put(outpoint, coin)
        self._pending = PendingCoins()

    def _replay_coins(self) -> None:
        """After a crash mid-batch: bring the utxo table from coins_tip up to the active tip."""
        tip = self.tip()
        coins_tip = self._coins_tip()
        if coins_tip is None or coins_tip == tip.block_id:  # (a store without it was written block by block)
            with self._db:
                self._set_coins_tip(tip.block_id)
            return
        row = self._db.execute("SELECT height FROM active WHERE id = ?", (coins_tip,)).fetchone()
        start = row[0] + 1 if row else 1  # not on the active chain (never expected): rebuild from genesis
        log.info("[CHAIN] replaying the coins of blocks %d to %d", start, tip.height)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if row is None:
                self._db.execute("DELETE FROM utxo")
            for height in range(start, tip.height + 1):
                block_id = self.active_id(height)
                transactions = self.block(block_id).transactions
                self._db.executemany(_INSERT_TXINDEX, [(tx.txid, block_id, i) for i, tx in enumerate(transactions)])
                for tx in transactions:
                    if not tx.is_coinbase:
                        self._db.executemany("DELETE FROM utxo WHERE txid = ? AND idx = ?",
                                             [txin.prevout for txin in tx.inputs])
                    self._db.executemany(
                        _REPLACE_COIN,
                        [_coin_row(OutPoint(tx.txid, i), Coin(o.amount, o.address, height, tx.is_coinbase, o.token))
                         for i, o in enumerate(tx.outputs)])
            self._set_coins_tip(tip.block_id)

    def _mark_invalid(self, block_id: str) -> None:
        """The block and every descendant of it can never be part of the active chain."""
        with self._db:
            self._db.execute(
                "WITH RECURSIVE bad(id) AS (SELECT ? UNION SELECT h.id FROM headers h JOIN bad ON h.prev = bad.id) "
                "UPDATE headers SET status = ? WHERE id IN (SELECT id FROM bad)", (block_id, INVALID))

    # -- checking ---------------------------------------------------------------------------------

    def active_blocks(self) -> Iterator[Block]:
        for height in range(self.height + 1):
            yield self.block(self.active_id(height))

    def utxo_matches_replay(self) -> bool:
        """Whether the UTXO table equals a replay of the active chain from genesis (crash tests)."""
        with self.lock:
            self._flush_coins()
            replay: dict[tuple[str, int], tuple] = {}
            for height, block in enumerate(self.active_blocks()):
                if height == 0:
                    continue
                for tx in block.transactions:
                    for txin in tx.inputs:
                        if txin.prevout is not None:
                            replay.pop((txin.prevout.txid, txin.prevout.index), None)
                    for index, output in enumerate(tx.outputs):
                        replay[(tx.txid, index)] = (output.amount, output.address, height, int(tx.is_coinbase),
                                                    output.token)
            rows = self._db.execute("SELECT txid, idx, amount, address, height, coinbase, token FROM utxo").fetchall()
            return {(r[0], r[1]): tuple(r[2:]) for r in rows} == replay


class PendingCoins:
    """Changes of connected blocks that the utxo and txindex tables do not show yet."""

    def __init__(self) -> None:
        self.created: dict[OutPoint, Coin] = {}
        self.spent: set[OutPoint] = set()  # coins in the table, spent since
        self.txindex: dict[str, tuple[str, int]] = {}  # txid -> (block id, position)
        self.blocks = 0

    def spend(self, outpoint: OutPoint) -> None:
        if self.created.pop(outpoint, None) is None:  # created since the last flush: gone without a trace
            self.spent.add(outpoint)

    def due(self) -> bool:
        return self.blocks >= FLUSH_EVERY_BLOCKS or len(self.created) + len(self.spent) >= FLUSH_DIRTY_COINS

    def rows(self) -> int:
        """How many rows a flush writes or deletes."""
        return len(self.created) + len(self.spent) + len(self.txindex)


class CoinCache:
    """Coins as the utxo table holds them, for the most recently created or read ones.

    Only the store changes it, and only after the change is committed. When
    full, the older half goes (dicts keep insertion order): a block mostly
    spends recent outputs.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._coins: dict[OutPoint, Coin] = {}

    def __len__(self) -> int:
        return len(self._coins)

    def get(self, outpoint: OutPoint) -> Coin | None:
        return self._coins.get(outpoint)

    def put(self, outpoint: OutPoint, coin: Coin) -> None:
        if len(self._coins) >= self.limit:
            for old in list(itertools.islice(self._coins, self.limit // 2)):
                del self._coins[old]
        self._coins[outpoint] = coin

    def discard(self, outpoint: OutPoint) -> None:
        self._coins.pop(outpoint, None)


class HeaderLookup:
    """header_at(height) along one branch, walking back lazily: the rules ask for the last 11
    headers (median time) and, at a retarget, one more; the walk switches to the active-chain
    table as soon as the branch joins it."""

    def __init__(self, store: ChainStore, tip_id: str) -> None:
        self.store = store
        self.cursor = store._header_row(tip_id)  # the lowest header reached so far
        self.found: dict[int, BlockHeader] = {self.cursor.height: self.cursor.header}
        self.joined = False  # below the cursor, the branch is the active chain

    def __call__(self, height: int) -> BlockHeader:
        if height in self.found:
            return self.found[height]
        if height > max(self.found):
            raise KeyError(height)
        while not self.joined and self.cursor.height > height:
            if self.store.is_active(self.cursor.block_id):
                self.joined = True
                break
            self.cursor = self.store._header_row(self.cursor.header.prev)
            self.found[self.cursor.height] = self.cursor.header
        if height in self.found:
            return self.found[height]
        return self.store._header_row(self.store.active_id(height)).header


class _BlockView:
    """Coins visible to a transaction inside a block: the UTXO set, plus earlier outputs of the block."""

    def __init__(self, store: ChainStore, created: dict[OutPoint, Coin], spent: set[OutPoint]) -> None:
        self.store, self.created, self.spent = store, created, spent
        self.fetched: dict[OutPoint, Coin | None] = {}  # read from the UTXO set once: also the undo data
        self.issued: set[str] = set()  # tickers issued by earlier transactions of the block

    def token_issued(self, ticker: str) -> bool:
        return ticker in self.issued or self.store.token_issued(ticker)

    def coin(self, outpoint: OutPoint) -> Coin | None:
        if outpoint in self.spent:
            return None
        made = self.created.get(outpoint)
        if made is not None:
            return made
        if outpoint not in self.fetched:
            self.fetched[outpoint] = self.store.coin(outpoint)
        return self.fetched[outpoint]


_INSERT_TXINDEX = "INSERT OR REPLACE INTO txindex (txid, block, position) VALUES (?, ?, ?)"
_INSERT_COIN = "INSERT INTO utxo (txid, idx, amount, address, height, coinbase, token) VALUES (?, ?, ?, ?, ?, ?, ?)"
_REPLACE_COIN = _INSERT_COIN.replace("INSERT", "INSERT OR REPLACE", 1)  # a replay may meet rows it wrote before


def _coin_row(outpoint: OutPoint, coin: Coin) -> tuple:
    """A coin as a utxo row (and as an undo entry)."""
    return (outpoint.txid, outpoint.index, coin.amount, coin.address, coin.height, int(coin.is_coinbase), coin.token)


def _block_json(block: Block) -> bytes:
    """canonical_json(block.to_json()), joined from the serializations the txids already made."""
    return (b'{"header":' + canonical_json(block.header.to_json()) + b',"txs":['
            + b",".join(tx.serialized for tx in block.transactions) + b"]}")


def _parse_header(raw: bytes) -> BlockHeader:
    import struct
    version, prev, root, time_, bits, nonce = struct.unpack("<I32s32sIII", raw)
    return BlockHeader(version, prev.hex(), root.hex(), time_, bits, nonce)
