"""The PKCS#11 functions where a key held by a device backend takes another road.

A mixin placed first among Library's bases: each method handles backend-held keys
(provider/backends/engine.py) and hands everything else to the engine's own
implementation with super().  What changes:
  C_GenerateKeyPair   a token key pair the serving backend can make is made there
  C_SignInit, C_DecryptInit   a backend-held private key signs/decrypts on its device
                      (the *_SHA* mechanisms hash here, the device signs the digest)
  C_DeriveKey         ECDH on the device, the KDF here
  C_DestroyObject     destroys the device key too (a TPM key is only its blob)
  C_WrapKey, C_UnwrapKey   refused for backend-held keys (CKR_KEY_NOT_WRAPPABLE /
                      CKR_KEY_FUNCTION_NOT_PERMITTED): their material is not ours;
                      `ferrohsm migrate-key` moves keys created extractable.
C_Verify and C_Encrypt use the public key in the engine, as for any key.
"""

from . import constants as C
from . import keygen
from .backends import engine
from .errors import PKCS11Error
from .fn_crypto import KEYED
from .fn_keys import _class, _merge_template
from .fn_objects import decode_template
from .log import LOG
from .session import Operation
from .token import require


class BackendFunctions:
    def _held(self, session, handle: int):
        obj = session.token.index.get(handle)
        return obj if engine.is_held(obj) and session.token.visible(obj) else None

    def _init(self, handle: int, kind: str, mech, key_handle: int) -> None:
        session = self._session(handle)
        if kind not in ("sign", "decrypt") or self._held(session, key_handle) is None:
            return super()._init(handle, kind, mech, key_handle)
        require(kind not in session.ops, C.CKR_OPERATION_ACTIVE)
        key = self._key(session, key_handle, KEYED[kind][0], mech.type)
        ctx = engine.context(self.backends, session.token, key, kind, mech)
        session.start(Operation(kind, mech.type, ctx, key=key,
                                needs_auth=key.flag(C.CKA_ALWAYS_AUTHENTICATE)))

    def generate_key_pair(self, handle, mech, pub_template, priv_template) -> tuple[int, int]:
        session = self._session(handle)
        pub_given, priv_given = decode_template(pub_template), decode_template(priv_template)
        chosen = self.backends.keygen_backend(session.token, mech.type, pub_given, priv_given)
        if chosen is None:
            return super().generate_key_pair(handle, mech, pub_template, priv_template)
        backend, kind = chosen
        _class(pub_given, C.CKO_PUBLIC_KEY)
        _class(priv_given, C.CKO_PRIVATE_KEY)
        self._precheck(session, C.CKO_PUBLIC_KEY, pub_given)
        self._precheck(session, C.CKO_PRIVATE_KEY, priv_given)
        ref, pub_made, priv_made = keygen.device_pair(self.backends, session.token, backend, kind, priv_given)
        try:
            session = self._session(handle)     # still open? (_new_key checks the login again)
            pub = self._new_key(session, C.CKO_PUBLIC_KEY, pub_given, pub_made, mech.type, "generate")
            priv = self._new_key(session, C.CKO_PRIVATE_KEY, priv_given, priv_made, mech.type,
                                 "generate")
            return self._add_pair(session, pub, priv)
        except BaseException:
            backend.destroy(ref)
            raise

    def derive_key(self, handle, mech, base_handle, template) -> int:
        session = self._session(handle)
        if self._held(session, base_handle) is None:
            return super().derive_key(handle, mech, base_handle, template)
        base = self._key(session, base_handle, C.CKA_DERIVE, mech.type)
        given = _merge_template(decode_template(template), base.attrs.get(C.CKA_DERIVE_TEMPLATE, ()))
        cls = _class(given, C.CKO_SECRET_KEY)
        given.setdefault(C.CKA_KEY_TYPE, C.CKK_GENERIC_SECRET)
        self._precheck(session, cls, given)
        made = engine.derive(self.backends, session.token, base, mech, given)
        session = self._session(handle)         # still open after the device call?
        return self._add(session, self._new_key(session, cls, given, made, mech.type, "derive", base))

    def destroy_object(self, handle: int, obj_handle: int) -> None:
        session = self._session(handle)
        obj = self._held(session, obj_handle)
        if obj is not None:
            session.token.open(obj)
        super().destroy_object(handle, obj_handle)
        if obj is not None:   # the object is gone first: a device key is never destroyed under a live object
            try:
                self.backends.use(session.token, obj, lambda b, r: b.destroy(r))
            except PKCS11Error as err:
                LOG.warning("object destroyed; its device key was not (%s): %s",
                            C.name_of("CKR_", err.rv), err.reason)

    def wrap_key(self, handle, mech, wrapping_handle, key_handle, cap) -> bytes:
        session = self._session(handle)
        require(self._held(session, key_handle) is None, C.CKR_KEY_NOT_WRAPPABLE,
                "a backend-held key is not wrapped (ferrohsm migrate-key moves keys)")
        return super().wrap_key(handle, mech, wrapping_handle, key_handle, cap)

    def unwrap_key(self, handle, mech, unwrapping_handle, wrapped, template) -> int:
        session = self._session(handle)
        require(self._held(session, unwrapping_handle) is None, C.CKR_KEY_FUNCTION_NOT_PERMITTED,
                "a backend-held key does not unwrap")
        return super().unwrap_key(handle, mech, unwrapping_handle, wrapped, template)
