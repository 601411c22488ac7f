from __future__ import annotations

from query_service.ratelimit import RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a")
    assert 0.49 < wait <= 0.5 and retry_after_header(wait) == "1"
    assert limiter.take("b") == 0.0  # keys are independent
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 100
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # refills up to the burst only
    assert limiter.take("a") > 0


def test_per_key_override_and_unlimited() -> None:
    clock = Clock()
    limiter = RateLimiter(100.0, 1, clock=clock)
    assert limiter.take("slow", 0.01) == 0.0
    assert 99 < limiter.take("slow", 0.01) <= 100
    assert retry_after_header(99.5) == "100"
    assert all(limiter.take("free", 0) == 0.0 for _ in range(1000))
    assert all(RateLimiter(0, 1, clock=clock).take("x") == 0.0 for _ in range(100))


def test_memory_is_bounded() -> None:
    limiter = RateLimiter(1.0, 1, max_keys=10)
    for i in range(100):
        limiter.take(f"k{i}")
    assert len(limiter._buckets) <= 11
