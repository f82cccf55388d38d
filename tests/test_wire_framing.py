"""docs/protocol.md §2 Framing: the framing rules, checked against a real node over TCP.

Every test talks to a node.py process on 127.0.0.1 (started with
--frame-timeout 1.5). Bad input must earn one `error` frame and then a closed
connection, promptly; every other peer, old or new, must go on being served.
"""

from __future__ import annotations

import socket
import time

import pytest

from protocol.framing import HEADER, MAX_PAYLOAD, encode_frame
from protocol.messages import Error, Pong, Version

from tests.support import WireClient, frames, raw_header
from tests.test_framing import BAD_HEADERS, BAD_UTF8, frame_bytes

# The classes the contract names; tests/test_framing.py runs every variant against parse_header.
WIRE_BAD_HEADERS = {name: BAD_HEADERS[name] for name in [
    "empty (all spaces)", "plus sign", "minus sign", "underscore as in 1_0", "NUL padding",
    "Arabic-Indic digit three in UTF-8", "leading space", "tab after the digits",
]}
WIRE_BAD_UTF8 = {name: BAD_UTF8[name] for name in [
    "lone continuation byte", "truncated two-byte sequence", "UTF-16 surrogate encoded in UTF-8",
]}

FRAME_TIMEOUT = 1.5  # as conftest.TEST_TIMEOUTS passes to every node
PROMPTLY = 1.0  # an answer that does not wait for any timeout arrives well within this


# -- helpers -----------------------------------------------------------------------


def ready_peer(node) -> WireClient:
    """A connected peer past the handshake, so no handshake timeout can interfere."""
    peer = node.connect()
    peer.handshake(user_agent="/framing-test/")
    return peer


def assert_closed_without_another_frame(peer: WireClient, timeout: float = 5.0) -> None:
    """The very next thing on the stream is its end: no frame after the error."""
    peer.sock.settimeout(timeout)
    try:
        text = peer.reader.read_frame()
    except ConnectionError:
        return  # reset: closed too
    except socket.timeout:
        raise AssertionError(f"the node kept the connection open for {timeout} s after the error") from None
    assert text is None, f"the node sent {text!r} after the error instead of closing"


def expect_error_then_close(peer: WireClient, within: float = PROMPTLY) -> Error:
    """One error frame, within `within` seconds, and then the connection ends."""
    error = peer.recv_message(timeout=within)
    assert isinstance(error, Error), f"expected an error frame, got {error!r}"
    assert_closed_without_another_frame(peer)
    return error


def assert_node_still_serves(node, bystander: WireClient) -> None:
    """The peer that was there all along still gets answers, and a new one handshakes."""
    bystander.sync_ping(nonce=1001, timeout=PROMPTLY)
    with node.connect() as fresh:
        theirs = fresh.handshake(user_agent="/fresh/")
        assert theirs.addr_from == f"{node.host}:{node.port}"
        fresh.sync_ping(nonce=1002, timeout=PROMPTLY)


def send_one_byte_at_a_time(sock: socket.socket, data: bytes, pace: float = 0.0002) -> None:
    """One sendall per byte; with TCP_NODELAY each byte leaves in its own segment."""
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    for i in range(len(data)):
        sock.sendall(data[i:i + 1])
        time.sleep(pace)  # pacing the trickle, so the node's reads really see single bytes


# -- segmentation ----------------------------------------------------------------------


def test_frames_sent_one_byte_per_segment_are_read_exactly_as_whole_frames(node):
    with node.connect() as peer, ready_peer(node) as bystander:
        send_one_byte_at_a_time(peer.sock, frames(
            Version(user_agent="/one-byte/").encode(), 'ping {"nonce":7}', "hello, one byte at a time"))
        assert isinstance(peer.recv_message(), Version)
        assert peer.recv() == "verack"
        assert peer.recv_message() == Pong(nonce=7)
        assert peer.recv_message().command == "ack"
        relayed = bystander.recv_until("chat")
        assert relayed.text == "hello, one byte at a time"


def test_several_frames_in_one_segment_are_all_answered_in_order(node):
    with node.connect() as peer:
        peer.send_raw(frames(Version().encode(), 'ping {"nonce":1}', 'ping {"nonce":2}', "a chat line", "",
                             'ping {"nonce":3}'))
        answers = [peer.recv() for _ in range(6)]
        assert [a.partition(" ")[0] for a in answers] == ["version", "verack", "pong", "pong", "ack", "pong"]
        assert answers[2:4] == ['pong {"nonce":1}', 'pong {"nonce":2}'] and answers[5] == 'pong {"nonce":3}'


def test_node_writes_its_own_frames_with_the_same_header_rule(node):
    with node.connect() as peer:
        peer.send("ping")
        expected = b"4" + b" " * (HEADER - 1) + b"pong"  # checked byte for byte, not with FrameReader
        received = b""
        deadline = time.monotonic() + 5
        while len(received) < len(expected) and time.monotonic() < deadline:
            peer.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = peer.sock.recv(len(expected) - len(received))
            assert chunk, "connection closed"
            received += chunk
        assert received == expected


