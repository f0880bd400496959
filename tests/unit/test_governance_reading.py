"""Reading records without copying them (Governance.read_key, key_page): what a key use
or a listing is given is a read-only view of the record decoded once and cached on its
object (the one the gate reads, Obj.cache[gate.RECORD]); changing it through the view is
refused, and the cached record stays what the store holds. get_key / list_keys still
give copies the caller may change."""

import pytest

from provider import constants as C
from provider import gate
from provider.governance import record as R
from provider.governance.views import ReadOnly, dumps

from .govkit import ALICE


def cached(gov, name):
    obj, rec = gov._find_key(name)
    return obj.cache[gate.RECORD]


def stored(gov, name):
    obj, _ = gov._find_key(name)
    return R.KeyRecord.decode(gov.token.open(obj).attrs[C.CKA_FERRO_RECORD])


def test_a_read_view_cannot_change_the_cached_record(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"], description="d")
    gov.rotate(ALICE, "k")
    gov.revoke(ALICE, "k", 1, "superseded")
    with gov.token.lock:
        gov.token.refresh()
        view = gov.read_key("k")
    assert view._of is cached(gov, "k")          # no copy: the gate's cached record
    before = stored(gov, "k")
    with pytest.raises(AttributeError):
        view.primary = 1
    with pytest.raises(AttributeError):
        del view.name
    with pytest.raises(AttributeError):
        view.usage.append("sign")                # a tuple
    with pytest.raises(AttributeError):
        view.version(2).state = R.DISABLED       # a method's answer is a view too
    with pytest.raises(AttributeError):
        view.versions[0].objects.clear()
    with pytest.raises(TypeError):
        view.version(1).revocation["reason"] = "unspecified"     # a read-only mapping
    assert set(view.usage) == {"encrypt", "decrypt"} and view.version(1).revocation["reason"] == "superseded"
    assert cached(gov, "k") == before == stored(gov, "k")


def test_get_key_and_list_keys_give_copies_the_caller_may_change(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    before = stored(gov, "k")
    copy = gov.get_key("k")
    copy.usage.append("sign")
    copy.versions[0].state = R.DISABLED
    (listed,), _ = gov.list_keys()
    listed.name = "changed"
    assert cached(gov, "k") == before and gov.get_key("k") == before
    assert not isinstance(copy, ReadOnly) and not isinstance(listed, ReadOnly)


def test_key_page_pages_by_name_and_filters(gov):
    for name in ("c2", "a1", "b3", "a3", "b1"):
        gov.create_key(ALICE, name, "aes-256-gcm" if name != "b3" else "hmac-sha256",
                       ["encrypt", "decrypt"] if name != "b3" else ["mac"])
    gov.rotate(ALICE, "a3")
    gov.disable_version(ALICE, "a3", 1)
    names = []
    page, token = gov.key_page(page_size=2)
    while True:
        assert all(isinstance(k, ReadOnly) for k in page)
        names += [k.name for k in page]
        if token is None:
            break
        page, token = gov.key_page(page_token=token, page_size=2)
    assert names == ["a1", "a3", "b1", "b3", "c2"]
    assert [k.name for k in gov.key_page(algorithm="hmac-sha256")[0]] == ["b3"]
    assert [k.name for k in gov.key_page(name_prefix="b")[0]] == ["b1", "b3"]
    assert [k.name for k in gov.key_page(state="disabled")[0]] == ["a3"]
    page, token = gov.key_page(name_prefix="a", page_size=1)
    assert [k.name for k in page] == ["a1"] and token is not None
    assert [k.name for k in gov.key_page(name_prefix="a", page_size=1, page_token=token)[0]] == ["a3"]
    assert gov.key_page(name_prefix="a", page_size=2)[1] is None      # nothing after a full last page


def test_dumps_writes_a_view_as_the_records_fields(gov):
    import dataclasses
    import json
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    (view,), _ = gov.key_page()
    assert json.loads(dumps({"keys": [view]})) == {"keys": [dataclasses.asdict(gov.get_key("k"))]}
    with pytest.raises(TypeError):
        dumps({"x": object()})
