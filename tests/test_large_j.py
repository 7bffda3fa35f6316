"""Large-J markets: the Woodbury solve of ∂δ/∂θ against the dense solve, and a fit on each path.

The oracle for the solve is numpy's dense LU on the explicitly formed ∂s/∂δ = diag(s) − P W Pᵀ
(built here from the probabilities, not by the package); the fit is compared with the same fit
forced onto the dense path and with pyblp 1.3.0.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from blpmodels.kernel import woodbury
from blpmodels.kernel.delta import solve_delta_newton
from blpmodels.kernel.shares import Nesting, ShareEvaluator
from blpmodels.kernel.woodbury import LowRankInverse, apply_inverse, woodbury_delta_jacobian


def _market_data(seed: int, n_markets: int, n_products: int, n_agents: int, scale: float):
    """Random utilities with padding; ``scale`` spreads δ so some shares are tiny."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 1.0, (n_markets, n_products, n_agents))
    weights = rng.uniform(0.5, 1.5, (n_markets, n_agents))
    weights /= weights.sum(axis=1, keepdims=True)
    mask = np.ones((n_markets, n_products), dtype=bool)
    mask[0, -3:] = False  # padded products in the first market
    mu = np.where(mask[:, :, None], mu, 0.0)
    delta = np.where(mask, rng.normal(-1.0, scale, (n_markets, n_products)), 0.0)
    evaluator = ShareEvaluator(mu, weights, mask, Nesting.unnested(mask.shape))
    return evaluator, delta, weights, mask


def _dense_oracle(evaluator, delta, weights, mask, by_theta):
    """−(∂s/∂δ)⁻¹ ∂s/∂θ and (∂log s/∂δ)⁻¹ per market by numpy's dense solve."""
    P = evaluator.probabilities(delta).unconditional
    jacobian, inverse = np.zeros_like(by_theta), np.zeros((*mask.shape, mask.shape[1]))
    for t in range(mask.shape[0]):
        real = mask[t]
        p = P[t][real]
        shares = p @ weights[t]
        by_delta = np.diag(shares) - (p * weights[t]) @ p.T
        jacobian[t][real] = -np.linalg.solve(by_delta, by_theta[t][real])
        block = np.eye(mask.shape[1])
        block[np.ix_(real, real)] = np.linalg.solve(by_delta, np.diag(shares))
        inverse[t] = block
    return jacobian, inverse


def _check_against_dense(
    oracle, mask, jacobian, inverse, rng, padding: int, jacobian_tol: float, inverse_tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """∂δ/∂θ, K and K applied to a random residual equal the dense ``oracle``'s, and K is the
    identity in the padding (the last ``padding`` rows of market 0); returns K and the residual.
    """
    expected_jacobian, expected_inverse = oracle
    relative = np.abs(jacobian - expected_jacobian).max() / np.abs(expected_jacobian).max()
    assert relative < jacobian_tol
    scale = np.abs(expected_inverse).max()
    assert np.abs(inverse.dense() - expected_inverse).max() < inverse_tol * scale
    residual = np.where(mask, rng.normal(size=mask.shape), 0.0)
    applied = apply_inverse(inverse, residual)
    assert np.allclose(applied, np.einsum("tjk,tk->tj", expected_inverse, residual), atol=1e-10)
    assert np.array_equal(applied[0, -padding:], residual[0, -padding:])
    return expected_inverse, residual


@pytest.fixture(params=["batched", "by_market"])
def woodbury_loop(request, monkeypatch):
    """Both implementations of the solve: all markets in batched products, or one at a time."""
    size = float("inf") if request.param == "batched" else 0.0
    monkeypatch.setattr(woodbury, "WOODBURY_LOOP_SIZE", size)
    return request.param


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("n_products", "n_agents", "scale"), [(60, 20, 1.0), (80, 30, 4.0)])
def test_woodbury_equals_dense_solve(seed, n_products, n_agents, scale, woodbury_loop):
    evaluator, delta, weights, mask = _market_data(seed, 3, n_products, n_agents, scale)
    probabilities = evaluator.probabilities(delta, factored=True)
    if scale > 1:  # the spread δ must really reach tiny shares
        assert probabilities.shares[mask].min() < 1e-4
    rng = np.random.default_rng(seed + 100)
    by_theta = np.where(mask[:, :, None], rng.normal(size=(*mask.shape, 3)), 0.0)
    out = woodbury_delta_jacobian(probabilities, weights, mask, by_theta)
    assert out is not None
    jacobian, inverse = out
    oracle = _dense_oracle(evaluator, delta, weights, mask, by_theta)
    expected_inverse, residual = _check_against_dense(
        oracle, mask, jacobian, inverse, rng, 3, 1e-10, 1e-10
    )
    # Newton steps apply K to the markets still moving, in place (markets 0 and 2 here).
    moving = np.array([0, 2])
    some = apply_inverse(inverse, residual[moving], moving)
    assert np.allclose(some, np.einsum("tjk,tk->tj", expected_inverse[moving], residual[moving]))


