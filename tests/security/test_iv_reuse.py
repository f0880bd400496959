"""Issue 11 item 9: CKG_GENERATE_COUNTER IVs repeated when the token was used from a copy
of its files, or put back from an older copy (keystream reuse under one key).

Now (provider/mechanisms/aes_message.py counter_field, native/message.c make_iv, the
salt from fn_crypto._reserve_iv, the store's checks in sealing.SealingStore._forward):
  - a counter part of 8 bytes or more XORs a random salt per reserved block into its
    high 32 bits: two copies reserving the same counter values still make other IVs;
  - a process that sees the store's counter or head go backwards refuses counter IVs
    (CKR_DEVICE_ERROR) from then on;
  - with the TPM anchor, each reservation advances it: a copy put back is refused.
What remains (SECURITY.md): a 4-byte counter part on a copy or an older copy, without the
anchor, in a process that never saw the newer state - shown by the last test.
Every test runs on the engine's path and the native one (FERROHSM_NATIVE=0/1)."""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from provider import constants as C
from tests.e2e.conftest import USER_PIN, Hsm

HERE = Path(__file__).resolve().parent


class Steps:
    """One running client process (iv_steps.py) on `hsm`'s token."""

    def __init__(self, hsm, native: str):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "iv_steps.py"), hsm.module, USER_PIN],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**hsm.env, "FERROHSM_NATIVE": native}, cwd=hsm.root, text=True)
        self.first = self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"iv_steps died: {self.proc.stderr.read()}")
        return json.loads(line)

    def __call__(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0, self.proc.stderr.read()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def encrypt_once(hsm, native, gen, n=20) -> dict:
    with Steps(hsm, native) as p:
        if not p.first["ready"]:
            return {"rv": p.first["rv"], "ivs": []}
        return p(op="enc", label="K", n=n, gen=gen)


@pytest.fixture(params=["0", "1"], ids=["engine", "native"])
def native(request) -> str:
    return request.param


def with_key(hsm, native) -> None:
    with Steps(hsm, native) as p:
        assert p.first["ready"], p.first
        assert p(op="make", label="K") == {"rv": C.CKR_OK}


def copy_of(hsm, root: Path) -> Hsm:
    """A second token directory holding a copy of `hsm`'s token files (its own config)."""
    other = Hsm(hsm.module, root)
    other.conf.write_text(hsm.conf.read_text().replace(str(hsm.root / "tokens"), str(root / "tokens")))
    shutil.copytree(hsm.root / "tokens", root / "tokens")
    return other


def test_two_copies_make_no_common_iv(token, tmp_path, native):
    """The token's files copied; each copy encrypts with CKG_GENERATE_COUNTER and an 8-byte
    counter part from the same stored counter: no IV in common."""
    with_key(token, native)
    other = copy_of(token, tmp_path / "copy")
    a, b = encrypt_once(token, native, 8), encrypt_once(other, native, 8)
    assert a["rv"] == b["rv"] == C.CKR_OK and len(a["ivs"]) == len(b["ivs"]) == 20
    assert all(iv.startswith("f1f2f3f4") for iv in a["ivs"] + b["ivs"])
    assert not set(a["ivs"]) & set(b["ivs"]), "the two copies made the same IV"


@pytest.mark.parametrize("gen", [4, 8])
def test_counter_put_back_in_a_running_process(token, native, gen):
    """The key's stored counter set back (the file writer's edit) while a process uses the
    key: its next reservation is refused, CKR_DEVICE_ERROR, and so is every later one."""
    with_key(token, native)
    with Steps(token, native) as p:
        first = p(op="enc", label="K", n=3, gen=gen)
        assert first["rv"] == C.CKR_OK and len(first["ivs"]) == 3
        [db] = (token.root / "tokens").glob("token-*.sqlite")
        conn = sqlite3.connect(db)
        conn.execute("UPDATE counters SET next = 0")
        conn.commit()
        conn.close()
        again = p(op="enc", label="K", n=3, gen=gen)
        assert again == {"rv": C.CKR_DEVICE_ERROR, "ivs": []}
        assert p(op="enc", label="K", n=1, gen=gen)["rv"] == C.CKR_DEVICE_ERROR


def test_older_copy_put_back_in_a_running_process(hsm, tmp_path, native):
    """Filesystem store: the whole token directory put back from a copy taken before the
    running process reserved IVs: its next reservation is refused."""
    hsm.conf.write_text(hsm.conf.read_text() + '[store]\nkind = "filesystem"\n')
    hsm.init_token()
    with_key(hsm, native)
    saved = tmp_path / "saved"
    shutil.copytree(hsm.root / "tokens", saved)
    with Steps(hsm, native) as p:
        assert p(op="enc", label="K", n=3, gen=4)["rv"] == C.CKR_OK
        shutil.rmtree(hsm.root / "tokens")
        shutil.copytree(saved, hsm.root / "tokens")
        assert p(op="enc", label="K", n=3, gen=4) == {"rv": C.CKR_DEVICE_ERROR, "ivs": []}


def test_older_copy_put_back_refused_with_the_anchor(hsm, swtpm, tmp_path, native):
    """With the TPM anchor each reservation advances it: the files put back from before
    a reservation are refused to the next process (its C_Login: CKR_DEVICE_ERROR), so the
    4-byte counter values it would repeat are never used."""
    hsm.conf.write_text(hsm.conf.read_text() + f'[backends.tpm]\ntype = "tpm2"\ntcti = "{swtpm.tcti}"\n'
                        'timeout = 20.0\n[store]\nanchor = "tpm"\n')
    hsm.init_token()
    with_key(hsm, native)
    saved = tmp_path / "saved"
    shutil.copytree(hsm.root / "tokens", saved)
    assert encrypt_once(hsm, native, 4)["rv"] == C.CKR_OK
    shutil.rmtree(hsm.root / "tokens")
    shutil.copytree(saved, hsm.root / "tokens")
    assert encrypt_once(hsm, native, 4) == {"rv": C.CKR_DEVICE_ERROR, "ivs": []}


def test_four_byte_counter_on_a_copy_repeats_without_the_anchor(token, tmp_path, native):
    """The documented limit: a 4-byte counter part has no room for a salt, so a copy used
    by another process, with no anchor, hands out the same IVs."""
    with_key(token, native)
    other = copy_of(token, tmp_path / "copy")
    a, b = encrypt_once(token, native, 4), encrypt_once(other, native, 4)
    assert a["rv"] == b["rv"] == C.CKR_OK
    assert set(a["ivs"]) == set(b["ivs"])
