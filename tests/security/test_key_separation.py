"""Key separation (issue 11, items 1, 2, 4 and 12): each test performs the attack through
the built module, driven by PyKCS11 in a child process, and shows it refused with the
spec's code. The rules are in provider/schema.py ("Key separation")."""

import pytest

from provider import constants as C

from .p11client import attack

OK = 0
INCONSISTENT = C.CKR_TEMPLATE_INCONSISTENT
NOT_PERMITTED = C.CKR_KEY_FUNCTION_NOT_PERMITTED

HKDF = r'''
def hkdf(salt_key):
    """CK_HKDF_PARAMS: extract only, HMAC-SHA256, the salt from a key."""
    return Mechanism(CKM_HKDF_DERIVE, struct.pack("<BB6xQQQQQQQ", 1, 0, CKM_SHA256, CKF_HKDF_SALT_KEY,
                                                  0, 0, handle(salt_key), 0, 0))

OUT = secret(KEY_TYPE=CKK_GENERIC_SECRET, VALUE_LEN=32, SENSITIVE=False, EXTRACTABLE=True)
ikm = b"the attacker's chosen message"
base = s.createObject(secret(KEY_TYPE=CKK_GENERIC_SECRET, VALUE=ikm, DERIVE=True))
'''


# --- item 1: HKDF's salt key --------------------------------------------------------------
def test_hkdf_salt_key_is_no_hmac_oracle(token):
    """A verify-only HMAC key (SIGN, DERIVE, MODIFIABLE false) as the HKDF salt and the
    attacker's key as IKM: the extractable output would be HMAC(victim, chosen message),
    a tag C_Verify accepts (it did before: derive 0, verify 0). Now the salt key needs
    CKA_DERIVE: CKR_KEY_FUNCTION_NOT_PERMITTED."""
    out = attack(token, HKDF + r'''
victim = s.generateKey(secret(KEY_TYPE=CKK_GENERIC_SECRET, VALUE_LEN=32, SIGN=False, VERIFY=True,
                              DERIVE=False, MODIFIABLE=False), Mechanism(CKM_GENERIC_SECRET_KEY_GEN))
out["derive"] = call(s.deriveKey, base, OUT, hkdf(victim))
if out["derive"] == 0:
    tag = bytes(s.getAttributeValue(last, [CKA_VALUE])[0])
    out["verify_forged_tag"] = call(s.verify, victim, ikm, tag, Mechanism(CKM_SHA256_HMAC))
''')
    assert out["derive"] == NOT_PERMITTED, f"the salt key was used without CKA_DERIVE: {out}"


def test_hkdf_salt_key_must_allow_the_mechanism(token):
    """A salt key with CKA_DERIVE whose CKA_ALLOWED_MECHANISMS leaves HKDF out."""
    out = attack(token, HKDF + r'''
salt = s.generateKey(secret(KEY_TYPE=CKK_GENERIC_SECRET, VALUE_LEN=32, DERIVE=True,
                            ALLOWED_MECHANISMS=struct.pack("<Q", CKM_SHA256_HMAC)), Mechanism(CKM_GENERIC_SECRET_KEY_GEN))
out["derive"] = call(s.deriveKey, base, OUT, hkdf(salt))
free = s.generateKey(secret(KEY_TYPE=CKK_GENERIC_SECRET, VALUE_LEN=32, DERIVE=True),
                     Mechanism(CKM_GENERIC_SECRET_KEY_GEN))
out["derive_allowed"] = call(s.deriveKey, base, OUT, hkdf(free))
''')
    assert out == {"derive": NOT_PERMITTED, "derive_allowed": OK}


