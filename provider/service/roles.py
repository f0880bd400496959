"""Who may do what: the one table. Every route names one permission (app.py's
`allow(...)`, also in the OpenAPI schema as `x-permission`); a principal may call it
when one of its roles holds that permission. Auditors read, never use keys; a service
uses only the keys its token names (checked again per key in crypto.py). `session.read`
(GET /v1/whoami: who the bearer token says you are) is every role's: a client checks its
token with it, and it is the authenticated no-op the service benchmark compares with."""

ROLES = ("administrator", "operator", "auditor", "service")

PERMISSIONS = {
    "keys.read":        {"administrator", "operator", "auditor"},
    "keys.create":      {"administrator", "operator"},
    "keys.manage":      {"administrator", "operator"},    # rotate, rollback, enable/disable, destroy, restore
    "keys.adopt":       {"administrator"},                 # a plain PKCS#11 key into governance
    "keys.use":         {"service"},                       # encrypt, decrypt, sign, verify, mac, wrap, unwrap
    "policy.read":      {"administrator", "operator", "auditor"},
    "policy.manage":    {"administrator"},                 # tags, attach/detach, floors, flags
    "approvals.read":   {"administrator", "operator", "auditor"},
    "approvals.decide": {"administrator", "operator"},
    "audit.read":       {"administrator", "auditor"},      # query, export, checkpoints, verify
    "session.read":     set(ROLES),                        # GET /v1/whoami
}


def allowed(roles, permission: str) -> bool:
    return bool(PERMISSIONS[permission] & set(roles))
