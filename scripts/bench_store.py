"""Time a Library on one store kind: C_CreateObject of token AES keys, a second
Library's start-up (the catalog scan and the first load of every object), and the
change feed after one change. In a fresh temporary directory; nothing is kept.

    .venv/bin/python scripts/bench_store.py --kind filesystem --creates 1000 --objects 5000
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from provider import attrtypes                     # noqa: E402
from provider import constants as C                # noqa: E402
from provider.config import Config                 # noqa: E402
from provider.library import Library               # noqa: E402

SO_PIN, USER_PIN = b"bench-so", b"bench-user"
RW = C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION


def template(**attrs) -> list:
    return [(getattr(C, "CKA_" + k), attrtypes.encode(getattr(C, "CKA_" + k), v)) for k, v in attrs.items()]


def aes_key(i: int) -> list:
    return template(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_AES, VALUE=os.urandom(32), TOKEN=True,
                    PRIVATE=True, ENCRYPT=True, DECRYPT=True, LABEL=f"k{i}".encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="filesystem", choices=("sqlite", "filesystem", "memory"))
    ap.add_argument("--creates", type=int, default=1000, help="creates timed one by one")
    ap.add_argument("--objects", type=int, default=5000, help="objects in the token at start-up")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "ferrohsm.conf")
        with open(conf, "w") as f:
            f.write(f'[tokens]\ndirectory = "{tmp}/tokens"\n[log]\nlevel = "ERROR"\n'
                    f'[store]\nkind = "{args.kind}"\n')

        def library() -> Library:
            with open(conf) as f:
                return Library(Config.parse(f.read(), conf))

        lib = library()
        slot = lib.free_slot
        lib.init_token(slot, SO_PIN, b"bench".ljust(32))
        s = lib.open_session(slot, RW)
        lib.login(s, C.CKU_SO, SO_PIN)
        lib.init_pin(s, USER_PIN)
        lib.logout(s)
        lib.login(s, C.CKU_USER, USER_PIN)
        times = []
        for i in range(max(args.creates, args.objects)):
            t = time.perf_counter()
            lib.create_object(s, aes_key(i))
            times.append(time.perf_counter() - t)
        timed = sorted(times[:args.creates])
        print(f"{args.kind}: C_CreateObject x{len(timed)}: mean {statistics.mean(timed) * 1e3:.2f} ms, "
              f"median {timed[len(timed) // 2] * 1e3:.2f} ms, p95 {timed[int(len(timed) * .95)] * 1e3:.2f} ms")
        if args.kind == "memory":
            return                           # a memory token is gone with its Library
        t0 = time.perf_counter()
        other = library()
        t1 = time.perf_counter()
        s2 = other.open_session(slot, RW)
        other.login(s2, C.CKU_USER, USER_PIN)
        t2 = time.perf_counter()
        other.find_objects_init(s2, template(LABEL=b"k7"))
        assert len(other.find_objects(s2, 10)) == 1
        other.find_objects_final(s2)
        t3 = time.perf_counter()
        print(f"{args.kind}: start-up with {len(times)} objects: Library() {(t1 - t0) * 1e3:.0f} ms "
              f"(login {(t2 - t1) * 1e3:.0f} ms, first find {(t3 - t2) * 1e3:.1f} ms)")
        token = other.tokens[slot]
        token.refresh()
        lib.create_object(s, aes_key(-1))
        t = time.perf_counter()
        token.refresh()
        print(f"{args.kind}: change feed after one change, {len(times) + 1} objects: "
              f"{(time.perf_counter() - t) * 1e3:.2f} ms")
        other.finalize()
        lib.finalize()


if __name__ == "__main__":
    main()
