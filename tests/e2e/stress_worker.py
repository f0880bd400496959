"""One process of the multi-process stress in tests/e2e/test_two_processes.py.

    python stress_worker.py work MODULE PIN WORKER THREADS SECONDS MAX_OPS ID_HEX
        THREADS threads, each with its own session (the main thread's logged-in one
        keeps the login), run a random mix of create (AES-256 key / P-256 pair), find,
        encrypt (AES-GCM), sign (ECDSA) and destroy on the token objects with CKA_ID
        ID_HEX - everybody's, so they meet objects other workers destroy - until
        SECONDS pass or MAX_OPS ops ran. Prints one JSON line: per op and CK_RV a count,
        the objects made and destroyed as [label, class], and the first few failures.
    python stress_worker.py census MODULE PIN ID_HEX
        Lists the objects with CKA_ID ID_HEX as [label, class] and uses every key once
        (encrypt + decrypt, sign + verify with its public key if that is left): JSON.
Objects are named by their labels, which are unique (worker-thread-count)."""

import json
import random
import sys
import threading
import time
from collections import Counter

from p11_client import DIGEST, OK, Attribute, Mechanism, ObjectClass, aes_key, call, ec_pair, encrypt, find, sign, token

EXPECTED = (OK, "none", "CKR_OBJECT_HANDLE_INVALID", "CKR_KEY_HANDLE_INVALID")   # none: no key to use
OPS = {"create_aes": 12, "create_ec": 8, "find": 15, "encrypt": 25, "sign": 20, "destroy": 20}


def ident(obj) -> list:
    values = obj.get_attributes([Attribute.LABEL, Attribute.CLASS])
    return [values[Attribute.LABEL], ObjectClass(values[Attribute.CLASS]).name]


class Worker(threading.Thread):
    def __init__(self, tok, name: str, id_: bytes, deadline: float, max_ops: int, seed: int):
        super().__init__(name=name)
        self.tok, self.id, self.deadline, self.max_ops = tok, id_, deadline, max_ops
        self.random = random.Random(seed)
        self.counts: Counter = Counter()      # "op rv" -> n
        self.created: list = []
        self.destroyed: list = []
        self.failures: list = []              # [op, rv] of the first unexpected results
        self.pool = {ObjectClass.SECRET_KEY: [], ObjectClass.PRIVATE_KEY: [], ObjectClass.PUBLIC_KEY: []}
        self.serial = 0

    def record(self, op: str, rv: str) -> None:
        self.counts[f"{op} {rv}"] += 1

    def _refill(self):
        found = find(self.session, {Attribute.ID: self.id})
        for objs in self.pool.values():
            objs.clear()
        for obj in found:
            self.pool.setdefault(obj.object_class, []).append(obj)
        return len(found)

    def _pick(self, *classes):
        objs = [o for c in classes for o in self.pool.get(c, [])]
        if not objs:
            rv, _ = call(self._refill)
            self.record("find", rv)
            objs = [o for c in classes for o in self.pool.get(c, [])]
        return self.random.choice(objs) if objs else None

    def _forget(self, obj):
        for objs in self.pool.values():
            if obj in objs:
                objs.remove(obj)

    def step(self, op: str):
        self.serial += 1
        label = f"{self.name}-{self.serial}"
        if op == "create_aes":
            rv, key = call(aes_key, self.session, label, self.id)
            if rv in (OK, "CKR_OBJECT_HANDLE_INVALID"):    # invalid: made, then destroyed by another
                self.created.append([label, "SECRET_KEY"])
            if key is not None:
                self.pool[ObjectClass.SECRET_KEY].append(key)
            return rv
        if op == "create_ec":
            rv, pair = call(ec_pair, self.session, label, self.id)
            if rv in (OK, "CKR_OBJECT_HANDLE_INVALID"):
                self.created += [[label, "PUBLIC_KEY"], [label, "PRIVATE_KEY"]]
            if pair is not None:
                self.pool[ObjectClass.PUBLIC_KEY].append(pair[0])
                self.pool[ObjectClass.PRIVATE_KEY].append(pair[1])
            return rv
        if op == "find":
            return call(self._refill)[0]
        if op == "encrypt":
            key = self._pick(ObjectClass.SECRET_KEY)
            rv = "none" if key is None else call(encrypt, self.session, key)[0]
        elif op == "sign":
            key = self._pick(ObjectClass.PRIVATE_KEY)
            rv = "none" if key is None else call(sign, key)[0]
        else:
            key = self._pick(ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
            if key is None:
                return "none"
            rv, who = call(ident, key)
            if rv == OK:
                rv, _ = call(key.destroy)
                if rv == OK:
                    self.destroyed.append(who)
        if key is not None and rv not in (OK, "none"):
            self._forget(key)
        return rv

    def run(self):
        rv, self.session = call(self.tok.open, rw=True)
        if rv != OK:
            self.record("open", rv)
            return
        ops, weights = list(OPS), list(OPS.values())
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


def work(module, pin, worker, threads, seconds, max_ops, id_hex):
    tok = token(module)
    login = tok.open(user_pin=pin, rw=True)        # held: the login is the process's
    deadline = time.monotonic() + float(seconds)
    workers = [Worker(tok, f"w{worker}t{i}", bytes.fromhex(id_hex), deadline, int(max_ops),
                      seed=int(worker) * 100 + i) for i in range(int(threads))]
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
