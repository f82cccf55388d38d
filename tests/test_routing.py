"""roles/routing.py, black box: real node processes, and the test acting as their peer nodes.

A fake node is a raw frame client sending `version {"services":1,"nonce":...}`
(tests/routing_tools.py). Where the source IP matters (bans, "never back to
the source") each fake peer dials from its own 127.0.0.N. A node dials a
fake peer with --connect to a FakeListener, which makes that peer an outbound
one: the node asks it for addresses (getaddr), so its addr answers are not
rate limited. A Relay in between two real nodes makes their dials cross.
Nodes that must listen on port 5050 (the DNS seed tests) take random
127.R.S.x addresses. Every wait is on a condition with a timeout; the few
fixed windows only check that nothing more happens.
"""

from __future__ import annotations

import json
import re
import socket
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from protocol.messages import Error, Ping, Pong, Version
from protocol.messages.addr import GetAddr
from protocol.messages.peerinfo import PeerRow

from tests.routing_tools import (FakeListener, FakePeer, Relay, addr, addr_entries, addr_messages, ban_rows,
                                 book_addresses, book_rows, entry, free_port, many_entries, random_subnet)
from tests.support import count_lines, wait_until

QUIET = ("--outbound", "0")  # no dialling from the address book: the test's addresses are not nodes
ROUTING = {"getaddr", "addr"}  # what the routing role sends unasked; other roles' traffic is ignored here


def routing_commands(messages) -> list[str]:
    return [m.command for m in messages if m.command in ROUTING | {"verack"}]


def own_entry_text(node) -> str:
    return f"{node.host}:{node.port}"


def dialled_peer(node, listener: FakeListener) -> tuple[FakePeer, Version, list]:
    """Accept the node's --connect dial and shake hands as a fake node."""
    peer = listener.accept()
    theirs, after = peer.answer_dial()
    return peer, theirs, after


# -- after the handshake -----------------------------------------------------------------------------


def test_an_outbound_peer_gets_getaddr_and_the_nodes_own_address_right_after_the_handshake(start_node):
    listener, client_listener = FakeListener("127.0.0.10"), FakeListener("127.0.0.11")
    node = start_node("--connect", listener.text, "--connect", client_listener.text)
    peer, theirs, after = dialled_peer(node, listener)
    client = client_listener.accept()
    _, client_got = client.answer_dial(services=0)
    with peer, client, FakePeer.dial(node.address, "127.0.0.12") as inbound:
        # Only outbound node peers are asked and told: not a client the node dialled, not an inbound peer.
        assert routing_commands(client_got) == ["verack"], client_got
        inbound.hello()
        assert routing_commands(inbound.until_pong()) == []
        assert theirs.services & 1 and theirs.nonce != 0
        assert routing_commands(after) == ["verack", "getaddr", "addr"], after
        own = addr_messages(after)
        assert len(own) == 1 and len(own[0].addrs) == 1
        announced = own[0].addrs[0]
        assert announced.addr == own_entry_text(node)
        assert announced.services == theirs.services
        assert abs(announced.time - time.time()) < 30
        # The node dials from its listening IP, so peers see the address it announces.
        assert peer.sock.getpeername()[0] == node.host


# -- addr gossip ---------------------------------------------------------------------------------------


