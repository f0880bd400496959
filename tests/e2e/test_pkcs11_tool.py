"""The module through OpenSC's pkcs11-tool (a C client that dlopen()s it
RTLD_LOCAL), with OpenSSL verifying what the token signs."""

import os

import pytest

from .conftest import SO_PIN, USER_PIN, write_conf

IV = "000102030405060708090a0b0c0d0e0f"


def out(proc) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


def test_show_info_and_free_slot(hsm):
    assert "Cryptoki version 3.0" in out(hsm.tool("--show-info"))
    slots = out(hsm.tool("--list-slots"))
    assert "FerroHSM slot 0" in slots and "uninitialized" in slots


def test_init_token_leaves_a_free_slot(token):
    slots = out(token.tool("--list-slots"))
    assert "token label        : e2e" in slots
    assert "uninitialized" in slots                      # the next free slot
    mechs = out(token.tool("--token-label", "e2e", "--list-mechanisms"))
    for name in ("ECDSA", "RSA-PKCS", "AES-GCM", "SHA256"):
        assert name in mechs, mechs


def test_tool_self_test(token):
    report = out(token.user("--test"))
    assert "No errors" in report, report


def test_fork_and_threads(token):
    assert token.tool("--test-fork").returncode == 0
    report = out(token.tool("--test-threads", "ININGISLT0", "--test-threads", "ININGISLT0",
                            "--test-threads", "GISLT0"))
    assert "token label        : e2e" in report, report


def _verify_with_openssl(token, key_id: str, digest: str, msg, sig) -> None:
    token.tool("--token-label", "e2e", "--read-object", "--type", "pubkey", "--id", key_id, "-o", "pub.der")
    token.run("openssl", "pkey", "-pubin", "-inform", "DER", "-in", "pub.der", "-out", "pub.pem")
    proc = token.run("openssl", "dgst", f"-{digest}", "-verify", "pub.pem", "-signature", sig, msg)
    assert b"Verified OK" in proc.stdout


def test_ec_p256_sign_verified_by_openssl(token):
    token.user("--keypairgen", "--key-type", "EC:prime256v1", "--id", "01", "--label", "ec")
    (token.root / "msg").write_bytes(b"FerroHSM signs this.\n")
    token.user("--sign", "--id", "01", "-m", "ECDSA-SHA256", "--signature-format", "openssl",
               "-i", "msg", "-o", "sig")
    _verify_with_openssl(token, "01", "sha256", "msg", "sig")


def test_rsa_2048_sign_verified_by_openssl(token):
    token.user("--keypairgen", "--key-type", "rsa:2048", "--id", "02", "--label", "rsa")
    (token.root / "msg").write_bytes(os.urandom(1000))
    token.user("--sign", "--id", "02", "-m", "SHA256-RSA-PKCS", "-i", "msg", "-o", "sig")
    _verify_with_openssl(token, "02", "sha256", "msg", "sig")


def test_aes_cbc_pad_round_trip(token):
    token.user("--keygen", "--key-type", "AES:32", "--id", "03", "--label", "aes")
    plain = os.urandom(100)
    (token.root / "pt").write_bytes(plain)
    token.user("--encrypt", "--id", "03", "-m", "AES-CBC-PAD", "--iv", IV, "-i", "pt", "-o", "ct")
    assert len((token.root / "ct").read_bytes()) == 112
    token.user("--decrypt", "--id", "03", "-m", "AES-CBC-PAD", "--iv", IV, "-i", "ct", "-o", "pt2")
    assert (token.root / "pt2").read_bytes() == plain


def test_object_made_by_one_process_is_found_by_another(token):
    token.user("--keygen", "--key-type", "AES:16", "--id", "04", "--label", "shared-key")
    listing = out(token.user("--list-objects", "--type", "secrkey"))
    assert "shared-key" in listing


@pytest.mark.timeout(300)
def test_wrong_pins_lock_the_user_pin_across_processes(token):
    write_conf(token.root, failure_delay=0)                    # no waits after failures: a fast test
    # the 10th wrong PIN still answers CKR_PIN_INCORRECT and locks (as SoftHSM2 does)
    for attempt in range(1, 11):
        proc = token.tool("--token-label", "e2e", "--login", "--pin", "999999", "--list-objects", check=False)
        assert proc.returncode != 0 and "CKR_PIN_INCORRECT" in out(proc), (attempt, out(proc))
    proc = token.user("--list-objects", check=False)          # a new process, the right PIN
    assert proc.returncode != 0 and "CKR_PIN_LOCKED" in out(proc), out(proc)
    assert "user PIN locked" in out(token.tool("--list-slots"))
    # the SO can give the user a new PIN
    token.tool("--token-label", "e2e", "--login", "--login-type", "so", "--so-pin", SO_PIN,
               "--init-pin", "--new-pin", USER_PIN)
    token.user("--list-objects")
