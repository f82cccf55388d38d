"""docs/protocol.md §2 Framing: protocol.framing on its own, with no sockets.

A frame is a 64-byte header (the payload's length in bytes as ASCII decimal
digits, left-aligned, padded with spaces) followed by that many bytes of
UTF-8. These tests pin encode_frame, parse_header and FrameReader to that
rule, including every way a header can be wrong and the MAX_PAYLOAD boundary.
"""

from __future__ import annotations

import io
import time
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.framing import HEADER, MAX_PAYLOAD, FrameError, FrameReader, encode_frame, parse_header

# -- helpers -----------------------------------------------------------------------


def header(content: bytes, pad: bytes = b" ") -> bytes:
    """Exactly HEADER bytes: content, then padding."""
    assert len(content) <= HEADER
    return content.ljust(HEADER, pad)


def frame_bytes(payload: bytes) -> bytes:
    """A frame built by hand from raw payload bytes (which need not be UTF-8)."""
    return header(str(len(payload)).encode("ascii")) + payload


class SegmentedRaw(io.RawIOBase):
    """A raw stream that hands out the data in the given segments, one per readinto().

    This is what a socket does: each recv() returns whatever one TCP segment
    (or a few) carried, never necessarily what the reader asked for.
    """

    def __init__(self, segments: list[bytes], on_read=None) -> None:
        self.segments = deque(segment for segment in segments if segment)
        self.on_read = on_read  # called before every readinto, to look inside the reader meanwhile
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.reads += 1
        if self.on_read is not None:
            self.on_read()
        if not self.segments:
            return 0
        segment = self.segments[0]
        n = min(len(buffer), len(segment))
        buffer[:n] = segment[:n]
        if n < len(segment):
            self.segments[0] = segment[n:]
        else:
            self.segments.popleft()
        return n


def one_byte_per_read(data: bytes, on_read=None) -> io.BufferedReader:
    """A buffered stream over a raw reader that yields one byte per read() call."""
    return io.BufferedReader(SegmentedRaw([data[i:i + 1] for i in range(len(data))], on_read))


def segmented(data: bytes, cuts: list[int], buffer_size: int = io.DEFAULT_BUFFER_SIZE) -> io.BufferedReader:
    """A buffered stream over data cut at the given offsets into separate segments."""
    bounds = [0, *sorted(set(cuts)), len(data)]
    return io.BufferedReader(SegmentedRaw([data[a:b] for a, b in zip(bounds, bounds[1:])]), buffer_size)


HEADER_READS = [1, HEADER - 1]  # read_frame waits for a first byte, then reads the rest of the header


