"""The token file against whoever can read or write it (issue 11, items 3-6).

Each test makes objects through the C ABI (a PyKCS11 client process), attacks the
SQLite file the way someone with a copy or with write access would (with this
project's own code for the parts of the format that are public: the record layout
and the record tag, whose key is in the file), and shows the attack fail."""

import sqlite3

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provider import constants as C
from provider.store import records, sealing
from provider.store.base import Sealed

from .client import run

KEY_VALUE = bytes(range(32))                      # the victims' key values, known to the test


def token_files(hsm) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((hsm.root / "tokens").rglob("*")) if p.is_file())


def db(hsm):
    (path,) = (hsm.root / "tokens").glob("token-*.sqlite")
    return sqlite3.connect(path)


def opened_with_file_key(hsm) -> set:
    """Every sealed value an attacker with a copy of the file opens: those sealed under
    the public key the file holds (in records in clear; an envelope's body needs the
    master key)."""
    with db(hsm) as conn:
        tok = dict(zip(("serial", "pub_key"), conn.execute("SELECT serial, pub_key FROM token").fetchone()))
        rows = conn.execute("SELECT uid, record FROM objects").fetchall()
    got = set()
    for uid, record in rows:
        if record[:1] != bytes([records.FORMAT]):
            continue
        for cka, value in records.unpack(record).items():
            if isinstance(value, Sealed) and value.blob[:1] == sealing.PUBLIC:
                got.add(sealing.open_value(tok["pub_key"], tok["serial"], uid, cka, value.blob))
    return got


def retag(conn, uid: str, record: bytes) -> None:
    """Write `record` for `uid` with a valid record tag (its key is in the file), in place."""
    serial, pub = conn.execute("SELECT serial, pub_key FROM token").fetchone()
    tag = sealing.record_tag(sealing.tag_key(pub), serial, uid, record)
    conn.execute("UPDATE objects SET record = ?, tag = ? WHERE uid = ?", (record, tag, uid))


