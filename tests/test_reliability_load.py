"""Load against a live node: slowloris peers, and one peer flooding full-size frames.

Slowloris: 500 peers each trickle a frame header, one byte a second. The node
gives each its own thread and waits; the frame timeout (§2.2, §8) then drops
them all with `error "frame timeout: ..."`, 64 bytes never having arrived.
Meanwhile a fresh peer still completes its handshake in under a second, as
long as --max-inbound leaves it a slot. When the tricklers hold every slot,
the newcomer is refused with "node full" until the frame timeout frees them:
the node has no eviction, so the lockout lasts up to one frame timeout.

Flood: one peer sends 80 frames of exactly MAX_PAYLOAD bytes as fast as it
can. Another peer's ping round trip stays under a second throughout, and the
node's resident memory stays within a bound that does not grow with the
number of frames: a frame is read, handled and dropped before the next.

Figures (handshake times, ping round trips, RSS) are printed at the end of the run.
"""

from __future__ import annotations

import resource
import select
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

from protocol.framing import MAX_PAYLOAD, encode_frame
from protocol.messages import Ack, Error, Pong, Version, decode_message

from tests.node_tools import LogTail, close_all, connect_many, hang_up, raise_open_file_limit, recv_frame, send_frame
from tests.support import NodeProcess, WireClient, wait_until

TRICKLERS = 500
TRICKLE_INTERVAL = 1.0  # seconds between two bytes of one trickler: slowloris's pace
TRICKLE_FRAME_TIMEOUT = 4.0  # seconds: long enough to watch the node serve others meanwhile
HANDSHAKE_BOUND = 1.0  # seconds a fresh peer may take from connect to verack
PING_BOUND = 1.0  # seconds a watcher's ping may take during the flood
TIMER_SLACK = 2.0  # seconds beyond the timeout and one housekeeping interval, for a loaded 2-core box
# Every trickler is dropped by the frame timeout, never by the handshake timeout; no discovery threads.
SLOWLORIS_ARGS = ("--frame-timeout", str(TRICKLE_FRAME_TIMEOUT), "--handshake-timeout", "60", "--outbound", "0")
HOUSEKEEPING = min(1.0, TRICKLE_FRAME_TIMEOUT / 4)  # node.py checks timeouts this often
FLOOD_FRAMES = 80


def rss_bound_kb(frames_in_flight: int) -> int:
    """How far the node's RSS may rise while peers each have one full-size frame in flight.

    A frame costs its bytes, their text, and what the JSON holds (at most one
    more copy, for a body of one big string): three MAX_PAYLOADs. Twice that
    leaves room for the allocator keeping a freed frame's memory for the next.
    A flood sends 80 MAX_PAYLOADs, so keeping even one frame in eight crosses it.
    """
    return frames_in_flight * 6 * MAX_PAYLOAD // 1024


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    with open("/proc/loadavg") as file:
        return ", ".join(file.read().split()[:3])


@dataclass
class Figures:
    """Measured values, printed in pytest's terminal summary."""

    load_at_start: str = field(default_factory=load_average)
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)
        print(line)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.lines:
            terminalreporter.section("reliability: load")
            terminalreporter.write_line(f"load average at the start: {self.load_at_start}; "
                                        f"at the end: {load_average()}")
            for line in self.lines:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def figures(pytestconfig: pytest.Config) -> Iterator[Figures]:
    figures = Figures()
    old = pytestconfig.pluginmanager.get_plugin("reliability-load")
    if old is not None:
        pytestconfig.pluginmanager.unregister(old)
    pytestconfig.pluginmanager.register(figures, "reliability-load")
    yield figures


@pytest.fixture
def open_files():
    """Room for 500 sockets here and 500 in the node, which inherits the limit."""
    old = raise_open_file_limit(4 * TRICKLERS)
    yield
    if old is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def spread(values: list[float]) -> str:
    """max, median and count of a list of seconds, in milliseconds."""
    return f"max {max(values) * 1000:.1f} ms, median {statistics.median(values) * 1000:.1f} ms, n={len(values)}"


# -- slowloris ------------------------------------------------------------------------------------------


