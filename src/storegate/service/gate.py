"""Backpressure: at most N creates in flight (streams included); the next one gets 503 + Retry-After
instead of a queue that grows memory and latency without bound."""

from collections.abc import Iterator
from contextlib import contextmanager

from storegate.errors import Overloaded


class Gate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.inflight >= self.limit:
            raise Overloaded(f"storegate is at its limit of {self.limit} requests in flight; retry shortly")
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
