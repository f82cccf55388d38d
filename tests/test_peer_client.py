"""The chat REPL (peer_client.py): scripted through pipes and --send, interactive through a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

from tests.support import ROOT, free_port, wait_until

CLIENT = [sys.executable, str(ROOT / "peer_client.py")]


def run_client(*args: str, stdin: str | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIENT, *args], input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


class Terminal:
    """peer_client.py on a pseudo-terminal, read and typed like a person would."""

    def __init__(self, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the client
            os.chdir(ROOT)
            os.execv(sys.executable, [*CLIENT, *args])
        self.screen = ""

    def read_until(self, pattern: str, timeout: float = 5.0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while not regex.search(self.screen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; screen so far:\n{self.screen}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child exited and closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"client exited before {pattern!r}; screen:\n{self.screen}")
                self.screen += chunk.decode(errors="replace")
        return self.screen

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def exit_code(self, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                raise AssertionError("client did not exit")
            select.select([self.fd], [], [], 0.05)  # wait for output or exit, whichever first
            try:
                os.read(self.fd, 4096)
            except OSError:
                pass


def test_send_flags_print_each_reply_and_exit_zero(node):
    result = run_client(f"{node.host}:{node.port}", "--send", "ping", "--send", "hello from a script")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("connected to /epscoin:")
    assert "pong" in lines
    assert any(line.startswith("delivered (chat id ") for line in lines)
    assert lines[-1] == "goodbye: you sent !exit"
    node.wait_for_log(r"\[127\.0\.0\.1:\d+\] hello from a script")


def test_lines_piped_on_stdin_are_sent_in_order(node):
    result = run_client(f"{node.host}:{node.port}", stdin='ping {"nonce":5}\nping [\n\nlast line\n')
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index('pong {"nonce":5}') < out.index("error: body of 'ping' must be a JSON object") < out.index("delivered")


def test_connection_refused_is_one_line_and_exit_one():
    result = run_client(f"127.0.0.1:{free_port()}", "--send", "ping")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "cannot connect to 127.0.0.1:" in result.stderr and "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_address_is_a_usage_error():
    result = run_client("127.0.0.1:99999", "--send", "ping")
    assert result.returncode == 2
    assert "is not HOST[:PORT]" in result.stderr and "Traceback" not in result.stderr


def test_node_closing_the_connection_is_reported_not_a_traceback(start_node):
    node = start_node("--max-inbound", "0")
    result = run_client(f"{node.host}:{node.port}", "--send", "ping")
    assert result.returncode == 1
    assert "node full" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_interactive_prompt_chat_in_both_directions_and_quit(node):
    alice = Terminal(f"{node.host}:{node.port}")
    alice.read_until(r"handshake done")
    alice.read_until(r"Msg>> ")
    alice.type("hello from alice\r")
    alice.read_until(r"delivered \(chat id [0-9a-f]+\)")
    node.wait_for_log(r"\] hello from alice")
    # Half a line typed, then a chat arrives: it is printed above, and the typed text is redrawn.
    alice.type("half typ")
    result = run_client(f"{node.host}:{node.port}", "--send", "hi alice, this is bob")
    assert result.returncode == 0
    screen = alice.read_until(r"hi alice, this is bob[^\n]*\n[^\n]*Msg>> half typ")
    assert "[127.0.0.1:" in screen
    alice.type("ed\r")
    node.wait_for_log(r"\] half typed")
    alice.type("/help\r")
    alice.read_until(r"/quit")
    alice.type("/quit\r")
    alice.read_until(r"goodbye: you sent !exit")
    assert alice.exit_code() == 0


def test_interactive_client_exits_with_one_line_when_the_node_stops(start_node):
    node = start_node()
    term = Terminal(f"{node.host}:{node.port}")
    term.read_until(r"Msg>> ")
    wait_until(lambda: "[HANDSHAKE]" in node.log())
    assert node.stop() == 0
    screen = term.read_until(r"error: the node closed the connection")
    assert "goodbye: node shutting down" in screen
    assert "Traceback" not in screen
    assert term.exit_code() == 1
