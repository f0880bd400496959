"""The two-Libraries tests of test_engine_shared.py (two processes on one token: no
resurrection, no lost update, a key pair is one commit...) again on
`[store] kind = "filesystem"`: the same tests, collected here with this `pair`."""

import pytest

from provider import constants as C

from . import test_engine_shared as shared
from .conftest import RW, USER_PIN, init_token
from .test_store_filesystem import fs_library

globals().update({name: test for name, test in vars(shared).items() if name.startswith("test_")})


@pytest.fixture
def pair(tmp_path):
    a = fs_library(tmp_path)
    slot = init_token(a)
    b = fs_library(tmp_path)
    sessions = []
    for lib in (a, b):
        s = lib.open_session(slot, RW)
        lib.login(s, C.CKU_USER, USER_PIN)
        sessions.append(s)
    assert type(a.sessions[sessions[0]].token.store).__name__ == "FilesystemStore"
    yield (a, sessions[0]), (b, sessions[1])
    a.finalize()
    b.finalize()
