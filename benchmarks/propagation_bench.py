"""Propagation benchmark: how fast a chat line and a new address cross a fresh 50-node network.

    python benchmarks/propagation_bench.py              # 50 nodes, 5 rounds: about a minute
    python benchmarks/propagation_bench.py --quick      # 3 rounds
    python benchmarks/propagation_bench.py --nodes 20   # a smaller network

One run, on real `node.py` processes, measures:

1. Bootstrap. N nodes, each on its own loopback IP at port 5050 in a random
   subnet 127.R.S.0/24 (R, S in 100..250, away from the demo's 127.0.0.2..),
   find each other through one DNS seed node (`--serve-dns`); nothing else is
   configured (`--no-fixed-seeds`). Measured: launch until every node keeps its
   8 outbound connections and the peer graph is connected.
2. One hop. Two more nodes, P and Q, run beside the network, linked only to
   each other. A line typed at a client of P is stamped by an observer client
   on P and one on Q: Q's minus P's is one relay over a direct connection (Q
   reads the frame, dedupes, logs, acks and relays) with nothing else busy.
   Its median is the hop of the bounds. For comparison, the same difference
   inside the network's floods: every direct peer B of a typing node A.
3. Chat flood. A line typed at a client of one node (the origin); one observer
   client per node stamps when it arrives. Typed -> every observer, next to its
   lower bound (eccentricity(origin) + 1) x hop: the BFS hop distance in the
   actual graph (every node's getpeerinfo) plus the origin's own relay.
4. Address gossip. A new node joins; every node's peers.sqlite is read
   (read-only) until it holds the new address. Spread = last book minus first
   book, next to (eccentricity(new node) - 1) x hop: the first book is one hop
   from the new node, the farthest is eccentricity hops from it.

Why like this: a bound from the graph the nodes actually built, with the hop
latency measured in the same run on the same machine, says what the design
and the machine add on top of the distance. The ratio target is 1.5x. The hop
is measured in isolation because a hop inside a flood already waits for the
CPU: a bound built from it would shrink the very cost it should expose (and
on an overloaded VM it can exceed the measured time). A flood is the fastest
possible design, so what it adds is the machine's: 50 Python processes share
the CPUs, and the `node CPU / cores` column is the nodes' CPU time per line
divided by the cores. Addr relay forwards each announcement to 2 random peers,
under a token bucket per peer, so it takes more hops than the shortest path
by design.

Every client is read by one selector loop in this process; a chat line is
stamped with the kernel's receive time (SO_TIMESTAMPNS), so a stamp does not
wait for this process to be scheduled. Waits are on conditions with timeouts
(listening, converged, arrived, nodes idle); the whole run is bounded by
RUN_LIMIT, and every process started is stopped on exit, error or Ctrl-C.
Only 127.0.0.0/8 is used.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import random
import selectors
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: tests.support sits beside the node's packages

from protocol.framing import HEADER, PORT, encode_frame, parse_header
from protocol.messages import (Chat, GetNetworkInfo, GetPeerInfo, Message, MessageError, NetworkInfo,
                               PeerInfo, Ping, Pong, Verack, Version, decode_message)
from protocol.messages.handshake import NODE_NETWORK
from tests.support import LISTENING, wait_until

OUTBOUND = 8  # the node's default --outbound: the bootstrap is done when every node has this many
DNS_ZONE = "seed.bench"
SUBNET_OCTETS = (100, 250)  # R and S of 127.R.S.0/24
TARGET_RATIO = 1.5  # measured / bound at or below this is a PASS
USER_AGENT = "/propagation-bench/"

LISTEN_TIMEOUT = 60.0  # seconds for every node to listen after launch (N interpreters starting at once)
CONVERGE_TIMEOUT = 150.0  # seconds for the fresh network to reach its outbound targets
CONVERGE_POLL = 0.5  # seconds between two getpeerinfo rounds while waiting for convergence
ASK_TIMEOUT = 15.0  # seconds for every node to answer one getpeerinfo / getnetworkinfo
CONNECT_TIMEOUT = 5.0  # seconds for a client's TCP connect, and for its sends
FLOOD_TIMEOUT = 20.0  # seconds for a chat line to reach every observer
ADDR_TIMEOUT = 30.0  # seconds for a new address to reach every address book (gossip stops long before)
JOIN_TIMEOUT = 30.0  # seconds for the new node to reach its own outbound target
BOOK_POLL = 0.005  # seconds between two reads of the address books
QUIET_WINDOW = 0.1  # seconds: the nodes are idle when a window like this costs them
QUIET_TICKS = 1  # ... at most this many clock ticks of CPU in all
QUIET_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0  # seconds for the nodes to stop after SIGTERM before they are killed
RUN_LIMIT = 480  # seconds: the whole run is aborted, and cleaned up, after this
HOPS_PER_ROUND = 2  # lines typed in the network for in-flood hop samples before each round's chat line
PAIR_PER_ROUND = 6  # isolated hops (lines typed at the pair) in each round
PAIR_OCTETS = (253, 254)  # the pair's hosts 127.R.S.253 (P) and .254 (Q); the network uses .2 upwards
MAX_NODES = 200  # so the network (and the node that joins) stays below the pair's hosts
OBSERVER_NICE = -5  # the benchmark's own priority, when allowed (the nodes stay at 0)

T = TypeVar("T")
M = TypeVar("M", bound=Message)


class BenchError(Exception):
    """The run cannot go on; the message says why, for a person."""


# -- the node processes ------------------------------------------------------------------------


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:
    _LIBC = None
PR_SET_PDEATHSIG = 1


def _prepare_child() -> None:
    """Runs in each node's process before exec.

    Linux is asked to send the node SIGTERM if the benchmark dies, even by SIGKILL;
    and the node runs at normal priority whatever the observer's (see raise_observer_priority).
    """
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass


def raise_observer_priority() -> str:
    """Let this process read its sockets before the nodes it times get the CPU back: nice OBSERVER_NICE.

    Fifty nodes share the cores with the observer; at equal priority a stamp can
    wait for a time slice. Allowed for root only; otherwise the run says so.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, OBSERVER_NICE)
    except OSError:
        return f"observer at nice {os.getpriority(os.PRIO_PROCESS, 0)} (raising it needs root)"
    return f"observer at nice {OBSERVER_NICE}, nodes at 0"


