"""The conformance suite's own framing and test peer: raw sockets, json, nothing else.

This module deliberately does not import the project's `protocol` package, so
the suite stays a black-box check of docs/protocol.md that any implementation
(a student's node, a port to another language) can be run against.

Every read has a deadline. A failed expectation raises AssertionError with a
sentence that says what the node did instead ("closed the connection without
an error frame", "sent `ack …` before the pong", "no frame within 2.0 s"), so
the pass/fail table and the JSON report explain themselves.
"""

from __future__ import annotations

import json
import re
import select
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

HEADER = 64  # §2
MAX_PAYLOAD = 4_000_000  # §2.4
MAX_UINT64 = 2**64 - 1  # §1
HEADER_PATTERN = re.compile(rb"([0-9]+) *")  # §2.1, over all 64 bytes
COMMAND_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")  # §3
CHAT_ID_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,64}")  # §4.5

# The commands docs/protocol.md registers (§4), by kind.
REQUESTS = frozenset({"version", "ping", "chat", "getaddr", "getpeerinfo", "getnetworkinfo",
                      "getdata", "mempool", "getheaders", "getblockchaininfo", "getblock", "gettx"})
ANSWERS = frozenset({"verack", "pong", "ack", "error", "goodbye", "peerinfo", "networkinfo",
                     "notfound", "blockchaininfo", "blockinfo", "txinfo"})
GOSSIP = frozenset({"addr", "inv", "headers", "block", "tx"})
SPEC_COMMANDS = REQUESTS | ANSWERS | GOSSIP
# The blockchain role's commands (§4.15-§4.28): a node sends them to node peers on its own.
BLOCKCHAIN_COMMANDS = frozenset({"inv", "getdata", "notfound", "mempool", "getheaders", "headers", "block", "tx",
                                 "getblockchaininfo", "blockchaininfo", "getblock", "blockinfo", "gettx", "txinfo"})

KEEPALIVE = b"0" + b" " * (HEADER - 1)  # §2.5
NODE_NETWORK = 1  # §10.1


def header(content: bytes) -> bytes:
    """Exactly HEADER bytes: `content` padded with spaces (bad headers are built with this too)."""
    assert len(content) <= HEADER, content
    return content + b" " * (HEADER - len(content))


