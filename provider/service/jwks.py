"""Public keys for asymmetric bearer tokens (RS256, ES256, EdDSA) from a JWKS file
([server] jwks_file), looked up by the token header's `kid`.

Each key's algorithm is pinned: the JWK's own `alg`, or, when it has none, the one
algorithm its type and curve allow (ALGORITHMS). A token whose header names another
algorithm than its key's is refused, so an RSA key never verifies an HS256 token (the
HS/RS confusion) and an EC key never an RS256 one. The file is re-read when it changes
(its mtime, size or inode), checked at most every `recheck` seconds; a changed file
that does not parse keeps the last good set (an operator's half-written edit must not
lock every client out) and counts a reload failure. At start a bad file is an error.
`generation()` counts the key sets loaded: auth.py drops every token it verified
before when it moves, so a key retired from the file stops working at the reload.
A JWK holding private members (`d`, `p`, …) is refused: the service verifies, it never
needs a private key, and one there is a leak to stop, not to use."""

import json
import os
import threading
import time
from dataclasses import dataclass

import jwt

# alg -> (kty, crv or None): the only pairs a key may be pinned to
ALGORITHMS = {
    "RS256": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "EdDSA": ("OKP", "Ed25519"),
}
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MIN_RSA_BITS = 2048
MAX_FILE = 1 << 20


@dataclass(frozen=True)
class PublicKey:
    kid: str
    alg: str
    key: object            # a cryptography public key, what jwt.decode takes


def _pinned(jwk: dict) -> str:
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    allowed = [a for a, (t, c) in ALGORITHMS.items() if t == kty and (c is None or c == crv)]
    if not allowed:
        raise ValueError(f"unsupported key type {kty!r}{f' curve {crv!r}' if crv else ''}")
    if alg is None:
        return allowed[0]
    if alg not in allowed:
        raise ValueError(f"alg {alg!r} does not fit a {kty} key")
    return alg


def parse(text: str) -> dict[str, PublicKey]:
    """The keys of a JWKS document by kid; ValueError naming the first bad key."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('a JWKS is an object with a "keys" list')
    keys = {}
    for i, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict):
            raise ValueError(f"key {i} is not an object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not 1 <= len(kid) <= 128:
            raise ValueError(f"key {i} needs a kid (a string of 1-128 characters)")
        if kid in keys:
            raise ValueError(f"kid {kid!r} appears twice")
        if PRIVATE_MEMBERS & jwk.keys():
            raise ValueError(f"key {kid!r} holds private key members; a JWKS here holds public keys only")
        if jwk.get("use", "sig") != "sig":
            raise ValueError(f"key {kid!r} is not a signing key (use {jwk.get('use')!r})")
        alg = _pinned(jwk)
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"key {kid!r} does not load ({type(exc).__name__})") from None
        if alg == "RS256" and key.key_size < MIN_RSA_BITS:
            raise ValueError(f"key {kid!r} is a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits")
        keys[kid] = PublicKey(kid, alg, key)
    return keys


class JwksFile:
    """The keys of one JWKS file, reloaded when it changes."""

    def __init__(self, path: str, recheck: float = 1.0):
        self.path, self.recheck = path, recheck
        self.reloads = self.reload_failures = 0         # reloads: also the generation of the key set
        self._lock = threading.Lock()
        self._stamp, self._keys = self._read()       # a bad file at start raises
        self._checked = time.monotonic()

    def _stat(self):
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self):
        stamp = self._stat()
        with open(self.path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
        if len(raw) > MAX_FILE:
            raise ValueError(f"{self.path}: larger than {MAX_FILE} bytes")
        try:
            return stamp, parse(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.path}: {exc}") from None

    def _maybe_reload(self):
        now = time.monotonic()
        if now - self._checked < self.recheck:
            return
        with self._lock:
            if now - self._checked < self.recheck:
                return
            self._checked = now
            try:
                if self._stat() == self._stamp:
                    return
                self._stamp, self._keys = self._read()
                self.reloads += 1
            except (OSError, ValueError):
                self.reload_failures += 1            # keep the last good keys

    def get(self, kid) -> PublicKey | None:
        self._maybe_reload()
        return self._keys.get(kid) if isinstance(kid, str) else None

    def generation(self) -> int:
        """The number of reloads so far, after looking at the file if it is time to."""
        self._maybe_reload()
        return self.reloads

    def kids(self) -> frozenset:
        self._maybe_reload()
        return frozenset(self._keys)
