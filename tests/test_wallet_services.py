"""The wallet-services role: getutxos (confirmed, waiting, paged) and getproof (a merkle branch that verifies)."""

from __future__ import annotations

from protocol.messages import BlockMessage, Error, Proof, TxMessage, Utxos
from protocol.networks import NETWORKS
from protocol.transaction import COIN, OutPoint
from tests.chain_builder import ChainBuilder, make_transaction

REGTEST = NETWORKS["regtest"]
ROLES = ("--network", "regtest", "--outbound", "0", "--roles", "routing,blockchain,chat,wallet-services")


def fed_node(start_node, chain: ChainBuilder):
    node = start_node(*ROLES)
    client = node.connect()
    client.handshake()
    for height in range(1, chain.height + 1):
        client.send_message(BlockMessage(chain.block_at(height)))
    client.sync_ping(timeout=20)
    return node, client


def utxos(client, *addresses: str, after: str | None = None) -> Utxos:
    body = ",".join(f'"{a}"' for a in addresses)
    cursor = f',"after":"{after}"' if after else ""
    client.send(f'getutxos {{"addresses":[{body}]{cursor}}}')
    answer = client.recv_until("utxos")
    assert isinstance(answer, Utxos)
    return answer


def test_getutxos_lists_confirmed_and_waiting_coins_and_hides_coins_waiting_to_be_spent(start_node):
    chain = ChainBuilder(REGTEST)
    alice, bob = chain.key("alice"), chain.key("bob")
    chain.add_blocks(REGTEST.coinbase_maturity + 1, coinbase_to=alice)
    node, client = fed_node(start_node, chain)
    with client:
        confirmed = utxos(client, alice.address)
        assert len(confirmed.utxos) == chain.height and confirmed.next is None
        first = min(confirmed.utxos, key=lambda row: row.height)
        assert first.coinbase and first.confirmations == chain.height and first.amount == 50 * COIN

        payment = make_transaction(OutPoint(first.txid, first.index), [(bob, 30 * COIN), (alice, 20 * COIN - 10_000)],
                                   alice)
        client.send_message(TxMessage(payment))
        client.recv_until("txinfo")
        after = utxos(client, alice.address, bob.address)
        outpoints = {(row.txid, row.index) for row in after.utxos}
        assert (first.txid, first.index) not in outpoints  # waiting to be spent
        waiting = [row for row in after.utxos if row.txid == payment.txid]
        assert sorted((row.address, row.amount, row.confirmations, row.height) for row in waiting) == sorted(
            [(bob.address, 30 * COIN, 0, None), (alice.address, 20 * COIN - 10_000, 0, None)])


def test_getutxos_pages_past_1000_coins_without_skipping_or_repeating(start_node):
    chain = ChainBuilder(REGTEST)
    alice = chain.key("alice")
    chain.add_blocks(REGTEST.coinbase_maturity + 1, coinbase_to=alice)
    fan_out = make_transaction(chain.coinbase_outpoint(1), [(alice, 1_000_000)] * 1200, alice)
    chain.add_block([fan_out])
    node, client = fed_node(start_node, chain)
    with client:
        seen, cursor, pages = [], None, 0
        while True:
            page = utxos(client, alice.address, after=cursor)
            pages += 1
            seen += [(row.txid, row.index) for row in page.utxos]
            if page.next is None:
                break
            cursor = page.next
        assert pages == 2
        # Alice's coinbases at heights 1..6, less the one fanned out, plus the 1,200 outputs.
        assert len(seen) == len(set(seen)) == 1200 + (REGTEST.coinbase_maturity + 1) - 1


def test_getproof_gives_a_branch_that_leads_to_the_blocks_merkle_root(start_node):
    chain = ChainBuilder(REGTEST)
    alice, bob = chain.key("alice"), chain.key("bob")
    chain.add_blocks(REGTEST.coinbase_maturity + 3, coinbase_to=alice)
    payments = [make_transaction(chain.coinbase_outpoint(h), [(bob, 10 * COIN)], alice) for h in (1, 2, 3)]
    block = chain.add_block(payments)
    node, client = fed_node(start_node, chain)
    with client:
        for position, tx in enumerate(block.transactions):
            client.send(f'getproof {{"txid":"{tx.txid}"}}')
            proof = client.recv_until("proof")
            assert isinstance(proof, Proof) and proof.position == position and proof.verifies()
            assert proof.header.block_id == block.block_id and proof.height == chain.height
        forged = Proof(proof.txid, proof.header, proof.height, proof.position, ("00" * 32,) + proof.branch[1:])
        assert not forged.verifies()
        client.send(f'getproof {{"txid":"{"ab" * 32}"}}')
        assert isinstance(client.recv_message(), Error)
        client.send('getutxos {"addresses":[]}')
        assert isinstance(client.recv_message(), Error)
