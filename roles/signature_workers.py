"""Signature verification in worker processes, beside the node's Python rather than under its GIL.

A block of 2,000 transactions carries 2,000 signatures, each about 35 µs of
libsecp256k1 work: the largest single cost of connecting it. Bitcoin Core
verifies them on a pool of threads (CCheckQueue) while it checks the rest of
the block. Threads do not work for that here: libsecp256k1 releases the GIL
while it verifies, but a pool thread must take the GIL back after every
signature, and a handler thread busy in Python hands it over only every 5 ms
(sys.getswitchinterval()). The pool then verified almost nothing until the
block's end, when the handler thread waited for it.

So the node starts worker processes, when a sync of many blocks begins or
on the first block with enough signatures to be worth it (a node that does
neither starts none), and hands them jobs through a queue that the kernel
keeps: a Unix SOCK_SEQPACKET socket pair, which delivers each job whole to
one reader.
Every worker reads jobs from the same socket, so an idle worker takes the
next one. A job is text:

    JOB_ID
    PUBKEY SIGNATURE MESSAGE_HASH      (hex; one line per signature)
    ...

and its answer, on a second socket pair, is "JOB_ID VERDICTS", one "1"
(valid) or "0" (invalid) per signature, in order.

As in Bitcoin's CCheckQueue, the thread that would wait works instead: when
the queue is full it verifies the chunk itself, and when it needs the
verdicts of a job no worker has started yet, it takes that job (and any
older one) from the queue itself (the socket is its to read too). It leaves
newer jobs to the workers: they belong to blocks it has not reached, and
this thread has the Python work of those blocks to do. Workers verify with
protocol.transaction.verify_signature, the function the node uses inline,
so a verdict never depends on who made it.
A worker that dies or stops answering costs time, not correctness: the jobs
still out are verified inline, the worker is replaced, and a warning is
logged. Workers leave when the node's end of the queue closes, so they never
outlive their node, not even one killed with SIGKILL.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from protocol.transaction import SignatureCheck, verify_all, verify_signature

log = logging.getLogger("epscoin.verify")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_JOB_BYTES = 1 << 20  # a job of SIGNATURE_CHUNK signatures is under 40 KB
JOB_ID_BYTES = 24  # enough of a job to read its number (and the line break after it)
QUEUE_BYTES = 2 << 20  # asked of the kernel for the job queue (it doubles it, up to wmem_max)
RESULT_WAIT = 0.5  # seconds between looks at the workers' health while waiting for verdicts
JOB_TIMEOUT = 10.0  # a job unanswered this long is verified inline (its worker is stuck or gone)
WORKER_NICENESS = 5  # added to the node's own (see serve)
STOP_TIMEOUT = 2.0  # seconds a worker gets to leave once the queue closes


class Verdicts:
    """The verdicts on one chunk of signatures: made already, or coming from a worker."""

    def __init__(self, pool: "SignatureWorkers", job: int | None, valid: list[bool] | None = None) -> None:
        self._pool, self._job, self._valid = pool, job, valid

    def result(self) -> list[bool]:
        """One verdict per check, in order; helps verify, or waits, until they are in."""
        if self._valid is None:
            self._valid = self._pool.wait(self._job)
        return self._valid

    def cancel(self) -> None:
        if self._valid is None:
            self._pool.cancel(self._job)


class SignatureWorkers:
    """Worker processes and the job queue they share (the `pool` of a SignatureBatch)."""

    def __init__(self, processes: int | None = None) -> None:
        # As Bitcoin's -par default: one worker per core but one, for the thread that hands out
        # the jobs verifies too.
        self.size = processes or max(1, (os.cpu_count() or 1) - 1)
        self._lock = threading.Lock()  # guards everything below
        self._workers: list[subprocess.Popen] = []
        self._queue: tuple[socket.socket, socket.socket] | None = None  # (node's end, workers' end)
        self._answers: tuple[socket.socket, socket.socket] | None = None  # (node's end, workers' end)
        self._out: dict[int, tuple[list[SignatureCheck], float]] = {}  # job -> (checks, sent at), unanswered
        self._done: dict[int, list[bool]] = {}
        self._next_job = 0
        self._distrusted = False  # an answer broke the protocol: the jobs out are verified inline
        self._closed = False

    @property
    def started(self) -> int:
        return len(self._workers)

    def start(self) -> None:
        """Start the workers now rather than with the first job, so they are ready when it comes."""
        with self._lock:
            if not self._closed:
                self._start()

    def submit(self, checks: list[SignatureCheck]) -> Verdicts:
        """Queue a chunk for the workers; verified right here if it cannot be queued."""
        if not all(_fits_a_line(check) for check in checks):
            return Verdicts(self, None, verify_all(checks))  # (never from the wire: it is hex there)
        lines = "".join(f"{c.pubkey} {c.signature} {c.message_hash.hex()}\n" for c in checks)
        with self._lock:
            job = self._queue_job(lines, checks)
        if job is None:  # verified here, outside the lock, so a waiting thread is not held up
            return Verdicts(self, None, verify_all(checks))
        return Verdicts(self, job)

    def _queue_job(self, lines: str, checks: list[SignatureCheck]) -> int | None:
        """Lock held. The job's number once queued; None when it cannot be, or every worker is behind."""
        if self._closed or not self._start():
            return None
        job = self._next_job
        self._next_job += 1
        try:
            self._queue[0].send(f"{job}\n{lines}".encode("ascii"), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None  # the queue is full: the caller helps now
        except OSError as error:
            self._give_up(f"cannot queue a job: {error}")
            return None
        self._out[job] = (checks, time.monotonic())
        return job

    def wait(self, job: int) -> list[bool]:
        """The verdicts of `job`: verify queued jobs here meanwhile, then wait for the workers."""
        while True:
            with self._lock:
                if job in self._done:
                    return self._done.pop(job)
                if job not in self._out:  # (cannot happen: every job is answered once)
                    raise RuntimeError(f"signature job {job} is unknown")
                if self._closed:  # no worker will answer now
                    checks, _ = self._out.pop(job)
                    return verify_all(checks)
            if self._verify_a_queued_job(up_to=job):
                continue
            self._read_answers(RESULT_WAIT)
            self._look_after_workers()

    def cancel(self, job: int) -> None:
        """Forget a job: a worker may still verify it, and its answer is dropped."""
        with self._lock:
            self._out.pop(job, None)
            self._done.pop(job, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
            sockets = [*(self._queue or ()), *(self._answers or ())]
            self._queue = self._answers = None
        for end in sockets:
            end.close()  # the workers read the end of the queue and leave
        for worker in workers:
            _reap(worker)

    # -- inside ---------------------------------------------------------------------------------------

    def _start(self) -> bool:
        """Workers and queue, on first use (lock held); False when they cannot be started."""
        if self._queue is None:
            self._queue = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._answers = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            # Room for a whole block's jobs (about 800 KB), where the kernel allows it
            # (net.core.wmem_max); with less, the jobs that do not fit are verified here.
            self._queue[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, QUEUE_BYTES)
        while len(self._workers) < self.size:
            try:
                self._workers.append(self._spawn())
            except OSError as error:
                log.warning("[VERIFY] cannot start a signature worker (%s); verifying inline", error)
                break
        return bool(self._workers)

    def _spawn(self) -> subprocess.Popen:
        jobs, answers = self._queue[1].fileno(), self._answers[1].fileno()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                        os.environ.get("PYTHONPATH")])))
        program = f"from roles.signature_workers import serve; serve({jobs}, {answers})"
        return subprocess.Popen([sys.executable, "-c", program], env=env, pass_fds=(jobs, answers),
                                stdin=subprocess.DEVNULL)

    def _verify_a_queued_job(self, up_to: int) -> bool:
        """Take the job no worker has started yet, if it is job `up_to` or older, and verify it here."""
        with self._lock:
            if self._queue is None:
                return False
            try:
                # The queue is first in, first out: a look at its head tells whether job up_to is still in it.
                head = self._queue[1].recv(JOB_ID_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                if int(head.split(b"\n", 1)[0]) > up_to:
                    return False  # a worker has it: its answer comes sooner than a chunk verified here
                data = self._queue[1].recv(MAX_JOB_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            job = int(data.split(b"\n", 1)[0])
            checks, _ = self._out.pop(job, (None, 0.0))
        if checks is not None:
            verdicts = verify_all(checks)
            with self._lock:
                self._done[job] = verdicts
        return True

    def _read_answers(self, timeout: float) -> None:
        with self._lock:
            answers = self._answers[0] if self._answers is not None else None
        if answers is None or not select.select([answers], [], [], timeout)[0]:
            return
        try:
            data = answers.recv(MAX_JOB_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return  # another waiting thread took it
        except OSError:
            return
        head, _, digits = data.decode("ascii", "replace").partition(" ")
        with self._lock:
            job = int(head) if head.isdigit() else -1
            checks, _ = self._out.get(job, (None, 0.0))
            if checks is None:
                return  # verified inline already (its worker looked dead or stuck)
            if len(digits) != len(checks) or not set(digits) <= {"0", "1"}:
                self._give_up("an answer broke the protocol")
                return
            del self._out[job]
            self._done[job] = [digit == "1" for digit in digits]

    def _look_after_workers(self) -> None:
        """Replace workers that died, and verify inline the jobs a dead or stuck worker may hold."""
        with self._lock:
            dead = [worker for worker in self._workers if worker.poll() is not None]
            now = time.monotonic()
            stuck = any(now - sent > JOB_TIMEOUT for _, sent in self._out.values())
            if not (dead or stuck or self._distrusted):
                return
            for worker in dead:
                log.warning("[VERIFY] signature worker %d exited with %s; its jobs are verified inline",
                            worker.pid, worker.returncode)
                self._workers.remove(worker)
            if stuck:
                log.warning("[VERIFY] a signature job waited over %g s; verifying the waiting jobs inline",
                            JOB_TIMEOUT)
            lost, self._out = self._out, {}
            self._distrusted = False
            if not self._closed:
                self._start()
        verdicts = {job: verify_all(checks) for job, (checks, _) in lost.items()}
        with self._lock:
            self._done.update(verdicts)

    def _give_up(self, why: str) -> None:
        """Lock held. A worker misbehaved: _look_after_workers verifies every job out inline next."""
        log.warning("[VERIFY] %s; verifying the waiting jobs inline", why)
        self._distrusted = True


def _fits_a_line(check: SignatureCheck) -> bool:
    """Whether the check's text reaches a worker as it is: no spaces or line breaks (which
    bytes.fromhex would skip inline), nothing but ASCII letters and digits."""
    return check.pubkey.isalnum() and check.signature.isalnum() \
        and check.pubkey.isascii() and check.signature.isascii()


def _reap(worker: subprocess.Popen) -> None:
    try:
        worker.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


# -- the worker's side ----------------------------------------------------------------------------


def serve(jobs_fd: int, answers_fd: int) -> None:
    """A worker's main: answer jobs until the node's end of the queue closes."""
    # Ctrl-C in a terminal reaches the whole process group: the node decides, and closes the queue.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the node: its handler thread is the one part that cannot be spread over cores, and
    # when it would wait for a busy worker it takes the queued jobs itself.
    os.nice(WORKER_NICENESS)
    jobs = socket.socket(fileno=jobs_fd)
    answers = socket.socket(fileno=answers_fd)
    try:
        while data := jobs.recv(MAX_JOB_BYTES):
            answers.send(answer(data.decode("ascii", "replace")).encode("ascii"))
    except OSError:
        pass  # the node is gone


def answer(job: str) -> str:
    """'JOB_ID VERDICTS' for one job's text."""
    head, _, lines = job.partition("\n")
    verdicts = "".join("1" if _check_valid(line) else "0" for line in lines.split("\n")[:-1])
    return f"{head} {verdicts}"


def _check_valid(line: str) -> bool:
    fields = line.split(" ")
    if len(fields) != 3:
        return False
    try:
        return verify_signature(SignatureCheck(fields[0], fields[1], bytes.fromhex(fields[2])))
    except ValueError:
        return False
