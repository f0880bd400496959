"""Governed keys: versions, states, primary, floors, policy tags, dual control, the
scheduler. Below every interface: the PKCS#11 engine and the REST service call it
alike (record.py holds the records and the one rule of what a version may do)."""

from .errors import GovernanceError  # noqa: E402,F401
from .scheduler import Scheduler  # noqa: E402,F401
from .service import Governance  # noqa: E402,F401
