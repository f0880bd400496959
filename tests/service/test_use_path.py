"""A REST key use makes one head check (Token.refresh), under the token's lock, whose
state the record lookup, the version object and the gate all read (crypto.py): a change
another process made before it is what the use sees."""

from tests.unit.govkit import ALICE, governance, new_token

from .conftest import bearer

AES = {"algorithm": "aes-256-gcm", "usage": ["encrypt", "decrypt"]}


def test_one_head_check_per_encrypt_and_another_process_change_applies(service, tmp_path, monkeypatch):
    ops = bearer(roles=["operator"])
    svc = bearer(sub="app", roles=["service"], keys=["k"])
    assert service.post("/v1/keys", headers=ops, json={"name": "k", **AES}).status_code == 201
    token = service.gov.token
    calls = []
    real = token.refresh

    def counted():
        calls.append(1)
        real()
    monkeypatch.setattr(token, "refresh", counted)
    r = service.post("/v1/keys/k/encrypt", headers=svc, json={"plaintext": "aGk="})
    assert r.status_code == 200 and r.json()["key_version"] == 1
    assert len(calls) == 1
    ciphertext = r.json()["ciphertext"]
    # another process (its own token on the store file) rotates, then revokes v1
    other = governance(new_token("sqlite", tmp_path, fresh=False))
    other.rotate(ALICE, "k")
    r = service.post("/v1/keys/k/encrypt", headers=svc, json={"plaintext": "aGk="})
    assert r.status_code == 200 and r.json()["key_version"] == 2 and len(calls) == 2
    other.revoke(ALICE, "k", 1, "key_compromise")
    r = service.post("/v1/keys/k/decrypt", headers=svc, json={"ciphertext": ciphertext})
    assert r.status_code == 409 and r.json()["error"]["code"] == "failed_precondition", r.text
    assert len(calls) == 3
    other.token.store.close()
