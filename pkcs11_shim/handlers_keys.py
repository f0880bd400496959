"""Key management: generate, generate pair, wrap, unwrap, derive."""

from .handlers_common import handler
from .marshal import data, need, output, read_template
from .mechparams import read_mechanism


@handler("C_GenerateKey")
def generate_key(library, session, p_mech, p_template, count, ph_key):
    need(ph_key)
    ph_key[0] = library.generate_key(session, read_mechanism(p_mech), read_template(p_template, count))


@handler("C_GenerateKeyPair")
def generate_key_pair(library, session, p_mech, p_pub, pub_count, p_priv, priv_count, ph_pub, ph_priv):
    need(ph_pub, ph_priv)
    ph_pub[0], ph_priv[0] = library.generate_key_pair(
        session, read_mechanism(p_mech), read_template(p_pub, pub_count), read_template(p_priv, priv_count))


@handler("C_WrapKey")
def wrap_key(library, session, p_mech, wrapping, key, p_out, pul_out):
    need(pul_out)
    mech = read_mechanism(p_mech)
    return output(p_out, pul_out, lambda cap: library.wrap_key(session, mech, wrapping, key, cap))


@handler("C_UnwrapKey")
def unwrap_key(library, session, p_mech, unwrapping, p_wrapped, wrapped_len, p_template, count, ph_key):
    need(ph_key)
    ph_key[0] = library.unwrap_key(session, read_mechanism(p_mech), unwrapping,
                                   data(p_wrapped, wrapped_len, required=True), read_template(p_template, count))


@handler("C_DeriveKey")
def derive_key(library, session, p_mech, base, p_template, count, ph_key):
    need(ph_key)
    ph_key[0] = library.derive_key(session, read_mechanism(p_mech), base, read_template(p_template, count))
