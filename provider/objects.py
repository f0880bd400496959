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
from .store.base import INDEXED, Sealed


class Obj:
    __slots__ = ("handle", "uid", "_attrs", "stub", "loader", "cache", "owner", "version", "lineage",
                 "_secret")

    def __init__(self, handle: int, uid: str, attrs: dict | None, owner: int | None = None, version: int = 0,
                 lineage: str | None = None, stub: dict | None = None, loader=None):
        self.handle = handle
        self.uid = uid
        self._attrs = attrs
        self.stub = attrs if stub is None else stub    # STUB attributes, always at hand
        self.loader = loader       # obj -> attrs, for an object known by its stub only
        self.cache: dict = {}      # parsed key objects kept by mechanism families
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

    def matches(self, template: dict) -> bool:
        attrs = self.attrs
        for cka, value in template.items():
            if attrs.get(cka, _MISSING) != value or self.hidden(cka):
                return False
        return True

    def size(self) -> int:
        return sum(len(v) if isinstance(v, (bytes, tuple)) else 8 for v in self.attrs.values())


_MISSING = object()


class Index:
    def __init__(self):
        self.objects: dict[int, Obj] = {}
        self._by: dict[tuple, set[int]] = {}

    def __len__(self) -> int:
        return len(self.objects)

    def get(self, handle: int) -> Obj | None:
        return self.objects.get(handle)

    def add(self, obj: Obj) -> None:
        self.objects[obj.handle] = obj
        for cka in INDEXED:
            if cka in obj.stub:
                self._by.setdefault((cka, obj.stub[cka]), set()).add(obj.handle)

    def remove(self, obj: Obj) -> None:
        self.objects.pop(obj.handle, None)
        for cka in INDEXED:
            key = (cka, obj.stub.get(cka))
            handles = self._by.get(key)
            if handles is not None:
                handles.discard(obj.handle)
                if not handles:
                    del self._by[key]

    def replace(self, obj: Obj, attrs: dict) -> None:
        """Give `obj` new attributes, keeping the index right."""
        self.remove(obj)
        obj.attrs = attrs
        obj.cache.clear()
        obj._secret = None
        self.add(obj)

    def candidates(self, template: dict):
        """The objects that might match: the smallest index bucket the template
        names, or everything when it names no indexed attribute."""
        best = None
        for cka in INDEXED:
            if cka in template:
                try:
                    bucket = self._by.get((cka, template[cka]), ())
                except TypeError:   # an unhashable value cannot be in the index
                    return []
                if best is None or len(bucket) < len(best):
                    best = bucket
        if best is None:
            return list(self.objects.values())
        return [self.objects[h] for h in best]
