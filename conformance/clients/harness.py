"""A tiny check harness for client programs that load the module in their own process
(python-pkcs11, PyKCS11). Each check prints one line, the same format the Java program uses:

    PASS <name> | FAIL <name> <error> | SKIP <name> <reason>

The module, token label and PINs come from PKCS11_MODULE, PKCS11_TOKEN_LABEL,
PKCS11_TOKEN_PIN and PKCS11_TOKEN_SO_PIN.
"""

import os
import sys
import traceback

CHECKS = []


class Skip(Exception):
    pass


def check(fn):
    CHECKS.append(fn)
    return fn


def names():
    return [fn.__name__ for fn in CHECKS]


def env():
    return (os.environ["PKCS11_MODULE"], os.environ["PKCS11_TOKEN_LABEL"],
            os.environ["PKCS11_TOKEN_PIN"], os.environ["PKCS11_TOKEN_SO_PIN"])


def main(ctx):
    """Run every registered check with the shared context object `ctx`."""
    only = set(sys.argv[1:])
    for fn in CHECKS:
        if only and fn.__name__ not in only:
            continue
        try:
            fn(ctx)
            print(f"PASS {fn.__name__}", flush=True)
        except Skip as exc:
            print(f"SKIP {fn.__name__} {exc}", flush=True)
        except BaseException as exc:  # noqa: BLE001 - report everything, keep going
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"FAIL {fn.__name__} {type(exc).__name__}: {exc!s:.300} "
                  f"(at {os.path.basename(where.filename)}:{where.lineno})", flush=True)
