"""Issue 12's last key routes through real uvicorn: an administrator adopts a plain
PKCS#11 key (dual control where its tags ask), a service wraps an exportable governed
key with its key-encryption key and unwraps it as a new governed key (RFC 5649), and
signs a batch. Every use is in the audit chain; the wrong role gets 403, bad input 4xx."""

import base64
import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from provider import constants as C
from provider import keygen
from provider.governance import algorithms as A

from .conftest import ADMIN, AUDITOR, BOB, OP, b64, bearer




def svc(*keys, sub="app"):
    return bearer(sub=sub, roles=["service"], keys=list(keys))


def code(r):
    return r.json()["error"]["code"]


def create(service, name, algorithm="aes-256-gcm", usage=("encrypt", "decrypt"), **kw):
    r = service.post("/v1/keys", headers=OP, json={"name": name, "algorithm": algorithm, "usage": list(usage), **kw})
    assert r.status_code == 201, r.text
    return r.json()


def records(service, **params):
    return service.get("/v1/audit", headers=AUDITOR, params={"limit": 1000, **params}).json()["records"]


def plain_aes(service, label=b"legacy"):
    token = service.gov.token
    given = {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_VALUE_LEN: 32, C.CKA_TOKEN: True,
             C.CKA_PRIVATE: True, C.CKA_LABEL: label}
    with token.lock, token.transaction():
        return keygen.generate_key(token, C.CKM_AES_KEY_GEN, None, given, False).uid


def plain_p256(service):
    token = service.gov.token
    common = {C.CKA_TOKEN: True, C.CKA_LABEL: b"legacy-ec"}
    with token.lock, token.transaction():
        pub, priv = keygen.generate_key_pair(token, C.CKM_EC_KEY_PAIR_GEN, None,
                                             {**common, C.CKA_EC_PARAMS: A.P256, C.CKA_VERIFY: True},
                                             {**common, C.CKA_PRIVATE: True, C.CKA_SIGN: True}, False)
    return priv.uid, pub.uid


# --- adopt ----------------------------------------------------------------------------
def test_an_administrator_adopts_a_plain_key(service):
    uid = plain_aes(service)
    body = {"uid": uid, "name": "legacy", "algorithm": "aes-256-gcm", "usage": ["encrypt", "decrypt"]}
    for who in (OP, AUDITOR, svc("legacy")):
        r = service.post("/v1/keys/adopt", headers=who, json=body)
        assert r.status_code == 403 and code(r) == "permission_denied", r.text
    r = service.post("/v1/keys/adopt", headers=ADMIN, json={**body, "uid": "nope"})
    assert r.status_code == 404 and code(r) == "not_found"
    r = service.post("/v1/keys/adopt", headers=ADMIN, json={**body, "algorithm": "hmac-sha256", "usage": ["mac"]})
    assert r.status_code == 400 and code(r) == "invalid_argument"
    r = service.post("/v1/keys/adopt", headers=ADMIN, json={**body, "algorithm": "des"})
    assert r.status_code == 400 and code(r) == "invalid_argument"
    assert service.post("/v1/keys/adopt", headers=ADMIN, json={"uid": uid}).status_code == 422
    r = service.post("/v1/keys/adopt", headers=ADMIN, json=body)
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["adopted_from"] == uid and rec["versions"][0]["objects"] == [uid] and rec["primary"] == 1
    r = service.post("/v1/keys/adopt", headers=ADMIN, json={**body, "name": "again"})
    assert r.status_code == 409 and code(r) == "failed_precondition"            # governed already
    # the adopted key is used as any governed key, and rotates
    app = svc("legacy")
    ct = service.post("/v1/keys/legacy/encrypt", headers=app, json={"plaintext": b64(b"old data")})
    assert ct.status_code == 200 and ct.json()["ciphertext"].startswith("ferrohsm:v1:")
    assert service.post("/v1/keys/legacy/rotate", headers=OP).json()["primary"] == 2
    dec = service.post("/v1/keys/legacy/decrypt", headers=app, json={"ciphertext": ct.json()["ciphertext"]})
    assert base64.b64decode(dec.json()["plaintext"]) == b"old data"
    adopted = [x for x in records(service, action="key.adopt") if x["outcome"] == "ok"]
    assert len(adopted) == 1 and adopted[0]["actor"] == "carol" and adopted[0]["key_id"] == rec["id"]
    assert [x["outcome"] for x in records(service, action="key.adopt")].count("denied") == 3   # refusals too


