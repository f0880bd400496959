"""The two-call convention, and the rule that errors end operations, for every
cipher, digest, MAC and signature mechanism the module lists, through the BUILT
module in a C host (tests/e2e/c/output_drive.c), on both paths (FERROHSM_NATIVE=0:
all in the engine; 1: AES-GCM and raw ECDSA armed natively) - issue 9.

Each mechanism runs single-part and multi-part in 1, 2 and 3 chunks of odd
sizes, each with the call patterns plain / NULL then buffer / NULL twice then
buffer / too-small then right buffer; outputs are compared byte for byte with
`cryptography` here (randomised ones: decrypted or verified with it instead);
every AEAD, key-wrap, MAC and signature check also runs tampered and must fail
with the spec's code. Published vectors (tests/data/*.rsp, and the SP 800-38A,
McGrew-Viega, RFC 3394/5649/4493/4231/2202 and FIPS 180 vectors of tests/unit)
go through the same driver. One driver process per path runs every case.
"""

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac, hashes, hmac, keywrap, padding as sympad
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provider import constants as C
from tests.unit import test_mech_aes as AV
from tests.unit import test_mech_hmac_kdf as HV

from .output_script import (OK, Script, cut, equals, flip, hx, matrix, parse, point_keys, rsa_keys, secret, sequence,
                            splits, verifies)
from .test_gcm_fast import nist_vectors

DIGESTS = {C.CKM_MD5: hashes.MD5, C.CKM_SHA_1: hashes.SHA1, C.CKM_SHA224: hashes.SHA224,
           C.CKM_SHA256: hashes.SHA256, C.CKM_SHA384: hashes.SHA384, C.CKM_SHA512: hashes.SHA512,
           C.CKM_SHA3_224: hashes.SHA3_224, C.CKM_SHA3_256: hashes.SHA3_256,
           C.CKM_SHA3_384: hashes.SHA3_384, C.CKM_SHA3_512: hashes.SHA3_512}
MGF = {C.CKM_SHA_1: C.CKG_MGF1_SHA1, C.CKM_SHA224: C.CKG_MGF1_SHA224, C.CKM_SHA256: C.CKG_MGF1_SHA256,
       C.CKM_SHA384: C.CKG_MGF1_SHA384, C.CKM_SHA512: C.CKG_MGF1_SHA512}
OPERATION_FLAGS = C.CKF_ENCRYPT | C.CKF_DECRYPT | C.CKF_SIGN | C.CKF_VERIFY | C.CKF_DIGEST
DATA = bytes(range(7, 108))                  # 101 bytes
BLOCKS = bytes(range(3, 99))                 # 96 bytes: whole AES (and DES3) blocks


