"""Per-subject token buckets: each JWT `sub` has a bucket refilled at its role's rate
(the highest of its roles' [server] rate), holding at most `burst` requests. An empty
bucket answers 429 with Retry-After (whole seconds until one token is back)."""

import math
import threading
import time


# refused bearer tokens, per source address: a guesser is slowed down before any subject is known
UNAUTHENTICATED = (5.0, 20)


class Buckets:
    def __init__(self, rates: dict, clock=time.monotonic, max_subjects: int = 100_000):
        self.rates = rates            # role -> (per_second, burst)
        self.clock = clock
        self.max_subjects = max_subjects
        self._lock = threading.Lock()
        self._buckets: dict = {}      # subject -> [tokens, last time]
        self.rejected = 0

    def rate_of(self, roles) -> tuple:
        known = [self.rates[r] for r in roles if r in self.rates]
        return max(known) if known else min(self.rates.values())

    def take(self, subject: str, roles) -> float:
        """0 if the request may run, else the seconds until it could."""
        per_second, burst = self.rate_of(roles)
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(subject)
            if bucket is None:
                if len(self._buckets) >= self.max_subjects:
                    self._buckets.clear()          # bounded memory: a flood of subjects resets the table
                bucket = self._buckets[subject] = [float(burst), now]
            tokens = min(float(burst), bucket[0] + (now - bucket[1]) * per_second)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return 0.0
            bucket[0] = tokens
            self.rejected += 1
            return (1.0 - tokens) / per_second

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
