"""Options, the node under test, and the pass/fail table by section of docs/protocol.md.

    python -m pytest tests/conformance                       # starts this project's node.py itself
    python -m pytest tests/conformance --target HOST:PORT    # any implementation, already running

Options (group "protocol conformance" in `pytest --help`):

--target HOST:PORT               the node to check; without it the suite starts
                                 `python node.py --port 0 --data-dir TMP --no-fixed-seeds --outbound 0
                                 --handshake-timeout T --frame-timeout T` as a real process
--target-handshake-timeout S     the target's handshake timeout (§5.6); default 60 with --target,
                                 and the T given to the self-started node (default 1.5) without it
--target-frame-timeout S         the same for the frame timeout (§2.2, §8)
--target-max-inbound N           the target's --max-inbound: enables the "node full" check (§8)
                                 against --target (the self-started run uses its own node for it)
--reply-timeout S                how long an answer that needs no timer may take (default 2)
--conformance-report PATH        also write the results as JSON

Checks that need a node started with particular options (node full, a node that
dials us, a node without a role, an empty address book, short keepalive timers,
a ban, shutdown) start their own node.py when the suite runs without --target,
and are skipped against --target. Checks of a role the target says it does not
serve ("not served", §6.2) are skipped too.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .spec import SPEC_PATH, section_key, section_titles
from .wire import Listener, Peer, compact, handshake

ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = ROOT / "node.py"
SELF_STARTED_TIMEOUT = 1.5  # seconds; like tests/conftest.py gives every test node
DEFAULT_TARGET_TIMEOUT = 60.0  # the spec's defaults (§5.6, §8)
LISTENING = re.compile(r"\[LISTENING\] Node is listening on (\S+):(\d+)")

RESULTS = pytest.StashKey[dict]()


# -- options -------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("protocol conformance", "black-box checks of docs/protocol.md (tests/conformance)")
    if any("--target" in option.names() for option in group.options):
        return  # registered already (tests/conftest.py may import this hook so the whole suite knows the options)
    group.addoption("--target", metavar="HOST:PORT", default=None,
                    help="check this running node instead of starting this project's node.py")
    group.addoption("--target-handshake-timeout", type=float, metavar="S", default=None,
                    help="the target's handshake timeout (default 60 with --target; "
                         f"{SELF_STARTED_TIMEOUT} for the self-started node, which is given it)")
    group.addoption("--target-frame-timeout", type=float, metavar="S", default=None,
                    help="the target's frame timeout (defaults as for the handshake timeout)")
    group.addoption("--target-max-inbound", type=int, metavar="N", default=None,
                    help="the target's --max-inbound; enables the node-full check against --target")
    group.addoption("--reply-timeout", type=float, metavar="S", default=2.0,
                    help="how long an immediate answer may take (default 2)")
    group.addoption("--conformance-report", metavar="PATH", default=None,
                    help="write the conformance results as JSON to PATH")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "spec(section, title, level='MUST', also=()): "
                                       "the section of docs/protocol.md a conformance check tests")
    config.stash[RESULTS] = {}


# -- the node under test --------------------------------------------------------------


class NodeProcess:
    """This project's node.py in its own process (only when the suite runs without --target)."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.log_path = data_dir.with_suffix(".log")
        self.command = [sys.executable, str(NODE_SCRIPT), "--host", "127.0.0.1", "--port", "0",
                        "--data-dir", str(data_dir), "--no-colour", *args]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + 20
        while True:
            match = LISTENING.search(self.log())
            if match:
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"node.py did not start ({' '.join(self.command)}):\n{self.log()}")
            time.sleep(0.02)
        self.host, self.port = match.group(1), int(match.group(2))

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and the exit status (SIGKILL if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@dataclass
class Target:
    host: str
    port: int
    handshake_timeout: float
    frame_timeout: float
    reply_timeout: float
    max_inbound: int | None
    self_started: bool
    description: str
    node_args: tuple[str, ...] = ()
    _start: Callable[..., NodeProcess] | None = None
    _opened: list[Peer] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def timer_slack(self) -> float:
        """How late after a timeout the drop may come: the spec's check interval (§8), plus load."""
        return max(1.0, min(self.handshake_timeout, self.frame_timeout) / 4) + 1.0

    def start_node(self, *args: str) -> NodeProcess:
        """Another node.py with these extra options; only when this suite started the node itself."""
        if self._start is None:
            pytest.skip("needs a node started with particular options: runs only without --target")
        return self._start(*args)


def _parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise pytest.UsageError(f"--target must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    config = request.config
    reply_timeout = config.getoption("--reply-timeout")
    given_ht = config.getoption("--target-handshake-timeout")
    given_ft = config.getoption("--target-frame-timeout")
    started: list[NodeProcess] = []
    base = tmp_path_factory.mktemp("conformance")

    def start(*args: str) -> NodeProcess:
        ht = given_ht or SELF_STARTED_TIMEOUT
        ft = given_ft or SELF_STARTED_TIMEOUT
        node = NodeProcess(base / f"node{len(started)}", "--no-fixed-seeds", "--outbound", "0",
                           "--handshake-timeout", f"{ht:g}", "--frame-timeout", f"{ft:g}", *args)
        started.append(node)
        return node

    try:
        text = config.getoption("--target")
        if text:
            host, port = _parse_target(text)
            try:
                socket.create_connection((host, port), timeout=5).close()
            except OSError as error:
                pytest.exit(f"cannot connect to --target {text}: {error.strerror or error}", returncode=2)
            yield Target(host, port, given_ht or DEFAULT_TARGET_TIMEOUT, given_ft or DEFAULT_TARGET_TIMEOUT,
                         reply_timeout, config.getoption("--target-max-inbound"), False, f"--target {text}")
        else:
            node = start()
            yield Target(node.host, node.port, given_ht or SELF_STARTED_TIMEOUT, given_ft or SELF_STARTED_TIMEOUT,
                         reply_timeout, None, True, f"this project's node.py, started at {node.host}:{node.port}",
                         tuple(node.command[2:]), start)
    finally:
        for node in started:
            node.kill()


@pytest.fixture
def connect(target: Target) -> Iterator[Callable[..., Peer]]:
    """Open fresh connections to the target; all are closed after the check."""
    opened: list[Peer] = []

    def open_peer(address: tuple[str, int] | None = None, **kwargs) -> Peer:
        peer = Peer(address or target.address, reply_timeout=target.reply_timeout, **kwargs)
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


@pytest.fixture
def peer(connect) -> Peer:
    """A fresh connection that has not sent anything."""
    return connect(name="peer")


@pytest.fixture
def ready(connect) -> Peer:
    """A fresh connection past the handshake."""
    peer = connect(name="ready")
    handshake(peer)
    return peer


class Dialler:
    """A node.py started with --connect to listeners of our own: we see its outbound connections."""

    def __init__(self, target: Target, count: int, extra: tuple[str, ...]) -> None:
        self.target = target
        self.listeners = [Listener() for _ in range(count)]
        args = [arg for listener in self.listeners for arg in ("--connect", listener.address)]
        self.node = target.start_node(*args, *extra)
        self.conns: list[Peer] = []

    def accept(self, index: int = 0) -> tuple[Peer, float]:
        conn = self.listeners[index].accept(self.target.reply_timeout)
        self.conns.append(conn)
        return conn, time.monotonic()

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        for listener in self.listeners:
            listener.close()
        self.node.kill()


@pytest.fixture
def dialler(target: Target) -> Iterator[Callable[..., Dialler]]:
    """Start a node that dials `count` listeners of ours (only without --target)."""
    started: list[Dialler] = []

    def start(count: int = 1, *extra: str) -> Dialler:
        dialler = Dialler(target, count, extra)
        started.append(dialler)
        return dialler

    yield start
    for dialler in started:
        dialler.close()


@pytest.fixture
def fresh_node(target: Target, request: pytest.FixtureRequest) -> Iterator[Callable[..., tuple[str, int]]]:
    """A node with an empty address book and no other peers: a new node.py (only without --target)."""
    started: list[NodeProcess] = []

    def start(*extra: str) -> tuple[str, int]:
        node = target.start_node(*extra)
        started.append(node)
        return node.address

    yield start
    for node in started:
        node.kill()


@pytest.fixture(scope="session")
def shared_node(target: Target) -> Callable[..., tuple[str, int]]:
    """A node.py with these extra options, started once per session and shared (only without --target)."""
    nodes: dict[tuple[str, ...], NodeProcess] = {}

    def get(*extra: str) -> tuple[str, int]:
        if extra not in nodes:
            nodes[extra] = target.start_node(*extra)
        return nodes[extra].address

    return get  # the target fixture stops every node it started


def _probe_role(target: Target, command: str, expected: str) -> bool | None:
    """True if the target serves `command`, False if it says "not served" (§6.2), None if neither."""
    peer = Peer(target.address, reply_timeout=target.reply_timeout)
    try:
        handshake(peer)
        peer.send(command)
        msg = peer.next()
        if msg.word == expected:
            return True
        if msg.word == "error" and msg.get("command") == command:
            return False
        return None
    except (AssertionError, OSError):
        return None
    finally:
        peer.close()


@pytest.fixture(scope="session")
def routing_role(target: Target) -> bool | None:
    return _probe_role(target, "getnetworkinfo", "networkinfo")


@pytest.fixture
def needs_routing(routing_role) -> None:
    """Skip when the target answers the routing commands with "not served" (§4, §6.2)."""
    if routing_role is False:
        pytest.skip("the target does not run the routing role (it answers getnetworkinfo with 'not served')")


@pytest.fixture(scope="session")
def chat_role(target: Target) -> bool | None:
    return _probe_role(target, compact("chat", {"id": "conformanceprobe0", "from": "127.0.0.1:1", "text": "probe"}),
                       "ack")


@pytest.fixture
def needs_chat(chat_role) -> None:
    if chat_role is False:
        pytest.skip("the target does not run the chat role (it answers chat with 'not served')")


@pytest.fixture(scope="session")
def blockchain_role(target: Target) -> bool:
    """True when the node's version carries a genesis id, i.e. it runs a blockchain role (§4.1)."""
    peer = Peer(target.address, reply_timeout=target.reply_timeout)
    try:
        return bool(handshake(peer).get("genesis"))
    except (AssertionError, OSError):
        return False
    finally:
        peer.close()


@pytest.fixture(autouse=True)
def _cited_section_exists(request: pytest.FixtureRequest) -> None:
    """A check that cites a section the spec does not have fails: citations must stay true."""
    marker = request.node.get_closest_marker("spec")
    if marker is None:
        return
    titles = section_titles()
    if titles:
        for section in (marker.args[0], *marker.kwargs.get("also", ())):
            if section not in titles:
                pytest.fail(f"cites {section}, which {SPEC_PATH.name} does not have")


# -- results and the table -----------------------------------------------------------


def _message(report: pytest.TestReport, call: pytest.CallInfo) -> str:
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        return reason.removeprefix("Skipped: ")
    if call.excinfo is None:
        return ""
    value = call.excinfo.value
    if isinstance(value, (AssertionError, pytest.fail.Exception)):
        text = str(value).strip()
    else:
        text = f"{call.excinfo.typename}: {value}"
    text = text.splitlines()[0] if text else call.excinfo.typename
    return text[:400]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    marker = item.get_closest_marker("spec")
    if marker is None:
        return
    results = item.config.stash[RESULTS]
    record = results.setdefault(item.nodeid, {
        "nodeid": item.nodeid, "name": item.name, "section": marker.args[0], "title": marker.args[1],
        "level": marker.kwargs.get("level", "MUST"), "also": list(marker.kwargs.get("also", ())),
        "outcome": "passed", "message": "", "duration": 0.0})
    record["duration"] = round(record["duration"] + report.duration, 4)
    if report.when == "call" or report.failed or report.skipped:
        if report.when == "call" or record["outcome"] == "passed":
            if report.failed:
                record["outcome"] = "failed" if report.when == "call" else "error"
            elif report.skipped:
                record["outcome"] = "skipped"
            else:
                record["outcome"] = "passed"
            if report.failed or report.skipped:
                record["message"] = _message(report, call)


def _target_line(config: pytest.Config) -> str:
    text = config.getoption("--target")
    return f"--target {text}" if text else "this project's node.py (self-started)"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--conformance-report")
    results = session.config.stash.get(RESULTS, {})
    if path and results:
        Path(path).write_text(json.dumps({"target": _target_line(session.config),
                                          "checks": list(results.values())}, indent=1, ensure_ascii=False))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS, {})
    if not results:
        return
    titles = section_titles()
    by_section: dict[str, list[dict]] = {}
    for record in results.values():
        by_section.setdefault(record["section"], []).append(record)
    tr = terminalreporter
    tr.section(f"protocol conformance by section of docs/protocol.md: {_target_line(config)}")
    tr.write_line(f"{'section':<8} {'title':<44} {'pass':>5} {'fail':>5} {'skip':>5}  levels")
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for section in sorted(by_section, key=section_key):
        records = by_section[section]
        counts = {k: sum(1 for r in records if (r["outcome"] == k or (k == "failed" and r["outcome"] == "error")))
                  for k in totals}
        for k in totals:
            totals[k] += counts[k]
        levels = ",".join(sorted({r["level"] for r in records}, key=["MUST", "SHOULD", "stated"].index))
        mark = "FAIL" if counts["failed"] else ("ok" if counts["passed"] else "-")
        title = titles.get(section, "")[:44]
        tr.write_line(f"{section:<8} {title:<44} {counts['passed']:>5} {counts['failed']:>5} "
                      f"{counts['skipped']:>5}  {levels:<16} {mark}", red=bool(counts["failed"]),
                      green=not counts["failed"] and bool(counts["passed"]))
    tr.write_line(f"{'total':<8} {'':<44} {totals['passed']:>5} {totals['failed']:>5} {totals['skipped']:>5}")
    failed = [r for r in results.values() if r["outcome"] in ("failed", "error")]
    if failed:
        tr.write_line("")
        tr.write_line("failed checks:")
        for r in sorted(failed, key=lambda r: section_key(r["section"])):
            tr.write_line(f"  {r['section']:<6} [{r['level']}] {r['title']}", red=True)
            tr.write_line(f"         {r['name']}: {r['message']}")
