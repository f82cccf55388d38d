"""The mempool (roles/mempool.py) against a real chain store: acceptance, conflicts, fees, eviction, reorgs.

The chain is a ChainStore on a SQLite file in tmp_path, fed by
tests/chain_builder.py; reorgs are real ones, and the mempool is moved along
them as the blockchain role does (roles/blockchain.py `_activate`):
remove_for_block for each connected block, then readd the transactions of the
disconnected blocks, then revalidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import pytest

from protocol.block import Block
from protocol.consensus import ConsensusError
from protocol.networks import NETWORKS, Network
from protocol.transaction import COIN, OutPoint, Transaction
from roles.chainstore import ChainChange, ChainStore
from roles.mempool import MIN_RELAY_FEE_RATE, Mempool, PolicyError
from tests.chain_builder import ChainBuilder, make_transaction

REGTEST = NETWORKS["regtest"]
LATER = 2**33  # `now` for add_header: no header here is too new
RETARGET = dataclasses.replace(REGTEST, name="regtest-retarget", retarget_interval=10, target_spacing=10)


@pytest.fixture
def open_store(tmp_path: Path):
    opened: list[ChainStore] = []

    def open_(name: str = "chain", network: Network = REGTEST) -> ChainStore:
        store = ChainStore(tmp_path / f"{name}.sqlite", network)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def give(store: ChainStore, blocks: Iterable[Block]) -> ChainChange:
    for block in blocks:
        store.add_header(block.header, now=LATER)
        store.store_block(block)
    return store.activate_best_chain()


def follow(pool: Mempool, store: ChainStore, change: ChainChange) -> tuple[list[str], list[str], list[str]]:
    """Move the mempool along a chain change as BlockchainRole._activate does: remove what the new
    blocks confirm, readd the disconnected blocks' transactions (oldest block first), revalidate."""
    removed = [txid for block in change.connected for txid in pool.remove_for_block(block)]
    readded, dropped = [], []
    if change.disconnected:
        readded = pool.readd([tx for block in change.disconnected for tx in block.transactions[1:]],
                             store, store.height)
        dropped = pool.revalidate(store, store.height)
    return removed, readded, dropped


@pytest.fixture
def setup(open_store):
    """A store and a builder at height 12: the coinbases of blocks 1..8 are spendable in block 13."""
    store = open_store()
    chain = ChainBuilder()
    give(store, chain.add_blocks(12))
    return store, chain, Mempool(REGTEST)


def accept(pool: Mempool, store: ChainStore, tx: Transaction):
    return pool.accept(tx, store, store.height)


def refusal(pool: Mempool, store: ChainStore, tx: Transaction, kind: type = PolicyError) -> str:
    before = (pool.txids(), pool.bytes)
    with pytest.raises(kind) as caught:
        accept(pool, store, tx)
    assert (pool.txids(), pool.bytes) == before  # a refusal changes nothing
    return caught.value.code


def consistent(pool: Mempool) -> None:
    """The pool's bookkeeping matches its entries: bytes, and who spends what."""
    entries = pool.entries()
    assert pool.bytes == sum(entry.size for entry in entries)
    spent = {txin.prevout: entry.tx.txid for entry in entries for txin in entry.tx.inputs}
    assert len(spent) == sum(len(entry.tx.inputs) for entry in entries)  # no outpoint spent twice
    for outpoint, txid in spent.items():
        assert pool.spender_of(outpoint) == txid
    assert pool._spent_by == spent


# -- acceptance -----------------------------------------------------------------------------------------


def test_a_valid_spend_is_accepted(setup):
    store, chain, pool = setup
    alice = chain.key("alice")
    tx = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=10 * COIN, fee=2_000)
    entry = accept(pool, store, tx)
    assert entry.fee == 2_000
    assert entry.tx == tx and entry.size == tx.size
    assert tx.txid in pool and len(pool) == 1 and pool.txids() == [tx.txid]
    assert pool.get(tx.txid) == entry
    assert pool.bytes == tx.size
    assert pool.spender_of(chain.coinbase_outpoint(1)) == tx.txid
    view = pool.view(store)
    assert view.coin(chain.coinbase_outpoint(1)) is None  # spent by a waiting transaction
    assert view.coin(OutPoint(tx.txid, 0)).amount == 10 * COIN
    assert refusal(pool, store, tx) == "txn-already-in-mempool"
    consistent(pool)