def frame(payload: str | bytes) -> bytes:
    """One frame, header and payload in one bytes object (§2, §2.3)."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return header(str(len(data)).encode("ascii")) + data


def frames(*payloads: str | bytes) -> bytes:
    return b"".join(frame(p) for p in payloads)


def compact(word: str, body: dict[str, Any] | None = None) -> str:
    """`word` or `word {json}` in the sender form of §3 (compact, non-ASCII unescaped)."""
    if not body:
        return word
    return f"{word} {json.dumps(body, separators=(',', ':'), ensure_ascii=False)}"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


@dataclass
class Msg:
    """One frame received from the node, classified as §3 classifies payloads."""

    text: str
    word: str | None  # the spec command, None for anything else
    body: dict[str, Any] | None  # the JSON object; {} for a bare command; None if unparsable
    form_error: str | None = None  # why the payload breaks §3's sender form, if it does
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def parse(cls, text: str) -> Msg:
        word, space, rest = text.partition(" ")
        if word not in SPEC_COMMANDS:
            return cls(text, None, None, None if text else "an empty payload is a keepalive, not a message")
        if not space:
            return cls(text, word, {})
        if rest[:1].isspace() or not rest:
            return cls(text, word, None, "not 'command', or 'command', one space and a JSON object")
        try:
            body = json.loads(rest, parse_constant=_no_constants)
        except (ValueError, RecursionError):
            return cls(text, word, None, "the body is not valid JSON")
        if not isinstance(body, dict):
            return cls(text, word, None, "the body is not a JSON object")
        return cls(text, word, body)

    def get(self, key: str, default: Any = None) -> Any:
        return (self.body or {}).get(key, default)

    def __str__(self) -> str:
        return f"`{short(self.text)}`"


class Closed(AssertionError):
    """The node ended the stream (EOF or reset)."""

    def __init__(self, how: str, partial: int = 0) -> None:
        super().__init__(f"the node {how} the connection")
        self.how = how
        self.partial = partial  # bytes of an unfinished frame that were read


class NoFrame(AssertionError):
    """No complete frame arrived before the deadline."""

    def __init__(self, timeout: float | None = None) -> None:
        super().__init__("no frame arrived in time" if timeout is None else f"no frame within {timeout:g} s")


class NodeFramingViolation(AssertionError):
    """The node itself sent bytes that break §2 (a bad header, oversize, invalid UTF-8)."""


class Peer:
    """One TCP connection to the node under test, speaking raw frames.

    Frames are read with a deadline into `history`. A `ping` the node sends on
    its own (§4.3: a node pings its clients) is answered with the matching
    `pong` and not returned, unless `answer_pings` is False.
    """

    def __init__(self, address: tuple[str, int], *, reply_timeout: float = 2.0, nodelay: bool = True,
                 rcvbuf: int | None = None, name: str = "peer", sock: socket.socket | None = None,
                 source: str | None = None) -> None:
        self.name = name
        self.reply_timeout = reply_timeout
        if sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
            if source is not None:
                sock.bind((source, 0))  # e.g. 127.0.0.9: another "machine" on loopback
            sock.settimeout(5.0)
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
        self.sock = sock
        self.connected_at = time.monotonic()
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local = self.sock.getsockname()[:2]
        self.buffer = bytearray()
        self.eof: str | None = None
        self.history: list[Msg] = []
        self.answer_pings = True
        self.node_pings: list[Msg] = []
        # Frames of the blockchain role (getheaders, inv, … sent to node peers on the node's own
        # initiative) and of commands this suite does not know are set aside instead of returned
        # when this is True; handshake() sets it for node peers.
        self.ignore_unspecified = False
        # A ready peer may be sent other peers' chat at any moment (§7): a check that never
        # expects chat sets this, so a relay from a concurrent check is not taken for its answer.
        self.skip_relayed_chat = False
        self.relayed_chat: list[Msg] = []
        self.unspecified: list[Msg] = []

    # -- sending -------------------------------------------------------------

    @property
    def local_address(self) -> str:
        host, port = self.local
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def send(self, payload: str | bytes) -> None:
        self.send_raw(frame(payload))

    def send_msg(self, word: str, **body: Any) -> None:
        self.send(compact(word, body))

    def send_raw(self, data: bytes, what: str = "a frame") -> None:
        try:
            self.sock.sendall(data)
        except OSError as error:  # the node closed or reset the connection under us
            raise AssertionError(f"the node closed the connection while {self.name} was sending {what} "
                                 f"({error.strerror or error})") from None

    def send_trickle(self, data: bytes, pace: float = 0.0005) -> None:
        """One send() per byte; with TCP_NODELAY each leaves in its own segment.

        The pause between bytes is pacing, not waiting for anything: it makes
        the node's reads really see one byte at a time instead of a refilled buffer.
        """
        for i in range(len(data)):
            self.send_raw(data[i:i + 1], what=f"a frame one byte per segment (byte {i + 1} of {len(data)})")
            if pace:
                time.sleep(pace)

    def try_send(self, data: bytes) -> bool:
        """sendall that reports a closed connection as False instead of raising."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- receiving ------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        """Read more bytes into the buffer; Closed on EOF or reset, NoFrame at the deadline."""
        if self.eof:
            raise Closed(self.eof)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoFrame()
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            raise NoFrame() from None
        except ConnectionResetError:
            self.eof = "reset"
            raise Closed("reset") from None
        except OSError as error:
            self.eof = f"socket error: {error}"
            raise Closed(self.eof) from None
        if not data:
            self.eof = "closed"
            raise Closed("closed")
        self.buffer += data

    def read_frame(self, timeout: float) -> Msg:
        """The next complete frame (keepalives included, as empty text)."""
        deadline = time.monotonic() + timeout
        try:
            while len(self.buffer) < HEADER:
                self._fill(deadline)
            match = HEADER_PATTERN.fullmatch(bytes(self.buffer[:HEADER]))
            if match is None:
                raise NodeFramingViolation(
                    f"the node sent a bad header {bytes(self.buffer[:HEADER]).rstrip()[:24]!r} (§2.1)")
            length = int(match.group(1))
            if length > MAX_PAYLOAD:
                raise NodeFramingViolation(f"the node announced a {length}-byte frame, over MAX_PAYLOAD (§2.4)")
            while len(self.buffer) < HEADER + length:
                self._fill(deadline)
        except Closed as closed:
            closed.partial = len(self.buffer)
            raise
        data = bytes(self.buffer[HEADER:HEADER + length])
        del self.buffer[:HEADER + length]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise NodeFramingViolation(f"the node sent a payload that is not UTF-8: {data[:40]!r} (§2.2)") from None
        msg = Msg.parse(text)
        self.history.append(msg)
        return msg

    def next(self, timeout: float | None = None) -> Msg:
        """The next frame that is not the node's own keepalive ping (answered on the way)."""
        timeout = self.reply_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.read_frame(max(0.0, deadline - time.monotonic()))
            except NoFrame:
                raise NoFrame(timeout) from None
            if msg.word == "ping" and msg.body is not None and "nonce" in msg.body:
                self.node_pings.append(msg)
                if self.answer_pings:
                    self.send(compact("pong", {"nonce": msg.body["nonce"]}))
                    continue
            if self.skip_relayed_chat and msg.word == "chat":
                self.relayed_chat.append(msg)
                continue
            if self.ignore_unspecified and (msg.word in BLOCKCHAIN_COMMANDS or (
                    msg.word is None and COMMAND_PATTERN.fullmatch(msg.text.partition(" ")[0]))):
                self.unspecified.append(msg)
                continue
            return msg

    def poll(self, timeout: float) -> Msg | None:
        """The next frame if one arrives within timeout, else None (Closed propagates)."""
        try:
            return self.next(timeout)
        except NoFrame:
            return None

    def readable(self, timeout: float) -> bool:
        if self.buffer or self.eof:
            return True
        return bool(select.select([self.sock], [], [], max(0.0, timeout))[0])


