"""GET /v1/keys is cached by the store's head (listing.py): the same query again is a
hit with the same ETag; a change by this service or by another process (a second token
on the same store file, as a PKCS#11 client or the scheduler elsewhere would be) is
seen at the next request; key uses (audit records) leave the cache warm."""

from tests.unit.govkit import ALICE, governance, new_token

from .conftest import bearer

AES = {"algorithm": "aes-256-gcm", "usage": ["encrypt", "decrypt"]}


def names(r):
    assert r.status_code == 200, r.text
    return [k["name"] for k in r.json()["keys"]]


def cache(service):
    return service.get("/healthz").json()["cache"]["keys_list"]


def test_listing_is_cached_until_any_process_changes_the_store(service, tmp_path):
    ops = bearer(roles=["operator"])
    assert service.post("/v1/keys", headers=ops, json={"name": "a1", **AES}).status_code == 201
    first = service.get("/v1/keys", headers=ops)
    before = cache(service)
    again = service.get("/v1/keys", headers=ops)
    assert names(again) == ["a1"] and again.headers["etag"] == first.headers["etag"]
    assert cache(service)["hits"] == before["hits"] + 1
    # a key use writes an audit record, not a key: still a hit
    svc = bearer(sub="app", roles=["service"], keys=["a1"])
    assert service.post("/v1/keys/a1/encrypt", headers=svc, json={"plaintext": "aGk="}).status_code == 200
    assert service.get("/v1/keys", headers=ops).headers["etag"] == first.headers["etag"]
    assert cache(service)["hits"] == before["hits"] + 2
    # a change through the service
    assert service.post("/v1/keys", headers=ops, json={"name": "a2", **AES}).status_code == 201
    assert names(service.get("/v1/keys", headers=ops)) == ["a1", "a2"]
    # a change by another process: its own token and connection on the same store file
    other = governance(new_token("sqlite", tmp_path, fresh=False))
    other.create_key(ALICE, "a3", "aes-256-gcm", ["encrypt"])
    r = service.get("/v1/keys", headers=ops)
    assert names(r) == ["a1", "a2", "a3"] and r.headers["etag"] != first.headers["etag"]
    other.rotate(ALICE, "a3")
    r2 = service.get("/v1/keys", headers=ops, params={"name_prefix": "a3"})
    assert r2.json()["keys"][0]["primary"] == 2
    # each query is its own entry; a conditional request of a cached page is a 304
    assert service.get("/v1/keys", headers={**ops, "If-None-Match": r2.headers["etag"]},
                       params={"name_prefix": "a3"}).status_code == 304
    other.token.store.close()
