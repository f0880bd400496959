"""Making a key into a token, without a session: the attributes of a new key, adding
an object, generating a key or a key pair (on the token's serving device backend when
it makes such pairs, as C_GenerateKeyPair does).

C_GenerateKey / C_GenerateKeyPair (fn_keys, fn_backend) add the session's checks (R/W,
login, the session still open after slow work) around these; governance
(provider/governance) calls them directly with the token's user logged in, so a
governed key's versions are made by the same code as any PKCS#11 key.
"""

import uuid

from . import constants as C
from . import schema
from .backends import engine
from .mechanisms import registry
from .objects import Obj
from .token import require

U = C.CK_UNAVAILABLE_INFORMATION


def mechanism(mech: int, method: str):
    entry = registry.get(mech)
    require(entry.supports(method), C.CKR_MECHANISM_INVALID, f"{C.name_of('CKM_', mech)} cannot {method}")
    return entry.impl


def key_attrs(cls: int, given: dict, made: dict, mech: int, origin: str, separated: bool, bases=(),
              key_role: int | None = None) -> dict:
    """Attributes of a key made by generate / unwrap / derive. `bases`: the keys a
    derivation read (its base key and any key its parameter names, e.g. an HKDF salt
    key): the new key is always sensitive / never extractable only if each of them is.
    `separated`: [policy] key_separation (usage defaults by role, conflicts refused)."""
    key_type = made.get(C.CKA_KEY_TYPE, given.get(C.CKA_KEY_TYPE))
    require(given.get(C.CKA_KEY_TYPE, key_type) == key_type, C.CKR_TEMPLATE_INCONSISTENT,
            "CKA_KEY_TYPE does not fit the mechanism")
    require(key_type is not None, C.CKR_TEMPLATE_INCOMPLETE, "CKA_KEY_TYPE missing")
    table = schema.rows(cls, key_type)
    schema.check_template(table, given, schema.F.GEN)
    usages = schema.usage_defaults(cls, given, key_role) if separated else {}
    attrs = schema.with_defaults(table, {**given, **made, C.CKA_CLASS: cls, C.CKA_KEY_TYPE: key_type}, usages)
    if origin != "generate":
        attrs.update(registry.key_type(key_type).complete(cls, attrs))
    attrs[C.CKA_LOCAL] = origin == "generate"
    attrs[C.CKA_KEY_GEN_MECHANISM] = mech if origin == "generate" else U
    if cls != C.CKO_PUBLIC_KEY:
        sensitive, extractable = attrs[C.CKA_SENSITIVE], attrs[C.CKA_EXTRACTABLE]
        if origin == "generate":
            attrs[C.CKA_ALWAYS_SENSITIVE], attrs[C.CKA_NEVER_EXTRACTABLE] = sensitive, not extractable
        elif origin == "derive":
            attrs[C.CKA_ALWAYS_SENSITIVE] = sensitive and all(b.flag(C.CKA_ALWAYS_SENSITIVE) for b in bases)
            attrs[C.CKA_NEVER_EXTRACTABLE] = not extractable and all(
                b.flag(C.CKA_NEVER_EXTRACTABLE) for b in bases)
        else:
            attrs[C.CKA_ALWAYS_SENSITIVE] = attrs[C.CKA_NEVER_EXTRACTABLE] = False
    if separated:
        schema.check_separation(cls, attrs)
    return attrs


def add_object(token, attrs: dict, owner: int | None = None, lineage: str | None = None) -> Obj:
    """Give `attrs` a unique id and add them to `token` (a session object of `owner`
    when not CKA_TOKEN)."""
    attrs[C.CKA_UNIQUE_ID] = uuid.uuid4().hex.encode()
    obj = Obj(token.new_handle(), attrs[C.CKA_UNIQUE_ID].decode(), attrs,
              None if attrs.get(C.CKA_TOKEN) else owner, lineage=lineage)
    token.add_object(obj)
    return obj


def generate_key(token, mech: int, param, given: dict, separated: bool, extra: dict | None = None) -> Obj:
    """A secret key from `given` into `token`; `extra`: attributes only the engine sets."""
    made = mechanism(mech, "generate_key").generate_key(param, given)
    attrs = key_attrs(C.CKO_SECRET_KEY, given, made, mech, "generate", separated)
    return add_object(token, {**attrs, **(extra or {})})


