"""GET /v1/keys, cached: each answer (its JSON bytes and ETag) is kept by its query
until the store's head moves. The head is the store's change counter (seq, epoch) that
every write of any process moves (store/base.py), so a key made, rotated or destroyed by
this service, by a PKCS#11 client or by the scheduler in another process empties the
cache at the next request; nothing is served that is older than the head read before
it. Audit records do not move the head: key uses leave the cache warm. Bounded (LRU)."""

import hashlib
import threading
from collections import OrderedDict

from ..governance.views import dumps

SIZE = 256


class KeyListing:
    def __init__(self, gov, size: int = SIZE):
        self.gov, self.size = gov, size
        self._lock = threading.Lock()
        self._head = None
        self._answers: OrderedDict = OrderedDict()     # query -> (JSON bytes, ETag)
        self.hits = self.misses = 0

    def answer(self, **query) -> tuple:
        """(JSON bytes, ETag) of the page `query` names (Governance.list_keys' arguments)."""
        head = self.gov.token.store.head()
        key = tuple(sorted(query.items()))
        with self._lock:
            if head != self._head:
                self._answers.clear()
                self._head = head
            found = self._answers.get(key)
            if found is not None:
                self._answers.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        keys, next_token = self.gov.key_page(**query)       # (refreshes: sees at least `head`)
        data = dumps({"keys": keys, "next_page_token": next_token})
        found = data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        with self._lock:
            if self._head == head:
                self._answers[key] = found
                while len(self._answers) > self.size:
                    self._answers.popitem(last=False)
        return found

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._answers)}
