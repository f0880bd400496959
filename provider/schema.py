"""What each object class allows: one table per class, one row per attribute.

Row flags:
  CREATE   may be given to C_CreateObject
  GEN      may be given in a C_GenerateKey(Pair) / C_UnwrapKey / C_DeriveKey template
  MODIFY   may be changed by C_SetAttributeValue and in a C_CopyObject template
  TO_TRUE  may only change from false to true (CKA_SENSITIVE, CKA_WRAP_WITH_TRUSTED)
  TO_FALSE may only change from true to false (CKA_EXTRACTABLE, CKA_COPYABLE, ...)
  SECRET   key material: sealed in the store; unreadable when the key is
           sensitive or unextractable (CKR_ATTRIBUTE_SENSITIVE)
  REQUIRED must be present after C_CreateObject
Attributes with neither CREATE nor GEN are set by the token alone.

Defaults are the token's choice where the spec leaves it open; they follow
SoftHSM2 except CKA_PRIVATE, which defaults to true only for private and secret
keys (SoftHSM2 makes every object private by default, which hides certificates
and public keys from clients that have not logged in).
"""

from enum import IntFlag

from . import constants as C
from .errors import PKCS11Error


class F(IntFlag):
    NONE = 0
    CREATE = 1
    GEN = 2
    MODIFY = 4
    TO_TRUE = 8
    TO_FALSE = 16
    SECRET = 32
    REQUIRED = 64


CG = F.CREATE | F.GEN
CGM = CG | F.MODIFY
TOKEN_SET = F.NONE
U = C.CK_UNAVAILABLE_INFORMATION

# (flags, default) per attribute; default None means "absent unless given"
STORAGE = {
    C.CKA_CLASS: (CG | F.REQUIRED, None),
    C.CKA_TOKEN: (CG, False),
    C.CKA_PRIVATE: (CG, False),
    C.CKA_MODIFIABLE: (CG, True),
    C.CKA_COPYABLE: (CG | F.MODIFY | F.TO_FALSE, True),
    C.CKA_DESTROYABLE: (CGM, True),
    C.CKA_LABEL: (CGM, b""),
    C.CKA_UNIQUE_ID: (TOKEN_SET, None),
}

DATA = {
    C.CKA_APPLICATION: (F.CREATE | F.MODIFY, b""),
    C.CKA_OBJECT_ID: (F.CREATE | F.MODIFY, b""),
    C.CKA_VALUE: (F.CREATE | F.MODIFY, b""),
}

CERTIFICATE = {
    C.CKA_CERTIFICATE_TYPE: (F.CREATE | F.REQUIRED, None),
    C.CKA_TRUSTED: (F.CREATE, False),
    C.CKA_CERTIFICATE_CATEGORY: (F.CREATE | F.MODIFY, 0),
    C.CKA_CHECK_VALUE: (F.CREATE, None),
    C.CKA_START_DATE: (F.CREATE | F.MODIFY, b""),
    C.CKA_END_DATE: (F.CREATE | F.MODIFY, b""),
    C.CKA_PUBLIC_KEY_INFO: (F.CREATE, b""),
    # X.509 public key certificate
    C.CKA_SUBJECT: (F.CREATE | F.REQUIRED, None),
    C.CKA_ID: (F.CREATE | F.MODIFY, b""),
    C.CKA_ISSUER: (F.CREATE | F.MODIFY, b""),
    C.CKA_SERIAL_NUMBER: (F.CREATE | F.MODIFY, b""),
    C.CKA_VALUE: (F.CREATE | F.REQUIRED, None),
    C.CKA_URL: (F.CREATE, b""),
    C.CKA_HASH_OF_SUBJECT_PUBLIC_KEY: (F.CREATE, b""),
    C.CKA_HASH_OF_ISSUER_PUBLIC_KEY: (F.CREATE, b""),
    C.CKA_JAVA_MIDP_SECURITY_DOMAIN: (F.CREATE, 0),
    C.CKA_NAME_HASH_ALGORITHM: (F.CREATE, C.CKM_SHA_1),
}