# --- the matrix ------------------------------------------------------------------------
def ciphers(script):
    k = bytes(range(32))
    aes = secret(script, C.CKK_AES, k)
    iv = bytes(range(100, 116))
    block = {
        C.CKM_AES_ECB: ("-", modes.ECB(), False),
        C.CKM_AES_CBC: (f"raw:{iv.hex()}", modes.CBC(iv), False),
        C.CKM_AES_CBC_PAD: (f"raw:{iv.hex()}", modes.CBC(iv), True),
    }
    for mech, (param, mode, pad) in block.items():
        data = DATA if pad else BLOCKS
        padded = data
        if pad:
            p = sympad.PKCS7(128).padder()
            padded = p.update(data) + p.finalize()
        enc = Cipher(algorithms.AES(k), mode).encryptor()
        ct = enc.update(padded) + enc.finalize()
        matrix(script, C.name_of("CKM_", mech) + " encrypt", "E", mech, param, aes, data, equals(ct))
        matrix(script, C.name_of("CKM_", mech) + " decrypt", "D", mech, param, aes, ct, equals(data))
    cb = bytes(range(200, 216))
    ct = Cipher(algorithms.AES(k), modes.CTR(cb)).encryptor().update(DATA)
    matrix(script, "CKM_AES_CTR encrypt", "E", C.CKM_AES_CTR, f"ctr:80:{cb.hex()}", aes, DATA, equals(ct))
    matrix(script, "CKM_AES_CTR decrypt", "D", C.CKM_AES_CTR, f"ctr:80:{cb.hex()}", aes, ct, equals(DATA))
    giv, aad = bytes(range(12)), b"additional"
    gcm = f"gcm:{giv.hex()}:{aad.hex()}:80"
    sealed = AESGCM(k).encrypt(giv, DATA, aad)
    matrix(script, "CKM_AES_GCM encrypt", "E", C.CKM_AES_GCM, gcm, aes, DATA, equals(sealed))
    matrix(script, "CKM_AES_GCM decrypt", "D", C.CKM_AES_GCM, gcm, aes, sealed, equals(DATA))
    matrix(script, "CKM_AES_GCM decrypt, tampered tag", "D", C.CKM_AES_GCM, gcm, aes, flip(sealed), None,
           C.CKR_ENCRYPTED_DATA_INVALID, patterns=("plain", "null2"))
    for mech, wrap, data in ((C.CKM_AES_KEY_WRAP, keywrap.aes_key_wrap, bytes(range(32))),
                             (C.CKM_AES_KEY_WRAP_PAD, keywrap.aes_key_wrap_with_padding, bytes(range(21))),
                             (C.CKM_AES_KEY_WRAP_KWP, keywrap.aes_key_wrap_with_padding, bytes(range(21)))):
        wrapped = wrap(k, data)
        name = C.name_of("CKM_", mech)
        matrix(script, name + " encrypt", "E", mech, "-", aes, data, equals(wrapped))
        matrix(script, name + " decrypt", "D", mech, "-", aes, wrapped, equals(data))
        matrix(script, name + " decrypt, tampered", "D", mech, "-", aes, flip(wrapped, 3), None,
               C.CKR_ENCRYPTED_DATA_INVALID, patterns=("plain", "null2"))
    d3 = bytes(b & 0xFE | (bin(b >> 1).count("1") + 1) % 2 for b in range(40, 64))
    des = secret(script, C.CKK_DES3, d3)
    div = bytes(range(8))
    for mech, param, mode, pad in ((C.CKM_DES3_ECB, "-", modes.ECB(), False),
                                   (C.CKM_DES3_CBC, f"raw:{div.hex()}", modes.CBC(div), False),
                                   (C.CKM_DES3_CBC_PAD, f"raw:{div.hex()}", modes.CBC(div), True)):
        data = DATA if pad else BLOCKS
        padded = data
        if pad:
            p = sympad.PKCS7(64).padder()
            padded = p.update(data) + p.finalize()
        enc = Cipher(TripleDES(d3), mode).encryptor()
        ct = enc.update(padded) + enc.finalize()
        matrix(script, C.name_of("CKM_", mech) + " encrypt", "E", mech, param, des, data, equals(ct))
        matrix(script, C.name_of("CKM_", mech) + " decrypt", "D", mech, param, des, ct, equals(data))
    return aes


def digests(script):
    for mech, alg in DIGESTS.items():
        h = hashes.Hash(alg())
        h.update(DATA)
        matrix(script, C.name_of("CKM_", mech), "H", mech, "-", "0", DATA, equals(h.finalize()))


def sign_verify(script, name, mech, param, priv, pub, data, expect, good_sig: bytes):
    """sign (expect) and verify (good, then tampered), every shape."""
    matrix(script, name + " sign", "S", mech, param, priv, data, expect)
    for sig, fail in ((good_sig, None), (flip(good_sig, 5), C.CKR_SIGNATURE_INVALID)):
        script.covered.add(mech)
        for chunks in splits(len(data)):
            sequence(script, f"{name} verify {len(chunks)}{' tampered' if fail else ''}", "V", mech, param, pub,
                     cut(data, chunks), "plain", lambda out: True, fail, final=sig)
        script.group(f"{name} C_Verify{' tampered' if fail else ''}",
                     [f"init V {mech:x} {param} {pub}", f"call V one plain {hx(data)} {hx(sig)}"],
                     lambda a, fail=fail: True if a == ["0", f"{fail or 0:x} - -"] else f"{a}")


