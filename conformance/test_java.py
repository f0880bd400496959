"""Java SunPKCS11 (the JDK on the machine) against the module.

conformance/java/Conformance.java is compiled by the test with javac into a temp dir and run
once per module; it prints one PASS/FAIL/SKIP line per check and each check is a test here.
SunPKCS11 calls C_GetFunctionList, C_Initialize with CKF_OS_LOCKING_OK, C_GetMechanismInfo for
every mechanism, and for AES/GCM tries the 2.40 CK_GCM_PARAMS first, then the 3.0 layout on
CKR_ARGUMENTS_BAD. Its KeyStore needs unique labels for secret keys.
"""

import shutil
from pathlib import Path

import pytest

from conformance.common import assert_check, run, run_checks

SUITE = "java-sunpkcs11"
SRC = Path(__file__).parent / "java" / "Conformance.java"
EXPORTS = ["--add-exports", "java.base/sun.security.tools.keytool=ALL-UNNAMED",
           "--add-exports", "java.base/sun.security.x509=ALL-UNNAMED"]
CHECKS = ["provider_configure", "keystore_load", "ec_keypair", "rsa_keypair", "sha256_ecdsa",
          "sha256_rsa", "rsassa_pss", "aes_gcm_token_key", "certificate_entry",
          "threads_sign_loop"]


@pytest.fixture(scope="session")
def java_classes(tmp_path_factory):
    if not (shutil.which("javac") and shutil.which("java")):
        pytest.skip("no JDK (javac/java) on PATH")
    out = tmp_path_factory.mktemp("java-classes")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(out), "LANG": "C.UTF-8"}
    run(["javac", *EXPORTS, "-d", out, SRC], env, timeout=180)
    return out


@pytest.fixture(scope="module")
def java_results(module, java_classes):
    module.tool("--keygen", "--key-type", "AES:32", "--id", "6a", "--label", "java-aes",
                "--usage-decrypt")
    cfg = module.path("sunpkcs11.cfg")
    cfg.write_text(f"name = Conformance\nlibrary = {module.lib}\nslot = {module.slot_id}\n")
    return run_checks(module, ["java", *EXPORTS, "-cp", java_classes, "Conformance", cfg,
                               module.pin, "java-aes"])


@pytest.mark.parametrize("check", CHECKS)
def test_java(java_results, check):
    assert_check(java_results, check)
