"""Views of governance records for readers that must not copy them: `ReadOnly`, what a
key use and a key listing read from the record decoded and cached on its object
(Governance.read_key, key_page), and `dumps`, their JSON without a copy."""

import dataclasses
import inspect
import json
from types import MappingProxyType


class ReadOnly:
    """A read-only view of a record (KeyRecord, Version, ...): its fields read through,
    a list as a tuple, a dict as a read-only mapping, a nested record as a view, a
    method's answer as a view; setting or deleting an attribute raises AttributeError.
    What a key use reads from the cached record without copying it (`read_key`)."""
    __slots__ = ("_of",)

    def __init__(self, rec):
        object.__setattr__(self, "_of", rec)

    def __getattr__(self, name: str):
        return _frozen(getattr(self._of, name))

    def __setattr__(self, name: str, value):
        raise AttributeError(f"a {type(self._of).__name__} read here is read-only")

    def __delattr__(self, name: str):
        raise AttributeError(f"a {type(self._of).__name__} read here is read-only")

    def __repr__(self) -> str:
        return f"ReadOnly({self._of!r})"


def _frozen(value):
    if isinstance(value, (str, int, float, type(None))):
        return value
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if inspect.ismethod(value):
        return lambda *args, **kwargs: _frozen(value(*args, **kwargs))
    if dataclasses.is_dataclass(value):
        return ReadOnly(value)
    raise TypeError(f"no read-only view of a {type(value).__name__}")


def dumps(value) -> bytes:
    """Compact JSON of `value`, whose records (or `ReadOnly` views of them) are written as
    objects of their fields, without copying them."""
    return json.dumps(value, default=_fields, separators=(",", ":")).encode()


def _fields(value):
    """json.dumps' hook: a record's fields (its own __dict__, only read by the encoder)."""
    rec = value._of if type(value) is ReadOnly else value
    if not dataclasses.is_dataclass(rec) or isinstance(rec, type):
        raise TypeError(f"{type(value).__name__} is not JSON")
    return vars(rec)
