"""The blockchain role across real node processes: sync, relay, reorgs and rejection.

Every node here is `node.py --network regtest --outbound 0` on 127.0.0.1 with
a free port; links are made with --connect only. There is no miner: blocks
are built in the test process (tests/chain_builder.py; regtest's proof of work
takes a couple of hashes) and handed to a node as `block {json}` frames by a
client, after which the nodes pass them on by themselves. Fake peers (raw
frame clients saying `version {"services":1,"network":"regtest",...}`) play
the peers a test needs to control: one that stalls, one that offers a fork,
one that sends something invalid from its own 127.0.0.N so a ban hits it alone.

Every wait is on a condition with a timeout; the bounds are stated beside the
constants and printed with the measured times (run with -s to see them).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import pairwise

import pytest

from protocol.block import Block
from protocol.messages import Error, Version
from protocol.messages.blocks import MAX_HEADERS, BlockMessage, GetHeaders, Headers, TxMessage
from protocol.messages.chaininfo import BlockInfo, TxInfo
from protocol.messages.inventory import GetData, InvItem, NotFound
from protocol.networks import NETWORKS
from protocol.transaction import COIN, OutPoint
from roles.blockchain import HOLD_TIMEOUT, MAX_BLOCKS_IN_FLIGHT_PER_PEER

from tests.chain_builder import ChainBuilder, Key, unmine
from tests.support import NodeProcess, wait_until
from tests.sync_tools import (REGTEST, REGTEST_ARGS, ChainPeer, NodeStarter, blocks_by_id, builder_utxo_set, chain_rows,
                              fat_blocks, fed_node, frame_size, getdata_items, log_lines, node_peer_row,
                              seconds_of_day, utxo_set, wait_for_tip)

IBD_BLOCKS = 2000
IBD_BOUND = 60.0  # seconds for a fresh node to download 2,000 blocks from one peer
#                   (measured: 8.5 s on a quiet 2-core machine, 16-34 s with a load average of 6-34)
SYNC_BOUND = 30.0  # seconds for the smaller syncs (a few hundred blocks; measured: 1-3 s)
REORG_BOUND = 10.0  # seconds for a 15-block branch to replace a 10-block one across a link (measured: <1 s)
HANDSHAKE_BYTES = 5_000  # more than a node sends a peer besides headers and blocks (version, verack, addr, inv)
RELAY_BOUND = 10.0  # seconds for a block or transaction to cross one link (measured: well under 1 s)
PROGRESS_INTERVAL = 5.0  # BlockchainConfig.progress_interval: seconds between [SYNC] lines
FEE = 10_000  # base units: far above the minimum relay fee for a one-input transaction

BOB, CAROL, DAVE = (Key(REGTEST, name) for name in ("bob", "carol", "dave"))


def report(text: str) -> None:
    print(f"\n[measured] {text}")


def connect_arg(node: NodeProcess) -> tuple[str, str]:
    return "--connect", f"{node.host}:{node.port}"


# -- 1. initial block download ------------------------------------------------------------------------------


def test_a_fresh_node_downloads_2000_blocks_headers_first_and_logs_progress_every_few_seconds(start_node):
    chain = ChainBuilder()
    blocks = chain.add_blocks(IBD_BLOCKS)
    fed_at = time.monotonic()
    a = fed_node(start_node, blocks, name="a")
    report(f"fed {IBD_BLOCKS} blocks to a node in {time.monotonic() - fed_at:.1f} s")

    started = time.monotonic()
    b = start_node(*REGTEST_ARGS, *connect_arg(a), name="b")
    with ChainPeer.open(b) as client:
        info = wait_for_tip(client, chain.tip.block_id, IBD_BLOCKS, IBD_BOUND, b)
    elapsed = time.monotonic() - started
    report(f"IBD of {IBD_BLOCKS} blocks: {elapsed:.1f} s (bound {IBD_BOUND:.0f} s)")
    assert info.headers == IBD_BLOCKS and info.network == "regtest"
    with ChainPeer.open(a) as client:
        assert client.info().tip == info.tip

    # Progress is one line every few seconds, never one per block.
    progress = log_lines(b, "[SYNC] block ")
    tips = log_lines(b, "[BLOCK] new tip")
    report(f"{len(progress)} [SYNC] progress line(s), {len(tips)} [BLOCK] line(s) in the syncing node's log")
    assert progress, b.log()[-3000:]
    assert len(progress) <= elapsed / (PROGRESS_INTERVAL - 1) + 2, progress
    assert len(tips) <= 3, f"a [BLOCK] line per block while syncing: {len(tips)} of them"
    assert f"new tip {IBD_BLOCKS} " in tips[-1]
    stamps = [seconds_of_day(line) for line in progress] + [seconds_of_day(tips[-1])]
    gaps = [(later - earlier) % 86400 for earlier, later in pairwise(stamps)]
    assert all(gap <= PROGRESS_INTERVAL + 3 for gap in gaps), f"a silent stretch while syncing: {progress} {tips[-1]}"
    assert all(gap >= PROGRESS_INTERVAL - 1 for gap in gaps[:-1]), f"progress lines too often: {progress}"


# -- 2. several peers, and the download window ------------------------------------------------------------


@dataclass
class TwoServers:
    """A fresh node synced from two nodes that both had the chain, and what each sent it."""

    blocks: list[Block]
    served: dict[str, int]  # bytes each server sent the new node, less the headers answer
    headers_bytes: int  # one `headers` answer with the whole chain
    all_blocks_bytes: int  # every block's frame once
    seconds: float


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoServers]:
    chain = ChainBuilder()
    blocks = fat_blocks(chain, 300)
    with NodeStarter(tmp_path_factory.mktemp("two-servers")) as start_node:
        a = fed_node(start_node, blocks, name="a")
        c = fed_node(start_node, blocks, name="c")
        started = time.monotonic()
        b = start_node(*REGTEST_ARGS, *connect_arg(a), *connect_arg(c), name="b")
        with ChainPeer.open(b) as client:
            wait_for_tip(client, chain.tip.block_id, len(blocks), SYNC_BOUND, b)
        seconds = time.monotonic() - started
        headers_bytes = frame_size(Headers(headers=tuple(block.header for block in blocks)))
        served = {}
        for name, server in (("a", a), ("c", c)):
            with ChainPeer.open(server) as client:
                served[name] = node_peer_row(client).bytes_sent - headers_bytes
        yield TwoServers(blocks, served, headers_bytes, sum(frame_size(BlockMessage(blk)) for blk in blocks), seconds)


def test_a_fresh_node_downloads_from_every_peer_that_has_the_chain(two_servers):
    sync = two_servers
    report(f"sync of {len(sync.blocks)} blocks of ~{sync.blocks[0].size // 1000} kB from two peers: "
           f"{sync.seconds:.1f} s; bytes each sent beyond the headers: {sync.served} "
           f"(every block once: {sync.all_blocks_bytes})")
    # Beyond the headers and a few kB of handshake and addr, what a server sent is blocks.
    smallest = min(frame_size(BlockMessage(block)) for block in sync.blocks)
    for name, sent in sync.served.items():
        assert sent - HANDSHAKE_BYTES >= MAX_BLOCKS_IN_FLIGHT_PER_PEER * smallest, \
            f"node {name} served hardly any blocks: {sync.served}"
    assert sum(sync.served.values()) >= sync.all_blocks_bytes


def test_no_block_is_downloaded_twice_from_two_peers(two_servers):
    sync = two_servers
    extra = sum(sync.served.values()) - 2 * HANDSHAKE_BYTES - sync.all_blocks_bytes
    report(f"bytes of blocks downloaded more than once: {extra} "
           f"(~{extra / (sync.all_blocks_bytes / len(sync.blocks)):.0f} blocks)")
    assert extra <= 0


def test_at_most_16_blocks_are_in_flight_from_one_peer(start_node):
    chain = ChainBuilder()
    blocks = chain.add_blocks(100)
    by_id = blocks_by_id(chain)
    heights = {block.block_id: height for height, block in enumerate(chain.blocks)}
    node = start_node(*REGTEST_ARGS, name="d")
    peer = ChainPeer.open(node, services=1, height=len(blocks))
    peer.recv_until("getheaders")
    peer.send_headers(block.header for block in blocks)  # and then answers getdata only as the test says
    first = {block.block_id for block in blocks[:MAX_BLOCKS_IN_FLIGHT_PER_PEER]}
    asked = peer.getdata_until(first)
    assert all(item.type == "block" for item in asked)
    assert {item.id for item in asked} == first

    requested = {item.id for item in asked}
    delivered: set[str] = set()
    most = len(requested)
    again = 0
    for _ in range(30):  # answer the lowest outstanding block, one at a time: each frees one place
        lowest = min(requested - delivered, key=heights.__getitem__)
        peer.send_blocks([by_id[lowest]])
        delivered.add(lowest)
        more = [item.id for item in getdata_items(peer.until_pong())]
        again += len([block_id for block_id in more if block_id in requested])
        requested.update(more)
        outstanding = requested - delivered
        most = max(most, len(outstanding))
        assert len(outstanding) <= MAX_BLOCKS_IN_FLIGHT_PER_PEER, f"{len(outstanding)} blocks in flight"
    assert most == MAX_BLOCKS_IN_FLIGHT_PER_PEER
    report(f"window of one peer: at most {most} outstanding; {again} request(s) repeated")
    with ChainPeer.open(node) as client:
        wait_until(lambda: client.info().height == 30, timeout=RELAY_BOUND, message="height 30")
    peer.close()


# -- 3. a stalling peer ---------------------------------------------------------------------------------------


def test_block_requests_a_peer_never_answers_move_to_another_peer_after_the_stall_timeout(start_node):
    chain = ChainBuilder()
    blocks = chain.add_blocks(200)
    a = fed_node(start_node, blocks, name="a")
    a.stop()  # it comes back below, dialling the syncing node

    b = start_node(*REGTEST_ARGS, "--block-stall-timeout", "1", name="b")
    staller = ChainPeer.open(b, services=1, height=len(blocks))
    staller.recv_until("getheaders")
    staller.send_headers(block.header for block in blocks)  # real headers, and then never a block
    first = {block.block_id for block in blocks[:MAX_BLOCKS_IN_FLIGHT_PER_PEER]}
    assert {item.id for item in staller.getdata_until(first)} == first

    started = time.monotonic()
    a = start_node(*REGTEST_ARGS, *connect_arg(b), name="a")
    with ChainPeer.open(b) as client:
        wait_for_tip(client, chain.tip.block_id, len(blocks), SYNC_BOUND, b)
        addresses = {row.address for row in client.peer_rows()}
    elapsed = time.monotonic() - started
    report(f"sync past a stalling peer (stall timeout 1 s): {elapsed:.1f} s")
    assert staller.local_address in addresses, "the staller was dropped; the test wants its requests moved instead"
    assert log_lines(b, "[SYNC] a block request stalled"), b.log()[-3000:]
    assert elapsed >= 1.0  # blocks 1-16 were waiting on the staller until the timeout
    staller.close()


def test_a_block_waits_for_the_next_while_more_are_on_the_way_and_no_longer(start_node):
    chain = ChainBuilder()
    blocks = chain.add_blocks(3)
    node = start_node(*REGTEST_ARGS, name="b")
    peer = ChainPeer.open(node, services=1, height=len(blocks))
    peer.recv_until("getheaders")
    peer.send_headers(block.header for block in blocks)
    wanted = {block.block_id for block in blocks}
    assert {item.id for item in peer.getdata_until(wanted)} == wanted
    client = ChainPeer.open(node)

    peer.send_blocks(blocks[:1])
    peer.until_pong()
    assert client.info().height == 0  # block 1 waits for block 2: the pipelined sync (blockchain.md)
    wait_until(lambda: client.info().height == 1, HOLD_TIMEOUT + 5, message="the held block connected by tick")
    peer.send_blocks(blocks[1:])
    peer.until_pong()
    assert client.info().tip == chain.tip.block_id  # the last block asked for is connected at once
    peer.close()
    client.close()


# -- 4. forks with less, equal and more work -------------------------------------------------------------------


def test_a_branch_with_less_or_equal_work_is_not_followed_and_one_with_more_work_is(start_node):
    main = ChainBuilder()
    main.add_blocks(50)
    fork = main.fork(30, coinbase_data="fork")
    fork.add_blocks(15)  # heights 31-45: less work than the node's 50
    node = fed_node(start_node, main.blocks[1:])
    client = ChainPeer.open(node)
    peer = ChainPeer.open(node, services=1, height=45)
    peer.recv_until("getheaders")

    peer.send_headers(block.header for block in fork.blocks[31:])
    peer.send_blocks(fork.blocks[31:])  # even the blocks themselves: stored, not connected
    assert not getdata_items(peer.until_pong()), "the node asked for blocks of a weaker branch"
    info = client.info()
    assert (info.height, info.tip, info.headers) == (50, main.tip.block_id, 50)
    stale = client.ask(f'getblock {{"id":"{fork.tip.block_id}"}}', "blockinfo", "error")
    assert isinstance(stale, BlockInfo) and stale.confirmations == 0 and stale.height == 45

    fork.add_blocks(5)  # 46-50: as much work as the node's chain; the first seen stays
    peer.send_headers(block.header for block in fork.blocks[46:])
    peer.send_blocks(fork.blocks[46:])
    assert not getdata_items(peer.until_pong())
    assert client.info().tip == main.tip.block_id

    fork.add_blocks(5)  # 51-55: more work. The headers alone make the node ask for what it lacks.
    peer.send_headers(block.header for block in fork.blocks[51:])
    lacking = {block.block_id for block in fork.blocks[51:]}  # 31-50 it has: they came as blocks above
    assert {item.id for item in peer.getdata_until(lacking)} == lacking
    peer.send_blocks(fork.blocks[51:])
    info = wait_for_tip(client, fork.tip.block_id, 55, RELAY_BOUND, node)
    assert info.headers == 55
    # The switch happens with block 51, the first to give the branch more work; 52-55 then extend it.
    assert log_lines(node, "[REORG] 20 block(s) disconnected, 21 connected; new tip 51"), node.log()[-3000:]
    old = client.ask(f'getblock {{"id":"{main.tip.block_id}"}}', "blockinfo", "error")
    assert isinstance(old, BlockInfo) and old.confirmations == 0
    at_31 = client.ask('getblock {"height":31}', "blockinfo", "error")
    assert isinstance(at_31, BlockInfo) and at_31.id == fork.blocks[31].block_id and at_31.confirmations == 25
    peer.close()
    client.close()


# -- 5. a reorg between two nodes, with transactions -------------------------------------------------------------


def two_branches() -> tuple[ChainBuilder, ChainBuilder, dict[str, object]]:
    """A: 30 blocks with spends in 21-30; B: 35 blocks forking from A at height 20.

    tx_common  (A's block 21) spends the coinbase of block 1, which both branches share: still valid on B
    tx_child   (A's block 23) spends tx_common's output: valid on B once tx_common waits again
    tx_lost    (A's block 22) spends block 2's coinbase, which B's block 21 spends too: a conflict on B
    tx_a_only  (A's block 28) spends A's own block-21 coinbase, which B's branch never had
    """
    common = ChainBuilder()
    common.add_blocks(20)
    a, b = common.fork(20, "branch A"), common.fork(20, "branch B")
    tx_common = a.spend(a.coinbase_outpoint(1), to=BOB, amount=20 * COIN, fee=FEE)
    a.add_block([tx_common])
    tx_lost = a.spend(a.coinbase_outpoint(2), to=CAROL, amount=20 * COIN, fee=FEE)
    a.add_block([tx_lost])
    tx_child = a.spend(OutPoint(tx_common.txid, 0), to=CAROL, amount=5 * COIN, fee=FEE, key=BOB)
    a.add_block([tx_child])
    a.add_blocks(4)
    tx_a_only = a.spend(a.coinbase_outpoint(21), to=DAVE, amount=1 * COIN, fee=FEE)
    a.add_block([tx_a_only])
    a.add_blocks(2)
    tx_b = b.spend(b.coinbase_outpoint(2), to=DAVE, amount=30 * COIN, fee=FEE)
    b.add_block([tx_b])
    b.add_blocks(14)
    assert (a.height, b.height) == (30, 35)
    return a, b, {"common": tx_common, "child": tx_child, "lost": tx_lost, "a_only": tx_a_only, "b": tx_b}


def test_two_nodes_on_different_branches_both_end_on_the_one_with_most_work(start_node):
    chain_a, chain_b, txs = two_branches()
    a = fed_node(start_node, chain_a.blocks[1:], name="a")
    b = fed_node(start_node, chain_b.blocks[1:], name="b")
    a.stop()
    started = time.monotonic()
    a = start_node(*REGTEST_ARGS, *connect_arg(b), name="a")  # the same data directory, now linked to B
    client_a, client_b = ChainPeer.open(a), ChainPeer.open(b)
    info_a = wait_for_tip(client_a, chain_b.tip.block_id, 35, REORG_BOUND, a)
    report(f"reorg of 10 blocks to 15 across a link: {time.monotonic() - started:.1f} s")
    info_b = client_b.info()
    assert info_b.tip == info_a.tip == chain_b.tip.block_id
    assert log_lines(a, "[REORG] 10 block(s) disconnected, 11 connected; new tip 31"), a.log()[-3000:]
    assert not log_lines(b, "[REORG]")

    expected = builder_utxo_set(chain_b)
    assert utxo_set(a) == expected
    assert utxo_set(b) == expected
    active = "SELECT height, id FROM active ORDER BY height"
    assert chain_rows(a, active) == chain_rows(b, active) == [(h, blk.block_id) for h, blk in
                                                                enumerate(chain_b.blocks)]

    # B's spend is confirmed on both; the conflicting one and the one spending A's own coinbase are gone.
    for client in (client_a, client_b):
        confirmed = client.ask(f'gettx {{"txid":"{txs["b"].txid}"}}', "txinfo", "error")
        assert isinstance(confirmed, TxInfo) and confirmed.height == 21 and confirmed.confirmations == 15
    for name in ("lost", "a_only"):
        gone = client_a.ask(f'gettx {{"txid":"{txs[name].txid}"}}', "txinfo", "error")
        assert isinstance(gone, Error), f"tx_{name} should be nowhere on A: {gone}"
    # A's spend of the shared coinbase is valid on B's branch: it waits in A's mempool again.
    waiting = client_a.ask(f'gettx {{"txid":"{txs["common"].txid}"}}', "txinfo", "error")
    assert isinstance(waiting, TxInfo) and waiting.confirmations == 0 and waiting.block is None
    assert info_a.mempool_size >= 1
    assert InvItem("tx", txs["common"].txid) in client_a.ask("mempool", "inv").items
    client_a.close()
    client_b.close()


def test_after_a_reorg_a_child_transaction_of_a_later_block_returns_to_the_mempool_with_its_parent(start_node):
    chain_a, chain_b, txs = two_branches()
    a = fed_node(start_node, chain_a.blocks[1:], name="a")
    with ChainPeer.open(a) as client:
        client.feed(chain_b.blocks[21:])  # the longer branch, straight to A
        info = client.info()
        assert info.tip == chain_b.tip.block_id
        child = client.ask(f'gettx {{"txid":"{txs["child"].txid}"}}', "txinfo", "error")
    assert info.mempool_size == 2, f"mempool holds {info.mempool_size}, expected tx_common and tx_child"
    assert isinstance(child, TxInfo) and child.confirmations == 0


# -- 6. a double spend across two nodes ----------------------------------------------------------------------------


def linked_pair(start_node, blocks: list[Block]) -> tuple[NodeProcess, NodeProcess]:
    """Node A fed `blocks`; node B started with --connect A and synced to the same tip."""
    a = fed_node(start_node, blocks, name="a")
    b = start_node(*REGTEST_ARGS, *connect_arg(a), name="b")
    with ChainPeer.open(b) as client:
        wait_for_tip(client, blocks[-1].block_id, len(blocks), SYNC_BOUND, b)
    return a, b


def test_two_conflicting_transactions_sent_to_two_nodes_end_with_only_the_confirmed_one(start_node):
    chain = ChainBuilder()
    chain.add_blocks(10)
    a, b = linked_pair(start_node, chain.blocks[1:])
    coin = chain.coinbase_outpoint(1)
    to_bob = chain.spend(coin, to=BOB, amount=10 * COIN, fee=FEE)
    to_carol = chain.spend(coin, to=CAROL, amount=10 * COIN, fee=FEE)
    client_a, client_b = ChainPeer.open(a), ChainPeer.open(b)
    barrier = threading.Barrier(2)

    def send(client: ChainPeer, tx) -> None:
        barrier.wait()
        client.send_tx(tx)

    # Both at once: each node accepts the one it hears first and refuses the other when it is relayed.
    threads = [threading.Thread(target=send, args=pair) for pair in ((client_a, to_bob), (client_b, to_carol))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    for client in (client_a, client_b):
        answer = client.wait_for("txinfo", "error")
        assert isinstance(answer, TxInfo) or "txn-mempool-conflict" in answer.reason, answer

    def mempool_settled() -> bool:
        return client_a.info().mempool_size == 1 and client_b.info().mempool_size == 1
    wait_until(mempool_settled, timeout=RELAY_BOUND, message="one of the two in each mempool")

    block = chain.add_block([to_bob])
    client_b.feed([block])  # to B, which may hold the other one
    for client, node in ((client_a, a), (client_b, b)):
        info = wait_for_tip(client, block.block_id, 11, RELAY_BOUND, node)
        assert info.mempool_size == 0
        confirmed = client.ask(f'gettx {{"txid":"{to_bob.txid}"}}', "txinfo", "error")
        assert isinstance(confirmed, TxInfo) and confirmed.block == block.block_id and confirmed.confirmations == 1
        other = client.ask(f'gettx {{"txid":"{to_carol.txid}"}}', "txinfo", "error")
        assert isinstance(other, Error), other
        tip = client.ask('getblock {"height":11}', "blockinfo")
        assert to_carol.txid not in tip.txids
    # Sent again now, it is a spend of a spent coin: refused, without a ban.
    client_a.send_tx(to_carol)
    assert "bad-txns-inputs-missingorspent" in client_a.expect_error()
    assert client_a.info().mempool_size == 0
    client_a.close()
    client_b.close()


# -- 7. transaction relay ---------------------------------------------------------------------------------------


def test_a_transaction_sent_to_one_node_reaches_the_other_by_inv_and_getdata(start_node):
    chain = ChainBuilder()
    chain.add_blocks(10)
    a, b = linked_pair(start_node, chain.blocks[1:])
    watcher = ChainPeer.open(a, services=1, height=10)  # a fake node on A: sees the inv it is sent
    watcher.until_pong()
    tx = chain.spend(chain.coinbase_outpoint(1), to=BOB, amount=10 * COIN, fee=FEE)
    with ChainPeer.open(a) as client:
        client.send_tx(tx)
        answer = client.recv_until("txinfo")
    assert answer.txid == tx.txid and answer.confirmations == 0 and answer.block is None

    inv = watcher.recv_until("inv", RELAY_BOUND)
    assert InvItem("tx", tx.txid) in inv.items
    got = watcher.ask(GetData(items=(InvItem("tx", tx.txid),)), "tx")
    assert got.tx == tx

    started = time.monotonic()
    with ChainPeer.open(b) as client:
        wait_until(lambda: isinstance(client.ask(f'gettx {{"txid":"{tx.txid}"}}', "txinfo", "error"), TxInfo),
                   timeout=RELAY_BOUND, message="the transaction in B's mempool")
        report(f"transaction relay across one link: {time.monotonic() - started:.2f} s")
        assert client.info().mempool_size == 1
        pool = client.ask("mempool", "inv")
        assert pool.items == (InvItem("tx", tx.txid),)
        unknown = InvItem("tx", secrets.token_hex(32))
        missing = client.ask(GetData(items=(unknown,)), "notfound", "tx")
        assert isinstance(missing, NotFound) and missing.items == (unknown,)
    assert log_lines(b, f"[TX] accepted {tx.txid}")
    watcher.close()


# -- 8 and 11. a node with more than 2,000 blocks, asked things -----------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, ChainBuilder, object]]:
    """A regtest node with 2,100 blocks, a payment confirmed at height 11; nobody changes it."""
    chain = ChainBuilder()
    chain.add_blocks(10)
    payment = chain.spend(chain.coinbase_outpoint(1), to=BOB, amount=10 * COIN, fee=FEE)
    chain.add_block([payment])
    chain.add_blocks(2100 - chain.height)
    with NodeStarter(tmp_path_factory.mktemp("served")) as start_node:
        yield fed_node(start_node, chain.blocks[1:]), chain, payment


def test_getheaders_answers_at_most_2000_headers_and_a_follow_up_continues(served):
    node, chain, _ = served
    with ChainPeer.open(node, services=1, height=0) as peer:
        first = peer.ask(GetHeaders(locator=(REGTEST.genesis_id,)), "headers")
        assert len(first.headers) == MAX_HEADERS
        assert [h.block_id for h in first.headers] == [blk.block_id for blk in chain.blocks[1:MAX_HEADERS + 1]]
        rest = peer.ask(GetHeaders(locator=(first.headers[-1].block_id,)), "headers")
        assert [h.block_id for h in rest.headers] == [blk.block_id for blk in chain.blocks[MAX_HEADERS + 1:]]
        # An unknown id is skipped; the first known one is where the answer starts; `stop` ends it.
        stop = chain.blocks[60].block_id
        part = peer.ask(GetHeaders(locator=(secrets.token_hex(32), chain.blocks[50].block_id), stop=stop), "headers")
        assert [h.block_id for h in part.headers] == [blk.block_id for blk in chain.blocks[51:61]]
        # The largest locator allowed, 101 ids.
        full = peer.ask(GetHeaders(locator=tuple(b.block_id for b in chain.blocks[2000:1899:-1])), "headers")
        assert len(full.headers) == 100


def test_oversized_locator_inv_and_getdata_are_refused_with_an_error(served):
    node, chain, _ = served
    ids = [block.block_id for block in chain.blocks]
    cases = [
        ("getheaders " + json.dumps({"locator": ids[:102]}), "at most 101"),
        ("inv " + json.dumps({"items": [0] * 50_001}), "inv has 50001 items; at most 50000"),
        ("getdata " + json.dumps({"items": [{"type": "tx", "id": secrets.token_hex(32)} for _ in range(1001)]}),
         "getdata has 1001 items; at most 1000"),
    ]
    for text, reason in cases:
        with ChainPeer.open(node, services=1) as peer:
            peer.send(text)
            error = peer.recv_until("error")
            assert reason in error.reason, (reason, error)
            assert error.about == text.split()[0]
    with ChainPeer.open(node, services=1) as peer:
        # At the limits themselves: 50,000 items pass the count (and fail on their form), 1,000 ids are looked up.
        peer.send("inv " + json.dumps({"items": [0] * 50_000}))
        assert "each inventory item must be a JSON object" in peer.expect_error()
        unknown = tuple(InvItem("tx", secrets.token_hex(32)) for _ in range(1000))
        missing = peer.ask(GetData(items=unknown), "notfound")
        assert missing.items == unknown


def test_a_person_asks_about_the_chain_blocks_and_transactions(served):
    node, chain, payment = served
    with ChainPeer.open(node) as client:
        info = client.info()
        assert (info.network, info.height, info.tip, info.headers) == ("regtest", 2100, chain.tip.block_id, 2100)
        assert info.difficulty == 1.0 and info.mempool_size == 0 and info.mempool_bytes == 0

        genesis = client.ask('getblock {"height":0}', "blockinfo", "error")
        assert isinstance(genesis, BlockInfo)
        assert genesis.id == REGTEST.genesis_id == NETWORKS["regtest"].genesis.block_id
        assert genesis.height == 0 and genesis.confirmations == 2101
        assert genesis.txids == (REGTEST.genesis.transactions[0].txid,)

        block = chain.blocks[11]
        by_id = client.ask(f'getblock {{"id":"{block.block_id}"}}', "blockinfo", "error")
        assert isinstance(by_id, BlockInfo)
        assert (by_id.height, by_id.header, by_id.size) == (11, block.header, block.size)
        assert by_id.txids == tuple(tx.txid for tx in block.transactions) and payment.txid in by_id.txids
        assert by_id.confirmations == 2100 - 11 + 1

        found = client.ask(f'gettx {{"txid":"{payment.txid}"}}', "txinfo", "error")
        assert isinstance(found, TxInfo)
        assert (found.tx, found.block, found.height, found.confirmations) == (payment, block.block_id, 11, 2090)

        for text in (f'getblock {{"id":"{secrets.token_hex(32)}"}}', 'getblock {"height":2101}'):
            assert "no such block" in client.ask(text, "blockinfo", "error").reason
        assert "no such transaction" in client.ask(f'gettx {{"txid":"{secrets.token_hex(32)}"}}',
                                                   "txinfo", "error").reason
        assert "exactly one" in client.ask(f'getblock {{"height":1,"id":"{block.block_id}"}}',
                                           "blockinfo", "error").reason
        assert client.info().height == 2100  # still answering after the errors


# -- 9. invalid blocks and transactions -------------------------------------------------------------------------------


def test_invalid_blocks_and_transactions_are_refused_and_their_senders_banned(start_node):
    chain = ChainBuilder()
    chain.add_blocks(10)
    node = fed_node(start_node, chain.blocks[1:])
    tip = chain.tip.block_id
    good = chain.make_block()
    unmined = Block(header=unmine(good.header), transactions=good.transactions)
    bad_root = chain.make_block(merkle_root_hex="ab" * 32)
    greedy = chain.make_block(extra_reward=1)
    spend = chain.spend(chain.coinbase_outpoint(1), to=BOB, amount=10 * COIN, fee=FEE)
    other = chain.spend(chain.coinbase_outpoint(2), to=BOB, amount=10 * COIN, fee=FEE)
    forged = replace(spend, inputs=(replace(spend.inputs[0], signature=other.inputs[0].signature),))
    cheap = chain.spend(chain.coinbase_outpoint(3), to=BOB, amount=10 * COIN, fee=0)

    banned_cases = [
        ("127.0.0.2", "block " + json.dumps(unmined.to_json()), "high-hash"),
        ("127.0.0.3", "block " + json.dumps(bad_root.to_json()), "bad-txnmrklroot"),
        ("127.0.0.4", "block " + json.dumps(greedy.to_json()), "bad-cb-amount"),
        ("127.0.0.5", TxMessage(forged).encode(), "bad-txns-signature"),
    ]
    for ip, text, code in banned_cases:
        peer = ChainPeer.open(node, services=1, height=10, source_ip=ip)
        peer.send(text)
        reason = peer.expect_error()
        assert code in reason and reason.startswith("invalid "), (code, reason)
        assert "banned for" in peer.expect_error()
        peer.expect_closed()
        peer.close()
        with ChainPeer(node.address, source_ip=ip) as again:
            refusal = again.recv_message()
            assert isinstance(refusal, Error) and refusal.reason.startswith("banned until"), refusal
            again.expect_closed()

    # Too low a fee is policy, not misbehaviour: a person is told, and stays welcome.
    with ChainPeer.open(node, source_ip="127.0.0.6") as person:
        person.send_tx(cheap)
        assert "min relay fee not met" in person.expect_error()
        assert person.info().mempool_size == 0
    with ChainPeer.open(node, source_ip="127.0.0.6") as person:
        assert person.info().tip == tip  # nothing invalid moved the chain
        rows = {row.address.rsplit(":", 1)[0]: row for row in person.peer_rows()}
        assert rows["127.0.0.6"].score == 0
        assert person.ask("getnetworkinfo", "networkinfo").banned == 4
        person.feed([good])  # and a valid block is still taken
        assert person.info().tip == good.block_id
    assert len(log_lines(node, "[BANNED]")) == 4


# -- 10. networks ----------------------------------------------------------------------------------------------------


def test_nodes_of_different_networks_refuse_each_other_but_take_a_bare_version(start_node):
    regtest = start_node(*REGTEST_ARGS, name="regtest")
    main = start_node("--outbound", "0", *connect_arg(regtest), name="main")
    regtest.wait_for_log(r"\[DISCONNECTED\] .*different network: this node is on regtest")
    main.wait_for_log(r"\[PEER ERROR\] .*different network: this node is on regtest")
    dialler = start_node(*REGTEST_ARGS, *connect_arg(main), name="dialler")
    main.wait_for_log(r"\[DISCONNECTED\] .*different network: this node is on main")
    dialler.wait_for_log(r"\[PEER ERROR\] .*different network: this node is on main")

    for node, network in ((regtest, "regtest"), (main, "main")):
        with ChainPeer(node.address) as person:
            person.send("version")  # a chat client's bare version: no network, no genesis
            theirs = person.recv_message()
            assert isinstance(theirs, Version) and theirs.network == network
            assert theirs.genesis == NETWORKS[network].genesis_id
            assert person.recv() == "verack"
            genesis = person.ask('getblock {"height":0}', "blockinfo")
            assert genesis.id == NETWORKS[network].genesis_id
            assert not [row for row in person.peer_rows() if row.services & 1], "a node of the other network"
    assert NETWORKS["main"].genesis_id != NETWORKS["regtest"].genesis_id
