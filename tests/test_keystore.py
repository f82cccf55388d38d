"""The wallet keystore: encrypted under a passphrase, mode 0600, a clear error for each way it can fail,
and atomic writes (a process killed while writing leaves the old file whole)."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.networks import NETWORKS
from roles.wallet.keystore import FILE_MODE, KdfParams, Keystore, KeystoreError, WalletLock, loose_permissions
from tests.support import ROOT, wait_until

CHEAP = KdfParams(n=2**10)  # the format's smallest scrypt cost: tests open many files; the default is 2^16
PASSPHRASE = "correct horse battery staple"
REGTEST = NETWORKS["regtest"]


def secrets_of(store: Keystore) -> list[tuple[bytes, str]]:
    return [(key.secret, key.kind) for key in store.keys]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_keystore_reopens_with_its_keys_and_stays_mode_0600_whatever_the_umask(tmp_path):
    path = tmp_path / "shop.wallet"
    old_umask = os.umask(0)  # the most permissive: the file must still be 0600
    try:
        store = Keystore.create(path, PASSPHRASE, "regtest", CHEAP)
        assert mode_of(path) == FILE_MODE
        store.add_key("change")
        store.add_key("receive")
        assert mode_of(path) == FILE_MODE
    finally:
        os.umask(old_umask)
    again = Keystore.open(path, PASSPHRASE)
    assert again.network == "regtest" and len(again.keys) == 3
    assert secrets_of(again) == secrets_of(store)
    assert [key.kind for key in again.keys] == ["receive", "change", "receive"]
    assert len({key.address(REGTEST) for key in again.keys}) == 3
    assert all(key.address(REGTEST).startswith("R") for key in again.keys)
    text = path.read_text()
    assert all(key.secret.hex() not in text for key in store.keys)  # no secret in clear
    assert not list(tmp_path.glob(".shop.wallet.*"))  # no temporary file left behind
    assert loose_permissions(path) is None
    path.chmod(0o644)
    assert loose_permissions(path) == 0o644


def test_a_wrong_passphrase_is_told_apart_from_a_damaged_file(tmp_path):
    path = tmp_path / "w"
    Keystore.create(path, PASSPHRASE, "regtest", CHEAP)
    with pytest.raises(KeystoreError, match=r"^wrong passphrase for .*w$"):
        Keystore.open(path, PASSPHRASE + "!")
    value = json.loads(path.read_text())
    data = bytearray(bytes.fromhex(value["data"]))
    data[5] ^= 1
    path.write_text(json.dumps({**value, "data": data.hex()}))
    with pytest.raises(KeystoreError, match="is damaged: its encrypted data fails the integrity check"):
        Keystore.open(path, PASSPHRASE)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:len(raw) // 2], "not JSON"),
    (lambda raw: b"\x00\xff" * 40, "not JSON"),
    (lambda raw: b"[]", 'no "format"'),
    (lambda raw: _edit(raw, version=2), "version 2"),
    (lambda raw: _edit(raw, network="main"), "is damaged"),  # the header is authenticated too
    (lambda raw: _edit(raw, kdf_n=2**30), "scrypt n must be a power of two"),  # never allocates 128 GiB
    (lambda raw: _edit(raw, kdf_n=3000), "scrypt n must be a power of two"),
    (lambda raw: _edit(raw, nonce="00"), "nonce must be 12 bytes"),
    (lambda raw: _edit(raw, data="zz"), "data hex"),
])
def test_a_damaged_file_gets_a_one_line_reason(tmp_path, damage, message):
    path = tmp_path / "w"
    Keystore.create(path, PASSPHRASE, "regtest", CHEAP)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(KeystoreError, match=message) as caught:
        Keystore.open(path, PASSPHRASE)
    assert "\n" not in str(caught.value)


def _edit(raw: bytes, version=None, network=None, kdf_n=None, nonce=None, data=None) -> bytes:
    value = json.loads(raw)
    if version is not None:
        value["version"] = version
    if network is not None:
        value["network"] = network
    if kdf_n is not None:
        value["kdf"]["n"] = kdf_n
    if nonce is not None:
        value["cipher"]["nonce"] = nonce
    if data is not None:
        value["data"] = data
    return json.dumps(value).encode()


def test_missing_file_and_existing_file(tmp_path):
    with pytest.raises(KeystoreError, match="no keystore at"):
        Keystore.open(tmp_path / "nothing", PASSPHRASE)
    path = tmp_path / "w"
    first = Keystore.create(path, PASSPHRASE, "regtest", CHEAP)
    with pytest.raises(KeystoreError, match="already exists"):
        Keystore.create(path, "another", "regtest", CHEAP)
    assert secrets_of(Keystore.open(path, PASSPHRASE)) == secrets_of(first)  # untouched
    with pytest.raises(KeystoreError, match="may not be empty"):
        Keystore.create(tmp_path / "v", "", "regtest", CHEAP)


_SAMPLE: dict[str, bytes] = {}


def _sample_file(directory: Path) -> tuple[bytes, list]:
    if "raw" not in _SAMPLE:
        store = Keystore.create(directory / "sample", PASSPHRASE, "regtest", CHEAP)
        store.add_key("change")
        _SAMPLE["raw"] = (directory / "sample").read_bytes()
        _SAMPLE["keys"] = secrets_of(store)
    return _SAMPLE["raw"], _SAMPLE["keys"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255),
       truncate=st.booleans())
def test_any_damage_is_refused_or_harmless_never_other_keys(tmp_path, position, byte, truncate):
    raw, keys = _sample_file(tmp_path)
    position %= len(raw)
    damaged = raw[:position] if truncate else raw[:position] + bytes([byte]) + raw[position + 1:]
    path = tmp_path / "damaged"
    path.write_bytes(damaged)
    try:
        store = Keystore.open(path, PASSPHRASE)
    except KeystoreError as error:
        assert "\n" not in str(error)
        return
    assert secrets_of(store) == keys  # e.g. a space changed in the layout: the same keys, or none


# -- atomic writes: a process killed while writing ----------------------------------------------------

CHILD_SETUP = """
import os, stat, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from roles.wallet.keystore import Keystore
store = Keystore.open(Path({path!r}), {passphrase!r})
"""

# Stops the writer after its temporary file holds the new contents, before the rename: where a crash hurts most.
PAUSE_IN_FSYNC = """
real_fsync = os.fsync
def fsync_then_hang(fd):
    real_fsync(fd)
    if stat.S_ISREG(os.fstat(fd).st_mode):  # the temporary file's fsync, not the directory's
        print("written, not yet renamed", flush=True)
        time.sleep(60)
