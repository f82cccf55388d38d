"""epscoin chat REPL: the lecture's client, made real.

    python peer_client.py [HOST[:PORT]]                 # interactive, the lecture's Msg>> prompt
    python peer_client.py HOST --send ping --send hi    # scripted: print the replies, then exit
    echo hello | python peer_client.py HOST             # lines from a pipe work the same way
    python peer_client.py HOST --wallet shop.wallet     # with a light wallet: /balance, /send, ... (/help)
    python peer_client.py HOST --wallet shop.wallet --send "/balance"   # one wallet command, then exit

As in the lecture, the client connects, sends `version`, then sends whatever
is typed. Unlike the lecture's client, it does not block on recv(2048) after
each line: a reader thread prints every frame as it arrives (relayed chat
included), above the line being typed. Lines starting with `/` are local
commands; everything else goes to the node as typed, so `ping` works by hand.

With --wallet FILE the client is also a light wallet (roles/wallet): the keys
stay in this process, encrypted on disk; the node is asked for headers, coins
and merkle proofs, and every answer is checked before it is believed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
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
from protocol.networks import NETWORKS, Network
from protocol.transaction import COIN
from roles.console import OneLineErrorParser
from roles.wallet import HELP as WALLET_HELP
from roles.wallet import Keystore, KeystoreError, WalletCommands, WalletError
from roles.wallet.keystore import WalletLock, loose_permissions

PROMPT = "Msg>> "
USER_AGENT = "/epscoin-repl:0.1.0/"
CONNECT_TIMEOUT = 5.0  # seconds for the TCP connect
REPLY_TIMEOUT = 10.0  # seconds a scripted line waits for the node to answer
CLOSE_GRACE = 2.0  # seconds to let the reader print the node's last frames after a failed send
POLL_INTERVAL = 2.0  # seconds between the interactive wallet's looks for new payments and blocks
PASSPHRASE_VARIABLE = "EPSCOIN_PASSPHRASE"
HELP = """Type a line and press Enter to send it; a line that is not a command is chat.
Commands the node understands: version, ping, ping {"nonce": 1}, getpeerinfo, getnetworkinfo,
getaddr, getblockchaininfo, getblock {"height": 0}, gettx {"txid": "..."}, mempool, chat {...}, !exit
Local commands:
  /help   this text
  /quit   leave (sends !exit); Ctrl-D and Ctrl-C do the same"""

HELP_WITH_WALLET = HELP + "\n" + WALLET_HELP

EXIT_OK, EXIT_CONNECTION, EXIT_USAGE = 0, 1, 2
EXIT_FAILED = 1  # a wallet command failed (one line on stderr says why)
# What answers each wallet request; an `error` about the request's command answers it too.
ANSWER_OF = {"getheaders": "headers", "getutxos": "utxos", "gettx": "txinfo", "getproof": "proof", "tx": "txinfo",
             "gettoken": "token", "getblockchaininfo": "blockchaininfo"}


@dataclass
class Style:
    """Colours by kind of line; all empty when colour is off."""

    chat: str = ""
    system: str = ""
    error: str = ""
    wallet: str = ""
    reset: str = ""

    @classmethod
    def for_terminal(cls, colour: bool) -> "Style":
        if not colour:
            return cls()
        fore = colorama.Fore
        return cls(chat=fore.GREEN, system=fore.CYAN + colorama.Style.DIM, error=fore.RED, wallet=fore.YELLOW,
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


@dataclass
class Exchange:
    """Wallet requests in flight: sent between two pings, so their answers are the frames between the pongs.

    The node answers one connection's frames in order, so whatever arrives after the first pong
    and before the second answers these requests, except what the node sends unasked (relayed
    chat, its keepalive pings): only answer commands the requests call for are taken.
    """

    start: int  # ping nonces
    end: int
    commands: frozenset[str]  # the requests' commands
    answers: frozenset[str]  # the commands that answer them
    started: bool = False
    got: list[Message] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def takes(self, command: str, message: Message | None) -> bool:
        if not self.started:
            return False
        if isinstance(message, Error):
            return message.about in self.commands
        return command in self.answers


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
        self.node_version: Version | None = None  # the node's own version message
        self._send_lock = threading.Lock()  # one writer at a time: frames from threads never interleave
        self._sync_lock = threading.Lock()  # guards _sync_waiters and _exchange
        self._sync_waiters: dict[int, threading.Event] = {}
        self._exchange: Exchange | None = None
        self._exchange_lock = threading.Lock()  # one wallet exchange at a time
        self._reader_thread = threading.Thread(target=self._read_frames, name="reader", daemon=True)

    def start(self) -> None:
        self._reader_thread.start()

    def send(self, msg: str) -> None:
        """The lecture's send(): one frame, header and payload in a single write."""
        with self._send_lock:
            self.sock.sendall(encode_frame(msg))

    def exchange(self, requests: Sequence[Message], timeout: float = REPLY_TIMEOUT) -> list[Message]:
        """Send wallet requests and return their answers, in order; WalletError if the node does not answer."""
        with self._exchange_lock:
            exchange = Exchange(secrets.randbits(63), secrets.randbits(63), frozenset(r.command for r in requests),
                                frozenset(ANSWER_OF[r.command] for r in requests))
            with self._sync_lock:
                self._exchange = exchange
            try:
                frames = [f'ping {{"nonce":{exchange.start}}}'] + [r.encode() for r in requests] + \
                         [f'ping {{"nonce":{exchange.end}}}']
                try:
                    with self._send_lock:
                        self.sock.sendall(b"".join(encode_frame(frame) for frame in frames))
                except OSError as error:
                    raise WalletError(f"connection lost: {error.strerror or error}") from None
                if not exchange.done.wait(timeout):
                    raise WalletError(f"the node did not answer within {timeout:g} s")
                if self.closed.is_set() and len(exchange.got) < len(requests):  # all answered, then closed: fine
                    raise WalletError(f"connection lost: {self.close_reason or 'the connection ended'}")
                return exchange.got
            finally:
                with self._sync_lock:
                    self._exchange = None

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
                elif not self._is_sync_pong(text) and not self._is_exchange_answer(text):
                    if text.startswith("version"):
                        self._note_version(text)
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
                if self._exchange is not None:
                    self._exchange.done.set()

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

    def _is_exchange_answer(self, text: str) -> bool:
        """True when the frame belongs to the wallet exchange in flight (then it is not shown)."""
        with self._sync_lock:
            exchange = self._exchange
        if exchange is None:
            return False
        command = text.partition(" ")[0]
        try:
            message = decode_message(text)
        except ValueError as error:  # a malformed answer is still the answer: the wallet refuses it
            message = Error(f"malformed {command}: {error}", about=next(
                (c for c, a in ANSWER_OF.items() if a == command and c in exchange.commands), None))
        if isinstance(message, Pong) and message.nonce in (exchange.start, exchange.end):
            if message.nonce == exchange.start:
                exchange.started = True
            else:
                exchange.done.set()
            return True
        if not exchange.takes(command, message):
            return False
        exchange.got.append(message)
        return True

    def _note_version(self, text: str) -> None:
        try:
            message = decode_message(text)
        except ValueError:
            return
        if isinstance(message, Version):
            self.node_version = message

    def node_network(self) -> Network:
        """The network the node said it is on, checked against the genesis block it named."""
        version = self.node_version
        network = NETWORKS.get(version.network) if version else None
        if network is None:
            raise WalletError("the node did not say which network it is on")
        if version.genesis and version.genesis != network.genesis_id:
            raise WalletError(f"the node's genesis block is not {network.name}'s")
        return network

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


