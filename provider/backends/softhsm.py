"""SoftHSM2 backend: keys live in a SoftHSM2 token, driven in-process with python-pkcs11.

The backend logs in to one SoftHSM2 token (found by label) with the user PIN from
its configured PIN source, once, and keeps that session for the life of the
process: SoftHSM2 is not safe with many processes rewriting one token at once, so
each process opens one session and reuses it (a broken session is reopened once).
Its PIN is the SoftHSM2 token's own, independent of the FerroHSM token PIN:
login()/logout() keep nothing.

Keys are SoftHSM2 token objects, generated there sensitive and (unless asked
otherwise) non-extractable, with a random 16-byte CKA_ID.  The KeyRef blob is that
reference: MAGIC | len(id) | id | label.  Key material of a non-extractable key
never leaves SoftHSM2.  Keys created extractable (migrate-key imports them so) can
be wrapped out again with AES key wrap with padding (CKM_AES_KEY_WRAP_PAD, PKCS#8).
PKCS#1 v1.5 decryption is never asked of SoftHSM2 (its CKR_OK / CKR_GENERAL_ERROR on
good / bad padding is Bleichenbacher's oracle): it does the raw operation
(CKM_RSA_X_509) and the engine unpads with implicit rejection.

SOFTHSM2_CONF is read by SoftHSM2 once per process, at C_Initialize: `conf`, when
given, is set before the first load and must be the same for every backend of the
process.
"""

from __future__ import annotations

import os
import re
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .. import constants as C
from ..errors import PKCS11Error
from .base import Backend, FULL_CAPABILITIES, Health, KeyRef

MAGIC = b"FSH\x01"
# kind -> (python-pkcs11 key type name, curve OID or RSA bits, field size)
KINDS = {"ec-p256": ("EC", "1.2.840.10045.3.1.7", 32),
         "ec-p384": ("EC", "1.3.132.0.34", 48),
         "rsa-2048": ("RSA", 2048, 0)}
CURVES = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}
_LIBS: dict = {}     # module path -> pkcs11.lib (one C_Initialize per process)


def _ckr(exc: Exception) -> int:
    """python-pkcs11 names its exceptions after the CKR codes: PinIncorrect -> CKR_PIN_INCORRECT."""
    name = "CKR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).upper()
    return getattr(C, name, C.CKR_DEVICE_ERROR)


def pack_ref(key_id: bytes, label: str) -> bytes:
    return MAGIC + struct.pack(">B", len(key_id)) + key_id + label.encode()


def unpack_ref(blob: bytes) -> tuple[bytes, str]:
    if blob[:4] != MAGIC or len(blob) < 5 or len(blob) < 5 + blob[4]:
        raise PKCS11Error(C.CKR_KEY_HANDLE_INVALID, "not a SoftHSM2 key reference")
    n = blob[4]
    return blob[5:5 + n], blob[5 + n:].decode("utf-8", "replace")


