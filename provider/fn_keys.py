"""Key management functions: generate, wrap, unwrap, derive."""

from contextlib import contextmanager

from . import constants as C
from . import gate, keygen, schema
from .errors import PKCS11Error
from .fn_objects import decode_template
from .mechanisms import registry
from .token import require

# A mechanism's complaint about "the key" means the wrapping or unwrapping key here.
WRAP_CODES = {
    C.CKR_KEY_TYPE_INCONSISTENT: C.CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    C.CKR_KEY_SIZE_RANGE: C.CKR_WRAPPING_KEY_SIZE_RANGE,
}
UNWRAP_CODES = {
    C.CKR_KEY_TYPE_INCONSISTENT: C.CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    C.CKR_KEY_SIZE_RANGE: C.CKR_UNWRAPPING_KEY_SIZE_RANGE,
    C.CKR_ENCRYPTED_DATA_INVALID: C.CKR_WRAPPED_KEY_INVALID,
    C.CKR_ENCRYPTED_DATA_LEN_RANGE: C.CKR_WRAPPED_KEY_LEN_RANGE,
    C.CKR_DATA_LEN_RANGE: C.CKR_WRAPPED_KEY_LEN_RANGE,
}
# key types an unwrapped PKCS#8 private key may be, tried in this order when the
# template does not say
PKCS8_KEY_TYPES = (C.CKK_RSA, C.CKK_EC, C.CKK_EC_EDWARDS)


@contextmanager
def codes(table: dict):
    try:
        yield
    except PKCS11Error as err:
        if err.rv in table:
            raise PKCS11Error(table[err.rv], err.reason) from None
        raise


def wrapped_material(key) -> bytes:
    """What wrapping `key` (opened) encrypts: a secret key's value, a private key's PKCS#8."""
    if key.cls == C.CKO_SECRET_KEY:
        return key.attrs[C.CKA_VALUE]
    if key.cls == C.CKO_PRIVATE_KEY:
        return registry.key_type(key.key_type).to_pkcs8(key.attrs)
    raise PKCS11Error(C.CKR_KEY_NOT_WRAPPABLE, "public keys are not wrapped")


def _merge_template(given: dict, required: tuple) -> dict:
    """Apply a key's CKA_UNWRAP_TEMPLATE / CKA_DERIVE_TEMPLATE to a template."""
    for cka, value in required:
        require(given.get(cka, value) == value, C.CKR_TEMPLATE_INCONSISTENT,
                C.name_of("CKA_", cka) + " conflicts with the key's template")
    return {**given, **dict(required)}


def _class(given: dict, expected: int) -> int:
    require(given.get(C.CKA_CLASS, expected) == expected, C.CKR_TEMPLATE_INCONSISTENT, "wrong CKA_CLASS")
    return expected


