"""CK_MECHANISM -> provider.mechanisms.params.Mechanism.

One table, keyed by mechanism type, names the parser of its parameter. A
mechanism not in the table gets its parameter as bytes (an IV for CBC, the
optional IV of AES key wrap), or None when there is none; the family decides
what it accepts. A struct parameter is recognised by its size only: any other
size is CKR_MECHANISM_PARAM_INVALID. NULL pParameter with a nonzero length is
CKR_ARGUMENTS_BAD.

CK_GCM_PARAMS comes in two layouts that differ in size, so both are read
without ambiguity: the 3.0 one (48 bytes on x86_64, with ulIvBits) and the
2.40 header's (40 bytes, no ulIvBits; ulIvBits is then ulIvLen * 8). Java's
SunPKCS11 sends the 40-byte layout first and retries with the 48-byte one on
CKR_ARGUMENTS_BAD or CKR_MECHANISM_PARAM_INVALID (jdk p11_crypt.c), so taking
both is what works with it; a size that is neither is refused, never misread.

Every length inside a struct is checked against the mechanism's limits (and
[limits] max_data_len) before any pointer is read; a pointer is read only for
a non-zero length; every value out of range is CKR_MECHANISM_PARAM_INVALID.
The parsers get the configuration's Limits; a caller without one gets the
defaults.

CK_PKCS5_PBKD2_PARAMS (2.x, ulPasswordLen is a CK_ULONG_PTR) and
CK_PKCS5_PBKD2_PARAMS2 (3.0, a CK_ULONG) have the same size on LP64, so the
size cannot tell them apart, and guessing from the value crashed the host (a
65,536-byte password read as a pointer). This is a 3.0 module: the field is a
length (CK_PKCS5_PBKD2_PARAMS2), and at most PBKDF2_PASSWORD_MAX (65,535): no
process maps anything below 64 KiB (Linux vm.mmap_min_addr, 65,536 by default),
so every value that could be a 2.x caller's pointer is 65,536 or more and is
refused with CKR_MECHANISM_PARAM_INVALID, never dereferenced, never read as a
length (a non-PIE 2.x program's pointer, ~4 MiB, was below max_data_len and
was read as one: a wild read of that many bytes). pPrfData is not read: the
PRFs offered take no data.
"""

from provider import constants as C
from provider.config import Limits
from provider.errors import PKCS11Error
from provider.mechanisms import params as P

from .marshal import F, need

EDDSA_CONTEXT_MAX = 255          # RFC 8032: a context is at most 255 bytes
GCM_IV_MAX = 128                 # bytes; the family takes 8..128 (aes.GCM_IV_LEN)
BYTES_PARAM_MAX = 64             # a plain byte-string parameter (an IV) is short
PBKDF2_PASSWORD_MAX = 0xFFFF     # below the lowest address a pointer can have (see above)


def _invalid(reason: str) -> PKCS11Error:
    return PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, reason)


def _bytes(p, n: int, limit: int) -> bytes:
    """Bytes a parameter struct points at: a length above `limit`, or NULL with
    n > 0, is an invalid parameter; checked before the pointer is read."""
    if n == 0:
        return b""
    if n > limit:
        raise _invalid(f"a {n}-byte field inside the mechanism parameter is above {limit}")
    if p == F.NULL:
        raise _invalid("NULL pointer inside the mechanism parameter")
    return F.ffi.buffer(F.ffi.cast("CK_BYTE *", p), n)[:]


# --- parsers: (pParameter, ulParameterLen, Limits) -> value ---------------------------
def _struct(ctype: str, p, n: int):
    if n != F.ffi.sizeof(ctype):
        raise _invalid(f"{ctype} is {F.ffi.sizeof(ctype)} bytes, got {n}")
    return F.ffi.cast(ctype + " *", p)


def parse_ulong(p, n, limits):
    return _struct("CK_ULONG", p, n)[0]


def parse_gcm(p, n, limits):
    if n == F.ffi.sizeof("CK_GCM_PARAMS_V240"):
        s = F.ffi.cast("CK_GCM_PARAMS_V240 *", p)
        iv_bits = s.ulIvLen * 8
    else:
        s = _struct("CK_GCM_PARAMS", p, n)
        iv_bits = s.ulIvBits
    return P.GcmParams(_bytes(s.pIv, s.ulIvLen, GCM_IV_MAX), iv_bits,
                       _bytes(s.pAAD, s.ulAADLen, limits.max_data_len), s.ulTagBits)


def parse_ctr(p, n, limits):
    s = _struct("CK_AES_CTR_PARAMS", p, n)
    return P.CtrParams(s.ulCounterBits, F.ffi.buffer(s.cb)[:])


def parse_oaep(p, n, limits):
    s = _struct("CK_RSA_PKCS_OAEP_PARAMS", p, n)
    return P.OaepParams(s.hashAlg, s.mgf, s.source, _bytes(s.pSourceData, s.ulSourceDataLen, limits.max_data_len))


def parse_pss(p, n, limits):
    s = _struct("CK_RSA_PKCS_PSS_PARAMS", p, n)
    return P.PssParams(s.hashAlg, s.mgf, s.sLen)


