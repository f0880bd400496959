"""Calling mechanism implementations directly in tests."""

import pytest

from provider.errors import PKCS11Error
from provider.mechanisms import registry
from provider.objects import Obj


def impl(mech: int):
    return registry.get(mech).impl


def obj(attrs: dict, cls: int) -> Obj:
    from provider import constants as C
    return Obj(1, "u", {**attrs, C.CKA_CLASS: cls})


def rv(fn, *args) -> int:
    """The CKR code `fn(*args)` raises (the test fails if it raises none)."""
    with pytest.raises(PKCS11Error) as info:
        fn(*args)
    return info.value.rv
