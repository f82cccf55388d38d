"""epscoin chat REPL: the lecture's client, made real.

    python peer_client.py [HOST[:PORT]]                 # interactive, the lecture's Msg>> prompt
    python peer_client.py HOST --send ping --send hi    # scripted: print the replies, then exit
    echo hello | python peer_client.py HOST             # lines from a pipe work the same way

As in the lecture, the client connects, sends `version`, then sends whatever
is typed. Unlike the lecture's client, it does not block on recv(2048) after
each line: a reader thread prints every frame as it arrives (relayed chat
included), above the line being typed. Lines starting with `/` are local
commands; everything else goes to the node as typed, so `ping` works by hand.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import colorama

from protocol.addresses import format_address, parse_host_port
from protocol.framing import DISCONNECT_MESSAGE, FrameError, FrameReader, encode_frame
from protocol.messages import (
    Ack,
    Addr,
    BlockchainInfo,
    BlockInfo,
    Chat,
    Error,
    Goodbye,
    Inv,
    Message,
    NetworkInfo,
    PeerInfo,
    Ping,
    Pong,
    TxInfo,
    Verack,
    Version,
    decode_message,
)
from protocol.transaction import COIN
from roles.console import OneLineErrorParser

PROMPT = "Msg>> "
USER_AGENT = "/epscoin-repl:0.1.0/"
CONNECT_TIMEOUT = 5.0  # seconds for the TCP connect
REPLY_TIMEOUT = 10.0  # seconds a scripted line waits for the node to answer
CLOSE_GRACE = 2.0  # seconds to let the reader print the node's last frames after a failed send
HELP = """Type a line and press Enter to send it; a line that is not a command is chat.
Commands the node understands: version, ping, ping {"nonce": 1}, getpeerinfo, getnetworkinfo,
getaddr, getblockchaininfo, getblock {"height": 0}, gettx {"txid": "..."}, mempool, chat {...}, !exit
Local commands:
  /help   this text
  /quit   leave (sends !exit); Ctrl-D and Ctrl-C do the same"""

EXIT_OK, EXIT_CONNECTION, EXIT_USAGE = 0, 1, 2


@dataclass
class Style:
    """Colours by kind of line; all empty when colour is off."""

    chat: str = ""
    system: str = ""
    error: str = ""
    reset: str = ""

    @classmethod
    def for_terminal(cls, colour: bool) -> "Style":
        if not colour:
            return cls()
        fore = colorama.Fore
        return cls(chat=fore.GREEN, system=fore.CYAN + colorama.Style.DIM, error=fore.RED,
                   reset=colorama.Style.RESET_ALL)


class Display:
    """Prints lines for the person; in interactive mode above the line being typed."""

    def __init__(self, style: Style, interactive: bool) -> None:
        self.style = style
        self.interactive = interactive
        self._lock = threading.Lock()  # one line at a time on the terminal; guards at_prompt
        self.at_prompt = False  # input() is waiting, so the prompt must be redrawn
        self._readline = None
        if interactive:
            try:
                import readline  # line editing for input(), and the text typed so far
                self._readline = readline
            except ImportError:
                pass

    def prompt(self) -> str:
        """The lecture's `Msg>>` input, marked so arriving lines redraw it."""
        with self._lock:
            self.at_prompt = True
        try:
            return input(PROMPT)
        finally:
            with self._lock:
                self.at_prompt = False

    def show(self, kind: str, text: str) -> None:
        line = f"{getattr(self.style, kind)}{text}{self.style.reset}"
        with self._lock:
            if self.at_prompt:
                typed = self._readline.get_line_buffer() if self._readline else ""
                # Clear the prompt line, print, then redraw the prompt and what was typed.
                sys.stdout.write(f"\r\x1b[K{line}\n{PROMPT}{typed}")
            else:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()


