"""The seeder's crawler: visit an address, shake hands, ask for its peers, leave.

A DNS seed must only hand out addresses that are alive, so the node that serves
one keeps checking the addresses in its book, as bitcoin-seeder does. A visit
is a short inbound connection on the other node: `version` and `getaddr` in one
write, then read until the `addr` answer (or an error, or the timeout).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from protocol.framing import DISCONNECT_MESSAGE, FrameError, FrameReader, encode_frame
from protocol.messages import Addr, Error, GetAddr, MessageError, Version, decode_message
from protocol.messages.addr import AddressEntry

PROBE_TIMEOUT = 5.0  # seconds for the whole visit
MAX_PROBE_FRAMES = 32  # frames read before giving up on the addr answer


@dataclass(frozen=True)
class ProbeResult:
    version: Version
    addresses: tuple[AddressEntry, ...]


def probe(host: str, port: int, version: Version, timeout: float = PROBE_TIMEOUT,
          source_address: tuple[str, int] | None = None) -> ProbeResult | None:
    """The visited node's version and the addresses it shared; None when it was not reachable."""
    try:
        with socket.create_connection((host, port), timeout=timeout, source_address=source_address) as sock:
            sock.sendall(encode_frame(version.encode()) + encode_frame(GetAddr().encode()))
            theirs, addresses = _read_answers(FrameReader(sock.makefile("rb")))
            try:
                sock.sendall(encode_frame(DISCONNECT_MESSAGE))
            except OSError:
                pass
    except (OSError, FrameError):  # refused, reset, timed out, or garbage on the wire
        return None
    return ProbeResult(theirs, addresses) if theirs is not None else None


def _read_answers(reader: FrameReader) -> tuple[Version | None, tuple[AddressEntry, ...]]:
    theirs: Version | None = None
    for _ in range(MAX_PROBE_FRAMES):
        text = reader.read_frame()
        if text is None:
            break
        try:
            message = decode_message(text)
        except MessageError:
            continue
        if isinstance(message, Version):
            theirs = message
        elif isinstance(message, Addr):
            return theirs, message.addrs
        elif isinstance(message, Error):
            break
    return theirs, ()
