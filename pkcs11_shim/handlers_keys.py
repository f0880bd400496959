"""Key management: generate, generate pair, wrap, unwrap, derive.

Each handler checks the session first, then reads the mechanism and the
templates (their lengths checked before they are read, marshal.read_template),
and copies the wrapped key of C_UnwrapKey last: a wrapped length above
[limits] max_wrap_len is CKR_WRAPPED_KEY_LEN_RANGE, answered without reading it.
"""

from provider import constants as C

from . import precheck
from .handlers_common import handler
from .marshal import data, need, output, read_template
from .mechparams import read_mechanism


@handler("C_GenerateKey")
def generate_key(library, session, p_mech, p_template, count, ph_key):
    need(ph_key)
    precheck.session(library, session)
    limits = library.config.limits
    ph_key[0] = library.generate_key(session, read_mechanism(p_mech, limits), read_template(p_template, count, limits))


@handler("C_GenerateKeyPair")
def generate_key_pair(library, session, p_mech, p_pub, pub_count, p_priv, priv_count, ph_pub, ph_priv):
    need(ph_pub, ph_priv)
    precheck.session(library, session)
    limits = library.config.limits
    ph_pub[0], ph_priv[0] = library.generate_key_pair(
        session, read_mechanism(p_mech, limits), read_template(p_pub, pub_count, limits),
        read_template(p_priv, priv_count, limits))


@handler("C_WrapKey")
def wrap_key(library, session, p_mech, wrapping, key, p_out, pul_out):
    need(pul_out)
    precheck.session(library, session)
    mech = read_mechanism(p_mech, library.config.limits)
    return output(p_out, pul_out, lambda cap: library.wrap_key(session, mech, wrapping, key, cap))


@handler("C_UnwrapKey")
def unwrap_key(library, session, p_mech, unwrapping, p_wrapped, wrapped_len, p_template, count, ph_key):
    need(ph_key)
    precheck.session(library, session)
    limits = library.config.limits
    mech = read_mechanism(p_mech, limits)
    template = read_template(p_template, count, limits)
    wrapped = data(p_wrapped, wrapped_len, required=True, limit=limits.max_wrap_len,
                   too_long=C.CKR_WRAPPED_KEY_LEN_RANGE)
    ph_key[0] = library.unwrap_key(session, mech, unwrapping, wrapped, template)


@handler("C_DeriveKey")
def derive_key(library, session, p_mech, base, p_template, count, ph_key):
    need(ph_key)
    precheck.session(library, session)
    limits = library.config.limits
    ph_key[0] = library.derive_key(session, read_mechanism(p_mech, limits), base,
                                   read_template(p_template, count, limits))
