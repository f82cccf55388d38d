"""Peer.wait_for_send_room: a peer that asked for a lot is served as it reads, not dropped for asking.

A node answering `getdata` for 16 blocks of 1 MB outgrows the 10 MB outbox
while the peer is still busy with the first blocks. Bitcoin pauses sending
(fPauseSend) and goes on as the peer reads; so does epscoin. Real sockets, a
small outbox bound so the test moves kilobytes instead of megabytes. About 1 s.
"""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from protocol.framing import encode_frame
from roles.peer import Direction, Peer, SendFlusher
from tests.support import wait_until

BOUND = 200_000  # the outbox bound of the test's peer
FRAME = encode_frame("block " + "x" * 60_000)  # a "block": four of them fill the outbox


@pytest.fixture
def linked() -> Iterator[tuple[Peer, socket.socket]]:
    """A Peer on one end of a loopback TCP connection, and the test's raw socket on the other."""
    listener = socket.create_server(("127.0.0.1", 0))
    far = socket.create_connection(listener.getsockname())
    near, address = listener.accept()
    listener.close()
    for sock in (near, far):  # small kernel buffers, so the outbox fills
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16_384)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
    flusher = SendFlusher()
    flusher.start()
    peer = Peer(near, address, Direction.INBOUND, flusher, max_send_buffer=BOUND)
    yield peer, far
    peer.close("test over")
    far.close()
    near.close()
    flusher.stop()


def serve(peer: Peer, frames: int, served: list[int]) -> None:
    """What on_getdata does for each block: wait for room, then queue the frame."""
    for _ in range(frames):
        if not peer.wait_for_send_room(len(FRAME)):
            return
        peer.send_frame(FRAME)
        served.append(1)


def test_a_peer_that_asked_for_more_than_the_outbox_holds_gets_all_of_it_as_it_reads(linked):
    peer, far = linked
    frames, served = 16, []  # 16 x 60 KB = 960 KB, almost five times the bound
    server = threading.Thread(target=serve, args=(peer, frames, served))
    server.start()
    wait_until(lambda: peer.pending_send_bytes() > BOUND - len(FRAME), 5, message="the outbox to fill")
    assert len(served) < frames  # it waits for the reader...
    received = 0
    while received < frames * len(FRAME):
        chunk = far.recv(65_536)  # ...which reads at its own pace
        assert chunk, f"connection closed after {received} bytes: {peer.close_reason}"
        received += len(chunk)
        assert peer.pending_send_bytes() <= BOUND
    server.join(5)
    assert not server.is_alive() and len(served) == frames
    assert received == frames * len(FRAME) and not peer.closing


def test_a_wait_for_room_ends_when_the_peer_is_closed(linked):
    peer, _far = linked  # never reads
    served: list[int] = []
    server = threading.Thread(target=serve, args=(peer, 16, served))
    server.start()
    wait_until(lambda: peer.pending_send_bytes() > BOUND - len(FRAME), 5, message="the outbox to fill")
    peer.close("send timeout: peer took no data")  # what the node's housekeeping does to a stalled peer
    server.join(5)
    assert not server.is_alive(), "the serving thread still waits on a closed peer"
    assert len(served) < 16


def test_without_the_wait_the_same_request_overflows_the_outbox(linked):
    """The case the wait exists for: queueing it all at once closes the peer."""
    peer, _far = linked
    for _ in range(16):
        peer.send_frame(FRAME)
    assert peer.closing and "send buffer overflow" in peer.close_reason