os.fsync = fsync_then_hang
store.add_key("receive")
"""

WRITE_FOREVER = """
print("writing", flush=True)
while True:
    store.add_key("receive")
"""


def start_writer(tmp_path: Path, path: Path, body: str) -> subprocess.Popen:
    script = CHILD_SETUP.format(root=str(ROOT), path=str(path), passphrase=PASSPHRASE) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)


def test_a_writer_killed_between_write_and_rename_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "shop.wallet"
    before = Keystore.create(path, PASSPHRASE, "regtest", CHEAP)
    old_bytes = path.read_bytes()
    child = start_writer(tmp_path, path, PAUSE_IN_FSYNC)
    try:
        assert child.stdout.readline().strip() == "written, not yet renamed"
        temporary = wait_until(lambda: list(tmp_path.glob(".shop.wallet.*.tmp")), message="the temporary file")
        assert mode_of(temporary[0]) == FILE_MODE
        assert len(Keystore.open(temporary[0], PASSPHRASE).keys) == 2  # the new version, complete, not yet named
    finally:
        child.kill()  # SIGKILL: no cleanup code runs, as in a power cut
        child.wait()
    assert path.read_bytes() == old_bytes
    assert secrets_of(Keystore.open(path, PASSPHRASE)) == secrets_of(before)


def test_writers_killed_at_random_moments_always_leave_a_readable_file(tmp_path):
    path = tmp_path / "shop.wallet"
    first = Keystore.create(path, PASSPHRASE, "regtest", CHEAP)
    rng = random.Random(6)
    counts = []
    for _ in range(5):
        child = start_writer(tmp_path, path, WRITE_FOREVER)
        try:
            assert child.stdout.readline().strip() == "writing"
            start = path.stat().st_mtime_ns
            wait_until(lambda: path.stat().st_mtime_ns != start, timeout=10, message="a first rewrite")
            time.sleep(rng.uniform(0.0, 0.05))  # pacing: a random moment in the writing, not a wait for a condition
        finally:
            child.kill()
            child.wait()
        store = Keystore.open(path, PASSPHRASE)  # never half a file, whenever the kill came
        assert secrets_of(store)[0] == secrets_of(first)[0]
        counts.append(len(store.keys))
    assert counts == sorted(counts) and counts[-1] > counts[0]  # writes did happen, and none was lost


def test_one_process_at_a_time_holds_a_wallet(tmp_path):
    path = tmp_path / "shop.wallet"
    first = WalletLock(path)
    with pytest.raises(KeystoreError, match=r"shop.wallet is in use by another process \(waited 0.2 s\)"):
        WalletLock(path, wait=0.2)  # flock: a second open file conflicts, in this process as in another
    first.release()
    WalletLock(path, wait=0.2).release()