@dataclass
class BenchNode:
    """One `node.py` process of the benchmark network."""

    name: str
    host: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]
    launched_at: float
    listening: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{PORT}"

    @property
    def book_path(self) -> Path:
        return self.data_dir / "peers.sqlite"

    def is_listening(self) -> bool:
        """True once the node has logged its [LISTENING] line; BenchError if it exited instead."""
        if not self.listening:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} ({self.address}) exited with {self.process.returncode}; "
                                 f"see {self.log_path}")
            self.listening = LISTENING.search(self.log_path.read_text(errors="replace")) is not None
        return self.listening


class Network:
    """The benchmark's node processes: started here, and always stopped here (error and Ctrl-C included)."""

    def __init__(self, workdir: Path, prefix: str, dns_port: int) -> None:
        self.workdir = workdir
        self.prefix = prefix  # "127.R.S"
        self.dns_port = dns_port
        self.nodes: list[BenchNode] = []  # the network: node 0 is the DNS seed
        self.pair: list[BenchNode] = []  # two more nodes, linked only to each other (see start_pair)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def host(self, index: int) -> str:
        return f"{self.prefix}.{index + 2}"  # node 0, the DNS seed, is 127.R.S.2

    @property
    def dns_server(self) -> str:
        return f"{self.host(0)}:{self.dns_port}"

    def start(self, index: int) -> BenchNode:
        """Launch network node `index` without waiting for it; node 0 is the DNS seed, the others ask it."""
        if index == 0:
            discovery = ["--serve-dns", self.dns_server, "--dns-zone", DNS_ZONE]
        else:
            discovery = ["--dns-seed", DNS_ZONE, "--dns-server", self.dns_server]
        node = self._launch(f"n{index:02d}", self.host(index), ["--outbound", str(OUTBOUND), *discovery])
        self.nodes.append(node)
        return node

    def start_pair(self) -> list[BenchNode]:
        """Two nodes outside the network, for the isolated hop: P dials Q (--connect), Q dials no one."""
        q = self._launch("pair-q", f"{self.prefix}.{PAIR_OCTETS[1]}", ["--outbound", "0"])
        p = self._launch("pair-p", f"{self.prefix}.{PAIR_OCTETS[0]}", ["--connect", f"{q.address}"])
        self.pair = [p, q]
        return self.pair

    def _launch(self, name: str, host: str, extra: list[str]) -> BenchNode:
        data_dir, log_path = self.workdir / name, self.workdir / f"{name}.log"
        args = ["--host", host, "--port", str(PORT), "--data-dir", str(data_dir), "--no-fixed-seeds",
                "--no-colour", *extra]
        log_file = open(log_path, "wb")
        process = subprocess.Popen([sys.executable, str(ROOT / "node.py"), *args], cwd=ROOT,
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   preexec_fn=_prepare_child)  # safe: this process starts no threads
        return BenchNode(name, host, data_dir, log_path, process, log_file, time.monotonic())

    def pids(self) -> list[int]:
        """The network's processes (the pair left out)."""
        return [node.process.pid for node in self.nodes]

    def all_pids(self) -> list[int]:
        return [node.process.pid for node in self.nodes + self.pair]

    def stop(self) -> None:
        """SIGTERM to every node at once, then wait; SIGKILL whatever is still running at the deadline."""
        everyone = self.nodes + self.pair
        for node in everyone:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for node in everyone:
            try:
                node.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            node.log_file.close()


def pick_subnet(rng: random.Random, hosts: int) -> str:
    """A random 127.R.S whose .2 .. .(hosts+1) and the pair's two hosts are all free at port 5050."""
    low, high = SUBNET_OCTETS
    for _ in range(20):
        prefix = f"127.{rng.randint(low, high)}.{rng.randint(low, high)}"
        octets = [k + 2 for k in range(hosts)] + list(PAIR_OCTETS)
        if all(_tcp_port_free(f"{prefix}.{octet}", PORT) for octet in octets):
            return prefix
    raise BenchError("no free 127.R.S.0/24 subnet found in 20 tries")


def _tcp_port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# -- CPU time of the nodes ---------------------------------------------------------------------