KEY = {
    C.CKA_KEY_TYPE: (CG | F.REQUIRED, None),
    C.CKA_ID: (CGM, b""),
    C.CKA_START_DATE: (CGM, b""),
    C.CKA_END_DATE: (CGM, b""),
    C.CKA_DERIVE: (CGM, False),
    C.CKA_LOCAL: (TOKEN_SET, False),
    C.CKA_KEY_GEN_MECHANISM: (TOKEN_SET, U),
    C.CKA_ALLOWED_MECHANISMS: (CG, ()),
    # a version of a governed key (provider/governance): set by the engine, readable, never settable
    C.CKA_FERRO_KEY_ID: (TOKEN_SET, None),
    C.CKA_FERRO_VERSION: (TOKEN_SET, None),
    C.CKA_FERRO_STATE: (TOKEN_SET, None),
    C.CKA_FERRO_PRIMARY: (TOKEN_SET, None),
}

PUBLIC_KEY = {
    **KEY,
    C.CKA_SUBJECT: (CGM, b""),
    C.CKA_ENCRYPT: (CGM, True),
    C.CKA_VERIFY: (CGM, True),
    C.CKA_VERIFY_RECOVER: (CGM, True),
    C.CKA_WRAP: (CGM, True),
    C.CKA_TRUSTED: (CG, False),
    C.CKA_WRAP_TEMPLATE: (CG, ()),
    C.CKA_PUBLIC_KEY_INFO: (CG, b""),
}

PRIVATE_KEY = {
    **KEY,
    C.CKA_SUBJECT: (CGM, b""),
    C.CKA_SENSITIVE: (CGM | F.TO_TRUE, True),
    C.CKA_DECRYPT: (CGM, True),
    C.CKA_SIGN: (CGM, True),
    C.CKA_SIGN_RECOVER: (CGM, True),
    C.CKA_UNWRAP: (CGM, True),
    C.CKA_EXTRACTABLE: (CGM | F.TO_FALSE, False),
    C.CKA_ALWAYS_SENSITIVE: (TOKEN_SET, False),
    C.CKA_NEVER_EXTRACTABLE: (TOKEN_SET, False),
    C.CKA_WRAP_WITH_TRUSTED: (CGM | F.TO_TRUE, False),
    C.CKA_UNWRAP_TEMPLATE: (CG, ()),
    C.CKA_ALWAYS_AUTHENTICATE: (CG, False),
    C.CKA_PUBLIC_KEY_INFO: (CG, b""),
    # a key held by a device backend (backends/engine.py): where it lives, and its reference
    C.CKA_FERRO_BACKEND: (TOKEN_SET, None),
    C.CKA_FERRO_KEY_REF: (F.SECRET, None),
}

SECRET_KEY = {
    **KEY,
    C.CKA_SENSITIVE: (CGM | F.TO_TRUE, True),
    C.CKA_ENCRYPT: (CGM, True),
    C.CKA_DECRYPT: (CGM, True),
    C.CKA_SIGN: (CGM, True),
    C.CKA_VERIFY: (CGM, True),
    C.CKA_WRAP: (CGM, True),
    C.CKA_UNWRAP: (CGM, True),
    C.CKA_EXTRACTABLE: (CGM | F.TO_FALSE, False),
    C.CKA_ALWAYS_SENSITIVE: (TOKEN_SET, False),
    C.CKA_NEVER_EXTRACTABLE: (TOKEN_SET, False),
    C.CKA_CHECK_VALUE: (TOKEN_SET, None),
    C.CKA_WRAP_WITH_TRUSTED: (CGM | F.TO_TRUE, False),
    C.CKA_TRUSTED: (CG, False),
    C.CKA_WRAP_TEMPLATE: (CG, ()),
    C.CKA_UNWRAP_TEMPLATE: (CG, ()),
    C.CKA_DERIVE_TEMPLATE: (CG, ()),
}

# Key-type specific rows: what the key material looks like in each class.
SECRET_VALUE = {C.CKA_VALUE: (F.CREATE | F.SECRET, None), C.CKA_VALUE_LEN: (F.GEN, None)}
EC_PUBLIC = {C.CKA_EC_PARAMS: (CG, None), C.CKA_EC_POINT: (F.CREATE, None)}
EC_PRIVATE = {C.CKA_EC_PARAMS: (F.CREATE, None), C.CKA_VALUE: (F.CREATE | F.SECRET, None),
              C.CKA_EC_POINT: (TOKEN_SET, None)}
