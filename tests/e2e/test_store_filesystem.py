"""The module on `[store] kind = "filesystem"`: pkcs11-tool makes, uses and destroys
keys in a token directory, and a live session in another process sees them come."""

import subprocess
import sys

import pytest

from .conftest import Hsm
from .test_store_files import WATCHER


@pytest.fixture
def fs_token(module, hsm) -> Hsm:
    with open(hsm.conf, "a") as conf:
        conf.write('[store]\nkind = "filesystem"\n')
    hsm.init_token()
    return hsm


def test_keys_live_in_a_token_directory(fs_token):
    (token_dir,) = (fs_token.root / "tokens").iterdir()
    assert token_dir.name.startswith("token-") and token_dir.name.endswith(".d")
    assert not list((fs_token.root / "tokens").glob("*.sqlite"))
    fs_token.user("--keygen", "--key-type", "AES:32", "--id", "41", "--label", "fs-aes")
    (fs_token.root / "pt").write_bytes(b"0123456789abcdef" * 4)
    iv = ("-m", "AES-CBC", "--iv", "00" * 16)
    fs_token.user("--encrypt", "--id", "41", *iv, "-i", "pt", "-o", "ct")
    fs_token.user("--decrypt", "--id", "41", *iv, "-i", "ct", "-o", "back")
    assert (fs_token.root / "back").read_bytes() == (fs_token.root / "pt").read_bytes()
    (obj,) = (token_dir / "keys").iterdir()
    assert (obj / "current.json").exists() and list(obj.glob("v*.json"))
    fs_token.user("--delete-object", "--type", "secrkey", "--id", "41")
    assert b"fs-aes" not in fs_token.user("--list-objects").stdout
    assert (obj / "tombstone.json").exists() and not list(obj.glob("v*.json"))


def test_a_live_session_sees_a_key_another_process_creates(fs_token):
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, fs_token.module], env=fs_token.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline().strip() == "ready", watcher.stderr.read()
        fs_token.user("--keygen", "--key-type", "AES:16", "--id", "42", "--label", "from-other")
        assert watcher.stdout.readline().strip() == "found 1"
    finally:
        watcher.kill()
        watcher.wait(timeout=10)
