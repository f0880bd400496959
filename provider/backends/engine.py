"""How the token engine uses device backends: precedence, fallback, login, key use.

One `Backends` per Library.  It builds each configured backend once (one device
connection per process) and binds each token that has a [token.LABEL] policy:

  - selection, at the token's first use ("token open"): each backend of the precedence
    list is health-checked in order and the first healthy one serves the token's new
    key pairs.  Passing over a hardware backend to a software one is a fallback: it
    needs `fallback = "software"`, and is logged at WARNING with the reasons.  With no
    healthy backend, "software" serves from the engine's own keys (WARNING) and "none"
    makes the token absent: the slot is CKF_REMOVABLE_DEVICE without
    CKF_TOKEN_PRESENT, C_GetSlotList(TRUE) leaves it out, C_GetTokenInfo and
    C_OpenSession answer CKR_TOKEN_NOT_PRESENT (what a reader without its card does in
    SoftHSM2/OpenSC, and what p11-kit expects); it is probed again on the next look.
    A chosen backend stays chosen: if it dies, its operations fail with the device's
    CKR_DEVICE_ERROR / CKR_DEVICE_REMOVED and work again when it is back.
  - key pairs: a token C_GenerateKeyPair of EC P-256/P-384 or RSA-2048 goes to the
    serving backend; the engine stores an ordinary private key object with the public
    attributes, CKA_SENSITIVE true, CKA_COPYABLE false, CKA_EXTRACTABLE false (true only
    on a backend that can export, if asked), no private value, plus CKA_FERRO_BACKEND
    (the backend's name, readable) and CKA_FERRO_KEY_REF (the KeyRef blob, sealed like
    key material, CKR_ATTRIBUTE_SENSITIVE to clients).  Session key pairs, other key
    types and secret keys stay in the engine (another type on a token with fallback
    "none" is refused with CKR_MECHANISM_INVALID).
  - login: C_Login(CKU_USER) hands each backend its secret (SECRET_SOURCE): a PIV card
    gets the PIN itself (the card checks it and counts the tries; its counter shows in
    the token's PIN flags); a TPM gets HMAC-SHA256 of the token master key, which only
    the user PIN unwraps and a PIN change keeps.  A backend shared by two tokens is
    logged in again whenever the other token used it last.
"""

from __future__ import annotations

import threading
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

from .. import constants as C
from ..errors import PKCS11Error
from ..log import LOG
from ..mechanisms.asym import Hashed, OneShot, spki, to_bytes
from ..mechanisms.curves import WEIERSTRASS, WEIERSTRASS_PARAMS, curve_of, wrap_point
from ..mechanisms.base import derived_len
from ..mechanisms.digest import hash_for
from ..mechanisms.ec import KDFS
from ..mechanisms.params import Ecdh1DeriveParams, Mechanism, PssParams
from . import rsapad
from .base import DIGEST_INFO, MGF_FOR_HASH, Backend, Health, KeyRef
from .factory import FACTORIES
from .soft import CURVE_KIND, kind_of


ECDSA_HASHED = {C.CKM_ECDSA_SHA1: C.CKM_SHA_1, C.CKM_ECDSA_SHA224: C.CKM_SHA224,
                C.CKM_ECDSA_SHA256: C.CKM_SHA256, C.CKM_ECDSA_SHA384: C.CKM_SHA384,
                C.CKM_ECDSA_SHA512: C.CKM_SHA512}
PKCS1_HASHED = {C.CKM_SHA1_RSA_PKCS: C.CKM_SHA_1, C.CKM_SHA224_RSA_PKCS: C.CKM_SHA224,
                C.CKM_SHA256_RSA_PKCS: C.CKM_SHA256, C.CKM_SHA384_RSA_PKCS: C.CKM_SHA384,
                C.CKM_SHA512_RSA_PKCS: C.CKM_SHA512}
PSS_HASHED = {C.CKM_SHA1_RSA_PKCS_PSS: C.CKM_SHA_1, C.CKM_SHA224_RSA_PKCS_PSS: C.CKM_SHA224,
              C.CKM_SHA256_RSA_PKCS_PSS: C.CKM_SHA256, C.CKM_SHA384_RSA_PKCS_PSS: C.CKM_SHA384,
              C.CKM_SHA512_RSA_PKCS_PSS: C.CKM_SHA512}
