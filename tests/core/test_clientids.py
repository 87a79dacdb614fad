"""Client ids: a keyed permutation, so never repeated and not guessable from a restart."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segdl.core.clientids import MAX_CLIENT_ID, ClientIds, feistel

keys = st.binary(min_size=16, max_size=64)


@given(key=keys, half_bits=st.integers(1, 5), rounds=st.integers(1, 8))
@settings(max_examples=60)
def test_feistel_is_a_permutation_of_its_domain(key: bytes, half_bits: int, rounds: int) -> None:
    domain = range(1 << (2 * half_bits))
    images = [feistel(key, v, half_bits=half_bits, rounds=rounds) for v in domain]
    assert sorted(images) == list(domain)


def test_feistel_refuses_values_outside_its_domain() -> None:
    with pytest.raises(ValueError, match="outside"):
        feistel(b"k" * 16, 1 << 32)
    with pytest.raises(ValueError, match="outside"):
        feistel(b"k" * 16, -1)


@given(key=keys)
@settings(max_examples=20, deadline=None)
def test_ids_are_distinct_and_in_range(key: bytes) -> None:
    ids = ClientIds(key)
    drawn = [next(ids) for _ in range(5000)]
    assert len(set(drawn)) == len(drawn)
    assert all(1 <= i <= MAX_CLIENT_ID for i in drawn)


@given(key=keys, index=st.integers(0, MAX_CLIENT_ID - 1))
def test_at_matches_the_sequence_and_stays_in_range(key: bytes, index: int) -> None:
    value = ClientIds(key).at(index)
    assert 1 <= value <= MAX_CLIENT_ID


def test_next_is_at_in_order() -> None:
    ids = ClientIds(b"a fixed key for a test")
    assert [next(ids) for _ in range(50)] == [
        ClientIds(b"a fixed key for a test").at(i) for i in range(50)
    ]


def test_two_keys_give_unrelated_sequences() -> None:
    first = [next(ClientIds(b"server run one..")) for _ in range(1)]
    a = ClientIds(b"server run one..")
    b = ClientIds(b"server run two..")
    a_ids = [next(a) for _ in range(1000)]
    b_ids = [next(b) for _ in range(1000)]
    assert first == a_ids[:1]
    # Two random 1000-samples of 2**31 values share an element with chance under 1e-3.
    assert not set(a_ids) & set(b_ids)
    # Not a counter: consecutive ids are far apart on average.
    gaps = [abs(x - y) for x, y in itertools.pairwise(a_ids)]
    assert sum(gaps) / len(gaps) > MAX_CLIENT_ID / 10


def test_the_sequence_never_repeats_itself_it_ends() -> None:
    ids = ClientIds(b"k" * 16)
    ids._issued = MAX_CLIENT_ID - 1
    last = next(ids)
    assert 1 <= last <= MAX_CLIENT_ID
    with pytest.raises(RuntimeError, match="every client id"):
        next(ids)


@pytest.mark.parametrize("key", [b"", b"short", b"x" * 65])
def test_key_length_is_checked(key: bytes) -> None:
    with pytest.raises(ValueError, match="key"):
        ClientIds(key)
