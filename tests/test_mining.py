"""The mining role: midstate nonce search in worker processes, templates, stale work, and real mining nodes."""

from __future__ import annotations

import hashlib
import multiprocessing
import struct
import time

from protocol.block import HEADER_PREFIX_SIZE, BlockHeader, bits_to_target
from protocol.messages import BlockInfo, MiningInfo, TxInfo, TxMessage
from protocol.networks import NETWORKS
from protocol.transaction import COIN, OutPoint
from roles.mempool import MempoolEntry
from roles.mining import Job, search, select_transactions
from tests.chain_builder import Key, make_transaction
from tests.support import wait_until

REGTEST = NETWORKS["regtest"]
SPAWN = multiprocessing.get_context("spawn")


def start_worker():
    ours, theirs = SPAWN.Pipe()
    process = SPAWN.Process(target=search, args=(theirs,), daemon=True)
    process.start()
    return process, ours


def sample_prefix() -> bytes:
    header = BlockHeader(1, REGTEST.genesis_id, "ab" * 32, REGTEST.genesis_time + 60, 0x1F00FFFF, 0)
    return header.serialize()[:HEADER_PREFIX_SIZE]


def test_a_worker_finds_a_nonce_whose_double_sha256_meets_the_target():
    process, pipe = start_worker()
    try:
        prefix, target = sample_prefix(), bits_to_target(0x1F00FFFF)  # about 65,000 tries
        pipe.send(Job(1, prefix, target, 0, 2**32 - 1))
        assert pipe.poll(30), "no answer from the worker"
        job_id, nonce, hashes = pipe.recv()
        assert job_id == 1 and nonce is not None and hashes == nonce + 1
        digest = hashlib.sha256(hashlib.sha256(prefix + struct.pack("<I", nonce)).digest()).digest()
        assert int.from_bytes(digest, "big") <= target
    finally:
        pipe.send(None)
        process.join(5)


def test_a_worker_drops_a_stale_job_within_100_ms_of_a_new_one():
    process, pipe = start_worker()
    try:
        pipe.send(Job(0, sample_prefix(), 2**256 - 1, 0, 2**32 - 1))  # warm up: the process is running
        assert pipe.poll(30) and pipe.recv()[:2] == (0, 0)
        pipe.send(Job(1, sample_prefix(), 0, 0, 2**32 - 1))  # target 0: this job never ends by itself
        time.sleep(0.2)  # let it get deep into the search (pacing, not waiting for a condition)
        sent = time.monotonic()
        pipe.send(Job(2, sample_prefix(), 2**256 - 1, 0, 2**32 - 1))  # any hash will do
        assert pipe.poll(5)
        stale = pipe.recv()
        assert stale[0] == 1 and stale[1] is None and stale[2] > 0
        assert time.monotonic() - sent < 0.1, "the stale search went on too long"
        assert pipe.poll(5)
        assert pipe.recv()[:2] == (2, 0)
    finally:
        pipe.send(None)
        process.join(5)


def entry(key: Key, parent_txid: str, index: int, fee: int) -> MempoolEntry:
    tx = make_transaction(OutPoint(parent_txid, index), [(key, 10 * COIN)], key)
    return MempoolEntry(tx, fee)


def test_a_template_takes_the_highest_fee_rate_first_and_parents_before_children():
    key = Key(REGTEST, "miner-test")
    cheap = entry(key, "aa" * 32, 0, 1_000)
    rich = entry(key, "bb" * 32, 0, 90_000)
    child = MempoolEntry(make_transaction(OutPoint(cheap.tx.txid, 0), [(key, 9 * COIN)], key), 500_000)
    chosen, fees = select_transactions([child, rich, cheap], budget=10_000)
    assert [tx.txid for tx in chosen] == [rich.tx.txid, cheap.tx.txid, child.tx.txid]
    assert fees == 591_000
    chosen, _ = select_transactions([child, rich, cheap], budget=rich.size + cheap.size // 2)
    assert [tx.txid for tx in chosen] == [rich.tx.txid]  # the rest does not fit; the child never before its parent


def test_a_mining_node_mines_to_its_address_reports_its_hash_rate_and_confirms_a_payment(start_node):
    miner_key, payee = Key(REGTEST, "miner"), Key(REGTEST, "payee")
    node = start_node("--network", "regtest", "--outbound", "0", "--roles", "routing,blockchain,chat,mining",
                      "--mine-to", miner_key.address)
    with node.connect() as client:
        client.handshake()

        def height() -> int:
            client.send("getmininginfo")
            info = client.recv_until("mininginfo")
            assert isinstance(info, MiningInfo)
            return info.height if info.blocks_found and info.hashrate > 0 else 0

        wait_until(lambda: height() >= REGTEST.coinbase_maturity + 1, timeout=30, message="mature coinbases")
        client.send('getblock {"height":1}')
        block = client.recv_until("blockinfo")
        assert isinstance(block, BlockInfo)
        coinbase_txid = block.txids[0]
        client.send(f'gettx {{"txid":"{coinbase_txid}"}}')
        coinbase = client.recv_until("txinfo")
        assert isinstance(coinbase, TxInfo) and coinbase.tx.outputs[0].address == miner_key.address

        payment = make_transaction(OutPoint(coinbase_txid, 0), [(payee, 50 * COIN - 10_000)], miner_key)
        client.send_message(TxMessage(payment))
        accepted = client.recv_until("txinfo")
        assert isinstance(accepted, TxInfo) and accepted.txid == payment.txid

        def confirmations() -> int:
            client.send(f'gettx {{"txid":"{payment.txid}"}}')
            info = client.recv_until("txinfo")
            return info.confirmations
        wait_until(lambda: confirmations() >= 1, timeout=20, message="the payment to be mined")
    node.wait_for_log(r"\[MINED\] block \d+ [0-9a-f]{64} \(2 transactions\)")
    assert node.stop() == 0
