"""§4 Messages: the fields of each command and what a receiver does with it."""

from __future__ import annotations

import pytest

from .spec import spec
from .wire import (
    MAX_UINT64,
    compact,
    expect,
    expect_closed,
    expect_error,
    handshake,
    sync,
)

# -- §4.1 version ---------------------------------------------------------------------------

VERSION_FIELD_RULES = {
    "version": (0, 2**31 - 1),
    "nonce": (0, MAX_UINT64),
    "services": (0, MAX_UINT64),
    "height": (0, 2**31 - 1),
    "time": (0, 2**63 - 1),
}


def check_version_body(msg) -> None:
    """The node's own version is well-formed per the §4.1 table."""
    body = msg.body
    for name, (low, high) in VERSION_FIELD_RULES.items():
        if name in body:
            value = body[name]
            assert type(value) is int and low <= value <= high, f"version.{name} must be an integer in {low}…{high}: {msg}"
    for name, limit in (("user_agent", 256), ("addr_from", 100)):
        if name in body:
            assert isinstance(body[name], str) and len(body[name]) <= limit, f"version.{name}: {msg}"


@spec("§4.1", "the node's version is well-formed, with a non-zero nonce that is the same on every connection",
      also=("§5.5",))
def test_node_version_fields(connect):
    first = handshake(connect())
    second = handshake(connect())
    for msg in (first, second):
        check_version_body(msg)
    nonce = first.get("nonce")
    assert type(nonce) is int and nonce != 0, f"a node's nonce is never 0 (§5.5), got {first}"
    assert second.get("nonce") == nonce, (
        f"the nonce is random per node (§4.1), so both connections must see the same: {nonce} vs {second.get('nonce')}")


@spec("§4.1", "every version field is optional: a bare `version` is a complete handshake", also=("§5.1",))
def test_bare_version(peer):
    peer.send("version")
    expect(peer, "version", why="to a bare version")
    expect(peer, "verack", why="after the node's version")
    sync(peer)


@spec("§4.1", "a version at every field's limit is accepted")
def test_version_at_limits(peer, target):
    peer.send(compact("version", {"version": 2**31 - 1, "nonce": MAX_UINT64 - 2, "services": MAX_UINT64,
                                  "user_agent": "é" * 256, "height": 2**31 - 1, "addr_from": "a" * 100,
                                  "time": 2**63 - 1}))
    expect(peer, "version", why="to a version with every field at its limit")
    expect(peer, "verack")


@spec("§4.1", "a version field out of range or of the wrong type gets error {command:version}; not processed",
      also=("§3", "§8"))
@pytest.mark.parametrize("name,value", [
    ("version", -1), ("version", 2**31), ("version", "1"), ("nonce", -1), ("nonce", 2**64), ("nonce", 1.5),
    ("services", True), ("height", 2**31), ("time", -1), ("time", 2**63),
    ("user_agent", "u" * 257), ("user_agent", 5), ("addr_from", "a" * 101),
    ("network", "n" * 17), ("genesis", "g" * 65), ("network", 5),
])
def test_version_field_rules(peer, name, value):
    peer.send(compact("version", {name: value}))
    expect_error(peer, command="version", why=f"to version.{name} = {str(value)[:20]}")
    peer.send("verack")
    expect_error(peer, command="verack", exact="send version first",
                 why="after a malformed version: it must not have been processed")


@spec("§4.1", "a first version on another network (network or genesis differs) is refused, then the close",
      level="stated")
@pytest.mark.parametrize("field", ["network", "genesis"])
def test_version_other_network(connect, field):
    theirs = handshake(connect())
    if not theirs.get(field):
        pytest.skip(f"the node's version has no {field!r} (it runs no blockchain role)")
    other = "zz" if field == "network" else "f" * 64
    peer = connect()
    peer.send(compact("version", {field: other, "user_agent": "/elsewhere/"}))
    expect(peer, "error", why=f"to a version whose {field} is {other[:8]!r}")
    expect_closed(peer, why="after refusing a version from another network")


# -- §4.2 verack ----------------------------------------------------------------------------


