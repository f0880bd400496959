"""Step 4: the /v1 routes over the governance API and the gate, through real uvicorn:
keys (create, list with page tokens and ETag, get, rotate, rollback, enable/disable,
schedule destroy and restore), AES-256-GCM encrypt/decrypt with aad and versioned
ciphertexts, sign/verify, dual-control approvals, the audit query."""

import base64

import pytest

from provider.governance import record as R

from .conftest import ADMIN, AUDITOR, BOB, OP, b64, bearer




def svc(*keys):
    return bearer(sub="app", roles=["service"], keys=list(keys))


def create(service, name, algorithm="aes-256-gcm", usage=("encrypt", "decrypt"), **kw):
    r = service.post("/v1/keys", headers=OP, json={"name": name, "algorithm": algorithm, "usage": list(usage), **kw})
    assert r.status_code == 201, r.text
    return r.json()


def code(r):
    return r.json()["error"]["code"]


def test_create_get_list_pages_and_etag(service):
    made = [create(service, f"key-{i:02}") for i in range(5)]
    assert made[0]["primary"] == 1 and made[0]["versions"][0]["state"] == "enabled"
    assert service.get(f"/v1/keys/{made[0]['id']}", headers=AUDITOR).json()["name"] == "key-00"
    assert service.get("/v1/keys/key-00", headers=AUDITOR).json()["id"] == made[0]["id"]
    assert code(service.post("/v1/keys", headers=OP, json={"name": "key-00", "algorithm": "aes-256-gcm",
                                                           "usage": ["encrypt"]})) == "conflict"
    names, page = [], None
    while True:
        r = service.get("/v1/keys", headers=AUDITOR, params={"page_size": 2, **({"page_token": page} if page else {})})
        assert r.status_code == 200
        body = r.json()
        names += [k["name"] for k in body["keys"]]
        page = body["next_page_token"]
        if not page:
            break
    assert names == [f"key-{i:02}" for i in range(5)]
    assert [k["name"] for k in service.get("/v1/keys", headers=AUDITOR, params={"name_prefix": "key-0"}).json()["keys"]]
    r = service.get("/v1/keys", headers=AUDITOR)
    etag = r.headers["etag"]
    again = service.get("/v1/keys", headers={**AUDITOR, "If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and again.content == b""
    create(service, "key-99")
    assert service.get("/v1/keys", headers={**AUDITOR, "If-None-Match": etag}).status_code == 200


def test_encrypt_decrypt_with_aad_across_rotation_and_disable(service):
    create(service, "data")
    app = svc("data")
    r = service.post("/v1/keys/data/encrypt", headers=app, json={"plaintext": b64(b"hello"), "aad": b64(b"ctx")})
    assert r.status_code == 200, r.text
    ct1 = r.json()["ciphertext"]
    assert ct1.startswith("ferrohsm:v1:") and r.json()["key_version"] == 1
    dec = service.post("/v1/keys/data/decrypt", headers=app, json={"ciphertext": ct1, "aad": b64(b"ctx")})
    assert base64.b64decode(dec.json()["plaintext"]) == b"hello"
    # wrong aad, tampered body, malformed: 400 invalid_ciphertext
    assert code(service.post("/v1/keys/data/decrypt", headers=app, json={"ciphertext": ct1, "aad": b64(b"x")})) \
        == "invalid_ciphertext"
    raw = bytearray(base64.b64decode(ct1.split(":")[2]))
    raw[-1] ^= 1
    assert code(service.post("/v1/keys/data/decrypt", headers=app,
                             json={"ciphertext": "ferrohsm:v1:" + b64(bytes(raw)), "aad": b64(b"ctx")})) \
        == "invalid_ciphertext"
    for bad in ("nope", "ferrohsm:v0:AAAA", "ferrohsm:v1:%%%", "ferrohsm:v1:AAAA"):
        r = service.post("/v1/keys/data/decrypt", headers=app, json={"ciphertext": bad})
        assert r.status_code == 400 and code(r) == "invalid_ciphertext", (bad, r.text)
    assert code(service.post("/v1/keys/data/encrypt", headers=app, json={"plaintext": "***"})) == "invalid_argument"
    # rotate: new ciphertexts are v2, v1 still decrypts
    rot = service.post("/v1/keys/data/rotate", headers=OP)
    assert rot.status_code == 200 and rot.json()["primary"] == 2
    ct2 = service.post("/v1/keys/data/encrypt", headers=app, json={"plaintext": b64(b"two")}).json()["ciphertext"]
    assert ct2.startswith("ferrohsm:v2:")
    assert service.post("/v1/keys/data/decrypt", headers=app, json={"ciphertext": ct1, "aad": b64(b"ctx")}) \
        .status_code == 200
    # v1 disabled: its ciphertexts are refused, re-enabled: accepted again
    assert service.post("/v1/keys/data/versions/1/disable", headers=OP).status_code == 200
    r = service.post("/v1/keys/data/decrypt", headers=app, json={"ciphertext": ct1, "aad": b64(b"ctx")})
    assert r.status_code == 409 and code(r) == "failed_precondition"
    assert service.post("/v1/keys/data/versions/1/enable", headers=OP).status_code == 200
    # rollback to v1: encrypt uses v1 again
    assert service.post("/v1/keys/data/primary", headers=OP, json={"version": 1}).json()["primary"] == 1
    ct = service.post("/v1/keys/data/encrypt", headers=app, json={"plaintext": b64(b"x")}).json()["ciphertext"]
    assert ct.startswith("ferrohsm:v1:")
    assert code(service.post("/v1/keys/data/primary", headers=OP, json={"version": 9})) in ("not_found",
                                                                                            "failed_precondition")
    # the uses are in the audit chain, with the REST principal and the request id
    r = service.get("/v1/audit", headers=AUDITOR, params={"limit": 1000})
    records = r.json()["records"]
    uses = [x for x in records if x["action"] == "rest.encrypt" and x["actor"] == "app"]
    assert len(uses) == 3 and all(u["interface"] == "rest" and u["correlation_id"] for u in uses)
    assert any(x["action"] == "key.rotate" and x["actor"] == "alice" for x in records)
    assert "hello" not in r.text and b64(b"hello") not in r.text
    assert r.json()["next_after"] == records[-1]["seq"]
    assert service.get("/v1/audit", headers=AUDITOR, params={"after": records[-1]["seq"]}).json()["records"] == []


def test_a_signing_key_does_not_encrypt(service):
    create(service, "sig", "ec-p256", ("sign", "verify"))
    r = service.post("/v1/keys/sig/encrypt", headers=svc("sig"), json={"plaintext": b64(b"x")})
    assert r.status_code == 409 and code(r) == "failed_precondition"
    create(service, "enc-only", usage=("encrypt",))
    ct = service.post("/v1/keys/enc-only/encrypt", headers=svc("enc-only"), json={"plaintext": b64(b"x")})
    r = service.post("/v1/keys/enc-only/decrypt", headers=svc("enc-only"), json={"ciphertext": ct.json()["ciphertext"]})
    assert r.status_code == 409 and code(r) == "failed_precondition"


@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "ed25519", "rsa-2048"])
def test_sign_verify(service, algorithm):
    create(service, "s", algorithm, ("sign", "verify"))
    app = svc("s")
    r = service.post("/v1/keys/s/sign", headers=app, json={"message": b64(b"msg")})
    assert r.status_code == 200, r.text
    sig = r.json()["signature"]
    if algorithm.startswith("ec-"):
        assert base64.b64decode(sig)[0] == 0x30          # DER SEQUENCE
    ok = service.post("/v1/keys/s/verify", headers=app, json={"message": b64(b"msg"), "signature": sig})
    assert ok.status_code == 200 and ok.json()["valid"] is True
    bad = service.post("/v1/keys/s/verify", headers=app, json={"message": b64(b"other"), "signature": sig})
    assert bad.status_code == 200 and bad.json()["valid"] is False
    junk = service.post("/v1/keys/s/verify", headers=app, json={"message": b64(b"msg"), "signature": b64(b"x")})
    assert junk.status_code == 200 and junk.json()["valid"] is False


