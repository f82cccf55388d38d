"""Framing benchmark: what the 64-byte-header framing and the node cost, next to the physical limit.

    python benchmarks/framing_bench.py            # the full run: 5 repetitions, about a minute
    python benchmarks/framing_bench.py --quick    # 3 shorter repetitions, for a quick look

Three implementations of the same wire format (a 64-byte ASCII-decimal length
header padded with spaces, then the payload) are measured side by side:

- raw:     a minimal correct loop written here: one sendall(header + payload)
           per frame, exact reads through sock.makefile("rb").read(n), a thread
           per connection, listen backlog 4096. This is the practical limit.
- framing: the same loops, but framing with protocol.framing (encode_frame to
           send, FrameReader.read_frame to read) on both ends.
- node:    a real `python node.py` process, driven by the raw client, so its
           ratio to raw is the cost of the node's server side alone.

Why like this: absolute figures on a shared 2-core VM drift by +-15 % between
runs, so every implementation is measured in the same run, interleaved
(in short round-robin slices within each repetition, in an order that rotates
from one repetition to the next), and the ratios to raw are what count. Client and server always run in different processes (sharing one GIL
costs ~70 %) pinned to different CPUs, identically for all three. Raw and
framing servers are this same file started with --serve.

Every figure is the median over the repetitions, with its range. Everything
runs on 127.0.0.1, is bounded in count and time, and stops by itself.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Generic, Iterator, Sequence, TypeVar

from protocol.framing import HEADER, MAX_PAYLOAD, FrameError, FrameReader, encode_frame

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: benchmarks.plots writes the results file

from benchmarks import plots  # noqa: E402

HOST = "127.0.0.1"
LISTEN_BACKLOG = 4096  # the default (128) turns 1,000 quick connects into seconds of SYN retries
CONNECT_TIMEOUT = 5.0  # seconds for one TCP connect; reads carry no timeout (see Watchdog)
SERVER_START_TIMEOUT = 15.0  # seconds for a server to print its listening line
SERVER_LIFETIME = 900.0  # a --serve process exits after this even if nobody stops it
MEASUREMENT_LIMIT = 60.0  # seconds before the watchdog aborts one measurement
STREAM_BATCH = 256  # frames sent between two looks at the clock
SLICES = 5  # each repetition's one-way and ping time is taken in this many round-robin slices
THREADS_SETTLE = 1.0  # the thread count is defined as the count 1 s after all peers closed
SMALL, LARGE = 100, 10_000  # payload bytes of the one-way frames

Payload = bytes | str  # raw frames carry bytes; protocol.framing works on text
P = TypeVar("P", bytes, str)  # the payload type of one codec
T = TypeVar("T")


# -- the raw framing: the minimal correct loop -----------------------------------------


def raw_frame(payload: bytes) -> bytes:
    """Header and payload as one bytes object, so one sendall() writes the frame."""
    return str(len(payload)).encode("ascii").ljust(HEADER, b" ") + payload


def read_raw_frame(stream: BinaryIO) -> bytes | None:
    """The next payload; None at a clean end of stream. read(n) on a buffered stream is exact."""
    header = stream.read(HEADER)
    if not header:
        return None
    if len(header) < HEADER:
        raise ValueError("stream ended inside a header")
    length = int(header)  # ValueError for a header that is not a number
    if not 0 <= length <= MAX_PAYLOAD:  # read(-1) would read to the end of the stream
        raise ValueError(f"bad frame length {length}")
    payload = stream.read(length)
    if len(payload) < length:
        raise ValueError("stream ended inside a payload")
    return payload


@dataclass(frozen=True)
class Codec(Generic[P]):
    """One way to put payloads into frames and take them out again."""

    name: str
    make_frame: Callable[[P], bytes]
    reader: Callable[[BinaryIO], Callable[[], P | None]]  # stream -> "read one frame"
    payload: Callable[[str], P]  # this codec's payload for a text


def _same_text(text: str) -> str:
    return text


def raw_reader(stream: BinaryIO) -> Callable[[], bytes | None]:
    return functools.partial(read_raw_frame, stream)


def framing_reader(stream: BinaryIO) -> Callable[[], str | None]:
    return FrameReader(stream).read_frame


RAW: Codec[bytes] = Codec("raw", raw_frame, raw_reader, str.encode)
FRAMING: Codec[str] = Codec("framing", encode_frame, framing_reader, _same_text)
CODECS: dict[str, Codec[Any]] = {codec.name: codec for codec in (RAW, FRAMING)}


def as_text(payload: Payload) -> str:
    return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload


# -- the raw and framing servers (this file with --serve) ----------------------------------


def serve_sink(conn: socket.socket, stream: BinaryIO, codec: Codec) -> None:
    """Read frames until the client shuts its side, then answer with how many arrived."""
    read = codec.reader(stream)
    count = 0
    while read() is not None:
        count += 1
    conn.sendall(codec.make_frame(codec.payload(str(count))))


def serve_echo(conn: socket.socket, stream: BinaryIO, codec: Codec) -> None:
    """Answer every frame with a frame carrying the same payload."""
    read, send, make_frame = codec.reader(stream), conn.sendall, codec.make_frame
    while (payload := read()) is not None:
        send(make_frame(payload))


Handler = Callable[[socket.socket, BinaryIO, Codec], None]


def handle_connection(handler: Handler, conn: socket.socket, codec: Codec) -> None:
    """One connection's thread: run the handler, and close the socket however it ends."""
    with conn, conn.makefile("rb") as stream:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the node does
            handler(conn, stream, codec)
        except (OSError, ValueError, FrameError):
            pass  # a broken client only ends its own connection