def parse_eddsa(p, n, limits):
    s = _struct("CK_EDDSA_PARAMS", p, n)
    return P.EddsaParams(bool(s.phFlag), _bytes(s.pContextData, s.ulContextDataLen, EDDSA_CONTEXT_MAX))


def parse_ecdh1(p, n, limits):
    s = _struct("CK_ECDH1_DERIVE_PARAMS", p, n)
    return P.Ecdh1DeriveParams(s.kdf, _bytes(s.pSharedData, s.ulSharedDataLen, limits.max_data_len),
                               _bytes(s.pPublicData, s.ulPublicDataLen, limits.max_data_len))


def parse_hkdf(p, n, limits):
    s = _struct("CK_HKDF_PARAMS", p, n)
    return P.HkdfParams(bool(s.bExtract), bool(s.bExpand), s.prfHashMechanism, s.ulSaltType,
                        _bytes(s.pSalt, s.ulSaltLen, limits.max_data_len), s.hSaltKey,
                        _bytes(s.pInfo, s.ulInfoLen, limits.max_data_len))


def parse_pbkdf2(p, n, limits):
    s = _struct("CK_PKCS5_PBKD2_PARAMS2", p, n)
    if not 1 <= s.iterations <= limits.pbkdf2_max_iterations:
        raise _invalid(f"PBKDF2 iterations must be 1..{limits.pbkdf2_max_iterations} ([limits])")
    return P.Pbkdf2Params(s.saltSource, _bytes(s.pSaltSourceData, s.ulSaltSourceDataLen, limits.max_data_len),
                          s.iterations, s.prf, b"",
                          _bytes(s.pPassword, s.ulPasswordLen, min(PBKDF2_PASSWORD_MAX, limits.max_data_len)))


def parse_string_data(p, n, limits):
    s = _struct("CK_KEY_DERIVATION_STRING_DATA", p, n)
    return _bytes(s.pData, s.ulLen, limits.max_data_len)


def _parse_cbc_data(ctype: str):
    def parse(p, n, limits):
        s = _struct(ctype, p, n)
        return P.CbcEncryptDataParams(F.ffi.buffer(s.iv)[:], _bytes(s.pData, s.length, limits.max_data_len))
    return parse


def parse_bytes(p, n, limits):
    if n > BYTES_PARAM_MAX:
        raise _invalid(f"a {n}-byte parameter: this mechanism's is at most {BYTES_PARAM_MAX}")
    return F.ffi.buffer(F.ffi.cast("CK_BYTE *", p), n)[:]


# mechanism name -> parser; names this token's constants lack are skipped
_BY_NAME = {
    "CKM_AES_GCM": parse_gcm,
    "CKM_AES_CTR": parse_ctr,
    "CKM_RSA_PKCS_OAEP": parse_oaep,
    "CKM_EDDSA": parse_eddsa,
    "CKM_ECDH1_DERIVE": parse_ecdh1,
    "CKM_ECDH1_COFACTOR_DERIVE": parse_ecdh1,
    "CKM_HKDF_DERIVE": parse_hkdf,
    "CKM_HKDF_DATA": parse_hkdf,
    "CKM_PKCS5_PBKD2": parse_pbkdf2,
    "CKM_AES_CMAC_GENERAL": parse_ulong,
    "CKM_AES_ECB_ENCRYPT_DATA": parse_string_data,
    "CKM_DES3_ECB_ENCRYPT_DATA": parse_string_data,
    "CKM_AES_CBC_ENCRYPT_DATA": _parse_cbc_data("CK_AES_CBC_ENCRYPT_DATA_PARAMS"),
    "CKM_DES3_CBC_ENCRYPT_DATA": _parse_cbc_data("CK_DES_CBC_ENCRYPT_DATA_PARAMS"),
    **{f"CKM_{h}_RSA_PKCS_PSS": parse_pss for h in ("SHA1", "SHA224", "SHA256", "SHA384", "SHA512",
                                                      "SHA3_224", "SHA3_256", "SHA3_384", "SHA3_512")},
    "CKM_RSA_PKCS_PSS": parse_pss,
    **{f"CKM_{h}_HMAC_GENERAL": parse_ulong for h in ("MD5", "SHA_1", "SHA224", "SHA256", "SHA384", "SHA512",
                                                        "SHA3_224", "SHA3_256", "SHA3_384", "SHA3_512")},
}
PARSERS = {getattr(C, name): fn for name, fn in _BY_NAME.items() if hasattr(C, name)}


DEFAULT_LIMITS = Limits()


def read_mechanism(p_mech, limits: Limits = DEFAULT_LIMITS) -> P.Mechanism:
    need(p_mech)
    mech = p_mech[0]
    kind, p, n = mech.mechanism, mech.pParameter, mech.ulParameterLen
    if p == F.NULL:
        if n:
            raise PKCS11Error(C.CKR_ARGUMENTS_BAD, "NULL pParameter with a nonzero length")
        return P.Mechanism(kind, None)
    if n == 0:
        return P.Mechanism(kind, None)
    return P.Mechanism(kind, PARSERS.get(kind, parse_bytes)(p, n, limits))
