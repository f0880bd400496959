"""Root pytest hooks for tests/ and conformance/: under CI=true a skip is a failure unless the
test is listed in PEER_LIMITS below.

A test may skip where something it needs is missing (a peer, a tool, the built module, a
download): that is a convenience on a developer's machine. CI runs on a machine set up by
scripts/setup.sh, where nothing may be missing, so there such a skip FAILS. The only skips
that stay under CI are the documented limits of a peer (a client or a module we compare
with cannot do the thing), each named here with its reason; conformance/README.md explains
them at length.
"""

from __future__ import annotations

import os

import pytest

from conformance.common import MODULES

# node id -> why the peer cannot do it. Anything else that skips fails under CI=true.
PEER_LIMITS = {
    # SoftHSM2 2.6.1, the reference module the conformance runners compare with
    "conformance/test_pkcs11_tool.py::test_builtin_test_ec[softhsm2]":
        "SoftHSM2 2.6.1: pkcs11-tool --test-ec signs with CKM_ECDSA_SHA1, which it lacks",
    "conformance/test_pkcs11_tool.py::test_sign_ecdsa_sha256[softhsm2]":
        "SoftHSM2 2.6.1 offers raw CKM_ECDSA only, no CKM_ECDSA_SHA256",
    "conformance/test_pkcs11_tool.py::test_rsa_oaep_decrypt[softhsm2-SHA256-MGF1-SHA256-sha256]":
        "SoftHSM2 2.6.1 supports RSA-OAEP with SHA-1 only (CKR_ARGUMENTS_BAD)",
    "conformance/test_pkcs11_tool.py::test_builtin_test_with_keys[softhsm2]":
        "SoftHSM2 2.6.1: pkcs11-tool --test decrypts with RSA-OAEP/MGF1-SHA256, which it rejects",
    "conformance/test_openssl_libp11.py::test_rsa_oaep_decrypt[softhsm2-sha256]":
        "SoftHSM2 2.6.1 supports RSA-OAEP with SHA-1 only",
    "conformance/test_python_pkcs11.py::test_python_pkcs11[softhsm2-rsa_oaep_sha256]":
        "SoftHSM2 2.6.1 supports RSA-OAEP with SHA-1 only",
    "tests/backends/test_engine_backends.py::test_rsa_encrypt_decrypt[softhsm-oaep-sha256]":
        "SoftHSM2 2.6 decrypts OAEP with SHA-1 only",
    # OpenSC 0.23's pkcs11-tool, a client (both modules)
    **{f"conformance/test_pkcs11_tool.py::test_aes_encrypt_decrypt[{m}-AES-GCM-True]":
       "pkcs11-tool 0.23 --encrypt has no GCM parameters (--aad, --tag-bits-len)" for m in MODULES},
    **{f"conformance/test_pkcs11_tool.py::test_aes_encrypt_decrypt[{m}-AES-CTR-True]":
       "pkcs11-tool 0.23 --encrypt has no CTR counter option" for m in MODULES},
    **{f"conformance/test_pkcs11_tool.py::test_threads[{m}]":
       "pkcs11-tool 0.23 --test-threads races its own cleanup (SIGSEGV with SoftHSM2 too)"
       for m in MODULES},
    # FerroHSM's own backends (README's backend table)
    "tests/backends/test_engine_backends.py::test_ecdh[tpm2]": "the TPM backend does no ECDH",
}


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def peer_limit(nodeid: str) -> str | None:
    """The documented reason `nodeid` may skip, or None."""
    return PEER_LIMITS.get(nodeid)


def _skip_reason(report) -> str:
    lr = report.longrepr
    return lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)


def _fail_skip(report) -> None:
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, and not a documented peer limit "
                       f"(conftest.py PEER_LIMITS): {_skip_reason(report)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (_ci() and report.skipped and not hasattr(report, "wasxfail")
            and peer_limit(report.nodeid) is None):
        _fail_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole file skipped at collection (pytest.importorskip, module-level skip)."""
    outcome = yield
    report = outcome.get_result()
    if _ci() and report.skipped and peer_limit(report.nodeid) is None:
        _fail_skip(report)
