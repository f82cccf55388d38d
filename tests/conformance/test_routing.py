"""§10 Discovery and routing: service bits, getaddr and addr, relay, misbehaviour, keepalive, duplicates.

Checks that depend on the node's address book or on other peers start a
fresh node.py (`fresh_node`, `dialler`) and are skipped against --target.
"""

from __future__ import annotations

import random
import time

import pytest

from .spec import spec
from .wire import (
    MAX_UINT64,
    NODE_NETWORK,
    Closed,
    NoFrame,
    Peer,
    compact,
    expect,
    expect_closed,
    expect_error,
    handshake,
    sync,
    sync_collect,
)

pytestmark = pytest.mark.usefixtures("needs_routing")


def node_peer(open_peer, address=None, nonce: int | None = None, name: str = "node peer") -> Peer:
    """A connection that presents itself as a node (NODE_NETWORK), past the handshake."""
    peer = open_peer(address, name=name) if address else open_peer(name=name)
    handshake(peer, services=NODE_NETWORK, nonce=nonce or random.randrange(2, MAX_UINT64),
              user_agent="/conformance-node:1/")
    return peer


def networkinfo(open_peer, address=None) -> dict:
    peer = open_peer(address) if address else open_peer()
    handshake(peer)
    peer.send("getnetworkinfo")
    info = expect(peer, "networkinfo").body
    peer.close()
    return info


def announce(open_peer, address, entry: dict, services: int = 0) -> Peer:
    """A new connection (a full token bucket of 1, §10.4) that sends one addr entry; synced."""
    peer = open_peer(address, name="announcer") if address else open_peer(name="announcer")
    handshake(peer, services=services, nonce=random.randrange(2, MAX_UINT64))
    peer.send(compact("addr", {"addrs": [entry]}))
    sync(peer, why="after a well-formed addr (gossip is not answered, §4.9)")
    return peer


def addr_frames(msgs) -> list[dict]:
    return [entry for m in msgs if m.word == "addr" for entry in (m.get("addrs") or [])]


# -- §10.1 service bits ------------------------------------------------------------------------


@spec("§10.1", "a node running the routing role sets NODE_NETWORK in its version")
def test_node_sets_node_network(ready):
    theirs = ready.history[0]
    assert theirs.word == "version" and type(theirs.get("services")) is int and theirs.get("services") & NODE_NETWORK, (
        f"the node's version must set services bit 0 (NODE_NETWORK): {theirs}")


@spec("§10.1", "reserved service bits are ignored: a version with them is a normal handshake (as a client)")
def test_reserved_service_bits_ignored(peer):
    handshake(peer, services=(1 << 63) | (1 << 7) | (1 << 1))
    sync(peer, why="after a handshake with reserved service bits (a client: nothing more is sent)")


# -- §10.2 after the handshake -----------------------------------------------------------------


@spec("§10.2", "outbound to a node peer: after verack the node sends getaddr, then addr with its own address")
def test_outbound_getaddr_then_self_announcement(dialler):
    dial = dialler()
    conn, _ = dial.accept()
    theirs = expect(conn, "version")
    conn.ignore_unspecified = True
    conn.send(compact("version", {"services": NODE_NETWORK, "nonce": random.randrange(2, MAX_UINT64),
                                  "user_agent": "/listener-node/"}))
    expect(conn, "verack")
    expect(conn, "getaddr", why="first after the verack (§10.2)")
    msg = expect(conn, "addr", why="right after the getaddr: the self-announcement")
    entries = msg.get("addrs")
    own = f"{dial.node.host}:{dial.node.port}"
    assert isinstance(entries, list) and len(entries) == 1, f"the self-announcement has one entry: {msg}"
    entry = entries[0]
    assert entry.get("addr") == own, f"the entry must be the node's listening address {own}: {msg}"
    assert type(entry.get("services")) is int and entry["services"] & NODE_NETWORK, msg
    assert abs(entry.get("time", 0) - time.time()) < 120, f"the entry's time must be now: {msg}"
    assert theirs.get("services", 0) & NODE_NETWORK


@spec("§10.2", "the node never sends getaddr on an inbound connection, not even to a node peer")
def test_no_getaddr_inbound(connect):
    peer = node_peer(connect)
    got = sync_collect(peer)
    assert not [m for m in got if m.word == "getaddr"], f"getaddr on an inbound connection: {[str(m) for m in got]}"