class KeyFunctions:
    def _new_key(self, session, cls: int, given: dict, made: dict, mech: int, origin: str, bases=(),
                 key_role: int | None = None) -> dict:
        """Attributes of a key made by generate / unwrap / derive (keygen.key_attrs), if
        this session may store it."""
        attrs = keygen.key_attrs(cls, given, made, mech, origin, self._separated, bases, key_role)
        self._check_write(session, attrs)
        return attrs

    def _precheck(self, session, cls: int, given: dict) -> None:
        """Refuse a template this session may not store before doing slow work."""
        private = given.get(C.CKA_PRIVATE, cls in schema.PRIVATE_BY_DEFAULT)
        self._check_write(session, {**given, C.CKA_PRIVATE: private})

    def _mechanism(self, mech, method: str):
        return keygen.mechanism(mech.type, method)

    # --- generate ------------------------------------------------------------------
    def generate_key(self, handle, mech, template) -> int:
        session = self._session(handle)
        impl = self._mechanism(mech, "generate_key")
        given = decode_template(template)
        cls = _class(given, C.CKO_SECRET_KEY)
        self._precheck(session, cls, given)
        if C.CKA_KEY_TYPE in given:
            schema.check_template(schema.rows(cls, given[C.CKA_KEY_TYPE]), given, schema.F.GEN)
        made = impl.generate_key(mech.param, given)
        return self._add(session, self._new_key(session, cls, given, made, mech.type, "generate"))

    def generate_key_pair(self, handle, mech, pub_template, priv_template) -> tuple[int, int]:
        session = self._session(handle)
        impl = self._mechanism(mech, "generate_key_pair")
        pub_given, priv_given = decode_template(pub_template), decode_template(priv_template)
        _class(pub_given, C.CKO_PUBLIC_KEY)
        _class(priv_given, C.CKO_PRIVATE_KEY)
        self._precheck(session, C.CKO_PUBLIC_KEY, pub_given)
        self._precheck(session, C.CKO_PRIVATE_KEY, priv_given)
        with session.token.let_go():           # RSA takes its time: other calls on the token go on
            pub_made, priv_made = impl.generate_key_pair(mech.param, pub_given, priv_given)
        session = self._session(handle)         # still open? (_new_key checks the login again)
        key_role = schema.role(pub_given, priv_given)       # one role for both halves
        pub = self._new_key(session, C.CKO_PUBLIC_KEY, pub_given, pub_made, mech.type, "generate",
                            key_role=key_role)
        priv = self._new_key(session, C.CKO_PRIVATE_KEY, priv_given, priv_made, mech.type, "generate",
                             key_role=key_role)
        return self._add_pair(session, pub, priv)

    def _add_pair(self, session, pub: dict, priv: dict) -> tuple[int, int]:
        """A key pair is one commit: both objects, or neither."""
        with session.token.transaction():
            return self._add(session, pub), self._add(session, priv)

    # --- wrap / unwrap -----------------------------------------------------------------
    def _kept_apart(self, key, usage: int) -> None:
        """Under key separation a key made under the legacy rules, holding `usage` and a
        usage that conflicts with it, does not wrap / unwrap (its data use goes on)."""
        if self._separated and not schema.readable(key.attrs):
            for other in schema.conflicting(key.cls, usage):
                require(not key.flag(other), C.CKR_KEY_FUNCTION_NOT_PERMITTED,
                        f"key separation: the key also has {C.name_of('CKA_', other)}")

    def wrap_key(self, handle, mech, wrapping_handle, key_handle, cap) -> bytes:
        session = self._session(handle)
        impl = self._mechanism(mech, "wrap")
        wrapping = self._key(session, wrapping_handle, C.CKA_WRAP, mech.type, C.CKR_WRAPPING_KEY_HANDLE_INVALID)
        self._kept_apart(wrapping, C.CKA_WRAP)
        key = self._key(session, key_handle, None, mech.type)
        gate.wrap_out(session.token, wrapping, key, session.principal)
        material = wrapped_material(key)
        with codes(WRAP_CODES):
            return impl.wrap(wrapping, mech.param, material)

    def unwrap_key(self, handle, mech, unwrapping_handle, wrapped, template) -> int:
        """A wrapped key is its value only: every attribute of the new key, CKA_ALWAYS_AUTHENTICATE
        too, comes from the template and the unwrapping key's CKA_UNWRAP_TEMPLATE (as PKCS#11
        says). A key-encryption key that must give back what it wrapped says so in its
        CKA_UNWRAP_TEMPLATE (and admits only such keys by CKA_WRAP_TEMPLATE):
        tests/security/test_always_authenticate.py."""
        session = self._session(handle)
        impl = self._mechanism(mech, "unwrap")
        unwrapping = self._key(session, unwrapping_handle, C.CKA_UNWRAP, mech.type,
                               C.CKR_UNWRAPPING_KEY_HANDLE_INVALID)
        self._kept_apart(unwrapping, C.CKA_UNWRAP)
        given = _merge_template(decode_template(template), unwrapping.attrs.get(C.CKA_UNWRAP_TEMPLATE, ()))
        require(C.CKA_CLASS in given, C.CKR_TEMPLATE_INCOMPLETE, "CKA_CLASS missing")
        cls = given[C.CKA_CLASS]
        require(cls in (C.CKO_SECRET_KEY, C.CKO_PRIVATE_KEY), C.CKR_TEMPLATE_INCONSISTENT, "only secret or private keys")
        self._precheck(session, cls, given)
        with codes(UNWRAP_CODES):
            material = impl.unwrap(unwrapping, mech.param, bytes(wrapped))
        if cls == C.CKO_SECRET_KEY:
            made = {C.CKA_VALUE: material}
        else:
            made = self._from_pkcs8(material, given.get(C.CKA_KEY_TYPE))
        return self._add(session, self._new_key(session, cls, given, made, mech.type, "unwrap"))

    @staticmethod
    def _from_pkcs8(der: bytes, key_type: int | None) -> dict:
        for candidate in (key_type,) if key_type is not None else PKCS8_KEY_TYPES:
            try:
                return registry.key_type(candidate).from_pkcs8(der)
            except PKCS11Error:
                continue
        raise PKCS11Error(C.CKR_WRAPPED_KEY_INVALID, "not a PKCS#8 private key of a supported type")

    # --- derive ----------------------------------------------------------------------
    def derive_key(self, handle, mech, base_handle, template) -> int:
        """CKA_KEY_TYPE defaults to CKK_GENERIC_SECRET when the template omits it."""
        session = self._session(handle)
        impl = self._mechanism(mech, "derive")
        base = self._key(session, base_handle, C.CKA_DERIVE, mech.type)
        given = _merge_template(decode_template(template), base.attrs.get(C.CKA_DERIVE_TEMPLATE, ()))
        cls = _class(given, C.CKO_SECRET_KEY)
        given.setdefault(C.CKA_KEY_TYPE, C.CKK_GENERIC_SECRET)
        self._precheck(session, cls, given)
        for usage in getattr(impl, "base_usage", ()):
            require(base.flag(usage), C.CKR_KEY_FUNCTION_NOT_PERMITTED, C.name_of("CKA_", usage) + " is false")
        bases = [base]
        made = impl.derive(base, mech.param, given, lambda h: self._second_key(session, h, mech.type, bases))
        for key in bases[1:]:
            given = _merge_template(given, key.attrs.get(C.CKA_DERIVE_TEMPLATE, ()))
        return self._add(session, self._new_key(session, cls, given, made, mech.type, "derive", bases))

    def _second_key(self, session, handle: int, mech: int, bases: list):
        """A key a derivation's parameter names (an HKDF salt key) is held to the base
        key's rules: CKA_DERIVE, CKA_ALLOWED_MECHANISMS (CKR_KEY_FUNCTION_NOT_PERMITTED
        here, as the mechanism itself is not what is wrong), its CKA_DERIVE_TEMPLATE, and
        its ALWAYS_SENSITIVE / NEVER_EXTRACTABLE fold into the new key's."""
        key = self._key(session, handle, C.CKA_DERIVE, mech, disallowed=C.CKR_KEY_FUNCTION_NOT_PERMITTED)
        bases.append(key)
        return key
