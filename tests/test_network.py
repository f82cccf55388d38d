"""Multi-node networks: DNS bootstrap, address gossip, chat flooding, partitions, and real links.

Every node is a real `node.py` process and every link a real TCP connection.
A DNS seed hands out bare IPs, so every node of a DNS-bootstrapped network
listens on the default port 5050 on its own IP: each network gets a random
subnet 127.R.S.0/24 (R, S in 100..250; the demo network uses 127.0.0.2...),
with the seed node at .2 serving `--serve-dns 127.R.S.2:PORT` and every other
node at .3, .4, ... knowing only `--dns-seed NAME --dns-server 127.R.S.2:PORT`.
The last test runs nodes in network namespaces the test creates (10.R.S.0/24,
inside those namespaces only).

Times measured on a 2-core machine, also while other test suites ran on it (the
asserted bounds are several times larger; `pytest -s` prints each run's):
- 20 processes listen 5-16 s after they are spawned (Python start-up on 2 cores);
- 20 nodes have 8 outbound peers each and a connected graph 4-6 s after the last listens;
- a new (21st) node's address is in all 20 other books about 2 s after it listens;
- a chat line reaches a client on each of 21 nodes in 20-100 ms;
- two partitioned halves of 10 form one connected graph about 4 s after a bridge node listens,
  a chat line from one half reaches every client of both in under 0.1 s, and the bridge's own
  address is in every book by then; the halves' older addresses cross only as nodes reconnect or
  re-announce, over hours as in Bitcoin (docs/routing.md, "When a partition heals");
- 4 nodes in namespaces connect and have pinged within 5-6 s (ping_ms about 2 ms without
  delay; the netem variant expects 40 ms and more, and skips where the kernel has no netem).

Node logs (NAME.log) and data directories stay under pytest's basetemp: network0/, partition0/,
test_nodes_in_network_namespac*/.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from protocol.messages import Ack, Chat
from protocol.messages.handshake import NODE_NETWORK

from tests.support import wait_until
from tests.network_tools import (Check, Listener, Network, NetnsLab, NodeSpec, SpawnedNode, Subnet, book_addresses,
                                 books_check, connected, converged_check, graph_summary, member_args,
                                 lab_tag, outbound_graph, remove_stale_labs, settled_check,
                                 start_dns_network, wait_for)

NODES = 20
OUTBOUND = 8  # the node's default --outbound
CONVERGE_BOUND = 60.0  # s from the last node listening to 8 outbound each and a connected graph (measured 4-6)
NEW_ADDRESS_BOUND = 30.0  # s from a new node listening to its address in every book (measured about 2)
CHAT_BOUND = 10.0  # s from a typed line to a client on every node having it (measured 20-100 ms)
HEAL_BOUND = 45.0  # s from the bridge listening to one connected graph (measured about 4)
NETNS_BOUND = 40.0  # s for 4 namespaced nodes to connect and measure ping_ms (measured 5-6)


def report(text: str) -> None:
    """A measured time, shown with `pytest -s` (or -rP)."""
    print(f"[network] {text}")


@dataclass
class DnsNetwork:
    """Nodes bootstrapped from one DNS seed, and the time the last of them started listening."""

    network: Network
    subnet: Subnet
    nodes: list[SpawnedNode]
    listening_at: float
    converged_after: float | None = None
    failure: str | None = None

    def wait_converged(self, bound: float = CONVERGE_BOUND) -> float:
        """Seconds from the last node listening to convergence (measured once; later calls re-check)."""
        if self.failure is not None:
            pytest.fail(f"the network never converged (see the first test): {self.failure}")
        if self.converged_after is None:
            try:
                wait_for(lambda: converged_check(self.network, self.nodes, OUTBOUND),
                         bound - (time.monotonic() - self.listening_at), f"{len(self.nodes)} nodes to converge")
            except AssertionError as error:
                self.failure = str(error)
                raise
            self.converged_after = time.monotonic() - self.listening_at
        else:
            wait_for(lambda: converged_check(self.network, self.nodes, OUTBOUND), bound,
                     f"{len(self.nodes)} nodes to converge again")
        return self.converged_after


def require_loopback_subnets() -> None:
    try:
        Subnet()
    except (OSError, RuntimeError) as error:
        pytest.skip(f"cannot bind 127.R.S.x:5050 addresses here ({error}); Linux routes all of 127/8 to lo")


@pytest.fixture(scope="class")
def dns_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsNetwork]:
    """20 nodes that know one DNS name, its server (the seed node, .2) and nothing else."""
    require_loopback_subnets()
    network = Network(tmp_path_factory.mktemp("network"))
    try:
        subnet = Subnet()
        spawned = time.monotonic()
        nodes = start_dns_network(network, [subnet.ip(k) for k in range(2, 2 + NODES)], "seed.test")
        listening = time.monotonic()
        report(f"{NODES} nodes in {subnet} listening {listening - spawned:.1f} s after the first was spawned")
        yield DnsNetwork(network, subnet, nodes, listening)
    finally:
        network.kill_all()


# -- 1-3. one network bootstrapped from one DNS name -------------------------------------------------


def dns_port(seed: SpawnedNode) -> int:
    """The UDP port the seed node serves DNS on (from its command line)."""
    return int(seed.command[seed.command.index("--serve-dns") + 1].rpartition(":")[2])


def assert_chat_reaches_each_listener_once(sender: Listener, listeners: list[Listener], text: str) -> float:
    """Type text at sender; every listener gets its chat exactly once; returns the seconds it took."""
    sender.client.send(text)
    started = time.monotonic()
    ack = wait_until(lambda: next((m for m in list(sender.messages) if isinstance(m, Ack)), None),
                     CHAT_BOUND, message="the ack of the typed line")
    chat_id = ack.id

    def everyone_has_it() -> Check:
        missing = [listener.node.listen for listener in listeners if listener.chats(chat_id) == 0]
        return Check(not missing, f"no chat {chat_id} yet at the clients of {', '.join(missing)}")

    wait_for(everyone_has_it, CHAT_BOUND, "the chat line at a client of every node", interval=0.01)
    elapsed = time.monotonic() - started
    # Quiet period without a sleep: after each node's pong, everything it queued for its client is read.
    for n, listener in enumerate([sender, *listeners]):
        listener.sync(nonce=9_000_000 + n)
    counts = {listener.node.listen: listener.chats(chat_id) for listener in listeners}
    assert set(counts.values()) == {1}, f"chat {chat_id} delivered other than once: {counts}"
    assert sender.chats(chat_id) == 0, "the line came back to the client that typed it"
    texts = {m.text for listener in listeners for m in listener.messages if isinstance(m, Chat) and m.id == chat_id}
    assert texts == {text}, texts
    return elapsed


class TestOneDnsNetwork:
    """Tests 1-3 share one network of 20 (21 after test 2), stopped after the last of them."""

    # 1. Bootstrap from DNS only: the seed node's DNS answers and the addr gossip that follows.
    @pytest.mark.timeout(150)
    def test_twenty_nodes_bootstrapped_from_one_dns_name_end_with_8_outbound_each_and_a_connected_graph(
            self, dns_network):
        elapsed = dns_network.wait_converged()
        report(f"{NODES} nodes: 8 outbound each and a connected graph {elapsed:.1f} s after all listened "
               f"(bound {CONVERGE_BOUND:g} s)")
        graph = outbound_graph(dns_network.network, dns_network.nodes)
        everyone = {node.listen for node in dns_network.nodes}
        for node, targets in graph.items():
            want = min(OUTBOUND, NODES - 1)
            assert len(targets) == len(set(targets)) == want, f"{node}:\n{graph_summary(graph)}"
            assert set(targets) <= everyone - {node}, f"{node} dialled a stranger or itself: {targets}"
        assert connected(graph), graph_summary(graph)
        for node in dns_network.nodes:  # the same, as a person would ask for it
            info = dns_network.network.networkinfo(node)
            assert info.outbound == min(OUTBOUND, NODES - 1), (node.listen, info)

    # 2. A newcomer's address spreads by its own announcement and the relays of it.
    @pytest.mark.timeout(120)
    def test_a_new_nodes_address_reaches_every_other_nodes_address_book(self, dns_network):
        dns_network.wait_converged()
        seed = dns_network.nodes[0]
        host = dns_network.subnet.ip(2 + NODES)  # the 21st node
        args = member_args(seed.host, dns_port(seed), "seed.test")
        newcomer = dns_network.network.start([NodeSpec(f"n-{host}", host, args)])[0]
        listening = time.monotonic()
        others = list(dns_network.nodes)
        assert all(newcomer.listen not in book_addresses(node) for node in others), "known before it started?"
        dns_network.nodes.append(newcomer)  # from now on part of the network (the chat test includes it)
        elapsed = wait_for(lambda: books_check(others, {newcomer.listen}), NEW_ADDRESS_BOUND,
                           f"{newcomer.listen} in every book")
        report(f"{newcomer.listen} was in all {len(others)} other books {elapsed:.1f} s after it listened "
               f"(bound {NEW_ADDRESS_BOUND:g} s)")
        remaining = CONVERGE_BOUND - (time.monotonic() - listening)
        wait_for(lambda: converged_check(dns_network.network, dns_network.nodes, OUTBOUND), remaining,
                 "the newcomer to get 8 outbound peers")

    # 3. Chat floods every node, and each relays a line only the first time it hears it.
    @pytest.mark.timeout(120)
    def test_a_chat_line_reaches_a_client_on_every_node_exactly_once(self, dns_network):
        dns_network.wait_converged()
        network = dns_network.network
        listeners = [Listener(network, node) for node in dns_network.nodes]
        origin = random.Random().choice(dns_network.nodes)
        sender = Listener(network, origin)
        try:
            elapsed = assert_chat_reaches_each_listener_once(sender, listeners, f"hello from {origin.listen}")
        finally:
            for listener in [sender, *listeners]:
                listener.close()
        report(f"a chat line typed at {origin.listen} reached a client on all {len(listeners)} nodes "
               f"in {elapsed * 1000:.0f} ms (bound {CHAT_BOUND:g} s)")


# -- 4. a partition heals ---------------------------------------------------------------------------------


@dataclass
class Partition:
    network: Network
    half_a: list[SpawnedNode]
    half_b: list[SpawnedNode]
    bridge: SpawnedNode
    bridge_listening: float


HALF = 10


@pytest.fixture(scope="class")
def partition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Partition]:
    """Two halves of 10, each bootstrapped from its own seed and zone in its own subnet, then a bridge.

    The bridge is a node given `--seed` of each half's seed node (and no DNS):
    the only thing that joins the halves.
    """
    require_loopback_subnets()
    network = Network(tmp_path_factory.mktemp("partition"))
    try:
        a = Subnet()
        b = Subnet(exclude=[a])
        half_a = start_dns_network(network, [a.ip(k) for k in range(2, 2 + HALF)], "a.seed.test", prefix="a")
        half_b = start_dns_network(network, [b.ip(k) for k in range(2, 2 + HALF)], "b.seed.test", prefix="b")
        for name, half in (("A", half_a), ("B", half_b)):
            took = wait_for(lambda: settled_check(network, half, OUTBOUND), CONVERGE_BOUND, "a half to settle")
            counts = sorted(len(targets) for targets in outbound_graph(network, half).values())
            report(f"half {name} of {HALF} settled (waited {took:.1f} s); outbound counts {counts}")
        for half, other in ((half_a, half_b), (half_b, half_a)):
            strangers = {node.listen for node in other}
            graph = outbound_graph(network, half)
            assert not any(set(targets) & strangers for targets in graph.values()), graph_summary(graph)
            assert not any(book_addresses(node) & strangers for node in half), "the halves knew of each other"
        host = a.ip(2 + HALF)
        bridge = network.start([NodeSpec(f"bridge-{host}", host, ("--seed", half_a[0].listen, "--seed",
                                                                    half_b[0].listen, "--no-fixed-seeds"))])[0]
        yield Partition(network, half_a, half_b, bridge, time.monotonic())
    finally:
        network.kill_all()


class TestPartition:
    """Two halves and a bridge, shared by both tests, stopped after the second."""

    @pytest.mark.timeout(150)
    def test_a_partitioned_network_heals_into_one_graph_that_carries_chat_and_the_bridges_address(
            self, partition):
        network, bridge = partition.network, partition.bridge
        everyone = [*partition.half_a, *partition.half_b, bridge]

        def healed() -> Check:
            graph = outbound_graph(network, everyone)
            halves = {"a": {n.listen for n in partition.half_a}, "b": {n.listen for n in partition.half_b}}
            into = {name: bool(set(graph[bridge.listen]) & members) for name, members in halves.items()}
            bridge_out = len(graph[bridge.listen])
            state = settled_check(network, everyone, OUTBOUND)
            return Check(state.ok and bridge_out == OUTBOUND and all(into.values()),
                         f"bridge reaches {into}, has {bridge_out} outbound\n{state.state}")

        elapsed = wait_for(healed, HEAL_BOUND, "the halves to form one connected graph")
        report(f"two halves of {HALF} formed one connected graph {elapsed:.1f} s after the bridge listened "
               f"(bound {HEAL_BOUND:g} s)")

        # A line typed in half A reaches a client on every node of both halves, once.
        listeners = [Listener(network, node) for node in everyone]
        sender = Listener(network, partition.half_a[-1])
        try:
            took = assert_chat_reaches_each_listener_once(sender, listeners, "across the healed partition")
        finally:
            for listener in [sender, *listeners]:
                listener.close()
        report(f"a chat line from half A reached all {len(everyone)} nodes in {took * 1000:.0f} ms")

        # Gossip crosses the heal: the bridge announced itself to its peers in each half, and they passed it on.
        took = wait_for(lambda: books_check(everyone, {bridge.listen}), NEW_ADDRESS_BOUND,
                        f"the bridge's address {bridge.listen} in every book of both halves")
        report(f"the bridge's address was in all {len(everyone) - 1} other books {took:.1f} s after the heal")


# -- 5. real links: network namespaces with netem delay ----------------------------------------------


NETNS_NODES = 4
NETEM_DELAY_MS = 20  # on leaving each node's eth0, so a round trip between two nodes is 40 ms


def netns_unavailable() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the `{tool}` command (iproute2)"
    probe = f"epsprobe-{os.getpid()}-{secrets.token_hex(3)}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        return f"`ip netns add` does not work here: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return None


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NetnsLab]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    remove_stale_labs()
    rng = random.SystemRandom()
    r, s = rng.randint(100, 250), rng.randint(100, 250)
    lab = NetnsLab(lab_tag(), [f"10.{r}.{s}.{k}" for k in range(2, 2 + NETNS_NODES)])
    try:
        lab.build()
        yield lab
    finally:
        lab.remove()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("delay_ms", [0, NETEM_DELAY_MS], ids=["no-delay", "netem-20ms"])
def test_nodes_in_network_namespaces_connect_relay_chat_and_measure_the_links_round_trip(lab, tmp_path, delay_ms):
    if delay_ms:
        try:
            lab.delay(delay_ms)
        except RuntimeError as error:
            pytest.skip(f"no netem delay on this kernel (sch_netem missing?): {error}")
    network = Network(tmp_path)
    try:
        # Pings every second, so ping_ms is measured within the test.
        nodes = start_dns_network(network, lab.hosts, "seed.lab.test", dns_port=5353, netns=lab.node_ns,
                                  extra=("--ping-interval", "1"))

        def ready() -> Check:
            state = settled_check(network, nodes, OUTBOUND)  # 3 outbound each, or nothing left to dial
            if not state.ok:
                return state
            pings = {node.listen: [row.ping_ms for row in network.peerinfo(node) if row.services & NODE_NETWORK]
                     for node in nodes}
            return Check(all(p is not None for values in pings.values() for p in values), f"ping_ms: {pings}")

        elapsed = wait_for(ready, NETNS_BOUND, f"{NETNS_NODES} namespaced nodes to connect and ping")
        pings = [row.ping_ms for node in nodes for row in network.peerinfo(node) if row.services & NODE_NETWORK]
        report(f"{NETNS_NODES} nodes in namespaces ({delay_ms} ms netem) connected and pinged in {elapsed:.1f} s; "
               f"ping_ms min {min(pings):.1f} median {statistics.median(pings):.1f} max {max(pings):.1f}")
        assert len(pings) >= 2 * (NETNS_NODES - 1), pings  # a connected graph of 4 has 3 links, seen from both ends
        if delay_ms:
            round_trip = 2 * delay_ms
            assert min(pings) >= round_trip - 1, f"ping_ms below the {round_trip} ms netem round trip: {pings}"
            assert statistics.median(pings) < round_trip + 60, f"ping_ms far above {round_trip} ms: {pings}"
        else:
            assert statistics.median(pings) < 2 * NETEM_DELAY_MS, f"ping_ms without delay: {pings}"

        listeners = [Listener(network, node) for node in nodes]
        sender = Listener(network, nodes[-1])
        assert_chat_reaches_each_listener_once(sender, listeners, f"hello across {delay_ms} ms links")
    finally:
        network.kill_all()
