"""The generic pkcs11 backend with a second FerroHSM module as the remote key vault (issue
12): a token of this engine whose keys live in another FerroHSM's token, reached through
its built libferrohsm-pkcs11.so (its own configuration and token directory), as a real
HSM's module would be. Keys are made there, sign there, and verify here; the remote token
holds the private key as a sensitive, non-extractable object."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from provider import constants as C
from provider.library import Library
from provider.mechanisms.params import Mechanism
from tests.e2e.conftest import installed_module

from .engine_env import PIN, Env, init_token, write_config

REMOTE_PIN = "654321"


@pytest.fixture
def remote(tmp_path):
    """A second FerroHSM: its own config and token "vault" (user PIN REMOTE_PIN)."""
    module = installed_module()
    assert module.exists(), "the module is built by scripts/setup.sh"
    root = tmp_path / "remote"
    root.mkdir()
    conf = root / "ferrohsm.conf"
    conf.write_text(f'[tokens]\ndirectory = "{root / "tokens"}"\n[log]\nlevel = "ERROR"\n')
    cli = Path(sys.executable).parent / "ferrohsm"
    subprocess.run([cli, "init-token", "--label", "vault", "--so-pin", "12345678", "--pin", REMOTE_PIN],
                   env={**os.environ, "FERROHSM_CONF": str(conf)}, check=True, capture_output=True, timeout=120)
    pin = root / "pin"
    pin.write_text(REMOTE_PIN)
    pin.chmod(0o600)
    return module, conf, pin


def test_keys_live_in_the_remote_ferrohsm(tmp_path, remote):
    module, conf, pin = remote
    body = (f'type = "pkcs11"\nmodule = "{module}"\ntoken_label = "vault"\npin = "file:{pin}"\n'
            f'security = "software"\ntimeout = 10.0\nenv = {{ FERROHSM_CONF = "{conf}" }}\n')
    local = tmp_path / "local"
    local.mkdir()
    lib = Library(write_config(local, {"vault": body}, (["vault"], "none"), "front"))
    try:
        slot = init_token(lib, "front")
        s = lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
        lib.login(s, C.CKU_USER, PIN)
        env = Env(lib, slot, s, "vault")
        assert lib.backends.health_report()["vault"]["status"] == "available"
        pub, priv = env.keypair("ec-p256", label="remote-key")
        assert env.attr(priv, C.CKA_FERRO_BACKEND) == b"vault"
        lib.sign_init(s, Mechanism(C.CKM_ECDSA), priv)
        digest = bytes(range(32))
        sig = lib.sign(s, digest, 1 << 10)
        point = serialization.load_der_public_key(env.attr(pub, C.CKA_PUBLIC_KEY_INFO))
        half = len(sig) // 2
        point.verify(utils.encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big")),
                     digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    finally:
        lib.finalize()
    # the remote token holds it: a sensitive, never extractable private key
    out = subprocess.run([Path(sys.executable).parent / "ferrohsm", "list-objects", "--token", "vault",
                          "--pin", REMOTE_PIN], env={**os.environ, "FERROHSM_CONF": str(conf)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if "remote-key" in line]
    assert sorted("private key" in row for row in rows) == [False, True]
    assert "private," in next(row for row in rows if "private key" in row) and "sensitive" in out.stdout
