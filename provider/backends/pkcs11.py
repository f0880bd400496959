"""Generic PKCS#11 backend: keys live in a token of any PKCS#11 module (a network HSM's
client library, SoftHSM2, another FerroHSM), driven in-process with python-pkcs11.

This is the product's "remote key vault" adapter: a real HSM's module plugs in here.
The backend logs in to one token of the module (found by label, or by slot id) with
the user PIN from its configured PIN source, once, and keeps that session for the life
of the process (a broken session is reopened once): SoftHSM2 is not safe with many
processes rewriting one token at once, and an HSM's sessions are costly.  Its PIN is
the remote token's own, independent of the FerroHSM token PIN: login()/logout() keep
nothing.  Every module call runs on one worker thread with a deadline (DeviceWorker):
a hung network HSM costs `timeout` seconds and CKR_DEVICE_ERROR, never a hang.

What the backend can do is what the module says it can (`NEEDS`: a capability and the
mechanisms and flags the token must list for it), read once the token is reachable.
`security` says what the module's keys are ("hardware" for an HSM, "software" for
SoftHSM2 or another FerroHSM); the environment's placement rule trusts it.

Keys are token objects, generated there sensitive and (unless asked otherwise)
non-extractable, with a random 16-byte CKA_ID.  The KeyRef blob is that reference:
MAGIC | len(id) | id | label (the format of the SoftHSM2 backend this grew from, so its
keys stay usable).  Key material of a non-extractable key never leaves the module.
Keys created extractable (migrate-key imports them so) can be wrapped out again with
AES key wrap with padding (CKM_AES_KEY_WRAP_PAD, PKCS#8).  PKCS#1 v1.5 decryption is
never asked of the module (a module's CKR_OK / error on good / bad padding is
Bleichenbacher's oracle): it does the raw operation (CKM_RSA_X_509) and the engine
unpads with implicit rejection; a module without CKM_RSA_X_509 (FerroHSM) decrypts OAEP
only.

`env` (SOFTHSM2_CONF for SoftHSM2, FERROHSM_CONF for a FerroHSM module) is set before
the module's first C_Initialize in this process and must be the same for every backend
of the process that loads that module file.  The `softhsm` type is a preset of this
backend (factory.py): SoftHSM2's module path, "software", `conf` as SOFTHSM2_CONF.
"""

from __future__ import annotations

import os
import re
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .. import constants as C
from ..errors import PKCS11Error
from .base import Backend, DeviceTimeout, DeviceWorker, Health, KeyRef

MAGIC = b"FSH\x01"
# kind -> (python-pkcs11 key type name, curve OID or RSA bits, field size)
KINDS = {"ec-p256": ("EC", "1.2.840.10045.3.1.7", 32),
         "ec-p384": ("EC", "1.3.132.0.34", 48),
         "rsa-2048": ("RSA", 2048, 0)}
CURVES = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}
EC_KINDS, RSA = ("ec-p256", "ec-p384"), ("rsa-2048",)
# capability -> alternatives, each (mechanism, CKF_ flag the module must give it); the
# module must list one of them.  RSA decrypt: raw RSA (PKCS#1 v1.5, unpadded here) or OAEP.
NEEDS = {
    **{("generate", k): ((C.CKM_EC_KEY_PAIR_GEN, C.CKF_GENERATE_KEY_PAIR),) for k in EC_KINDS},
    **{("sign", k): ((C.CKM_ECDSA, C.CKF_SIGN),) for k in EC_KINDS},
    **{("derive", k): ((C.CKM_ECDH1_DERIVE, C.CKF_DERIVE),) for k in EC_KINDS},
    ("generate", "rsa-2048"): ((C.CKM_RSA_PKCS_KEY_PAIR_GEN, C.CKF_GENERATE_KEY_PAIR),),
    ("sign", "rsa-2048"): ((C.CKM_RSA_PKCS, C.CKF_SIGN), (C.CKM_RSA_PKCS_PSS, C.CKF_SIGN)),
    ("decrypt", "rsa-2048"): ((C.CKM_RSA_X_509, C.CKF_DECRYPT), (C.CKM_RSA_PKCS_OAEP, C.CKF_DECRYPT)),
}
OP_FLAG = {"generate": C.CKF_GENERATE_KEY_PAIR, "sign": C.CKF_SIGN, "decrypt": C.CKF_DECRYPT,
           "derive": C.CKF_DERIVE}
