"""The demo network's peer graph as a picture: docs/img/demo-peer-graph.png.

    python benchmarks/peer_graph.py              # 5 nodes, as `python node.py --demo`
    python benchmarks/peer_graph.py --nodes 8 --out /tmp/graph.png

It starts the local demo network the way a person does, `python node.py --demo N`,
but on a random loopback subnet 127.R.S.x (the demo's --host), so it never meets
someone's own demo on 127.0.0.x or another run. It waits until the network has
settled, asks every node `getpeerinfo` over the wire, draws who dialled whom
(every outbound connection an arrow, the DNS seed highlighted), and stops the
network with SIGINT, as Ctrl-C would. About 15 s for 5 nodes on a quiet machine.

Settled means: every node has as many outbound node peers as the routing role
keeps (8, or N - 1 in a smaller network, where every node ends up dialling
every other one), the graph is connected, and two answers in a row agree.
Needs matplotlib (`pip install -e '.[plots]'`); without it, exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: benchmarks.plots sits beside it

from benchmarks.plots import IMAGE_DIR, INSTALL_HINT, RunInfo, import_pyplot, save  # noqa: E402
from protocol.framing import PORT, FrameError  # noqa: E402
from protocol.messages import PeerInfo, PeerRow  # noqa: E402
from protocol.messages.handshake import NODE_NETWORK  # noqa: E402
from roles.demo_network import DEMO_DNS_PORT, DEMO_ZONE, Monitor, demo_host  # noqa: E402
from tests.network_tools import can_bind  # noqa: E402

OUTBOUND = 8  # the node's default --outbound, which the demo keeps
START_TIMEOUT = 60.0  # seconds for `node.py --demo` to report every node listening (2 loaded cores)
STOP_TIMEOUT = 20.0  # seconds for the demo to stop its nodes after SIGINT
POLL_INTERVAL = 0.5  # seconds between two rounds of getpeerinfo while waiting to settle
SUBNET_TRIES = 50

# Okabe-Ito colours, as in benchmarks/plots.py.
SEED_COLOUR, NODE_COLOUR, EDGE_COLOUR = "#E69F00", "#56B4E9", "#333333"


class GraphError(Exception):
    """The demo could not be started, did not settle, or did not stop; the message says why."""


# -- where the demo runs ---------------------------------------------------------------------------


def pick_subnet(nodes: int, rng: random.Random) -> str:
    """A first host 127.R.S.2 such that the demo's TCP ports and its seed's DNS port are all free."""
    for _ in range(SUBNET_TRIES):
        first = f"127.{rng.randint(100, 250)}.{rng.randint(100, 250)}.2"  # as the tests pick theirs
        hosts = [demo_host(first, index) for index in range(nodes)]
        if all(can_bind(host, PORT, socket.SOCK_STREAM) for host in hosts) and \
                can_bind(first, DEMO_DNS_PORT, socket.SOCK_DGRAM):
            return first
    raise GraphError(f"no free 127.R.S.0/24 subnet found in {SUBNET_TRIES} tries")


# -- the demo network, as `python node.py --demo N` ------------------------------------------------------


class Demo:
    """`python node.py --demo N --host FIRST` in its own process; stop() is its Ctrl-C."""

    def __init__(self, nodes: int, first_host: str, data_dir: Path) -> None:
        self.hosts = [demo_host(first_host, index) for index in range(nodes)]
        self.data_dir = data_dir
        self.output_path = data_dir / "demo.out"
        command = [sys.executable, str(ROOT / "node.py"), "--demo", str(nodes), "--host", first_host,
                   "--data-dir", str(data_dir), "--no-colour"]
        with open(self.output_path, "w") as output:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=ROOT)
        self.node_pids: list[int] = []

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_started(self, timeout: float) -> None:
        """Until the demo says how to join (every node listens); GraphError if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while "join with:" not in self.output():
            if self.process.poll() is not None:
                raise GraphError(f"node.py --demo exited with {self.process.returncode}:\n{self.output()[-1500:]}")
            if time.monotonic() > deadline:
                raise GraphError(f"the demo's nodes were not all listening after {timeout:g} s")
            time.sleep(0.1)  # a log file to poll: nothing to block on
        self.node_pids = self._children()

    def _children(self) -> list[int]:
        """The node processes the demo started: only needed if the demo itself has to be killed."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").glob("*"):
            try:
                pids += [int(pid) for pid in (task / "children").read_text().split()]
            except OSError:
                continue  # not Linux, or the thread ended meanwhile
        return pids

    def stop(self) -> list[str]:
        """SIGINT, as Ctrl-C; the problems seen (none when every node logged its clean stop)."""
        problems: list[str] = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"the demo did not stop within {STOP_TIMEOUT:g} s and was killed")
                self.process.kill()
                self.process.wait()
                self._kill_nodes()
        if self.process.returncode != 0:
            problems.append(f"the demo exited with {self.process.returncode}")
        for index, host in enumerate(self.hosts):
            log = self.data_dir / "demo" / f"node-{index + 1}.log"
            if not log.exists() or "[STOPPED] Node stopped." not in log.read_text(errors="replace"):
                problems.append(f"{host} did not log a clean stop ({log})")
        return problems

    def _kill_nodes(self) -> None:
        for pid in self.node_pids:  # each started by this demo, which is gone now
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- the graph ------------------------------------------------------------------------------------------


def host_of(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


@dataclass(frozen=True)
class PeerGraph:
    """Who dialled whom: one node per IP (every demo node listens on port 5050)."""

    hosts: tuple[str, ...]  # the seed first
    edges: frozenset[tuple[str, str]]  # (dialler, dialled)

    @classmethod
    def from_answers(cls, answers: dict[str, Sequence[PeerRow]]) -> "PeerGraph":
        """From every node's getpeerinfo: its outbound rows to nodes (clients such as ours have no services)."""
        edges = {(host, host_of(row.address)) for host, rows in answers.items() for row in rows
                 if row.direction == "outbound" and row.services & NODE_NETWORK}
        return cls(tuple(answers), frozenset(edges))

    def outbound(self, host: str) -> set[str]:
        return {dialled for dialler, dialled in self.edges if dialler == host}

    def inbound(self, host: str) -> set[str]:
        return {dialler for dialler, dialled in self.edges if dialled == host}

    def linked(self, host: str) -> set[str]:
        return self.outbound(host) | self.inbound(host)

    def connected(self) -> bool:
        """One component spanning every node, the arrows taken both ways."""
        seen, queue = {self.hosts[0]}, deque([self.hosts[0]])
        while queue:
            for other in self.linked(queue.popleft()) - seen:
                seen.add(other)
                queue.append(other)
        return seen >= set(self.hosts)

    def settled(self) -> bool:
        """Every node at its outbound target, and one component: what tests/network_tools.converged_check asks."""
        want = min(OUTBOUND, len(self.hosts) - 1)
        return self.connected() and all(len(self.outbound(host)) == want for host in self.hosts)

    def describe(self) -> str:
        return "\n".join(f"  {host:<16} {len(self.outbound(host))} out, {len(self.inbound(host))} in -> "
                         + ", ".join(sorted(self.outbound(host), key=octets)) for host in self.hosts)