def describe(text: str) -> tuple[str, str]:
    """(kind, line to show) for one frame from the node."""
    try:
        message = decode_message(text)
    except ValueError:
        message = None
    if isinstance(message, Chat):
        return "chat", f"[{message.sender}] {message.text}"
    if isinstance(message, Error):
        about = f" (about '{message.about}')" if message.about else ""
        return "error", f"error: {message.reason}{about}"
    if isinstance(message, Goodbye):
        return "system", f"goodbye: {message.reason}" if message.reason else "goodbye"
    if isinstance(message, Version):
        return "system", (f"connected to {message.user_agent or 'a node'} at {message.addr_from or '?'} "
                          f"(height {message.height})")
    if isinstance(message, Ack):
        return "system", f"delivered (chat id {message.id})"
    if isinstance(message, Verack):
        return "system", "handshake done"
    if isinstance(message, PeerInfo):
        return "system", peer_table(message)
    if isinstance(message, NetworkInfo):
        return "system", (f"{message.address} {message.user_agent}: {message.peers} peers "
                          f"({message.inbound} in, {message.outbound} out), {message.addresses_known} addresses "
                          f"known, {message.banned} banned, {message.addrs_dropped} addr entries rate-limited")
    if isinstance(message, BlockchainInfo):
        return "system", (f"{message.network}: height {message.height}, tip {message.tip}, difficulty "
                          f"{message.difficulty:g}, headers {message.headers}, mempool {message.mempool_size} "
                          f"tx ({message.mempool_bytes} bytes)")
    if isinstance(message, BlockInfo):
        return "system", (f"block {message.height} {message.id}: {len(message.txids)} tx, {message.size} bytes, "
                          f"{message.confirmations} confirmations, time "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(message.header.time))} UTC")
    if isinstance(message, TxInfo):
        where = f"in block {message.height} ({message.confirmations} confirmations)" if message.block \
            else "waiting in the mempool"
        paid = sum(output.amount for output in message.tx.outputs) / COIN
        return "system", f"tx {message.txid}: {paid:.8f} EPS to {len(message.tx.outputs)} output(s), {where}"
    if isinstance(message, Inv):
        kinds = ", ".join(f"{item.type} {item.id}" for item in message.items[:10])
        more = f" and {len(message.items) - 10} more" if len(message.items) > 10 else ""
        return "system", f"inv: {len(message.items)} item(s) {kinds}{more}"
    if isinstance(message, Addr):
        listed = ", ".join(entry.addr for entry in message.addrs[:20])
        more = f" and {len(message.addrs) - 20} more" if len(message.addrs) > 20 else ""
        return "system", f"addr: {len(message.addrs)} address(es) {listed}{more}"
    return "system", text


PEER_COLUMNS = ("address", "dir", "services", "user agent", "height", "ping ms", "sent", "received", "since", "score")