KEY_MATERIAL = {
    (C.CKO_PUBLIC_KEY, C.CKK_RSA): {
        C.CKA_MODULUS: (F.CREATE, None),
        C.CKA_MODULUS_BITS: (F.GEN, None),
        C.CKA_PUBLIC_EXPONENT: (CG, None),
    },
    (C.CKO_PRIVATE_KEY, C.CKK_RSA): {
        C.CKA_MODULUS: (F.CREATE, None),
        C.CKA_PUBLIC_EXPONENT: (F.CREATE, None),
        C.CKA_PRIVATE_EXPONENT: (F.CREATE | F.SECRET, None),
        C.CKA_PRIME_1: (F.CREATE | F.SECRET, None),
        C.CKA_PRIME_2: (F.CREATE | F.SECRET, None),
        C.CKA_EXPONENT_1: (F.CREATE | F.SECRET, None),
        C.CKA_EXPONENT_2: (F.CREATE | F.SECRET, None),
        C.CKA_COEFFICIENT: (F.CREATE | F.SECRET, None),
    },
    (C.CKO_PUBLIC_KEY, C.CKK_EC): EC_PUBLIC,
    (C.CKO_PRIVATE_KEY, C.CKK_EC): EC_PRIVATE,
    (C.CKO_PUBLIC_KEY, C.CKK_EC_EDWARDS): EC_PUBLIC,
    (C.CKO_PRIVATE_KEY, C.CKK_EC_EDWARDS): EC_PRIVATE,
}

# A record of governance (provider/governance/record.py): the engine writes it; CKA_FERRO_RECORD
# is required and never settable, so no client creates one (CKR_TEMPLATE_INCOMPLETE)
FERRO_RECORD = {
    C.CKA_FERRO_KEY_ID: (TOKEN_SET, None),
    C.CKA_FERRO_RECORD: (TOKEN_SET | F.REQUIRED, None),
}

CLASSES = {
    C.CKO_DATA: DATA,
    C.CKO_CERTIFICATE: CERTIFICATE,
    C.CKO_PUBLIC_KEY: PUBLIC_KEY,
    C.CKO_PRIVATE_KEY: PRIVATE_KEY,
    C.CKO_SECRET_KEY: SECRET_KEY,
    C.CKO_FERRO_GOVERNED_KEY: FERRO_RECORD,
    C.CKO_FERRO_POLICY_TAG: FERRO_RECORD,
    C.CKO_FERRO_APPROVAL: FERRO_RECORD,
    C.CKO_FERRO_MIGRATION: FERRO_RECORD,
}
PRIVATE_BY_DEFAULT = {C.CKO_PRIVATE_KEY, C.CKO_SECRET_KEY}
KEY_CLASSES = {C.CKO_PUBLIC_KEY, C.CKO_PRIVATE_KEY, C.CKO_SECRET_KEY}


def rows(obj_class: int, key_type: int | None) -> dict:
    """The attribute table for one class (and key type)."""
    table = CLASSES.get(obj_class)
    if table is None:
        raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "unsupported class " + C.name_of("CKO_", obj_class))
    merged = {**STORAGE, **table}
    if obj_class == C.CKO_SECRET_KEY:
        merged.update(SECRET_VALUE)
    elif key_type is not None:
        merged.update(KEY_MATERIAL.get((obj_class, key_type), {}))
    if obj_class in PRIVATE_BY_DEFAULT:
        merged[C.CKA_PRIVATE] = (CG, True)
    return merged


def secret_types(obj_class: int, key_type: int | None) -> frozenset:
    return frozenset(t for t, (f, _) in rows(obj_class, key_type).items() if f & F.SECRET)


def check_template(table: dict, template: dict, allowed: F) -> None:
    """Every attribute given must be known to the class and settable this way.
    Not settable: CKR_ATTRIBUTE_READ_ONLY at create or modify; at key generation,
    unwrap or derive CKR_TEMPLATE_INCONSISTENT, as SoftHSM2 answers there."""
    refused = C.CKR_TEMPLATE_INCONSISTENT if allowed == F.GEN else C.CKR_ATTRIBUTE_READ_ONLY
    for cka in template:
        row = table.get(cka)
        if row is None:
            raise PKCS11Error(C.CKR_ATTRIBUTE_TYPE_INVALID, C.name_of("CKA_", cka))
        if not row[0] & allowed:
            raise PKCS11Error(refused, C.name_of("CKA_", cka))


