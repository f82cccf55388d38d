"""§5 Handshake: order, readiness, what is allowed before version, duplicates, self-connections, timeouts."""

from __future__ import annotations

import time

import pytest

from .spec import spec
from .wire import (
    KEEPALIVE,
    compact,
    expect,
    expect_closed,
    expect_error,
    frame,
    handshake,
    sync,
    sync_collect,
)

# -- §5.1 order -----------------------------------------------------------------------------


@spec("§5.1", "inbound: the node sends no version before the peer's, then its version and verack, in that order")
def test_inbound_order(peer):
    peer.send(compact("ping", {"nonce": 51}))
    msg = expect(peer, "pong", why="to a ping sent before any version (the node must not speak first)")
    assert msg.get("nonce") == 51, msg
    peer.send(compact("version", {"user_agent": "/order/"}))
    expect(peer, "version", why="first, in answer to our version")
    expect(peer, "verack", why="second, after the node's version")
    sync(peer, why="after the handshake (nothing else is sent)")


@pytest.fixture
def dialled_by_node(dialler):
    """(connection the node opened to us, time it was accepted): a node.py --connect to our listener."""
    dial = dialler()
    return lambda: dial.accept()


@spec("§5.1", "outbound: the node sends its version at once, answers ours with verack, and never a second version")
def test_outbound_order(dialled_by_node):
    conn, _ = dialled_by_node()
    theirs = expect(conn, "version", why="as soon as the node's outbound connection opens")
    assert type(theirs.get("nonce", 0)) is int
    conn.send(compact("version", {"user_agent": "/listener/", "services": 0, "nonce": 4242}))
    expect(conn, "verack", why="in answer to the listener's version")
    sync(conn, why="after the verack: the node must not send its version again")


@spec("§4.10", "a getaddr from a peer the node dialled itself gets the once-per-inbound error")
def test_getaddr_on_outbound_connection(dialled_by_node):
    conn, _ = dialled_by_node()
    expect(conn, "version")
    conn.send(compact("version", {"user_agent": "/listener/", "services": 0, "nonce": 4243}))
    expect(conn, "verack")
    conn.send("getaddr")
    expect_error(conn, command="getaddr", exact="getaddr is answered once per inbound connection")


@spec("§5.6", "outbound connections have the handshake timeout too")
def test_outbound_handshake_timeout(target, dialled_by_node):
    conn, accepted = dialled_by_node()
    expect(conn, "version")
    error = expect_error(conn, startswith="handshake timeout", command=None,
                         timeout=target.handshake_timeout + target.timer_slack,
                         why="when the listener never sends its version")
    elapsed = time.monotonic() - accepted
    expect_closed(conn, why="after the handshake-timeout error")
    assert elapsed >= target.handshake_timeout * 0.9 - 0.05, f"dropped after {elapsed:.2f} s: {error}"


# -- §5.2 ready ------------------------------------------------------------------------------


@spec("§5.2", "a peer that has read its verack receives every chat line processed after it (200 tries)")
def test_ready_no_later_than_verack(connect, needs_chat):
    typist = connect(name="typist")
    handshake(typist)
    missed = []
    tries = 200
    for n in range(tries):
        newcomer = connect(name=f"newcomer{n}")
        newcomer.send(compact("version", {"user_agent": "/newcomer/"}))
        expect(newcomer, "version")
        expect(newcomer, "verack")
        line = f"race {n}"
        typist.send(line)
        expect(typist, "ack", why=f"to {line!r}")
        sync(typist)  # the line, flood included, is processed before this pong (§6.1)
        texts = [m.get("text") for m in sync_collect(newcomer) if m.word == "chat"]
        if texts != [line]:
            missed.append((n, texts))
        newcomer.close()
    assert not missed, f"{len(missed)} of {tries} newcomers that had read their verack missed the next line: {missed[:5]}"


# -- §5.3 before version ---------------------------------------------------------------------

FULL_NETWORKINFO = {"address": "127.0.0.1:1", "user_agent": "", "peers": 0, "inbound": 0, "outbound": 0,
                    "addresses_known": 0, "banned": 0, "addrs_dropped": 0}
NOT_BEFORE_VERSION = {
    "verack": "verack",
    "pong": "pong",
    "ack": compact("ack", {"id": "abc"}),
    "addr": compact("addr", {"addrs": []}),
    "getaddr": "getaddr",
    "getpeerinfo": "getpeerinfo",
    "peerinfo": compact("peerinfo", {"peers": []}),
    "getnetworkinfo": "getnetworkinfo",
    "networkinfo": compact("networkinfo", FULL_NETWORKINFO),
    # two commands of §4.15-§4.28 that have no fields
    "mempool": "mempool",
    "getblockchaininfo": "getblockchaininfo",
}
BLOCKCHAIN_COMMANDS = {"mempool", "getblockchaininfo"}


@spec("§5.3", "before version, other commands get error 'send version first' with their command; stays open")
@pytest.mark.parametrize("word", list(NOT_BEFORE_VERSION))
def test_send_version_first(peer, word, blockchain_role):
    if word in BLOCKCHAIN_COMMANDS and not blockchain_role:
        pytest.skip("the node runs no blockchain role (its version has no genesis)")
    peer.send(NOT_BEFORE_VERSION[word])
    expect_error(peer, command=word, exact="send version first", why=f"to {word} before version")
    sync(peer, why="after 'send version first' (the connection stays open)")
    handshake(peer)