def cpu_ticks(pids: Iterable[int]) -> int:
    """utime + stime of these processes, in clock ticks (cheap: one file each)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted after "(comm)"
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time of these processes in seconds, exact: every thread's /proc schedstat (nanoseconds)."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended between listing and reading
    return total / 1e9


# -- clients: one selector loop reads them all -------------------------------------------------


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; Python 3.11 does not name it
TIMESPEC = struct.Struct("qq")  # the kernel's struct timespec: seconds, nanoseconds


class NodeClient:
    """A chat client's connection to one node (services 0: it gets chat lines, never addr).

    Frames are parsed from a plain byte buffer (no buffered reader that could hide
    a frame from the selector). Each chat line is stamped with the time the kernel
    received it (SO_TIMESTAMPNS, wall clock), so a stamp does not depend on when
    this process got the CPU to read it; time.time() at the read where the kernel
    gives no stamp.
    """

    def __init__(self, host: str, label: str) -> None:
        self.host = host
        self.label = label
        self.sock = socket.create_connection((host, PORT), timeout=CONNECT_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass  # no kernel stamps here: reads are stamped instead
        self.arrivals: dict[str, float] = {}  # chat text -> when its first copy arrived (time.time() clock)
        self.answers: deque[Message] = deque(maxlen=64)
        self.ready = False  # the node's verack has arrived
        self.closed = False
        self._buffer = bytearray()

    def send(self, payload: Message | str) -> None:
        text = payload if isinstance(payload, str) else payload.encode()
        self.sock.sendall(encode_frame(text))

    def read_available(self) -> None:
        """Called when the socket is readable: take what is there, handle every whole frame."""
        try:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(TIMESPEC.size))
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            data, ancillary = b"", []
        now = time.time()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= TIMESPEC.size:
                seconds, nanoseconds = TIMESPEC.unpack_from(value)
                now = seconds + nanoseconds / 1e9  # when the last byte of this read reached the socket
        if not data:
            self.closed = True
            return
        self._buffer += data
        while len(self._buffer) >= HEADER:
            end = HEADER + parse_header(bytes(self._buffer[:HEADER]))
            if len(self._buffer) < end:
                break
            text = self._buffer[HEADER:end].decode("utf-8", "replace")
            del self._buffer[:end]
            self._on_frame(text, now)

    def _on_frame(self, text: str, now: float) -> None:
        try:
            message = decode_message(text)
        except MessageError:
            return
        if isinstance(message, Chat):
            self.arrivals.setdefault(message.text, now)
        elif isinstance(message, Verack):
            self.ready = True
        elif isinstance(message, Ping):  # the node's keepalive, every 120 s
            self.send(Pong(nonce=message.nonce))
        elif message is not None:
            self.answers.append(message)

    def take(self, kind: type[M]) -> M | None:
        """The oldest answer of this type, removed; None if none has arrived."""
        for message in self.answers:
            if isinstance(message, kind):
                self.answers.remove(message)
                return message
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Clients:
    """Every client connection of the benchmark, read by one selector loop on this thread."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._clients: list[NodeClient] = []

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self._clients:
            client.close()
        self._selector.close()

    def connect(self, hosts: Sequence[str], label: str) -> list[NodeClient]:
        """One handshaken chat client per host (all connected first, then all handshakes at once)."""
        clients = [NodeClient(host, f"{label} on {host}") for host in hosts]
        for client in clients:
            self._clients.append(client)
            self._selector.register(client.sock, selectors.EVENT_READ, client)
            client.send(Version(user_agent=USER_AGENT, time=int(time.time())))
        self.wait(lambda: all(self._alive(client).ready for client in clients), ASK_TIMEOUT,
                  f"{len(clients)} handshakes")
        return clients

    def pump(self, timeout: float) -> None:
        """Read whatever arrives within timeout (returns early once something was read)."""
        for key, _ in self._selector.select(max(0.0, timeout)):
            client: NodeClient = key.data
            client.read_available()
            if client.closed:
                self._selector.unregister(client.sock)

    def idle(self, seconds: float) -> None:
        """Spend `seconds` reading the clients (so no stamp waits), rather than sleeping."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.pump(remaining)

    def wait(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        """Read the clients until condition() is truthy; BenchError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump(0)
            result = condition()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
            self.pump(min(remaining, 0.05))

    def ask(self, clients: Sequence[NodeClient], message: Message, kind: type[M]) -> list[M]:
        """Send message on every client at once; every node's answer of type kind, in order."""
        for client in clients:
            client.send(message)
        answers: dict[int, M] = {}

        def all_answered() -> bool:
            for i, client in enumerate(clients):
                if i not in answers and (answer := self._alive(client).take(kind)) is not None:
                    answers[i] = answer
            return len(answers) == len(clients)

        self.wait(all_answered, ASK_TIMEOUT, f"{kind.command} from {len(clients)} nodes")
        return [answers[i] for i in range(len(clients))]

    @staticmethod
    def _alive(client: NodeClient) -> NodeClient:
        if client.closed:
            raise BenchError(f"the node closed the connection of the {client.label}")
        return client


# -- the peer graph --------------------------------------------------------------------------


def _host_of(address: str) -> str:
    return address.rpartition(":")[0]