def octets(host: str) -> tuple[int, ...]:
    return tuple(int(part) for part in host.split("."))


class Questions:
    """One chat-client connection per node (the demo's Monitor), kept open while we wait."""

    def __init__(self) -> None:
        self._monitors: dict[str, Monitor] = {}

    def peers(self, host: str) -> tuple[PeerRow, ...]:
        monitor = self._monitors.get(host) or self._monitors.setdefault(host, Monitor(host, PORT))
        try:
            answer = monitor.ask("getpeerinfo", PeerInfo)
        except (OSError, FrameError, ConnectionError, TimeoutError):
            self._monitors.pop(host).close()  # a new connection next round
            raise
        assert isinstance(answer, PeerInfo)
        return answer.peers

    def close(self) -> None:
        for monitor in self._monitors.values():
            monitor.close()


def wait_settled(questions: Questions, hosts: Sequence[str], timeout: float) -> PeerGraph:
    """Ask every node until the graph is settled and the same twice in a row."""
    deadline = time.monotonic() + timeout
    previous: PeerGraph | None = None
    last_problem = "no answers yet"
    while time.monotonic() < deadline:
        try:
            graph = PeerGraph.from_answers({host: questions.peers(host) for host in hosts})
        except (OSError, FrameError, ConnectionError, TimeoutError) as error:
            last_problem, graph = f"a node did not answer: {error}", None
        if graph is not None:
            if graph.settled() and graph == previous:
                return graph
            last_problem = f"not settled yet:\n{graph.describe()}"
        previous = graph
        time.sleep(POLL_INTERVAL)
    raise GraphError(f"the network did not settle within {timeout:g} s; last: {last_problem}")


