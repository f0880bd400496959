"""Through the built module: pkcs11-tool makes an EC key on a TPM-held token and on a
card-held token of FerroHSM, signs with it, and OpenSSL verifies each signature with
the public key pkcs11-tool read back.  The engine then confirms where each key lives."""

import os
import shutil
import subprocess

import pytest

from provider import constants as C
from provider.library import Library
from tests.e2e.conftest import installed_module

from .engine_env import PIN, RW, T, backend_settings, init_token, write_config

pytestmark = pytest.mark.skipif(shutil.which("pkcs11-tool") is None or shutil.which("openssl") is None,
                                reason="pkcs11-tool and openssl needed (scripts/setup.sh)")


def _run(*args, env=None, timeout=60):
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def conf(tmp_path_factory, swtpm, pcsc):
    path = tmp_path_factory.mktemp("e2e-backends")
    peers = {"swtpm": swtpm, "pcsc": pcsc}
    write_config(path, {}, (["soft"], "none"), "nobody")
    config = write_config(path, {"tpm": backend_settings("tpm2", peers),
                                 "card": backend_settings("piv", peers)}, (["tpm"], "none"), "e2e-tpm")
    text = (path / "ferrohsm.conf").read_text() + '[token."e2e-card"]\nbackends = ["card"]\n'
    (path / "ferrohsm.conf").write_text(text)
    lib = Library(config)
    for label in ("e2e-tpm", "e2e-card"):
        init_token(lib, label)
    lib.finalize()                 # one process owns the TPM at a time: let go before clients run
    return path / "ferrohsm.conf"


@pytest.mark.parametrize("label,backend", [("e2e-tpm", b"tpm"), ("e2e-card", b"card")])
def test_pkcs11_tool_signs_openssl_verifies(conf, tmp_path, label, backend):
    mod = str(installed_module())
    if not os.path.exists(mod):
        pytest.skip("the module is not built: pip install . (scripts/setup.sh)")
    env = dict(os.environ, FERROHSM_CONF=str(conf))
    tool = ["pkcs11-tool", "--module", mod, "--token-label", label]
    login = ["--login", "--pin", PIN.decode()]
    _run(*tool, *login, "--keypairgen", "--key-type", "EC:prime256v1", "--id", "e1",
         "--label", "9c" if backend == b"card" else "tpm-ec", env=env)
    msg, sig, pub = tmp_path / "msg", tmp_path / "sig", tmp_path / "pub.der"
    msg.write_bytes(b"signed by a device-held key through FerroHSM\n")
    _run(*tool, *login, "--sign", "--id", "e1", "-m", "ECDSA-SHA256", "--signature-format", "openssl",
         "-i", str(msg), "-o", str(sig), env=env)
    _run(*tool, "--read-object", "--type", "pubkey", "--id", "e1", "-o", str(pub), env=env)
    _run("openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(pub), "-out", str(tmp_path / "pub.pem"))
    out = _run("openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
               "-signature", str(sig), str(msg))
    assert "Verified OK" in out
    from provider.config import Config
    lib = Library(Config.parse(conf.read_text(), str(conf)))
    try:
        slot = next(s for s in lib.get_slot_list(True)
                    if lib.get_token_info(s)["label"].rstrip() == label.encode())
        s = lib.open_session(slot, RW)
        lib.login(s, C.CKU_USER, PIN)
        lib.find_objects_init(s, T(CLASS=C.CKO_PRIVATE_KEY, ID=b"\xe1"))
        [priv] = lib.find_objects(s, 10)
        assert lib.get_attribute_value(s, priv, [C.CKA_FERRO_BACKEND]) == [backend]
    finally:
        lib.finalize()
