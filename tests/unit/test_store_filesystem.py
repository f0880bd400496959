"""What only the filesystem store has: its directory layout and modes, a writer
killed mid-transaction, real processes writing at once, the change feed's cost,
fork, and a Library on `[store] kind = "filesystem"`."""

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from provider import constants as C
from provider.errors import PKCS11Error
from provider.library import Library
from provider.store import filesystem as fs
from provider.store import sealing

from .conftest import RW, SO_PIN, USER_PIN, init_token, make_library
from .stores import FAST
from .tmpl import T
from .test_store import AES_SECRET, LABEL, MAX, SECRET, SO, USER, aes_key, legacy_wrap, rv_conflict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def open_store(path):
    return fs.FilesystemStore(path, max_pin_failures=MAX, pin_policy=FAST)


def new_token(path):
    s = open_store(path)
    s.initialize(LABEL, SO)
    s.login(C.CKU_SO, SO)
    s.init_pin(USER)
    s.logout()
    return s


def load(store, cursor=None):
    return {uid: (version, attrs) for uid, version, attrs in store.changes(cursor).upserts}


def data(label):
    return {C.CKA_CLASS: C.CKO_DATA, C.CKA_TOKEN: True, C.CKA_PRIVATE: False, C.CKA_LABEL: label}


def tree(root):
    """Every path under root (relative) -> its permission bits."""
    out = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(here, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return out


# --- layout ---------------------------------------------------------------------------
def test_directory_absent_until_initialize(tmp_path):
    root = tmp_path / "tokens" / "token-x.d"
    s = open_store(root)
    assert not s.initialized() and not root.exists()
    s.close()
    assert not root.exists()
    s = new_token(root)
    assert s.initialized() and open_store(root).initialized()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_layout_and_modes(tmp_path):
    root = tmp_path / "token.d"
    s = new_token(root)
    s.login(C.CKU_USER, USER)
    s.save_object("k1", aes_key(b"one"), AES_SECRET)
    s.save_object("k1", aes_key(b"one again"), AES_SECRET, 1)
    s.save_object("odd/uid .x", data(b"odd"), frozenset())
    s.save_object("gone", data(b"gone"), frozenset())
    s.delete_object("gone", 1)
    s.reserve_counter("k1", 10)
    odd = fs.file_name("odd/uid .x")
    assert odd == "odd%2Fuid%20.x" and fs.name_of(odd) == "odd/uid .x"
    assert tree(root) == {
        "lock": 0o600, "token.json": 0o600, "changes.log": 0o600,
        "keys": 0o700, "counters": 0o700, "counters/iv%3Ak1": 0o600,
        "keys/k1": 0o700, "keys/k1/current.json": 0o600, "keys/k1/v00000002.json": 0o600,
        f"keys/{odd}": 0o700, f"keys/{odd}/current.json": 0o600, f"keys/{odd}/v00000001.json": 0o600,
        "keys/gone": 0o700, "keys/gone/tombstone.json": 0o600,      # destroyed: no version left
    }
    token = json.loads((root / "token.json").read_text())
    assert token["schema"] == sealing.SCHEMA_VERSION and token["token"]["seq"] == 5
    assert set(token["token"]) == set(sealing.TOKEN_FIELDS)
    assert json.loads((root / "keys/k1/current.json").read_text()) == {     # pointer and index entry
        "version": 2, "lineage": "k1", "seq": 2,
        "entry": [C.CKO_SECRET_KEY, fs._b64(s.blind(C.CKA_LABEL, b"one again")), None, C.CKK_AES, True]}
    v2 = json.loads((root / "keys/k1/v00000002.json").read_text())
    assert (v2["uid"], v2["version"], v2["lineage"], v2["seq"]) == ("k1", 2, "k1", 2)
    assert json.loads((root / "keys/gone/tombstone.json").read_text()) == {"seq": 5}
    assert (root / "changes.log").read_text() == f"1 k1 1\n2 k1 2\n3 {odd} 1\n4 gone 1\n5 gone -\n"
    assert (root / "counters/iv%3Ak1").read_text() == "10"
    # key material and PINs are in no file
    blob = b"".join((root / p).read_bytes() for p, mode in tree(root).items() if (root / p).is_file())
    for secret in (SECRET, s._master, USER, SO):
        assert secret not in blob and fs._b64(secret)[:-4] not in blob.decode()
    # the destroyed uid stays refused, whoever asks
    assert rv_conflict(open_store(root).save_object, "gone", data(b"zombie"), frozenset(), 0)


def test_newer_schema_not_served(tmp_path):
    cat = fs.FilesystemCatalog(tmp_path, pin_policy=FAST)
    name, s = cat.new()
    s.initialize(LABEL, SO)
    assert cat.names() == [name]
    path = tmp_path / name / "token.json"
    token = json.loads(path.read_text())
    path.write_text(json.dumps({**token, "schema": sealing.SCHEMA_VERSION + 1}))
    assert fs.FilesystemCatalog(tmp_path, pin_policy=FAST).names() == []
    with pytest.raises(PKCS11Error) as err:
        open_store(tmp_path / name).label
    assert err.value.rv == C.CKR_TOKEN_NOT_RECOGNIZED


def test_damaged_files(tmp_path):
    root = tmp_path / "token.d"
    s = new_token(root)
    s.save_object("a", data(b"a"), frozenset())
    s.save_object("b", data(b"b"), frozenset())
    (root / "keys/a/current.json").write_text("{not json")
    assert set(load(open_store(root))) == {"b"}                    # the damaged one is not served
    with pytest.raises(PKCS11Error) as err:
        open_store(root).save_object("a", data(b"a2"), frozenset(), 1)
    assert err.value.rv == C.CKR_DEVICE_ERROR
    (root / "keys/b/v00000001.json").write_text("[]")
    other = open_store(root)
    cursor = other.changes(None).cursor
    assert load(other) == {}
    s.save_object("c", data(b"c"), frozenset())
    got = other.changes(cursor)
    assert [u for u, _, _ in got.upserts] == ["c"]
    (root / "token.json").write_bytes(b"\x00garbage")
    assert not open_store(root).initialized()
    assert fs.FilesystemCatalog(tmp_path).names() == []


def test_catalog_order_and_discard(tmp_path):
    cat = fs.FilesystemCatalog(tmp_path, pin_policy=FAST)
    made = []
    for _ in range(3):
        name, s = cat.new()
        assert name.startswith("token-") and name.endswith(".d")
        s.initialize(LABEL, SO)
        made.append(name)
    half, _ = cat.new()                       # never initialized: not listed
    (tmp_path / half).mkdir()
    assert cat.names() == made == sorted(made)
    assert fs.FilesystemCatalog(tmp_path).names() == made
    cat.discard(made[1])
    cat.discard(half)
    assert not (tmp_path / made[1]).exists() and not (tmp_path / half).exists()
    assert fs.FilesystemCatalog(tmp_path).names() == [made[0], made[2]]


# --- crashes ----------------------------------------------------------------------------
def _die_in(store, where):
    """Make `store`'s next commit kill the process at `where`."""
    if where == "before-journal":                    # dies as the journal is written: nothing committed
        real = fs.write_atomic

        def write(path, payload, **kw):
            if str(path).endswith(fs.JOURNAL_FILE):
                os._exit(17)
            real(path, payload, **kw)
        fs.write_atomic = write
    elif where == "after-journal":                   # committed, nothing applied
        store._apply = lambda journal: os._exit(17)
    elif where == "mid-apply":                       # one pointer moved, the other not
        real, moved = fs.write_atomic, []

        def write(path, payload, **kw):
            if str(path).endswith(fs.CURRENT_FILE):
                moved.append(path)
                if len(moved) == 2:
                    os._exit(17)
            real(path, payload, **kw)
        fs.write_atomic = write
    elif where == "torn-log":                        # pointers moved, half a change-log line
        real_write = os.write

        def os_write(fd, payload):
            if bytes(payload).startswith(b"2 a 1\n"):
                real_write(fd, bytes(payload)[:4])
                os._exit(17)
            return real_write(fd, payload)
        os.write = os_write


@pytest.mark.parametrize("where,committed", [("before-journal", False), ("after-journal", True),
                                             ("mid-apply", True), ("torn-log", True)])
def test_killed_mid_transaction(tmp_path, where, committed):
    root = tmp_path / "token.d"
    s = new_token(root)
    s.save_object("old", data(b"old"), frozenset())
    cursor = s.changes(None).cursor
    pid = os.fork()
    if pid == 0:                                    # child: a two-object transaction, killed
        try:
            _die_in(s, where)
            with s.transaction():
                s.save_object("a", data(b"a"), frozenset())
                s.save_object("old", data(b"old v2"), frozenset(), 1)
                s.reserve_counter("a", 5)
        finally:
            os._exit(3)                             # not reached when the kill point is
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 17
    assert (root / fs.JOURNAL_FILE).exists() == (where != "before-journal")
    moved = json.loads((root / "keys/old/current.json").read_text())["version"] == 2
    assert moved == (where == "torn-log") and (root / "keys/a/current.json").exists() == (where in (
        "mid-apply", "torn-log"))
    assert (root / fs.LOG_FILE).read_text().endswith("1 old 1\n2 a " if where == "torn-log" else "1 old 1\n")
    reader = open_store(root)
    got = reader.changes(cursor)                   # the next reader rolls forward first
    assert not (root / fs.JOURNAL_FILE).exists()
    if committed:
        assert sorted((u, v) for u, v, _ in got.upserts) == [("a", 1), ("old", 2)]
        assert got.cursor == cursor + 2 and reader.head()[0] == cursor + 2
        assert reader.reserve_counter("a", 1) == 5
        assert (root / fs.LOG_FILE).read_text().splitlines()[-2:] == ["2 a 1", "3 old 2"]
        assert not (root / "keys/old/v00000001.json").exists()
    else:
        assert got.upserts == [] and reader.head()[0] == cursor
        assert rv_conflict(reader.check_object, "a", 1)
        assert reader.save_object("old", data(b"old v2"), frozenset(), 1) == 2
    assert load(open_store(root))["old"][1][C.CKA_LABEL] == (b"old v2")
    assert s.save_object("after", data(b"x"), frozenset()) == 1     # the parent's store still works


KILL_POINTS = ("write_atomic", "_write_all", "_unlink", "fsync_dir")


def _killed_at(root, step) -> bool:
    """Run a two-object transaction in a child killed just before its `step`-th file
    operation; True if it died (False: it finished before that step)."""
    s = open_store(root)
    pid = os.fork()
    if pid == 0:
        try:
            count = [0]
            for name in KILL_POINTS:
                real = getattr(fs, name)

                def dying(*args, _real=real, **kw):
                    count[0] += 1
                    if count[0] == step:
                        os._exit(17)
                    return _real(*args, **kw)
                setattr(fs, name, dying)
            with s.transaction():
                s.save_object("a", data(b"a"), frozenset())
                s.save_object("old", data(b"old v2"), frozenset(), 1)
                s.reserve_counter("a", 5)
            os._exit(0)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 17)
    return code == 17