def test_schedule_destroy_and_restore(service):
    create(service, "old")
    service.post("/v1/keys/old/rotate", headers=OP)
    r = service.post("/v1/keys/old/versions/1/schedule-destroy", headers=OP)
    assert r.status_code == 200, r.text
    assert r.json()["versions"][0]["state"] == R.DESTROY_SCHEDULED
    assert code(service.post("/v1/keys/old/versions/2/schedule-destroy", headers=OP)) == "failed_precondition"
    r = service.post("/v1/keys/old/versions/1/restore", headers=OP)
    assert r.status_code == 200 and r.json()["versions"][0]["state"] != R.DESTROY_SCHEDULED


def test_dual_control_destroy_needs_two_other_operators(service):
    assert service.put("/v1/tags/guarded", headers=OP, json={"dual_control": True}).status_code == 403
    r = service.put("/v1/tags/guarded", headers=ADMIN, json={"dual_control": True, "quorum": 2})
    assert r.status_code == 200 and r.json()["dual_control"] is True, r.text
    create(service, "vault", tags=["guarded"])
    service.post("/v1/keys/vault/rotate", headers=OP)
    r = service.post("/v1/keys/vault/versions/1/schedule-destroy", headers=OP)
    assert r.status_code == 428 and code(r) == "approval_required", r.text
    approval = r.json()["error"]["approval"]["id"]
    listed = service.get("/v1/approvals", headers=AUDITOR, params={"status": "pending"}).json()["approvals"]
    assert [a["id"] for a in listed] == [approval]
    # the requester may not approve; an auditor may not; a second operator and an administrator may
    r = service.post(f"/v1/approvals/{approval}/approve", headers=OP)
    assert r.status_code == 403 and code(r) == "permission_denied"
    assert service.post(f"/v1/approvals/{approval}/approve", headers=AUDITOR).status_code == 403
    assert service.post(f"/v1/approvals/{approval}/approve", headers=BOB).status_code == 200
    assert code(service.post("/v1/keys/vault/versions/1/schedule-destroy", headers=OP,
                             json={"approval_id": approval})) in ("approval_required", "failed_precondition")
    assert service.post(f"/v1/approvals/{approval}/approve", headers=ADMIN).json()["status"] == "approved"
    r = service.post("/v1/keys/vault/versions/1/schedule-destroy", headers=OP, json={"approval_id": approval})
    assert r.status_code == 200, r.text
    # replayed: the approval was single use
    service.post("/v1/keys/vault/versions/1/restore", headers=OP)
    r = service.post("/v1/keys/vault/versions/1/schedule-destroy", headers=OP, json={"approval_id": approval})
    assert r.status_code in (409, 428) and r.status_code < 500
    # deny
    r = service.post("/v1/keys/vault/versions/1/schedule-destroy", headers=OP)
    other = r.json()["error"]["approval"]["id"]
    assert service.post(f"/v1/approvals/{other}/deny", headers=BOB).json()["status"] == "denied"
    assert code(service.post("/v1/approvals/00000000-0000-0000-0000-000000000000/approve", headers=BOB)) \
        == "not_found"


