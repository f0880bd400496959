"""gate.wrap_out: the one rule of a key leaving the token wrapped, which C_WrapKey
(fn_keys.wrap_key) and the REST wrap both call: CKA_EXTRACTABLE, the wrapping key's
CKA_WRAP_TEMPLATE, and for a governed key `exportable` and dual control (an approval
the caller's governance consumed), each refusal of a governed key audited."""

import json

import pytest

from provider import constants as C
from provider import gate
from provider.audit import Audit
from provider.audit import verifier as V
from provider.errors import PKCS11Error
from provider.governance import Governance, auditing
from provider.governance import record as R
from provider.principal import Principal

from .govkit import ALICE, CAROL, Clock, new_token

APP = Principal("app", frozenset({"service"}), interface="pkcs11")


@pytest.fixture
def gov(tmp_path):
    token = new_token("sqlite", tmp_path)
    token.audit = Audit(token.store, b"k" * 32)
    yield Governance(token, auditing.recorder(token.audit), clock=Clock())
    token.store.close()


def objects(gov, name):
    rec = gov.get_key(name)
    kek = gov.token.by_uid[gov.get_key("kek").version(1).objects[0]]
    return kek, gov.token.by_uid[rec.version(rec.primary).objects[0]]


def refused(rv, *args, **kw):
    with pytest.raises(PKCS11Error) as e:
        gate.wrap_out(*args, **kw)
    assert e.value.rv == rv, e.value


def exports(gov):
    return [(r["outcome"], r["message"]) for r in (json.loads(b) for _, b in V.rows_of(gov.token.store))
            if r["action"] == "pkcs11.export"]


def test_the_rule_for_governed_keys(gov):
    gov.create_key(ALICE, "kek", "aes-256-gcm", ["wrap", "unwrap"])
    gov.create_key(ALICE, "data", "aes-256-gcm", ["encrypt", "decrypt"])
    token = gov.token
    kek, v1 = objects(gov, "data")
    refused(C.CKR_KEY_UNEXTRACTABLE, token, kek, v1, APP)                   # not exportable: not extractable
    gov.set_flags(CAROL, "data", exportable=True)
    refused(C.CKR_KEY_UNEXTRACTABLE, token, kek, v1, APP)                   # v1 was made before the flag
    gov.rotate(ALICE, "data")
    kek, v2 = objects(gov, "data")
    gate.wrap_out(token, kek, v2, APP)                                      # exportable, no dual control
    gov.put_tag(CAROL, R.PolicyTag("pci", dual_control=True))
    gov.attach_tag(CAROL, "data", "pci")
    refused(C.CKR_FUNCTION_REJECTED, token, kek, v2, APP)                   # PKCS#11 names no approval
    gate.wrap_out(token, kek, v2, APP, approved=True)                       # the REST wrap consumed one
    assert exports(gov) == [("denied", "the key is not extractable")] * 2 + [
        ("ok", ""), ("denied", "export needs an approval"), ("ok", "")]


def test_a_wrap_template_binds(gov):
    gov.create_key(ALICE, "kek", "aes-256-gcm", ["wrap", "unwrap"])
    gov.create_key(ALICE, "data", "aes-256-gcm", ["encrypt", "decrypt"])
    gov.set_flags(CAROL, "data", exportable=True)
    gov.rotate(ALICE, "data")
    kek, key = objects(gov, "data")
    picky = type(kek)(kek.handle, kek.uid, {**kek.attrs, C.CKA_WRAP_TEMPLATE: ((C.CKA_LABEL, b"other"),)})
    refused(C.CKR_KEY_NOT_WRAPPABLE, gov.token, picky, key, APP)
    assert exports(gov)[-1] == ("denied", "key does not match CKA_WRAP_TEMPLATE")
