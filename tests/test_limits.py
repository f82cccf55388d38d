"""The node's limits under load: many peers, --max-inbound, peers that stop reading or stall.

Thread per peer means every limit is about threads and sockets: 1,000
concurrent peers are served and their threads go away when they leave; a
peer beyond --max-inbound is refused before any thread starts; a peer that
stops reading is dropped without ever blocking another peer's thread; the
listen backlog is deep enough that a burst of connects never waits for SYN
retries.
"""

from __future__ import annotations

import re
import resource
import select
import threading
import time

import pytest

from protocol.framing import encode_frame
from protocol.messages import Ack, Error, Pong

from tests.node_tools import (LogTail, close_all, connect_many, hang_up, local_port, raise_open_file_limit,
                              recv_frame, send_frame)
from tests.support import frames, wait_until

THOUSAND = 1000
# Thread counts are compared exactly, so no thread may come and go besides the peers':
# --outbound 0 stops the routing role's discovery (a short-lived thread every few seconds).
STEADY_THREADS = ("--outbound", "0")
# Every one of the 1,000 peers is only pinged, never sent a version: give them time.
MANY_PEERS = ("--max-inbound", str(THOUSAND + 100), "--handshake-timeout", "60", *STEADY_THREADS)


@pytest.fixture
def open_files():
    """Enough file descriptors for 1,000 sockets here and 1,000 in the node (which inherits the limit)."""
    old = raise_open_file_limit(3 * THOUSAND)
    yield
    if old is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


# -- 1,000 peers -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_thousand_concurrent_peers_each_complete_a_ping_pong_round_trip(open_files, start_node):
    node = start_node(*MANY_PEERS)
    baseline = node.status("Threads")
    socks = connect_many(node.address, THOUSAND)
    try:
        wait_until(lambda: node.status("Threads") >= baseline + THOUSAND, timeout=15,
                   message="the node to hold 1,000 connections (a thread each) at once")
        for i, sock in enumerate(socks):
            send_frame(sock, f'ping {{"nonce":{i}}}')
        for i, sock in enumerate(socks):
            assert recv_frame(sock) == f'pong {{"nonce":{i}}}'
    finally:
        close_all(socks)


@pytest.mark.timeout(60)
def test_threads_return_to_baseline_within_2_s_after_a_thousand_peers_leave(open_files, start_node):
    node = start_node(*MANY_PEERS)
    baseline = node.status("Threads")
    socks = connect_many(node.address, THOUSAND)
    try:
        wait_until(lambda: node.status("Threads") >= baseline + THOUSAND, timeout=15,
                   message="a thread for each of the 1,000 peers")
    finally:
        close_all(socks)
    wait_until(lambda: node.status("Threads") == baseline, timeout=2.0,
               message=f"the node's threads to return to {baseline} (now {node.status('Threads')})")
    with node.connect() as peer:  # and the node still serves
        peer.handshake()
        peer.sync_ping()


@pytest.mark.timeout(60)
def test_the_listen_backlog_takes_a_thousand_simultaneous_connects_without_syn_retries(open_files, start_node):
    node = start_node(*MANY_PEERS)
    baseline = node.status("Threads")
    started = time.monotonic()
    socks = connect_many(node.address, THOUSAND)
    try:
        connected = time.monotonic() - started
        # Accepted by the node too, not just completed on our side: a full accept queue also
        # drops final ACKs, and the connection then waits for the node's SYN-ACK to be resent.
        wait_until(lambda: node.status("Threads") >= baseline + THOUSAND, timeout=15,
                   message="the node to accept all 1,000 connections")
        accepted = time.monotonic() - started
    finally:
        close_all(socks)
    # A SYN dropped because the accept queue is full is resent after exactly 1 s, so any
    # overflow makes the connect phase last 1 s or more; a deep enough backlog takes ~0.1 s.
    assert connected < 1.0, f"1,000 connects took {connected:.2f} s: SYNs were dropped and resent"
    assert accepted < 4.0, f"the node took {accepted:.2f} s to accept 1,000 connects"


# -- --max-inbound ---------------------------------------------------------------------------------------


def test_the_peer_beyond_max_inbound_gets_node_full_without_a_thread_and_a_freed_slot_is_reused(start_node):
    node = start_node("--max-inbound", "3", *STEADY_THREADS)
    peers = [node.connect() for _ in range(3)]
    try:
        for peer in peers:
            peer.handshake()
        threads = node.status("Threads")
        for eager in (False, True):
            with node.connect() as refused:
                port = local_port(refused)
                if eager:  # as peer_client.py does: version at once, before the refusal arrives
                    refused.send("version")
                error = refused.recv_message()
                assert isinstance(error, Error) and error.reason == "node full", error
                refused.expect_closed()
                assert node.status("Threads") == threads
            assert f"[NEW CONNECTION] 127.0.0.1:{port} " not in node.log(), "the refused peer got a handler"
        assert node.status("Threads") == threads
        for peer in peers:  # the three were not disturbed
            peer.sync_ping()

        freed = local_port(peers[0])
        hang_up(peers[0])
        node.wait_for_log(rf"\[DISCONNECTED\] 127\.0\.0\.1:{freed}:")
        with node.connect() as newcomer:
            newcomer.handshake()
            newcomer.sync_ping()
    finally:
        for peer in peers:
            peer.close()