class RecordingStream:
    """Wraps a buffered stream; records each read(n) request and the bytes consumed."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self.stream = stream
        self.requests: list[int] = []
        self.consumed = 0

    def peek(self, n: int = 0) -> bytes:
        return self.stream.peek(n)

    def read(self, n: int = -1) -> bytes:
        self.requests.append(n)
        data = self.stream.read(n)
        self.consumed += len(data)
        return data


def read_all(reader: FrameReader, limit: int = 10_000) -> list[str]:
    """Every frame until the stream ends cleanly."""
    texts = []
    for _ in range(limit):
        text = reader.read_frame()
        if text is None:
            return texts
        texts.append(text)
    raise AssertionError("read_frame never reported the end of the stream")


# Each way a 64-byte header can break "ASCII digits, then only spaces".
BAD_HEADERS = {
    "empty (all spaces)": header(b""),
    "plus sign": header(b"+5"),
    "minus sign": header(b"-5"),
    "underscore as in 1_0": header(b"1_0"),
    "NUL padding": header(b"5", pad=b"\0"),
    "NUL after the digits, then spaces": header(b"5\0"),
    "Arabic-Indic digit three in UTF-8": header("٣".encode()),
    "fullwidth digit five in UTF-8": header("５".encode()),
    "leading space": header(b" 5"),
    "tab after the digits": header(b"5\t"),
    "tab padding": header(b"5", pad=b"\t"),
    "newline after the digits": header(b"5\n"),
    "carriage return and newline": header(b"5\r\n"),
    "space between digits": header(b"1 2"),
    "letter after the digits": header(b"5a"),
    "hexadecimal": header(b"0x5"),
    "decimal point": header(b"5.0"),
    "exponent": header(b"1e3"),
    "non-ASCII byte at the end": header(b"5")[:HEADER - 1] + b"\xa0",
    "digit in the last byte after spaces": b"5" + b" " * (HEADER - 2) + b"5",
}


# Payloads that are not UTF-8.
BAD_UTF8 = {
    "lone continuation byte": b"\x80",
    "0xff never appears in UTF-8": b"ok \xff",
    "truncated two-byte sequence": "é".encode()[:1],
    "truncated four-byte sequence": "🙂".encode()[:3],
    "overlong encoding of NUL": b"\xc0\x80",
    "UTF-16 surrogate encoded in UTF-8": b"\xed\xa0\x80",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
    "Latin-1, not UTF-8": "café".encode("latin-1"),
}


# -- encode_frame ---------------------------------------------------------------------


def test_encode_frame_writes_the_length_left_aligned_and_space_padded_to_64_bytes():
    assert encode_frame("hello") == b"5" + b" " * 63 + b"hello"


def test_encode_frame_counts_utf8_bytes_not_characters():
    text = "héllo ٣ 🙂"
    frame = encode_frame(text)
    payload = text.encode("utf-8")
    assert frame[:HEADER] == str(len(payload)).encode().ljust(HEADER)
    assert frame[HEADER:] == payload
    assert len(payload) != len(text)  # the test would prove nothing otherwise


def test_encode_frame_of_empty_text_is_the_length_zero_keepalive():
    assert encode_frame("") == b"0".ljust(HEADER)


def test_encode_frame_accepts_exactly_max_payload_bytes():
    text = "é" * (MAX_PAYLOAD // 2)  # 2 bytes each: MAX_PAYLOAD bytes in half as many characters
    frame = encode_frame(text)
    assert frame[:HEADER] == str(MAX_PAYLOAD).encode().ljust(HEADER)
    assert len(frame) == HEADER + MAX_PAYLOAD


def test_encode_frame_refuses_max_payload_plus_one_byte():
    with pytest.raises(FrameError):
        encode_frame("é" * (MAX_PAYLOAD // 2) + "a")


def test_frame_error_reason_is_its_message():
    assert FrameError("bad header").reason == "bad header"


# -- parse_header ---------------------------------------------------------------------


@pytest.mark.parametrize("content, length", [
    (b"0", 0),
    (b"5", 5),
    (b"007", 7),
    (b"0" * HEADER, 0),  # digits filling the whole header, no padding at all
    (b"0" * (HEADER - 7) + b"4000000", MAX_PAYLOAD),
    (str(MAX_PAYLOAD).encode(), MAX_PAYLOAD),
    (str(MAX_PAYLOAD - 1).encode(), MAX_PAYLOAD - 1),
])
def test_parse_header_accepts_ascii_digits_padded_with_spaces(content, length):
    assert parse_header(header(content)) == length


@pytest.mark.parametrize("bad", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_parse_header_refuses_anything_but_digits_then_spaces(bad):
    assert len(bad) == HEADER
    with pytest.raises(FrameError, match="header"):
        parse_header(bad)


@pytest.mark.parametrize("content", [
    str(MAX_PAYLOAD + 1).encode(),
    b"0" * (HEADER - 7) + b"4000001",
    b"9" * HEADER,  # a length no machine could allocate
])
def test_parse_header_refuses_lengths_above_max_payload(content):
    with pytest.raises(FrameError, match="MAX_PAYLOAD"):
        parse_header(header(content))


def test_parse_header_honours_a_smaller_max_payload():
    assert parse_header(header(b"10"), max_payload=10) == 10
    with pytest.raises(FrameError):
        parse_header(header(b"11"), max_payload=10)


# -- FrameReader: whole streams -------------------------------------------------------

TEXTS = ["version", "", "ping {\"nonce\":7}", "héllo ٣ 🙂", "x" * 5000, ""]
STREAM = b"".join(encode_frame(text) for text in TEXTS)


def test_frame_reader_reads_frames_back_to_back_then_none_at_a_clean_end():
    reader = FrameReader(io.BufferedReader(io.BytesIO(STREAM)))
    assert read_all(reader) == TEXTS
    assert reader.bytes_read == len(STREAM)
    assert reader.read_frame() is None  # and keeps saying so


def test_frame_reader_reads_identically_when_each_read_yields_one_byte():
    raw_reads = []
    stream = one_byte_per_read(STREAM, on_read=lambda: raw_reads.append(1))
    reader = FrameReader(stream)
    assert read_all(reader) == TEXTS
    assert reader.bytes_read == len(STREAM)
    assert len(raw_reads) > len(STREAM)  # really one byte at a time (plus the final EOF)


def test_frame_reader_of_an_empty_stream_is_a_clean_end():
    assert FrameReader(io.BufferedReader(io.BytesIO(b""))).read_frame() is None


def test_length_zero_frame_reads_as_empty_text():
    reader = FrameReader(io.BufferedReader(io.BytesIO(header(b"0") + encode_frame("ping"))))
    assert reader.read_frame() == ""
    assert reader.read_frame() == "ping"


def test_frame_reader_accepts_a_frame_of_exactly_max_payload():
    payload = b"a" * MAX_PAYLOAD
    reader = FrameReader(io.BufferedReader(io.BytesIO(frame_bytes(payload))))
    assert reader.read_frame() == payload.decode()


@pytest.mark.parametrize("cut", [1, HEADER - 1])
def test_stream_ending_inside_a_header_is_a_frame_error(cut):
    with pytest.raises(FrameError, match="inside a header"):
        FrameReader(one_byte_per_read(encode_frame("hello")[:cut])).read_frame()


@pytest.mark.parametrize("missing", [1, 5])
def test_stream_ending_inside_a_payload_is_a_frame_error(missing):
    data = encode_frame("hello")[:-missing]
    with pytest.raises(FrameError, match="inside a payload"):
        FrameReader(one_byte_per_read(data)).read_frame()


@pytest.mark.parametrize("bad", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_frame_reader_refuses_a_bad_header_without_reading_a_payload(bad):
    stream = RecordingStream(io.BufferedReader(io.BytesIO(bad + b"12345" * 100)))
    with pytest.raises(FrameError, match="header"):
        FrameReader(stream).read_frame()
    assert stream.requests == HEADER_READS


@pytest.mark.parametrize("length", [MAX_PAYLOAD + 1, 10**63])
def test_frame_reader_refuses_an_oversized_length_before_reading_the_payload(length):
    # Only the header is there: a reader that tried to read the payload would hit the end
    # and say "inside a payload" instead; one that allocated it would ask read() for it.
    stream = RecordingStream(io.BufferedReader(io.BytesIO(header(str(length).encode()))))
    with pytest.raises(FrameError, match="MAX_PAYLOAD"):
        FrameReader(stream).read_frame()
    assert stream.requests == HEADER_READS


@pytest.mark.parametrize("payload", BAD_UTF8.values(), ids=BAD_UTF8.keys())
def test_payload_that_is_not_utf8_is_a_frame_error(payload):
    reader = FrameReader(io.BufferedReader(io.BytesIO(frame_bytes(payload))))
    with pytest.raises(FrameError, match="UTF-8"):
        reader.read_frame()


def test_started_at_marks_the_first_byte_of_a_frame_until_the_frame_is_complete():
    """started_at is what the node's watchdog uses to drop a peer stalled mid-frame."""
    seen: list[float | None] = []
    data = encode_frame("hello") + encode_frame("world")
    stream = one_byte_per_read(data, on_read=lambda: seen.append(reader.started_at))
    reader = FrameReader(stream)
    before = time.monotonic()
    assert reader.read_frame() == "hello"
    assert reader.started_at is None
    first_frame_reads = len(seen)
    assert seen[0] is None  # waiting for the first byte is not a frame in progress
    assert all(value is not None and value >= before for value in seen[1:first_frame_reads])
    assert reader.read_frame() == "world"
    assert reader.started_at is None
    assert seen[first_frame_reads] is None  # between frames the clock is off again
    assert all(value is not None for value in seen[first_frame_reads + 1:len(seen)])


