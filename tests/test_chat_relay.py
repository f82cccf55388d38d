"""The chat role: a typed line is acknowledged, printed, and flooded to every node exactly once.

A payload that is no command is a chat line. The node answers the sender
with `ack {"id":...}`, prints `[host:port] text`, and relays
`chat {"id","from","text"}` to every other ready peer. Each node relays an id
only the first time it hears it, which is what keeps a cycle of nodes from
passing a line around for ever.
"""

from __future__ import annotations

import json
import re
import secrets

import pytest

from protocol.messages import Ack, Chat, Error
from protocol.messages.handshake import NODE_NETWORK

from tests.node_tools import frames_until_pong, local_port
from tests.support import count_lines, wait_until


def chats(messages) -> list[Chat]:
    return [message for message in messages if isinstance(message, Chat)]


def acks(messages) -> list[Ack]:
    return [message for message in messages if isinstance(message, Ack)]


# -- one node ------------------------------------------------------------------------------


def test_typed_line_is_acked_printed_and_relayed_to_every_other_ready_peer_but_not_the_sender(node):
    with node.connect() as sender, node.connect() as first, node.connect() as second:
        for peer in (sender, first, second):
            peer.handshake()
        sender.send("hello, world")
        ack = sender.recv_message()
        assert isinstance(ack, Ack), ack
        origin = f"127.0.0.1:{local_port(sender)}"
        for peer in (first, second):
            command, _, body = peer.recv().partition(" ")
            assert command == "chat"
            assert json.loads(body) == {"id": ack.id, "from": origin, "text": "hello, world"}
        assert chats(frames_until_pong(sender, 5)) == [], "the sender got its own line back"
        node.wait_for_log(re.escape(f"[{origin}] hello, world"))


def test_peers_that_have_not_sent_version_get_no_relays(start_node):
    node = start_node("--handshake-timeout", "60")
    with node.connect() as sender, node.connect() as ready, node.connect() as lurker:
        sender.handshake()
        ready.handshake()
        lurker.sync_ping()  # connected, known to the node, no version
        sender.send("only for the ready")
        ack = sender.recv_message()
        assert isinstance(ack, Ack), ack
        assert chats(frames_until_pong(sender, 1)) == []  # the relay loop ran before this ping was read
        relayed = ready.recv_message()
        assert isinstance(relayed, Chat) and relayed.id == ack.id, relayed
        assert chats(frames_until_pong(lurker, 2)) == [], "a peer without a version got a relay"
        lurker.handshake()  # once it is ready, it gets the next line
        sender.send("now for everyone")
        ack = sender.recv_message()
        assert chats(frames_until_pong(sender, 3)) == []  # the relay loop has run
        assert [m.id for m in chats(frames_until_pong(lurker, 4))] == [ack.id]


def test_the_same_chat_id_sent_twice_is_relayed_once(node):
    line = 'chat {"id":"same-id-1","from":"10.1.2.3:5050","text":"said twice"}'
    with node.connect() as sender, node.connect() as listener:
        sender.handshake()
        listener.handshake()
        for _ in range(2):
            sender.send(line)
            assert sender.recv_message() == Ack(id="same-id-1")
        assert chats(frames_until_pong(sender, 1)) == []
        relayed = chats(frames_until_pong(listener, 2))
        assert relayed == [Chat(id="same-id-1", sender="10.1.2.3:5050", text="said twice")]
        assert count_lines(node.log(), "[10.1.2.3:5050] said twice") == 1


def test_a_node_peers_copies_of_a_handled_line_are_dropped_undecoded_a_clients_are_still_acked(start_node):
    """A flood brings the same bytes over every link; the node decodes the first copy only.

    The skip itself shows at --log-level debug as a `[FLOOD COPY]` line, one per dropped copy:
    the relays, the console and the acks are the same as without it, which is the point.
    """
    node = start_node("--log-level", "debug")
    line = 'chat {"id":"flood-1","from":"10.1.2.3:5050","text":"one flood"}'
    reordered = 'chat {"text": "one flood", "from": "10.1.2.3:5050", "id": "flood-1"}'  # same id, other bytes
    with node.connect() as first, node.connect() as second, node.connect() as client, \
            node.connect() as listener:
        for peer in (first, second):
            peer.handshake(services=NODE_NETWORK, nonce=secrets.randbits(63) | 1)
        client.handshake()
        listener.handshake()

        def skipped() -> int:
            return count_lines(node.log(), "[FLOOD COPY]")

        first.send(line)
        assert not acks(frames_until_pong(first, 2)), "a ready node peer got an ack"
        assert chats(frames_until_pong(listener, 3)) == [Chat(id="flood-1", sender="10.1.2.3:5050", text="one flood")]
        assert skipped() == 0, "the first copy must be handled, not dropped"

        second.send(line)  # the same bytes from another node peer: dropped before decoding
        assert not acks(frames_until_pong(second, 4)) and skipped() == 1
        first.send(line)  # and again from the first
        assert not acks(frames_until_pong(first, 5)) and skipped() == 2
        second.send(reordered)  # other bytes: decoded, then the chat role's id filter drops it
        assert not acks(frames_until_pong(second, 6)) and skipped() == 2
        second.send(reordered)  # those bytes are handled now too
        assert not acks(frames_until_pong(second, 7)) and skipped() == 3
        client.send(line)  # a person's client is answered, every time
        assert acks(frames_until_pong(client, 8)) == [Ack(id="flood-1")] and skipped() == 3

        assert chats(frames_until_pong(listener, 9)) == [], "a copy was relayed again"
        assert count_lines(node.log(), "[10.1.2.3:5050] one flood") == 1

        # A copy that was refused was never handled: the same bytes again are decoded, and refused again.
        refused = 'chat {"id":"flood-2","from":"10.1.2.3:5050","text":"\\u001b[31mred"}'
        for peer in (first, second):
            peer.send(refused)
            errors = [m for m in frames_until_pong(peer, 10) if isinstance(m, Error)]
            assert [e.about for e in errors] == ["chat"] and skipped() == 3, errors