@dataclass(frozen=True)
class PeerGraph:
    """Node-to-node connections from every node's getpeerinfo (chat clients and crawler visits left out)."""

    neighbours: dict[str, frozenset[str]]  # host -> hosts it has a connection with, either direction
    outbound: dict[str, int]  # host -> its outbound connections to nodes

    @classmethod
    def from_peerinfo(cls, answers: dict[str, PeerInfo]) -> PeerGraph:
        links: dict[str, set[str]] = {host: set() for host in answers}
        outbound: dict[str, int] = {}
        for host, info in answers.items():
            rows = [row for row in info.peers if row.services & NODE_NETWORK
                    and _host_of(row.address) in links and _host_of(row.address) != host]
            outbound[host] = sum(row.direction == "outbound" for row in rows)
            for row in rows:
                other = _host_of(row.address)
                links[host].add(other)
                links[other].add(host)  # a connection carries chat both ways
        return cls({host: frozenset(peers) for host, peers in links.items()}, outbound)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return sorted((a, b) for a, peers in self.neighbours.items() for b in peers if a < b)

    def distances(self, origin: str) -> dict[str, int]:
        """Hops from origin to every node it can reach (breadth-first search)."""
        found = {origin: 0}
        frontier = [origin]
        while frontier:
            following = []
            for host in frontier:
                for peer in self.neighbours[host]:
                    if peer not in found:
                        found[peer] = found[host] + 1
                        following.append(peer)
            frontier = following
        return found

    def connected(self) -> bool:
        return len(self.distances(next(iter(self.neighbours)))) == len(self.neighbours)

    def eccentricity(self, origin: str) -> int:
        distances = self.distances(origin)
        if len(distances) < len(self.neighbours):
            raise BenchError(f"the graph is not connected: {origin} reaches {len(distances)} "
                             f"of {len(self.neighbours)} nodes")
        return max(distances.values())

    def diameter(self) -> int:
        return max(self.eccentricity(host) for host in self.neighbours)

    def converged(self, target: int) -> bool:
        return min(self.outbound.values()) >= target and self.connected()

    def describe(self) -> str:
        counts = statistics.multimode(self.outbound.values())
        below = sum(count < OUTBOUND for count in self.outbound.values())
        return (f"{below} of {len(self.outbound)} nodes below {OUTBOUND} outbound (most common: {counts}), "
                f"{'connected' if self.connected() else 'NOT connected'}, {len(self.edges)} edges")


def snapshot(clients: Clients, observers: dict[str, NodeClient]) -> PeerGraph:
    hosts = list(observers)
    answers = clients.ask([observers[host] for host in hosts], GetPeerInfo(), PeerInfo)
    return PeerGraph.from_peerinfo(dict(zip(hosts, answers)))


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    nodes: int
    all_listening: float  # seconds from launch until every node listened
    converged: float  # seconds from launch until every node had OUTBOUND outbound and the graph was connected
    edges: int
    degrees: tuple[int, int, int]  # min, median, max connections per node
    diameter: int
    seed_degree: int
    addrs_dropped: int  # addr entries the nodes' rate limits dropped during the bootstrap


