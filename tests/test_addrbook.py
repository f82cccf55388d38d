"""roles/addrbook.py: the address book and the bans, on a real SQLite file.

Every test opens its own `peers.sqlite` in tmp_path. Time is injected (a
mutable clock), so retry delays and ban expiry are checked to the second
without sleeping.
"""

from __future__ import annotations

import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roles.addrbook import MAX_RETRY_DELAY, TERRIBLE_ATTEMPTS, AddressBook

T0 = 1_700_000_000  # a fixed "now" for the injected clock
UINT64_MAX = 2**64 - 1  # docs/protocol.md §4.1: services is a uint64


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book_path(tmp_path: Path) -> Path:
    return tmp_path / "peers.sqlite"


@pytest.fixture
def book(book_path: Path, clock: Clock):
    book = AddressBook(book_path, capacity=100, clock=clock)
    yield book
    book.close()


def entry(n: int, last_seen: int = T0, port: int = 5050, services: int = 1) -> tuple[str, int, int, int]:
    return (f"127.0.{n // 250}.{n % 250 + 1}", port, services, last_seen)


def addresses(entries) -> set[str]:
    return {e.address for e in entries}


# -- adding and refreshing ------------------------------------------------------------------------


def test_add_counts_only_new_addresses_and_a_refresh_keeps_the_newest_last_seen(book):
    assert book.add([entry(1, T0 - 100), entry(2, T0 - 100)], source="127.0.0.9") == 2
    assert book.count() == 2
    assert book.add([entry(1, T0 - 50, services=0), entry(3, T0)], source="127.0.0.9") == 1
    assert book.count() == 3
    first = book.get("127.0.0.2:5050")
    assert first.last_seen == T0 - 50 and first.services == 0
    assert first.source == "127.0.0.9" and first.attempts == 0 and first.last_success is None
    # An older report never moves last_seen back.
    assert book.add([entry(1, T0 - 1000)], source="127.0.0.10") == 0
    assert book.get("127.0.0.2:5050").last_seen == T0 - 50
    assert book.add([], source="nobody") == 0
    assert book.get("127.0.0.200:5050") is None


def test_the_same_address_twice_in_one_batch_is_one_new_entry(book):
    assert book.add([entry(1, T0 - 10), entry(1, T0)], source="dns") == 1
    assert book.count() == 1
    assert book.get("127.0.0.2:5050").last_seen == T0


def test_ports_make_different_addresses_and_ipv6_is_bracketed(book):
    assert book.add([("127.0.0.5", 5050, 1, T0), ("127.0.0.5", 5051, 1, T0), ("::1", 5050, 1, T0)], "seed") == 3
    assert addresses(book.sample(10)) == {"127.0.0.5:5050", "127.0.0.5:5051", "[::1]:5050"}


def test_services_use_the_whole_uint64_range(book):
    """A peer may announce any uint64 service bits (docs/protocol.md §4.1); the book must store them."""
    book.add([entry(1, services=UINT64_MAX), entry(2, services=2**63)], source="127.0.0.9")
    book.record_success("127.0.0.77", 5050, UINT64_MAX, source="127.0.0.77")
    assert book.get("127.0.0.2:5050").services == UINT64_MAX
    assert book.get("127.0.0.3:5050").services == 2**63
    assert book.get("127.0.0.77:5050").services == UINT64_MAX


# -- the bound ------------------------------------------------------------------------------------


def test_the_book_holds_at_most_capacity_entries_and_evicts_the_stalest(book_path, clock):
    book = AddressBook(book_path, capacity=3, clock=clock)
    try:
        book.add([entry(1, T0 - 30), entry(2, T0 - 20), entry(3, T0 - 10)], source="x")
        assert book.add([entry(4, T0)], source="x") == 1
        assert book.count() == 3
        assert book.get("127.0.0.2:5050") is None, "the stalest entry (last_seen T0-30) must go first"
        assert addresses(book.sample(10)) == {"127.0.0.3:5050", "127.0.0.4:5050", "127.0.0.5:5050"}
        # The evicted address, heard of again and fresh now, is new again and pushes out the next stalest.
        book.add([entry(1, T0 + 5)], source="x")
        assert book.count() == 3
        assert addresses(book.sample(10)) == {"127.0.0.2:5050", "127.0.0.4:5050", "127.0.0.5:5050"}
    finally:
        book.close()