# sign mechanism -> (hash the engine computes first or None, what the backend is asked)
SIGN = {C.CKM_ECDSA: (None, C.CKM_ECDSA), C.CKM_RSA_PKCS: (None, C.CKM_RSA_PKCS),
        C.CKM_RSA_PKCS_PSS: (None, C.CKM_RSA_PKCS_PSS),
        **{m: (h, C.CKM_ECDSA) for m, h in ECDSA_HASHED.items()},
        **{m: (h, C.CKM_RSA_PKCS) for m, h in PKCS1_HASHED.items()},
        **{m: (h, C.CKM_RSA_PKCS_PSS) for m, h in PSS_HASHED.items()}}
DECRYPT = frozenset({C.CKM_RSA_PKCS, C.CKM_RSA_PKCS_OAEP})
RAW_RSA = Mechanism(C.CKM_RSA_X_509)     # what a backend is asked for a CKM_RSA_PKCS decryption
KEY_TYPE_OF = {C.CKM_ECDSA: C.CKK_EC, C.CKM_RSA_PKCS: C.CKK_RSA, C.CKM_RSA_PKCS_PSS: C.CKK_RSA,
               C.CKM_RSA_PKCS_OAEP: C.CKK_RSA, C.CKM_ECDH1_DERIVE: C.CKK_EC,
               C.CKM_ECDH1_COFACTOR_DERIVE: C.CKK_EC}
# what a backend-held private key must be; a template asking otherwise is refused
FORCED = {C.CKA_SENSITIVE: True, C.CKA_COPYABLE: False}


def _fail(rv: int, why: str) -> PKCS11Error:
    return PKCS11Error(rv, why)


class Binding:
    """One token's backends: its policy and which backend serves it."""

    def __init__(self, owner: "Backends", label: str, policy):
        self.owner, self.label, self.policy = owner, label, policy
        self.active: Backend | None = None
        self.reason = ""                  # why the token is absent, or fell back
        self._logged = ""                 # the absence reason last logged
        self.secrets: dict[str, bytes] = {}

    def _probe(self, name: str) -> tuple[Backend | None, Health]:
        try:
            backend = self.owner.get(name)
        except PKCS11Error as e:
            return None, Health(False, e.reason or str(e))
        return backend, backend.health()

    def serving(self) -> Backend | None:
        if self.active is None:
            self.active = self._select()
        return self.active

    def _select(self) -> Backend | None:
        skipped = []
        for name in self.policy.backends:
            backend, health = self._probe(name)
            if not health.ok:
                skipped.append((name, backend, health.reason))
                continue
            passed_hw = [n for n, b, _ in skipped if b is None or b.kind == "hardware"]
            if backend.kind == "software" and passed_hw and self.policy.fallback != "software":
                skipped.append((name, backend, "software after hardware needs fallback = software"))
                continue
            if skipped:
                LOG.warning("token %r: %s; using backend %s", self.label, _why(skipped), name)
            return backend
        self.reason = f"no healthy backend ({_why(skipped)})"
        if self.policy.fallback == "software":
            LOG.warning("token %r: %s; fallback = software: serving from the engine's keys",
                        self.label, self.reason)
            return self.owner.get("soft")
        if self.reason != self._logged:          # probed again on each look: said once
            LOG.warning("token %r: %s; fallback = none: token not present", self.label, self.reason)
            self._logged = self.reason
        return None

    def slot_flags(self) -> int:
        removable = C.CKF_REMOVABLE_DEVICE | C.CKF_HW_SLOT if self.policy.fallback == "none" else 0
        return removable | (C.CKF_TOKEN_PRESENT if self.serving() is not None else 0)


def _why(skipped) -> str:
    return "; ".join(f"{n}: {r}" for n, _, r in skipped)


SLOW_SIGN_SECONDS = 0.5          # a device sign slower than this is counted and logged
HEALTH_INTERVAL = 60.0           # seconds between two health checks of every backend


def status_of(health: Health) -> str:
    return "unavailable" if not health.ok else "degraded" if health.degraded else "available"


