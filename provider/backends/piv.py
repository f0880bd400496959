"""PIV card backend (NIST SP 800-73-4 card commands over PC/SC).

Keys live in the card's key slots (9A authentication, 9C signature, 9D key
management, 9E card authentication, 82-95 retired); the KeyRef blob names the
slot, the algorithm and the card (CHUID GUID, or the serial) so a key is never
used on another card.  Every operation is one PC/SC transaction that starts with
SELECT: PIV cards may drop the PIN state on SELECT or reset, and 9C demands the
PIN before each signature, so the PIN that login() verified is kept in memory and
VERIFY is sent again before each private-key operation (as OpenSC's PIN cache does).
Key generation and certificate writes authenticate with the management key
(3DES or AES, mutual authentication with witness and challenge).

The card pads nothing: RSA is the raw private operation on a modulus-size block,
the host encodes it (rsapad); ECDSA gets the hash fitted to the field size and
answers DER, returned as raw r||s; ECDH returns the shared x coordinate.
"""

from __future__ import annotations

import os
import struct
import threading

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:                                        # cryptography >= 43 keeps 3DES here
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:                         # pragma: no cover
    TripleDES = algorithms.TripleDES

from .. import constants as C
from ..errors import PKCS11Error
from . import rsapad
from .apdu import CardError, CardLink, parse_tlv, tlv
from .base import Backend, DeviceTimeout, DeviceWorker, FULL_CAPABILITIES, Health, KeyRef, pss_hash

# SELECT by the 5-byte RID+PIX prefix first (what YubiKeys and jcecard answer; ISO 7816-4
# partial DF-name selection), then by the SP 800-73-4 AID without its version bytes.
PIV_AIDS = (bytes.fromhex("a000000308"), bytes.fromhex("a00000030800001000"))
DEFAULT_MGMT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
# kind -> (PIV algorithm id, field size or 0 for RSA, modulus bytes)
KINDS = {"ec-p256": (0x11, 32, 0), "ec-p384": (0x14, 48, 0), "rsa-2048": (0x07, 0, 256)}
ALG_KIND = {v[0]: k for k, v in KINDS.items()}
CURVES = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}
# management key algorithm id -> (cipher, block size)
MGMT_ALGS = {0x03: (TripleDES, 8), 0x08: (algorithms.AES, 16),
             0x0A: (algorithms.AES, 16), 0x0C: (algorithms.AES, 16)}
# key slot -> certificate data object (SP 800-73-4 table 3 / table 4b)
CERT_OBJECTS = {0x9A: 0x5FC105, 0x9C: 0x5FC10A, 0x9D: 0x5FC10B, 0x9E: 0x5FC101,
                **{0x82 + i: 0x5FC10D + i for i in range(20)}}
SLOT_NAMES = {"9a": 0x9A, "9c": 0x9C, "9d": 0x9D, "9e": 0x9E,
              **{f"{0x82 + i:02x}": 0x82 + i for i in range(20)}}
NO_PIN_SLOTS = frozenset({0x9E})
CHUID, PIN_REF = 0x5FC102, 0x80
# status word -> CK_RV for answers other than 9000 (VERIFY's 63Cx handled apart)
SW_CKR = {
    0x6982: C.CKR_USER_NOT_LOGGED_IN, 0x6983: C.CKR_PIN_LOCKED,
    0x6A80: C.CKR_DATA_INVALID, 0x6700: C.CKR_DATA_LEN_RANGE,
    0x6A82: C.CKR_KEY_HANDLE_INVALID, 0x6A88: C.CKR_KEY_HANDLE_INVALID,
    0x6A86: C.CKR_ARGUMENTS_BAD, 0x6D00: C.CKR_FUNCTION_NOT_SUPPORTED,
    0x6A81: C.CKR_FUNCTION_NOT_SUPPORTED,
}
MAGIC = b"FPV\x01"


def _pin_block(pin: bytes) -> bytes:
    if not 1 <= len(pin) <= 8:
        raise PKCS11Error(C.CKR_PIN_LEN_RANGE, "PIV PIN is 1-8 bytes")
    return pin.ljust(8, b"\xff")


def _fail(sw: int, what: str) -> PKCS11Error:
    return PKCS11Error(SW_CKR.get(sw, C.CKR_DEVICE_ERROR), f"piv: {what}: SW {sw:04X}")


def pack_ref(slot: int, kind: str, card_id: bytes) -> bytes:
    return MAGIC + struct.pack(">BBB", slot, KINDS[kind][0], len(card_id)) + card_id


def unpack_ref(blob: bytes) -> tuple[int, str, bytes]:
    try:
        assert blob[:4] == MAGIC
        slot, alg, n = struct.unpack(">BBB", blob[4:7])
        return slot, ALG_KIND[alg], blob[7:7 + n]
    except (AssertionError, KeyError, struct.error):
        raise PKCS11Error(C.CKR_KEY_HANDLE_INVALID, "not a PIV key reference") from None