def test_eviction_order_follows_last_seen_including_refreshes(book_path, clock):
    book = AddressBook(book_path, capacity=3, clock=clock)
    try:
        book.add([entry(1, T0 - 30), entry(2, T0 - 20), entry(3, T0 - 10)], source="x")
        book.add([entry(1, T0 + 1)], source="x")  # 127.0.0.2 is now the freshest
        book.add([entry(4, T0)], source="x")  # full: the stalest now is 127.0.0.3 (T0-20)
        assert {e.address for e in book.sample(10)} == {"127.0.0.2:5050", "127.0.0.4:5050", "127.0.0.5:5050"}
        # An entry staler than everything in a full book is itself the one evicted.
        book.add([entry(9, T0 - 1000)], source="x")
        assert book.count() == 3 and book.get("127.0.0.10:5050") is None
        # A batch far beyond the bound leaves the freshest `capacity` entries.
        book.add([entry(100 + i, T0 + 100 + i) for i in range(50)], source="x")
        assert {e.last_seen for e in book.sample(10)} == {T0 + 147, T0 + 148, T0 + 149}
    finally:
        book.close()


def test_record_success_also_respects_the_bound(book_path, clock):
    book = AddressBook(book_path, capacity=2, clock=clock)
    try:
        book.add([entry(1, T0 - 20), entry(2, T0 - 10)], source="x")
        book.record_success("127.0.0.50", 5050, 1, source="127.0.0.50")
        assert book.count() == 2
        assert book.get("127.0.0.2:5050") is None
        assert book.get("127.0.0.50:5050").last_success == T0
    finally:
        book.close()


# -- dialling: candidates, retry delay, exclude --------------------------------------------------------


def test_a_failed_dial_delays_the_next_by_2_4_8_seconds_and_a_success_resets_it(book, clock):
    book.add([entry(1)], source="x")
    address = "127.0.0.2:5050"
    assert addresses(book.candidates(5)) == {address}
    for delay in (2, 4, 8):
        book.record_attempt(address)
        assert book.candidates(5) == [], "dialled just now: not a candidate"
        clock.advance(delay - 1)
        assert book.candidates(5) == [], f"still within the {delay} s retry delay"
        clock.advance(1)
        assert addresses(book.candidates(5)) == {address}, f"the {delay} s delay has passed"
    assert book.get(address).attempts == 3
    book.record_attempt(address)  # a fourth dial, and this time it works
    book.record_success("127.0.0.2", 5050, 1, source="127.0.0.2")
    entry_after = book.get(address)
    assert entry_after.attempts == 0 and entry_after.last_success == int(clock.now)
    clock.advance(1)
    assert addresses(book.candidates(5)) == {address}, "after a success the delay is back to 1 s, not 16 s"


def test_the_retry_delay_is_capped_at_an_hour(book, clock):
    book.add([entry(1)], source="x")
    for _ in range(30):
        book.record_attempt("127.0.0.2:5050")
    clock.advance(MAX_RETRY_DELAY - 1)
    assert book.candidates(1) == []
    clock.advance(1)
    assert len(book.candidates(1)) == 1


def test_candidates_respect_the_limit_and_never_return_excluded_addresses(book):
    book.add([entry(i) for i in range(1, 6)], source="x")
    everything = {f"127.0.0.{i + 1}:5050" for i in range(1, 6)}
    excluded = {"127.0.0.2:5050", "127.0.0.4:5050", "127.0.0.99:5050"}
    for _ in range(20):  # random order: try several draws
        found = addresses(book.candidates(10, exclude=excluded))
        assert found == everything - excluded
        three = book.candidates(3, exclude=excluded)
        assert len(three) == 3 and not addresses(three) & excluded
        assert len(book.candidates(1, exclude=excluded)) == 1
    assert book.candidates(10, exclude=everything) == []


