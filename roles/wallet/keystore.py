"""The keystore: the wallet's private keys, encrypted under a passphrase, in one file written atomically.

The file is JSON a person can read; nothing in it is secret but the `data`,
which is encrypted:

    {"format": "epscoin-keystore", "version": 1, "network": "regtest",
     "kdf": {"name": "scrypt", "n": 65536, "r": 8, "p": 1, "salt": "<32 hex>"},
     "cipher": {"name": "chacha20poly1305", "nonce": "<24 hex>"},
     "check": "<32 hex>",
     "data": "<hex of the encrypted keys>"}

- scrypt turns the passphrase and the salt into 64 bytes. The first 32 are
  the ChaCha20-Poly1305 key; a hash of the last 32 is `check`, so a wrong
  passphrase is told apart from a damaged file without trying to decrypt.
  scrypt costs memory as well as time (n * r * 128 bytes = 64 MiB a guess),
  which is what makes guessing passphrases on a stolen file slow.
- Every field but `data` is the cipher's associated data: changing any of
  them (the network, the scrypt cost) makes decryption fail, as changing
  a byte of `data` does.
- The keys are random: 32 bytes from `secrets` each, as Bitcoin Core's
  wallets were before HD wallets (BIP 32). There is no derivation to get
  wrong and no seed whose loss takes every key; the price is that a backup
  holds only the keys made before it. The file is rewritten with each new
  key, and a wallet saves a change key before it sends the payment that
  uses it, so the file on disk always holds every key that may hold coins.
- A write goes to a temporary file in the same directory (mode 0600), is
  fsynced, then renamed over the old file with os.replace, and the
  directory is fsynced: a crash at any moment leaves the old file or the
  new one, never half of one.

- One process at a time uses a wallet (WalletLock, flock on FILE.lock), so two
  clients never each write a keystore the other's new key is missing from.

The keys never leave this process: the wallet signs here and sends only
signed transactions.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from protocol.coin_address import encode_address, pubkey_hash
from protocol.networks import Network

FORMAT = "epscoin-keystore"
FORMAT_VERSION = 1
FILE_MODE = 0o600  # owner read and write only
SALT_SIZE = 16
NONCE_SIZE = 12  # ChaCha20-Poly1305's nonce; random per write, the key is used for a few writes only
CHECK_SIZE = 16
# Bounds on scrypt parameters read from a file: a damaged (or hostile) file must not make
# the wallet allocate gigabytes. 2^20 * 8 * 128 bytes = 1 GiB is the most it may ask.
MIN_LOG2_N, MAX_LOG2_N = 10, 20
MAX_R, MAX_P = 16, 4
KEY_KINDS = ("receive", "change")
LOCK_WAIT = 15.0  # seconds a second process waits for a wallet another one is using


class KeystoreError(Exception):
    """The keystore cannot be read or written; str() is one line for the person."""


@dataclass(frozen=True)
class KdfParams:
    """scrypt's cost: n (a power of two) times r times 128 bytes of memory, p lanes."""

    n: int = 2**16  # 64 MiB and ~0.2 s a guess on a 2020s laptop core
    r: int = 8
    p: int = 1

    def check(self) -> None:
        if self.n & (self.n - 1) or not 2**MIN_LOG2_N <= self.n <= 2**MAX_LOG2_N:
            raise KeystoreError(f"scrypt n must be a power of two from 2^{MIN_LOG2_N} to 2^{MAX_LOG2_N}")
        if not 1 <= self.r <= MAX_R or not 1 <= self.p <= MAX_P:
            raise KeystoreError(f"scrypt r must be 1 to {MAX_R} and p 1 to {MAX_P}")


@dataclass(frozen=True)
class StoredKey:
    """One private key, when it was made, and whether it was handed out to payers or used for change."""

    secret: bytes  # 32 bytes
    created: int  # seconds since 1970
    kind: str  # "receive" or "change"

    @property
    def private_key(self) -> coincurve.PrivateKey:
        return coincurve.PrivateKey(self.secret)

    @property
    def pubkey(self) -> bytes:
        return self.private_key.public_key.format()  # 33 bytes, compressed

    def address(self, network: Network) -> str:
        return encode_address(network.address_prefix, pubkey_hash(self.pubkey))


def new_secret() -> bytes:
    """32 random bytes that are a valid secp256k1 private key (0 < k < n; anything else is retried)."""
    while True:
        secret = secrets.token_bytes(32)
        try:
            coincurve.PrivateKey(secret)
            return secret
        except ValueError:  # probability about 2^-128
            continue


