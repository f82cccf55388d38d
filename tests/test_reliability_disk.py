"""Disk faults: a read-only data directory at start, and a disk that fills while the node runs.

These need root: the read-only directory is a read-only bind mount (root writes
through file modes, so chmod would prove nothing), and the small disk is a
tmpfs, `mount -t tmpfs -o size=2M`, mounted on the data directory itself (the
node's log stays outside it). Every test skips cleanly when not root or when
mounting fails, and every mount is undone in teardown, after its nodes are killed.
tests/test_lifecycle.py covers a data directory under a read-only parent (as a
user other than root) and one under a regular file.

The disk fills in two ways: a miner storing its own blocks, and a node storing
blocks a peer hands it (2 KB blocks of 40-output coinbases). A 2 MiB disk holds
about twenty of the miner's blocks and a dozen of the others: SQLite's write-ahead log
takes some 90 KB a block until its first checkpoint at 4 MB. What the node must do
then, as Bitcoin Core does ("Disk space is too low!"), is say so in one line and
stop with a non-zero exit code; what is committed must survive, and after space is
freed the restarted node must reopen a consistent chain and go on.

Measured (2-core machine, other suites running): the node exits 0.0-0.5 s after the disk
fills, with one [FATAL] line; the module takes about 10 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from protocol.block import Block
from roles.addrbook import AddressBook
from roles.chainstore import ChainStore
from tests.chain_builder import ChainBuilder, Key
from tests.conftest import ISOLATED, TEST_TIMEOUTS
from tests.node_tools import assert_one_line_error, run_node
from tests.support import NodeProcess, wait_until
from tests.sync_tools import REGTEST, REGTEST_ARGS, ChainPeer, fat_blocks
from tests.test_chainstore import give, store_path
from tests.test_reliability_faults import reopened_chain

SMALL_DISK = "2M"
ROOMY_DISK = "64M"
FULL_MARGIN = 64 * 1024  # bytes: less free than this and the next block cannot be written
FILL_BOUND = 30.0  # s for the node to fill 2 MiB (measured well under 1 s)
REACTION_BOUND = 5.0  # s from the disk filling to the node's exit (measured 0.1 s)
MINING = ("--roles", "routing,blockchain,chat,mining", "--mine-to", Key(REGTEST, "miner").address)
FED_BLOCKS = 100  # far more than fit in SMALL_DISK


def report(text: str) -> None:
    print(f"[disk] {text}")


# -- mounts ---------------------------------------------------------------------------------------


class MountError(Exception):
    pass


def run_mount(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise MountError(f"{' '.join(args)}: {result.stderr.strip() or result.returncode}")


@dataclass
class Mount:
    """A file system mounted on `path` by this test; unmount() undoes it (lazily if still busy)."""

    path: Path

    def unmount(self) -> None:
        try:
            run_mount("umount", str(self.path))
        except MountError:
            run_mount("umount", "-l", str(self.path))

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def resize(self, size: str) -> None:
        """A tmpfs keeps its files when it grows: this is 'freeing space'."""
        run_mount("mount", "-o", f"remount,size={size}", str(self.path))


def require_root() -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs or a read-only bind mount")


def mount_tmpfs(path: Path, size: str) -> Mount:
    require_root()
    path.mkdir(parents=True, exist_ok=True)
    try:
        run_mount("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    except (MountError, OSError) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    return Mount(path)


def mount_read_only(path: Path) -> Mount:
    """`path` itself, bound onto itself read-only: every write under it fails with EROFS, even root's."""
    require_root()
    try:
        run_mount("mount", "--bind", str(path), str(path))
    except (MountError, OSError) as error:
        pytest.skip(f"cannot bind-mount here: {error}")
    mount = Mount(path)
    try:
        run_mount("mount", "-o", "remount,bind,ro", str(path))
    except MountError as error:
        mount.unmount()
        pytest.skip(f"cannot remount read-only here: {error}")
    return mount


@dataclass
class Nodes:
    """Nodes on mounted data directories: killed before the mounts go."""

    started: list[NodeProcess] = field(default_factory=list)

    def start(self, data_dir: Path, *args: str) -> NodeProcess:
        node = NodeProcess(data_dir, *TEST_TIMEOUTS, *ISOLATED, *REGTEST_ARGS, *args)
        self.started.append(node)
        return node

    def kill_all(self) -> None:
        for node in self.started:
            node.kill()