def with_defaults(table: dict, attrs: dict, usages: dict | None = None) -> dict:
    """`attrs` completed by the table's defaults, `usages` (usage_defaults) before those."""
    out = {cka: default for cka, (_, default) in table.items() if default is not None}
    out.update(usages or {})
    out.update(attrs)
    return out


def check_required(table: dict, attrs: dict) -> None:
    for cka, (flags, _) in table.items():
        if flags & F.REQUIRED and cka not in attrs:
            raise PKCS11Error(C.CKR_TEMPLATE_INCOMPLETE, "missing " + C.name_of("CKA_", cka))


def check_change(table: dict, old: dict, cka: int, value) -> None:
    """May `cka` go from its current value to `value` after creation?"""
    row = table.get(cka)
    if row is None:
        raise PKCS11Error(C.CKR_ATTRIBUTE_TYPE_INVALID, C.name_of("CKA_", cka))
    flags = row[0]
    if not flags & F.MODIFY:
        raise PKCS11Error(C.CKR_ATTRIBUTE_READ_ONLY, C.name_of("CKA_", cka))
    current = old.get(cka)
    if flags & F.TO_TRUE and current and not value:
        raise PKCS11Error(C.CKR_ATTRIBUTE_READ_ONLY, C.name_of("CKA_", cka) + " can only become true")
    if flags & F.TO_FALSE and not current and value:
        raise PKCS11Error(C.CKR_ATTRIBUTE_READ_ONLY, C.name_of("CKA_", cka) + " can only become false")


# --- Key separation (issue 11; Clulow, "On the Security of PKCS #11", CHES 2003) ---------
# With [policy] key_separation = true (the default, config.py) a secret key that wraps
# never decrypts and one that unwraps never encrypts: else C_WrapKey(K, S) then
# C_Decrypt(K, blob) reads S, and C_Encrypt(K, chosen value) forges a blob that
# C_UnwrapKey(K, ...) turns into a key its CKA_UNWRAP_TEMPLATE vouches for.
#   - a template (C_CreateObject, C_GenerateKey, C_UnwrapKey, C_DeriveKey) or the result of
#     C_SetAttributeValue / C_CopyObject holding both of a pair in CONFLICTS is
#     CKR_TEMPLATE_INCONSISTENT (the spec's code for a template whose attributes conflict;
#     C_SetAttributeValue and C_CopyObject list it too);
#   - the usages a template does not give default by the key's role (ROLE_DEFAULTS): a key
#     asked to wrap or unwrap (WRAPPING) is a key-encryption key, any other a data key; a
#     key pair takes one role for both halves (a pair asked to wrap does not decrypt);
#     a default never makes a pair of CONFLICTS with a usage the template asks;
#   - after creation the usages in USAGES only turn off (C_SetAttributeValue, C_CopyObject:
#     CKR_ATTRIBUTE_READ_ONLY to turn one on): a copy shares the value, so a copy that
#     decrypts beside an original that wraps would be the same attack in two objects;
#   - at use (fn_keys, fn_crypto): C_WrapKey / C_UnwrapKey refuse a key that also holds
#     the conflicting usage (a key made under the legacy rules), and a mechanism that wraps
#     does not C_Encrypt / C_Decrypt with a secret key that wraps or unwraps
#     (CKR_KEY_FUNCTION_NOT_PERMITTED both).
# A key whose value C_GetAttributeValue gives out (`readable`: CKA_SENSITIVE false and
# CKA_EXTRACTABLE true) is exempt: whoever sees it reads its value and can do anything the
# attack does without it (pkcs11-tool --derive asks all four usages on such a key). A key
# only becomes less readable (SENSITIVE only turns on, EXTRACTABLE only off), and the rules
# apply from the moment it is not readable.
# RSA (and any pair): no object holds both of a pair (a public key has no DECRYPT/UNWRAP, a
# private key no WRAP/ENCRYPT), but a public key that wraps and its private key that decrypts
# are the attack in two objects. Only the defaults keep them apart, not a refusal: anyone can
# C_CreateObject a public key of any modulus with CKA_WRAP, so refusing the generated pair
# would stop no one, and it stops NSS (certutil -S -k rsa: SEC_ERROR_BAD_DATA).
# Not covered (SECURITY.md): two objects of one value made by unwrapping one blob twice or by
# one deterministic derivation twice, with different usages (the unwrapping or base key's
# CKA_UNWRAP_TEMPLATE / CKA_DERIVE_TEMPLATE fixes what it makes); the RSA pair above; and an
# extractable key can always be wrapped under a key the caller made itself
# (CKA_WRAP_WITH_TRUSTED is the defence there, and what makes separation matter most: a
# trusted key that wraps does not decrypt).
# With key_separation = false every usage defaults true as in the class tables above.
USAGES = (C.CKA_ENCRYPT, C.CKA_DECRYPT, C.CKA_WRAP, C.CKA_UNWRAP)
WRAPPING = (C.CKA_WRAP, C.CKA_UNWRAP)
CONFLICTS = {
    C.CKO_SECRET_KEY: ((C.CKA_WRAP, C.CKA_DECRYPT), (C.CKA_UNWRAP, C.CKA_ENCRYPT)),
    C.CKO_PRIVATE_KEY: (),
    C.CKO_PUBLIC_KEY: (),
}
DATA_KEY, KEY_KEY = 0, 1
ROLE_DEFAULTS = {     # class -> (data key defaults, key-encryption key defaults)
    C.CKO_SECRET_KEY: ({C.CKA_ENCRYPT: True, C.CKA_DECRYPT: True, C.CKA_WRAP: False, C.CKA_UNWRAP: False},
                       {C.CKA_ENCRYPT: False, C.CKA_DECRYPT: False, C.CKA_WRAP: True, C.CKA_UNWRAP: True}),
    C.CKO_PRIVATE_KEY: ({C.CKA_DECRYPT: True, C.CKA_UNWRAP: False},
                        {C.CKA_DECRYPT: False, C.CKA_UNWRAP: True}),
    C.CKO_PUBLIC_KEY: ({C.CKA_ENCRYPT: True, C.CKA_WRAP: False},
                       {C.CKA_ENCRYPT: True, C.CKA_WRAP: True}),
}