def serve(codec_name: str) -> int:
    """Serve a sink and an echo port until stdin closes (the benchmark has gone) or the lifetime ends."""
    codec = CODECS[codec_name]
    handlers: dict[socket.socket, Handler] = {
        socket.create_server((HOST, 0), backlog=LISTEN_BACKLOG): serve_sink,
        socket.create_server((HOST, 0), backlog=LISTEN_BACKLOG): serve_echo,
    }
    sink, echo = (listener.getsockname()[1] for listener in handlers)
    print(f"[BENCH] {codec.name} server: sink on {HOST}:{sink}, echo on {HOST}:{echo}", flush=True)
    deadline = time.monotonic() + SERVER_LIFETIME
    with selectors.DefaultSelector() as selector:
        for listener, handler in handlers.items():
            selector.register(listener, selectors.EVENT_READ, (listener, handler))
        selector.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                if key.data is None:  # stdin
                    if not os.read(sys.stdin.fileno(), 1):  # EOF: the parent closed the pipe or died
                        return 0
                    continue
                listener, handler = key.data
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue  # the client gave up before we accepted
                threading.Thread(target=handle_connection, args=(handler, conn, codec), daemon=True).start()
    return 0


# -- server processes, seen from the benchmark ---------------------------------------------

BENCH_LISTENING = re.compile(r"\[BENCH\] \w+ server: sink on (\S+):(\d+), echo on (\S+):(\d+)")
NODE_LISTENING = re.compile(r"\[LISTENING\] Node is listening on (\S+):(\d+)")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Poll condition until it is truthy; TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return result


