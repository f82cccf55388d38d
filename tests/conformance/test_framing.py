"""§2 Framing: headers, exact reads, sizes, keepalives, bad frames, and the frame timeout."""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .spec import spec
from .wire import (
    HEADER,
    KEEPALIVE,
    MAX_PAYLOAD,
    compact,
    expect,
    expect_closed,
    expect_error,
    frame,
    frames,
    handshake,
    header,
    sync,
)

# -- §2.1 header ---------------------------------------------------------------------------


@spec("§2.1", "a receiver accepts leading zeros in the header")
@pytest.mark.parametrize("length_field", [b"0004", b"0" * 63 + b"4"], ids=["0004", "64 digits"])
def test_leading_zeros_accepted(ready, length_field):
    ready.send_raw(header(length_field) + b"ping")
    msg = expect(ready, "pong", why="to a ping whose header has leading zeros")
    assert "nonce" not in msg.body, f"a bare ping gets a bare pong (§4.3), got {msg}"
    sync(ready, why="after the leading-zero frame")


# -- §2.2 reading --------------------------------------------------------------------------


@spec("§2.2", "frames sent one byte per TCP segment are read exactly (handshake and ping)")
def test_one_byte_segments(peer):
    peer.send_trickle(frame(compact("version", {"user_agent": "/trickle/"})))
    expect(peer, "version", why="to a version that arrived one byte per segment")
    expect(peer, "verack", why="to a version that arrived one byte per segment")
    peer.send_trickle(frame(compact("ping", {"nonce": 12345})))
    msg = expect(peer, "pong", why="to a ping that arrived one byte per segment")
    assert msg.get("nonce") == 12345, f"the pong must echo nonce 12345 (§4.3), got {msg}"
    sync(peer, why="after the trickled frames")


@spec("§2.2", "a header split from its payload, and a payload in pieces, are read exactly")
def test_header_and_payload_in_separate_segments(ready):
    data = frame(compact("ping", {"nonce": 99, "pad": "x" * 3000}))
    for chunk in (data[:10], data[10:HEADER], data[HEADER:HEADER + 1], data[HEADER + 1:2000], data[2000:]):
        ready.send_raw(chunk, what="a ping in five pieces")
        time.sleep(0.002)  # pacing, so the pieces arrive as separate segments
    msg = expect(ready, "pong", why="to a ping sent in five pieces")
    assert msg.get("nonce") == 99, msg


@spec("§2.2", "several frames arriving in one segment are each processed, in order", also=("§6.1",))
def test_coalesced_frames(peer):
    peer.send_raw(frames(compact("version", {"user_agent": "/coalesced/"}), compact("ping", {"nonce": 1}),
                         compact("ping", {"nonce": 2}), "ping", compact("ping", {"nonce": 3})))
    expect(peer, "version")
    expect(peer, "verack")
    for nonce in (1, 2, None, 3):
        msg = expect(peer, "pong", why=f"to ping {nonce} of a coalesced segment")
        assert msg.get("nonce") == nonce, f"answers must come in order (§6.1): expected nonce {nonce}, got {msg}"


@st.composite
def split_stream(draw):
    """A run of pings of assorted sizes, cut into segments at random byte offsets."""
    nonces = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=5))
    stream = b""
    for nonce in nonces:
        pad = draw(st.sampled_from(["", "x" * 10, "é" * 100, "y" * 2000]))
        stream += frame(compact("ping", {"nonce": nonce, "pad": pad} if pad else {"nonce": nonce}))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    return nonces, pieces


@spec("§2.2", "any segmentation of a frame stream is read exactly (hypothesis: random cut points)")
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: a failing node would make it slow
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=split_stream())
def test_random_segmentation(connect, case):
    nonces, pieces = case
    peer = connect()
    for piece in pieces:
        peer.send_raw(piece)
        time.sleep(0.001)  # pacing: let each piece leave as its own segment
    for nonce in nonces:
        msg = expect(peer, "pong", why=f"to ping {nonce} of a randomly split stream")
        assert msg.get("nonce") == nonce, f"expected the pong for nonce {nonce}, got {msg}"
    peer.close()