def test_adopting_a_key_pair_and_signing_with_it(service):
    priv, pub = plain_p256(service)
    body = {"uid": priv, "name": "legacy-ec", "algorithm": "ec-p256", "usage": ["sign", "verify"]}
    r = service.post("/v1/keys/adopt", headers=ADMIN, json={**body, "public_uid": priv})
    assert r.status_code == 400 and code(r) == "invalid_argument"               # not a public key
    r = service.post("/v1/keys/adopt", headers=ADMIN, json={**body, "public_uid": pub})
    assert r.status_code == 201, r.text
    assert r.json()["versions"][0]["objects"] == [priv, pub]
    app = svc("legacy-ec")
    sig = service.post("/v1/keys/legacy-ec/sign", headers=app, json={"message": b64(b"m")}).json()["signature"]
    ok = service.post("/v1/keys/legacy-ec/verify", headers=app, json={"message": b64(b"m"), "signature": sig})
    assert ok.json()["valid"] is True


def test_adopt_under_dual_control_needs_two_others(service):
    assert service.put("/v1/tags/pci", headers=ADMIN, json={"dual_control": True}).status_code == 200
    uid = plain_aes(service)
    body = {"uid": uid, "name": "legacy", "algorithm": "aes-256-gcm", "usage": ["encrypt"], "tags": ["pci"]}
    r = service.post("/v1/keys/adopt", headers=ADMIN, json=body)
    assert r.status_code == 428 and code(r) == "approval_required", r.text
    approval = r.json()["error"]["approval"]
    assert approval["status"] == "pending"
    r = service.post(f"/v1/approvals/{approval['id']}/approve", headers=ADMIN)      # the requester
    assert r.status_code == 403 and code(r) == "permission_denied"
    assert service.post("/v1/keys/adopt", headers=ADMIN, json={**body, "approval_id": approval["id"]}) \
        .status_code == 428                                                       # not approved yet
    assert service.post(f"/v1/approvals/{approval['id']}/approve", headers=OP).status_code == 200
    assert service.post(f"/v1/approvals/{approval['id']}/approve", headers=BOB).json()["status"] == "approved"
    r = service.post("/v1/keys/adopt", headers=ADMIN, json={**body, "name": "other", "approval_id": approval["id"]})
    assert r.status_code == 403 and code(r) == "permission_denied"              # for another request
    r = service.post("/v1/keys/adopt", headers=ADMIN, json={**body, "approval_id": approval["id"]})
    assert r.status_code == 201 and r.json()["tags"] == ["pci"], r.text
    assert [x["outcome"] for x in records(service, action="approval.executed")] == ["ok"]


# --- wrap / unwrap -------------------------------------------------------------------------
def exportable(service, name, algorithm="aes-256-gcm", usage=("encrypt", "decrypt")):
    """A key whose primary (v2, made after the flag) may be wrapped out."""
    create(service, name, algorithm, usage)
    r = service.post(f"/v1/keys/{name}/flags", headers=ADMIN, json={"exportable": True})
    assert r.status_code == 200 and r.json()["exportable"] is True
    assert service.post(f"/v1/keys/{name}/rotate", headers=OP).json()["primary"] == 2


def test_wrap_and_unwrap_as_a_new_key(service):
    create(service, "kek", usage=("wrap", "unwrap"))
    exportable(service, "data")
    app = svc("kek", "data", "copy")
    ct = service.post("/v1/keys/data/encrypt", headers=app, json={"plaintext": b64(b"secret")}).json()["ciphertext"]
    assert ct.startswith("ferrohsm:v2:")
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["wrapped"].startswith("ferrohsm:v1:") and out["target"]["key_version"] == 2
    assert len(base64.b64decode(out["wrapped"].split(":")[2])) == 40        # RFC 5649 of 32 bytes
    r = service.post("/v1/keys/kek/unwrap", headers=app,
                     json={"wrapped": out["wrapped"], "name": "copy", "algorithm": "aes-256-gcm",
                           "usage": ["encrypt", "decrypt"]})
    assert r.status_code == 201, r.text
    made = r.json()["key"]
    assert made["name"] == "copy" and made["owner"] == "app" and made["exportable"] is False
    # the copy holds data's v2 material: it opens data's ciphertext (retagged as its own v1)
    dec = service.post("/v1/keys/copy/decrypt", headers=app, json={"ciphertext": "ferrohsm:v1:" + ct.split(":", 2)[2]})
    assert dec.status_code == 200 and base64.b64decode(dec.json()["plaintext"]) == b"secret", dec.text
    # an imported key is not extractable: it does not leave again
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "copy"})
    assert r.status_code == 409 and code(r) == "failed_precondition"
    uses = [(x["action"], x["key_id"], x["outcome"]) for x in records(service) if x["actor"] == "app"]
    kek, data = service.get("/v1/keys/kek", headers=AUDITOR).json()["id"], out["target"]["key_id"]
    assert ("rest.wrap", kek, "ok") in uses and ("rest.export", data, "ok") in uses
    assert ("rest.unwrap", kek, "ok") in uses and ("key.import", made["id"], "ok") in uses
    assert "secret" not in service.get("/v1/audit", headers=AUDITOR, params={"limit": 1000}).text


