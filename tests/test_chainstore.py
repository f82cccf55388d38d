"""The chain store (roles/chainstore.py): connecting, fork choice, reorgs, invalid blocks, crash safety.

Every test runs on a real SQLite file in tmp_path and compares the store with
an independent model: tests/chain_builder.py's UtxoView of the branch the store
should be on. `utxo_matches_replay()` is checked after every step as well.

The crash tests run real node processes (`node.py --network regtest`), feed
them blocks over a socket and kill -9 them while they connect blocks, or in
the middle of a reorg, then open what they left on disk.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.block import NULL_ID, Block, BlockHeader, work_for
from protocol.consensus import Coin, ConsensusError
from protocol.messages.blocks import MAX_HEADERS, BlockMessage, Headers
from protocol.messages.chaininfo import GetBlockchainInfo
from protocol.networks import NETWORKS, Network
from protocol.transaction import COIN, OutPoint
from roles import chainstore
from roles.chainstore import CONNECTED, HAVE_DATA, INVALID, ChainChange, ChainStore
from tests.chain_builder import ChainBuilder, UtxoView, make_transaction, mine, unmine
from tests.support import WireClient, frames, wait_until

REGTEST = NETWORKS["regtest"]
LATER = 2**33  # `now` for add_header: no header of these tests is too far in the future
GENESIS = REGTEST.genesis_id
# A regtest variant that retargets every 10 blocks, aiming at 10 s a block: fast blocks make the next
# window up to 4x harder, so a shorter chain can hold more work. Its proof of work stays trivial.
RETARGET = dataclasses.replace(REGTEST, name="regtest-retarget", retarget_interval=10, target_spacing=10)


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def open_store(tmp_path: Path):
    """open_store(name="chain", network=REGTEST): a ChainStore on a file in tmp_path, closed afterwards."""
    opened: list[ChainStore] = []

    def open_(name: str = "chain", network: Network = REGTEST) -> ChainStore:
        store = ChainStore(tmp_path / f"{name}.sqlite", network)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def db_path(store: ChainStore) -> str:
    (_, _, path), = [row for row in store._db.execute("PRAGMA database_list") if row[1] == "main"]
    return path


def utxo_of(store: ChainStore) -> dict[OutPoint, Coin]:
    """The UTXO table as the file holds it, read through a connection of our own (after the store
    has written what waits in memory: while it syncs, it writes in batches)."""
    store.flush()
    connection = sqlite3.connect(db_path(store))
    try:
        rows = connection.execute("SELECT txid, idx, amount, address, height, coinbase, token FROM utxo").fetchall()
    finally:
        connection.close()
    return {OutPoint(r[0], r[1]): Coin(r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows}


def give(store: ChainStore, blocks: Iterable[Block], activate: bool = True) -> ChainChange | None:
    """Store each block (header first), then activate once, as the node does when a branch completes."""
    for block in blocks:
        store.add_header(block.header, now=LATER)
        store.store_block(block)
    return store.activate_best_chain() if activate else None


def give_each(store: ChainStore, blocks: Iterable[Block]) -> list[ChainChange]:
    """Store and activate block by block, checking the UTXO set after each one."""
    changes = []
    for block in blocks:
        store.add_header(block.header, now=LATER)
        store.store_block(block)
        changes.append(store.activate_best_chain())
        assert store.utxo_matches_replay()
    return changes


def assert_on(store: ChainStore, chain: ChainBuilder) -> None:
    """The store's active chain is exactly `chain`, and its UTXO set is the builder's view."""
    assert store.tip().block_id == chain.tip.block_id
    assert store.height == chain.height
    for height in (0, chain.height // 2, chain.height):
        assert store.active_id(height) == chain.block_at(height).block_id
    assert utxo_of(store) == chain.view.coins
    assert store.utxo_matches_replay()


def ids(blocks: Iterable[Block]) -> list[str]:
    return [block.block_id for block in blocks]


def extend_busy(chain: ChainBuilder, count: int, rng: random.Random) -> list[Block]:
    """`count` valid blocks that move real coins.

    From height 6 each block spends the coinbase of 5 blocks back (mature on
    regtest) to someone; sometimes that output is spent again in the same
    block; and often an older, non-coinbase output is spent too.
    """
    keys = [chain.key(name) for name in ("alice", "bob", "carol")]
    owners = {key.address: key for key in [*keys, chain.miner]}
    made = []
    for _ in range(count):
        height = chain.height + 1
        txs = []
        source = height - chain.network.coinbase_maturity
        if source >= 1 and chain.coinbase_outpoint(source) in chain.view:
            outpoint = chain.coinbase_outpoint(source)
            coin = chain.view.coin(outpoint)
            payee = rng.choice(keys)
            first = chain.spend(outpoint, to=payee, amount=min(rng.randint(1, 10) * COIN, coin.amount // 2),
                                fee=rng.choice((1_000, 2_500)), key=owners[coin.address])
            txs.append(first)
            if rng.random() < 0.4:  # created and spent in one block
                txs.append(chain.spend(OutPoint(first.txid, 0), to=rng.choice(keys), amount=COIN // 4, fee=1_000,
                                       key=payee))
        old = [(op, coin) for op, coin in chain.view.coins.items()
               if not coin.is_coinbase and coin.address in owners and coin.amount > COIN]
        if old and rng.random() < 0.6:
            outpoint, coin = rng.choice(old)
            txs.append(chain.spend(outpoint, to=rng.choice(keys), amount=coin.amount // 2, fee=1_000,
                                   key=owners[coin.address]))
        made.append(chain.add_block(txs))
    return made


def replay_view(blocks: Iterable[Block]) -> UtxoView:
    """The UTXO set after these blocks (genesis excluded), computed without the store."""
    view = UtxoView()
    for height, block in enumerate(blocks):
        if height:
            view.add_block(block, height)
    return view


# -- connecting a chain -------------------------------------------------------------------------------


def test_a_new_store_holds_genesis_only(open_store):
    store = open_store()
    assert store.tip().block_id == GENESIS
    assert store.height == 0
    assert store.tip().status == CONNECTED
    assert store.best_header().block_id == GENESIS
    assert store.locator() == [GENESIS]
    assert utxo_of(store) == {}  # the genesis coinbase is unspendable, as in Bitcoin
    assert store.utxo_matches_replay()


def test_connecting_a_chain_moves_the_tip_block_by_block(open_store):
    store = open_store()
    chain = ChainBuilder()
    blocks = extend_busy(chain, 20, random.Random(1))
    changes = give_each(store, blocks)
    assert [change.connected for change in changes] == [[block] for block in blocks]
    assert all(not change.disconnected and not change.invalid for change in changes)
    assert_on(store, chain)
    for height, block in enumerate(chain.blocks):
        assert store.active_id(height) == block.block_id
        stored = store.header(block.block_id)
        assert (stored.height, stored.status) == (height, CONNECTED)
        assert store.is_active(block.block_id)
    assert store.active_id(21) is None
    # Cumulative work: each regtest block adds the same amount.
    unit = work_for(REGTEST.pow_limit_bits)
    assert store.tip().chainwork == 21 * unit
    for block in blocks:
        for tx in block.transactions:
            assert store.transaction(tx.txid) == (tx, block.block_id, store.header(block.block_id).height)


def test_connecting_the_same_blocks_twice_changes_nothing(open_store):
    store = open_store()
    chain = ChainBuilder()
    blocks = extend_busy(chain, 8, random.Random(2))
    give(store, blocks)
    change = give(store, blocks)
    assert change == ChainChange([], [], [])
    assert_on(store, chain)


# -- locator and headers_after -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_chain() -> ChainBuilder:
    chain = ChainBuilder()
    chain.add_blocks(2100)
    return chain


@pytest.fixture(scope="module")
def long_store(long_chain, tmp_path_factory) -> ChainStore:
    store = ChainStore(tmp_path_factory.mktemp("long") / "chain.sqlite", REGTEST)
    give(store, long_chain.blocks[1:])
    assert store.height == 2100
    yield store
    store.close()


def assert_locator_shape(store: ChainStore, locator: list[str]) -> None:
    """Newest first from the tip; 10 consecutive blocks, then steps doubling from 2; genesis last."""
    heights = [store.header(block_id).height for block_id in locator]
    assert all(store.is_active(block_id) for block_id in locator)
    assert locator[-1] == GENESIS
    tip = store.height
    if tip == 0:
        assert locator == [GENESIS]
        return
    assert locator[0] == store.tip().block_id
    assert heights == sorted(set(heights), reverse=True)  # strictly decreasing
    gaps = [a - b for a, b in itertools.pairwise(heights)]
    dense = min(tip, 10)
    assert gaps[:dense - 1] == [1] * (dense - 1), heights
    sparse = gaps[dense - 1:-1]  # the doubling part, before the final jump to genesis
    assert sparse == [2 ** (i + 1) for i in range(len(sparse))], heights
    assert 1 <= gaps[-1] <= 2 ** (len(sparse) + 1) if tip > 10 else gaps[-1] == 1
    assert len(locator) <= 101


@pytest.mark.parametrize("height, expected", [
    (1, [1, 0]),
    (9, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
    (10, [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
    (12, [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 1, 0]),
    (30, [30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 19, 15, 7, 0]),
])
def test_locator_of_a_short_chain(open_store, height, expected):
    store = open_store()
    chain = ChainBuilder()
    give(store, chain.add_blocks(height))
    locator = store.locator()
    assert locator == [chain.block_at(h).block_id for h in expected]
    assert_locator_shape(store, locator)


def test_locator_of_a_long_chain_is_short_and_exponential(long_store, long_chain):
    locator = long_store.locator()
    assert_locator_shape(long_store, locator)
    assert len(locator) <= 101
    assert len(locator) == 10 + 10 + 1  # 10 dense, steps 2..1024, genesis
    assert locator[:10] == [long_chain.block_at(h).block_id for h in range(2100, 2090, -1)]


def test_locator_follows_the_active_chain_after_a_reorg(open_store):
    store = open_store()
    a = ChainBuilder()
    give(store, a.add_blocks(15))
    b = a.fork(7)
    give(store, b.add_blocks(10))
    assert_on(store, b)
    locator = store.locator()
    assert_locator_shape(store, locator)
    assert locator[0] == b.tip.block_id
    assert not set(locator) & set(ids(a.blocks[8:]))


def test_headers_after_an_unknown_locator_start_after_genesis_and_stop_at_the_limit(long_store, long_chain):
    headers = long_store.headers_after(["ab" * 32, "cd" * 32], NULL_ID, MAX_HEADERS)
    assert MAX_HEADERS == 2000
    assert len(headers) == 2000
    assert [h.block_id for h in headers] == ids(long_chain.blocks[1:2001])
    assert headers[0].prev == GENESIS
    assert all(child.prev == parent.block_id for parent, child in itertools.pairwise(headers))
    # The next request, from the last header received, brings the rest.
    rest = long_store.headers_after([headers[-1].block_id], NULL_ID, MAX_HEADERS)
    assert [h.block_id for h in rest] == ids(long_chain.blocks[2001:])
    assert long_store.headers_after([], NULL_ID, 3) == [b.header for b in long_chain.blocks[1:4]]


def test_headers_after_use_the_first_locator_entry_on_the_active_chain(long_store, long_chain):
    at = long_chain.block_at
    locator = ["ef" * 32, at(500).block_id, at(100).block_id]
    headers = long_store.headers_after(locator, NULL_ID, 10)
    assert [h.block_id for h in headers] == ids(long_chain.blocks[501:511])
    assert long_store.headers_after(long_store.locator(), NULL_ID, MAX_HEADERS) == []


def test_headers_after_end_at_the_stop_id(long_store, long_chain):
    at = long_chain.block_at
    headers = long_store.headers_after([at(500).block_id], at(510).block_id, MAX_HEADERS)
    assert [h.block_id for h in headers] == ids(long_chain.blocks[501:511])
    # A stop id we do not have on the chain: as many as the limit allows.
    headers = long_store.headers_after([at(2050).block_id], "12" * 32, MAX_HEADERS)
    assert [h.block_id for h in headers] == ids(long_chain.blocks[2051:])


def test_headers_after_skip_a_locator_entry_on_a_side_branch(open_store):
    store = open_store()
    a = ChainBuilder()
    give(store, a.add_blocks(10))
    b = a.fork(4)
    give(store, b.add_blocks(3))  # less work: stays a side branch
    assert_on(store, a)
    headers = store.headers_after([b.tip.block_id, a.block_at(3).block_id], NULL_ID, MAX_HEADERS)
    assert [h.block_id for h in headers] == ids(a.blocks[4:])


# -- coins -------------------------------------------------------------------------------------------


def test_coins_appear_and_disappear(open_store):
    store = open_store()
    chain = ChainBuilder()
    alice, bob = chain.key("alice"), chain.key("bob")
    give(store, chain.add_blocks(6))
    coinbase1 = chain.coinbase_outpoint(1)
    assert store.coin(coinbase1) == Coin(50 * COIN, chain.miner.address, 1, True)
    pay = chain.spend(coinbase1, to=alice, amount=10 * COIN, fee=1_000)
    give(store, [chain.add_block([pay])])
    assert store.coin(coinbase1) is None
    assert store.coin(OutPoint(pay.txid, 0)) == Coin(10 * COIN, alice.address, 7, False)
    assert store.coin(OutPoint(pay.txid, 1)) == Coin(40 * COIN - 1_000, chain.miner.address, 7, False)
    assert store.coin(OutPoint(pay.txid, 2)) is None
    # The coinbase of block 7 claims the fee too.
    assert store.coin(chain.coinbase_outpoint(7)).amount == 50 * COIN + 1_000
    assert [op for op, _ in store.coins_for([alice.address], 10)] == [OutPoint(pay.txid, 0)]
    onward = chain.spend(OutPoint(pay.txid, 0), to=bob, amount=3 * COIN, fee=500, key=alice)
    give(store, [chain.add_block([onward])])
    assert store.coin(OutPoint(pay.txid, 0)) is None
    assert store.coins_for([bob.address], 10) == [(OutPoint(onward.txid, 0), Coin(3 * COIN, bob.address, 8, False))]
    assert_on(store, chain)


def undo_rows(store: ChainStore, block_id: str) -> list:
    import json
    connection = sqlite3.connect(db_path(store))
    try:
        (data,) = connection.execute("SELECT data FROM undo WHERE id = ?", (block_id,)).fetchone()
    finally:
        connection.close()
    return json.loads(data)


def table_rows(store: ChainStore, table: str) -> int:
    """Rows in a table as the file holds it now, without letting the store write first."""
    connection = sqlite3.connect(db_path(store))
    try:
        return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        connection.close()


def busy_chain(blocks: int = 12) -> ChainBuilder:
    chain = ChainBuilder(REGTEST)
    extend_busy(chain, blocks, random.Random(7))
    return chain


def test_while_syncing_the_coins_wait_in_memory_and_at_the_best_header_they_are_written(open_store):
    chain = busy_chain()
    store = open_store()
    for block in chain.blocks[1:]:
        store.add_header(block.header, now=LATER)  # headers first: the store knows it is behind
    for block in chain.blocks[1:-1]:
        store.store_block(block)
        store.activate_best_chain()
    assert store.height == chain.height - 1
    assert table_rows(store, "utxo") == 0 and table_rows(store, "txindex") == 0  # nothing written yet
    last_tx = chain.blocks[-2].transactions[-1]
    assert store.coin(OutPoint(last_tx.txid, 0)) is not None  # the rules see the waiting coins
    assert store.transaction(last_tx.txid)[1] == chain.blocks[-2].block_id
    store.store_block(chain.blocks[-1])
    store.activate_best_chain()  # the tip reaches the best header: everything is written
    assert table_rows(store, "utxo") == len(chain.view) and store.utxo_matches_replay()
    assert_on(store, chain)


def test_a_big_batch_left_by_a_sync_waits_for_flush_and_then_the_tip_writes_through(open_store, monkeypatch):
    monkeypatch.setattr(chainstore, "WRITE_THROUGH_ROWS", 10)  # this chain's batch counts as big
    chain = busy_chain()
    store = open_store()
    for block in chain.blocks[1:]:
        store.add_header(block.header, now=LATER)  # headers first: a sync
    for block in chain.blocks[1:]:
        store.store_block(block)
        store.activate_best_chain()
    assert store.height == chain.height and table_rows(store, "utxo") == 0  # at the tip, the batch waits
    store.flush()  # as the blockchain role's tick does
    assert table_rows(store, "txindex") == sum(len(block.transactions) for block in chain.blocks[1:])
    assert table_rows(store, "utxo") == len(chain.view) and store.utxo_matches_replay()
    give(store, [chain.add_block()])  # one block at the tip, under the bound: written at once
    assert table_rows(store, "utxo") == len(chain.view)
    assert_on(store, chain)


def test_a_held_block_waits_while_its_parent_connects(open_store):
    chain = busy_chain(6)
    store = open_store()
    give(store, chain.blocks[1:-1])
    last = chain.blocks[-1]
    give(store, [last], activate=False)
    change = store.activate_best_chain(hold=last.block_id)
    assert change.connected == [] and store.height == chain.height - 1  # stored, not connected
    assert store.activate_best_chain().connected == [last]
    assert_on(store, chain)


def test_hold_does_not_stop_a_reorg(open_store):
    chain = ChainBuilder(REGTEST)
    chain.add_blocks(3)
    fork = chain.fork(1)
    fork.add_blocks(4)  # heights 2 to 5: more work than the chain's 3
    store = open_store()
    give(store, chain.blocks[1:])
    give(store, fork.blocks[2:5], activate=False)
    store.activate_best_chain(hold=fork.blocks[4].block_id)  # a reorg waits on it: not held
    assert store.tip().block_id == fork.blocks[4].block_id
    give(store, fork.blocks[5:], activate=False)
    assert store.activate_best_chain(hold=fork.blocks[5].block_id).connected == []
    assert store.activate_best_chain().connected == [fork.blocks[5]]
    assert_on(store, fork)


def test_a_node_killed_with_coins_in_memory_replays_them_when_it_reopens(open_store):
    chain = busy_chain(20)
    store = open_store("crashed")
    give(store, chain.blocks[1:13])  # written: the tip is at the best header it knows
    written = table_rows(store, "utxo")
    for block in chain.blocks[13:]:
        store.add_header(block.header, now=LATER)
    for block in chain.blocks[13:-1]:  # syncing: these blocks' coins wait in memory
        store.store_block(block)
        store.activate_best_chain()
    assert store.height == chain.height - 1 and table_rows(store, "utxo") == written
    # The disk as a kill -9 now would leave it: the files, without what waits in memory.
    path = Path(db_path(store))
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", path.with_name(f"after-crash.sqlite{suffix}"))
    reopened = open_store("after-crash")
    assert reopened.height == chain.height - 1
    assert reopened.utxo_matches_replay()  # the blocks above the written ones were replayed
    assert table_rows(reopened, "txindex") == sum(len(block.transactions) for block in chain.blocks[1:-1])


def test_a_coin_created_and_spent_in_one_block_leaves_no_trace_and_disconnecting_restores_the_utxo_set(open_store):
    store = open_store()
    chain = ChainBuilder()
    alice, bob, carol = chain.key("alice"), chain.key("bob"), chain.key("carol")
    give(store, chain.add_blocks(6))
    before = utxo_of(store)
    assert before == chain.view.coins
    first = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=10 * COIN, fee=1_000)
    second = chain.spend(OutPoint(first.txid, 0), to=bob, amount=4 * COIN, fee=1_000, key=alice)
    third = chain.spend(OutPoint(second.txid, 0), to=carol, amount=1 * COIN, fee=1_000, key=bob)
    block = chain.add_block([first, second, third])
    give(store, [block])
    assert_on(store, chain)
    after = utxo_of(store)
    assert OutPoint(first.txid, 0) not in after and OutPoint(second.txid, 0) not in after
    assert OutPoint(third.txid, 0) in after and OutPoint(first.txid, 1) in after
    # The undo data holds only the coin that came from the UTXO set: the coinbase of block 1.
    undo = undo_rows(store, block.block_id)
    assert [(row[0], row[1]) for row in undo] == [(chain.coinbase_outpoint(1).txid, 0)]
    # A better branch from block 6 disconnects the block: the coins are exactly as before, plus the new branch's.
    other = chain.fork(6, coinbase_data="other")
    assert other.view.coins == before
    change = give(store, other.add_blocks(2))
    assert ids(change.disconnected) == [block.block_id]
    restored = utxo_of(store)
    branch = {op: coin for op, coin in restored.items() if coin.height > 6}
    assert {op: coin for op, coin in restored.items() if coin.height <= 6} == before
    assert set(branch) == {other.coinbase_outpoint(7), other.coinbase_outpoint(8)}
    assert_on(store, other)
    for tx in (first, second, third):
        assert store.transaction(tx.txid) is None


# -- fork choice -----------------------------------------------------------------------------------


def test_reorg_to_a_branch_with_more_work_and_not_to_equal_or_less(open_store):
    store = open_store()
    a = ChainBuilder()
    extend_busy(a, 10, random.Random(3))
    give_each(store, a.blocks[1:])
    b = a.fork(6)
    extend_busy(b, 3, random.Random(4))  # height 9: less work
    assert give(store, b.blocks[7:]) == ChainChange([], [], [])
    assert_on(store, a)
    extend_busy(b, 1, random.Random(5))  # height 10: equal work; the first seen stays
    assert give(store, b.blocks[10:]) == ChainChange([], [], [])
    assert_on(store, a)
    assert store.header(b.tip.block_id).status == HAVE_DATA
    extend_busy(b, 1, random.Random(6))  # height 11: more work
    change = give(store, b.blocks[11:])
    assert sorted(ids(change.disconnected)) == sorted(ids(a.blocks[7:]))
    assert ids(change.connected) == ids(b.blocks[7:])
    assert change.invalid == []
    assert_on(store, b)
    for block in a.blocks[7:]:
        assert not store.is_active(block.block_id)
        assert store.has_block(block.block_id)
    # And back again when the first branch overtakes.
    extend_busy(a, 2, random.Random(7))
    change = give(store, a.blocks[11:])
    assert sorted(ids(change.disconnected)) == sorted(ids(b.blocks[7:]))
    assert ids(change.connected) == ids(a.blocks[7:])
    assert_on(store, a)


def test_disconnected_blocks_are_listed_oldest_first(open_store):
    """ChainChange: "oldest first in each list"; the mempool readds the disconnected blocks in that order."""
    store = open_store()
    a = ChainBuilder()
    give(store, a.add_blocks(9))
    b = a.fork(5)
    change = give(store, b.add_blocks(6))
    assert ids(change.connected) == ids(b.blocks[6:])
    assert ids(change.disconnected) == ids(a.blocks[6:])


def test_transactions_of_disconnected_blocks_are_given_to_the_caller(open_store):
    store = open_store()
    a = ChainBuilder()
    extend_busy(a, 12, random.Random(8))
    give(store, a.blocks[1:])
    b = a.fork(7)
    b.add_blocks(6)  # no transactions on the new branch
    change = give(store, b.blocks[8:])
    lost = {tx.txid for block in a.blocks[8:] for tx in block.transactions}
    assert {tx.txid for block in change.disconnected for tx in block.transactions} == lost
    assert len(lost) > 5  # the old branch did move coins
    for txid in lost:
        assert store.transaction(txid) is None
    for block in a.blocks[8:]:  # what those blocks spent is unspent again
        for tx in block.transactions[1:]:
            for txin in tx.inputs:
                if txin.prevout.txid not in lost:
                    assert store.coin(txin.prevout) is not None
    assert_on(store, b)


def retarget_chains() -> tuple[ChainBuilder, ChainBuilder]:
    """Two RETARGET branches from block 5: `heavy` fast (4x harder from block 10), `light` slow and longer."""
    base = ChainBuilder(RETARGET)
    base.add_blocks(5)  # times genesis+1..+5
    heavy = base.fork(5, "heavy")
    heavy.add_blocks(7)  # fast: block 10's window took 9 s instead of 100 s
    light = base.fork(5, "light")
    for _ in range(4):  # blocks 6..9 slow: block 9 is 100 s after genesis, so block 10 keeps the easiest target
        light.add_block(time=light.tip.header.time + 24)
    light.add_blocks(10)  # height 19
    return heavy, light


def test_a_longer_chain_with_less_work_loses_when_the_bits_differ(open_store):
    heavy, light = retarget_chains()
    limit = RETARGET.pow_limit_bits
    assert heavy.block_at(10).header.bits != limit and light.block_at(10).header.bits == limit
    assert work_for(heavy.block_at(10).header.bits) >= 3 * work_for(limit)
    assert light.height == 19 and heavy.height == 12
    # Light first, then heavy: the shorter heavy branch takes over.
    store = open_store("light-first", RETARGET)
    give(store, light.blocks[1:])
    assert_on(store, light)
    change = give(store, heavy.blocks[6:])
    assert len(change.disconnected) == 14 and len(change.connected) == 7
    assert_on(store, heavy)
    assert store.best_header().block_id == heavy.tip.block_id
    assert store.tip().chainwork > store.header(light.tip.block_id).chainwork
    # Heavy first, then light: the longer light branch does not.
    store = open_store("heavy-first", RETARGET)
    give(store, heavy.blocks[1:])
    assert give(store, light.blocks[6:]) == ChainChange([], [], [])
    assert_on(store, heavy)
    assert store.header(light.tip.block_id).height > store.height


# -- invalid blocks ------------------------------------------------------------------------------------------


def invalid_block(chain: ChainBuilder, how: str) -> Block:
    """A block on chain's tip that passes check_block but breaks a rule only connecting it can see."""
    if how == "bad-cb-amount":
        return chain.make_block(extra_reward=1)
    if how == "bad-txns-inputs-missingorspent":
        ghost = make_transaction(OutPoint("77" * 32, 0), [(chain.key("alice"), COIN)], chain.miner)
        return chain.make_block([ghost], fees=0)
    if how == "bad-txns-signature":  # 20 inputs, one badly signed: verified on the thread pool
        alice = chain.key("alice")
        mature = next(h for h in range(1, chain.height - 3) if chain.coinbase_outpoint(h) in chain.view)
        split = chain.spend(chain.coinbase_outpoint(mature), to=alice, amount=COIN, fee=1_000)
        many = make_transaction([OutPoint(split.txid, 0)], [(alice, COIN // 40)] * 20, alice)
        chain.add_block([split, many])
        spend_all = make_transaction([OutPoint(many.txid, i) for i in range(20)], [(chain.miner, COIN // 4)], alice)
        forged = list(spend_all.inputs)
        forged[13] = dataclasses.replace(forged[13], signature=spend_all.inputs[12].signature)
        spend_all = dataclasses.replace(spend_all, inputs=tuple(forged))
        return chain.make_block([spend_all])
    raise ValueError(how)


@pytest.mark.parametrize("how", ["bad-cb-amount", "bad-txns-inputs-missingorspent", "bad-txns-signature"])
def test_an_invalid_block_in_a_better_branch_is_marked_with_its_descendants_and_the_store_returns(open_store, how):
    store = open_store()
    a = ChainBuilder()
    extend_busy(a, 14, random.Random(9))
    give(store, a.blocks[1:])
    b = a.fork(8)
    extend_busy(b, 2, random.Random(10))
    bad = invalid_block(b, how)
    b.append(bad, validate=False)
    bad_height = b.height
    b.add_blocks(6, validate=False)  # valid on top of it, but descendants of an invalid block
    assert b.height > a.height
    change = give(store, b.blocks[9:])
    assert [(block_id, error.code) for block_id, error in change.invalid] == [(bad.block_id, how)]
    assert_on(store, a)  # back on the best valid chain
    tried = ids(b.blocks[9:bad_height])  # the valid blocks before the invalid one were connected, then undone
    assert sorted(ids(change.disconnected)) == sorted(ids(a.blocks[9:]) + tried)
    assert ids(change.connected) == tried + ids(a.blocks[9:])
    for block in b.blocks[bad_height:]:
        assert store.header(block.block_id).status == INVALID
    for block in b.blocks[9:bad_height]:
        assert store.header(block.block_id).status != INVALID
    assert store.best_header().block_id == a.tip.block_id
    # Nothing builds on the invalid branch any more.
    with pytest.raises(ConsensusError) as caught:
        store.add_header(b.make_block().header, now=LATER)
    assert caught.value.code == "bad-prevblk"
    with pytest.raises(ConsensusError) as caught:
        store.add_header(bad.header, now=LATER)
    assert caught.value.code == "duplicate-invalid"
    assert store.activate_best_chain() == ChainChange([], [], [])
    assert_on(store, a)


def test_the_valid_part_of_a_branch_with_an_invalid_block_is_kept_when_it_has_more_work(open_store):
    store = open_store()
    a = ChainBuilder()
    give(store, a.add_blocks(5))
    b = a.fork(2)
    b.add_blocks(6)  # heights 3..8: more work than a
    valid_tip = b.tip
    bad = invalid_block(b, "bad-cb-amount")
    b.append(bad, validate=False)
    b.add_blocks(3, validate=False)
    change = give(store, b.blocks[3:])
    assert [block_id for block_id, _ in change.invalid] == [bad.block_id]
    assert store.tip().block_id == valid_tip.block_id
    valid = b.fork(8)
    assert_on(store, valid)


def test_a_block_found_invalid_during_the_reorg_brings_back_the_old_chain_coins(open_store):
    """The old branch is disconnected before the invalid block is reached; its transactions come back."""
    store = open_store()
    a = ChainBuilder()
    extend_busy(a, 12, random.Random(11))
    give(store, a.blocks[1:])
    b = a.fork(6)
    bad = invalid_block(b, "bad-txns-inputs-missingorspent")
    b.append(bad, validate=False)
    b.add_blocks(8, validate=False)
    change = give(store, b.blocks[7:])
    assert [block_id for block_id, _ in change.invalid] == [bad.block_id]
    assert set(ids(a.blocks[7:])) <= set(ids(change.disconnected))
    assert ids(change.connected)[-6:] == ids(a.blocks[7:])
    assert_on(store, a)


# -- add_header ---------------------------------------------------------------------------------------


def reject_code(store: ChainStore, header: BlockHeader, now: float = LATER) -> str:
    with pytest.raises(ConsensusError) as caught:
        store.add_header(header, now=now)
    assert store.header(header.block_id) is None  # nothing stored
    return caught.value.code


def test_add_header_rejects_an_unknown_parent(open_store):
    store = open_store()
    chain = ChainBuilder()
    give(store, chain.add_blocks(3))
    orphan = chain.make_block(prev="42" * 32).header
    assert reject_code(store, orphan) == "prev-blk-not-found"


def test_add_header_rejects_a_header_without_proof_of_work(open_store):
    store = open_store()
    chain = ChainBuilder()
    give(store, chain.add_blocks(3))
    header = unmine(chain.make_block().header)
    assert not header.meets_target()
    assert reject_code(store, header) == "high-hash"


@pytest.mark.parametrize("bits", [0x2000FFFF, 0x1F7FFFFF, 0x2100FFFF, 0x20800000, 0])
def test_add_header_rejects_bits_the_chain_does_not_require(open_store, bits):
    store = open_store()
    chain = ChainBuilder()
    give(store, chain.add_blocks(3))
    header = chain.make_block().header
    header = dataclasses.replace(header, bits=bits, nonce=0)
    if bits in (0x2000FFFF, 0x1F7FFFFF):
        header = mine(header)  # harder than regtest wants, with real proof of work
    assert reject_code(store, header) == "bad-diffbits"


def test_add_header_on_the_retarget_network_requires_the_retargeted_bits(open_store):
    heavy, _ = retarget_chains()
    store = open_store("retarget", RETARGET)
    give(store, heavy.blocks[1:10])
    good = heavy.block_at(10).header
    stale = mine(dataclasses.replace(good, bits=RETARGET.pow_limit_bits, nonce=0))
    assert reject_code(store, stale) == "bad-diffbits"
    assert store.add_header(good, now=LATER).height == 10


def test_add_header_rejects_time_too_old_and_time_too_new(open_store):
    store = open_store()
    chain = ChainBuilder()
    give(store, chain.add_blocks(12))
    median = chain.median_time_past()
    assert reject_code(store, chain.make_block(time=median).header) == "time-too-old"
    assert reject_code(store, chain.make_block(time=median - 100).header) == "time-too-old"
    assert store.add_header(chain.make_block(time=median + 1).header, now=LATER).height == 13
    late = chain.make_block(time=chain.tip.header.time + 3 * 3600).header
    assert reject_code(store, late, now=chain.tip.header.time) == "time-too-new"
    assert store.add_header(late, now=chain.tip.header.time + 3600).height == 13


def test_add_header_reads_median_time_along_its_own_branch(open_store):
    store = open_store()
    a = ChainBuilder()
    a.add_blocks(3)
    for _ in range(12):  # the active chain runs far ahead in time
        a.add_block(time=a.tip.header.time + 1_000)
    give(store, a.blocks[1:])
    b = a.fork(3)
    for block in b.add_blocks(5):  # times a second apart: too old for a's median, fine for b's
        assert block.header.time < a.median_time_past()
        assert store.add_header(block.header, now=LATER).height == store.header(block.header.prev).height + 1
    assert reject_code(store, b.make_block(time=b.median_time_past()).header) == "time-too-old"


# -- blocks out of order -------------------------------------------------------------------------------------


def chain_data(store: ChainStore, block_id: str) -> int:
    connection = sqlite3.connect(db_path(store))
    try:
        return connection.execute("SELECT chain_data FROM headers WHERE id = ?", (block_id,)).fetchone()[0]
    finally:
        connection.close()


def test_blocks_arriving_children_first_connect_once_the_gap_fills(open_store):
    store = open_store()
    chain = ChainBuilder()
    give(store, extend_busy(chain, 3, random.Random(12)))
    blocks = extend_busy(chain, 12, random.Random(13))
    for block in blocks:
        store.add_header(block.header, now=LATER)
    assert store.best_header().block_id == chain.tip.block_id
    assert store.height == 3
    assert [block_id for _, block_id in store.missing_blocks(100)] == ids(blocks)
    for block in reversed(blocks[1:]):  # every block but the first, newest first
        store.store_block(block)
        assert store.activate_best_chain() == ChainChange([], [], [])
        assert store.height == 3
        assert store.header(block.block_id).status == HAVE_DATA
        assert chain_data(store, block.block_id) == 0
    assert [block_id for _, block_id in store.missing_blocks(100)] == [blocks[0].block_id]
    store.store_block(blocks[0])  # fills the gap
    assert all(chain_data(store, block.block_id) == 1 for block in blocks)
    change = store.activate_best_chain()
    assert ids(change.connected) == ids(blocks)
    assert_on(store, chain)
    assert store.missing_blocks(100) == []


def test_a_gap_in_the_middle_holds_back_only_what_is_above_it(open_store):
    store = open_store()
    chain = ChainBuilder()
    blocks = chain.add_blocks(10)
    for block in blocks:
        store.add_header(block.header, now=LATER)
    for block in blocks[:4] + blocks[5:]:  # all but block 5
        store.store_block(block)
    store.activate_best_chain()
    assert store.height == 4
    assert chain_data(store, blocks[9].block_id) == 0
    store.store_block(blocks[4])
    assert ids(store.activate_best_chain().connected) == ids(blocks[4:])
    assert_on(store, chain)


def test_missing_blocks_of_a_better_branch_include_those_below_the_tip_height(open_store):
    """The blocks to download are those of the best header's branch above the fork, not above our height."""
    store = open_store()
    a = ChainBuilder()
    give(store, a.add_blocks(10))
    b = a.fork(5)
    for block in b.add_blocks(8):  # heights 6..13: more work; only the headers are here
        store.add_header(block.header, now=LATER)
    assert store.best_header().block_id == b.tip.block_id
    missing = store.missing_blocks(100)
    assert missing == [(height, b.block_at(height).block_id) for height in range(6, 14)], \
        f"asked for heights {[h for h, _ in missing]} only: the branch can never be completed"


# -- the replay check, and reopening -------------------------------------------------------------------------


def test_utxo_matches_replay_notices_a_damaged_utxo_table(open_store):
    store = open_store()
    chain = ChainBuilder()
    extend_busy(chain, 10, random.Random(14))
    give(store, chain.blocks[1:])
    assert store.utxo_matches_replay()
    coin_op = next(iter(chain.view.coins))
    for damage, undo in [
        (("UPDATE utxo SET amount = amount + 1 WHERE txid = ? AND idx = ?", coin_op),
         ("UPDATE utxo SET amount = amount - 1 WHERE txid = ? AND idx = ?", coin_op)),
        (("UPDATE utxo SET height = height + 1 WHERE txid = ? AND idx = ?", coin_op),
         ("UPDATE utxo SET height = height - 1 WHERE txid = ? AND idx = ?", coin_op)),
        (("INSERT INTO utxo VALUES ('99', 0, 5, 'x', 1, 0, NULL)", None), ("DELETE FROM utxo WHERE txid = '99'", None)),
    ]:
        connection = sqlite3.connect(db_path(store))
        sql, op = damage
        connection.execute(sql, (op.txid, op.index) if op else ())
        connection.commit()
        assert not store.utxo_matches_replay(), sql
        sql, op = undo
        connection.execute(sql, (op.txid, op.index) if op else ())
        connection.commit()
        connection.close()
        assert store.utxo_matches_replay()


def test_reopening_the_store_gives_the_same_tip_and_coins(tmp_path):
    path = tmp_path / "chain.sqlite"
    a = ChainBuilder()
    extend_busy(a, 15, random.Random(15))
    b = a.fork(9)
    extend_busy(b, 9, random.Random(16))
    store = ChainStore(path, REGTEST)
    give_each(store, a.blocks[1:] + b.blocks[10:])
    state = (store.tip(), store.best_header(), utxo_of(store), store.locator())
    store.close()
    store = ChainStore(path, REGTEST)
    try:
        assert (store.tip(), store.best_header(), utxo_of(store), store.locator()) == state
        assert_on(store, b)
        assert store.activate_best_chain() == ChainChange([], [], [])
        some = b.block_at(12).transactions[-1]
        assert store.transaction(some.txid) == (some, b.block_at(12).block_id, 12)
        # and it carries on from there
        extend_busy(b, 2, random.Random(17))
        give(store, b.blocks[-2:])
        assert_on(store, b)
    finally:
        store.close()


# -- random forks, random order ----------------------------------------------------------------------------------

TRUNK = 6  # the random trees grow on 6 connected blocks, so every block in them can spend a mature coinbase


@dataclasses.dataclass
class Node:
    block: Block
    parent: int  # index in the tree; -1 for the trunk's tip
    height: int
    bad: bool  # breaks a rule (the coinbase claims too much)
    chain: ChainBuilder  # the branch up to and including this block

    def tainted(self, tree: list[Node]) -> bool:
        node = self
        while node.parent >= 0:
            if node.bad:
                return True
            node = tree[node.parent]
        return False


def random_transactions(chain: ChainBuilder, kind: int) -> list:
    """Spends for the next block of a branch: 0 none, 1 a coinbase, 2 that and its output again, 3 change."""
    alice, bob = chain.key("alice"), chain.key("bob")
    mature = [h for h in range(1, chain.height + 2 - REGTEST.coinbase_maturity)
              if chain.coinbase_outpoint(h) in chain.view]
    if kind == 0 or not mature:
        return []
    if kind == 3:
        change = [op for op, coin in chain.view.coins.items() if not coin.is_coinbase and coin.address in
                  (chain.miner.address, alice.address) and coin.amount > COIN]
        if change:
            op = change[0]
            owner = chain.miner if chain.view.coin(op).address == chain.miner.address else alice
            return [chain.spend(op, to=bob, amount=COIN // 2, fee=1_000, key=owner)]
    pay = chain.spend(chain.coinbase_outpoint(mature[0]), to=alice, amount=3 * COIN, fee=1_000)
    if kind == 2:
        return [pay, chain.spend(OutPoint(pay.txid, 0), to=bob, amount=COIN, fee=1_000, key=alice)]
    return [pay]


@functools.cache
def trunk() -> ChainBuilder:
    chain = ChainBuilder()
    chain.add_blocks(TRUNK)
    return chain


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_forks_delivered_in_random_order_end_on_the_most_work_valid_branch(data):
    base = trunk()
    tree = [Node(base.tip, -1, TRUNK, False, base)]
    count = data.draw(st.integers(3, 16), label="blocks")
    for i in range(count):
        parent_index = data.draw(st.integers(max(0, len(tree) - 6), len(tree) - 1), label="parent")
        parent = tree[parent_index]
        chain = parent.chain.fork(parent.height, coinbase_data=f"block {i}")
        txs = random_transactions(chain, data.draw(st.integers(0, 3), label="spends"))
        bad = data.draw(st.integers(0, 7), label="bad") == 0
        block = chain.make_block(txs, extra_reward=1 if bad else 0)
        chain.append(block, validate=not bad)
        tree.append(Node(block, parent_index, chain.height, bad, chain))
    headers_first = data.draw(st.booleans(), label="headers first")
    order = data.draw(st.permutations(range(1, len(tree))), label="order")
    by_id = {node.block.block_id: index for index, node in enumerate(tree)}

    with tempfile.TemporaryDirectory() as directory:
        store = ChainStore(Path(directory) / "chain.sqlite", REGTEST)
        try:
            give(store, base.blocks[1:])
            if headers_first:
                for node in tree[1:]:
                    store.add_header(node.block.header, now=LATER)
            delivered: set[int] = {0}
            rejected: set[int] = set()  # refused at add_header: a descendant of a block found invalid
            waiting: dict[int, list[int]] = {}  # blocks whose parent's header is unknown, by parent
            for index in order:
                ready = [index]
                while ready:  # as the node's orphan pool: a block waits for its parent
                    current = ready.pop()
                    node = tree[current]
                    if node.parent in rejected:
                        rejected.add(current)
                        ready += waiting.pop(current, [])
                        continue
                    if store.header(node.block.header.prev) is None:
                        waiting.setdefault(node.parent, []).append(current)
                        continue
                    try:
                        store.add_header(node.block.header, now=LATER)
                    except ConsensusError as error:
                        assert error.code in ("bad-prevblk", "duplicate-invalid") and node.tainted(tree), error
                        rejected.add(current)
                        ready += waiting.pop(current, [])
                        continue
                    store.store_block(node.block)
                    store.activate_best_chain()
                    delivered.add(current)
                    ready += waiting.pop(current, [])
                    check_random_state(store, tree, delivered, by_id)
            assert not waiting
        finally:
            store.close()


def check_random_state(store: ChainStore, tree: list[Node], delivered: set[int], by_id: dict[str, int]) -> None:
    def available(index: int) -> bool:
        while index > 0:
            if index not in delivered:
                return False
            index = tree[index].parent
        return True

    candidates = [i for i in range(len(tree)) if available(i) and not tree[i].tainted(tree)]
    best = max(tree[i].height for i in candidates)  # regtest: work is height
    tip = by_id.get(store.tip().block_id)
    assert tip in candidates, "the tip is not a fully available valid block"
    assert tree[tip].height == best, f"tip at {tree[tip].height}, a valid branch reaches {best}"
    assert utxo_of(store) == tree[tip].chain.view.coins
    assert store.utxo_matches_replay()


# -- crash safety with real processes --------------------------------------------------------------------------

NODE_ARGS = ("--network", "regtest", "--outbound", "0")
CRASH_CHAIN_LENGTH = 220


@functools.cache
def crash_chain() -> ChainBuilder:
    chain = ChainBuilder()
    extend_busy(chain, CRASH_CHAIN_LENGTH, random.Random(20))
    return chain


def replayed(blocks: Iterable[Block]) -> dict[OutPoint, Coin]:
    return replay_view(blocks).coins


def store_path(data_dir: Path) -> Path:
    return data_dir / "regtest" / "chain.sqlite"


def feed(client: WireClient, blocks: list[Block]) -> threading.Thread:
    """Send the blocks as fast as the socket takes them, on a thread (the node may die meanwhile)."""
    payload = frames(*(BlockMessage(block).encode() for block in blocks))

    def run() -> None:
        try:
            client.send_raw(payload)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def chain_info(client: WireClient):
    client.send_message(GetBlockchainInfo())
    return client.recv_until("blockchaininfo", timeout=10)


def check_crashed_store(path: Path, branches: list[list[Block]]) -> ChainStore:
    """Open what a killed node left: the UTXO set replays, the tip is a block we fed on a branch we fed."""
    store = ChainStore(path, REGTEST)
    assert store.utxo_matches_replay()
    tip = store.tip()
    matching = [branch for branch in branches
                if tip.height < len(branch) and branch[tip.height].block_id == tip.block_id]
    assert matching, f"tip {tip.block_id} at {tip.height} is not a block of the fed chain"
    assert utxo_of(store) == replayed(matching[0][:tip.height + 1])
    for height in range(tip.height + 1):
        assert store.active_id(height) == matching[0][height].block_id
    return store


def active_height(connection: sqlite3.Connection) -> int:
    return connection.execute("SELECT MAX(height) FROM active").fetchone()[0]


def test_kill_9_while_connecting_blocks_leaves_a_consistent_store(start_node):
    """Ten nodes killed -9 at random heights. Every third iteration streams the blocks in order (each is
    stored, then connected); the others send the headers, then the blocks newest first, so that the last
    one to arrive connects the whole chain in one activate_best_chain call, during which the kill lands."""
    chain = crash_chain()
    blocks = chain.blocks[1:]
    rng = random.Random(99)
    heights_at_kill = []
    for iteration in range(10):
        node = start_node(*NODE_ARGS, name=f"crash{iteration}")
        client = node.connect()
        client.handshake()
        connection = sqlite3.connect(store_path(node.data_dir), timeout=30)
        kill_at = rng.randint(1, CRASH_CHAIN_LENGTH - 60)
        if iteration % 3:
            client.send_message(Headers(headers=tuple(block.header for block in blocks)))
            sender = feed(client, blocks[::-1])
        else:
            sender = feed(client, blocks)
        wait_until(lambda: active_height(connection) >= kill_at, timeout=30, interval=0.0005,
                   message=f"height {kill_at}")
        node.kill()
        connection.close()
        client.close()
        sender.join(10)
        store = check_crashed_store(store_path(node.data_dir), [chain.blocks])
        height = store.height
        assert height >= kill_at
        heights_at_kill.append(height)
        store.close()
        if iteration in (3, 6):  # the restarted node answers from the same tip and takes the rest
            node = start_node(*NODE_ARGS, name=f"crash{iteration}")
            with node.connect() as client:
                client.handshake()
                assert chain_info(client).height >= height
                feed(client, blocks[height:]).join(20)
                wait_until(lambda: chain_info(client).height == CRASH_CHAIN_LENGTH, timeout=20, interval=0.05,
                           message="the restarted node to connect the rest")
                assert chain_info(client).tip == chain.tip.block_id
            node.stop()
            reopened = check_crashed_store(store_path(node.data_dir), [chain.blocks])
            assert reopened.height == CRASH_CHAIN_LENGTH
            reopened.close()
    # The kills did land while blocks were still being connected.
    assert sum(h < CRASH_CHAIN_LENGTH for h in heights_at_kill) >= 8, heights_at_kill


REORG_FORK, REORG_OLD, REORG_NEW = 10, 80, 110  # the old branch ends at 80, the new one at 110


@functools.cache
def reorg_chains() -> tuple[ChainBuilder, ChainBuilder]:
    old = ChainBuilder()
    extend_busy(old, REORG_OLD, random.Random(30))
    new = old.fork(REORG_FORK, coinbase_data="the other branch")
    extend_busy(new, REORG_NEW - REORG_FORK, random.Random(31))
    return old, new


def reorg_progress(connection: sqlite3.Connection, old_ids: set[str], new_ids: set[str]) -> int:
    """Steps of the reorg done: 70 disconnections from 80 down to 10, then connections on the new branch."""
    row = connection.execute("SELECT height, id FROM active ORDER BY height DESC LIMIT 1").fetchone()
    height, block_id = row
    if block_id in new_ids:
        return (REORG_OLD - REORG_FORK) + (height - REORG_FORK)
    return REORG_OLD - height if block_id in old_ids or height == REORG_FORK else -1


@pytest.fixture(scope="module")
def killed_during_reorg(tmp_path_factory) -> tuple[Path, int]:
    """A regtest node's data dir, killed -9 in the middle of a 70-out, 71-in reorg; and the step it was at."""
    from tests.conftest import ISOLATED, TEST_TIMEOUTS
    from tests.support import NodeProcess

    old, new = reorg_chains()
    old_ids, new_ids = set(ids(old.blocks[REORG_FORK + 1:])), set(ids(new.blocks[REORG_FORK + 1:]))
    root = tmp_path_factory.mktemp("reorg")
    rng = random.Random(41)
    full = 2 * (REORG_OLD - REORG_FORK) + 1  # the reorg ends when the new branch passes 80
    for attempt in range(4):
        data_dir = root / f"attempt{attempt}"
        node = NodeProcess(data_dir, *TEST_TIMEOUTS, *ISOLATED, *NODE_ARGS)
        try:
            with node.connect() as client:
                client.handshake()
                feed(client, old.blocks[1:]).join(20)
                wait_until(lambda: chain_info(client).height == REORG_OLD, timeout=20, interval=0.02,
                           message="the old branch to connect")
                kill_at = rng.randint(5, full - 25)
                connection = sqlite3.connect(store_path(data_dir), timeout=30)
                sender = feed(client, new.blocks[REORG_FORK + 1:])
                wait_until(lambda: reorg_progress(connection, old_ids, new_ids) >= kill_at, timeout=30,
                           interval=0.0005, message=f"reorg step {kill_at}")
                node.kill()
                sender.join(10)
                step = reorg_progress(connection, old_ids, new_ids)
                connection.close()
        finally:
            node.kill()
        if 0 < step < full:
            return data_dir, step
    pytest.fail("four kills in a row missed the reorg")


def copy_data_dir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (target / ".lock").unlink(missing_ok=True)
    return target


def test_kill_9_during_a_reorg_leaves_a_consistent_store_that_finishes_the_reorg(killed_during_reorg, tmp_path):
    data_dir, step = killed_during_reorg
    old, new = reorg_chains()
    copy = copy_data_dir(data_dir, tmp_path / "copy")
    store = check_crashed_store(store_path(copy), [old.blocks, new.blocks])
    try:
        tip = store.tip()
        on_new = tip.height > REORG_FORK and tip.block_id == new.block_at(tip.height).block_id
        assert step == ((REORG_OLD - REORG_FORK) + (tip.height - REORG_FORK) if on_new else REORG_OLD - tip.height)
        assert 0 < step < 2 * (REORG_OLD - REORG_FORK) + 1  # in the middle of the reorg
        assert tip.chainwork <= store.header(old.tip.block_id).chainwork
        stored = max(h for h in range(REORG_FORK, REORG_NEW + 1) if all(
            store.has_block(b.block_id) for b in new.blocks[REORG_FORK + 1:h + 1]))
        assert stored > REORG_OLD  # the block that started the reorg is on disk
        assert store.tip().block_id != new.block_at(stored).block_id  # killed before the end of it
        change = store.activate_best_chain()  # the store resumes the reorg
        assert change.invalid == []
        assert store.tip().block_id == new.block_at(stored).block_id
        assert store.utxo_matches_replay()
        assert utxo_of(store) == replayed(new.blocks[:stored + 1])
    finally:
        store.close()


def test_a_node_restarted_after_a_kill_during_a_reorg_finishes_it(killed_during_reorg, tmp_path, start_node):
    data_dir, _ = killed_during_reorg
    old, new = reorg_chains()
    copy = copy_data_dir(data_dir, tmp_path / "node")
    store = check_crashed_store(store_path(copy), [old.blocks, new.blocks])
    stored = max(h for h in range(REORG_FORK, REORG_NEW + 1) if all(
        store.has_block(b.block_id) for b in new.blocks[REORG_FORK + 1:h + 1]))
    killed_at = store.height
    store.close()
    node = start_node(*NODE_ARGS, name="node")
    with node.connect() as client:
        client.handshake()
        try:
            wait_until(lambda: chain_info(client).tip == new.block_at(stored).block_id, timeout=5, interval=0.05,
                       message="the restarted node to finish the reorg")
        except AssertionError:
            info = chain_info(client)
            pytest.fail(f"restarted at height {info.height} (killed at {killed_at}) with the whole branch to "
                        f"{stored} on disk, the node did not resume the reorg without new blocks")
    node.stop()
    store = check_crashed_store(store_path(copy), [new.blocks])
    store.close()


# A process that only opens the store and activates the best chain: every moment of it is inside
# activate_best_chain, so a kill at a random height lands inside one block's connect or disconnect.
ACTIVATE_ONLY = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from protocol.networks import NETWORKS
from roles.chainstore import ChainStore
ChainStore(Path(sys.argv[1]), NETWORKS["regtest"]).activate_best_chain()
"""


@pytest.fixture(scope="module")
def backlogs(tmp_path_factory) -> dict[str, Path]:
    """Store files with every block stored and nothing connected ("connect"), or with the old reorg
    branch connected and the better one stored ("reorg")."""
    root = tmp_path_factory.mktemp("backlogs")
    made = {}
    store = ChainStore(root / "connect.sqlite", REGTEST)
    give(store, crash_chain().blocks[1:], activate=False)
    store.close()
    made["connect"] = root / "connect.sqlite"
    old, new = reorg_chains()
    store = ChainStore(root / "reorg.sqlite", REGTEST)
    give(store, old.blocks[1:])
    give(store, new.blocks[REORG_FORK + 1:], activate=False)
    store.close()
    made["reorg"] = root / "reorg.sqlite"
    return made


def test_kill_9_inside_activate_best_chain_at_random_moments(backlogs, tmp_path):
    import subprocess
    import sys

    from tests.support import ROOT

    old, new = reorg_chains()
    old_ids, new_ids = set(ids(old.blocks[REORG_FORK + 1:])), set(ids(new.blocks[REORG_FORK + 1:]))
    rng = random.Random(123)
    landed: list[bool] = []
    for iteration in range(12):
        kind = "reorg" if iteration % 2 else "connect"
        path = tmp_path / f"{iteration}.sqlite"
        shutil.copyfile(backlogs[kind], path)
        connection = sqlite3.connect(path, timeout=30)
        if kind == "connect":
            kill_at = rng.randint(1, CRASH_CHAIN_LENGTH - 40)
            progress = lambda: active_height(connection)
        else:
            disconnects = REORG_OLD - REORG_FORK
            # Half of these kills among the 70 disconnections, half among the 100 connections after them.
            kill_at = rng.randint(1, disconnects - 1) if iteration % 4 == 1 else \
                rng.randint(disconnects, disconnects + REORG_NEW - REORG_FORK - 20)
            progress = lambda: reorg_progress(connection, old_ids, new_ids)
        process = subprocess.Popen([sys.executable, "-c", ACTIVATE_ONLY, str(path), str(ROOT)])
        try:
            wait_until(lambda: progress() >= kill_at or process.poll() is not None, timeout=30, interval=0.0005,
                       message=f"{kind} step {kill_at}")
            process.kill()
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        connection.close()
        branches = [crash_chain().blocks] if kind == "connect" else [old.blocks, new.blocks]
        store = check_crashed_store(path, branches)
        try:
            landed.append(store.tip().block_id != branches[-1][-1].block_id)  # before the end of it
            assert store.activate_best_chain().invalid == []  # and the store carries on from there
            assert store.tip().block_id == branches[-1][-1].block_id
            assert store.utxo_matches_replay()
        finally:
            store.close()
    assert sum(landed) >= 10, f"only {sum(landed)} of 12 kills landed before the process was done"


# -- signatures verified ahead (roles/signature_workers.py) ---------------------------------------


def _big_spend(chain: ChainBuilder, inputs: int, forged_input: int | None = None, time: int | None = None):
    """A block spending `inputs` coinbases in one transaction, one signature forged if asked."""
    tx = make_transaction([chain.coinbase_outpoint(h) for h in range(1, inputs + 1)], [(chain.miner, COIN)],
                          chain.miner)
    if forged_input is not None:
        inputs_ = list(tx.inputs)
        inputs_[forged_input] = dataclasses.replace(inputs_[forged_input], signature=tx.inputs[0].signature)
        tx = dataclasses.replace(tx, inputs=tuple(inputs_))
    return chain.make_block([tx], time=time)


@pytest.mark.parametrize("ahead", [True, False], ids=["verified ahead", "verified when connected"])
def test_a_forged_signature_in_a_big_block_is_named_and_nothing_else_changes(open_store, ahead):
    inputs = 300  # three jobs of 128 and a rest: the workers verify, and the caller
    chain = ChainBuilder(REGTEST)
    chain.add_blocks(inputs + REGTEST.coinbase_maturity)
    store = open_store()
    give(store, chain.blocks[1:])
    before = utxo_of(store)
    bad = _big_spend(chain, inputs, forged_input=200)
    if ahead:
        store.verify_ahead(bad)
    change = give(store, [bad])
    ((block_id, error),) = change.invalid
    assert block_id == bad.block_id and error.code == "bad-txns-signature"
    assert f"{bad.transactions[1].txid} input 200:" in error.reason
    assert store.tip().block_id == chain.tip.block_id and utxo_of(store) == before
    good = _big_spend(chain, inputs)
    if ahead:
        store.verify_ahead(good)
    assert give(store, [good]).connected == [good]


def test_blocks_verified_ahead_but_never_connected_are_let_go(open_store):
    chain = ChainBuilder(REGTEST)
    chain.add_blocks(200 + REGTEST.coinbase_maturity)
    store = open_store()
    give(store, chain.blocks[1:])
    for second in range(10):  # ten different blocks, none of them stored
        store.verify_ahead(_big_spend(chain, 200, time=chain.tip.header.time + 1 + second))
    assert len(store._ahead) <= 4
    assert len(store._verifier._out) + len(store._verifier._done) <= 4 * 2  # two jobs a block at most