def test_killed_at_every_step_all_or_nothing(tmp_path):
    step, outcomes = 0, []
    while True:
        step += 1
        root = tmp_path / f"token-{step}.d"
        new_token(root).save_object("old", data(b"old"), frozenset())
        died = _killed_at(root, step)
        reader = open_store(root)
        got = load(reader)
        committed = "a" in got
        if committed:
            assert got["old"][0] == 2 and got["old"][1][C.CKA_LABEL] == b"old v2"
            assert reader.reserve_counter("a", 1) == 5 and reader.head()[0] == 3
        else:
            assert set(got) == {"old"} and got["old"][0] == 1 and reader.head()[0] == 1
            assert rv_conflict(reader.reserve_counter, "a", 1)
        assert not (root / fs.JOURNAL_FILE).exists()
        assert not [p for p in tree(root) if p.endswith(".tmp")]
        lines = (root / fs.LOG_FILE).read_text().splitlines()
        assert lines == (["1 old 1", "2 a 1", "3 old 2"] if committed else ["1 old 1"])
        assert reader.save_object("later", data(b"l"), frozenset()) == 1
        outcomes.append(committed)
        if not died:
            break
    # killed before the journal was whole: nothing; from then on: everything
    assert outcomes == sorted(outcomes) and not outcomes[0] and outcomes[-1] and step > 10