class Backends:
    def __init__(self, config):
        self.config = config
        self.slow_signs: dict[str, int] = {}        # backend name -> signs slower than SLOW_SIGN_SECONDS
        self._report: dict = {}                     # backend name -> its last health check (health_report)
        self._checker = None
        self._stop = threading.Event()
        self._made: dict[str, Backend] = {}
        self._broken: dict[str, PKCS11Error] = {}   # backend name -> its configuration error
        self._bindings: dict[str, Binding] = {}
        self._owner: dict[str, tuple] = {}      # backend name -> (token serial, secret)

    def get(self, name: str) -> Backend:
        """The backend `name`, built at its first use.  A backend whose settings are wrong
        (a PIN source others can read, a missing package) fails with CKR_DEVICE_ERROR,
        logged once at ERROR; the same error answers every later use in this process."""
        backend = self._made.get(name)
        if backend is None:
            if name in self._broken:
                raise self._broken[name]
            settings = self.config.backends.get(name)
            if settings is None:
                raise _fail(C.CKR_DEVICE_ERROR, f"backend {name!r} is not configured")
            try:
                backend = FACTORIES[settings["type"]][0](name, settings)
            except (ImportError, KeyError, ValueError, PKCS11Error) as e:
                why = e.reason if isinstance(e, PKCS11Error) else f"{type(e).__name__}: {e}"
                err = self._broken[name] = _fail(C.CKR_DEVICE_ERROR, f"backend {name!r}: {why}")
                LOG.error("%s", err.reason)
                raise err from None
            self._made[name] = backend
        return backend

    def binding(self, token) -> Binding | None:
        if not self.config.token_policies or not token.initialized:
            return None             # no token names a backend: nothing to look up
        label = token.store.label.decode("utf-8", "replace").rstrip()
        policy = self.config.token_policies.get(label)
        if policy is None:
            return None
        serial = token.store.serial
        b = self._bindings.get(serial)
        if b is None:
            b = self._bindings[serial] = Binding(self, label, policy)
        return b

    def require_present(self, token) -> None:
        b = self.binding(token)
        if b is not None and b.serving() is None:
            raise _fail(C.CKR_TOKEN_NOT_PRESENT, f"token {b.label!r}: {b.reason}")

    def close(self) -> None:
        self._stop.set()
        if self._checker is not None:
            self._checker.join(timeout=5)
        for backend in self._made.values():
            backend.close()
        self._made.clear()

    # --- health --------------------------------------------------------------------------
    def check_health(self) -> dict:
        """Probe every configured backend now: name -> {status (available | degraded |
        unavailable), reason, kind, checked_at, slow_signs}."""
        report = {}
        for name, _, kind, ok, reason, _, degraded in self.probe():
            report[name] = dict(status=status_of(Health(ok, reason, degraded)), reason=reason, kind=kind,
                                checked_at=time.time(), slow_signs=self.slow_signs.get(name, 0))
        self._report = report
        return report

    def health_report(self) -> dict:
        """The last check (made now if none was), with the current slow-sign counts."""
        report = self._report or self.check_health()
        return {name: {**row, "slow_signs": self.slow_signs.get(name, 0)} for name, row in report.items()}

    def start_health_checks(self, interval: float = HEALTH_INTERVAL) -> None:
        """Re-check every backend each `interval` seconds in a daemon thread, until close()."""
        if self._checker is not None:
            return

        def run():
            while not self._stop.is_set():
                try:
                    for name, row in self.check_health().items():
                        if row["status"] != "available":
                            LOG.warning("backend %s is %s: %s", name, row["status"], row["reason"])
                except Exception:   # noqa: BLE001 - a probe's failure must not end the checks
                    LOG.exception("backend health check failed")
                self._stop.wait(interval)
        self._checker = threading.Thread(target=run, name="ferrohsm-backend-health", daemon=True)
        self._checker.start()

    # --- login -------------------------------------------------------------------------
    def login(self, token, pin: bytes) -> None:
        """After the store took the user PIN: each backend gets its secret; the serving
        one is logged in now, so a PIN its device refuses fails C_Login."""
        b = self.binding(token)
        if b is None:
            return
        sources = {"pin": lambda name: pin, "derived": token.store.backend_secret}
        for name, settings in self.config.backends.items():
            source = FACTORIES[settings["type"]][1]
            if source is not None:
                b.secrets[name] = sources[source](name)
        serving = b.serving()
        if serving is not None and serving.name in b.secrets:
            try:
                self.enter(token, serving)
            except PKCS11Error as e:
                if e.rv in (C.CKR_PIN_INCORRECT, C.CKR_PIN_LOCKED, C.CKR_PIN_LEN_RANGE):
                    self.logout(token)
                    raise
                LOG.warning("token %r: backend %s login: %s", b.label, serving.name, e)

    def logout(self, token) -> None:
        b = self.binding(token)
        if b is None:
            return
        b.secrets.clear()
        for name, (serial, _) in list(self._owner.items()):
            if serial == token.store.serial:
                del self._owner[name]
                self._made[name].logout()

    def enter(self, token, backend: Backend) -> None:
        b = self.binding(token)
        secret = b.secrets.get(backend.name) if b is not None else None
        if secret is None or self._owner.get(backend.name) == (token.store.serial, secret):
            return
        self._owner.pop(backend.name, None)
        backend.login(secret)
        self._owner[backend.name] = (token.store.serial, secret)

    def pin_flags(self, token) -> int:
        b = self.binding(token)
        backend = b.active if b is not None else None
        try:
            return backend.pin_flags() if backend is not None else 0
        except PKCS11Error:
            return 0

    # --- key use -------------------------------------------------------------------------
    def use(self, token, key, fn, op: str = "use"):
        """fn(backend, ref) for a backend-held key, after the backend's login; the device
        call runs with the token's lock let go (a 10 s card timeout holds up no other
        call, on this token or another)."""
        backend = self.get(key.attrs[C.CKA_FERRO_BACKEND].decode())
        self.enter(token, backend)
        ref = key_ref(key)
        with token.let_go():
            started = time.monotonic()
            try:
                return fn(backend, ref)
            finally:
                took = time.monotonic() - started
                if op == "sign" and took > SLOW_SIGN_SECONDS:
                    self.slow_signs[backend.name] = self.slow_signs.get(backend.name, 0) + 1
                    LOG.warning("backend %s: a sign took %.0f ms (slow: over %.0f ms)", backend.name,
                                took * 1e3, SLOW_SIGN_SECONDS * 1e3)

    def keygen_backend(self, token, mech: int, pub: dict, priv: dict) -> tuple | None:
        """(backend, kind) that generates this key pair, or None: the engine does."""
        b = self.binding(token)
        if b is None or not priv.get(C.CKA_TOKEN, False):
            return None
        backend = b.serving()
        if backend is None:
            raise _fail(C.CKR_DEVICE_ERROR, f"token {b.label!r}: {b.reason}")
        if backend.inline:
            return None
        kind = keygen_kind(mech, pub)
        if kind is not None and ("generate", kind) in backend.capabilities():
            return backend, kind
        if b.policy.fallback == "none":
            raise _fail(C.CKR_MECHANISM_INVALID, f"backend {backend.name} cannot generate "
                        f"{kind or C.name_of('CKM_', mech)} and fallback = none")
        LOG.info("token %r: %s not on %s: made in software", b.label, kind, backend.name)
        return None

    def probe(self) -> list[tuple]:
        """(name, type, kind, healthy, reason, capabilities, degraded) per configured backend."""
        rows = []
        for name, settings in self.config.backends.items():
            try:
                backend = self.get(name)
                health, caps, kind = backend.health(), backend.capabilities(), backend.kind
            except PKCS11Error as e:
                health, caps, kind = Health(False, e.reason or str(e)), frozenset(), "?"
            rows.append((name, settings["type"], kind, health.ok, health.reason, caps, health.degraded))
        return rows


