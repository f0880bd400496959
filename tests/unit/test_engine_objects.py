"""Object management through the engine: the attribute rules of the spec."""

import pytest

from provider import attrtypes
from provider import constants as C
from provider.errors import PKCS11Error

from .conftest import RO, RW, USER_PIN
from .tmpl import T, ulong

AES_VALUE = bytes(range(32))


def rv(fn, *args):
    with pytest.raises(PKCS11Error) as info:
        fn(*args)
    return info.value.rv


def aes_template(**extra):
    base = dict(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_AES, VALUE=AES_VALUE, LABEL=b"aes")
    base.update(extra)
    return T(**base)


def find(lib, s, **attrs):
    lib.find_objects_init(s, T(**attrs))
    try:
        return lib.find_objects(s, 100000)
    finally:
        lib.find_objects_final(s)


def test_create_needs_class_and_key_type(user):
    lib, s = user
    assert rv(lib.create_object, s, T(LABEL=b"x")) == C.CKR_TEMPLATE_INCOMPLETE
    assert rv(lib.create_object, s, T(CLASS=C.CKO_SECRET_KEY, VALUE=AES_VALUE)) == C.CKR_TEMPLATE_INCOMPLETE
    assert rv(lib.create_object, s, aes_template(LOCAL=True)) == C.CKR_ATTRIBUTE_READ_ONLY
    assert rv(lib.create_object, s, aes_template(MODULUS=b"\x01")) == C.CKR_ATTRIBUTE_TYPE_INVALID
    assert rv(lib.create_object, s, aes_template() + T(LABEL=b"other")) == C.CKR_TEMPLATE_INCONSISTENT
    bad_len = [(C.CKA_CLASS, b"\x04\x00\x00\x00")]
    assert rv(lib.create_object, s, bad_len) == C.CKR_ATTRIBUTE_VALUE_INVALID
    assert rv(lib.create_object, s, aes_template(VALUE=b"short")) == C.CKR_ATTRIBUTE_VALUE_INVALID


def test_sensitive_values_are_unavailable_others_filled(user):
    lib, s = user
    h = lib.create_object(s, aes_template())
    label, value, bogus, klass = lib.get_attribute_value(
        s, h, [C.CKA_LABEL, C.CKA_VALUE, 0x7777, C.CKA_CLASS])
    assert label == b"aes"
    assert value == C.CKR_ATTRIBUTE_SENSITIVE
    assert bogus == C.CKR_ATTRIBUTE_TYPE_INVALID
    assert ulong(klass) == C.CKO_SECRET_KEY
    (vlen,) = lib.get_attribute_value(s, h, [C.CKA_VALUE_LEN])
    assert ulong(vlen) == 32
    local, always, never = lib.get_attribute_value(
        s, h, [C.CKA_LOCAL, C.CKA_ALWAYS_SENSITIVE, C.CKA_NEVER_EXTRACTABLE])
    assert (local, always, never) == (b"\x00", b"\x00", b"\x00")   # imported, not generated


def test_extractable_non_sensitive_value_is_readable(user):
    lib, s = user
    h = lib.create_object(s, aes_template(SENSITIVE=False, EXTRACTABLE=True))
    assert lib.get_attribute_value(s, h, [C.CKA_VALUE]) == [AES_VALUE]


def test_one_way_attributes(user):
    lib, s = user
    h = lib.create_object(s, aes_template(SENSITIVE=False, EXTRACTABLE=True))
    lib.set_attribute_value(s, h, T(SENSITIVE=True, EXTRACTABLE=False))
    assert rv(lib.set_attribute_value, s, h, T(SENSITIVE=False)) == C.CKR_ATTRIBUTE_READ_ONLY
    assert rv(lib.set_attribute_value, s, h, T(EXTRACTABLE=True)) == C.CKR_ATTRIBUTE_READ_ONLY
    assert rv(lib.set_attribute_value, s, h, T(CLASS=C.CKO_DATA)) == C.CKR_ATTRIBUTE_READ_ONLY
    assert rv(lib.set_attribute_value, s, h, T(UNIQUE_ID=b"mine")) == C.CKR_ATTRIBUTE_READ_ONLY
    assert lib.get_attribute_value(s, h, [C.CKA_VALUE]) == [C.CKR_ATTRIBUTE_SENSITIVE]


def test_unmodifiable_undestroyable_uncopyable(user):
    lib, s = user
    h = lib.create_object(s, aes_template(MODIFIABLE=False, DESTROYABLE=False, COPYABLE=False))
    assert rv(lib.set_attribute_value, s, h, T(LABEL=b"new")) == C.CKR_ACTION_PROHIBITED
    assert rv(lib.destroy_object, s, h) == C.CKR_ACTION_PROHIBITED
    assert rv(lib.copy_object, s, h, []) == C.CKR_ACTION_PROHIBITED


