"""PivBackend against a real PC/SC stack: private pcscd + vpcd + jcecard PIV card
(scripts/peers/pcsc.sh).  jcecard keeps keys in memory: keys are made per test."""

import datetime
import time

import pytest

pytest.importorskip("smartcard", reason="pyscard not installed (requirements-backends.txt)")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from provider import constants as C  # noqa: E402
from provider.backends.piv import PivBackend  # noqa: E402
from provider.errors import PKCS11Error  # noqa: E402
from provider.mechanisms.params import Mechanism  # noqa: E402

from .util import (decrypt_rsa_checked, digest, sign_ecdsa_checked,  # noqa: E402
                   sign_rsa_checked)

PIN, PUK = b"123456", b"12345678"
GONE = (C.CKR_DEVICE_REMOVED, C.CKR_TOKEN_NOT_PRESENT)


@pytest.fixture(scope="module")
def piv(pcsc):
    b = PivBackend(pcsc.reader, timeout=5.0)
    b.login(PIN)
    yield b
    b.close()


def test_health_and_pin_counter(piv):
    h = piv.health()
    assert h.ok, h.reason
    assert piv.pin_tries_left() == 3 and piv.pin_flags() == 0


@pytest.mark.parametrize("kind,slot,hash_name", [("ec-p256", "9a", "sha256"),
                                                 ("ec-p384", "9c", "sha384"),
                                                 ("ec-p384", "9e", "sha256")])
def test_ecdsa_sign_verifies(piv, kind, slot, hash_name):
    ref = piv.generate(kind, slot)
    sign_ecdsa_checked(piv, ref, hash_name)
    sign_ecdsa_checked(piv, ref, hash_name)   # 9C wants the PIN before every signature


def test_rsa_2048_sign_and_decrypt(piv):
    ref = piv.generate("rsa-2048", "9d")
    for scheme in ("pkcs1", "pss"):
        sign_rsa_checked(piv, ref, scheme)
    decrypt_rsa_checked(piv, ref, "pkcs1")
    decrypt_rsa_checked(piv, ref, "oaep", label=b"ferro")


def test_ecdh_matches_host_side(piv):
    ref = piv.generate("ec-p256", "82")
    card_pub = serialization.load_der_public_key(ref.public_der)
    peer = ec.generate_private_key(ec.SECP256R1())
    point = peer.public_key().public_bytes(serialization.Encoding.X962,
                                           serialization.PublicFormat.UncompressedPoint)
    shared = piv.derive(ref, Mechanism(C.CKM_ECDH1_DERIVE), point)
    assert shared == peer.exchange(ec.ECDH(), card_pub)


def test_certificate_object_roundtrip(piv):
    ref = piv.generate("ec-p256", "9a")
    key = ec.generate_private_key(ec.SECP256R1())     # an issuer of our own for the test
    name = x509.Name([x509.NameAttribute(oid, f"FerroHSM PIV test {oid._name} " + "x" * 30)
                      for oid in (NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
                                  NameOID.LOCALITY_NAME, NameOID.COMMON_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(serialization.load_der_public_key(ref.public_der))
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert len(der) > 255                              # goes out with command chaining
    piv.write_certificate(0x9A, der)
    assert piv.read_certificate(0x9A) == der
    piv.destroy(ref)                                   # overwrites the key, drops the cert
    assert piv.read_certificate(0x9A) is None


def test_wrong_pin_counted_locked_and_unblocked(pcsc, piv):
    other = PivBackend(pcsc.reader)
    try:
        for left, flags in ((2, C.CKF_USER_PIN_COUNT_LOW),
                            (1, C.CKF_USER_PIN_COUNT_LOW | C.CKF_USER_PIN_FINAL_TRY)):
            with pytest.raises(PKCS11Error) as e:
                other.login(b"000000")
            assert e.value.rv == C.CKR_PIN_INCORRECT and f"{left} tries left" in e.value.reason
            assert other.pin_tries_left() == left and other.pin_flags() == flags
        with pytest.raises(PKCS11Error) as e:
            other.login(b"000000")
        assert e.value.rv == C.CKR_PIN_LOCKED
        assert other.pin_flags() == C.CKF_USER_PIN_LOCKED
        with pytest.raises(PKCS11Error) as e:
            other.login(PIN)                           # the right PIN no longer helps
        assert e.value.rv == C.CKR_PIN_LOCKED
        other.unblock_pin(PUK, PIN)
        assert other.pin_tries_left() == 3
    finally:
        other.close()
    sign_ecdsa_checked(piv, piv.generate("ec-p256", "9a"))


def test_keys_usable_after_pcscd_restart(pcsc, piv):
    ref = piv.generate("ec-p256", "9c")
    sign_ecdsa_checked(piv, ref)
    pcsc.pcscd_restart()                # the card (and its keys) stays; our handles die
    sign_ecdsa_checked(piv, ref)        # reconnects, SELECTs, VERIFYs, signs


def test_card_removed_then_back(pcsc, piv):
    ref = piv.generate("ec-p256", "9a")
    pcsc.card_out()
    try:
        t0 = time.monotonic()
        with pytest.raises(PKCS11Error) as e:
            piv.sign(ref, Mechanism(C.CKM_ECDSA), digest("sha256"))
        assert e.value.rv in GONE
        assert not piv.health().ok
        assert time.monotonic() - t0 < 3
    finally:
        pcsc.card_in()
    sign_ecdsa_checked(piv, ref)        # same card back in: same key


def test_emulator_restart_is_another_card(pcsc, piv):
    ref = piv.generate("ec-p256", "9a")
    pcsc.card_stop()                    # jcecard keeps PIV keys in memory only
    try:
        with pytest.raises(PKCS11Error) as e:
            piv.sign(ref, Mechanism(C.CKM_ECDSA), digest("sha256"))
        assert e.value.rv in GONE
    finally:
        pcsc.card_start()
    with pytest.raises(PKCS11Error) as e:   # a new card: the old key is not on it
        piv.sign(ref, Mechanism(C.CKM_ECDSA), digest("sha256"))
    assert e.value.rv == C.CKR_TOKEN_NOT_PRESENT
    sign_ecdsa_checked(piv, piv.generate("ec-p256", "9a"))
