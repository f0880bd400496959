"""The scheduler: a thread that runs Governance.tick() every `interval` seconds
(pending versions enabled after their validation window, automatic rotation,
destruction when its grace period ends, approvals expiring). A failed tick is logged
and tried again at the next interval; it never ends the thread."""

import threading

from ..log import LOG
from .errors import GovernanceError


class Scheduler:
    def __init__(self, gov, interval: float = 60.0):
        if interval <= 0:
            raise ValueError("the scheduler's interval is a positive number of seconds")
        self.gov = gov
        self.interval = interval
        self.ticks = 0                      # completed ticks (tests wait on it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ferrohsm-scheduler", daemon=True)

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for action, subject, version in self.gov.tick():
                    LOG.info("scheduler: %s %s v%s", action, subject, version)
            except GovernanceError as err:
                LOG.warning("scheduler: tick not run: %s", err)
            except Exception:            # noqa: BLE001 - the thread outlives any one failure
                LOG.exception("scheduler: tick failed")
            self.ticks += 1
            self._stop.wait(self.interval)