@dataclass(frozen=True)
class Samples:
    """Several measurements of one quantity, in seconds."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def range_ms(self) -> str:
        return f"{min(self.values) * 1e3:.1f}-{max(self.values) * 1e3:.1f} ms"


@dataclass
class Flood:
    """One chat line: when it was typed, and when each observer read it."""

    origin: str
    text: str
    typed_at: float  # time.time(), as the arrival stamps
    arrivals: dict[str, float]  # host -> when the line reached its observer
    missing: list[str]
    cpu: float  # seconds of node CPU from typing until the nodes were idle again


@dataclass(frozen=True)
class Hops:
    """The one-hop latency, measured two ways in the same run."""

    isolated: Samples  # P's observer -> Q's, a line typed at P: one relay by a node nothing else keeps busy
    in_flood: Samples  # A's observer -> B's for every direct peer B of a typing network node A


@dataclass(frozen=True)
class ChatResult:
    origin: str
    eccentricity: int
    typed_to_all: float  # typed -> the last observer: what the bounds are for
    bound: float  # (eccentricity + 1) x isolated hop: the origin's own relay, then one per hop
    flood_bound: float  # the same with the hop measured inside floods
    cpu: float
    cores: int
    by_distance: dict[int, list[float]]  # hop distance -> arrivals after the origin's observer

    @property
    def ratio(self) -> float:
        return self.typed_to_all / self.bound

    @property
    def flood_ratio(self) -> float:
        return self.typed_to_all / self.flood_bound

    @property
    def cpu_per_core(self) -> float:
        return self.cpu / self.cores


@dataclass(frozen=True)
class AddrResult:
    address: str
    eccentricity: int
    join: float  # launch of the new node -> the first book holding its address
    arrivals: tuple[float, ...]  # every book that got it: seconds after the first book, sorted
    total: int  # books watched
    bound: float  # (eccentricity - 1) x isolated hop
    dropped: int  # addr entries the nodes' rate limits dropped during the phase
    new_outbound: int
    by_distance: dict[int, list[float]]  # hop distance from the new node -> arrivals after the first book
    missed_distances: dict[int, int]  # hop distance -> books that never got it

    @property
    def reached(self) -> int:
        return len(self.arrivals)

    @property
    def spread(self) -> float | None:
        """First book -> every book; None if some book never got it."""
        return self.arrivals[-1] if self.reached == self.total else None

    def after(self, fraction: float) -> float | None:
        """Seconds after the first book until this fraction of all books held it."""
        needed = max(1, round(fraction * self.total))
        return self.arrivals[needed - 1] if needed <= self.reached else None

    @property
    def ratio(self) -> float | None:
        return self.spread / self.bound if self.spread is not None and self.bound > 0 else None


@dataclass
class Report:
    command: str
    environment: str
    network: str
    bootstrap: Bootstrap
    hops: Hops
    chats: list[ChatResult]
    addr: AddrResult
    graph_changes: int  # edges that differed between the first and last snapshot of the original nodes
    seconds: float = 0.0
    load_end: float = 0.0


# -- the phases ------------------------------------------------------------------------------


def bootstrap(net: Network, clients: Clients, count: int) -> tuple[Bootstrap, dict[str, NodeClient]]:
    """Start the seed, then every other node at once; wait until the graph is connected and full."""
    seed = net.start(0)
    wait_until(seed.is_listening, timeout=LISTEN_TIMEOUT, interval=0.02, message="the DNS seed node to listen")
    launched = time.monotonic()
    for index in range(1, count):
        net.start(index)
    wait_until(lambda: all(node.is_listening() for node in net.nodes), timeout=LISTEN_TIMEOUT, interval=0.05,
               message=f"{count} nodes to listen")
    all_listening = time.monotonic() - launched
    print(f"  {count} nodes listening {all_listening:.1f} s after launch", flush=True)
    hosts = [node.host for node in net.nodes]
    observers = dict(zip(hosts, clients.connect(hosts, "observer")))
    deadline = launched + CONVERGE_TIMEOUT
    while True:
        graph = snapshot(clients, observers)
        if graph.converged(OUTBOUND):
            converged = time.monotonic() - launched
            break
        if time.monotonic() > deadline:
            raise BenchError(f"no convergence within {CONVERGE_TIMEOUT:g} s: {graph.describe()}")
        clients.idle(CONVERGE_POLL)
    degrees = sorted(len(peers) for peers in graph.neighbours.values())
    result = Bootstrap(nodes=count, all_listening=all_listening, converged=converged, edges=len(graph.edges),
                       degrees=(degrees[0], int(statistics.median(degrees)), degrees[-1]),
                       diameter=graph.diameter(), seed_degree=len(graph.neighbours[net.host(0)]),
                       addrs_dropped=addrs_dropped(clients, observers))
    print(f"  converged {converged:.1f} s after launch: {result.edges} linked pairs, diameter {result.diameter}",
          flush=True)
    return result, observers


def wait_quiet(clients: Clients, pids: list[int]) -> None:
    """Wait until the nodes are idle: at most QUIET_TICKS of CPU among all of them in one QUIET_WINDOW."""
    deadline = time.monotonic() + QUIET_TIMEOUT
    before = cpu_ticks(pids)
    while True:
        clients.idle(QUIET_WINDOW)
        after = cpu_ticks(pids)
        if after - before <= QUIET_TICKS:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the nodes did not go idle within {QUIET_TIMEOUT:g} s")
        before = after


def flood(clients: Clients, observers: dict[str, NodeClient], typist: NodeClient, text: str,
          pids: list[int]) -> Flood:
    """Type one chat line at typist and wait until every observer has read it (or FLOOD_TIMEOUT)."""
    wait_quiet(clients, pids)
    cpu_before = cpu_seconds(pids)
    typed_at = time.time()  # the clock of the kernel's receive stamps
    typist.send(text)
    try:
        clients.wait(lambda: all(text in observer.arrivals for observer in observers.values()), FLOOD_TIMEOUT,
                     f"chat line {text!r} at every observer")
    except BenchError:
        pass  # reported as missing below
    wait_quiet(clients, pids)
    cpu = cpu_seconds(pids) - cpu_before
    arrivals = {host: observer.arrivals[text] for host, observer in observers.items() if text in observer.arrivals}
    missing = [host for host in observers if host not in arrivals]
    return Flood(typist.host, text, typed_at, arrivals, missing, cpu)


def by_distance(distances: dict[str, int], arrivals: dict[str, float], start: float) -> dict[int, list[float]]:
    table: dict[int, list[float]] = {}
    for host, when in arrivals.items():
        if host in distances:
            table.setdefault(distances[host], []).append(when - start)
    return dict(sorted(table.items()))


def chat_result(line: Flood, graph: PeerGraph, hops: Hops, cores: int) -> ChatResult:
    eccentricity = graph.eccentricity(line.origin)
    return ChatResult(origin=line.origin, eccentricity=eccentricity,
                      typed_to_all=max(line.arrivals.values()) - line.typed_at,
                      bound=(eccentricity + 1) * hops.isolated.median,
                      flood_bound=(eccentricity + 1) * hops.in_flood.median, cpu=line.cpu, cores=cores,
                      by_distance=by_distance(graph.distances(line.origin), line.arrivals,
                                              line.arrivals[line.origin]))


def hop_samples(line: Flood, graph: PeerGraph) -> list[float]:
    """One relay over each direct connection of the typing node: each neighbour's arrival minus the node's own."""
    if line.origin not in line.arrivals:
        return []
    start = line.arrivals[line.origin]
    return [line.arrivals[peer] - start for peer in graph.neighbours[line.origin] if peer in line.arrivals]


class Typists:
    """A second chat client per node, opened the first time a line is typed there."""

    def __init__(self, clients: Clients) -> None:
        self._clients = clients
        self._typists: dict[str, NodeClient] = {}

    def at(self, host: str) -> NodeClient:
        if host not in self._typists:
            self._typists[host] = self._clients.connect([host], "typist")[0]
        return self._typists[host]


@dataclass
class Pair:
    """The two nodes outside the network, with a typist at P and an observer at each."""

    typist: NodeClient  # at P
    p: NodeClient  # P's observer
    q: NodeClient  # Q's observer


def connect_pair(clients: Clients, net: Network) -> Pair:
    """Wait until P and Q listen and are linked; open their clients."""
    wait_until(lambda: all(node.is_listening() for node in net.pair), timeout=LISTEN_TIMEOUT, interval=0.05,
               message="the pair to listen")
    p_host, q_host = (node.host for node in net.pair)
    p, q = clients.connect([p_host, q_host], "pair observer")
    observers = {p_host: p, q_host: q}
    clients.wait(lambda: snapshot(clients, observers).edges, JOIN_TIMEOUT, "P to connect to Q")
    return Pair(typist=clients.connect([p_host], "pair typist")[0], p=p, q=q)


def isolated_hop(clients: Clients, pair: Pair, pids: list[int], label: str) -> float:
    """One line typed at P: Q's observer's arrival minus P's, with every node idle before it."""
    wait_quiet(clients, pids)
    text = f"propagation pair {label} {os.urandom(4).hex()}"
    pair.typist.send(text)
    clients.wait(lambda: text in pair.p.arrivals and text in pair.q.arrivals, FLOOD_TIMEOUT, f"pair line {text!r}")
    return pair.q.arrivals[text] - pair.p.arrivals[text]