def test_a_line_of_exactly_1000_characters_is_relayed(node):
    with node.connect() as sender, node.connect() as listener:
        sender.handshake()
        listener.handshake()
        sender.send("x" * 1000)
        assert isinstance(sender.recv_message(), Ack)
        relayed = listener.recv_message()
        assert isinstance(relayed, Chat) and relayed.text == "x" * 1000


BAD_CHAT = {
    "typed-bell": ("ring \x07 ring", "control characters"),
    "typed-escape": ("clear \x1b[2J", "control characters"),
    "typed-newline": ("two\nlines", "control characters"),
    "typed-c1-csi": ("c1 \x9b31m", "control characters"),
    "typed-1001": ("y" * 1001, "longer than 1000"),
    "chat-escape": ('chat {"id":"c1","from":"a:1","text":"\\u001b[31mred"}', "control characters"),
    "chat-1001": ('chat {"id":"c2","from":"a:1","text":"' + "z" * 1001 + '"}', "longer than 1000"),
}


@pytest.mark.parametrize("payload, reason", BAD_CHAT.values(), ids=BAD_CHAT.keys())
def test_chat_with_control_characters_or_over_1000_characters_is_an_error_and_the_connection_stays(
        node, payload, reason):
    with node.connect() as sender, node.connect() as listener:
        sender.handshake()
        listener.handshake()
        sender.send(payload)
        error = sender.recv_message()
        assert isinstance(error, Error) and error.about == "chat" and reason in error.reason, error
        sender.sync_ping()  # still connected
        assert chats(frames_until_pong(listener, 1)) == [], "a refused line was relayed"
        sender.send("a good line after a bad one")
        assert isinstance(sender.recv_message(), Ack)


@pytest.mark.parametrize("payload, field", [
    ("chat {}", "id"),
    ("chat", "id"),
    ('chat {"id":"abc","from":"a:1"}', "text"),
    ('chat {"id":"abc","text":"hi"}', "from"),
    ('chat {"from":"a:1","text":"hi"}', "id"),
])
def test_chat_missing_fields_is_an_error_and_the_connection_stays(node, payload, field):
    with node.connect() as sender, node.connect() as listener:
        sender.handshake()
        listener.handshake()
        sender.send(payload)
        error = sender.recv_message()
        assert isinstance(error, Error) and error.about == "chat", error
        assert f"missing field '{field}'" in error.reason, error
        sender.sync_ping()
        assert chats(frames_until_pong(listener, 1)) == []


# -- several nodes -----------------------------------------------------------------------------

# Node i dials every node j < i listed for it. The chain has no cycle; the triangle has one,
# so without dedupe by id a line would go round it for ever. --outbound 0 keeps the routing
# role from dialling the addresses it hears, so the links are exactly these.
TOPOLOGIES = {
    "chain-of-4": {1: [0], 2: [1], 3: [2]},
    "triangle": {1: [0], 2: [0, 1]},
}


@pytest.mark.parametrize("links", TOPOLOGIES.values(), ids=TOPOLOGIES.keys())
def test_a_line_typed_at_one_node_reaches_a_client_on_every_node_exactly_once(start_node, links):
    count = 1 + max(links)
    nodes = []
    for i in range(count):
        dials = [arg for j in links.get(i, []) for arg in ("--connect", f"127.0.0.1:{nodes[j].port}")]
        nodes.append(start_node("--outbound", "0", *dials, name=f"n{i}"))
    degree = [sum(1 for i, targets in links.items() for j in targets if k in (i, j)) for k in range(count)]
    for node, links_up in zip(nodes, degree):
        wait_until(lambda: count_lines(node.log(), "[HANDSHAKE]") == links_up, timeout=10,
                   message=f"{links_up} node links to be up")

    sender = nodes[0].connect()
    clients = [node.connect() for node in nodes]  # one listener per node, the sender's node too
    try:
        for client in (sender, *clients):
            client.handshake(user_agent="/test-client/")
        origin = f"127.0.0.1:{local_port(sender)}"
        got: list[list[Chat]] = [[] for _ in clients]

        def read_until(client_index: int, chat_id: str) -> None:
            while True:
                message = clients[client_index].recv_message(timeout=5)
                if isinstance(message, Chat):
                    got[client_index].append(message)
                    if message.id == chat_id:
                        return

        sender.send("across the network")
        first = sender.recv_message()
        assert isinstance(first, Ack), first
        for i in range(count):
            read_until(i, first.id)
        # A second line as a barrier: by the time it has reached everyone, a copy of the
        # first line going round a cycle would have arrived too.
        sender.send("the barrier line")
        second = sender.recv_message()
        assert isinstance(second, Ack), second
        for i in range(count):
            read_until(i, second.id)
        for i, node in enumerate(nodes):
            assert chats(frames_until_pong(clients[i], 99)) == [], f"more chat at node {i} after the barrier"
            assert [chat.id for chat in got[i]] == [first.id, second.id], f"node {i}'s client got {got[i]}"
            assert got[i][0] == Chat(id=first.id, sender=origin, text="across the network")
            assert count_lines(node.log(), f"[{origin}] across the network") == 1
        assert chats(frames_until_pong(sender, 98)) == [], "the sender got its own line back"
    finally:
        for client in (sender, *clients):
            client.close()
