"""The analysis queue's Retry-After follows the measured time per image, not the starting guess."""

from __future__ import annotations

import math
import threading
import time
from contextlib import ExitStack

import pytest

from cxr_fhir.domain.errors import Unavailable
from cxr_fhir.services.queue import InferenceQueue, Saturated


def _refusal(queue: InferenceQueue) -> Saturated:
    with ExitStack() as held:
        for _ in range(queue.capacity):
            held.enter_context(queue.admitted())
        with pytest.raises(Saturated) as refused:
            with queue.admitted():
                pass
    return refused.value


def test_retry_after_follows_the_measured_time_per_image():
    queue = InferenceQueue(max_waiting=19, seconds_per_image=0.5)  # 20 in flight when full
    assert queue.seconds_per_image == 0.5  # the starting guess: 20 in flight would be told 10 s
    for _ in range(8):
        with queue.admitted():
            time.sleep(0.2)
    measured = queue.seconds_per_image
    assert 0.2 <= measured < 0.3, measured  # 0.5 smoothed towards 0.2: 0.2 + 0.3 x 0.7^8 = 0.217
    refused = _refusal(queue)
    assert isinstance(refused, Unavailable)
    assert refused.retry_after_s == math.ceil(20 * measured)  # 5 or 6 s, where the guess gave 10 s
    assert 4 <= refused.retry_after_s <= 6 and f"try again in {refused.retry_after_s} s" in refused.message


def test_before_any_measurement_the_guess_is_used():
    assert _refusal(InferenceQueue(max_waiting=19, seconds_per_image=0.5)).retry_after_s == 10


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_waiting_in_line_is_not_counted_as_time_per_image():
    """Three uploads arrive together; the model takes 2 s for each, one after the other. Each stays
    2, 4 and 6 s, but the queue drains at 2 s per image, and that is what it learns."""
    clock = FakeClock()
    queue = InferenceQueue(max_waiting=5, seconds_per_image=0.5, smoothing=1.0, clock=clock)
    a, b, c = queue.admitted(), queue.admitted(), queue.admitted()
    for admission in (a, b, c):
        admission.__enter__()
    for admission in (a, b, c):
        clock.now += 2.0
        admission.__exit__(None, None, None)
        assert queue.seconds_per_image == 2.0
    clock.now += 60.0  # idle time is nobody's
    with queue.admitted():
        clock.now += 1.0
    assert queue.seconds_per_image == 1.0 and queue.in_flight == 0


def test_smoothing_weights_each_measurement_and_failures_are_measured_too():
    clock = FakeClock()
    queue = InferenceQueue(max_waiting=1, seconds_per_image=0.5, smoothing=0.5, clock=clock)
    with pytest.raises(RuntimeError):
        with queue.admitted():
            clock.now += 1.5
            raise RuntimeError("analysis failed")
    assert queue.seconds_per_image == pytest.approx(1.0)  # 0.5 + 0.5 x (1.5 - 0.5)
    with queue.admitted(), queue.admitted():
        with pytest.raises(Saturated) as refused:
            with queue.admitted():
                pass
        assert refused.value.retry_after_s == 2  # 2 in flight x 1.0 s
    assert queue.in_flight == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        InferenceQueue(max_waiting=1, seconds_per_image=0)
    with pytest.raises(ValueError):
        InferenceQueue(max_waiting=1, smoothing=0)


def test_concurrent_admissions_keep_count():
    queue = InferenceQueue(max_waiting=100)
    model = threading.Lock()

    def upload() -> None:
        with queue.admitted(), model:
            time.sleep(0.01)

    threads = [threading.Thread(target=upload) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert queue.in_flight == 0
    assert 0.005 <= queue.seconds_per_image < 0.2  # the model's 10 ms, not the 0.5 s guess nor the wait in line
