"""Governance's audit callable over the audit chain (provider/audit): each event of a
transition becomes an audit Event appended inside the transition's open store
transaction (Audit.record_in), so the change and its record commit together; a record
that cannot be written rolls the change back (fail closed). Fields the audit record
has no column for (the approval id, the request's subject, the refusal's code, a tag)
go into its message: names and ids only, never key material."""

from ..audit import Event

EXTRA = ("approval_id", "subject", "tag", "code")


def event_of(event: dict) -> Event:
    extras = " ".join(f"{k}={event[k]}" for k in EXTRA if event.get(k))
    message = " ".join(part for part in (event.get("message") or "", extras) if part)
    outcome = "requested" if event["action"] == "approval.requested" else event.get("outcome", "ok")
    return Event(actor=event["actor"], action=event["action"], key_id=event.get("key_id") or "",
                 key_version=event.get("key_version") or 0, outcome=outcome, message=message)


def recorder(audit):
    """The `audit` callable Governance takes, writing to `audit` (provider.audit.Audit)."""
    def record(event: dict) -> None:
        audit.record_in(event_of(event))
    return record