# -- §10.3 answering getaddr ---------------------------------------------------------------------


@spec("§10.3", "the getaddr answer holds 23 % of the book, rounded down (4 → 0, 5 → 1), from the book")
def test_getaddr_share(connect, fresh_node):
    address = fresh_node()
    then = int(time.time()) - 3600  # not fresh: nothing is relayed (§10.5)
    fed = [f"127.0.0.{100 + i}:5050" for i in range(5)]
    for entry in fed[:4]:
        announce(connect, address, {"addr": entry, "services": NODE_NETWORK, "time": then}).close()
    assert networkinfo(connect, address)["addresses_known"] == 4
    asker = connect(address)
    handshake(asker)
    asker.send("getaddr")
    assert expect(asker, "addr").get("addrs") == [], "23 % of a book of 4 is 0 entries"
    announce(connect, address, {"addr": fed[4], "services": NODE_NETWORK, "time": then}).close()
    asker = connect(address)
    handshake(asker)
    asker.send("getaddr")
    entries = expect(asker, "addr").get("addrs")
    assert len(entries) == 1, f"23 % of a book of 5 is 1 entry, got {entries}"
    assert entries[0].get("addr") in fed and entries[0].get("time") == then, (
        f"the entry must come from the book, with the time the node heard: {entries[0]}")


# -- §10.4 receiving addr --------------------------------------------------------------------------


def _fresh_loopback_addr() -> str:
    return f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}:5050"


@spec("§10.4", "addr entries are rate-limited per connection (bucket starts at 1); extra ones dropped silently")
def test_addr_rate_limit(target, connect):
    if not target.host.startswith("127."):
        pytest.skip("uses loopback addresses, kept only by a node that listens on loopback (§10.4)")
    before = networkinfo(connect)
    peer = connect()
    handshake(peer)
    then = int(time.time()) - 3600
    peer.send(compact("addr", {"addrs": [{"addr": _fresh_loopback_addr(), "services": 1, "time": then}
                                         for _ in range(3)]}))
    sync(peer, why="after an addr beyond the rate limit (no error, §10.4)")
    after = networkinfo(connect)
    assert after["addresses_known"] - before["addresses_known"] == 1, (
        f"one token: only the first of 3 new entries may be stored ({before} → {after})")
    assert after["addrs_dropped"] - before["addrs_dropped"] == 2, (
        f"the 2 entries without a token are dropped and counted ({before} → {after})")


OUT_OF_LOOPBACK_SCOPE = ["10.1.2.3:5050", "192.168.7.7:5050", "8.8.8.8:5050", "224.0.0.1:5050",
                         "169.254.1.1:5050", "240.0.0.1:5050", "0.0.0.0:5050", "[2001:db8::1]:5050"]


@spec("§10.4", "a node listening on loopback keeps only loopback addresses, and never its own")
def test_addr_scope(target, connect):
    if not target.host.startswith("127."):
        pytest.skip("checks the loopback scope: needs a target that listens on loopback")
    before = networkinfo(connect)["addresses_known"]
    then = int(time.time()) - 3600
    for entry in OUT_OF_LOOPBACK_SCOPE + [f"{target.host}:{target.port}"]:
        announce(connect, None, {"addr": entry, "services": 1, "time": then}).close()
    after = networkinfo(connect)["addresses_known"]
    assert after == before, (
        f"a loopback node must not keep {OUT_OF_LOOPBACK_SCOPE} or its own address: the book went {before} → {after}")
    announce(connect, None, {"addr": _fresh_loopback_addr(), "services": 1, "time": then}).close()
    assert networkinfo(connect)["addresses_known"] == before + 1, "a new loopback address is kept"


# -- §10.5 relaying addr ----------------------------------------------------------------------------


