"""TPM 2.0 backend: keys live under a TPM storage primary, driven with tpm2-pytss (ESAPI).

Keys are created under an ECC P-256 storage primary in the owner hierarchy, made
from a fixed template so it is the same key after every restart (the TPM derives
it from its seed); nothing is persisted in the TPM.  A key's TPM2B_PUBLIC and
TPM2B_PRIVATE (the latter wrapped by the primary) are the KeyRef blob the engine
stores.  Each operation loads the key, uses it and flushes it: without a resource
manager only 3 transient objects fit, so we hold at most 2 (primary + one key) and
flush whatever is left over when we connect.  One process should own a TPM.

Object auth = HKDF-SHA256(login secret); a wrong one is counted by the TPM's
dictionary-attack logic (TPM_RC_AUTH_FAIL -> CKR_PIN_INCORRECT, TPM_RC_LOCKOUT ->
CKR_PIN_LOCKED).  Connection failures give CKR_DEVICE_ERROR; a broken connection
(swtpm restarted) is re-opened once per call, the primary re-created.
"""

from __future__ import annotations

import os
import struct

os.environ.setdefault("TSS2_LOG", "all+none")   # tss2 would log each failure to stderr

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402
from tpm2_pytss import ESAPI, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import TPM2_ALG, TPM2_CAP, TPM2_PT, TPM2_RC, TPMA_OBJECT  # noqa: E402
from tpm2_pytss.types import (TPM2B_AUTH, TPM2B_PRIVATE, TPM2B_PUBLIC,  # noqa: E402
                              TPM2B_SENSITIVE_CREATE, TPMS_SENSITIVE_CREATE,
                              TPMT_RSA_DECRYPT, TPMT_SIG_SCHEME)

from .. import constants as C  # noqa: E402
from ..errors import PKCS11Error  # noqa: E402
from .base import (Backend, DeviceTimeout, DeviceWorker, Health, KeyRef, hash_for_size,  # noqa: E402
                   pss_hash, split_digest_info)

PRIMARY_TEMPLATE = "ecc256:aes128cfb"
PRIMARY_ATTRS = TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
KEY_ATTRS = (TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
             | TPMA_OBJECT.USERWITHAUTH)
# kind -> (template, extra attributes, blob tag, curve size or 0)
KINDS = {
    "ec-p256": ("ecc256:null:null", TPMA_OBJECT.SIGN_ENCRYPT, 1, 32),
    "ec-p384": ("ecc384:null:null", TPMA_OBJECT.SIGN_ENCRYPT, 2, 48),
    "rsa-2048": ("rsa2048:null:null", TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.DECRYPT, 3, 0),
}
TAG_KIND = {v[2]: k for k, v in KINDS.items()}
HASH_ALG = {C.CKM_SHA_1: TPM2_ALG.SHA1, C.CKM_SHA256: TPM2_ALG.SHA256,
            C.CKM_SHA384: TPM2_ALG.SHA384, C.CKM_SHA512: TPM2_ALG.SHA512}
# TPM response code (format-1 parameters/sessions stripped) -> CKR
TPM_RC_MAP = {
    TPM2_RC.AUTH_FAIL: C.CKR_PIN_INCORRECT,
    TPM2_RC.BAD_AUTH: C.CKR_PIN_INCORRECT,
    TPM2_RC.LOCKOUT: C.CKR_PIN_LOCKED,
    TPM2_RC.OBJECT_MEMORY: C.CKR_DEVICE_MEMORY,
    TPM2_RC.SESSION_MEMORY: C.CKR_DEVICE_MEMORY,
    TPM2_RC.INTEGRITY: C.CKR_KEY_HANDLE_INVALID,
    TPM2_RC.SIZE: C.CKR_DATA_LEN_RANGE,
    TPM2_RC.VALUE: C.CKR_ENCRYPTED_DATA_INVALID,
    TPM2_RC.SCHEME: C.CKR_MECHANISM_INVALID,
    TPM2_RC.KEY: C.CKR_KEY_TYPE_INCONSISTENT,
    TPM2_RC.ATTRIBUTES: C.CKR_KEY_FUNCTION_NOT_PERMITTED,
}
MAGIC = b"FT2\x01"


def _auth_from_secret(secret: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None,
                info=b"ferrohsm tpm2 object auth").derive(secret)


def pack_blob(kind: str, pub: bytes, priv: bytes) -> bytes:
    return MAGIC + struct.pack(">BHH", KINDS[kind][2], len(pub), len(priv)) + pub + priv


def unpack_blob(blob: bytes) -> tuple[str, TPM2B_PUBLIC, TPM2B_PRIVATE]:
    try:
        if blob[:4] != MAGIC:
            raise ValueError
        tag, lp, lv = struct.unpack(">BHH", blob[4:9])
        pub, _ = TPM2B_PUBLIC.unmarshal(blob[9:9 + lp])
        priv, _ = TPM2B_PRIVATE.unmarshal(blob[9 + lp:9 + lp + lv])
        return TAG_KIND[tag], pub, priv
    except (ValueError, KeyError, struct.error, TSS2_Exception):
        raise PKCS11Error(C.CKR_KEY_HANDLE_INVALID, "not a tpm2 key blob") from None