# -- peers that stop reading or stall ----------------------------------------------------------------


class Flood:
    """A thread that writes one batch of frames over and over until stopped or the socket fails."""

    def __init__(self, sock, batch: bytes) -> None:
        self.sock, self.batch = sock, batch
        self.error: OSError | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.sock.sendall(self.batch)
        except OSError as error:
            self.error = error

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def round_trips_until(tail: LogTail, dropped: str, round_trip, timeout: float = 15.0) -> int:
    """Run round_trip() back to back, each within 1 s, until the log says the stuck peer was dropped."""
    deadline = time.monotonic() + timeout
    done = 0
    while not tail.search(dropped):
        assert time.monotonic() < deadline, f"the peer that does not read was not dropped within {timeout} s"
        started = time.monotonic()
        round_trip(done)
        took = time.monotonic() - started
        assert took < 1.0, f"round trip {done} took {took:.2f} s while a peer was not reading"
        done += 1
    return done


def dropped_for_not_reading(port: int) -> str:
    return rf"\[DISCONNECTED\] 127\.0\.0\.1:{port}: (send timeout|send buffer overflow)"


def test_a_peer_flooding_pings_without_reading_never_blocks_the_node_and_is_disconnected(start_node):
    node = start_node()  # --frame-timeout 1.5 is also the send timeout
    tail = LogTail(node)
    with node.connect() as watcher, node.connect() as stuck:
        watcher.handshake()
        stuck.handshake()
        flood = Flood(stuck.sock, frames(*["ping"] * 500))  # its pongs fill its own socket buffers
        try:
            pings = round_trips_until(tail, dropped_for_not_reading(local_port(stuck)),
                                      lambda n: watcher.sync_ping(nonce=n, timeout=1.0))
        finally:
            flood.join()
        assert pings > 0
        watcher.sync_ping(timeout=1.0)
        stuck.expect_closed(timeout=10)  # it reads at last: what the kernel held, then the end


def test_a_peer_that_never_reads_relayed_chat_never_blocks_the_relaying_peer_and_is_disconnected(start_node):
    node = start_node()
    tail = LogTail(node)
    batch = 20
    with node.connect() as talker, node.connect() as stuck:
        talker.handshake()
        stuck.handshake()  # ready, so every line is relayed to it; it never reads
        lines = frames(*[f"line {i} " + "x" * 900 for i in range(batch)])

        def chat_then_ping(n: int) -> None:
            # The talker's own thread relays each line to the stuck peer; a send that
            # blocked would hold the pong back.
            talker.send_raw(lines + frames(f'ping {{"nonce":{n}}}'))
            answers = []
            while not isinstance(answer := talker.recv_message(timeout=1.0), Pong):
                answers.append(answer)
            assert answer.nonce == n and len(answers) == batch and all(isinstance(a, Ack) for a in answers)

        rounds = round_trips_until(tail, dropped_for_not_reading(local_port(stuck)), chat_then_ping)
        assert rounds > 0
        chat_then_ping(rounds)  # the talker is still served
        assert f"[DISCONNECTED] 127.0.0.1:{local_port(talker)}:" not in node.log()
        stuck.expect_closed(timeout=10)


def test_a_peer_that_stalls_mid_frame_is_closed_after_the_frame_timeout_while_others_are_served(start_node):
    node = start_node()  # --frame-timeout 1.5
    with node.connect() as stalled, node.connect() as other:
        stalled.handshake()
        other.handshake()
        stalled.send_raw(encode_frame('ping {"nonce":1}')[:40])  # most of a header, then nothing
        started = time.monotonic()
        slowest, pings = 0.0, 0
        while not select.select([stalled.sock], [], [], 0.05)[0]:
            assert time.monotonic() - started < 6, "the stalled peer was never closed"
            before = time.monotonic()
            other.sync_ping(nonce=pings, timeout=1.0)
            slowest = max(slowest, time.monotonic() - before)
            pings += 1
        elapsed = time.monotonic() - started
        error = stalled.recv_message()
        assert isinstance(error, Error) and error.reason.startswith("frame timeout"), error
        stalled.expect_closed()
        assert 1.4 <= elapsed < 4.0, f"closed after {elapsed:.2f} s, --frame-timeout is 1.5 s"
        assert pings > 0 and slowest < 1.0, f"{pings} pings, slowest {slowest:.2f} s"
        other.sync_ping(timeout=1.0)
        node.wait_for_log(re.escape(f"[DISCONNECTED] 127.0.0.1:{local_port(stalled)}: frame timeout"))