class SoftHsmBackend(Backend):
    kind = "software"
    exportable = True

    def __init__(self, module: str, token_label: str, pin: bytes, *, conf: str | None = None,
                 name: str = "softhsm"):
        self.name, self.module, self.token_label, self._pin = name, module, token_label, pin
        self.conf = conf
        self._session = None

    # --- plumbing ---------------------------------------------------------------
    def _open(self):
        import pkcs11
        if self.conf:
            os.environ["SOFTHSM2_CONF"] = self.conf
        lib = _LIBS.get(self.module)
        if lib is None:
            lib = _LIBS[self.module] = pkcs11.lib(self.module)
        token = lib.get_token(token_label=self.token_label)
        try:
            return token.open(rw=True, user_pin=self._pin.decode())
        except pkcs11.exceptions.UserAlreadyLoggedIn:   # another session of ours logged in
            return token.open(rw=True)

    def _run(self, fn, *args):
        """fn(session, *args); a broken session is opened again once."""
        import pkcs11
        for attempt in (0, 1):
            try:
                if self._session is None:
                    self._session = self._open()
                return fn(self._session, *args)
            except PKCS11Error:
                raise
            except pkcs11.exceptions.PKCS11Error as e:
                rv = _ckr(e)
                stale = rv in (C.CKR_SESSION_HANDLE_INVALID, C.CKR_SESSION_CLOSED,
                               C.CKR_DEVICE_REMOVED, C.CKR_TOKEN_NOT_PRESENT)
                if stale and not attempt:
                    self._session = None
                    continue
                raise PKCS11Error(rv, f"{self.name}: {type(e).__name__}") from None
            except (OSError, RuntimeError) as e:       # library missing, token not found
                self._session = None
                raise PKCS11Error(C.CKR_DEVICE_ERROR, f"{self.name}: {e}") from None

    def _private(self, session, ref: KeyRef):
        import pkcs11
        key_id, _ = unpack_ref(ref.blob)
        try:
            return session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, id=key_id)
        except pkcs11.NoSuchKey:
            raise PKCS11Error(C.CKR_KEY_HANDLE_INVALID, f"{self.name}: key not in the token") from None

    def close(self):
        if self._session is not None:
            try:
                self._session.close()
            except Exception:
                pass
            self._session = None

    # --- Backend ------------------------------------------------------------------
    def health(self) -> Health:
        try:
            self._run(lambda s: s.token.label)
            return Health(True, f"token {self.token_label!r} in {self.module}")
        except PKCS11Error as e:
            return Health(False, e.reason or str(e))

    def capabilities(self) -> frozenset:
        return FULL_CAPABILITIES

    def _templates(self, kind: str, extractable: bool):
        from pkcs11 import DEFAULT, Attribute as A
        use = {A.SIGN: True, A.DECRYPT: kind == "rsa-2048", A.DERIVE: kind != "rsa-2048",
               A.UNWRAP: False, A.ENCRYPT: DEFAULT, A.VERIFY: DEFAULT, A.WRAP: DEFAULT}
        return {A.SENSITIVE: True, A.EXTRACTABLE: extractable, A.PRIVATE: True, **use}

    def generate(self, kind: str, label: str, extractable: bool = False) -> KeyRef:
        from pkcs11 import Attribute as A, KeyType, Mechanism as M
        from pkcs11.util.ec import encode_named_curve_parameters
        self.supports("generate", kind)
        key_type, size, _ = KINDS[kind]
        key_id = os.urandom(16)

        def gen(s):
            common = dict(store=True, id=key_id, label=label,
                          private_template=self._templates(kind, extractable))
            if key_type == "EC":
                pub, _ = s.generate_keypair(
                    KeyType.EC, mechanism=M.EC_KEY_PAIR_GEN,
                    public_template={A.EC_PARAMS: encode_named_curve_parameters(size)}, **common)
                return self._ec_public(kind, pub[A.EC_POINT])
            pub, _ = s.generate_keypair(KeyType.RSA, size, **common)
            return rsa.RSAPublicNumbers(int.from_bytes(pub[A.PUBLIC_EXPONENT], "big"),
                                        int.from_bytes(pub[A.MODULUS], "big")).public_key()
        public = self._run(gen)
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return KeyRef(pack_ref(key_id, label), der, kind)

    @staticmethod
    def _ec_public(kind: str, point: bytes):
        raw = point[2:] if len(point) == 2 * KINDS[kind][2] + 3 else point   # DER OCTET STRING
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVES[kind], raw)

    def load(self, ref: KeyRef) -> None:
        self._run(self._private, ref)

    def sign(self, ref: KeyRef, mechanism, data: bytes) -> bytes:
        import pkcs11
        self.supports("sign", ref.kind)
        param = None
        if mechanism.type == C.CKM_RSA_PKCS_PSS:
            p = mechanism.param
            param = (pkcs11.Mechanism(p.hash_alg), pkcs11.MGF(p.mgf), p.salt_len)
        elif mechanism.type not in (C.CKM_ECDSA, C.CKM_RSA_PKCS):
            raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"{self.name}: sign {mechanism.type:#x}")
        return self._run(lambda s: self._private(s, ref).sign(
            data, mechanism=pkcs11.Mechanism(mechanism.type), mechanism_param=param))

    def decrypt(self, ref: KeyRef, mechanism, data: bytes) -> bytes:
        import pkcs11
        self.supports("decrypt", ref.kind)
        param = None
        if mechanism.type == C.CKM_RSA_PKCS_OAEP:
            p = mechanism.param
            param = (pkcs11.Mechanism(p.hash_alg), pkcs11.MGF(p.mgf), p.source_data or None)
        elif mechanism.type != C.CKM_RSA_X_509:     # PKCS#1 v1.5: raw here, unpadded by the engine
            raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"{self.name}: decrypt {mechanism.type:#x}")
        return self._run(lambda s: self._private(s, ref).decrypt(
            data, mechanism=pkcs11.Mechanism(mechanism.type), mechanism_param=param))

    def derive(self, ref: KeyRef, mechanism, peer_point: bytes) -> bytes:
        """CKM_ECDH1_DERIVE with CKD_NULL: the raw shared secret, via a session object
        SoftHSM2 lets us read (it is destroyed at once)."""
        import pkcs11
        from pkcs11 import Attribute as A
        self.supports("derive", ref.kind)

        def op(s):
            secret = self._private(s, ref).derive_key(
                pkcs11.KeyType.GENERIC_SECRET, KINDS[ref.kind][2] * 8,
                mechanism=pkcs11.Mechanism.ECDH1_DERIVE,
                mechanism_param=(pkcs11.KDF.NULL, None, peer_point),
                template={A.SENSITIVE: False, A.EXTRACTABLE: True})
            try:
                return secret[A.VALUE]
            finally:
                secret.destroy()
        return self._run(op)

    def _with_kek(self, kek: bytes, use):
        import pkcs11
        from pkcs11 import Attribute as A

        def op(s):
            key = s.create_object({A.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                                   A.KEY_TYPE: pkcs11.KeyType.AES, A.VALUE: kek, A.TOKEN: False,
                                   A.WRAP: True, A.UNWRAP: True, A.SENSITIVE: True,
                                   A.EXTRACTABLE: False})
            try:
                return use(s, key)
            finally:
                key.destroy()
        return self._run(op)

    def wrap(self, ref: KeyRef, kek: bytes) -> bytes:
        import pkcs11
        return self._with_kek(kek, lambda s, k: k.wrap_key(
            self._private(s, ref), mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD))

    def unwrap(self, kind: str, wrapped: bytes, kek: bytes, label: str,
               extractable: bool, public_der: bytes) -> KeyRef:
        import pkcs11
        key_id = os.urandom(16)
        key_type = getattr(pkcs11.KeyType, KINDS[kind][0])
        self._with_kek(kek, lambda s, k: k.unwrap_key(
            pkcs11.ObjectClass.PRIVATE_KEY, key_type, wrapped, id=key_id, label=label,
            mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD, store=True,
            template=self._templates(kind, extractable)))
        return KeyRef(pack_ref(key_id, label), public_der, kind)

    def destroy(self, ref: KeyRef) -> None:
        """The private key and the public key SoftHSM2 made with it."""
        import pkcs11
        key_id, _ = unpack_ref(ref.blob)

        def op(s):
            for obj in list(s.get_objects({pkcs11.Attribute.ID: key_id})):
                obj.destroy()
        self._run(op)