@contextmanager
def running_on(cpu: int) -> Iterator[None]:
    """Move the calling thread to cpu for the block: a process started inside inherits the placement."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Server:
    """A server process: its log file, its addresses, and its numbers from /proc."""

    def __init__(self, name: str, command: list[str], log_path: Path, listening: re.Pattern[str],
                 cpu: int) -> None:
        self.name = name
        self.log_path = log_path
        self._log_file = open(log_path, "w")
        with running_on(cpu):
            # stdout to a file, never an undrained pipe; stdin is a pipe whose EOF stops --serve.
            self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.PIPE, cwd=ROOT)
        try:
            match = wait_for(lambda: listening.search(self.log()) or self.process.poll() is not None,
                             SERVER_START_TIMEOUT, f"{name} to listen")
        except TimeoutError:
            self.stop()
            raise
        if not isinstance(match, re.Match):  # the process exited instead
            self.stop()
            raise RuntimeError(f"{name} exited with {self.process.returncode}:\n{self.log()[-2000:]}")
        groups = match.groups()
        self.sink = (groups[0], int(groups[1]))
        self.echo = (groups[-2], int(groups[-1]))  # the node serves both on one port

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, name: str) -> int:
        """A number from /proc/PID/status, e.g. 'VmRSS' (in kB) or 'Threads'."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        raise KeyError(name)

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the whole process, exited threads included."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def cpus(self) -> str:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split()[1]
        return "?"

    def stop(self) -> None:
        """SIGTERM (both the node and --serve stop on it), SIGKILL if that takes too long."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin:
            self.process.stdin.close()
        self._log_file.close()


def start_bench_server(codec: Codec, workdir: Path, cpu: int) -> Server:
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", codec.name]
    return Server(codec.name, command, workdir / f"{codec.name}.log", BENCH_LISTENING, cpu)


def start_node(workdir: Path, cpu: int) -> Server:
    data_dir = Path(tempfile.mkdtemp(prefix="node-", dir=workdir))
    # --outbound 0: the node must talk to the benchmark only, not dial its fallback seed
    # (127.0.0.2:5050, where someone's demo network may be running).
    command = [sys.executable, str(ROOT / "node.py"), "--port", "0", "--data-dir", str(data_dir),
               "--no-colour", "--max-inbound", "2000", "--outbound", "0"]
    return Server("node", command, data_dir.with_suffix(".log"), NODE_LISTENING, cpu)


# -- the client side ---------------------------------------------------------------------------


class Watchdog:
    """Shuts the watched sockets down if a measurement overruns, so no blocked read waits forever.

    The reads themselves carry no timeout on purpose: settimeout() on the
    reading socket costs ~37 % of one-way throughput at 100 B frames.
    """

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = seconds, what
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        self._sockets.append(sock)

    def _fire(self) -> None:
        self.fired = True
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or send
            except OSError:
                pass

    def __enter__(self) -> "Watchdog":
        self._timer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._timer.cancel()
        if self.fired:
            raise TimeoutError(f"{self.what} took longer than {self.seconds:g} s") from exc


class Connection:
    """A benchmark client's connection: blocking, framed with one codec."""

    def __init__(self, address: tuple[str, int], codec: Codec, watchdog: Watchdog) -> None:
        self.codec = codec
        self.sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
        watchdog.watch(self.sock)
        self.sock.settimeout(None)  # blocking again: the watchdog bounds the time instead
        self.stream = self.sock.makefile("rb")
        self.read = codec.reader(self.stream)

    def send(self, payload: Payload) -> None:
        self.sock.sendall(self.codec.make_frame(payload))

    def expect(self, text: str) -> None:
        reply = self.read()
        if reply is None or as_text(reply) != text:
            raise RuntimeError(f"expected {text!r}, got {reply!r}")

    def close(self) -> None:
        self.stream.close()  # the socket's fd closes only when its makefile is closed too
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Implementation:
    """A server to measure, and how the benchmark client talks to it."""

    name: str
    client: Codec  # the codec the benchmark client speaks to this server
    start: Callable[[Path, int], Server]
    greet: Callable[[Connection], None]  # before a one-way stream
    sink_replies: Callable[[int], list[str]]  # what must arrive after a stream of n frames and a FIN
    pong_for: Callable[[str], str]  # the answer to one ping payload


def no_greeting(conn: Connection) -> None:
    """The raw and framing sinks need none."""


def node_handshake(conn: Connection) -> None:
    """A node drops `pong` frames silently only after the handshake (`pong` before `version` is an error)."""
    conn.send(conn.codec.payload("version"))
    reply = conn.read()
    if reply is None or not as_text(reply).startswith("version"):
        raise RuntimeError(f"expected the node's version, got {reply!r}")
    conn.expect("verack")


def count_reply(frames: int) -> list[str]:
    """The raw and framing sinks answer a stream with the number of frames they read."""
    return [str(frames)]


def no_reply(frames: int) -> list[str]:
    """The node answers nothing after the stream: it closes when it has read everything."""
    return []


