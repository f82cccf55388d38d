"""epscoin node: the lecture's socket server, made real.

    python node.py [--host 127.0.0.1] [--port 5050] [--roles chat] [--connect HOST:PORT ...]

As in the lecture, the node listens on PORT and starts one thread per peer
(socketserver's ThreadingMixIn does the accept loop). Each thread runs
`handle_myPeer`: read a frame, turn it into a message, hand the message to the
roles. Outbound connections (--connect) run the very same handler loop.
A housekeeping thread enforces the timeouts and calls every role's tick().
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import ipaddress
import logging
import secrets
import enum
import signal
import socket
import socketserver
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from protocol.addresses import Scope, format_address, parse_host_port, scope_of
from protocol.framing import DISCONNECT_MESSAGE, PORT, FrameError, encode_frame
from protocol.messages import (MESSAGE_TYPES, Chat, Error, Goodbye, Message, MessageError, Version,
                               decode_message)
from protocol.messages.handshake import NODE_NETWORK
from roles.registry import FULL_NODE_ROLES, ROLE_TYPES, CoreRole, Role
from roles.base import Handler
from roles.console import OneLineErrorParser, configure_logging
from roles.demo_network import FIRST_HOST as FIRST_DEMO_HOST
from roles.demo_network import run_demo
from roles.dns_seed import seed_listen_address
from roles.peer import MAX_SEND_BUFFER, Direction, Peer, SendFlusher
from roles.seen import SeenFilter
from protocol.networks import NETWORKS, Network
from roles.blockchain import BlockchainConfig
from roles.mining import MiningConfig
from roles.routing import RoutingConfig

__version__ = "0.1.0"

log = logging.getLogger("epscoin.node")

FLOODED_COPIES = 5_000  # flooded payloads handled, remembered so that later copies are dropped undecoded
LISTEN_BACKLOG = 4096  # the default of 5 (or 128) turns 1,000 quick connects into seconds of SYN retries
DIAL_TIMEOUT = 5.0  # seconds to wait for an outbound TCP connect
MAX_DIAL_BACKOFF = 60.0  # seconds between retries of a failing --connect
STABLE_CONNECTION = 30.0  # seconds a connection must last before a redial is quick again (no tight loops)
STOP_FLUSH_TIME = 1.0  # seconds given to goodbye frames before sockets close at shutdown
# Commands a peer may send before its version: a person types `ping` or chat before anything
# else, and a node that refuses us ("node full") says why with error or goodbye.
ALLOWED_BEFORE_VERSION = frozenset({"version", "ping", "chat", "error", "goodbye"})
DEFAULT_DATA_DIR = Path.home() / ".epscoin"


@dataclass
class NodeConfig:
    host: str = "127.0.0.1"
    port: int = PORT
    data_dir: Path = DEFAULT_DATA_DIR
    roles: tuple[str, ...] = FULL_NODE_ROLES
    connect: tuple[tuple[str, int], ...] = ()
    max_inbound: int = 125  # Bitcoin's default of 125 connections
    handshake_timeout: float = 60.0  # Bitcoin: 60 s for the version to arrive
    frame_timeout: float = 60.0  # a frame begun must be finished within this (either direction)
    max_send_buffer: int = MAX_SEND_BUFFER
    user_agent: str = f"/epscoin:{__version__}/"
    network: str = "main"
    # A role's settings live here under the role's name.
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    blockchain: BlockchainConfig = field(default_factory=BlockchainConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)


class ConfigError(Exception):
    """The options given cannot work together; the message says why, for a person."""


class DataDirError(Exception):
    """The data directory cannot be used; the message says why, for a person."""


class DataDir:
    """The node's directory on disk, locked so two nodes never share one (as Bitcoin's .lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._lock_file: IO[str] = open(path / ".lock", "a")
        except OSError as error:
            raise DataDirError(f"cannot use data directory {path}: {error.strerror}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise DataDirError(f"data directory {path} is in use by another node "
                               f"(give this one its own --data-dir)") from None

    def close(self) -> None:
        self._lock_file.close()  # closing releases the flock


