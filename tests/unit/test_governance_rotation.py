"""Automatic rotation from policy tags (default 90 days when a tag asks for it without a
period, bounded 1..365), and a version's key pair generated before its store
transaction while its number is assigned inside it (versions strictly increase when
callers rotate at once)."""

import threading

import pytest

from provider import constants as C
from provider.governance import GovernanceError
from provider.governance import record as R
from provider.governance.service import DEFAULT_ROTATION_DAYS, tag_rotation_days
from provider.mechanisms import registry

from .govkit import ALICE, BOB, CAROL, Clock, governance, new_token

DAY = 86400


# --- default rotation from tags ------------------------------------------------------
def test_a_tag_asking_for_rotation_without_a_period_rotates_every_90_days(gov):
    gov.put_tag(CAROL, R.PolicyTag("rotated", auto_rotate=True))
    rec = gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"], tags=["rotated"])
    assert DEFAULT_ROTATION_DAYS == 90
    assert rec.next_rotation_at == gov.clock.now + 90 * DAY
    gov.clock.advance(90 * DAY - 1)
    assert gov.tick() == []
    gov.clock.advance(1)
    assert gov.tick() == [("key.auto_rotate", rec.id, 2)]
    after = gov.get_key("k")
    assert after.primary == 2 and after.next_rotation_at == gov.clock.now + 90 * DAY
    gov.clock.advance(90 * DAY)
    assert gov.tick() == [("key.auto_rotate", rec.id, 3)]
    assert [e["action"] for e in gov.events].count("key.auto_rotate") == 2


def test_the_scheduler_rotates_a_key_pair_from_material_made_before_its_transaction(gov):
    gov.put_tag(CAROL, R.PolicyTag("rotated", auto_rotate=True))
    rec = gov.create_key(ALICE, "sig", "ec-p256", ["sign", "verify"], tags=["rotated"])
    gov.clock.advance(90 * DAY)
    assert gov.tick() == [("key.auto_rotate", rec.id, 2)]
    after = gov.get_key("sig")
    objs = [gov.token.by_uid[uid] for uid in after.version(2).objects]
    assert [o.cls for o in objs] == [C.CKO_PRIVATE_KEY, C.CKO_PUBLIC_KEY]
    assert objs[0].attrs[C.CKA_LABEL] == b"sig" and objs[0].attrs[C.CKA_ID] == f"{rec.id}/v2".encode()


def test_rotating_a_missing_key_is_refused_and_audited(gov):
    with pytest.raises(GovernanceError) as e:
        gov.rotate(ALICE, "nothing")
    assert e.value.code == "not_found"
    assert [(ev["action"], ev["outcome"]) for ev in gov.events] == [("key.rotate", "denied")]


def test_a_tag_without_auto_rotate_or_period_rotates_nothing(gov):
    gov.put_tag(CAROL, R.PolicyTag("plain"))
    rec = gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt"], tags=["plain"])
    assert rec.next_rotation_at is None
    gov.clock.advance(400 * DAY)
    assert gov.tick() == [] and gov.get_key("k").primary == 1


def test_the_period_a_key_or_tag_names_wins_over_the_default(gov):
    gov.put_tag(CAROL, R.PolicyTag("auto", auto_rotate=True))
    gov.put_tag(CAROL, R.PolicyTag("weekly", auto_rotate=True, rotation_period_days=7))
    both = gov.create_key(ALICE, "both", "aes-256-gcm", ["encrypt"], tags=["auto", "weekly"])
    own = gov.create_key(ALICE, "own", "aes-256-gcm", ["encrypt"], tags=["auto"], rotation_period_days=365)
    assert both.next_rotation_at == gov.clock.now + 7 * DAY          # the shortest the tags ask
    assert own.next_rotation_at == gov.clock.now + 365 * DAY         # the key's own period
    assert tag_rotation_days(R.PolicyTag("x", rotation_period_days=30)) == 30   # a period alone asks too
    assert tag_rotation_days(R.PolicyTag("x")) is None


def test_a_key_gets_rotation_when_its_tag_starts_asking(gov):
    gov.put_tag(CAROL, R.PolicyTag("later"))
    rec = gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt"], tags=["later"])
    other = gov.create_key(ALICE, "o", "aes-256-gcm", ["encrypt"])
    assert rec.next_rotation_at is None
    gov.clock.advance(DAY)
    gov.put_tag(CAROL, R.PolicyTag("later", auto_rotate=True))
    assert gov.get_key("k").next_rotation_at == gov.clock.now + 90 * DAY
    assert gov.get_key("o").next_rotation_at is None
    gov.clock.advance(90 * DAY)
    assert gov.tick() == [("key.auto_rotate", rec.id, 2)]
    assert other.id not in {subject for _, subject, _ in gov.tick()}