def without_keepalive(replies: list[str]) -> list[str]:
    """A node may ping a ready peer at any time (its keepalive); that is no answer to the stream."""
    return [reply for reply in replies if reply.partition(" ")[0] != "ping"]


def echoed(ping: str) -> str:
    return ping


def node_pong(ping: str) -> str:
    return "pong" + ping[len("ping"):]  # `ping {"nonce":N}` -> `pong {"nonce":N}`, as the node writes it


IMPLEMENTATIONS = (
    Implementation("raw", RAW, functools.partial(start_bench_server, RAW), no_greeting, count_reply, echoed),
    Implementation("framing", FRAMING, functools.partial(start_bench_server, FRAMING), no_greeting, count_reply,
                   echoed),
    Implementation("node", RAW, start_node, node_handshake, no_reply, node_pong),
)


def padded_pong(size: int) -> str:
    """A `pong` of exactly size bytes, padded with JSON whitespace.

    Every implementation streams this same payload. The node has no one-way
    sink command, but after a handshake it reads, decodes (UTF-8 and JSON),
    dispatches and drops a `pong` without answering: the closest honest
    one-way figure for it.
    """
    head, tail = 'pong {"nonce":1', "}"
    return head + " " * (size - len(head) - len(tail)) + tail


def ping_text(nonce: int) -> str:
    return f'ping {{"nonce":{nonce}}}'


def stream_frames(conn: Connection, payload: Payload, seconds: float) -> int:
    """Send frames of payload, one sendall each, for about `seconds`; the number sent."""
    send, make_frame = conn.sock.sendall, conn.codec.make_frame
    clock, end = time.perf_counter, time.perf_counter() + seconds
    sent = 0
    while clock() < end:
        for _ in range(STREAM_BATCH):
            send(make_frame(payload))
        sent += STREAM_BATCH
    return sent


def read_until_closed(conn: Connection) -> list[str]:
    replies = []
    while (reply := conn.read()) is not None:
        replies.append(as_text(reply))
    return replies


def ping_round_trips(conn: Connection, pings: Sequence[Payload], pongs: Sequence[Payload]) -> list[int]:
    """One frame out, one frame back, checked; the nanoseconds of every round trip."""
    send, make_frame, read, clock = conn.sock.sendall, conn.codec.make_frame, conn.read, time.perf_counter_ns
    times = []
    for ping, pong in zip(pings, pongs):
        start = clock()
        send(make_frame(ping))
        reply = read()
        times.append(clock() - start)
        if reply != pong:
            raise RuntimeError(f"expected {pong!r}, got {reply!r}")
    return times


# -- the measurements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OneWay:
    frames: int
    seconds: float
    server_cpu_seconds: float  # in 10 ms ticks, so a few percent coarse

    @property
    def rate(self) -> float:
        return self.frames / self.seconds

    @property
    def server_cpu_us(self) -> float:
        """Server CPU per frame: what the gap costs, less blurred by other work than the rate."""
        return self.server_cpu_seconds / self.frames * 1e6

    @classmethod
    def total(cls, parts: Sequence["OneWay"]) -> "OneWay":
        return cls(sum(p.frames for p in parts), sum(p.seconds for p in parts),
                   sum(p.server_cpu_seconds for p in parts))


@dataclass(frozen=True)
class PingPong:
    round_trip_ns: list[int]

    @property
    def rate(self) -> float:
        return len(self.round_trip_ns) / (sum(self.round_trip_ns) / 1e9)

    @property
    def median_us(self) -> float:
        return statistics.median(self.round_trip_ns) / 1000

    @classmethod
    def total(cls, parts: Sequence["PingPong"]) -> "PingPong":
        return cls([ns for part in parts for ns in part.round_trip_ns])


@dataclass(frozen=True)
class Crowd:
    peers: int
    seconds: float  # first connect to last answer
    rss_before_kb: int
    rss_during_kb: int
    threads_during: int
    threads_after: int

    @property
    def rss_per_peer_kb(self) -> float:
        return (self.rss_during_kb - self.rss_before_kb) / self.peers