def test_tags_floors_flags_revoke(service):
    assert code(service.put("/v1/tags/t", headers=ADMIN, json={"quorum": 1})) == "invalid_argument"
    assert service.put("/v1/tags/t", headers=ADMIN, json={"retention_days": 0}).status_code == 200
    assert [t["name"] for t in service.get("/v1/tags", headers=AUDITOR).json()["tags"]] == ["t"]
    assert service.get("/v1/tags/t", headers=AUDITOR).json()["security_level"] == "software"
    assert service.get("/v1/tags/t", headers=AUDITOR).json()["auto_rotate"] is False
    auto = service.put("/v1/tags/auto", headers=ADMIN, json={"auto_rotate": True}).json()
    assert (auto["auto_rotate"], auto["rotation_period_days"]) == (True, None)    # the 90-day default
    assert code(service.get("/v1/tags/none", headers=AUDITOR)) == "not_found"
    create(service, "f")
    assert service.post("/v1/keys/f/tags/t", headers=ADMIN).json()["tags"] == ["t"]
    assert code(service.post("/v1/keys/f/tags/missing", headers=ADMIN)) == "not_found"
    assert service.delete("/v1/keys/f/tags/t", headers=ADMIN).json()["tags"] == []
    service.post("/v1/keys/f/rotate", headers=OP)
    r = service.post("/v1/keys/f/floors", headers=ADMIN, json={"min_decrypt_version": 2, "min_encrypt_version": 2})
    assert r.status_code == 200 and r.json()["min_decrypt_version"] == 2, r.text
    assert code(service.post("/v1/keys/f/floors", headers=ADMIN, json={"min_decrypt_version": 1})) \
        in ("failed_precondition", "invalid_argument")                  # floors only rise
    assert service.post("/v1/keys/f/floors", headers=OP, json={"min_decrypt_version": 2}).status_code == 403
    assert service.post("/v1/keys/f/flags", headers=ADMIN, json={"allow_plaintext_backup": True}) \
        .json()["allow_plaintext_backup"] is True
    assert code(service.post("/v1/keys/f/versions/2/revoke", headers=OP, json={"reason": "superseded"})) \
        == "failed_precondition"                                        # not the primary
    service.post("/v1/keys/f/rotate", headers=OP)
    r = service.post("/v1/keys/f/versions/2/revoke", headers=OP, json={"reason": "key_compromise"})
    assert r.status_code == 200, r.text
    assert r.json()["versions"][1]["revocation"]["reason"] == "key_compromise"
    assert code(service.post("/v1/keys/f/versions/2/revoke", headers=OP, json={"reason": "bored"})) \
        == "invalid_argument"


