"""Bad input through the built module (issue 9): nested templates that refer to
themselves or nest too deep, lengths far beyond their buffers, PINs of 2^31
stated bytes, every listed mechanism's parameter at lengths 0, 1, sizeof-1,
sizeof+1 and filled with garbage, PBKDF2's iteration cap and a 65,536-byte
CK_PKCS5_PBKD2_PARAMS2 password. Each case asserts the spec's code; a crash,
a hang (the timeout) or CKR_GENERAL_ERROR fails it."""


def test_bad_input_from_c(c_build, token):
    from .conftest import SO_PIN, USER_PIN
    exe = c_build("bad_input_check")
    proc = token.run("env", "-i", f"FERROHSM_CONF={token.conf}", exe, token.module, "e2e", USER_PIN, SO_PIN,
                     check=False, timeout=300)
    report = proc.stdout.decode() + proc.stderr.decode()
    assert "FAIL" not in report, report
    assert proc.returncode == 0, report
    assert "0 failures" in report, report
