"""Two processes on one sqlite token: a rotation, a rollback and a state change made by
one are seen by the other at its next call (the head check), by the governance API and
by the gate every PKCS#11 key use passes."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from provider import constants as C
from provider import gate
from provider.errors import PKCS11Error
from provider.governance import record as R
from provider.mechanisms.params import GcmParams, Mechanism

from .conftest import RW, USER_PIN, init_token, make_library
from .govkit import ALICE, Clock, governance, new_token
from .tmpl import T, ulong

ROOT = Path(__file__).resolve().parents[2]

OTHER = textwrap.dedent("""
    import sys
    from tests.unit.govkit import ALICE, governance, new_token
    from pathlib import Path
    gov = governance(new_token("sqlite", Path(sys.argv[1]), fresh=False))
    for line in sys.stdin:
        op, *args = line.split()
        getattr(gov, op)(ALICE, "k", *map(int, args))
        print("done", flush=True)
""")


class Process:
    """A second process holding the same token open, running governance calls it is sent."""

    def __init__(self, path):
        self.proc = subprocess.Popen([sys.executable, "-c", OTHER, str(path)], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __call__(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done", f"the other process failed on {line!r}"

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


@pytest.fixture
def two(tmp_path):
    token = new_token("sqlite", tmp_path)
    gov = governance(token, Clock())
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    other = Process(tmp_path)
    yield gov, other
    other.close()
    token.store.close()


class Audit:
    """Keeps the gate's audit events (provider.audit.Event) in a list."""
    def __init__(self):
        self.records = []

    def record(self, event):
        self.records.append(event)

    record_in = record


def test_a_rotation_and_a_rollback_are_seen_at_once(two):
    gov, other = two
    assert gov.version_object("k", None, "encrypt").attrs[C.CKA_FERRO_VERSION] == 1
    other("rotate")
    assert gov.get_key("k").primary == 2
    assert gov.version_object("k", None, "encrypt").attrs[C.CKA_FERRO_VERSION] == 2
    other("update_primary 1")
    assert gov.version_object("k", None, "encrypt").attrs[C.CKA_FERRO_VERSION] == 1
    # what a PKCS#11 client's label search finds: the primary only
    token = gov.token
    token.refresh()
    found = [o for o in token.index.candidates({C.CKA_LABEL: b"k"}) if token.matches(o, {C.CKA_LABEL: b"k"})
             and o.cls == C.CKO_SECRET_KEY]
    assert [o.attrs[C.CKA_FERRO_VERSION] for o in found] == [1]


def test_a_state_change_stops_the_gate_in_the_other_process(two):
    gov, other = two
    token = gov.token
    token.audit = Audit()
    other("rotate")
    v1 = gov.version_object("k", 1, "decrypt")
    gate.use(token, v1, C.CKA_DECRYPT, C.CKM_AES_GCM, ALICE)            # enabled: decrypts
    other("disable_version 1")
    token.refresh()                                                     # (every engine call does this first)
    with pytest.raises(PKCS11Error) as e:
        gate.use(token, v1, C.CKA_DECRYPT, C.CKM_AES_GCM, ALICE)
    assert e.value.rv == C.CKR_KEY_FUNCTION_NOT_PERMITTED
    assert gov.get_key("k").version(1).state == R.DISABLED
    assert [r.outcome for r in token.audit.records] == ["ok", "denied"]


# --- through the PKCS#11 engine: two Libraries on one token (two processes' views) ----------
GCM = Mechanism(C.CKM_AES_GCM, GcmParams(bytes(12), 96, b"", 128))


@pytest.fixture
def libraries(tmp_path):
    a = make_library(tmp_path, '[store]\nkind = "sqlite"\n')
    slot = init_token(a)
    b = make_library(tmp_path, '[store]\nkind = "sqlite"\n')
    sessions = []
    for lib in (a, b):
        s = lib.open_session(slot, RW)
        lib.login(s, C.CKU_USER, USER_PIN)
        lib.tokens[slot].audit = Audit()
        sessions.append(s)
    yield (a, sessions[0], slot), (b, sessions[1])
    a.finalize()
    b.finalize()


def _find(lib, s, label: bytes) -> list:
    lib.find_objects_init(s, T(LABEL=label))
    found = lib.find_objects(s, 10)
    lib.find_objects_final(s)
    return found


def _version(lib, s, handle) -> int:
    return ulong(lib.get_attribute_value(s, handle, [C.CKA_FERRO_VERSION])[0])


def test_a_pkcs11_client_sees_rotation_and_rollback_made_elsewhere(libraries):
    (a, sa, slot), (b, sb) = libraries
    gov = governance(a.tokens[slot], Clock())
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    (h1,) = _find(b, sb, b"k")
    assert _version(b, sb, h1) == 1
    b.encrypt_init(sb, GCM, h1)
    b.encrypt(sb, b"data", 100)
    gov.rotate(ALICE, "k")
    (h2,) = _find(b, sb, b"k")                      # the same search now gives the new primary
    assert _version(b, sb, h2) == 2
    with pytest.raises(PKCS11Error) as e:           # the old version no longer encrypts
        b.encrypt_init(sb, GCM, h1)
    assert e.value.rv == C.CKR_KEY_FUNCTION_NOT_PERMITTED
    gov.update_primary(ALICE, "k", 1)               # rollback
    assert [_version(b, sb, h) for h in _find(b, sb, b"k")] == [1]
    with pytest.raises(PKCS11Error) as e:           # governed keys change only through governance
        b.destroy_object(sb, h2)
    assert e.value.rv == C.CKR_ACTION_PROHIBITED
    outcomes = [(r.key_version, r.outcome) for r in b.tokens[slot].audit.records]
    assert outcomes == [(1, "ok"), (1, "denied")]
