"""Helpers for the routing tests: fake peer nodes on chosen loopback IPs.

A fake node is a raw frame client that says `version {"services":1,"nonce":...}`.
It can dial the node from any 127.0.0.0/8 address (bans and per-IP rules see
that address), or be dialled by it (`FakeListener`, for `--connect`). `Relay`
forwards TCP connections, optionally holding them until the test releases
them, so two nodes' dials can be made to cross. `book_rows` and `ban_rows`
read a node's peers.sqlite read-only while the node runs.
"""

from __future__ import annotations

import random
import secrets
import socket
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

from protocol.addresses import format_address
from protocol.framing import FrameReader
from protocol.messages import Message, Ping, Pong, Version
from protocol.messages.addr import Addr, AddressEntry
from protocol.messages.peerinfo import NetworkInfo, PeerRow

from tests.support import NodeProcess, WireClient

NODE_NETWORK = 1


def fake_version(services: int = NODE_NETWORK, **fields) -> Version:
    """A fake node's version: its own random nonce, so the node sees a distinct peer."""
    return Version(services=services, nonce=secrets.randbits(63) | 1, **fields)


class FakePeer(WireClient):
    """A WireClient over any connected socket: one we dialled from a chosen IP, or one a node dialled."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:  # not super().__init__: it dials
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.timeout = timeout
        self.reader = FrameReader(sock.makefile("rb"))
        self.version: Version | None = None

    @classmethod
    def dial(cls, address: tuple[str, int], source_ip: str, timeout: float = 5.0) -> "FakePeer":
        return cls(socket.create_connection(address, timeout=timeout, source_address=(source_ip, 0)), timeout)

    @property
    def local_address(self) -> str:
        """How the node writes this peer's address (its host:port in getpeerinfo)."""
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        """Really close: the reader's file object holds the descriptor too."""
        try:
            self.reader.stream.close()
        except OSError:
            pass
        super().close()

    def hello(self, services: int = NODE_NETWORK, **fields) -> Version:
        """The dialler's handshake as a fake node (services 1) or a chat client (services 0)."""
        self.version = fake_version(services, **fields)
        self.send_message(self.version)
        theirs = self.recv_message()
        assert isinstance(theirs, Version), theirs
        assert self.recv() == "verack"
        return theirs

    def answer_dial(self, services: int = NODE_NETWORK, **fields) -> tuple[Version, list[Message]]:
        """The listener's handshake (the node dialled us): its version, and everything it sent after ours."""
        theirs = self.recv_message()
        assert isinstance(theirs, Version), f"a dialling node speaks first with version, not {theirs}"
        self.version = fake_version(services, **fields)
        self.send_message(self.version)
        self.send("verack")
        return theirs, self.until_pong()

    def until_pong(self, timeout: float | None = None) -> list[Message]:
        """Ping; every message that arrived before the pong.

        The node handles one peer's frames in order, so after the pong everything
        it queued for us before reading the ping has arrived, relays from other
        peers' threads included if they were queued before.
        """
        nonce = secrets.randbits(62)
        self.send_message(Ping(nonce=nonce))
        deadline = time.monotonic() + (timeout or self.timeout)
        before: list[Message] = []
        while True:
            message = self.recv_message(max(0.01, deadline - time.monotonic()))
            if message == Pong(nonce=nonce):
                return before
            self._answer_keepalive(message)
            before.append(message)

    def ask(self, command: str, answer: str) -> Message:
        """Send a request; its answer, skipping other frames (and answering the node's pings meanwhile)."""
        self.send(command)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self.recv_message(max(0.01, deadline - time.monotonic()))
            if message.command == answer:
                return message
            self._answer_keepalive(message)

    def _answer_keepalive(self, message: Message) -> None:
        """A well-behaved peer answers the node's keepalive pings (only we send pings the other way)."""
        if isinstance(message, Ping):
            self.send_message(Pong(nonce=message.nonce))

    def peer_rows(self) -> list[PeerRow]:
        return list(self.ask("getpeerinfo", "peerinfo").peers)

    def network_info(self) -> NetworkInfo:
        info = self.ask("getnetworkinfo", "networkinfo")
        assert isinstance(info, NetworkInfo)
        return info


def addr_entries(messages: list[Message]) -> list[AddressEntry]:
    return [entry for message in messages if isinstance(message, Addr) for entry in message.addrs]


