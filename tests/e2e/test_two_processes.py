"""One token, several real processes, through the built module: what
tests/unit/test_engine_shared.py shows with two Library objects in one process, here
with python-pkcs11 clients in their own processes (step_client.py, driven one step
at a time over stdin/stdout; stress_worker.py).

- Interleavings: for each pair of programs in PROGRAMS (A's steps, B's steps on one
  key K), every interleaving of the two is run and checked against a model of the
  token: each step's CK_RV, what A reads, and what a fresh third process finds at the
  end. So no resurrection (a destroyed K is never written again nor copied), no lost
  update (B's change and A's are both kept), and reads see the other process's writes.
- Key use: a key destroyed or restricted in B fails A's next C_EncryptInit,
  C_SignInit, C_WrapKey, C_DeriveKey (USES).
- Stress: 4 processes x 4 threads of create / find / encrypt / sign / destroy on one
  token: no code but the expected ones, and the store holds exactly what was made
  and not destroyed, every key of it working.
- Generated IVs: message-based GCM with CKG_GENERATE_COUNTER in six processes on a key
  and its copy never hands out an IV twice.
Everything runs over each store kind of STORES; the module logs at DEBUG into the
test's directory, and a logged traceback fails the test. A store kind is one StoreKind
entry: the module it lives in (the kind runs once that file is in the tree, and is
skipped "store not merged yet" before) and a function of the test's request giving
its [store] lines (a peer it needs comes through request.getfixturevalue).
"""

import itertools
import json
import select
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from provider import constants as C
from provider.session import KEY_LEASE

from .conftest import USER_PIN

HERE = Path(__file__).resolve().parent
OK = "CKR_OK"
REPLY_TIMEOUT = 30


# --- store kinds: one entry each ----------------------------------------------------------
@dataclass(frozen=True)
class StoreKind:
    name: str
    lines: Callable[[pytest.FixtureRequest], str]    # request -> the configuration's [store] table


def _postgres_lines(request) -> str:
    dsn = request.getfixturevalue("postgres").database()     # a fresh database per test
    return f'[store]\nkind = "postgres"\ndsn = "{dsn}"\n'


STORES = [
    StoreKind("sqlite", lambda request: ""),
    StoreKind("filesystem", lambda request: '[store]\nkind = "filesystem"\n'),
    StoreKind("postgres", _postgres_lines),
]


@pytest.fixture(params=[pytest.param(kind, id=kind.name) for kind in STORES])
def shared(request, hsm):
    """An initialized token in the store kind of the parameter; the module logs at DEBUG
    into hsm.log, which must show no traceback when the test is done."""
    hsm.log = hsm.root / "ferrohsm.log"
    hsm.conf.write_text(f'[tokens]\ndirectory = "{hsm.root / "tokens"}"\n'
                        f'[log]\nlevel = "DEBUG"\nfile = "{hsm.log}"\n' + request.param.lines(request))
    hsm.init_token()
    yield hsm
    log = hsm.log.read_text() if hsm.log.exists() else ""
    assert "Traceback" not in log and "failed unexpectedly" not in log, log_tail(hsm)


def log_tail(hsm, lines: int = 80) -> str:
    text = hsm.log.read_text() if hsm.log.exists() else "(no log)"
    return "module log (tail):\n" + "\n".join(text.splitlines()[-lines:])


def named(rv: str) -> str:
    """A client's CKR name, with the codes python-pkcs11 has no class for
    (it says "CKR_0x68") named as provider.constants names them."""
    if rv.startswith("CKR_0x"):
        return C.name_of("CKR_", int(rv[4:], 16))
    return rv


def ckr(name: str) -> str:
    """A CKR_ name checked against provider.constants (a typo fails here, not silently)."""
    assert isinstance(getattr(C, name), int), name
    return name