@spec("§10.5", "a fresh announcement goes to 2 ready node peers, unchanged; never clients, the source, or peers that know it")
def test_addr_relay(connect, fresh_node):
    address = fresh_node()
    nodes = [node_peer(connect, address, name=f"node{i}") for i in range(3)]
    client = connect(address, name="client")
    handshake(client)
    entry = {"addr": "127.0.0.70:5050", "services": 1, "time": int(time.time()) - 5}

    def deliveries() -> list[list[dict]]:
        return [addr_frames(sync_collect(p)) for p in (*nodes, client)]

    source = announce(connect, address, entry)
    first = deliveries()
    assert sorted(len(d) for d in first[:3]) == [0, 1, 1], f"exactly 2 of 3 node peers get it: {first[:3]}"
    assert all(d == [entry] for d in first[:3] if d), f"the entry must be relayed unchanged: {first[:3]}"
    assert first[3] == [], f"a client must not be relayed addr: {first[3]}"
    assert addr_frames(sync_collect(source)) == [], "the source must not get its announcement back"
    # The same address from another connection: only the node peer that has not seen it.
    announce(connect, address, entry)
    second = deliveries()
    assert [bool(d) for d in second[:3]] == [not bool(d) for d in first[:3]], (
        f"the second announcement goes only to the node peer that did not know it: {first[:3]} then {second[:3]}")
    announce(connect, address, entry)
    assert deliveries() == [[], [], [], []], "every node peer knows it now: nobody gets it again"
    # An old announcement does not travel.
    announce(connect, address, {"addr": "127.0.0.71:5050", "services": 1, "time": int(time.time()) - 700})
    assert deliveries() == [[], [], [], []], "an entry older than 600 s is not relayed"


@spec("§10.5", "an announcement from a node peer is relayed to the other node peers, never back to it")
def test_addr_relay_not_back_to_source(connect, fresh_node):
    address = fresh_node()
    source, a, b = (node_peer(connect, address, name=n) for n in ("source", "a", "b"))
    entry = {"addr": "127.0.0.72:5050", "services": 1, "time": int(time.time()) - 5}
    source.send(compact("addr", {"addrs": [entry]}))
    sync(source)
    got = [addr_frames(sync_collect(p)) for p in (source, a, b)]
    assert got == [[], [entry], [entry]], f"expected nothing back to the source and the entry at a and b: {got}"


# -- §10.6 misbehaviour ------------------------------------------------------------------------


def score_of(peer: Peer) -> int:
    peer.send("getpeerinfo")
    rows = {row.get("address"): row for row in expect(peer, "peerinfo").get("peers")}
    return rows[peer.local_address]["score"]


@spec("§10.6", "misbehaviour points: malformed 10, addr over 1,000 entries 20, second version 1, the rest 0")
def test_misbehaviour_points(peer):
    peer.send("verack")  # "send version first": 0
    expect_error(peer, exact="send version first", command="verack")
    handshake(peer)
    assert score_of(peer) == 0
    steps = [
        ('ping {"nonce":-1}', "error", 10),
        ('pong {"nonce":-1}', None, 10),  # a malformed answer: dropped, still scored
        ("version", "error", 1),
        ("x" * 1001, "error", 0),  # a typed line that is too long
        ("bell\u0007", "error", 0),  # a typed line with a control character
        ("getaddr", "addr", 0),
        ("getaddr", "error", 0),  # refused getaddr
        (compact("addr", {"addrs": [{"addr": f"127.0.0.{150 + i}:5050", "time": 1} for i in range(2)]}), None, 0),
        (compact("addr", {"addrs": [{"addr": "127.0.0.160:5050", "time": 1}] * 1001}), "error", 20),
    ]
    expected = 0
    for payload, answer, points in steps:
        peer.send(payload)
        if answer:
            expect(peer, answer, why=f"to {payload[:30]!r}")
        expected += points
        assert score_of(peer) == expected, f"after {payload[:30]!r} the score must be {expected}"


@spec("§10.6", "a body that does not start with `{` costs 0 points; one that starts with `{` and is not JSON, 10",
      also=("§3",))
def test_typed_sentence_not_scored(ready):
    ready.send("ping hello")  # most likely a sentence typed by a person (§3)
    expect_error(ready, command="ping")
    assert score_of(ready) == 0, "`ping hello` costs no misbehaviour points (§3, §10.6)"
    ready.send("ping {x}")
    expect_error(ready, command="ping")
    assert score_of(ready) == 10, "`ping {x}` is malformed JSON: 10 points (§10.6)"