def measure_one_way(impl: Implementation, server: Server, size: int, seconds: float) -> OneWay:
    """Stream frames of `size` bytes for `seconds`, then FIN; timed until the server has read them all."""
    payload = impl.client.payload(padded_pong(size))
    with Watchdog(MEASUREMENT_LIMIT, f"one-way {size} B to {impl.name}") as watchdog:
        with Connection(server.sink, impl.client, watchdog) as conn:
            impl.greet(conn)
            cpu, start = server.cpu_seconds(), time.perf_counter()
            sent = stream_frames(conn, payload, seconds)
            conn.sock.shutdown(socket.SHUT_WR)  # "that was all"; the FIN follows the last frame
            replies = without_keepalive(read_until_closed(conn))
            elapsed, cpu = time.perf_counter() - start, server.cpu_seconds() - cpu
    if replies != impl.sink_replies(sent):
        raise RuntimeError(f"{impl.name} answered {replies[:3]!r} after {sent} frames")
    return OneWay(sent, elapsed, cpu)


def measure_ping(impl: Implementation, server: Server, count: int) -> PingPong:
    codec = impl.client
    pings = [ping_text(nonce) for nonce in range(1, count + 1)]
    expected = [codec.payload(impl.pong_for(ping)) for ping in pings]
    with Watchdog(MEASUREMENT_LIMIT, f"{count} pings to {impl.name}") as watchdog:
        with Connection(server.echo, codec, watchdog) as conn:
            return PingPong(ping_round_trips(conn, [codec.payload(p) for p in pings], expected))


def one_ping(server: Server, impl: Implementation) -> None:
    """A warm-up peer: connect, one round trip, close."""
    with Watchdog(MEASUREMENT_LIMIT, f"a ping to {impl.name}") as watchdog:
        with Connection(server.echo, impl.client, watchdog) as conn:
            conn.send(impl.client.payload(ping_text(1)))
            conn.expect(impl.pong_for(ping_text(1)))


def connect_crowd(impl: Implementation, server: Server, peers: int, watchdog: Watchdog,
                  conns: list[Connection]) -> None:
    """Connect all peers first (a burst, as a crowd arrives), then one ping each, then read every pong."""
    for _ in range(peers):
        conns.append(Connection(server.echo, impl.client, watchdog))
    for nonce, conn in enumerate(conns, 1):
        conn.send(impl.client.payload(ping_text(nonce)))
    for nonce, conn in enumerate(conns, 1):
        conn.expect(impl.pong_for(ping_text(nonce)))


def measure_crowd(impl: Implementation, workdir: Path, cpu: int, peers: int) -> Crowd:
    """A fresh server, so its memory before the crowd is not memory freed by an earlier crowd."""
    server = impl.start(workdir, cpu)
    try:
        idle_threads = server.status("Threads")
        one_ping(server, impl)  # first-connection costs (imports, caches) are not per-peer costs
        wait_for(lambda: server.status("Threads") <= idle_threads, 5.0, f"{impl.name}'s warm-up thread to end")
        rss_before = server.status("VmRSS")
        conns: list[Connection] = []
        try:
            with Watchdog(MEASUREMENT_LIMIT, f"{peers} peers on {impl.name}") as watchdog:
                start = time.perf_counter()
                connect_crowd(impl, server, peers, watchdog, conns)
                elapsed = time.perf_counter() - start
            rss_during, threads_during = server.status("VmRSS"), server.status("Threads")
        finally:
            for conn in conns:
                conn.close()
        time.sleep(THREADS_SETTLE)  # not a readiness wait: the figure is defined 1 s after the close
        return Crowd(peers, elapsed, rss_before, rss_during, threads_during, server.status("Threads"))
    finally:
        server.stop()


