"""Per-key request rate limits: a token bucket per key, in this process, refilled continuously.

A key allowed N requests a minute may burst N at once, then gets one more every 60/N seconds.
"""

import math
from collections.abc import Callable

from storegate.errors import RateLimited


class RateLimiter:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: str, per_minute: int) -> None:
        """Spend one request of `key_id`'s allowance; 0 means unlimited."""
        if per_minute <= 0:
            return
        now = self._clock()
        tokens, at = self._buckets.get(key_id, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            wait = math.ceil((1.0 - tokens) * 60.0 / per_minute)
            raise RateLimited(
                f"Rate limit reached for this key: {per_minute} requests per minute. Try again in {wait}s.",
                retry_after=max(wait, 1),
            )
        self._buckets[key_id] = (tokens - 1.0, now)