def test_batch_encrypt_decrypt(service):
    create(service, "bulk")
    app = svc("bulk")
    items = [{"plaintext": b64(f"item {i}".encode()), "aad": b64(str(i).encode())} for i in range(200)]
    before = len(service.get("/v1/audit", headers=AUDITOR, params={"limit": 1000}).json()["records"])
    r = service.post("/v1/keys/bulk/encrypt/batch", headers=app, json={"items": items})
    assert r.status_code == 200, r.text
    cts = r.json()["ciphertexts"]
    assert len(cts) == 200 and len(set(cts)) == 200 and all(c.startswith("ferrohsm:v1:") for c in cts)
    service.post("/v1/keys/bulk/rotate", headers=OP)
    v2 = service.post("/v1/keys/bulk/encrypt", headers=app, json={"plaintext": b64(b"new")}).json()["ciphertext"]
    batch = [{"ciphertext": c, "aad": b64(str(i).encode())} for i, c in enumerate(cts[:3])]
    batch += [{"ciphertext": cts[3], "aad": b64(b"wrong")}, {"ciphertext": "junk"}, {"ciphertext": v2}]
    res = service.post("/v1/keys/bulk/decrypt/batch", headers=app, json={"items": batch}).json()["results"]
    assert [base64.b64decode(x["plaintext"]) for x in res[:3]] == [b"item 0", b"item 1", b"item 2"]
    assert res[3]["error"]["code"] == "invalid_ciphertext" and res[4]["error"]["code"] == "invalid_ciphertext"
    assert res[5]["key_version"] == 2 and base64.b64decode(res[5]["plaintext"]) == b"new"
    records = service.get("/v1/audit", headers=AUDITOR, params={"limit": 1000}).json()["records"]
    uses = [x["action"] for x in records[before:] if x["action"].startswith("rest.")]
    assert uses == ["rest.encrypt", "rest.encrypt", "rest.decrypt", "rest.decrypt"]   # once per batch/version
    assert service.post("/v1/keys/bulk/encrypt/batch", headers=app, json={"items": []}).status_code == 422
    assert service.post("/v1/keys/bulk/encrypt/batch", headers=app,
                        json={"items": [{"plaintext": ""}] * 1001}).status_code == 422


def test_mac_and_verify(service):
    create(service, "hm", "hmac-sha256", ("mac",))
    app = svc("hm")
    r = service.post("/v1/keys/hm/mac", headers=app, json={"message": b64(b"m")})
    assert r.status_code == 200, r.text
    tag = r.json()["mac"]
    assert len(base64.b64decode(tag)) == 32
    ok = service.post("/v1/keys/hm/mac/verify", headers=app, json={"message": b64(b"m"), "mac": tag})
    assert ok.json()["valid"] is True
    assert service.post("/v1/keys/hm/mac/verify", headers=app, json={"message": b64(b"n"), "mac": tag}) \
        .json()["valid"] is False
    assert service.post("/v1/keys/hm/mac/verify", headers=app, json={"message": b64(b"m"), "mac": b64(b"x")}) \
        .json()["valid"] is False
    create(service, "notmac")
    r = service.post("/v1/keys/notmac/mac", headers=svc("notmac"), json={"message": b64(b"m")})
    assert r.status_code == 409 and code(r) == "failed_precondition"


@pytest.mark.parametrize("algorithm, hash_name", [("ec-p256", "sha256"), ("ec-p384", "sha384")])
def test_sign_by_digest_verifies_by_message(service, algorithm, hash_name):
    import hashlib
    create(service, "d", algorithm, ("sign", "verify"))
    app = svc("d")
    digest = hashlib.new(hash_name, b"payload").digest()
    sig = service.post("/v1/keys/d/sign", headers=app, json={"digest": b64(digest)}).json()["signature"]
    assert service.post("/v1/keys/d/verify", headers=app, json={"message": b64(b"payload"), "signature": sig}) \
        .json()["valid"] is True
    assert service.post("/v1/keys/d/verify", headers=app, json={"digest": b64(digest), "signature": sig}) \
        .json()["valid"] is True
    assert code(service.post("/v1/keys/d/sign", headers=app, json={"digest": b64(b"short")})) == "invalid_argument"
    assert code(service.post("/v1/keys/d/sign", headers=app, json={})) == "invalid_argument"
    assert code(service.post("/v1/keys/d/sign", headers=app,
                             json={"digest": b64(digest), "message": b64(b"x")})) == "invalid_argument"