def test_hkdf_output_folds_in_the_salt_keys_history(token):
    """Base key generated sensitive (ALWAYS_SENSITIVE, NEVER_EXTRACTABLE true), salt key
    imported (both false): the output is not "always sensitive" either (before: true)."""
    out = attack(token, HKDF + r'''
base2 = s.generateKey(secret(KEY_TYPE=CKK_GENERIC_SECRET, VALUE_LEN=32, DERIVE=True),
                      Mechanism(CKM_GENERIC_SECRET_KEY_GEN))
salt = s.createObject(secret(KEY_TYPE=CKK_GENERIC_SECRET, VALUE=b"s" * 32, DERIVE=True))
key = s.deriveKey(base2, secret(KEY_TYPE=CKK_GENERIC_SECRET, VALUE_LEN=32), hkdf(salt))
out = {n: flag(key, n) for n in ("SENSITIVE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE")}
out["base"] = [flag(base2, "ALWAYS_SENSITIVE"), flag(base2, "NEVER_EXTRACTABLE")]
''')
    assert out == {"SENSITIVE": True, "ALWAYS_SENSITIVE": False, "NEVER_EXTRACTABLE": False,
                   "base": [True, True]}


# --- item 2: Clulow's attack ----------------------------------------------------------------
WRAP_THEN_DECRYPT = r'''
KW = Mechanism(CKM_AES_KEY_WRAP)
victim = aes(EXTRACTABLE=True)          # sensitive: its value is never readable
def clulow(k):
    """C_WrapKey(k, victim) then C_Decrypt(k, blob): the victim's value, if both pass."""
    r = {"wrap": call(s.wrapKey, k, victim, KW)}
    if r["wrap"] == 0:
        blob = bytes(last)
        r["decrypt"] = call(s.decrypt, k, blob, KW)
        if r["decrypt"] == 0:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
            e = Cipher(algorithms.AES(bytes(last)), modes.ECB()).encryptor()
            r["value_read"] = (e.update(bytes(16)) + e.finalize())[:3] == bytes(
                s.getAttributeValue(victim, [CKA_CHECK_VALUE])[0])
    return r
'''


def test_clulow_wrap_then_decrypt_default_template(token):
    """A key made with the default template: today it wraps and decrypts, so the victim's
    value comes out (before: wrap 0, decrypt 0, value_read true). Now a default key is a
    data key and does not wrap."""
    out = attack(token, WRAP_THEN_DECRYPT + r'''
k = aes()
out = clulow(k)
out["usages"] = [flag(k, n) for n in ("ENCRYPT", "DECRYPT", "WRAP", "UNWRAP")]
''')
    assert out == {"wrap": NOT_PERMITTED, "usages": [True, True, False, False]}


def test_clulow_with_a_wrapping_key(token):
    """A key asked to wrap is a key-encryption key: it wraps, and the blob does not
    decrypt under it (DECRYPT defaults false, and the key-wrap mechanism's decryption is
    refused for a wrapping key)."""
    out = attack(token, WRAP_THEN_DECRYPT + r'''
k = aes(WRAP=True)
out = clulow(k)
out["usages"] = [flag(k, n) for n in ("ENCRYPT", "DECRYPT", "WRAP", "UNWRAP")]
''')
    assert out == {"wrap": OK, "decrypt": NOT_PERMITTED, "usages": [False, False, True, True]}


def test_forged_blob_cannot_bypass_the_unwrap_template(token):
    """CKA_UNWRAP_TEMPLATE says what every key unwrapped by K is. An attacker who could
    C_Encrypt with K under CKM_AES_KEY_WRAP would forge a blob of a value it chose and
    unwrap it into a key the template vouches for. K unwraps, so it does not encrypt
    (CKR_KEY_FUNCTION_NOT_PERMITTED), asked or not; both at once are refused at
    creation; a key that wraps and encrypts does not encrypt under a key-wrap mechanism."""
    out = attack(token, r'''
KW = Mechanism(CKM_AES_KEY_WRAP)
k = aes(UNWRAP=True, UNWRAP_TEMPLATE=T(SENSITIVE=True, EXTRACTABLE=False))
out["encrypt"] = call(s.encrypt, k, b"k" * 32, KW)
out["both"] = call(aes, UNWRAP=True, ENCRYPT=True)
wraps = aes(WRAP=True, ENCRYPT=True)
out["wrap_and_encrypt"] = [flag(wraps, n) for n in ("ENCRYPT", "DECRYPT", "WRAP", "UNWRAP")]
out["encrypt_kw"] = call(s.encrypt, wraps, b"k" * 32, KW)
out["encrypt_gcm"] = call(s.encrypt, wraps, b"data", AES_GCM_Mechanism(b"\0" * 12, b"", 128))
''')
    assert out == {"encrypt": NOT_PERMITTED, "both": INCONSISTENT,
                   "wrap_and_encrypt": [True, False, True, False],
                   "encrypt_kw": NOT_PERMITTED, "encrypt_gcm": OK}


