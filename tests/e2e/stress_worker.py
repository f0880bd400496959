"""One process of the multi-process stress in tests/e2e/test_two_processes.py.

    python stress_worker.py work MODULE PIN WORKER THREADS SECONDS MAX_OPS ID_HEX [MIX]
        THREADS threads, each with its own session (the main thread's logged-in one
        keeps the login), run a random mix of create (AES-256 key / P-256 pair), find,
        encrypt (AES-GCM), sign (ECDSA), touch (set CKA_END_DATE), copy and destroy on
        the token objects with CKA_ID ID_HEX - everybody's, so they meet objects other
        workers change and destroy - until SECONDS pass or MAX_OPS ops ran (MIX: JSON
        {op: weight}, default OPS). Prints one JSON line: per op and CK_RV a count,
        the objects made, destroyed, reported gone (CKR_OBJECT_HANDLE_INVALID), and
        perhaps made (a copy python-pkcs11 could not read back) as [label, class], and
        the first few failures.
    python stress_worker.py census MODULE PIN ID_HEX
        Lists the objects with CKA_ID ID_HEX as [label, class] and uses every key once
        (encrypt + decrypt, sign + verify with its public key if that is left): JSON.
Objects are named by their labels, which are unique (worker-thread-count)."""

import datetime
import json
import random
import sys
import threading
import time
from collections import Counter

from p11_client import DIGEST, OK, Attribute, Mechanism, ObjectClass, aes_key, call, ec_pair, encrypt, find, sign, token

EXPECTED = (OK, "none", "CKR_OBJECT_HANDLE_INVALID", "CKR_KEY_HANDLE_INVALID")   # none: no key to use
OPS = {"create_aes": 12, "create_ec": 8, "find": 15, "encrypt": 25, "sign": 20, "destroy": 20, "touch": 8,
       "copy": 5}


def ident(obj) -> list:
    values = obj.get_attributes([Attribute.LABEL, Attribute.CLASS])
    return [values[Attribute.LABEL], ObjectClass(values[Attribute.CLASS]).name]