@spec("§4.2", "a verack's body is ignored: `verack {\"x\":1}` is a plain verack, not answered after version")
def test_verack_body_ignored(ready):
    ready.send('verack {"x":1}')
    ready.send("verack")
    sync(ready, why="after two veracks (an answer is never answered)")


# -- §4.3 ping, §4.4 pong --------------------------------------------------------------------


@spec("§4.3", "ping is answered with pong carrying the same nonce, before and after version")
@pytest.mark.parametrize("phase", ["before version", "after version"])
@pytest.mark.parametrize("nonce", [0, 7, 2**63, MAX_UINT64])
def test_ping_nonce_echoed(peer, phase, nonce):
    if phase == "after version":
        handshake(peer)
    peer.send(compact("ping", {"nonce": nonce}) if nonce else 'ping {"nonce":0}')
    msg = expect(peer, "pong")
    assert msg.body == {"nonce": nonce}, f"ping {{\"nonce\":{nonce}}} must get pong {{\"nonce\":{nonce}}}, got {msg}"


@spec("§4.3", "a bare ping gets a bare pong, before version too")
def test_bare_ping(peer):
    peer.send("ping")
    msg = expect(peer, "pong")
    assert msg.body == {}, f"a bare ping gets a bare pong, got {msg}"


@spec("§4.4", "a pong is never answered (after version), whatever its nonce")
def test_pong_not_answered(ready):
    ready.send("pong")
    ready.send('pong {"nonce":5}')
    ready.send(compact("pong", {"nonce": MAX_UINT64}))
    sync(ready, why="after three unsolicited pongs")


# -- §4.5 chat, §4.6 ack ---------------------------------------------------------------------


@spec("§4.5", "every chat is answered with ack {id}, duplicates included, before version too", also=("§7.2",))
@pytest.mark.parametrize("phase", ["before version", "after version"])
def test_chat_acked_duplicates_included(peer, needs_chat, phase):
    if phase == "after version":
        handshake(peer)
    body = {"id": f"ackdup-{phase[0]}-{id(peer) % 10**8}", "from": "127.0.0.1:9", "text": "twice"}
    for attempt in ("first", "duplicate"):
        peer.send(compact("chat", body))
        msg = expect(peer, "ack", why=f"to the {attempt} chat")
        assert msg.body == {"id": body["id"]}, f"the ack must carry the chat's id {body['id']!r}, got {msg}"


@spec("§4.5", "chat field limits: id 1–64 of [0-9A-Za-z_-], from ≤ 100, text ≤ 1,000 characters, all required",
      also=("§8",))
@pytest.mark.parametrize("change", [
    {"id": "i" * 65}, {"id": ""}, {"id": "has space"}, {"id": "ünïcode"}, {"id": 5},
    {"from": "f" * 101}, {"text": "t" * 1001}, {"text": None}, {"id": None}, {"from": None},
], ids=["id 65", "id empty", "id space", "id non-ASCII", "id int", "from 101", "text 1001",
        "text missing", "id missing", "from missing"])
def test_chat_field_limits(ready, needs_chat, change):
    body = {"id": "limits1", "from": "127.0.0.1:9", "text": "hi"}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    ready.send(compact("chat", body))
    expect_error(ready, command="chat", why=f"to a chat with {next(iter(change))} broken")
    sync(ready, why="after the chat error (no ack may follow)")


@spec("§4.5", "chat at its limits is accepted: 64-character id, 100-character from, 1,000-character text, empty text")
def test_chat_at_limits(ready, needs_chat):
    for body in ({"id": "A" * 64, "from": "f" * 100, "text": "é" * 1000},
                 {"id": "a-_9", "from": "", "text": ""}):
        ready.send(compact("chat", body))
        msg = expect(ready, "ack", why=f"to a chat at its limits ({body['id'][:8]}…)")
        assert msg.get("id") == body["id"], msg


@spec("§4.6", "an ack is never answered (after version)")
def test_ack_not_answered(ready):
    ready.send(compact("ack", {"id": "nosuchline"}))
    sync(ready, why="after an ack")


