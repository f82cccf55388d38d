"""The conformance suite can fail: it reports the lecture-style node's real defects, and passes ours.

Runs a selection of tests/conformance as real pytest processes, in parallel:
against tests/lecture_node.py (--target) and against this project's node.py
(the suite's self-started node). Both write a JSON report (--conformance-report)
that this test reads. The lecture node's defects must each be reported by the
check for its section, with the failure saying what went wrong; the same checks
must pass against node.py. Two checks the naive node happens to pass (coalesced
frames, a ping with a nonce) are controls: the suite does not simply fail everything.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LECTURE_NODE = ROOT / "tests" / "lecture_node.py"
LISTENING = re.compile(r"\[LISTENING\] Node is listening on (\S+):(\d+)")

FRAMING = "tests/conformance/test_framing.py"
CHECKS = {
    "one byte per segment": f"{FRAMING}::test_one_byte_segments",
    "header and payload apart": f"{FRAMING}::test_header_and_payload_in_separate_segments",
    "bad header: all spaces": f"{FRAMING}::test_bad_header[all spaces-after version]",
    "bad header: plus sign": f"{FRAMING}::test_bad_header[plus sign-after version]",
    "bad UTF-8": f"{FRAMING}::test_bad_utf8[0xff 0xfe 0xfd 0xfc-after version]",
    "oversize header": f"{FRAMING}::test_oversize_refused_before_payload[4000001]",
    "round-trip latency": f"{FRAMING}::test_ping_round_trip_latency",
    "send version first": "tests/conformance/test_handshake.py::test_send_version_first[verack]",
    "bad body": "tests/conformance/test_grammar.py::test_rest_must_be_a_json_object[ping hello]",
    # controls: the naive node passes these
    "coalesced frames": f"{FRAMING}::test_coalesced_frames",
    "ping nonce": "tests/conformance/test_messages.py::test_ping_nonce_echoed[7-after version]",
}
CONTROLS = {"coalesced frames", "ping nonce"}


def run_conformance(report: Path, nodeids: list[str], *args: str) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *nodeids, "-q", "-p", "no:cacheprovider",
         "--conformance-report", str(report), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, report


def finish(*runs: tuple[subprocess.Popen, Path]) -> tuple[str, dict[str, dict]]:
    """Wait for the runs; their output, and the results by check name from their JSON reports."""
    outputs, by_id = [], {}
    for process, report in runs:
        output, _ = process.communicate(timeout=120)
        outputs.append(output)
        assert report.exists(), f"no JSON report; pytest said:\n{output}"
        by_id.update({check["nodeid"]: check for check in json.loads(report.read_text())["checks"]})
    results = {}
    for name, nodeid in CHECKS.items():
        assert nodeid in by_id, f"{name}: {nodeid} did not run:\n{outputs}"
        results[name] = by_id[nodeid]
    return "\n".join(outputs), results


@pytest.fixture
def lecture_node(tmp_path):
    log_path = tmp_path / "lecture_node.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-u", str(LECTURE_NODE), "0"], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 15
        while not (match := LISTENING.search(log_path.read_text())):
            assert process.poll() is None, f"lecture_node.py exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, "lecture_node.py did not start listening"
            time.sleep(0.02)
        yield f"{match.group(1)}:{match.group(2)}"
    finally:
        process.kill()
        process.wait()


def test_conformance_suite_reports_the_naive_nodes_defects_and_passes_ours(lecture_node, tmp_path):
    # The naive node's failures mostly wait out --reply-timeout, so its checks run as two processes.
    naive_args = ("--target", lecture_node, "--reply-timeout", "1",
                  "--target-handshake-timeout", "1", "--target-frame-timeout", "1")
    nodeids = list(CHECKS.values())
    naive_runs = [run_conformance(tmp_path / f"naive{i}.json", nodeids[i::2], *naive_args) for i in range(2)]
    ours_run = run_conformance(tmp_path / "ours.json", nodeids)
    naive_output, naive = finish(*naive_runs)
    ours_output, ours = finish(ours_run)

    # Against this project's node every selected check passes.
    failing = {name: r["message"] for name, r in ours.items() if r["outcome"] != "passed"}
    assert not failing, f"checks failing against node.py:\n{ours_output}"

    # Against the lecture-style node each defect is reported, by its section, saying what happened.
    passed = {name for name, r in naive.items() if r["outcome"] == "passed"}
    assert passed == CONTROLS, f"expected only the controls to pass against the naive node, got {passed}"

    def says(name: str, *patterns: str) -> str:
        message = naive[name]["message"]
        for pattern in patterns:
            assert re.search(pattern, message), f"{name}: {pattern!r} not in the failure {message!r}"
        return message

    # Short reads: a frame in pieces is taken for whole frames (the lecture's single recv() calls),
    # so the answer is an ack for a garbled "chat line", or nothing once int() or json.loads() raised.
    says("one byte per segment", r"one byte per segment", r"got `ack|no frame within|closed the connection")
    says("header and payload apart", r"five pieces", r"got `ack|no frame within|closed the connection")
    # Bad headers and bad UTF-8: int() or decode() raises and the handler dies: no error frame,
    # and a probe ping afterwards gets no answer either (or finds the connection reset).
    for name in ("bad header: all spaces", "bad UTF-8"):
        says(name, r"expected `error`", r"no answer either|without an error frame|connection reset")
    # int() accepts "+4": the frame is processed instead of refused.
    says("bad header: plus sign", r"expected `error`", r"got `pong")
    says("oversize header", r"expected `error`", r"no frame within")
    # No error frames anywhere: requests that need one get an ack, or nothing when the handler died.
    says("send version first", r"expected `error`", r"got `ack")
    says("bad body", r"expected `error`", r"no answer either|without an error frame|connection reset")
    # Two send() calls per frame, no TCP_NODELAY: Nagle waits for the delayed ACK, ~40 ms per reply.
    median = float(says("round-trip latency", r"median ping round trip [0-9.]+ ms").split("round trip ")[1].split()[0])
    assert median >= 30, f"expected a Nagle/delayed-ACK round trip of ~40-90 ms, measured {median} ms"
    assert naive["round-trip latency"]["section"] == "§2.3" and naive["round-trip latency"]["level"] == "SHOULD"

    # The table by section is printed, and marks the sections that failed.
    assert "protocol conformance by section of docs/protocol.md" in naive_output
    for section in ("§2.2", "§2.3", "§2.4", "§2.6", "§3", "§5.3"):
        row = next((line for line in naive_output.splitlines() if line.startswith(section + " ")), "")
        assert row.rstrip().endswith("FAIL"), f"no FAIL row for {section} in:\n{naive_output}"
