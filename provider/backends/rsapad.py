"""RSA encodings done on the host for devices that only offer the raw RSA private
operation (PIV cards), written from RFC 8017: EMSA-PKCS1-v1_5 (§9.2), EMSA-PSS
(§9.1.1), RSAES-PKCS1-v1_5 decoding (§7.2.2) and RSAES-OAEP decoding (§7.1.2)."""

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


def pkcs1_decrypt_unpad(em: bytes) -> bytes:
    # One error for every malformed block, so the failure says nothing about where.
    sep = em.find(b"\x00", 2)
    if em[:2] != b"\x00\x02" or sep < 10:
        raise PKCS11Error(C.CKR_ENCRYPTED_DATA_INVALID, "decryption failed")
    return em[sep + 1:]


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
