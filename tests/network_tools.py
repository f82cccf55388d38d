"""Helpers for the multi-node network tests (tests/test_network.py).

A DNS seed hands out bare IPs, so every node of a DNS-bootstrapped network
listens on the default port 5050 on an IP of its own. Each network here lives
in a random loopback subnet 127.R.S.0/24 (R, S in 100..250), away from the
demo network (127.0.0.2...) and from other tests, with nodes at .2, .3, ...

- `Subnet` picks such a subnet and hands out its IPs.
- `SpawnedNode` is a NodeProcess whose start is split in two (spawn, then wait
  for it to listen), so that a dozen nodes start in parallel and a node that
  fails to come up is still known, and killed, by the test.
- `Network` starts, queries and stops the nodes of one test; its `kill_all`
  belongs in a finalizer.
- `outbound_graph`, `connected`, `book_addresses` (peers.sqlite, read-only) read
  the state of a network; `wait_for` polls a `Check` and fails with its last state.
- `Listener` is a chat client whose frames a thread collects.
- `NetnsLab` builds network namespaces joined by veth pairs to a bridge in a
  namespace of its own; `in_netns` opens sockets inside one of them.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from protocol.framing import PORT
from protocol.messages import Chat, Message, Pong
from protocol.messages.handshake import NODE_NETWORK
from protocol.messages.peerinfo import GetNetworkInfo, GetPeerInfo, NetworkInfo, PeerInfo, PeerRow

from tests.support import LISTENING, ROOT, NodeProcess, WireClient, wait_until

NODE = str(ROOT / "node.py")
START_TIMEOUT = 60.0  # seconds for one node to listen when a dozen start at once on 2 cores


# -- addresses ---------------------------------------------------------------------------------


def can_bind(host: str, port: int, kind: int) -> bool:
    """Whether this address and port are free (TCP for SOCK_STREAM, UDP for SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Subnet:
    """A random 127.R.S.0/24 whose first addresses are free on port 5050."""

    def __init__(self, rng: random.Random | None = None, exclude: Iterable["Subnet"] = ()) -> None:
        rng = rng or random.SystemRandom()
        taken = {(s.r, s.s) for s in exclude}
        for _ in range(50):
            r, s = rng.randint(100, 250), rng.randint(100, 250)
            if (r, s) not in taken and all(can_bind(f"127.{r}.{s}.{k}", PORT, socket.SOCK_STREAM)
                                           for k in (2, 3, 4)):
                self.r, self.s = r, s
                return
        raise RuntimeError("no free 127.R.S.0/24 subnet found in 50 tries")

    def ip(self, k: int) -> str:
        assert 1 <= k <= 254, k
        return f"127.{self.r}.{self.s}.{k}"

    def __str__(self) -> str:
        return f"127.{self.r}.{self.s}.0/24"


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def address(host: str, port: int = PORT) -> str:
    return f"{host}:{port}"


# -- processes -----------------------------------------------------------------------------------


class SpawnedNode(NodeProcess):
    """A NodeProcess started without waiting; `wait_listening` waits (NodeProcess does both at once).

    `prefix` runs the node under another command, e.g. `ip netns exec NS`.
    """

    def __init__(self, data_dir: Path, *args: str, host: str, port: int = PORT,
                 prefix: Sequence[str] = (), netns: str | None = None) -> None:  # noqa: D107 (no super())
        self.netns = netns  # the network namespace it runs in; None: this one
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.command = [*prefix, sys.executable, NODE, "--host", host, "--port", str(port),
                        "--data-dir", str(data_dir), "--no-colour", *args]
        self.host, self.port = host, port
        self._log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=ROOT)

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        match = wait_until(lambda: LISTENING.search(self.log()) or self._exited(), timeout=timeout,
                           interval=0.05, message=f"node to listen ({self.log_path})")
        if match is True:
            raise AssertionError(f"node {self.host} exited with {self.process.returncode}:\n{self.log()}")
        assert (match.group(1), int(match.group(2))) == (self.host, self.port), match.group(0)

    @property
    def listen(self) -> str:
        return address(self.host, self.port)

    def book_path(self) -> Path:
        return self.data_dir / "peers.sqlite"


@dataclass
class NodeSpec:
    name: str
    host: str
    args: tuple[str, ...]
    netns: str | None = None  # run under `ip netns exec NETNS`


