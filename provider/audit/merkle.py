"""RFC 6962 (Certificate Transparency) Merkle trees over the audit records: the tree
hash, audit paths (inclusion proofs), consistency proofs, and their verification
(the algorithms of RFC 9162 section 2.1.3-2.1.4), and `Frontier`, the compact form of
a growing tree (one root per perfect subtree, O(log n)) that a checkpoint keeps so the
next one hashes only the records written since, and a verifier can start at a prune's
anchor without the records before it. Leaves are the records' canonical bytes."""

import hashlib

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = _sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def root_of(hashes: list) -> bytes:
    """MTH of the leaves whose leaf hashes are `hashes`."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    # bottom-up pairing gives RFC 6962's tree: a lone last node moves up unchanged
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_proof(hashes: list, index: int) -> list:
    """The audit path of leaf `index` (0-based) in the tree of `hashes` (RFC 6962 PATH)."""
    if not 0 <= index < len(hashes):
        raise ValueError("leaf index outside the tree")
    if len(hashes) == 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return inclusion_proof(hashes[:k], index) + [root_of(hashes[k:])]
    return inclusion_proof(hashes[k:], index - k) + [root_of(hashes[:k])]


def consistency_proof(hashes: list, old_size: int) -> list:
    """The proof that the tree of the first `old_size` leaves is a prefix of this one
    (RFC 6962 PROOF(m, D[n]))."""
    if not 0 < old_size <= len(hashes):
        raise ValueError("old size outside the tree")

    def subproof(m: int, leaves: list, complete: bool) -> list:
        n = len(leaves)
        if m == n:
            return [] if complete else [root_of(leaves)]
        k = _split(n)
        if m <= k:
            return subproof(m, leaves[:k], complete) + [root_of(leaves[k:])]
        return subproof(m - k, leaves[k:], False) + [root_of(leaves[:k])]
    return subproof(old_size, hashes, True)


def verify_inclusion(leaf: bytes, index: int, size: int, path: list, root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does `path` prove leaf hash `leaf` at `index` in the tree of
    `size` leaves with `root`?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: list) -> bool:
    """RFC 9162 2.1.4.2."""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size & (old_size - 1) == 0:            # a power of two: the old root starts the path
        path = [old_root] + list(path)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root


class Frontier:
    """A tree being appended to, kept as the roots of its perfect subtrees (largest
    first): append is O(1) amortised, root() O(log n), and it is saved with each
    checkpoint (`hashes`) to go on from there."""
    __slots__ = ("size", "hashes")

    def __init__(self, size: int = 0, hashes: list | None = None):
        self.size = size
        self.hashes = list(hashes or [])
        if len(self.hashes) != bin(size).count("1"):
            raise ValueError("a frontier has one hash per 1 bit of its size")

    def append(self, leaf: bytes) -> None:
        hashes = self.hashes
        hashes.append(leaf)
        n = self.size
        while n & 1:                               # merge equal-sized subtrees
            right = hashes.pop()
            hashes[-1] = node_hash(hashes[-1], right)
            n >>= 1
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> "Frontier":
        return Frontier(self.size, self.hashes)
