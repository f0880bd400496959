"""Who asks: the principal every key use and every administrative action is made for.

Every session has one. For PKCS#11 it is the token role (user/SO) and the process
identity; for REST the JWT subject and roles. The audit record copies it, and dual
control counts distinct `subject`s, so it is made only where a principal is
authenticated (the service's JWT check, the engine's login).
"""

import functools
import os
import pwd
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Principal:
    subject: str                       # JWT `sub`; "pkcs11:<os user>:<CKU role>" for a PKCS#11 session
    roles: frozenset = field(default_factory=frozenset)   # service roles (service/roles.py)
    interface: str = "pkcs11"          # "rest" | "pkcs11" | "cli" | "scheduler"
    session: str = ""                  # a session id (the JWT's `sid`/`jti`, a PKCS#11 session handle)
    client: str = ""                   # client fingerprint (mTLS certificate SHA-256, or the JWT key id)
    source: str = ""                   # source address ("pid:1234" for a local process)
    correlation_id: str = ""           # X-Request-ID / traceparent; empty for PKCS#11
    keys: frozenset | None = None      # Service role: the key names/ids its token's claims name (None: any)


@functools.cache
def _os_user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def pkcs11_principal(user_type: int | None, session: int) -> Principal:
    """The principal of a PKCS#11 session: the OS user of this process and its login role."""
    who = _os_user(os.getuid())
    role = {0: "so", 1: "user"}.get(user_type, "public")
    return Principal(subject=f"pkcs11:{who}:{role}", interface="pkcs11", session=str(session),
                     source=f"pid:{os.getpid()}")


SCHEDULER = Principal(subject="ferrohsm:scheduler", interface="scheduler")