def test_attaching_an_auto_rotate_tag_schedules_the_default(gov):
    gov.put_tag(CAROL, R.PolicyTag("auto", auto_rotate=True))
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt"])
    gov.clock.advance(5)
    assert gov.attach_tag(CAROL, "k", "auto").next_rotation_at == gov.clock.now + 90 * DAY


@pytest.mark.parametrize("bad", [dict(rotation_period_days=0), dict(rotation_period_days=366),
                                 dict(auto_rotate=True, rotation_period_days=-1),
                                 dict(auto_rotate="yes"), dict(auto_rotate=1)])
def test_tag_rotation_is_bounded_1_to_365_days(gov, bad):
    with pytest.raises(GovernanceError) as e:
        gov.put_tag(CAROL, R.PolicyTag("x", **bad))
    assert e.value.code == "invalid_argument"
    for days in (1, 365):
        assert gov.put_tag(CAROL, R.PolicyTag(f"ok{days}", auto_rotate=True,
                                              rotation_period_days=days)).rotation_period_days == days


# --- RSA generation before the transaction ---------------------------------------------
class Watch:
    """The engine's RSA pair generation, run as is, noting whether the token was in a
    store transaction or its lock held by the generating thread while it ran, and
    running `during(i)` (from another thread) while the i-th generation is under way."""

    def __init__(self, monkeypatch, tokens, during=None):
        impl = registry.get(C.CKM_RSA_PKCS_KEY_PAIR_GEN).impl
        real = impl.generate_key_pair
        self.seen, self.tokens, self.during = [], tokens, during
        self.lock = threading.Lock()

        def watched(param, pub, priv):
            with self.lock:
                i = len(self.seen)
                self.seen.append([(t.in_transaction, t.lock._is_owned()) for t in self.tokens])
            if self.during is not None:
                self.during(i)
            return real(param, pub, priv)
        monkeypatch.setattr(impl, "generate_key_pair", watched)


def test_rsa_material_is_made_outside_the_transaction_and_the_lock(tmp_path, monkeypatch):
    token = new_token("sqlite", tmp_path)
    gov = governance(token, Clock())
    try:
        gov.create_key(ALICE, "other", "aes-256-gcm", ["encrypt"])
        finished = []

        def during(i):
            # another thread changes a key of the same token while the RSA pair is made:
            # it would wait for ever if the generating thread held the lock or the store
            worker = threading.Thread(target=lambda: finished.append(gov.rotate(BOB, "other").primary))
            worker.start()
            worker.join(30)
            assert not worker.is_alive(), "a rotation waited for the RSA generation"
        watch = Watch(monkeypatch, [token], during)
        rec = gov.create_key(ALICE, "rsa", "rsa-2048", ["sign", "verify"])
        gov.rotate(ALICE, "rsa")
        assert watch.seen == [[(False, False)], [(False, False)]]
        assert finished == [2, 3]
        assert [v.number for v in gov.get_key("rsa").versions] == [1, 2] and rec.primary == 1
    finally:
        token.store.close()


def test_two_rotating_at_once_get_distinct_increasing_versions(tmp_path, monkeypatch):
    """Two token handles on one sqlite file (as two processes have), each rotating the
    same RSA key from its own thread; both generations overlap (a barrier inside them)."""
    tokens = [new_token("sqlite", tmp_path, fresh=(i == 0)) for i in range(2)]
    govs = [governance(t, Clock()) for t in tokens]
    barrier = threading.Barrier(2, timeout=30)
    try:
        govs[0].create_key(ALICE, "rsa", "rsa-2048", ["sign", "verify"])
        Watch(monkeypatch, tokens, during=lambda i: barrier.wait())
        results, errors = [], []

        def rotate(g):
            try:
                results.append(g.rotate(ALICE, "rsa").primary)
            except Exception as exc:        # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=rotate, args=(g,)) for g in govs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and sorted(results) == [2, 3]
        for g in govs:
            rec = g.get_key("rsa")
            assert [v.number for v in rec.versions] == [1, 2, 3] and rec.next_version == 4
            assert rec.primary == 3 and len({uid for v in rec.versions for uid in v.objects}) == 6
    finally:
        for t in tokens:
            t.store.close()