def addr_messages(messages: list[Message]) -> list[Addr]:
    return [message for message in messages if isinstance(message, Addr)]


def entry(host: str, port: int, age: int = 0, services: int = NODE_NETWORK) -> AddressEntry:
    """An addr entry last seen `age` seconds ago."""
    return AddressEntry(addr=format_address(host, port), services=services, time=int(time.time()) - age)


def addr(*entries: AddressEntry) -> Addr:
    return Addr(addrs=tuple(entries))


def many_entries(count: int, second_octet: int, port: int = 7000, age: int = 60) -> list[AddressEntry]:
    """`count` distinct loopback entries 127.<second_octet>.x.y:port."""
    return [entry(f"127.{second_octet}.{i // 250}.{i % 250 + 1}", port, age) for i in range(count)]


class FakeListener:
    """A listening socket on a chosen loopback IP, for a node to --connect to."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((ip, 0))
        self.sock.listen(16)
        self.address = self.sock.getsockname()[:2]
        self.text = f"{self.address[0]}:{self.address[1]}"

    def accept(self, timeout: float = 10.0) -> FakePeer:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        return FakePeer(conn)

    def close(self) -> None:
        self.sock.close()


class Relay:
    """Forwards each TCP connection made to (ip, free port) to `target`, from the relay's own IP.

    With hold=True, connections wait: `connect_held()` opens their upstream
    connections, `release()` starts moving bytes (and every later connection is
    forwarded at once). That makes two nodes' dials of each other cross exactly.
    """

    def __init__(self, ip: str, target: tuple[str, int] | None = None, hold: bool = False) -> None:
        self.ip = ip
        self.target = target
        self._listener = socket.socket()
        self._listener.bind((ip, 0))
        self._listener.listen(16)
        self.address = self._listener.getsockname()[:2]
        self.text = f"{self.address[0]}:{self.address[1]}"
        self._lock = threading.Lock()
        self._holding = hold
        self._held: list[socket.socket] = []
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name=f"relay-{self.text}").start()

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def connect_held(self) -> None:
        """Open the upstream connection of every held connection (bytes still wait)."""
        with self._lock:
            held, self._held = self._held, []
        for down in held:
            self._pairs.append((down, self._connect_upstream()))

    def release(self) -> None:
        with self._lock:
            self._holding = False
            pairs, self._pairs = self._pairs, []
        for down, up in pairs:
            self._pump(down, up)

    def close(self) -> None:
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            try:
                sock.close()
            except OSError:
                pass

    def _connect_upstream(self) -> socket.socket:
        assert self.target is not None, "Relay.target is not set"
        up = socket.create_connection(self.target, timeout=5, source_address=(self.ip, 0))
        up.settimeout(None)
        self._sockets.append(up)
        return up

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(down)
            with self._lock:
                if self._holding:
                    self._held.append(down)
                    continue
            try:
                up = self._connect_upstream()
            except OSError:
                down.close()
                continue
            self._pump(down, up)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        for source, sink in ((a, b), (b, a)):
            threading.Thread(target=self._copy, args=(source, sink), daemon=True).start()

    @staticmethod
    def _copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


# -- a node's peers.sqlite, read-only ----------------------------------------------------------------


def _read(data_dir: Path, query: str) -> list[tuple]:
    path = data_dir / "peers.sqlite"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute(query).fetchall()


def book_rows(node: NodeProcess) -> dict[str, tuple]:
    """address -> (host, port, services, last_seen, last_success, attempts, source)."""
    return {row[0]: row[1:] for row in _read(
        node.data_dir, "SELECT address, host, port, services, last_seen, last_success, attempts, source "
                       "FROM addresses")}


def book_addresses(node: NodeProcess) -> set[str]:
    return set(book_rows(node))


def ban_rows(data_dir: Path) -> dict[str, tuple[int, str]]:
    return {host: (until, reason) for host, until, reason in
            _read(data_dir, "SELECT host, banned_until, reason FROM bans")}


# -- addresses -----------------------------------------------------------------------------------------


def random_subnet() -> str:
    """127.R.S with R, S random in 100..250: addresses for nodes that must listen on port 5050."""
    return f"127.{random.randint(100, 250)}.{random.randint(100, 250)}"


def free_port(ip: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]
