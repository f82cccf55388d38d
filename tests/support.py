"""Test support: a node in a real process, a raw wire client, and wait_until.

Tests talk to nodes over real sockets on 127.0.0.1 and wait on conditions with
a timeout, never on fixed sleeps.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from protocol.framing import HEADER, FrameReader, encode_frame
from protocol.messages import Message, Version, decode_message

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
LISTENING = re.compile(r"\[LISTENING\] Node is listening on (\S+):(\d+)")


def wait_until(condition: Callable[[], T], timeout: float = 5.0, interval: float = 0.01,
               message: str = "condition") -> T:
    """Poll condition until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


class NodeProcess:
    """`python node.py` in its own process, logging to a file the test can read."""

    def __init__(self, data_dir: Path, *args: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.command = [sys.executable, str(ROOT / "node.py"), "--host", host, "--port", str(port),
                        "--data-dir", str(data_dir), "--no-colour", *args]
        self._log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=ROOT)
        match = wait_until(lambda: LISTENING.search(self.log()) or self._exited(), timeout=15,
                           message=f"node to listen ({self.log_path})")
        if match is True:
            raise AssertionError(f"node exited with {self.process.returncode}:\n{self.log()}")
        self.host, self.port = match.group(1), int(match.group(2))

    def _exited(self) -> bool:
        return self.process.poll() is not None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        regex = re.compile(pattern)
        return wait_until(lambda: regex.search(self.log()), timeout, message=f"log line {pattern!r}")

    def status(self, field: str) -> int:
        """A number from /proc/PID/status, e.g. 'Threads' or 'VmRSS' (kB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def connect(self, timeout: float = 5.0) -> "WireClient":
        return WireClient(self.address, timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit code; SIGKILL if the node did not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


class WireClient:
    """A test peer speaking raw frames; every read has a timeout."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.reader = FrameReader(self.sock.makefile("rb"))

    def __enter__(self) -> "WireClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.reader.stream.close()  # makefile() holds the descriptor open too
            self.sock.close()
        except OSError:
            pass

    def send(self, text: str) -> None:
        self.sock.sendall(encode_frame(text))

    def send_message(self, message: Message) -> None:
        self.send(message.encode())

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> str:
        """The next frame's text; AssertionError if the stream ends first."""
        self.sock.settimeout(timeout or self.timeout)
        text = self.reader.read_frame()
        if text is None:
            raise AssertionError("connection closed while waiting for a frame")
        return text

    def recv_message(self, timeout: float | None = None) -> Message:
        text = self.recv(timeout)
        message = decode_message(text)
        assert message is not None, f"not a message: {text!r}"
        return message

    def recv_until(self, command: str, timeout: float | None = None) -> Message:
        """Skip frames until one with this command arrives (e.g. past relayed chat)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            message = self.recv_message(max(0.01, deadline - time.monotonic()))
            if message.command == command:
                return message

    def handshake(self, **fields) -> Version:
        """Send a version; return the node's version after checking the verack."""
        self.send_message(Version(**fields))
        theirs = self.recv_message()
        assert isinstance(theirs, Version), theirs
        assert self.recv() == "verack"
        return theirs

    def sync_ping(self, nonce: int = 424242, timeout: float | None = None) -> None:
        """Like Bitcoin's sync_with_ping: everything sent before has been processed."""
        self.send(f'ping {{"nonce":{nonce}}}')
        while True:
            message = self.recv_message(timeout)
            if message.command == "pong" and getattr(message, "nonce") == nonce:
                return

    def is_closed(self, timeout: float | None = None) -> bool:
        """True when the node has closed the connection (EOF or reset) within timeout."""
        self.sock.settimeout(timeout or self.timeout)
        try:
            while True:
                if self.reader.read_frame() is None:
                    return True
        except (ConnectionError, OSError) as error:
            return not isinstance(error, socket.timeout)
        except Exception:
            return True

    def expect_closed(self, timeout: float | None = None) -> None:
        assert self.is_closed(timeout), "the node kept the connection open"


def frames(*texts: str) -> bytes:
    return b"".join(encode_frame(text) for text in texts)


def raw_header(text: bytes) -> bytes:
    """A header of exactly HEADER bytes from arbitrary content (for bad-header tests)."""
    return text.ljust(HEADER, b" ")[:HEADER]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def count_lines(text: str, needle: str) -> int:
    return sum(1 for line in text.splitlines() if needle in line)

