"""OpenSC pkcs11-tool 0.23 against the module: self-tests, key generation, sign/verify,
encrypt/decrypt, wrap/unwrap, ECDH, objects and PINs.

Facts respected: keys are picked by --id (labels alone are unreliable in 0.23); ECDSA and
EdDSA signatures are verified with openssl, since pkcs11-tool's --verify uses
C_VerifyUpdate even for single-part mechanisms.
"""

import hashlib
import os

import pytest

from conformance.common import openssl_verify, run, self_signed_cert, skip_softhsm

SUITE = "pkcs11-tool"
DATA = os.urandom(100)

KEYPAIRS = {  # key type -> CKA_ID (hex); keys are always picked by id
    "rsa:2048": "a1", "rsa:3072": "a2", "EC:prime256v1": "b1", "EC:secp384r1": "b2",
    "EC:secp521r1": "b3", "EC:edwards25519": "c1",
}


@pytest.fixture(scope="module")
def data(module):
    path = module.path("data.bin")
    path.write_bytes(DATA)
    return path


@pytest.fixture(scope="module")
def pubkeys(module):
    return {}


def test_list_mechanisms(module):
    out = module.mechanisms()
    for mech in ("RSA-PKCS", "RSA-PKCS-PSS", "ECDSA", "AES-CBC", "AES-GCM", "SHA256"):
        assert module.has_mechanism(mech), f"{mech} missing from --list-mechanisms:\n{out}"


def test_show_info_and_slots(module):
    out = run(["pkcs11-tool", "--module", module.lib, "--show-info"], module.env).stdout
    assert "Cryptoki version" in out
    out = run(["pkcs11-tool", "--module", module.lib, "--list-slots"], module.env).stdout
    assert module.label in out


def test_builtin_test(module):
    """pkcs11-tool --test on the fresh token: digests, random, session and login checks."""
    out = module.tool("--test", timeout=180)
    assert "No errors" in out.stdout, out.stdout


def test_builtin_test_ec(module):
    skip_softhsm(module, "--test-ec signs with CKM_ECDSA_SHA1, which SoftHSM2 lacks")
    out = module.tool("--test-ec", "--session-rw", "--id", "e0", "--key-type", "EC:prime256v1",
                      timeout=180)
    assert "error" not in out.stdout.lower().replace("no errors", ""), out.stdout


def test_generate_random(module):
    out = module.path("rnd.bin")
    module.tool("--generate-random", "64", "-o", out, login=False)
    assert len(out.read_bytes()) == 64


def test_hash(module, data):
    out = module.path("digest.bin")
    module.tool("--hash", "-m", "SHA256", "-i", data, "-o", out, login=False)
    assert out.read_bytes() == hashlib.sha256(DATA).digest()


@pytest.mark.parametrize("key_type", list(KEYPAIRS))
def test_keypairgen(module, pubkeys, key_type):
    kid = KEYPAIRS[key_type]
    usage = ("sign", "decrypt") if key_type.startswith("rsa") else (
        ("sign",) if "edwards" in key_type else ("sign", "derive"))
    pubkeys[key_type] = module.keypair(key_type, kid, f"kp-{kid}", *usage)
    objs = module.tool("--list-objects", "--id", kid).stdout
    assert "Private Key Object" in objs and "Public Key Object" in objs, objs


def _pub(pubkeys, key_type):
    if key_type not in pubkeys:
        pytest.skip(f"key pair {key_type} was not generated")
    return pubkeys[key_type]


@pytest.mark.parametrize("key_type,mech,sigopts", [
    ("rsa:2048", "SHA256-RSA-PKCS", []),
    ("rsa:3072", "SHA384-RSA-PKCS", []),
    ("rsa:2048", "SHA256-RSA-PKCS-PSS", ["rsa_padding_mode:pss", "rsa_pss_saltlen:32"]),
])
def test_sign_rsa(module, pubkeys, data, key_type, mech, sigopts):
    pub, sig = _pub(pubkeys, key_type), module.path(f"sig-{mech}")
    extra = []  # pkcs11-tool derives hash, MGF1 and salt length (digest size) from the mechanism
    module.tool("--sign", "-m", mech, "--id", KEYPAIRS[key_type], "-i", data, "-o", sig, *extra)
    digest = "sha384" if "SHA384" in mech else "sha256"
    openssl_verify(module, pub, data, sig, *sigopts, digest=digest)
    # pkcs11-tool's own --verify (multi-part) must agree for the RSA families
    module.tool("--verify", "-m", mech, "--id", KEYPAIRS[key_type], "-i", data,
                "--signature-file", sig, *extra)


@pytest.mark.parametrize("key_type,digest", [
    ("EC:prime256v1", "sha256"), ("EC:secp384r1", "sha384"), ("EC:secp521r1", "sha512")])
