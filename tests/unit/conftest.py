"""Engine fixtures: a Library on a fresh token directory, with one token whose
SO PIN is SO_PIN and user PIN is USER_PIN. Tokens use the real store and the
real PIN KDF, so a login costs a fraction of a second: tests share tokens where
they can."""

import pytest

from provider import constants as C
from provider.config import Config
from provider.library import Library

SO_PIN = b"so-secret-1"
USER_PIN = b"user-1234"
RW = C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION
RO = C.CKF_SERIAL_SESSION


def make_library(tmp_path, store: str = "") -> Library:
    """A Library on tmp_path's token directory; `store`: a [store] table to use instead."""
    conf = tmp_path / "ferrohsm.conf"
    conf.write_text(f'[tokens]\ndirectory = "{tmp_path / "tokens"}"\n[log]\nlevel = "ERROR"\n'
                    f'[pin]\nfailure_delay = 0\n{store}')      # (no waits after failures: fast lockout tests)
    return Library(Config.parse(conf.read_text(), str(conf)))


def init_token(lib: Library, label: bytes = b"test") -> int:
    slot = lib.free_slot
    lib.init_token(slot, SO_PIN, label.ljust(32, b" "))
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_SO, SO_PIN)
    lib.init_pin(s, USER_PIN)
    lib.close_session(s)
    return slot


@pytest.fixture
def lib(tmp_path):
    library = make_library(tmp_path)
    yield library
    library.finalize()


@pytest.fixture
def slot(lib):
    return init_token(lib)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A library and token shared by one test module; each test opens its own sessions."""
    library = make_library(tmp_path_factory.mktemp("shared"))
    slot = init_token(library)
    yield library, slot
    library.finalize()


@pytest.fixture
def user(shared):
    """A logged-in R/W user session on the shared token; logged out afterwards."""
    library, slot = shared
    s = library.open_session(slot, RW)
    library.login(s, C.CKU_USER, USER_PIN)
    yield library, s
    library.close_all_sessions(slot)


@pytest.fixture(params=["memory", "sqlite"])
def gov(request, tmp_path):
    """The governance API (tests/unit/govkit.py) on a fresh token, memory and sqlite
    stores, a test clock."""
    from .govkit import Clock, governance, new_token
    token = new_token(request.param, tmp_path)
    g = governance(token, Clock())
    yield g
    token.store.close()