def test_a_fresh_announcement_goes_to_two_node_peers_once_and_big_or_stale_addrs_are_stored_only(start_node):
    listener = FakeListener("127.0.0.10")
    node = start_node("--connect", listener.text)
    source, _, _ = dialled_peer(node, listener)  # outbound: its addr messages are not rate limited
    source.send_message(addr())  # first, as a node does, the answer to the node's getaddr: nothing to tell
    targets = [FakePeer.dial(node.address, f"127.0.0.{11 + i}") for i in range(4)]
    chat = FakePeer.dial(node.address, "127.0.0.15")
    everyone = [source, *targets, chat]
    try:
        for target in targets:
            target.hello()
        chat.hello(services=0)

        def heard(sender: FakePeer) -> dict[FakePeer, list[str]]:
            """The addr entries each peer got after sender's last message.

            The sender's pong comes after the node handled its addr (relays included);
            then each other peer's pong comes after whatever was queued for it.
            """
            got = {sender: [e.addr for e in addr_entries(sender.until_pong())]}
            for peer in everyone:
                if peer is not sender:
                    got[peer] = [e.addr for e in addr_entries(peer.until_pong())]
            return got

        # A fresh announcement from one peer reaches exactly two other node peers.
        announced = entry("127.0.0.201", 7001, age=5)
        source.send_message(addr(announced))
        got = heard(source)
        chosen = [t for t in targets if got[t] == [announced.addr]]
        assert len(chosen) == 2, {t.local_address: got[t] for t in targets}
        assert all(got[t] == [] for t in targets if t not in chosen)
        assert got[source] == [], "relayed back to its source"
        assert got[chat] == [], "a chat client (services 0) got an addr relay"

        # The same address again, from a peer that was not chosen: the node heard it from the source
        # and sent it to the two chosen, so only the last node peer may get it now.
        second, last = [t for t in targets if t not in chosen]
        second.send_message(addr(entry("127.0.0.201", 7001, age=1)))
        got = heard(second)
        assert got[last] == [announced.addr], "the one node peer that had not seen the address"
        assert all(got[p] == [] for p in everyone if p is not last), \
            {p.local_address: got[p] for p in everyone}

        # 11 entries are an answer, not an announcement: stored, not forwarded.
        eleven = [entry(f"127.0.0.{210 + i}", 7002, age=5) for i in range(11)]
        source.send_message(addr(*eleven))
        got = heard(source)
        assert all(not entries for entries in got.values()), {p.local_address: e for p, e in got.items() if e}
        # Stale entries (last seen an hour ago) are stored, not forwarded.
        stale = [entry("127.0.0.230", 7003, age=3600), entry("127.0.0.231", 7003, age=601)]
        source.send_message(addr(*stale))
        got = heard(source)
        assert all(not entries for entries in got.values()), {p.local_address: e for p, e in got.items() if e}
        stored = book_addresses(node)
        assert {e.addr for e in eleven + stale} | {announced.addr} <= stored
    finally:
        for peer in everyone:
            peer.close()


def test_an_unsolicited_addr_is_rate_limited_to_one_token(start_node):
    node = start_node(*QUIET)
    with FakePeer.dial(node.address, "127.0.0.20") as peer:
        peer.hello()
        ten = [entry(f"127.0.0.{100 + i}", 7000, age=5) for i in range(10)]
        peer.send_message(addr(*ten))
        peer.until_pong()
        assert book_addresses(node) == {ten[0].addr}, "the bucket starts at 1 token: only the first entry"
        info = peer.network_info()
        assert info.addrs_dropped == 9
        assert info.addresses_known == 1
        # The bucket refills at 0.1 per second: one more entry a moment later is dropped too.
        peer.send_message(addr(entry("127.0.0.120", 7000, age=1)))
        assert peer.network_info().addrs_dropped == 10
    assert book_addresses(node) == {ten[0].addr}


def test_an_addr_with_1001_entries_is_an_error_scores_20_and_stores_nothing(start_node):
    listener = FakeListener("127.0.0.10")
    node = start_node("--connect", listener.text)
    peer, _, _ = dialled_peer(node, listener)  # outbound: 1,000 tokens, so a size check is all that stops it
    with peer, FakePeer.dial(node.address, "127.0.0.21") as observer:
        observer.hello(services=0)
        before = book_addresses(node)
        peer.send_message(addr(*many_entries(1001, second_octet=50)))
        error = peer.recv_until("error")
        assert isinstance(error, Error) and error.about == "addr", error
        assert "1001" in error.reason
        peer.until_pong()  # still connected: 20 points are far from a ban
        assert book_addresses(node) == before
        rows = {row.address: row for row in observer.peer_rows()}
        assert rows[listener.text].score == 20
        assert rows[observer.local_address].score == 0
        # 1,000 entries are within the limit, and this peer was asked: all are stored.
        peer.send_message(addr(*many_entries(1000, second_octet=51)))
        peer.until_pong()
        assert len(book_addresses(node) - before) == 1000
        assert {row.address: row for row in observer.peer_rows()}[listener.text].score == 20