def test_writer_rolls_forward_too(tmp_path):
    root = tmp_path / "token.d"
    s = new_token(root)
    pid = os.fork()
    if pid == 0:
        try:
            _die_in(s, "after-journal")
            s.save_object("a", data(b"a"), frozenset())
        finally:
            os._exit(3)
    os.waitpid(pid, 0)
    strays = [root / ".token.json.1.0000.tmp", root / ".current.json.1.0000.tmp"]   # a dead writer's
    for stray in strays:
        stray.write_bytes(b"half")
    writer = open_store(root)
    assert rv_conflict(writer.save_object, "a", data(b"a"), frozenset(), 0)   # it exists: rolled forward
    assert writer.save_object("a", data(b"a2"), frozenset(), 1) == 2
    assert not any(stray.exists() for stray in strays)


def test_unreadable_journal_stops_the_token(tmp_path, caplog):
    root = tmp_path / "token.d"
    s = new_token(root)
    s.save_object("a", data(b"a"), frozenset())
    (root / fs.JOURNAL_FILE).write_bytes(b"{truncated")
    with caplog.at_level(logging.ERROR, logger="ferrohsm"):
        with pytest.raises(PKCS11Error) as err:
            open_store(root).changes(None)
    assert err.value.rv == C.CKR_DEVICE_ERROR and "unreadable" in caplog.text
    assert (root / fs.JOURNAL_FILE).exists()                  # kept for whoever repairs it


