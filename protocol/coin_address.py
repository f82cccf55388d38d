"""Coin addresses: where EPS is paid. A typo is detected, never paid.

An address is Base58Check, as Bitcoin's P2PKH addresses are: one prefix byte
naming the network, the 20-byte hash of a public key, and a 4-byte checksum
(the start of sha256d over the rest). Base58 leaves out 0, O, I and l, so
what a person copies by hand is hard to misread.
"""

from __future__ import annotations

import functools
import hashlib

from protocol.hashing import sha256d

BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_INDEX = {char: value for value, char in enumerate(BASE58_ALPHABET)}
PUBKEY_HASH_SIZE = 20
CHECKSUM_SIZE = 4
MAX_ADDRESS_LENGTH = 40  # 25 bytes in Base58 is at most 35 characters


def pubkey_hash(pubkey: bytes) -> bytes:
    """The first 20 bytes of SHA-256(pubkey).

    Bitcoin uses RIPEMD-160(SHA-256(pubkey)); RIPEMD-160 is missing from some
    OpenSSL builds behind Python's hashlib, so epscoin keeps to SHA-256 alone.
    """
    return hashlib.sha256(pubkey).digest()[:PUBKEY_HASH_SIZE]


def base58_encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, remainder = divmod(number, 58)
        digits.append(BASE58_ALPHABET[remainder])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(digits))


# Two digits at a time (58^2 = 3,364 pairs): half the Python loop steps, for the node decodes an
# address for every output it checks.
_BASE58_PAIRS = {a + b: _BASE58_INDEX[a] * 58 + _BASE58_INDEX[b] for a in BASE58_ALPHABET for b in BASE58_ALPHABET}


def base58_decode(text: str) -> bytes:
    odd = len(text) % 2
    try:
        number = _BASE58_INDEX[text[0]] if odd else 0
        for start in range(odd, len(text), 2):
            number = number * 3364 + _BASE58_PAIRS[text[start:start + 2]]
    except KeyError:
        bad = next(char for char in text if char not in _BASE58_INDEX)
        raise ValueError(f"{bad!r} is not a Base58 character") from None
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def encode_address(prefix: int, key_hash: bytes) -> str:
    payload = bytes([prefix]) + key_hash
    return base58_encode(payload + sha256d(payload)[:CHECKSUM_SIZE])


def decode_address(text: str, prefix: int) -> bytes:
    """The public-key hash inside an address of this network; ValueError saying what is wrong."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_ADDRESS_LENGTH:
        raise ValueError("an address is 1 to 40 Base58 characters")
    payload = _checked_payload(text)
    if payload[0] != prefix:
        raise ValueError("address belongs to another network")
    return payload[1:]


@functools.lru_cache(maxsize=1 << 15)
def _checked_payload(text: str) -> bytes:
    """Prefix and key hash of a well-formed address. Cached: a node decodes each address at least
    twice, when an output is checked and again when it is spent, mostly a few blocks apart."""
    raw = base58_decode(text)
    if len(raw) != 1 + PUBKEY_HASH_SIZE + CHECKSUM_SIZE:
        raise ValueError("address has the wrong length")
    payload, checksum = raw[:-CHECKSUM_SIZE], raw[-CHECKSUM_SIZE:]
    if sha256d(payload)[:CHECKSUM_SIZE] != checksum:
        raise ValueError("address checksum does not match (a typo?)")
    return payload