def test_getaddr_is_answered_once_per_inbound_connection_with_23_percent_of_the_book_at_most_1000(start_node):
    listeners = [FakeListener(f"127.0.0.{40 + i}") for i in range(5)]
    node = start_node(*[arg for listener in listeners for arg in ("--connect", listener.text)])
    fakes = [dialled_peer(node, listener)[0] for listener in listeners]
    try:
        # The first outbound peer answers the node's getaddr with 1,000 addresses.
        fakes[0].send_message(addr(*many_entries(1000, second_octet=60)))
        fakes[0].until_pong()
        book = book_addresses(node)
        assert len(book) == 1000 + len(fakes), "1,000 heard, and each fake outbound peer itself"
        with FakePeer.dial(node.address, "127.0.0.31") as asker:
            asker.hello()
            answer = asker.ask("getaddr", "addr")
            sent = [e.addr for e in answer.addrs]
            assert len(sent) == len(book) * 23 // 100
            assert len(set(sent)) == len(sent) and set(sent) <= book
            rows = book_rows(node)
            assert all(e.time == rows[e.addr][3] and e.services == rows[e.addr][2] for e in answer.addrs), \
                "each entry's time is when the node last heard of the address"
            asker.send("getaddr")
            error = asker.recv_until("error")
            assert isinstance(error, Error) and error.about == "getaddr" and "once" in error.reason
            assert addr_messages(asker.until_pong()) == [], "a second getaddr got addresses"
        # An outbound peer's getaddr is not answered either: we asked it, not the other way round.
        fakes[1].send_message(GetAddr())
        assert isinstance(fakes[1].recv_until("error"), Error)
        assert addr_messages(fakes[1].until_pong()) == []

        # The book grows past 4,348 entries: 23% would be more than 1,000, and 1,000 is the cap.
        for i, fake in enumerate(fakes[1:], start=1):
            fake.send_message(addr(*many_entries(1000, second_octet=60 + i)))
            fake.until_pong()
        book = book_addresses(node)
        assert len(book) == 5000 + len(fakes)
        with FakePeer.dial(node.address, "127.0.0.32") as asker:  # a new connection: answered again
            asker.hello()
            sent = [e.addr for e in asker.ask("getaddr", "addr").addrs]
            assert len(sent) == 1000 and len(set(sent)) == 1000 and set(sent) <= book
    finally:
        for fake in fakes:
            fake.close()


# -- misbehaviour and bans -----------------------------------------------------------------------------

BAN_TIME = 4.0  # seconds: long enough to restart a node inside the ban, short enough to wait out
MALFORMED = 'ping {"nonce":"x"}'  # a malformed command: 10 misbehaviour points


def misbehave(peer: FakePeer, times: int) -> list[Error]:
    """Send MALFORMED `times` times; the errors that came back."""
    for _ in range(times):
        peer.send(MALFORMED)
    return [peer.recv_until("error") for _ in range(times)]


def refusal(node, source_ip: str) -> str:
    """The error a new connection from a banned source_ip gets at once, before it says anything."""
    with FakePeer.dial(node.address, source_ip) as peer:
        first = peer.recv_message()
        assert isinstance(first, Error), first
        peer.expect_closed()
        return first.reason


def served(node, source_ip: str) -> bool:
    """Whether a new connection from source_ip completes a handshake."""
    with FakePeer.dial(node.address, source_ip) as peer:
        try:
            peer.hello()
        except (AssertionError, OSError):  # an error frame instead of a version, or the connection went
            return False
        return True


