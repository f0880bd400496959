"""CKA_ALWAYS_AUTHENTICATE through wrap and unwrap (issue 11, item 12).

A wrapped key is its value only (PKCS#8 for a private key): PKCS#11 carries no attribute
through C_WrapKey, and C_UnwrapKey takes the new key's attributes from its template and
the unwrapping key's CKA_UNWRAP_TEMPLATE (PKCS#11 3.0, C_UnwrapKey). So the attribute is
kept where a template says so, and only there: a key-encryption key whose
CKA_UNWRAP_TEMPLATE holds CKA_ALWAYS_AUTHENTICATE=true gives it to every private key it
unwraps, and its CKA_WRAP_TEMPLATE can admit only keys that have it. Unwrapped by a key
without such a template, the key loses it (the spec's allowance): the token owner who
needs the attribute to survive sets those templates."""

from provider import constants as C

from .p11client import attack

BODY = r'''
P256 = bytes.fromhex("06082a8648ce3d030107")
pub, priv = s.generateKeyPair(T(TOKEN=False, EC_PARAMS=P256, VERIFY=True),
                              T(TOKEN=False, SIGN=True, EXTRACTABLE=True, ALWAYS_AUTHENTICATE=True),
                              Mechanism(CKM_EC_KEY_PAIR_GEN))
KWP = Mechanism(CKM_AES_KEY_WRAP_PAD)
EC_PRIV = T(CLASS=CKO_PRIVATE_KEY, KEY_TYPE=CKK_EC, TOKEN=False, SIGN=True)
digest = b"\x11" * 32

def sign_without_context_login(key):
    return call(s.sign, key, digest, Mechanism(CKM_ECDSA))

keeps = aes(WRAP=True, UNWRAP_TEMPLATE=T(ALWAYS_AUTHENTICATE=True),
            WRAP_TEMPLATE=T(ALWAYS_AUTHENTICATE=True))
plain = aes(WRAP=True)
blob = bytes(s.wrapKey(keeps, priv, KWP))
kept = s.unwrapKey(keeps, blob, EC_PRIV, KWP)
out["kept"] = flag(kept, "ALWAYS_AUTHENTICATE")
out["kept_sign"] = sign_without_context_login(kept)
out["refuse_lower"] = call(s.unwrapKey, keeps, blob, EC_PRIV + T(ALWAYS_AUTHENTICATE=False), KWP)
lost = s.unwrapKey(plain, bytes(s.wrapKey(plain, priv, KWP)), EC_PRIV, KWP)
out["lost"] = flag(lost, "ALWAYS_AUTHENTICATE")
out["lost_sign"] = sign_without_context_login(lost)
other = s.generateKeyPair(T(TOKEN=False, EC_PARAMS=P256), T(TOKEN=False, EXTRACTABLE=True),
                          Mechanism(CKM_EC_KEY_PAIR_GEN))[1]
out["wrap_filter"] = call(s.wrapKey, keeps, other, KWP)
'''


def test_always_authenticate_survives_where_a_template_keeps_it(token):
    out = attack(token, BODY)
    assert out == {"kept": True, "kept_sign": C.CKR_USER_NOT_LOGGED_IN,
                   "refuse_lower": C.CKR_TEMPLATE_INCONSISTENT,
                   "lost": False, "lost_sign": 0,
                   "wrap_filter": C.CKR_KEY_NOT_WRAPPABLE}