@spec("§10.6", "a peer from 127.0.0.1 reaching 100 points is disconnected with an error, not banned")
def test_local_peer_not_banned(target, connect):
    if target.host != "127.0.0.1":
        pytest.skip("needs a target on 127.0.0.1, so that the suite's connections come from 127.0.0.1")
    peer = connect()
    handshake(peer)
    for n in range(10):
        peer.send('ping {"nonce":-1}')
        expect_error(peer, command="ping", why=f"to malformed ping {n + 1} of 10")
    expect(peer, "error", why="at 100 points")
    expect_closed(peer, why="after the misbehaviour error")
    again = connect()
    handshake(again)  # not banned: a new connection is served at once
    sync(again)


@spec("§10.6", "at 100 points a non-local IP is banned: 'banned for …' on all its connections, 'banned until …' at accept")
def test_ban(connect, fresh_node):
    address = fresh_node("--ban-time", "120")
    ip = f"127.0.0.{random.randrange(200, 250)}"  # on Linux all of 127/8 is this machine; only 127.0.0.1 is spared
    offender = connect(address, source=ip, name="offender")
    handshake(offender)
    sibling = connect(address, source=ip, name="sibling")
    handshake(sibling)
    local = connect(address, name="local")
    handshake(local)
    for n in range(10):
        offender.send('ping {"nonce":-1}')
        expect_error(offender, command="ping", why=f"to malformed ping {n + 1} of 10")
    for p in (offender, sibling):
        expect_error(p, startswith="banned for ", command=None, why=f"to the {p.name} connection from the banned IP")
        expect_closed(p, why="after the ban")
    refused = connect(address, source=ip, name="refused")
    expect_error(refused, startswith="banned until ", command=None, why="at accept, for the banned IP")
    expect_closed(refused, why="after 'banned until'")
    sync(local, why="on a connection from another IP")
    assert networkinfo(connect, address)["banned"] == 1


# -- §10.7 keepalive --------------------------------------------------------------------------------

KEEPALIVE_ARGS = ("--ping-interval", "0.5", "--ping-timeout", "1")


@pytest.fixture
def keepalive_node(shared_node):
    return shared_node(*KEEPALIVE_ARGS)


@spec("§10.7", "the node pings every ready peer (clients too) with a nonce; an answered peer stays, ping_ms is set")
def test_keepalive_ping_answered(target, connect, keepalive_node):
    address = keepalive_node
    client = connect(address, name="client")
    handshake(client)
    deadline = time.monotonic() + 0.5 + 1 + target.timer_slack + 0.5
    while len(client.node_pings) < 2:  # next() answers each ping with the matching pong
        assert time.monotonic() < deadline, f"got {len(client.node_pings)} pings from the node in time"
        client.poll(0.2)
    assert all(type(p.get("nonce")) is int for p in client.node_pings), [str(p) for p in client.node_pings]
    assert len({p.get("nonce") for p in client.node_pings}) == 2, "each ping has a fresh nonce"
    assert score_of(client) == 0
    client.send("getpeerinfo")
    row = {r["address"]: r for r in expect(client, "peerinfo").get("peers")}[client.local_address]
    assert isinstance(row.get("ping_ms"), (int, float)), f"ping_ms must be set after a matching pong: {row}"


def _silent_peer_dropped(target, peer: Peer) -> None:
    peer.answer_pings = False
    deadline = time.monotonic() + 0.5 + 1 + target.timer_slack + 0.5
    while True:
        assert time.monotonic() < deadline, "the node did not close a peer that answered no ping"
        try:
            msg = peer.next(0.2)
        except NoFrame:
            continue
        except Closed as closed:
            raise AssertionError(f"the node {closed.how} the connection without 'ping timeout'") from None
        if msg.word == "ping":
            continue
        assert msg.word == "error" and str(msg.get("reason", "")).startswith("ping timeout"), (
            f"expected error 'ping timeout…', got {msg}")
        break
    assert peer.node_pings, "the node closed the peer without pinging it first"
    expect_closed(peer, why="after 'ping timeout'")


@spec("§10.7", "a node peer that answers no ping within the ping timeout gets error 'ping timeout' and the close")
def test_keepalive_timeout_node_peer(target, connect, keepalive_node):
    address = keepalive_node
    _silent_peer_dropped(target, node_peer(connect, address))


@spec("§10.7", "a client that answers no ping is not closed: its ping is forgotten and the next one follows",
      also=("§8",))