def _stall_and_watch(target, stalled, bystander, idle, partial: bytes) -> float:
    """Send a partial frame on `stalled`; keep the bystander busy until the node drops the stalled peer."""
    stalled.send_raw(partial)
    started = time.monotonic()
    deadline = started + target.frame_timeout + target.timer_slack + target.reply_timeout
    served = 0
    while not stalled.readable(0.05):
        assert time.monotonic() < deadline, (
            f"the node did not close a stalled frame within the frame timeout "
            f"({target.frame_timeout:g} s + {target.timer_slack:g} s)")
        sync(bystander, why="while another peer stalls mid-frame")  # the rest are served meanwhile
        served += 1
    error = expect_error(stalled, startswith="frame timeout", command=None,
                         why="for a frame not finished within the frame timeout")
    elapsed = time.monotonic() - started
    expect_closed(stalled, why="after the frame-timeout error")
    assert elapsed >= target.frame_timeout * 0.98 - 0.02, (
        f"dropped after {elapsed:.2f} s, before the frame timeout of {target.frame_timeout:g} s: {error}")
    assert served > 0
    sync(idle, why="on an idle ready connection (there is no idle timeout, §8)")
    return elapsed


@spec("§2.2", "a header not finished within the frame timeout: error 'frame timeout', close; others served",
      also=("§8",))
def test_frame_timeout_in_header(target, connect):
    stalled, bystander, idle = connect(name="stalled"), connect(name="bystander"), connect(name="idle")
    for p in (stalled, bystander, idle):
        handshake(p)
    _stall_and_watch(target, stalled, bystander, idle, b"12")


@spec("§2.2", "a payload not finished within the frame timeout: error 'frame timeout', close; others served",
      also=("§8",))
def test_frame_timeout_in_payload(target, connect):
    stalled, bystander, idle = connect(name="stalled"), connect(name="bystander"), connect(name="idle")
    for p in (stalled, bystander, idle):
        handshake(p)
    _stall_and_watch(target, stalled, bystander, idle, header(b"20") + b"ping {")


# -- §2.3 writing ----------------------------------------------------------------------------


@spec("§2.3", "frames written by different threads never interleave (concurrent relays + pongs)")
def test_frames_do_not_interleave(connect, needs_chat):
    receiver = connect(name="receiver")
    handshake(receiver)
    senders = [connect(name=f"sender{i}") for i in range(4)]
    for s in senders:
        handshake(s)
    lines = 40
    text = "interleave-" + "é" * 900  # large frames make a torn write likely if writes are not atomic
    errors: list[BaseException] = []

    def talk(index, sender):
        try:
            sender.send_raw(frames(*[f"{text} {index}:{n}" for n in range(lines)]))
            acks = 0
            while acks < lines:  # the other senders' lines are relayed here too
                msg = sender.next(timeout=10)
                assert msg.word in ("ack", "chat"), f"{sender.name} got {msg}"
                acks += msg.word == "ack"
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=talk, args=(i, s)) for i, s in enumerate(senders)]
    for t in threads:
        t.start()
    receiver.send_raw(frames(*[compact("ping", {"nonce": n}) for n in range(50)]))
    seen, pongs = set(), 0
    deadline = time.monotonic() + 20
    while len(seen) < lines * len(senders) or pongs < 50:
        assert time.monotonic() < deadline, f"got {len(seen)} relayed lines and {pongs} pongs"
        msg = receiver.next(timeout=10)  # a torn frame fails here: bad header, bad UTF-8 or bad JSON
        if msg.word == "pong":
            assert msg.get("nonce") == pongs, f"pongs out of order: expected {pongs}, got {msg}"
            pongs += 1
        else:
            assert msg.word == "chat" and msg.body is not None, f"unexpected frame {msg}"
            assert msg.get("text", "").startswith(text), f"a relayed line arrived altered: {msg}"
            seen.add(msg.get("text"))
    for t in threads:
        t.join(10)
    assert not errors, errors[0]


