"""Governed keys: versions, states, primary, floors, policy tags, dual control, the
scheduler. Below every interface: the PKCS#11 engine and the REST service call it
alike (record.py holds the records and the one rule of what a version may do)."""

from .errors import GovernanceError  # noqa: E402,F401
from .scheduler import Scheduler  # noqa: E402,F401
from .service import Governance  # noqa: E402,F401

__all__ = ["GovernanceError", "Scheduler", "Governance", "governance_of"]


def governance_of(library, token, **kw) -> Governance:
    """The governance service of `library`'s `token` as its configuration sets it up: the
    token's audit chain, the library's backends, [policy] key_separation and the
    environment's placement rule (provider/environment.py). The token's user is logged in."""
    from .. import environment
    from .auditing import recorder
    config = library.config
    return Governance(token, recorder(token.audit), backends=library.backends,
                      separated=config.policy.key_separation,
                      placement=environment.placement(config.environment, library.backends), **kw)