def test_a_transaction_already_in_a_block_is_refused(setup):
    store, chain, pool = setup
    tx = chain.spend(chain.coinbase_outpoint(1), to=chain.key("alice"), amount=COIN, fee=1_000)
    give(store, [chain.add_block([tx])])
    assert refusal(pool, store, tx) == "txn-already-known"


def test_a_double_spend_of_a_waiting_transaction_is_refused(setup):
    store, chain, pool = setup
    alice, bob = chain.key("alice"), chain.key("bob")
    first = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=COIN, fee=1_000)
    accept(pool, store, first)
    rival = chain.spend(chain.coinbase_outpoint(1), to=bob, amount=2 * COIN, fee=50_000)  # even paying more
    assert refusal(pool, store, rival) == "txn-mempool-conflict"
    both = chain.spend([chain.coinbase_outpoint(2), chain.coinbase_outpoint(1)], to=bob, amount=COIN, fee=1_000)
    assert refusal(pool, store, both) == "txn-mempool-conflict"
    assert pool.spender_of(chain.coinbase_outpoint(2)) is None  # the refused one marked nothing
    assert pool.spender_of(chain.coinbase_outpoint(1)) == first.txid
    consistent(pool)


def test_a_double_spend_of_the_chain_is_refused(setup):
    store, chain, pool = setup
    alice, bob = chain.key("alice"), chain.key("bob")
    confirmed = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=COIN, fee=1_000)
    give(store, [chain.add_block([confirmed])])
    again = chain.spend(chain.coinbase_outpoint(2), to=bob, amount=COIN, fee=1_000)
    accept(pool, store, again)
    double = make_transaction(chain.coinbase_outpoint(1), [(bob, COIN)], chain.miner)
    assert refusal(pool, store, double, ConsensusError) == "bad-txns-inputs-missingorspent"
    ghost = make_transaction(OutPoint("5a" * 32, 0), [(bob, COIN)], chain.miner)
    assert refusal(pool, store, ghost, ConsensusError) == "bad-txns-inputs-missingorspent"
    assert pool.txids() == [again.txid]


def test_unconfirmed_chains_spend_waiting_outputs(setup):
    store, chain, pool = setup
    alice, bob, carol = chain.key("alice"), chain.key("bob"), chain.key("carol")
    parent = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=10 * COIN, fee=1_000)
    child = chain.spend(OutPoint(parent.txid, 0), to=bob, amount=4 * COIN, fee=3_000, key=alice)
    grandchild = chain.spend(OutPoint(child.txid, 0), to=carol, amount=COIN, fee=2_000, key=bob)
    for tx in (parent, child, grandchild):
        accept(pool, store, tx)
    assert [pool.get(tx.txid).fee for tx in (parent, child, grandchild)] == [1_000, 3_000, 2_000]
    assert pool.spender_of(OutPoint(parent.txid, 0)) == child.txid
    sibling = chain.spend(OutPoint(parent.txid, 0), to=carol, amount=COIN, fee=1_000, key=alice)
    assert refusal(pool, store, sibling) == "txn-mempool-conflict"
    beyond = make_transaction(OutPoint(parent.txid, 7), [(carol, COIN)], alice)  # no such output
    assert refusal(pool, store, beyond, ConsensusError) == "bad-txns-inputs-missingorspent"
    # Its change output (index 1) is free to spend too.
    change = chain.spend(OutPoint(parent.txid, 1), to=carol, amount=COIN, fee=1_000)
    accept(pool, store, change)
    assert len(pool) == 4
    consistent(pool)


def test_a_coinbase_is_spendable_only_once_mature(setup):
    store, chain, pool = setup
    young = chain.spend(chain.coinbase_outpoint(9), to=chain.key("alice"), amount=COIN, fee=1_000)
    assert refusal(pool, store, young, ConsensusError) == "bad-txns-premature-spend-of-coinbase"
    ripe = chain.spend(chain.coinbase_outpoint(8), to=chain.key("alice"), amount=COIN, fee=1_000)
    accept(pool, store, ripe)


