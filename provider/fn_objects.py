"""Object management functions: create, copy, destroy, attributes, search."""

from . import attrtypes, keygen
from . import constants as C
from . import gate, schema
from .certificates import x509_fields
from .errors import PKCS11Error
from .mechanisms import registry
from .objects import Obj
from .session import Operation
from .store.base import Sealed
from .token import require


def decode_template(template) -> dict:
    """A list of (type, raw bytes) -> {type: typed value}; a type given twice
    with two different values is CKR_TEMPLATE_INCONSISTENT."""
    out = {}
    for cka, raw in template:
        value = attrtypes.decode(cka, raw)
        if cka in out and out[cka] != value:
            raise PKCS11Error(C.CKR_TEMPLATE_INCONSISTENT, C.name_of("CKA_", cka) + " given twice")
        out[cka] = value
    return out


def decode_search(template) -> dict:
    """Like decode_template, but an attribute this token doesn't know simply
    matches nothing instead of failing the search."""
    return {cka: (attrtypes.decode(cka, raw) if attrtypes.kind_of(cka) else bytes(raw))
            for cka, raw in template}


class ObjectFunctions:
    # --- helpers shared with the key functions ---------------------------------
    def _object(self, session, handle: int, invalid: int = C.CKR_OBJECT_HANDLE_INVALID) -> Obj:
        """The object `handle` names as the store has it now (the head check first:
        what another process destroyed or changed is seen here)."""
        token = session.token
        token.refresh()
        obj = token.index.get(handle)
        require(obj is not None and token.visible(obj) and token.loaded(obj), invalid, f"handle {handle}")
        return obj

    def _check_write(self, session, attrs: dict) -> None:
        """May this session create (or change) an object with these attributes?"""
        token = session.token
        if attrs.get(C.CKA_TOKEN):
            require(session.rw, C.CKR_SESSION_READ_ONLY)
        if attrs.get(C.CKA_PRIVATE):
            require(token.user == C.CKU_USER, C.CKR_USER_NOT_LOGGED_IN, "private objects need the user")
        if attrs.get(C.CKA_TRUSTED):
            require(token.user == C.CKU_SO, C.CKR_ATTRIBUTE_READ_ONLY, "only the SO sets CKA_TRUSTED")

    # --- key separation ([policy] key_separation, schema.py) -------------------------
    @property
    def _separated(self) -> bool:
        return self.config.policy.key_separation

    def _usages(self, cls: int, given: dict, key_role: int | None = None) -> dict:
        """The usage defaults of a new key: by its role under key separation, else the table's."""
        return schema.usage_defaults(cls, given, key_role) if self._separated else {}

    def _check_separation(self, cls: int, attrs: dict, old: dict | None = None, changes: dict = None) -> None:
        """A new key (or, with `old`, a key changed by `changes`) keeps its usages apart."""
        if self._separated:
            schema.check_separation(cls, attrs)
            if old is not None and cls in schema.ROLE_DEFAULTS:
                schema.check_usage_change(old, changes)

    def _add(self, session, attrs: dict, lineage: str | None = None) -> int:
        return keygen.add_object(session.token, attrs, session.handle, lineage).handle

    # --- C_CreateObject, C_CopyObject, C_DestroyObject ---------------------------
    def create_object(self, handle: int, template) -> int:
        session = self._session(handle)
        given = decode_template(template)
        require(C.CKA_CLASS in given, C.CKR_TEMPLATE_INCOMPLETE, "CKA_CLASS missing")
        cls, key_type = given[C.CKA_CLASS], given.get(C.CKA_KEY_TYPE)
        require(cls not in schema.KEY_CLASSES or key_type is not None, C.CKR_TEMPLATE_INCOMPLETE,
                "CKA_KEY_TYPE missing")
        table = schema.rows(cls, key_type)
        schema.check_template(table, given, schema.F.CREATE)
        if cls == C.CKO_CERTIFICATE:
            require(given.get(C.CKA_CERTIFICATE_TYPE) == C.CKC_X_509, C.CKR_ATTRIBUTE_VALUE_INVALID,
                    "only X.509 certificates")
            given = {**x509_fields(given.get(C.CKA_VALUE)), **given}
        attrs = schema.with_defaults(table, given, self._usages(cls, given))
        schema.check_required(table, attrs)
        if cls in schema.KEY_CLASSES:
            attrs.update(registry.key_type(key_type).complete(cls, attrs))
            self._check_separation(cls, attrs)
        self._check_write(session, attrs)
        return self._add(session, attrs)

    def copy_object(self, handle: int, obj_handle: int, template) -> int:
        session = self._session(handle)
        src = self._object(session, obj_handle)
        require(src.flag(C.CKA_COPYABLE), C.CKR_ACTION_PROHIBITED, "CKA_COPYABLE is false")
        require(not gate.governance_object(src), C.CKR_ACTION_PROHIBITED,
                "a governed key is copied only by the governance API (a copy would escape its policy)")
        changes = decode_template(template)
        table = schema.rows(src.cls, src.key_type)
        require(changes.get(C.CKA_PRIVATE, src.private) or not src.private, C.CKR_TEMPLATE_INCONSISTENT,
                "a copy of a private object stays private")
        self._check_separation(src.cls, {**src.attrs, **changes}, src.attrs, changes)
        for cka, value in changes.items():
            if cka in (C.CKA_TOKEN, C.CKA_PRIVATE):
                continue
            if cka == C.CKA_MODIFIABLE:
                require(not value, C.CKR_ATTRIBUTE_READ_ONLY, "a copy can only become unmodifiable")
                continue
            schema.check_change(table, src.attrs, cka, value)
        token = session.token
        token.open(src)
        attrs = {**src.attrs, **changes}
        self._check_write(session, attrs)
        with token.transaction():     # the source is still there, unchanged, when the copy commits
            lineage = token.store.check_object(src.uid, src.version) if src.token else src.lineage
            return self._add(session, attrs, lineage or src.uid)

    def destroy_object(self, handle: int, obj_handle: int) -> None:
        session = self._session(handle)
        obj = self._object(session, obj_handle)
        if obj.token:
            require(session.rw, C.CKR_SESSION_READ_ONLY)
        require(obj.flag(C.CKA_DESTROYABLE) and not gate.governance_object(obj), C.CKR_ACTION_PROHIBITED,
                "CKA_DESTROYABLE is false (a governed key is destroyed through the governance API)")
        session.token.remove_object(obj)

    def get_object_size(self, handle: int, obj_handle: int) -> int:
        session = self._session(handle)
        return self._object(session, obj_handle).size()

    # --- attributes ----------------------------------------------------------------
    def get_attribute_value(self, handle: int, obj_handle: int, types: list[int]) -> list:
        """Per type: raw value, or the CKR code that says why there is none."""
        session = self._session(handle)
        obj = self._object(session, obj_handle)
        out = []
        for cka in types:
            if obj.hidden(cka):
                out.append(C.CKR_ATTRIBUTE_SENSITIVE)
            elif cka not in obj.attrs:
                out.append(C.CKR_ATTRIBUTE_TYPE_INVALID)
            else:
                value = obj.attrs[cka]
                if isinstance(value, Sealed):
                    value = session.token.open(obj).attrs[cka]
                out.append(attrtypes.encode(cka, value))
        return out

    def set_attribute_value(self, handle: int, obj_handle: int, template) -> None:
        session = self._session(handle)
        obj = self._object(session, obj_handle)
        if obj.token:
            require(session.rw, C.CKR_SESSION_READ_ONLY)
        require(obj.flag(C.CKA_MODIFIABLE) and not gate.governance_object(obj), C.CKR_ACTION_PROHIBITED,
                "CKA_MODIFIABLE is false (a governed key changes through the governance API)")
        changes = decode_template(template)
        table = schema.rows(obj.cls, obj.key_type)
        self._check_separation(obj.cls, {**obj.attrs, **changes}, obj.attrs, changes)
        for cka, value in changes.items():
            schema.check_change(table, obj.attrs, cka, value)
        session.token.open(obj)
        session.token.update_object(obj, {**obj.attrs, **changes})

    # --- search ---------------------------------------------------------------------
    def find_objects_init(self, handle: int, template) -> None:
        session = self._session(handle)
        require("find" not in session.ops, C.CKR_OPERATION_ACTIVE)
        wanted = decode_search(template)
        token = session.token
        token.refresh()
        named = wanted.get(C.CKA_CLASS)     # governance records only for a search naming their class
        found = sorted(o.handle for o in token.index.candidates(wanted)
                       if token.visible(o) and (o.cls not in gate.RECORD_CLASSES or o.cls == named)
                       and token.matches(o, wanted))
        session.start(Operation("find", 0, None, results=found))

    def find_objects(self, handle: int, max_count: int) -> list[int]:
        op = self._session(handle).op("find")
        out, op.results = op.results[:max_count], op.results[max_count:]
        return out

    def find_objects_final(self, handle: int) -> None:
        session = self._session(handle)
        session.op("find")
        session.end("find")
