"""The local demo network behind `python node.py --demo [N]`.

Not a role a node plays, but the supervisor that starts N real node processes
on their own loopback addresses (127.0.0.2, 127.0.0.3, ...), all on port 5050
as on a real network. The first serves the DNS seed; every other node is given
nothing but the seed's name, and finds the rest as the lecture describes. The
network is the `demo` one (a block every few seconds): one node mines, two
when there are four or more, so blocks flow from the start, and every node
serves light wallets. The supervisor prints one live line per node and stops
them all on Ctrl-C.

The miners pay `--mine-to ADDRESS` when given. Otherwise they pay the first
address of a wallet the supervisor makes in the demo's directory,
`miner.wallet`, under the passphrase "demo" (or EPSCOIN_PASSPHRASE): demo
coins are worth nothing, and so a reader can spend them at once with
`python peer_client.py 127.0.0.3 --wallet DATA/demo/miner.wallet`.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from protocol.framing import PORT, FrameError, FrameReader, encode_frame
from protocol.messages import (BlockchainInfo, Message, MessageError, NetworkInfo, PeerInfo, Ping, Pong, Version,
                               decode_message)
from protocol.messages.handshake import NODE_NETWORK
from protocol.coin_address import decode_address
from protocol.networks import NETWORKS
from roles.wallet.keystore import Keystore, KeystoreError

DEMO_ZONE = "seed.epscoin.demo"
DEMO_DNS_PORT = 5053  # 53 needs root; 5353 is mDNS's
FIRST_HOST = "127.0.0.2"  # 127.0.0.1 stays free for a node of your own
START_TIMEOUT = 15.0  # seconds for every node to listen
REFRESH_INTERVAL = 2.0  # seconds between summary lines
ANSWER_TIMEOUT = 3.0
STOP_TIMEOUT = 5.0
DEMO_NETWORK = "demo"
DEMO_PASSPHRASE = "demo"  # the miners' wallet: demo coins are worth nothing
ROLES = "routing,blockchain,chat,wallet-services"

ROOT = Path(__file__).resolve().parent.parent


def demo_host(first: str, index: int) -> str:
    """The index-th node's address: first, first + 1, ..."""
    return str(ipaddress.ip_address(first) + index)


@dataclass
class DemoNode:
    index: int
    host: str
    log_path: Path
    process: subprocess.Popen

    @property
    def is_seed(self) -> bool:
        return self.index == 0


