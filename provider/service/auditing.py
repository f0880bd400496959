"""The token's audit of key uses over the audit chain: provider/gate.py calls
`token.audit.record(principal, **event)` for every use of a governed key (before the
key is opened; a record that cannot be made durable refuses the use), and this turns
it into an audit Event written durably by `Audit.record` (group commit). The
mechanism name goes into the message; never data, keys or plaintext."""

from ..audit import Event

# the gate's outcomes in the audit record's vocabulary (record.OUTCOMES)
OUTCOME = {"allowed": "ok", "completed": "ok", "denied": "denied", "failed": "failed"}


class UseAudit:
    def __init__(self, audit):
        self.audit = audit

    def record(self, principal, **event):
        message = " ".join(p for p in (event.get("message") or "", f"mechanism={event['mechanism']}"
                                       if event.get("mechanism") else "") if p)
        self.audit.record(Event(actor=principal, action=event["action"], key_id=event.get("key_id") or "",
                                key_version=event.get("key_version") or 0, outcome=OUTCOME.get(event.get("outcome"), "ok"),
                                message=message))
