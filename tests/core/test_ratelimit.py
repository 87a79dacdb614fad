"""The token bucket, driven with explicit clock readings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segdl.core.ratelimit import TokenBucket

RATE = 1000.0


def pass_time(bucket: TokenBucket, ticket: int, now: float) -> float:
    """When a reader holding *ticket* at *now* may go on."""
    return now + bucket.delay(ticket, now)


def test_unlimited_never_waits() -> None:
    bucket = TokenBucket.create(None, now=0.0)
    assert bucket.delay(bucket.charge(10**12, 0.0), 0.0) == 0.0


def test_a_charge_waits_its_size_at_the_rate() -> None:
    bucket = TokenBucket.create(RATE, now=0.0, tolerance=0.0)
    ticket = bucket.charge(500, 0.0)
    assert bucket.delay(ticket, 0.0) == pytest.approx(0.5)
    assert bucket.delay(ticket, 0.5) == 0.0


def test_readers_are_served_in_the_order_they_charged() -> None:
    bucket = TokenBucket.create(RATE, now=0.0, tolerance=0.0)
    first = bucket.charge(1000, 0.0)
    second = bucket.charge(1000, 0.0)
    assert pass_time(bucket, first, 0.0) == pytest.approx(1.0)
    assert pass_time(bucket, second, 0.0) == pytest.approx(2.0)


def test_idle_time_earns_only_the_tolerance() -> None:
    bucket = TokenBucket.create(RATE, now=0.0, tolerance=0.25)
    # Ten idle seconds: only 0.25 s of credit, so 1000 bytes still wait 0.75 s.
    ticket = bucket.charge(1000, 10.0)
    assert bucket.delay(ticket, 10.0) == pytest.approx(0.75)


def test_a_new_rate_applies_to_bytes_still_waiting() -> None:
    bucket = TokenBucket.create(RATE, now=0.0, tolerance=0.0)
    ticket = bucket.charge(2000, 0.0)  # 2 s at 1000 B/s
    bucket.set_rate(RATE * 4, 1.0)  # after 1 s, 1000 bytes are left: 0.25 s at 4000 B/s
    assert bucket.delay(ticket, 1.0) == pytest.approx(0.25)
    bucket.set_rate(None, 1.0)
    assert bucket.delay(ticket, 1.0) == 0.0


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket.create(0, now=0.0)
    bucket = TokenBucket.create(RATE, now=0.0)
    with pytest.raises(ValueError, match="positive"):
        bucket.set_rate(-1.0, 0.0)


# A schedule: readers charge chunks at increasing times; the rate changes now and then.
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.5),  # time until this step
        st.integers(min_value=1, max_value=4000),  # bytes charged
        st.one_of(st.none(), st.floats(min_value=100.0, max_value=10_000.0)),  # new rate
    ),
    min_size=1,
    max_size=60,
)


@given(steps, st.floats(min_value=0.0, max_value=1.0))
def test_bytes_let_through_never_exceed_the_rate(
    schedule: list[tuple[float, int, float | None]], tolerance: float
) -> None:
    """Whatever the schedule, a reader told to go on at time t holds a ticket no larger
    than the rate integrated from the start to t (nothing passes ahead of the rate), and
    every reader gets through in finite time."""
    bucket = TokenBucket.create(RATE, now=0.0, tolerance=tolerance)
    now = 0.0
    allowed = 0.0  # the rate integrated up to now
    rate = RATE
    tickets: list[int] = []
    for gap, nbytes, new_rate in schedule:
        now += gap
        allowed += gap * rate
        if new_rate is not None:
            bucket.set_rate(new_rate, now)
            rate = new_rate
        tickets.append(bucket.charge(nbytes, now))
        # Waiting readers poll: whoever may go on now must be within the integral.
        for ticket in tickets:
            delay = bucket.delay(ticket, now)
            assert delay >= 0.0
            if delay == 0.0:
                assert ticket <= allowed + 1e-9 * ticket
    last = tickets[-1]
    wait = bucket.delay(last, now)
    assert wait < float("inf")
    assert bucket.delay(last, now + wait + 1e-9) == 0.0


@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=50))
def test_a_busy_bucket_runs_at_its_rate(chunks: list[int]) -> None:
    """Readers that go on as soon as allowed get exactly the rate (no bytes lost either)."""
    bucket = TokenBucket.create(RATE, now=0.0, tolerance=0.0)
    now = 0.0
    for nbytes in chunks:
        now += bucket.delay(bucket.charge(nbytes, now), now)
    assert now == pytest.approx(sum(chunks) / RATE)
