"""The TPM anchor: a token record that was rolled back or edited is refused.

Why: the PIN failure counters, the PIN wraps and the object head live in the token
file.  Whoever can write the file can put back an older copy (failures forgotten, an
old PIN valid again, a destroyed object back) - and no key derived from a PIN can
protect a counter that must be trusted before the PIN is known.  With a TPM
configured (`[store] anchor = "NAME"` naming a `[backends.NAME]` of type tpm2), the
token's state is anchored in it:

  MAC key   a KEYEDHASH (HMAC-SHA256) primary in the owner hierarchy, made from a
            fixed template whose `unique` is SHA-256("ferrohsm anchor key" | serial):
            the TPM derives the same key from its seed every time, nothing is stored.
  counter   an NV counter index per token (TPM_NT_COUNTER, 8 bytes, auth = the index's
            empty auth, no DA), at NV_BASE + 22 bits of SHA-256(serial) in the owner
            range.  A counter only goes up, and a TPM never gives one a value it had.
  record    the token record's field `anchor` = c (8 bytes) | MAC, where
            MAC = TPM-HMAC(SHA-256(every token-record field but `anchor`, and c)).

Every write transaction of the store (`SealingStore._write`, wrapped by `guard`) first
checks the record as it finds it, and if the transaction changed the token record or
said it matters (`store._anchor_dirty`, an IV counter reservation), makes the MAC for
c = the counter's value + 1, increments the NV counter (the last TPM command) and writes
c and the MAC in the same transaction.  A check
passes when the MAC matches and c equals the NV counter or is one behind it; else
CKR_DEVICE_ERROR and one LOG.error line.

One behind is accepted because a process can die between the increment and the
commit: refusing it would lock the owner out of an honest token.  It lets whoever
can write the file undo the last write, once: the next write takes the counter one
further, and the undone record is then two behind.  Undoing a failure-count increment
(a wrong PIN) therefore wins at most one extra guess in all; every other write (PIN
change, PIN init, token init, object writes, IV reservations) is confirmed by a
second increment in a second transaction, so the record before it is two behind when
the call returns: it cannot be put back.  A crash between that confirmation's
increment and its commit leaves the new record one behind: accepted.  What this does not
survive: two writes in a row that each die after their increment (a TPM that answers an
increment too late twice running): the record is then two behind and refused - the
owner's recovery below.  (Accepting two behind would give a rewinder a second undo; a
write catching up on a pending increment instead of making its own would give him
unlimited PIN tries.)

Adoption: a token made without the anchor (or before it was configured) is anchored
by its first write transaction once the anchor is on.  Its NV index then exists, so
a record whose `anchor` field was removed is refused, as is an anchored record whose
NV index is missing (the TPM was cleared, or the file was copied to another machine).

Recovery (the owner's): the refusal's log line names the token's NV index.  If the current
files are at hand, putting them back is all it takes.  Otherwise (only an older backup,
or the token moved to another machine): `tpm2_nvundefine -C o INDEX` on that TPM and
`UPDATE token SET anchor = NULL` in the token file (SQLite; the `anchor` field of
token.json, or the ferro_tokens row, elsewhere) - the token is adopted again by its next
write, as it is now.  With the anchor turned off in the configuration it is served too
(unchecked) for as long as it stays off.

What it does not stop (SECURITY.md): a process that can use the same TPM can make the
same primary and MAC any record (the owner hierarchy's auth is empty, and there is no
secret our process has before a PIN that such a process has not): the anchor holds
against whoever can write the token files but cannot use the TPM - backups restored,
a file edited offline or from another account, a copy on another machine.  Whoever can
write the configuration can turn it off.  Each anchored write costs two to four TPM
commands (~1-4 ms each on swtpm), and tokens leave their NV index behind when deleted.
"""

from __future__ import annotations

import hashlib
import os
import struct
from contextlib import contextmanager

from .. import constants as C
from ..errors import PKCS11Error
from ..log import LOG

FIELD = "anchor"                       # the token-record field: c (8 bytes) | MAC (32)
NV_BASE, NV_SPAN = 0x01800000, 1 << 22  # the TCG owner range 0x01800000..0x01BFFFFF
# Token-record fields whose last change may be undone by a file writer (one behind is
# accepted): a wrong PIN's failure count.  A write changing anything else is confirmed.
UNDOABLE = frozenset({"so_fail", "user_fail",
                      "so_tries", "user_tries"})    # (the recorded tries of a PIN, where kept)


def nv_index(serial: str) -> int:
    h = hashlib.sha256(b"ferrohsm anchor index\0" + serial.encode()).digest()
    return NV_BASE + int.from_bytes(h[:3], "big") % NV_SPAN


def key_unique(serial: str) -> bytes:
    return hashlib.sha256(b"ferrohsm anchor key\0" + serial.encode()).digest()