SECURITY = ("hardware", "software")
STALE = frozenset({C.CKR_SESSION_HANDLE_INVALID, C.CKR_SESSION_CLOSED, C.CKR_DEVICE_REMOVED,
                   C.CKR_TOKEN_NOT_PRESENT, C.CKR_USER_NOT_LOGGED_IN})


def _ckr(exc: Exception) -> int:
    """python-pkcs11 names its exceptions after the CKR codes: PinIncorrect -> CKR_PIN_INCORRECT."""
    name = "CKR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).upper()
    return getattr(C, name, C.CKR_DEVICE_ERROR)


def pack_ref(key_id: bytes, label: str) -> bytes:
    return MAGIC + struct.pack(">B", len(key_id)) + key_id + label.encode()


def unpack_ref(blob: bytes) -> tuple[bytes, str]:
    if blob[:4] != MAGIC or len(blob) < 5 or len(blob) < 5 + blob[4]:
        raise PKCS11Error(C.CKR_KEY_HANDLE_INVALID, "not a PKCS#11 backend key reference")
    n = blob[4]
    return blob[5:5 + n], blob[5 + n:].decode("utf-8", "replace")


class _Link:
    """One logged-in session; a call that overran keeps its own (closed when it returns)."""

    def __init__(self):
        self.session = None

    def drop(self):
        session, self.session = self.session, None
        if session is not None:
            try:
                session.close()
            except Exception:        # the module is gone or the session already is
                pass