class Client:
    """A step_client.py process: client(do, **args) -> (CKR name, value)."""

    def __init__(self, hsm, name: str):
        self.name, self.hsm = name, hsm
        self.stderr = open(hsm.root / f"client-{name}.err", "w+")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "step_client.py"), hsm.module, USER_PIN],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=hsm.env, cwd=hsm.root, text=True)
        rv, _ = self._reply("start")
        assert rv == OK, f"{name} could not log in: {rv}"

    def _reply(self, what):
        ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stderr.seek(0)
            raise AssertionError(f"client {self.name}: no answer to {what}\n{self.stderr.read()}\n"
                                 + log_tail(self.hsm))
        reply = json.loads(line)
        return named(reply["rv"]), reply["value"]

    def __call__(self, do: str, **args):
        self.proc.stdin.write(json.dumps({"do": do, **args}) + "\n")
        self.proc.stdin.flush()
        return self._reply(f"{do} {args}")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"do": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


@pytest.fixture
def clients(shared):
    """open(name) -> a new client process on the shared token; all closed at the end."""
    made = []

    def open_client(name):
        made.append(Client(shared, name))
        return made[-1]
    yield open_client
    for client in made:
        client.close()


# --- interleavings ----------------------------------------------------------------------
KID = "4b"           # CKA_ID of K and of its copies


class Model:
    """What the token holds after each step, when the steps happen one after the other:
    step(who, action) -> (the CKR name and value that step must give)."""

    def __init__(self):
        self.k = {"LABEL": "K", "ENCRYPT": True}       # None once destroyed
        self.copies = []

    def step(self, action):
        if self.k is None:
            return ckr("CKR_OBJECT_HANDLE_INVALID"), None
        if action == "read":
            return OK, dict(self.k)
        if action == "label":
            self.k["LABEL"] = "renamed"
        elif action == "restrict":
            self.k["ENCRYPT"] = False
        elif action == "copy":
            self.copies.append({"LABEL": "copy", "ENCRYPT": self.k["ENCRYPT"]})
        elif action == "destroy":
            self.k = None
        return OK, None

    def keys(self):
        return sorted(([self.k] if self.k else []) + self.copies, key=lambda k: (k["LABEL"], k["ENCRYPT"]))


ACTIONS = {     # action -> the step_client command that does it to K
    "read": dict(do="get", name="K", attrs=["LABEL", "ENCRYPT"]),
    "label": dict(do="set", name="K", attr="LABEL", value="renamed"),
    "restrict": dict(do="set", name="K", attr="ENCRYPT", value=False),
    "copy": {"do": "copy", "name": "K", "as": "copy", "attrs": {"LABEL": "copy"}},
    "destroy": dict(do="destroy", name="K"),
}

PROGRAMS = {    # name -> (A's steps, B's steps); every interleaving of the two is a test
    "destroy-vs-write-and-copy": (("read", "label", "copy"), ("destroy",)),     # no resurrection
    "restrict-vs-label": (("read", "label"), ("restrict",)),                    # no lost update
    "restrict-vs-copy": (("read", "copy"), ("restrict",)),                      # a copy of the current K
    "restrict-vs-destroy": (("read", "destroy"), ("restrict",)),                # no resurrection by B
    "destroy-vs-destroy": (("read", "destroy"), ("destroy",)),                  # one destroy only
    "destroy-vs-copy-and-write": (("read", "destroy"), ("copy", "label")),      # nor by B's copy or write
}


def interleavings(a, b):
    """Every merge of the sequences a and b that keeps the order within each."""
    n = len(a) + len(b)
    for b_at in itertools.combinations(range(n), len(b)):
        ai, bi = iter(a), iter(b)
        yield tuple(("B", next(bi)) if i in b_at else ("A", next(ai)) for i in range(n))


def _schedule_id(steps):
    return " ".join(f"{who}:{action}" for who, action in steps)


SCHEDULES = [pytest.param(steps, id=f"{name}[{_schedule_id(steps)}]")
             for name, (a, b) in PROGRAMS.items() for steps in interleavings(a, b)]