def run_wallet_command(session: Session, wallet: WalletCommands, line: str, refusal_fails: bool) -> str | None:
    """Run one wallet command and show its lines and the wallet's news; the one-line reason if it failed.

    With refusal_fails (scripts), an answer the wallet refused (a forged proof) fails the command too:
    the command's output stands, but the node lied, and a script should know.
    """
    display = session.display
    try:
        lines = wallet.run(line)
    except WalletError as error:
        show_wallet_events(display, wallet)
        return str(error)
    refused = show_wallet_events(display, wallet)
    display.show("wallet", "\n".join(lines))
    if refused and refusal_fails:
        return f"the node sent what the wallet refused: {refused[0].removeprefix('rejected: ')}"
    return None


def show_wallet_events(display: Display, wallet: WalletCommands) -> list[str]:
    """Print news the wallet gathered (payments arriving, confirmations, refused proofs); the refusals."""
    events = wallet.take_events()
    for event in events:
        display.show("error" if event.kind == "rejected" else "wallet", event.text)
    return [event.text for event in events if event.kind == "rejected"]


def run_script(session: Session, lines: Iterable[str], wallet: WalletCommands) -> int:
    """Send each line, wait for its answers, then leave: for pipes and --send.

    A wallet command runs here instead; if it fails (or a proof was refused), the client
    says why in one line on stderr, leaves, and exits 1.
    """
    if not session.sync():
        return report_lost(session)
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if line in ("/quit", DISCONNECT_MESSAGE):
            break
        if line == "/help":
            session.display.show("system", HELP_WITH_WALLET)
            continue
        if wallet.handles(line):
            failure = run_wallet_command(session, wallet, line, refusal_fails=True)
            if failure:
                print(f"error: {failure}", file=sys.stderr)
                session.leave()
                return EXIT_FAILED
            continue
        try:
            session.send(line)
        except OSError:
            return report_lost(session)
        if not session.sync():
            return report_lost(session)
    session.leave()
    return EXIT_OK