def chat_rounds(clients: Clients, observers: dict[str, NodeClient], net: Network, pair: Pair, rounds: int,
                rng: random.Random, cores: int) -> tuple[Hops, list[ChatResult], int]:
    """Each round: PAIR_PER_ROUND isolated hops, HOPS_PER_ROUND lines for in-flood hops, then the round's line.

    Returns the hops, one result per line, and how many edges changed from the first round to the last.
    """
    typists = Typists(clients)
    pids = net.pids()
    others = [node.host for node in net.nodes[1:]]  # typing happens anywhere but at the seed, the hub
    origins = rng.sample(others, rounds)
    isolated: list[float] = []
    in_flood: list[float] = []
    lines: list[tuple[Flood, PeerGraph]] = []
    graphs: list[PeerGraph] = []
    for number, origin in enumerate(origins, 1):
        graph = snapshot(clients, observers)
        graphs.append(graph)
        isolated += [isolated_hop(clients, pair, net.all_pids(), f"{number}.{k}") for k in range(PAIR_PER_ROUND)]
        for sample in range(HOPS_PER_ROUND):
            a = rng.choice(others)
            line = flood(clients, observers, typists.at(a), f"propagation hop {number}.{sample} {os.urandom(4).hex()}",
                         pids)
            in_flood += hop_samples(line, graph)
        line = flood(clients, observers, typists.at(origin), f"propagation line {number} {os.urandom(4).hex()}", pids)
        if line.missing:
            raise BenchError(f"chat line {number} from {origin} did not reach {len(line.missing)} observers "
                             f"within {FLOOD_TIMEOUT:g} s: {', '.join(line.missing[:10])}")
        lines.append((line, graph))
        print(f"  round {number}/{rounds}: line from {origin} at every observer "
              f"{(max(line.arrivals.values()) - line.typed_at) * 1e3:.1f} ms after typing; hop so far "
              f"{ms(statistics.median(isolated))} isolated, "
              f"{ms(statistics.median(in_flood)) if in_flood else '-'} in floods; load {os.getloadavg()[0]:.1f}",
              flush=True)
    if not in_flood:
        raise BenchError("no in-flood hop sample was measured")
    hops = Hops(isolated=Samples(tuple(isolated)), in_flood=Samples(tuple(in_flood)))
    results = [chat_result(line, line_graph, hops, cores) for line, line_graph in lines]
    changed = len(set(graphs[0].edges) ^ set(graphs[-1].edges))
    return hops, results, changed


class BookWatch:
    """Every node's peers.sqlite, opened read-only, asked whether it holds one address."""

    def __init__(self, nodes: Sequence[BenchNode]) -> None:
        self._books = {node.host: sqlite3.connect(node.book_path.as_uri() + "?mode=ro", uri=True, timeout=1.0)
                       for node in nodes}

    def holds(self, host: str, address: str) -> bool:
        try:
            row = self._books[host].execute("SELECT 1 FROM addresses WHERE address = ?", (address,)).fetchone()
        except sqlite3.OperationalError:  # e.g. busy during a checkpoint: look again next time
            return False
        return row is not None

    def close(self) -> None:
        for book in self._books.values():
            book.close()


def watch_books(clients: Clients, nodes: Sequence[BenchNode], address: str, deadline: float) -> dict[str, float]:
    """host -> when its book was first seen holding address, for the books that got it by deadline."""
    watch = BookWatch(nodes)
    seen: dict[str, float] = {}
    try:
        while len(seen) < len(nodes) and time.monotonic() < deadline:
            for node in nodes:
                if node.host not in seen and watch.holds(node.host, address):
                    seen[node.host] = time.monotonic()
            clients.idle(BOOK_POLL)
    finally:
        watch.close()
    return seen