def fresh_key(kind: str) -> StoredKey:
    """A new key, not yet in any keystore (Keystore.keep saves it)."""
    return StoredKey(new_secret(), int(time.time()), kind)


def _derive(passphrase: str, salt: bytes, kdf: KdfParams) -> tuple[bytes, bytes]:
    """(cipher key, passphrase check) from scrypt's 64 bytes."""
    stretched = Scrypt(salt=salt, length=64, n=kdf.n, r=kdf.r, p=kdf.p).derive(passphrase.encode("utf-8"))
    return stretched[:32], hashlib.sha256(b"epscoin-keystore-check" + stretched[32:]).digest()[:CHECK_SIZE]


def _associated_data(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


class Keystore:
    """The keys of one wallet file, held decrypted in memory while the wallet runs."""

    def __init__(self, path: Path, network: str, keys: list[StoredKey], kdf: KdfParams, salt: bytes,
                 cipher_key: bytes, check: bytes) -> None:
        self.path = path
        self.network = network
        self.keys = keys
        self._kdf = kdf
        self._salt = salt
        self._cipher_key = cipher_key  # the passphrase itself is not kept
        self._check = check

    # -- creating and opening -------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, passphrase: str, network: str, kdf: KdfParams = KdfParams()) -> "Keystore":
        """A new keystore file with one receive key; KeystoreError if the file exists."""
        if not passphrase:
            raise KeystoreError("the passphrase may not be empty")
        kdf.check()
        salt = secrets.token_bytes(SALT_SIZE)
        cipher_key, check = _derive(passphrase, salt, kdf)
        store = cls(path, network, [fresh_key("receive")], kdf, salt, cipher_key, check)
        store._write(overwrite=False)
        return store

    @classmethod
    def open(cls, path: Path, passphrase: str) -> "Keystore":
        """Read and decrypt; KeystoreError saying whether the passphrase is wrong or the file damaged."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(f"no keystore at {path}") from None
        except OSError as error:
            raise KeystoreError(f"cannot read {path}: {error.strerror or error}") from None
        header, data = _parse_file(raw, path)
        kdf = KdfParams(header["kdf"]["n"], header["kdf"]["r"], header["kdf"]["p"])
        salt = bytes.fromhex(header["kdf"]["salt"])
        cipher_key, check = _derive(passphrase, salt, kdf)
        if not secrets.compare_digest(check, bytes.fromhex(header["check"])):
            raise KeystoreError(f"wrong passphrase for {path}")
        try:
            plain = ChaCha20Poly1305(cipher_key).decrypt(bytes.fromhex(header["cipher"]["nonce"]), data,
                                                          _associated_data(header))
        except InvalidTag:
            raise KeystoreError(f"{path} is damaged: its encrypted data fails the integrity check") from None
        keys = _parse_keys(plain, path)
        return cls(path, header["network"], keys, kdf, salt, cipher_key, check)

    # -- changing -------------------------------------------------------------------------------

    def add_key(self, kind: str = "receive") -> StoredKey:
        """A new random key, saved to disk before it is returned (so no coin can reach an unsaved key)."""
        return self.keep(fresh_key(kind))

    def keep(self, key: StoredKey) -> StoredKey:
        """Add a key made with fresh_key and save the file; only then may anything pay it."""
        if key.kind not in KEY_KINDS:
            raise ValueError(f"kind must be one of {KEY_KINDS}")
        self.keys.append(key)
        try:
            self._write(overwrite=True)
        except BaseException:
            self.keys.pop()
            raise
        return key

    def _write(self, overwrite: bool) -> None:
        header = {"format": FORMAT, "version": FORMAT_VERSION, "network": self.network,
                  "kdf": {"name": "scrypt", "n": self._kdf.n, "r": self._kdf.r, "p": self._kdf.p,
                          "salt": self._salt.hex()},
                  "cipher": {"name": "chacha20poly1305", "nonce": secrets.token_bytes(NONCE_SIZE).hex()},
                  "check": self._check.hex()}
        plain = json.dumps({"keys": [{"secret": key.secret.hex(), "created": key.created, "kind": key.kind}
                                     for key in self.keys]}, sort_keys=True).encode("utf-8")
        data = ChaCha20Poly1305(self._cipher_key).encrypt(bytes.fromhex(header["cipher"]["nonce"]), plain,
                                                          _associated_data(header))
        text = json.dumps({**header, "data": data.hex()}, indent=1, sort_keys=True) + "\n"
        write_atomic(self.path, text.encode("utf-8"), overwrite=overwrite)


# -- reading the file ------------------------------------------------------------------------------


def _parse_file(raw: bytes, path: Path) -> tuple[dict[str, Any], bytes]:
    """The header (every field but data) and the ciphertext; KeystoreError for anything malformed."""
    def bad(why: str) -> KeystoreError:
        return KeystoreError(f"{path} is not a readable keystore: {why}")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("not JSON (damaged or truncated?)") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise bad(f"no \"format\": \"{FORMAT}\"")
    if value.get("version") != FORMAT_VERSION:
        raise bad(f"version {value.get('version')!r}, this program reads version {FORMAT_VERSION}")
    kdf, cipher = value.get("kdf"), value.get("cipher")
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt" or not all(
            type(kdf.get(name)) is int for name in ("n", "r", "p")):
        raise bad("the kdf must be scrypt with integer n, r and p")
    try:
        KdfParams(kdf["n"], kdf["r"], kdf["p"]).check()
    except KeystoreError as error:
        raise bad(str(error)) from None
    if not isinstance(cipher, dict) or cipher.get("name") != "chacha20poly1305":
        raise bad("the cipher must be chacha20poly1305")
    sizes = {"salt": (kdf.get("salt"), SALT_SIZE), "nonce": (cipher.get("nonce"), NONCE_SIZE),
             "check": (value.get("check"), CHECK_SIZE)}
    for name, (text, size) in sizes.items():
        if not _is_hex(text, size):
            raise bad(f"{name} must be {size} bytes in hex")
    if not isinstance(value.get("network"), str) or not isinstance(value.get("data"), str) or \
            not _is_hex(value["data"]):
        raise bad("network must be text and data hex")
    header = {name: field for name, field in value.items() if name != "data"}
    return header, bytes.fromhex(value["data"])


def _is_hex(text: Any, size: int | None = None) -> bool:
    if not isinstance(text, str) or len(text) % 2 or (size is not None and len(text) != 2 * size):
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return text == text.lower()


def _parse_keys(plain: bytes, path: Path) -> list[StoredKey]:
    # Authenticated, so only a bug (or a file written by another program with our key) gets here malformed.
    try:
        items = json.loads(plain)["keys"]
        keys = [StoredKey(bytes.fromhex(item["secret"]), int(item["created"]), item["kind"]) for item in items]
        for key in keys:
            coincurve.PrivateKey(key.secret)
    except (ValueError, KeyError, TypeError) as error:
        raise KeystoreError(f"{path} decrypts, but its key list is malformed: {error}") from None
    return keys


def loose_permissions(path: Path) -> int | None:
    """The file's mode when group or others may read or write it, else None."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


class WalletLock:
    """One process at a time per wallet file, as Bitcoin Core's wallet `.lock`.

    Two processes each adding a key to the same keystore would each write the file without the
    other's new key, and coins paid to the lost key would be lost with it. The lock (flock on
    FILE.lock) is held until the process ends; a second process waits up to LOCK_WAIT seconds.
    """

    def __init__(self, path: Path, wait: float = LOCK_WAIT) -> None:
        self.path = path.with_name(path.name + ".lock")
        try:
            self._file = open(self.path, "a")
        except OSError as error:
            raise KeystoreError(f"cannot lock {path}: {error.strerror or error}") from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._file.close()
                    raise KeystoreError(f"{path} is in use by another process (waited {wait:g} s)") from None
                time.sleep(0.05)  # the other process may be a one-shot command about to finish

    def release(self) -> None:
        self._file.close()  # closing the descriptor drops the lock


# -- atomic writes ------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, overwrite: bool = True) -> None:
    """Replace (or, with overwrite False, create) `path` so that a crash leaves the old file or the new one.

    The temporary file is in the same directory (a rename is atomic only within one file system)
    and is created with mode 0600, so the secret is never readable by others, not even briefly.
    """
    directory = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 is masked by the umask; say it exactly
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        if overwrite:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)  # atomic, and fails rather than clobber an existing wallet
            except FileExistsError:
                raise KeystoreError(f"{path} already exists; not overwriting a wallet") from None
            os.unlink(temp)
        _fsync_directory(directory)  # the rename itself is on disk
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