@spec("§5.3", "before version, version, ping, chat (typed and as a message), error, goodbye, !exit and keepalives are accepted")
def test_accepted_before_version(connect, needs_chat):
    peer = connect()
    peer.send_raw(KEEPALIVE)
    peer.send(compact("error", {"reason": "just saying"}))
    peer.send(compact("ping", {"nonce": 1}))
    assert expect(peer, "pong").get("nonce") == 1
    peer.send("hello before version")
    expect(peer, "ack", why="to a typed line before version")
    peer.send(compact("chat", {"id": "beforeversion1", "from": "127.0.0.1:1", "text": "hi"}))
    expect(peer, "ack", why="to a chat message before version")
    handshake(peer)
    # goodbye and !exit end a connection, so they get fresh ones (see §3 and §4.8 for their answers)
    quitter = connect()
    quitter.send("!exit")
    expect(quitter, "goodbye", why="to !exit before version")


@spec("§5.3", "a chat line from a peer that is not ready is relayed to the ready peers", also=("§7.2",))
def test_chat_from_unready_peer_is_relayed(connect, needs_chat):
    unready, reader = connect(name="unready"), connect(name="reader")
    handshake(reader)
    unready.send("from a peer without version")
    expect(unready, "ack")
    sync(unready)
    texts = [m.get("text") for m in sync_collect(reader) if m.word == "chat"]
    assert texts == ["from a peer without version"], f"the ready reader must get the line once, got {texts}"


# -- §5.4 duplicate version ------------------------------------------------------------------


@spec("§5.4", "a second version gets error 'duplicate version…' {command:version}; stays open; first fields stay")
def test_duplicate_version(ready, routing_role):
    ready.send(compact("version", {"user_agent": "/second/"}))
    expect_error(ready, command="version", startswith="duplicate version",
                 why="to a second version (and no second version or verack)")
    sync(ready, why="after the duplicate-version error")
    if routing_role:
        ready.send("getpeerinfo")
        rows = {row.get("address"): row for row in expect(ready, "peerinfo").get("peers")}
        mine = rows.get(ready.local_address, {})
        assert mine.get("user_agent") == "/conformance:1/", (
            f"the fields of the first version remain in effect (§5.4): getpeerinfo shows {mine}")


# -- §5.5 self-connection --------------------------------------------------------------------


@spec("§5.5", "a version carrying the node's own nonce gets error 'connected to self', no verack, and the close")
def test_self_connection(connect):
    theirs = handshake(connect())
    nonce = theirs.get("nonce")
    assert type(nonce) is int and nonce != 0, f"the node's version must carry its nonce: {theirs}"
    mirror = connect(name="mirror")
    mirror.send(compact("version", {"nonce": nonce, "user_agent": "/mirror/"}))
    frames = []
    while True:
        try:
            frames.append(mirror.next())
        except AssertionError as error:
            if "no frame within" in str(error):
                raise AssertionError(f"the node kept a self-connection open; it sent {[str(f) for f in frames]}")
            break  # closed
    errors = [f for f in frames if f.word == "error" and "connected to self" in str(f.get("reason"))]
    assert errors, f"expected an error containing 'connected to self' before the close, got {[str(f) for f in frames]}"
    assert not [f for f in frames if f.word == "verack"], f"no verack for a self-connection: {[str(f) for f in frames]}"


# -- §5.6 handshake timeout -------------------------------------------------------------------


@spec("§5.6", "no version within the handshake timeout: error 'handshake timeout…' (no command), then close")
def test_handshake_timeout(target, connect):
    peer = connect()
    error = expect_error(peer, startswith="handshake timeout", command=None,
                         timeout=target.handshake_timeout + target.timer_slack,
                         why="when no version arrives")
    elapsed = time.monotonic() - peer.connected_at
    expect_closed(peer, why="after the handshake-timeout error")
    assert elapsed >= target.handshake_timeout * 0.98 - 0.02, (
        f"dropped after {elapsed:.2f} s, before the handshake timeout of {target.handshake_timeout:g} s: {error}")


@spec("§5.6", "the handshake timeout counts from the TCP connect: pings and keepalives do not extend it")
def test_handshake_timeout_not_extended(target, connect):
    peer = connect()
    limit = peer.connected_at + target.handshake_timeout + target.timer_slack
    pings = 0
    while True:
        assert time.monotonic() < limit, "the node did not drop a peer that sent pings but no version"
        peer.try_send(KEEPALIVE + frame(compact("ping", {"nonce": pings})))
        msg = peer.next()
        if msg.word != "pong":
            break  # the timeout error arrived instead
        pings += 1
        if peer.readable(target.handshake_timeout / 8):  # pacing the pings; wakes at once if the node speaks
            msg = peer.next()
            break
    assert msg.word == "error" and str(msg.get("reason", "")).startswith("handshake timeout"), (
        f"expected error 'handshake timeout…', got {msg}")
    elapsed = time.monotonic() - peer.connected_at
    assert pings > 0, "the node must answer pings before version (§5.3)"
    assert elapsed >= target.handshake_timeout * 0.98 - 0.02, f"dropped after {elapsed:.2f} s"
    assert elapsed <= target.handshake_timeout + target.timer_slack, (
        f"dropped only after {elapsed:.2f} s: pings must not restart the handshake timeout "
        f"({target.handshake_timeout:g} s)")