@dataclass
class Network:
    """The nodes (and clients) of one test; kill_all() in a finalizer stops everything it started."""

    root: Path
    nodes: list[SpawnedNode] = field(default_factory=list)
    _control: dict[int, WireClient] = field(default_factory=dict)
    _clients: list[WireClient] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, specs: Sequence[NodeSpec]) -> list[SpawnedNode]:
        """Spawn every node at once, then wait until all of them listen."""
        started = []
        for spec in specs:
            prefix = ("ip", "netns", "exec", spec.netns) if spec.netns else ()
            node = SpawnedNode(self.root / spec.name, *spec.args, host=spec.host, prefix=prefix, netns=spec.netns)
            with self._lock:
                self.nodes.append(node)
            started.append(node)
        deadline = time.monotonic() + START_TIMEOUT
        for node in started:
            node.wait_listening(max(1.0, deadline - time.monotonic()))
        return started

    def client(self, node: SpawnedNode, timeout: float = 10.0) -> WireClient:
        """A new chat client on node, handshake done (closed by kill_all)."""
        if node.netns is None:
            client = WireClient(node.address, timeout)
        else:
            client = in_netns(node.netns, lambda: WireClient(node.address, timeout))
        self._clients.append(client)
        client.handshake()
        return client

    def control(self, node: SpawnedNode) -> WireClient:
        """The one client per node that asks it questions."""
        key = id(node)
        if key not in self._control:
            self._control[key] = self.client(node)
        return self._control[key]

    def ask(self, node: SpawnedNode, question: Message, answer: str) -> Message:
        client = self.control(node)
        client.send_message(question)
        return client.recv_until(answer)

    def peerinfo(self, node: SpawnedNode) -> tuple[PeerRow, ...]:
        answer = self.ask(node, GetPeerInfo(), "peerinfo")
        assert isinstance(answer, PeerInfo), answer
        return answer.peers

    def networkinfo(self, node: SpawnedNode) -> NetworkInfo:
        answer = self.ask(node, GetNetworkInfo(), "networkinfo")
        assert isinstance(answer, NetworkInfo), answer
        return answer

    def kill_all(self) -> None:
        """SIGKILL every node, then close every client (nodes first: their clients then read EOF)."""
        with self._lock:
            nodes = list(self.nodes)
        for node in nodes:
            if node.process.poll() is None:
                node.process.kill()
        for node in nodes:
            node.kill()  # waits for the process and closes its log
        for client in self._clients:
            hang_up(client)
        self._clients.clear()
        self._control.clear()


def hang_up(client: WireClient) -> None:
    """Close a client's connection for real (its reader holds a second descriptor).

    shutdown() first: it wakes a Listener thread blocked reading this socket,
    which holds the reader's lock; closing the reader before would wait for that
    lock for ever.
    """
    try:
        client.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # never connected, or already reset
    try:
        client.reader.stream.close()
    except OSError:
        pass
    client.close()


# -- reading a network's state ---------------------------------------------------------------------


def node_outbound(rows: Iterable[PeerRow]) -> list[str]:
    """Addresses of the node peers this node dialled and finished a handshake with."""
    return [row.address for row in rows if row.direction == "outbound" and row.services & NODE_NETWORK]


def outbound_graph(network: Network, nodes: Sequence[SpawnedNode]) -> dict[str, list[str]]:
    """Each node's listening address -> the addresses of its outbound node peers."""
    return {node.listen: node_outbound(network.peerinfo(node)) for node in nodes}


def connected(graph: dict[str, list[str]]) -> bool:
    """Whether the graph (taken as undirected) is one component spanning all its keys."""
    if not graph:
        return True
    neighbours: dict[str, set[str]] = {key: set() for key in graph}
    for key, targets in graph.items():
        for target in targets:
            neighbours[key].add(target)
            neighbours.setdefault(target, set()).add(key)
    start = next(iter(graph))
    seen, queue = {start}, deque([start])
    while queue:
        for other in neighbours[queue.popleft()]:
            if other not in seen:
                seen.add(other)
                queue.append(other)
    return set(graph) <= seen


def graph_summary(graph: dict[str, list[str]]) -> str:
    return "\n".join(f"  {key}: {len(targets)} out -> {', '.join(sorted(targets))}"
                     for key, targets in sorted(graph.items()))


def book_addresses(node: SpawnedNode) -> set[str]:
    """Every address in node's peers.sqlite, read through a read-only connection."""
    path = node.book_path()
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {row[0] for row in db.execute("SELECT address FROM addresses")}
    except sqlite3.OperationalError:  # the node has not created the table yet
        return set()
    finally:
        db.close()