# -- §4.7 error, §4.8 goodbye -----------------------------------------------------------------


@spec("§4.7", "a well-formed error is never answered, before or after version", also=("§6.3",))
@pytest.mark.parametrize("phase", ["before version", "after version"])
def test_error_not_answered(peer, phase):
    if phase == "after version":
        handshake(peer)
    peer.send(compact("error", {"reason": "something went wrong"}))
    peer.send(compact("error", {"reason": "about a command", "command": "ping"}))
    sync(peer, why="after two error frames")


@spec("§4.8", "a goodbye is never answered: the stream ends with no frame from the node", also=("§6.3",))
@pytest.mark.parametrize("phase", ["before version", "after version"])
def test_goodbye_not_answered(peer, phase):
    if phase == "after version":
        handshake(peer)
    peer.send(compact("goodbye", {"reason": "leaving now"}))
    peer.shutdown_write()  # as a leaving peer does: goodbye, then close
    expect_closed(peer, why="after our goodbye and close")


# -- §4.9 addr, §4.10 getaddr ----------------------------------------------------------------


@spec("§4.9", "a well-formed addr is gossip: not answered (empty list, one entry, 1,000 entries, IPv6)")
def test_addr_not_answered(ready, needs_routing):
    entry = {"addr": "127.0.0.77:5050", "services": 1, "time": 1700000000}
    ready.send(compact("addr", {"addrs": []}))
    ready.send(compact("addr", {"addrs": [entry]}))
    ready.send(compact("addr", {"addrs": [{"addr": "[2001:db8::7]:5050", "time": 1700000000}]}))
    many = [{"addr": f"10.{i // 250}.{i % 250}.1:5050", "services": 1, "time": 1700000000} for i in range(1000)]
    ready.send(compact("addr", {"addrs": many}))
    sync(ready, why="after four well-formed addr messages")


@spec("§4.9", "one bad entry makes the whole addr malformed: error {command:addr}, stays open")
@pytest.mark.parametrize("entry", [
    {"addr": "localhost:5050", "time": 1}, {"addr": "127.0.0.9", "time": 1}, {"addr": "127.0.0.9:0", "time": 1},
    {"addr": "127.0.0.09:5050", "time": 1}, {"addr": "::1:5050", "time": 1}, {"addr": "127.0.0.9:65536", "time": 1},
    {"addr": "127.0.0.9:5050"}, {"addr": "1" * 61, "time": 1}, {"addr": "127.0.0.9:5050", "time": -1},
    {"addr": "127.0.0.9:5050", "time": 1, "services": -1}, "127.0.0.9:5050",
], ids=["host name", "no port", "port 0", "IPv4 leading zero", "IPv6 without brackets", "port 65536",
        "time missing", "61 characters", "negative time", "negative services", "not an object"])
def test_addr_bad_entry(ready, needs_routing, entry):
    good = {"addr": "127.0.0.78:5050", "services": 1, "time": 1700000000}
    ready.send(compact("addr", {"addrs": [good, entry]}))
    expect_error(ready, command="addr", why=f"to an addr with the bad entry {str(entry)[:40]}")
    sync(ready)


@spec("§4.9", "an addr of more than 1,000 entries is refused: error {command:addr}, stays open")
def test_addr_over_1000_entries(ready, needs_routing):
    many = [{"addr": f"10.9.{i // 250}.{i % 250 + 1}:5050", "services": 1, "time": 1700000000} for i in range(1001)]
    ready.send(compact("addr", {"addrs": many}))
    expect_error(ready, command="addr", why="to an addr with 1,001 entries")
    sync(ready, why="after the oversized addr (the connection stays open)")


def check_addr_answer(msg) -> None:
    addrs = msg.get("addrs")
    assert isinstance(addrs, list) and len(addrs) <= 1000, f"getaddr is answered with ≤ 1,000 entries: {msg}"
    for entry in addrs:
        assert isinstance(entry, dict) and isinstance(entry.get("addr"), str) and type(entry.get("time")) is int, (
            f"each addr entry has `addr` and `time` (§4.9): {entry}")