def readable(attrs: dict) -> bool:
    """Does C_GetAttributeValue give this key's value out (see above)?"""
    return not attrs.get(C.CKA_SENSITIVE, True) and bool(attrs.get(C.CKA_EXTRACTABLE, False))


def conflicting(cls: int, usage: int) -> tuple:
    """The usages a key of class `cls` holding `usage` may not also hold."""
    return tuple(b if a == usage else a for a, b in CONFLICTS.get(cls, ()) if usage in (a, b))


def role(*templates: dict) -> int:
    """KEY_KEY if any template asks a wrapping usage, else DATA_KEY."""
    return KEY_KEY if any(t.get(u) for t in templates for u in WRAPPING) else DATA_KEY


def usage_defaults(cls: int, given: dict, key_role: int | None = None) -> dict:
    """The usages `given` leaves out, for a key of class `cls` (none for other classes)."""
    if cls not in ROLE_DEFAULTS:
        return {}
    defaults = dict(ROLE_DEFAULTS[cls][role(given) if key_role is None else key_role])
    for a, b in CONFLICTS[cls]:
        for asked, other in ((a, b), (b, a)):
            if given.get(asked):
                defaults[other] = False
    return {cka: value for cka, value in defaults.items() if cka not in given}


def check_separation(cls: int, attrs: dict) -> None:
    if readable(attrs):
        return
    for a, b in CONFLICTS.get(cls, ()):
        if attrs.get(a) and attrs.get(b):
            raise PKCS11Error(C.CKR_TEMPLATE_INCONSISTENT, f"key separation: {C.name_of('CKA_', a)} and "
                                                           f"{C.name_of('CKA_', b)} on one key")


def check_usage_change(old: dict, changes: dict) -> None:
    """Usages only turn off after creation (see above)."""
    if readable({**old, **changes}):
        return
    for cka in USAGES:
        if changes.get(cka) and not old.get(cka):
            raise PKCS11Error(C.CKR_ATTRIBUTE_READ_ONLY, "key separation: " + C.name_of("CKA_", cka)
                              + " can only become false")
