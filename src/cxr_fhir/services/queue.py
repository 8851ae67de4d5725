"""Admission to the models: a bounded number of analyses in flight per process.

The models run one image at a time; requests beyond the running one wait their turn, up to a
limit. Past it, an upload is refused at once (503 with Retry-After) before anything is stored,
instead of piling up until every client times out.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..domain.errors import Unavailable


class Saturated(Unavailable):
    def __init__(self, in_flight: int, retry_after_s: int):
        super().__init__(f"the analysis queue is full ({in_flight} in progress); try again in {retry_after_s} s",
                         retry_after_s)


class InferenceQueue:
    def __init__(self, max_waiting: int, seconds_per_image: float = 0.5):
        self.capacity = max_waiting + 1  # the one running, and those waiting behind it
        self.seconds_per_image = seconds_per_image
        self._in_flight = 0
        self._mutex = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextmanager
    def admitted(self) -> Iterator[None]:
        with self._mutex:
            if self._in_flight >= self.capacity:
                raise Saturated(self._in_flight, max(1, math.ceil(self._in_flight * self.seconds_per_image)))
            self._in_flight += 1
        try:
            yield
        finally:
            with self._mutex:
                self._in_flight -= 1
