"""A Peer is what a role sees of one connection: who it is, and a way to send.

Sending never blocks the caller. A role that relays a chat line to fifty peers
runs on the handler thread of the peer it heard the line from; if one of the
fifty stops reading, that thread must not stop with it. So a frame is first
offered to the kernel without waiting (MSG_DONTWAIT, which on an idle socket
takes the whole frame, as fast as a plain sendall). Whatever the kernel cannot
take waits in the peer's bounded outbox, and one SendFlusher thread for the
whole node finishes those writes as the sockets drain. A peer whose outbox
would grow past its bound is disconnected.
"""

from __future__ import annotations

import enum
import logging
import select
import socket
import threading
import time

from protocol.addresses import format_address
from protocol.framing import FrameReader, encode_frame
from protocol.messages import Message, Version

log = logging.getLogger("epscoin.peer")

MAX_SEND_BUFFER = 10_000_000  # bytes waiting per peer: two full-size frames and change


class Direction(str, enum.Enum):
    INBOUND = "inbound"  # the peer dialled us
    OUTBOUND = "outbound"  # we dialled the peer


class Peer:
    """One connection's state. The handler thread reads; any thread may send."""

    def __init__(self, sock: socket.socket, address: tuple[str, int], direction: Direction,
                 flusher: "SendFlusher", max_send_buffer: int = MAX_SEND_BUFFER) -> None:
        self.sock = sock
        self.host, self.port = address[0], address[1]
        self.address = format_address(self.host, self.port)
        self.direction = direction
        self.connected_at = time.time()
        self.connected_monotonic = time.monotonic()
        self.reader = FrameReader(sock.makefile("rb"))
        self.version: Version | None = None  # set when the peer's version arrives
        self.ready_at = float("inf")  # monotonic time the version arrived
        self.sent_version = False
        self.bytes_sent = 0
        self.close_reason: str | None = None
        self._flusher = flusher
        self._max_send_buffer = max_send_buffer
        # Guards _outbox, every write to sock, and the switch to ready (see become_ready).
        self._send_lock = threading.RLock()
        self._drained = threading.Condition(self._send_lock)  # notified as the outbox shrinks or the peer closes
        self._outbox = bytearray()
        self._flush_requested = False
        self._last_send_progress = time.monotonic()

    def __repr__(self) -> str:
        return f"<Peer {self.address} {self.direction.value}>"

    @property
    def ready(self) -> bool:
        """True once the handshake is done: the peer's version has arrived."""
        return self.version is not None

    @property
    def bytes_received(self) -> int:
        return self.reader.bytes_read

    @property
    def closing(self) -> bool:
        return self.close_reason is not None

    def send(self, message: Message) -> None:
        """Queue one message for this peer; never blocks."""
        self.send_frame(encode_frame(message.encode()))

    def send_frame(self, frame: bytes) -> None:
        """Queue one encoded frame. Frames from different threads never interleave."""
        with self._send_lock:
            if self.closing:
                return
            if not self._outbox:
                sent = self._send_now(frame)
                if sent == len(frame):
                    return
                frame = frame[sent:]
            if len(self._outbox) + len(frame) > self._max_send_buffer:
                self._close_locked(f"send buffer overflow: peer is not reading ({len(self._outbox)} bytes waiting)")
                return
            self._outbox += frame
            if not self._flush_requested:
                self._flush_requested = True
                self._flusher.want_write(self)

    def become_ready(self, version: Version, replies: list[Message]) -> None:
        """Record the peer's version and queue the handshake replies, as one step.

        A relay from another thread either sees the peer not ready (and skips it)
        or is queued after the verack: a client that has read its verack misses nothing.
        """
        with self._send_lock:
            self.version = version
            self.ready_at = time.monotonic()
            for reply in replies:
                self.send(reply)

    def pending_send_bytes(self) -> int:
        return len(self._outbox)

    def wait_for_send_room(self, size: int) -> bool:
        """Block until a frame of `size` bytes fits in the outbox; False if the peer closes first.

        For answers the peer asked for in bulk (getdata of 16 blocks of 1 MB): as Bitcoin's
        fPauseSend, the node stops serving (and reading) a peer whose outbox is full, and goes on
        as it reads, rather than dropping it for asking. The handler thread that waits is this
        peer's own; a peer that stops reading for good is closed by the send-stall timeout.
        """
        with self._drained:
            while not self.closing and self._outbox and len(self._outbox) + size > self._max_send_buffer:
                self._drained.wait(1.0)
            return not self.closing

    def send_stalled_for(self, now: float) -> float:
        """Seconds the outbox has waited without the peer taking a byte (0 when empty)."""
        return now - self._last_send_progress if self._outbox else 0.0

    def flush(self) -> None:
        """Called by the SendFlusher when the socket can take more."""
        with self._send_lock:
            if self._outbox and not self.closing:
                sent = self._send_now(self._outbox)
                del self._outbox[:sent]
                self._drained.notify_all()
            if not self._outbox or self.closing:
                self._outbox.clear()
                self._flush_requested = False
                self._flusher.done(self)

    def close(self, reason: str) -> None:
        """Stop this peer: the handler thread sees the stream end and cleans up."""
        with self._send_lock:
            self._close_locked(reason)

    def _close_locked(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._drained.notify_all()
        try:
            # SHUT_RDWR wakes the handler thread blocked in read; data already
            # queued (a last error or goodbye frame) is still delivered before FIN.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the other side

    def _send_now(self, data: bytes | bytearray) -> int:
        """Bytes the kernel took without waiting; closes the peer on a socket error."""
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            self._close_locked(f"send failed: {error.strerror or error}")
            return len(data)  # nothing more will be sent; drop it
        self.bytes_sent += sent
        self._last_send_progress = time.monotonic()
        return sent

    def fileno(self) -> int:
        return self.sock.fileno()


class SendFlusher:
    """One thread that finishes the writes peers' sockets could not take at once.

    Idle sockets take every frame immediately, so this thread sleeps unless a
    peer falls behind. It polls only the peers that have bytes waiting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _waiting
        self._waiting: set[Peer] = set()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="send-flusher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake()
        self._thread.join(timeout=2)
        self._wake_reader.close()
        self._wake_writer.close()

    def want_write(self, peer: Peer) -> None:
        with self._lock:
            self._waiting.add(peer)
        self._wake()

    def done(self, peer: Peer) -> None:
        with self._lock:
            self._waiting.discard(peer)

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass  # already awake (buffer full) or stopped

    def _run(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                waiting = list(self._waiting)
            poller = select.poll()
            poller.register(self._wake_reader, select.POLLIN)
            by_fd: dict[int, Peer] = {}
            for peer in waiting:
                fd = peer.fileno()
                if fd < 0:  # closed while it waited
                    peer.flush()
                    continue
                by_fd[fd] = peer
                poller.register(fd, select.POLLOUT)
            for fd, _events in poller.poll(1000):
                if fd in by_fd:
                    by_fd[fd].flush()
                else:
                    self._drain_wakeups()

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except OSError:
            pass