def addrs_dropped(clients: Clients, observers: dict[str, NodeClient]) -> int:
    return sum(info.addrs_dropped for info in clients.ask(list(observers.values()), GetNetworkInfo(), NetworkInfo))


def addr_phase(clients: Clients, observers: dict[str, NodeClient], net: Network, hops: Hops) -> AddrResult:
    """Start one more node; time its address into every existing node's address book."""
    old_nodes = list(net.nodes)
    dropped_before = addrs_dropped(clients, observers)
    wait_quiet(clients, net.pids())
    new = net.start(len(old_nodes))
    seen = watch_books(clients, old_nodes, new.address, new.launched_at + ADDR_TIMEOUT)
    print(f"  new node {new.address}: in {len(seen)} of {len(old_nodes)} address books", flush=True)
    if not seen:
        raise BenchError(f"no address book got {new.address} within {ADDR_TIMEOUT:g} s; see {new.log_path}")
    new.is_listening()
    observers[new.host] = clients.connect([new.host], "observer")[0]
    deadline = time.monotonic() + JOIN_TIMEOUT
    while (graph := snapshot(clients, observers)).outbound[new.host] < OUTBOUND and time.monotonic() < deadline:
        clients.idle(CONVERGE_POLL)  # past the deadline the graph is whatever it has
    dropped = addrs_dropped(clients, observers) - dropped_before
    eccentricity = graph.eccentricity(new.host)
    distances = graph.distances(new.host)
    missed: dict[int, int] = {}
    for node in old_nodes:
        if node.host not in seen:
            missed[distances[node.host]] = missed.get(distances[node.host], 0) + 1
    first = min(seen.values())
    return AddrResult(address=new.address, eccentricity=eccentricity, join=first - new.launched_at,
                      arrivals=tuple(sorted(when - first for when in seen.values())), total=len(old_nodes),
                      bound=(eccentricity - 1) * hops.isolated.median, dropped=dropped,
                      new_outbound=graph.outbound[new.host], by_distance=by_distance(distances, seen, first),
                      missed_distances=dict(sorted(missed.items())))


def code_version() -> str:
    """The commit the nodes run, and whether their code differs from it (results are per version)."""
    try:
        described = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--exclude", "*"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        described = ""
    return f"code {described}" if described else "code version unknown (no git)"


def run(args: argparse.Namespace, command: str) -> Report:
    started = time.monotonic()
    rng = random.Random(args.seed)
    cores = len(os.sched_getaffinity(0))
    priority = raise_observer_priority()
    environment = (f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
                   f"{cores} CPUs, load average at start {os.getloadavg()[0]:.2f}, {priority}, {code_version()}")
    print(environment, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="propagation-bench-"))
    prefix = pick_subnet(rng, args.nodes + 1)
    dns_port = free_udp_port(f"{prefix}.2")
    network = (f"{args.nodes} nodes on {prefix}.2-{args.nodes + 1}:{PORT}, DNS seed {prefix}.2:{dns_port}/udp "
               f"({DNS_ZONE}), --outbound {OUTBOUND}, the pair P-Q on {prefix}.{PAIR_OCTETS[0]}-{PAIR_OCTETS[1]}, "
               f"random seed {args.seed}")
    print(network, flush=True)
    ok = False
    try:
        with Network(workdir, prefix, dns_port) as net, Clients() as clients:
            net.start_pair()
            boot, observers = bootstrap(net, clients, args.nodes)
            pair = connect_pair(clients, net)
            hops, chats, changed = chat_rounds(clients, observers, net, pair, args.rounds, rng, cores)
            addr = addr_phase(clients, observers, net, hops)
        ok = True
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    return Report(command=command, environment=environment, network=network, bootstrap=boot, hops=hops,
                  chats=chats, addr=addr, graph_changes=changed, seconds=time.monotonic() - started,
                  load_end=os.getloadavg()[0])


# -- the report -------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def verdict(ratio: float | None) -> str:
    return "MISS" if ratio is None or ratio > TARGET_RATIO else "PASS"