def test_keepalive_spares_a_silent_client(target, connect, keepalive_node):
    address = keepalive_node
    client = connect(address, name="client")
    handshake(client)
    client.answer_pings = False
    # Well past the ping timeout, a silent client is still pinged again and still served.
    deadline = time.monotonic() + 2 * (0.5 + 1 + target.timer_slack)
    while time.monotonic() < deadline:
        try:
            msg = client.next(0.2)
        except NoFrame:
            continue
        assert msg.word == "ping", f"a silent client got {msg} instead of being left alone"
    assert len(client.node_pings) >= 2, "the node stopped pinging the silent client"
    sync(client)  # still connected and answered


# -- §10.8 duplicate connections --------------------------------------------------------------------


@spec("§10.8", "two inbound connections from the same node (same nonce) are both left alone (rule 4)")
def test_two_inbound_same_nonce(connect):
    nonce = random.randrange(2, MAX_UINT64)
    first, second = node_peer(connect, nonce=nonce, name="first"), node_peer(connect, nonce=nonce, name="second")
    sync(first)
    sync(second)


def _outbound_handshake(conn: Peer, nonce: int) -> dict:
    theirs = expect(conn, "version")
    conn.ignore_unspecified = True
    conn.send(compact("version", {"services": NODE_NETWORK, "nonce": nonce, "user_agent": "/listener-node/"}))
    expect(conn, "verack")
    expect(conn, "getaddr", why="after the verack to a node peer (§10.2)")
    expect(conn, "addr", why="after the getaddr (§10.2)")
    return theirs.body


@spec("§10.8", "two outbound connections to one node: the newer is closed 'duplicate connection…' before getaddr (rule 1)")
def test_two_outbound_same_node(dialler):
    dial = dialler(2)
    nonce = random.randrange(2, MAX_UINT64)
    older, _ = dial.accept(0)
    _outbound_handshake(older, nonce)
    newer, _ = dial.accept(1)
    expect(newer, "version")
    newer.ignore_unspecified = True
    newer.send(compact("version", {"services": NODE_NETWORK, "nonce": nonce, "user_agent": "/listener-node/"}))
    expect(newer, "verack")
    expect_error(newer, startswith="duplicate connection: already connected", command=None,
                 why="for a second outbound connection to the same node (and no getaddr before it)")
    expect_closed(newer)
    sync(older, why="on the older connection, which stays")


@spec("§10.8", "an inbound connection after an outbound one to the same node both stand (rule 3)")
def test_inbound_after_outbound_stands(connect, dialler):
    dial = dialler()
    nonce = random.randrange(2, MAX_UINT64)
    out, _ = dial.accept()
    _outbound_handshake(out, nonce)
    inbound = node_peer(connect, dial.node.address, nonce=nonce, name="inbound")
    sync(inbound)
    sync(out)


@spec("§10.8", "crossing dials: the connection dialled by the node with the larger nonce is kept (rule 2)")
@pytest.mark.parametrize("ours", ["smaller", "larger"])
def test_crossing_dials(connect, dialler, ours):
    dial = dialler()
    inbound = connect(dial.node.address, name="inbound")  # opened before the outbound one is ready
    sync(inbound, why="before version (so the node has surely accepted this connection)")
    out, _ = dial.accept()
    node_nonce = expect(out, "version").get("nonce")
    nonce = node_nonce - 1 if ours == "smaller" else node_nonce + 1
    if not 1 <= nonce <= MAX_UINT64:
        pytest.skip("the node's nonce is at the edge of the range")
    out.ignore_unspecified = True
    out.send(compact("version", {"services": NODE_NETWORK, "nonce": nonce, "user_agent": "/crossing/"}))
    expect(out, "verack")
    expect(out, "getaddr")
    expect(out, "addr")
    inbound.ignore_unspecified = True
    inbound.send(compact("version", {"services": NODE_NETWORK, "nonce": nonce, "user_agent": "/crossing/"}))
    expect(inbound, "version")
    expect(inbound, "verack")
    # The node's nonce is larger: keep what the node dialled (out), close ours (inbound); else the reverse.
    loser, keeper = (inbound, out) if ours == "smaller" else (out, inbound)
    expect_error(loser, startswith="duplicate connection: we dialled each other", command=None,
                 why=f"on the connection dialled by the smaller nonce ({loser.name})")
    expect_closed(loser)
    sync(keeper, why=f"on the kept connection ({keeper.name})")
