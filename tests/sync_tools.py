"""Helpers for the multi-node blockchain tests (tests/test_sync.py).

Blocks are built in the test process with tests/chain_builder.py (regtest's
proof of work is trivial) and handed to a node as `block {json}` frames. A
`ChainPeer` is a raw frame client that can speak as a person (services 0) or
as a fake node (services 1, network regtest), from any 127.0.0.0/8 address so
that bans land on that address only. `chain_rows` reads a node's chain.sqlite
read-only while the node runs.
"""

from __future__ import annotations

import re
import secrets
import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from collections.abc import Iterable, Sequence

from protocol.block import Block, BlockHeader
from protocol.framing import FrameReader
from protocol.messages import Message, Ping, Pong, Version
from protocol.messages.blocks import BlockMessage, Headers, TxMessage
from protocol.messages.chaininfo import BlockchainInfo
from protocol.messages.inventory import GetData, InvItem
from protocol.messages.peerinfo import PeerRow
from protocol.networks import NETWORKS
from protocol.transaction import Transaction, TxOut, coinbase_transaction

from tests.chain_builder import ChainBuilder, Key
from tests.support import NodeProcess, WireClient, frames, wait_until

REGTEST = NETWORKS["regtest"]
# Every node of these tests: the regtest chain, and no links but the ones a test makes with --connect.
REGTEST_ARGS = ("--network", "regtest", "--outbound", "0")
NODE_NETWORK = 1
FEED_BATCH = 250  # blocks per sendall when feeding a node
_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d) ")


class ChainPeer(WireClient):
    """A raw client of one node: a person (services 0) or a fake node (services 1)."""

    def __init__(self, address: tuple[str, int], source_ip: str | None = None, timeout: float = 10.0) -> None:
        source = (source_ip, 0) if source_ip else None
        self.sock = socket.create_connection(address, timeout=timeout, source_address=source)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.reader = FrameReader(self.sock.makefile("rb"))
        self.version: Version | None = None
        self.theirs: Version | None = None

    @classmethod
    def open(cls, node: NodeProcess, services: int = 0, height: int = 0, source_ip: str | None = None,
             timeout: float = 10.0) -> ChainPeer:
        """Connect and finish the handshake as a regtest client or fake node."""
        peer = cls(node.address, source_ip, timeout)
        peer.hello(services, height)
        return peer

    @property
    def local_address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def hello(self, services: int = 0, height: int = 0, network: str = "regtest") -> Version:
        genesis = NETWORKS[network].genesis_id
        self.version = Version(services=services, nonce=secrets.randbits(63) | 1, height=height,
                               user_agent="/sync-test/", network=network, genesis=genesis)
        self.send_message(self.version)
        theirs = self.recv_message()
        assert isinstance(theirs, Version), theirs
        assert self.recv() == "verack"
        self.theirs = theirs
        return theirs

    # -- reading -------------------------------------------------------------------------------

    def until_pong(self, timeout: float | None = None) -> list[Message]:
        """Ping, and return every message that arrived before the pong.

        The node handles one peer's frames in order on one thread, so everything
        that peer's handling of earlier frames sent us arrives before the pong.
        """
        nonce = secrets.randbits(62)
        self.send_message(Ping(nonce=nonce))
        deadline = time.monotonic() + (timeout or self.timeout)
        before: list[Message] = []
        while True:
            message = self.recv_message(max(0.01, deadline - time.monotonic()))
            if message == Pong(nonce=nonce):
                return before
            if isinstance(message, Ping):
                self.send_message(Pong(nonce=message.nonce))
            before.append(message)

    def ask(self, text: str | Message, *answers: str, timeout: float | None = None) -> Message:
        """Send a request (text as a person types it, or a message); the first reply among `answers`."""
        self.send(text if isinstance(text, str) else text.encode())
        return self.wait_for(*answers, timeout=timeout)

    def wait_for(self, *commands: str, timeout: float | None = None) -> Message:
        """The first message with one of these commands (others are skipped, pings answered)."""
        answers = commands
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            message = self.recv_message(max(0.01, deadline - time.monotonic()))
            if message.command in answers:
                return message
            if isinstance(message, Ping):
                self.send_message(Pong(nonce=message.nonce))

    def getdata_until(self, wanted: set[str], timeout: float = 5.0) -> list[InvItem]:
        """Items of the getdata frames the node sends until they cover `wanted` (or timeout): those it
        sent while handling our frames so far, then any that its housekeeping thread sends a little later."""
        items = getdata_items(self.until_pong())
        deadline = time.monotonic() + timeout
        while not wanted <= {item.id for item in items} and time.monotonic() < deadline:
            try:
                message = self.recv_message(max(0.01, deadline - time.monotonic()))
            except (TimeoutError, OSError):
                break
            items += getdata_items([message])
        return items

    def info(self) -> BlockchainInfo:
        info = self.ask("getblockchaininfo", "blockchaininfo")
        assert isinstance(info, BlockchainInfo)
        return info

    def peer_rows(self) -> list[PeerRow]:
        return list(self.ask("getpeerinfo", "peerinfo").peers)

    def expect_error(self, timeout: float | None = None) -> str:
        """The reason of the next error frame (other frames are skipped)."""
        return self.recv_until("error", timeout).reason

    # -- sending ---------------------------------------------------------------------------------

    def send_blocks(self, blocks: Sequence[Block]) -> None:
        for start in range(0, len(blocks), FEED_BATCH):
            self.send_raw(frames(*(BlockMessage(block).encode() for block in blocks[start:start + FEED_BATCH])))

    def feed(self, blocks: Sequence[Block], timeout: float = 60.0) -> list[Message]:
        """Send blocks and wait until the node has handled them all; what it answered meanwhile."""
        self.send_blocks(blocks)
        return self.until_pong(timeout)

    def send_headers(self, headers: Iterable[BlockHeader]) -> None:
        self.send_message(Headers(headers=tuple(headers)))

    def send_tx(self, tx: Transaction) -> None:
        self.send_message(TxMessage(tx))