def certificate_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "subject-Q7")])
    import datetime
    now = datetime.datetime(2026, 1, 1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_private_objects_leave_nothing_in_clear_and_are_found(token):
    """Item 5: CKA_VALUE of a private data object, labels, IDs, subjects and certificate
    values of private objects are not in the file; searches by them still work after
    a login (the index holds keyed hashes), and find nothing before one."""
    der = certificate_der()
    subject = x509.load_der_x509_certificate(der).subject.public_bytes()
    run(token, f"""
s = session()
s.createObject([(P.CKA_CLASS, P.CKO_DATA), (P.CKA_TOKEN, True), (P.CKA_PRIVATE, True),
                (P.CKA_LABEL, "label-Q7"), (P.CKA_APPLICATION, "application-Q7"), (P.CKA_VALUE, b"value-Q7")])
s.createObject([(P.CKA_CLASS, P.CKO_CERTIFICATE), (P.CKA_CERTIFICATE_TYPE, P.CKC_X_509), (P.CKA_TOKEN, True),
                (P.CKA_PRIVATE, True), (P.CKA_LABEL, "cert-Q7"), (P.CKA_ID, b"cert-id-Q7"),
                (P.CKA_SUBJECT, {subject!r}), (P.CKA_VALUE, {der!r})])
s.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
                (P.CKA_PRIVATE, True), (P.CKA_LABEL, "key-Q7"), (P.CKA_ID, b"key-id-Q7"),
                (P.CKA_VALUE, {KEY_VALUE!r})])
""")
    stored = token_files(token)
    for secret in (b"label-Q7", b"application-Q7", b"value-Q7", b"cert-Q7", b"cert-id-Q7", subject, der,
                   b"key-Q7", b"key-id-Q7", KEY_VALUE):
        assert secret not in stored, secret
    assert KEY_VALUE not in opened_with_file_key(token)
    found = run(token, f"""
s = session()
out["label"] = len(find(s, LABEL="label-Q7"))
out["id"] = len(find(s, ID=b"key-id-Q7"))
out["cert"] = len(find(s, CLASS=P.CKO_CERTIFICATE, LABEL="cert-Q7", ID=b"cert-id-Q7"))
out["subject"] = len(find(s, SUBJECT={subject!r}))
out["value"] = bytes(s.getAttributeValue(find(s, LABEL="label-Q7")[0], [P.CKA_VALUE])[0]).decode()
""")
    assert found == {"label": 1, "id": 1, "cert": 1, "subject": 1, "value": "value-Q7"}
    anon = run(token, 'out["found"] = len(find(session(None), LABEL="label-Q7")) + '
                      'len(find(session(None), ID=b"key-id-Q7"))')      # (a login is per process)
    assert anon == {"found": 0}


def test_trusted_wrapping_key_needs_a_login(token):
    """Item 3: a key the SO marked CKA_TRUSTED (a public object: the SO makes only those)
    is sealed under the master key: a session with no login cannot unwrap what was
    wrapped under it (before: it could, and read the key out), and the file's own key
    does not open its value."""
    got = run(token, f"""
so = session("so")
trusted = so.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
    (P.CKA_PRIVATE, False), (P.CKA_TRUSTED, True), (P.CKA_SENSITIVE, True), (P.CKA_LABEL, "trusted-Q7"),
    (P.CKA_WRAP, True), (P.CKA_UNWRAP, True), (P.CKA_ENCRYPT, False), (P.CKA_DECRYPT, False),
    (P.CKA_VALUE, {KEY_VALUE!r})])
so.logout()
user = session("user")
victim = user.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, False),
    (P.CKA_SENSITIVE, True), (P.CKA_EXTRACTABLE, True), (P.CKA_WRAP_WITH_TRUSTED, True),
    (P.CKA_ENCRYPT, True), (P.CKA_VALUE, b"v" * 16)])
trusted = find(user, LABEL="trusted-Q7")[0]
blob = bytes(user.wrapKey(trusted, victim, P.Mechanism(P.CKM_AES_KEY_WRAP_PAD)))
user.logout()                                   # (a login is the process's: this ends it)
anon = session(None)
t = find(anon, LABEL="trusted-Q7")[0]
template = [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, False),
            (P.CKA_SENSITIVE, False), (P.CKA_EXTRACTABLE, True)]
out["unwrap"] = rv(anon.unwrapKey, t, blob, template, P.Mechanism(P.CKM_AES_KEY_WRAP_PAD))
""")
    assert got == {"unwrap": "CKR_USER_NOT_LOGGED_IN"}
    fresh = run(token, """
anon = session(None)
template = [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, False)]
out["unwrap"] = rv(anon.unwrapKey, find(anon, LABEL="trusted-Q7")[0], b"x" * 24, template,
                   P.Mechanism(P.CKM_AES_KEY_WRAP_PAD))
""")                                            # a process that never logged in: the same
    assert fresh == {"unwrap": "CKR_USER_NOT_LOGGED_IN"}
    assert KEY_VALUE not in token_files(token) and KEY_VALUE not in opened_with_file_key(token)


def test_sensitive_public_key_needs_a_login(token):
    """Item 4: a sensitive key that is a public object is sealed under the master key,
    never under the key kept in the file, and is used only after a login."""
    got = run(token, f"""
user = session("user")
user.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
    (P.CKA_PRIVATE, False), (P.CKA_SENSITIVE, True), (P.CKA_ENCRYPT, True), (P.CKA_LABEL, "public-Q7"),
    (P.CKA_VALUE, {KEY_VALUE!r})])
user.logout()
anon = session(None)
k = find(anon, LABEL="public-Q7")[0]
out["anon"] = rv(anon.encrypt, k, b"x" * 16, P.Mechanism(P.CKM_AES_ECB))
out["create"] = rv(anon.createObject, [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
    (P.CKA_TOKEN, True), (P.CKA_PRIVATE, False), (P.CKA_SENSITIVE, True), (P.CKA_VALUE, b"k" * 16)])
user = session("user")
out["user"] = rv(user.encrypt, find(user, LABEL="public-Q7")[0], b"x" * 16, P.Mechanism(P.CKM_AES_ECB))
""")
    assert got == {"anon": "CKR_USER_NOT_LOGGED_IN", "create": "CKR_USER_NOT_LOGGED_IN", "user": "CKR_OK"}
    assert KEY_VALUE not in token_files(token) and KEY_VALUE not in opened_with_file_key(token)


def test_flipped_flags_in_the_file_give_nothing(token):
    """Item 6: the file writer's attack of the previous release - flip CKA_SENSITIVE
    and CKA_EXTRACTABLE of a private key in its record and re-tag it with the key the
    file holds - or, the record now being sealed whole, replace it by a record in clear
    with those flags, or change a byte of it: a logged-in client never gets the value."""
    run(token, f"""
s = session()
s.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
    (P.CKA_PRIVATE, True), (P.CKA_SENSITIVE, True), (P.CKA_EXTRACTABLE, False), (P.CKA_LABEL, "victim"),
    (P.CKA_ENCRYPT, True), (P.CKA_VALUE, {KEY_VALUE!r})])
""")
    with db(token) as conn:
        ((uid, record),) = conn.execute("SELECT uid, record FROM objects").fetchall()
    loosened = {C.CKA_SENSITIVE: False, C.CKA_EXTRACTABLE: True}
    if record[:1] == bytes([records.FORMAT]):           # the previous release's record: flags in clear
        attrs = records.unpack(record)
        blobs = {cka: v.blob for cka, v in attrs.items() if isinstance(v, Sealed)}    # kept as they are
        attrs = {**{cka: b"" if cka in blobs else v for cka, v in attrs.items()}, **loosened}
        attacks = [records.pack(attrs, frozenset(blobs), lambda cka, raw: blobs[cka])]
    else:
        attacks = [records.pack({C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_TOKEN: True,
                                 C.CKA_PRIVATE: True, C.CKA_LABEL: b"victim", C.CKA_ENCRYPT: True,
                                 C.CKA_VALUE: b"\0" * 32, **loosened}, frozenset(), None),
                   record[:-40] + bytes([record[-40] ^ 1]) + record[-39:],
                   record[:6] + bytes([record[6] ^ 1]) + record[7:]]
    for bad in attacks:
        with db(token) as conn:
            retag(conn, uid, bad)
        got = run(token, """
s = session()
found = find(s, LABEL="victim") + find(s, CLASS=P.CKO_SECRET_KEY)
try:
    out["value"] = [bytes(s.getAttributeValue(h, [P.CKA_VALUE])[0]).hex() for h in found]
except P.PyKCS11Error as err:
    out["value"] = P.CKR[err.value]
""")
        assert KEY_VALUE.hex() not in str(got["value"])


def test_deleted_private_object_refused_at_login(token):
    """Item 6: the token's list of private objects is authenticated: a record deleted
    from the file is noticed at the next login (CKR_DEVICE_ERROR, logged), not
    silently forgotten."""
    run(token, """
s = session()
for label in ("kept", "deleted"):
    s.createObject([(P.CKA_CLASS, P.CKO_DATA), (P.CKA_TOKEN, True), (P.CKA_PRIVATE, True),
                    (P.CKA_LABEL, label), (P.CKA_VALUE, b"v")])
""")
    with db(token) as conn:
        (uid,) = conn.execute("SELECT uid FROM objects ORDER BY seq DESC LIMIT 1").fetchone()
        conn.execute("DELETE FROM objects WHERE uid = ?", (uid,))
    got = run(token, 'out["login"] = rv(session, "user")\nout["public"] = rv(session, None)')
    assert got == {"login": "CKR_DEVICE_ERROR", "public": "CKR_OK"}


def test_rolled_back_private_object_refused_at_login(token):
    """Item 6: a record put back from an older copy of the file (its version too) -
    here undoing a C_SetAttributeValue that took CKA_ENCRYPT away - is noticed at the
    next login, though the old record is a genuine one."""
    run(token, """
s = session()
s.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
    (P.CKA_PRIVATE, True), (P.CKA_LABEL, "restricted"), (P.CKA_ENCRYPT, True), (P.CKA_VALUE, b"k" * 16)])
""")
    columns = "record, tag, version, seq, cls, label, cka_id, key_type, private"
    with db(token) as conn:
        (uid, *old), = conn.execute(f"SELECT uid, {columns} FROM objects").fetchall()
    run(token, """
s = session()
s.setAttributeValue(find(s, LABEL="restricted")[0], [(P.CKA_ENCRYPT, False)])
""")
    with db(token) as conn:
        conn.execute(f"UPDATE objects SET {', '.join(c + ' = ?' for c in columns.split(', '))} WHERE uid = ?",
                     (*old, uid))
    got = run(token, 'out["login"] = rv(session, "user")')
    assert got == {"login": "CKR_DEVICE_ERROR"}