def test_sign_ecdsa(module, pubkeys, data, key_type, digest):
    pub, sig, h = _pub(pubkeys, key_type), module.path(f"sig-{digest}"), module.path(f"h-{digest}")
    h.write_bytes(hashlib.new(digest, DATA).digest())
    module.tool("--sign", "-m", "ECDSA", "--id", KEYPAIRS[key_type], "-i", h, "-o", sig,
                "--signature-format", "openssl")
    openssl_verify(module, pub, data, sig, digest=digest)


def test_sign_ecdsa_sha256(module, pubkeys, data):
    if not module.has_mechanism("ECDSA-SHA256"):
        skip_softhsm(module, "ECDSA-SHA256 not offered (only raw ECDSA)")
    pub, sig = _pub(pubkeys, "EC:prime256v1"), module.path("sig-ecdsa-sha256")
    module.tool("--sign", "-m", "ECDSA-SHA256", "--id", "b1", "-i", data, "-o", sig,
                "--signature-format", "openssl")
    openssl_verify(module, pub, data, sig)


def test_sign_eddsa(module, pubkeys, data):
    pub, sig = _pub(pubkeys, "EC:edwards25519"), module.path("sig-eddsa")
    module.tool("--sign", "-m", "EDDSA", "--id", "c1", "-i", data, "-o", sig)
    openssl_verify(module, pub, data, sig, digest=None)


def test_hmac_sign_verify(module, data):
    module.tool("--keygen", "--key-type", "GENERIC:32", "--id", "d1", "--label", "hmac",
                "--usage-sign")
    sig = module.path("hmac.sig")
    module.tool("--sign", "-m", "SHA256-HMAC", "--id", "d1", "-i", data, "-o", sig)
    assert len(sig.read_bytes()) == 32
    module.tool("--verify", "-m", "SHA256-HMAC", "--id", "d1", "-i", data, "--signature-file", sig)


@pytest.fixture(scope="module")
def aes_key(module):
    module.tool("--keygen", "--key-type", "AES:32", "--id", "f1", "--label", "aes",
                "--usage-decrypt")
    return "f1"


@pytest.mark.parametrize("mech,iv", [("AES-CBC-PAD", True), ("AES-CBC", True),
                                     ("AES-ECB", False), ("AES-GCM", True), ("AES-CTR", True)])
def test_aes_encrypt_decrypt(module, aes_key, mech, iv):
    if mech in ("AES-GCM", "AES-CTR"):
        pytest.skip(f"pkcs11-tool 0.23 --encrypt has no {mech} (no --aad/--tag-bits-len/counter "
                    "options); covered by the python-pkcs11, PyKCS11 and Java suites")
    plain = module.path(f"plain-{mech}")
    plain.write_bytes(os.urandom(64 if mech != "AES-CBC-PAD" else 61))
    enc, dec = module.path(f"enc-{mech}"), module.path(f"dec-{mech}")
    ivargs = ["--iv", "000102030405060708090a0b0c0d0e0f"] if iv else []
    module.tool("--encrypt", "-m", mech, "--id", aes_key, "-i", plain, "-o", enc, *ivargs)
    assert enc.read_bytes() != plain.read_bytes()
    module.tool("--decrypt", "-m", mech, "--id", aes_key, "-i", enc, "-o", dec, *ivargs)
    assert dec.read_bytes() == plain.read_bytes()


@pytest.mark.parametrize("hash_alg,mgf,ossl_md", [("SHA-1", "MGF1-SHA1", "sha1"),
                                                  ("SHA256", "MGF1-SHA256", "sha256")])
def test_rsa_oaep_decrypt(module, pubkeys, hash_alg, mgf, ossl_md):
    if ossl_md != "sha1":
        skip_softhsm(module, "2.6.1 supports RSA-OAEP with SHA-1 only (CKR_ARGUMENTS_BAD)")
    pub = _pub(pubkeys, "rsa:2048")
    plain, enc, dec = (module.path(f"{n}-oaep-{ossl_md}") for n in ("plain", "enc", "dec"))
    plain.write_bytes(os.urandom(32))
    run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", pub, "-in", plain, "-out", enc,
         "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{ossl_md}",
         "-pkeyopt", f"rsa_mgf1_md:{ossl_md}"], module.env)
    module.tool("--decrypt", "-m", "RSA-PKCS-OAEP", "--hash-algorithm", hash_alg, "--mgf", mgf,
                "--id", "a1", "-i", enc, "-o", dec)
    assert dec.read_bytes() == plain.read_bytes()