def _round_trips(peer, count: int, limit_ms: float | None = None) -> list[float]:
    """Round-trip times in ms. With limit_ms, stops as soon as more than half are over it
    (the median is then over it too), so a slow node fails fast."""
    times = []
    for n in range(count):
        started = time.perf_counter()
        peer.send(compact("ping", {"nonce": n}))
        msg = expect(peer, "pong")
        times.append((time.perf_counter() - started) * 1000)
        assert msg.get("nonce") == n, msg
        if limit_ms is not None and sum(t >= limit_ms for t in times) > count // 2:
            break
    return times


LATENCY_LIMIT_MS = 20.0  # loopback with one write per frame: well under 1 ms; Nagle + delayed ACK: ~40 ms
LATENCY_SAMPLES = 30


@spec("§2.3", "a ping round trip on loopback is well under 20 ms (one write per frame, TCP_NODELAY)",
      level="SHOULD")
def test_ping_round_trip_latency(ready):
    _round_trips(ready, 5)  # warm-up: the kernel ACKs the first segments of a connection at once
    times = _round_trips(ready, LATENCY_SAMPLES, LATENCY_LIMIT_MS)
    median = statistics.median(times + [0.0] * (LATENCY_SAMPLES - len(times)))
    assert median < LATENCY_LIMIT_MS, (
        f"median ping round trip {statistics.median(times):.1f} ms (min {min(times):.1f}, max {max(times):.1f}) "
        f"over {len(times)} pings: the node splits a frame over two writes or leaves Nagle on (§2.3)")


@spec("§2.3", "frames sent back to back (version then verack, three pongs) arrive without a Nagle delay",
      level="SHOULD")
def test_back_to_back_frames_latency(connect):
    times = []
    for n in range(8):
        peer = connect()
        started = time.perf_counter()
        peer.send(compact("version", {"user_agent": "/latency/"}))
        expect(peer, "version")
        expect(peer, "verack")
        peer.send_raw(frames(*[compact("ping", {"nonce": k}) for k in range(3)]))
        for _ in range(3):
            expect(peer, "pong")
        times.append((time.perf_counter() - started) * 1000)
        peer.close()
    median = statistics.median(times[2:])
    assert median < LATENCY_LIMIT_MS, (
        f"handshake plus three pongs took a median {median:.1f} ms (all: "
        f"{', '.join(f'{t:.1f}' for t in times)}): frames in a row wait for ACKs (TCP_NODELAY, §2.3)")


# -- §2.4 size -------------------------------------------------------------------------------


def _max_size_ping(nonce: int) -> bytes:
    base = compact("ping", {"nonce": nonce, "pad": ""})
    pad = MAX_PAYLOAD - len(base.encode())
    payload = compact("ping", {"nonce": nonce, "pad": "x" * pad}).encode()
    assert len(payload) == MAX_PAYLOAD
    return frame(payload)


@spec("§2.4", "a frame of exactly MAX_PAYLOAD (4,000,000) bytes is accepted")
def test_max_payload_accepted(ready):
    ready.send_raw(_max_size_ping(4000000))
    msg = expect(ready, "pong", timeout=ready.reply_timeout + 5, why="to a ping of exactly MAX_PAYLOAD bytes")
    assert msg.get("nonce") == 4000000, msg
    sync(ready, why="after the MAX_PAYLOAD frame")


@spec("§2.4", "a length over MAX_PAYLOAD is refused on the header alone: error MAX_PAYLOAD, close, payload never read")
@pytest.mark.parametrize("length", [b"4000001", b"9" * 64], ids=["4000001", "64 nines"])
def test_oversize_refused_before_payload(peer, length):
    handshake(peer)
    started = time.monotonic()
    peer.send_raw(header(length))  # not one byte of the payload follows
    expect_error(peer, contains="MAX_PAYLOAD", command=None, why="for an oversize header (before any payload)")
    elapsed = time.monotonic() - started
    expect_closed(peer, why="after the MAX_PAYLOAD error")
    assert elapsed < peer.reply_timeout, f"the refusal took {elapsed:.2f} s"


