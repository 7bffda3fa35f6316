"""The unnested share evaluation's quick checks keep the semantics of the full ones.

Without padding, :class:`~blpmodels.kernel.shares.ShareEvaluator` settles its safety checks
(non-finite or non-positive shares, a subnormal factor exp(δ_j − c), a tiny share before the
log) by a few reductions over all markets, and takes a run of consecutive markets as a view
(issue 20). Each test builds a case one of the full checks exists for and compares with a
per-agent log-space oracle written here (``math.fsum``, no kernel code).
"""

from __future__ import annotations

import math

import numpy as np

from blpmodels.kernel.shares import Nesting, ShareEvaluator


def _log_shares_oracle(delta: np.ndarray, mu: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log s_tj = log Σ_i w_i exp(V_tji − log(1 + Σ_k exp V_tki)), market by market."""
    n_markets, n_products, n_agents = mu.shape
    out = np.empty((n_markets, n_products))
    for t in range(n_markets):
        terms = np.empty((n_products, n_agents))
        for i in range(n_agents):
            utilities = [delta[t, j] + mu[t, j, i] for j in range(n_products)]
            peak = max(0.0, *utilities)
            denominator = math.fsum([math.exp(-peak)] + [math.exp(v - peak) for v in utilities])
            log_denominator = peak + math.log(denominator)
            for j in range(n_products):
                terms[j, i] = math.log(weights[t, i]) + utilities[j] - log_denominator
        for j in range(n_products):
            top = max(terms[j])
            out[t, j] = top + math.log(math.fsum(math.exp(v - top) for v in terms[j]))
    return out


def _evaluator(mu: np.ndarray, weights: np.ndarray) -> ShareEvaluator:
    mask = np.ones(mu.shape[:2], dtype=bool)
    return ShareEvaluator(mu, weights, mask, Nesting.unnested(mask.shape))


def _lifted_problem(gap: float, lift: float):
    """Two unpadded markets; in market 0 product 2 sits ``gap`` below the largest δ and half
    the agents' tastes lift it by ``lift``."""
    rng = np.random.default_rng(3)
    mu = rng.normal(scale=0.5, size=(2, 3, 6))
    mu[0, 2, :3] += lift
    weights = np.full((2, 6), 1 / 6)
    delta = np.array([[0.0, 0.4, -gap], [0.2, -0.3, 0.1]])
    return delta, mu, weights


def test_a_subnormal_product_factor_sends_its_market_to_log_space():
    # exp(−730) is subnormal (it keeps ~6 digits); the lift makes the share ~1e-304, normal.
    delta, mu, weights = _lifted_problem(730.0, 30.0)
    evaluator = _evaluator(mu, weights)
    expected = _log_shares_oracle(delta, mu, weights)
    assert 1e-310 < math.exp(expected[0, 2]) < 1e-300
    np.testing.assert_allclose(np.log(evaluator.shares(delta)), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(evaluator.log_shares(delta), expected, rtol=0, atol=1e-12)


def test_log_shares_of_a_subnormal_share_are_summed_in_log_space():
    # The share (~1e-318) is subnormal, so its log lost digits: log_shares must not use it.
    delta, mu, weights = _lifted_problem(745.0, 13.0)
    evaluator = _evaluator(mu, weights)
    expected = _log_shares_oracle(delta, mu, weights)
    assert 0 < math.exp(expected[0, 2]) < 1e-310
    np.testing.assert_allclose(evaluator.log_shares(delta), expected, rtol=0, atol=1e-12)


def test_every_kind_of_bad_share_or_factor_flags_its_market():
    evaluator = _evaluator(np.zeros((3, 2, 1)), np.ones((3, 1)))
    fine = np.array([[0.2, 0.3], [0.1, 0.4], [0.25, 0.25]])
    factors = np.ones((3, 2))
    assert evaluator._fallback_markets(fine, factors).tolist() == []
    for value in (np.inf, np.nan, 0.0, -1e-3):
        shares = fine.copy()
        shares[1, 0] = value
        assert evaluator._fallback_markets(shares, factors).tolist() == [1], value
    subnormal = factors.copy()
    subnormal[2, 1] = 1e-310
    assert evaluator._fallback_markets(fine, subnormal).tolist() == [2]


def test_a_run_of_consecutive_markets_evaluates_as_those_markets():
    rng = np.random.default_rng(8)
    mu = rng.normal(size=(5, 3, 4))
    weights = np.full((5, 4), 0.25)
    delta = rng.normal(size=(5, 3))
    evaluator = _evaluator(mu, weights)
    expected = _log_shares_oracle(delta, mu, weights)
    for markets in (np.arange(1, 4), np.array([4]), np.array([0, 2, 3])):
        subset = evaluator.subset(markets)
        assert subset.agent_factor.shape[0] == markets.size
        np.testing.assert_allclose(
            subset.log_shares(delta[markets]), expected[markets], rtol=0, atol=1e-13
        )


def test_the_agent_shift_bounds_every_utility_from_the_characteristics():
    # m_i = Σ_k max(c_ik max_j X_jk, c_ik min_j X_jk) over real products, so A = e^{μ − m} ≤ 1.
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 4, 3))
    coefficients = rng.normal(size=(3, 5, 3))
    weights = np.full((3, 5), 0.2)
    for mask in (np.ones((3, 4), dtype=bool), np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]])):
        mask = mask.astype(bool)
        evaluator = ShareEvaluator.from_coefficients(
            x, coefficients, weights, mask, Nesting.unnested(mask.shape)
        )
        for t in range(3):
            real = x[t, mask[t]]
            for i in range(5):
                c = coefficients[t, i]
                shift = math.fsum(
                    max(c[k] * real[:, k].max(), c[k] * real[:, k].min()) for k in range(3)
                )
                assert math.isclose(
                    evaluator.agent_peak[t, 0, i], shift, rel_tol=1e-13, abs_tol=1e-14
                )
                factor = [math.exp(real[j] @ c - shift) for j in range(real.shape[0])]
                np.testing.assert_allclose(
                    evaluator.agent_factor[t, mask[t], i], factor, rtol=1e-12
                )
                assert max(factor) <= 1 + 1e-12


def test_each_nest_has_its_own_agent_shift_bounding_its_utilities():
    # Nested: m_hi = Σ_k max(c_ik max_{j∈h} X_jk, c_ik min_{j∈h} X_jk) over the real products
    # of nest h (0 for a nest without any), so (μ_ji − m_h(j)i)/(1 − ρ) ≤ 0 in every nest.
    # Fails if a nest's extremes are taken over another nest's products.
    rng = np.random.default_rng(12)
    x = rng.normal(size=(3, 5, 3))
    coefficients = rng.normal(size=(3, 4, 3))
    codes = np.array([[0, 0, 1, 1, 2], [2, 1, 0, 1, 0], [0, 0, 0, 1, 1]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 1], [1, 1, 1, 0, 0]], dtype=bool)
    nesting = Nesting.from_codes(codes, 3, np.array([0.0, 0.5, 0.8]))
    evaluator = ShareEvaluator.from_coefficients(
        x, coefficients, np.full((3, 4), 0.25), mask, nesting
    )
    for t in range(3):
        for h in range(3):
            members = x[t, mask[t] & (codes[t] == h)]
            for i in range(4):
                c = coefficients[t, i]
                shift = math.fsum(
                    max(c[k] * members[:, k].max(), c[k] * members[:, k].min())
                    for k in range(3)
                    if members.size
                )
                assert math.isclose(
                    evaluator.agent_peak[t, h, i], shift, rel_tol=1e-13, abs_tol=1e-14
                )