class PivBackend(Backend):
    kind = "hardware"
    exportable = False

    def __init__(self, reader: str | None = None, *, name: str = "piv",
                 mgmt_key: bytes = DEFAULT_MGMT_KEY, mgmt_alg: int = 0x03,
                 timeout: float = 10.0, max_pin_tries: int = 3):
        if mgmt_alg not in MGMT_ALGS:
            raise PKCS11Error(C.CKR_ARGUMENTS_BAD, f"management key algorithm {mgmt_alg:#x}")
        self.name, self.mgmt_key, self.mgmt_alg = name, mgmt_key, mgmt_alg
        self.max_pin_tries = max_pin_tries
        self.link = CardLink(reader)
        self._tl = threading.local()        # the link of the call running on this thread
        self.card_id = b""
        self._aid = PIV_AIDS[0]
        self._pin: bytes | None = None
        self._worker = DeviceWorker(name, timeout)

    # --- plumbing (runs on the worker thread) --------------------------------
    def _cmd(self, ins, p1, p2, data=b"", le=True, what="") -> bytes:
        out, sw = self._tl.link.command(0x00, ins, p1, p2, data, le)
        if sw != 0x9000:
            raise _fail(sw, what or f"INS {ins:02X}")
        return out

    def _select(self):
        for aid in sorted(PIV_AIDS, key=lambda a: a != self._aid):
            _, sw = self._tl.link.command(0x00, 0xA4, 0x04, 0x00, aid)
            if sw == 0x9000:
                self._aid = aid
                return
        raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, f"piv: no PIV application (SW {sw:04X})")

    def _identify(self) -> bytes:
        out, sw = self._tl.link.command(0x00, 0xCB, 0x3F, 0xFF, tlv(0x5C, CHUID.to_bytes(3, "big")))
        guid = parse_tlv(parse_tlv(out).get(0x53, b"")).get(0x34) if sw == 0x9000 else None
        if guid:
            return guid
        out, sw = self._tl.link.command(0x00, 0xF8, 0x00, 0x00)      # vendor serial, if any
        return out if sw == 0x9000 else b""

    def _run(self, fn, *args, card_id: bytes | None = None):
        """fn(*args) inside one transaction, after SELECT; reconnect once if stale."""
        link = self.link                    # a call that overruns keeps its own link

        def task():
            self._tl.link = link
            for attempt in (0, 1):
                fresh = not link.connected
                try:
                    if fresh:
                        link.open()
                        with link.transaction():
                            self._select()
                            self.card_id = self._identify()
                    if card_id is not None and card_id != self.card_id:
                        raise PKCS11Error(C.CKR_TOKEN_NOT_PRESENT,
                                          "piv: the key's card is not in the reader")
                    with link.transaction():
                        self._select()
                        return fn(*args)
                except CardError as e:
                    link.close()
                    if fresh or attempt:
                        raise PKCS11Error(e.ckr(), f"{self.name}: {e}") from None
        try:
            return self._worker.call(task, on_abandon=link.close)
        except DeviceTimeout:
            self.link = CardLink(link.want)
            raise

    def _verify(self, pin: bytes):
        _, sw = self._tl.link.command(0x00, 0x20, 0x00, PIN_REF, _pin_block(pin), le=False)
        if sw >> 4 == 0x63C:
            raise PKCS11Error(C.CKR_PIN_INCORRECT, f"piv: PIN incorrect, {sw & 0xF} tries left")
        if sw != 0x9000:
            raise _fail(sw, "VERIFY")

    def _verify_cached(self, slot: int):
        if slot in NO_PIN_SLOTS:
            return
        if self._pin is None:
            raise PKCS11Error(C.CKR_USER_NOT_LOGGED_IN, "piv: PIN not verified")
        self._verify(self._pin)

    def _mgmt_auth(self):
        cipher, bs = MGMT_ALGS[self.mgmt_alg]
        ecb = Cipher(cipher(self.mgmt_key), modes.ECB())
        out = self._cmd(0x87, self.mgmt_alg, 0x9B, tlv(0x7C, tlv(0x80, b"")), what="mgmt witness")
        witness = parse_tlv(parse_tlv(out).get(0x7C, b"")).get(0x80, b"")
        if len(witness) != bs:
            raise PKCS11Error(C.CKR_DEVICE_ERROR, "piv: bad management witness")
        d = ecb.decryptor()
        plain = d.update(witness) + d.finalize()
        challenge = os.urandom(bs)
        out, sw = self._tl.link.command(0x00, 0x87, self.mgmt_alg, 0x9B,
                                    tlv(0x7C, tlv(0x80, plain) + tlv(0x81, challenge)))
        if sw in (0x6982, 0x6A80):
            raise PKCS11Error(C.CKR_PIN_INCORRECT, "piv: management key rejected")
        if sw != 0x9000:
            raise _fail(sw, "mgmt auth")
        e = ecb.encryptor()
        answer = parse_tlv(parse_tlv(out).get(0x7C, b"")).get(0x82)
        if answer != e.update(challenge) + e.finalize():
            raise PKCS11Error(C.CKR_DEVICE_ERROR, "piv: card failed mutual authentication")

    def _general_auth(self, slot: int, kind: str, payload: bytes) -> bytes:
        out = self._cmd(0x87, KINDS[kind][0], slot, tlv(0x7C, tlv(0x82, b"") + payload),
                        what=f"GENERAL AUTHENTICATE {slot:02X}")
        return parse_tlv(parse_tlv(out).get(0x7C, b"")).get(0x82, b"")

    def close(self):
        try:
            self._worker.call(self.link.close, timeout=3.0)
        except PKCS11Error:
            pass

    # --- Backend --------------------------------------------------------------
    def health(self) -> Health:
        try:
            self._run(lambda: None)
            return Health(True, f"{self.link.reader}")
        except PKCS11Error as e:
            return Health(False, e.reason or str(e))

    def capabilities(self) -> frozenset:
        return FULL_CAPABILITIES

    def login(self, secret: bytes) -> None:
        self._run(self._verify, secret)
        self._pin = secret

    def logout(self) -> None:
        self._pin = None

    def pin_tries_left(self) -> int | None:
        def q():
            _, sw = self._tl.link.command(0x00, 0x20, 0x00, PIN_REF, le=False)
            return sw & 0xF if sw >> 4 == 0x63C else 0 if sw == 0x6983 else None
        return self._run(q)

    def unblock_pin(self, puk: bytes, new_pin: bytes) -> None:
        """RESET RETRY COUNTER with the PUK (C_InitPIN's job on a PIV token)."""
        def op():
            _, sw = self._tl.link.command(0x00, 0x2C, 0x00, PIN_REF,
                                          _pin_block(puk) + _pin_block(new_pin), le=False)
            if sw >> 4 == 0x63C:
                raise PKCS11Error(C.CKR_PIN_INCORRECT, f"piv: PUK incorrect, {sw & 0xF} tries left")
            if sw != 0x9000:
                raise _fail(sw, "RESET RETRY COUNTER")
        self._run(op)

    def pin_flags(self) -> int:
        left = self.pin_tries_left()
        table = {0: C.CKF_USER_PIN_LOCKED, 1: C.CKF_USER_PIN_FINAL_TRY | C.CKF_USER_PIN_COUNT_LOW}
        if left in table:
            return table[left]
        return C.CKF_USER_PIN_COUNT_LOW if left is not None and left < self.max_pin_tries else 0

    def place(self, label: str, in_use: list) -> str:
        """A label that names a key slot keeps it; else the first slot no key of ours uses."""
        if label.lower() in SLOT_NAMES:
            return label.lower()
        taken = {unpack_ref(ref.blob)[0] for ref in in_use}
        free = [name for name, slot in SLOT_NAMES.items() if slot not in taken]
        if not free:
            raise PKCS11Error(C.CKR_DEVICE_MEMORY, "piv: every key slot holds a key")
        return free[0]

    def generate(self, kind: str, label: str, slot: int | None = None) -> KeyRef:
        self.supports("generate", kind)
        slot = slot or SLOT_NAMES.get(label.lower(), 0x9A)

        def gen():
            self._mgmt_auth()
            return self._cmd(0x47, 0x00, slot, tlv(0xAC, tlv(0x80, bytes([KINDS[kind][0]]))),
                             what=f"GENERATE {slot:02X}")
        out = self._run(gen)
        pub = _public_key(kind, parse_tlv(parse_tlv(out).get(0x7F49, b"")))
        der = pub.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return KeyRef(pack_ref(slot, kind, self.card_id), der, kind)

    def load(self, ref: KeyRef) -> None:
        slot, kind, card = unpack_ref(ref.blob)
        self._run(lambda: None, card_id=card)

    def sign(self, ref: KeyRef, mechanism, data: bytes) -> bytes:
        slot, kind, card = unpack_ref(ref.blob)
        self.supports("sign", kind)
        _, field, k = KINDS[kind]
        if field:
            if mechanism.type != C.CKM_ECDSA:
                raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"piv: sign {mechanism.type:#x} {kind}")
            block = _fit_hash(data, field)
        else:
            block = _rsa_block(ref, mechanism, data, k)

        def op():
            self._verify_cached(slot)
            return self._general_auth(slot, kind, tlv(0x81, block))
        out = self._run(op, card_id=card)
        if not field:
            return out
        r, s = decode_dss_signature(out)
        return r.to_bytes(field, "big") + s.to_bytes(field, "big")

    def decrypt(self, ref: KeyRef, mechanism, data: bytes) -> bytes:
        slot, kind, card = unpack_ref(ref.blob)
        self.supports("decrypt", kind)
        if len(data) != KINDS[kind][2]:
            raise PKCS11Error(C.CKR_ENCRYPTED_DATA_LEN_RANGE, "RSA ciphertext length")
        unpad = {C.CKM_RSA_X_509: lambda em: em,    # PKCS#1 v1.5: unpadded by the engine
                 # (rsapad.pkcs1_decrypt_implicit: implicit rejection, no padding oracle)
                 C.CKM_RSA_PKCS_OAEP: lambda em: rsapad.oaep_unpad(
                     em, mechanism.param.hash_alg, mechanism.param.mgf,
                     mechanism.param.source_data or b"")}
        if mechanism.type not in unpad or (mechanism.type == C.CKM_RSA_PKCS_OAEP
                                           and mechanism.param is None):
            raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"piv: decrypt {mechanism.type:#x}")

        def op():
            self._verify_cached(slot)
            return self._general_auth(slot, kind, tlv(0x81, data))
        em = self._run(op, card_id=card)
        return unpad[mechanism.type](em.rjust(len(data), b"\0"))

    def derive(self, ref: KeyRef, mechanism, peer_point: bytes) -> bytes:
        """CKM_ECDH1_DERIVE with CKD_NULL: the shared secret (x coordinate)."""
        slot, kind, card = unpack_ref(ref.blob)
        self.supports("derive", kind)
        if mechanism.type != C.CKM_ECDH1_DERIVE:
            raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"piv: derive {mechanism.type:#x}")

        def op():
            self._verify_cached(slot)
            return self._general_auth(slot, kind, tlv(0x85, peer_point))
        return self._run(op, card_id=card)

    def destroy(self, ref: KeyRef) -> None:
        """PIV has no delete: overwrite the slot with a throwaway key, drop its certificate."""
        slot, kind, card = unpack_ref(ref.blob)

        def op():
            self._mgmt_auth()
            self._cmd(0x47, 0x00, slot, tlv(0xAC, tlv(0x80, b"\x11")), what="GENERATE (destroy)")
            self._put_cert(slot, None)
        self._run(op, card_id=card)

    # --- certificate objects ---------------------------------------------------
    def _put_cert(self, slot: int, der: bytes | None):
        body = tlv(0x70, der) + tlv(0x71, b"\x00") + tlv(0xFE, b"") if der else b""
        obj = CERT_OBJECTS[slot].to_bytes(3, "big")
        self._cmd(0xDB, 0x3F, 0xFF, tlv(0x5C, obj) + tlv(0x53, body), le=False, what="PUT DATA")

    def write_certificate(self, slot: int, der: bytes) -> None:
        def op():
            self._mgmt_auth()
            self._put_cert(slot, der)
        self._run(op)

    def read_certificate(self, slot: int) -> bytes | None:
        def op():
            obj = CERT_OBJECTS[slot].to_bytes(3, "big")
            out, sw = self._tl.link.command(0x00, 0xCB, 0x3F, 0xFF, tlv(0x5C, obj))
            if sw == 0x6A82:
                return None
            if sw != 0x9000:
                raise _fail(sw, "GET DATA")
            return parse_tlv(parse_tlv(out).get(0x53, b"")).get(0x70) or None
        return self._run(op)


def _fit_hash(data: bytes, field: int) -> bytes:
    """The ECDSA input as PIV wants it: exactly the field size (SP 800-73-4 §3.2.4)."""
    return data[:field] if len(data) >= field else data.rjust(field, b"\0")


def _rsa_block(ref: KeyRef, mechanism, data: bytes, k: int) -> bytes:
    if mechanism.type == C.CKM_RSA_PKCS:
        return rsapad.pkcs1_sign_block(k, data)
    if mechanism.type == C.CKM_RSA_PKCS_PSS:
        h, salt = pss_hash(mechanism, data)
        bits = serialization.load_der_public_key(ref.public_der).key_size
        return rsapad.pss_block(k, bits, data, h, mechanism.param.mgf, salt)
    raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"piv: sign {mechanism.type:#x} rsa")


def _public_key(kind: str, items: dict):
    if kind in CURVES:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVES[kind], items[0x86])
    return rsa.RSAPublicNumbers(int.from_bytes(items[0x82], "big"),
                                int.from_bytes(items[0x81], "big")).public_key()