# -- the picture ----------------------------------------------------------------------------------------


def circle_positions(hosts: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Evenly on a unit circle, the seed at the top and the others clockwise by address.

    The demo's graphs are dense (each node dials up to 8 others), so a circle
    shows every arrow apart, which a spring layout would only crowd.
    """
    ordered = [hosts[0], *sorted(hosts[1:], key=octets)]
    step = 2 * math.pi / len(ordered)
    return {host: (math.cos(math.pi / 2 - i * step), math.sin(math.pi / 2 - i * step))
            for i, host in enumerate(ordered)}


def node_radius(count: int) -> float:
    """Circles as large as fits: neighbours on the unit circle are 2 sin(pi / N) apart."""
    return min(0.14, 0.6 * math.sin(math.pi / max(count, 2)))


def draw_arrow(axes: Any, start: tuple[float, float], end: tuple[float, float], radius: float,
               both_ways: bool, dense: bool) -> None:
    """From the edge of one circle to the edge of the other; bent when the pair is linked both ways."""
    from matplotlib.patches import FancyArrowPatch

    dx, dy = end[0] - start[0], end[1] - start[1]
    length = math.hypot(dx, dy)
    ux, uy = dx / length, dy / length
    tail = (start[0] + ux * radius, start[1] + uy * radius)
    head = (end[0] - ux * radius * 1.08, end[1] - uy * radius * 1.08)
    axes.add_patch(FancyArrowPatch(tail, head, arrowstyle="-|>", mutation_scale=12 if dense else 16,
                                   linewidth=0.8 if dense else 1.4, alpha=0.7 if dense else 1.0,
                                   color=EDGE_COLOUR, shrinkA=0, shrinkB=0, zorder=1,
                                   connectionstyle=f"arc3,rad={0.18 if both_ways else 0.04}"))


def label_alignment(x: float, y: float) -> tuple[str, str]:
    """Text outside the circle, pushed away from the centre."""
    horizontal = "left" if x > 0.3 else "right" if x < -0.3 else "center"
    vertical = "bottom" if y > 0.3 else "top" if y < -0.3 else "center"
    return horizontal, vertical


def draw_graph(graph: PeerGraph, path: Path, caption: str) -> Path:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    pyplot = import_pyplot()
    figure, axes = pyplot.subplots(figsize=(8.6, 7.8))
    positions = circle_positions(graph.hosts)
    radius = node_radius(len(graph.hosts))
    dense = len(graph.edges) > 30  # thinner, lighter arrows, so that crossings stay apart
    for dialler, dialled in sorted(graph.edges):
        draw_arrow(axes, positions[dialler], positions[dialled], radius, (dialled, dialler) in graph.edges, dense)
    seed = graph.hosts[0]
    for host, (x, y) in positions.items():
        is_seed = host == seed
        axes.add_patch(Circle((x, y), radius, facecolor=SEED_COLOUR if is_seed else NODE_COLOUR,
                              edgecolor="black", linewidth=2.5 if is_seed else 1.2, zorder=2))
        axes.text(x, y, "." + host.rsplit(".", 1)[1], ha="center", va="center", fontsize=11, fontweight="bold",
                  zorder=3)
        horizontal, vertical = label_alignment(x, y)
        reach = 1 + radius + 0.06
        role = "DNS seed\n" if is_seed else ""
        axes.text(x * reach, y * reach, f"{host}:{PORT}\n{role}{len(graph.outbound(host))} out, "
                  f"{len(graph.inbound(host))} in", ha=horizontal, va=vertical, fontsize=9.5,
                  fontweight="bold" if is_seed else "normal", linespacing=1.3)
    axes.set_xlim(-2.0, 2.0)
    axes.set_ylim(-1.45, 1.55)
    axes.set_aspect("equal")
    axes.axis("off")
    count, links = len(graph.hosts), len(graph.edges)
    figure.text(0.04, 0.962, f"The demo network's peer graph: {count} nodes, {links} connections",
                fontsize=13, fontweight="bold")
    figure.text(0.04, 0.935, caption, fontsize=8.5, color="0.3")
    legend = [
        Line2D([], [], color=EDGE_COLOUR, marker=">", markersize=7, linewidth=1.4,
               label="A → B: A dialled B (an outbound connection of A, inbound at B)"),
        Line2D([], [], marker="o", linestyle="", markersize=12, markerfacecolor=SEED_COLOUR, markeredgecolor="black",
               markeredgewidth=2, label=f"the DNS seed: answers {DEMO_ZONE} with the nodes it knows"),
        Line2D([], [], marker="o", linestyle="", markersize=12, markerfacecolor=NODE_COLOUR, markeredgecolor="black",
               label="a node: knew only the seed's name at start, found the rest through addr messages"),
    ]
    figure.legend(handles=legend, loc="lower left", bbox_to_anchor=(0.04, 0.015), fontsize=8.5, frameon=False)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.12)
    return save(figure, path)


# -- running it -----------------------------------------------------------------------------------------


def load_text() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def run(nodes: int, out: Path, timeout: float, rng: random.Random) -> int:
    first = pick_subnet(nodes, rng)
    print(f"[GRAPH] load average {load_text()}; starting python node.py --demo {nodes} --host {first}", flush=True)
    started = time.monotonic()
    problems: list[str] = []

    def stop(demo: Demo) -> None:
        problems.extend(demo.stop())
        for problem in problems:
            print(f"[GRAPH] stop: {problem}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="peer-graph-") as tmp, ExitStack() as cleanup:
        demo = Demo(nodes, first, Path(tmp))
        cleanup.callback(stop, demo)
        demo.wait_started(START_TIMEOUT)
        questions = Questions()
        cleanup.callback(questions.close)  # before the demo stops: callbacks run last-in, first-out
        graph = wait_settled(questions, demo.hosts, timeout)
        settled_after = time.monotonic() - started
        print(f"[GRAPH] settled {settled_after:.1f} s after the start:\n{graph.describe()}", flush=True)
        caption = f"{RunInfo.now().caption()}; settled {settled_after:.0f} s after `node.py --demo {nodes}`"
    path = draw_graph(graph, out, caption)
    print(f"[GRAPH] stopped cleanly; load average {load_text()}" if not problems else "[GRAPH] stopped, see above")
    print(f"[PLOT] {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 1 if problems else 0


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start the demo network, draw its peer graph, stop it.")
    parser.add_argument("--nodes", type=int, default=5, help="nodes in the demo network (default 5, as --demo)")
    parser.add_argument("--out", type=Path, default=IMAGE_DIR / "demo-peer-graph.png", help="the PNG to write")
    parser.add_argument("--timeout", type=positive_seconds, default=120.0, metavar="SECONDS",
                        help="how long the network may take to settle (default 120)")
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 250:
        parser.error("--nodes takes 2 to 250")  # a graph needs two nodes; the demo takes up to 250
    try:
        import_pyplot()
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup: stop the demo
    try:
        return run(args.nodes, args.out, args.timeout, random.Random())
    except GraphError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