# -- expectations: each fails with a sentence ---------------------------------------------


def describe_silence(peer: Peer, waited: float) -> str:
    return f"no frame within {waited:g} s (the connection stayed open)"


def expect(peer: Peer, word: str, timeout: float | None = None, why: str = "") -> Msg:
    """The very next frame must be `word`; returns it."""
    timeout = peer.reply_timeout if timeout is None else timeout
    suffix = f" {why}" if why else ""
    try:
        msg = peer.next(timeout)
    except Closed as closed:
        raise AssertionError(f"expected `{word}`{suffix}, but the node {closed.how} the connection"
                             + (" without sending it" if word != "error" else " without an error frame")
                             + (f" ({closed.partial} bytes of an unfinished frame)" if closed.partial else "")
                             ) from None
    except NoFrame:
        extra = ""
        if word == "error":
            extra = "; " + probe(peer)
        raise AssertionError(f"expected `{word}`{suffix}: {describe_silence(peer, timeout)}{extra}") from None
    if msg.word != word:
        raise AssertionError(f"expected `{word}`{suffix}, got {msg}")
    if msg.body is None:
        raise AssertionError(f"the node's {msg} breaks the sender form of §3: {msg.form_error}")
    return msg


def probe(peer: Peer) -> str:
    """After silence: does the connection still answer a ping? Says which, for the failure text."""
    nonce = 777000777
    if not peer.try_send(frame(compact("ping", {"nonce": nonce}))):
        return "the connection is gone"
    try:
        msg = peer.next(min(1.0, peer.reply_timeout))
    except Closed as closed:
        return f"a probe ping then found the connection {closed.how}"
    except NoFrame:
        return "a probe ping got no answer either (the handler died or is stuck reading)"
    return f"a probe ping was answered with {msg}"


NOT_GIVEN = object()


def expect_error(peer: Peer, *, contains: str | None = None, exact: str | None = None,
                 startswith: str | None = None, command: Any = NOT_GIVEN,
                 timeout: float | None = None, why: str = "") -> Msg:
    """The very next frame must be an `error` with this reason and `command` (None: absent)."""
    msg = expect(peer, "error", timeout, why)
    reason = msg.get("reason")
    if not isinstance(reason, str):
        raise AssertionError(f"the error {msg} has no string `reason` (§4.7)")
    if exact is not None and reason != exact:
        raise AssertionError(f"error reason must be exactly {exact!r} (§4.7), got {reason!r}")
    if startswith is not None and not reason.startswith(startswith):
        raise AssertionError(f"error reason must start with {startswith!r} (§4.7), got {reason!r}")
    if contains is not None and contains not in reason:
        raise AssertionError(f"error reason must contain {contains!r} (§4.7), got {reason!r}")
    if command is not NOT_GIVEN:
        actual = msg.get("command")
        if command is None and "command" in (msg.body or {}):
            raise AssertionError(f"this error must have no `command` field (§4.7), got {msg}")
        if command is not None and actual != command:
            raise AssertionError(f"error `command` must be {command!r} (§4.7), got {msg}")
    return msg