@spec("§4.10", "getaddr is answered once per inbound connection with an addr; the second gets the error")
def test_getaddr_once(ready, needs_routing):
    ready.send("getaddr")
    check_addr_answer(expect(ready, "addr", why="to the first getaddr on this connection"))
    ready.send("getaddr")
    expect_error(ready, command="getaddr", exact="getaddr is answered once per inbound connection",
                 why="to a second getaddr")
    sync(ready)


@spec("§4.10", "a getaddr's body is ignored")
def test_getaddr_body_ignored(ready, needs_routing):
    ready.send('getaddr {"x":1}')
    check_addr_answer(expect(ready, "addr", why='to getaddr {"x":1}'))


# -- §4.11–§4.14 getpeerinfo, getnetworkinfo -------------------------------------------------

PEER_ROW = {"address": str, "direction": str, "services": int, "user_agent": str, "version": int, "height": int,
            "bytes_sent": int, "bytes_received": int, "connected_since": int, "score": int}
NETWORK_INFO = {"address": str, "user_agent": str, "peers": int, "inbound": int, "outbound": int,
                "addresses_known": int, "banned": int, "addrs_dropped": int}


def peer_rows(msg) -> list[dict]:
    rows = msg.get("peers")
    assert isinstance(rows, list), f"peerinfo.peers must be a list: {msg}"
    for row in rows:
        for name, kind in PEER_ROW.items():
            assert isinstance(row.get(name), kind) and not isinstance(row.get(name), bool), (
                f"peerinfo row field {name!r} must be {kind.__name__}: {row}")
        assert row["direction"] in ("inbound", "outbound"), row
        ping = row.get("ping_ms")
        assert ping is None or (isinstance(ping, (int, float)) and not isinstance(ping, bool) and 0 <= ping < 1e9), row
    return rows


@spec("§4.11", "getpeerinfo lists every connection, ready or not, the asking one included", also=("§4.12",))
def test_getpeerinfo(connect, needs_routing):
    asker, unready = connect(name="asker"), connect(name="unready")
    handshake(asker, user_agent="/asker:1/")
    sync(unready)  # the node has surely accepted it
    asker.send('getpeerinfo {"x":1}')  # the body is ignored
    rows = {row["address"]: row for row in peer_rows(expect(asker, "peerinfo"))}
    mine = rows.get(asker.local_address)
    assert mine is not None, f"the asking connection {asker.local_address} is missing from {sorted(rows)}"
    assert mine["direction"] == "inbound" and mine["user_agent"] == "/asker:1/", mine
    other = rows.get(unready.local_address)
    assert other is not None, f"the connection that is not ready ({unready.local_address}) is missing"
    assert other["user_agent"] == "" and other["services"] == 0 and other["version"] == 0, (
        f"before its version a peer's row has user_agent '', services 0, version 0 (§4.12): {other}")


@spec("§4.13", "getnetworkinfo is answered with a networkinfo whose fields are all there", also=("§4.14",))
def test_getnetworkinfo(ready, needs_routing):
    ready.send('getnetworkinfo {"x":1}')
    msg = expect(ready, "networkinfo")
    for name, kind in NETWORK_INFO.items():
        value = msg.get(name)
        assert isinstance(value, kind) and not isinstance(value, bool), f"networkinfo.{name} must be {kind.__name__}: {msg}"
    assert msg.get("peers") >= 1 and msg.get("inbound") >= 1, f"the asking connection counts: {msg}"
    assert msg.get("peers") == msg.get("inbound") + msg.get("outbound"), msg


@spec("§4.12", "peerinfo and networkinfo are answers: never answered after version", also=("§6.3",))
def test_info_answers_not_answered(ready):
    ready.send(compact("peerinfo", {"peers": []}))
    ready.send(compact("networkinfo", {"address": "127.0.0.1:1", "user_agent": "", "peers": 0, "inbound": 0,
                                       "outbound": 0, "addresses_known": 0, "banned": 0, "addrs_dropped": 0}))
    sync(ready, why="after a peerinfo and a networkinfo")