class Pkcs11Backend(Backend):
    exportable = True

    def __init__(self, module: str, pin: bytes, *, token_label: str | None = None,
                 slot: int | None = None, security: str = "software", env: dict | None = None,
                 timeout: float = 10.0, name: str = "pkcs11"):
        if (token_label is None) == (slot is None):
            raise ValueError("give token_label or slot, not both")
        if security not in SECURITY:
            raise ValueError(f"security must be one of {SECURITY}")
        self.name, self.module, self._pin = name, module, pin
        self.token_label, self.slot, self.kind = token_label, slot, security
        self.env = dict(env or {})
        self._worker = DeviceWorker(name, timeout)
        self._link = _Link()
        self._caps: frozenset | None = None
        self._have: dict = {}       # mechanism -> CKF_ flags the token lists

    @property
    def where(self) -> str:
        token = f"token {self.token_label!r}" if self.slot is None else f"slot {self.slot}"
        return f"{token} in {self.module}"

    # --- plumbing ---------------------------------------------------------------
    def _token(self):
        import pkcs11
        for var, value in self.env.items():
            os.environ[var] = value
        lib = pkcs11.lib(self.module)          # python-pkcs11 keeps one per module path
        if self.slot is None:
            return lib.get_token(token_label=self.token_label)
        for slot in lib.get_slots(token_present=True):
            if slot.slot_id == self.slot:
                return slot.get_token()
        raise PKCS11Error(C.CKR_TOKEN_NOT_PRESENT, f"{self.name}: no token in slot {self.slot}")

    def _open(self):
        import pkcs11
        token = self._token()
        try:
            return token.open(rw=True, user_pin=self._pin.decode())
        except pkcs11.exceptions.UserAlreadyLoggedIn:   # another session of ours logged in
            return token.open(rw=True)

    def _run(self, fn, *args):
        """fn(session, *args) on the worker; a broken session is opened again once."""
        link = self._link

        def task():
            import pkcs11
            for attempt in (0, 1):
                try:
                    if link.session is None:
                        link.session = self._open()
                    return fn(link.session, *args)
                except PKCS11Error:
                    raise
                except pkcs11.exceptions.PKCS11Error as e:
                    rv = _ckr(e)
                    if rv in STALE and not attempt:
                        link.drop()
                        continue
                    raise PKCS11Error(rv, f"{self.name}: {type(e).__name__}") from None
                except (OSError, RuntimeError) as e:       # module missing, token not found
                    link.drop()
                    raise PKCS11Error(C.CKR_DEVICE_ERROR, f"{self.name}: {e}") from None
        try:
            return self._worker.call(task, on_abandon=link.drop)
        except DeviceTimeout:
            self._link = _Link()
            raise

    def _private(self, session, ref: KeyRef):
        import pkcs11
        key_id, _ = unpack_ref(ref.blob)
        try:
            return session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, id=key_id)
        except pkcs11.NoSuchKey:
            raise PKCS11Error(C.CKR_KEY_HANDLE_INVALID, f"{self.name}: key not in the token") from None

    def close(self):
        """Close the session on the worker; at interpreter exit (a host's atexit
        C_Finalize, when thread pools take no more work) in the calling thread."""
        try:
            self._worker.call(self._link.drop, timeout=3.0)
        except PKCS11Error:
            pass
        except RuntimeError:          # "cannot schedule new futures after shutdown"
            self._link.drop()

    # --- Backend ------------------------------------------------------------------
    def health(self) -> Health:
        """A C_GetTokenInfo round trip through the logged-in session; a user PIN the
        module counts as low or on its final try is `degraded`, a locked one is down."""
        try:
            flags = self._run(lambda s: s.token.slot.get_token().flags)
        except PKCS11Error as e:
            return Health(False, e.reason or str(e))
        if flags & C.CKF_USER_PIN_LOCKED:
            return Health(False, f"{self.where}: user PIN locked")
        if flags & (C.CKF_USER_PIN_COUNT_LOW | C.CKF_USER_PIN_FINAL_TRY):
            return Health(True, f"{self.where}: user PIN count low", degraded=True)
        return Health(True, self.where)

    def capabilities(self) -> frozenset:
        """What NEEDS finds in the token's mechanism list (read once; CKR_DEVICE_ERROR
        while the module cannot be reached)."""
        if self._caps is None:
            def listed(s):
                slot = s.token.slot
                return {int(m): int(slot.get_mechanism_info(m).flags) for m in slot.get_mechanisms()}
            self._have = self._run(listed)
            self._caps = frozenset(cap for cap, ways in NEEDS.items()
                                   if any(self._have.get(m, 0) & flag for m, flag in ways))
        return self._caps

    def accepts(self, op: str, mech: int) -> bool:
        self.capabilities()
        return bool(self._have.get(mech, 0) & OP_FLAG[op])

    def _listed(self, op: str, mech: int) -> None:
        """Refuse a mechanism the token does not list for `op` (before the module sees it)."""
        if not self.accepts(op, mech):
            raise PKCS11Error(C.CKR_MECHANISM_INVALID,
                              f"{self.name}: the module has no {C.name_of('CKM_', mech)} to {op}")

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
        self._listed("sign", mechanism.type)
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
        self._listed("decrypt", mechanism.type)
        return self._run(lambda s: self._private(s, ref).decrypt(
            data, mechanism=pkcs11.Mechanism(mechanism.type), mechanism_param=param))

    def derive(self, ref: KeyRef, mechanism, peer_point: bytes) -> bytes:
        """CKM_ECDH1_DERIVE with CKD_NULL: the raw shared secret, via a session object
        the module lets us read (it is destroyed at once)."""
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
        """The private key and the public key the module made with it."""
        import pkcs11
        key_id, _ = unpack_ref(ref.blob)

        def op(s):
            for obj in list(s.get_objects({pkcs11.Attribute.ID: key_id})):
                obj.destroy()
        self._run(op)