def test_wrap_refusals(service):
    create(service, "kek", usage=("wrap", "unwrap"))
    create(service, "plain-enc")                                       # not for wrapping, not exportable
    exportable(service, "data")
    app = svc("kek", "data", "plain-enc")
    # v1 of data was made before it became exportable (CKA_EXTRACTABLE false, as C_WrapKey refuses)
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data", "version": 1})
    assert r.status_code == 409 and code(r) == "failed_precondition", r.text
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "plain-enc"})
    assert r.status_code == 409 and code(r) == "failed_precondition"
    r = service.post("/v1/keys/plain-enc/wrap", headers=app, json={"key": "data"})     # usage lacks wrap
    assert r.status_code == 409 and code(r) == "failed_precondition"
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "kek"})
    assert r.status_code == 400 and code(r) == "invalid_argument"
    r = service.post("/v1/keys/kek/wrap", headers=svc("kek"), json={"key": "data"})     # token lacks the target
    assert r.status_code == 403 and code(r) == "permission_denied"
    for who in (OP, ADMIN, AUDITOR):
        assert service.post("/v1/keys/kek/wrap", headers=who, json={"key": "data"}).status_code == 403
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "missing"})
    assert r.status_code == 404 and code(r) == "not_found"
    assert service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data", "version": 0}).status_code == 422
    assert service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data", "version": 9}).status_code == 404
    denied = [x["message"] for x in records(service, action="rest.export") if x["outcome"] == "denied"]
    assert denied == ["the key is not extractable"] * 2, denied            # data v1, plain-enc


def test_unwrap_refusals(service):
    create(service, "kek", usage=("wrap", "unwrap"))
    create(service, "wrap-only", usage=("wrap",))
    exportable(service, "data")
    exportable(service, "signer", "ec-p256", ("sign", "verify"))
    app = svc("kek", "data", "signer", "wrap-only")
    wrapped = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data"}).json()["wrapped"]
    body = {"wrapped": wrapped, "name": "copy", "algorithm": "aes-256-gcm", "usage": ["encrypt"]}
    for bad in ("nope", "ferrohsm:v1:%%%", "ferrohsm:v1:AAAA", "ferrohsm:v7:" + wrapped.split(":")[2]):
        r = service.post("/v1/keys/kek/unwrap", headers=app, json={**body, "wrapped": bad})
        assert 400 <= r.status_code < 500 and code(r) in ("invalid_wrapped", "failed_precondition"), (bad, r.text)
    raw = bytearray(base64.b64decode(wrapped.split(":")[2]))
    raw[3] ^= 1
    r = service.post("/v1/keys/kek/unwrap", headers=app, json={**body, "wrapped": "ferrohsm:v1:" + b64(bytes(raw))})
    assert r.status_code == 400 and code(r) == "invalid_wrapped", r.text
    r = service.post("/v1/keys/kek/unwrap", headers=app, json={**body, "algorithm": "hmac-sha256", "usage": ["mac"]})
    assert r.status_code == 201                                   # 32 bytes of key: an HMAC key too, if asked
    r = service.post("/v1/keys/kek/unwrap", headers=app, json={**body, "name": "data"})
    assert r.status_code == 409 and code(r) == "conflict"
    r = service.post("/v1/keys/wrap-only/unwrap", headers=app, json=body)
    assert r.status_code == 409 and code(r) == "failed_precondition"
    # a private key wraps out (its PKCS#8), but only secret keys are imported
    w = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "signer"})
    assert w.status_code == 200, w.text
    r = service.post("/v1/keys/kek/unwrap", headers=app,
                     json={"wrapped": w.json()["wrapped"], "name": "ec-copy", "algorithm": "ec-p256",
                           "usage": ["sign"]})
    assert r.status_code == 400 and code(r) == "invalid_argument"
    assert service.post("/v1/keys/kek/unwrap", headers=AUDITOR, json=body).status_code == 403


