"""The one error of the governance API: a stable string code (what an interface maps
to its own answer: a JSON 4xx, a CK_RV) and a message that never holds key material."""

CODES = ("not_found", "conflict", "invalid_argument", "failed_precondition", "permission_denied",
         "approval_required", "unavailable")      # unavailable: the audit record cannot be written


class GovernanceError(Exception):
    def __init__(self, code: str, message: str, approval=None):
        assert code in CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.approval = approval          # approval_required: the pending Approval it made (or found)
