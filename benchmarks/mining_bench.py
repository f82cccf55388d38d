"""Mining benchmark: the mining role's hash rate, and the node's ping time while it mines, next to the limits.

    python benchmarks/mining_bench.py              # the full run: 3 repetitions, 3 to 5 minutes
    python benchmarks/mining_bench.py --quick      # 1 shorter repetition, about 1.5 minutes
    python benchmarks/mining_bench.py --no-profile --no-wallet

The first run also builds a demo-network chain (30 to 60 s), cached after that.

One run measures, on real `node.py --network demo` processes talking over 127.0.0.1:

1. The limits, in this process, on one core: a plain sha256d loop over one
   80-byte header (`sha256(sha256(header).digest()).digest()`), and the same
   with a midstate: `sha256(header[:64])` once, then per hash a `copy()`, an
   `update()` with the last 16 bytes and the outer `sha256`. Interleaved with
   them, `roles.mining.search` itself (the worker loop) in a thread, given a
   job whose target no hash meets, counted by its own report. The midstate
   loop and the worker loop also run in two processes at once. All of it is
   sampled before and after the nodes; the median is the figure.
2. The mining role in a node: a fresh node on the demo network, on a cached
   chain whose difficulty is high enough (about 4.2 M hashes a block, a few
   seconds per worker, not the genesis's 65,536) that the workers hash without
   pause, with `--mining-workers 1` and `2`. The hash rate is the workers' own
   counts, read from the node's `getmininginfo` answers (see NodeMining), and
   per CPU-second of the workers (/proc). It is compared with the midstate
   loop sampled just before and just after each mining node.
3. Ping round trips: a non-mining node on the same chain (idle), then each
   mining node: median and p95 of many `ping`/`pong` round trips over a
   WireClient with a short pause between pings; the ratio to idle.
4. A wallet payment (`wallet_send_latency`): `peer_client.py --wallet` sends
   `/send` through a wallet-services node; a 1-worker miner and a plain node
   are its peers; timed until the plain node's `gettx` shows it in a block.
5. Where a worker's time goes: py-spy (if installed) samples the worker loop
   line by line, in a process of its own (not timed).

Why like this: the machine is shared and absolute rates drift by tens of
percent, so the limits are measured in the same run, next to what they limit,
the node configurations rotate their order from one repetition to the next,
and the targets are ratios; the per-CPU-second figures are the ones that other
work on the machine moves least. Everything runs on 127.0.0.1, every wait has
a timeout, and every process started is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: benchmarks.* and tests.* sit beside the node's packages

from benchmarks import plots  # noqa: E402
from benchmarks.chain_bench import (STOP_TIMEOUT, BenchError, Chain, Processes, Rate, block_json,  # noqa: E402
                                    cached_chain, chain_info, py_spy, rate, rounds_for, say, sha256d_loop,
                                    timed, wait_for)
from protocol.block import HEADER_PREFIX_SIZE, BlockHeader, work_for  # noqa: E402
from protocol.framing import encode_frame  # noqa: E402
from protocol.messages import Error, MiningInfo, TxInfo  # noqa: E402
from protocol.networks import NETWORKS  # noqa: E402
from roles.mining import HASHRATE_WINDOW, TEMPLATE_REFRESH, Job, search  # noqa: E402
from roles.wallet.keystore import Keystore, StoredKey  # noqa: E402
from tests.chain_builder import ChainBuilder, Key  # noqa: E402
from tests.support import LISTENING, WireClient  # noqa: E402

DEMO = NETWORKS["demo"]
HOST = "127.0.0.1"
# Blocks 1..59 one second apart: each of the three retargets (at 20, 40, 60) makes the work 4x
# (the clamp), so block 60 needs ~4.2 M hashes, a few seconds per worker, not the genesis's 65,536.
CHAIN_HEIGHT = 3 * DEMO.retarget_interval - 1
NODE_ARGS = ("--network", "demo", "--outbound", "0", "--no-fixed-seeds")  # dial nobody: no demo network's seed
MINING_ROLES = "routing,blockchain,chat,mining"
IMPOSSIBLE = 0  # a target no hash meets: the worker loop runs its whole range of nonces
LIMIT_SECONDS = 0.5  # seconds of each limit sample
LIMIT_SAMPLES = 3  # limit samples before and after the node measurements
WORKER_SECONDS = 2.0  # seconds of each isolated worker-loop sample
ADJACENT_SECONDS = 0.5  # seconds (on a quiet machine) of the limit sample before and after each mining node
LISTEN_TIMEOUT = 30.0  # seconds for a node to print its listening line
FIRST_REPORT_TIMEOUT = 3 * TEMPLATE_REFRESH  # a worker reports at the latest when its template is refreshed
SUM_POLL = 0.05  # seconds between two getmininginfo polls while the hash rate is measured
SUM_SPAN = HASHRATE_WINDOW - 0.5  # the first report leaves the node's window after HASHRATE_WINDOW s
ROUND_SECONDS = 0.25  # the workers' reports of one job change arrive within this (a block is stored in between)
PING_GAP = 0.002  # seconds between pings: the node is asked now and then, as a person's client does
PROFILE_RATE = 200  # py-spy samples per second of the worker loop
CHAIN_KEY = "mining-bench"  # the seed of the key the chain's coinbases pay (and the miners, and the wallet)
WALLET_PASSPHRASE = "mining benchmark"  # the benchmark's own throwaway wallet
PAYEE = Key(DEMO, "mining-bench payee").address
PAYMENT = "0.5"  # EPS per /send
SENT = re.compile(r"^sent ([0-9a-f]{64})$")
PAYMENT_TIMEOUT = 120.0  # seconds for one payment to be confirmed on the peer
PAYMENT_POLL = 0.02  # seconds between two gettx polls while a payment is watched
HASH_TARGET = 0.8  # the mining role's hash rate per worker, at least this times the midstate loop's
RTT_TARGET = 3.0  # ping round trips while mining, at most this times the idle node's


# -- 1. the limits -------------------------------------------------------------------------------------


def midstate_loop(header: bytes, count: int) -> int:
    """sha256d of one 80-byte header `count` times, its first 64-byte block hashed once (the midstate)."""
    sha256 = hashlib.sha256
    midstate, tail = sha256(header[:64]), header[64:]
    for _ in range(count):
        inner = midstate.copy()
        inner.update(tail)
        sha256(inner.digest()).digest()
    return count


def midstate_in_process(header: bytes, count: int) -> Rate:
    """The midstate loop in a pool process, timed there (wall clock and that process's CPU)."""
    return timed(lambda: midstate_loop(header, count))


def midstate_on_processes(pool: ProcessPoolExecutor, header: bytes, count: int, processes: int) -> Rate:
    """`processes` midstate loops at once: total hashes over the slowest one's time."""
    rates = [future.result() for future in [pool.submit(midstate_in_process, header, count)
                                            for _ in range(processes)]]
    return Rate(sum(r.count for r in rates), max(r.seconds for r in rates), sum(r.cpu_seconds for r in rates))


def search_here(prefix: bytes, nonces: int) -> Rate:
    """roles.mining.search itself, over `nonces` nonces no hash meets, in a thread of this process.

    A thread of its own, because search() lowers its own priority (os.nice, per
    thread on Linux) and must not lower the limit loops'. This thread plays the
    miner's side of the pipe: it sends the job, waits for the report (blocked,
    so it takes no CPU), then the stop. Sending the stop any earlier would make
    search() see a waiting message and end the job.
    """
    ours, theirs = multiprocessing.Pipe()
    rates: list[Rate] = []

    def hash_the_job() -> int:
        search(theirs)  # returns at the stop, after its report
        return nonces

    def worker() -> None:
        rates.append(timed(hash_the_job))

    thread = threading.Thread(target=worker, name="bench-search", daemon=True)
    ours.send(Job(1, prefix, IMPOSSIBLE, 0, nonces - 1))
    thread.start()
    job_report(ours, nonces)
    ours.send(None)
    thread.join()
    return rates[0]


def job_report(pipe: multiprocessing.connection.Connection, nonces: int) -> int:
    """The hashes a worker reported, once it has reported all of a job's `nonces` impossible nonces."""
    done = 0
    while done < nonces:
        done += report_hashes(pipe, nonces - done)
    return done


def report_hashes(pipe: multiprocessing.connection.Connection, left: int) -> int:
    """The hashes in a worker's next report (a job may be counted in several: progress, then the end)."""
    _, found, hashes = pipe.recv()
    if (found is not None and found >= 0) or hashes > left:  # a negative "nonce" would mark a progress count
        raise BenchError(f"a worker reported nonce {found} and {hashes} hashes with {left} impossible nonces left")
    return hashes


@dataclass
class Limits:
    """The plain loops and the worker loop, in this process, sampled before and after the node measurements."""

    header: bytes
    naive: list[Rate] = field(default_factory=list)
    midstate: list[Rate] = field(default_factory=list)
    search: list[Rate] = field(default_factory=list)  # roles.mining.search in this thread
    midstate2: list[Rate] = field(default_factory=list)  # two processes at once

    def sample(self, pool: ProcessPoolExecutor) -> None:
        prefix = self.header[:HEADER_PREFIX_SIZE]
        naive_rounds = rounds_for(LIMIT_SECONDS, lambda: sha256d_loop([self.header], 10_000)) * 10_000
        mid_rounds = rounds_for(LIMIT_SECONDS, lambda: midstate_loop(self.header, 10_000)) * 10_000
        search_nonces = rounds_for(LIMIT_SECONDS, lambda: search_here(prefix, 10_000)) * 10_000
        for _ in range(LIMIT_SAMPLES):  # interleaved, so a burst of other work hits each of them
            self.naive.append(timed(lambda: sha256d_loop([self.header], naive_rounds)))
            self.midstate.append(timed(lambda: midstate_loop(self.header, mid_rounds)))
            self.search.append(search_here(prefix, search_nonces))
            self.midstate2.append(midstate_on_processes(pool, self.header, mid_rounds, 2))

    @property
    def one_core(self) -> float:
        """Hashes per second of the midstate loop on one core: what every hash-rate target is a ratio of."""
        return statistics.median(r.per_s for r in self.midstate)

    @property
    def one_per_cpu(self) -> float:
        """The same per CPU-second: what other work on the machine moves least."""
        return statistics.median(r.per_cpu_s for r in self.midstate)

    @property
    def two_per_cpu(self) -> float:
        """Hashes per CPU-second of each of two midstate loops at once (two cores may not be two whole cores)."""
        return statistics.median(r.per_cpu_s for r in self.midstate2)


# -- 1b. the worker loop in spawned processes, two at once ---------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Workers:
    """roles.mining.search in spawned processes, as MiningRole.start makes them, each with its pipe."""

    count: int
    processes: list[multiprocessing.process.BaseProcess] = field(default_factory=list)
    pipes: list[multiprocessing.connection.Connection] = field(default_factory=list)

    def __enter__(self) -> "Workers":
        context = multiprocessing.get_context("spawn")
        for index in range(self.count):
            ours, theirs = context.Pipe()
            process = context.Process(target=search, args=(theirs,), name=f"bench-miner-{index}", daemon=True)
            process.start()
            self.processes.append(process)
            self.pipes.append(ours)
        return self

    def __exit__(self, *exc: object) -> None:
        for process, pipe in zip(self.processes, self.pipes):
            try:
                pipe.send(None)  # search() returns on None
            except OSError:
                pass
            process.join(timeout=STOP_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join()

    def run(self, prefix: bytes, nonces: int, job_id: int) -> list[Rate]:
        """Each worker searches `nonces` nonces that cannot succeed; its own count over its own time."""
        started, cpu = time.perf_counter(), [cpu_seconds(p.pid) for p in self.processes]
        for index, pipe in enumerate(self.pipes):
            pipe.send(Job(job_id, prefix, IMPOSSIBLE, index * nonces, (index + 1) * nonces - 1))
        rates: dict[int, Rate] = {}
        done = [0] * self.count
        while len(rates) < self.count:
            ready = multiprocessing.connection.wait([p for i, p in enumerate(self.pipes) if i not in rates],
                                                    timeout=60 * WORKER_SECONDS)
            if not ready:
                raise BenchError("a worker did not finish its range of nonces")
            for pipe in ready:
                index = self.pipes.index(pipe)
                done[index] += report_hashes(pipe, nonces - done[index])
                if done[index] == nonces:
                    rates[index] = Rate(nonces, time.perf_counter() - started,
                                        cpu_seconds(self.processes[index].pid) - cpu[index])
        return [rates[i] for i in range(self.count)]


@dataclass(frozen=True)
class WorkerSample:
    """One run of `count` workers at once."""

    rates: list[Rate]

    @property
    def per_s(self) -> float:
        """All workers together, each at its own rate."""
        return sum(r.per_s for r in self.rates)

    @property
    def per_cpu_s(self) -> float:
        """Hashes per CPU-second of one worker (the workers' average)."""
        return sum(r.count for r in self.rates) / sum(r.cpu_seconds for r in self.rates)


def sample_worker_loop(prefix: bytes, workers: int, nonces: int, samples: int) -> list[WorkerSample]:
    with Workers(workers) as pool:
        pool.run(prefix, 1, job_id=0)  # the processes have started and imported everything
        return [WorkerSample(pool.run(prefix, nonces, job_id=1 + i)) for i in range(samples)]


# -- 2. and 3. the mining role in a node, and pings to it ----------------------------------------------


class DemoNode:
    """A `python node.py --network demo` process on a free port of 127.0.0.1 that dials nobody."""

    def __init__(self, processes: Processes, data_dir: Path, *args: str) -> None:
        self.processes = processes
        self.name = data_dir.name
        self.log_path = data_dir.with_suffix(".log")
        command = [sys.executable, str(ROOT / "node.py"), "--host", HOST, "--port", "0", "--data-dir", str(data_dir),
                   "--no-colour", *NODE_ARGS, *args]
        self.process = processes.start(command, self.log_path)
        match = wait_for(lambda: LISTENING.search(self.log()) or self.process.poll() is not None,
                         LISTEN_TIMEOUT, f"node {self.name} to listen")
        if not isinstance(match, re.Match):
            raise BenchError(f"node {self.name} exited with {self.process.returncode}:\n{self.log()[-2000:]}")
        self.address = (match.group(1), int(match.group(2)))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 30.0) -> WireClient:
        """A connection that has done the handshake as a demo-network client (services 0)."""
        client = WireClient(self.address, timeout)
        client.handshake(network="demo", genesis=DEMO.genesis_id, user_agent="/mining-bench/")
        return client

    def worker_pids(self) -> list[int]:
        """The mining worker processes: children started by multiprocessing's spawn (not its resource tracker)."""
        children = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            children += [int(pid) for pid in (task / "children").read_text().split()]
        return [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    def stop(self) -> None:
        self.processes.stop(self.process)


def build_chain(progress: Callable[[str], None]) -> Chain:
    """Demo blocks 1..CHAIN_HEIGHT, one second apart, mined here (the builder's midstate loop)."""
    chain = ChainBuilder(DEMO, miner=Key(DEMO, CHAIN_KEY))
    progress(f"building {CHAIN_HEIGHT} demo blocks (about 28 M hashes in all; cached after this run)")
    for height in range(1, CHAIN_HEIGHT + 1):
        chain.add_block()
        if height % DEMO.retarget_interval == 0:
            progress(f"  {height}/{CHAIN_HEIGHT}")
    blocks = chain.blocks[1:]
    return Chain("demo", [block_json(b) for b in blocks], [], {"tip_bits": chain.next_bits()})


def make_snapshot(processes: Processes, chain: Chain, data_dir: Path) -> None:
    """A node's data directory holding the chain: blocks handed to a plain node, which then stops."""
    node = DemoNode(processes, data_dir)
    try:
        with node.client() as client:
            client.send_raw(b"".join(encode_frame("block " + text) for text in chain.blocks))
            client.sync_ping(timeout=LISTEN_TIMEOUT)  # the node handles one peer's frames in order
            height = chain_info(client).height
        if height != chain.height:
            raise BenchError(f"the node took the chain to height {height}, not {chain.height}:\n{node.log()[-2000:]}")
    finally:
        node.stop()


def mining_info(client: WireClient) -> MiningInfo:
    client.send("getmininginfo")
    info = client.recv_until("mininginfo")
    assert isinstance(info, MiningInfo)
    return info


@dataclass(frozen=True)
class Poll:
    """One getmininginfo answer, and the workers' CPU seconds read just after it."""

    at: float  # perf_counter seconds
    hashrate: float
    blocks_found: int
    worker_cpu: float  # all workers together


@dataclass(frozen=True)
class NodeMining:
    """One mining node's hash-rate phase, read from the node's own counts.

    On a fresh node, for its first HASHRATE_WINDOW seconds, the node answers
    getmininginfo with S / (now - t0): S every hash its workers have reported,
    t0 a fixed moment (the first report, as roles/mining.py counts now; the
    start of mining, with the fix proposed in benchmarks/mining-results.md).
    Between two reports S stays put, so the answers fall as 1 / (now - t0); a
    report makes them jump up. Fitting hashrate x now = S + t0 x hashrate over
    the answers between two reports gives t0, and then S after every report
    (from any answer: S = hashrate x (now - t0)). A worker reports the hashes of its
    job when the job ends (its block was found, or the template was replaced),
    and all workers get the new job together, so from the first round of
    reports to the last, S grew by exactly the hashes done in between.
    """

    workers: int
    polls: list[Poll]  # every SUM_POLL seconds, from the first answer with a non-zero hash rate
    work_per_block: int

    def in_window(self) -> list[Poll]:
        """The answers while the first report is still in the node's window (S is then every hash reported)."""
        return [p for p in self.polls if p.at - self.polls[0].at < SUM_SPAN]

    def segments(self) -> list[list[Poll]]:
        """The answers between two reports, in order: a report raises the rate, which falls otherwise."""
        valid = self.in_window()
        runs = [[valid[0]]]
        for before, poll in zip(valid, valid[1:]):
            if poll.hashrate > before.hashrate:
                runs.append([])
            runs[-1].append(poll)
        return runs

    def first_report_at(self) -> float:
        """t0, fitted (least squares) over the longest run of answers between two reports."""
        run = max(self.segments(), key=len)
        if len(run) < 3:
            raise BenchError("too few getmininginfo answers between two reports to read the node's counts")
        x = [p.hashrate for p in run]
        y = [p.hashrate * p.at for p in run]
        mean_x, mean_y = statistics.fmean(x), statistics.fmean(y)
        return sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / sum((a - mean_x) ** 2 for a in x)

    def rounds(self) -> list[tuple[Poll, Poll, float]]:
        """(the first and the last answer showing a round of reports, S after the round), for every round."""
        t0 = self.first_report_at()
        found: list[tuple[Poll, Poll, float]] = []
        for run in self.segments():
            reported = statistics.median(p.hashrate * (p.at - t0) for p in run)
            if found and run[0].at - found[-1][1].at <= ROUND_SECONDS:
                found[-1] = (found[-1][0], run[0], reported)  # another worker's report of the same round
            else:
                found.append((run[0], run[0], reported))
        if found and self.in_window()[-1].at - found[-1][1].at <= ROUND_SECONDS:
            found.pop()  # the phase ended inside this round: some of its reports may be missing
        return found

    def _span(self) -> tuple[float, float, float]:
        """(hashes, seconds, workers' CPU seconds) from the first round of reports to the last."""
        rounds = self.rounds()
        if len(rounds) < 2:
            raise BenchError("the workers reported only once in the phase: make it longer")
        (first, _, first_sum), (_, last, last_sum) = rounds[0], rounds[-1]
        # The first answer came within milliseconds of the first report (polled every 2 ms); a later
        # report came at some moment in the SUM_POLL before the answer that showed it.
        seconds = last.at - SUM_POLL / 2 - first.at
        return last_sum - first_sum, seconds, last.worker_cpu - first.worker_cpu

    @property
    def per_s(self) -> float:
        """Hashes per second of all workers together."""
        hashes, seconds, _ = self._span()
        return hashes / seconds

    @property
    def per_cpu_s(self) -> float:
        """Hashes per CPU-second of the workers."""
        hashes, _, cpu = self._span()
        return hashes / cpu if cpu else float("nan")

    @property
    def busy(self) -> float:
        """The workers' average share of a core."""
        _, seconds, cpu = self._span()
        return cpu / self.workers / seconds

    def as_reported(self) -> list[float]:
        """What getmininginfo said, once a second, once its window is full (the steady state)."""
        shown, next_at = [], self.polls[0].at + HASHRATE_WINDOW
        for poll in self.polls:
            if poll.at >= next_at:
                shown.append(poll.hashrate)
                next_at += 1.0
        return shown

    @property
    def blocks(self) -> int:
        return self.polls[-1].blocks_found - self.polls[0].blocks_found


def hash_phase(node: DemoNode, client: WireClient, workers: int, seconds: float, work_per_block: int) -> NodeMining:
    """Wait for the workers' first report, then poll getmininginfo and their CPU time for `seconds`."""
    def all_workers() -> list[int]:
        pids = node.worker_pids()
        return pids if len(pids) == workers else []

    pids = wait_for(all_workers, LISTEN_TIMEOUT, f"{node.name}'s {workers} worker processes")

    def poll() -> Poll:
        info = mining_info(client)
        return Poll(time.perf_counter(), info.hashrate, info.blocks_found, sum(cpu_seconds(pid) for pid in pids))

    def reported() -> Poll | None:
        answer = poll()
        return answer if answer.hashrate > 0 else None

    first = wait_for(reported, FIRST_REPORT_TIMEOUT, f"{node.name}'s first hash report", interval=0.002)
    assert first is not None  # wait_for returns only a truthy result
    polls = [first]
    while polls[-1].at - first.at < seconds:
        time.sleep(SUM_POLL)
        polls.append(poll())
    return NodeMining(workers, polls, work_per_block)


def ping_rtts(client: WireClient, count: int) -> list[float]:
    """Round-trip seconds of `count` pings, a short pause between them; each pong's nonce is checked."""
    rtts = []
    for nonce in range(count):
        start = time.perf_counter()
        client.sync_ping(nonce=nonce)
        rtts.append(time.perf_counter() - start)
        time.sleep(PING_GAP)
    return rtts


# -- 4. a wallet payment, from /send to confirmed on a peer --------------------------------------------


@dataclass(frozen=True)
class Payment:
    """One /send, timed from the line written to the wallet's standard input (perf_counter seconds after it)."""

    sent: float  # the wallet printed "sent TXID": signed, and handed to its node
    in_miner_mempool: float
    confirmed_on_miner: float  # the miner found a block holding it
    confirmed_on_peer: float  # the latency: a third node has that block


@dataclass(frozen=True)
class WalletRun:
    payments: list[Payment]
    block_interval: float  # mean seconds between the miner's blocks while the payments were made


class WalletClient:
    """`python peer_client.py HOST:PORT --wallet FILE` kept running, fed lines on its standard input."""

    def __init__(self, address: tuple[str, int], wallet: Path) -> None:
        command = [sys.executable, "-u", str(ROOT / "peer_client.py"), f"{address[0]}:{address[1]}",
                   "--wallet", str(wallet), "--no-colour"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                        env={**os.environ, "EPSCOIN_PASSPHRASE": WALLET_PASSPHRASE})
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, name="bench-wallet-output", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def command(self, line: str, answer: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Write a line; the first output line matching `answer` (BenchError on a timeout or an error line)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                text = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if text.startswith("error:"):
                raise BenchError(f"the wallet answered {line!r} with: {text}")
            if match := answer.search(text):
                return match
        raise BenchError(f"no answer to {line!r} from the wallet within {timeout:g} s")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.communicate("/quit\n", timeout=STOP_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def bench_wallet(path: Path) -> None:
    """A wallet file holding the key the snapshot chain's coinbases pay: 49 of them mature already.

    Made with the wallet's own Keystore, so the payments need not wait for new coins to mature."""
    keystore = Keystore.create(path, WALLET_PASSPHRASE, DEMO.name)
    keystore.keep(StoredKey(Key(DEMO, CHAIN_KEY).private.secret, int(time.time()), "receive"))


def tx_confirmations(client: WireClient, txid: str) -> int | None:
    """None while the node does not know the transaction, 0 in its mempool, else its confirmations."""
    client.send(f'gettx {{"txid":"{txid}"}}')
    while True:
        message = client.recv_message()
        if isinstance(message, TxInfo) and message.txid == txid:
            return message.confirmations
        if isinstance(message, Error):
            return None


def copy_of(snapshot: Path, data_dir: Path) -> Path:
    shutil.copytree(snapshot, data_dir, ignore=shutil.ignore_patterns(".lock"))
    return data_dir


def wallet_send_latency(processes: Processes, snapshot: Path, workdir: Path, sends: int) -> WalletRun:
    """A wallet pays through node S; a miner M (1 worker) and a plain node P are S's peers.

    Each payment is timed from the /send line written to `peer_client.py --wallet`
    to P's gettx showing it in a block: wallet to S, S relays to M, M mines it, the
    block goes M to S to P. The wallet is opened (/balance) before the first one.
    """
    services = DemoNode(processes, copy_of(snapshot, workdir / "wallet-services"),
                        "--roles", "routing,blockchain,chat,wallet-services")
    connect = ("--connect", f"{services.address[0]}:{services.address[1]}")
    miner = DemoNode(processes, copy_of(snapshot, workdir / "wallet-miner"), "--roles", MINING_ROLES,
                     "--mine-to", Key(DEMO, CHAIN_KEY).address, "--mining-workers", "1", *connect)
    peer = DemoNode(processes, copy_of(snapshot, workdir / "wallet-peer"), *connect)
    wallet_file = workdir / "bench.wallet"
    bench_wallet(wallet_file)
    wallet = WalletClient(services.address, wallet_file)
    try:
        with miner.client() as at_miner, peer.client() as at_peer:
            wallet.command("/balance", re.compile(r"^EPS\s"), LISTEN_TIMEOUT)
            payments = []
            first_height, started = chain_info(at_miner).height, time.perf_counter()
            for number in range(sends):
                payments.append(one_payment(wallet, at_miner, at_peer))
                say(f"    payment {number + 1}: in the miner's mempool {payments[-1].in_miner_mempool:.2f} s, "
                    f"confirmed on the peer {payments[-1].confirmed_on_peer:.2f} s after /send")
            blocks = chain_info(at_miner).height - first_height
            interval = (time.perf_counter() - started) / blocks if blocks else float("nan")
    finally:
        wallet.close()
        for node in (peer, miner, services):
            node.stop()
    return WalletRun(payments, interval)


def one_payment(wallet: WalletClient, at_miner: WireClient, at_peer: WireClient) -> Payment:
    """/send a little to PAYEE, then watch the miner's and the peer's gettx until the peer has it in a block."""
    start = time.perf_counter()
    txid = wallet.command(f"/send {PAYEE} {PAYMENT}", SENT, LISTEN_TIMEOUT).group(1)
    sent = time.perf_counter() - start
    marks: dict[str, float] = {}
    deadline = time.monotonic() + PAYMENT_TIMEOUT
    while "peer" not in marks:
        if time.monotonic() > deadline:
            raise BenchError(f"payment {txid} not confirmed on the peer within {PAYMENT_TIMEOUT:g} s")
        now = time.perf_counter() - start
        if "mempool" not in marks and tx_confirmations(at_miner, txid) is not None:
            marks["mempool"] = now
        if "mempool" in marks and "miner" not in marks and (tx_confirmations(at_miner, txid) or 0) >= 1:
            marks["miner"] = now
        if "miner" in marks and (tx_confirmations(at_peer, txid) or 0) >= 1:
            marks["peer"] = time.perf_counter() - start
        time.sleep(PAYMENT_POLL)
    return Payment(sent, marks["mempool"], marks["miner"], marks["peer"])


def percentile(values: Sequence[float], share: float) -> float:
    """The value below which `share` of the values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


# -- 5. where a worker's time goes ---------------------------------------------------------------------


def profile_worker_loop(processes: Processes, prefix: bytes, nonces: int, workdir: Path) -> Counter | None:
    """py-spy on one worker running `nonces` nonces: samples per line of roles/mining.py, innermost frame."""
    from benchmarks.chain_bench import Profiler  # only when py-spy is there to run
    with Workers(1) as pool:
        pool.run(prefix, 1, job_id=0)
        pool.pipes[0].send(Job(1, prefix, IMPOSSIBLE, 0, nonces - 1))
        profiler = Profiler(processes, pool.processes[0].pid, workdir / "worker.profile", PROFILE_RATE)
        job_report(pool.pipes[0], nonces)  # the range is done
        profiler.finish()
    if not profiler.out.exists():
        return None
    lines: Counter = Counter()
    for line in profiler.out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            innermost = stack.split(";")[-1]  # `search (roles/mining.py:73)`
            lines[innermost.rsplit("(", 1)[-1].rstrip(")").removeprefix(str(ROOT) + "/")] += int(count)
    return lines


def profile_table(lines: Counter) -> list[str]:
    total = sum(lines.values())
    source = (ROOT / "roles" / "mining.py").read_text().splitlines()
    table = [f"\nWhere a worker's time goes: {total:,} py-spy samples of roles.mining.search, by line",
             "", "| line | code | share |", "|---|---|---|"]
    for where, count in lines.most_common(8):
        file, _, number = where.rpartition(":")
        code = source[int(number) - 1].strip() if file == "roles/mining.py" and number.isdigit() else ""
        table.append(f"| `{where}` | `{code}` | {count / total:.1%} |")
    return table


# -- the report ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A row of benchmarks/results/mining.json, and how the printed table shows its value."""

    row: plots.Row
    detail: str


def hash_line(label: str, rates: Sequence[float], limit: float | None = None, limit_label: str = "",
              target: float | None = None, unit: str = "H/s") -> Line:
    """A hash rate: the median of the samples (their range in the detail), and its ratio to a limit."""
    value = statistics.median(rates)
    row = plots.Row.against(label, value, unit, limit, limit_label, f"≥ {target:g}×" if target else None)
    return Line(row, f"{rate(value)} ({rate(min(rates))}–{rate(max(rates))})" if len(rates) > 1 else rate(value))


def share_line(label: str, shares: Sequence[float]) -> Line:
    value = statistics.median(shares)
    return Line(plots.Row(label, value, "share of a core"), f"{value:.0%} ({min(shares):.0%}–{max(shares):.0%})")


def count_line(label: str, value: int, detail: str) -> Line:
    return Line(plots.Row(label, value, "blocks"), detail)


def rtt_lines(label: str, rtts: Sequence[float], idle: Sequence[float] | None, target: float | None) -> list[Line]:
    """Median and p95 round trip, each against the idle node's (when given)."""
    lines = []
    for name, share in (("median", 0.5), ("p95", 0.95)):
        value = percentile(rtts, share) * 1e3
        limit = percentile(idle, share) * 1e3 if idle else None
        row = plots.Row.against(f"{label}, {name}", value, "ms", limit, f"idle node, {name}",
                                f"≤ {target:g}×" if target else None)
        lines.append(Line(row, f"{value:.3f} ms"))
    return lines


def in_unit(value: float, unit: str) -> str:
    """A limit as the table shows it: rates as 1.61 M, times with their unit."""
    return {"ms": f"{value:.3f} ms", "s": f"{value:.2f} s"}.get(unit, rate(value))


def print_lines(lines: Sequence[Line]) -> bool:
    """The Markdown table, then PASS/MISS per target; True when every target is met."""
    print("\n| measurement | value | limit (same run) | ratio | target |")
    print("|---|---|---|---|---|")
    for line in lines:
        row = line.row
        limit = ""
        if row.limit is not None:
            limit = f"{row.limit_label}: {in_unit(row.limit, row.unit)}"
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
        target = f"{row.target}: {'PASS' if row.passed else 'MISS'}" if row.target else ""
        print(f"| {row.label} | {line.detail} | {limit} | {ratio} | {target} |")
    print("\nTargets:")
    targets = [line.row for line in lines if line.row.target]
    for row in targets:
        print(f"  {'PASS' if row.passed else 'MISS'}  {row.label}: {row.ratio:.2f}× (target {row.target})")
    return all(row.passed for row in targets)


# -- running it all ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    repetitions: int  # of the node configurations: idle, 1 worker, 2 workers
    hash_seconds: float  # of each mining node's hash-rate phase
    pings: int  # per node
    worker_samples: int  # isolated worker-loop samples, before and after the nodes
    wallet_sends: int  # payments timed from /send to confirmed on a peer (0: none)


DEFAULT = Settings(repetitions=3, hash_seconds=HASHRATE_WINDOW + 8, pings=1500, worker_samples=2, wallet_sends=5)
QUICK = Settings(repetitions=1, hash_seconds=HASHRATE_WINDOW + 3, pings=600, worker_samples=1, wallet_sends=2)
WORKER_COUNTS = (1, 2)


@dataclass
class Measured:
    """Everything one run measured, before it becomes rows."""

    limits: Limits
    loops: list[WorkerSample] = field(default_factory=list)  # roles.mining.search in 2 spawned processes at once
    mining: dict[int, list[NodeMining]] = field(default_factory=lambda: {n: [] for n in WORKER_COUNTS})
    rtts: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in (0, *WORKER_COUNTS)})  # 0: idle
    adjacent: list[Rate] = field(default_factory=list)  # the midstate limit, sampled just before and after each miner
    profile: Counter | None = None
    wallet: WalletRun | None = None

    def sample(self, pool: ProcessPoolExecutor, settings: Settings) -> None:
        self.limits.sample(pool)
        nonces = max(10_000, round(self.limits.one_core * WORKER_SECONDS))
        self.loops += sample_worker_loop(self.limits.header[:HEADER_PREFIX_SIZE], 2, nonces, settings.worker_samples)

    def sample_adjacent(self) -> None:
        """A short midstate-loop sample right next to a mining node, so a burst of load hits both alike."""
        count = max(10_000, round(self.limits.one_core * ADJACENT_SECONDS))
        self.adjacent.append(timed(lambda: midstate_loop(self.limits.header, count)))


def run_node(measured: Measured, processes: Processes, snapshot: Path, workdir: Path, workers: int, rep: int,
             settings: Settings, work_per_block: int, address: str) -> None:
    """One node from a fresh copy of the snapshot: idle (workers 0) or mining; pings, and the hash rate."""
    data_dir = workdir / f"rep{rep}-{'idle' if workers == 0 else f'{workers}w'}"
    shutil.copytree(snapshot, data_dir, ignore=shutil.ignore_patterns(".lock"))
    args = () if workers == 0 else ("--roles", MINING_ROLES, "--mine-to", address, "--mining-workers", str(workers))
    if workers:
        measured.sample_adjacent()
    node = DemoNode(processes, data_dir, *args)
    try:
        with node.client() as client:
            if workers:
                say(f"  {node.name}: the workers' reports for {settings.hash_seconds:g} s")
                phase = hash_phase(node, client, workers, settings.hash_seconds, work_per_block)
                measured.mining[workers].append(phase)
                say(f"    {rate(phase.per_s / workers)} H/s per worker, {rate(phase.per_cpu_s)} per CPU-second, "
                    f"busy {phase.busy:.0%}, {phase.blocks} blocks; getmininginfo said "
                    f"{rate(statistics.median(phase.as_reported()))} H/s")
            say(f"  {node.name}: {settings.pings} pings" + (" while mining" if workers else ""))
            rtts = ping_rtts(client, settings.pings)
            measured.rtts[workers] += rtts
            say(f"    median {statistics.median(rtts) * 1e3:.3f} ms, p95 {percentile(rtts, 0.95) * 1e3:.3f} ms")
    finally:
        node.stop()
    if workers:
        measured.sample_adjacent()


def measure(settings: Settings, cache_dir: Path, profile: bool) -> Measured:
    processes = Processes()
    chain = cached_chain(cache_dir, "demo-mining", {"height": CHAIN_HEIGHT}, lambda: build_chain(say), say)
    header = BlockHeader.from_json(json.loads(chain.blocks[-1])["header"]).serialize()  # a real 80-byte header
    work_per_block = work_for(chain.meta["tip_bits"])
    address = Key(DEMO, CHAIN_KEY).address
    measured = Measured(Limits(header))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool, \
            tempfile.TemporaryDirectory(prefix="mining-bench-") as tmp:
        workdir = Path(tmp)
        say("limits and the worker loop, before the nodes")
        measured.sample(pool, settings)
        try:
            say(f"the chain: {chain.height} demo blocks into a node, the data directory kept as the snapshot")
            snapshot = workdir / "snapshot"
            make_snapshot(processes, chain, snapshot)
            configurations = (0, *WORKER_COUNTS)  # 0: the idle node
            for rep in range(settings.repetitions):
                order = configurations[rep % 3:] + configurations[:rep % 3]  # a burst of load hits each in turn
                say(f"repetition {rep + 1} of {settings.repetitions}: " +
                    ", ".join("idle" if w == 0 else f"{w} worker{'s' * (w > 1)}" for w in order))
                for workers in order:
                    run_node(measured, processes, snapshot, workdir, workers, rep, settings, work_per_block, address)
            if settings.wallet_sends:
                say(f"wallet: {settings.wallet_sends} payments from /send to confirmed on a peer")
                measured.wallet = wallet_send_latency(processes, snapshot, workdir, settings.wallet_sends)
            if profile and py_spy():
                say("the worker loop under py-spy (not timed)")
                measured.profile = profile_worker_loop(processes, header[:HEADER_PREFIX_SIZE],
                                                       round(measured.limits.one_core * 3), workdir)
        finally:
            processes.stop_all()
        say("limits and the worker loop, after the nodes")
        measured.sample(pool, settings)
    return measured


def limit_lines(measured: Measured) -> list[Line]:
    """The loops in this process (and two at once in pool processes)."""
    limits = measured.limits
    one_core = limits.one_core
    naive = statistics.median(r.per_s for r in limits.naive)
    mid_cpu = limits.one_per_cpu
    two = statistics.median(r.per_s for r in limits.midstate2)
    return [
        hash_line("sha256d loop, one 80-byte header, 1 core", [r.per_s for r in limits.naive]),
        hash_line("midstate loop (copy of the first 64 bytes' state), 1 core", [r.per_s for r in limits.midstate],
                  naive, "sha256d loop"),
        hash_line("midstate loop, 1 core, per CPU-second", [r.per_cpu_s for r in limits.midstate], unit="H/CPU-s"),
        hash_line("roles.mining.search in a thread here, interleaved with the loops above (its own count)",
                  [r.per_s for r in limits.search], one_core, "midstate loop"),
        hash_line("roles.mining.search in a thread here, per CPU-second", [r.per_cpu_s for r in limits.search],
                  mid_cpu, "midstate loop per CPU-second", unit="H/CPU-s"),
        hash_line("midstate loop, 2 processes at once (total)", [r.per_s for r in limits.midstate2], 2 * one_core,
                  "2 × midstate loop"),
        hash_line("midstate loop, 2 processes at once, per CPU-second of each", [r.per_cpu_s for r in limits.midstate2],
                  mid_cpu, "1 process, per CPU-second", unit="H/CPU-s"),
        hash_line("roles.mining.search, 2 spawned processes at once (total, their own counts)",
                  [sample.per_s for sample in measured.loops], two, "midstate loop, 2 processes"),
        hash_line("roles.mining.search, 2 spawned processes at once, per CPU-second of each",
                  [sample.per_cpu_s for sample in measured.loops], limits.two_per_cpu,
                  "midstate loop, 2 processes, per CPU-second", unit="H/CPU-s"),
    ]


def node_lines(measured: Measured) -> list[Line]:
    """The mining nodes: the hash rate against the midstate loop sampled just before and after each of them,
    and per CPU-second against the midstate loop's per CPU-second (1 or 2 processes at once)."""
    limits = measured.limits
    near = statistics.median(r.per_s for r in measured.adjacent)
    lines = [hash_line("midstate loop, 1 core, just before and after each mining node",
                       [r.per_s for r in measured.adjacent], limits.one_core, "midstate loop")]
    for workers in WORKER_COUNTS:
        phases = measured.mining[workers]
        name = f"node, {workers} worker{'s' * (workers > 1)}"
        if workers == 1:
            lines.append(hash_line(f"{name}: hash rate (the node's own counts)", [p.per_s for p in phases], near,
                                   "midstate loop next to the nodes", target=HASH_TARGET))
            per_cpu, per_cpu_label = limits.one_per_cpu, "midstate loop per CPU-second"
        else:
            lines.append(hash_line(f"{name}: hash rate, all workers (the node's own counts)",
                                   [p.per_s for p in phases], workers * near,
                                   f"{workers} × midstate loop next to the nodes", target=HASH_TARGET))
            per_cpu, per_cpu_label = limits.two_per_cpu, "midstate loop, 2 processes, per CPU-second"
        lines.append(hash_line(f"{name}: hashes per CPU-second of a worker", [p.per_cpu_s for p in phases],
                               per_cpu, per_cpu_label, target=HASH_TARGET, unit="H/CPU-s"))
        lines.append(share_line(f"{name}: each worker's share of a core", [p.busy for p in phases]))
        reported = [value for p in phases for value in p.as_reported()]
        if reported:
            lines.append(hash_line(f"{name}: getmininginfo hash rate, window full (once a second)", reported,
                                   statistics.median(p.per_s for p in phases), "the node's own counts"))
        blocks = sum(p.blocks for p in phases)
        lines.append(count_line(f"{name}: blocks found", blocks,
                                f"{blocks} in {sum(p.polls[-1].at - p.polls[0].at for p in phases):.0f} s "
                                f"({phases[0].work_per_block / 1e6:.1f} M hashes expected per block)"))
    return lines


def ping_lines(measured: Measured) -> list[Line]:
    idle = measured.rtts[0]
    lines = rtt_lines("ping round trip, idle node", idle, None, None)
    for workers in WORKER_COUNTS:
        lines += rtt_lines(f"ping round trip, mining with {workers} worker{'s' * (workers > 1)}",
                           measured.rtts[workers], idle, RTT_TARGET)
    return lines


def wallet_lines(run: WalletRun) -> list[Line]:
    """Each stage of a payment, as seconds after the /send line; the whole against the block interval."""
    stages = [("the wallet printed sent", "sent"), ("in the miner's mempool", "in_miner_mempool"),
              ("in a block on the miner", "confirmed_on_miner")]
    lines = []
    for label, name in stages:
        values = [getattr(p, name) for p in run.payments]
        lines.append(Line(plots.Row(f"wallet /send → {label}", statistics.median(values), "s"), seconds(values)))
    values = [p.confirmed_on_peer for p in run.payments]
    row = plots.Row.against("wallet /send → confirmed on a peer", statistics.median(values), "s",
                            run.block_interval, "mean block interval meanwhile")
    lines.append(Line(row, seconds(values)))
    return lines


def seconds(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f} s, {len(values)} payments)"


def rtt_series(measured: Measured) -> dict[str, plots.Series]:
    """Each node's ping round trips by percentile, for a figure."""
    shares = [i / 100 for i in (*range(5, 100, 5), 99)]
    names = {0: ("idle", "the idle node"), 1: ("1-worker", "mining, 1 worker"), 2: ("2-workers", "mining, 2 workers")}
    return {f"ping-rtt-{names[n][0]}": plots.Series(
        "percentile", "round trip (ms)", [(round(s * 100), round(percentile(rtts, s) * 1e3, 4)) for s in shares],
        title=f"ping round trips, {names[n][1]} ({len(rtts):,} pings)")
        for n, rtts in measured.rtts.items() if rtts}


def run(settings: Settings, cache_dir: Path, profile: bool, results_dir: Path) -> bool:
    started, load_before = time.monotonic(), os.getloadavg()
    say(f"epscoin {plots.source_commit()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.2f}' for x in load_before)}"
        + ("" if not profile or py_spy() else "; no py-spy: no profile"))
    measured = measure(settings, cache_dir, profile)
    print(f"\n{time.monotonic() - started:.0f} s in all; load average at the start "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if measured.profile:
        print("\n".join(profile_table(measured.profile)))
    lines = limit_lines(measured) + node_lines(measured) + ping_lines(measured)
    if measured.wallet:
        lines += wallet_lines(measured.wallet)
    all_met = print_lines(lines)
    results = plots.Results("mining", plots.RunInfo.now(), [line.row for line in lines], rtt_series(measured))
    print(f"\nresults: {plots.write_results(results, results_dir)} (figures: python benchmarks/plots.py mining)")
    return all_met


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Measure the mining role's hash rate and the node's ping time "
                                                 "while it mines, next to plain sha256d loops.")
    parser.add_argument("--quick", action="store_true", help="1 shorter repetition, about a minute")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="no py-spy sampling")
    parser.add_argument("--no-wallet", dest="wallet", action="store_false",
                        help="leave out the wallet payments (each waits for a block, ~3 s on a quiet machine)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "epscoin-mining-bench",
                        help="where the built chain is kept between runs (default: $TMPDIR/epscoin-mining-bench)")
    parser.add_argument("--results-dir", type=Path, default=plots.RESULTS_DIR,
                        help="where mining.json is written (default: benchmarks/results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop every node
    try:
        settings = QUICK if args.quick else DEFAULT
        if not args.wallet:
            settings = replace(settings, wallet_sends=0)
        all_met = run(settings, args.cache_dir, args.profile, args.results_dir)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
