"""Chain benchmark: block validation, initial block download and mempool acceptance, next to their limits.

    python benchmarks/chain_bench.py            # the full run: 3 to 9 minutes on 2 cores (see below)
    python benchmarks/chain_bench.py --quick    # smaller chains: under a minute once the chains are cached
    python benchmarks/chain_bench.py --no-profile

Most of a full run is the 10,000-block IBD (1.5 minutes on a quiet machine at eb15de4, 5 under
load); the first run also builds the chains, about 10 s, cached after that.

One run measures, on real `node.py` processes talking over 127.0.0.1:

1. The limits, in this process: libsecp256k1's raw verify rate through
   coincurve (a loop over precomputed (pubkey, signature, message hash)
   triples taken from the benchmark chain: parse the compressed key, verify),
   on one thread and on two (coincurve releases the GIL, so two threads can use
   both cores), and a sha256d loop over 80-byte headers. Each is sampled before
   and after the node measurements; the median of the samples is the limit.
2. Full blocks. A regtest chain is built in this process with
   tests/chain_builder.py: coinbases mature, a few many-output transactions fan
   the coins out, then every block is filled close to the 1,000,000-byte limit
   with 1-input/1-output transactions, each spending an output of an earlier
   block. It is cached on disk (--cache-dir), so a rerun starts at once. Node A
   is handed the chain as `block {json}` frames over one connection (timed too:
   "push into A"), then a fresh node B is started with `--connect A` and the
   initial block download is timed until B's `getblockchaininfo` height
   matches. Reported: blocks/s, transactions/s and inputs verified/s, and
   inputs/s as a ratio of the one-core raw verify rate.
3. Mempool acceptance: N valid, independent transactions (each spending a
   different output of the chain's last block) are sent to A as `tx` frames
   from one client, timed until A's `mempool_size` reaches N; then the same N
   in this process, Mempool.accept against a ChainStore opened on A's database.
4. Growth: IBD of chains of small blocks (a coinbase and a few transactions),
   1,000 to 10,000 blocks, each into a fresh B; seconds per 1,000 blocks for
   each length, and the ratio last/first (linear time is 1).
5. Where B's time goes: the full-block IBD (and the longest small chain) once
   more into a fresh B sampled by py-spy (`pip install py-spy`), reported as
   the functions with the most samples. Those runs are not the timed ones.

Why like this: the machine is shared and absolute rates drift by tens of
percent, so the limits are measured in the same run, before and after, and the
targets are ratios. Everything runs on 127.0.0.1, every wait has a timeout, and
every process started is stopped on exit, error or Ctrl-C (and, on Linux, dies
with this process).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Sequence, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: tests.* sits beside the node's packages

import coincurve  # noqa: E402

from protocol.block import Block, BlockHeader  # noqa: E402
from protocol.framing import encode_frame  # noqa: E402
from protocol.messages import BlockchainInfo  # noqa: E402
from protocol.networks import NETWORKS  # noqa: E402
from protocol.transaction import OutPoint, Transaction, canonical_json  # noqa: E402
from roles.chainstore import ChainStore  # noqa: E402
from roles.mempool import Mempool  # noqa: E402
from tests.chain_builder import ChainBuilder, Key, make_transaction  # noqa: E402
from tests.support import LISTENING, WireClient  # noqa: E402

from benchmarks import plots  # noqa: E402

REGTEST = NETWORKS["regtest"]
HOST = "127.0.0.1"
NODE_ARGS = ("--network", "regtest", "--outbound", "0", "--no-fixed-seeds")
CACHE_VERSION = 2  # bump when the chains built here change shape
KEYS = 16  # owners of the benchmark coins, round-robin
FEE = 1_000  # base units per 1-input/1-output transaction (~430 bytes): above the 1,000 per kB relay minimum
FANOUT_TXS = 5  # many-output transactions, one per matured coinbase
FANOUT_OUTPUTS = 500  # outputs of each (~31 KB): 2,500 coins, more than a full block spends
SMALL_FANOUT_OUTPUTS = 60  # the small-block chain's coins
BLOCK_MARGIN = 64  # bytes left under the size limit for the header's digits
FEED_BATCH_BYTES = 8_000_000  # bytes per sendall when pushing blocks into a node
LIMIT_SECONDS = 0.4  # seconds of each limit sample
LIMIT_SAMPLES = 3  # limit samples before and after the node measurements
LISTEN_TIMEOUT = 30.0  # seconds for a node to print its listening line
STALL_TIMEOUT = 90.0  # seconds without progress before a sync or feed is declared stuck
POLL_INTERVAL = 0.02  # seconds between two getblockchaininfo polls at first ...
POLL_FRACTION = 0.0025  # ... then this fraction of the time waited so far: the node answers each poll, so
# polling fast for minutes would itself cost it (getblockchaininfo reads the best header)
STOP_TIMEOUT = 15.0  # seconds for a node to stop after SIGTERM before it is killed
PROFILE_RATE = 250  # py-spy samples per second and thread, in the runs that are not timed
GROWTH_PROFILE_RATE = 100  # ... in the small-block IBDs, which are timed (every length sampled alike)
PROFILE_ROWS = 18  # functions shown per profile
IBD_VERIFY_TARGET = 0.6  # IBD inputs verified/s at least this times the one-core raw verify rate
GROWTH_TARGET = 1.5  # IBD time per 1,000 blocks at the longest chain at most this times that at the shortest

T = TypeVar("T")


class BenchError(Exception):
    """The run cannot go on; the message says why, for a person."""


# -- the limits ------------------------------------------------------------------------------------

Triple = tuple[bytes, bytes, bytes]  # compressed pubkey, DER signature, message hash


def verify_loop(triples: Sequence[Triple], rounds: int) -> int:
    """Verify every triple `rounds` times, as the node must: parse the key, verify. The count."""
    public_key = coincurve.PublicKey
    for _ in range(rounds):
        for pubkey, signature, message in triples:
            if not public_key(pubkey).verify(signature, message, hasher=None):
                raise BenchError("a benchmark signature does not verify")
    return rounds * len(triples)


def sha256d_loop(headers: Sequence[bytes], rounds: int) -> int:
    sha256 = hashlib.sha256
    for _ in range(rounds):
        for header in headers:
            sha256(sha256(header).digest()).digest()
    return rounds * len(headers)


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: float  # wall clock
    cpu_seconds: float  # this thread's CPU time (one thread) or the process's (several)

    @property
    def per_s(self) -> float:
        return self.count / self.seconds

    @property
    def per_cpu_s(self) -> float:
        return self.count / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


def timed(work: Callable[[], int], clock: Callable[[], float] = time.thread_time) -> Rate:
    wall, cpu = time.perf_counter(), clock()
    count = work()
    return Rate(count, time.perf_counter() - wall, clock() - cpu)


def rounds_for(seconds: float, one_round: Callable[[], object]) -> int:
    """How many rounds of a loop fill about `seconds` (from one untimed round)."""
    start = time.perf_counter()
    one_round()
    return max(1, round(seconds / max(time.perf_counter() - start, 1e-6)))


def verify_on_threads(triples: Sequence[Triple], rounds: int, threads: int) -> Rate:
    """`threads` threads at once, each looping over all the triples `rounds` times."""
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(verify_loop, triples[:8], 1) for _ in range(threads)]:
            future.result()  # the threads exist before the clock starts

        def all_threads() -> int:
            return sum(f.result() for f in [pool.submit(verify_loop, triples, rounds) for _ in range(threads)])
        return timed(all_threads, time.process_time)


@dataclass
class Limits:
    """The raw rates, sampled before and after the node measurements."""

    triples: list[Triple]
    headers: list[bytes]
    verify1: list[Rate] = field(default_factory=list)
    verify2: list[Rate] = field(default_factory=list)
    sha256d: list[Rate] = field(default_factory=list)

    def sample(self) -> None:
        verify_rounds = rounds_for(LIMIT_SECONDS, lambda: verify_loop(self.triples, 1))
        hash_rounds = rounds_for(LIMIT_SECONDS, lambda: sha256d_loop(self.headers, 1))
        for _ in range(LIMIT_SAMPLES):
            self.verify1.append(timed(lambda: verify_loop(self.triples, verify_rounds)))
            self.verify2.append(verify_on_threads(self.triples, max(1, verify_rounds // 2), 2))
            self.sha256d.append(timed(lambda: sha256d_loop(self.headers, hash_rounds)))

    @property
    def verify_one_core(self) -> float:
        """Verifies per second on one thread: the limit the IBD target is a ratio of."""
        return statistics.median(r.per_s for r in self.verify1)

    @property
    def verify_per_cpu_s(self) -> float:
        """Verifies per CPU-second of one thread: the same limit, less moved by other work on the machine."""
        return statistics.median(r.per_cpu_s for r in self.verify1)


# -- the chains ------------------------------------------------------------------------------------


@dataclass
class Chain:
    """A built chain as the wire carries it: each block's and each spare transaction's canonical JSON."""

    name: str
    blocks: list[str]  # heights 1..n
    spare_txs: list[str]  # valid on the tip, independent of each other (for the mempool)
    meta: dict

    @property
    def height(self) -> int:
        return len(self.blocks)

    def tip_id(self, height: int | None = None) -> str:
        """The id of the block at `height` (default: the tip), from its header alone."""
        return BlockHeader.from_json(json.loads(self.blocks[(height or self.height) - 1])["header"]).block_id

    def counts(self, height: int | None = None) -> tuple[int, int]:
        """(transactions without coinbases, inputs) in blocks 1..height."""
        per_block = self.meta["per_block"][:height or self.height]
        return sum(txs for txs, _ in per_block), sum(inputs for _, inputs in per_block)


class Spender:
    """The coins the benchmark owns, oldest first, and 1-input/1-output spends of them."""

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys
        self.coins: deque[tuple[OutPoint, int, Key]] = deque()
        self._next_key = 0
        self._last: tuple[OutPoint, int, Key] | None = None

    def add_outputs(self, tx: Transaction) -> None:
        for index, output in enumerate(tx.outputs):
            key = next(k for k in self.keys if k.address == output.address)
            self.coins.append((OutPoint(tx.txid, index), output.amount, key))

    def spend_oldest(self) -> Transaction:
        self._last = outpoint, amount, key = self.coins.popleft()
        payee = self.keys[self._next_key % len(self.keys)]
        self._next_key += 1
        return make_transaction(outpoint, [(payee, amount - FEE)], key)

    def unspend_last(self) -> None:
        """The last spend_oldest() is not used after all: its coin is the oldest again."""
        assert self._last is not None
        self.coins.appendleft(self._last)
        self._last = None


def fan_out(chain: ChainBuilder, spender: Spender, coinbase_heights: Sequence[int], outputs: int) -> None:
    """One block of many-output transactions, each spending a matured coinbase to the benchmark keys."""
    txs = []
    for height in coinbase_heights:
        outpoint = chain.coinbase_outpoint(height)
        each = (chain.amount_of(outpoint) - FEE * outputs) // outputs
        tx = make_transaction(outpoint, [(spender.keys[i % len(spender.keys)], each) for i in range(outputs)],
                              chain.miner)
        txs.append(tx)
    chain.add_block(txs)  # small: every rule checked by the builder
    for tx in txs:
        spender.add_outputs(tx)


def block_json(block: Block) -> str:
    return canonical_json(block.to_json()).decode("utf-8")


def per_block_counts(blocks: Sequence[Block]) -> list[tuple[int, int]]:
    return [(len(b.transactions) - 1, sum(len(tx.inputs) for tx in b.transactions[1:])) for b in blocks]


def build_full_chain(full_blocks: int, spare: int, progress: Callable[[str], None]) -> Chain:
    """Mature coinbases, fan them out, then `full_blocks` blocks filled to the size limit."""
    chain = ChainBuilder(REGTEST)
    spender = Spender([Key(REGTEST, f"chain-bench {i}") for i in range(KEYS)])
    chain.add_blocks(FANOUT_TXS + REGTEST.coinbase_maturity)
    fan_out(chain, spender, range(1, FANOUT_TXS + 1), FANOUT_OUTPUTS)
    limit = REGTEST.max_block_size - BLOCK_MARGIN
    for number in range(full_blocks):
        coinbase = chain.coinbase(fees=10**12)  # the widest amount it can carry: sizes from above
        empty = len(block_json(chain.assemble([coinbase], time=chain.tip.header.time + 1)))
        size, txs = empty, []
        available = len(spender.coins)  # spend outputs of earlier blocks only
        while available and size < limit:
            tx = spender.spend_oldest()
            available -= 1
            if size + 1 + tx.size > limit:
                spender.unspend_last()
                break
            txs.append(tx)
            size += 1 + tx.size
        block = chain.make_block(txs, fees=FEE * len(txs), time=chain.tip.header.time + 1)
        if block.size > REGTEST.max_block_size:
            raise BenchError(f"built a block of {block.size} bytes")
        chain.append(block, validate=False)
        for tx in txs:
            spender.add_outputs(tx)
        progress(f"full block {number + 1}/{full_blocks}: {len(txs)} transactions, {block.size:,} bytes")
    spares = [spender.spend_oldest() for _ in range(min(spare, len(spender.coins)))]
    blocks = chain.blocks[1:]
    return Chain("full", [block_json(b) for b in blocks], [canonical_json(tx.to_json()).decode() for tx in spares],
                 {"per_block": per_block_counts(blocks), "full_blocks": full_blocks,
                  "bytes": sum(b.size for b in blocks), "full_bytes": sum(b.size for b in blocks[-full_blocks:])})


def build_small_chain(height: int, txs_per_block: int, progress: Callable[[str], None]) -> Chain:
    """`height` blocks of a coinbase and `txs_per_block` 1-input/1-output transactions."""
    chain = ChainBuilder(REGTEST)
    spender = Spender([Key(REGTEST, f"chain-bench {i}") for i in range(KEYS)])
    chain.add_blocks(REGTEST.coinbase_maturity + 1)
    fan_out(chain, spender, [1], SMALL_FANOUT_OUTPUTS)
    while chain.height < height:
        txs = [spender.spend_oldest() for _ in range(txs_per_block)]
        chain.append(chain.make_block(txs, fees=FEE * len(txs), time=chain.tip.header.time + 1), validate=False)
        for tx in txs:
            spender.add_outputs(tx)
        if chain.height % 1000 == 0:
            progress(f"small blocks: {chain.height:,}/{height:,}")
    blocks = chain.blocks[1:]
    return Chain("small", [block_json(b) for b in blocks], [], {"per_block": per_block_counts(blocks),
                                                               "bytes": sum(b.size for b in blocks)})


def source_digest() -> str:
    """What the cached chains depend on: the rules and the builder's code."""
    digest = hashlib.sha256(str(CACHE_VERSION).encode())
    for path in sorted([*(ROOT / "protocol").rglob("*.py"), ROOT / "tests" / "chain_builder.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_chain(cache_dir: Path, name: str, params: dict, build: Callable[[], Chain],
                 progress: Callable[[str], None]) -> Chain:
    """The chain from cache_dir, or built now and stored there (one JSON line per block)."""
    key = hashlib.sha256(json.dumps([source_digest(), params], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"{name}-{key}.chain"
    if path.exists():
        with path.open(encoding="utf-8") as file:
            meta = json.loads(file.readline())
            blocks, spares = [], []
            for line in file:
                kind, text = line[0], line[2:].rstrip("\n")
                (blocks if kind == "B" else spares).append(text)
        progress(f"{name} chain: {len(blocks):,} blocks from {path}")
        return Chain(name, blocks, spares, meta)
    started = time.monotonic()
    chain = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as file:
        file.write(json.dumps(chain.meta) + "\n")
        file.writelines(f"B {text}\n" for text in chain.blocks)
        file.writelines(f"T {text}\n" for text in chain.spare_txs)
    partial.replace(path)
    progress(f"{name} chain: {len(chain.blocks):,} blocks built in {time.monotonic() - started:.1f} s, "
             f"cached in {path}")
    return chain


# -- node processes ----------------------------------------------------------------------------------

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:
    _LIBC = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in each child before exec: Linux sends it SIGTERM if the benchmark dies, even by SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return result


class Processes:
    """Every process this run started, so that all of them stop however the run ends."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, command: Sequence[str], log_path: Path) -> subprocess.Popen:
        with log_path.open("w") as log_file:  # the child keeps its own descriptor
            process = subprocess.Popen(list(command), stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=ROOT, preexec_fn=_die_with_parent)
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM) -> int | None:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self.running:
            self.running.remove(process)
        return process.returncode

    def stop_all(self) -> None:
        for process in list(self.running):
            self.stop(process)


class Node:
    """A `python node.py --network regtest` process on a free port of 127.0.0.1."""

    def __init__(self, processes: Processes, workdir: Path, name: str, *args: str) -> None:
        self.processes = processes
        self.name = name
        self.data_dir = workdir / name
        self.log_path = workdir / f"{name}.log"
        command = [sys.executable, str(ROOT / "node.py"), "--host", HOST, "--port", "0",
                   "--data-dir", str(self.data_dir), "--no-colour", *NODE_ARGS, *args]
        self.process = processes.start(command, self.log_path)
        match = wait_for(lambda: LISTENING.search(self.log()) or self.process.poll() is not None,
                         LISTEN_TIMEOUT, f"node {name} to listen")
        if not isinstance(match, re.Match):
            raise BenchError(f"node {name} exited with {self.process.returncode}:\n{self.log()[-2000:]}")
        self.listening_at = time.perf_counter()
        self.address = (match.group(1), int(match.group(2)))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def chain_db(self) -> Path:
        return self.data_dir / "regtest" / "chain.sqlite"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 30.0) -> WireClient:
        """A connection that has done the handshake as a regtest client (services 0)."""
        client = WireClient(self.address, timeout)
        client.handshake(network="regtest", genesis=REGTEST.genesis_id, user_agent="/chain-bench/")
        return client

    def cpu_seconds(self) -> float:
        """User + system time of the node and of its live child processes (the signature workers)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if stat.parent.name == str(self.pid) or fields[1] == str(self.pid):  # the node, or its child
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.processes.stop(self.process)


def chain_info(client: WireClient) -> BlockchainInfo:
    client.send("getblockchaininfo")
    info = client.recv_until("blockchaininfo")
    assert isinstance(info, BlockchainInfo)
    return info


def wait_for_height(client: WireClient, height: int, what: str, node: Node) -> BlockchainInfo:
    """Poll getblockchaininfo until the height is reached; BenchError if it stops moving for too long.

    The poll interval grows with the wait (POLL_FRACTION of it), so the clock is off by at most that fraction."""
    best, moved = -1, time.monotonic()
    started = time.monotonic()
    while True:
        info = chain_info(client)
        if info.height >= height:
            return info
        if info.height > best:
            best, moved = info.height, time.monotonic()
        elif time.monotonic() - moved > STALL_TIMEOUT:
            raise BenchError(f"{what}: stuck at height {info.height} of {height} for {STALL_TIMEOUT:g} s; "
                             f"{node.name}'s log ends:\n{node.log()[-3000:]}")
        if node.process.poll() is not None:
            raise BenchError(f"{what}: {node.name} exited:\n{node.log()[-3000:]}")
        time.sleep(max(POLL_INTERVAL, (time.monotonic() - started) * POLL_FRACTION))


def push_blocks(node: Node, blocks: Sequence[str], first_height: int) -> tuple[float, float]:
    """Hand blocks to a node as `block {json}` frames on one connection.

    (seconds until it has them all, the node's CPU seconds meanwhile)."""
    with node.client(timeout=STALL_TIMEOUT) as client:
        start, cpu = time.perf_counter(), node.cpu_seconds()
        batch: list[bytes] = []
        size = 0
        for text in blocks:
            frame = encode_frame("block " + text)
            batch.append(frame)
            size += len(frame)
            if size >= FEED_BATCH_BYTES:
                client.send_raw(b"".join(batch))
                batch, size = [], 0
        if batch:
            client.send_raw(b"".join(batch))
        client.sync_ping(timeout=STALL_TIMEOUT)  # the node handles one peer's frames in order
        elapsed, cpu = time.perf_counter() - start, node.cpu_seconds() - cpu
        info = chain_info(client)
    height = first_height + len(blocks) - 1
    if info.height != height:
        raise BenchError(f"pushed blocks up to {height}, {node.name} is at {info.height}; its log ends:\n"
                         f"{node.log()[-3000:]}")
    return elapsed, cpu


@dataclass(frozen=True)
class Sync:
    """Blocks connected by one node, and what it took."""

    blocks: int
    txs: int
    inputs: int
    seconds: float
    cpu_seconds: float  # the node's user + system time, all threads
    profile: "Profile | None" = None
    source_cpu_seconds: float = 0.0  # what serving the blocks cost the node synced from
    disconnects: int = 0  # connections the syncing node lost meanwhile (its log's [DISCONNECTED] lines)

    @property
    def blocks_per_s(self) -> float:
        return self.blocks / self.seconds

    @property
    def txs_per_s(self) -> float:
        return self.txs / self.seconds

    @property
    def inputs_per_s(self) -> float:
        return self.inputs / self.seconds

    @property
    def inputs_per_cpu_s(self) -> float:
        return self.inputs / self.cpu_seconds

    @property
    def s_per_1000(self) -> float:
        return self.seconds / self.blocks * 1000

    @property
    def cpu_s_per_1000(self) -> float:
        return self.cpu_seconds / self.blocks * 1000


class Profiler:
    """py-spy sampling a running process into collapsed stacks (its raw format)."""

    def __init__(self, processes: Processes, pid: int, out: Path, rate: int) -> None:
        self.processes, self.out, self.rate = processes, out, rate
        command = [py_spy(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                   "--nonblocking", "--output", str(out)]
        self.log_path = out.with_suffix(".log")
        self.process = processes.start(command, self.log_path)
        # It says so once it samples; until then the target runs unobserved.
        wait_for(lambda: "Sampling process" in self.log_path.read_text(errors="replace")
                 or self.process.poll() is not None, 10.0, "py-spy to attach")

    def finish(self) -> "Profile | None":
        self.processes.stop(self.process, signal.SIGINT)  # py-spy writes its file on SIGINT
        return Profile.read(self.out, self.rate) if self.out.exists() else None


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else (shutil.which("py-spy") or "")


def initial_block_download(processes: Processes, workdir: Path, name: str, source: Node, chain: Chain,
                           height: int, profile_rate: int = 0) -> Sync:
    """A fresh node syncs from `source` (it holds blocks 1..height); timed from listening to that height.

    With profile_rate, py-spy samples the new node meanwhile (from a moment after it listens)."""
    source_cpu = source.cpu_seconds()
    node = Node(processes, workdir, name, "--connect", f"{source.address[0]}:{source.address[1]}")
    profiler = Profiler(processes, node.pid, workdir / f"{name}.profile", profile_rate) if profile_rate else None
    profile = None
    try:
        with node.client() as client:
            info = wait_for_height(client, height, f"IBD into {name}", node)
            elapsed = time.perf_counter() - node.listening_at
            cpu, source_cpu = node.cpu_seconds(), source.cpu_seconds() - source_cpu
            disconnects = node.log().count("[DISCONNECTED]")  # while this client is still connected
        if info.tip != chain.tip_id(height):
            raise BenchError(f"{name} synced to {info.tip}, not the chain's block {chain.tip_id(height)}")
    finally:
        if profiler:
            profile = profiler.finish()
        node.stop()
    txs, inputs = chain.counts(height)
    return Sync(height, txs, inputs, elapsed, cpu, profile, source_cpu, disconnects)


# -- mempool -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MempoolRun:
    txs: int
    seconds: float
    cpu_seconds: float  # the node's
    replies: dict
    profile: "Profile | None"

    @property
    def per_s(self) -> float:
        return self.txs / self.seconds


def mempool_over_wire(processes: Processes, node: Node, spares: Sequence[str], workdir: Path,
                      profile_rate: int) -> MempoolRun:
    """Send the transactions as `tx` frames on one connection; timed until mempool_size is their number."""
    replies: Counter = Counter()
    with node.client() as sender, node.client() as poller:
        def drain() -> None:  # a person gets a txinfo (or an error) per transaction: read them
            try:
                while sum(replies.values()) < len(spares):
                    replies[sender.recv_message(timeout=STALL_TIMEOUT).command] += 1
            except (AssertionError, OSError):
                pass
        reader = threading.Thread(target=drain, name="drain", daemon=True)
        reader.start()
        before = chain_info(poller).mempool_size
        frames = b"".join(encode_frame("tx " + text) for text in spares)
        profiler = Profiler(processes, node.pid, workdir / "mempool.profile", profile_rate) if profile_rate else None
        start, cpu = time.perf_counter(), node.cpu_seconds()
        sender.send_raw(frames)
        last, moved = before, time.monotonic()
        while True:
            size = chain_info(poller).mempool_size
            if size >= before + len(spares):
                break
            if size > last:
                last, moved = size, time.monotonic()
            elif time.monotonic() - moved > STALL_TIMEOUT / 3:
                raise BenchError(f"mempool stuck at {size - before} of {len(spares)} (replies {dict(replies)})")
            time.sleep(POLL_INTERVAL)
        elapsed, cpu = time.perf_counter() - start, node.cpu_seconds() - cpu
        profile = profiler.finish() if profiler else None
        reader.join(timeout=STALL_TIMEOUT)
    return MempoolRun(len(spares), elapsed, cpu, dict(replies), profile)


def mempool_in_process(chain_db: Path, spares: Sequence[str]) -> Rate:
    """Mempool.accept of every transaction against a ChainStore (parsing them is not timed)."""
    txs = [Transaction.from_json(json.loads(text)) for text in spares]
    store = ChainStore(chain_db, REGTEST)
    try:
        mempool, tip = Mempool(REGTEST), store.height

        def accept_all() -> int:
            for tx in txs:
                mempool.accept(tx, store, tip)
            return len(txs)
        return timed(accept_all)
    finally:
        store.close()


# -- profiles -------------------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# The handler loop every message passes through: on every stack, so never informative.
GLUE = ("threading.py:", "socketserver.py:", "node.py:", "concurrent/futures/thread.py:")


@dataclass
class Profile:
    samples: int
    rate: int  # samples per second per thread
    inclusive: Counter  # function -> samples with it anywhere on the stack
    own: Counter  # function -> samples with it on top

    @classmethod
    def read(cls, path: Path, rate: int) -> "Profile":
        """py-spy's raw format: `frame;frame;...;frame COUNT` per distinct stack, outermost first."""
        inclusive, own, total = Counter(), Counter(), 0
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [py_spy_frame_name(frame) for frame in stack.split(";")]
            samples = int(count)
            total += samples
            for name in set(frames):
                inclusive[name] += samples
            own[frames[-1]] += samples
        return cls(total, rate, inclusive, own)

    def share(self, name: str, own: bool = False) -> float:
        return (self.own if own else self.inclusive)[name] / self.samples if self.samples else 0.0

    def seconds(self, name: str) -> float:
        """Thread-seconds with `name` on the stack."""
        return self.inclusive[name] / self.rate

    def project_functions(self) -> list[str]:
        """Functions of the node's own modules, most samples first, without the handler-loop glue."""
        return [name for name, _ in self.inclusive.most_common()
                if name.startswith(("roles/", "protocol/")) and not name.endswith(":<module>")]


def py_spy_frame_name(frame: str) -> str:
    """`check_inputs (protocol/consensus.py:171)` -> `protocol/consensus.py:check_inputs`."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match.group("file").removeprefix(str(ROOT) + "/")
    if "/lib/python" in file:
        file = file.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{file}:{match.group('func')}"


def profile_tables(title: str, profile: Profile) -> list[str]:
    lines = [f"\n{title}: {profile.samples:,} samples of running threads (py-spy --nonblocking, "
             f"{profile.rate}/s per thread, idle threads excluded)",
             "", "| node function (roles/, protocol/) | on the stack | own |", "|---|---|---|"]
    for name in profile.project_functions()[:PROFILE_ROWS]:
        lines.append(f"| `{name}` | {profile.share(name):.1%} | {profile.share(name, own=True):.1%} |")
    lines += ["", "| most own time (any code; C calls count for the Python function calling them) | share |",
              "|---|---|"]
    for name, count in profile.own.most_common(PROFILE_ROWS):
        lines.append(f"| `{name}` | {count / profile.samples:.1%} |")
    return lines


def growth_table(syncs: Sequence[Sync]) -> list[str]:
    """Thread-seconds per 1,000 blocks in each node function, at each chain length: what grows."""
    profiled = [sync for sync in syncs if sync.profile and sync.profile.samples]
    if len(profiled) < 2:
        return []
    lines = ["\nWhere the time per block grows: thread-seconds per 1,000 blocks with the function on the stack "
             "(samples / rate / blocks)",
             "", "| node function | " + " | ".join(f"{s.blocks:,} blocks" for s in profiled) + " | last/first |",
             "|---|" + "---|" * (len(profiled) + 1)]
    rows = [("(every sample)", [s.profile.samples / s.profile.rate / s.blocks * 1000 for s in profiled])]
    rows += [(f"`{name}`", [s.profile.seconds(name) / s.blocks * 1000 for s in profiled])
             for name in profiled[-1].profile.project_functions()[:PROFILE_ROWS]]
    for label, values in rows:
        growth = f"{values[-1] / values[0]:.2f}" if values[0] else "new"
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {growth} |")
    return lines


# -- the report ----------------------------------------------------------------------------------------


def rate(value: float) -> str:
    if value >= 100_000:
        return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1000:.0f}k"
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def spread(values: Sequence[float]) -> str:
    return f"{rate(statistics.median(values))} ({rate(min(values))}–{rate(max(values))})"


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # measurement, value, against the limit
    targets: list[tuple[str, str, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    results: list[plots.Row] = field(default_factory=list)  # the same figures for benchmarks/results/chain.json
    series: dict[str, plots.Series] = field(default_factory=dict)

    def row(self, what: str, value: str, ratio: str = "") -> None:
        self.rows.append((what, value, ratio))

    def target(self, label: str, text: str, met: bool) -> None:
        self.targets.append((label, text, met))

    def print(self) -> bool:
        print("\n| measurement | value | against the limit (same run) |")
        print("|---|---|---|")
        for what, value, ratio in self.rows:
            print(f"| {what} | {value} | {ratio} |")
        print()
        for note in self.notes:
            print(f"- {note}")
        print("\nTargets:")
        for label, text, met in self.targets:
            print(f"  {'PASS' if met else 'MISS'}  {label}: {text}")
        return all(met for _, _, met in self.targets)


# -- running it all ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    full_blocks: int  # blocks filled to the size limit
    mempool_txs: int
    small_sizes: tuple[int, ...]  # lengths of the small-block chains, shortest first
    small_txs_per_block: int = 3


DEFAULT = Settings(full_blocks=20, mempool_txs=2000, small_sizes=(1000, 3000, 10000))
QUICK = Settings(full_blocks=4, mempool_txs=500, small_sizes=(500, 2000))


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.1f}] {text}", flush=True)


def limit_inputs(chain: Chain) -> tuple[list[Triple], list[bytes]]:
    """Signature triples and headers from the chain itself: what the node verifies and hashes."""
    triples: list[Triple] = []
    for text in chain.blocks[-2:]:
        for tx in Block.from_json(json.loads(text)).transactions[1:]:
            check = tx.signature_check(0)
            triples.append((bytes.fromhex(check.pubkey), bytes.fromhex(check.signature), check.message_hash))
    headers = [BlockHeader.from_json(json.loads(text)["header"]).serialize() for text in chain.blocks[:2048]]
    return triples[:4096], headers


def measure(settings: Settings, cache_dir: Path, profile: bool, report: Report) -> list[str]:
    """Every measurement; the rows go into report, the profile tables are returned."""
    processes = Processes()
    full = cached_chain(cache_dir, "full", {"blocks": settings.full_blocks, "spare": settings.mempool_txs},
                        lambda: build_full_chain(settings.full_blocks, settings.mempool_txs, say), say)
    small = cached_chain(cache_dir, "small", {"height": max(settings.small_sizes),
                                              "txs": settings.small_txs_per_block},
                         lambda: build_small_chain(max(settings.small_sizes), settings.small_txs_per_block, say),
                         say)
    limits = Limits(*limit_inputs(full))
    say("limits, before the nodes")
    limits.sample()
    sampling = profile and bool(py_spy())
    profiles: list[str] = []
    growth: list[Sync] = []
    with tempfile.TemporaryDirectory(prefix="chain-bench-") as tmp:
        workdir = Path(tmp)
        try:
            # -- 2. full blocks: push into A, IBD into B
            a = Node(processes, workdir, "a")
            txs, inputs = full.counts()
            say(f"pushing {full.height} blocks ({full.meta['full_blocks']} full, {txs:,} transactions, "
                f"{full.meta['bytes'] / 1e6:.1f} MB) into A")
            push = Sync(full.height, txs, inputs, *push_blocks(a, full.blocks, 1))
            say(f"  {push.seconds:.1f} s")
            say("IBD of the full-block chain into B")
            ibd = initial_block_download(processes, workdir, "b", a, full, full.height)
            say(f"  {ibd.seconds:.1f} s")
            if sampling:
                say("the same IBD into B2, sampled by py-spy (not timed)")
                sampled = initial_block_download(processes, workdir, "b2", a, full, full.height, PROFILE_RATE)
                if sampled.profile:
                    profiles += profile_tables("B2, IBD of the full-block chain", sampled.profile)
            # -- 3. mempool, on A (B has stopped, so nothing relays)
            say(f"mempool: {len(full.spare_txs)} transactions to A as tx frames")
            wire = mempool_over_wire(processes, a, full.spare_txs, workdir, PROFILE_RATE if sampling else 0)
            if wire.profile:
                profiles += profile_tables("A, accepting the mempool transactions from the wire", wire.profile)
            a.stop()
            say("mempool: Mempool.accept in this process, against A's chain.sqlite")
            in_process = mempool_in_process(a.chain_db, full.spare_txs)
            # -- 4. growth with chain length, small blocks
            a_small = Node(processes, workdir, "a-small")
            fed = 0
            for size in settings.small_sizes:
                say(f"small blocks: pushing {fed + 1:,}..{size:,} into A-small")
                push_blocks(a_small, small.blocks[fed:size], fed + 1)
                fed = size
                say(f"small blocks: IBD of {size:,} into a fresh B" + (", sampled by py-spy" if sampling else ""))
                growth.append(initial_block_download(processes, workdir, f"b-{size}", a_small, small, size,
                                                     GROWTH_PROFILE_RATE if sampling else 0))
                say(f"  {growth[-1].seconds:.1f} s, {growth[-1].s_per_1000:.2f} s per 1,000 blocks")
            if growth[-1].profile:
                profiles += profile_tables(f"IBD of {growth[-1].blocks:,} small blocks", growth[-1].profile)
            profiles += growth_table(growth)
            a_small.stop()
        finally:
            processes.stop_all()
    say("limits, after the nodes")
    limits.sample()

    # -- the rows
    one_core, per_cpu = limits.verify_one_core, limits.verify_per_cpu_s
    report.row("raw verify, 1 thread (verify/s)", spread([r.per_s for r in limits.verify1]),
               f"{rate(per_cpu)} per CPU-second")
    report.row("raw verify, 2 threads (verify/s)", spread([r.per_s for r in limits.verify2]),
               f"{statistics.median(r.per_s for r in limits.verify2) / one_core:.2f}× 1 thread")
    report.row("sha256d of 80-byte headers, 1 thread (hashes/s)", spread([r.per_s for r in limits.sha256d]),
               f"{rate(statistics.median(r.per_cpu_s for r in limits.sha256d))} per CPU-second")
    full_blocks = full.meta["full_blocks"]
    report.row("full-block chain", f"{full.height} blocks: {full_blocks} full ones of "
               f"{full.meta['full_bytes'] / full_blocks:,.0f} bytes on average (limit {REGTEST.max_block_size:,}), "
               f"{txs:,} transactions, {inputs:,} inputs, {full.meta['bytes'] / 1e6:.1f} MB")
    for label, sync in (("push into A, one connection", push), ("IBD A → B", ibd)):
        report.row(f"{label}: blocks/s", f"{sync.blocks_per_s:.2f} ({sync.seconds:.1f} s)")
        report.row(f"{label}: transactions/s", rate(sync.txs_per_s))
        report.row(f"{label}: inputs verified/s", rate(sync.inputs_per_s),
                   f"**{sync.inputs_per_s / one_core:.2f}×** 1-thread raw verify/s")
        report.row(f"{label}: inputs per CPU-second of the node", rate(sync.inputs_per_cpu_s),
                   f"{sync.inputs_per_cpu_s / per_cpu:.2f}× raw verifies per CPU-second")
    report.row("IBD A → B: CPU seconds per block, B / A (serving)",
               f"{ibd.cpu_seconds / ibd.blocks:.2f} / {ibd.source_cpu_seconds / ibd.blocks:.2f}",
               f"B busy {ibd.cpu_seconds / ibd.seconds:.0%} of the wall time, A {ibd.source_cpu_seconds / ibd.seconds:.0%}")
    n = wire.txs
    report.row(f"mempool over the wire: {n:,} `tx` frames to A (tx/s)", rate(wire.per_s),
               f"{wire.per_s / one_core:.2f}× 1-thread raw verify/s")
    report.row("mempool over the wire: per CPU-second of A", rate(n / wire.cpu_seconds) if wire.cpu_seconds else "n/a",
               f"{n / wire.cpu_seconds / per_cpu:.2f}× raw verifies per CPU-second" if wire.cpu_seconds else "")
    report.row(f"mempool in process: Mempool.accept × {n:,} (tx/s)", rate(in_process.per_s),
               f"{in_process.per_s / one_core:.2f}× 1-thread raw verify/s")
    for sync in growth:
        report.row(f"IBD of {sync.blocks:,} small blocks ({settings.small_txs_per_block} tx + coinbase)",
                   f"{sync.seconds:.1f} s: **{sync.s_per_1000:.2f} s per 1,000** ({sync.blocks_per_s:.0f} blocks/s)",
                   f"CPU per 1,000: B {sync.cpu_s_per_1000:.2f} s, A (serving) "
                   f"{sync.source_cpu_seconds / sync.blocks * 1000:.2f} s")
    first, last = growth[0], growth[-1]
    growth_ratio = last.s_per_1000 / first.s_per_1000
    report.row(f"growth: time per 1,000 blocks at {last.blocks:,} / at {first.blocks:,}", f"**{growth_ratio:.2f}**",
               f"B's CPU: {last.cpu_s_per_1000 / first.cpu_s_per_1000:.2f}")
    report.notes += [
        "raw verify: `coincurve.PublicKey(pubkey).verify(signature, hash, hasher=None)` over 4,096 (pubkey, "
        "signature, hash) triples of the chain; sha256d: `sha256(sha256(h).digest()).digest()` over its headers; "
        f"{LIMIT_SAMPLES} samples before and {LIMIT_SAMPLES} after the nodes, median (min–max)",
        "transactions and inputs exclude coinbases; IBD time runs from B listening to B's height matching A's; "
        "CPU-second figures use the node's user + system time, its signature workers' included (/proc), and this thread's for the limit",
        f"mempool replies from A to the sending client: {wire.replies}",
        "connections lost by the syncing node during its IBD: "
        + ", ".join(f"{s.blocks:,} blocks: {s.disconnects}" for s in [ibd, *growth]),
    ]
    if sampling:
        report.notes.append(f"the small-block IBDs were sampled by py-spy --nonblocking at {GROWTH_PROFILE_RATE}/s "
                            "(every length alike); the full-block IBD and push were not (a separate run was)")
    ratio = ibd.inputs_per_s / one_core
    report.target(f"IBD inputs verified/s ≥ {IBD_VERIFY_TARGET:g}× one-core raw verify/s", f"{ratio:.2f}×",
                  ratio >= IBD_VERIFY_TARGET)
    report.target(f"IBD time per 1,000 blocks at {last.blocks:,} ≤ {GROWTH_TARGET:g}× at {first.blocks:,}",
                  f"{growth_ratio:.2f}×", growth_ratio <= GROWTH_TARGET)
    record_results(report, limits, {"push into A": push, "IBD A → B": ibd}, wire, in_process, growth)
    return profiles


def record_results(report: Report, limits: Limits, syncs: dict[str, Sync], wire: MempoolRun, in_process: Rate,
                   growth: Sequence[Sync]) -> None:
    """The figures of the report as rows and a growth series, for benchmarks/results/chain.json."""
    one_core, per_cpu = limits.verify_one_core, limits.verify_per_cpu_s
    against = plots.Row.against
    rows = [
        against("raw verify, 1 thread", one_core, "verify/s", None, ""),
        against("raw verify, 2 threads", statistics.median(r.per_s for r in limits.verify2), "verify/s",
                one_core, "1 thread"),
        against("sha256d of 80-byte headers, 1 thread", statistics.median(r.per_s for r in limits.sha256d),
                "hashes/s", None, ""),
    ]
    for label, sync in syncs.items():
        target = f"≥ {IBD_VERIFY_TARGET:g}×" if sync is syncs["IBD A → B"] else None
        rows += [
            against(f"{label}: blocks/s", sync.blocks_per_s, "blocks/s", None, ""),
            against(f"{label}: inputs verified/s", sync.inputs_per_s, "inputs/s", one_core,
                    "1-thread raw verify", target),
            against(f"{label}: inputs per CPU-second of the node", sync.inputs_per_cpu_s, "inputs/CPU-s",
                    per_cpu, "raw verify per CPU-s"),
        ]
    rows.append(against(f"mempool over the wire: {wire.txs:,} tx frames to A", wire.per_s, "tx/s", one_core,
                        "1-thread raw verify"))
    if wire.cpu_seconds:
        rows.append(against("mempool over the wire: per CPU-second of A", wire.txs / wire.cpu_seconds,
                            "tx/CPU-s", per_cpu, "raw verify per CPU-s"))
    rows.append(against(f"mempool in process: Mempool.accept × {wire.txs:,}", in_process.per_s, "tx/s",
                        one_core, "1-thread raw verify"))
    first, last = growth[0], growth[-1]
    for sync in growth:  # each length against the shortest: linear IBD keeps the ratio at 1
        shortest = first.s_per_1000 if sync is not first else None
        rows.append(against(f"IBD of {sync.blocks:,} small blocks: time per 1,000 blocks", sync.s_per_1000, "s",
                            shortest, f"the same at {first.blocks:,} blocks",
                            f"≤ {GROWTH_TARGET:g}×" if sync is last else None))
    report.results += rows
    report.series["ibd-growth"] = plots.Series(
        x_label="chain length (blocks)", y_label="IBD time per 1,000 blocks (s)",
        points=[(sync.blocks, round(sync.s_per_1000, 3)) for sync in growth],
        title=f"IBD time per 1,000 small blocks, from {first.blocks:,} to {last.blocks:,} blocks",
        limit=GROWTH_TARGET * first.s_per_1000,
        limit_label=f"target: ≤ {GROWTH_TARGET:g}× the time at {first.blocks:,} blocks (flat = linear IBD)")
    report.series["ibd-cpu-growth"] = plots.Series(  # less moved by other work on the machine than the wall time
        x_label="chain length (blocks)", y_label="B's CPU time per 1,000 blocks (s)",
        points=[(sync.blocks, round(sync.cpu_s_per_1000, 3)) for sync in growth],
        title=f"CPU time of the syncing node per 1,000 small blocks, {first.blocks:,} to {last.blocks:,} blocks",
        limit=GROWTH_TARGET * first.cpu_s_per_1000,
        limit_label=f"{GROWTH_TARGET:g}× the CPU time at {first.blocks:,} blocks")


def run(settings: Settings, cache_dir: Path, profile: bool) -> bool:
    started = time.monotonic()
    say(f"epscoin {plots.source_commit()}, Python {platform.python_version()}, coincurve {version('coincurve')}, "
        f"{os.cpu_count()} CPUs" + ("" if not profile or py_spy() else "; no py-spy: no profiles"))
    report = Report()
    profiles = measure(settings, cache_dir, profile, report)
    print(f"\n{time.monotonic() - started:.0f} s in all; load average at the end {os.getloadavg()[0]:.2f}")
    for line in profiles:
        print(line)
    all_met = report.print()
    path = plots.write_results(plots.Results("chain", plots.RunInfo.now(), report.results, report.series))
    print(f"\nresults: {path.relative_to(ROOT)}")
    plots.main(["chain"])
    return all_met


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Measure block validation, IBD and mempool acceptance.")
    parser.add_argument("--quick", action="store_true", help="smaller chains, under a minute")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="no py-spy sampling")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "epscoin-chain-bench",
                        help="where built chains are kept between runs (default: $TMPDIR/epscoin-chain-bench)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop every node
    try:
        all_met = run(QUICK if args.quick else DEFAULT, args.cache_dir, args.profile)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