def test_try_counted_when_killed_mid_check(tmp_path):
    root = tmp_path / "token.d"
    new_token(root).close()
    pid = os.fork()
    if pid == 0:
        try:
            sealing.unwrap_master = lambda *args: os._exit(17)
            open_store(root).login(C.CKU_USER, b"whatever")
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 17
    s = open_store(root)
    assert s.pin_flags() == C.CKF_USER_PIN_COUNT_LOW
    s.login(C.CKU_USER, USER)
    assert s.pin_flags() == 0


def test_fork_reopens_lock(tmp_path):
    root = tmp_path / "token.d"
    s = new_token(root)
    cursor = s.changes(None).cursor
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            s.save_object("forked", data(b"f"), frozenset())
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [u for u, _, _ in s.changes(cursor).upserts] == ["forked"]
    s.save_object("parent", data(b"p"), frozenset())
    assert set(load(open_store(root))) == {"forked", "parent"}


# --- processes at once ------------------------------------------------------------------
WRITER = """
    import json, sys
    sys.path.insert(0, {root!r})
    from provider import constants as C
    from provider.store.base import Conflict
    from provider.store.filesystem import FilesystemStore
    from provider.store.sealing import Argon2id, PinPolicy
    store = FilesystemStore({path!r}, pin_policy=PinPolicy(Argon2id(64, 1, 1), 0.0))
    mode, tag = sys.argv[1], sys.argv[2]
    conflicts = done = 0
    print("ready", flush=True)
    sys.stdin.readline()                               # both start at once
    while done < 200:
        if mode == "distinct":
            store.save_object(f"{{tag}}-{{done}}", {{C.CKA_CLASS: C.CKO_DATA, C.CKA_LABEL: b"x"}}, frozenset())
            done += 1
            continue
        (version, attrs), = [(v, a) for u, v, a in store.changes(None).upserts if u == "shared"]
        count = int(attrs[C.CKA_LABEL]) + 1            # read, modify, write with the version read
        try:
            store.save_object("shared", {{**attrs, C.CKA_LABEL: str(count).encode()}}, frozenset(), version)
            done += 1
        except Conflict:
            conflicts += 1
    print(json.dumps({{"conflicts": conflicts}}))
"""


def _writers(root, mode):
    code = textwrap.dedent(WRITER.format(root=ROOT, path=str(root)))
    procs = [subprocess.Popen([sys.executable, "-c", code, mode, tag], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for tag in ("p1", "p2")]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    return [json.loads(out)["conflicts"] for out in outs]


def test_two_processes_distinct_uids(tmp_path):
    root = tmp_path / "token.d"
    s = new_token(root)
    _writers(root, "distinct")
    objs = load(open_store(root))
    assert len(objs) == 400 and all(v == 1 for v, _ in objs.values())
    assert s.head()[0] == 400
    lines = (root / fs.LOG_FILE).read_text().splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(1, 401))


def test_two_processes_same_uid_no_lost_update(tmp_path):
    root = tmp_path / "token.d"
    s = new_token(root)
    s.save_object("shared", data(b"0"), frozenset())
    conflicts = _writers(root, "same")
    version, attrs = load(open_store(root))["shared"]
    assert attrs[C.CKA_LABEL] == b"400" and version == 401    # every increment kept, none lost
    assert sum(conflicts) > 0                                  # stale writes were refused, not applied
    assert rv_conflict(s.save_object, "shared", data(b"stale"), frozenset(), 400)


# --- the change feed's cost -----------------------------------------------------------
class Opens:
    """Counts the files this process opens (the interpreter's `open` audit event)."""
    counting = None

    def __enter__(self):
        Opens.counting = self
        self.paths = []
        return self

    def __exit__(self, *exc):
        Opens.counting = None

    @staticmethod
    def hook(event, args):
        if event == "open" and Opens.counting is not None:
            Opens.counting.paths.append(str(args[0]))