def _enc(v) -> bytes:
    if v is None:
        return b"n"
    if isinstance(v, bool):
        return b"t" if v else b"f"
    if isinstance(v, int):
        return b"i" + str(v).encode()
    if isinstance(v, str):
        return b"s" + v.encode()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return b"b" + bytes(v)
    return b"r" + repr(v).encode()     # e.g. a list of tries: repr of plain values is stable


def state_digest(tok: dict, count: int) -> bytes:
    """SHA-256 of every token-record field but `anchor`, and the counter value."""
    parts = [b"ferrohsm token anchor v1", struct.pack(">Q", count)]
    for name in sorted(tok):
        if name != FIELD:
            parts += [name.encode(), _enc(tok[name])]
    return hashlib.sha256(b"".join(struct.pack(">I", len(p)) + p for p in parts)).digest()


def _state(tok: dict | None) -> dict | None:
    return None if tok is None else {k: v for k, v in tok.items() if k != FIELD}


def _refuse(serial: str, why: str):
    LOG.error("token %s: refused, the token record does not match the TPM anchor (%s; NV index %#x)",
              serial, why, nv_index(serial))
    return PKCS11Error(C.CKR_DEVICE_ERROR, f"token record does not match the TPM anchor: {why}")


class Anchor:
    """No anchor (the default): nothing is checked, nothing costs anything."""
    on = False

    def fresh_serial(self) -> str:
        return os.urandom(8).hex()

    def read(self, serial: str) -> int | None:
        """The token's NV counter, or None: no index (or never incremented)."""
        return None

    def advance(self, serial: str, now: int | None = None) -> int:
        """Increment the token's NV counter; its new value.  `now`: its value, read in
        this transaction (the new one is now + 1, not read back); None: define the index
        if needed, increment, and read the value (a new counter starts where the TPM says)."""
        raise NotImplementedError

    def mac(self, serial: str, digest: bytes) -> bytes:
        raise NotImplementedError


NO_ANCHOR = Anchor()


class TpmAnchor(Anchor):
    """The anchor in a TPM, through a configured tpm2 backend's connection, worker and
    timeout (provider/backends/tpm2.py): one connection per TPM, as swtpm without a
    resource manager serves one client at a time."""
    on = True

    def __init__(self, backends, name: str):
        self._backends, self.name = backends, name
        self._t = None

    def _run(self, fn):
        """fn(esys) on the backend's worker (built at first use: a missing tpm2-pytss or
        TPM fails the calls that need the anchor, with CKR_DEVICE_ERROR, not C_Initialize)."""
        backend = self._backends.get(self.name)
        if self._t is None:
            from tpm2_pytss.constants import TPM2_ALG, TPM2_CAP, TPM2_NT, TPM2_RC, TPMA_NV, TPMA_OBJECT
            self._t = dict(alg=TPM2_ALG, cap=TPM2_CAP, nt=TPM2_NT, rc=TPM2_RC, nv=TPMA_NV, obj=TPMA_OBJECT)
        return backend._run(lambda esys, srk: fn(esys))

    # NV counter ---------------------------------------------------------------------
    def _exists(self, esys, index: int) -> bool:
        _, data = esys.get_capability(self._t["cap"].HANDLES, index, 1)
        return index in list(data.data.handles)

    def _handle(self, esys, serial: str):
        """ESYS_TR of the token's NV index, checked to be a counter; None if missing."""
        index = nv_index(serial)
        if not self._exists(esys, index):
            return None
        tr = esys.tr_from_tpmpublic(index)
        pub, _ = esys.nv_read_public(tr)
        nt = (int(pub.nvPublic.attributes) & int(self._t["nv"].TPM2_NT_MASK)) >> int(self._t["nv"].TPM2_NT_SHIFT)
        if nt != int(self._t["nt"].COUNTER) or pub.nvPublic.dataSize != 8:
            raise _refuse(serial, f"NV index {index:#x} is not a counter")
        return tr

    def _value(self, esys, tr) -> int | None:
        from tpm2_pytss import TSS2_Exception
        try:
            return int.from_bytes(bytes(esys.nv_read(tr, 8, 0, auth_handle=tr)), "big")
        except TSS2_Exception as e:
            if (e.rc & 0xFFF) == self._t["rc"].NV_UNINITIALIZED:
                return None           # defined, never incremented (a crash right after the define)
            raise

    def fresh_serial(self) -> str:
        """A serial whose NV index is free (a new token must not share another's counter)."""
        for _ in range(64):
            serial = os.urandom(8).hex()
            if not self._run(lambda esys: self._exists(esys, nv_index(serial))):
                return serial
        raise PKCS11Error(C.CKR_DEVICE_MEMORY, "no free NV index for a new token's anchor")

    def read(self, serial: str) -> int | None:
        def q(esys):
            tr = self._handle(esys, serial)
            return None if tr is None else self._value(esys, tr)
        return self._run(q)

    def advance(self, serial: str, now: int | None = None) -> int:
        def inc(esys):
            from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC
            t = self._t
            tr = self._handle(esys, serial)
            if tr is None:
                attrs = (t["nv"].AUTHREAD | t["nv"].AUTHWRITE | t["nv"].NO_DA
                         | (t["nt"].COUNTER << t["nv"].TPM2_NT_SHIFT))
                tr = esys.nv_define_space(None, TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
                    nvIndex=nv_index(serial), nameAlg=t["alg"].SHA256, attributes=attrs, dataSize=8)))
            esys.nv_increment(tr, auth_handle=tr)
            return now + 1 if now is not None else self._value(esys, tr)
        return self._run(inc)

    # MAC ------------------------------------------------------------------------------
    def mac(self, serial: str, digest: bytes) -> bytes:
        def hmac(esys):
            from tpm2_pytss.types import TPM2B_PUBLIC
            t = self._t
            o = t["obj"]
            template = TPM2B_PUBLIC.parse("hmac:sha256", objectAttributes=(
                o.FIXEDTPM | o.FIXEDPARENT | o.SENSITIVEDATAORIGIN | o.USERWITHAUTH | o.SIGN_ENCRYPT | o.NODA))
            template.publicArea.unique.keyedHash = key_unique(serial)
            key, *_ = esys.create_primary(None, template)
            try:
                return bytes(esys.hmac(key, digest, t["alg"].SHA256).buffer)
            finally:
                esys.flush_context(key)
        return self._run(hmac)


