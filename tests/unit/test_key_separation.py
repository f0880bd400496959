"""Key separation in the engine (provider/schema.py, "Key separation"): the default table,
the exemption of readable keys, and the legacy switch. The attacks themselves run through
the C ABI in tests/security/test_key_separation.py."""

import pytest

from provider import constants as C
from provider import schema
from provider.errors import PKCS11Error
from provider.mechanisms.params import Mechanism

from .conftest import RW, USER_PIN, init_token, make_library
from .tmpl import T

USAGES = (C.CKA_ENCRYPT, C.CKA_DECRYPT, C.CKA_WRAP, C.CKA_UNWRAP)
ON = b"\x01"


def usages(lib, s, key) -> tuple:
    return tuple(v == ON for v in lib.get_attribute_value(s, key, list(USAGES)))


def gen(lib, s, **attrs):
    return lib.generate_key(s, Mechanism(C.CKM_AES_KEY_GEN), T(VALUE_LEN=32, **attrs))


@pytest.mark.parametrize("asked, expected", [
    ({}, (True, True, False, False)),                                  # a data key
    ({"WRAP": True}, (False, False, True, True)),                      # a key-encryption key
    ({"UNWRAP": True}, (False, False, True, True)),
    ({"ENCRYPT": True, "WRAP": True}, (True, False, True, False)),     # defaults never conflict
    ({"DECRYPT": True, "UNWRAP": True}, (False, True, False, True)),
    ({"ENCRYPT": False}, (False, True, False, False)),
    ({"WRAP": False, "UNWRAP": False}, (True, True, False, False)),
])
def test_secret_key_defaults(user, asked, expected):
    lib, s = user
    assert usages(lib, s, gen(lib, s, **asked)) == expected


def test_defaults_table_never_conflicts():
    for cls, (data, kek) in schema.ROLE_DEFAULTS.items():
        for defaults in (data, kek):
            schema.check_separation(cls, {C.CKA_SENSITIVE: True, **defaults})


@pytest.mark.parametrize("asked", [{"WRAP": True, "DECRYPT": True}, {"UNWRAP": True, "ENCRYPT": True}])
def test_conflict_refused(user, asked):
    lib, s = user
    with pytest.raises(PKCS11Error) as err:
        gen(lib, s, **asked)
    assert err.value.rv == C.CKR_TEMPLATE_INCONSISTENT


def test_readable_key_may_hold_every_usage(user):
    """SENSITIVE false and EXTRACTABLE true: its value is readable, so nothing is kept apart;
    once it is made sensitive the rule applies (CKA_SENSITIVE only turns on)."""
    lib, s = user
    key = gen(lib, s, SENSITIVE=False, EXTRACTABLE=True, ENCRYPT=True, DECRYPT=True, WRAP=True, UNWRAP=True)
    assert usages(lib, s, key) == (True,) * 4
    with pytest.raises(PKCS11Error) as err:
        lib.set_attribute_value(s, key, T(SENSITIVE=True))
    assert err.value.rv == C.CKR_TEMPLATE_INCONSISTENT
    with pytest.raises(PKCS11Error) as err:
        gen(lib, s, SENSITIVE=False, ENCRYPT=True, DECRYPT=True, WRAP=True)   # not extractable: hidden
    assert err.value.rv == C.CKR_TEMPLATE_INCONSISTENT


def test_rsa_pair_takes_one_role():
    """The role of a pair comes from both templates (schema.role)."""
    assert schema.usage_defaults(C.CKO_PUBLIC_KEY, {}, schema.role({}, {})) == {C.CKA_ENCRYPT: True,
                                                                                 C.CKA_WRAP: False}
    role = schema.role({}, {C.CKA_UNWRAP: True})
    assert schema.usage_defaults(C.CKO_PUBLIC_KEY, {}, role) == {C.CKA_ENCRYPT: True, C.CKA_WRAP: True}
    assert schema.usage_defaults(C.CKO_PRIVATE_KEY, {C.CKA_UNWRAP: True}, role) == {C.CKA_DECRYPT: False}


def test_legacy_switch(tmp_path):
    lib = make_library(tmp_path, "[policy]\nkey_separation = false\n")
    try:
        slot = init_token(lib)
        s = lib.open_session(slot, RW)
        lib.login(s, C.CKU_USER, USER_PIN)
        assert usages(lib, s, gen(lib, s)) == (True,) * 4
        key = gen(lib, s, WRAP=True, DECRYPT=True)
        lib.set_attribute_value(s, key, T(ENCRYPT=False))
        lib.set_attribute_value(s, key, T(ENCRYPT=True))      # usages turn on again in legacy mode
    finally:
        lib.finalize()
