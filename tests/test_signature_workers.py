"""roles/signature_workers.py: worker processes give exactly the inline verdicts, whatever happens to them.

Real worker processes on real sockets. A verdict is consensus, so every test
compares against protocol.transaction.verify_signature on the same checks,
with invalid signatures mixed in: the workers must not only say "valid"
fast, but say "invalid" exactly where verify_signature does. Then the ways a
worker can fail: killed mid-job, an answer that breaks the protocol, a full
queue, the node closing the pool or dying with SIGKILL (the workers leave).
About 5 s in all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from protocol.consensus import SIGNATURE_CHUNK, SignatureBatch, ConsensusError
from protocol.networks import NETWORKS
from protocol.transaction import COIN, OutPoint, SignatureCheck, verify_signature
from roles.signature_workers import SignatureWorkers, answer
from tests.chain_builder import Key, make_transaction
from tests.support import wait_until

REGTEST = NETWORKS["regtest"]
ALICE, BOB = Key(REGTEST, "alice"), Key(REGTEST, "bob")
ROOT = Path(__file__).resolve().parent.parent


def signed_checks(count: int, forged_every: int = 7) -> list[SignatureCheck]:
    """`count` checks of one many-input transaction; every `forged_every`-th has another input's signature."""
    outpoints = [OutPoint(f"{n:064x}", n % 3) for n in range(count)]
    tx = make_transaction(outpoints, [(BOB, COIN)], ALICE)
    checks = [tx.signature_check(index) for index in range(count)]
    return [check._replace(signature=checks[index - 1].signature) if index % forged_every == 3 else check
            for index, check in enumerate(checks)]


@pytest.fixture(scope="module")
def checks() -> list[SignatureCheck]:
    return signed_checks(3 * SIGNATURE_CHUNK + 5)


@pytest.fixture
def pool() -> Iterator[SignatureWorkers]:
    workers = SignatureWorkers(2)
    yield workers
    workers.close()


def chunks(checks: list[SignatureCheck], size: int = SIGNATURE_CHUNK) -> list[list[SignatureCheck]]:
    return [checks[start:start + size] for start in range(0, len(checks), size)]


def expected(checks: list[SignatureCheck]) -> list[bool]:
    return [verify_signature(check) for check in checks]


def answered_by_a_worker(pool: SignatureWorkers, checks: list[SignatureCheck]) -> None:
    """Hand one chunk over and wait until a worker has answered it: the workers are up and reading."""
    verdicts = pool.submit(checks[:SIGNATURE_CHUNK])
    wait_until(lambda: select.select([pool._answers[0]], [], [], 0)[0], 10, message="a worker's answer")
    assert verdicts.result() == expected(checks[:SIGNATURE_CHUNK])


def queue_taken(pool: SignatureWorkers) -> bool:
    """Whether every queued job has been taken by a worker (peeked, so nothing is taken here)."""
    try:
        pool._queue[1].recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


def test_the_workers_verdicts_are_verify_signatures(pool, checks):
    truth = expected(checks)
    assert True in truth and False in truth
    verdicts = [pool.submit(chunk) for chunk in chunks(checks)]
    assert [valid for v in verdicts for valid in v.result()] == truth
    assert pool.started == 2


def test_nothing_is_started_until_there_is_work():
    workers = SignatureWorkers(2)
    try:
        assert workers.started == 0
    finally:
        workers.close()


def test_a_check_that_is_not_hex_is_verified_inline_alike(pool, checks):
    # Not from the wire (the parser allows hex only), but a Transaction can be built with any text:
    # bytes.fromhex skips spaces, so the line protocol must not be trusted with them.
    odd = [checks[0]._replace(pubkey=checks[0].pubkey[:2] + " " + checks[0].pubkey[2:]),
           checks[1]._replace(signature=checks[1].signature.upper()), checks[2]]
    assert pool.submit(odd).result() == expected(odd)
    assert pool.started == 0  # none of it went to a worker


def test_a_worker_killed_mid_job_costs_time_not_verdicts(pool, checks, caplog):
    caplog.set_level(logging.WARNING, "epscoin.verify")
    answered_by_a_worker(pool, checks)
    many = checks * 4
    pending = [pool.submit(chunk) for chunk in chunks(many)]
    wait_until(lambda: select.select([pool._answers[0]], [], [], 0)[0], 10, message="the workers at work")
    for worker in list(pool._workers):
        os.kill(worker.pid, signal.SIGKILL)
    assert [valid for v in pending for valid in v.result()] == expected(many)
    assert "exited with" in caplog.text
    # The pool goes on, with new workers.
    assert pool.submit(checks[:SIGNATURE_CHUNK]).result() == expected(checks[:SIGNATURE_CHUNK])
    assert all(worker.poll() is None for worker in pool._workers)