def _is_transport(e: TSS2_Exception) -> bool:
    """A TSS layer error (TCTI/ESYS) rather than an answer from the TPM."""
    return (e.rc >> 16) != 0


def _is_stale(e: TSS2_Exception) -> bool:
    """The TPM no longer has an object we hold a handle to (TPM_RC_REFERENCE_H0..), or the
    handle now names another object (TPM_RC_HANDLE on a parameter or handle: a connection
    abandoned after a hang, closing late, flushed the transient handles we reloaded under
    the same numbers)."""
    rc = e.rc
    if rc >> 16:
        return False
    return (rc & 0xFF8) == TPM2_RC.REFERENCE_H0 or bool(rc & 0x80) and (rc & 0x3F) == (TPM2_RC.HANDLE & 0x3F)


class _Conn:
    """One ESAPI connection and the storage primary loaded on it."""

    def __init__(self, tcti: str):
        self.tcti, self.esys, self.srk = tcti, None, None

    def connect(self):
        esys = ESAPI(self.tcti)
        try:
            _flush_transients(esys)
            srk, *_ = esys.create_primary(
                None, TPM2B_PUBLIC.parse(PRIMARY_TEMPLATE, objectAttributes=PRIMARY_ATTRS))
        except BaseException:
            esys.close()
            raise
        self.esys, self.srk = esys, srk

    def drop(self):
        esys, self.esys, self.srk = self.esys, None, None
        if esys is not None:
            try:
                esys.close()
            except Exception:
                pass

    def close(self):
        if self.esys is not None:
            try:
                self.esys.flush_context(self.srk)
            except TSS2_Exception:
                pass
        self.drop()


def _flush_transients(esys):
    """Objects another client (or a crashed run) left loaded: without a resource
    manager they would fill the TPM's 3 transient slots."""
    _, data = esys.get_capability(TPM2_CAP.HANDLES, 0x80000000, 64)
    for h in data.data.handles:
        esys.flush_context(esys.tr_from_tpmpublic(h))