# -- sizes -----------------------------------------------------------------------------


def test_length_zero_is_a_keepalive_that_gets_no_answer_and_keeps_the_connection(node):
    with ready_peer(node) as peer:
        peer.send_raw(raw_header(b"0"))
        peer.send_raw(raw_header(b"0") * 3)
        peer.send('ping {"nonce":5}')
        assert peer.recv_message(timeout=PROMPTLY) == Pong(nonce=5)  # the first frame back: nothing before it


def test_frame_of_exactly_max_payload_is_accepted_and_the_connection_stays(node):
    with ready_peer(node) as peer, ready_peer(node) as bystander:
        peer.send_raw(raw_header(str(MAX_PAYLOAD).encode()) + b"a" * MAX_PAYLOAD)
        error = peer.recv_message(timeout=5)
        # The frame was read whole; only the chat role turns a 4 MB line down.
        assert isinstance(error, Error) and error.about == "chat", error
        assert "frame" not in error.reason and "MAX_PAYLOAD" not in error.reason, error.reason
        peer.sync_ping(timeout=PROMPTLY)
        assert_node_still_serves(node, bystander)


@pytest.mark.parametrize("length", [MAX_PAYLOAD + 1, 10**63], ids=["max_payload_plus_one", "64_digits"])
def test_length_above_max_payload_is_refused_from_the_header_alone(node, length):
    with ready_peer(node) as peer, ready_peer(node) as bystander:
        peer.send_raw(raw_header(str(length).encode()))  # no payload follows: none may be waited for
        error = expect_error_then_close(peer, within=PROMPTLY)
        assert "MAX_PAYLOAD" in error.reason, error.reason
        assert_node_still_serves(node, bystander)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", WIRE_BAD_HEADERS.values(), ids=WIRE_BAD_HEADERS.keys())
def test_bad_header_gets_an_error_and_the_connection_closes(node, bad):
    with ready_peer(node) as peer, ready_peer(node) as bystander:
        peer.send_raw(bad)  # just the header: a node that took it for a length would wait
        error = expect_error_then_close(peer, within=PROMPTLY)
        assert "header" in error.reason, error.reason
        assert_node_still_serves(node, bystander)


@pytest.mark.parametrize("payload", WIRE_BAD_UTF8.values(), ids=WIRE_BAD_UTF8.keys())
def test_payload_that_is_not_utf8_gets_an_error_and_the_connection_closes(node, payload):
    with ready_peer(node) as peer, ready_peer(node) as bystander:
        peer.send_raw(frame_bytes(payload))
        error = expect_error_then_close(peer, within=PROMPTLY)
        assert "UTF-8" in error.reason, error.reason
        assert_node_still_serves(node, bystander)


def test_bad_frame_before_handshake_also_gets_an_error_and_a_close(node):
    with node.connect() as peer, ready_peer(node) as bystander:
        peer.send_raw(BAD_HEADERS["minus sign"])
        error = expect_error_then_close(peer, within=PROMPTLY)
        assert "header" in error.reason, error.reason
        assert_node_still_serves(node, bystander)


def test_nothing_sent_after_a_bad_frame_is_processed(node):
    with ready_peer(node) as peer, ready_peer(node) as bystander:
        # The bad header and a good ping and chat line in one segment: only the error comes back.
        peer.send_raw(BAD_HEADERS["plus sign"] + frames('ping {"nonce":9}', "never relayed"))
        error = expect_error_then_close(peer, within=PROMPTLY)
        assert "header" in error.reason, error.reason
        bystander.sync_ping(nonce=77, timeout=PROMPTLY)  # a relayed chat line would have come first
        assert_node_still_serves(node, bystander)


# -- stalls ------------------------------------------------------------------------------


def test_peers_stalled_mid_header_and_mid_payload_get_frame_timeout_while_another_is_served(node):
    stalls = {"mid-header": encode_frame("hello")[:10], "mid-payload": raw_header(b"10") + b"abc"}
    stalled = {where: ready_peer(node) for where in stalls}
    try:
        started = time.monotonic()
        for where, partial in stalls.items():
            stalled[where].send_raw(partial)
        with ready_peer(node) as other:  # a new peer, handshaking and pinging during the stalls
            other.sync_ping(nonce=31, timeout=PROMPTLY)
            assert time.monotonic() - started < FRAME_TIMEOUT, "the other peer was not served during the stall"
            for where, peer in stalled.items():
                error = expect_error_then_close(peer, within=FRAME_TIMEOUT + 3)
                elapsed = time.monotonic() - started
                assert "frame timeout" in error.reason, (where, error.reason)
                assert FRAME_TIMEOUT <= elapsed < FRAME_TIMEOUT + 3, f"{where}: dropped after {elapsed:.2f} s"
            assert_node_still_serves(node, other)
    finally:
        for peer in stalled.values():
            peer.close()