def test_a_coinbase_transaction_is_refused(setup):
    store, chain, pool = setup
    coinbase = chain.coinbase()
    assert refusal(pool, store, coinbase, ConsensusError) == "coinbase"
    assert pool.readd([coinbase], store, store.height) == []
    assert len(pool) == 0


def test_a_badly_signed_spend_is_refused(setup):
    store, chain, pool = setup
    stolen = make_transaction(chain.coinbase_outpoint(1), [(chain.key("bob"), COIN)], chain.key("bob"))
    assert refusal(pool, store, stolen, ConsensusError) == "bad-txns-wrong-key"


# -- fees -------------------------------------------------------------------------------------------------


def paying_exactly(chain: ChainBuilder, outpoint: OutPoint, rate: int) -> Transaction:
    """A spend whose fee is exactly `rate` per 1,000 bytes of itself (the size depends on the fee's digits)."""
    fee = 500
    for _ in range(10):
        tx = chain.spend(outpoint, to=chain.key("alice"), amount=COIN, fee=fee)
        wanted = tx.size * rate // 1000
        if wanted * 1000 == tx.size * rate and wanted == fee:
            return tx
        fee = wanted if wanted * 1000 == tx.size * rate else wanted + 1
    raise AssertionError("no fee converged")


def test_the_minimum_relay_fee_rate(setup):
    store, chain, pool = setup
    assert MIN_RELAY_FEE_RATE == 1000
    exact = paying_exactly(chain, chain.coinbase_outpoint(1), MIN_RELAY_FEE_RATE)
    entry = accept(pool, store, exact)
    assert entry.fee_rate == MIN_RELAY_FEE_RATE
    short = chain.spend(chain.coinbase_outpoint(2), to=chain.key("alice"), amount=COIN, fee=entry.fee - 1)
    assert short.size >= exact.size  # so its rate is below the minimum
    assert refusal(pool, store, short) == "min relay fee not met"
    free = chain.spend(chain.coinbase_outpoint(3), to=chain.key("alice"), amount=COIN, fee=0)
    assert refusal(pool, store, free) == "min relay fee not met"


def test_a_pool_with_a_higher_minimum_fee_rate(setup):
    store, chain, _ = setup
    pool = Mempool(REGTEST, min_fee_rate=5_000)
    at_1000 = paying_exactly(chain, chain.coinbase_outpoint(1), 1_000)
    assert refusal(pool, store, at_1000) == "min relay fee not met"
    at_5000 = paying_exactly(chain, chain.coinbase_outpoint(2), 5_000)
    accept(pool, store, at_5000)


# -- a bounded pool -----------------------------------------------------------------------------------------


def test_a_full_pool_evicts_the_lowest_fee_rate_with_its_descendants_and_refuses_a_cheap_newcomer(setup):
    store, chain, _ = setup
    alice, bob = chain.key("alice"), chain.key("bob")
    cheap = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=5 * COIN, fee=800)
    cheap_child = chain.spend(OutPoint(cheap.txid, 0), to=bob, amount=COIN, fee=5_000, key=alice)
    middle = chain.spend(chain.coinbase_outpoint(2), to=bob, amount=COIN, fee=1_800)
    rich = chain.spend(chain.coinbase_outpoint(3), to=bob, amount=COIN, fee=7_000)
    decent = chain.spend(chain.coinbase_outpoint(4), to=bob, amount=COIN, fee=3_000)
    stingy = chain.spend(chain.coinbase_outpoint(5), to=bob, amount=COIN, fee=600)
    limit = cheap.size + cheap_child.size + middle.size + rich.size // 2
    pool = Mempool(REGTEST, max_bytes=limit)
    for tx in (cheap, cheap_child, middle):
        accept(pool, store, tx)
    assert pool.bytes <= limit
    # The preconditions of what follows: the rates' order, and what fits.
    fee_rate = {tx.txid: fee * 1000 / tx.size for tx, fee in
                ((cheap, 800), (cheap_child, 5_000), (middle, 1_800), (rich, 7_000), (decent, 3_000), (stingy, 600))}
    assert fee_rate[stingy.txid] > MIN_RELAY_FEE_RATE
    assert fee_rate[stingy.txid] < fee_rate[cheap.txid] < fee_rate[middle.txid] < fee_rate[decent.txid]
    assert fee_rate[cheap.txid] < fee_rate[cheap_child.txid]
    assert middle.size + rich.size + decent.size <= limit < middle.size + rich.size + decent.size + stingy.size
    # The rich newcomer pushes out the cheapest, and the child that depends on it, despite the child's rate.
    accept(pool, store, rich)
    assert set(pool.txids()) == {middle.txid, rich.txid}
    assert pool.spender_of(chain.coinbase_outpoint(1)) is None
    assert pool.bytes <= limit
    accept(pool, store, decent)
    # A newcomer cheaper than everything waiting is refused, and nothing else moves.
    assert refusal(pool, store, stingy) == "mempool full"
    assert set(pool.txids()) == {middle.txid, rich.txid, decent.txid}
    assert pool.bytes <= limit
    consistent(pool)
    # The evicted parent's coin can be spent again.
    again = chain.spend(chain.coinbase_outpoint(1), to=bob, amount=COIN, fee=9_000)
    accept(pool, store, again)
    assert pool.bytes <= limit
    consistent(pool)