class DialResult(enum.Enum):
    FAILED = "failed"  # no TCP connection
    CONNECTED = "connected"  # connected, and the connection has now ended
    SELF = "self"  # the address leads back to this node


class PeerHandler(socketserver.BaseRequestHandler):
    """One thread per peer, inbound and outbound alike: the lecture's handle_myPeer."""

    direction = Direction.INBOUND
    server: "Node"

    def setup(self) -> None:
        # One frame is one send, but several frames in a row (version, verack)
        # would still wait for ACKs under Nagle's algorithm.
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # already reset by the peer; the first read will say so
        self.peer = Peer(self.request, self.client_address, self.direction, self.server.flusher,
                         self.server.config.max_send_buffer)
        self.server.add_peer(self.peer)

    def handle(self) -> None:
        self.handle_myPeer()

    def handle_myPeer(self) -> None:  # noqa: N802  (named as in the lecture)
        peer = self.peer
        connected = True
        while connected:
            try:
                msg = peer.reader.read_frame()
            except FrameError as error:
                if not peer.closing:
                    self.server.disconnect(peer, error.reason)
                break
            except OSError as error:
                peer.close(f"connection lost: {error.strerror or error}")
                break
            if msg is None:  # the peer closed the connection
                break
            connected = self.server.process(peer, msg)

    def finish(self) -> None:
        self.server.remove_peer(self.peer)
        self.peer.reader.stream.close()


class OutboundPeerHandler(PeerHandler):
    direction = Direction.OUTBOUND