def test_misbehaviour_reaching_100_disconnects_and_bans_the_ip_across_a_restart_until_the_ban_time_ends(
        start_node):
    args = (*QUIET, "--ban-time", str(BAN_TIME))
    node = start_node(*args, name="banning")
    with FakePeer.dial(node.address, "127.0.0.22") as bad, FakePeer.dial(node.address, "127.0.0.22") as sibling, \
            FakePeer.dial(node.address, "127.0.0.23") as bystander:
        for peer in (bad, sibling, bystander):
            peer.hello()
        got = misbehave(bad, 9)
        assert all(m.about == "ping" for m in got), got
        bad.until_pong()  # the error goes out before the points are added: wait until the 9th is scored
        assert {r.address: r.score for r in bystander.peer_rows()}[bad.local_address] == 90
        bad.send(MALFORMED)
        frames = [bad.recv_until("error"), bad.recv_until("error")]
        assert frames[0].about == "ping"
        assert frames[1].reason.startswith(f"banned for {BAN_TIME:g} s: "), frames
        bad.expect_closed()
        sibling.recv_until("error")  # every connection from the banned IP goes
        sibling.expect_closed()
        bystander.until_pong()  # another IP stays
        assert bystander.network_info().banned == 1
    reason = refusal(node, "127.0.0.22")
    assert reason.startswith("banned until "), reason
    assert served(node, "127.0.0.23")

    assert node.stop() == 0
    bans = ban_rows(node.data_dir)
    assert set(bans) == {"127.0.0.22"} and bans["127.0.0.22"][0] > time.time()
    until = bans["127.0.0.22"][0]

    node = start_node(*args, name="banning")  # the same --data-dir
    if time.time() > until - 0.5:
        pytest.skip("the restart took longer than the ban")  # a very slow machine; nothing to check
    assert refusal(node, "127.0.0.22").startswith("banned until "), "the ban did not survive a restart"
    assert served(node, "127.0.0.24")
    wait_until(lambda: served(node, "127.0.0.22"), timeout=BAN_TIME + 3, interval=0.2,
               message="the ban to end after --ban-time")
    assert time.time() >= until - 1


def test_a_whitelisted_ip_is_never_banned(start_node):
    node = start_node(*QUIET, "--whitelist", "127.0.0.25")
    with FakePeer.dial(node.address, "127.0.0.25") as friend, FakePeer.dial(node.address, "127.0.0.26") as other:
        friend.hello()
        other.hello(services=0)
        got = misbehave(friend, 12)
        assert all(m.about == "ping" and "banned" not in m.reason for m in got), got
        friend.until_pong()
        assert {r.address: r.score for r in other.peer_rows()}[friend.local_address] == 120
        assert other.network_info().banned == 0
    assert served(node, "127.0.0.25")
    assert "[BANNED]" not in node.log()


@pytest.mark.parametrize("ban_time", ["inf", "1e30"])
def test_a_ban_time_the_command_line_accepts_bans_for_real(start_node, ban_time):
    """--ban-time takes "a positive number of seconds"; a huge one must ban (or be refused at start)."""
    try:
        node = start_node(*QUIET, "--ban-time", ban_time)
    except AssertionError as refused:  # a one-line usage error at start is as good
        assert "--ban-time" in str(refused) and "Traceback" not in str(refused), refused
        return
    with FakePeer.dial(node.address, "127.0.0.30") as bad:
        bad.hello()
        misbehave(bad, 9)
        bad.send(MALFORMED)
        frames = []
        try:
            while True:
                frames.append(bad.recv_message(timeout=3))
        except (AssertionError, OSError):  # the connection ended (or, wrongly, nothing came for 3 s)
            pass
        reasons = [frame.reason for frame in frames if isinstance(frame, Error)]
        assert any(reason.startswith("banned for ") for reason in reasons), f"{reasons}\n{node.log()}"
    assert refusal(node, "127.0.0.30").startswith("banned until ")
    assert "[BUG]" not in node.log(), node.log()


def test_127_0_0_1_reaching_100_is_disconnected_but_never_banned(start_node):
    """This machine itself: a ban would lock out every program on it (routing.NEVER_BANNED)."""
    node = start_node(*QUIET)
    with FakePeer.dial(node.address, "127.0.0.1") as local:
        local.hello()
        misbehave(local, 9)
        local.send(MALFORMED)
        assert local.recv_until("error").about == "ping"
        last = local.recv_until("error")
        assert "not banned" in last.reason, last
        local.expect_closed()
    assert served(node, "127.0.0.1")
    with FakePeer.dial(node.address, "127.0.0.29") as other:
        other.hello(services=0)
        assert other.network_info().banned == 0
    assert ban_rows(node.data_dir) == {}

# -- what is worth keeping -----------------------------------------------------------------------------