def device_pair(backends, token, backend, kind: str, priv_given: dict) -> tuple:
    """Generate a key pair on `backend` (kind: its keygen_kind): (ref, public made,
    private made); the caller destroys `ref` if it then fails to keep the pair."""
    engine.check_held_template(backend, priv_given)
    in_use = [engine.key_ref(token.open(o)) for o in list(token.index.objects.values())
              if o.cls == C.CKO_PRIVATE_KEY and token.loaded(o)
              and o.attrs.get(C.CKA_FERRO_BACKEND) == backend.name.encode()]
    label = bytes(priv_given.get(C.CKA_LABEL, b"")).decode("utf-8", "replace")
    backends.enter(token, backend)
    options = {"extractable": True} if priv_given.get(C.CKA_EXTRACTABLE) and backend.exportable else {}
    with token.let_go():                   # a device call: other calls on the token go on
        ref = backend.generate(kind, backend.place(label, in_use), **options)
    pub_made, priv_made = engine.held_key_attrs(backend, ref, priv_given)
    return ref, pub_made, priv_made


class Pair:
    """The material of a key pair made before the store transaction that keeps it
    (`prepare_pair`): the generated attributes, and the device key `ref` on `backend`
    (None: the engine holds the material). `store_pair` keeps it; `discard` destroys a
    device key nobody kept."""

    def __init__(self, mech: int, pub_made: dict, priv_made: dict, backend=None, ref=None,
                 exportable: bool = False):
        self.mech, self.pub_made, self.priv_made = mech, pub_made, priv_made
        self.backend, self.ref = backend, ref
        self.exportable = exportable       # the device key was made extractable
        self.kept = False
        self.stored: str | None = None     # the uid of the private key object store_pair made last

    def discard(self) -> None:
        if self.ref is not None and not self.kept:
            self.backend.destroy(self.ref)
            self.ref = None


def prepare_pair(token, mech: int, param, pub_given: dict, priv_given: dict, backends=None) -> Pair:
    """Generate a key pair's material (on the token's serving device backend if
    `backends` names one that makes it, else by the engine) with the token's lock let go
    when it is held outside a store transaction: an RSA-4096 pair takes seconds, and
    holds up no other call on the token."""
    chosen = backends.keygen_backend(token, mech, pub_given, priv_given) if backends is not None else None
    if chosen is None:
        impl = mechanism(mech, "generate_key_pair")
        with token.let_go():
            pub_made, priv_made = impl.generate_key_pair(param, pub_given, priv_given)
        return Pair(mech, pub_made, priv_made)
    ref, pub_made, priv_made = device_pair(backends, token, *chosen, priv_given)
    return Pair(mech, pub_made, priv_made, chosen[0], ref, bool(priv_given.get(C.CKA_EXTRACTABLE)))


def store_pair(token, pair: Pair, pub_given: dict, priv_given: dict, separated: bool,
               extra: tuple = ({}, {})) -> tuple[Obj, Obj]:
    """The two objects of a prepared pair into `token` in one commit (inside the caller's
    open transaction, if any: the caller sets `pair.kept` once that commits).
    `extra`: (public, private) attributes only the engine sets."""
    role = schema.role(pub_given, priv_given)      # one role for both halves
    pub = key_attrs(C.CKO_PUBLIC_KEY, pub_given, pair.pub_made, pair.mech, "generate", separated, key_role=role)
    priv = key_attrs(C.CKO_PRIVATE_KEY, priv_given, pair.priv_made, pair.mech, "generate", separated,
                     key_role=role)
    with token.transaction():
        made = add_object(token, {**pub, **extra[0]}), add_object(token, {**priv, **extra[1]})
    pair.stored = made[1].uid
    return made


def generate_key_pair(token, mech: int, param, pub_given: dict, priv_given: dict, separated: bool,
                      backends=None, extra: tuple = ({}, {})) -> tuple[Obj, Obj]:
    """A key pair into `token` in one commit: generated first (`prepare_pair`), then kept
    (`store_pair`); a device key is destroyed if it is not kept."""
    pair = prepare_pair(token, mech, param, pub_given, priv_given, backends)
    try:
        made = store_pair(token, pair, pub_given, priv_given, separated, extra)
        pair.kept = True
        return made
    finally:
        pair.discard()