def start_wallet_poller(session: Session, wallet: WalletCommands) -> None:
    """Interactive: look for new blocks and payments every POLL_INTERVAL, and print what changed."""
    if not wallet.loaded:
        return
    try:
        lines = wallet.summary()  # the first refresh: the baseline news is measured from
    except WalletError as error:
        session.display.show("error", f"wallet: {error}")
        return
    session.display.show("wallet", "\n".join(lines))
    threading.Thread(target=_poll_wallet, args=(session, wallet), name="wallet", daemon=True).start()


def _poll_wallet(session: Session, wallet: WalletCommands) -> None:
    last_error = ""
    while not session.closed.wait(POLL_INTERVAL):
        try:
            wallet.update()
            last_error = ""
        except WalletError as error:
            if str(error) != last_error and not session.closed.is_set():
                session.display.show("error", f"wallet: {error}")
            last_error = str(error)
        show_wallet_events(session.display, wallet)


def run_interactive(session: Session, wallet: WalletCommands) -> int:
    """The lecture's `Msg>>` loop."""
    display = session.display
    display.show("system", "Type a message and press Enter; /help for commands, /quit to leave.")
    watcher = threading.Thread(target=_interrupt_when_closed, args=(session,), daemon=True)
    watcher.start()
    if session.sync():
        start_wallet_poller(session, wallet)
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
            display.show("system", HELP_WITH_WALLET)
            continue
        if line in ("/quit", DISCONNECT_MESSAGE):
            session.leave()
            return EXIT_OK
        if wallet.handles(line):
            created = not wallet.loaded and line.split()[:2] == ["/wallet", "new"]
            failure = run_wallet_command(session, wallet, line, refusal_fails=False)
            if failure:
                display.show("error", f"error: {failure}")
            elif created:
                start_wallet_poller(session, wallet)  # a new wallet: watch it from now on
            continue
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
    parser.add_argument("--wallet", type=Path, metavar="FILE",
                        help=f"be a light wallet with the keys in FILE (/wallet new creates it; passphrase from "
                             f"{PASSPHRASE_VARIABLE} or a prompt)")
    return parser


def read_passphrase(confirm: bool) -> str:
    """EPSCOIN_PASSPHRASE if set, else a hidden prompt (twice for a new wallet)."""
    if PASSPHRASE_VARIABLE in os.environ:
        return os.environ[PASSPHRASE_VARIABLE]
    if not sys.stdin.isatty():
        raise WalletError(f"no passphrase: set {PASSPHRASE_VARIABLE} (standard input is not a terminal)")
    try:
        passphrase = getpass.getpass("Wallet passphrase: ")
        if confirm and getpass.getpass("Again, to be sure: ") != passphrase:
            raise WalletError("the passphrases differ")
    except (EOFError, KeyboardInterrupt):
        raise WalletError("no passphrase given") from None
    return passphrase


def open_keystore(path: Path | None) -> tuple[WalletLock | None, Keystore | None]:
    """The wallet's lock (held while the client runs) and its keystore, decrypted, if the file exists.

    WalletError for a wallet in use elsewhere, a wrong passphrase or a damaged file.
    """
    if path is None:
        return None, None
    try:
        lock = WalletLock(path)
    except KeystoreError as error:
        raise WalletError(str(error)) from None
    if not path.exists():
        return lock, None
    try:
        keystore = Keystore.open(path, read_passphrase(confirm=False))
    except KeystoreError as error:
        lock.release()
        raise WalletError(str(error)) from None
    mode = loose_permissions(path)
    if mode is not None:
        print(f"warning: {path} has mode {mode:04o}: others may read it; chmod 600 {path}", file=sys.stderr)
    return lock, keystore


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        host, port = parse_host_port(args.address)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    target = format_address(host, port)
    try:
        _lock, keystore = open_keystore(args.wallet)  # before connecting: a wrong passphrase costs no connection
    except WalletError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
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
    wallet = WalletCommands(args.wallet, read_passphrase, session, session.node_network, keystore)
    with sock:
        session.start()
        try:
            session.send(version_line())  # as in the lecture: send("version") first
            if scripted:
                return run_script(session, args.send or sys.stdin, wallet)
            if args.wallet and not wallet.loaded:
                display.show("system", f"no wallet at {args.wallet} yet: /wallet new creates it")
            return run_interactive(session, wallet)
        except OSError:
            return report_lost(session)


if __name__ == "__main__":
    sys.exit(main())
