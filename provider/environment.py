"""The deployment environment (`[environment] type`) and the rules it brings (the
backend design's): what a production service refuses that a developer's machine allows.

    [environment]
    type = "local"     # production | staging | development | local

| rule                                                   | production | staging | development, local |
|--------------------------------------------------------|------------|---------|--------------------|
| a token's `fallback = "software"`                      | refused    | allowed | allowed            |
| a key under a `hardware` tag on a software backend     | refused    | refused | allowed, logged    |
| `[audit] retention_days` (0 keeps every record)        | 0 or >= 90 | any     | any                |

Rotation periods are 1..365 days everywhere (governance/service.py checks them).
"""

from dataclasses import dataclass

from . import constants as C
from .errors import PKCS11Error
from .log import LOG

TYPES = ("production", "staging", "development", "local")
MIN_AUDIT_RETENTION_DAYS = 90


@dataclass(frozen=True)
class Rules:
    software_fallback: bool           # may a token pass over a hardware backend to the engine's keys
    hardware_tags_enforced: bool      # does a `hardware` tag refuse a software backend
    min_audit_retention_days: int     # a retention below this (but 0: keep all) is refused


RULES = {
    "production": Rules(software_fallback=False, hardware_tags_enforced=True, min_audit_retention_days=90),
    "staging": Rules(software_fallback=True, hardware_tags_enforced=True, min_audit_retention_days=0),
    "development": Rules(software_fallback=True, hardware_tags_enforced=False, min_audit_retention_days=0),
    "local": Rules(software_fallback=True, hardware_tags_enforced=False, min_audit_retention_days=0),
}


def parse(table: dict, source: str) -> str:
    kind = table.get("type", "local")
    if set(table) - {"type"} or kind not in TYPES:
        raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: [environment] type must be one of {TYPES}")
    return kind


def check(config) -> None:
    """Refuse, at start, a configuration the environment does not allow (one clear line)."""
    rules = RULES[config.environment]
    if not rules.software_fallback:
        soft = sorted(label for label, p in config.token_policies.items() if p.fallback == "software")
        if soft:
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{config.source}: [environment] {config.environment} refuses "
                                                   f"fallback = \"software\" (tokens {soft})")
    days = config.audit.retention_days
    if days and days < rules.min_audit_retention_days:
        raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{config.source}: [environment] {config.environment} keeps the "
                                               f"audit at least {rules.min_audit_retention_days} days "
                                               f"([audit] retention_days = {days})")


def backend_security(backends, name: str) -> str:
    """'hardware' or 'software': what the backend `name`'s keys are."""
    if backends is None or name == "soft":
        return "software"
    try:
        return backends.get(name).kind
    except PKCS11Error:                  # a backend that cannot be built vouches for nothing
        return "software"


def placement(environment: str, backends):
    """The governance placement rule: (the security level a key's tags ask, backend name)
    -> why the version may not live there, or None."""
    rules = RULES[environment]

    def check_placement(level: str, backend: str) -> str | None:
        if level != "hardware" or backend_security(backends, backend) == "hardware":
            return None
        if rules.hardware_tags_enforced:
            return f"a hardware tag refuses the software backend {backend!r} in {environment}"
        LOG.warning("a key under a hardware tag on the software backend %r (allowed in %s)", backend, environment)
        return None
    return check_placement