def test_woodbury_keeps_the_cholesky_factor_of_the_capacitance(woodbury_loop):
    # C = 1 − Uᵀ D⁻¹ U with U = [√w_i P_·i], formed here from the unfactored probabilities.
    evaluator, delta, weights, mask = _market_data(7, 3, 60, 20, 2.0)
    probabilities = evaluator.probabilities(delta, factored=True)
    _, inverse = woodbury_delta_jacobian(probabilities, weights, mask, np.zeros((*mask.shape, 1)))
    assert (inverse.middle is None) == (woodbury_loop == "by_market")
    P = evaluator.probabilities(delta).unconditional
    for t in range(mask.shape[0]):
        real = mask[t]
        U = P[t][real] * np.sqrt(weights[t])
        capacitance = np.eye(U.shape[1]) - U.T @ (U / (P[t][real] @ weights[t])[:, None])
        lower = inverse.cholesky[t]
        assert np.array_equal(lower, np.tril(lower))
        assert np.abs(lower @ lower.T - capacitance).max() < 1e-13
        middle = inverse.capacitance_inverse()[t]
        assert np.allclose(middle, np.linalg.inv(capacitance), rtol=1e-9, atol=1e-12)


def test_woodbury_falls_back_when_capacitance_is_ill_conditioned(woodbury_loop):
    # Outside shares near zero for every agent make 1 − UᵀD⁻¹U nearly singular.
    evaluator, _, weights, mask = _market_data(1, 2, 40, 10, 1.0)
    delta = np.where(mask, 30.0, 0.0)
    probabilities = evaluator.probabilities(delta, factored=True)
    by_theta = np.where(mask[:, :, None], 1.0, 0.0)
    assert woodbury_delta_jacobian(probabilities, weights, mask, by_theta) is None
    # The same market at ordinary shares passes with the same limit.
    ordinary = evaluator.probabilities(np.where(mask, -1.0, 0.0), factored=True)
    assert woodbury_delta_jacobian(ordinary, weights, mask, by_theta) is not None
    # And a tight limit sends even the ordinary market to the dense path.
    assert woodbury_delta_jacobian(ordinary, weights, mask, by_theta, max_condition=1.0) is None


def test_woodbury_refuses_what_it_cannot_factor():
    evaluator, delta, weights, mask = _market_data(2, 2, 30, 10, 1.0)
    by_theta = np.zeros((*mask.shape, 1))
    unfactored = evaluator.probabilities(delta, factored=False)
    if unfactored.factors is None:
        assert woodbury_delta_jacobian(unfactored, weights, mask, by_theta) is None
    factored = evaluator.probabilities(delta, factored=True)
    negative = weights.copy()
    negative[0, 0] = -negative[0, 0]
    assert woodbury_delta_jacobian(factored, negative, mask, by_theta) is None


def test_newton_solver_takes_the_low_rank_inverse(woodbury_loop):
    evaluator, delta, weights, mask = _market_data(3, 2, 50, 15, 1.0)
    target = np.log(np.where(mask, evaluator.shares(delta), 1.0))
    probabilities = evaluator.probabilities(delta + 0.01, factored=True)
    _, inverse = woodbury_delta_jacobian(probabilities, weights, mask, np.zeros((*mask.shape, 1)))
    assert isinstance(inverse, LowRankInverse)
    result, fallback = solve_delta_newton(evaluator, target, delta + 0.05, inverse)
    assert result.converged.all() and not fallback.any()
    assert np.abs(np.where(mask, result.delta - delta, 0.0)).max() < 1e-12