# -- 1. a read-only data directory at start -----------------------------------------------------------------


@pytest.mark.parametrize("history", ["fresh", "used"])
def test_a_read_only_data_directory_is_a_one_line_error_and_exit_1(tmp_path, history):
    """"fresh": an empty directory; "used": one a node has run in (its databases and lock file are there)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if history == "used":
        nodes = Nodes()
        try:
            assert nodes.start(data_dir).stop() == 0
        finally:
            nodes.kill_all()
        assert store_path(data_dir).exists()
    before = sorted(path.name for path in data_dir.rglob("*"))
    mount = mount_read_only(data_dir)
    try:
        result = run_node("--port", "0", "--data-dir", str(data_dir), *REGTEST_ARGS, *ISOLATED, timeout=30)
    finally:
        mount.unmount()
    line = assert_one_line_error(result, str(data_dir), code=1)
    assert re.search(r"read-only|readonly", line, re.IGNORECASE), line
    assert "[LISTENING]" not in result.stdout, result.stdout
    assert sorted(path.name for path in data_dir.rglob("*")) == before  # nothing written, nothing lost


# -- 2. the disk fills while the node runs ---------------------------------------------------------------------


@dataclass
class Filled:
    """What a node did when its 2 MiB data directory filled up."""

    scenario: str  # "mining" or "sync"
    data_dir: Path
    mount: Mount
    nodes: Nodes
    committed: dict[int, str] = field(default_factory=dict)  # height -> tip id the node reported on the way
    exit_code: int | None = None  # None: still running REACTION_BOUND s after the disk filled
    reaction: float | None = None  # s from the disk filling to the exit
    log: str = ""
    fed: list[Block] = field(default_factory=list)  # the sync scenario's chain (without genesis)

    @property
    def height(self) -> int:
        return max(self.committed)


def feed_in_background(peer: ChainPeer, blocks: list[Block]) -> threading.Thread:
    """Hand the node blocks on a thread: the node may stop reading (or exit) part-way."""
    def run() -> None:
        try:
            peer.send_blocks(blocks)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True, name="feeder")
    thread.start()
    return thread


def watch_until_full(filled: Filled, node: NodeProcess, watcher: ChainPeer) -> None:
    """Record every tip the node reports until its disk is full, then until it exits (or REACTION_BOUND)."""
    full_at: list[float] = []

    def observe() -> bool:
        if node.process.poll() is not None:
            return True
        try:
            info = watcher.info()
        except (OSError, AssertionError):
            return node.process.poll() is not None  # the connection went with the node
        filled.committed[info.height] = info.tip
        if not full_at and filled.mount.free_bytes() < FULL_MARGIN:
            full_at.append(time.monotonic())
        return bool(full_at) and time.monotonic() - full_at[0] > REACTION_BOUND

    wait_until(observe, timeout=FILL_BOUND + REACTION_BOUND, interval=0.05, message="the disk to fill")
    assert full_at or node.process.poll() is not None, "the node stopped before its disk was full"
    if node.process.poll() is None:
        node.stop()
    else:
        filled.exit_code = node.process.returncode
        filled.reaction = time.monotonic() - full_at[0] if full_at else 0.0
        node.stop()  # closes its log
    filled.log = node.log()


@pytest.fixture(scope="module", params=["mining", "sync"])
def filled(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    """A node on a 2 MiB tmpfs that filled it: by mining, or by storing blocks fed to it."""
    root = tmp_path_factory.mktemp(f"full-{request.param}")
    mount = mount_tmpfs(root / "data", SMALL_DISK)
    nodes = Nodes()
    try:
        filled = Filled(request.param, mount.path, mount, nodes)
        if request.param == "mining":
            node = nodes.start(mount.path, *MINING)
            with ChainPeer.open(node) as watcher:
                watch_until_full(filled, node, watcher)
        else:
            filled.fed = fat_blocks(ChainBuilder(), FED_BLOCKS)
            node = nodes.start(mount.path)
            with ChainPeer.open(node) as feeder, ChainPeer.open(node) as watcher:
                sender = feed_in_background(feeder, filled.fed)
                watch_until_full(filled, node, watcher)
            sender.join(10)
        reaction = f"exit code {filled.exit_code} {filled.reaction:.2f} s after the disk filled" \
            if filled.exit_code is not None else f"still running {REACTION_BOUND:g} s after the disk filled"
        report(f"{request.param}: 2 MiB held blocks up to {filled.height}; {reaction}")
        yield filled
    finally:
        nodes.kill_all()
        mount.unmount()


def test_a_node_whose_disk_fills_logs_one_fatal_line_and_exits_non_zero(filled):
    assert filled.height >= 1, "the node stored nothing before the disk filled"
    assert filled.exit_code is not None, f"still running {REACTION_BOUND:g} s after the disk filled:\n" \
                                         f"{filled.log[-3000:]}"
    assert filled.exit_code != 0, filled.log[-3000:]
    assert "Traceback" not in filled.log, filled.log[-3000:]
    fatal = [line for line in filled.log.splitlines() if "[FATAL]" in line]
    assert len(fatal) == 1 and re.search(r"full|space", fatal[0]), filled.log[-3000:]


def test_after_the_disk_filled_nothing_committed_is_lost_and_with_space_the_node_goes_on(filled):
    filled.mount.resize(ROOMY_DISK)
    store = reopened_chain(store_path(filled.data_dir), filled.committed)
    store.close()
    node = filled.nodes.start(filled.data_dir, *(MINING if filled.scenario == "mining" else ()))
    with ChainPeer.open(node) as client:
        assert client.info().height >= filled.height
        if filled.scenario == "mining":
            wait_until(lambda: client.info().height >= filled.height + 20, timeout=30, interval=0.05,
                       message="the miner to mine on")
        else:
            client.feed(filled.fed)
            info = client.info()
            assert (info.height, info.tip) == (FED_BLOCKS, filled.fed[-1].block_id), info
    assert node.stop() == 0, node.log()[-3000:]
    assert "Traceback" not in node.log()
    store = reopened_chain(store_path(filled.data_dir), filled.committed)
    try:
        assert store.height >= filled.height + (20 if filled.scenario == "mining" else FED_BLOCKS - filled.height)
    finally:
        store.close()


# -- 3. a restart on a disk that is still full ------------------------------------------------------------------


def waiting_store(data_dir: Path, built_in: Path, blocks: int = 100) -> None:
    """Give data_dir a chain whose `blocks` are stored but not yet connected (as when the disk filled
    between storing a block and connecting it), and an address book. Both are built in `built_in`
    (their write-ahead logs outgrow a small disk) and copied over closed, without -wal files."""
    made = built_in / "regtest"
    made.mkdir(parents=True)
    store = ChainStore(made / "chain.sqlite", REGTEST)
    give(store, ChainBuilder().add_blocks(blocks), activate=False)
    store.close()
    AddressBook(made / "peers.sqlite").close()
    shutil.copytree(made, data_dir / "regtest")


def fill_to(mount: Mount, leave: int) -> None:
    """Write a filler file until only `leave` bytes are free."""
    with open(mount.path / "filler", "wb") as filler:
        filler.write(b"\0" * max(0, mount.free_bytes() - leave))
    assert mount.free_bytes() <= leave


def test_a_restart_on_a_disk_that_is_still_full_is_a_one_line_error_and_exit_1(tmp_path):
    mount = mount_tmpfs(tmp_path / "data", "4M")
    try:
        waiting_store(mount.path, tmp_path / "built")
        # Room to open both databases (two 32 KiB shared-memory files and a few pages: 80 KiB, measured)
        # but not to connect the waiting blocks (20 of them took 350 KiB): the first write that fails
        # is a block being connected.
        fill_to(mount, 160 * 1024)
        result = run_node("--port", "0", "--data-dir", str(mount.path), *REGTEST_ARGS, *ISOLATED, timeout=30)
        assert_one_line_error(result, "full", code=1)
        (mount.path / "filler").unlink()
        store = reopened_chain(store_path(mount.path), {})
        store.close()
    finally:
        mount.unmount()
