"""The address book: every peer address a node has heard of, and the bans, in SQLite.

Bitcoin keeps these facts in peers.dat and banlist.json; epscoin keeps them in
`peers.sqlite` in the data directory, tables a student can open with the
sqlite3 shell. The book is bounded (the stalest entries are evicted first), so
an addr flood cannot grow it without limit, and every change is one SQLite
transaction in WAL mode, so a node killed at any moment reopens a whole book.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from protocol.addresses import format_address

MAX_ADDRESSES = 20_000  # entries kept; Bitcoin's addrman has (1024 + 256) buckets of 64 = 81,920 slots
MAX_RETRY_DELAY = 3600  # seconds; a failing address is retried after 1, 2, 4, ... s, at most hourly
TERRIBLE_ATTEMPTS = 3  # failed dials since the last success after which an address is not shared

SCHEMA = """
CREATE TABLE IF NOT EXISTS addresses (
    address      TEXT PRIMARY KEY,            -- "ip:port"
    host         TEXT NOT NULL,
    port         INTEGER NOT NULL,
    services     INTEGER NOT NULL DEFAULT 0,  -- 64 service bits, stored as a signed 64-bit integer
    last_seen    INTEGER NOT NULL,            -- when it was last known active (unix seconds)
    last_success INTEGER,                     -- our last completed handshake with it
    last_attempt INTEGER,                     -- our last dial
    attempts     INTEGER NOT NULL DEFAULT 0,  -- failed dials since the last success
    source       TEXT NOT NULL                -- who told us: a peer's IP, "dns", "seed"
);
CREATE INDEX IF NOT EXISTS addresses_by_last_seen ON addresses (last_seen);
CREATE TABLE IF NOT EXISTS bans (
    host         TEXT PRIMARY KEY,            -- bans are per IP, as in Bitcoin
    banned_until INTEGER NOT NULL,
    reason       TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class BookEntry:
    address: str
    host: str
    port: int
    services: int
    last_seen: int
    last_success: int | None
    last_attempt: int | None
    attempts: int
    source: str


_COLUMNS = "address, host, port, services, last_seen, last_success, last_attempt, attempts, source"


def _services_to_sql(services: int) -> int:
    """SQLite integers are signed 64-bit; service bits are unsigned (Bitcoin's uint64): two's complement."""
    return services - 2**64 if services >= 2**63 else services


def _entry(row: tuple) -> "BookEntry":
    address, host, port, services, *rest = row
    return BookEntry(address, host, port, services % 2**64, *rest)


class AddressBook:
    """Thread-safe: one SQLite connection, one lock."""

    def __init__(self, path: Path, capacity: int = MAX_ADDRESSES, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()  # guards _db
        # isolation_level=None: no implicit transactions; each change below opens its own.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: safe against a process crash
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _now(self) -> int:
        return int(self._clock())

    # -- addresses -------------------------------------------------------------

    def add(self, entries: Iterable[tuple[str, int, int, int]], source: str) -> int:
        """Add (host, port, services, last_seen) entries; refresh known ones. Returns how many were new."""
        rows = [(format_address(host, port), host, port, _services_to_sql(services), last_seen, source)
                for host, port, services, last_seen in entries]
        if not rows:
            return 0
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO addresses (address, host, port, services, last_seen, source) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)
            added = self._db.total_changes - before
            self._db.executemany(
                "UPDATE addresses SET last_seen = max(last_seen, ?), services = ? WHERE address = ?",
                [(last_seen, services, address) for address, _, _, services, last_seen, _ in rows])
            self._evict_beyond_capacity()
        return added

    def _evict_beyond_capacity(self) -> None:
        (count,) = self._db.execute("SELECT count(*) FROM addresses").fetchone()
        if count > self.capacity:
            self._db.execute(
                "DELETE FROM addresses WHERE address IN "
                "(SELECT address FROM addresses ORDER BY last_seen ASC LIMIT ?)", (count - self.capacity,))

    def record_attempt(self, address: str) -> None:
        """We are about to dial address (counts as failed until record_success)."""
        with self._lock, self._db:
            self._db.execute("UPDATE addresses SET last_attempt = ?, attempts = attempts + 1 WHERE address = ?",
                             (self._now(), address))

    def record_success(self, host: str, port: int, services: int, source: str) -> None:
        """A handshake with host:port completed: it is alive now."""
        now = self._now()
        address = format_address(host, port)
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO addresses (address, host, port, services, last_seen, last_success, attempts, source) "
                "VALUES (?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (address) DO UPDATE SET "
                "last_seen = excluded.last_seen, last_success = excluded.last_success, attempts = 0, "
                "services = excluded.services",
                (address, host, port, _services_to_sql(services), now, now, source))
            self._evict_beyond_capacity()

    def remove(self, address: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM addresses WHERE address = ?", (address,))

    def get(self, address: str) -> BookEntry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM addresses WHERE address = ?", (address,)).fetchone()
        return _entry(row) if row else None

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM addresses").fetchone()[0]

    def candidates(self, limit: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[BookEntry]:
        """Random addresses worth dialling now: not banned, and past their retry delay."""
        now = self._now()
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM addresses "
                "WHERE (last_attempt IS NULL OR last_attempt + min(?, 1 << min(attempts, 12)) <= ?) "
                "AND host NOT IN (SELECT host FROM bans WHERE banned_until > ?) "
                "ORDER BY random() LIMIT ?",
                (MAX_RETRY_DELAY, now, now, limit + len(exclude))).fetchall()
        return [_entry(row) for row in rows if row[0] not in exclude][:limit]

    def sample(self, limit: int) -> list[BookEntry]:
        """Random shareable addresses, for a getaddr answer."""
        now = self._now()
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM addresses WHERE attempts < ? "
                "AND host NOT IN (SELECT host FROM bans WHERE banned_until > ?) ORDER BY random() LIMIT ?",
                (TERRIBLE_ATTEMPTS, now, limit)).fetchall()
        return [_entry(row) for row in rows]

    def recently_successful(self, within: float, limit: int) -> list[BookEntry]:
        """Random addresses we completed a handshake with in the last `within` seconds (for the DNS seeder)."""
        now = self._now()
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM addresses WHERE last_success >= ? "
                "AND host NOT IN (SELECT host FROM bans WHERE banned_until > ?) ORDER BY random() LIMIT ?",
                (now - within, now, limit)).fetchall()
        return [_entry(row) for row in rows]

    def due_for_crawl(self, older_than: float, limit: int) -> list[BookEntry]:
        """Addresses not confirmed alive within `older_than` seconds and not dialled as long, oldest first."""
        cutoff = self._now() - older_than
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM addresses WHERE (last_success IS NULL OR last_success < ?) "
                "AND (last_attempt IS NULL OR last_attempt + min(?, 1 << min(attempts, 12)) <= ?) "
                "ORDER BY last_attempt IS NOT NULL, last_attempt LIMIT ?",
                (cutoff, MAX_RETRY_DELAY, self._now(), limit)).fetchall()
        return [_entry(row) for row in rows]

    # -- bans --------------------------------------------------------------------

    def ban(self, host: str, seconds: float, reason: str) -> int:
        """Ban host for `seconds`; returns when the ban ends (unix seconds)."""
        until = math.ceil(self._clock() + seconds)  # rounded up: a ban never ends early
        with self._lock, self._db:
            self._db.execute("INSERT INTO bans (host, banned_until, reason) VALUES (?, ?, ?) "
                             "ON CONFLICT (host) DO UPDATE SET banned_until = excluded.banned_until, "
                             "reason = excluded.reason", (host, until, reason))
        return until

    def unban(self, host: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM bans WHERE host = ?", (host,))

    def banned_until(self, host: str) -> int | None:
        """When host's ban ends, or None if it is not banned now."""
        with self._lock:
            row = self._db.execute("SELECT banned_until FROM bans WHERE host = ? AND banned_until > ?",
                                   (host, self._now())).fetchone()
        return row[0] if row else None

    def active_bans(self) -> dict[str, int]:
        """Every current ban: host -> banned until (unix seconds)."""
        with self._lock:
            rows = self._db.execute("SELECT host, banned_until FROM bans WHERE banned_until > ?",
                                    (self._now(),)).fetchall()
        return dict(rows)

    def forget_expired_bans(self) -> int:
        with self._lock, self._db:
            return self._db.execute("DELETE FROM bans WHERE banned_until <= ?", (self._now(),)).rowcount
