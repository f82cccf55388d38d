"""`python node.py --demo N`: real node processes on their own loopback addresses, one DNS seed."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, wait_until


def random_subnet() -> str:
    """A 127.R.S.0/24 no other test (nor a person's own demo on 127.0.0.x) is using."""
    return f"127.{random.randint(100, 250)}.{random.randint(100, 250)}"


def test_demo_network_connects_relays_chat_and_stops_cleanly_on_ctrl_c(tmp_path: Path):
    subnet = random_subnet()
    output = tmp_path / "demo.out"
    with open(output, "w") as out:
        demo = subprocess.Popen([sys.executable, str(ROOT / "node.py"), "--demo", "3", "--host", f"{subnet}.2",
                                 "--data-dir", str(tmp_path)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        # Every node ends with both others as peers, learned from the DNS seed alone.
        summary = re.compile(rf"{re.escape(subnet)}\.(\d) +(seed|node) +peers +(\d+)")
        def all_connected() -> bool:
            blocks = output.read_text().split("[DEMO]")
            rows = summary.findall(blocks[-1]) if len(blocks) > 2 else []
            return len(rows) == 3 and all(int(peers) >= 2 for _, _, peers in rows)
        wait_until(all_connected, timeout=30, message="every demo node to have both others as peers")
        assert f"join with: python peer_client.py {subnet}.3" in output.read_text()

        # The second node mines on the demo network, to the demo's own wallet, and every node follows.
        heights = re.compile(rf"{re.escape(subnet)}\.\d .* height (\d+)  mempool \d+( +mining)?")
        def blocks_everywhere() -> bool:
            rows = heights.findall(output.read_text().split("[DEMO]")[-1])
            return len(rows) == 3 and all(int(height) >= 3 for height, _ in rows)
        wait_until(blocks_everywhere, timeout=60, message="every demo node to reach height 3")
        assert [mining for _, mining in heights.findall(output.read_text().split("[DEMO]")[-1])] == [
            "", "  mining", ""]
        wallet = tmp_path / "demo" / "miner.wallet"
        assert wallet.stat().st_mode & 0o777 == 0o600
        paid = re.search(r"\[DEMO\] miners pay (\w+)", output.read_text()).group(1)
        commands = [Path(f"/proc/{pid}/cmdline").read_text().split("\0") for pid in miner_pids(demo.pid)]
        assert len(commands) == 1 and paid == commands[0][commands[0].index("--mine-to") + 1]

        # A person joins the second node, as the README says, and their line reaches every node.
        joined = subprocess.run([sys.executable, str(ROOT / "peer_client.py"), f"{subnet}.3",
                                 "--send", "hello demo network"], capture_output=True, text=True, timeout=20, cwd=ROOT)
        assert joined.returncode == 0, joined.stderr
        for k in (1, 2, 3):
            log = tmp_path / "demo" / f"node-{k}.log"
            wait_until(lambda: "] hello demo network" in log.read_text(), timeout=10,
                       message=f"node {k} to print the chat line")
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=15)
    assert code == 0
    assert "[DEMO] stopped." in output.read_text()
    for k in (1, 2, 3):
        assert "[STOPPED] Node stopped." in (tmp_path / "demo" / f"node-{k}.log").read_text()


def miner_pids(parent: int) -> list[int]:
    """The demo's node processes that were started with the mining role."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children if "mining" in Path(f"/proc/{pid}/cmdline").read_text()]


def test_demo_refuses_a_mine_to_address_of_another_network(tmp_path: Path):
    regtest_address = "RXKoT2UeVLTY489eJJfvuZAZVYr4pYknYx"  # docs/protocol.md §11.5: Alice on regtest
    result = subprocess.run([sys.executable, str(ROOT / "node.py"), "--demo", "3", "--host", f"{random_subnet()}.2",
                             "--mine-to", regtest_address, "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: --mine-to {regtest_address}: address belongs to another network "
                                     "(the demo runs the demo network)")


def test_demo_refuses_addresses_outside_loopback(tmp_path: Path):
    result = subprocess.run([sys.executable, str(ROOT / "node.py"), "--demo", "3", "--host", "10.1.2.3",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: the demo runs on IPv4 loopback addresses (127.x.y.z)"