def test_started_at_stays_set_while_a_frame_is_unfinished():
    reader = FrameReader(one_byte_per_read(encode_frame("hello")[:HEADER + 2]))
    with pytest.raises(FrameError):
        reader.read_frame()
    assert reader.started_at is not None


# -- properties -------------------------------------------------------------------------

utf8_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)


@st.composite
def frames_and_segmentation(draw):
    texts = draw(st.lists(utf8_texts, max_size=8))
    data = b"".join(encode_frame(text) for text in texts)
    cuts = draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=40)) if len(data) > 1 else []
    if draw(st.booleans()) and len(data) < 2000:
        cuts = list(range(1, len(data)))  # one byte per segment
    buffer_size = draw(st.sampled_from([1, 7, 64, 65, io.DEFAULT_BUFFER_SIZE]))
    return texts, data, cuts, buffer_size


@settings(max_examples=300, deadline=None)
@given(frames_and_segmentation())
def test_any_segmentation_of_any_frames_reads_back_exactly_the_texts(case):
    texts, data, cuts, buffer_size = case
    reader = FrameReader(segmented(data, cuts, buffer_size))
    assert read_all(reader) == texts
    assert reader.bytes_read == len(data)


SMALL_MAX_PAYLOAD = 20  # far below HEADER, so a payload read can never pass for a header read