def test_sample_leaves_out_terrible_addresses(book):
    book.add([entry(1), entry(2)], source="x")
    for _ in range(TERRIBLE_ATTEMPTS):
        book.record_attempt("127.0.0.2:5050")
    assert addresses(book.sample(10)) == {"127.0.0.3:5050"}


# -- bans ---------------------------------------------------------------------------------------------


def test_a_banned_host_is_hidden_from_candidates_sample_and_recently_successful(book):
    book.add([entry(1, port=5050), entry(1, port=6000), entry(2)], source="x")
    book.record_success("127.0.0.2", 5050, 1, source="127.0.0.2")
    book.record_success("127.0.0.3", 5050, 1, source="127.0.0.3")
    assert len(book.recently_successful(3600, 10)) == 2
    until = book.ban("127.0.0.2", 600, "misbehaving")
    assert until == T0 + 600
    assert book.banned_until("127.0.0.2") == T0 + 600
    assert book.active_bans() == {"127.0.0.2": T0 + 600}
    # Bans are per IP: every port of the host goes.
    assert addresses(book.candidates(10)) == {"127.0.0.3:5050"}
    assert addresses(book.sample(10)) == {"127.0.0.3:5050"}
    assert addresses(book.recently_successful(3600, 10)) == {"127.0.0.3:5050"}
    assert book.count() == 3, "a ban hides the addresses; it does not delete them"
    book.unban("127.0.0.2")
    assert book.banned_until("127.0.0.2") is None
    assert len(book.candidates(10)) == 3


def test_a_ban_ends_after_its_time_and_forget_expired_bans_removes_it(book, clock):
    book.add([entry(1)], source="x")
    book.ban("127.0.0.2", 60, "misbehaving")
    book.ban("127.0.0.3", 3600, "misbehaving")
    clock.advance(59)
    assert book.banned_until("127.0.0.2") == T0 + 60
    assert book.candidates(10) == []
    assert book.forget_expired_bans() == 0
    clock.advance(1)
    assert book.banned_until("127.0.0.2") is None
    assert book.active_bans() == {"127.0.0.3": T0 + 3600}
    assert addresses(book.candidates(10)) == {"127.0.0.2:5050"}
    assert book.forget_expired_bans() == 1
    assert book.forget_expired_bans() == 0


def test_banning_again_replaces_the_end_and_the_reason(book_path, book, clock):
    book.ban("127.0.0.2", 60, "first")
    book.ban("127.0.0.2", 10, "second")
    assert book.banned_until("127.0.0.2") == T0 + 10
    with closing(sqlite3.connect(book_path)) as db:
        assert db.execute("SELECT host, banned_until, reason FROM bans").fetchall() == [
            ("127.0.0.2", T0 + 10, "second")]


def test_a_ban_lasts_at_least_its_seconds_even_when_they_are_fractional(book_path):
    """--ban-time takes any positive number of seconds; no ban may end before that much time has passed."""
    clock = Clock(T0 + 0.7)
    book = AddressBook(book_path, clock=clock)
    try:
        book.ban("127.0.0.2", 0.5, "short")
        assert book.banned_until("127.0.0.2") is not None, "a 0.5 s ban must be in force right after it starts"
        book.ban("127.0.0.3", 2.5, "longer")
        clock.advance(2.4)
        assert book.banned_until("127.0.0.3") is not None, "a 2.5 s ban ended after 2.4 s"
    finally:
        book.close()


# -- on disk ------------------------------------------------------------------------------------------


def test_entries_attempts_and_bans_survive_close_and_reopen(book_path, clock):
    book = AddressBook(book_path, clock=clock)
    book.add([entry(1, T0 - 5), entry(2, T0 - 6)], source="127.0.0.9")
    book.record_attempt("127.0.0.2:5050")
    book.record_success("127.0.0.40", 5050, 1, source="127.0.0.40")
    book.ban("127.0.0.66", 600, "misbehaving")
    before = {e.address: e for e in book.sample(10)}
    book.close()

    reopened = AddressBook(book_path, clock=clock)
    try:
        assert reopened.count() == 3
        assert {e.address: e for e in reopened.sample(10)} == before
        assert reopened.get("127.0.0.2:5050").attempts == 1
        assert reopened.active_bans() == {"127.0.0.66": T0 + 600}
    finally:
        reopened.close()


