"""Issue 11 item 12 (native/shim length checks), through the C ABI.

Attack: a client states a length its buffer does not have, within the limits the native
fast path used (GCM's own: 2^36 bytes of text, 2^61 of AAD) but above the engine's
[limits] max_data_len; the native path read that far (a wild read: a crash, or key
stream over foreign memory).  Now both paths refuse it with the engine's code before
reading: tests/e2e/c/limits_check.c, each case on the native path and on the engine's
(FERROHSM_NATIVE=0), one worker thread, then close and finalize from another."""

import pytest

from provider import constants as C
from tests.e2e.test_native_limits import run_case

CASES = {
    "repeat_init_aad_stated": C.CKR_MECHANISM_PARAM_INVALID,
    "encrypt_message_aad_stated": None,           # the engine's answer, whatever it is
    "encrypt_input_stated": C.CKR_DATA_LEN_RANGE,
    "decrypt_input_stated": C.CKR_ENCRYPTED_DATA_LEN_RANGE,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stated_length_beyond_the_buffer_is_refused_on_both_paths(c_build, token, case):
    exe = c_build("limits_check")
    engine, _ = run_case(token, exe, case, False)
    native, _ = run_case(token, exe, case, True)
    want = CASES[case] if CASES[case] is not None else engine
    assert want != C.CKR_OK and engine == want, f"engine path: 0x{engine:x}, want 0x{want:x}"
    assert native == want, f"native path: 0x{native:x}, want 0x{want:x}"


def test_pbkd2_params_of_a_2x_caller_are_refused_not_read(c_build, token):
    """A 2.x CK_PKCS5_PBKD2_PARAMS (ulPasswordLen a pointer) at the addresses programs
    have: CKR_MECHANISM_PARAM_INVALID, no crash; a 3.0 password up to 65,535 bytes works."""
    from tests.e2e.conftest import USER_PIN
    exe = c_build("pbkd2_check")
    proc = token.run("env", "-i", f"FERROHSM_CONF={token.conf}", exe, token.module, "e2e", USER_PIN,
                     check=False, timeout=120)
    report = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0 and "FAIL" not in report and "0 failures" in report, report