class Monitor:
    """One chat-client connection to a node, for asking it questions."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=ANSWER_TIMEOUT)
        self.reader = FrameReader(self.sock.makefile("rb"))
        self.sock.sendall(encode_frame(Version(user_agent="/epscoin-demo-monitor/").encode()))

    def ask(self, question: str, answer_type: type[Message]) -> Message:
        """Send a question; skip other frames (relayed chat, keepalive pings, which get a pong)."""
        self.sock.sendall(encode_frame(question))
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while time.monotonic() < deadline:
            text = self.reader.read_frame()
            if text is None:
                raise ConnectionError("the node closed the connection")
            try:
                message = decode_message(text)
            except MessageError:
                continue
            if isinstance(message, Ping):
                self.sock.sendall(encode_frame(Pong(nonce=message.nonce).encode()))
            elif isinstance(message, answer_type):
                return message
        raise TimeoutError(f"no {answer_type.command} within {ANSWER_TIMEOUT:g} s")

    def close(self) -> None:
        self.sock.close()


class DemoNetwork:
    def __init__(self, count: int, base_dir: Path, colour: bool, first_host: str = FIRST_HOST,
                 mine_to: str | None = None) -> None:
        self.count = count
        self.first_host = first_host
        self.mine_to = mine_to
        self.base_dir = base_dir
        self.colour = colour
        self.nodes: list[DemoNode] = []
        self._monitors: dict[int, Monitor] = {}
        self._stop = threading.Event()

    def is_miner(self, index: int) -> bool:
        """The second node mines, and with four nodes or more the last one too (the seed never does)."""
        return (index == 1 or (self.count >= 4 and index == self.count - 1)) if self.count > 1 else True

    def node_arguments(self, index: int) -> list[str]:
        host = demo_host(self.first_host, index)
        arguments = ["--host", host, "--port", str(PORT), "--data-dir", str(self.base_dir / f"node-{index + 1}"),
                     "--no-colour", "--no-fixed-seeds", "--network", DEMO_NETWORK, "--roles", ROLES]
        if self.is_miner(index):
            arguments[-1] += ",mining"
            arguments += ["--mine-to", self.mine_to, "--mining-workers", "1"]
        seed = self.first_host
        if index == 0:
            return arguments + ["--serve-dns", f"{seed}:{DEMO_DNS_PORT}", "--dns-zone", DEMO_ZONE]
        return arguments + ["--dns-seed", DEMO_ZONE, "--dns-server", f"{seed}:{DEMO_DNS_PORT}"]

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.mine_to is None:
            self.mine_to = miner_wallet_address(self.base_dir / "miner.wallet")
        print(f"[DEMO] miners pay {self.mine_to}", flush=True)
        for index in range(self.count):
            log_path = self.base_dir / f"node-{index + 1}.log"
            with open(log_path, "w") as log_file:
                process = subprocess.Popen([sys.executable, str(ROOT / "node.py"), *self.node_arguments(index)],
                                           stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           cwd=ROOT, start_new_session=True)  # Ctrl-C reaches us, not them
            self.nodes.append(DemoNode(index, demo_host(self.first_host, index), log_path, process))
        deadline = time.monotonic() + START_TIMEOUT
        for node in self.nodes:
            while "[LISTENING]" not in node.log_path.read_text(errors="replace"):
                if self._stop.is_set():
                    return
                if node.process.poll() is not None or time.monotonic() > deadline:
                    last = node.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                    raise RuntimeError(f"node {node.host}:{PORT} did not start: {last[0]}")
                self._stop.wait(0.05)  # polling a log file at startup; nothing to wait on instead

    def stop(self) -> None:
        for monitor in self._monitors.values():
            monitor.close()
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for node in self.nodes:
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()

    def summary_line(self, node: DemoNode) -> str:
        role = "seed" if node.is_seed else "node"
        if node.process.poll() is not None:
            return f"{node.host:<12} {role}  exited with {node.process.returncode} (see {node.log_path})"
        try:
            monitor = self._monitors.get(node.index) or self._monitors.setdefault(
                node.index, Monitor(node.host, PORT))
            info = monitor.ask("getnetworkinfo", NetworkInfo)
            peers = monitor.ask("getpeerinfo", PeerInfo)
            chain = monitor.ask("getblockchaininfo", BlockchainInfo)
        except (OSError, FrameError, ConnectionError, TimeoutError) as error:
            self._monitors.pop(node.index, None)
            return f"{node.host:<12} {role}  not answering: {error}"
        assert isinstance(info, NetworkInfo) and isinstance(peers, PeerInfo) and isinstance(chain, BlockchainInfo)
        nodes = [row for row in peers.peers if row.services & NODE_NETWORK]
        outbound = sum(row.direction == "outbound" for row in nodes)
        clients = len(peers.peers) - len(nodes) - 1  # not counting this monitor
        mining = "  mining" if self.is_miner(node.index) else ""
        return (f"{node.host:<12} {role}  peers {len(nodes):>2} ({outbound} out, {len(nodes) - outbound} in)"
                f"  clients {clients}  addresses known {info.addresses_known}"
                f"  height {chain.height}  mempool {chain.mempool_size}{mining}")

    def show(self, first: bool) -> None:
        lines = [self.summary_line(node) for node in self.nodes]
        stamp = time.strftime("%H:%M:%S")
        if self.colour and not first:
            sys.stdout.write(f"\x1b[{len(lines) + 1}F")  # back to the top of the last block
        sys.stdout.write(f"[DEMO] {stamp}  {self.count} nodes; Ctrl-C stops them all\x1b[K\n" if self.colour else
                         f"[DEMO] {stamp}\n")
        for line in lines:
            sys.stdout.write(line + ("\x1b[K\n" if self.colour else "\n"))
        sys.stdout.flush()

    def run(self) -> None:
        first = True
        while not self._stop.is_set():
            self.show(first)
            first = False
            self._stop.wait(REFRESH_INTERVAL)

    def request_stop(self, *_: object) -> None:
        self._stop.set()


def miner_wallet_address(path: Path) -> str:
    """The first address of the demo's miner wallet, made now if it is not there yet."""
    passphrase = os.environ.get("EPSCOIN_PASSPHRASE", DEMO_PASSPHRASE)
    if path.exists():
        keystore = Keystore.open(path, passphrase)
    else:
        keystore = Keystore.create(path, passphrase, DEMO_NETWORK)
    key = keystore.keys[0] if keystore.keys else keystore.add_key()
    return key.address(NETWORKS[DEMO_NETWORK])


def run_demo(count: int, base_dir: Path, colour: bool, first_host: str = FIRST_HOST,
             mine_to: str | None = None) -> int:
    """Start the network, show it live until Ctrl-C or SIGTERM, then stop every node. The exit code."""
    if mine_to is not None:
        try:
            decode_address(mine_to, NETWORKS[DEMO_NETWORK].address_prefix)
        except ValueError as error:
            print(f"error: --mine-to {mine_to}: {error} (the demo runs the {DEMO_NETWORK} network)", file=sys.stderr)
            return 2
    network = DemoNetwork(count, base_dir, colour, first_host, mine_to)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, network.request_stop)
    last = demo_host(first_host, count - 1)
    print(f"[DEMO] starting {count} nodes on {first_host}..{last} port {PORT}; "
          f"DNS seed {DEMO_ZONE} at {first_host}:{DEMO_DNS_PORT}/udp; logs in {base_dir}", flush=True)
    try:
        network.start()
        print(f"[DEMO] join with: python peer_client.py {demo_host(first_host, 1 if count > 1 else 0)}",
              flush=True)
        network.run()
    except (RuntimeError, KeystoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        network.stop()
    print("[DEMO] stopped.")
    return 0