# -- results and the report ---------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the report: a value per implementation and repetition."""

    title: str
    unit: str
    show: Callable[[float], str]
    with_ratio: bool = True  # a ratio of thread counts would say nothing
    samples: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def add(self, impl: str, value: float) -> None:
        self.samples.setdefault(impl, []).append(value)

    def fail(self, impl: str, reason: str) -> None:
        self.failures.setdefault(impl, []).append(reason)

    def median(self, impl: str) -> float | None:
        values = self.samples.get(impl)
        return statistics.median(values) if values else None

    def ratio(self, impl: str, baseline: str = "raw") -> float | None:
        value, base = self.median(impl), self.median(baseline)
        return value / base if value is not None and base else None

    def cell(self, impl: str) -> str:
        values = self.samples.get(impl)
        failed = len(self.failures.get(impl, []))
        if not values:
            return f"failed ({failed})" if failed else "n/a"
        text = self.show(statistics.median(values))
        if len(values) > 1:
            text += f" ({self.show(min(values))}–{self.show(max(values))})"
        if self.with_ratio and impl != "raw" and (ratio := self.ratio(impl)) is not None:
            text += f", {ratio:.2f}×"
        if failed:
            text += f", {failed} failed"
        return text


def show_rate(value: float) -> str:
    return f"{value / 1000:.1f}k" if value < 100_000 else f"{value / 1000:.0f}k"


def show_seconds(value: float) -> str:
    return f"{value:.2f} s"


def show_us(value: float) -> str:
    return f"{value:.0f} µs"


def show_us_fine(value: float) -> str:
    return f"{value:.2f} µs"


def show_kb(value: float) -> str:
    return f"{value:.1f} KB"


def show_count(value: float) -> str:
    return f"{value:.0f}"


def new_figures(peers: int) -> dict[str, Figure]:
    return {
        "one_way_small": Figure(f"one-way, {SMALL} B frames", "msgs/s", show_rate),
        "one_way_large": Figure(f"one-way, {LARGE // 1000} KB frames", "msgs/s", show_rate),
        "cpu_small": Figure(f"server CPU per {SMALL} B frame, one-way", "µs", show_us_fine),
        "cpu_large": Figure(f"server CPU per {LARGE // 1000} KB frame, one-way", "µs", show_us_fine),
        "ping": Figure("ping/pong round trips", "per s", show_rate),
        "ping_median": Figure("ping/pong median round trip", "µs", show_us),
        "crowd_seconds": Figure(f"{peers:,} peers: connect + one round trip each", "s", show_seconds),
        "rss_per_peer": Figure("server RSS per connection", "KB", show_kb),
        "threads_during": Figure(f"server threads while {peers:,} connected", "", show_count, False),
        "threads_after": Figure(f"server threads 1 s after all {peers:,} closed", "", show_count, False),
    }


@dataclass(frozen=True)
class Target:
    label: str
    figure: str
    impl: str
    bound: float
    at_least_ratio: bool  # True: ratio to raw >= bound; False: median <= bound

    def check(self, figures: dict[str, Figure]) -> tuple[str, bool]:
        figure = figures[self.figure]
        value = figure.ratio(self.impl) if self.at_least_ratio else figure.median(self.impl)
        if value is None:
            return "no data", False
        if self.at_least_ratio:
            return f"{value:.2f}× raw (target ≥ {self.bound:g}×)", value >= self.bound
        return f"{figure.show(value)} (target ≤ {figure.show(self.bound)})", value <= self.bound


TARGETS = (
    Target("framing module, one-way 100 B", "one_way_small", "framing", 0.8, True),
    Target("framing module, one-way 10 KB", "one_way_large", "framing", 0.8, True),
    Target("framing module, ping/pong", "ping", "framing", 0.8, True),
    Target("node, ping/pong round trips", "ping", "node", 0.8, True),
    Target("node, RSS per connection with 1,000 peers", "rss_per_peer", "node", 64.0, False),
)


NOTES = (
    "node rows use the raw client, so a node's ratio is the cost of its server side alone",
    "node one-way: it has no sink command, so after a handshake it is sent the same payload as a `pong` "
    "padded with JSON whitespace, which it reads, decodes (UTF-8 and JSON) and drops without answering: "
    "its inbound message rate, not a framing-only figure",
    "server CPU is user + system time of the server process per frame (10 ms ticks)",
)


