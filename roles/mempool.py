"""The mempool: valid transactions waiting for a block, checked against the chain and each other.

As Bitcoin's: a transaction is accepted when it is valid against the UTXO set
plus the outputs of transactions already waiting (so unconfirmed chains work),
spends nothing another waiting transaction spends (no double spend), and pays
at least the minimum relay fee rate. The pool is bounded in bytes: when full,
the lowest fee rate goes first, together with everything that depends on it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from protocol.block import Block
from protocol.consensus import Coin, CoinView, ConsensusError, check_inputs, check_transaction
from protocol.networks import Network
from protocol.transaction import OutPoint, Transaction

MAX_MEMPOOL_BYTES = 50_000_000  # Bitcoin's -maxmempool is 300 MB of memory; this counts transaction bytes
MIN_RELAY_FEE_RATE = 1000  # base units per 1,000 bytes, as Bitcoin's minrelaytxfee of 1,000 sat/kvB


class PolicyError(Exception):
    """Valid by consensus, but this node will not keep or relay it (no misbehaviour)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class MempoolEntry:
    tx: Transaction
    fee: int
    added_at: float = field(default_factory=time.time)

    @property
    def size(self) -> int:
        return self.tx.size

    @property
    def fee_rate(self) -> float:
        """Base units per 1,000 bytes."""
        return self.fee * 1000 / self.size


class ChainCoins(CoinView, Protocol):
    """The chain's UTXO set, and whether a transaction is already confirmed."""

    def transaction(self, txid: str) -> object | None: ...

    def token_issued(self, ticker: str) -> bool: ...


