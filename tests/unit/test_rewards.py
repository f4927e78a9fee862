"""Unit tests for service/endorm_server/scoring/rewards.py against a slow, obvious reference (docs/architecture.md, the math)."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from endorm_server.errors import InternalError, RequestError
from endorm_server.scoring.rewards import (
    TERMINALS,
    aggregate,
    discount_weights,
    preference_probabilities,
    ranking,
    token_rewards,
)
from endorm_server.scoring.rewards import (
    TOKEN_AGGREGATIONS as AGGREGATIONS,
)

VOCAB = 13


# -----------------------------------------------------------------------------
# reference: the slow, obvious way, from a full logits matrix [N, VOCAB] and token ids


def _logsumexp(z):
    m = max(z)
    return m + math.log(sum(math.exp(zi - m) for zi in z))


def engine_stats(logits, tokens, alpha):
    """What the engine emits: c[i] = logits[i, x_{i+1}] (NaN at N-1), v[i] = alpha*lse(logits[i]/alpha)."""
    N = len(tokens)
    c = np.full(N, np.nan)
    v = np.empty(N)
    for i in range(N):
        if i < N - 1:
            c[i] = logits[i][tokens[i + 1]]
        v[i] = alpha * _logsumexp([x / alpha for x in logits[i]])
    return c, v


def reference(logits, tokens, P, alpha, terminal="zero"):
    """Per-token rewards via r_h = alpha*log pi(a_h|s_h) + V(s_h) - V(s_{h+1}) with an explicit log-softmax."""
    N = len(tokens)
    H = N - P

    def V(i):  # V of the state predicted at position i
        return alpha * _logsumexp([x / alpha for x in logits[i]])

    r, lp = [], []
    for h in range(H):
        row = [x / alpha for x in logits[P + h - 1]]
        logpi = row[tokens[P + h]] - _logsumexp(row)  # log-softmax at state s_h, action a_h
        v_h = V(P + h - 1)
        if h < H - 1:
            v_next = V(P + h)
        else:
            v_next = 0.0 if terminal == "zero" else V(N - 1)
        r.append(alpha * logpi + v_h - v_next)
        lp.append(logpi)
    return np.array(r), np.array(lp), V(P - 1)


def make_case(rng, N, scale=3.0):
    logits = rng.normal(0.0, scale, size=(N, VOCAB))
    tokens = rng.integers(0, VOCAB, size=N)
    return logits, tokens


# -----------------------------------------------------------------------------
# per-token rewards


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize("P,H", [(1, 1), (1, 7), (5, 1), (4, 9), (10, 3)])
def test_token_rewards_match_reference(alpha, terminal, P, H):
    rng = np.random.default_rng(1000 * P + H)
    logits, tokens = make_case(rng, P + H)
    c, v = engine_stats(logits, tokens, alpha)
    tr = token_rewards(c, v, P, alpha=alpha, terminal=terminal)
    r_ref, lp_ref, v0_ref = reference(logits, tokens, P, alpha, terminal)
    assert tr.rewards.dtype == np.float64 and tr.logprobs.dtype == np.float64
    assert tr.rewards.shape == (H,) and tr.logprobs.shape == (H,) and tr.H == H
    np.testing.assert_allclose(tr.rewards, r_ref, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(tr.logprobs, lp_ref, rtol=1e-12, atol=1e-10)
    assert tr.v0 == pytest.approx(v0_ref, abs=1e-10)
    assert np.all(tr.logprobs <= 0)


def test_token_rewards_direct_formulas():
    """The DESIGN indexing written out literally, on arbitrary c, v (not from logits)."""
    rng = np.random.default_rng(7)
    N, P, alpha = 12, 4, 0.7
    c, v = rng.normal(size=N) * 5, rng.normal(size=N) * 5
    c[-1] = np.nan
    H = N - P
    for terminal in TERMINALS:
        tr = token_rewards(c, v, P, alpha=alpha, terminal=terminal)
        for h in range(H):
            Q = c[P + h - 1]
            V_next = v[P + h] if h < H - 1 else (0.0 if terminal == "zero" else v[N - 1])
            assert tr.rewards[h] == pytest.approx(Q - V_next, abs=1e-12)
            assert tr.logprobs[h] == pytest.approx((c[P + h - 1] - v[P + h - 1]) / alpha, abs=1e-12)
        assert tr.v0 == v[P - 1]


def test_inputs_not_mutated_and_lists_accepted():
    rng = np.random.default_rng(3)
    c, v = rng.normal(size=6), rng.normal(size=6)
    c0, v0 = c.copy(), v.copy()
    tr = token_rewards(c, v, 2)
    tr.rewards[:] = 123.0
    np.testing.assert_array_equal(c, c0)
    np.testing.assert_array_equal(v, v0)
    tr2 = token_rewards(list(c0), list(v0), 2)
    assert tr2.rewards.shape == (4,)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("P,H", [(1, 1), (1, 20), (3, 2), (8, 15), (30, 40)])
def test_telescoping_identity(alpha, P, H):
    """Terminal zero, no discount: sum_h r_h == alpha * sum_h logprob_h + V(s_0)."""
    rng = np.random.default_rng(P * 31 + H)
    logits, tokens = make_case(rng, P + H)
    c, v = engine_stats(logits, tokens, alpha)
    tr = token_rewards(c, v, P, alpha=alpha)
    lhs = aggregate(tr, "sum")
    rhs = alpha * aggregate(tr, "loglik_sum") + tr.v0
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs))
    # and the identity does NOT hold for bootstrap (it adds -V(s_H))
    trb = token_rewards(c, v, P, alpha=alpha, terminal="bootstrap")
    assert aggregate(trb, "sum") == pytest.approx(lhs - v[-1], abs=1e-9)


@pytest.mark.parametrize("k", [0.25, 3.0])
def test_alpha_scaling(k):
    """Logits * k with alpha * k: rewards and V(s_0) scale by k, log-probs are unchanged."""
    rng = np.random.default_rng(11)
    logits, tokens = make_case(rng, 14)
    P, alpha = 5, 0.8
    tr = token_rewards(*engine_stats(logits, tokens, alpha), P, alpha=alpha)
    trk = token_rewards(*engine_stats(logits * k, tokens, alpha * k), P, alpha=alpha * k)
    np.testing.assert_allclose(trk.rewards, k * tr.rewards, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(trk.logprobs, tr.logprobs, rtol=1e-12, atol=1e-10)
    assert trk.v0 == pytest.approx(k * tr.v0, rel=1e-12)


def test_bootstrap_vs_zero_differ_by_last_v_only():
    rng = np.random.default_rng(5)
    logits, tokens = make_case(rng, 10)
    c, v = engine_stats(logits, tokens, 1.0)
    for P in (1, 4, 9):
        z = token_rewards(c, v, P, terminal="zero")
        b = token_rewards(c, v, P, terminal="bootstrap")
        np.testing.assert_array_equal(z.rewards[:-1], b.rewards[:-1])
        assert z.rewards[-1] - b.rewards[-1] == pytest.approx(v[-1], abs=1e-12)
        np.testing.assert_array_equal(z.logprobs, b.logprobs)
        assert z.v0 == b.v0


def test_single_response_token():
    c = np.array([0.3, 1.5, 2.0, np.nan])
    v = np.array([1.0, 2.0, 3.0, 4.0])
    tr = token_rewards(c, v, 3)  # H = 1: a_0 = x_3, Q = c[2], V(s_0) = v[2], V(s_1) = 0
    np.testing.assert_array_equal(tr.rewards, [2.0])
    np.testing.assert_array_equal(tr.logprobs, [-1.0])
    assert tr.v0 == 3.0
    assert token_rewards(c, v, 3, terminal="bootstrap").rewards[0] == -2.0
    for agg in AGGREGATIONS:
        assert math.isfinite(aggregate(tr, agg, gamma=0.9))


def test_nan_outside_used_range_is_ignored():
    c = np.array([np.nan, np.inf, 1.0, 2.0, np.nan])  # prompt part is not used: only c[P-1:]
    v = np.array([np.nan, np.nan, 1.5, 2.5, np.nan])  # v[N-1] only used by bootstrap
    tr = token_rewards(c, v, 3)
    assert np.all(np.isfinite(tr.rewards))
    with pytest.raises(InternalError):  # malformed engine output: ours, a 500
        token_rewards(c, v, 3, terminal="bootstrap")


# -----------------------------------------------------------------------------
# errors


def _cv(N=6):
    rng = np.random.default_rng(0)
    return rng.normal(size=N), rng.normal(size=N)


@pytest.mark.parametrize("P,param", [(6, "response"), (7, "response"), (0, "prompt"), (-1, "prompt")])
def test_empty_prompt_or_response(P, param):
    c, v = _cv(6)
    with pytest.raises(RequestError) as e:
        token_rewards(c, v, P)
    assert e.value.param == param
    assert isinstance(e.value, ValueError) and str(e.value)


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.nan, math.inf, "x"])
def test_bad_alpha(alpha):
    c, v = _cv()
    with pytest.raises(RequestError) as e:
        token_rewards(c, v, 2, alpha=alpha)
    assert e.value.param == "alpha"


def test_bad_prompt_len_type_terminal_and_shapes():
    c, v = _cv()
    for bad in (2.5, True, None):
        with pytest.raises(RequestError) as e:
            token_rewards(c, v, bad)
        assert e.value.param == "prompt"
    with pytest.raises(RequestError) as e:
        token_rewards(c, v, 2, terminal="none")
    assert e.value.param == "terminal"
    with pytest.raises(InternalError):
        token_rewards(c, v[:-1], 2)
    with pytest.raises(InternalError):
        token_rewards(np.stack([c, v]), np.stack([c, v]), 2)
    assert token_rewards(c, v, np.int64(2)).H == 4


@pytest.mark.parametrize("where", ["c", "v"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_in_used_range(where, bad):
    c, v = _cv(8)
    (c if where == "c" else v)[4] = bad
    with pytest.raises(InternalError, match="position 4"):
        token_rewards(c, v, 3)


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.0000001, 2.0, math.nan, math.inf, "a"])
def test_bad_gamma(gamma):
    tr = token_rewards(*_cv(), 2)
    with pytest.raises(RequestError) as e:
        aggregate(tr, "discounted", gamma=gamma)
    assert e.value.param == "gamma"
    with pytest.raises(RequestError) as e:
        discount_weights(3, gamma, 0.0)
    assert e.value.param == "gamma"


@pytest.mark.parametrize("beta", [-1e-9, -1.0, math.nan, math.inf, None])
def test_bad_beta(beta):
    tr = token_rewards(*_cv(), 2)
    with pytest.raises(RequestError) as e:
        aggregate(tr, "discounted", gamma=0.9, beta=beta)
    assert e.value.param == "beta"


def test_bad_aggregation():
    tr = token_rewards(*_cv(), 2)
    with pytest.raises(RequestError) as e:
        aggregate(tr, "max")
    assert e.value.param == "aggregation"


# -----------------------------------------------------------------------------
# aggregation and discount weights


def test_discount_weights_values_and_floor():
    np.testing.assert_allclose(discount_weights(4, 0.5, 0.0), [1.0, 0.5, 0.25, 0.125], rtol=0, atol=0)
    np.testing.assert_allclose(discount_weights(5, 0.5, 0.2), [1.0, 0.5, 0.25, 0.2, 0.2], rtol=0, atol=0)
    np.testing.assert_array_equal(discount_weights(6, 1.0, 0.0), np.ones(6))
    np.testing.assert_array_equal(discount_weights(3, 0.9, 2.0), [2.0, 2.0, 2.0])  # floor above 1
    assert discount_weights(0, 0.9, 0.0).shape == (0,)
    w = discount_weights(20000, 0.93, 0.0)  # underflows quietly to 0, no warnings
    assert np.all(np.isfinite(w)) and w[-1] == 0.0 and np.all(np.diff(w) <= 0)
    np.testing.assert_allclose(discount_weights(50, 0.93, 0.0), [0.93**h for h in range(50)], rtol=1e-13)


def test_aggregations_against_loops():
    rng = np.random.default_rng(21)
    logits, tokens = make_case(rng, 25)
    P, alpha, gamma, beta = 6, 1.0, 0.93, 0.4
    tr = token_rewards(*engine_stats(logits, tokens, alpha), P, alpha=alpha)
    r, lp = tr.rewards.tolist(), tr.logprobs.tolist()
    H = len(r)
    assert aggregate(tr) == pytest.approx(sum(r), rel=1e-12)
    assert aggregate(tr, "mean") == pytest.approx(sum(r) / H, rel=1e-12)
    assert aggregate(tr, "discounted", gamma=gamma, beta=beta) == pytest.approx(
        sum(max(gamma**h, beta) * r[h] for h in range(H)), rel=1e-12
    )
    assert aggregate(tr, "discounted", gamma=1.0) == pytest.approx(aggregate(tr, "sum"), rel=1e-14)
    assert aggregate(tr, "loglik_sum") == pytest.approx(sum(lp), rel=1e-12)
    assert aggregate(tr, "loglik_mean") == pytest.approx(sum(lp) / H, rel=1e-12)
    for agg in AGGREGATIONS:
        assert type(aggregate(tr, agg)) is float


def _scores(items, aggregation, alpha=1.0):
    return [aggregate(token_rewards(c, v, P, alpha=alpha), aggregation) for c, v, P in items]


def test_sum_ranks_like_loglik_for_same_prompt():
    """Same prompt => same V(s_0): sum of rewards ranks like total log-likelihood (alpha > 0)."""
    rng = np.random.default_rng(17)
    P, alpha = 5, 0.5
    prompt_logits = rng.normal(0, 3, size=(P, VOCAB))
    prompt_tokens = rng.integers(0, VOCAB, size=P)
    items = []
    for H in (3, 6, 9, 4, 12):
        logits = np.vstack([prompt_logits, rng.normal(0, 3, size=(H, VOCAB))])
        tokens = np.concatenate([prompt_tokens, rng.integers(0, VOCAB, size=H)])
        items.append((*engine_stats(logits, tokens, alpha), P))
    assert ranking(_scores(items, "sum", alpha)) == ranking(_scores(items, "loglik_sum", alpha))


# -----------------------------------------------------------------------------
# property tests

finite_logits = hnp.arrays(
    np.float64,
    st.tuples(st.integers(2, 12), st.integers(2, 6)),
    elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(
    logits=finite_logits,
    data=st.data(),
    alpha=st.floats(1e-3, 1e3),
    gamma=st.floats(0.0, 1.0, exclude_min=True),
    beta=st.floats(0.0, 10.0),
)
def test_no_nan_or_inf_escapes(logits, data, alpha, gamma, beta):
    N, Vsz = logits.shape
    tokens = data.draw(st.lists(st.integers(0, Vsz - 1), min_size=N, max_size=N))
    P = data.draw(st.integers(1, N - 1))
    # engine stats, stable and vectorised here (the loop reference is too slow for hypothesis)
    z = logits / alpha
    m = z.max(axis=1)
    v = alpha * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))
    c = np.append(logits[np.arange(N - 1), tokens[1:]], np.nan)
    for terminal in TERMINALS:
        tr = token_rewards(c, v, P, alpha=alpha, terminal=terminal)
        assert np.all(np.isfinite(tr.rewards)) and np.all(np.isfinite(tr.logprobs)) and math.isfinite(tr.v0)
        # log pi <= 0 up to rounding: (c - v) / alpha carries eps * |v| / alpha (1.8e-9 at |v| 8389, alpha 1e-3)
        assert np.all(tr.logprobs <= 1e-9 + 8 * np.finfo(float).eps * np.max(np.abs(v)) / alpha)
        scores = [aggregate(tr, agg, gamma=gamma, beta=beta) for agg in AGGREGATIONS]
        assert all(math.isfinite(s) for s in scores)
        Pm = preference_probabilities(scores)
        assert np.all(np.isfinite(Pm)) and np.all((Pm >= 0) & (Pm <= 1))


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(-1e300, 1e300, allow_nan=False), min_size=1, max_size=8),
    data=st.data(),
)
def test_preferences_and_ranking_permute(scores, data):
    n = len(scores)
    perm = data.draw(st.permutations(range(n)))
    R = np.array(scores)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P = preference_probabilities(R)
        Pp = preference_probabilities(R[perm])
    np.testing.assert_array_equal(Pp, P[np.ix_(perm, perm)])
    np.testing.assert_allclose(P + P.T, 1.0, rtol=0, atol=1e-15)
    rk = ranking(R)
    assert sorted(rk) == list(range(n))
    assert all(R[rk[i]] >= R[rk[i + 1]] for i in range(n - 1))
    # ranking of the permuted scores is the same ordering of the same items (up to ties)
    rkp = [perm[i] for i in ranking(R[perm])]
    np.testing.assert_array_equal(R[rkp], R[rk])