class Listener:
    """A chat client whose frames a thread reads as they arrive, so the test can wait on them."""

    def __init__(self, network: Network, node: SpawnedNode) -> None:
        self.node = node
        self.client = network.client(node)
        self.messages: list[Message] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"listener-{node.host}")
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.messages.append(self.client.recv_message(timeout=3600))
        except BaseException as error:  # closed at the end of the test, or the node went away
            self.error = error

    def close(self) -> None:
        hang_up(self.client)
        self._thread.join(timeout=5)

    def chats(self, chat_id: str) -> int:
        return sum(1 for m in list(self.messages) if isinstance(m, Chat) and m.id == chat_id)

    def has_pong(self, nonce: int) -> bool:
        if self.error is not None:
            raise AssertionError(f"chat client of {self.node.listen} lost its connection: {self.error!r}")
        return any(m == Pong(nonce=nonce) for m in list(self.messages))

    def sync(self, nonce: int, timeout: float = 10.0) -> None:
        """After this, every frame the node queued for this client before the ping has been read."""
        self.client.send(f'ping {{"nonce":{nonce}}}')
        wait_until(lambda: self.has_pong(nonce), timeout, interval=0.01,
                   message=f"pong {nonce} from {self.node.listen}")


# -- building and watching a DNS-bootstrapped network ----------------------------------------------


def seed_args(host: str, dns_port: int, zone: str) -> tuple[str, ...]:
    return ("--serve-dns", f"{host}:{dns_port}", "--dns-zone", zone, "--no-fixed-seeds")


def member_args(seed_host: str, dns_port: int, zone: str) -> tuple[str, ...]:
    return ("--dns-seed", zone, "--dns-server", f"{seed_host}:{dns_port}", "--no-fixed-seeds")


def start_dns_network(network: Network, hosts: Sequence[str], zone: str, prefix: str = "n",
                      dns_port: int | None = None, extra: Sequence[str] = (),
                      netns: Sequence[str | None] | None = None) -> list[SpawnedNode]:
    """hosts[0] serves `zone` by DNS; the others know only that name and that DNS server.

    The seed starts first (its DNS server answers before it logs LISTENING), then
    all the others at once. Returns the nodes, seed first.
    """
    spaces = list(netns) if netns is not None else [None] * len(hosts)
    port = dns_port if dns_port is not None else free_udp_port(hosts[0])
    seed = network.start([NodeSpec(f"{prefix}-{hosts[0]}", hosts[0], (*seed_args(hosts[0], port, zone), *extra),
                                   netns=spaces[0])])
    members = network.start([NodeSpec(f"{prefix}-{host}", host, (*member_args(hosts[0], port, zone), *extra),
                                      netns=space) for host, space in zip(hosts[1:], spaces[1:])])
    return seed + members


@dataclass
class Check:
    ok: bool
    state: str = ""


def wait_for(check, timeout: float, what: str, interval: float = 0.25) -> float:
    """Poll check() -> Check until ok; returns the seconds it took, or fails with the last state seen."""
    start = time.monotonic()
    while True:
        result = check()
        if result.ok:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last state:\n{result.state}")
        time.sleep(interval)


def converged_check(network: Network, nodes: Sequence[SpawnedNode], outbound: int = 8) -> Check:
    """Every node has min(outbound, N-1) outbound node peers, and the outbound graph is connected."""
    want = min(outbound, len(nodes) - 1)
    graph = outbound_graph(network, nodes)
    short = {key: len(targets) for key, targets in graph.items() if len(targets) != want}
    ok = not short and connected(graph)
    return Check(ok, f"want {want} outbound each; off: {short}; connected: {connected(graph)}\n"
                     + graph_summary(graph))


def settled_check(network: Network, nodes: Sequence[SpawnedNode], outbound: int = 8) -> Check:
    """Every node has min(outbound, N-1) outbound node peers, or some and no address left to dial.

    The second case is a small network's: a node does not dial a node that is
    connected to it the other way (after crossing dials were collapsed), so in
    a network of 10 a node may end with 7 outbound and 2 inbound-only peers.
    "Left to dial" is an address of this network in its book that it has no
    link to. The outbound graph, taken as undirected, must be connected.
    """
    want = min(outbound, len(nodes) - 1)
    members = {node.listen for node in nodes}
    graph, unsettled = {}, {}
    for node in nodes:
        rows = [row for row in network.peerinfo(node) if row.services & NODE_NETWORK]
        graph[node.listen] = node_outbound(rows)
        linked = {address(row.address.rpartition(":")[0]) for row in rows}  # one IP per node, on port 5050
        left = sorted((book_addresses(node) & members) - linked - {node.listen})
        if len(graph[node.listen]) != want and (left or not graph[node.listen]):
            unsettled[node.listen] = f"{len(graph[node.listen])} out, not linked to {left}"
    ok = not unsettled and connected(graph)
    return Check(ok, f"want {want} outbound each (or none left to dial); unsettled: {unsettled}; "
                     f"connected: {connected(graph)}\n" + graph_summary(graph))


