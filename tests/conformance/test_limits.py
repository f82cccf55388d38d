"""§8 Limits and timeouts: node full, a peer that stops reading, and shutdown."""

from __future__ import annotations

import socket
import time

import pytest

from .spec import spec
from .wire import (
    Closed,
    NoFrame,
    Peer,
    compact,
    expect,
    expect_closed,
    expect_error,
    frames,
    handshake,
    sync,
    wait_until,
)


def _accepted(address, reply_timeout) -> Peer | None:
    """A connection that the node serves (a pong), or None if it said "node full" and closed."""
    peer = Peer(address, reply_timeout=reply_timeout)
    try:
        peer.send(compact("ping", {"nonce": 1}))
        msg = peer.next()
    except (Closed, NoFrame, OSError):
        peer.close()
        return None
    if msg.word == "pong":
        return peer
    peer.close()
    return None


@spec("§8", "beyond --max-inbound, a new peer gets error 'node full' (no command) and the close; a freed slot is reused",
      level="MUST", also=("§4.7",))
def test_node_full(target, request):
    limit = request.config.getoption("--target-max-inbound")
    if target.self_started:
        node = target.start_node("--max-inbound", "1")
        address, limit = node.address, 1
    elif limit is None:
        pytest.skip("give --target-max-inbound N to check the node-full rule against --target")
    else:
        address, node = target.address, None
    held = []
    try:
        for n in range(limit):  # connections from earlier checks may take a moment to be noticed as closed
            held.append(wait_until(lambda: _accepted(address, target.reply_timeout), timeout=10,
                                   message=f"inbound slot {n + 1} of {limit}"))
        extra = Peer(address, reply_timeout=target.reply_timeout, name="one too many")
        held.append(extra)
        expect_error(extra, exact="node full", command=None, why=f"for inbound connection {limit + 1}")
        expect_closed(extra, why="after 'node full'")
        held.pop(0).close()  # a slot frees up...
        again = wait_until(lambda: _accepted(address, target.reply_timeout), timeout=10,
                           message="the freed inbound slot to be usable again")
        held.append(again)
        handshake(again)
    finally:
        for p in held:
            p.close()
        if node is not None:
            node.kill()


@spec("§8", "a peer that stops reading is closed after the frame timeout, and meanwhile the others are served",
      level="stated", also=("§2.2",))
def test_stalled_reader_closed_others_served(target, connect, needs_chat, needs_routing):
    stalled = connect(name="stalled", rcvbuf=4096)
    handshake(stalled)
    typist, reader = connect(name="typist"), connect(name="reader")
    handshake(typist)
    handshake(reader)
    line = "😀" * 1000  # 4,000 bytes: the relays soon fill the stalled peer's window and the node's socket
    batch = 100
    total = 0
    last_relay_at = time.monotonic()
    for _ in range(15):  # 1,500 lines ≈ 6 MB relayed to a peer that reads nothing (under the 10 MB buffer)
        typist.send_raw(frames(*[line] * batch))
        for _ in range(batch):
            msg = expect(typist, "ack", timeout=10, why="while another peer has stopped reading")
        got = 0
        while got < batch:
            msg = reader.next(timeout=10)
            got += msg.word == "chat"
        total += batch
        last_relay_at = time.monotonic()
    sync(reader, why="while another peer has stopped reading")

    def stalled_gone() -> bool:
        reader.send("getpeerinfo")
        while True:
            msg = reader.next(timeout=10)
            if msg.word == "peerinfo":
                break
        addresses = {row.get("address") for row in msg.get("peers")}
        return stalled.local_address not in addresses

    wait_until(stalled_gone, timeout=target.frame_timeout + target.timer_slack + 5, interval=0.1,
               message="the node to close the connection of the peer that stopped reading")
    closed_after = time.monotonic() - last_relay_at
    assert closed_after <= target.frame_timeout + target.timer_slack + 1, (
        f"closed {closed_after:.1f} s after the last relay; the send-side frame timeout is {target.frame_timeout:g} s")
    sync(typist, why="after the stalled peer was dropped")
    # The stalled peer finds the relayed lines and then the end of the stream, with no error frame.
    stalled.answer_pings = False
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    frames_read = 0
    try:
        while True:
            msg = stalled.next(timeout=5)
            assert msg.word == "chat", f"the stalled peer must get no frame but the relays, got {msg}"
            frames_read += 1
    except Closed:
        pass
    assert frames_read < total, "the node delivered every line: it never stalled (the check did not bite)"


@spec("§8", "on SIGTERM the node sends goodbye 'node shutting down' to every peer, ready or not, closes, exits 0",
      level="stated", also=("§4.8",))
def test_shutdown_goodbye(target):
    node = target.start_node()
    ready = Peer(node.address, reply_timeout=target.reply_timeout, name="ready")
    unready = Peer(node.address, reply_timeout=target.reply_timeout, name="unready")
    try:
        handshake(ready)
        sync(unready)
        node.process.terminate()
        for peer in (ready, unready):
            msg = expect(peer, "goodbye", timeout=5, why=f"to the {peer.name} peer when the node shuts down")
            assert msg.get("reason") == "node shutting down", msg
            expect_closed(peer, timeout=5, why="after the shutdown goodbye")
        assert node.stop() == 0, f"the node exited with {node.process.returncode}"
    finally:
        ready.close()
        unready.close()
        node.kill()
