"""The wallet-services role: answer light wallets' questions about their coins and proofs.

A light (SPV) wallet holds keys and block headers, not the chain. It asks:
`getutxos {addresses}` for the coins paying its addresses (confirmed ones from
the UTXO set, waiting ones from the mempool, less those waiting to be spent),
and `getproof {txid}` for the merkle branch that ties a transaction to a block
header it can check itself. It sends payments as ordinary `tx` messages; the
blockchain role answers a client with `txinfo` or an `error` giving the reason.

Bloom filters (BIP37) are not offered: a filter leaks which addresses are the
wallet's, costs the node a scan per block per client, and lets one client make
the node do a lot of work; Bitcoin Core turned them off by default in 0.19.
Asking by address is no more private, but it is honest about it and cheap.
"""

from __future__ import annotations

from protocol.hashing import merkle_branch
from protocol.messages import Error
from protocol.messages.wallet import MAX_UTXOS_PER_ANSWER, GetProof, GetUtxos, Proof, UtxoRow, Utxos
from protocol.transaction import OutPoint
from roles.base import Role
from roles.peer import Peer


class WalletServicesRole(Role):
    name = "wallet-services"
    requires = ("blockchain",)

    def _blockchain(self):
        chain = self.node.role("blockchain")
        if chain is None:
            raise RuntimeError("the wallet-services role needs the blockchain role")
        return chain

    def on_getutxos(self, peer: Peer, message: GetUtxos) -> None:
        chain = self._blockchain()
        store, mempool = chain.store, chain.mempool
        tip = store.height
        after = None
        if message.after is not None:
            txid, index = message.after.split(":")
            after = (txid, int(index))
        wanted = set(message.addresses)
        rows: list[UtxoRow] = []
        confirmed = store.coins_for(list(message.addresses), MAX_UTXOS_PER_ANSWER + 1, after)
        for outpoint, coin in confirmed:
            if mempool.spender_of(outpoint) is None:
                rows.append(UtxoRow(outpoint.txid, outpoint.index, coin.amount, coin.address, coin.height,
                                    tip - coin.height + 1, coin.is_coinbase, coin.token))
        for entry in mempool.entries():  # waiting payments: zero confirmations
            for index, output in enumerate(entry.tx.outputs):
                outpoint = OutPoint(entry.tx.txid, index)
                if output.address in wanted and mempool.spender_of(outpoint) is None and \
                        (after is None or (outpoint.txid, outpoint.index) > after):
                    rows.append(UtxoRow(outpoint.txid, index, output.amount, output.address, None, 0, False,
                                        output.token))
        rows.sort(key=lambda row: (row.txid, row.index))
        if len(confirmed) > MAX_UTXOS_PER_ANSWER:
            # Confirmed coins past the last one fetched were not read: nothing beyond it may be
            # paged over, or the next page would start after coins never shown.
            last = confirmed[-1][0]
            rows = [row for row in rows if (row.txid, row.index) <= (last.txid, last.index)]
        page = rows[:MAX_UTXOS_PER_ANSWER]
        more = len(rows) > MAX_UTXOS_PER_ANSWER or len(confirmed) > MAX_UTXOS_PER_ANSWER
        cursor = f"{page[-1].txid}:{page[-1].index}" if more else None
        peer.send(Utxos(utxos=tuple(page), next=cursor))

    def on_getproof(self, peer: Peer, message: GetProof) -> None:
        store = self._blockchain().store
        found = store.transaction(message.txid)
        if found is None:
            peer.send(Error("no confirmed transaction with that txid", about="getproof"))
            return
        _, block_id, height = found
        block = store.block(block_id)
        leaves = [bytes.fromhex(tx.txid) for tx in block.transactions]
        position = [tx.txid for tx in block.transactions].index(message.txid)
        branch = tuple(h.hex() for h in merkle_branch(leaves, position))
        peer.send(Proof(txid=message.txid, header=block.header, height=height, position=position, branch=branch))