# -- blocks -------------------------------------------------------------------------------------------------


def test_remove_for_block_drops_the_confirmed_and_the_conflicting_with_descendants(setup):
    store, chain, pool = setup
    alice, bob, carol = chain.key("alice"), chain.key("bob"), chain.key("carol")
    confirmed = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=5 * COIN, fee=1_000)
    after_confirmed = chain.spend(OutPoint(confirmed.txid, 0), to=bob, amount=COIN, fee=1_000, key=alice)
    loser = chain.spend(chain.coinbase_outpoint(2), to=bob, amount=5 * COIN, fee=1_000)
    loser_child = chain.spend(OutPoint(loser.txid, 0), to=carol, amount=COIN, fee=1_000, key=bob)
    loser_grandchild = chain.spend(OutPoint(loser_child.txid, 0), to=alice, amount=COIN // 2, fee=1_000, key=carol)
    bystander = chain.spend(chain.coinbase_outpoint(3), to=carol, amount=COIN, fee=1_000)
    for tx in (confirmed, after_confirmed, loser, loser_child, loser_grandchild, bystander):
        accept(pool, store, tx)
    winner = chain.spend(chain.coinbase_outpoint(2), to=carol, amount=7 * COIN, fee=1_000)  # not in the pool
    block = chain.add_block([confirmed, winner])
    change = give(store, [block])
    removed, _, _ = follow(pool, store, change)
    assert sorted(removed) == sorted([confirmed.txid, loser.txid, loser_child.txid, loser_grandchild.txid])
    assert set(pool.txids()) == {after_confirmed.txid, bystander.txid}
    assert pool.spender_of(OutPoint(confirmed.txid, 0)) == after_confirmed.txid
    consistent(pool)
    # What is left is still valid on the new tip.
    assert pool.revalidate(store, store.height) == []
    assert set(pool.txids()) == {after_confirmed.txid, bystander.txid}


def test_readd_after_a_reorg_puts_back_what_is_still_valid_and_drops_what_the_new_chain_spent(setup):
    store, chain, pool = setup
    alice, bob, carol, dave = (chain.key(name) for name in ("alice", "bob", "carol", "dave"))
    survivor = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=COIN, fee=1_000)
    doomed = chain.spend(chain.coinbase_outpoint(2), to=bob, amount=COIN, fee=1_000)
    in_both = chain.spend(chain.coinbase_outpoint(3), to=carol, amount=COIN, fee=1_000)
    later = chain.spend(chain.coinbase_outpoint(4), to=carol, amount=COIN, fee=1_000)
    fork = chain.fork(12, coinbase_data="other branch")
    follow(pool, store, give(store, [chain.add_block([survivor, doomed, in_both])]))
    follow(pool, store, give(store, [chain.add_block([later])]))
    assert len(pool) == 0
    # The other branch spends doomed's coin elsewhere and confirms in_both too; it ends up longer.
    rival = fork.spend(fork.coinbase_outpoint(2), to=dave, amount=2 * COIN, fee=1_000)
    fork.add_block([rival, in_both])
    fork.add_blocks(2)
    change = give(store, fork.blocks[13:])
    assert len(change.disconnected) == 2
    _, readded, dropped = follow(pool, store, change)
    assert sorted(readded) == sorted([survivor.txid, later.txid])
    assert dropped == []
    assert set(pool.txids()) == {survivor.txid, later.txid}
    assert doomed.txid not in pool and in_both.txid not in pool
    consistent(pool)