# --- key objects --------------------------------------------------------------------------
def keygen_kind(mech: int, pub: dict) -> str | None:
    if mech == C.CKM_EC_KEY_PAIR_GEN:
        try:
            return CURVE_KIND.get(curve_of(pub.get(C.CKA_EC_PARAMS), WEIERSTRASS_PARAMS).make.name)
        except PKCS11Error:
            return None
    exponent = int.from_bytes(bytes(pub.get(C.CKA_PUBLIC_EXPONENT, b"\x01\x00\x01")), "big")
    if mech == C.CKM_RSA_PKCS_KEY_PAIR_GEN and pub.get(C.CKA_MODULUS_BITS) == 2048 \
            and exponent == 65537:
        return "rsa-2048"
    return None


def public_attrs(public_der: bytes) -> tuple[dict, dict]:
    """(public key, private key) attributes a SubjectPublicKeyInfo gives."""
    key = serialization.load_der_public_key(public_der)
    info = spki(key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = next(c for c in WEIERSTRASS if c.make.name == key.curve.name)
        point = wrap_point(key.public_bytes(serialization.Encoding.X962,
                                            serialization.PublicFormat.UncompressedPoint))
        shared = {C.CKA_KEY_TYPE: C.CKK_EC, C.CKA_EC_PARAMS: curve.params, C.CKA_EC_POINT: point,
                  C.CKA_PUBLIC_KEY_INFO: info}
        return dict(shared), shared
    nums = key.public_numbers()
    priv = {C.CKA_KEY_TYPE: C.CKK_RSA, C.CKA_MODULUS: to_bytes(nums.n),
            C.CKA_PUBLIC_EXPONENT: to_bytes(nums.e), C.CKA_PUBLIC_KEY_INFO: info}
    return {**priv, C.CKA_MODULUS_BITS: key.key_size}, priv


def check_held_template(backend: Backend, priv_given: dict) -> None:
    """Refuse a private key template that a key held by `backend` cannot honour."""
    if priv_given.get(C.CKA_EXTRACTABLE, False) and not backend.exportable:
        raise _fail(C.CKR_TEMPLATE_INCONSISTENT, f"{backend.name} keys cannot be extractable")
    for cka, value in FORCED.items():
        if priv_given.get(cka, value) != value:
            raise _fail(C.CKR_TEMPLATE_INCONSISTENT, f"{backend.name} keys: "
                        f"{C.name_of('CKA_', cka)} must be {value}")


def held_key_attrs(backend: Backend, ref: KeyRef, priv_given: dict) -> tuple[dict, dict]:
    """(public, private) attributes of a key pair `backend` holds."""
    check_held_template(backend, priv_given)
    extractable = bool(priv_given.get(C.CKA_EXTRACTABLE, False))
    pub, priv = public_attrs(ref.public_der)
    priv.update(FORCED)
    priv.update({C.CKA_EXTRACTABLE: extractable, C.CKA_FERRO_BACKEND: backend.name.encode(),
                 C.CKA_FERRO_KEY_REF: ref.blob})
    return pub, priv


def is_held(key) -> bool:
    return key is not None and C.CKA_FERRO_BACKEND in key.attrs


def key_ref(key) -> KeyRef:
    """The KeyRef of an opened backend-held key object."""
    info = bytes(key.attrs[C.CKA_PUBLIC_KEY_INFO])
    return KeyRef(bytes(key.attrs[C.CKA_FERRO_KEY_REF]), info,
                  kind_of(serialization.load_der_public_key(info)))


def _check_type(key, mech: int) -> None:
    if key.cls != C.CKO_PRIVATE_KEY or key.key_type != KEY_TYPE_OF[mech]:
        raise _fail(C.CKR_KEY_TYPE_INCONSISTENT, "mechanism does not fit the key")


def _check_accepts(backends: Backends, key, op: str, asked: int) -> None:
    """Refuse at *Init what the key's device does not take (a PKCS#11 module without
    CKM_RSA_X_509 cannot do a PKCS#1 v1.5 decryption for us)."""
    backend = backends.get(key.attrs[C.CKA_FERRO_BACKEND].decode())
    if not backend.accepts(op, asked):
        raise _fail(C.CKR_MECHANISM_INVALID, f"backend {backend.name} takes no "
                    f"{C.name_of('CKM_', asked)} to {op}")


def context(backends: Backends, token, key, kind: str, mech):
    """The sign or decrypt context of a backend-held key."""
    if kind == "decrypt":
        if mech.type not in DECRYPT:
            raise _fail(C.CKR_MECHANISM_INVALID, f"decrypt {C.name_of('CKM_', mech.type)}")
        _check_type(key, mech.type)
        _check_accepts(backends, key, "decrypt", RAW_RSA.type if mech.type == C.CKM_RSA_PKCS else mech.type)
        if mech.type == C.CKM_RSA_PKCS:
            if mech.param is not None:
                raise _fail(C.CKR_MECHANISM_PARAM_INVALID, "takes no parameter")
            return OneShot(lambda data: _pkcs1_decrypt(backends, token, key, data), lambda n: None)
        return OneShot(lambda data: backends.use(token, key, lambda b, r: b.decrypt(r, mech, data)),
                       lambda n: None)       # only the data tells (a pure call: Session.run)
    if mech.type not in SIGN:
        raise _fail(C.CKR_MECHANISM_INVALID, f"sign {C.name_of('CKM_', mech.type)}")
    digest_mech, asked = SIGN[mech.type]
    _check_type(key, asked)
    _check_accepts(backends, key, "sign", asked)
    if asked == C.CKM_RSA_PKCS_PSS:
        p = mech.param
        if not isinstance(p, PssParams) or MGF_FOR_HASH.get(p.hash_alg) != p.mgf \
                or digest_mech not in (None, p.hash_alg):
            raise _fail(C.CKR_MECHANISM_PARAM_INVALID, "PSS hash/MGF")
    elif mech.param is not None:
        raise _fail(C.CKR_MECHANISM_PARAM_INVALID, "takes no parameter")
    prefix = DIGEST_INFO[digest_mech] if digest_mech and asked == C.CKM_RSA_PKCS else b""
    backend_mech = Mechanism(asked, mech.param)

    def sign(data: bytes) -> bytes:
        return backends.use(token, key, lambda b, r: b.sign(r, backend_mech, prefix + data), "sign")
    size = _signature_size(key)
    if digest_mech is None:
        return OneShot(sign, lambda n: size)
    return Hashed(hash_for(digest_mech), sign, size)


def _pkcs1_decrypt(backends: Backends, token, key, data: bytes) -> bytes:
    """CKM_RSA_PKCS decryption of a backend-held key: the device does the raw RSA
    operation (CKM_RSA_X_509), the engine removes the padding with implicit rejection
    (rsapad), keyed per key by a secret only the logged-in user's master key gives.  A
    bad padding answers CKR_OK with a pseudo-random message, as for the engine's keys;
    no device ever sees a PKCS#1 v1.5 decryption, so none can answer differently."""
    k = _signature_size(key)
    if len(data) != k:
        raise _fail(C.CKR_ENCRYPTED_DATA_LEN_RANGE, "RSA ciphertext length")
    secret = token.store.backend_secret(rsapad.REJECTION_SECRET)
    rejection = rsapad.rejection_key(secret, bytes(key.attrs[C.CKA_PUBLIC_KEY_INFO]))
    em = backends.use(token, key, lambda b, r: b.decrypt(r, RAW_RSA, data))
    return rsapad.pkcs1_decrypt_implicit(bytes(em).rjust(k, b"\0"), data, rejection)


def _signature_size(key) -> int:
    """Bytes of a signature by the held key: the modulus, or r || s."""
    public = serialization.load_der_public_key(bytes(key.attrs[C.CKA_PUBLIC_KEY_INFO]))
    if isinstance(public, rsa.RSAPublicKey):
        return (public.key_size + 7) // 8
    return 2 * ((public.curve.key_size + 7) // 8)


def derive(backends: Backends, token, key, mech, template: dict) -> dict:
    """CKM_ECDH1_DERIVE with a backend-held key: the device makes the shared secret,
    the engine applies the KDF (CKD_NULL or X9.63) as for its own keys."""
    if mech.type not in (C.CKM_ECDH1_DERIVE, C.CKM_ECDH1_COFACTOR_DERIVE):
        raise _fail(C.CKR_MECHANISM_INVALID, f"derive {C.name_of('CKM_', mech.type)}")
    _check_type(key, mech.type)
    p = mech.param
    if not isinstance(p, Ecdh1DeriveParams) or p.kdf not in KDFS \
            or (p.kdf == C.CKD_NULL and p.shared_data):
        raise _fail(C.CKR_MECHANISM_PARAM_INVALID, "CK_ECDH1_DERIVE_PARAMS")
    try:
        point = curve_of(key.attrs[C.CKA_EC_PARAMS], WEIERSTRASS_PARAMS).raw_point(p.public_data)
    except ValueError:
        raise _fail(C.CKR_MECHANISM_PARAM_INVALID, "public data is not a point") from None
    asked = Mechanism(C.CKM_ECDH1_DERIVE, Ecdh1DeriveParams(C.CKD_NULL, b"", point))
    secret = backends.use(token, key, lambda b, r: b.derive(r, asked, point))
    length = derived_len(template, len(secret))
    if KDFS[p.kdf] is None:
        if length > len(secret):
            raise _fail(C.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VALUE_LEN longer than the secret")
        return {C.CKA_VALUE: secret[len(secret) - length:]}
    return {C.CKA_VALUE: X963KDF(hash_for(KDFS[p.kdf]), length,
                                 bytes(p.shared_data or b"") or None).derive(secret)}
