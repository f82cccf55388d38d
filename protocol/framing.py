"""Framing: how one message travels on a TCP stream.

A frame is the lecture's design, made exact:

    | 64-byte header                         | payload          |
    | b"5" + 63 spaces                        | b"hello"         |

The header is the payload's length in bytes, written as ASCII decimal digits,
left-aligned and padded with spaces to exactly HEADER bytes. The payload is
UTF-8 text. TCP is a byte stream, not a message stream, so a reader must read
*exactly* 64 bytes and then *exactly* N bytes, however the bytes were split
into segments on the way. This module is shared by the node and the client.
"""

from __future__ import annotations

import socket
import time
from typing import BinaryIO

HEADER = 64  # bytes in every frame header, as in the lecture
PORT = 5050  # the lecture's port; the default for every node
FORMAT = "utf-8"  # payload encoding
DISCONNECT_MESSAGE = "!exit"  # the lecture's way to leave
MAX_PAYLOAD = 4_000_000  # Bitcoin's MAX_PROTOCOL_MESSAGE_LENGTH


class FrameError(Exception):
    """The byte stream broke the framing rules; the connection cannot continue."""

    @property
    def reason(self) -> str:
        return str(self)


def encode_frame(text: str) -> bytes:
    """Header and payload as one bytes object, so one sendall() writes a frame.

    Writing the header and the payload with two send() calls, as the lecture
    does, meets Nagle's algorithm and delayed ACKs: ~88 ms per round trip.
    """
    payload = text.encode(FORMAT)
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD ({MAX_PAYLOAD})")
    return str(len(payload)).encode("ascii").ljust(HEADER, b" ") + payload


def parse_header(header: bytes, max_payload: int = MAX_PAYLOAD) -> int:
    """The payload length a 64-byte header announces, checked before anything is allocated."""
    if len(header) != HEADER:
        raise FrameError(f"header of {len(header)} bytes: a header is exactly {HEADER} bytes")
    # Digits, then nothing but spaces. Python's int() would also accept a sign, "_",
    # surrounding whitespace and non-ASCII digits such as "٣"; the wire must not.
    # bytes.isdigit() is true for ASCII digits only, and false for b"".
    digits = header.rstrip(b" ")
    if not digits.isdigit():
        raise FrameError(f"bad header {_preview(header)}: expected ASCII digits padded with spaces")
    length = int(digits)  # at most 64 digits, so int() is cheap
    if length > max_payload:
        raise FrameError(f"frame of {length} bytes exceeds MAX_PAYLOAD ({max_payload})")
    return length


def send_frame(sock: socket.socket, text: str) -> None:
    """Write one frame with one sendall(), blocking until the kernel has it all."""
    sock.sendall(encode_frame(text))


class FrameReader:
    """Reads frames from a buffered binary stream, e.g. ``sock.makefile("rb")``.

    ``read(n)`` on a buffered stream returns exactly n bytes unless the stream
    ends, which is what makes short TCP reads harmless here. ``started_at``
    is the monotonic time the current frame's first byte arrived (None between
    frames), so a watchdog thread can drop a peer that stalls mid-frame
    without putting a timeout on every read.
    """

    def __init__(self, stream: BinaryIO, max_payload: int = MAX_PAYLOAD) -> None:
        self.stream = stream
        self.max_payload = max_payload
        self.started_at: float | None = None
        self.bytes_read = 0

    def read_frame(self) -> str | None:
        """The next payload as text; None when the stream ends cleanly between frames."""
        first = self.stream.read(1)  # blocks until a byte or EOF (peek(1) would copy the whole buffer)
        if not first:
            return None
        self.started_at = time.monotonic()
        header = first + self.stream.read(HEADER - 1)
        if len(header) < HEADER:
            raise FrameError(f"stream ended inside a header ({len(header)} of {HEADER} bytes)")
        length = parse_header(header, self.max_payload)
        payload = self.stream.read(length) if length else b""
        if len(payload) < length:
            raise FrameError(f"stream ended inside a payload ({len(payload)} of {length} bytes)")
        self.started_at = None
        self.bytes_read += HEADER + length
        try:
            return payload.decode(FORMAT)
        except UnicodeDecodeError as error:
            raise FrameError(f"payload is not valid UTF-8 (byte {error.start})") from None


def _preview(header: bytes) -> str:
    """A short printable form of a bad header for an error reason."""
    shown = header.rstrip(b" ")[:16]
    return repr(shown) + ("..." if len(header.rstrip(b" ")) > 16 else "")