sys.addaudithook(Opens.hook)


def _token_with(root, n):
    s = new_token(root)
    with s.transaction():
        for i in range(n):
            s.save_object(f"obj-{i:05d}", data(b"o"), frozenset())
    return s


@pytest.mark.parametrize("n", [50, 5000])
def test_changes_cost_independent_of_object_count(tmp_path, n):
    root = tmp_path / "token.d"
    writer = _token_with(root, n)
    reader = open_store(root)
    cursor = reader.changes(None).cursor
    with Opens() as idle:
        assert reader.changes(cursor) == (cursor, [], [], False)
    assert len(idle.paths) <= 1                       # head(): token.json
    writer.save_object("obj-00007", data(b"changed"), frozenset(), 1)
    with Opens() as one:
        got = reader.changes(cursor)
    assert [(u, v) for u, v, _ in got.upserts] == [("obj-00007", 2)] and got.deleted == []
    assert len(one.paths) <= 5, one.paths             # token.json (twice), changes.log, one version file
    assert sum(p.endswith(".json") and "/keys/" in p for p in one.paths) == 1


def test_since_bisects_a_long_log(tmp_path):
    root = tmp_path / "token.d"
    s = new_token(root)
    count = 100_000
    (root / fs.LOG_FILE).write_text("".join(f"{seq} obj-{seq % 977} {seq // 977 + 1}\n"
                                            for seq in range(1, count + 1)))
    for cursor in (0, 1, 977, 50_000, count - 1, count):
        with Opens() as opened:
            lines = s._log_lines_after(cursor)
        assert [int(line.split()[0]) for line in lines] == list(range(cursor + 1, count + 1))
        assert opened.paths == [str(root / fs.LOG_FILE)]


def test_prune_compacts_the_log_tombstones_stay(tmp_path, monkeypatch):
    monkeypatch.setattr(sealing, "TOMBSTONE_WINDOW", 10)
    root = tmp_path / "token.d"
    s = new_token(root)
    s.save_object("early", data(b"e"), frozenset())
    s.delete_object("early", 1)
    for i in range(2 * sealing.TOMBSTONE_WINDOW + 1):      # past the window: the next delete prunes
        s.save_object(f"t{i}", data(b"t"), frozenset())
    s.delete_object("t0", 1)
    tok = s._token()
    assert tok["pruned"] == tok["seq"] - sealing.TOMBSTONE_WINDOW
    seqs = [int(line.split()[0]) for line in (root / fs.LOG_FILE).read_text().splitlines()]
    assert seqs == list(range(tok["pruned"] + 1, tok["seq"] + 1))
    assert (root / "keys/early/tombstone.json").exists()
    assert rv_conflict(s.save_object, "early", data(b"zombie"), frozenset(), 0)   # never written again
    reader = open_store(root)
    assert reader.changes(1).full                             # a reader from before: resyncs
    assert reader.changes(tok["seq"] - 1).deleted == ["t0"]


# --- a Library on it ------------------------------------------------------------------
def fs_library(tmp_path) -> Library:
    return make_library(tmp_path, '[store]\nkind = "filesystem"\n')


def find(lib, s, **attrs):
    lib.find_objects_init(s, T(**attrs))
    found = lib.find_objects(s, 100)
    lib.find_objects_final(s)
    return found


def test_library_on_filesystem_store(tmp_path):
    lib = fs_library(tmp_path)
    slot = init_token(lib)
    (token_dir,) = (tmp_path / "tokens").iterdir()
    assert token_dir.name.startswith("token-") and (token_dir / fs.TOKEN_FILE).exists()
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    h = lib.create_object(s, T(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_AES, VALUE=bytes(range(32)), TOKEN=True,
                               PRIVATE=True, ENCRYPT=True, DECRYPT=True, LABEL=b"fs key"))
    lib.create_object(s, T(CLASS=C.CKO_DATA, TOKEN=True, PRIVATE=False, LABEL=b"fs data", VALUE=b"d"))
    assert find(lib, s, LABEL=b"fs key") == [h]
    assert len(list((token_dir / fs.KEYS_DIR).iterdir())) == 2

    other = fs_library(tmp_path)                    # another process's view of the same directory
    so = other.open_session(slot, RW)
    other.login(so, C.CKU_USER, USER_PIN)
    (ho,) = find(other, so, LABEL=b"fs key")
    assert other.get_attribute_value(so, ho, [C.CKA_LABEL]) == [b"fs key"]
    lib.destroy_object(s, h)
    assert find(other, so, LABEL=b"fs key") == []
    assert find(other, so, LABEL=b"fs data") != []
    other.finalize()
    lib.finalize()
    again = fs_library(tmp_path)
    s = again.open_session(slot, RW)
    again.login(s, C.CKU_SO, SO_PIN)
    assert find(again, s, LABEL=b"fs key") == []
    again.finalize()