def test_unroutable_addresses_and_the_nodes_own_address_are_not_stored(start_node):
    listener = FakeListener("127.0.0.10")
    node = start_node("--connect", listener.text)
    peer, _, _ = dialled_peer(node, listener)
    with peer:
        before = book_addresses(node)
        assert before == {listener.text}, "the outbound peer itself, after its handshake"
        useless = [entry(host, 5050, age=5) for host in
                   ("0.0.0.0", "224.0.0.1", "255.255.255.255", "169.254.1.1", "240.0.0.1",  # unusable anywhere
                    "8.8.8.8", "10.1.2.3", "192.168.1.1")]  # public, private: not for a loopback node
        useless.append(entry(node.host, node.port, age=5))  # itself
        useless.append(entry("::", 5050, age=5))
        assert len(useless) <= 10  # fresh and few: an announcement, were the entries any good
        with FakePeer.dial(node.address, "127.0.0.11") as neighbour:
            neighbour.hello()
            peer.send_message(addr(*useless))
            peer.until_pong()
            assert book_addresses(node) == before
            assert addr_messages(neighbour.until_pong()) == [], "an address not kept was relayed"
            kept = entry("127.0.0.99", 7100, age=5)
            peer.send_message(addr(kept))
            peer.until_pong()
            assert book_addresses(node) == before | {kept.addr}
            assert [e.addr for e in addr_entries(neighbour.until_pong())] == [kept.addr]


def test_an_addr_entry_with_the_top_service_bit_is_stored_with_the_rest_of_its_message(start_node):
    """services is a uint64 (docs/protocol.md §4.1): an entry with bit 63 set is as good as any."""
    listener = FakeListener("127.0.0.10")
    node = start_node("--connect", listener.text)
    peer, _, _ = dialled_peer(node, listener)
    with peer:
        entries = [entry("127.0.0.97", 7100, age=5), entry("127.0.0.98", 7100, age=5, services=2**64 - 1)]
        peer.send_message(addr(*entries))
        errors = [m for m in peer.until_pong() if isinstance(m, Error)]
        assert errors == [], errors
        rows = book_rows(node)
        assert {e.addr for e in entries} <= set(rows)
        assert rows["127.0.0.98:7100"][2] % 2**64 == 2**64 - 1  # as stored: unsigned, or in two's complement
    assert "[BUG]" not in node.log()


# -- keepalive ------------------------------------------------------------------------------------------


def test_keepalive_pings_a_peer_keeps_one_that_answers_and_drops_one_that_does_not(start_node):
    node = start_node(*QUIET, "--ping-interval", "0.5", "--ping-timeout", "1.5")
    with FakePeer.dial(node.address, "127.0.0.27") as lively, FakePeer.dial(node.address, "127.0.0.28") as silent:
        lively.hello()
        silent.hello()
        rows = {r.address: r for r in lively.peer_rows()}
        assert rows[lively.local_address].ping_ms is None, "no pong yet, so no round trip"

        ping = silent.recv_until("ping", timeout=3)
        assert isinstance(ping, Ping) and ping.nonce is not None  # and never answered

        nonces = []
        deadline = time.monotonic() + 10
        while not (len(nonces) >= 3 and "ping timeout" in node.log()):  # answer the lively peer's pings
            assert time.monotonic() < deadline, f"pings {nonces}; log:\n{node.log()}"
            message = lively.recv_until("ping", timeout=3)
            nonces.append(message.nonce)
            lively.send_message(Pong(nonce=message.nonce))
        assert len(set(nonces)) == len(nonces), "each ping carries a new nonce"

        error = silent.recv_until("error", timeout=3)
        assert "ping timeout" in error.reason, error
        silent.expect_closed()

        lively.until_pong()  # still connected, well past the ping timeout
        rows = {r.address: r for r in lively.peer_rows()}
        assert silent.local_address not in rows
        ping_ms = rows[lively.local_address].ping_ms
        assert ping_ms is not None and 0 <= ping_ms < 1000, ping_ms


# -- people's questions ----------------------------------------------------------------------------------