@spec("§2.4", "after an oversize header, bytes already sent behind it are not processed", also=("§2.6",))
def test_oversize_then_frames_not_processed(ready):
    ready.send_raw(header(b"4000001") + frames(compact("ping", {"nonce": 5})))
    expect_error(ready, contains="MAX_PAYLOAD", command=None)
    expect_closed(ready, why="after the MAX_PAYLOAD error (the ping behind it must not be answered)")


# -- §2.5 keepalive ------------------------------------------------------------------------------


@spec("§2.5", "a keepalive (length 0) is ignored and not answered, before and after version")
def test_keepalive_ignored(peer):
    peer.send_raw(KEEPALIVE + KEEPALIVE)
    sync(peer, why="after two keepalives before version (nothing may answer them)")
    handshake(peer)
    peer.send_raw(KEEPALIVE)
    sync(peer, why="after a keepalive")
    peer.send_raw(KEEPALIVE + frame(compact("ping", {"nonce": 8})) + KEEPALIVE)
    msg = expect(peer, "pong")
    assert msg.get("nonce") == 8, msg
    sync(peer, why="after keepalives around a ping")


# -- §2.6 bad frames -----------------------------------------------------------------------------

BAD_HEADERS = {
    "all spaces": b" " * 64,
    "plus sign": b"+4",
    "minus zero": b"-0",
    "underscore 1_0": b"1_0",
    "NUL padding": b"4" + b"\0" * 63,
    "all NUL": b"\0" * 64,
    "Arabic-Indic digit": "٣".encode(),
    "fullwidth digit": "５".encode(),
    "leading space": b" 4",
    "tab": b"4\t",
    "CR LF": b"5\r\n",
    "LF": b"4\n",
    "letter": b"a",
    "space between digits": b"1 2",
    "decimal point": b"5.0",
    "exponent": b"1e3",
    "hex 0x": b"0x4",
    "digit after padding": b"5" + b" " * 62 + b"5",
}
BAD_UTF8 = {
    "0xff 0xfe 0xfd 0xfc": b"\xff\xfe\xfd\xfc",
    "lone continuation byte": b"\x80",
    "truncated sequence": b"ping \xc3",
    "UTF-8-encoded surrogate": b"\xed\xa0\x80",
    "overlong slash": b"\xc0\xaf",
}


@spec("§2.6", "a bad header gets one error ('header', no command), then close; bytes behind it are not processed")
@pytest.mark.parametrize("phase", ["before version", "after version"])
@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_bad_header(peer, name, phase):
    if phase == "after version":
        handshake(peer)
    # The header, a payload of the length it seems to announce, and a ping: all in one segment.
    peer.send_raw(header(BAD_HEADERS[name]) + b"ping" + frames(compact("ping", {"nonce": 6})))
    expect_error(peer, contains="header", command=None, why=f"for the bad header {BAD_HEADERS[name][:12]!r}")
    expect_closed(peer, why="after the bad-header error (one error, nothing processed after it)")


@spec("§2.6", "a payload that is not UTF-8 gets one error ('UTF-8', no command), then close")
@pytest.mark.parametrize("phase", ["before version", "after version"])
@pytest.mark.parametrize("name", list(BAD_UTF8))
def test_bad_utf8(peer, name, phase):
    if phase == "after version":
        handshake(peer)
    peer.send_raw(frame(BAD_UTF8[name]) + frames(compact("ping", {"nonce": 6})))
    expect_error(peer, contains="UTF-8", command=None, why=f"for the payload {BAD_UTF8[name]!r}")
    expect_closed(peer, why="after the UTF-8 error (one error, nothing processed after it)")


@spec("§2.6", "a stream that ends inside a frame does not stop the node serving others", level="stated",
      also=("§2.2",))
def test_stream_ending_inside_frame(connect):
    for partial in (b"12", header(b"10") + b"ping"):
        quitter = connect()
        handshake(quitter)
        quitter.send_raw(partial)
        quitter.close()
    fresh = connect()
    handshake(fresh)
    sync(fresh, why="on a new connection after others ended mid-frame")