def print_report(figures: dict[str, Figure], names: Sequence[str]) -> bool:
    """The table (Markdown, so it can be pasted into docs) and the targets; True when all are met."""
    print("\n| measurement | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for figure in figures.values():
        title = f"{figure.title} ({figure.unit})" if figure.unit else figure.title
        print(f"| {title} | " + " | ".join(figure.cell(name) for name in names) + " |")
    print("\nmedian (min–max) over the repetitions, ×: ratio of medians to raw from this run")
    for note in NOTES:
        print(f"- {note}")
    for key, figure in figures.items():
        for impl, reasons in figure.failures.items():
            print(f"  {key}/{impl} failed: {reasons[0]}")
    print("\nTargets:")
    all_met = True
    for target in TARGETS:
        text, met = target.check(figures)
        all_met &= met
        print(f"  {'PASS' if met else 'MISS'}  {target.label}: {text}")
    return all_met


def result_rows(figures: dict[str, Figure]) -> list[plots.Row]:
    """The report as rows for benchmarks/results/framing.json: every median, with its ratio to raw's."""
    ratio_targets = {(t.figure, t.impl): f"≥ {t.bound:g}×" for t in TARGETS if t.at_least_ratio}
    rows: list[plots.Row] = []
    for key, figure in figures.items():
        raw = figure.median("raw") if figure.with_ratio else None
        for impl in IMPLEMENTATIONS:
            value = figure.median(impl.name)
            if value is None:
                continue
            label = f"{impl.name}: {figure.title}"
            limit = raw if impl.name != "raw" else None
            rows.append(plots.Row.against(label, value, figure.unit, limit, "raw", ratio_targets.get((key, impl.name))))
    for target in TARGETS:  # a bound on the value itself becomes a row measured against that bound
        value = figures[target.figure].median(target.impl)
        if not target.at_least_ratio and value is not None:
            rows.append(plots.Row.against(f"{target.impl}: {target.label.split(', ', 1)[-1]}", value,
                                          figures[target.figure].unit, target.bound, "target bound", "≤ 1×"))
    return rows


def save_results(figures: dict[str, Figure]) -> None:
    """benchmarks/results/framing.json, then its figures in docs/img (when matplotlib is installed)."""
    path = plots.write_results(plots.Results("framing", plots.RunInfo.now(), result_rows(figures)))
    print(f"\nresults: {path.relative_to(ROOT)}")
    plots.main(["framing"])


# -- running it all ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    repetitions: int
    stream_seconds: float  # per one-way measurement
    pings: int  # round trips per ping measurement
    peers: int = 1000


def attempt(figure: Figure, impl: str, measure: Callable[[], T]) -> T | None:
    """Run one measurement; a failure is recorded in figure and reported, not fatal."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001  (one broken implementation must not hide the others)
        figure.fail(impl, f"{type(error).__name__}: {error}")
        return None


def rotated(items: Sequence[Implementation], by: int) -> list[Implementation]:
    """A different order every repetition, so no implementation always goes first."""
    by %= len(items)
    return list(items[by:]) + list(items[:by])


def in_slices(order: Sequence[Implementation], measure: Callable[[Implementation], T],
              figure: Figure) -> dict[str, list[T]]:
    """Measure each implementation SLICES times, round-robin, so a burst of other work hits all alike.

    An implementation whose slice fails is left out of this repetition.
    """
    parts: dict[str, list[T]] = {impl.name: [] for impl in order}
    for _ in range(SLICES):
        for impl in order:
            if impl.name in parts:
                result = attempt(figure, impl.name, functools.partial(measure, impl))
                if result is None:
                    del parts[impl.name]
                else:
                    parts[impl.name].append(result)
    return parts


def run_repetition(rep: int, settings: Settings, servers: dict[str, Server], figures: dict[str, Figure],
                   workdir: Path, server_cpu: int) -> None:
    """Every measurement once, each implementation in turn."""
    order = rotated(IMPLEMENTATIONS, rep)
    for key, cpu_key, size in (("one_way_small", "cpu_small", SMALL), ("one_way_large", "cpu_large", LARGE)):
        def one_way_slice(impl: Implementation) -> OneWay:
            return measure_one_way(impl, servers[impl.name], size, settings.stream_seconds / SLICES)

        for name, parts in in_slices(order, one_way_slice, figures[key]).items():
            one_way = OneWay.total(parts)
            figures[key].add(name, one_way.rate)
            figures[cpu_key].add(name, one_way.server_cpu_us)

    def ping_slice(impl: Implementation) -> PingPong:
        return measure_ping(impl, servers[impl.name], settings.pings // SLICES)

    for name, ping_parts in in_slices(order, ping_slice, figures["ping"]).items():
        ping = PingPong.total(ping_parts)
        figures["ping"].add(name, ping.rate)
        figures["ping_median"].add(name, ping.median_us)
    for impl in order:
        crowd = attempt(figures["crowd_seconds"], impl.name,
                        functools.partial(measure_crowd, impl, workdir, server_cpu, settings.peers))
        if crowd:
            figures["crowd_seconds"].add(impl.name, crowd.seconds)
            figures["rss_per_peer"].add(impl.name, crowd.rss_per_peer_kb)
            figures["threads_during"].add(impl.name, crowd.threads_during)
            figures["threads_after"].add(impl.name, crowd.threads_after)


def latest(figure: Figure, impl: str) -> str:
    values = figure.samples.get(impl)
    return figure.show(values[-1]) if values else "failed"


def print_progress(rep: int, settings: Settings, figures: dict[str, Figure]) -> None:
    parts = [f"{figures[key].title}: " + " / ".join(latest(figures[key], i.name) for i in IMPLEMENTATIONS)
             for key in ("one_way_small", "one_way_large", "ping", "crowd_seconds")]
    print(f"[{rep + 1}/{settings.repetitions}, load {os.getloadavg()[0]:.1f}] raw / framing / node  "
          + "; ".join(parts), flush=True)


def warm_up(servers: dict[str, Server]) -> None:
    """A short untimed pass, so the first repetition does not pay for cold caches."""
    for impl in IMPLEMENTATIONS:
        measure_one_way(impl, servers[impl.name], SMALL, 0.05)
        measure_ping(impl, servers[impl.name], 200)


def cpu_placement() -> tuple[int, int]:
    """(client CPU, server CPU): two different CPUs when there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], cpus[1] if len(cpus) > 1 else cpus[0]


