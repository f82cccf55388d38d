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


def test_demo_refuses_addresses_outside_loopback(tmp_path: Path):
    result = subprocess.run([sys.executable, str(ROOT / "node.py"), "--demo", "3", "--host", "10.1.2.3",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: the demo runs on IPv4 loopback addresses (127.x.y.z)"