def test_every_creation_path_refuses_wrap_with_decrypt(token):
    """WRAP+DECRYPT (or UNWRAP+ENCRYPT) on one key, from every way a key is made or
    changed: CKR_TEMPLATE_INCONSISTENT."""
    out = attack(token, r'''
KW = Mechanism(CKM_AES_KEY_WRAP)
both = dict(WRAP=True, DECRYPT=True)
out["create"] = call(s.createObject, secret(KEY_TYPE=CKK_AES, VALUE=b"v" * 32, **both))
out["create_unwrap_encrypt"] = call(s.createObject, secret(KEY_TYPE=CKK_AES, VALUE=b"v" * 32,
                                                           UNWRAP=True, ENCRYPT=True))
out["generate"] = call(aes, **both)
kek = aes(WRAP=True)
target = aes(EXTRACTABLE=True)
blob = bytes(s.wrapKey(kek, target, KW))
out["unwrap"] = call(s.unwrapKey, kek, blob, secret(KEY_TYPE=CKK_AES, **both), KW)
out["unwrap_ok"] = call(s.unwrapKey, kek, blob, secret(KEY_TYPE=CKK_AES), KW)
kek2 = aes(WRAP=True, UNWRAP_TEMPLATE=T(WRAP=True))        # what kek2 unwraps wraps
out["unwrap_kek_template"] = call(s.unwrapKey, kek2, bytes(s.wrapKey(kek2, target, KW)),
                                  secret(KEY_TYPE=CKK_AES, DECRYPT=True), KW)
base = aes(DERIVE=True)
data = ctypes.create_string_buffer(b"d" * 32, 32)
ecb = Mechanism(CKM_AES_ECB_ENCRYPT_DATA, struct.pack("<QQ", ctypes.addressof(data), 32))
out["derive"] = call(s.deriveKey, base, secret(KEY_TYPE=CKK_AES, VALUE_LEN=32, **both), ecb)
out["derive_ok"] = call(s.deriveKey, base, secret(KEY_TYPE=CKK_AES, VALUE_LEN=32), ecb)
data_key = aes()
out["set"] = call(s.setAttributeValue, data_key, T(WRAP=True))
out["copy"] = copy(data_key, T(WRAP=True))[0]
# a copy shares the value: usages only turn off, so no copy decrypts beside a wrapping original
code, twin = copy(kek, T(WRAP=False))
out["copy_off"] = code
out["set_on"] = call(s.setAttributeValue, twin, T(DECRYPT=True))
out["set_off"] = call(s.setAttributeValue, data_key, T(DECRYPT=False))
''')
    assert out == {"create": INCONSISTENT, "create_unwrap_encrypt": INCONSISTENT, "generate": INCONSISTENT,
                   "unwrap": INCONSISTENT, "unwrap_ok": OK, "unwrap_kek_template": INCONSISTENT,
                   "derive": INCONSISTENT, "derive_ok": OK,
                   "set": INCONSISTENT, "copy": INCONSISTENT,
                   "copy_off": OK, "set_on": C.CKR_ATTRIBUTE_READ_ONLY, "set_off": OK}


RSA = r'''
def pair(pub=(), priv=()):
    return s.generateKeyPair(T(TOKEN=False, MODULUS_BITS=2048, PUBLIC_EXPONENT=(1, 0, 1), *pub),
                             T(TOKEN=False, *priv), Mechanism(CKM_RSA_PKCS_KEY_PAIR_GEN))
def T(*extra, **attrs):
    return [(getattr(PyKCS11, "CKA_" + n), v) for n, v in attrs.items()] + list(extra)
'''


