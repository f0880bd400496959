"""Tpm2Backend against a real swtpm (scripts/peers/tpm.sh), in-process ESAPI."""

import os
import signal
import time

import pytest

pytest.importorskip("tpm2_pytss", reason="tpm2-pytss not installed (requirements-backends.txt)")

from provider import constants as C  # noqa: E402
from provider.backends.tpm2 import Tpm2Backend  # noqa: E402
from provider.errors import PKCS11Error  # noqa: E402
from provider.mechanisms.params import Mechanism  # noqa: E402

from .util import (decrypt_rsa_checked, digest, sign_ecdsa_checked,  # noqa: E402
                   sign_rsa_checked)

SECRET = b"123456"


@pytest.fixture(scope="module")
def tpm(swtpm):
    b = Tpm2Backend(swtpm.tcti, timeout=5.0)
    b.login(SECRET)
    yield b
    b.close()


@pytest.fixture(scope="module")
def rsa_ref(tpm):
    return tpm.generate("rsa-2048", "rsa")


def test_health_and_capabilities(tpm):
    assert tpm.health().ok
    assert ("sign", "ec-p384") in tpm.capabilities()
    assert ("decrypt", "rsa-2048") in tpm.capabilities()
    assert tpm.kind == "hardware" and not tpm.exportable


@pytest.mark.parametrize("kind,hash_name", [("ec-p256", "sha256"), ("ec-p384", "sha384"),
                                            ("ec-p384", "sha256")])
def test_ecdsa_sign_verifies(tpm, kind, hash_name):
    ref = tpm.generate(kind, "ec")
    sig = sign_ecdsa_checked(tpm, ref, hash_name)
    assert len(sig) == {"ec-p256": 64, "ec-p384": 96}[kind]


@pytest.mark.parametrize("scheme", ["pkcs1", "pss"])
def test_rsa_sign_verifies(tpm, rsa_ref, scheme):
    sign_rsa_checked(tpm, rsa_ref, scheme)


@pytest.mark.parametrize("scheme", ["pkcs1", "oaep"])
def test_rsa_decrypt(tpm, rsa_ref, scheme):
    decrypt_rsa_checked(tpm, rsa_ref, scheme)


def test_refusals_are_pkcs11_errors(tpm, rsa_ref):
    with pytest.raises(PKCS11Error) as e:
        tpm.sign(rsa_ref, Mechanism(C.CKM_RSA_PKCS), b"not a DigestInfo")
    assert e.value.rv == C.CKR_DATA_INVALID
    with pytest.raises(PKCS11Error) as e:
        tpm.sign(rsa_ref, Mechanism(C.CKM_ECDSA), digest("sha256"))
    assert e.value.rv == C.CKR_MECHANISM_INVALID
    with pytest.raises(PKCS11Error) as e:
        tpm.sign(_bad_ref(rsa_ref), Mechanism(C.CKM_ECDSA), b"")
    assert e.value.rv == C.CKR_KEY_HANDLE_INVALID


def _bad_ref(ref):
    return type(ref)(b"garbage" + ref.blob, ref.public_der, ref.kind)


def test_many_operations_do_not_leak_transient_slots(tpm):
    ref = tpm.generate("ec-p256", "loop")
    for _ in range(20):            # only 3 transient slots: every load must be flushed
        sign_ecdsa_checked(tpm, ref)


def test_keys_survive_swtpm_restart(swtpm, tpm, rsa_ref):
    ec_ref = tpm.generate("ec-p256", "keep")
    tpm.close()
    swtpm.restart()                # tpm2_shutdown -c, SIGTERM, wait, start on the same state
    again = Tpm2Backend(swtpm.tcti)
    again.login(SECRET)
    try:
        sign_ecdsa_checked(again, ec_ref)
        sign_rsa_checked(again, rsa_ref, "pkcs1")
        counter = swtpm.tool("tpm2_getcap", "properties-variable")
        assert "TPM2_PT_LOCKOUT_COUNTER: 0x0" in counter   # orderly stops count nothing
    finally:
        again.close()
    sign_ecdsa_checked(tpm, ec_ref)    # the old backend reconnects by itself


def test_wrong_auth_is_counted_then_locks(swtpm, tpm):
    ref = tpm.generate("ec-p256", "da")
    swtpm.dictionary_attack(max_tries=3, recovery=1000)
    try:
        assert tpm.pin_tries_left() == 3
        tpm.login(b"654321")
        for left in (2, 1):
            with pytest.raises(PKCS11Error) as e:
                tpm.sign(ref, Mechanism(C.CKM_ECDSA), digest("sha256"))
            assert e.value.rv == C.CKR_PIN_INCORRECT
            assert tpm.pin_tries_left() == left
        with pytest.raises(PKCS11Error) as e:
            tpm.sign(ref, Mechanism(C.CKM_ECDSA), digest("sha256"))
        assert e.value.rv in (C.CKR_PIN_INCORRECT, C.CKR_PIN_LOCKED)
        tpm.login(SECRET)
        with pytest.raises(PKCS11Error) as e:      # now even the right auth is refused
            tpm.sign(ref, Mechanism(C.CKM_ECDSA), digest("sha256"))
        assert e.value.rv == C.CKR_PIN_LOCKED
    finally:
        tpm.login(SECRET)
        swtpm.clear_lockout()
        swtpm.dictionary_attack(max_tries=4294967295, recovery=0)
    sign_ecdsa_checked(tpm, ref)


def test_second_client_flushing_our_primary_is_survived(swtpm, tpm):
    ref = tpm.generate("ec-p256", "two")
    other = Tpm2Backend(swtpm.tcti)
    other.login(SECRET)
    sign_ecdsa_checked(other, ref)     # connecting flushed every transient, ours too
    other.close()
    sign_ecdsa_checked(tpm, ref)       # we re-create the primary and go on


def test_tpm_down_is_device_error_without_hang(swtpm, tpm):
    ref = tpm.generate("ec-p256", "down")
    swtpm.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(PKCS11Error) as e:
            tpm.sign(ref, Mechanism(C.CKM_ECDSA), digest("sha256"))
        assert e.value.rv == C.CKR_DEVICE_ERROR
        assert not tpm.health().ok
        assert time.monotonic() - t0 < 3
    finally:
        swtpm.start()
    sign_ecdsa_checked(tpm, ref)       # back: the same blob works again


def test_hung_tpm_times_out(swtpm):
    b = Tpm2Backend(swtpm.tcti, timeout=1.0)
    b.login(SECRET)
    ref = b.generate("ec-p256", "hang")
    os.kill(swtpm.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(PKCS11Error) as e:
            b.sign(ref, Mechanism(C.CKM_ECDSA), digest("sha256"))
        assert e.value.rv == C.CKR_DEVICE_ERROR
        assert time.monotonic() - t0 < 2.5
    finally:
        os.kill(swtpm.pid, signal.SIGCONT)
    sign_ecdsa_checked(b, ref)
    b.close()
