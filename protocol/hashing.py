"""Hashes every implementation must compute the same way: sha256d and the merkle root."""

from __future__ import annotations

import hashlib
from typing import Sequence


def sha256d(data: bytes) -> bytes:
    """SHA-256 applied twice, as Bitcoin does for every id."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Bitcoin's merkle root: hash pairs level by level, pairing an odd last node with itself."""
    if not leaves:
        raise ValueError("a merkle tree needs at least one leaf")
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def merkle_branch(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The sibling hashes from leaf `index` up to the root (what an SPV proof carries)."""
    if not 0 <= index < len(leaves):
        raise ValueError("leaf index out of range")
    branch, level = [], list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        branch.append(level[index ^ 1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
        index //= 2
    return branch


def root_from_branch(leaf: bytes, branch: Sequence[bytes], index: int) -> bytes:
    """Recompute the root from one leaf and its branch; equal to the header's root iff the proof holds."""
    node = leaf
    for sibling in branch:
        node = sha256d(sibling + node) if index & 1 else sha256d(node + sibling)
        index //= 2
    return node