def test_rsa_pair_defaults_keep_wrap_and_decrypt_apart(token):
    """The RSA form of the attack: C_WrapKey under the public key, C_Decrypt with the
    private key. The default pair decrypts and does not wrap; a pair asked to wrap
    (either half) does not decrypt, so the blob does not decrypt under its private key.
    Asked explicitly, the pair may still do both (NSS asks every usage on its RSA pairs,
    and anyone can import a wrapping public key of any modulus): schema.py, SECURITY.md."""
    out = attack(token, RSA + r'''
W, D, U = (CKA_WRAP, True), (CKA_DECRYPT, True), (CKA_UNWRAP, True)
pub, priv = pair()
out["default"] = [flag(pub, "ENCRYPT"), flag(pub, "WRAP"), flag(priv, "DECRYPT"), flag(priv, "UNWRAP")]
pub, priv = pair([W])
out["wrapping"] = [flag(pub, "ENCRYPT"), flag(pub, "WRAP"), flag(priv, "DECRYPT"), flag(priv, "UNWRAP")]
p2, v2 = pair([], [U])
out["unwrapping"] = [flag(p2, "WRAP"), flag(v2, "DECRYPT"), flag(v2, "UNWRAP")]
victim = aes(EXTRACTABLE=True)
OAEP = Mechanism(CKM_RSA_PKCS_OAEP, struct.pack("<QQQQQ", CKM_SHA_1, CKG_MGF1_SHA1, 0, 0, 0))
blob = bytes(s.wrapKey(pub, victim, OAEP))
out["decrypt_blob"] = call(s.decrypt, priv, blob, OAEP)
out["asked_both"] = call(pair, [W], [D, U])
''')
    assert out == {"default": [True, False, True, False], "wrapping": [True, True, False, True],
                   "unwrapping": [True, False, True], "decrypt_blob": NOT_PERMITTED, "asked_both": OK}


@pytest.fixture
def legacy(token):
    """The token with [policy] key_separation = false (config.py)."""
    token.conf.write_text(token.conf.read_text() + "[policy]\nkey_separation = false\n")
    return token


def test_legacy_switch_restores_the_old_rules(legacy):
    """key_separation = false: every usage defaults true and the attack works again -
    the reason the switch is off by default."""
    out = attack(legacy, WRAP_THEN_DECRYPT + r'''
k = aes()
out = clulow(k)
out["usages"] = [flag(k, n) for n in ("ENCRYPT", "DECRYPT", "WRAP", "UNWRAP")]
out["generate_both"] = call(aes, WRAP=True, DECRYPT=True)
''')
    assert out == {"wrap": OK, "decrypt": OK, "value_read": True, "usages": [True] * 4, "generate_both": OK}


def test_legacy_key_under_separation_does_not_wrap(legacy):
    """A key made under the legacy rules (all four usages) on a token that later turns
    separation on: its data use goes on, C_WrapKey / C_UnwrapKey with it are refused."""
    made = attack(legacy, r'''
k = s.generateKey(T(CLASS=CKO_SECRET_KEY, TOKEN=True, LABEL="old", VALUE_LEN=32), Mechanism(CKM_AES_KEY_GEN))
out["usages"] = [flag(k, n) for n in ("ENCRYPT", "DECRYPT", "WRAP", "UNWRAP")]
''')
    assert made["usages"] == [True] * 4
    legacy.conf.write_text(legacy.conf.read_text().replace("key_separation = false", "key_separation = true"))
    out = attack(legacy, WRAP_THEN_DECRYPT + r'''
k = s.findObjects(T(LABEL="old"))[0]
out["wrap"] = call(s.wrapKey, k, victim, KW)
out["unwrap"] = call(s.unwrapKey, k, b"\0" * 40, secret(KEY_TYPE=CKK_AES), KW)
out["encrypt_gcm"] = call(s.encrypt, k, b"data", AES_GCM_Mechanism(b"\0" * 12, b"", 128))
out["decrypt_kw"] = call(s.decrypt, k, b"\0" * 40, KW)
''')
    assert out == {"wrap": NOT_PERMITTED, "unwrap": NOT_PERMITTED, "encrypt_gcm": OK, "decrypt_kw": NOT_PERMITTED}


