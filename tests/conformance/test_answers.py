"""§6 Answers: every request gets a frame back, in order; "not served"; answers are never answered."""

from __future__ import annotations

import pytest

from .spec import spec
from .wire import Peer, compact, expect, expect_error, frames, handshake, sync

CHAT_MSG = compact("chat", {"id": "everyrequest1", "from": "127.0.0.1:1", "text": "hi"})

# (payload, phase, the first frame back, needs)
EVERY_REQUEST = {
    "!exit": ("!exit", "before", "goodbye", None),
    "typed line": ("a typed line", "after", "ack", "chat"),
    "typed line too long": ("x" * 1001, "after", "error", "chat"),
    "typed line with ESC": ("\u001b[31mred", "after", "error", "chat"),
    "version": ("version", "before", "version", None),
    "ping": ("ping", "before", "pong", None),
    "chat message": (CHAT_MSG, "after", "ack", "chat"),
    "getaddr": ("getaddr", "after", "addr", "routing"),
    "getpeerinfo": ("getpeerinfo", "after", "peerinfo", "routing"),
    "getnetworkinfo": ("getnetworkinfo", "after", "networkinfo", "routing"),
    "mempool": ("mempool", "after", "inv", "blockchain"),
    "getblockchaininfo": ("getblockchaininfo", "after", "blockchaininfo", "blockchain"),
    "request with a bad body": ("ping [1]", "after", "error", None),
    "gossip with a bad body": ("addr 5", "after", "error", "routing"),
    "verack before version": ("verack", "before", "error", None),
    "getaddr before version": ("getaddr", "before", "error", None),
}


@spec("§6.1", "every payload a person types that is not an answer gets at least one frame back")
@pytest.mark.parametrize("case", list(EVERY_REQUEST))
def test_every_request_gets_a_frame(peer, case, routing_role, chat_role, blockchain_role):
    payload, phase, first, needs = EVERY_REQUEST[case]
    if ((needs == "routing" and routing_role is False) or (needs == "chat" and chat_role is False)
            or (needs == "blockchain" and not blockchain_role)):
        pytest.skip(f"the target does not run the {needs} role")
    if phase == "after":
        handshake(peer)
    peer.skip_relayed_chat = True  # no case here answers with chat; relays of other checks' lines may come
    peer.send(payload)
    expect(peer, first, why=f"(the first frame back) for {case}")


@spec("§6.1", "answers go out in the order of the frames they answer")
def test_answers_in_order(ready, routing_role, chat_role):
    payloads = [compact("ping", {"nonce": 1})]
    expected = [("pong", 1)]
    if chat_role is not False:
        payloads.append("an ordered line")
        expected.append(("ack", None))
    payloads += ["ping [1]", compact("ping", {"nonce": 2})]
    expected += [("error", None), ("pong", 2)]
    if routing_role is not False:
        payloads += ["getnetworkinfo", "getaddr"]
        expected += [("networkinfo", None), ("addr", None)]
    payloads.append(compact("ping", {"nonce": 3}))
    expected.append(("pong", 3))
    ready.send_raw(frames(*payloads))
    for word, nonce in expected:
        msg = expect(ready, word, why=f"(answers must follow the order of the requests: {[w for w, _ in expected]})")
        if nonce is not None:
            assert msg.get("nonce") == nonce, msg


# -- §6.2 not served -----------------------------------------------------------------------------


def _not_served(peer: Peer, payload: str, word: str) -> None:
    peer.send(payload)
    msg = expect_error(peer, command=word, why=f"to {word} on a node without its role")
    assert "not served" in msg.get("reason", "") or word in msg.get("reason", ""), msg
    sync(peer, why="after 'not served' (the connection stays open)")


@pytest.fixture
def node_without(target, routing_role, chat_role, shared_node):
    """A node lacking a role: the target itself if it lacks it, else a node.py started with --roles."""

    def start(role: str) -> tuple[str, int]:
        present = {"routing": routing_role, "chat": chat_role}[role]
        if present is False:
            return target.address
        return shared_node("--roles", "chat" if role == "routing" else "routing")

    return start


@spec("§6.2", "a node without the chat role answers chat and typed lines with error 'not served' {command:chat}")
def test_not_served_chat(connect, node_without):
    address = node_without("chat")
    peer = connect(address)
    handshake(peer)
    _not_served(peer, "a typed line", "chat")
    _not_served(peer, CHAT_MSG, "chat")


@spec("§6.2", "a node without the routing role answers addr, getaddr, getpeerinfo, getnetworkinfo with 'not served'")
def test_not_served_routing(connect, node_without):
    address = node_without("routing")
    peer = connect(address)
    handshake(peer)
    _not_served(peer, compact("addr", {"addrs": []}), "addr")
    _not_served(peer, "getaddr", "getaddr")
    _not_served(peer, "getpeerinfo", "getpeerinfo")
    _not_served(peer, "getnetworkinfo", "getnetworkinfo")


@spec("§6.2", "an answer with no handler at the node is dropped silently")
def test_unhandled_answers_dropped(connect, node_without):
    address = node_without("routing")
    peer = connect(address)
    handshake(peer)
    peer.send(compact("peerinfo", {"peers": []}))
    peer.send(compact("networkinfo", {"address": "127.0.0.1:1", "user_agent": "", "peers": 0, "inbound": 0,
                                      "outbound": 0, "addresses_known": 0, "banned": 0, "addrs_dropped": 0}))
    sync(peer, why="after answers the node has no handler for")


@spec("§6.2", "'not served' costs no misbehaviour points (the peer's score stays 0)")
def test_not_served_costs_nothing(connect, node_without):
    address = node_without("chat")  # the routing role is there to report the score
    peer = connect(address)
    handshake(peer)
    for n in range(12):  # 12 × 10 points would be a ban if they were scored as malformed
        _not_served(peer, f"line {n}", "chat")
    peer.send("getpeerinfo")
    rows = {row.get("address"): row for row in expect(peer, "peerinfo").get("peers")}
    assert rows.get(peer.local_address, {}).get("score") == 0, rows.get(peer.local_address)


# -- §6.3 ---------------------------------------------------------------------------------------


@spec("§6.3", "a malformed answer still costs 10 misbehaviour points (visible in getpeerinfo)", level="stated")
def test_malformed_answer_scored(ready, needs_routing):
    ready.send('pong {"nonce":-1}')
    ready.send("getpeerinfo")
    rows = {row.get("address"): row for row in expect(ready, "peerinfo").get("peers")}
    assert rows.get(ready.local_address, {}).get("score") == 10, rows.get(ready.local_address)