def expect_closed(peer: Peer, timeout: float | None = None, why: str = "") -> str:
    """The next thing on the stream must be its end: no further frame. Returns 'closed'/'reset'."""
    timeout = peer.reply_timeout if timeout is None else timeout
    suffix = f" {why}" if why else ""
    try:
        msg = peer.next(timeout)
    except Closed as closed:
        return closed.how
    except NoFrame:
        raise AssertionError(f"the node kept the connection open{suffix} ({timeout:g} s)") from None
    raise AssertionError(f"the node sent {msg}{suffix} instead of closing")


def expect_error_then_close(peer: Peer, **kwargs: Any) -> Msg:
    error = expect_error(peer, **kwargs)
    expect_closed(peer, why="after the error")
    return error


_sync_counter = iter(range(10_000_000, 10**12))


def sync(peer: Peer, why: str = "", timeout: float | None = None) -> None:
    """Like Bitcoin's sync_with_ping: the next frame back must be the matching pong.

    Because answers go out in order (§6.1), anything the node said in answer to
    an earlier frame would arrive before this pong, so this proves "nothing was
    answered" without waiting for a timeout.
    """
    nonce = next(_sync_counter)
    if not peer.try_send(frame(compact("ping", {"nonce": nonce}))):
        raise AssertionError(f"the node closed the connection{' ' + why if why else ''}")
    msg = expect(peer, "pong", timeout, why=why or "for a sync ping")
    if msg.get("nonce") != nonce:
        raise AssertionError(f"the sync ping's pong must echo nonce {nonce} (§4.3), got {msg}")


def sync_collect(peer: Peer, timeout: float | None = None) -> list[Msg]:
    """Frames that arrive before the matching pong of a sync ping (e.g. relayed chat)."""
    nonce = next(_sync_counter)
    peer.send(compact("ping", {"nonce": nonce}))
    got: list[Msg] = []
    deadline = time.monotonic() + (peer.reply_timeout if timeout is None else timeout)
    while True:
        try:
            msg = peer.next(max(0.0, deadline - time.monotonic()))
        except Closed as closed:
            raise AssertionError(f"the node {closed.how} the connection before the sync pong") from None
        except NoFrame:
            raise AssertionError(f"no pong for a sync ping within the deadline; got {[str(m) for m in got]}") from None
        if msg.word == "pong" and msg.get("nonce") == nonce:
            return got
        got.append(msg)


def handshake(peer: Peer, **fields: Any) -> Msg:
    """Send a version (fields as given; services 0, a client) and expect version then verack (§5.1)."""
    body = {"version": 1, "user_agent": "/conformance:1/", "services": 0}
    body.update(fields)
    if body["services"] & NODE_NETWORK:
        peer.ignore_unspecified = True  # a node peer is also sent other roles' traffic (§10.1)
    peer.send(compact("version", body))
    theirs = expect(peer, "version", why="in answer to our version (§5.1)")
    expect(peer, "verack", why="right after the node's version (§5.1)")
    return theirs


class Listener:
    """A listening socket of the suite's own, for a node that dials us (--connect)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"

    def accept(self, reply_timeout: float, timeout: float = 10.0) -> Peer:
        self.sock.settimeout(timeout)
        try:
            conn, _ = self.sock.accept()
        except TimeoutError:
            raise AssertionError(f"the node did not dial {self.address} within {timeout:g} s") from None
        return Peer(("127.0.0.1", self.port), reply_timeout=reply_timeout, sock=conn, name="dialled")

    def close(self) -> None:
        self.sock.close()


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll condition until truthy; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(interval)


def chat_ids(msgs: Iterable[Msg]) -> list[str]:
    return [m.get("id") for m in msgs if m.word == "chat"]
