"""Backend precedence and fallback, key migration, and backends coming back (engine level)."""

import json

import pytest

from provider import constants as C
from provider.library import Library
from provider.mechanisms.params import Mechanism
from provider import migrate
from provider.migrate import LOG_NAME, migrate_key

from .engine_env import PIN, RW, Env, backend_settings, init_token, rv, write_config

ECDSA = Mechanism(C.CKM_ECDSA_SHA256)


def _token_then_policy(tmp_path, backends, policy, label="t-policy"):
    """Make the token under a config without policy, then open it under `policy`."""
    lib = Library(write_config(tmp_path, {}, (["soft"], "none"), "nobody"))
    init_token(lib, label)
    lib.finalize()
    return Library(write_config(tmp_path, backends, policy, label))


def _session(lib, slot) -> Env:
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, PIN)
    return Env(lib, slot, s, "")


DEAD_TPM = 'type = "tpm2"\ntcti = "swtpm:path=/nonexistent/ferrohsm-test.sock"\ntimeout = 3.0\n'


def test_tpm_down_fallback_none_token_absent(tmp_path):
    lib = _token_then_policy(tmp_path, {"tpm": DEAD_TPM}, (["tpm"], "none"))
    try:
        slot = 0
        assert slot not in lib.get_slot_list(True) and slot in lib.get_slot_list(False)
        flags = lib.get_slot_info(slot)["flags"]
        assert flags & C.CKF_REMOVABLE_DEVICE and not flags & C.CKF_TOKEN_PRESENT
        assert rv(lib.get_token_info, slot) == C.CKR_TOKEN_NOT_PRESENT
        assert rv(lib.open_session, slot, RW) == C.CKR_TOKEN_NOT_PRESENT
    finally:
        lib.finalize()
    log = (tmp_path / "ferrohsm.log").read_text()
    assert "no healthy backend (tpm:" in log and "fallback = none: token not present" in log


def test_tpm_down_fallback_software_serves_and_logs(tmp_path):
    lib = _token_then_policy(tmp_path, {"tpm": DEAD_TPM}, (["tpm"], "software"))
    try:
        env = _session(lib, 0)
        pub, priv = env.keypair("ec-p256", "fb", b"fb")
        assert env.attr(priv, C.CKA_FERRO_BACKEND) == C.CKR_ATTRIBUTE_TYPE_INVALID   # engine key
        lib.sign_init(env.session, ECDSA, priv)
        sig = lib.sign(env.session, b"m", 256)
        lib.verify_init(env.session, ECDSA, pub)
        lib.verify(env.session, b"m", sig)
    finally:
        lib.finalize()
    log = (tmp_path / "ferrohsm.log").read_text()
    assert "WARNING" in log and "fallback = software: serving from the engine's keys" in log


@pytest.fixture
def three_tokens(tmp_path, softhsm, swtpm):
    """src (engine keys), dst (SoftHSM2), hw (TPM), in one library."""
    peers = {"softhsm": softhsm, "swtpm": swtpm}
    lib = Library(write_config(tmp_path, {}, (["soft"], "none"), "nobody"))
    for label in ("src", "dst", "hw"):
        init_token(lib, label)
    lib.finalize()
    text = (tmp_path / "ferrohsm.conf").read_text()
    extra = (f"[backends.shsm]\n{backend_settings('softhsm', peers)}"
             f"[backends.tpm]\n{backend_settings('tpm2', peers)}"
             '[token."dst"]\nbackends = ["shsm"]\n[token."hw"]\nbackends = ["tpm"]\n')
    (tmp_path / "ferrohsm.conf").write_text(text.replace('[token."nobody"]', extra + '[token."nobody"]'))
    from provider.config import Config
    lib = Library(Config.parse((tmp_path / "ferrohsm.conf").read_text(), str(tmp_path / "x.conf")))
    yield lib, tmp_path
    lib.finalize()


