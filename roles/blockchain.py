"""The blockchain role: keep a validated chain, sync it headers-first, relay blocks and transactions.

Sync, as Bitcoin's since 0.10:
1. On every new connection to a node, send `getheaders` with our locator.
2. Store each header that passes the header rules; the most-work header shows
   where the chain is.
3. Download the missing blocks of that branch with `getdata`, from several
   peers at once, at most 16 in flight per peer; a request unanswered for the
   stall timeout goes to another peer.
4. Connect blocks as they complete the branch (roles/chainstore.py), and move
   the mempool along.

New blocks and transactions are announced with `inv` and fetched with
`getdata`. An invalid block or transaction costs its sender 100 misbehaviour
points (a ban); a transaction merely not wanted here (fee, conflict) costs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from protocol.block import Block, bits_to_target
from protocol.consensus import ConsensusError, check_block, check_header
from protocol.framing import encode_frame
from protocol.messages import Error
from protocol.messages.blocks import MAX_HEADERS, BlockMessage, GetHeaders, Headers, TxMessage
from protocol.messages.chaininfo import (BlockchainInfo, BlockInfo, GetBlock, GetBlockchainInfo, GetToken, GetTx,
                                         TokenInfo, TxInfo)
from protocol.messages.handshake import NODE_NETWORK
from protocol.messages.inventory import GetData, Inv, InvItem, MempoolRequest, NotFound
from protocol.transaction import Transaction
from roles.base import NodeContext, Role
from roles.chainstore import CONNECTED, HAVE_DATA, ChainStore
from roles.mempool import MAX_MEMPOOL_BYTES, MIN_RELAY_FEE_RATE, Mempool, PolicyError
from roles.peer import Peer
from roles.seen import SeenFilter

log = logging.getLogger("epscoin.chain")

MAX_BLOCKS_IN_FLIGHT_PER_PEER = 16  # Bitcoin's MAX_BLOCKS_IN_TRANSIT_PER_PEER
MAX_ORPHAN_BLOCKS = 100  # blocks whose parent is unknown, held until it arrives
MAX_ORPHAN_TRANSACTIONS = 100  # Bitcoin's DEFAULT_MAX_ORPHAN_TRANSACTIONS
INVALID_PENALTY = 100  # an invalid block or transaction: ban, as Bitcoin does for consensus failures
KNOWN_INVENTORY_PER_PEER = 50_000
HEADERS_RETRY_INTERVAL = 30.0  # seconds: ask again for headers while a peer claims more than we have
HOLD_TIMEOUT = 0.5  # seconds a received block waits for the next before tick connects it anyway
# Refused without misbehaviour points: clocks differ, so a block "from the future" may be honest
# (Bitcoin does not punish BLOCK_TIME_FUTURE either); it can be accepted later.
UNPUNISHED_CODES = frozenset({"time-too-new"})
STALL_MEMORY = 60.0  # seconds a peer that stalled on a block is not asked for it again
# Items per `inv` answering `mempool`: a tx item is ~86 bytes of JSON, so MAX_INV_ITEMS (50,000) of them
# would be 4.3 MB, over MAX_PAYLOAD; 40,000 are 3.4 MB.
MEMPOOL_INV_CHUNK = 40_000


@dataclass
class BlockchainConfig:
    stall_timeout: float = 10.0  # seconds before a block request moves to another peer
    progress_interval: float = 5.0  # seconds between sync progress lines
    mempool_bytes: int = MAX_MEMPOOL_BYTES
    min_relay_fee_rate: int = MIN_RELAY_FEE_RATE


@dataclass
class PeerSync:
    """What this role knows of one peer."""

    best_height: int = 0  # the highest block the peer has shown us it has
    in_flight: dict[str, float] = field(default_factory=dict)  # block id -> when we asked
    known: SeenFilter = field(default_factory=lambda: SeenFilter(KNOWN_INVENTORY_PER_PEER))
    last_getheaders: float = 0.0


class BlockchainRole(Role):
    name = "blockchain"
    services = NODE_NETWORK

    def __init__(self, node: NodeContext, settings: BlockchainConfig | None = None) -> None:
        super().__init__(node)
        self.config = settings or BlockchainConfig()
        self.network = node.network
        self.store = ChainStore(node.data_path / "chain.sqlite", self.network)
        self.mempool = Mempool(self.network, self.config.mempool_bytes, self.config.min_relay_fee_rate)
        self._lock = threading.Lock()  # guards _peers, _orphan_blocks, _orphan_txs, _block_source, progress
        self._request_lock = threading.Lock()  # serialises _request_blocks
        self._peers: dict[Peer, PeerSync] = {}
        self._orphan_blocks: OrderedDict[str, Block] = OrderedDict()  # by parent id
        self._orphan_txs: OrderedDict[str, tuple[Transaction, Peer]] = OrderedDict()
        self._block_source: OrderedDict[str, Peer] = OrderedDict()  # who sent a block, to punish if invalid
        self._rejected = SeenFilter(50_000)  # txids refused: not fetched again
        self._progress_at = 0.0
        self._progress_height = 0
        self._stalled: dict[str, dict[Peer, float]] = {}  # block id -> peers that stalled on it, and when
        self._held: tuple[str, float] | None = None  # (block id, since when): stored, not yet connected

    # -- what other parts of the node read ----------------------------------------------------------

    def height(self) -> int:
        return self.store.height

    def start(self) -> None:
        # A node stopped (or killed) in the middle of a reorg resumes it here: every step was
        # its own transaction, so the store is consistent, just not yet on its best branch.
        self._activate()

    def stop(self) -> None:
        self.store.close()

    def syncing(self) -> bool:
        return self.store.best_header().chainwork > self.store.tip().chainwork

    # -- peers ----------------------------------------------------------------------------------------

    def on_connect(self, peer: Peer) -> None:
        with self._lock:
            self._peers[peer] = PeerSync()

    def on_disconnect(self, peer: Peer) -> None:
        with self._lock:
            self._peers.pop(peer, None)
        self._request_blocks()  # its requests go to the others

    def on_ready(self, peer: Peer) -> None:
        if not peer.version.services & NODE_NETWORK:
            return
        self._state(peer).best_height = peer.version.height
        self._send_getheaders(peer)

    def _state(self, peer: Peer) -> PeerSync:
        with self._lock:
            return self._peers.setdefault(peer, PeerSync())

    def _node_peers(self) -> list[Peer]:
        return [p for p in self.node.ready_peers() if p.version.services & NODE_NETWORK]

    def _punish(self, peer: Peer, error: ConsensusError, what: str, command: str) -> None:
        log.warning("[INVALID] %s from %s: %s", what, peer.address, error)
        peer.send(Error(f"invalid {what}: {error}", about=command))
        if error.code not in UNPUNISHED_CODES:
            self.node.misbehaving(peer, INVALID_PENALTY, f"invalid {what}: {error.code}")

    # -- headers-first sync -----------------------------------------------------------------------------

    def _send_getheaders(self, peer: Peer, locator: list[str] | None = None) -> None:
        self._state(peer).last_getheaders = time.monotonic()
        peer.send(GetHeaders(locator=tuple(locator or self.store.locator())))

    def on_getheaders(self, peer: Peer, message: GetHeaders) -> None:
        peer.send(Headers(headers=tuple(self.store.headers_after(list(message.locator), message.stop, MAX_HEADERS))))

    def on_headers(self, peer: Peer, message: Headers) -> None:
        state = self._state(peer)
        for header in message.headers:
            try:
                stored = self.store.add_header(header)
            except ConsensusError as error:
                if error.code == "prev-blk-not-found":
                    self._send_getheaders(peer)  # they are on something we lack: start from our locator
                    return
                self._punish(peer, error, "header", "headers")
                return
            state.best_height = max(state.best_height, stored.height)
            state.known.add(header.block_id)
        if len(message.headers) == MAX_HEADERS:  # there may be more
            self._send_getheaders(peer, [message.headers[-1].block_id])
        if self.store.best_header().height - self.store.height > MAX_BLOCKS_IN_FLIGHT_PER_PEER:
            self.store.prepare_to_sync()  # a sync begins: the signature workers start before its blocks come
        self._request_blocks()

    def _request_blocks(self) -> None:
        """Fill every node peer's download window with missing blocks of the best branch."""
        with self._request_lock:  # handler threads and tick, one at a time: else two pick the same blocks
            self._fill_download_windows()

    def _fill_download_windows(self) -> None:
        if not self.syncing():
            return  # the tip is the best header: nothing to ask for (and no query per peer every second)
        now = time.monotonic()
        with self._lock:
            taken = {block_id for state in self._peers.values() for block_id in state.in_flight}
        for peer in self._node_peers():
            state = self._state(peer)
            room = MAX_BLOCKS_IN_FLIGHT_PER_PEER - len(state.in_flight)
            if room <= 0:
                continue
            wanted = [(height, block_id) for height, block_id in self.store.missing_blocks(room * 4, taken)
                      if height <= state.best_height and peer not in self._stalled.get(block_id, ())][:room]
            if not wanted:
                continue
            with self._lock:
                for _, block_id in wanted:
                    state.in_flight[block_id] = now
                    taken.add(block_id)
            peer.send(GetData(items=tuple(InvItem("block", block_id) for _, block_id in wanted)))

    # -- blocks ---------------------------------------------------------------------------------------

    def on_block(self, peer: Peer, message: BlockMessage) -> None:
        state = self._state(peer)
        state.known.add(message.block.block_id)
        try:
            self._receive_block(peer, message.block)
        finally:
            # Only now, stored or refused: until then another thread filling download windows
            # would see the block neither in flight nor stored, and ask for it again.
            with self._lock:
                state.in_flight.pop(message.block.block_id, None)
        if not (peer.ready and peer.version.services & NODE_NETWORK):
            # A person (or a test) handed us a block: say what became of it, as txinfo does for tx.
            info = self._block_info(message.block.block_id)
            if info is not None:
                peer.send(info)
        self._request_blocks()

    def _receive_block(self, peer: Peer, block: Block) -> None:
        block_id = block.block_id
        known = self.store.header(block_id)
        if known is not None and known.status in (HAVE_DATA, CONNECTED):
            return  # a duplicate; nothing to do
        now = time.time()
        try:
            check_header(block.header, self.network, now)  # proof of work first: only then is it worth verifying
            self.store.verify_ahead(block)  # the signatures, on the workers while the rest is checked
            check_block(block, self.network, now)
        except ConsensusError as error:
            self._punish(peer, error, "block", "block")
            return
        if self.store.header(block.header.prev) is None:
            with self._lock:
                self._orphan_blocks[block.header.prev] = block
                while len(self._orphan_blocks) > MAX_ORPHAN_BLOCKS:
                    self._orphan_blocks.popitem(last=False)
            self._send_getheaders(peer)
            return
        self._accept_block(block, peer)

    def submit_block(self, block: Block) -> str | None:
        """A block made by this node (the mining role): None when accepted, else the reason."""
        try:
            check_block(block, self.network, time.time())
            self.store.add_header(block.header)
        except ConsensusError as error:
            return str(error)
        self.store.store_block(block)
        self._activate()
        stored = self.store.header(block.block_id)
        return None if self.store.is_active(block.block_id) or (stored and stored.status >= 0) else "not connected"

    def _accept_block(self, block: Block, source: Peer) -> None:
        while block is not None:
            try:
                self.store.add_header(block.header)
            except ConsensusError as error:
                self._punish(source, error, "block", "block")
                return
            self.store.store_block(block)
            with self._lock:
                self._block_source[block.block_id] = source
                while len(self._block_source) > 4 * MAX_ORPHAN_BLOCKS:
                    self._block_source.popitem(last=False)
            with self._lock:
                child = self._orphan_blocks.pop(block.block_id, None)  # a waiting child?
            self._activate(hold=block.block_id if child is None and self._more_blocks_coming(block.block_id) else None)
            block = child

    def _more_blocks_coming(self, block_id: str) -> bool:
        """Whether blocks other than this one are on their way from peers."""
        with self._lock:
            return any(other != block_id for state in self._peers.values() for other in state.in_flight)

    def _activate(self, hold: str | None = None) -> None:
        # Pipelining the sync: the block just received is connected once the next one is in (or by
        # tick), so the signature workers verify it while this thread parses the next.
        self._held = (hold, time.monotonic()) if hold is not None else None
        change = self.store.activate_best_chain(hold)
        for block_id, error in change.invalid:
            with self._lock:
                source = self._block_source.get(block_id)
            if source is not None:
                self._punish(source, error, "block", "block")
        if not (change.connected or change.disconnected):
            return
        for block in change.connected:
            self.mempool.remove_for_block(block)
        tip_height = self.store.height
        if change.disconnected:
            log.info("[REORG] %d block(s) disconnected, %d connected; new tip %d",
                     len(change.disconnected), len(change.connected), tip_height)
            self.mempool.readd([tx for block in change.disconnected for tx in block.transactions[1:]],
                               self.store, tip_height)
            self.mempool.revalidate(self.store, tip_height)
        if self.syncing():
            self._log_progress()
            return
        tip = change.connected[-1] if change.connected else None
        self._rejected = SeenFilter(self._rejected.capacity)  # a new tip may make them valid (Bitcoin's too)
        self.node.emit("on_new_tip", tip_height)
        if tip is not None:
            log.info("[BLOCK] new tip %d %s (%d transaction%s)", tip_height, tip.block_id,
                     len(tip.transactions), "" if len(tip.transactions) == 1 else "s")
            self._announce(InvItem("block", tip.block_id))

    def _log_progress(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._progress_at < self.config.progress_interval:
                return
            elapsed = now - self._progress_at if self._progress_at else 0.0
            done = self.store.height - self._progress_height
            self._progress_at, self._progress_height = now, self.store.height
        best = self.store.best_header().height
        if elapsed:
            rate = done / elapsed
            left = f"about {(best - self.store.height) / rate:.0f} s left" if rate > 0 else "waiting for blocks"
            log.info("[SYNC] block %d of %d, %.1f blocks/s, %s", self.store.height, best, rate, left)
        else:
            log.info("[SYNC] block %d of %d: downloading", self.store.height, best)

    def _announce(self, item: InvItem, source: Peer | None = None) -> None:
        for peer in self._node_peers():
            state = self._state(peer)
            if peer is not source and state.known.add(item.id):
                peer.send(Inv(items=(item,)))

    # -- inventory --------------------------------------------------------------------------------------

    def on_inv(self, peer: Peer, message: Inv) -> None:
        state = self._state(peer)
        wanted = []
        asked_headers = False
        for item in message.items:
            state.known.add(item.id)
            if item.type == "block":
                if self.store.header(item.id) is None and not asked_headers:
                    self._send_getheaders(peer)
                    asked_headers = True
            elif item.id not in self.mempool and item.id not in self._rejected and \
                    item.id not in self._orphan_txs and self.store.transaction(item.id) is None:
                wanted.append(InvItem("tx", item.id))
        for start in range(0, len(wanted), 1000):
            peer.send(GetData(items=tuple(wanted[start:start + 1000])))

    def on_getdata(self, peer: Peer, message: GetData) -> None:
        missing = []
        for item in message.items:
            if item.type == "block":
                data = self.store.block_data(item.id)  # validated when stored: sent on as stored
                if data is not None:
                    frame = encode_frame(f"{BlockMessage.command} {data.decode()}")
                    if not peer.wait_for_send_room(len(frame)):  # 16 full blocks outgrow the outbox
                        return
                    peer.send_frame(frame)
                    continue
            else:
                entry = self.mempool.get(item.id)
                if entry is not None:
                    peer.send(TxMessage(entry.tx))
                    continue
            missing.append(item)
        if missing or not message.items:  # an empty getdata still gets its frame back
            peer.send(NotFound(items=tuple(missing)))

    def on_notfound(self, peer: Peer, message: NotFound) -> None:
        with self._lock:
            state = self._peers.get(peer)
            for item in message.items:
                if state is not None and state.in_flight.pop(item.id, None) is not None:
                    self._stalled.setdefault(item.id, {})[peer] = time.monotonic()
        self._request_blocks()

    def on_mempool(self, peer: Peer, message: MempoolRequest) -> None:
        txids = self.mempool.txids()
        for start in range(0, max(len(txids), 1), MEMPOOL_INV_CHUNK):  # an empty mempool: one empty inv
            peer.send(Inv(items=tuple(InvItem("tx", txid) for txid in txids[start:start + MEMPOOL_INV_CHUNK])))

    # -- transactions -----------------------------------------------------------------------------------

    def on_tx(self, peer: Peer, message: TxMessage) -> None:
        tx = message.tx
        self._state(peer).known.add(tx.txid)
        is_node = bool(peer.version.services & NODE_NETWORK)
        try:
            self.mempool.accept(tx, self.store, self.store.height)
        except ConsensusError as error:
            if error.code == "bad-txns-inputs-missingorspent" and self._parents_unknown(tx):
                self._keep_orphan(tx, peer)
                if not is_node:
                    peer.send(Error(f"tx waits: {error.reason} (kept until its parent arrives)", about="tx"))
                return
            self._rejected.add(tx.txid)
            if error.code in ("bad-txns-inputs-missingorspent", "bad-txns-premature-spend-of-coinbase",
                              "bad-txns-token-exists"):  # races honest senders lose: not misbehaviour
                # A double spend or an early spend can be a race between honest nodes: no penalty,
                # and between nodes no error either; a person is told why.
                if not is_node:
                    peer.send(Error(f"tx rejected: {error}", about="tx"))
            else:
                self._punish(peer, error, "tx", "tx")
            return
        except PolicyError as error:
            if not is_node:  # between nodes, a fee or conflict refusal is routine; a person wants to know
                peer.send(Error(f"tx rejected: {error}", about="tx"))
            return
        log.info("[TX] accepted %s from %s (%d in mempool)", tx.txid, peer.address, len(self.mempool))
        self.node.emit("on_mempool_changed")
        if not is_node:
            peer.send(self._tx_info(tx.txid))
        self._announce(InvItem("tx", tx.txid), source=peer)
        self._adopt_orphans(tx.txid)

    def _parents_unknown(self, tx: Transaction) -> bool:
        """True when an input's transaction is nowhere known: the parent may still be on its way."""
        return any(txin.prevout.txid not in self.mempool and self.store.transaction(txin.prevout.txid) is None
                   for txin in tx.inputs)

    def _keep_orphan(self, tx: Transaction, peer: Peer) -> None:
        with self._lock:
            self._orphan_txs[tx.txid] = (tx, peer)
            while len(self._orphan_txs) > MAX_ORPHAN_TRANSACTIONS:
                self._orphan_txs.popitem(last=False)

    def _adopt_orphans(self, parent_txid: str) -> None:
        with self._lock:
            children = [(txid, tx, peer) for txid, (tx, peer) in self._orphan_txs.items()
                        if any(txin.prevout.txid == parent_txid for txin in tx.inputs)]
            for txid, _, _ in children:
                del self._orphan_txs[txid]
        for _, tx, peer in children:
            self.on_tx(peer, TxMessage(tx))

    # -- questions from people ----------------------------------------------------------------------------

    def on_getblockchaininfo(self, peer: Peer, message: GetBlockchainInfo) -> None:
        tip = self.store.tip()
        difficulty = bits_to_target(self.network.pow_limit_bits) / bits_to_target(tip.header.bits)
        peer.send(BlockchainInfo(network=self.network.name, height=tip.height, tip=tip.block_id,
                                 difficulty=round(difficulty, 6), headers=self.store.best_header().height,
                                 mempool_size=len(self.mempool), mempool_bytes=self.mempool.bytes))

    def on_getblock(self, peer: Peer, message: GetBlock) -> None:
        block_id = message.id if message.id is not None else self.store.active_id(message.height)
        info = self._block_info(block_id) if block_id else None
        peer.send(info if info is not None else Error("no such block here", about="getblock"))

    def _block_info(self, block_id: str) -> BlockInfo | None:
        stored = self.store.header(block_id)
        block = self.store.block(block_id) if stored else None
        if block is None:
            return None
        active = self.store.is_active(block_id)
        return BlockInfo(id=block_id, height=stored.height,
                         confirmations=self.store.height - stored.height + 1 if active else 0,
                         header=block.header, size=block.size, txids=tuple(tx.txid for tx in block.transactions))

    def on_gettx(self, peer: Peer, message: GetTx) -> None:
        info = self._tx_info(message.txid)
        peer.send(info if info is not None else Error("no such transaction here", about="gettx"))

    def on_gettoken(self, peer: Peer, message: GetToken) -> None:
        token = self.store.token(message.ticker)
        if token is None:
            peer.send(Error(f"no token {message.ticker} has been issued on this chain", about="gettoken"))
            return
        peer.send(TokenInfo(ticker=token.ticker, name=token.name, supply=token.supply, burned=token.burned,
                            issuer=token.issuer, txid=token.txid, height=token.height, holders=token.holders))

    def _tx_info(self, txid: str) -> TxInfo | None:
        entry = self.mempool.get(txid)
        if entry is not None:
            return TxInfo(txid=txid, tx=entry.tx, block=None, height=None, confirmations=0)
        found = self.store.transaction(txid)
        if found is None:
            return None
        tx, block_id, height = found
        return TxInfo(txid=txid, tx=tx, block=block_id, height=height, confirmations=self.store.height - height + 1)

    # -- periodic work ---------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        stalled = False
        with self._lock:
            for peer, state in self._peers.items():
                for block_id, asked in list(state.in_flight.items()):
                    if now - asked > self.config.stall_timeout:
                        del state.in_flight[block_id]
                        self._stalled.setdefault(block_id, {})[peer] = now
                        stalled = True
            for block_id in list(self._stalled):
                peers = {p: t for p, t in self._stalled[block_id].items() if now - t < STALL_MEMORY}
                if peers:
                    self._stalled[block_id] = peers
                else:
                    del self._stalled[block_id]
        if stalled:
            log.info("[SYNC] a block request stalled; asking another peer")
        tip_height = self.store.height
        for peer in self._node_peers():
            state = self._state(peer)
            if state.best_height > tip_height and not state.in_flight and \
                    now - state.last_getheaders > HEADERS_RETRY_INTERVAL:
                self._send_getheaders(peer)
        held = self._held
        if held is not None and now - held[1] > HOLD_TIMEOUT:  # the next block is slow to come
            self._activate()
        self._request_blocks()
        if self.syncing():
            self._log_progress()
        else:
            self.store.flush()  # the coin changes a sync left in memory (see ChainStore.activate_best_chain)