def macs(script, aes):
    hkey = bytes(range(40, 80))
    generic = secret(script, C.CKK_GENERIC_SECRET, hkey)
    from provider.mechanisms.hmac import HMACS
    for mech, (general, digest, _) in HMACS.items():
        m = hmac.HMAC(hkey, DIGESTS[digest]())
        m.update(DATA)
        mac = m.finalize()
        sign_verify(script, C.name_of("CKM_", mech), mech, "-", generic, generic, DATA, equals(mac), mac)
        sign_verify(script, C.name_of("CKM_", general), general, "ulong:a", generic, generic, DATA,
                    equals(mac[:10]), mac[:10])
    c = cmac.CMAC(algorithms.AES(bytes(range(32))))
    c.update(DATA)
    mac = c.finalize()
    sign_verify(script, "CKM_AES_CMAC", C.CKM_AES_CMAC, "-", aes, aes, DATA, equals(mac), mac)
    sign_verify(script, "CKM_AES_CMAC_GENERAL", C.CKM_AES_CMAC_GENERAL, "ulong:8", aes, aes, DATA,
                equals(mac[:8]), mac[:8])


def asymmetric(script):
    key = rsa.generate_private_key(65537, 2048)
    pub = key.public_key()
    priv_h, pub_h = rsa_keys(script, key)
    msg = DATA[:37]
    pkcs1 = padding.PKCS1v15()
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    for mech, pad, param in ((C.CKM_RSA_PKCS, pkcs1, "-"),
                             (C.CKM_RSA_PKCS_OAEP, oaep, f"oaep:{C.CKM_SHA256:x}:{C.CKG_MGF1_SHA256:x}:-")):
        name = C.name_of("CKM_", mech)
        matrix(script, name + " encrypt", "E", mech, param, pub_h, msg,
               lambda out, pad=pad: True if key.decrypt(out, pad) == msg else "decrypts to something else")
        matrix(script, name + " decrypt", "D", mech, param, priv_h, pub.encrypt(msg, pad), equals(msg))
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
    hashed = hashes.Hash(hashes.SHA256())
    hashed.update(DATA)
    h256 = hashed.finalize()
    sig = key.sign(h256, pkcs1, Prehashed(hashes.SHA256()))
    sign_verify(script, "CKM_RSA_PKCS", C.CKM_RSA_PKCS, "-", priv_h, pub_h, digest_info + h256, equals(sig), sig)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    sign_verify(script, "CKM_RSA_PKCS_PSS", C.CKM_RSA_PKCS_PSS,
                f"pss:{C.CKM_SHA256:x}:{C.CKG_MGF1_SHA256:x}:20", priv_h, pub_h, h256,
                verifies(lambda s, pss=pss: pub.verify(s, h256, pss, Prehashed(hashes.SHA256()))),
                key.sign(h256, pss, Prehashed(hashes.SHA256())))
    for digest, (pk, ps) in {C.CKM_SHA_1: (C.CKM_SHA1_RSA_PKCS, C.CKM_SHA1_RSA_PKCS_PSS),
                             C.CKM_SHA224: (C.CKM_SHA224_RSA_PKCS, C.CKM_SHA224_RSA_PKCS_PSS),
                             C.CKM_SHA256: (C.CKM_SHA256_RSA_PKCS, C.CKM_SHA256_RSA_PKCS_PSS),
                             C.CKM_SHA384: (C.CKM_SHA384_RSA_PKCS, C.CKM_SHA384_RSA_PKCS_PSS),
                             C.CKM_SHA512: (C.CKM_SHA512_RSA_PKCS, C.CKM_SHA512_RSA_PKCS_PSS)}.items():
        alg = DIGESTS[digest]()
        sig = key.sign(DATA, pkcs1, alg)
        sign_verify(script, C.name_of("CKM_", pk), pk, "-", priv_h, pub_h, DATA, equals(sig), sig)
        pss = padding.PSS(padding.MGF1(alg), alg.digest_size)
        sign_verify(script, C.name_of("CKM_", ps), ps, f"pss:{digest:x}:{MGF[digest]:x}:{alg.digest_size:x}",
                    priv_h, pub_h, DATA, verifies(lambda s, pss=pss, alg=alg: pub.verify(s, DATA, pss, alg)),
                    key.sign(DATA, pss, alg))
    eckey = ec.generate_private_key(ec.SECP256R1())
    ecpub = eckey.public_key()
    point = ecpub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    ec_priv, ec_pub = point_keys(script, C.CKK_EC, bytes.fromhex("06082a8648ce3d030107"),
                                 eckey.private_numbers().private_value.to_bytes(32, "big"), point)

    def rs(der):
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def ec_check(data, alg):
        return verifies(lambda sig: ecpub.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                                                      int.from_bytes(sig[32:], "big")),
                                                 data, ec.ECDSA(alg)))
    sign_verify(script, "CKM_ECDSA", C.CKM_ECDSA, "-", ec_priv, ec_pub, h256,
                ec_check(h256, Prehashed(hashes.SHA256())),
                rs(eckey.sign(h256, ec.ECDSA(Prehashed(hashes.SHA256())))))
    for mech, digest in {C.CKM_ECDSA_SHA1: C.CKM_SHA_1, C.CKM_ECDSA_SHA224: C.CKM_SHA224,
                         C.CKM_ECDSA_SHA256: C.CKM_SHA256, C.CKM_ECDSA_SHA384: C.CKM_SHA384,
                         C.CKM_ECDSA_SHA512: C.CKM_SHA512}.items():
        alg = DIGESTS[digest]()
        sign_verify(script, C.name_of("CKM_", mech), mech, "-", ec_priv, ec_pub, DATA, ec_check(DATA, alg),
                    rs(eckey.sign(DATA, ec.ECDSA(alg))))
    ed = ed25519.Ed25519PrivateKey.generate()
    raw = ed.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat
    ed_priv, ed_pub = point_keys(script, C.CKK_EC_EDWARDS, bytes.fromhex("06032b6570"),
                                 ed.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()), raw)
    sig = ed.sign(DATA)
    sign_verify(script, "CKM_EDDSA", C.CKM_EDDSA, "-", ed_priv, ed_pub, DATA, equals(sig), sig)
    return priv_h, pub_h, ec_pub


