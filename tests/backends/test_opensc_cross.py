"""Cross-check: a signature made through OpenSC's own PKCS#11 module (PIV-II driver)
on the card our PivBackend generated the key on, verified with the public key our
backend read.  Two independent PIV host stacks, one card."""

import shutil
import subprocess

import pytest

pytest.importorskip("smartcard", reason="pyscard not installed (requirements-backends.txt)")

from provider.backends.piv import PivBackend  # noqa: E402

from .util import MSG, verify_ecdsa  # noqa: E402

OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


def test_opensc_signature_verifies_with_our_public_key(pcsc, tmp_path):
    if shutil.which("pkcs11-tool") is None or not __import__("os").path.exists(OPENSC):
        pytest.skip("OpenSC (pkcs11-tool, opensc-pkcs11.so) not installed")
    piv = PivBackend(pcsc.reader)
    try:
        piv.login(b"123456")
        ref = piv.generate("ec-p256", "9a")
    finally:
        piv.close()
    (tmp_path / "9a.der").write_bytes(ref.public_der)
    (tmp_path / "msg").write_bytes(MSG)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),      # no OpenSC cache from elsewhere
           "PCSCLITE_CSOCK_NAME": pcsc.socket, "OPENSC_DRIVER": "PIV-II",
           "PIV_9A_KEY": str(tmp_path / "9a.der")}                # no certificate on the card
    r = subprocess.run(["pkcs11-tool", "--module", OPENSC, "--slot-index", "0", "--login",
                        "--pin", "123456", "--sign", "--mechanism", "ECDSA-SHA256", "--id", "01",
                        "-i", str(tmp_path / "msg"), "-o", str(tmp_path / "sig")],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    verify_ecdsa(ref, (tmp_path / "sig").read_bytes(), "sha256")    # raw r||s from PKCS#11
