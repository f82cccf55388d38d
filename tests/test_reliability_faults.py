"""Faults: kill -9 while a node mines and while it writes an addr flood; a mining network split and healed.

Every node is a real `node.py` process and every file a real SQLite file.

- The miner is killed -9 six times, on one data directory, while it finds and
  stores blocks (and confirms payments from its own coinbases). After each kill
  the chain reopens with a UTXO set equal to a replay of its active chain, every
  block seen committed before the kill is still there, and the miner's worker
  processes are gone; the restarted node mines on from the same tip.
- A node is killed -9 five times, on one data directory, while twelve peers it
  dialled answer its getaddr with 1,000 addresses each. After each kill the
  address book opens, holds only well-formed rows, keeps what was committed,
  and never holds more than its bound of 20,000 (60,000 addresses are offered
  in all, so the bound is crossed in the middle of a kill loop).
- Ten nodes in two halves of five, each half with a miner, mine apart. Each half
  is a star (--connect to its hub, --outbound 0: no other links), and A's node 1
  also dials B's node 1 through a tests/routing_tools.Relay that holds the
  connection. The miners then restart as plain nodes, so the most-work tip stays
  put; releasing the Relay is the heal, and every node must end on that tip.
- A node whose DNS seed port is taken must say so and exit 1 (it once hung in stop()).

The kill -9 loops while a node connects blocks fed to it, and during a reorg,
are in tests/test_chainstore.py (crash safety with real processes); their
helpers (store_path, active_height, utxo_of, replay_view) are reused here.

Measured on a 2-core machine with other suites running (load 14-56; `pytest -s` prints each run's):
- the mining loop: 6 kills in 6-12 s; the flood loop: 5 kills in 5-10 s, every one before its
  round was stored, the book at its bound of 20,000 from the fourth round on;
- the halves converge 1.3-7.3 s after the link comes up (bound: HEAL_BOUND, 45 s), with a reorg
  of 37-206 blocks out and 233-391 in on each node of the losing half; the test takes 7-18 s
  after its ten nodes listen (4-20 s to start them);
- the module: about 30 s.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import socket
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from protocol.addresses import format_address
from protocol.messages import TxMessage
from protocol.messages.chaininfo import BlockInfo, TxInfo
from protocol.networks import NETWORKS
from protocol.transaction import OutPoint
from roles.addrbook import MAX_ADDRESSES, AddressBook
from roles.chainstore import CONNECTED, ChainStore
from roles.routing import MIN_PLAUSIBLE_TIME
from tests.chain_builder import Key, make_transaction
from tests.network_tools import Check, Network, NodeSpec, SpawnedNode, Subnet, wait_for
from tests.node_tools import assert_one_line_error, run_node
from tests.routing_tools import FakeListener, FakePeer, Relay, addr, many_entries, random_subnet
from tests.support import wait_until
from tests.sync_tools import REGTEST_ARGS, ChainPeer
from tests.test_chainstore import active_height, replay_view, store_path, utxo_of

REGTEST = NETWORKS["regtest"]
MINER = Key(REGTEST, "miner")  # the node mines to this key's address; the test signs its payments
PAYEE = Key(REGTEST, "payee")
MINING_ROLES = ("--roles", "routing,blockchain,chat,mining", "--mine-to", MINER.address)
FEE = 10_000
WORKERS_EXIT_BOUND = 10.0  # s for a killed miner's worker processes to notice and exit (measured 1-2)


def report(text: str) -> None:
    """A measured figure, shown with `pytest -s` (or -rP)."""
    print(f"[faults] {text}")


# -- what a killed node left on disk -------------------------------------------------------------------


def reopened_chain(path: Path, committed: dict[int, str]) -> ChainStore:
    """Open a chain store a node left behind and check it; the caller closes it.

    The UTXO set must equal a replay of the active chain (the store's own check, and
    tests/chain_builder's UtxoView applied block by block), each active block must
    extend the one below, and every block seen committed (height -> id) must still
    be on the active chain.
    """
    store = ChainStore(path, REGTEST)  # opening replays coins a crash left in memory only (ReplayBlocks)
    try:
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert store.utxo_matches_replay(), "the UTXO set is not a replay of the active chain"
        blocks = list(store.active_blocks())
        assert utxo_of(store) == replay_view(blocks).coins
        for height, (parent, child) in enumerate(zip(blocks, blocks[1:]), start=1):
            assert child.header.prev == parent.block_id, f"the active block at {height} does not extend {height - 1}"
            assert store.header(child.block_id).status == CONNECTED
        lost = {height: block_id for height, block_id in committed.items() if store.active_id(height) != block_id}
        assert not lost, f"blocks committed before the kill are gone: {lost}"
    except BaseException:
        store.close()
        raise
    return store


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (the miner's workers, multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])  # the field after the state
        except (OSError, ValueError, IndexError):
            continue  # gone while we looked
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether pid is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- 1. kill -9 while mining -------------------------------------------------------------------------------

MINING_KILLS = 6


def mature_coinbases(store: ChainStore, limit: int) -> list[tuple[OutPoint, int]]:
    """Unspent coinbase outputs paying the miner that a transaction in the next block may spend."""
    spendable = store.height + 1 - REGTEST.coinbase_maturity
    coins = [(outpoint, coin.amount) for outpoint, coin in utxo_of(store).items()
             if coin.is_coinbase and coin.address == MINER.address and coin.height <= spendable and coin.amount > FEE]
    return sorted(coins, key=lambda item: (item[0].txid, item[0].index))[:limit]


def send_payments(client: ChainPeer, coins: list[tuple[OutPoint, int]]) -> int:
    """Pay half of each coin to PAYEE (the rest back to the miner); how many the mempool took."""
    taken = 0
    for outpoint, amount in coins:
        tx = make_transaction(outpoint, [(PAYEE, amount // 2), (MINER, amount - amount // 2 - FEE)], MINER)
        client.send_message(TxMessage(tx))
        answer = client.wait_for("txinfo", "error")
        taken += isinstance(answer, TxInfo)
    return taken


def test_kill_9_while_mining_leaves_a_chain_that_replays_and_the_miner_mines_on_from_its_tip(start_node):
    """Six kills of one miner: the first in its opening burst (hundreds of blocks a second, until
    block times lead the clock by a minute), the others in the bursts of about six a second after."""
    rng = random.Random(2024)
    committed: dict[int, str] = {}  # height -> block id, read from the store just before each kill
    coins: list[tuple[OutPoint, int]] = []  # mature coinbases found in the store the last kill left
    payments, heights = 0, []
    started = time.monotonic()
    for kill in range(MINING_KILLS):
        node = start_node("--network", "regtest", "--outbound", "0", *MINING_ROLES, name="miner")
        path = store_path(node.data_dir)
        with closing(sqlite3.connect(path, timeout=30)) as db, ChainPeer.open(node) as client:
            start_height = client.info().height
            assert start_height >= max(committed, default=0), "the restarted node is behind what was committed"
            payments += send_payments(client, coins)  # into the mempool, so the next blocks spend coins too
            target = start_height + (rng.randint(20, 250) if kill == 0 else rng.randint(2, 12))
            wait_until(lambda: active_height(db) >= target, timeout=30, interval=0.0005,
                       message=f"the miner to reach height {target}")
            workers = child_pids(node.pid)
            height, block_id = db.execute("SELECT height, id FROM active ORDER BY height DESC LIMIT 1").fetchone()
            node.kill()
        committed[height] = block_id
        assert workers, "the mining node had no worker processes"
        try:
            wait_until(lambda: not any(alive(pid) for pid in workers), timeout=WORKERS_EXIT_BOUND, interval=0.05,
                       message="the killed miner's worker processes to exit")
        finally:
            for pid in workers:  # never leave one spinning if the check failed
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        store = reopened_chain(path, committed)
        try:
            heights.append(store.height)
            spends = sum(len(block.transactions) - 1 for block in store.active_blocks())
            coins = mature_coinbases(store, 3)
        finally:
            store.close()
    assert spends >= 1, "no payment was ever confirmed: the replay checked coinbases only"
    report(f"{MINING_KILLS} kills while mining at heights {heights}; {payments} payments accepted, {spends} "
           f"confirmed; {time.monotonic() - started:.1f} s")


# -- 2. kill -9 during an addr flood ------------------------------------------------------------------------

FLOOD_PEERS = 12  # peers the node dials each round; each answers its getaddr with 1,000 addresses
FLOOD_ROUNDS = 5  # 60,000 addresses offered in all, three times the book's bound
PER_PEER = 1000  # MAX_ADDR_ENTRIES: the most one addr may carry
BOOK_SOURCES = {"dns", "seed", "crawler"}  # besides peer IPs (roles/routing.py)


@dataclass
class FloodRound:
    """One round: fake peers for the node to dial, and the addresses each will answer with."""

    number: int
    subnet: str
    listeners: list[FakeListener] = field(default_factory=list)
    peers: list[FakePeer] = field(default_factory=list)

    @property
    def port(self) -> int:
        return 7000 + self.number  # this round's addresses, told apart from the others' by port

    def listen(self) -> list[str]:
        """Open this round's listeners; the --connect arguments that make the node dial them."""
        self.listeners = [FakeListener(f"{self.subnet}.{10 + i}") for i in range(FLOOD_PEERS)]
        return [arg for listener in self.listeners for arg in ("--connect", listener.text)]

    def flood(self) -> None:
        """Accept every dial, shake hands, and send each peer's 1,000 addresses without waiting."""
        self.peers = [listener.accept() for listener in self.listeners]
        for peer in self.peers:
            peer.answer_dial()
        # Later rounds are fresher: the book evicts the stalest first, so earlier rounds go first.
        age = 3600 * (FLOOD_ROUNDS - self.number)
        for index, peer in enumerate(self.peers):
            peer.send_message(addr(*many_entries(PER_PEER, second_octet=20 + index, port=self.port, age=age)))

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        for listener in self.listeners:
            listener.close()


def book_count(db: sqlite3.Connection, port: int) -> int:
    """Addresses with this port (one round's) in the book, through a connection of the test's own."""
    return db.execute("SELECT count(*) FROM addresses WHERE port = ?", (port,)).fetchone()[0]


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def assert_well_formed(book: AddressBook) -> None:
    """Every row is an address the node could dial: consistent, in range, with a plausible history."""
    now = time.time()
    with closing(read_only(book.path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT address, host, port, services, last_seen, last_success, last_attempt, attempts, "
                          "source FROM addresses").fetchall()
    for address, host, port, services, last_seen, last_success, last_attempt, attempts, source in rows:
        ipaddress.ip_address(host)
        assert isinstance(port, int) and 0 < port < 65536 and address == format_address(host, port), address
        assert isinstance(services, int) and -2**63 <= services < 2**63, address
        assert isinstance(last_seen, int) and MIN_PLAUSIBLE_TIME < last_seen <= now + 600, address
        for moment in (last_success, last_attempt):
            assert moment is None or (isinstance(moment, int) and moment <= now + 1), address
        assert isinstance(attempts, int) and attempts >= 0, address
        assert source in BOOK_SOURCES or ipaddress.ip_address(source), address


def test_kill_9_during_an_addr_flood_leaves_a_whole_book_within_its_bound(start_node):
    rng = random.Random(77)
    subnet = random_subnet()
    landed, counts = 0, []
    started = time.monotonic()
    for number in range(FLOOD_ROUNDS):
        round_ = FloodRound(number, subnet)
        try:
            node = start_node("--roles", "routing", "--outbound", "0", *round_.listen(), name="flooded")
            path = node.data_dir / "peers.sqlite"
            with closing(read_only(path)) as db:
                round_.flood()
                kill_at = rng.randint(2, FLOOD_PEERS - 1) * PER_PEER  # some peers' addresses stored, not all
                wait_until(lambda: book_count(db, round_.port) >= kill_at, timeout=30, interval=0.0005,
                           message=f"{kill_at} addresses of round {number} in the book")
                seen = book_count(db, round_.port)
                node.kill()
        finally:
            round_.close()
        book = AddressBook(path)
        try:
            assert_well_formed(book)
            with closing(read_only(path)) as db:
                count, kept = book.count(), book_count(db, round_.port)
            assert count <= MAX_ADDRESSES, f"{count} entries: over the bound of {MAX_ADDRESSES}"
            assert kept >= seen, f"{seen} addresses were committed before the kill, {kept} reopened"
            assert book.candidates(10), "a reopened book offers nothing to dial"
        finally:
            book.close()
        landed += kept < FLOOD_PEERS * PER_PEER
        counts.append(count)
    assert landed >= 3, f"only {landed} of {FLOOD_ROUNDS} kills landed before the flood was stored"
    assert counts[-1] == MAX_ADDRESSES, f"the book never reached its bound: {counts}"
    report(f"{FLOOD_ROUNDS} kills during addr floods, {landed} before the round was stored; book sizes {counts}; "
           f"{time.monotonic() - started:.1f} s")


# -- 3. two mining halves of a network, healed ----------------------------------------------------------------

HALF = 5  # nodes per half: a hub, three that --connect to it, and a miner that does too
HEAL_BOUND = 45.0  # s from the link coming up to every node on the most-work tip (measured 2-5)
SETTLE_BOUND = 30.0  # s for a half to agree on its own tip
LEAD = 10  # blocks the winning half mines beyond the other, so that the two never tie


@dataclass
class HalfNetwork:
    """One half: node 0 is its hub, node 1 links to the other half (or is linked to), the last mines."""

    name: str
    nodes: list[SpawnedNode]
    specs: list[NodeSpec]

    @property
    def miner(self) -> SpawnedNode:
        return self.nodes[-1]


def mining_roles(half: str) -> tuple[str, ...]:
    # A key per half: two miners paying one address from one clock would build the very same blocks.
    return ("--roles", "routing,blockchain,chat,mining", "--mine-to", Key(REGTEST, f"miner {half}").address)


def half_specs(name: str, hosts: list[str], extra_for_link: tuple[str, ...] = ()) -> list[NodeSpec]:
    base = (*REGTEST_ARGS, "--no-fixed-seeds")
    hub = hosts[0]
    specs = [NodeSpec(f"{name}0", hub, base)]
    for index, host in enumerate(hosts[1:], start=1):
        args = (*base, "--connect", format_address(hub, 5050))
        if index == 1:
            args += extra_for_link
        if index == len(hosts) - 1:
            args += mining_roles(name)
        specs.append(NodeSpec(f"{name}{index}", host, args))
    return specs


class TipReader:
    """One regtest client per node, reopened when the node behind it is replaced."""

    def __init__(self) -> None:
        self.clients: dict[int, ChainPeer] = {}

    def tip(self, node: SpawnedNode) -> tuple[int, str]:
        client = self.clients.get(id(node))
        if client is None:
            client = self.clients[id(node)] = ChainPeer.open(node)
        info = client.info()
        return info.height, info.tip

    def knows(self, node: SpawnedNode, block_id: str) -> bool:
        self.tip(node)
        client = self.clients[id(node)]
        return isinstance(client.ask(f'getblock {{"id":"{block_id}"}}', "blockinfo", "error"), BlockInfo)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def agreed(reader: TipReader, nodes: list[SpawnedNode], tip: str | None = None) -> Check:
    tips = {node.listen: reader.tip(node) for node in nodes}
    ids = {block_id for _, block_id in tips.values()}
    ok = len(ids) == 1 and (tip is None or ids == {tip})
    return Check(ok, "\n".join(f"  {name}: height {height} {block_id[:16]}" for name, (height, block_id) in tips.items()))


def stop_mining(network: Network, half: HalfNetwork, reader: TipReader) -> None:
    """Restart the half's miner as a plain node (same data directory, same links): mining ends."""
    miner = half.miner
    assert miner.stop() == 0, miner.log()[-2000:]
    shutil.move(miner.log_path, miner.log_path.with_suffix(".mining.log"))
    spec = half.specs[-1]
    mining = mining_roles(half.name.lower())
    plain = NodeSpec(spec.name, spec.host, tuple(a for a in spec.args if a not in mining))
    half.nodes[-1] = network.start([plain])[0]
    old_client = reader.clients.pop(id(miner), None)
    if old_client is not None:
        old_client.close()


def settle(reader: TipReader, half: HalfNetwork) -> tuple[int, str]:
    wait_for(lambda: agreed(reader, half.nodes), SETTLE_BOUND, f"half {half.name} to agree on a tip", interval=0.1)
    return reader.tip(half.nodes[0])


@pytest.fixture
def two_halves(tmp_path: Path) -> Iterator[tuple[Network, HalfNetwork, HalfNetwork, Relay]]:
    """Ten regtest nodes on 127.R.S.2-11; A's node 1 dials B's node 1 through a Relay that holds the link."""
    try:
        subnet = Subnet()
    except (OSError, RuntimeError) as error:
        pytest.skip(f"cannot bind 127.R.S.x:5050 addresses here ({error})")
    network = Network(tmp_path)
    hosts_a = [subnet.ip(k) for k in range(2, 2 + HALF)]
    hosts_b = [subnet.ip(k) for k in range(2 + HALF, 2 + 2 * HALF)]
    link = Relay(subnet.ip(100), target=(hosts_b[1], 5050), hold=True)
    try:
        # The held dial must outlive the partition: no handshake timeout before the heal.
        specs_a = half_specs("a", hosts_a, ("--connect", link.text, "--handshake-timeout", "600"))
        specs_b = half_specs("b", hosts_b)
        nodes = network.start([*specs_a, *specs_b])
        yield (network, HalfNetwork("A", nodes[:HALF], specs_a), HalfNetwork("B", nodes[HALF:], specs_b), link)
    finally:
        link.close()
        network.kill_all()


@pytest.mark.timeout(150)
def test_two_halves_that_mined_apart_converge_on_the_most_work_tip_after_the_heal(two_halves):
    network, a, b, link = two_halves
    reader = TipReader()
    started = time.monotonic()
    try:
        # Both halves mine at once, apart. B stops first; A goes on until it leads by LEAD blocks.
        for half in (a, b):
            wait_until(lambda: reader.tip(half.miner)[0] >= 30, timeout=30, interval=0.05,
                       message=f"half {half.name}'s miner to mine 30 blocks")
        stop_mining(network, b, reader)
        height_b, tip_b = settle(reader, b)
        wait_until(lambda: reader.tip(a.miner)[0] >= height_b + LEAD, timeout=60, interval=0.1,
                   message=f"half A's miner to lead by {LEAD}")
        stop_mining(network, a, reader)
        height_a, tip_a = settle(reader, a)
        assert height_a > height_b  # regtest never retargets: more blocks is more work
        # The partition held: neither half has seen a block of the other's branch.
        assert not any(reader.knows(node, tip_b) for node in a.nodes)
        assert not any(reader.knows(node, tip_a) for node in b.nodes)
        wait_until(lambda: link.held() >= 1, timeout=10, message="A's dial through the held link")

        healed_at = time.monotonic()
        link.connect_held()
        link.release()
        took = wait_for(lambda: agreed(reader, [*a.nodes, *b.nodes], tip_a), HEAL_BOUND,
                        "all ten nodes on the most-work tip", interval=0.05)
        report(f"halves at heights {height_a} (A) and {height_b} (B) converged on A's tip {took:.2f} s after the "
               f"heal (bound {HEAL_BOUND:g} s); {healed_at - started:.1f} s of mining and settling before it")
    finally:
        reader.close()
    for node in b.nodes:
        assert "[REORG]" in node.log(), f"{node.listen} reached A's tip without a reorg?\n{node.log()[-2000:]}"
    for node in a.nodes:
        assert "[REORG]" not in node.log(), f"{node.listen} on the winning half reorganised\n{node.log()[-2000:]}"
    for node in [*a.nodes, *b.nodes]:
        assert node.stop() == 0, node.log()[-2000:]
        store = reopened_chain(store_path(node.data_dir), {height_a: tip_a})
        store.close()
    report(f"the whole partition test took {time.monotonic() - started:.1f} s")


# -- 4. a role that cannot start --------------------------------------------------------------------------------


def test_a_node_whose_dns_seed_port_is_taken_says_so_and_exits_1(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_node("--port", "0", "--data-dir", str(tmp_path / "data"), "--no-fixed-seeds", "--outbound", "0",
                          "--serve-dns", f"127.0.0.1:{port}", timeout=6)
    assert_one_line_error(result, "in use", code=1)
