"""Property tests of the generator's vectorized building blocks (inputs vary: hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kunbench.generators.sampling import affine_permute, offsets_from_lengths, session_timestamps
from kunbench.generators.signal import segment_sums

lengths_st = st.lists(st.integers(0, 40), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(lengths=lengths_st, seed=st.integers(0, 2**32 - 1), span_days=st.floats(0.01, 200.0),
       session_events=st.floats(1.0, 20.0), session_minutes=st.floats(0.1, 600.0))
def test_session_timestamps_sorted_and_before_request(lengths, seed, span_days, session_events,
                                                      session_minutes):
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths, dtype=np.int64)
    n = lengths.shape[0]
    request_ts = 1_700_000_000 + np.sort(rng.integers(0, 10**7, n))
    row = np.repeat(np.arange(n), lengths)
    span = span_days * 86400.0
    ts = session_timestamps(rng, request_ts, lengths, row, span, session_events, session_minutes * 60.0)
    assert ts.dtype == np.int64 and ts.shape == row.shape
    assert (ts < request_ts[row]).all()
    assert (ts >= request_ts[row] - span - 1).all()
    off = offsets_from_lengths(lengths)
    for i in range(n):
        assert (np.diff(ts[off[i]:off[i + 1]]) >= 0).all()


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, k=st.integers(1, 3), seed=st.integers(0, 1000))
def test_segment_sums_match_bincount(lengths, k, seed):
    lengths = np.array(lengths, dtype=np.int64)
    off = offsets_from_lengths(lengths)
    values = np.random.default_rng(seed).random((int(off[-1]), k))
    row = np.repeat(np.arange(lengths.shape[0]), lengths)
    expected = np.stack([np.bincount(row, weights=values[:, j], minlength=lengths.shape[0])
                         for j in range(k)], axis=1)
    np.testing.assert_allclose(segment_sums(values, off, lengths), expected, rtol=1e-12, atol=1e-12)


@given(card=st.integers(2, 5000), mult=st.integers(1, 1 << 22), offset=st.integers(0, 10**6))
def test_affine_permutation_is_a_bijection_when_coprime(card, mult, offset):
    import math

    if math.gcd(mult, card) != 1:
        mult = 1
    ids = affine_permute(np.arange(card, dtype=np.int64), mult, offset % card, card)
    assert np.array_equal(np.sort(ids), np.arange(card))