def stated_lengths(script, aes, rsa_priv, rsa_pub, ec_pub):
    """Issue 9 (eager copies): a stated length the mechanism cannot take is its
    error code before any input is read (the buffer holds 16 bytes); the error
    ends the operation."""
    huge = 1 << 40
    generic = secret(script, C.CKK_GENERIC_SECRET, b"h" * 32)
    gcm = f"gcm:{bytes(12).hex()}:-:80"
    cases = [("E", "one", C.CKM_RSA_PKCS, "-", rsa_pub, huge, C.CKR_DATA_LEN_RANGE),
             ("D", "one", C.CKM_RSA_PKCS, "-", rsa_priv, huge, C.CKR_ENCRYPTED_DATA_LEN_RANGE),
             ("S", "one", C.CKM_RSA_PKCS, "-", rsa_priv, huge, C.CKR_DATA_LEN_RANGE),
             ("V", "one", C.CKM_ECDSA_SHA256, "-", ec_pub, huge, C.CKR_SIGNATURE_LEN_RANGE),
             ("V", "one", C.CKM_SHA256_HMAC, "-", generic, huge, C.CKR_SIGNATURE_LEN_RANGE),
             ("E", "one", C.CKM_AES_ECB, "-", aes, huge + 1, C.CKR_DATA_LEN_RANGE),
             ("D", "one", C.CKM_AES_CBC, f"raw:{bytes(16).hex()}", aes, huge + 3, C.CKR_ENCRYPTED_DATA_LEN_RANGE),
             ("E", "one", C.CKM_AES_KEY_WRAP, "-", aes, huge + 1, C.CKR_DATA_LEN_RANGE),
             ("E", "one", C.CKM_AES_GCM, gcm, aes, huge, C.CKR_DATA_LEN_RANGE),
             ("E", "upd", C.CKM_AES_GCM, gcm, aes, huge, C.CKR_DATA_LEN_RANGE),
             ("D", "one", C.CKM_AES_GCM, gcm, aes, huge, C.CKR_ENCRYPTED_DATA_LEN_RANGE),
             ("D", "upd", C.CKM_AES_GCM, gcm, aes, huge, C.CKR_ENCRYPTED_DATA_LEN_RANGE)]
    for op, fn, mech, param, key, n, want in cases:
        init = f"init {op} {mech:x} {param} {key}"
        script.group(f"stated length {n:#x}: {C.name_of('CKM_', mech)} {op} {fn}",
                     [init, f"huge {op} {fn} {n:x}", init, f"call {op} fin plain -"],
                     lambda a, want=want: True if a[:3] == ["0", f"{want:x}", "0"] else f"{a}")