# -- nodes ---------------------------------------------------------------------------------------


class NodeStarter:
    """conftest's start_node for a module-scoped fixture: the same test arguments, every node killed at exit."""

    ARGS = ("--handshake-timeout", "1.5", "--frame-timeout", "1.5", "--no-fixed-seeds")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[NodeProcess] = []

    def __call__(self, *args: str, name: str | None = None) -> NodeProcess:
        node = NodeProcess(self.root / (name or f"node{len(self.started)}"), *self.ARGS, *args)
        self.started.append(node)
        return node

    def __enter__(self) -> NodeStarter:
        return self

    def __exit__(self, *exc) -> None:
        for node in self.started:
            node.kill()


def fed_node(start_node, blocks: Sequence[Block], *args: str, name: str | None = None) -> NodeProcess:
    """A regtest node that has been handed `blocks` and has connected them all."""
    node = start_node(*REGTEST_ARGS, *args, name=name)
    if blocks:
        with ChainPeer.open(node) as client:
            client.feed(blocks)
            info = client.info()
        assert info.height == len(blocks) and info.tip == blocks[-1].block_id, \
            f"fed {len(blocks)} blocks, node is at {info.height}:\n{node.log()[-3000:]}"
    return node


def wait_for_tip(client: ChainPeer, tip: str, height: int, timeout: float, node: NodeProcess | None = None
                 ) -> BlockchainInfo:
    """Poll getblockchaininfo until the node's tip is `tip`; the last answer."""
    last: list[BlockchainInfo] = []

    def there() -> bool:
        last[:] = [client.info()]
        return last[0].tip == tip

    try:
        wait_until(there, timeout=timeout, interval=0.05, message=f"tip {height} {tip[:16]}")
    except AssertionError as error:
        tail = node.log()[-4000:] if node else ""
        raise AssertionError(f"{error}; last getblockchaininfo {last}\n{tail}") from None
    assert last[0].height == height, last[0]
    return last[0]


def node_peer_row(client: ChainPeer, user_agent: str = "/epscoin:") -> PeerRow:
    """The one connection a node has to another real node."""
    rows = [row for row in client.peer_rows() if row.user_agent.startswith(user_agent)]
    assert len(rows) == 1, rows
    return rows[0]


# -- chains ----------------------------------------------------------------------------------------


def fat_blocks(chain: ChainBuilder, count: int, outputs: int = 40) -> list[Block]:
    """`count` blocks whose coinbases pay `outputs` addresses each: a few KB a block, so block
    traffic stands out from header traffic in bytes_sent."""
    payees = [Key(chain.network, f"payee {i}").address for i in range(outputs)]
    built = []
    for _ in range(count):
        height = chain.height + 1
        coinbase = coinbase_transaction(height, tuple(TxOut(1_000_000, address) for address in payees),
                                        chain.coinbase_data)
        built.append(chain.append(chain.make_block(coinbase=coinbase)))
    return built


def frame_size(message: Message) -> int:
    return len(frames(message.encode()))


def getdata_items(messages: Iterable[Message]) -> list[InvItem]:
    return [item for message in messages if isinstance(message, GetData) for item in message.items]


def blocks_by_id(chain: ChainBuilder) -> dict[str, Block]:
    return {block.block_id: block for block in chain.blocks}


# -- chain.sqlite, read-only -------------------------------------------------------------------------


def chain_rows(node: NodeProcess, query: str) -> list[tuple]:
    path: Path = node.data_dir / "regtest" / "chain.sqlite"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute(query).fetchall()


def utxo_set(node: NodeProcess) -> set[tuple]:
    return set(chain_rows(node, "SELECT txid, idx, amount, address, height, coinbase FROM utxo"))


def builder_utxo_set(chain: ChainBuilder) -> set[tuple]:
    """The UTXO set a node should hold for this chain, in utxo-table form."""
    return {(outpoint.txid, outpoint.index, coin.amount, coin.address, coin.height, int(coin.is_coinbase))
            for outpoint, coin in chain.view.coins.items()}


# -- logs ------------------------------------------------------------------------------------------


def log_lines(node: NodeProcess, needle: str) -> list[str]:
    return [line for line in node.log().splitlines() if needle in line]


def seconds_of_day(line: str) -> int:
    match = _TIME.match(line)
    assert match, f"no time stamp in {line!r}"
    hours, minutes, seconds = map(int, match.groups())
    return hours * 3600 + minutes * 60 + seconds
