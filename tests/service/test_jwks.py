"""Asymmetric bearer tokens (RS256, ES256, EdDSA) from a JWKS file, through a real uvicorn:
each verifies with its kid's key in that key's one algorithm; the confusions (HS256 signed
with an RSA public key, `none`, an algorithm the key is not pinned to, an unknown kid, a
foreign key under a known kid) are 401s; the file is reloaded when it changes and a bad
edit keeps the last good keys; a JWKS with private members, small RSA keys or ill-fitting
`alg` is refused at start."""

import base64
import hashlib
import hmac
import json
import os
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from provider.config import ServerSettings
from provider.governance import Governance
from provider.service.app import create_app
from provider.service.jwks import JwksFile, parse
from tests.unit.govkit import Clock, new_token

from .conftest import AUD, ISS, SECRET, Running

RATES = {r: (1000.0, 1000) for r in ("administrator", "operator", "auditor", "service")}


def keypairs():
    return {"rsa1": ("RS256", rsa.generate_private_key(65537, 2048), RSAAlgorithm),
            "ec1": ("ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
            "ed1": ("EdDSA", ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm)}


def jwk(kid, priv, algo, alg=None) -> dict:
    d = algo.to_jwk(priv.public_key(), as_dict=True)
    d["kid"] = kid
    if alg:
        d["alg"] = alg
    return d


def write_jwks(path, keys: list):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"keys": keys}, f)
    os.replace(tmp, path)                       # a new inode: the reload sees it however fast


def claims(sub="carol", roles=("operator",), lifetime=300):
    now = int(time.time())
    return {"sub": sub, "roles": list(roles), "iss": ISS, "aud": AUD, "iat": now, "nbf": now - 1,
            "exp": now + lifetime}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: dict, body: dict, sign) -> str:
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing}.{b64(sign(signing.encode()))}"


@pytest.fixture
def jwks_service(tmp_path):
    pairs = keypairs()
    path = tmp_path / "jwks.json"
    write_jwks(path, [jwk(kid, priv, algo) for kid, (_, priv, algo) in pairs.items()])
    token = new_token("sqlite", tmp_path)
    gov = Governance(token, lambda event: None, clock=Clock(time.time()))
    app = create_app(gov, ServerSettings(rate=RATES, jwks_file=str(path)), b"")
    app.state.auth.jwks.recheck = 0.0               # look at the file on every request
    running = Running(app)
    client = httpx.Client(base_url=running.url, timeout=10)
    client.pairs, client.path, client.app = pairs, path, app
    yield client
    client.close()
    running.stop()
    token.store.close()


def sign(pairs, kid, alg=None, **kw):
    default, priv, _ = pairs[kid]
    return jwt.encode(claims(**kw), priv, algorithm=alg or default, headers={"kid": kid})


def get(client, token):
    return client.get("/v1/keys", headers={"Authorization": f"Bearer {token}"})


def refused(r):
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthenticated"
    assert "Traceback" not in r.text


def test_each_algorithm_verifies_with_its_kid(jwks_service):
    for kid in ("rsa1", "ec1", "ed1"):
        r = get(jwks_service, sign(jwks_service.pairs, kid))
        assert r.status_code == 200, (kid, r.text)
    # roles come from the claim as for HS256: an auditor may read, a service may not create
    r = jwks_service.post("/v1/keys", json={"name": "k1", "algorithm": "aes-256-gcm", "usage": ["encrypt", "decrypt"]},
                          headers={"Authorization": f"Bearer {sign(jwks_service.pairs, 'ec1', roles=('service',))}"})
    assert r.status_code == 403, r.text