class Trickler:
    """Writes the next byte of a frame header to each socket once a second, until the node answers it."""

    def __init__(self, socks: list[socket.socket], data: bytes) -> None:
        self.socks, self.data = socks, data
        self.sent = [0] * len(socks)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        for sock in self.socks:
            poller.register(sock, select.POLLIN)
        answered: set[int] = set()
        while not self._stop.is_set():
            answered |= {fd for fd, _ in poller.poll(0)}  # the node said something (or closed): stop
            for index, sock in enumerate(self.socks):
                if sock.fileno() in answered or self.sent[index] >= len(self.data):
                    continue
                try:
                    sock.send(self.data[self.sent[index]:self.sent[index] + 1])
                    self.sent[index] += 1
                except OSError:
                    answered.add(sock.fileno())
            self._stop.wait(TRICKLE_INTERVAL)  # the attacker's pace, not a wait for the node

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def answer_times(socks: list[socket.socket], started: float, timeout: float, between: Callable[[], None],
                 until: Callable[[], bool] = lambda: False, expected: int | None = None) -> dict[int, float]:
    """Seconds after `started` at which each socket became readable (the node answered or closed it).

    Calls `between()` (a handshake sample) between polls, until `expected`
    sockets (by default all) have answered, `until()` is true, or the timeout passes.
    """
    expected = len(socks) if expected is None else expected
    poller = select.poll()
    by_fd = {sock.fileno(): index for index, sock in enumerate(socks)}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    times: dict[int, float] = {}
    deadline = started + timeout
    while len(times) < expected and not until() and time.monotonic() < deadline:
        for fd, _ in poller.poll(50):
            if by_fd[fd] not in times:
                times[by_fd[fd]] = time.monotonic() - started
                poller.unregister(fd)
        between()
    return times


def timed_handshake(node: NodeProcess) -> tuple[float, str | None]:
    """Connect and handshake; seconds to the verack, or the refusal's reason."""
    started = time.monotonic()
    peer = WireClient(node.address, timeout=5)
    try:
        peer.send_message(Version(user_agent="/newcomer/"))
        first = peer.recv_message()
        if isinstance(first, Error):
            return time.monotonic() - started, first.reason
        assert isinstance(first, Version), first
        assert peer.recv() == "verack"
        return time.monotonic() - started, None
    finally:
        hang_up(peer)


def ready(socks: list[socket.socket]) -> None:
    """Handshake on each socket (versions first, then the answers), as a chat client."""
    for sock in socks:
        send_frame(sock, Version(user_agent="/slowloris/").encode())
    for sock in socks:
        assert isinstance(decode_message(recv_frame(sock)), Version)
        assert recv_frame(sock) == "verack"


def expect_frame_timeouts(socks: list[socket.socket], wait: float = TIMER_SLACK) -> None:
    """Every socket gets `error "frame timeout: ..."` within `wait` seconds, then the end of the stream."""
    for index, sock in enumerate(socks):
        sock.settimeout(wait)
        error = decode_message(recv_frame(sock))
        assert isinstance(error, Error) and error.reason.startswith("frame timeout"), f"trickler {index}: {error}"
        assert sock.recv(1) == b"", f"trickler {index} was not closed after its frame timeout"


# A ping's header: 64 bytes that take a trickler 64 s to send, far beyond the frame timeout.
PING_HEADER = encode_frame('ping {"nonce":1}')[:64]