def test_wrap_under_dual_control(service):
    assert service.put("/v1/tags/guarded", headers=ADMIN, json={"dual_control": True}).status_code == 200
    create(service, "kek", usage=("wrap", "unwrap"))
    exportable(service, "data")
    assert service.post("/v1/keys/data/tags/guarded", headers=ADMIN).status_code == 200
    app = svc("kek", "data")
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data"})
    assert r.status_code == 428 and code(r) == "approval_required", r.text
    approval = r.json()["error"]["approval"]["id"]
    assert [x["action"] for x in records(service) if x["actor"] == "app"] == ["approval.requested"]   # no use yet
    # the requester may not approve, even holding an operator's token
    r = service.post(f"/v1/approvals/{approval}/approve", headers=bearer(sub="app", roles=["operator"]))
    assert r.status_code == 403 and code(r) == "permission_denied"
    assert service.post(f"/v1/approvals/{approval}/approve", headers=OP).status_code == 200
    assert code(service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data", "approval_id": approval})) \
        == "approval_required"                                                    # one of two
    assert service.post(f"/v1/approvals/{approval}/approve", headers=BOB).json()["status"] == "approved"
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data", "version": 1, "approval_id": approval})
    assert r.status_code == 403 and code(r) == "permission_denied"               # another request
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data", "approval_id": approval})
    assert r.status_code == 200 and r.json()["wrapped"].startswith("ferrohsm:v1:"), r.text
    r = service.post("/v1/keys/kek/wrap", headers=app, json={"key": "data", "approval_id": approval})
    assert r.status_code == 409 and code(r) == "failed_precondition"             # replayed: executed already
    assert any(x["action"] == "approval.executed" and x["actor"] == "app" for x in records(service))


# --- batch sign ------------------------------------------------------------------------
def test_sign_batch_of_messages_and_digests(service):
    create(service, "s", "ec-p256", ("sign", "verify"))
    app = svc("s")
    before = len(records(service))
    items = [{"message": b64(f"m{i}".encode())} for i in range(20)]
    items += [{"digest": b64(hashlib.sha256(b"by digest").digest())}]
    r = service.post("/v1/keys/s/sign/batch", headers=app, json={"items": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 21 and all(x["key_version"] == 1 for x in results)
    token = service.gov.token
    rec = service.gov.get_key("s")
    with token.lock:
        point = token.by_uid[rec.versions[0].objects[1]]
        der = bytes(token.open(point).attrs[C.CKA_PUBLIC_KEY_INFO])
    public = load_der_public_key(der)
    for i, x in enumerate(results[:20]):             # checked by cryptography, not by ourselves
        public.verify(base64.b64decode(x["signature"]), f"m{i}".encode(), ec.ECDSA(hashes.SHA256()))
    public.verify(base64.b64decode(results[20]["signature"]), b"by digest", ec.ECDSA(hashes.SHA256()))
    uses = [x["action"] for x in records(service)[before:] if x["action"].startswith("rest.")]
    assert uses == ["rest.sign", "rest.sign"]         # one for the messages, one for the digests
    bad = [{"message": b64(b"x"), "digest": b64(b"y")}]
    assert code(service.post("/v1/keys/s/sign/batch", headers=app, json={"items": bad})) == "invalid_argument"
    mixed = [{"digest": b64(bytes(32))}, {"digest": b64(bytes(48))}]
    assert code(service.post("/v1/keys/s/sign/batch", headers=app, json={"items": mixed})) == "invalid_argument"
    assert service.post("/v1/keys/s/sign/batch", headers=app, json={"items": []}).status_code == 422
    assert service.post("/v1/keys/s/sign/batch", headers=app, json={"items": [{"message": "x"}] * 1001}) \
        .status_code == 422
    assert service.post("/v1/keys/s/sign/batch", headers=AUDITOR, json={"items": items}).status_code == 403
    assert service.post("/v1/keys/s/sign/batch", headers=svc("other"), json={"items": items}).status_code == 403
    create(service, "e", "ed25519", ("sign", "verify"))
    r = service.post("/v1/keys/e/sign/batch", headers=svc("e"), json={"items": [{"digest": b64(bytes(32))}]})
    assert r.status_code == 400 and code(r) == "invalid_argument"
