"""Objects as the engine holds them, and the attribute index that finds them.

An `Obj` is a dict of typed attributes (see attrtypes) plus the engine's
bookkeeping. Token objects also live in the store; session objects only here.
A token object may be known by its index entry only (a `stub`: the INDEXED
attributes and CKA_PRIVATE, as the store's index lists them): its attributes are
read from the store the first time anything asks for them (`loader`), so a
process opening a token of 100,000 objects reads 100,000 index entries, not
100,000 records.
The index maps (attribute, value) for a few attributes that searches name most
(class, label, id, key type, unique id) to object handles, so a search by label
among thousands of objects touches only the objects with that label.
"""

from . import constants as C
from . import schema
from .store.base import BLINDED, INDEXED, STUB, Entry, Sealed


class Obj:
    __slots__ = ("handle", "uid", "_attrs", "stub", "loader", "_cache", "owner", "version", "lineage",
                 "_secret")

    def __init__(self, handle: int, uid: str, attrs: dict | None, owner: int | None = None, version: int = 0,
                 lineage: str | None = None, stub: dict | None = None, loader=None):
        self.handle = handle
        self.uid = uid
        self._attrs = attrs
        self.stub = attrs if stub is None else stub    # STUB attributes, always at hand
        self.loader = loader       # obj -> attrs, for an object known by its stub only
        self._cache = None         # parsed key objects kept by mechanism families (`cache`)
        self.owner = owner         # creating session of a session object; None for token objects
        self.version = version     # the stored version this copy is of (0: not stored)
        self.lineage = lineage     # whose IV counter a copied key shares (None: its own uid's,
        self._secret = None        # or, for a token object, what the store recorded)

    @property
    def attrs(self) -> dict:
        attrs = self._attrs
        if attrs is None:
            attrs = self._attrs = self.loader(self)
        return attrs

    @attrs.setter
    def attrs(self, attrs: dict) -> None:
        self._attrs = self.stub = attrs

    def forget(self, stub: dict) -> None:
        """Drop the attributes: the object is known by its index entry until `loader` reads it."""
        self._attrs, self.stub, self._cache, self._secret = None, stub, None, None

    @property
    def cache(self) -> dict:
        if self._cache is None:
            self._cache = {}
        return self._cache

    @property
    def loaded(self) -> bool:
        return self._attrs is not None

    @property
    def cls(self) -> int:
        return self.stub[C.CKA_CLASS]

    @property
    def key_type(self) -> int | None:
        return self.stub.get(C.CKA_KEY_TYPE)

    @property
    def token(self) -> bool:
        return bool(self.stub.get(C.CKA_TOKEN))

    @property
    def private(self) -> bool:
        return bool(self.stub.get(C.CKA_PRIVATE))

    def flag(self, cka: int) -> bool:
        return bool(self.attrs.get(cka))

    def secret_types(self) -> frozenset:
        if self._secret is None:
            self._secret = schema.secret_types(self.cls, self.key_type)
        return self._secret

    def hidden(self, cka: int) -> bool:
        """Is this attribute key material that its key does not let out?"""
        return cka in self.secret_types() and (
            self.flag(C.CKA_SENSITIVE) or not self.attrs.get(C.CKA_EXTRACTABLE, True))

    def sealed(self) -> bool:
        return any(isinstance(v, Sealed) for v in self.attrs.values())

    def matches(self, template: dict, blind=None) -> bool:
        """Does the object have these values? An object known by its index entry only
        is matched on the entry when the template names nothing else (its record is
        read, and checked, when the object is used); a private object's entry holds
        keyed hashes of its label and ID, which `blind(cka, value)` computes."""
        if self._attrs is None and all(cka in STUB for cka in template):
            return all(self._entry_value(cka) == (blind(cka, value) if self.private and cka in BLINDED
                                                  and blind else value)
                       for cka, value in template.items())
        attrs = self.attrs
        for cka, value in template.items():
            if attrs.get(cka, _MISSING) != value or self.hidden(cka):
                return False
        return True

    def _entry_value(self, cka: int):
        if cka == C.CKA_UNIQUE_ID:
            return self.uid.encode()
        if cka in (C.CKA_TOKEN, C.CKA_PRIVATE):
            return bool(self.stub.get(cka))
        return self.stub.get(cka)

    def size(self) -> int:
        return sum(len(v) if isinstance(v, (bytes, tuple)) else 8 for v in self.attrs.values())