def make_anchor(config, backends) -> Anchor:
    """The anchor `[store] anchor` names (its tpm2 backend from `backends`), or NO_ANCHOR."""
    name = getattr(config, "store_anchor", "")
    if not name:
        return NO_ANCHOR
    return TpmAnchor(backends, name)


# --- the store side ----------------------------------------------------------------------
def check(store, tok: dict | None) -> int | None:
    """Refuse (CKR_DEVICE_ERROR) a token record that does not match its anchor; the NV
    counter's value.  A record with no `anchor` field and no NV index yet is a token to
    adopt: passes (None)."""
    if tok is None:
        return None
    serial, blob = tok["serial"], tok.get(FIELD)
    nv = store.anchor.read(serial)
    if blob is None:
        if nv is None:
            return None
        raise _refuse(serial, "the record has no anchor but the TPM holds one for this token")
    if nv is None:
        raise _refuse(serial, "the TPM holds no anchor for this token (cleared, or another TPM)")
    count, mac = int.from_bytes(blob[:8], "big"), bytes(blob[8:])
    if count not in (nv, nv - 1):
        raise _refuse(serial, f"the record is at {count}, the TPM counter at {nv}")
    digest = state_digest(tok, count)
    if store._anchor_seen != (digest, mac):
        import hmac as _hmac
        if not _hmac.compare_digest(store.anchor.mac(serial, digest), mac):
            raise _refuse(serial, "the record's MAC does not match")
        store._anchor_seen = (digest, mac)
    return nv


def _advance(store, nv: int | None) -> None:
    """Anchor the record as it is in this transaction.  With the counter's value `nv`
    known (read by this transaction's check, under its lock), the MAC is made first and
    the increment is the last TPM command: a TPM failing after it leaves the record one
    behind (accepted), and failing before it changes nothing."""
    tok = store._token()
    serial = tok["serial"]
    if nv is None:                     # adoption: where a new counter starts is the TPM's choice
        count = store.anchor.advance(serial)
        mac = store.anchor.mac(serial, state_digest(tok, count))
    else:
        count = nv + 1
        mac = store.anchor.mac(serial, state_digest(tok, count))
        store.anchor.advance(serial, nv)
    store._update({FIELD: count.to_bytes(8, "big") + mac})
    store._anchor_seen = (state_digest(tok, count), mac)


def _needs(store, before: dict | None, after: dict | None) -> str | None:
    """None (nothing to anchor), "once" (only an undoable field changed) or "confirm"."""
    if after is None:
        return None
    dirty, store._anchor_dirty = store._anchor_dirty, False
    if dirty or before is None or after.get(FIELD) is None:
        return "confirm"
    changed = {k for k in after if k != FIELD and before.get(k) != after[k]}
    if not changed:
        return None
    return "once" if changed <= UNDOABLE else "confirm"


def _read(store) -> dict | None:
    """The token record, or None: being created in this transaction."""
    return store._token() if store._exists() else None


def guard(store, write):
    """`write` (the store's _write) with the anchor's check and advance around each
    outermost transaction; `write` itself when nested or with no anchor."""
    depth = [0]

    @contextmanager
    def anchored():
        if not store.anchor.on:
            with write() as tx:
                yield tx
            return
        with store._lock:
            if depth[0]:
                with write() as tx:
                    yield tx
                return
            with write() as tx:
                depth[0] = 1
                try:
                    before = _read(store)
                    nv = check(store, before)
                    store._anchor_dirty = False
                    yield tx
                    need = _needs(store, _state(before), _read(store))
                    if need:
                        _advance(store, nv)
                finally:
                    depth[0] = 0
            if need == "confirm":
                with write():
                    depth[0] = 1
                    try:
                        _advance(store, check(store, _read(store)))
                    finally:
                        depth[0] = 0
    return anchored