def test_wrap_unwrap_aes_key_wrap(module):
    """Wrap an extractable AES key with AES-KEY-WRAP, unwrap it as a new key, and show both
    keys encrypt alike."""
    module.tool("--keygen", "--key-type", "AES:32", "--id", "f2", "--label", "kek", "--usage-wrap")
    module.tool("--keygen", "--key-type", "AES:16", "--id", "f3", "--label", "tgt",
                "--extractable", "--usage-decrypt")
    wrapped = module.path("wrapped.bin")
    module.tool("--wrap", "-m", "AES-KEY-WRAP", "--id", "f2", "--application-id", "f3",
                "-o", wrapped)
    assert len(wrapped.read_bytes()) == 24
    module.tool("--unwrap", "-m", "AES-KEY-WRAP", "--id", "f2", "-i", wrapped,
                "--application-id", "f4", "--application-label", "unwrapped", "--key-type", "AES:")
    plain = module.path("plain-wrap")
    plain.write_bytes(os.urandom(32))
    outs = []
    for kid in ("f3", "f4"):
        out = module.path(f"enc-wrap-{kid}")
        module.tool("--encrypt", "-m", "AES-ECB", "--id", kid, "-i", plain, "-o", out)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_ecdh_derive(module, pubkeys):
    """ECDH1-DERIVE on the token equals openssl's derive with the peer's private key."""
    pub = _pub(pubkeys, "EC:prime256v1")
    peer, peer_pub = module.path("peer.pem"), module.path("peer-pub.der")
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", peer], module.env)
    run(["openssl", "pkey", "-in", peer, "-pubout", "-outform", "DER", "-out", peer_pub],
        module.env)
    mine, theirs = module.path("ecdh-token.bin"), module.path("ecdh-openssl.bin")
    module.tool("--derive", "-m", "ECDH1-DERIVE", "--id", "b1", "-i", peer_pub, "-o", mine)
    run(["openssl", "pkeyutl", "-derive", "-inkey", peer, "-peerkey", pub, "-out", theirs],
        module.env)
    assert mine.read_bytes() == theirs.read_bytes()


def test_certificate_objects(module):
    """--write-object a certificate, --read-object it back, --delete-object it."""
    _, der = self_signed_cert(module, "tool-cert")
    module.tool("--write-object", der, "--type", "cert", "--id", "99", "--label", "tool-cert")
    assert "tool-cert" in module.tool("--list-objects", "--type", "cert").stdout
    back = module.path("tool-cert-back.der")
    module.tool("--read-object", "--type", "cert", "--id", "99", "-o", back)
    assert back.read_bytes() == der.read_bytes()
    module.tool("--delete-object", "--type", "cert", "--id", "99")
    assert "tool-cert" not in module.tool("--list-objects", "--type", "cert").stdout


def test_data_object(module):
    blob = module.path("blob.bin")
    blob.write_bytes(b"conformance data object")
    module.tool("--write-object", blob, "--type", "data", "--label", "blob",
                "--application-label", "conf")
    back = module.path("blob-back.bin")
    module.tool("--read-object", "--type", "data", "--label", "blob", "-o", back)
    assert back.read_bytes() == blob.read_bytes()
    module.tool("--delete-object", "--type", "data", "--label", "blob")


def test_change_pin_and_back(module):
    run(["pkcs11-tool", "--module", module.lib, "--token-label", module.label, "--login",
         "--pin", module.pin, "--change-pin", "--new-pin", "654321"], module.env)
    bad = run(["pkcs11-tool", "--module", module.lib, "--token-label", module.label, "--login",
               "--pin", module.pin, "--list-objects"], module.env, check=False)
    assert bad.returncode != 0 and "CKR_PIN_INCORRECT" in bad.stderr, bad.stderr
    run(["pkcs11-tool", "--module", module.lib, "--token-label", module.label, "--login",
         "--pin", "654321", "--change-pin", "--new-pin", module.pin], module.env)
    module.tool("--list-objects")


def test_init_pin_by_so(module):
    run(["pkcs11-tool", "--module", module.lib, "--token-label", module.label, "--login",
         "--login-type", "so", "--so-pin", module.so_pin, "--init-pin", "--new-pin",
         module.pin], module.env)
    module.tool("--list-objects")


def test_threads(module):
    """--test-threads exists in 0.23 but the tool races its own cleanup against the running
    threads: 1 or 2 threads of `ILGISLT0` crash it (SIGSEGV/SIGABRT) in 3-6 of 10 runs with
    SoftHSM2 too. Concurrency is covered by the Java suite's 4-thread sign loop instead."""
    pytest.skip("pkcs11-tool 0.23 --test-threads crashes by itself (SIGSEGV, SoftHSM2 too)")


def test_builtin_test_with_keys(module):
    """pkcs11-tool --test again, now that RSA/EC/Ed25519 keys exist: it signs, verifies,
    decrypts and unwraps with every key it can use."""
    skip_softhsm(module, "--test decrypts with RSA-OAEP and MGF1-SHA256, which 2.6.1 rejects "
                         "(C_DecryptInit: CKR_ARGUMENTS_BAD)")
    out = module.tool("--test", timeout=300)
    assert "No errors" in out.stdout, out.stdout