def test_the_database_is_in_wal_mode(book_path, book):
    book.add([entry(1)], source="x")
    with closing(sqlite3.connect(book_path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert Path(str(book_path) + "-wal").exists()


def test_another_connection_sees_every_change_at_once(book_path, book):
    """Each change is its own committed transaction: a reader (the sqlite3 shell) never sees half of one."""
    book.add([entry(i) for i in range(10)], source="x")
    book.ban("127.0.0.2", 60, "x")
    with closing(sqlite3.connect(f"file:{book_path}?mode=ro", uri=True)) as db:
        assert db.execute("SELECT count(*) FROM addresses").fetchone()[0] == 10
        assert db.execute("SELECT count(*) FROM bans").fetchone()[0] == 1


# -- any sequence --------------------------------------------------------------------------------------

HOSTS = [f"127.0.0.{i}" for i in range(1, 9)] + ["::1", "10.0.0.1"]
PORTS = [5050, 5051, 6000]
host_ports = st.tuples(st.sampled_from(HOSTS), st.sampled_from(PORTS))
# The role hands the book service bits as received (uint64) and times it has clamped to at most now + 10 min.
services = st.integers(0, UINT64_MAX)
last_seens = st.integers(0, T0 + 600)

operations = st.one_of(
    st.tuples(st.just("add"), st.lists(st.tuples(host_ports, services, last_seens), max_size=12)),
    st.tuples(st.just("attempt"), host_ports),
    st.tuples(st.just("success"), host_ports, services),
    st.tuples(st.just("ban"), st.sampled_from(HOSTS), st.floats(0.001, 10 * 86400)),
    st.tuples(st.just("unban"), st.sampled_from(HOSTS)),
    st.tuples(st.just("forget"),),
    st.tuples(st.just("tick"), st.integers(0, 5000)),
    st.tuples(st.just("candidates"), st.integers(0, 20), st.sets(host_ports, max_size=4)),
    st.tuples(st.just("sample"), st.integers(0, 20)),
    st.tuples(st.just("recent"), st.integers(0, 4000), st.integers(0, 20)),
    st.tuples(st.just("crawl"), st.integers(0, 1200), st.integers(0, 20)),
)


def address_of(host_port: tuple[str, int]) -> str:
    host, port = host_port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 6), ops=st.lists(operations, max_size=30))
def test_any_sequence_of_operations_keeps_the_bound_and_never_raises(capacity, ops):
    clock = Clock()
    with tempfile.TemporaryDirectory() as directory:
        book = AddressBook(Path(directory) / "peers.sqlite", capacity=capacity, clock=clock)
        try:
            for op, *args in ops:
                if op == "add":
                    book.add([(h, p, s, t) for (h, p), s, t in args[0]], source="127.0.0.9")
                elif op == "attempt":
                    book.record_attempt(address_of(args[0]))
                elif op == "success":
                    (host, port), bits = args
                    book.record_success(host, port, bits, source=host)
                elif op == "ban":
                    book.ban(args[0], args[1], "test")
                elif op == "unban":
                    book.unban(args[0])
                elif op == "forget":
                    book.forget_expired_bans()
                elif op == "tick":
                    clock.advance(args[0])
                elif op == "candidates":
                    limit, exclude = args[0], {address_of(hp) for hp in args[1]}
                    found = book.candidates(limit, exclude=exclude)
                    assert len(found) <= limit
                    assert not addresses(found) & exclude
                    banned = set(book.active_bans())
                    assert not {e.host for e in found} & banned
                elif op == "sample":
                    found = book.sample(args[0])
                    assert len(found) <= args[0]
                    assert not {e.host for e in found} & set(book.active_bans())
                elif op == "recent":
                    found = book.recently_successful(args[0], args[1])
                    assert len(found) <= args[1]
                    assert all(e.last_success is not None and e.last_success >= int(clock.now) - args[0]
                               for e in found)
                elif op == "crawl":
                    assert len(book.due_for_crawl(args[0], args[1])) <= args[1]
                assert book.count() <= capacity
            assert len(addresses(book.sample(capacity + 1))) <= capacity
        finally:
            book.close()