def peer_table(info: PeerInfo) -> str:
    """getpeerinfo's answer as an aligned table, like bitcoin-cli -netinfo."""
    rows = [PEER_COLUMNS] + [
        (row.address, row.direction[:3], str(row.services), row.user_agent or "-", str(row.height),
         f"{row.ping_ms:.1f}" if row.ping_ms is not None else "-", str(row.bytes_sent), str(row.bytes_received),
         time.strftime("%H:%M:%S", time.localtime(row.connected_since)), str(row.score))
        for row in info.peers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(PEER_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + [f"{len(info.peers)} peer(s)"])


class Session:
    """One connection to a node: `send` writes a frame, a reader thread shows what comes back."""

    def __init__(self, sock: socket.socket, display: Display) -> None:
        self.sock = sock
        self.display = display
        self.reader = FrameReader(sock.makefile("rb"))
        self.closed = threading.Event()  # the connection has ended
        self.left = False  # we chose to leave (sent !exit)
        self.close_reason = ""
        self.last_word = ""  # the node's last error or goodbye, to explain a close
        self._sync_lock = threading.Lock()  # guards _sync_waiters
        self._sync_waiters: dict[int, threading.Event] = {}
        self._reader_thread = threading.Thread(target=self._read_frames, name="reader", daemon=True)

    def start(self) -> None:
        self._reader_thread.start()

    def send(self, msg: str) -> None:
        """The lecture's send(): one frame, header and payload in a single write."""
        self.sock.sendall(encode_frame(msg))

    def sync(self, timeout: float = REPLY_TIMEOUT) -> bool:
        """Wait until the node has answered everything sent so far (a ping it must answer last)."""
        nonce = secrets.randbits(63)
        arrived = threading.Event()
        with self._sync_lock:
            self._sync_waiters[nonce] = arrived
        self.send(f'ping {{"nonce":{nonce}}}')
        try:
            return arrived.wait(timeout) and not self.closed.is_set()
        finally:
            with self._sync_lock:
                self._sync_waiters.pop(nonce, None)

    def _read_frames(self) -> None:
        try:
            while True:
                text = self.reader.read_frame()
                if text is None:
                    self.close_reason = "the node closed the connection"
                    break
                if text.startswith("ping"):
                    self._answer_ping(text)  # the node's keepalive: answered, not shown
                elif not self._is_sync_pong(text):
                    kind, line = describe(text)
                    if text.startswith(("goodbye", "error")):
                        self.last_word = line
                    self.display.show(kind, line)
        except FrameError as error:
            self.close_reason = f"the node sent a malformed frame: {error.reason}"
        except OSError as error:
            self.close_reason = f"connection lost: {error.strerror or error}"
        finally:
            self.closed.set()
            with self._sync_lock:
                for waiter in self._sync_waiters.values():
                    waiter.set()

    def _answer_ping(self, text: str) -> None:
        try:
            message = decode_message(text)
        except ValueError:
            return
        if isinstance(message, Ping):
            try:
                self.send(Pong(nonce=message.nonce).encode())
            except OSError:
                pass  # the reader will see the connection end

    def _is_sync_pong(self, text: str) -> bool:
        if not text.startswith("pong"):
            return False
        try:
            message: Message | None = decode_message(text)
        except ValueError:
            return False
        if not isinstance(message, Pong) or message.nonce is None:
            return False
        with self._sync_lock:
            waiter = self._sync_waiters.get(message.nonce)
        if waiter is None:
            return False
        waiter.set()
        return True

    def leave(self, timeout: float = 3.0) -> None:
        """Send !exit and wait (bounded) for the goodbye."""
        self.left = True
        if not self.closed.is_set():
            try:
                self.send(DISCONNECT_MESSAGE)
            except OSError:
                return
            self.closed.wait(timeout)


def version_line() -> str:
    return Version(nonce=secrets.randbits(63) | 1, services=0, user_agent=USER_AGENT).encode()


def run_script(session: Session, lines: Iterable[str]) -> int:
    """Send each line, wait for its answers, then leave: for pipes and --send."""
    if not session.sync():
        return report_lost(session)
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if line in ("/quit", DISCONNECT_MESSAGE):
            break
        if line == "/help":
            session.display.show("system", HELP)
            continue
        try:
            session.send(line)
        except OSError:
            return report_lost(session)
        if not session.sync():
            return report_lost(session)
    session.leave()
    return EXIT_OK


def run_interactive(session: Session) -> int:
    """The lecture's `Msg>>` loop."""
    display = session.display
    display.show("system", "Type a message and press Enter; /help for commands, /quit to leave.")
    watcher = threading.Thread(target=_interrupt_when_closed, args=(session,), daemon=True)
    watcher.start()
    while True:
        try:
            line = display.prompt()
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            if session.closed.is_set():
                return report_lost(session)
            session.leave()
            return EXIT_OK
        if not line.strip():
            continue
        if line == "/help":
            display.show("system", HELP)
            continue
        if line in ("/quit", DISCONNECT_MESSAGE):
            session.leave()
            return EXIT_OK
        if line.startswith("/"):
            display.show("error", f"unknown command {line.split()[0]} (try /help)")
            continue
        try:
            session.send(line)
        except OSError:
            return report_lost(session)


def _interrupt_when_closed(session: Session) -> None:
    """Wake the main thread out of input() when the node goes away (a real SIGINT interrupts readline)."""
    session.closed.wait()
    if not session.left:
        os.kill(os.getpid(), signal.SIGINT)


def report_lost(session: Session) -> int:
    """One line saying why the node went away, and the exit code for it."""
    session.closed.wait(CLOSE_GRACE)  # a failed send can beat the reader to the news: let it finish
    if not session.closed.is_set():
        reason = f"the node did not answer within {REPLY_TIMEOUT:g} s"
    else:
        reason = session.close_reason or "the connection ended"
        if session.last_word:
            reason += f" ({session.last_word})"
    print(f"error: {reason}", file=sys.stderr)
    return EXIT_CONNECTION


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="peer_client.py", description="Chat with an epscoin node.")
    parser.add_argument("address", nargs="?", default="127.0.0.1", metavar="HOST[:PORT]",
                        help="the node to join (default 127.0.0.1:5050)")
    parser.add_argument("--send", action="append", default=[], metavar="MSG",
                        help="send MSG, print the replies, and exit (repeatable)")
    parser.add_argument("--no-colour", "--no-color", dest="colour", action="store_false",
                        help="plain output (also when stdout is not a terminal)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        host, port = parse_host_port(args.address)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    target = format_address(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as error:
        print(f"error: cannot connect to {target}: {error.strerror or error}", file=sys.stderr)
        return EXIT_CONNECTION
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    scripted = bool(args.send) or not sys.stdin.isatty()
    display = Display(Style.for_terminal(args.colour and sys.stdout.isatty()), interactive=not scripted)
    session = Session(sock, display)
    with sock:
        session.start()
        try:
            session.send(version_line())  # as in the lecture: send("version") first
            if scripted:
                return run_script(session, args.send or sys.stdin)
            return run_interactive(session)
        except OSError:
            return report_lost(session)


if __name__ == "__main__":
    sys.exit(main())