def median_of(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def print_bootstrap(boot: Bootstrap, hops: Hops) -> None:
    print("| bootstrap | |\n|---|---|")
    print(f"| launch -> every node listening | {boot.all_listening:.1f} s |")
    print(f"| launch -> converged (every node {OUTBOUND} outbound, graph connected; polled every "
          f"{CONVERGE_POLL:g} s) | {boot.converged:.1f} s |")
    print(f"| graph | {boot.nodes} nodes, {boot.edges} linked pairs (A->B and B->A count once), peers per node "
          f"{boot.degrees[0]}/{boot.degrees[1]}/{boot.degrees[2]} (min/median/max; the DNS seed {boot.seed_degree}) |")
    print(f"| diameter | {boot.diameter} hops |")
    print(f"| addr entries dropped by the nodes' rate limits during the bootstrap | {boot.addrs_dropped} |")
    print(f"| **one hop**, isolated (two extra nodes P-Q linked only to each other; P's observer -> Q's) "
          f"| **median {ms(hops.isolated.median)}**, range {hops.isolated.range_ms()}, "
          f"{len(hops.isolated.values)} samples |")
    print(f"| one hop inside a flood (A's observer -> B's, every peer B of a typing network node A) "
          f"| median {ms(hops.in_flood.median)}, range {hops.in_flood.range_ms()}, "
          f"{len(hops.in_flood.values)} samples |")


def print_chats(chats: list[ChatResult]) -> None:
    print(f"\n| chat line | origin | ecc | typed -> every observer | bound: (ecc + 1) x hop | ratio "
          f"| <= {TARGET_RATIO}x? | (ecc + 1) x hop in a flood | ratio | node CPU / cores |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for number, chat in enumerate(chats, 1):
        print(f"| {number} | {chat.origin} | {chat.eccentricity} | {ms(chat.typed_to_all)} | {ms(chat.bound)} "
              f"| {chat.ratio:.1f} | {verdict(chat.ratio)} | {ms(chat.flood_bound)} | {chat.flood_ratio:.2f} "
              f"| {ms(chat.cpu_per_core)} |")
    ratios = [chat.ratio for chat in chats]
    times = Samples(tuple(chat.typed_to_all for chat in chats))
    ratio = median_of(ratios)
    print(f"| **median** (range) | | {median_of(c.eccentricity for c in chats):g} | **{ms(times.median)}** "
          f"({times.range_ms()}) | {ms(median_of(c.bound for c in chats))} "
          f"| **{ratio:.1f}** ({min(ratios):.1f}-{max(ratios):.1f}) | {verdict(ratio)} "
          f"| {ms(median_of(c.flood_bound for c in chats))} | {median_of(c.flood_ratio for c in chats):.2f} "
          f"| {ms(median_of(c.cpu_per_core for c in chats))} |")
    print("\nChat arrival by hop distance from the origin, all lines pooled (after the origin's observer):\n")
    print("| hops | observers | median | max |\n|---|---|---|---|")
    pooled: dict[int, list[float]] = {}
    for chat in chats:
        for distance, values in chat.by_distance.items():
            pooled.setdefault(distance, []).extend(values)
    for distance, values in sorted(pooled.items()):
        print(f"| {distance} | {len(values)} | {ms(statistics.median(values))} | {ms(max(values))} |")


def print_addr(addr: AddrResult) -> None:
    print("\n| address gossip | |\n|---|---|")
    print(f"| new node | {addr.address}, {addr.new_outbound} outbound when measured, eccentricity "
          f"{addr.eccentricity} |")
    print(f"| launch -> first address book (process start, DNS, dial, handshake) | {ms(addr.join)} |")
    print(f"| first book -> half / 90 % of the books | {ms(addr.after(0.5))} / {ms(addr.after(0.9))} |")
    print(f"| spread: first book -> every book | {ms(addr.spread)} "
          f"({addr.reached} of {addr.total} books within {ADDR_TIMEOUT:g} s; the last one "
          f"{ms(addr.arrivals[-1])} after the first) |")
    print(f"| bound: (ecc - 1) x hop | {ms(addr.bound)} |")
    ratio = addr.ratio
    print(f"| ratio | {'-' if ratio is None else f'{ratio:.1f}'} {verdict(ratio)} |")
    print(f"| addr entries dropped by the nodes' rate limits meanwhile | {addr.dropped} |")
    print("\n| hops from the new node | books that got it | median | max | books that never did |")
    print("|---|---|---|---|---|")
    for distance in sorted(set(addr.by_distance) | set(addr.missed_distances)):
        values = addr.by_distance.get(distance, [])
        print(f"| {distance} | {len(values)} | {ms(statistics.median(values)) if values else '-'} "
              f"| {ms(max(values)) if values else '-'} | {addr.missed_distances.get(distance, 0)} |")


def print_report(report: Report) -> None:
    print(f"\n## Propagation benchmark\n\n`{report.command}`\n\n{report.environment}; {report.network}. "
          f"{report.seconds:.0f} s in all; load average at the end {report.load_end:.2f}.\n")
    print_bootstrap(report.bootstrap, report.hops)
    print_chats(report.chats)
    print_addr(report.addr)
    print(f"\nEdges of the original graph that changed between the first and the last chat round: "
          f"{report.graph_changes}.")


# -- the command line --------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_limit(signum: int, frame: object) -> None:
    raise BenchError(f"the run took longer than RUN_LIMIT ({RUN_LIMIT} s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Chat and address propagation in a fresh N-node network.")
    parser.add_argument("--nodes", type=int, default=50, help="nodes in the network, the DNS seed included "
                                                              "(default 50)")
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    parser.add_argument("--seed", type=int, default=None, help="random seed (subnet, origins, edges)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not OUTBOUND + 2 <= args.nodes <= MAX_NODES:
        print(f"error: --nodes must be {OUTBOUND + 2}..{MAX_NODES}", file=sys.stderr)
        return 2
    args.rounds = 3 if args.quick else 5
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    command = "python benchmarks/propagation_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (a background job)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    signal.signal(signal.SIGALRM, _run_limit)
    signal.alarm(RUN_LIMIT)
    try:
        report = run(args, command.strip())
    except KeyboardInterrupt:
        print("interrupted; every node started was stopped", file=sys.stderr)
        return 130
    except (BenchError, AssertionError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
    print_report(report)
    misses = sum(chat.ratio > TARGET_RATIO for chat in report.chats)
    print(f"\n{len(report.chats) - misses} of {len(report.chats)} chat lines within {TARGET_RATIO}x the bound; "
          f"address gossip {verdict(report.addr.ratio)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