def test_confusions_are_refused(jwks_service):
    pairs = jwks_service.pairs
    rsa_priv = pairs["rsa1"][1]
    pem = rsa_priv.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    # HS256 signed with the RSA public key as the HMAC secret (the classic confusion)
    refused(get(jwks_service, forged({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}, claims(),
                                     lambda m: hmac.new(pem, m, hashlib.sha256).digest())))
    # HS256 at all: this service has no secret
    refused(get(jwks_service, jwt.encode(claims(), SECRET, algorithm="HS256")))
    # alg none
    refused(get(jwks_service, forged({"alg": "none", "kid": "rsa1"}, claims(), lambda m: b"")))
    # RS256 named on the EC key's kid (signed with the RSA key): the key is pinned to ES256
    refused(get(jwks_service, jwt.encode(claims(), rsa_priv, algorithm="RS256", headers={"kid": "ec1"})))
    # ES384 is not an algorithm of this service, whatever the kid
    refused(get(jwks_service, jwt.encode(claims(), ec.generate_private_key(ec.SECP384R1()), algorithm="ES384",
                                         headers={"kid": "ec1"})))
    # a kid that names no key, and no kid at all
    refused(get(jwks_service, jwt.encode(claims(), pairs["ec1"][1], algorithm="ES256", headers={"kid": "ec9"})))
    refused(get(jwks_service, jwt.encode(claims(), pairs["ec1"][1], algorithm="ES256")))
    # a foreign key under a known kid
    refused(get(jwks_service, jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                                         headers={"kid": "ec1"})))
    # the claims are checked as for HS256: expired, too long a life, wrong audience
    now = int(time.time())
    refused(get(jwks_service, jwt.encode({**claims(), "iat": now - 600, "nbf": now - 600, "exp": now - 300},
                                         pairs["ed1"][1], algorithm="EdDSA", headers={"kid": "ed1"})))
    refused(get(jwks_service, sign(pairs, "ed1", lifetime=7200)))
    refused(get(jwks_service, jwt.encode({**claims(), "aud": "other"}, pairs["ed1"][1], algorithm="EdDSA",
                                         headers={"kid": "ed1"})))
    assert jwks_service.app.state.auth.failures >= 10


def test_reloaded_when_the_file_changes(jwks_service):
    pairs, path = jwks_service.pairs, jwks_service.path
    auth = jwks_service.app.state.auth
    new = ec.generate_private_key(ec.SECP256R1())
    new_token_ = jwt.encode(claims(), new, algorithm="ES256", headers={"kid": "ec2"})
    refused(get(jwks_service, new_token_))
    old = sign(pairs, "ec1")
    assert get(jwks_service, old).status_code == 200 and get(jwks_service, old).status_code == 200
    assert auth.cache_hits >= 1                     # verified once, then remembered
    # ec1 retired, ec2 added
    write_jwks(path, [jwk("ec2", new, ECAlgorithm), jwk("ed1", pairs["ed1"][1], OKPAlgorithm)])
    assert get(jwks_service, new_token_).status_code == 200
    refused(get(jwks_service, old))                 # the remembered token of a retired key stops at the reload
    refused(get(jwks_service, sign(pairs, "ec1")))
    assert auth.jwks.reloads == 1
    # a half-written edit keeps the last good keys
    path.write_text('{"keys": [')
    assert get(jwks_service, new_token_).status_code == 200
    assert auth.jwks.reload_failures >= 1 and auth.jwks.kids() == {"ec2", "ed1"}
    # the file gone: still the last good keys
    path.unlink()
    assert get(jwks_service, sign(pairs, "ed1")).status_code == 200


def test_a_bad_jwks_is_refused_at_start(tmp_path):
    pairs = keypairs()
    good = [jwk(kid, priv, algo) for kid, (_, priv, algo) in pairs.items()]
    assert {k.kid: k.alg for k in parse(json.dumps({"keys": good})).values()} == \
        {"rsa1": "RS256", "ec1": "ES256", "ed1": "EdDSA"}
    private = RSAAlgorithm.to_jwk(pairs["rsa1"][1], as_dict=True) | {"kid": "p"}
    small = jwk("s", rsa.generate_private_key(65537, 1024), RSAAlgorithm)
    cases = {
        "private key members": [private],
        "1024-bit RSA": [small],
        "does not fit": [jwk("x", pairs["ec1"][1], ECAlgorithm, alg="RS256")],
        "unsupported key type": [jwk("y", ec.generate_private_key(ec.SECP384R1()), ECAlgorithm)],
        "appears twice": [good[0], good[0]],
        "needs a kid": [{k: v for k, v in good[1].items() if k != "kid"}],
        "not a signing key": [good[2] | {"use": "enc"}],
        "hmac": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}],
    }
    for expected, keys in cases.items():
        path = tmp_path / "bad.json"
        write_jwks(path, keys)
        with pytest.raises(ValueError) as err:
            JwksFile(str(path))
        message = str(err.value)
        assert expected in message or expected == "hmac" and "private" in message, (expected, message)
        assert "AAAA" not in message and private["d"] not in message      # never key material
    path.write_text("not json")
    with pytest.raises(ValueError, match="not JSON"):
        JwksFile(str(path))
    # no secret and no JWKS: nothing could authenticate
    (tmp_path / "t").mkdir()
    token = new_token("sqlite", tmp_path / "t")
    gov = Governance(token, lambda event: None, clock=Clock(time.time()))
    with pytest.raises(ValueError, match="at least 32 bytes"):
        create_app(gov, ServerSettings(rate=RATES), b"")
    token.store.close()