def test_getpeerinfo_has_a_row_per_peer_and_getnetworkinfo_counts_them(start_node):
    listener = FakeListener("127.0.0.10")
    started = int(time.time())
    node = start_node("--connect", listener.text, "--handshake-timeout", "10")
    outbound, theirs, _ = dialled_peer(node, listener)
    with outbound, FakePeer.dial(node.address, "127.0.0.33") as fake, \
            FakePeer.dial(node.address, "127.0.0.34") as person, FakePeer.dial(node.address, "127.0.0.35") as mute:
        fake.hello(user_agent="/fake:1.0/", height=7)
        person.hello(services=0)

        def rows_now() -> dict[str, dict]:
            person.send("getpeerinfo")
            text = person.recv()
            while not text.startswith("peerinfo "):
                text = person.recv()
            return {row["address"]: row for row in json.loads(text.partition(" ")[2])["peers"]}

        rows = wait_until(lambda: (r := rows_now()) and len(r) == 4 and r, message="4 rows")
        fields = {f for f in PeerRow.__dataclass_fields__}
        assert all(set(row) == fields for row in rows.values()), rows
        out, node_peer, chat, waiting = (rows[listener.text], rows[fake.local_address],
                                         rows[person.local_address], rows[mute.local_address])
        assert (out["direction"], out["services"], out["user_agent"]) == ("outbound", 1, "")
        assert (node_peer["direction"], node_peer["services"], node_peer["user_agent"], node_peer["height"],
                node_peer["version"]) == ("inbound", 1, "/fake:1.0/", 7, 1)
        assert (chat["direction"], chat["services"]) == ("inbound", 0)
        assert (waiting["direction"], waiting["version"], waiting["user_agent"]) == ("inbound", 0, "")
        for row in rows.values():
            assert row["ping_ms"] is None and row["score"] == 0
            assert started - 1 <= row["connected_since"] <= time.time() + 1
        for row in (out, node_peer, chat):
            assert row["bytes_sent"] > 64 and row["bytes_received"] > 64  # at least a version each way
        assert waiting["bytes_received"] == 0

        info = person.network_info()
        assert info.address == own_entry_text(node)
        assert info.user_agent == theirs.user_agent and info.user_agent.startswith("/epscoin:")
        assert (info.peers, info.inbound, info.outbound) == (4, 3, 1)
        assert (info.addresses_known, info.banned, info.addrs_dropped) == (1, 0, 0)


# -- one connection per pair of nodes ----------------------------------------------------------------------

SETTLE_WINDOW = 3.0  # seconds watched after a duplicate is dropped: three times --connect's 1 s redial delay


def node_links(observer: FakePeer, direction: str | None = None) -> list[PeerRow]:
    """The ready connections to other nodes (services 1) that observer's node has."""
    return [row for row in observer.peer_rows()
            if row.services & 1 and row.version > 0 and direction in (None, row.direction)]