# Pieces that make arbitrary bytes look like frames often enough to reach every branch.
stream_pieces = st.one_of(
    st.binary(max_size=80),
    st.integers(0, 40).map(lambda n: header(str(n).encode())),  # good and oversized lengths
    st.sampled_from(list(BAD_HEADERS.values())),
    st.builds(lambda text: encode_frame(text), st.text(max_size=SMALL_MAX_PAYLOAD // 4)),
    st.sampled_from(list(BAD_UTF8.values())).map(frame_bytes),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(stream_pieces, max_size=10).map(b"".join), st.lists(st.integers(1, 400), max_size=20))
def test_arbitrary_bytes_give_texts_a_clean_end_or_frame_error_and_never_an_oversized_read(data, cuts):
    stream = RecordingStream(segmented(data, [cut for cut in cuts if cut < len(data)]))
    reader = FrameReader(stream, max_payload=SMALL_MAX_PAYLOAD)
    for _ in range(len(data) + 1):
        stream.requests.clear()
        consumed_before = stream.consumed
        failed = False
        try:
            text = reader.read_frame()
        except FrameError:
            failed = True
        finally:
            # The header's reads (the first byte, then the rest), at most one read for the
            # payload, never above max_payload.
            assert stream.requests in ([1], HEADER_READS) or (
                len(stream.requests) == 3 and stream.requests[:2] == HEADER_READS
                and 0 < stream.requests[2] <= SMALL_MAX_PAYLOAD), stream.requests
            assert stream.consumed - consumed_before <= HEADER + SMALL_MAX_PAYLOAD
        if failed:
            return
        if text is None:
            assert stream.consumed == len(data)  # None only at the very end, between frames
            return
        assert len(text.encode("utf-8")) <= SMALL_MAX_PAYLOAD
    raise AssertionError("the reader neither ended nor failed")
