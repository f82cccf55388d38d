"""The mining role: build block templates and search for a nonce in worker processes.

    python node.py --roles routing,blockchain,chat,mining --mine-to ADDRESS [--mining-workers N]

A template is the mempool's best transactions (highest fee rate first, parents
before children, within the block size) behind a coinbase paying the reward
plus fees to ADDRESS. The nonce search runs in N worker processes, so the
node's handler threads never wait for the GIL. Each worker hashes the first
76 header bytes once per job (the midstate) and only the 4-byte nonce per try.
A new tip or a better template replaces the job; workers look for it every
few thousand nonces, so stale work stops within milliseconds.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import multiprocessing.connection
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, replace

from protocol.block import HEADER_PREFIX_SIZE, Block, BlockHeader, bits_to_target
from protocol.coin_address import decode_address
from protocol.consensus import block_subsidy, median_time_past, next_bits
from protocol.messages.mining import GetMiningInfo, MiningInfo
from protocol.transaction import TxOut, coinbase_transaction
from roles.base import NodeContext, Role
from roles.peer import Peer

log = logging.getLogger("epscoin.mining")

NONCES_PER_CHECK = 4096  # nonces between looks at the job pipe: ~3 ms at 1.5 MH/s
TEMPLATE_REFRESH = 5.0  # seconds: rebuild the template at least this often
MEMPOOL_REFRESH = 1.0  # seconds a template is kept at least, when new transactions wait to join it
BLOCK_OVERHEAD = 1000  # bytes kept free for the header and coinbase in the size budget
HASHRATE_WINDOW = 10.0  # seconds averaged for the reported hash rate
PROGRESS_INTERVAL = 0.5  # seconds between a worker's hash counts, so the window always holds recent ones
PROGRESS = -1  # in a report's nonce place: hashes so far, the job goes on
MAX_CLOCK_LEAD = 60  # seconds a template's time may run ahead of the clock before mining pauses


@dataclass
class MiningConfig:
    address: str | None = None  # --mine-to
    workers: int = 1


@dataclass(frozen=True)
class Job:
    job_id: int
    prefix: bytes  # the header's first 76 bytes
    target: int
    first_nonce: int
    last_nonce: int


def search(connection: multiprocessing.connection.Connection) -> None:
    """A worker process: take jobs, report (job id, nonce, None or PROGRESS, hashes done since the last report)."""
    try:
        os.nice(10)  # below the node's own threads: a peer's ping is answered first, as Bitcoin's
    except OSError:  # miner threads ran at THREAD_PRIORITY_LOWEST
        pass
    sha256, pack_nonce = hashlib.sha256, struct.Struct("<I").pack  # looked up once, not once per nonce
    job: Job | None = None
    while True:
        if job is None:
            job = connection.recv()
            if job is None:
                return  # asked to stop
        copy_midstate = sha256(job.prefix).copy
        # Byte strings of equal length compare as big-endian numbers: no 256-bit int per hash.
        target, nonce, done = job.target.to_bytes(32, "big"), job.first_nonce, 0
        found = None
        reported = time.monotonic()
        while nonce <= job.last_nonce:
            end = min(nonce + NONCES_PER_CHECK, job.last_nonce + 1)
            for candidate in range(nonce, end):
                inner = copy_midstate()
                inner.update(pack_nonce(candidate))
                if sha256(inner.digest()).digest() <= target:
                    found = candidate
                    break
            done += (found - nonce + 1) if found is not None else end - nonce
            nonce = end
            if found is not None or connection.poll():
                break
            if time.monotonic() - reported >= PROGRESS_INTERVAL:
                connection.send((job.job_id, PROGRESS, done))  # the job goes on: this only counts hashes
                done, reported = 0, time.monotonic()
        connection.send((job.job_id, found, done))
        if found is not None or nonce > job.last_nonce:
            job = None
        else:
            job = connection.recv()  # what poll() saw: the next job, or None to stop
            if job is None:
                return


class MiningRole(Role):
    name = "mining"
    requires = ("blockchain",)

    def __init__(self, node: NodeContext, settings: MiningConfig | None = None) -> None:
        super().__init__(node)
        self.config = settings or MiningConfig()
        if not self.config.address:
            raise ValueError("the mining role needs --mine-to ADDRESS")
        decode_address(self.config.address, node.network.address_prefix)  # ValueError for a bad address
        self._lock = threading.Lock()  # guards the counters below
        self._hashes: list[tuple[float, int]] = []  # (when, hashes) reports within the window
        self.blocks_found = 0
        self.template_txs = 0
        self._stopped = threading.Event()
        self._wake = threading.Event()  # a new tip
        self._mempool_changed = threading.Event()  # transactions the current template does not hold
        self._workers: list[tuple[multiprocessing.Process, multiprocessing.connection.Connection]] = []
        self._thread = threading.Thread(target=self._run, name="miner", daemon=True)
        self._started = time.monotonic()  # set again by start(): the hash rate's window begins there

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process full of threads
        for index in range(max(1, self.config.workers)):
            ours, theirs = context.Pipe()
            process = context.Process(target=search, args=(theirs,), name=f"miner-{index}", daemon=True)
            process.start()
            self._workers.append((process, ours))
        self._started = time.monotonic()
        self._thread.start()
        log.info("[MINING] %d worker(s) mining to %s", len(self._workers), self.config.address)

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():  # not when the node failed to start before this role did
            self._thread.join(timeout=2)
        for process, connection in self._workers:
            try:
                connection.send(None)
            except OSError:
                pass
            process.join(timeout=1)
            if process.is_alive():
                process.kill()

    def on_new_tip(self, height: int) -> None:
        self._wake.set()  # the current job builds on a stale tip: replace it now

    def on_mempool_changed(self) -> None:
        self._mempool_changed.set()  # a template at least MEMPOOL_REFRESH old is rebuilt to take them

    # -- the template ------------------------------------------------------------------------

    def _blockchain(self):
        return self.node.role("blockchain")

    def build_template(self, extra_nonce: int) -> tuple[Block, int]:
        """A block ready for a nonce, and its height."""
        chain = self._blockchain()
        store, network = chain.store, self.node.network
        tip = store.tip()
        height = tip.height + 1
        header_at = store.header_at(tip.block_id)
        times = [header_at(h).time for h in range(max(0, tip.height - 10), tip.height + 1)]
        chosen, fees = select_transactions(chain.mempool.entries(), network.max_block_size - BLOCK_OVERHEAD)
        reward = block_subsidy(height, network) + fees
        # Once the subsidy is gone a block may earn nothing: its coinbase then has no output at all.
        outputs = (TxOut(reward, self.config.address),) if reward else ()
        coinbase = coinbase_transaction(height, outputs, data=f"epscoin miner {extra_nonce}")
        transactions = (coinbase, *chosen)
        draft = Block(BlockHeader(1, tip.block_id, "00" * 32, 0, 0, 0), transactions)
        header = BlockHeader(version=1, prev=tip.block_id, merkle_root=draft.computed_merkle_root(),
                             time=max(int(time.time()), median_time_past(times) + 1),
                             bits=next_bits(network, tip.height, header_at), nonce=0)
        self.template_txs = len(chosen)
        return Block(header, transactions), height

    # -- the search ----------------------------------------------------------------------------

    def _run(self) -> None:
        job_id, extra_nonce = 0, 0
        while not self._stopped.is_set():
            self._wake.clear()
            self._mempool_changed.clear()
            extra_nonce += 1
            try:
                template, height = self.build_template(extra_nonce)
            except Exception:
                log.exception("[BUG] building a block template")
                self._stopped.wait(1.0)
                continue
            if template.header.time > time.time() + MAX_CLOCK_LEAD:
                # Each block must be later than the median of the last 11; mining faster than a
                # block a second (regtest) pushes block times ahead of the clock. Let it catch up,
                # long before other nodes would refuse them as "time-too-new".
                self._stopped.wait(1.0)
                continue
            job_id += 1
            self._dispatch(job_id, template)
            found = self._collect(job_id, started=time.monotonic())
            if found is not None:
                block = Block(replace(template.header, nonce=found), template.transactions)
                try:
                    self._submit(block, height)
                except sqlite3.OperationalError as error:  # the disk is full or failing: the node stops
                    self.node.fail(f"cannot store mined block {height}: {error}")
                    return

    def _dispatch(self, job_id: int, template: Block) -> None:
        prefix = template.header.serialize()[:HEADER_PREFIX_SIZE]
        target = bits_to_target(template.header.bits)
        share = 2**32 // len(self._workers)
        for index, (_, connection) in enumerate(self._workers):
            last = 2**32 - 1 if index == len(self._workers) - 1 else (index + 1) * share - 1
            connection.send(Job(job_id, prefix, target, index * share, last))

    def _collect(self, job_id: int, started: float) -> int | None:
        """Wait for a nonce of this job, a new tip, new transactions or the refresh; count hashes all along."""
        connections = [connection for _, connection in self._workers]
        searching = len(connections)
        while searching and not self._stopped.is_set():
            age = time.monotonic() - started
            if self._wake.is_set() or age > TEMPLATE_REFRESH or (
                    self._mempool_changed.is_set() and age > MEMPOOL_REFRESH):
                return None  # the next job replaces this one in the workers
            for connection in multiprocessing.connection.wait(connections, timeout=0.05):
                reported_job, nonce, hashes = connection.recv()
                self._count(hashes)
                if reported_job != job_id or nonce == PROGRESS:
                    continue
                if nonce is not None:
                    return nonce
                searching -= 1  # this worker finished its share of the nonce space
        return None

    def _count(self, hashes: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._hashes.append((now, hashes))
            self._hashes = [(t, h) for t, h in self._hashes if now - t <= HASHRATE_WINDOW]

    def hashrate(self) -> float:
        """Hashes reported in the last HASHRATE_WINDOW seconds (or since mining began), per second."""
        now = time.monotonic()
        with self._lock:
            recent = sum(h for t, h in self._hashes if now - t <= HASHRATE_WINDOW)
        return recent / max(min(HASHRATE_WINDOW, now - self._started), 1e-3)

    def _submit(self, block: Block, height: int) -> None:
        error = self._blockchain().submit_block(block)
        if error is None:
            self.blocks_found += 1
            log.info("[MINED] block %d %s (%d transaction%s)", height, block.block_id,
                     len(block.transactions), "" if len(block.transactions) == 1 else "s")
        else:
            log.warning("[MINING] our block %s was refused: %s", block.block_id, error)

    # -- the person's question -----------------------------------------------------------------

    def on_getmininginfo(self, peer: Peer, message: GetMiningInfo) -> None:
        chain = self._blockchain()
        tip = chain.store.tip()
        difficulty = bits_to_target(self.node.network.pow_limit_bits) / bits_to_target(tip.header.bits)
        peer.send(MiningInfo(hashrate=round(self.hashrate(), 1), difficulty=round(difficulty, 6),
                             height=tip.height, template_txs=self.template_txs, blocks_found=self.blocks_found,
                             workers=len(self._workers), address=self.config.address))


def select_transactions(entries, budget: int):
    """Highest fee rate first, a transaction only after the waiting parents it spends."""
    pending = sorted(entries, key=lambda entry: entry.fee_rate, reverse=True)
    waiting_ids = {entry.tx.txid for entry in pending}
    chosen, chosen_ids, size, fees = [], set(), 0, 0
    progress = True
    while progress:
        progress = False
        for entry in list(pending):
            parents = {txin.prevout.txid for txin in entry.tx.inputs} & waiting_ids
            if not parents <= chosen_ids:
                continue
            pending.remove(entry)
            if size + entry.size > budget:
                continue
            chosen.append(entry.tx)
            chosen_ids.add(entry.tx.txid)
            size += entry.size
            fees += entry.fee
            progress = True
    return chosen, fees