def watch(seconds: float, sample) -> list:
    """sample() repeatedly for `seconds` (an observation window: checking that nothing changes)."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(sample())
        time.sleep(0.1)
    return samples


def test_two_nodes_that_dial_each_other_at_the_same_time_end_with_one_connection(start_node):
    """docs/protocol.md §10.8 rule 2, and that the collapse lasts: --connect must not undo it."""
    # Each node --connects to a relay that forwards to the other; the relays hold both dials until
    # both nodes have the other's inbound connection open, then let both handshakes run at once.
    to_b, to_a = Relay("127.0.0.81", hold=True), Relay("127.0.0.82", hold=True)
    slow = ("--handshake-timeout", "10")  # the first dial waits in the relay while the second node starts
    a = start_node("--connect", to_b.text, *slow, name="a", host="127.0.0.51")
    b = start_node("--connect", to_a.text, *slow, name="b", host="127.0.0.52")
    to_b.target, to_a.target = b.address, a.address
    try:
        wait_until(lambda: to_b.held() == 1 and to_a.held() == 1, message="both nodes to dial")
        to_b.connect_held()
        to_a.connect_held()
        a.wait_for_log(r"\[NEW CONNECTION\] 127\.0\.0\.82:\d+ connected \(inbound\)")
        b.wait_for_log(r"\[NEW CONNECTION\] 127\.0\.0\.81:\d+ connected \(inbound\)")
        to_b.release()
        to_a.release()
        wait_until(lambda: "we dialled each other at the same time" in a.log() + b.log(), timeout=5,
                   message="the crossing connections to be collapsed")
        with FakePeer.dial(a.address, "127.0.0.36") as ask_a, FakePeer.dial(b.address, "127.0.0.37") as ask_b:
            ask_a.hello(services=0)
            ask_b.hello(services=0)
            wait_until(lambda: len(node_links(ask_a)) == 1 and len(node_links(ask_b)) == 1,
                       message="one connection left on each side")
            samples = watch(SETTLE_WINDOW, lambda: (len(node_links(ask_a)), len(node_links(ask_b))))
            assert set(samples) == {(1, 1)}, (
                f"connections between the nodes (a, b) over {SETTLE_WINDOW} s: {samples}\n"
                f"--- a:\n{a.log()}\n--- b:\n{b.log()}")
    finally:
        to_a.close()
        to_b.close()


def test_a_node_that_dials_another_through_two_addresses_keeps_one_outbound_connection(start_node):
    """§10.8 rule 1; once the duplicate is dropped, the node does not keep dialling it again."""
    b = start_node(*QUIET, name="b", host="127.0.0.53")
    second_address = Relay("127.0.0.83", target=b.address)  # b, reached through another address
    a = start_node("--connect", f"{b.host}:{b.port}", "--connect", second_address.text, name="a",
                   host="127.0.0.54")
    try:
        a.wait_for_log(r"duplicate connection: already connected to this node")
        with FakePeer.dial(a.address, "127.0.0.38") as ask_a:
            ask_a.hello(services=0)
            wait_until(lambda: len(node_links(ask_a, "outbound")) == 1, message="one outbound connection")
            drops, handshakes = count_lines(a.log(), "duplicate connection"), count_lines(b.log(), "[HANDSHAKE]")
            samples = watch(SETTLE_WINDOW, lambda: len(node_links(ask_a, "outbound")))
            redials = count_lines(b.log(), "[HANDSHAKE]") - handshakes
            assert redials == 0 and count_lines(a.log(), "duplicate connection") == drops, (
                f"a dialled the duplicate address again {redials} times in {SETTLE_WINDOW} s "
                f"(handshakes on b), and dropped it each time:\n{a.log()}")
            assert set(samples) == {1}, samples
    finally:
        second_address.close()


# -- the outbound manager ----------------------------------------------------------------------------------


def test_the_outbound_manager_keeps_outbound_connections_to_distinct_other_nodes_and_replaces_one_that_goes(
        start_node):
    seeds = [start_node(*QUIET, name=f"seed{i}", host=f"127.0.0.{61 + i}") for i in range(3)]
    own = ("127.0.0.60", free_port("127.0.0.60"))
    seed_args = [arg for seed in seeds for arg in ("--seed", f"{seed.host}:{seed.port}")]
    node = start_node("--outbound", "2", *seed_args, "--seed", f"{own[0]}:{own[1]}", name="dialler",
                      host=own[0], port=own[1])
    by_address = {f"{seed.host}:{seed.port}": seed for seed in seeds}
    with FakePeer.dial(node.address, "127.0.0.39") as observer:
        observer.hello(services=0)

        def outbound() -> list[str]:
            return [row.address for row in node_links(observer, "outbound")]

        wait_until(lambda: len(outbound()) == 2, timeout=10, message="2 outbound connections")
        for sample in watch(1.5, outbound):  # several ticks of the manager: it must not dial more
            assert len(sample) == 2 and len(set(sample)) == 2 and set(sample) <= set(by_address), sample
        first = set(outbound())
        gone = sorted(first)[0]
        assert by_address[gone].stop() == 0
        wait_until(lambda: (now := outbound()) and len(now) == 2 and gone not in now, timeout=15,
                   message=f"the manager to replace {gone}")
        after = outbound()
        assert len(set(after)) == 2 and set(after) == set(by_address) - {gone}, after
    log = node.log()
    assert f"connected to {own[0]}:{own[1]}" not in log and "connected to self" not in log, log


# -- the DNS seeder and its crawler ----------------------------------------------------------------------


def ask_dns(ip: str, port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), ip, port=port, timeout=3)


def answered_ips(response: dns.message.Message) -> set[str]:
    return {record.address for rrset in response.answer for record in rrset}


def seeder(start_node, ip: str, *args: str) -> tuple[object, int]:
    """A node on ip:5050 serving the zone z.test on a free UDP port of ip."""
    udp = free_port(ip, socket.SOCK_DGRAM)
    node = start_node(*QUIET, "--serve-dns", f"{ip}:{udp}", "--dns-zone", "z.test", *args,
                      name="seeder", host=ip, port=5050)
    return node, udp


def test_the_dns_seed_answers_its_zone_with_its_own_address_refuses_others_and_ignores_garbage(start_node):
    ip = f"{random_subnet()}.1"
    node, udp = seeder(start_node, ip)
    response = ask_dns(ip, udp, "z.test")
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert answered_ips(response) == {ip}, "knowing no one, the seed names itself"
    for rdtype in ("AAAA", "TXT", "NS"):  # names are case-insensitive; other types: no records
        other_type = ask_dns(ip, udp, "Z.TEST", rdtype)
        assert other_type.rcode() == dns.rcode.NOERROR and not other_type.answer, rdtype
    for other in ("example.com", "www.z.test", "test"):
        refused = ask_dns(ip, udp, other)
        assert refused.rcode() == dns.rcode.REFUSED and not refused.answer, other
    chaos = dns.query.udp(dns.message.make_query("z.test", "A", "CH"), ip, port=udp, timeout=3)
    assert chaos.rcode() == dns.rcode.REFUSED
    two_questions = dns.message.make_query("z.test", "A")
    two_questions.question.append(dns.message.make_query("z.test", "AAAA").question[0])

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        for garbage in (b"", b"\x00", b"\xff" * 40, b"hello, are you a DNS server?", response.to_wire(),
                        two_questions.to_wire()):
            sock.sendto(garbage, (ip, udp))
        query = dns.message.make_query("z.test", "A")
        sock.sendto(query.to_wire(), (ip, udp))
        first, _ = sock.recvfrom(4096)  # the server answers in order: a reply to garbage would come first
        reply = dns.message.from_wire(first)
        assert reply.id == query.id and answered_ips(reply) == {ip}
    assert answered_ips(ask_dns(ip, udp, "z.test")) == {ip}


def test_the_dns_seed_hands_out_a_node_once_its_crawler_has_found_it_alive(start_node):
    subnet = random_subnet()
    seed_ip, alive_ip, dead_ip, elsewhere_ip = (f"{subnet}.{n}" for n in (1, 2, 5, 6))
    alive = start_node(*QUIET, name="alive", host=alive_ip, port=5050)
    elsewhere = start_node(*QUIET, name="elsewhere", host=elsewhere_ip)  # alive, but not on port 5050
    node, udp = seeder(start_node, seed_ip)
    assert answered_ips(ask_dns(seed_ip, udp, "z.test")) == {seed_ip}
    told = {f"{alive_ip}:5050", f"{dead_ip}:5050", f"{elsewhere_ip}:{elsewhere.port}"}
    for n, address in enumerate(sorted(told)):
        with FakePeer.dial(node.address, f"{subnet}.{10 + n}") as peer:  # one token each: one address each
            peer.hello()
            host, _, port = address.partition(":")
            peer.send_message(addr(entry(host, int(port), age=5)))
            peer.until_pong()
    assert told <= book_addresses(node)
    answers: list[set[str]] = []

    def answer() -> set[str]:
        answers.append(answered_ips(ask_dns(seed_ip, udp, "z.test")))
        return answers[-1]

    wait_until(lambda: answer() == {seed_ip, alive_ip}, timeout=10, interval=0.05,
               message="the crawled node in the seed's answer")
    assert all(ips <= {seed_ip, alive_ip} for ips in answers), answers
    alive.wait_for_log(re.escape(f"[NEW CONNECTION] {seed_ip}:") + r"\d+ connected \(inbound\)")
    rows = wait_until(lambda: (rows := book_rows(node))[f"{dead_ip}:5050"][5] >= 1
                      and rows[f"{elsewhere_ip}:{elsewhere.port}"][4] is not None and rows,
                      message="the crawler to try the dead node and visit the one on another port")
    assert rows[f"{alive_ip}:5050"][4] is not None, "the crawler's visit is a success in the book"
    # A records carry no port: a node elsewhere than 5050 is no use to a resolver's client; a dead one neither.
    assert answer() == {seed_ip, alive_ip}