def run(settings: Settings) -> bool:
    client_cpu, server_cpu = cpu_placement()
    os.sched_setaffinity(0, {client_cpu})  # threads started from here on inherit it
    figures = new_figures(settings.peers)
    print(f"epscoin {plots.source_commit()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; client on CPU {client_cpu}, every server on CPU {server_cpu}; "
          f"{settings.repetitions} repetitions", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="framing-bench-") as tmp:
        workdir = Path(tmp)
        servers: dict[str, Server] = {}
        try:
            for impl in IMPLEMENTATIONS:
                servers[impl.name] = impl.start(workdir, server_cpu)
            print("servers allowed on CPUs: " + ", ".join(f"{name} {s.cpus()}" for name, s in servers.items()))
            warm_up(servers)
            for rep in range(settings.repetitions):
                run_repetition(rep, settings, servers, figures, workdir, server_cpu)
                print_progress(rep, settings, figures)
        finally:
            for server in servers.values():
                server.stop()
    print(f"\n{time.monotonic() - started:.0f} s in all; load average at the end {os.getloadavg()[0]:.2f}")
    all_met = print_report(figures, [impl.name for impl in IMPLEMENTATIONS])
    save_results(figures)
    return all_met


DEFAULT = Settings(repetitions=5, stream_seconds=1.0, pings=5000)
QUICK = Settings(repetitions=3, stream_seconds=0.3, pings=1500)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Measure raw framing, protocol.framing and node.py side by side.")
    parser.add_argument("--quick", action="store_true", help="3 shorter repetitions instead of 5")
    parser.add_argument("--serve", choices=sorted(CODECS), help=argparse.SUPPRESS)  # internal: a server process
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # nothing to clean up in a server
        return serve(args.serve)
    all_met = run(QUICK if args.quick else DEFAULT)
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