# --- item 4: C_CopyObject cannot make a private key public ----------------------------------
def test_copy_cannot_make_a_private_key_public(token):
    """A sensitive, never-extractable private key copied with CKA_PRIVATE=false would be
    a public object any process uses without login: CKR_TEMPLATE_INCONSISTENT (SoftHSM2's
    answer). Before: CKR_OK and the copy was public."""
    out = attack(token, r'''
k = aes()
out["private"] = flag(k, "PRIVATE")
out["copy_public"] = copy(k, T(PRIVATE=False))[0]
out["copy_private"] = copy(k, T(PRIVATE=True))[0]
''')
    assert out == {"private": True, "copy_public": INCONSISTENT, "copy_private": OK}


# --- item 12: ENCRYPT_DATA needs CKA_ENCRYPT, C_DigestKey -----------------------------------
def test_encrypt_data_derivation_needs_encrypt(token):
    """CKM_AES_ECB_ENCRYPT_DATA is an encryption by the base key: with CKA_ENCRYPT false the
    derived (extractable) key would be an ECB encryption oracle (before: CKR_OK)."""
    out = attack(token, r'''
data = ctypes.create_string_buffer(b"d" * 32, 32)
ecb = Mechanism(CKM_AES_ECB_ENCRYPT_DATA, struct.pack("<QQ", ctypes.addressof(data), 32))
iv_data = ctypes.create_string_buffer(b"d" * 32, 32)
cbc = Mechanism(CKM_AES_CBC_ENCRYPT_DATA, b"\0" * 16 + struct.pack("<QQ", ctypes.addressof(iv_data), 32))
OUT = secret(KEY_TYPE=CKK_GENERIC_SECRET, VALUE_LEN=32, SENSITIVE=False, EXTRACTABLE=True)
no_encrypt = aes(DERIVE=True, ENCRYPT=False)
out["ecb"] = call(s.deriveKey, no_encrypt, OUT, ecb)
out["cbc"] = call(s.deriveKey, no_encrypt, OUT, cbc)
out["with_encrypt"] = call(s.deriveKey, aes(DERIVE=True), OUT, ecb)
''')
    assert out == {"ecb": NOT_PERMITTED, "cbc": NOT_PERMITTED, "with_encrypt": OK}


def test_digest_key_refuses_weak_digests_and_honours_allowed_mechanisms(token):
    """C_DigestKey of a sensitive, unextractable key: MD5 and SHA-1 refused, and a key whose
    CKA_ALLOWED_MECHANISMS leaves the digest out refused (CKR_KEY_INDIGESTIBLE, the code
    the spec lists for C_DigestKey). Before: CKR_OK for all three."""
    out = attack(token, r'''
def digest_key(key, mech):
    m = Mechanism(mech).to_native()
    rv = s.lib.C_DigestInit(s.session, m)
    if rv:
        return rv
    rv = s.lib.C_DigestKey(s.session, key)
    if rv:
        return rv
    d = ckbytelist()
    s.lib.C_DigestFinal(s.session, d)
    return s.lib.C_DigestFinal(s.session, d)

k = aes()
only_gcm = aes(ALLOWED_MECHANISMS=struct.pack("<Q", CKM_AES_GCM))
out["md5"] = digest_key(k, CKM_MD5)
out["sha1"] = digest_key(k, CKM_SHA_1)
out["sha256"] = digest_key(k, CKM_SHA256)
out["sha256_not_allowed"] = digest_key(only_gcm, CKM_SHA256)
''')
    assert out == {"md5": C.CKR_KEY_INDIGESTIBLE, "sha1": C.CKR_KEY_INDIGESTIBLE, "sha256": OK,
                   "sha256_not_allowed": C.CKR_KEY_INDIGESTIBLE}
