"""python-pkcs11 as a client: our API walk (clients/python_pkcs11_checks.py, run in a child
process that loads the module in-process, so the embedded shim reuses that interpreter), and
python-pkcs11's own test suite from its PyPI sdist (fetched once by scripts/setup.sh), run
against the module with PKCS11_MODULE, PKCS11_TOKEN_LABEL, PKCS11_TOKEN_PIN and
PKCS11_TOKEN_SO_PIN.

The upstream suite gets its own summary line `python-pkcs11-upstream [module] ...`; tests it
fails on a module are listed in UPSTREAM_KNOWN with their cause, anything else fails here.
"""

import importlib.util
import shutil
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

import pytest

from conformance.common import (REPO, assert_check, check_names, client_env, make_token, run,
                                run_checks, venv_python)

SUITE = "python-pkcs11"
CHECKS = Path(__file__).parent / "clients" / "python_pkcs11_checks.py"
# upstream test id -> cause, per module, recorded from real runs (see README.md). Strict:
# a listed test that passes fails the run, so the list cannot go stale.
_RSA1024 = ("generates a 1024-bit RSA key: FerroHSM's CKM_RSA_PKCS_KEY_PAIR_GEN advertises "
            "ulMinKeySize 2048 and C_GenerateKeyPair returns CKR_KEY_SIZE_RANGE (policy)")
_RSA_SETUP = ("RSATests.setUp generates a 1024-bit RSA key (CKR_KEY_SIZE_RANGE); unittest then "
              "skips tearDown, the logged-in session leaks and the later logins of the file "
              "get CKR_USER_ALREADY_LOGGED_IN")
_FERRO_KNOWN = {
    "ECCTests.test_derive_key": "ECDH on prime192v1: FerroHSM offers P-256..P-521 only, "
                                "C_GenerateKeyPair returns CKR_CURVE_NOT_SUPPORTED (0x140)",
    "RSATests.test_encrypt_oaep": _RSA1024,
    **{f"ExternalPublicKeyTests.{t}": _RSA1024
       for t in ("test_rsa", "test_terrible_hybrid_file_encryption_app")},
    "SessionTests.test_generate_keypair": _RSA1024,
    **{f"X509Tests.{t}": _RSA1024
       for t in ("test_self_sign_certificate", "test_sign_csr", "test_verify_certificate_rsa")},
    **{f"RSATests.{t}": _RSA_SETUP for t in (
        "test_encrypt_too_much_data", "test_key_length", "test_key_wrap", "test_sign_default",
        "test_sign_pkcs_v15", "test_sign_pss", "test_sign_pss_undersized_buffer",
        "test_sign_stream", "test_sign_stream_interrupt_releases_operation",
        "test_sign_stream_undersized_buffer", "test_sign_stream_with_empty_blocks",
        "test_sign_stream_with_reauthentication", "test_sign_with_reauthentication",
        "test_verify_stream_interrupt_releases_operation")},
}
UPSTREAM_KNOWN: dict = {"softhsm2": {}, "ferrohsm": _FERRO_KNOWN}
_spec = importlib.util.spec_from_file_location("fetch_upstream_tests",
                                               REPO / "scripts" / "fetch_upstream_tests.py")
_fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fetch)
upstream_dir = _fetch.upstream_dir  # the one place that knows where setup.sh unpacked them

@pytest.fixture(scope="module")
def results(module):
    return run_checks(module, [venv_python(), CHECKS], env=client_env(module))


@pytest.mark.parametrize("check", check_names(CHECKS))
def test_python_pkcs11(results, check):
    assert_check(results, check)


def _upstream_tests(tmp: Path) -> Path:
    """A private copy of the tests/ of the python-pkcs11 sdist matching the installed version,
    fetched once by scripts/setup.sh (scripts/fetch_upstream_tests.py); never downloaded here."""
    ver = version("python-pkcs11")
    src = upstream_dir(ver)
    if not (src / "tests" / "__init__.py").exists():
        pytest.skip(f"python-pkcs11 {ver} upstream tests not fetched to {src}: "
                    "run scripts/setup.sh (it downloads them)")
    out = tmp / "upstream"
    shutil.copytree(src / "tests", out / "tests")
    return out


def _tally(junit: Path, outcomes: dict):
    """name -> ("passed" | "skipped" | "failed", message) for each test case of a report."""
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}.{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            outcomes[name] = ("failed", (bad.get("message") or "").split("\n")[0][:200])
        elif case.find("skipped") is not None:
            outcomes[name] = ("skipped", case.find("skipped").get("message") or "")
        else:
            outcomes[name] = ("passed", "")


# python-pkcs11 asks, unless the caller says otherwise, for every usage on the keys it makes
# (DEFAULT_KEY_CAPABILITIES: ENCRYPT, DECRYPT, WRAP and UNWRAP together on AES, DES3 and RSA
# keys, sensitive ones too), which key separation refuses (CKR_TEMPLATE_INCONSISTENT). Its
# own tests use those defaults throughout, so they run under the legacy rules; our walk
# (clients/python_pkcs11_checks.py) passes `capabilities` and runs under the default.
UPSTREAM_CONF = "[policy]\nkey_separation = false\n"


def test_upstream_suite(module, extra_summary):
    """On a second, empty token of the same module: the upstream tests expect to find
    "the" RSA/EC key they generated, and the API walk leaves keys behind."""
    module = make_token(module.name, module.tmp / "upstream-token", UPSTREAM_CONF)
    root = _upstream_tests(module.tmp)
    env = dict(client_env(module), OPENSSL_PATH="/usr/bin")
    outcomes: dict = {}
    # one process per test file: a test whose setUp fails after opening a logged-in session
    # leaks that session (unittest skips tearDown), and every later login in the same
    # process would then fail with CKR_USER_ALREADY_LOGGED_IN
    for test_file in sorted((root / "tests").glob("test_*.py")):
        junit = module.path(f"upstream-{test_file.stem}.xml")
        got = run([venv_python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout",
                   "60", f"--junitxml={junit}", f"tests/{test_file.name}"], env, cwd=root,
                  timeout=300, check=False)
        if junit.exists():
            _tally(junit, outcomes)
        else:
            outcomes[test_file.name] = ("failed", "no junit report (test process crashed?)")
        if got.returncode not in (0, 1):  # 1: some tests failed (tallied); else: no verdict
            outcomes[test_file.name] = ("failed", f"pytest rc={got.returncode}: "
                                                  f"{(got.stdout + got.stderr)[-200:]}")
    counts = {v: sum(1 for o, _ in outcomes.values() if o == v)
              for v in ("passed", "failed", "skipped")}
    extra_summary.append(f"python-pkcs11-upstream [{module.name}] passed {counts['passed']} "
                         f"failed {counts['failed']} skipped {counts['skipped']}")
    module.path("upstream-outcomes.txt").write_text(
        "".join(f"{o} {k}: {m}\n" for k, (o, m) in sorted(outcomes.items())))
    known = UPSTREAM_KNOWN[module.name]
    unexpected = [f"  {k}: {m}" for k, (o, m) in sorted(outcomes.items())
                  if o == "failed" and k not in known]
    stale = [f"  {k} passes now: remove it from UPSTREAM_KNOWN" for k in sorted(known)
             if outcomes.get(k, ("",))[0] == "passed"]
    assert not unexpected + stale, "upstream python-pkcs11 suite:\n" + "\n".join(
        unexpected + stale)
