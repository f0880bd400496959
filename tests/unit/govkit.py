"""A governance service over a real token store (memory or sqlite), for the governance
tests: the token's user logged in, a clock the test moves, the audit events kept in a
list (the audit chain's record_in takes their place in the service)."""

import itertools

from provider import constants as C
from provider.governance import Governance
from provider.principal import Principal
from provider.store.memory import MemoryStore
from provider.store.sqlite import SqliteStore
from provider.token import Token

from .stores import FAST

SO, USER = b"so-pin-1", b"user-pin-1"
LABEL = b"governance".ljust(32)

ALICE = Principal("alice", frozenset({"operator"}), interface="rest")
BOB = Principal("bob", frozenset({"operator"}), interface="rest")
CAROL = Principal("carol", frozenset({"administrator"}), interface="rest")
AUDITOR = Principal("dave", frozenset({"auditor"}), interface="rest")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def open_store(kind: str, path=None):
    if kind == "memory":
        return MemoryStore(None, max_pin_failures=10, pin_policy=FAST)
    return SqliteStore(str(path / "token-1.sqlite"), max_pin_failures=10, pin_policy=FAST)


def new_token(kind: str, path=None, fresh: bool = True) -> Token:
    store = open_store(kind, path)
    if fresh:
        store.initialize(LABEL, SO)
        store.login(C.CKU_SO, SO)
        store.init_pin(USER)
        store.logout()
    token = Token(0, store, itertools.count(1))
    token.login(C.CKU_USER, USER)
    return token


def governance(token, clock=None, events=None, **kw) -> Governance:
    events = [] if events is None else events
    gov = Governance(token, events.append, clock=clock or Clock(), **kw)
    gov.events = events
    return gov