def secret_keys(client) -> list:
    rv, listed = client("list", id=KID)
    assert rv == OK, rv
    return sorted(({"LABEL": o["LABEL"], "ENCRYPT": o["ENCRYPT"]} for o in listed if o["CLASS"] == "SECRET_KEY"),
                  key=lambda k: (k["LABEL"], k["ENCRYPT"]))


@pytest.mark.parametrize("steps", SCHEDULES)
def test_interleaving(clients, steps):
    """B starts before K exists (it learns K from the change feed), O after (it knows K by
    its index entry only, and looks at it only at the end), C when all is done."""
    a, b = clients("A"), clients("B")
    assert a("make", kind="aes", name="K", label="K", id=KID) == (OK, None)
    assert b("find", name="K", id=KID, cls="SECRET_KEY") == (OK, 1)
    observer = clients("O")
    model = Model()
    for n, (who, action) in enumerate(steps):
        got = {"A": a, "B": b}[who](**ACTIONS[action])
        assert got == model.step(action), f"step {n} {who}:{action} of {_schedule_id(steps)}"
    fresh = clients("C")
    assert secret_keys(fresh) == secret_keys(a) == secret_keys(b) == secret_keys(observer) == model.keys()


# --- key use after a change elsewhere -------------------------------------------------------
@dataclass(frozen=True)
class Use:
    kind: str                 # of K: "aes" (encrypts), "kek" (wraps) or "ec"
    command: dict             # the step_client "use" command (K is "K", the other key "other")
    restrict: tuple           # (attribute, value) that takes the use away from K
    restricted: str           # CKR when restricted
    destroyed: str            # CKR when destroyed
    other: str | None = None  # kind of a second key the use needs
    native: bool = False      # the use has a native fast path (native/): also run through it


USES = {
    "encrypt": Use("aes", dict(use="encrypt", name="K"), ("ENCRYPT", False),
                   "CKR_KEY_FUNCTION_NOT_PERMITTED", "CKR_KEY_HANDLE_INVALID", native=True),
    "sign": Use("ec", dict(use="sign", name="K"), ("SIGN", False),
                "CKR_KEY_FUNCTION_NOT_PERMITTED", "CKR_KEY_HANDLE_INVALID", native=True),
    "derive": Use("ec", dict(use="derive", name="K"), ("DERIVE", False),
                  "CKR_KEY_FUNCTION_NOT_PERMITTED", "CKR_KEY_HANDLE_INVALID"),
    # K wraps another key: the wrapping key's codes (PKCS#11 3.0, C_WrapKey)
    "wrap-with": Use("kek", {"use": "wrap", "name": "K", "with": "other"}, ("WRAP", False),
                     "CKR_KEY_FUNCTION_NOT_PERMITTED", "CKR_WRAPPING_KEY_HANDLE_INVALID", other="aes"),
    # K is wrapped by another key
    "wrapped": Use("aes", {"use": "wrap", "name": "other", "with": "K"}, ("EXTRACTABLE", False),
                   "CKR_KEY_UNEXTRACTABLE", "CKR_KEY_HANDLE_INVALID", other="kek"),
}
K_CLASS = {"aes": "SECRET_KEY", "kek": "SECRET_KEY", "ec": "PRIVATE_KEY"}

# The native fast path answers a repeat init of a key it holds a cached authorisation for
# without the engine; with its lease (native/ferro_native.h FERRO_LEASE_NS, 500 ms, the
# engine's KEY_LEASE) it asks the engine again once the lease ran out.
NATIVE_WAIT = KEY_LEASE + 0.3


def _paths(spec: Use):
    """The engine's path (FERROHSM_NATIVE=0 in A), and the native one if the use has it."""
    yield "engine"
    if spec.native:
        yield "native"


USE_CASES = [pytest.param(use, change, path, id=f"{use}-{change}-{path}")
             for use, spec in USES.items() for change in ("destroy", "restrict") for path in _paths(spec)]