class Worker(threading.Thread):
    def __init__(self, tok, name: str, id_: bytes, deadline: float, max_ops: int, seed: int, mix: dict):
        super().__init__(name=name)
        self.mix = mix
        self.tok, self.id, self.deadline, self.max_ops = tok, id_, deadline, max_ops
        self.random = random.Random(seed)
        self.counts: Counter = Counter()      # "op rv" -> n
        self.created: list = []               # [label, class] of what this thread made
        self.destroyed: list = []             # ... and destroyed
        self.vanished: list = []              # ... and was told is gone (CKR_OBJECT_HANDLE_INVALID)
        self.maybe: list = []                 # copies that may have been made (and destroyed at once)
        self.failures: list = []              # [op, rv] of the first unexpected results
        self.pool: list = []                  # (object, [label, class]) known to this thread
        self.serial = 0

    def record(self, op: str, rv: str) -> None:
        self.counts[f"{op} {rv}"] += 1

    def _refill(self):
        found = find(self.session, {Attribute.ID: self.id})
        self.pool.clear()
        for obj in found:
            rv, who = call(ident, obj)
            if rv == OK:
                self.pool.append((obj, who))
            else:
                self.record("ident", rv)
        return len(found)

    def _pick(self, *classes):
        names = [c.name for c in classes]
        known = [k for k in self.pool if k[1][1] in names]
        if not known:
            self.record("find", call(self._refill)[0])
            known = [k for k in self.pool if k[1][1] in names]
        return self.random.choice(known) if known else (None, None)

    def _made(self, rv, objs, label):
        """A create's outcome (invalid: made, then destroyed by another before python-pkcs11 read it)."""
        if rv in (OK, "CKR_OBJECT_HANDLE_INVALID"):
            for cls in ("PUBLIC_KEY", "PRIVATE_KEY") if len(objs) == 2 else ("SECRET_KEY",):
                self.created.append([label, cls])
        if rv == OK:
            self.pool += [(obj, [label, obj.object_class.name]) for obj in objs]
        return rv

    def step(self, op: str):
        self.serial += 1
        label = f"{self.name}-{self.serial}"
        if op == "create_aes":
            rv, key = call(aes_key, self.session, label, self.id)
            return self._made(rv, (key,) if key else (None,), label)
        if op == "create_ec":
            rv, pair = call(ec_pair, self.session, label, self.id)
            return self._made(rv, pair or (None, None), label)
        if op == "find":
            return call(self._refill)[0]
        if op == "copy":            # a copy commits only if its source is still there, unchanged
            key, who = self._pick(ObjectClass.SECRET_KEY)
            if key is None:
                return "none"
            rv, copy = call(key.copy, {Attribute.LABEL: label})
            if rv == OK:
                self.created.append([label, "SECRET_KEY"])
                self.pool.append((copy, [label, "SECRET_KEY"]))
            elif rv == "CKR_OBJECT_HANDLE_INVALID":     # the source went, or the copy right after it was made
                self.maybe.append([label, "SECRET_KEY"])
            return rv
        if op == "encrypt":
            key, who = self._pick(ObjectClass.SECRET_KEY)
            rv = "none" if key is None else call(encrypt, self.session, key)[0]
        elif op == "sign":
            key, who = self._pick(ObjectClass.PRIVATE_KEY)
            rv = "none" if key is None else call(sign, key)[0]
        elif op == "touch":         # a write racing the others' uses, writes and destroys
            key, who = self._pick(ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY)
            day = datetime.date(2030, 1, 1) + datetime.timedelta(days=self.random.randrange(3650))
            rv = "none" if key is None else call(key.__setitem__, Attribute.END_DATE, day)[0]
        else:
            key, who = self._pick(ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
            rv = "none" if key is None else call(key.destroy)[0]
            if rv == OK:
                self.destroyed.append(who)
        if rv == "CKR_OBJECT_HANDLE_INVALID":
            self.vanished.append(who)
        if key is not None and rv not in (OK, "none"):
            self.pool = [k for k in self.pool if k[0] is not key]
        if rv == OK and op == "destroy":
            self.pool = [k for k in self.pool if k[0] is not key]
        return rv

    def run(self):
        rv, self.session = call(self.tok.open, rw=True)
        if rv != OK:
            self.record("open", rv)
            return
        ops, weights = list(self.mix), list(self.mix.values())
        n = 0
        while n < self.max_ops and time.monotonic() < self.deadline:
            op = self.random.choices(ops, weights)[0]
            try:
                rv = self.step(op)
            except Exception as exc:       # a bug in this script, or an rv in an odd place
                rv = f"PYTHON:{type(exc).__name__}:{exc}"
            self.record(op, rv)
            if rv not in EXPECTED and len(self.failures) < 5:
                self.failures.append([op, rv])
            n += 1
        self.session.close()


def work(module, pin, worker, threads, seconds, max_ops, id_hex, mix=None):
    tok = token(module)
    rv, login = call(tok.open, user_pin=pin, rw=True)     # held: the login is the process's
    if rv != OK:
        return {"counts": {f"login {rv}": 1}, "elapsed": 0, "created": [], "destroyed": [], "vanished": [],
                "maybe": [], "failures": [["login", rv]]}
    deadline = time.monotonic() + float(seconds)
    workers = [Worker(tok, f"w{worker}t{i}", bytes.fromhex(id_hex), deadline, int(max_ops),
                      seed=int(worker) * 100 + i, mix=json.loads(mix) if mix else OPS) for i in range(int(threads))]
    start = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - start
    login.close()
    counts = Counter()
    for w in workers:
        counts.update(w.counts)
    return {"counts": dict(counts), "elapsed": elapsed,
            "created": [c for w in workers for c in w.created],
            "destroyed": [d for w in workers for d in w.destroyed],
            "vanished": [v for w in workers for v in w.vanished],
            "maybe": [m for w in workers for m in w.maybe],
            "failures": [f for w in workers for f in w.failures]}


def census(module, pin, id_hex):
    tok = token(module)
    with tok.open(user_pin=pin, rw=True) as session:
        objs = find(session, {Attribute.ID: bytes.fromhex(id_hex)})
        listed = [ident(o) for o in objs]
        publics = {label: o for o, (label, cls) in zip(objs, listed) if cls == "PUBLIC_KEY"}
        uses = Counter()
        for obj, (label, cls) in zip(objs, listed):
            if cls == "SECRET_KEY":
                uses[f"encrypt {call(encrypt, session, obj)[0]}"] += 1
            elif cls == "PRIVATE_KEY":
                rv, sig = call(obj.sign, DIGEST, mechanism=Mechanism.ECDSA)
                uses[f"sign {rv}"] += 1
                if rv == OK and label in publics:
                    rv, good = call(publics[label].verify, DIGEST, sig, mechanism=Mechanism.ECDSA)
                    uses[f"verify {rv if rv != OK or good else 'BAD_SIGNATURE'}"] += 1
    return {"objects": listed, "uses": dict(uses)}


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    print(json.dumps(work(*args) if mode == "work" else census(*args)), flush=True)