def test_readd_after_a_reorg_puts_back_a_parent_and_its_child_from_two_blocks(setup):
    """The child was confirmed a block after its parent; the role hands readd ChainChange.disconnected in order."""
    store, chain, pool = setup
    alice, bob = chain.key("alice"), chain.key("bob")
    parent = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=3 * COIN, fee=1_000)
    fork = chain.fork(12, coinbase_data="other branch")
    give(store, [chain.add_block([parent])])
    child = chain.spend(OutPoint(parent.txid, 0), to=bob, amount=COIN, fee=1_000, key=alice)
    give(store, [chain.add_block([child])])
    change = give(store, fork.add_blocks(3))
    assert len(change.disconnected) == 2
    follow(pool, store, change)
    assert set(pool.txids()) == {parent.txid, child.txid}, \
        f"only {['parent' if t == parent.txid else 'child' for t in pool.txids()]} came back"


def test_readd_takes_the_transactions_in_any_order(setup):
    store, chain, pool = setup
    alice, bob, carol = chain.key("alice"), chain.key("bob"), chain.key("carol")
    parent = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=3 * COIN, fee=1_000)
    child = chain.spend(OutPoint(parent.txid, 0), to=bob, amount=2 * COIN, fee=1_000, key=alice)
    grandchild = chain.spend(OutPoint(child.txid, 0), to=carol, amount=COIN, fee=1_000, key=bob)
    spent = make_transaction(OutPoint("6b" * 32, 0), [(carol, COIN)], chain.miner)
    readded = pool.readd([grandchild, spent, child, parent], store, store.height)
    assert sorted(readded) == sorted([parent.txid, child.txid, grandchild.txid])
    assert spent.txid not in pool
    consistent(pool)


def test_revalidate_keeps_a_waiting_child_whose_parent_readd_put_back(setup):
    """The child waited in the pool while its parent was confirmed; a reorg unconfirms the parent."""
    store, chain, pool = setup
    alice, bob = chain.key("alice"), chain.key("bob")
    parent = chain.spend(chain.coinbase_outpoint(1), to=alice, amount=3 * COIN, fee=1_000)
    fork = chain.fork(12, coinbase_data="other branch")
    follow(pool, store, give(store, [chain.add_block([parent])]))
    child = chain.spend(OutPoint(parent.txid, 0), to=bob, amount=COIN, fee=1_000, key=alice)
    accept(pool, store, child)
    change = give(store, fork.add_blocks(2))
    _, readded, dropped = follow(pool, store, change)
    assert readded == [parent.txid]
    assert set(pool.txids()) == {parent.txid, child.txid}, f"revalidate dropped {dropped}"
    consistent(pool)


def test_revalidate_drops_what_a_reorg_made_invalid(setup):
    """A waiting spend of a coin only the old branch had goes; the rest stays."""
    store, chain, pool = setup
    fork = chain.fork(12, coinbase_data="other branch")
    give(store, chain.add_blocks(5))  # coinbase 13 matures for block 18
    on_old_branch = chain.spend(chain.coinbase_outpoint(13), to=chain.key("alice"), amount=COIN, fee=1_000)
    everywhere = chain.spend(chain.coinbase_outpoint(2), to=chain.key("alice"), amount=COIN, fee=1_000)
    accept(pool, store, on_old_branch)
    accept(pool, store, everywhere)
    change = give(store, fork.add_blocks(6))
    _, _, dropped = follow(pool, store, change)
    assert dropped == [on_old_branch.txid]
    assert pool.txids() == [everywhere.txid]
    consistent(pool)


def retarget_branches() -> tuple[ChainBuilder, ChainBuilder]:
    """On RETARGET, from block 8: `light` is slow and reaches 14; `heavy` is fast, 4x harder from 10, and ends at 11."""
    base = ChainBuilder(RETARGET)
    base.add_blocks(8)
    light = base.fork(8, "light")
    light.add_block(time=base.tip.header.time + 120)  # block 9 comes 100+ s after genesis: no retarget at 10
    light.add_blocks(5)
    heavy = base.fork(8, "heavy")
    heavy.add_blocks(3)
    return light, heavy