def test_migrate_soft_to_softhsm(three_tokens):
    lib, path = three_tokens
    src = _session(lib, 0)
    src_pub, src_priv = src.keypair("ec-p256", "moving", b"\x4d", EXTRACTABLE=True)
    lib.close_session(src.session)
    record = migrate_key(lib, "src", PIN, "dst", PIN, b"\x4d", "alice")
    assert record["outcome"] == "ok", record
    assert len(record["sha256_source"]) == 64 and record["verified"]
    assert record["sha256_source"] == record["sha256_destination"]
    assert record["destination"]["backend"] == "shsm" and record["source"]["backend"] == "soft"
    dst = _session(lib, 1)
    [priv] = dst.find(CLASS=C.CKO_PRIVATE_KEY, ID=b"\x4d")
    assert dst.attr(priv, C.CKA_FERRO_BACKEND) == b"shsm"
    assert dst.attr(priv, C.CKA_VALUE) == C.CKR_ATTRIBUTE_SENSITIVE
    [pub] = dst.find(CLASS=C.CKO_PUBLIC_KEY, ID=b"\x4d")
    lib.sign_init(dst.session, ECDSA, priv)
    sig = lib.sign(dst.session, b"after the move", 256)
    lib.verify_init(dst.session, ECDSA, pub)
    lib.verify(dst.session, b"after the move", sig)
    src = _session(lib, 0)
    assert src.find(CLASS=C.CKO_PRIVATE_KEY, ID=b"\x4d") != []        # the source key stays
    logged = [json.loads(line) for line in (path / "tokens" / LOG_NAME).read_text().splitlines()]
    assert logged[-1]["approver"] == "alice" and logged[-1]["outcome"] == "ok"


def test_migrate_refuses_a_blob_changed_in_transit(three_tokens, monkeypatch):
    """Each end hashes its own bytes (the source what it wrapped, the destination what it
    received): a blob altered on the way is refused before the destination unwraps it, and
    both hashes are logged."""
    lib, path = three_tokens
    src = _session(lib, 0)
    src.keypair("ec-p256", "bent", b"\x4e", EXTRACTABLE=True)
    lib.close_session(src.session)
    monkeypatch.setattr(migrate, "transfer", lambda blob: bytes([blob[0] ^ 1]) + bytes(blob[1:]))
    record = migrate_key(lib, "src", PIN, "dst", PIN, b"\x4e", "carol")
    assert record["outcome"] == "failed" and "integrity hash mismatch" in record["reason"], record
    assert record["sha256_source"] != record["sha256_destination"]
    assert _session(lib, 1).find(ID=b"\x4e") == []
    logged = json.loads((path / "tokens" / LOG_NAME).read_text().splitlines()[-1])
    assert (logged["outcome"], logged["sha256_destination"]) == ("failed",
                                                                 record["sha256_destination"])


def test_migrate_tpm_to_soft_refused(three_tokens):
    lib, path = three_tokens
    hw = _session(lib, 2)
    hw.keypair("ec-p256", "stuck", b"\x54")
    lib.close_session(hw.session)
    record = migrate_key(lib, "hw", PIN, "src", PIN, b"\x54", "bob")
    assert record["outcome"] == "refused" and "non-exportable" in record["reason"]
    assert _session(lib, 0).find(ID=b"\x54") == []


def test_tpm_keys_survive_swtpm_restart_and_outage(tmp_path, swtpm):
    lib = _token_then_policy(tmp_path, {"tpm": backend_settings("tpm2", {"swtpm": swtpm})},
                             (["tpm"], "none"))
    try:
        env = _session(lib, 0)
        _, priv = env.keypair("ec-p256", "durable", b"d")
        swtpm.stop()
        try:
            assert rv(lambda: (lib.sign_init(env.session, ECDSA, priv),
                               lib.sign(env.session, b"m", 256))) == C.CKR_DEVICE_ERROR
        finally:
            swtpm.start()
        lib.sign_init(env.session, ECDSA, priv)
        assert len(lib.sign(env.session, b"m", 256)) == 64
    finally:
        lib.finalize()


def test_card_keys_used_after_pcscd_restart(tmp_path, pcsc):
    lib = _token_then_policy(tmp_path, {"card": backend_settings("piv", {"pcsc": pcsc})},
                             (["card"], "none"))
    try:
        env = _session(lib, 0)
        _, priv = env.keypair("ec-p256", "9e", b"c")
        pcsc.pcscd_restart()
        lib.sign_init(env.session, ECDSA, priv)
        assert len(lib.sign(env.session, b"m", 256)) == 64
    finally:
        lib.finalize()