def _fit(monkeypatch, crossover: float):
    from blpmodels.simulation.scale import simulate_scale

    monkeypatch.setattr(woodbury, "WOODBURY_CROSSOVER", crossover)
    calls = {"woodbury": 0}
    original = woodbury.woodbury_delta_jacobian

    def counted(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["woodbury"] += out is not None
        return out

    monkeypatch.setattr(woodbury, "woodbury_delta_jacobian", counted)
    problem = simulate_scale(6, 40, 20, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = problem.model().fit(sigma=1.0, optimizer="trust-constr")
    return problem, results, calls["woodbury"]


def test_fit_on_woodbury_path_equals_dense_path_and_pyblp(monkeypatch):
    problem, dense, dense_calls = _fit(monkeypatch, 0.0)
    _, woodbury, woodbury_calls = _fit(monkeypatch, 0.8)  # I = 20 ≤ 0.8 J = 32: Woodbury
    assert dense_calls == 0 and woodbury_calls > 0
    assert np.allclose(woodbury.params, dense.params, rtol=1e-8, atol=1e-10)
    assert np.allclose(woodbury.bse, dense.bse, rtol=1e-6)
    assert woodbury.info.convergence["evaluations"] == dense.info.convergence["evaluations"]

    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    products = problem.products.copy()
    names = ["cost_shifter", "z0", "z1", "rivals_x", "rivals_cost_shifter"]
    for number, name in enumerate(names):
        products[f"demand_instruments{number}"] = products[name]
    reference = pyblp.Problem(
        (pyblp.Formulation("1 + x + prices"), pyblp.Formulation("0 + prices")),
        products,
        agent_data=problem.agents,
    ).solve(
        sigma=np.array([[1.0]]),
        method="1s",
        optimization=pyblp.Optimization("trust-constr", {"gtol": 1e-10, "xtol": 1e-12}),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
    )
    assert abs(float(woodbury.params.iloc[-1]) - float(reference.sigma[0, 0])) < 1e-5


def test_fresh_newton_inverse_is_low_rank_and_equals_dense():
    from blpmodels.kernel.delta import inverse_delta_jacobian

    evaluator, delta, weights, mask = _market_data(5, 3, 50, 15, 2.0)
    inverse = inverse_delta_jacobian(evaluator, delta)
    assert isinstance(inverse, LowRankInverse)  # I = 15 ≤ 0.8 J = 40
    _, expected = _dense_oracle(evaluator, delta, weights, mask, np.zeros((*mask.shape, 1)))
    assert np.abs(inverse.dense() - expected).max() < 1e-10 * np.abs(expected).max()


def _one_coefficient_market(seed: int, n_markets: int, n_products: int, n_agents: int):
    """μ_ji = σ x_j ν_i (one random coefficient): U's agent columns span few directions."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 3.0, (n_markets, n_products))
    nodes = rng.normal(size=(n_markets, n_agents))
    weights = np.full((n_markets, n_agents), 1.0 / n_agents)
    mask = np.ones((n_markets, n_products), dtype=bool)
    mask[0, -5:] = False
    mu = np.where(mask[:, :, None], 0.8 * x[:, :, None] * nodes[:, None, :], 0.0)
    delta = np.where(mask, rng.normal(-2.0, 1.0, (n_markets, n_products)), 0.0)
    evaluator = ShareEvaluator(mu, weights, mask, Nesting.unnested(mask.shape))
    return evaluator, delta, weights, mask


@pytest.mark.parametrize("seed", range(3))
def test_compressed_woodbury_equals_dense_solve(seed, monkeypatch):
    # One market at a time (the large-market path), with I = 80 ≥ 4 × 16 agents: U is
    # compressed to 16 or 32 columns; every product is checked against numpy's dense solve.
    monkeypatch.setattr(woodbury, "WOODBURY_LOOP_SIZE", 0.0)
    evaluator, delta, weights, mask = _one_coefficient_market(seed, 3, 100, 80)
    probabilities = evaluator.probabilities(delta, factored=True)
    rng = np.random.default_rng(seed + 50)
    by_theta = np.where(mask[:, :, None], rng.normal(size=(*mask.shape, 2)), 0.0)
    jacobian, inverse = woodbury_delta_jacobian(probabilities, weights, mask, by_theta)
    assert inverse.factor.shape[2] in woodbury.COMPRESSED_RANKS  # not the 80 agents
    oracle = _dense_oracle(evaluator, delta, weights, mask, by_theta)
    _check_against_dense(oracle, mask, jacobian, inverse, rng, 5, 1e-12, 1e-11)
    # The capacitance is diagonal: its Cholesky factor and inverse are kept as such.
    lower = inverse.cholesky
    assert np.array_equal(lower, lower * np.eye(lower.shape[1]))
    assert np.allclose(np.einsum("tii->ti", inverse.middle) * np.einsum("tii->ti", lower) ** 2, 1)


def test_compression_refused_where_the_agents_span_many_directions(monkeypatch):
    # Independent normal utilities: U has full rank 80, so no 32 columns hold it and the
    # full capacitance is formed (factor [J, I]); the solve still equals the dense one.
    monkeypatch.setattr(woodbury, "WOODBURY_LOOP_SIZE", 0.0)
    evaluator, delta, weights, mask = _market_data(4, 2, 100, 80, 1.0)
    probabilities = evaluator.probabilities(delta, factored=True)
    by_theta = np.where(mask[:, :, None], 1.0, 0.0)
    jacobian, inverse = woodbury_delta_jacobian(probabilities, weights, mask, by_theta)
    assert inverse.factor.shape[2] == 80 and inverse.middle is None
    expected, _ = _dense_oracle(evaluator, delta, weights, mask, by_theta)
    assert np.abs(jacobian - expected).max() < 1e-10 * np.abs(expected).max()


def test_newton_updates_low_rank_inverse_as_the_dense_broyden_update(monkeypatch):
    # The same stale inverse, once as Woodbury factors and once as the dense [T, J, J] matrix
    # they stand for (both updated in product form; tests/test_kernel.py checks the updates
    # against the written-out dense loop): the steps, the counts and δ must agree; and both
    # need fewer share evaluations than the fixed inverse (updates switched off).
    from blpmodels.kernel import delta as delta_module

    evaluator, delta, weights, mask = _market_data(6, 3, 60, 20, 1.0)
    target = np.log(np.where(mask, evaluator.shares(delta), 1.0))
    stale = evaluator.probabilities(delta + 0.3 * np.sin(np.arange(60)), factored=True)
    _, low_rank = woodbury_delta_jacobian(stale, weights, mask, np.zeros((*mask.shape, 0)))
    start = np.where(mask, delta + 0.05, 0.0)
    product, product_fallback = solve_delta_newton(evaluator, target, start, low_rank)
    dense, dense_fallback = solve_delta_newton(evaluator, target, start, low_rank.dense())
    assert product.converged.all() and dense.converged.all()
    assert not product_fallback.any() and not dense_fallback.any()
    np.testing.assert_array_equal(product.evaluations, dense.evaluations)
    assert np.abs(np.where(mask, product.delta - delta, 0.0)).max() < 1e-12
    assert np.abs(product.delta - dense.delta).max() < 1e-12
    monkeypatch.setattr(delta_module._BroydenProduct, "step", _without_updates)
    fixed, _ = solve_delta_newton(evaluator, target, start, low_rank)
    assert fixed.evaluations.sum() > product.evaluations.sum()


def _without_updates(self, residual, markets, update, last_step, *rest, **options):
    """K₀ r: what the Newton steps were before Broyden's updates of Woodbury factors."""
    return apply_inverse(self.inverse, residual, markets)


def test_first_solve_of_large_markets_takes_newton_steps_from_the_logit_inverse(monkeypatch):
    # No Jacobian from an earlier θ: unnested markets, large (Woodbury, by market) or small,
    # take Broyden steps from the plain-logit inverse at the observed shares, without a fresh
    # Jacobian. The answer must solve the share equations as the contraction does, in fewer
    # share evaluations (the contraction to 1e-2 and fresh factors, before, took more).
    from blpmodels.kernel import delta as delta_module

    evaluator, delta, _, mask = _one_coefficient_market(8, 4, 100, 80)
    shares = np.where(mask, evaluator.shares(delta), 1.0)
    target = np.log(shares)
    outside = 1.0 - np.where(mask, shares, 0.0).sum(axis=1, keepdims=True)
    logit = np.where(mask, target - np.log(outside), 0.0)
    fresh = []
    original = delta_module.inverse_delta_jacobian
    monkeypatch.setattr(
        delta_module,
        "inverse_delta_jacobian",
        lambda *args: fresh.append(1) or original(*args),
    )
    contraction = delta_module.solve_delta(evaluator, target, logit)
    for loop_size in (0.0, float("inf")):
        monkeypatch.setattr(woodbury, "WOODBURY_LOOP_SIZE", loop_size)
        result = delta_module.solve_delta_hybrid(evaluator, target, logit)
        assert not fresh and result.converged.all()
        residual = np.log(np.where(mask, evaluator.shares(result.delta), 1.0)) - target
        assert np.abs(residual).max() < 1e-14
        assert np.abs(np.where(mask, result.delta - delta, 0.0)).max() < 1e-12
        assert (result.evaluations < contraction.evaluations).all()