class Node(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A listening node: accepts peers, dials --connect targets, runs the roles."""

    allow_reuse_address = True
    daemon_threads = True  # a stuck peer thread can never keep the process alive
    block_on_close = False  # stop() joins the peer threads itself, with a deadline
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, config: NodeConfig, stop_requested: threading.Event | None = None) -> None:
        self.config = config
        self.stop_requested = stop_requested or threading.Event()  # main() stops the node when it is set
        self.failure: str | None = None  # why the node stopped itself (fail()), if it did
        self.nonce = secrets.randbits(64) | 1  # never 0, the nonce of a bare `version`
        self.flusher = SendFlusher()
        self.network: Network = NETWORKS[config.network]
        self.data_dir = DataDir(config.data_dir)
        # As Bitcoin's testnet3/ and regtest/: each network but main keeps its files apart.
        self.data_path = config.data_dir if config.network == "main" else config.data_dir / config.network
        try:
            self.data_path.mkdir(exist_ok=True)
        except OSError as error:
            self.data_dir.close()
            raise DataDirError(f"cannot use data directory {self.data_path}: {error.strerror}") from None
        self._peers_lock = threading.Lock()  # guards _peers and _inbound_count
        self._peers: dict[Peer, threading.Thread] = {}
        self._inbound_count = 0
        self._self_dials: set[tuple[str, int]] = set()  # local ends of connections that reached ourselves
        self._dialled_nodes: dict[tuple[str, int], int] = {}  # dialled address -> the nonce of the node there
        self._stopping = threading.Event()
        self._started = False
        self._service_threads: list[threading.Thread] = []
        self.address_family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        try:
            super().__init__((config.host, config.port), PeerHandler)  # bind and listen
        except OSError:
            self.data_dir.close()
            raise
        try:
            self.roles: list[Role] = [CoreRole(self)] + [
                ROLE_TYPES[name](self, getattr(config, name, None)) for name in config.roles]
        except sqlite3.Error as error:
            self.server_close()
            self.data_dir.close()
            raise DataDirError(f"cannot open the databases in {config.data_dir}: {error}") from None
        except ValueError as error:  # a role's settings do not make sense (e.g. a bad --mine-to)
            self.server_close()
            self.data_dir.close()
            raise ConfigError(str(error)) from None
        missing = [f"the {role.name} role needs the {needed} role" for role in self.roles
                   for needed in role.requires if self.role(needed) is None]
        if missing:
            self.server_close()
            self.data_dir.close()
            raise ConfigError("; ".join(missing) + " (add it to --roles)")
        self.services = 0
        for role in self.roles:
            self.services |= role.services
        self._handlers: dict[str, list[Handler]] = {}
        for role in self.roles:
            for command, handler in role.handlers().items():
                self._handlers.setdefault(command, []).append(handler)
        self._flooded_commands = frozenset(command for command in self._handlers
                                           if command in MESSAGE_TYPES and MESSAGE_TYPES[command].flooded)
        self._handled_floods = SeenFilter(FLOODED_COPIES)  # digests of flooded payloads from node peers

    # -- life cycle -------------------------------------------------------

    @property
    def address(self) -> str:
        return format_address(*self.listen_address)

    @property
    def listen_address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return host, port

    @property
    def source_address(self) -> tuple[str, int] | None:
        """Where outbound connections leave from: the listening IP, so peers see this node's own address."""
        host = self.listen_address[0]
        try:
            if ipaddress.ip_address(host).is_unspecified:
                return None
        except ValueError:
            return None
        return host, 0

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        """Start accepting, housekeeping and dialling, each on its own thread."""
        log.info("[STARTING] Node starting... (roles: %s)", ", ".join(r.name for r in self.roles))
        self.flusher.start()
        for role in self.roles:
            role.start()
        self._started = True  # only now: stop() must not wait for a serve_forever that never ran
        self._spawn(self.serve_forever, "accept", 0.1)
        self._spawn(self._housekeeping, "housekeeping")
        for host, port in self.config.connect:
            self._spawn(self._dial_forever, f"dial-{format_address(host, port)}", host, port)
        log.info("[LISTENING] Node is listening on %s", self.address)

    def stop(self) -> None:
        """Stop accepting, say goodbye to every peer, and join all threads."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("[STOPPING] Node shutting down...")
        if self._started:
            self.shutdown()  # waits for serve_forever to return
        self.server_close()
        with self._peers_lock:  # now: a closed peer leaves _peers before its on_disconnect hook has run
            peers, threads = list(self._peers), list(self._peers.values())
        for peer in peers:
            peer.send(Goodbye("node shutting down"))
        deadline = time.monotonic() + STOP_FLUSH_TIME
        while any(p.pending_send_bytes() for p in peers) and time.monotonic() < deadline:
            time.sleep(0.01)  # bounded wait for goodbyes to leave; polling is fine at shutdown
        for peer in peers:
            peer.close("node shutting down")
        deadline = time.monotonic() + 2.0
        for thread in threads + self._service_threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.flusher.stop()
        for role in reversed(self.roles):  # a role stops before the roles it builds on (mining, then blockchain)
            try:
                role.stop()
            except sqlite3.OperationalError as error:  # e.g. the disk is full: what was committed stays
                log.warning("[STOPPING] %s could not write its last changes: %s", role.name, error)
            except Exception:
                log.exception("[BUG] %s.stop", role.name)
        self.data_dir.close()
        log.info("[STOPPED] Node stopped.")

    def fail(self, reason: str) -> None:
        """A fault the node cannot work around (its disk is full, or read-only): say so once, and stop.

        As Bitcoin Core's AbortNode: carrying on would refuse every block and address with an
        "internal error" while looking alive. main() then stops the node and exits 1.
        """
        if self.failure is None:
            self.failure = reason
            log.error("[FATAL] %s; stopping the node", reason)
        self.stop_requested.set()

    def storage_failed(self, error: sqlite3.OperationalError) -> None:
        self.fail(f"cannot write to {self.config.data_dir}: {error}")

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._service_threads.append(thread)
        thread.start()

    # -- accepting and dialling --------------------------------------------

    def verify_request(self, request: socket.socket, client_address) -> bool:
        """Runs on the accept thread: refuse a peer (banned, or beyond --max-inbound) without a thread."""
        host = client_address[0]
        refusal = next(filter(None, (role.refuses_inbound(host) for role in self.roles)), None)
        if refusal is None:
            with self._peers_lock:
                if self._inbound_count >= self.config.max_inbound:
                    refusal = "node full"
                else:
                    self._inbound_count += 1
        if refusal is not None:
            log.warning("[REFUSED] %s: %s", format_address(*client_address[:2]), refusal)
            try:
                request.send(encode_frame(Error(refusal).encode()), socket.MSG_DONTWAIT)
            except OSError:
                pass
        return refusal is None

    def handle_error(self, request, client_address) -> None:
        """socketserver prints a traceback to stderr here; a bug belongs in the log instead."""
        log.exception("[BUG] handler for %s", format_address(*client_address[:2]))

    def process_request(self, request, client_address) -> None:
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread could be started: give the slot back
            with self._peers_lock:
                self._inbound_count -= 1
            self.shutdown_request(request)

    def open_outbound(self, host: str, port: int, quiet: bool = True) -> DialResult:
        """Dial host:port and run the connection's handler loop on this thread until it ends."""
        target = format_address(host, port)
        try:
            sock = socket.create_connection((host, port), timeout=DIAL_TIMEOUT, source_address=self.source_address)
        except OSError as error:
            (log.debug if quiet else log.warning)("[CONNECT] %s failed: %s", target, error.strerror or error)
            return DialResult.FAILED
        with sock:
            sock.settimeout(None)
            try:
                local_end, remote_end = sock.getsockname()[:2], sock.getpeername()[:2]
            except OSError:  # reset already
                return DialResult.FAILED
            log.info("[CONNECT] connected to %s", target)
            handler = OutboundPeerHandler(sock, remote_end, self)
        if handler.peer.version is not None:
            with self._peers_lock:
                self._dialled_nodes[(host, port)] = handler.peer.version.nonce
        if local_end in self._self_dials:
            log.warning("[CONNECT] %s is this node itself; not dialling it again", target)
            return DialResult.SELF
        return DialResult.CONNECTED

    def connected_to_node_at(self, host: str, port: int, direction: Direction | None = None) -> bool:
        """Whether the node last met at this dialled address is connected now (in that direction, or either).

        After crossing dials are collapsed (or a second address of a node is dropped),
        the losing dialler must not dial again while the surviving connection stands.
        """
        with self._peers_lock:
            nonce = self._dialled_nodes.get((host, port))
            return nonce is not None and any(
                peer.version is not None and peer.version.nonce == nonce and not peer.closing
                and direction in (None, peer.direction) for peer in self._peers)

    def _dial_forever(self, host: str, port: int) -> None:
        """Keep one --connect connection to host:port, retrying with backoff."""
        backoff = 1.0
        while not self._stopping.is_set():
            if self.connected_to_node_at(host, port):
                if self._stopping.wait(1.0):  # connected the other way: check again in a second
                    return
                continue
            started = time.monotonic()
            result = self.open_outbound(host, port, quiet=False)
            if result is DialResult.SELF:
                return
            if result is DialResult.CONNECTED and time.monotonic() - started > STABLE_CONNECTION:
                backoff = 1.0  # it worked for a while: a quick retry is fair
            else:
                log.warning("[CONNECT] retrying %s in %.0f s", format_address(host, port), backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_DIAL_BACKOFF)

    # -- peers ---------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        with self._peers_lock:
            self._peers[peer] = threading.current_thread()
            count = len(self._peers)
        threading.current_thread().name = f"peer-{peer.address}"
        log.info("[NEW CONNECTION] %s connected (%s).", peer.address, peer.direction.value)
        log.info("[ACTIVE CONNECTIONS] %d", count)
        self._run_hook("on_connect", peer)

    def remove_peer(self, peer: Peer) -> None:
        with self._peers_lock:
            self._peers.pop(peer, None)
            if peer.direction is Direction.INBOUND:
                self._inbound_count -= 1
            count = len(self._peers)
        peer.close(peer.close_reason or "peer closed the connection")
        log.info("[DISCONNECTED] %s: %s", peer.address, peer.close_reason)
        log.info("[ACTIVE CONNECTIONS] %d", count)
        self._run_hook("on_disconnect", peer)

    def peers(self) -> list[Peer]:
        with self._peers_lock:
            return list(self._peers)

    def ready_peers(self) -> list[Peer]:
        return [peer for peer in self.peers() if peer.ready and not peer.closing]

    def broadcast(self, message: Message, exclude: Peer | None = None) -> int:
        """Send message to every ready peer but `exclude`; the frame is encoded once."""
        frame = encode_frame(message.encode())
        targets = [peer for peer in self.ready_peers() if peer is not exclude]
        for peer in targets:
            peer.send_frame(frame)
        return len(targets)

    def mark_ready(self, peer: Peer) -> None:
        version = peer.version
        log.info("[HANDSHAKE] %s is ready (%s, height %d)", peer.address,
                 version.user_agent or "no user agent", version.height)
        self._run_hook("on_ready", peer)

    def role(self, name: str) -> Role | None:
        """The running role of that name, for roles that build on another (mining on blockchain)."""
        return next((role for role in self.roles if role.name == name), None)

    def emit(self, event: str, *args: object) -> None:
        """Tell every role of an event (a hook such as on_new_tip)."""
        for role in self.roles:
            try:
                getattr(role, event)(*args)
            except Exception:
                log.exception("[BUG] %s.%s", role.name, event)

    def misbehaving(self, peer: Peer, points: int, reason: str) -> None:
        """The peer broke a rule: every role hears of it (the routing role scores and bans)."""
        for role in self.roles:
            try:
                role.on_misbehaving(peer, points, reason)
            except Exception:
                log.exception("[BUG] %s.on_misbehaving", role.name)

    def disconnect_self_connection(self, peer: Peer) -> None:
        """This inbound peer is our own outbound connection: drop it, and stop that dialler."""
        self._self_dials.add((peer.host, peer.port))  # the remote end is our dialler's local end
        self.disconnect(peer, "connected to self (the version carries this node's own nonce)")

    def disconnect(self, peer: Peer, reason: str, tell_peer: bool = True) -> None:
        """Close a peer, first telling it why with an error frame."""
        if tell_peer:
            peer.send(Error(reason))
        peer.close(reason)

    def version_message(self) -> Version:
        host, port = self.server_address[:2]
        height = max((h for role in self.roles if (h := role.height()) is not None), default=0)
        return Version(nonce=self.nonce, services=self.services, user_agent=self.config.user_agent, height=height,
                       addr_from=format_address(host, port), time=int(time.time()),
                       network=self.network.name, genesis=self.network.genesis_id)

    # -- the handler loop's one step ------------------------------------------

    def process(self, peer: Peer, msg: str) -> bool:
        """Handle one payload from peer; False when the connection should end."""
        if not msg:
            return True  # length 0: a keepalive, nothing to answer
        if msg == DISCONNECT_MESSAGE:
            peer.send(Goodbye("you sent !exit"))
            peer.close("peer sent !exit")
            return False
        flood_key = self._flood_key(peer, msg)
        if flood_key is not None and flood_key in self._handled_floods:
            log.debug("[FLOOD COPY] %s sent a copy of a flood already handled: dropped undecoded", peer.address)
            return True
        try:
            message = decode_message(msg)
            if message is None:
                message = Chat.typed(msg, sender=peer.address)
        except MessageError as error:
            command = msg.partition(" ")[0]
            message_type = MESSAGE_TYPES.get(command)
            if message_type is not None and message_type.is_answer:
                # Never answer an answer, even a malformed one: two nodes could bounce errors forever.
                log.warning("[BAD ANSWER] %s sent a malformed %s: %s", peer.address, command, error)
            else:
                peer.send(Error(str(error), about=command if message_type else "chat"))
            if error.penalty:
                self.misbehaving(peer, error.penalty, str(error))
            return not peer.closing
        self.dispatch(peer, message)
        if flood_key is not None:
            self._handled_floods.add(flood_key)
        return not peer.closing

    def _flood_key(self, peer: Peer, msg: str) -> bytes | None:
        """What identifies a node peer's copy of a flooded message (a digest of its bytes), else None.

        A flood brings one copy per link, byte for byte the same. Decoding all but the first,
        only for the role's own filter to drop them, was a node's largest cost in a flood. A
        payload is remembered once it has been handled (process), so no copy is dropped before
        one was. Only a ready node peer's copies are skipped: a person's client gets its ack
        every time. A copy encoded differently (another implementation) is decoded, and the
        chat role's id filter drops it. A digest, not the payload, keeps the memory small:
        5,000 lines of 1,000 characters could hold 20 MB.
        """
        if not (peer.ready and peer.version.services & NODE_NETWORK):
            return None
        if msg.partition(" ")[0] not in self._flooded_commands:
            return None
        return hashlib.blake2b(msg.encode(), digest_size=16).digest()

    def dispatch(self, peer: Peer, message: Message) -> None:
        """Hand a message to every role that handles its command."""
        command = message.command
        if not peer.ready and command not in ALLOWED_BEFORE_VERSION:
            peer.send(Error("send version first", about=command))
            return
        handlers = self._handlers.get(command)
        if not handlers:
            if not message.is_answer:
                peer.send(Error(f"command '{command}' is not served by this node", about=command))
            return
        for handler in handlers:
            try:
                handler(peer, message)
            except sqlite3.OperationalError as error:  # the disk is full, read-only or failing
                self.storage_failed(error)
                return
            except Exception:  # a bug in a role must not take the peer's thread down silently
                log.exception("[BUG] handling %s from %s", command, peer.address)
                peer.send(Error("internal error", about=command))

    def _run_hook(self, hook: str, peer: Peer) -> None:
        for role in self.roles:
            try:
                getattr(role, hook)(peer)
            except sqlite3.OperationalError as error:
                self.storage_failed(error)
            except Exception:
                log.exception("[BUG] %s.%s(%s)", role.name, hook, peer.address)

    # -- housekeeping ------------------------------------------------------------

    def _housekeeping(self) -> None:
        """About once a second (faster with short test timeouts): timeouts, then role ticks."""
        interval = max(0.02, min(1.0, self.config.handshake_timeout / 4, self.config.frame_timeout / 4))
        while not self._stopping.wait(interval):
            now = time.monotonic()
            for peer in self.peers():
                self._enforce_timeouts(peer, now)
            for role in self.roles:
                try:
                    role.tick(now)
                except sqlite3.OperationalError as error:
                    self.storage_failed(error)
                except Exception:
                    log.exception("[BUG] %s.tick", role.name)

    def _enforce_timeouts(self, peer: Peer, now: float) -> None:
        config = self.config
        if peer.closing:
            return
        if not peer.ready and now - peer.connected_monotonic > config.handshake_timeout:
            self.disconnect(peer, f"handshake timeout: no version within {config.handshake_timeout:g} s")
        elif peer.reader.started_at is not None and now - peer.reader.started_at > config.frame_timeout:
            self.disconnect(peer, f"frame timeout: a frame was not finished within {config.frame_timeout:g} s")
        elif peer.send_stalled_for(now) > config.frame_timeout:
            self.disconnect(peer, f"send timeout: peer took no data for {config.frame_timeout:g} s",
                            tell_peer=False)


# -- the command line -------------------------------------------------------------

def parse_roles(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ROLE_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown role {', '.join(unknown)} (known: {', '.join(sorted(ROLE_TYPES))})")
    return names


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


MAX_BAN_TIME = 100 * 365 * 86400  # seconds: "for ever" to a node, within SQLite's and gmtime's range


def ban_seconds(text: str) -> float:
    value = positive_seconds(text)
    if value > MAX_BAN_TIME:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_BAN_TIME} seconds (100 years)")
    return value


def host_port_argument(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def ip_argument(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def dns_server_argument(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text, default_port=53)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def dns_listen_argument(text: str) -> tuple[str, int]:
    try:
        return seed_listen_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="node.py", description="Run an epscoin node.")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; with --demo, the first "
                                       "node's address, default 127.0.0.2)")
    parser.add_argument("--port", type=int, default=PORT, help=f"port to listen on; 0 picks a free one (default {PORT})")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="where the node keeps its data (default ~/.epscoin)")
    parser.add_argument("--roles", type=parse_roles, default=FULL_NODE_ROLES,
                        help=f"comma-separated roles (default: {','.join(FULL_NODE_ROLES)}; "
                             f"known: {','.join(sorted(ROLE_TYPES))})")
    parser.add_argument("--connect", type=host_port_argument, action="append", default=[], metavar="HOST:PORT",
                        help="keep a connection to this peer (repeatable)")
    parser.add_argument("--max-inbound", type=int, default=125, help="most inbound peers at once (default 125)")
    parser.add_argument("--handshake-timeout", type=positive_seconds, default=60.0, metavar="SECONDS",
                        help="drop a peer whose version has not arrived by then (default 60)")
    parser.add_argument("--frame-timeout", type=positive_seconds, default=60.0, metavar="SECONDS",
                        help="drop a peer that starts a frame and does not finish it (default 60)")
    routing = parser.add_argument_group("routing and discovery")
    routing.add_argument("--outbound", type=int, default=8, help="outbound connections to keep (default 8)")
    routing.add_argument("--dns-seed", action="append", default=[], metavar="NAME",
                         help="a DNS name whose A/AAAA records are nodes to try first (repeatable)")
    routing.add_argument("--dns-server", type=dns_server_argument, metavar="IP[:PORT]",
                         help="ask this DNS server (port 53 unless given) instead of the system's resolver")
    routing.add_argument("--external", type=ip_argument, metavar="IP",
                         help="the address to announce to peers, when it is not the one listened on "
                              "(e.g. listening on 0.0.0.0)")
    routing.add_argument("--seed", type=host_port_argument, action="append", default=[], metavar="HOST[:PORT]",
                         help="a fallback address, used when DNS gives nothing (repeatable)")
    routing.add_argument("--no-fixed-seeds", dest="fixed_seeds", action="store_false",
                         help="do not fall back to the built-in seed list")
    routing.add_argument("--serve-dns", type=dns_listen_argument, metavar="IP:PORT",
                         help="serve as a DNS seed on this UDP address")
    routing.add_argument("--dns-zone", default="seed.epscoin.local", metavar="NAME",
                         help="the name the DNS seed answers for (default seed.epscoin.local)")
    routing.add_argument("--ping-interval", type=positive_seconds, default=120.0, metavar="SECONDS",
                         help="ping each peer this often (default 120)")
    routing.add_argument("--ping-timeout", type=positive_seconds, default=1200.0, metavar="SECONDS",
                         help="drop a peer that answers no ping for this long (default 1200)")
    routing.add_argument("--ban-time", type=ban_seconds, default=86400.0, metavar="SECONDS",
                         help="how long a misbehaving peer's IP stays banned (default 86400)")
    routing.add_argument("--whitelist", action="append", default=[], metavar="HOST",
                         help="never ban this IP (repeatable)")
    routing.add_argument("--announce-interval", type=positive_seconds, default=86400.0, metavar="SECONDS",
                         help="re-announce this node's address to its peers this often (default 86400)")
    parser.add_argument("--network", choices=sorted(NETWORKS), default="main",
                        help="the chain to follow: main (default), demo (fast blocks) or regtest (for tests)")
    chain = parser.add_argument_group("blockchain")
    chain.add_argument("--block-stall-timeout", type=positive_seconds, default=10.0, metavar="SECONDS",
                       help="move a block request to another peer after this long (default 10)")
    mining = parser.add_argument_group("mining (with --roles ...,mining)")
    mining.add_argument("--mine-to", metavar="ADDRESS", help="the address block rewards are paid to")
    mining.add_argument("--mining-workers", type=int, default=1, metavar="N",
                        help="worker processes searching for nonces (default 1)")
    parser.add_argument("--demo", nargs="?", type=int, const=5, metavar="N",
                        help="run a local demo network of N nodes (default 5) on 127.0.0.2, 127.0.0.3, ... "
                             "port 5050, bootstrapped from a DNS seed; data under DATA_DIR/demo")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--no-colour", "--no-color", dest="colour", action="store_false",
                        help="plain console output (also when stdout is not a terminal)")
    return parser


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    routing = RoutingConfig(
        outbound=args.outbound, connect_only=bool(args.connect), dns_seeds=tuple(args.dns_seed),
        dns_server=args.dns_server, seeds=tuple(args.seed), fixed_seeds=args.fixed_seeds,
        serve_dns=args.serve_dns, dns_zone=args.dns_zone, ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout, ban_time=args.ban_time, whitelist=frozenset(args.whitelist),
        announce_interval=args.announce_interval, default_port=PORT, external=args.external)
    return NodeConfig(host=args.host, port=args.port, data_dir=args.data_dir, roles=args.roles,
                      connect=tuple(args.connect), max_inbound=args.max_inbound,
                      handshake_timeout=args.handshake_timeout, frame_timeout=args.frame_timeout,
                      network=args.network, routing=routing,
                      blockchain=BlockchainConfig(stall_timeout=args.block_stall_timeout),
                      mining=MiningConfig(address=args.mine_to, workers=args.mining_workers))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535 or args.max_inbound < 0 or args.outbound < 0:
        print("error: --port must be 0..65535, --max-inbound and --outbound at least 0", file=sys.stderr)
        return 2
    colour = args.colour and sys.stdout.isatty()
    if args.demo is not None:
        if not 1 <= args.demo <= 250:
            print("error: --demo takes 1 to 250 nodes", file=sys.stderr)
            return 2
        first = args.host or FIRST_DEMO_HOST
        if scope_of(first) is not Scope.LOOPBACK or ipaddress.ip_address(first).version != 4:
            print("error: the demo runs on IPv4 loopback addresses (127.x.y.z)", file=sys.stderr)
            return 2
        return run_demo(args.demo, args.data_dir / "demo", colour, first, mine_to=args.mine_to)
    args.host = args.host or "127.0.0.1"
    configure_logging(args.log_level, colour=colour)
    # Before the socket listens: from then on a signal means a clean stop, never a kill.
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    try:
        node = Node(config_from_args(args), stop_requested)
    except DataDirError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot listen on {format_address(args.host, args.port)}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    try:
        node.start()
    except OSError as error:  # e.g. the --serve-dns address is taken
        print(f"error: cannot start: {error.strerror or error}", file=sys.stderr)
        node.stop()
        return 1
    except sqlite3.OperationalError as error:  # e.g. the disk is full: blocks waiting on disk cannot be connected
        print(f"error: cannot start: {error} (in {args.data_dir})", file=sys.stderr)
        node.stop()
        return 1
    stop_requested.wait()
    node.stop()
    return 1 if node.failure else 0


if __name__ == "__main__":
    sys.exit(main())