def test_revalidate_drops_a_spend_of_a_coinbase_that_became_immature(open_store):
    light, heavy = retarget_branches()
    assert heavy.block_at(10).header.bits != RETARGET.pow_limit_bits
    store = open_store("retarget", RETARGET)
    pool = Mempool(RETARGET)
    give(store, light.blocks[1:])
    assert store.height == 14
    # At 14, the coinbase of block 8 is 7 blocks deep for the next block: mature.
    young_again = light.spend(light.coinbase_outpoint(8), to=light.key("alice"), amount=COIN, fee=1_000)
    old_enough = light.spend(light.coinbase_outpoint(1), to=light.key("alice"), amount=COIN, fee=1_000)
    accept(pool, store, young_again)
    accept(pool, store, old_enough)
    # The heavy branch has more work at height 11: the coinbase of 8 is only 4 deep for block 12.
    change = give(store, heavy.blocks[9:])
    assert store.tip().block_id == heavy.tip.block_id and store.height == 11
    _, _, dropped = follow(pool, store, change)
    assert dropped == [young_again.txid]
    assert pool.txids() == [old_enough.txid]
    assert refusal(pool, store, young_again, ConsensusError) == "bad-txns-premature-spend-of-coinbase"
    # It comes back once the coin has matured again.
    heavy.add_blocks(1)
    give(store, heavy.blocks[12:])
    accept(pool, store, young_again)


# -- through the blockchain role ------------------------------------------------------------------------------


class QuietNode:
    """The little of node.Node that BlockchainRole uses when blocks come from the node itself."""

    def __init__(self, data_path: Path, network: Network = REGTEST) -> None:
        data_path.mkdir(parents=True, exist_ok=True)
        self.data_path, self.network = data_path, network
        self.events: list[tuple] = []

    def ready_peers(self) -> list:
        return []

    def peers(self) -> list:
        return []

    def emit(self, event: str, *args: object) -> None:
        self.events.append((event, *args))

    def misbehaving(self, peer, points: int, reason: str) -> None:
        raise AssertionError(f"nobody to punish here: {reason}")


@pytest.fixture
def role(tmp_path: Path):
    from roles.blockchain import BlockchainRole

    role = BlockchainRole(QuietNode(tmp_path / "node"))
    yield role
    role.stop()


def submit(role, blocks: Iterable[Block]) -> None:
    for block in blocks:
        assert role.submit_block(block) is None


def test_the_blockchain_role_readds_a_reorgs_transactions_parents_first(role):
    chain = ChainBuilder()
    submit(role, chain.add_blocks(12))
    parent = chain.spend(chain.coinbase_outpoint(1), to=chain.key("alice"), amount=3 * COIN, fee=1_000)
    fork = chain.fork(12, coinbase_data="other branch")
    submit(role, [chain.add_block([parent])])
    child = chain.spend(OutPoint(parent.txid, 0), to=chain.key("bob"), amount=COIN, fee=1_000, key=chain.key("alice"))
    submit(role, [chain.add_block([child])])
    assert len(role.mempool) == 0
    submit(role, fork.add_blocks(3))
    assert role.store.tip().block_id == fork.tip.block_id
    assert set(role.mempool.txids()) == {parent.txid, child.txid}


def test_the_blockchain_role_keeps_a_waiting_child_when_a_reorg_unconfirms_its_parent(role):
    chain = ChainBuilder()
    submit(role, chain.add_blocks(12))
    parent = chain.spend(chain.coinbase_outpoint(1), to=chain.key("alice"), amount=3 * COIN, fee=1_000)
    fork = chain.fork(12, coinbase_data="other branch")
    submit(role, [chain.add_block([parent])])
    child = chain.spend(OutPoint(parent.txid, 0), to=chain.key("bob"), amount=COIN, fee=1_000, key=chain.key("alice"))
    role.mempool.accept(child, role.store, role.store.height)
    submit(role, fork.add_blocks(2))
    assert role.store.tip().block_id == fork.tip.block_id
    assert set(role.mempool.txids()) == {parent.txid, child.txid}, "the child was dropped"