def test_copy_and_destroy(user):
    lib, s = user
    h = lib.create_object(s, aes_template(LABEL=b"orig"))
    c = lib.copy_object(s, h, T(LABEL=b"copy", TOKEN=False))
    assert lib.get_attribute_value(s, c, [C.CKA_LABEL]) == [b"copy"]
    uid_a, uid_b = (lib.get_attribute_value(s, x, [C.CKA_UNIQUE_ID])[0] for x in (h, c))
    assert uid_a != uid_b
    assert rv(lib.copy_object, s, h, T(SENSITIVE=False)) == C.CKR_ATTRIBUTE_READ_ONLY
    lib.destroy_object(s, c)
    assert rv(lib.get_attribute_value, s, c, [C.CKA_LABEL]) == C.CKR_OBJECT_HANDLE_INVALID
    assert lib.get_object_size(s, h) > 32


def test_private_objects_invisible_until_login(shared):
    lib, slot = shared
    s = lib.open_session(slot, RW)
    try:
        assert rv(lib.create_object, s, aes_template(TOKEN=True)) == C.CKR_USER_NOT_LOGGED_IN
        lib.login(s, C.CKU_USER, USER_PIN)
        h = lib.create_object(s, aes_template(TOKEN=True, LABEL=b"hidden-key"))
        pub = lib.create_object(s, T(CLASS=C.CKO_DATA, TOKEN=True, LABEL=b"hidden-key", VALUE=b"v"))
        assert sorted(find(lib, s, LABEL=b"hidden-key")) == sorted([h, pub])
        lib.logout(s)
        assert find(lib, s, LABEL=b"hidden-key") == [pub]
        assert rv(lib.get_attribute_value, s, h, [C.CKA_LABEL]) == C.CKR_OBJECT_HANDLE_INVALID
        lib.login(s, C.CKU_USER, USER_PIN)
        # handles to private objects are not valid across a logout; the object is found anew
        (again,) = [x for x in find(lib, s, LABEL=b"hidden-key") if x != pub]
        assert lib.get_attribute_value(s, again, [C.CKA_CLASS])[0] == attrtypes.ulong(C.CKO_SECRET_KEY)
    finally:
        lib.close_all_sessions(slot)


def test_read_only_session_cannot_write_token_objects(shared):
    lib, slot = shared
    s = lib.open_session(slot, RO)
    try:
        assert rv(lib.create_object, s, T(CLASS=C.CKO_DATA, TOKEN=True)) == C.CKR_SESSION_READ_ONLY
        h = lib.create_object(s, T(CLASS=C.CKO_DATA, LABEL=b"session-data"))
        assert find(lib, s, LABEL=b"session-data") == [h]
    finally:
        lib.close_all_sessions(slot)
    s = lib.open_session(slot, RO)
    assert find(lib, s, LABEL=b"session-data") == []       # session objects die with their session
    lib.close_session(s)


def test_find_uses_index_and_unknown_attributes_match_nothing(user):
    lib, s = user
    for i in range(200):
        lib.create_object(s, aes_template(LABEL=b"bulk-%d" % i, ID=bytes([i % 7])))
    assert len(find(lib, s, LABEL=b"bulk-42")) == 1
    assert len(find(lib, s, CLASS=C.CKO_SECRET_KEY, ID=b"\x03")) == len([i for i in range(200) if i % 7 == 3])
    lib.find_objects_init(s, [(0x7FFF0001, b"zz")])
    assert lib.find_objects(s, 10) == []
    assert rv(lib.find_objects_init, s, []) == C.CKR_OPERATION_ACTIVE
    lib.find_objects_final(s)
    assert rv(lib.find_objects, s, 1) == C.CKR_OPERATION_NOT_INITIALIZED
    # searching on a sensitive value finds nothing: no oracle for key material
    lib.create_object(s, aes_template(LABEL=b"oracle"))
    assert find(lib, s, VALUE=AES_VALUE, LABEL=b"oracle") == []


def test_find_in_batches(user):
    lib, s = user
    for i in range(5):
        lib.create_object(s, T(CLASS=C.CKO_DATA, LABEL=b"batch"))
    lib.find_objects_init(s, T(LABEL=b"batch"))
    got = lib.find_objects(s, 2) + lib.find_objects(s, 2) + lib.find_objects(s, 2)
    lib.find_objects_final(s)
    assert len(got) == 5 and len(set(got)) == 5


def test_certificate_fields_filled_from_der(user):
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferro test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0x00C0FFEE).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    lib, s = user
    h = lib.create_object(s, T(CLASS=C.CKO_CERTIFICATE, CERTIFICATE_TYPE=C.CKC_X_509, VALUE=der, ID=b"\x01"))
    subject, serial = lib.get_attribute_value(s, h, [C.CKA_SUBJECT, C.CKA_SERIAL_NUMBER])
    assert subject == name.public_bytes()
    assert serial == b"\x02\x04\x00\xc0\xff\xee"
    bad = T(CLASS=C.CKO_CERTIFICATE, CERTIFICATE_TYPE=C.CKC_X_509, VALUE=b"not a cert")
    assert rv(lib.create_object, s, bad) == C.CKR_ATTRIBUTE_VALUE_INVALID
