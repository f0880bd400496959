"""RSA encodings done on the host for devices that only offer the raw RSA private
operation (PIV cards), written from RFC 8017: EMSA-PKCS1-v1_5 (§9.2), EMSA-PSS
(§9.1.1), RSAES-OAEP decoding (§7.1.2), and RSAES-PKCS1-v1_5 decoding (§7.2.2) with
implicit rejection (draft-irtf-cfrg-rsa-guidance, "Implicit rejection"; what OpenSSL
>= 3.2 does for the engine's own keys, provider/mechanisms/rsa.py).

Implicit rejection: a block whose padding is wrong decrypts to a pseudo-random message
determined by the ciphertext and a key, with CKR_OK, so no answer says whether the
padding was right (Bleichenbacher's oracle).  OpenSSL keys that HMAC with SHA-256 of
the private exponent; a device never shows us the exponent, so a backend-held key uses
`rejection_key(secret, public_der)` with a secret only a logged-in user can compute
(SealingStore.backend_secret).  The steps are OpenSSL's, byte for byte (a test checks
it against OpenSSL with the exponent as the key); the padding check and the choice
between real and synthetic message are done the same way on every input: every byte is
read and both messages are computed whatever the padding (as far as Python allows:
its integers are not constant-time, but no step branches on the padding).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from .. import constants as C
from ..errors import PKCS11Error
from .base import MGF_FOR_HASH

HASHLIB = {C.CKM_SHA_1: "sha1", C.CKM_SHA224: "sha224", C.CKM_SHA256: "sha256",
           C.CKM_SHA384: "sha384", C.CKM_SHA512: "sha512"}
MGF_HASH = {mgf: h for h, mgf in MGF_FOR_HASH.items()}


def _h(mech: int):
    try:
        return lambda b: hashlib.new(HASHLIB[mech], b).digest()
    except KeyError:
        raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, f"hash {mech:#x}") from None


def mgf1(mech: int, seed: bytes, n: int) -> bytes:
    h, out, i = _h(mech), b"", 0
    while len(out) < n:
        out += h(seed + i.to_bytes(4, "big"))
        i += 1
    return out[:n]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def pkcs1_sign_block(k: int, t: bytes) -> bytes:
    """EM = 00 01 FF..FF 00 T for a k-byte modulus."""
    if len(t) > k - 11:
        raise PKCS11Error(C.CKR_DATA_LEN_RANGE, "too long for PKCS#1 v1.5")
    return b"\x00\x01" + b"\xff" * (k - 3 - len(t)) + b"\x00" + t


def pss_block(k: int, mod_bits: int, m_hash: bytes, hash_mech: int, mgf: int,
              salt_len: int) -> bytes:
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    h_len = len(m_hash)
    if MGF_HASH.get(mgf) is None or em_len < h_len + salt_len + 2:
        raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, "PSS parameters")
    salt = os.urandom(salt_len)
    h = _h(hash_mech)(b"\x00" * 8 + m_hash + salt)
    db = b"\x00" * (em_len - salt_len - h_len - 2) + b"\x01" + salt
    masked = bytearray(_xor(db, mgf1(MGF_HASH[mgf], h, len(db))))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    em = bytes(masked) + h + b"\xbc"
    return em.rjust(k, b"\x00")


REJECTION_SECRET = "rsa-pkcs1-implicit-rejection"    # SealingStore.backend_secret(name)
_LENGTH_WORDS = 128                                    # 16-bit candidate lengths


def rejection_key(secret: bytes, public_der: bytes) -> bytes:
    """The key of the KDK HMAC for one backend-held RSA key (its SPKI picks it)."""
    return hmac.new(secret, b"ferrohsm pkcs1 implicit rejection\0" + public_der,
                    hashlib.sha256).digest()


def _prf(kdk: bytes, label: bytes, n: int) -> bytes:
    """IRPRF of the draft: HMAC-SHA256(KDK, I2OSP(i, 2) || label || I2OSP(bits, 2)), i = 0..."""
    bits = (8 * n).to_bytes(2, "big")
    out = b"".join(hmac.new(kdk, i.to_bytes(2, "big") + label + bits, hashlib.sha256).digest()
                   for i in range((n + 31) // 32))
    return out[:n]


def _is_zero(x: int) -> int:        # x a byte: 1 if x == 0 else 0
    return ((x - 1) >> 8) & 1


def _lt(a: int, b: int) -> int:     # a, b < 2**16: 1 if a < b else 0
    return ((a - b) >> 16) & 1


def _select(bit: int, a: int, b: int) -> int:     # a if bit else b
    return b ^ (-bit & (a ^ b))


def pkcs1_decrypt_implicit(em: bytes, ciphertext: bytes, key: bytes) -> bytes:
    """The message of a PKCS#1 v1.5 type-2 block `em` (the raw RSA private operation
    on `ciphertext`, k bytes), or, if its padding is wrong, the synthetic message."""
    k = len(em)
    kdk = hmac.new(key, ciphertext.rjust(k, b"\0"), hashlib.sha256).digest()
    lengths = _prf(kdk, b"length", 2 * _LENGTH_WORDS)
    synthetic = _prf(kdk, b"message", k)
    max_sep = k - 2 - 8
    mask = (1 << max_sep.bit_length()) - 1
    synthetic_len = 0
    for i in range(0, 2 * _LENGTH_WORDS, 2):      # the last candidate below max_sep
        cand = ((lengths[i] << 8) | lengths[i + 1]) & mask
        synthetic_len = _select(_lt(cand, max_sep), cand, synthetic_len)
    good = _is_zero(em[0]) & _is_zero(em[1] ^ 2)
    found, zero_at = 0, 0
    for i in range(2, k):
        z = _is_zero(em[i])
        zero_at = _select(~found & z & 1, i, zero_at)
        found |= z
    good &= found & (1 - _lt(zero_at, 2 + 8))       # PS is at least 8 bytes
    start = _select(good, zero_at + 1, k - synthetic_len)
    chosen = bytes(_select(good, e, s) for e, s in zip(em, synthetic))
    return chosen[start:]


def oaep_unpad(em: bytes, hash_mech: int, mgf: int, label: bytes) -> bytes:
    h = _h(hash_mech)
    h_len = len(h(b""))
    if MGF_HASH.get(mgf) is None or len(em) < 2 * h_len + 2:
        raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, "OAEP parameters")
    y, masked_seed, masked_db = em[0], em[1:1 + h_len], em[1 + h_len:]
    seed = _xor(masked_seed, mgf1(MGF_HASH[mgf], masked_db, h_len))
    db = _xor(masked_db, mgf1(MGF_HASH[mgf], seed, len(masked_db)))
    rest = db[h_len:].lstrip(b"\x00")
    ok = hmac.compare_digest(db[:h_len], h(label)) and y == 0 and rest[:1] == b"\x01"
    if not ok:
        raise PKCS11Error(C.CKR_ENCRYPTED_DATA_INVALID, "decryption failed")
    return rest[1:]
