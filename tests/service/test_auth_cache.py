"""The verified-token cache of auth.py: a token that passed every check is not checked
again until it expires; a refused one is never remembered; a JWKS reload forgets every
token, so a retired key's tokens stop at once (test_jwks.py checks that through the
server); the cache is bounded."""

import time

import jwt
import pytest

from provider.config import ServerSettings
from provider.service import auth as A
from provider.service.errors import ApiError

from .conftest import SECRET, make_jwt


def authenticator(**settings):
    return A.Authenticator(ServerSettings(**settings), SECRET)


def who(auth, token):
    return auth.principal(f"Bearer {token}", "rid", "127.0.0.1")


def test_a_verified_token_is_remembered_with_the_same_principal():
    auth = authenticator()
    token = make_jwt(sub="app", roles=("service",), keys=["k1"], jti="s-9")
    first, second = who(auth, token), who(auth, token)
    assert auth.cache_hits == 1 and auth.cache_misses == 1
    assert first == second and second.subject == "app" and second.keys == {"k1"} and second.session == "s-9"
    other = auth.principal(f"Bearer {token}", "rid-2", "10.0.0.9")       # per request: the id and the source
    assert other.correlation_id == "rid-2" and other.source == "10.0.0.9"


def test_a_refused_token_is_never_remembered():
    auth = authenticator()
    bad = make_jwt(secret=b"x" * 48)
    for _ in range(3):
        with pytest.raises(ApiError):
            who(auth, bad)
    assert auth.failures == 3 and auth.cache_hits == 0 and not auth._verified


def test_a_remembered_token_expires_on_time():
    auth = authenticator(jwt_leeway=0)
    now = int(time.time())
    token = jwt.encode({"sub": "a", "roles": ["operator"], "iss": "ferrohsm", "aud": "ferrohsm", "iat": now,
                        "nbf": now - 1, "exp": now + 1}, SECRET, algorithm="HS256")
    who(auth, token)
    assert who(auth, token).subject == "a" and auth.cache_hits == 1
    time.sleep(max(0.0, now + 1 - time.time()) + 0.05)
    with pytest.raises(ApiError) as err:
        who(auth, token)
    assert err.value.status == 401 and "expired" in err.value.message
    assert token not in auth._verified


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(A, "CACHE_SIZE", 8)
    auth = authenticator()
    tokens = [make_jwt(sub=f"s{i}") for i in range(20)]
    for t in tokens:
        who(auth, t)
    assert len(auth._verified) == 8 and list(auth._verified) == tokens[-8:]
