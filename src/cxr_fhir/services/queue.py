"""Admission to the models: a bounded number of analyses in flight per process.

The models run one image at a time; requests beyond the running one wait their turn, up to a
limit. Past it, an upload is refused at once (503 with Retry-After) before anything is stored,
instead of piling up until every client times out.

Retry-After comes from measured time, not a guess: each admission's stay is timed on the
monotonic clock and folded into a smoothed figure of seconds per image (an exponentially weighted
moving average that starts from the configured guess).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..domain.errors import Unavailable


class Saturated(Unavailable):
    def __init__(self, in_flight: int, retry_after_s: int):
        super().__init__(f"the analysis queue is full ({in_flight} in progress); try again in {retry_after_s} s",
                         retry_after_s)


class InferenceQueue:
    """At most ``max_waiting`` + 1 admissions at once; the rest are refused with a wait to retry after.

    ``seconds_per_image`` is only the starting figure; ``smoothing`` is the weight each new
    measurement gets (0 < smoothing <= 1); ``clock`` is a monotonic clock in seconds."""

    def __init__(self, max_waiting: int, seconds_per_image: float = 0.5, smoothing: float = 0.3,
                 clock: Callable[[], float] = time.monotonic):
        if seconds_per_image <= 0 or not 0 < smoothing <= 1:
            raise ValueError("seconds_per_image must be > 0 and smoothing in (0, 1]")
        self.capacity = max_waiting + 1  # the one running, and those waiting behind it
        self._seconds_per_image = float(seconds_per_image)
        self._smoothing = smoothing
        self._clock = clock
        self._in_flight = 0
        self._last_left: float | None = None
        self._mutex = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def seconds_per_image(self) -> float:
        """The smoothed, measured time one admission takes (the starting guess until one has left)."""
        return self._seconds_per_image

    def retry_after_s(self) -> int:
        """Whole seconds until the analyses now in flight are through, by the measured pace (at least 1)."""
        return max(1, math.ceil(self._in_flight * self._seconds_per_image))

    @contextmanager
    def admitted(self) -> Iterator[None]:
        with self._mutex:
            if self._in_flight >= self.capacity:
                raise Saturated(self._in_flight, self.retry_after_s())
            self._in_flight += 1
        entered = self._clock()
        try:
            yield
        finally:
            left = self._clock()
            with self._mutex:
                self._in_flight -= 1
                self._measured(entered, left)

    def _measured(self, entered: float, left: float) -> None:
        """Folds one admission's time into the average; called under the mutex.

        Admissions overlap (those waiting for the model are in flight too), so an admission is
        charged only for the time since it entered or since the previous one left, whichever is
        later: for one image at a time that is the image's own run, not its wait in line as well;
        in general it is the time between completions, which is what draining the queue takes."""
        start = entered if self._last_left is None else max(entered, self._last_left)
        self._last_left = left if self._last_left is None else max(left, self._last_left)
        took = max(0.0, left - start)
        self._seconds_per_image += self._smoothing * (took - self._seconds_per_image)