def _fs_objects(tmp_path, n):
    lib = fs_library(tmp_path)
    slot = init_token(lib)
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    for i in range(n):
        lib.create_object(s, T(CLASS=C.CKO_DATA, TOKEN=True, PRIVATE=bool(i % 2), LABEL=b"obj-%d" % i,
                               VALUE=b"value %d" % i))
    lib.finalize()
    return slot


def _records_read(paths):
    return [p for p in paths if os.path.basename(p).startswith("v") and "/keys/" in p]


def test_start_up_reads_pointers_not_records(tmp_path):
    """The index entry in current.json lists an object; its record is read when first used."""
    slot = _fs_objects(tmp_path, 40)
    with Opens() as opened:
        lib = fs_library(tmp_path)
        s = lib.open_session(slot, RW)
        lib.login(s, C.CKU_USER, USER_PIN)
    assert _records_read(opened.paths) == [] and len(lib.tokens[slot].by_uid) == 40
    with Opens() as opened:
        (h,) = find(lib, s, LABEL=b"obj-7")
        assert lib.get_attribute_value(s, h, [C.CKA_VALUE]) == [b"value 7"]
    assert len(_records_read(opened.paths)) == 1
    assert len(find(lib, s, CLASS=C.CKO_DATA)) == 40
    lib.finalize()


def test_a_lying_index_entry_is_not_served(tmp_path, caplog):
    slot = _fs_objects(tmp_path, 3)
    (token_dir,) = (tmp_path / "tokens").iterdir()
    for pointer in (token_dir / fs.KEYS_DIR).glob("*/current.json"):    # edit the index entry only
        current = json.loads(pointer.read_text())
        if current["entry"][4]:                                          # obj-1, the private one
            current["entry"][1:] = [fs._b64(b"obj-0"), None, None, False]
            pointer.write_text(json.dumps(current))
    lib = fs_library(tmp_path)
    s = lib.open_session(slot, RW)                          # not logged in: public objects only
    found = find(lib, s, LABEL=b"obj-0")                    # the index answers: two handles
    assert len(found) == 2
    values = []
    with caplog.at_level(logging.WARNING, logger="ferrohsm"):
        for h in found:
            try:
                values.append(lib.get_attribute_value(s, h, [C.CKA_VALUE]))
            except PKCS11Error as err:
                values.append(err.rv)
    assert sorted(values, key=str) == sorted([[b"value 0"], C.CKR_OBJECT_HANDLE_INVALID], key=str)
    assert "not what the store's index says" in caplog.text   # the private obj-1 is never served
    assert len(find(lib, s, LABEL=b"obj-0")) == 1
    lib.finalize()


def test_schema_2_token_reads_and_its_pbkdf2_wraps_are_replaced_at_login(tmp_path):
    """A token.json of schema 2 (the previous release: no KDF parameters, no recorded tries,
    PBKDF2 wraps) opens; each PIN's login wraps it again with Argon2id and writes schema 3."""
    root = tmp_path / "token.d"
    s = new_token(root)
    legacy_wrap(s, "user", USER)
    legacy_wrap(s, "so", SO)                 # (after: legacy_wrap logs the SO in)
    path = root / fs.TOKEN_FILE
    token = json.loads(path.read_text())
    for field in ("so_kdf", "so_tries", "user_kdf", "user_tries", "manifest", "anchor"):
        del token["token"][field]
    path.write_text(json.dumps({**token, "schema": 2}))
    old = open_store(root)
    assert old.label == LABEL and old.pin_flags() == 0
    old.login(C.CKU_USER, USER)
    got = json.loads(path.read_text())
    assert got["schema"] == sealing.SCHEMA_VERSION and got["token"]["user_kdf"] == FAST.kdf.text()
    assert got["token"]["so_kdf"] is None and got["token"]["so_iters"] == 1000
    open_store(root).login(C.CKU_SO, SO)
    assert json.loads(path.read_text())["token"]["so_kdf"] == FAST.kdf.text()
