"""The invariants of governed keys under random operation sequences (Hypothesis state
machine), over the memory and sqlite stores: versions strictly increase and are never
reused; a destroyed version never comes back; rollback only to an enabled version;
floors only rise; exactly one primary, enabled - in the record and in the key objects
a PKCS#11 client sees. Refused operations are fine (they must leave the key as it was);
anything but a GovernanceError is a failure."""

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from provider import constants as C
from provider.governance import GovernanceError
from provider.governance import record as R

from .govkit import ALICE, BOB, CAROL, Clock, governance, new_token

DAY = 86400
VERSIONS = st.integers(min_value=0, max_value=5)


class GovernedKey(RuleBasedStateMachine):
    kind = "memory"

    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="gov-props-"))
        self.token = new_token(self.kind, self.dir)
        self.gov = governance(self.token, Clock())
        self.gov.put_tag(CAROL, R.PolicyTag("t", destroy_grace_seconds=DAY))
        self.rec = self.gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"], tags=["t"])
        self.seen: set = {1}
        self.destroyed: set = set()
        self.floors = (1, 1)

    def teardown(self):
        self.token.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, fn, *args, **kwargs):
        before = self.gov.get_key("k")
        try:
            fn(*args, **kwargs)
        except GovernanceError as err:
            assert err.code in ("failed_precondition", "not_found", "invalid_argument"), err
            assert self.gov.get_key("k") == before, "a refused operation changed the key"
        self.rec = self.gov.get_key("k")

    @rule(pending=st.booleans())
    def rotate(self, pending):
        self._run(self.gov.rotate, ALICE, "k", pending=pending)

    @rule(v=VERSIONS)
    def update_primary(self, v):
        before = self.gov.get_key("k").version(v)
        self._run(self.gov.update_primary, BOB, "k", v)
        if self.rec.primary == v and before is not None:
            assert before.state == R.ENABLED, "rollback to a version that was not enabled"

    @rule(v=VERSIONS)
    def enable(self, v):
        self._run(self.gov.enable_version, ALICE, "k", v)

    @rule(v=VERSIONS)
    def disable(self, v):
        self._run(self.gov.disable_version, ALICE, "k", v)

    @rule(v=VERSIONS, reason=st.sampled_from(["superseded", "key_compromise"]))
    def revoke(self, v, reason):
        self._run(self.gov.revoke, ALICE, "k", v, reason)

    @rule(v=VERSIONS)
    def schedule_destroy(self, v):
        self._run(self.gov.schedule_destroy, ALICE, "k", v)

    @rule(v=VERSIONS)
    def restore(self, v):
        self._run(self.gov.restore, ALICE, "k", v)

    @rule(dec=st.none() | VERSIONS, enc=st.none() | VERSIONS)
    def set_floors(self, dec, enc):
        self._run(self.gov.set_floors, ALICE, "k", min_decrypt_version=dec, min_encrypt_version=enc)

    @rule(hours=st.integers(min_value=1, max_value=30))
    def time_passes(self, hours):
        self.gov.clock.advance(hours * 3600)
        self.gov.tick()
        self.rec = self.gov.get_key("k")

    @invariant()
    def versions_increase_and_are_never_reused(self):
        numbers = [v.number for v in self.rec.versions]
        assert numbers == sorted(set(numbers)) and numbers[0] == 1
        assert self.seen <= set(numbers), "a version vanished from the record"
        assert self.rec.next_version > max(numbers)
        self.seen |= set(numbers)

    @invariant()
    def destroyed_never_comes_back(self):
        now = {v.number for v in self.rec.versions if v.state == R.DESTROYED}
        assert self.destroyed <= now
        for v in self.rec.versions:
            if v.state == R.DESTROYED:
                assert all(uid not in self.token.by_uid for uid in v.objects)
        self.destroyed = now

    @invariant()
    def floors_only_rise(self):
        floors = (self.rec.min_decrypt_version, self.rec.min_encrypt_version)
        assert floors[0] <= floors[1] <= self.rec.primary
        assert floors[0] >= self.floors[0] and floors[1] >= self.floors[1]
        self.floors = floors

    @invariant()
    def exactly_one_primary_enabled(self):
        assert self.rec.version(self.rec.primary).state == R.ENABLED
        self.token.refresh()
        primaries = [o for o in self.token.index.candidates({C.CKA_CLASS: C.CKO_SECRET_KEY})
                     if self.token.loaded(o) and o.attrs.get(C.CKA_FERRO_PRIMARY)]
        assert [o.attrs[C.CKA_FERRO_VERSION] for o in primaries] == [self.rec.primary]
        assert primaries[0].attrs[C.CKA_LABEL] == b"k"
        for v in self.rec.versions:
            if v.state != R.DESTROYED:
                obj = self.token.by_uid[v.objects[0]]
                assert obj.attrs[C.CKA_FERRO_STATE] == R.STATE_CODE[v.state]


class GovernedKeySqlite(GovernedKey):
    kind = "sqlite"


SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("machine", [GovernedKey, GovernedKeySqlite], ids=["memory", "sqlite"])
def test_invariants_hold_under_any_sequence(machine):
    machine.TestCase.settings = SETTINGS
    machine.TestCase().runTest()