@pytest.mark.timeout(90)
def test_a_fresh_peer_handshakes_in_under_1_s_while_500_peers_trickle_headers_until_the_frame_timeout_drops_them(
        open_files, start_node, figures):
    node = start_node("--max-inbound", str(TRICKLERS + 100), *SLOWLORIS_ARGS)
    baseline = node.status("Threads")
    tail = LogTail(node)
    socks = connect_many(node.address, TRICKLERS)
    trickler = None
    try:
        ready(socks[:TRICKLERS // 2])  # half are ready peers, half never send a version
        wait_until(lambda: node.status("Threads") == baseline + TRICKLERS, timeout=15,
                   message="a thread for each trickler")
        trickler = Trickler(socks, PING_HEADER)
        samples: list[tuple[float, float]] = []  # (seconds into the trickle, seconds to verack)

        def sample() -> None:
            at = time.monotonic() - trickler.started
            took, refused = timed_handshake(node)
            assert refused is None, f"a fresh peer was refused while slots were free: {refused}"
            samples.append((at, took))

        dropped = answer_times(socks, trickler.started, TRICKLE_FRAME_TIMEOUT + HOUSEKEEPING + TIMER_SLACK + 5,
                               between=sample)
        trickler.stop()
        assert len(dropped) == TRICKLERS, f"only {len(dropped)} of {TRICKLERS} tricklers were dropped"
        expect_frame_timeouts(socks)
        first, last = min(dropped.values()), max(dropped.values())
        handshakes = [took for at, took in samples if at + took < first]  # while all 500 held on
        assert first >= TRICKLE_FRAME_TIMEOUT - 0.1, f"a trickler was dropped after {first:.2f} s, before the timeout"
        assert last <= TRICKLE_FRAME_TIMEOUT + HOUSEKEEPING + TIMER_SLACK, f"the last trickler went after {last:.2f} s"
        assert max(trickler.sent) < len(PING_HEADER), "a trickler finished its header"
        assert len(handshakes) >= 10, f"only {len(handshakes)} handshakes while the tricklers held on"
        assert max(handshakes) < HANDSHAKE_BOUND, \
            f"a handshake took {max(handshakes):.2f} s during the trickle: {spread(handshakes)}"
    finally:
        if trickler is not None:
            trickler.stop()
        close_all(socks)
    wait_until(lambda: node.status("Threads") == baseline, timeout=5,
               message=f"the node's threads to return to {baseline} (now {node.status('Threads')})")
    assert tail.search("Traceback") is None, node.log()[-3000:]
    figures.add(f"slowloris: {TRICKLERS} tricklers ({TRICKLERS // 2} after a handshake) at 1 byte/s, "
                f"--frame-timeout {TRICKLE_FRAME_TIMEOUT:g}: each sent at most {max(trickler.sent)} of 64 header "
                f"bytes and was dropped {first:.2f} to {last:.2f} s after its first byte")
    figures.add(f"slowloris: fresh handshakes meanwhile: {spread(handshakes)}")


@pytest.mark.timeout(90)
def test_tricklers_filling_max_inbound_lock_a_newcomer_out_with_node_full_for_at_most_one_frame_timeout(
        open_files, start_node, figures):
    max_inbound = 125  # the default, as Bitcoin's
    node = start_node("--max-inbound", str(max_inbound), *SLOWLORIS_ARGS)
    baseline = node.status("Threads")
    socks = connect_many(node.address, TRICKLERS)
    trickler = None
    try:
        # The accept thread refuses all beyond max_inbound at once, with a reason.
        refused = answer_times(socks, time.monotonic(), 0.5 + TIMER_SLACK, between=lambda: None,
                               expected=TRICKLERS - max_inbound)
        assert len(refused) == TRICKLERS - max_inbound, f"{len(refused)} refused, expected {TRICKLERS - max_inbound}"
        for index in refused:
            reply = decode_message(recv_frame(socks[index]))
            assert isinstance(reply, Error) and reply.reason == "node full", reply
        holders = [sock for index, sock in enumerate(socks) if index not in refused]
        wait_until(lambda: node.status("Threads") == baseline + max_inbound, timeout=15,
                   message="a thread for each admitted trickler")
        trickler = Trickler(holders, PING_HEADER)
        refusals: list[float] = []
        admitted: list[float] = []  # seconds after the trickle began

        def attempt() -> None:
            took, reason = timed_handshake(node)
            if reason is None:
                admitted.append(time.monotonic() - trickler.started)
                assert took < HANDSHAKE_BOUND, f"the newcomer's handshake took {took:.2f} s"
            else:
                assert reason == "node full", reason
                refusals.append(took)

        answer_times(holders, trickler.started, TRICKLE_FRAME_TIMEOUT + HOUSEKEEPING + TIMER_SLACK + 5,
                     between=attempt, until=lambda: bool(admitted))
        trickler.stop()
        assert admitted, "the newcomer was never admitted"
        lockout = admitted[0]
        assert refusals, "the newcomer was never refused: the tricklers did not fill the slots"
        assert max(refusals) < HANDSHAKE_BOUND, f"a refusal took {max(refusals):.2f} s"
        assert TRICKLE_FRAME_TIMEOUT - 0.1 <= lockout <= TRICKLE_FRAME_TIMEOUT + HOUSEKEEPING + TIMER_SLACK, \
            f"locked out for {lockout:.2f} s with --frame-timeout {TRICKLE_FRAME_TIMEOUT:g}"
        expect_frame_timeouts(holders, wait=TRICKLE_FRAME_TIMEOUT + TIMER_SLACK)  # some may still be going
    finally:
        if trickler is not None:
            trickler.stop()
        close_all(socks)
    wait_until(lambda: node.status("Threads") == baseline, timeout=5,
               message=f"the node's threads to return to {baseline} (now {node.status('Threads')})")
    figures.add(f"slowloris, --max-inbound {max_inbound}: {TRICKLERS - max_inbound} of {TRICKLERS} refused at once; "
                f"a newcomer was refused 'node full' {len(refusals)} times ({spread(refusals)}) "
                f"and admitted {lockout:.2f} s after the trickle began")


# -- flood -----------------------------------------------------------------------------------------------


def exactly_max_payload(prefix: str, suffix: str) -> str:
    """prefix + x... + suffix, MAX_PAYLOAD bytes of ASCII in all."""
    return prefix + "x" * (MAX_PAYLOAD - len(prefix) - len(suffix)) + suffix


@dataclass(frozen=True)
class FloodKind:
    name: str
    payload: Callable[[int], str]  # frame number -> MAX_PAYLOAD bytes of text
    answer: Callable[[object], bool]  # is this the answer it must get?


FLOOD_KINDS = (
    # A valid chat line with a 4 MB field it ignores: acknowledged, and relayed without the padding.
    FloodKind("chat", lambda n: exactly_max_payload(f'chat {{"from":"127.0.0.1:1","id":"flood{n}","pad":"',
                                                    f'","text":"flood line {n}"}}'),
              lambda m: isinstance(m, Ack)),
    # A valid ping with a 4 MB field: answered with its pong.
    FloodKind("ping", lambda n: exactly_max_payload(f'ping {{"nonce":{n},"pad":"', '"}'),
              lambda m: isinstance(m, Pong)),
    # A typed line of 4 MB: chat text longer than 1,000 characters.
    FloodKind("line", lambda n: exactly_max_payload("", ""),
              lambda m: isinstance(m, Error) and m.about == "chat"),
    # Junk JSON: a getblock with neither id nor height, only 4 MB of padding. Parsed, then refused;
    # worth no misbehaviour points (a 4 MB id would be worth 10, and ten of them a disconnect).
    FloodKind("junk", lambda n: exactly_max_payload('getblock {"pad":"', '"}'),
              lambda m: isinstance(m, Error) and m.about == "getblock"),
)


class Flooder:
    """Sends frames back to back on one connection, and collects the answers on another thread."""

    def __init__(self, peer: WireClient, payloads: Iterator[str], expected: int) -> None:
        self.peer, self.expected = peer, expected
        self.answers: list[object] = []
        self.send_error: OSError | None = None
        self.sent_at: list[float] = []
        peer.sock.settimeout(60)
        self._sender = threading.Thread(target=self._send, args=(payloads,), name="flood-send", daemon=True)
        self._reader = threading.Thread(target=self._read, name="flood-read", daemon=True)
        self.started = time.monotonic()
        self._reader.start()
        self._sender.start()

    def _send(self, payloads: Iterator[str]) -> None:
        try:
            for payload in payloads:
                self.peer.sock.sendall(encode_frame(payload))  # one 4 MB frame at a time, made just in time
                self.sent_at.append(time.monotonic())
        except OSError as error:
            self.send_error = error

    def _read(self) -> None:
        while len(self.answers) < self.expected:
            text = self.peer.reader.read_frame()
            if text is None:
                return
            self.answers.append(decode_message(text))

    @property
    def done(self) -> bool:
        return len(self.answers) >= self.expected or not self._reader.is_alive()

    def join(self) -> None:
        self._sender.join(timeout=30)
        self._reader.join(timeout=30)


class RssSampler:
    """Reads the node's VmRSS every 10 ms on a thread of this process, so a node that holds its
    GIL (and so cannot answer pings) is still measured."""

    INTERVAL = 0.01

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.samples_kb: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            try:
                self.samples_kb.append(self.node.status("VmRSS"))
            except (FileNotFoundError, ProcessLookupError):
                return  # the node is gone; the test says so

    def stop(self) -> int:
        """The peak, in kB."""
        self._stop.set()
        self._thread.join(timeout=5)
        return max(self.samples_kb, default=self.node.status("VmRSS"))


def ping_until(watcher: WireClient, until: Callable[[], bool], timeout: float) -> list[float]:
    """The watcher's ping round trips, back to back, until a flood is over."""
    rtts: list[float] = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"the flood was not handled within {timeout} s"
        started = time.monotonic()
        watcher.sync_ping(nonce=len(rtts), timeout=30)  # measured, then checked against PING_BOUND
        rtts.append(time.monotonic() - started)
    return rtts


@pytest.mark.timeout(120)
def test_a_flood_of_80_full_size_frames_keeps_another_peers_ping_under_1_s_and_rss_bounded(start_node, figures):
    node = start_node("--frame-timeout", "30", "--outbound", "0")
    tail = LogTail(node)
    with node.connect() as watcher, node.connect(timeout=60) as flood_peer:
        watcher.handshake(user_agent="/watcher/")
        flood_peer.handshake(user_agent="/flooder/")
        watcher.sync_ping()
        baseline_kb = node.status("VmRSS")
        bound_kb = rss_bound_kb(1)
        rss = RssSampler(node)
        kinds = [FLOOD_KINDS[n % len(FLOOD_KINDS)] for n in range(FLOOD_FRAMES)]
        flooder = Flooder(flood_peer, (kind.payload(n) for n, kind in enumerate(kinds)), FLOOD_FRAMES)
        rtts = ping_until(watcher, until=lambda: flooder.done, timeout=90)
        flooder.join()
        seconds = time.monotonic() - flooder.started
        peak_kb = rss.stop()
        assert flooder.send_error is None, f"the node cut the flooder off: {flooder.send_error}"
        assert len(flooder.answers) == FLOOD_FRAMES, f"{len(flooder.answers)} answers to {FLOOD_FRAMES} frames"
        for n, (kind, answer) in enumerate(zip(kinds, flooder.answers)):
            assert kind.answer(answer), f"frame {n} ({kind.name}) got {answer}"
        watcher.sync_ping(timeout=PING_BOUND)  # and the watcher is still served
    assert node.process.poll() is None
    assert tail.search("Traceback") is None, node.log()[-3000:]
    figures.add(f"flood: {FLOOD_FRAMES} frames of {MAX_PAYLOAD:,} bytes "
                f"({', '.join(k.name for k in FLOOD_KINDS)}) in {seconds:.1f} s "
                f"({FLOOD_FRAMES * MAX_PAYLOAD / seconds / 1e6:.0f} MB/s); watcher ping {spread(rtts)}")
    figures.add(f"flood: node VmRSS {baseline_kb / 1024:.0f} MB before, peak {peak_kb / 1024:.0f} MB "
                f"(+{(peak_kb - baseline_kb) / 1024:.0f} MB, bound +{bound_kb / 1024:.0f} MB), "
                f"{node.status('VmRSS') / 1024:.0f} MB after")
    assert len(rtts) >= 10, f"only {len(rtts)} pings during the flood"
    assert max(rtts) < PING_BOUND, f"the watcher's ping took up to {max(rtts):.2f} s: {spread(rtts)}"
    assert peak_kb - baseline_kb < bound_kb, \
        f"RSS grew by {(peak_kb - baseline_kb) / 1024:.0f} MB during the flood (bound {bound_kb / 1024:.0f} MB)"


NESTERS = 2  # peers sending one such frame each, at once


def nested_empty_arrays() -> str:
    """A valid ping whose ignored field is 4 MB of empty arrays, 1.3 million lists once parsed:
    MAX_PAYLOAD bytes of `ping {"nonce":1,"pad":[[],[],...,[]]}`."""
    prefix, suffix = 'ping {"nonce":1,"pad":[', "[]]}"
    count = (MAX_PAYLOAD - len(prefix) - len(suffix)) // 3
    return exactly_max_payload(prefix + "[]," * count, suffix).replace("x", " ")  # JSON allows the spaces


@pytest.mark.timeout(120)
def test_frames_of_nested_empty_arrays_from_two_peers_keep_another_peers_ping_under_1_s_and_rss_bounded(
        start_node, figures):
    node = start_node("--frame-timeout", "30", "--outbound", "0")
    payload = nested_empty_arrays()
    assert len(payload.encode()) == MAX_PAYLOAD
    peers = [node.connect(timeout=60) for _ in range(NESTERS)]
    bound_kb = rss_bound_kb(NESTERS)
    with node.connect() as watcher:
        try:
            watcher.handshake(user_agent="/watcher/")
            for peer in peers:
                peer.handshake(user_agent="/nester/")
            watcher.sync_ping()
            baseline_kb = node.status("VmRSS")
            rss = RssSampler(node)
            flooders = [Flooder(peer, iter([payload]), 1) for peer in peers]
            rtts = ping_until(watcher, until=lambda: all(f.done for f in flooders), timeout=90)
            peak_kb = rss.stop()
            for flooder in flooders:
                flooder.join()
                # Answered either way: a pong today, an error once such bodies are refused before parsing.
                assert len(flooder.answers) == 1 and isinstance(flooder.answers[0], (Pong, Error)), flooder.answers
        finally:
            for peer in peers:
                peer.close()
    figures.add(f"nested empty arrays: {NESTERS} peers x 1 frame; watcher ping {spread(rtts)}; node VmRSS "
                f"+{(peak_kb - baseline_kb) / 1024:.0f} MB at the peak (bound +{bound_kb / 1024:.0f} MB)")
    assert max(rtts) < PING_BOUND, f"the watcher's ping took up to {max(rtts):.2f} s: {spread(rtts)}"
    assert peak_kb - baseline_kb < bound_kb, f"RSS grew by {(peak_kb - baseline_kb) / 1024:.0f} MB"