def test_an_answer_that_breaks_the_protocol_is_not_believed(pool, checks, caplog):
    caplog.set_level(logging.WARNING, "epscoin.verify")
    answered_by_a_worker(pool, checks)
    pool._answers[1].send(f"{pool._next_job} {'1' * 3}".encode())  # the next job's: wrong length, all "valid"
    verdicts = pool.submit(checks[:SIGNATURE_CHUNK])
    wait_until(lambda: queue_taken(pool), 10, message="a worker to take the job")  # so it is not verified here
    assert verdicts.result() == expected(checks[:SIGNATURE_CHUNK])
    assert "broke the protocol" in caplog.text


def test_an_answer_for_a_job_already_settled_is_dropped(pool, checks):
    first = pool.submit(checks[:SIGNATURE_CHUNK])
    assert first.result() == expected(checks[:SIGNATURE_CHUNK])
    pool._answers[1].send(f"{first._job} {'1' * SIGNATURE_CHUNK}".encode())  # late, and a lie
    second = pool.submit(checks[SIGNATURE_CHUNK:2 * SIGNATURE_CHUNK])
    assert second.result() == expected(checks[SIGNATURE_CHUNK:2 * SIGNATURE_CHUNK])


def test_a_full_queue_is_verified_by_the_caller(checks):
    workers = SignatureWorkers(1)
    try:
        many = checks * 20  # far more jobs than the queue's socket buffer holds
        pending = [workers.submit(chunk) for chunk in chunks(many)]
        assert [valid for v in pending for valid in v.result()] == expected(many)
    finally:
        workers.close()


def test_a_waiting_caller_takes_only_its_own_job_or_older_from_the_queue(checks):
    workers = SignatureWorkers(1)
    try:
        answered_by_a_worker(workers, checks)
        many = checks * 12  # about 40 jobs: a third of a second of the worker's time
        pending = [workers.submit(chunk) for chunk in chunks(many)]
        assert pending[0].result() == expected(many[:SIGNATURE_CHUNK])
        # The newer jobs are left to the worker (a caller that took them all would leave none queued).
        assert not queue_taken(workers)
        assert pending[-1].result() == expected(chunks(many)[-1])  # the caller helps with these now
        assert [valid for v in pending for valid in v.result()] == expected(many)
    finally:
        workers.close()


def test_the_worker_side_answers_bad_lines_with_invalid():
    good = signed_checks(2, forged_every=99)
    lines = "".join(f"{c.pubkey} {c.signature} {c.message_hash.hex()}\n" for c in good)
    assert answer(f"7\n{lines}") == "7 11"
    assert answer("8\nnot a check\n02ab 3044 zz\n\n") == "8 000"
    assert answer("9\n") == "9 "


def test_a_batch_on_the_workers_names_the_first_bad_signature(pool, checks):
    tx = make_transaction([OutPoint(f"{n:064x}", 0) for n in range(SIGNATURE_CHUNK + 3)], [(BOB, COIN)], ALICE)
    bad_index = SIGNATURE_CHUNK - 2  # inside the chunk that goes to a worker
    forged = tx.inputs[bad_index + 1].signature
    batch = SignatureBatch(pool)
    for index in range(len(tx.inputs)):
        check = tx.signature_check(index)
        batch.append((tx, index, check._replace(signature=forged) if index == bad_index else check))
    with pytest.raises(ConsensusError, match=f"input {bad_index}: the signature is not valid"):
        batch.check()


def test_workers_leave_when_the_pool_closes(checks):
    workers = SignatureWorkers(2)
    workers.submit(checks[:SIGNATURE_CHUNK]).result()
    processes = list(workers._workers)
    workers.close()
    assert all(process.poll() is not None for process in processes)
    assert workers.submit(checks[:3]).result() == expected(checks[:3])  # closed: inline


def test_workers_leave_when_their_node_is_killed(tmp_path):
    program = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from roles.signature_workers import SignatureWorkers
        from tests.test_signature_workers import signed_checks
        workers = SignatureWorkers(2)
        workers.submit(signed_checks(8)).result()
        print(" ".join(str(w.pid) for w in workers._workers), flush=True)
        sys.stdin.read()  # until killed
    """)
    node = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    with contextlib.closing(node.stdin):
        pids = [int(pid) for pid in node.stdout.readline().split()]
        assert len(pids) == 2 and all(_running(pid) for pid in pids)
        node.kill()
        node.wait()
    node.stdout.close()
    wait_until(lambda: not any(_running(pid) for pid in pids), 5, message="the workers to leave with their node")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init; a zombie has left already)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_job_still_out_when_the_pool_closes_is_verified_by_whoever_asks(checks):
    workers = SignatureWorkers(1)
    pending = [workers.submit(chunk) for chunk in chunks(checks * 3)]
    workers.close()
    assert [valid for v in pending for valid in v.result()] == expected(checks * 3)


def test_a_cancelled_job_is_forgotten(pool, checks):
    kept, dropped = pool.submit(checks[:SIGNATURE_CHUNK]), pool.submit(checks[SIGNATURE_CHUNK:2 * SIGNATURE_CHUNK])
    dropped.cancel()
    assert kept.result() == expected(checks[:SIGNATURE_CHUNK])
    answered_by_a_worker(pool, checks)  # whatever the workers still say about it comes and goes
    assert not pool._out and not pool._done