_MISSING = object()
BUCKETED = tuple(cka for cka in INDEXED if cka != C.CKA_UNIQUE_ID)


def _buckets(stub) -> list:
    if type(stub) is Entry:
        return stub.buckets()
    return [(cka, stub[cka]) for cka in BUCKETED if cka in stub]


class Index:
    """Buckets (attribute, value) -> the handles of the objects that have it, for the
    INDEXED attributes but CKA_UNIQUE_ID, which has its own map (one object each).
    A bucket of one object is its handle alone, not a set: with 100,000 objects
    most labels are one object's, and a set per label would be most of the memory."""

    def __init__(self):
        self.objects: dict[int, Obj] = {}
        self._by: dict[tuple, int | set] = {}
        self._uids: dict[str, int] = {}
        # (cka, value) -> the keyed hash a private object's index entry holds for a
        # BLINDED value, or None (no one logged in): set by the token (TokenStore.blind)
        self.blind = lambda cka, value: None

    def __len__(self) -> int:
        return len(self.objects)

    def get(self, handle: int) -> Obj | None:
        return self.objects.get(handle)

    def add(self, obj: Obj) -> None:
        self.add_many((obj,))

    def add_many(self, objs) -> None:
        """add() each (one loop: a token of 100,000 objects is read this way)."""
        objects, uids, by = self.objects, self._uids, self._by
        for obj in objs:
            handle = obj.handle
            objects[handle] = obj
            uids[obj.uid] = handle
            for key in _buckets(obj.stub):
                bucket = by.get(key)
                if bucket is None:
                    by[key] = handle
                elif type(bucket) is int:
                    by[key] = {bucket, handle}
                else:
                    bucket.add(handle)

    def remove(self, obj: Obj) -> None:
        handle, by = obj.handle, self._by
        self.objects.pop(handle, None)
        if self._uids.get(obj.uid) == handle:
            del self._uids[obj.uid]
        for key in _buckets(obj.stub):
            bucket = by.get(key)
            if bucket == handle:
                del by[key]
            elif type(bucket) is set:
                bucket.discard(handle)
                if len(bucket) == 1:
                    by[key] = bucket.pop()

    def replace(self, obj: Obj, attrs: dict) -> None:
        """Give `obj` new attributes, keeping the index right."""
        self.remove(obj)
        obj.attrs = attrs
        obj.cache.clear()
        obj._secret = None
        self.add(obj)

    def _bucket(self, cka: int, value) -> tuple | set:
        if cka == C.CKA_UNIQUE_ID:
            handle = self._uids.get(value.decode("ascii", "replace") if isinstance(value, bytes) else None)
            return () if handle is None else (handle,)
        bucket = self._by.get((cka, value), ())
        bucket = (bucket,) if type(bucket) is int else bucket
        if cka in BLINDED:
            hidden = self._by.get((cka, self.blind(cka, value)), ())
            if hidden:
                bucket = {*bucket, *((hidden,) if type(hidden) is int else hidden)}
        return bucket

    def candidates(self, template: dict):
        """The objects that might match: the smallest index bucket the template
        names, or everything when it names no indexed attribute."""
        best = None
        for cka in INDEXED:
            if cka in template:
                try:
                    bucket = self._bucket(cka, template[cka])
                except TypeError:   # an unhashable value cannot be in the index
                    return []
                if best is None or len(bucket) < len(best):
                    best = bucket
        if best is None:
            return list(self.objects.values())
        return [self.objects[h] for h in best]