class Mempool:
    def __init__(self, network: Network, max_bytes: int = MAX_MEMPOOL_BYTES,
                 min_fee_rate: int = MIN_RELAY_FEE_RATE) -> None:
        self.network = network
        self.max_bytes = max_bytes
        self.min_fee_rate = min_fee_rate
        self._lock = threading.RLock()  # guards _entries, _spent_by, _bytes
        self._entries: dict[str, MempoolEntry] = {}
        self._spent_by: dict[OutPoint, str] = {}  # outpoint -> txid of the waiting tx spending it
        self._issues: dict[str, str] = {}  # ticker -> txid of the waiting tx issuing it
        self._bytes = 0

    # -- reading -------------------------------------------------------------------------------

    def __contains__(self, txid: str) -> bool:
        with self._lock:
            return txid in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def get(self, txid: str) -> MempoolEntry | None:
        with self._lock:
            return self._entries.get(txid)

    def txids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def entries(self) -> list[MempoolEntry]:
        with self._lock:
            return list(self._entries.values())

    def spender_of(self, outpoint: OutPoint) -> str | None:
        with self._lock:
            return self._spent_by.get(outpoint)

    def view(self, chain: CoinView) -> CoinView:
        """Coins as a new transaction sees them: the chain's, minus what waits to be spent, plus waiting outputs."""
        return _PoolView(self, chain)

    # -- changing --------------------------------------------------------------------------------

    def accept(self, tx: Transaction, chain: ChainCoins, tip_height: int) -> MempoolEntry:
        """Add tx, or raise ConsensusError (invalid: the sender misbehaved) or PolicyError (not kept)."""
        check_transaction(tx, self.network)
        if tx.is_coinbase:
            raise ConsensusError("coinbase", "a coinbase transaction is only valid inside a block")
        with self._lock:
            if tx.txid in self._entries:
                raise PolicyError("txn-already-in-mempool", "this transaction is already waiting")
            if chain.transaction(tx.txid) is not None:
                raise PolicyError("txn-already-known", "this transaction is already in a block")
            for txin in tx.inputs:
                other = self._spent_by.get(txin.prevout)
                if other is not None:
                    raise PolicyError("txn-mempool-conflict",
                                      f"{txin.prevout.txid}:{txin.prevout.index} is already spent by waiting "
                                      f"transaction {other}")
            if tx.issue is not None and tx.issue.ticker in self._issues:
                raise PolicyError("txn-mempool-conflict", f"the ticker {tx.issue.ticker} is already being issued "
                                                          f"by waiting transaction {self._issues[tx.issue.ticker]}")
            fee = check_inputs(tx, self.view(chain), tip_height + 1, self.network)
            entry = MempoolEntry(tx, fee)
            if entry.fee_rate < self.min_fee_rate:
                raise PolicyError("min relay fee not met",
                                  f"fee rate {entry.fee_rate:.0f} per 1,000 bytes is below {self.min_fee_rate}")
            self._add(entry)
            self._trim()
            if tx.txid not in self._entries:
                raise PolicyError("mempool full", "the fee rate is too low to displace waiting transactions")
            return entry

    def remove_for_block(self, block: Block) -> list[str]:
        """Drop what the block confirmed, and what now conflicts with it. The dropped txids."""
        removed = []
        with self._lock:
            for tx in block.transactions:
                if tx.txid in self._entries:
                    self._remove(tx.txid)
                    removed.append(tx.txid)
                for txin in tx.inputs:
                    conflict = self._spent_by.get(txin.prevout) if txin.prevout else None
                    if conflict is not None:
                        removed += self._remove_with_descendants(conflict)
                if tx.issue is not None and tx.issue.ticker in self._issues:  # the block took the ticker
                    removed += self._remove_with_descendants(self._issues[tx.issue.ticker])
        return removed

    def readd(self, transactions: list[Transaction], chain: ChainCoins, tip_height: int) -> list[str]:
        """After a reorg: put back transactions of disconnected blocks that are still valid.

        In any order: a child given before its parent is tried again once the parent is back.
        """
        return self._accept_all([tx for tx in transactions if not tx.is_coinbase], chain, tip_height)

    def revalidate(self, chain: ChainCoins, tip_height: int) -> list[str]:
        """Drop waiting transactions a reorg made invalid (e.g. spends of a coinbase now too young)."""
        with self._lock:
            entries = list(self._entries.values())
            for entry in entries:
                self._remove(entry.tx.txid)
        kept = set(self._accept_all([entry.tx for entry in entries], chain, tip_height))
        return [entry.tx.txid for entry in entries if entry.tx.txid not in kept]

    def _accept_all(self, transactions: list[Transaction], chain: ChainCoins, tip_height: int) -> list[str]:
        """Accept what is valid, in passes until none succeeds: parents may come after children."""
        accepted: list[str] = []
        waiting = transactions
        while waiting:
            failed = []
            for tx in waiting:
                try:
                    self.accept(tx, chain, tip_height)
                    accepted.append(tx.txid)
                except (ConsensusError, PolicyError):
                    failed.append(tx)  # spent by the new chain, or its parent is not back (yet)
            if len(failed) == len(waiting):
                break  # no progress: what is left cannot wait any longer
            waiting = failed
        return accepted

    # -- internals ---------------------------------------------------------------------------------

    def _add(self, entry: MempoolEntry) -> None:
        self._entries[entry.tx.txid] = entry
        self._bytes += entry.size
        for txin in entry.tx.inputs:
            self._spent_by[txin.prevout] = entry.tx.txid
        if entry.tx.issue is not None:
            self._issues[entry.tx.issue.ticker] = entry.tx.txid

    def _remove(self, txid: str) -> None:
        entry = self._entries.pop(txid)
        self._bytes -= entry.size
        for txin in entry.tx.inputs:
            if self._spent_by.get(txin.prevout) == txid:
                del self._spent_by[txin.prevout]
        if entry.tx.issue is not None and self._issues.get(entry.tx.issue.ticker) == txid:
            del self._issues[entry.tx.issue.ticker]

    def _remove_with_descendants(self, txid: str) -> list[str]:
        removed, stack = [], [txid]
        while stack:
            current = stack.pop()
            if current not in self._entries:
                continue
            outputs = len(self._entries[current].tx.outputs)
            self._remove(current)
            removed.append(current)
            stack += [child for index in range(outputs)
                      if (child := self._spent_by.get(OutPoint(current, index))) is not None]
        return removed

    def _trim(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            cheapest = min(self._entries.values(), key=lambda e: e.fee_rate)
            self._remove_with_descendants(cheapest.tx.txid)


class _PoolView:
    def __init__(self, pool: Mempool, chain: CoinView) -> None:
        self.pool, self.chain = pool, chain

    def coin(self, outpoint: OutPoint) -> Coin | None:
        if outpoint in self.pool._spent_by:
            return None
        waiting = self.pool._entries.get(outpoint.txid)
        if waiting is not None:
            if outpoint.index >= len(waiting.tx.outputs):
                return None
            output = waiting.tx.outputs[outpoint.index]
            return Coin(output.amount, output.address, height=2**31 - 1, is_coinbase=False, token=output.token)
        return self.chain.coin(outpoint)

    def token_issued(self, ticker: str) -> bool:
        return ticker in self.pool._issues or self.chain.token_issued(ticker)