def mechanism_list_covered(script):
    def check(answers):
        listed = {int(m, 16): int(f, 16) for m, f in (x.split(":") for x in answers[0].split()[1].split(","))}
        missing = sorted(C.name_of("CKM_", m) for m, f in listed.items()
                         if f & OPERATION_FLAGS and m not in script.covered)
        return True if not missing else f"not in the matrix: {missing}"
    script.checks.append(("every listed mechanism is covered", 0, 1, check))


# --- published vectors through the C ABI --------------------------------------------------
def vectors(script):
    for k, ct in ((AV.K128, AV.ECB128), (AV.K256, AV.ECB256)):
        h = secret(script, C.CKK_AES, k)
        matrix(script, "SP 800-38A ECB encrypt", "E", C.CKM_AES_ECB, "-", h, AV.PT, equals(ct), patterns=("null2",))
        matrix(script, "SP 800-38A ECB decrypt", "D", C.CKM_AES_ECB, "-", h, ct, equals(AV.PT), patterns=("null2",))
    k128 = secret(script, C.CKK_AES, AV.K128)
    for mech, param, ct in ((C.CKM_AES_CBC, f"raw:{AV.CBC_IV.hex()}", AV.CBC128),
                            (C.CKM_AES_CTR, f"ctr:80:{AV.CTR_CB.hex()}", AV.CTR128)):
        matrix(script, "SP 800-38A " + C.name_of("CKM_", mech), "E", mech, param, k128, AV.PT, equals(ct),
               patterns=("null2",))
        matrix(script, "SP 800-38A " + C.name_of("CKM_", mech), "D", mech, param, k128, ct, equals(AV.PT),
               patterns=("null2",))
    g = secret(script, C.CKK_AES, AV.GCM4_K)
    gp = f"gcm:{AV.GCM4_IV.hex()}:{AV.GCM4_A.hex()}:80"
    matrix(script, "GCM test case 4", "E", C.CKM_AES_GCM, gp, g, AV.GCM4_P, equals(AV.GCM4_C + AV.GCM4_T),
           patterns=("null2",))
    matrix(script, "GCM test case 4", "D", C.CKM_AES_GCM, gp, g, AV.GCM4_C + AV.GCM4_T, equals(AV.GCM4_P),
           patterns=("null2",))
    for n, line in enumerate(nist_vectors().splitlines()):
        kind, key, iv, aad, *rest = line.split()
        h = secret(script, C.CKK_AES, bytes.fromhex(key))
        unhex = (lambda s: b"" if s == "-" else bytes.fromhex(s))
        if kind == "E":
            pt, ct, tag = map(unhex, rest)
            param = f"gcm:{iv}:{aad}:{len(tag) * 8:x}"
            sequence(script, f"NIST GCM encrypt {n}", "E", C.CKM_AES_GCM, param, h, None, "null2", equals(ct + tag),
                     data=pt)
        else:
            ct, tag = unhex(rest[0]), unhex(rest[1])
            param = f"gcm:{iv}:{aad}:{len(tag) * 8:x}"
            if rest[2] == "FAIL":
                sequence(script, f"NIST GCM decrypt {n} (FAIL)", "D", C.CKM_AES_GCM, param, h, None, "null2",
                         None, C.CKR_ENCRYPTED_DATA_INVALID, data=ct + tag)
            else:
                sequence(script, f"NIST GCM decrypt {n}", "D", C.CKM_AES_GCM, param, h, None, "null2",
                         equals(unhex(rest[2])), data=ct + tag)
    for kek_len, data_len, wrapped in AV.RFC3394:
        h = secret(script, C.CKK_AES, AV.KEK[:kek_len])
        w = bytes.fromhex(wrapped)
        matrix(script, "RFC 3394", "E", C.CKM_AES_KEY_WRAP, "-", h, AV.KEYDATA[:data_len], equals(w),
               patterns=("null2",))
        matrix(script, "RFC 3394", "D", C.CKM_AES_KEY_WRAP, "-", h, w, equals(AV.KEYDATA[:data_len]),
               patterns=("null2",))
    kwp = secret(script, C.CKK_AES, AV.KWP_KEK)
    for data, wrapped in AV.RFC5649:
        matrix(script, "RFC 5649", "E", C.CKM_AES_KEY_WRAP_PAD, "-", kwp, bytes.fromhex(data),
               equals(bytes.fromhex(wrapped)), patterns=("null2",))
        matrix(script, "RFC 5649", "D", C.CKM_AES_KEY_WRAP_PAD, "-", kwp, bytes.fromhex(wrapped),
               equals(bytes.fromhex(data)), patterns=("null2",))
    for n, mac in AV.RFC4493:
        matrix(script, f"RFC 4493 {n}", "S", C.CKM_AES_CMAC, "-", k128, AV.PT[:n], equals(bytes.fromhex(mac)),
               patterns=("null2",))
    for mech, (key, msg), mac in HV.HMAC_VECTORS:
        h = secret(script, C.CKK_GENERIC_SECRET, key)
        matrix(script, "RFC 4231/2202 " + C.name_of("CKM_", mech), "S", mech, "-", h, msg,
               equals(bytes.fromhex(mac)), patterns=("null2",))
    for mech, digest in ((C.CKM_SHA_1, "a9993e364706816aba3e25717850c26c9cd0d89d"),     # FIPS 180 "abc"
                         (C.CKM_SHA256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
                         (C.CKM_SHA512, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
                                        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f")):
        matrix(script, "FIPS 180 abc " + C.name_of("CKM_", mech), "H", mech, "-", "0", b"abc",
               equals(bytes.fromhex(digest)), patterns=("null2",))


# --- the reproductions ------------------------------------------------------
def reproductions(script, aes):
    k = bytes(range(32))
    iv = bytes(range(12))
    gcm = f"gcm:{iv.hex()}:-:80"
    sealed = AESGCM(k).encrypt(iv, b"g" * 144, None)
    for tag, want in ((sealed[-16:], b"g" * 144), (flip(sealed[-16:]), None)):
        lines = [f"init D {C.CKM_AES_GCM:x} {gcm} {aes}"]
        for chunk in (sealed[:-16], tag):
            lines += [f"call D upd null {hx(chunk)}"]
        lines += ["call D fin null -"]

        def check(a, want=want):
            ct_part, tag_part = parse(a[1]), parse(a[2])
            if a[0] != "0" or ct_part[0] or tag_part[0] or ct_part[2][0] != (OK, 144) or tag_part[2][0] != (OK, 16):
                return "Updates: each query answers at least its chunk, the call takes it"
            rv, out, queries = parse(a[3])
            if want is None:
                return True if rv == C.CKR_ENCRYPTED_DATA_INVALID and not out else f"tampered: rv {rv:#x}"
            return True if rv == OK and out == want and queries == [(OK, 144)] else f"final {a[3][:100]}"
        script.group(f"issue 9: GCM decrypt, ciphertext and tag each after a NULL query{' (tampered)' if not want else ''}",
                     lines, check)
    # CBC-PAD encrypt of 100 bytes in 10/30/60-byte Updates, each queried twice
    civ = bytes(16)
    data = bytes(range(100))
    p = sympad.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(k), modes.CBC(civ)).encryptor()
    want = enc.update(p.update(data) + p.finalize()) + enc.finalize()
    sequence(script, "issue 9: CBC-PAD 10/30/60 each queried twice", "E", C.CKM_AES_CBC_PAD, f"raw:{civ.hex()}", aes,
             cut(data, [10, 30, 60]), "null2", lambda out: True if out == want and len(out) == 112 else out.hex())
    # CKR_ARGUMENTS_BAD ends the operation: Encrypt, Decrypt, Digest, DigestFinal, Sign, Verify
    hkey = secret(script, C.CKK_GENERIC_SECRET, b"k" * 32)
    cases = [("E", "one", C.CKM_AES_GCM, gcm, aes), ("D", "one", C.CKM_AES_GCM, gcm, aes),
             ("E", "upd", C.CKM_AES_CBC_PAD, f"raw:{civ.hex()}", aes), ("D", "fin", C.CKM_AES_GCM, gcm, aes),
             ("H", "one", C.CKM_SHA256, "-", "0"), ("H", "fin", C.CKM_SHA256, "-", "0"),
             ("H", "upd", C.CKM_SHA256, "-", "0"), ("S", "one", C.CKM_SHA256_HMAC, "-", hkey),
             ("S", "fin", C.CKM_SHA256_HMAC, "-", hkey), ("V", "one", C.CKM_SHA256_HMAC, "-", hkey),
             ("V", "fin", C.CKM_SHA256_HMAC, "-", hkey)]
    for op, fn, mech, param, key in cases:
        init = f"init {op} {mech:x} {param} {key}"
        script.group(f"issue 9: ARGUMENTS_BAD ends {op} {fn}", [init, f"nul {op} {fn}", f"call {op} fin plain -", init],
                     lambda a: True if a[0] == "0" and a[1] == f"{C.CKR_ARGUMENTS_BAD:x}"
                     and a[2].split()[0] == f"{C.CKR_OPERATION_NOT_INITIALIZED:x}" and a[3] == "0" else f"{a}")
        script.lines.append(f"call {op} fin plain -")        # end what the last init started
        script.checks.append(("cleanup", len(script.lines) - 1, 1, lambda a: True))
    # after a single-part length answer, multi-part calls are refused and leave the operation
    for op, mech, param, key, data in (("E", C.CKM_AES_GCM, gcm, aes, b"abc"),):
        script.group(f"issue 9: single-part query, then Update/Final ({op})",
                     [f"init {op} {mech:x} {param} {key}", f"call {op} one query {hx(data)}",
                      f"call {op} upd plain {hx(data)}", f"call {op} one plain {hx(data)}"],
                     lambda a: True if a[0] == "0" and parse(a[1])[2] == [(OK, 19)]
                     and parse(a[2])[0] == C.CKR_OPERATION_ACTIVE
                     and parse(a[3])[0] == OK and len(parse(a[3])[1]) == 19 else f"{a}")
        final_ends(script, f"init {op} {mech:x} {param} {key}", op, data)


def final_ends(script, init, op, data):
    """A Final after a single-part length answer is refused and, like every Final,
    ends the operation (pkcs11-tool --test-ec ends its C_Sign query so)."""
    script.group(f"issue 9: single-part query, then Final ({op})",
                 [init, f"call {op} one query {hx(data)}", f"call {op} fin plain -", f"call {op} one plain {hx(data)}",
                  init, f"call {op} one plain {hx(data)}"],
                 lambda a: True if a[0] == "0" and parse(a[1])[0] == OK and parse(a[2])[0] == C.CKR_OPERATION_ACTIVE
                 and parse(a[3])[0] == C.CKR_OPERATION_NOT_INITIALIZED and a[4] == "0" and parse(a[5])[0] == OK
                 else f"{a}")


def ecdsa_rules(script):
    """The same rules for raw ECDSA (armed natively on the native path)."""
    eckey = ec.generate_private_key(ec.SECP256R1())
    point = eckey.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    priv, _ = point_keys(script, C.CKK_EC, bytes.fromhex("06082a8648ce3d030107"),
                         eckey.private_numbers().private_value.to_bytes(32, "big"), point)
    init = f"init S {C.CKM_ECDSA:x} - {priv}"
    script.group("issue 9: ECDSA single-part query, then Update",
                 [init, f"call S one query {'00' * 32}", f"call S upd plain {'00' * 32}",
                  f"call S one plain {'00' * 32}"],
                 lambda a: True if a[0] == "0" and parse(a[1])[2] == [(OK, 64)]
                 and parse(a[2])[0] == C.CKR_OPERATION_ACTIVE
                 and parse(a[3])[0] == OK and len(parse(a[3])[1]) == 64 else f"{a}")
    final_ends(script, init, "S", bytes(32))
    for fn in ("one", "fin"):
        script.group(f"issue 9: ARGUMENTS_BAD ends ECDSA {fn}", [init, f"nul S {fn}", "call S fin plain -", init,
                                                               f"call S one plain {'00' * 32}"],
                     lambda a: True if a[0] == "0" and a[1] == f"{C.CKR_ARGUMENTS_BAD:x}"
                     and parse(a[2])[0] == C.CKR_OPERATION_NOT_INITIALIZED and a[3] == "0"
                     and parse(a[4])[0] == OK else f"{a}")


@pytest.fixture(scope="module")
def script():
    s = Script()
    aes = ciphers(s)
    digests(s)
    macs(s, aes)
    stated_lengths(s, aes, *asymmetric(s))
    mechanism_list_covered(s)
    reproductions(s, aes)
    ecdsa_rules(s)
    vectors(s)
    return s


@pytest.mark.parametrize("native", [False, True], ids=["engine", "native"])
def test_output_matrix(c_build, token, script, native):
    answers = script.run(token, c_build("output_drive"), native)
    assert len(answers) > 5000
