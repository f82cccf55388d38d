"""The node's life cycle: starting (and refusing to), dialling, stopping, and `!exit`.

A node that cannot start says why in one line and exits non-zero, never
with a traceback; a node that is told to stop says goodbye to every peer and
exits 0; a --connect target that is not there yet is retried, and a target
that turns out to be the node itself is dropped for good.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from protocol.messages import Goodbye

from tests.node_tools import assert_one_line_error, assert_usage_error, local_port, run_node
from tests.support import ROOT, count_lines, free_port, wait_until

# -- stopping ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_makes_the_node_say_goodbye_to_every_peer_and_exit_0_within_5_s(start_node, signum):
    dialled = start_node(name="dialled")
    node = start_node("--handshake-timeout", "60", "--connect", f"{dialled.host}:{dialled.port}")
    dialled.wait_for_log(r"\[HANDSHAKE\] 127\.0\.0\.1:\d+ is ready")  # the node's outbound peer
    with node.connect() as ready, node.connect() as fresh:
        ready.handshake()
        fresh.sync_ping()  # connected, but no version yet
        started = time.monotonic()
        node.process.send_signal(signum)
        for peer in (ready, fresh):
            goodbye = peer.recv_until("goodbye", timeout=5)
            assert isinstance(goodbye, Goodbye), goodbye
            peer.expect_closed(timeout=5)
        dialled.wait_for_log(r"\[GOODBYE\] 127\.0\.0\.1:\d+ is leaving: node shutting down")
        try:
            code = node.process.wait(timeout=max(0.1, 5 - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node was still running 5 s after {signum.name}:\n{node.log()}")
    assert code == 0, node.log()
    assert "[STOPPED] Node stopped." in node.log()
    assert "Traceback" not in node.log(), node.log()


# node.py, with a signal sent to itself the moment start() returns: the node is listening and
# has logged [LISTENING], so peers (and a supervisor watching the log) may already act on it.
SIGNAL_ON_START = """
import os, signal, sys
sys.path.insert(0, {root!r})
sys.argv[0] = {script!r}
import node
start = node.Node.start
def start_then_signal(self):
    start(self)
    os.kill(os.getpid(), signal.{name})
node.Node.start = start_then_signal
sys.exit(node.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_as_soon_as_the_node_listens_still_stops_it_cleanly_with_exit_0(tmp_path, signum):
    code = SIGNAL_ON_START.format(root=str(ROOT), script=str(ROOT / "node.py"), name=signum.name)
    result = subprocess.run([sys.executable, "-c", code, "--port", "0", "--data-dir", str(tmp_path / "data"),
                             "--no-colour", "--no-fixed-seeds", "--outbound", "0"],
                            capture_output=True, text=True, timeout=10, cwd=ROOT, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert "[LISTENING]" in result.stdout, output
    assert result.returncode == 0, f"exit {result.returncode} after {signum.name}:\n{output}"
    assert "Traceback" not in output and "[STOPPED] Node stopped." in result.stdout, output


def test_exit_command_gets_a_goodbye_then_the_connection_closes(node):
    with node.connect() as ready, node.connect() as fresh:
        ready.handshake()
        for peer in (ready, fresh):  # with or without a handshake first
            peer.send("!exit")
            goodbye = peer.recv_until("goodbye")
            assert isinstance(goodbye, Goodbye) and "!exit" in goodbye.reason, goodbye
            peer.expect_closed()
            node.wait_for_log(re.escape(f"[DISCONNECTED] 127.0.0.1:{local_port(peer)}: peer sent !exit"))


# -- refusing to start -----------------------------------------------------------------------------------


def test_a_second_node_on_the_same_data_dir_exits_with_a_one_line_in_use_error(start_node):
    first = start_node(name="shared")
    result = run_node("--port", "0", "--data-dir", str(first.data_dir))
    line = assert_one_line_error(result, str(first.data_dir))
    assert re.fullmatch(r"error: .* in use by another node.*", line), line
    with first.connect() as peer:  # the first node is unaffected
        peer.handshake()
        peer.sync_ping()


def test_the_data_dir_lock_is_released_when_the_node_exits(start_node):
    first = start_node(name="reused")
    assert first.stop() == 0
    again = start_node(name="reused")  # same directory; would exit "in use" if the lock stayed
    with again.connect() as peer:
        peer.handshake()


def test_a_data_dir_under_a_regular_file_is_a_one_line_error_and_exit_1(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    data_dir = blocker / "data"
    result = run_node("--port", "0", "--data-dir", str(data_dir))
    assert_one_line_error(result, str(data_dir), code=1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway")
def test_a_data_dir_in_a_read_only_directory_is_a_one_line_error_and_exit_1(tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        data_dir = read_only / "data"
        result = run_node("--port", "0", "--data-dir", str(data_dir))
        assert_one_line_error(result, str(data_dir), code=1)
    finally:
        read_only.chmod(0o700)


def test_a_port_already_in_use_is_a_one_line_error_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_node("--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert_one_line_error(result, f"127.0.0.1:{port}", "in use", code=1)


@pytest.mark.parametrize("option, value, named", [
    ("--port", "70000", "--port"),
    ("--roles", "nosuch", "nosuch"),
    ("--connect", "a:b:c:d", "a:b:c:d"),
    ("--frame-timeout", "-1", "-1"),
], ids=["port-70000", "unknown-role", "connect-garbage", "negative-frame-timeout"])
def test_a_bad_command_line_value_exits_non_zero_with_one_error_line_and_no_traceback(tmp_path, option, value,
                                                                                        named):
    result = run_node("--port", "0", "--data-dir", str(tmp_path / "data"), f"{option}={value}")
    assert_usage_error(result, named)


# -- dialling ------------------------------------------------------------------------------------


def test_connect_to_a_port_with_nothing_listening_retries_until_a_node_appears_there(start_node):
    port = free_port()
    node = start_node("--connect", f"127.0.0.1:{port}")
    target = re.escape(f"127.0.0.1:{port}")
    node.wait_for_log(rf"\[CONNECT\][^\n]*(retrying[^\n]*{target}\b|{target}\b[^\n]*retrying)")
    assert node.process.poll() is None, node.log()
    with node.connect() as peer:  # still serving while it retries
        peer.handshake()
        peer.sync_ping()
    later = start_node(port=port, name="later")
    node.wait_for_log(rf"\[HANDSHAKE\] 127\.0\.0\.1:{port} is ready", timeout=10)
    later.wait_for_log(r"\[HANDSHAKE\] 127\.0\.0\.1:\d+ is ready", timeout=5)


def test_connect_to_itself_is_detected_by_nonce_and_not_dialled_again(start_node):
    # The same node without a dialler, for its thread count (only the roles without threads of their own).
    reference = start_node("--roles", "chat", name="reference")
    port = free_port()
    node = start_node("--roles", "chat", "--connect", f"127.0.0.1:{port}", port=port, name="self")
    node.wait_for_log(r"connected to self")
    node.wait_for_log(rf"\[CONNECT\] 127\.0\.0\.1:{port} is this node itself; not dialling it again")
    # The dial thread is gone, so nothing can dial again (its retry would come 1 s later).
    wait_until(lambda: node.status("Threads") == reference.status("Threads"), timeout=5,
               message="the dial thread to end")
    assert count_lines(node.log(), f"[CONNECT] connected to 127.0.0.1:{port}") == 1, node.log()
    assert count_lines(node.log(), "[HANDSHAKE]") == 0, "the node completed a handshake with itself"
    with node.connect() as peer:
        peer.handshake()
        peer.sync_ping()