@pytest.mark.parametrize("use, change, path", USE_CASES)
def test_key_use_after_change_elsewhere(clients, shared, use, change, path):
    """A uses K, B destroys or restricts it, A's next use fails (on the native path: its
    next use once the lease has run out), and so does everybody's after."""
    spec = USES[use]
    if path == "engine":
        shared.env = {**shared.env, "FERROHSM_NATIVE": "0"}
    a = clients("A")
    shared.env = {k: v for k, v in shared.env.items() if k != "FERROHSM_NATIVE"}
    b = clients("B")
    assert a("make", kind=spec.kind, name="K", label="K", id=KID) == (OK, None)
    if spec.other:
        assert a("make", kind=spec.other, name="other", label="other", id="07") == (OK, None)
    assert b("find", name="K", id=KID, cls=K_CLASS[spec.kind]) == (OK, 1)
    if spec.other:
        assert b("find", name="other", id="07", cls="SECRET_KEY") == (OK, 1)
    for _ in range(2):
        assert a("use", **spec.command)[0] == OK     # A's key is in use (and cached natively)
    if change == "destroy":
        assert b("destroy", name="K") == (OK, None)
        expected = ckr(spec.destroyed)
    else:
        attr, value = spec.restrict
        assert b("set", name="K", attr=attr, value=value) == (OK, None)
        expected = ckr(spec.restricted)
    if path == "native":
        time.sleep(NATIVE_WAIT)
    assert a("use", **spec.command)[0] == expected
    assert a("use", **spec.command)[0] == expected   # and it stays so
    fresh = clients("C")
    found = fresh("find", name="K", id=KID, cls=K_CLASS[spec.kind])
    assert found == (OK, 0 if change == "destroy" else 1)
    if change == "restrict":     # (python-pkcs11 gives a key found restricted no method for the use)
        assert fresh("get", name="K", attrs=[attr]) == (OK, {attr: value})
        assert b("use", **spec.command)[0] == expected


# --- stress -----------------------------------------------------------------------------
PROCESSES, THREADS, MAX_OPS = 4, 4, 400
STRESS_ID = "5354"
EXPECTED = {OK, "none", ckr("CKR_OBJECT_HANDLE_INVALID"), ckr("CKR_KEY_HANDLE_INVALID")}


@dataclass(frozen=True)
class Mix:
    seconds: float
    seed: dict          # what one process makes first (so the workers start knowing objects
    seed_ops: int       # by their index entries only), as a stress_worker MIX, and how many
    ops: dict | None    # the workers' MIX (None: stress_worker.OPS, everything)
    must_succeed: tuple


MIXES = {
    # everything at once on a growing population
    "mixed": Mix(7, {"create_aes": 3, "create_ec": 1}, 24, None,
                 ("create_aes", "create_ec", "encrypt", "sign", "touch", "copy", "destroy", "find")),
    # 16 writers and users on 8 keys: compare-and-set conflicts on every other write
    "hot": Mix(4, {"create_aes": 3, "create_ec": 1}, 8, {"touch": 5, "encrypt": 3, "sign": 2, "find": 1},
               ("encrypt", "sign", "touch")),
}


def _workers(shared, args: list, count: int, timeout: float, first: int = 0) -> list:
    """Run `count` stress_worker.py processes (numbered from `first`) to the end: their reports."""
    worker = str(HERE / "stress_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, "work", shared.module, USER_PIN, str(first + i),
                               *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=shared.env, cwd=shared.root)
             for i in range(count)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"worker failed:\n{err.decode()}\n" + log_tail(shared)
        outs.append(json.loads(out.decode().splitlines()[-1]))
    return outs


