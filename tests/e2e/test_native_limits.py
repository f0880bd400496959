"""Lengths above what a buffer (or the mechanism) can hold, through the C ABI on
both paths (issue 9, "The host is never frozen": a length above 2^63 froze the
whole module; "Bad input": C_Sign with 2^31 bytes on the native path).

tests/e2e/c/limits_check.c makes one call with such a length (pointing at a
small real buffer) on an armed operation, then closes the session and finalizes
from another thread. A hang (the old buffer growth spun holding the slot mutex)
trips the subprocess timeout; a memcpy past the heap buffer crashes the program;
both fail here. The native path answers the spec's code before reading the
input; the engine's path answers the same code (pkcs11_shim.handlers_crypto
refuses a length above [limits] max_data_len without reading it)."""

import subprocess

import pytest

from provider import constants as C

from .conftest import USER_PIN
from .test_gcm_fast import run_both

DATA, ENCRYPTED = C.CKR_DATA_LEN_RANGE, C.CKR_ENCRYPTED_DATA_LEN_RANGE
CASES = {
    # C_DecryptUpdate / C_Decrypt on armed AES-GCM
    "decrypt_update_huge": ENCRYPTED, "decrypt_update_wrap": ENCRYPTED, "decrypt_huge": ENCRYPTED,
    # C_Encrypt / C_EncryptUpdate on armed AES-GCM
    "encrypt_wrap": DATA, "encrypt_update_huge": DATA,
    # raw ECDSA
    "sign_update_huge": DATA, "sign_update_wrap": DATA, "sign_huge": DATA,
    # message-based AES-GCM
    "message_next_huge": ENCRYPTED, "message_next_wrap": ENCRYPTED, "decrypt_message_huge": ENCRYPTED,
    "encrypt_message_next_huge": DATA,
}


def run_case(token, exe, case: str, native: bool) -> tuple[int, str]:
    env = {**token.env, "FERROHSM_NATIVE": "1" if native else "0"}
    try:
        proc = token.run("env", "-i", *[f"{k}={v}" for k, v in env.items()], exe, token.module, "e2e",
                         USER_PIN, case, check=False, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case} (native={native}): the module hung")
    report = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0 and "FAIL" not in report, f"{case} (native={native}) rc {proc.returncode}:\n{report}"
    line = next(x for x in report.splitlines() if x.startswith(f"rv {case} "))
    return int(line.split()[2], 16), report


@pytest.mark.parametrize("case", sorted(CASES))
def test_length_out_of_range_answers_at_once(c_build, token, case):
    exe = c_build("limits_check")
    native, _ = run_case(token, exe, case, True)
    assert native == CASES[case], f"native path: 0x{native:x}, want 0x{CASES[case]:x}"
    engine, _ = run_case(token, exe, case, False)
    assert engine == CASES[case], f"engine path: 0x{engine:x}, want 0x{CASES[case]:x}"


def test_sign_2_gib_on_both_paths(c_build, token):
    """Raw ECDSA on the native path takes any length and signs its leftmost bits
    (the signature verifies over the first 32 bytes alone); the engine path
    refuses a buffer above [limits] max_data_len with CKR_DATA_LEN_RANGE."""
    exe = c_build("limits_check")
    assert run_case(token, exe, "sign_2g", True)[0] == C.CKR_OK
    # the engine reads its input, so [limits] max_data_len (64 MiB) bounds it: the spec's code
    assert run_case(token, exe, "sign_2g", False)[0] == C.CKR_DATA_LEN_RANGE


def test_message_two_call_convention_matches_engine(c_build, token):
    """Message-based AES-GCM in every call pattern (plain, NULL then buffer, NULL
    twice, too small then right), 1..3 parts, tampered tags: the same lines on
    both paths and no failure on either (a NULL-buffer C_DecryptMessageNext used
    to take its part, so the call with the buffer took it again)."""
    both = run_both(token, c_build("msg_twocall_check"))
    assert both[True][0] == both[False][0]
    assert any(line.startswith("out sealed ") for line in both[True][0])