def books_check(nodes: Sequence[SpawnedNode], wanted: set[str]) -> Check:
    """Every node's address book holds every wanted address (but its own)."""
    missing = {node.listen: sorted(wanted - book_addresses(node) - {node.listen}) for node in nodes}
    missing = {key: value for key, value in missing.items() if value}
    return Check(not missing, "\n".join(f"  {key} lacks {len(value)}: {', '.join(value)}"
                                        for key, value in sorted(missing.items())))


# -- network namespaces ----------------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def in_netns(name: str, action):
    """Run action() on a thread that has entered network namespace `name` (sockets it makes stay there)."""
    import ctypes

    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns({name}): {os.strerror(error)}")
            finally:
                os.close(fd)
            outcome["value"] = action()
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=target, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]


class NetnsLab:
    """Namespaces NAME-h1..hN (one node each) wired by veth pairs to a bridge in namespace NAME-br.

    Nothing is created in the namespace the tests run in: each veth pair is made
    with its ends directly in a node namespace and the bridge namespace, so the
    lab's traffic (10.R.S.0/24) cannot leave it. remove() deletes every namespace.
    """

    def __init__(self, tag: str, hosts: Sequence[str], prefix_len: int = 24) -> None:
        self.tag = tag
        self.hosts = list(hosts)
        self.bridge_ns = f"{tag}-br"
        self.node_ns = [f"{tag}-h{k}" for k in range(1, len(hosts) + 1)]
        self.prefix_len = prefix_len
        self.created: list[str] = []

    @staticmethod
    def ip(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
        return result

    def netns_exec(self, ns: str, *command: str) -> subprocess.CompletedProcess[str]:
        return self.ip("netns", "exec", ns, *command)

    def _add_namespace(self, name: str) -> None:
        self.ip("netns", "add", name)
        self.created.append(name)
        self.netns_exec(name, "ip", "link", "set", "lo", "up")

    def build(self) -> None:
        self._add_namespace(self.bridge_ns)
        self.netns_exec(self.bridge_ns, "ip", "link", "add", "br0", "type", "bridge")
        self.netns_exec(self.bridge_ns, "ip", "link", "set", "br0", "up")
        for k, (ns, host) in enumerate(zip(self.node_ns, self.hosts), start=1):
            self._add_namespace(ns)
            self.ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"port{k}",
                    "netns", self.bridge_ns)
            self.netns_exec(self.bridge_ns, "ip", "link", "set", f"port{k}", "master", "br0")
            self.netns_exec(self.bridge_ns, "ip", "link", "set", f"port{k}", "up")
            self.netns_exec(ns, "ip", "addr", "add", f"{host}/{self.prefix_len}", "dev", "eth0")
            self.netns_exec(ns, "ip", "link", "set", "eth0", "up")

    def delay(self, milliseconds: int) -> None:
        """netem on every node's eth0: each packet waits this long on leaving a node (RTT = 2x)."""
        for ns in self.node_ns:
            self.netns_exec(ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", f"{milliseconds}ms")

    def remove(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        self.created.clear()


LAB_NAME = re.compile(r"^eps(\d+)x[0-9a-f]{4}-(br|h\d+)$")


def lab_tag() -> str:
    """A tag unique to this run: the test process's pid and some randomness."""
    return f"eps{os.getpid()}x{secrets.token_hex(2)}"


def remove_stale_labs() -> list[str]:
    """Delete namespaces left by runs of these tests that were killed before their finalizers ran.

    Only names of the form NetnsLab gives, whose test process (the pid in the
    name) is gone and in which no process runs any more.
    """
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    removed = []
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        match = LAB_NAME.match(name)
        if not match or Path(f"/proc/{match.group(1)}").exists():
            continue
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=20).stdout
        if pids.strip():
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        removed.append(name)
    return removed
