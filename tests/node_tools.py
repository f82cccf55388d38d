"""Helpers for the node-level tests (limits, life cycle, chat relay).

These sit beside tests/support.py rather than in it: running node.py to
completion with its output captured, opening many raw connections at once,
raising the open-file limit, reading a fast-growing log incrementally, and
collecting the frames a WireClient gets before a pong.
"""

from __future__ import annotations

import errno
import re
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol.framing import HEADER, encode_frame, parse_header
from protocol.messages import Message, Pong

from tests.support import ROOT, NodeProcess, WireClient

NODE = str(ROOT / "node.py")


# -- node.py run to completion ---------------------------------------------------------


def run_node(*args: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    """Run `node.py ARGS` and return its exit code and output; fail if it is still running after timeout.

    For arguments the node must refuse: a node that starts instead is killed
    and the test fails with whatever it printed.
    """
    command = [sys.executable, NODE, "--no-colour", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout
        raise AssertionError(f"node.py {' '.join(args)} was still running after {timeout} s "
                             f"instead of refusing; it printed:\n{out}") from None


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str, code: int | None = None) -> str:
    """stderr is exactly one line, `error: ...`, containing every needle; no traceback anywhere."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    if code is None:
        assert result.returncode != 0, output
    else:
        assert result.returncode == code, f"exit {result.returncode}, expected {code}:\n{output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A refused command line: non-zero exit, no traceback, and one error line naming the problem.

    argparse prints its usage summary before the error line; the summary is
    allowed, but the error itself must be a single line.
    """
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode != 0, output
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, f"expected one error line on stderr:\n{result.stderr}"
    non_usage = [line for line in result.stderr.strip().splitlines()
                 if line not in errors and not line.startswith(("usage:", " "))]
    assert not non_usage, f"stderr has more than a usage summary and the error:\n{result.stderr}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


# -- many raw connections ------------------------------------------------------------------


def raise_open_file_limit(needed: int) -> tuple[int, int] | None:
    """Raise this process's RLIMIT_NOFILE soft limit to `needed` (node processes started later inherit it).

    Returns the old limits to restore, or None when nothing changed; skips the
    test when the hard limit is too low.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return soft, hard


def connect_many(address: tuple[str, int], count: int, timeout: float = 10.0) -> list[socket.socket]:
    """Open `count` TCP connections at once: every connect is started before any is waited for.

    Returns blocking sockets (with `timeout`) once every handshake has completed
    on our side; AssertionError if one fails or is still pending after timeout.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setblocking(False)
            error = sock.connect_ex(address)
            if error not in (0, errno.EINPROGRESS):
                raise AssertionError(f"connect {len(socks)} of {count} failed: {errno.errorcode.get(error, error)}")
        pending = {sock.fileno(): sock for sock in socks}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(pending)} of {count} connects still pending after {timeout} s")
            for fd, _events in poller.poll(remaining * 1000):
                sock = pending.pop(fd)
                poller.unregister(fd)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise AssertionError(f"a connect failed: {errno.errorcode.get(error, error)}")
        for sock in socks:
            sock.setblocking(True)
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return socks
    except BaseException:
        close_all(socks)
        raise


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def recv_frame(sock: socket.socket) -> str:
    """One frame's text from a raw socket (no buffered reader, so no extra file objects per socket)."""
    length = parse_header(recv_exactly(sock, HEADER))
    return recv_exactly(sock, length).decode("utf-8") if length else ""


def send_frame(sock: socket.socket, text: str) -> None:
    sock.sendall(encode_frame(text))


# -- reading what a node or a client got ------------------------------------------------------------


class LogTail:
    """Polls a node's log for a pattern, reading only what was written since the last poll.

    For logs that grow by megabytes (a chat flood prints every line), where
    re-reading the whole file on every poll would dominate the test. Each line
    is searched once, so use one LogTail per pattern, created before the event.
    """

    def __init__(self, node: NodeProcess) -> None:
        self.path: Path = node.log_path
        self._offset = 0
        self._partial = b""
        self._found: dict[str, re.Match[str]] = {}

    def search(self, pattern: str) -> re.Match[str] | None:
        """The first match of pattern in any complete log line so far (remembered once found)."""
        if pattern in self._found:
            return self._found[pattern]
        with open(self.path, "rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        complete, newline, self._partial = data.rpartition(b"\n")
        if not newline:
            self._partial = data
            return None
        match = re.search(pattern, complete.decode(errors="replace"))
        if match:
            self._found[pattern] = match
        return match


def frames_until_pong(client: WireClient, nonce: int, timeout: float = 5.0) -> list[Message]:
    """Send `ping {nonce}`; return every message that arrived before its pong.

    After the pong, everything the node had queued for this client before it
    read the ping has been received (the node answers in order on one socket).
    """
    client.send(f'ping {{"nonce":{nonce}}}')
    before = []
    deadline = time.monotonic() + timeout
    while True:
        message = client.recv_message(max(0.01, deadline - time.monotonic()))
        if message == Pong(nonce=nonce):
            return before
        before.append(message)


def hang_up(client: WireClient) -> None:
    """Really close a WireClient's connection now.

    WireClient.close() closes only the socket object; the FrameReader's
    makefile() still holds the descriptor open until it is garbage collected,
    so the node would not see the peer leave.
    """
    client.reader.stream.close()
    client.close()


def local_port(client: WireClient) -> int:
    """The client's port, as the node sees it in `host:port` addresses."""
    return client.sock.getsockname()[1]