class Tpm2Backend(Backend):
    kind = "hardware"
    exportable = False

    def __init__(self, tcti: str, *, name: str = "tpm2", timeout: float = 10.0):
        self.name, self.tcti = name, tcti
        self._worker = DeviceWorker(name, timeout)
        self._conn = _Conn(tcti)
        self._auth: bytes | None = None

    def _run(self, fn, *args):
        """fn(esys, primary, *args) on the worker; reconnect once on a broken link."""
        conn = self._conn                   # a call that overruns keeps its own connection

        def task():
            for attempt in (0, 1):
                fresh = conn.esys is None
                try:
                    if fresh:
                        conn.connect()
                    return fn(conn.esys, conn.srk, *args)
                except TSS2_Exception as e:
                    if _is_stale(e) and not attempt:
                        conn.drop()          # our primary was flushed by another client
                        continue
                    if not _is_transport(e):
                        raise _map_tpm(e) from None
                    conn.drop()
                    if fresh or attempt:
                        raise PKCS11Error(C.CKR_DEVICE_ERROR,
                                          f"{self.name}: {self.tcti}: {e}") from None
        try:
            return self._worker.call(task, on_abandon=conn.drop)
        except DeviceTimeout:
            self._conn = _Conn(self.tcti)
            raise

    def close(self):
        try:
            self._worker.call(self._conn.close, timeout=3.0)
        except PKCS11Error:
            pass

    # --- Backend --------------------------------------------------------------
    def health(self) -> Health:
        try:
            self._run(lambda e, s: e.get_capability(TPM2_CAP.TPM_PROPERTIES,
                                                    TPM2_PT.MANUFACTURER, 1))
            return Health(True, f"{self.tcti}")
        except PKCS11Error as e:
            return Health(False, e.reason or str(e))

    def capabilities(self) -> frozenset:
        caps = {("sign", k) for k in KINDS} | {("decrypt", "rsa-2048")}
        return frozenset(caps | {("generate", k) for k in KINDS})

    def login(self, secret: bytes) -> None:
        self._auth = _auth_from_secret(secret)

    def logout(self) -> None:
        self._auth = None

    def _need_auth(self) -> bytes:
        if self._auth is None:
            raise PKCS11Error(C.CKR_USER_NOT_LOGGED_IN, f"{self.name}: no object auth")
        return self._auth

    def pin_tries_left(self) -> int | None:
        def q(e, s):
            _, d = e.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.LOCKOUT_COUNTER, 2)
            props = {p.property: p.value for p in d.data.tpmProperties}
            return props[TPM2_PT.MAX_AUTH_FAIL] - props[TPM2_PT.LOCKOUT_COUNTER]
        return self._run(q)

    def generate(self, kind: str, label: str) -> KeyRef:
        self.supports("generate", kind)
        auth = self._need_auth()
        template, attrs, _, _ = KINDS[kind]
        sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(auth)))
        pub_t = TPM2B_PUBLIC.parse(template, objectAttributes=KEY_ATTRS | attrs)
        priv, pub, *_ = self._run(lambda e, s: e.create(s, sens, pub_t))
        return KeyRef(pack_blob(kind, pub.marshal(), priv.marshal()),
                      pub.publicArea.to_der(), kind)

    def _with_key(self, ref: KeyRef, use):
        auth = self._need_auth()
        _, pub, priv = unpack_blob(ref.blob)

        def op(esys, srk):
            h = esys.load(srk, priv, pub)
            try:
                esys.tr_set_auth(h, auth)
                return use(esys, h)
            finally:
                esys.flush_context(h)
        return self._run(op)

    def load(self, ref: KeyRef) -> None:
        self._with_key(ref, lambda e, h: None)

    def sign(self, ref: KeyRef, mechanism, data: bytes) -> bytes:
        kind = unpack_blob(ref.blob)[0]
        self.supports("sign", kind)
        size = KINDS[kind][3]
        scheme, digest = _sig_scheme(kind, mechanism, data)
        sig = self._with_key(ref, lambda e, h: e.sign(h, digest, scheme))
        if size:
            r = bytes(sig.signature.ecdsa.signatureR.buffer)
            s = bytes(sig.signature.ecdsa.signatureS.buffer)
            return r.rjust(size, b"\0") + s.rjust(size, b"\0")
        body = sig.signature.rsapss if mechanism.type == C.CKM_RSA_PKCS_PSS \
            else sig.signature.rsassa
        return bytes(body.sig.buffer)

    def decrypt(self, ref: KeyRef, mechanism, data: bytes) -> bytes:
        kind = unpack_blob(ref.blob)[0]
        self.supports("decrypt", kind)
        scheme = TPMT_RSA_DECRYPT()
        if mechanism.type == C.CKM_RSA_X_509:    # raw (the key's scheme is NULL); PKCS#1 v1.5 is
            scheme.scheme = TPM2_ALG.NULL        # unpadded by the engine: TPM_RC_VALUE is an oracle
        elif mechanism.type == C.CKM_RSA_PKCS_OAEP:
            p = mechanism.param
            # The TPM appends a 0 octet to a non-empty label: only the empty one matches PKCS#11.
            if p is None or p.hash_alg not in HASH_ALG or p.source_data:
                raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, "OAEP: hash or label")
            scheme.scheme = TPM2_ALG.OAEP
            scheme.details.oaep.hashAlg = HASH_ALG[p.hash_alg]
        else:
            raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"{self.name}: decrypt {mechanism.type:#x}")
        if len(data) != 256:
            raise PKCS11Error(C.CKR_ENCRYPTED_DATA_LEN_RANGE, "RSA-2048 ciphertext")
        out = self._with_key(ref, lambda e, h: e.rsa_decrypt(h, data, scheme))
        return bytes(out.buffer)

    def destroy(self, ref: KeyRef) -> None:
        """Nothing lives in the TPM: forgetting the blob destroys the key."""
        unpack_blob(ref.blob)


def _sig_scheme(kind: str, mechanism, data: bytes):
    sch = TPMT_SIG_SCHEME()
    if kind.startswith("ec-") and mechanism.type == C.CKM_ECDSA:
        sch.scheme, digest, h = TPM2_ALG.ECDSA, data, hash_for_size(len(data))
    elif kind == "rsa-2048" and mechanism.type == C.CKM_RSA_PKCS:
        h, digest = split_digest_info(data)
        sch.scheme = TPM2_ALG.RSASSA
    elif kind == "rsa-2048" and mechanism.type == C.CKM_RSA_PKCS_PSS:
        h, salt = pss_hash(mechanism, data)
        if salt != len(data):    # the TPM's PSS salt is the digest length
            raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, "TPM PSS salt = hash length")
        sch.scheme, digest = TPM2_ALG.RSAPSS, data
    else:
        raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"tpm2: sign {mechanism.type:#x} {kind}")
    if h not in HASH_ALG:
        raise PKCS11Error(C.CKR_DATA_LEN_RANGE, "hash not supported by the TPM")
    sch.details.any.hashAlg = HASH_ALG[h]
    return sch, digest


def _map_tpm(e: TSS2_Exception) -> PKCS11Error:
    rv = TPM_RC_MAP.get(e.error if e.fmt1 else e.rc & 0xFFF, C.CKR_DEVICE_ERROR)
    return PKCS11Error(rv, f"tpm2: {e}")
