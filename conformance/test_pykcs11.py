"""PyKCS11 as a client: clients/pykcs11_checks.py run in a child process that loads the
module in-process (the embedded shim then reuses that Python interpreter)."""

from pathlib import Path

import pytest

from conformance.common import assert_check, check_names, client_env, run_checks, venv_python

SUITE = "pykcs11"
CHECKS = Path(__file__).parent / "clients" / "pykcs11_checks.py"


@pytest.fixture(scope="module")
def results(module):
    return run_checks(module, [venv_python(), CHECKS], env=client_env(module))


@pytest.mark.parametrize("check", check_names(CHECKS))
def test_pykcs11(results, check):
    assert_check(results, check)