@pytest.mark.parametrize("mix", list(MIXES))
def test_stress(shared, mix):
    spec = MIXES[mix]
    start = time.monotonic()
    seeded = _workers(shared, [1, 60, spec.seed_ops, STRESS_ID, json.dumps(spec.seed)], 1, 60, first=PROCESSES)
    outs = seeded + _workers(shared, [THREADS, spec.seconds, MAX_OPS, STRESS_ID]
                             + ([json.dumps(spec.ops)] if spec.ops else []), PROCESSES, spec.seconds + 60)
    counts = Counter()
    for out in outs:
        for key, n in out["counts"].items():
            op, rv = key.split(" ", 1)
            counts[f"{op} {named(rv)}"] += n
    census = json.loads(shared.run(sys.executable, HERE / "stress_worker.py", "census", shared.module, USER_PIN,
                                   STRESS_ID).stdout.decode().splitlines()[-1])
    elapsed = time.monotonic() - start
    by_rv = Counter()
    for key, n in counts.items():
        by_rv[key.split(" ", 1)[1]] += n
    print(f"\nstress {mix} {PROCESSES}x{THREADS}: {sum(counts.values())} ops in {elapsed:.1f} s; by CK_RV "
          f"{dict(by_rv)}; {len(census['objects'])} objects left, census {census['uses']}")

    unexpected = {key: n for key, n in counts.items() if key.split(" ", 1)[1] not in EXPECTED}
    assert not unexpected, (unexpected, [f for out in outs for f in out["failures"]], log_tail(shared))
    for op in spec.must_succeed:
        assert counts[f"{op} {OK}"] > 0, f"no {op} succeeded: {dict(counts)}"

    destroyed = [tuple(d) for out in outs for d in out["destroyed"]]
    maybe = {tuple(m) for out in outs for m in out["maybe"]}
    created = [tuple(c) for out in outs for c in out["created"]] + sorted(maybe & set(destroyed))
    assert len(set(created)) == len(created)
    assert len(set(destroyed)) == len(destroyed), "an object was destroyed twice"
    assert set(destroyed) <= set(created)
    vanished = {tuple(v) for out in outs for v in out["vanished"]}
    print(f"made {len(created)}, destroyed {len(destroyed)}, seen gone {len(vanished)}")
    assert vanished <= set(destroyed), f"reported gone, never destroyed: {sorted(vanished - set(destroyed))[:10]}"
    assert sorted(map(tuple, census["objects"])) == sorted(set(created) - set(destroyed))
    left = Counter(cls for _, cls in census["objects"])
    pairs = {label for label, cls in census["objects"] if cls == "PUBLIC_KEY"} & \
        {label for label, cls in census["objects"] if cls == "PRIVATE_KEY"}
    wanted = {f"encrypt {OK}": left["SECRET_KEY"], f"sign {OK}": left["PRIVATE_KEY"], f"verify {OK}": len(pairs)}
    assert census["uses"] == {use: n for use, n in wanted.items() if n}, "a key left does not work"
    assert elapsed < 20, f"the stress took {elapsed:.1f} s"


# --- generated IVs ----------------------------------------------------------------------
def test_generated_ivs_never_repeat_across_processes(clients, shared):
    """Processes encrypting with a key and with its copy at once, and more after them,
    with IVs the token generates (CKG_GENERATE_COUNTER): no IV is handed out twice for
    the key's value (the copy shares its source's counter, kept in the store)."""
    a = clients("A")
    assert a("make", kind="aes", name="K", label="K", id=KID) == (OK, None)
    assert a("copy", name="K", attrs={"LABEL": "K-copy"}, **{"as": "copy"}) == (OK, None)
    args = [sys.executable, HERE / "iv_client.py", shared.module, USER_PIN, 100, "K", "K-copy"]

    def run(n):
        procs = [subprocess.Popen([str(x) for x in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=shared.env, cwd=shared.root) for _ in range(n)]
        outs = [proc.communicate(timeout=60) for proc in procs]
        for proc, (out, err) in zip(procs, outs):
            assert proc.returncode == 0, err.decode() + log_tail(shared)
        return [json.loads(out) for out, _ in outs]
    got = run(4) + run(2)
    ivs = [iv for out in got for label in ("K", "K-copy") for iv in out[label]]
    assert len(ivs) == 6 * 2 * 100 and all(iv.startswith("f1f2f3f4") for iv in ivs)
    assert len(set(ivs)) == len(ivs), "an IV was generated twice for one key value"
