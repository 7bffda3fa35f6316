"""The padded all-markets kernel against written-out oracles.

Oracles: a per-market, per-agent nested-logit formula written here with ``math.fsum`` and
log-sum-exp (independent of :func:`log_space_probabilities`), central finite differences of the
share function for every Jacobian, and recomputation with a product masked out for removal
shares. Problems are small, seeded and padded: markets of unequal sizes, agents padded with zero
weight, and three nest structures (no nests, one nest, several nests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from blpmodels.data.parameters import NonlinearParameters
from blpmodels.kernel import jacobians
from blpmodels.kernel.delta import (
    _BroydenProduct,
    inverse_delta_jacobian,
    solve_delta,
    solve_delta_hybrid,
    solve_delta_newton,
)
from blpmodels.kernel.jacobians import rho_jacobian, share_jacobian, theta_jacobian
from blpmodels.kernel.shares import Nesting, ShareEvaluator, log_space_probabilities, removal_shares

STRUCTURES = ("none", "one", "several")


@dataclass
class Problem:
    """A small padded problem and the inputs it was built from."""

    delta: np.ndarray  # [T, J]
    x2: np.ndarray  # [T, J, K2]
    nodes: np.ndarray  # [T, I, K]
    demographics: np.ndarray  # [T, I, D]
    weights: np.ndarray  # [T, I]
    mask: np.ndarray  # [T, J]
    agent_mask: np.ndarray  # [T, I]
    codes: np.ndarray  # [T, J]
    n_nests: int
    rho: np.ndarray  # [H]
    structure: str
    parameters: NonlinearParameters
    theta: np.ndarray

    def nesting(self, rho: np.ndarray | None = None) -> Nesting:
        if self.structure == "none":
            return Nesting.unnested(self.mask.shape)
        return Nesting.from_codes(self.codes, self.n_nests, self.rho if rho is None else rho)

    def coefficients(self, theta: np.ndarray | None = None) -> np.ndarray:
        theta = self.theta if theta is None else theta
        return self.parameters.coefficients(theta, self.nodes, self.demographics)[0]

    def mu(self, theta: np.ndarray | None = None) -> np.ndarray:
        return np.matmul(self.x2, np.swapaxes(self.coefficients(theta), 1, 2))


def make_problem(
    structure: str = "several",
    seed: int = 0,
    *,
    n_markets: int = 5,
    width: int = 6,
    n_agents: int = 7,
    rc_types: dict[str, str] | None = None,
    scale: float = 1.0,
) -> Problem:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, width + 1, size=n_markets)
    sizes[0] = width
    mask = np.arange(width)[None, :] < sizes[:, None]
    agent_sizes = rng.integers(3, n_agents + 1, size=n_markets)
    agent_sizes[-1] = n_agents
    agent_mask = np.arange(n_agents)[None, :] < agent_sizes[:, None]
    raw = rng.uniform(0.5, 1.5, size=(n_markets, n_agents)) * agent_mask
    weights = raw / raw.sum(axis=1, keepdims=True)
    x2 = np.where(mask[:, :, None], rng.normal(size=(n_markets, width, 2)) * scale, 0.0)
    x2[:, :, 0] = np.where(mask, 1.0, 0.0)  # a constant column, as with "1 + x"
    nodes = np.where(agent_mask[:, :, None], rng.normal(size=(n_markets, n_agents, 2)), 0.0)
    demographics = np.where(agent_mask[:, :, None], rng.normal(size=(n_markets, n_agents, 1)), 0.0)
    delta = np.where(mask, rng.normal(-1.0, 1.0, size=(n_markets, width)), 0.0)
    if structure == "several":
        n_nests = 3
        codes = np.where(mask, rng.integers(0, n_nests, size=(n_markets, width)), 0)
        codes[0, :3] = [0, 1, 2]  # every nest appears somewhere
        codes[1, : sizes[1]] = 0  # a market with one nest only (others empty there)
        rho = np.array([0.5, 0.2, 0.7])
    else:
        n_nests = 1
        codes = np.zeros((n_markets, width), dtype=np.intp)
        rho = np.array([0.6]) if structure == "one" else np.zeros(1)
    nests = tuple(range(n_nests)) if structure != "none" else ()
    parameters = NonlinearParameters.build(
        ["constant", "x"],
        ["income"],
        nests,
        sigma=[[0.8, 0.0], [0.3, 1.1]],
        pi=[[0.5], [-0.4]],
        rho=rho if structure != "none" else None,
        rc_types=rc_types,
    )
    theta = parameters.theta0
    return Problem(
        delta,
        x2,
        nodes,
        demographics,
        weights,
        mask,
        agent_mask,
        codes.astype(np.intp),
        n_nests,
        rho,
        structure,
        parameters,
        theta,
    )


def reference_probabilities(delta, mu, mask, codes, rho_of_nest, nested):
    """P_ji market by market, agent by agent, in log space with math.fsum (no kernel code)."""
    n_markets, _, n_agents = mu.shape
    out = np.zeros(mu.shape)
    for t in range(n_markets):
        products = np.flatnonzero(mask[t])
        for i in range(n_agents):
            utilities = {j: delta[t, j] + mu[t, j, i] for j in products}
            nests = sorted({int(codes[t, j]) for j in products}) if nested else [0]
            log_within = {}
            inclusive = {}
            for h in nests:
                members = [j for j in products if not nested or codes[t, j] == h]
                scale = 1.0 - (rho_of_nest[h] if nested else 0.0)
                scaled = [utilities[j] / scale for j in members]
                top = max(scaled)
                log_sum = top + math.log(math.fsum(math.exp(v - top) for v in scaled))
                inclusive[h] = scale * log_sum
                for j, v in zip(members, scaled, strict=True):
                    log_within[j] = v - log_sum
            top = max(0.0, *inclusive.values())
            log_denominator = top + math.log(
                math.fsum([math.exp(-top), *(math.exp(v - top) for v in inclusive.values())])
            )
            for j in products:
                h = int(codes[t, j]) if nested else 0
                out[t, j, i] = math.exp(log_within[j] + inclusive[h] - log_denominator)
    return out


def reference_shares(probabilities, weights):
    n_markets, width, _ = probabilities.shape
    return np.array(
        [
            [math.fsum(probabilities[t, j] * weights[t]) for j in range(width)]
            for t in range(n_markets)
        ]
    )


def shares_at(problem: Problem, delta=None, mu=None, rho=None) -> np.ndarray:
    """Shares by the log-space kernel function (finite differences use this)."""
    return log_space_probabilities(
        problem.delta if delta is None else delta,
        problem.mu() if mu is None else mu,
        problem.weights,
        problem.mask,
        problem.nesting(rho),
    ).shares


def evaluators(problem: Problem, theta=None):
    """Both constructors at the same θ."""
    nesting = problem.nesting()
    direct = ShareEvaluator(problem.mu(theta), problem.weights, problem.mask, nesting)
    factored = ShareEvaluator.from_coefficients(
        problem.x2, problem.coefficients(theta), problem.weights, problem.mask, nesting
    )
    return {"mu": direct, "coefficients": factored}


# ---------------------------------------------------------------- shares and probabilities


@pytest.mark.parametrize("structure", STRUCTURES)
def test_log_space_matches_written_out_formula(structure):
    problem = make_problem(structure)
    mu = problem.mu()
    probabilities = log_space_probabilities(
        problem.delta, mu, problem.weights, problem.mask, problem.nesting()
    )
    expected = reference_probabilities(
        problem.delta, mu, problem.mask, problem.codes, problem.rho, structure != "none"
    )
    np.testing.assert_allclose(probabilities.unconditional, expected, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(
        probabilities.shares, reference_shares(expected, problem.weights), rtol=1e-13, atol=0
    )
    assert (probabilities.shares[~problem.mask] == 0).all()
    assert (probabilities.shares.sum(axis=1) < 1).all()


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("constructor", ["mu", "coefficients"])
def test_evaluator_matches_log_space(structure, constructor):
    problem = make_problem(structure, seed=3)
    evaluator = evaluators(problem)[constructor]
    oracle = log_space_probabilities(
        problem.delta, problem.mu(), problem.weights, problem.mask, problem.nesting()
    )
    np.testing.assert_allclose(
        evaluator.shares(problem.delta), oracle.shares, rtol=1e-13, atol=1e-17
    )
    probabilities = evaluator.probabilities(problem.delta)
    np.testing.assert_allclose(
        probabilities.unconditional, oracle.unconditional, rtol=1e-13, atol=1e-17
    )
    np.testing.assert_allclose(probabilities.shares, oracle.shares, rtol=1e-13, atol=1e-17)
    # Also in factored form, where the unnested fast path forms them only when asked.
    factored = evaluator.probabilities(problem.delta, factored=True)
    agents = np.broadcast_to(problem.agent_mask[:, None, :], oracle.inclusive.shape)
    for computed in (probabilities, factored):
        np.testing.assert_allclose(
            computed.log_denominator[problem.agent_mask],
            oracle.log_denominator[problem.agent_mask],
            rtol=1e-13,
            atol=1e-14,
        )
        np.testing.assert_allclose(
            computed.inclusive[agents], oracle.inclusive[agents], rtol=1e-13, atol=1e-14
        )
    if structure != "none":
        np.testing.assert_allclose(
            probabilities.conditional[problem.mask],
            oracle.conditional[problem.mask],
            rtol=1e-13,
            atol=1e-17,
        )
    # Padded products and agents carry nothing.
    assert (probabilities.unconditional[~problem.mask] == 0).all()
    np.testing.assert_allclose(evaluator.mu, problem.mu(), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("constructor", ["mu", "coefficients"])
def test_factored_probabilities_equal_materialized(structure, constructor):
    problem = make_problem(structure, seed=4)
    evaluator = evaluators(problem)[constructor]
    factored = evaluator.probabilities(problem.delta, factored=True)
    materialized = evaluator.probabilities(problem.delta)
    np.testing.assert_allclose(
        factored.unconditional, materialized.unconditional, rtol=1e-14, atol=1e-17
    )
    np.testing.assert_allclose(factored.shares, materialized.shares, rtol=1e-14, atol=1e-17)
    np.testing.assert_allclose(factored.nest, materialized.nest, rtol=1e-14, atol=1e-17)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_subset_evaluator(structure):
    problem = make_problem(structure, seed=5)
    for evaluator in evaluators(problem).values():
        keep = np.array([3, 1])
        subset = evaluator.subset(keep)
        np.testing.assert_allclose(
            subset.shares(problem.delta[keep]),
            evaluator.shares(problem.delta)[keep],
            rtol=1e-15,
            atol=0,
        )


def extreme_problem(structure: str):
    """μ ~ ±800 and δ ~ −700: the scaled form under/overflows, log space must take over."""
    problem = make_problem(structure, seed=7)
    rng = np.random.default_rng(8)
    signs = rng.choice([-1.0, 0.0, 1.0], size=problem.mu().shape)
    mu = np.where(problem.mask[:, :, None], 800.0 * signs + rng.normal(size=signs.shape), 0.0)
    # A market where every agent dislikes every product by ~800: shares ~ e^-700..e^-1500.
    mu[2] = np.where(problem.mask[2][:, None], -rng.uniform(0, 5, size=mu[2].shape), 0.0)
    delta = np.where(problem.mask, -700.0 + rng.normal(size=problem.delta.shape), 0.0)
    return problem, delta, mu


@pytest.mark.parametrize("structure", STRUCTURES)
def test_extreme_utilities_fall_back_to_log_space(structure):
    problem, delta, mu = extreme_problem(structure)
    expected = reference_probabilities(
        delta, mu, problem.mask, problem.codes, problem.rho, structure != "none"
    )
    expected_shares = reference_shares(expected, problem.weights)
    evaluator = ShareEvaluator(mu, problem.weights, problem.mask, problem.nesting())
    shares = evaluator.shares(delta)
    assert np.isfinite(shares).all()
    assert (shares.sum(axis=1) < 1).all()
    assert (shares[problem.mask] >= 0).all()
    # Market 2 has only tiny (but representable) shares.
    assert (shares[2][problem.mask[2]] > 0).all()
    assert (shares[2][problem.mask[2]] < 1e-290).all()
    np.testing.assert_allclose(shares, expected_shares, rtol=1e-11, atol=1e-320)
    probabilities = evaluator.probabilities(delta)
    assert np.isfinite(probabilities.unconditional).all()
    np.testing.assert_allclose(probabilities.unconditional, expected, rtol=1e-11, atol=1e-320)
    log_space = log_space_probabilities(delta, mu, problem.weights, problem.mask, problem.nesting())
    np.testing.assert_allclose(log_space.shares, expected_shares, rtol=1e-11, atol=1e-320)


def test_extreme_utilities_from_coefficients():
    """Huge coefficients through the factored constructor, checked against the reference."""
    problem = make_problem("none", seed=9)
    coefficients = problem.coefficients() * 400.0
    mu = np.matmul(problem.x2, np.swapaxes(coefficients, 1, 2))
    delta = np.where(problem.mask, -700.0, 0.0)
    evaluator = ShareEvaluator.from_coefficients(
        problem.x2, coefficients, problem.weights, problem.mask, problem.nesting()
    )
    expected = reference_shares(
        reference_probabilities(delta, mu, problem.mask, problem.codes, problem.rho, False),
        problem.weights,
    )
    shares = evaluator.shares(delta)
    assert np.isfinite(shares).all() and (shares.sum(axis=1) < 1).all()
    np.testing.assert_allclose(shares, expected, rtol=1e-11, atol=1e-320)


# ---------------------------------------------------------------- δ solvers


def observed(problem: Problem):
    shares = shares_at(problem)
    return np.where(problem.mask, np.log(np.where(problem.mask, shares, 1.0)), 0.0)


def logit_start(problem: Problem, log_shares: np.ndarray) -> np.ndarray:
    shares = np.where(problem.mask, np.exp(log_shares), 0.0)
    outside = 1.0 - shares.sum(axis=1, keepdims=True)
    return np.where(problem.mask, log_shares - np.log(outside), 0.0)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("constructor", ["mu", "coefficients"])
def test_solve_delta_recovers_delta(structure, constructor):
    problem = make_problem(structure, seed=11)
    log_shares = observed(problem)
    evaluator = evaluators(problem)[constructor]
    start = logit_start(problem, log_shares)
    start[~problem.mask] = 123.0  # padding must be ignored and come back as zero
    result = solve_delta(evaluator, log_shares, start)
    assert result.converged.all()
    np.testing.assert_allclose(result.delta, problem.delta, rtol=0, atol=1e-12)
    assert (result.delta[~problem.mask] == 0).all()
    assert (result.evaluations > 0).all() and (result.iterations > 0).all()


@pytest.mark.parametrize("structure", STRUCTURES)
def test_solve_delta_newton_recovers_delta(structure):
    problem = make_problem(structure, seed=12)
    log_shares = observed(problem)
    evaluator = evaluators(problem)["coefficients"]
    rng = np.random.default_rng(0)
    noise = rng.normal(size=problem.delta.shape)
    start = np.where(problem.mask, problem.delta + 1e-3 * noise, 0.0)
    # With ∂s/∂δ at the solution and a nearby start, the steps shrink fast in every market.
    inverse = inverse_delta_jacobian(evaluator, problem.delta)
    assert inverse is not None
    result, fallback = solve_delta_newton(evaluator, log_shares, start, inverse)
    assert result.converged.all() and not fallback.any()
    np.testing.assert_allclose(result.delta, problem.delta, rtol=0, atol=1e-12)
    assert (result.delta[~problem.mask] == 0).all()
    # With a stale Jacobian (from the starting point), markets either converge or are handed
    # back for the contraction: never a wrong answer flagged as converged.
    stale = inverse_delta_jacobian(evaluator, start)
    result, fallback = solve_delta_newton(evaluator, log_shares, start, stale)
    np.testing.assert_array_equal(fallback, ~result.converged)
    assert result.converged.any()
    np.testing.assert_allclose(
        result.delta[result.converged], problem.delta[result.converged], rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("structure", ["none", "several"])
def test_newton_with_a_jacobian_from_another_theta_converges_in_few_steps(structure):
    """K from θ·1.05 at its own solution, as a fit's next evaluation has it, and a start 0.05
    off: Broyden's updates of K converge in every market in at most 10 share evaluations here
    (with K kept fixed, the chord steps needed up to 12 in both). With ``slowdown`` 0.2 one
    nested market was handed back after its first step (its merit, the outside share
    included, fell by less than a factor 0.2), and the hybrid then spent 61 share evaluations
    on it; 0.5 lets Broyden's steps finish it in 10."""
    problem = make_problem(structure, seed=12, n_markets=20, width=8, n_agents=30)
    log_shares = observed(problem)
    evaluator = evaluators(problem)["coefficients"]
    nearby = evaluators(problem, problem.theta * 1.05)["coefficients"]
    stale = inverse_delta_jacobian(nearby, problem.delta)
    assert isinstance(stale, np.ndarray)
    kept = stale.copy()
    noise = np.random.default_rng(1).normal(size=problem.delta.shape)
    start = np.where(problem.mask, problem.delta + 0.05 * noise, 0.0)
    result, fallback = solve_delta_newton(evaluator, log_shares, start, stale)
    np.testing.assert_array_equal(stale, kept)  # the caller's K is not updated in place
    assert result.converged.all() and not fallback.any()
    assert result.iterations.max() <= 10
    np.testing.assert_allclose(
        result.delta[result.converged], problem.delta[result.converged], rtol=0, atol=1e-12
    )


def test_broyden_update_satisfies_the_secant_equation():
    """After an update K maps the residual change y to the step s (K y = s) and is unchanged
    on vectors u with sᵀK u = 0; a market whose denominator sᵀK y is 0 keeps its K. The
    updated K is rebuilt densely from the rank-one factors the product form keeps."""
    rng = np.random.default_rng(5)
    inverse = np.eye(4)[None] + 0.3 * rng.normal(size=(3, 4, 4))
    before = inverse.copy()
    old_residual = rng.normal(size=(3, 4))
    step = -np.einsum("tjk,tk->tj", inverse, old_residual)  # the step K took from r_old
    change = rng.normal(size=(3, 4))
    # Market 2: y orthogonal to the row sᵀK, so the denominator sᵀK y is 0.
    row = step[2] @ inverse[2]
    change[2] -= (row @ change[2]) / (row @ row) * row
    product = _BroydenProduct(inverse, step.shape)
    markets = np.arange(3)
    new_residual = old_residual + change
    mapped = product.step(new_residual, markets, np.ones(3, bool), step)
    np.testing.assert_array_equal(inverse, before)  # K₀ itself is not changed
    assert len(product.factors) == 1
    factor, direction = product.factors[0]
    updated = inverse + factor[:, :, None] * np.einsum("tj,tjk->tk", direction, inverse)[:, None]
    for market in (0, 1):
        np.testing.assert_allclose(updated[market] @ change[market], step[market], atol=1e-12)
        orthogonal = rng.normal(size=4)
        row = step[market] @ before[market]
        orthogonal -= (row @ orthogonal) / (row @ row) * row
        np.testing.assert_allclose(
            updated[market] @ orthogonal, before[market] @ orthogonal, atol=1e-12
        )
    np.testing.assert_array_equal(updated[2], before[2])
    # The returned step is the updated K applied to the new residual.
    expected = np.einsum("tjk,tk->tj", updated, new_residual)
    np.testing.assert_allclose(mapped, expected, rtol=0, atol=1e-12)


def broyden_oracle(evaluator, log_shares, start, inverse, tol=1e-14, max_iterations=30):
    """Newton steps with Broyden's ("good") update of a dense K, market by market.

    The textbook loop: r = log s(δ) − log s_obs; stop when max_j (1 − ρ_j)|r_j| < tol;
    otherwise update K ← K + (s − K y) sᵀK / (sᵀK y) with the last step s and residual change
    y, and step δ ← δ − K r. Returns δ and the share evaluations per market.
    """
    n_markets = log_shares.shape[0]
    delta = np.where(evaluator.product_mask, start, 0.0)
    evaluations = np.zeros(n_markets, dtype=int)
    for market in range(n_markets):
        one = evaluator.subset(np.array([market]))
        real = one.product_mask[0]
        scale = np.broadcast_to(one.scale, one.product_mask.shape)[0][real]
        matrix = inverse[market][np.ix_(real, real)].copy()
        point = delta[market].copy()
        previous = None
        for _ in range(max_iterations + 1):
            residual = (one.log_shares(point[None])[0] - log_shares[market])[real]
            evaluations[market] += 1
            if np.abs(scale * residual).max() < tol:
                break
            if previous is not None:
                step, change = point[real] - previous[0], residual - previous[1]
                mapped = matrix @ change
                matrix += np.outer(step - mapped, step @ matrix) / (step @ mapped)
            previous = (point[real].copy(), residual)
            point[real] -= matrix @ residual
        delta[market] = point
    return delta, evaluations


@pytest.mark.parametrize("structure", ["none", "several"])
def test_newton_steps_are_broyden_updated_as_the_textbook_loop(structure):
    """Same set-up as above: the batched solver's product-form updates must give the share
    evaluations and δ of the written-out dense update, market by market."""
    problem = make_problem(structure, seed=12, n_markets=20, width=8, n_agents=30)
    log_shares = observed(problem)
    evaluator = evaluators(problem)["coefficients"]
    nearby = evaluators(problem, problem.theta * 1.05)["coefficients"]
    stale = inverse_delta_jacobian(nearby, problem.delta)
    noise = np.random.default_rng(1).normal(size=problem.delta.shape)
    start = np.where(problem.mask, problem.delta + 0.05 * noise, 0.0)
    result, fallback = solve_delta_newton(evaluator, log_shares, start, stale)
    expected, evaluations = broyden_oracle(evaluator, log_shares, start, stale)
    solved = result.converged
    assert solved.all() and not fallback.any()
    np.testing.assert_array_equal(result.evaluations[solved], evaluations[solved])
    np.testing.assert_allclose(result.delta[solved], expected[solved], rtol=0, atol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("stale", [False, True])
def test_solve_delta_hybrid_recovers_delta(structure, stale):
    problem = make_problem(structure, seed=13)
    log_shares = observed(problem)
    evaluator = evaluators(problem)["coefficients"]
    start = logit_start(problem, log_shares)
    inverse = None
    if stale:
        # Inverse Jacobian at another θ: Newton steps with it must still get there.
        other = evaluators(problem, problem.theta * 1.3)["coefficients"]
        inverse = inverse_delta_jacobian(other, start)
    result = solve_delta_hybrid(evaluator, log_shares, start, inverse)
    assert result.converged.all()
    np.testing.assert_allclose(result.delta, problem.delta, rtol=0, atol=1e-12)
    assert (result.delta[~problem.mask] == 0).all()


def test_solvers_agree():
    problem = make_problem("several", seed=14)
    log_shares = observed(problem)
    evaluator = evaluators(problem)["coefficients"]
    start = logit_start(problem, log_shares)
    squarem = solve_delta(evaluator, log_shares, start).delta
    hybrid = solve_delta_hybrid(
        evaluator, log_shares, start, inverse_delta_jacobian(evaluator, start)
    ).delta
    np.testing.assert_allclose(squarem, hybrid, rtol=0, atol=1e-13)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_solvers_flag_nonconvergence(structure):
    problem = make_problem(structure, seed=15)
    log_shares = observed(problem)
    evaluator = evaluators(problem)["coefficients"]
    start = np.zeros_like(problem.delta)
    result = solve_delta(evaluator, log_shares, start, max_evaluations=2)
    assert not result.converged.any()
    assert (result.evaluations <= 3).all()
    assert (result.delta[~problem.mask] == 0).all()
    hybrid = solve_delta_hybrid(evaluator, log_shares, start, None, max_evaluations=2)
    assert not hybrid.converged.any()
    newton, fallback = solve_delta_newton(
        evaluator,
        log_shares,
        start,
        inverse_delta_jacobian(evaluator, start),
        max_iterations=1,
    )
    assert not newton.converged.any() and fallback.all()


def test_impossible_shares_do_not_converge():
    """Shares summing to more than one have no solution: the solver must say so."""
    problem = make_problem("none", seed=16)
    log_shares = np.where(problem.mask, np.log(0.9), 0.0)
    evaluator = evaluators(problem)["coefficients"]
    result = solve_delta(evaluator, log_shares, np.zeros_like(problem.delta), max_evaluations=200)
    assert not result.converged[problem.mask.sum(axis=1) >= 2].any()


# ---------------------------------------------------------------- Jacobians


def assert_matches_finite_differences(
    analytic: np.ndarray, numeric: np.ndarray, what: str = "", *, rtol: float = 1e-6
) -> None:
    """Entry by entry: |analytic − numeric| ≤ rtol·|numeric| + atol.

    Each derivative is judged against its own size, so an error in a small entry is not hidden
    by a large one elsewhere. The absolute floor atol = 1e-9 is the accuracy of the central
    differences themselves: shares are O(1) and exact to ~1e-16, so a step h = 1e-5 or 1e-6
    leaves round-off ~1e-16/h ≤ 1e-10 and truncation ~h² times the third derivative, ≤ 1e-10.
    Measured on these problems: worst absolute error 3e-10, and no entry uses more than 2% of
    its allowance, so a 6% error in any entry larger than ~2e-8 fails.
    """
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=1e-9, err_msg=what)


def test_derivative_check_is_per_entry():
    """A 6% error in an entry 1/1,000 the size of the largest must fail."""
    numeric = np.array([[0.2, -0.0002], [-0.0002, 0.15]])
    analytic = numeric.copy()
    analytic[0, 1] *= 1.06
    with pytest.raises(AssertionError):
        assert_matches_finite_differences(analytic, numeric)
    assert_matches_finite_differences(numeric * (1 + 1e-8), numeric)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("factored", [False, True])
def test_share_jacobian_by_delta(structure, factored):
    checked_share_jacobian(make_problem(structure, seed=21), factored)


def checked_share_jacobian(problem: Problem, factored: bool) -> None:
    """∂s/∂δ against central differences, zero in the rows and columns of padding."""
    evaluator = evaluators(problem)["coefficients"]
    probabilities = evaluator.probabilities(problem.delta, factored=factored)
    jacobian = share_jacobian(probabilities, problem.weights, problem.nesting(), problem.mask)
    step = 1e-5
    numeric = np.zeros_like(jacobian)
    for k in range(problem.mask.shape[1]):
        up, down = problem.delta.copy(), problem.delta.copy()
        up[:, k] += step
        down[:, k] -= step
        numeric[:, :, k] = (shares_at(problem, delta=up) - shares_at(problem, delta=down)) / (
            2 * step
        )
    assert_matches_finite_differences(jacobian, numeric)
    # Padding is zero in rows and columns.
    assert (jacobian[~problem.mask] == 0).all()
    assert (np.swapaxes(jacobian, 1, 2)[~problem.mask] == 0).all()


@pytest.mark.parametrize("workspace", [False, True])
def test_factored_share_jacobian_by_blocks(monkeypatch, workspace):
    """The unnested ∂s/∂δ from factored probabilities, a few markets at a time, against the
    sum Σ_i w_i (1{j = k} P_ji − P_ji P_ki) term by term, with blocks of two markets (the
    last one short) and with a reused workspace."""
    problem = make_problem("none", seed=24)
    weights = problem.weights
    evaluator = ShareEvaluator(problem.mu(), weights, problem.mask, problem.nesting())
    probabilities = evaluator.probabilities(problem.delta, factored=True)
    assert probabilities.factors is not None
    n_markets, width, n_agents = problem.mu().shape
    monkeypatch.setattr(jacobians, "NESTED_BLOCK_ENTRIES", 2 * width * n_agents)
    scratch = np.full(problem.mu().shape, np.nan) if workspace else None
    jacobian = share_jacobian(
        probabilities, weights, problem.nesting(), problem.mask, workspace=scratch
    )
    P = probabilities.unconditional
    expected = np.zeros((n_markets, width, width))
    for t in range(n_markets):
        for i in range(n_agents):
            column = P[t, :, i]
            expected[t] += weights[t, i] * (np.diag(column) - np.outer(column, column))
    np.testing.assert_allclose(jacobian, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_share_jacobian_with_utility_derivative(structure):
    """∂s_j/∂x_k with ∂V_ki/∂x_k = D_ki (e.g. prices with a random price coefficient)."""
    problem = make_problem(structure, seed=22)
    rng = np.random.default_rng(1)
    derivative = np.where(
        problem.mask[:, :, None], rng.normal(-2.0, 1.0, size=problem.mu().shape), 0.0
    )
    evaluator = evaluators(problem)["mu"]
    probabilities = evaluator.probabilities(problem.delta)
    jacobian = share_jacobian(
        probabilities, problem.weights, problem.nesting(), problem.mask, derivative
    )
    mu = problem.mu()
    step = 1e-5
    numeric = np.zeros_like(jacobian)
    for k in range(problem.mask.shape[1]):
        up, down = mu.copy(), mu.copy()
        up[:, k, :] += step * derivative[:, k, :]
        down[:, k, :] -= step * derivative[:, k, :]
        numeric[:, :, k] = (shares_at(problem, mu=up) - shares_at(problem, mu=down)) / (2 * step)
    assert_matches_finite_differences(jacobian, numeric)
    # D = 1 everywhere gives ∂s/∂δ.
    ones = share_jacobian(
        probabilities, problem.weights, problem.nesting(), problem.mask, np.ones_like(mu)
    )
    plain = share_jacobian(probabilities, problem.weights, problem.nesting(), problem.mask)
    np.testing.assert_allclose(ones, plain, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("kind", ["normal", "lognormal", "negative_lognormal"])
@pytest.mark.parametrize("factored", [False, True])
def test_theta_jacobian(structure, kind, factored):
    problem = make_problem(structure, seed=23, rc_types={"x": kind})
    checked_theta_jacobian(problem, factored)


def checked_theta_jacobian(problem: Problem, factored: bool, buffers=None) -> None:
    """∂s/∂θ off the starting values, each parameter's column checked against central
    differences (``buffers`` as :func:`theta_jacobian` takes them)."""
    parameters = problem.parameters
    theta = parameters.theta0.copy()
    theta[parameters.random_positions()] *= 0.7  # off the starting values
    evaluator = evaluators(problem, theta)["coefficients"]
    probabilities = evaluator.probabilities(problem.delta, factored=factored)
    coefficients = problem.coefficients(theta)
    factors, positions = parameters.agent_factors(coefficients, problem.nodes, problem.demographics)
    pieces = theta_jacobian(
        probabilities,
        problem.weights,
        problem.nesting(),
        problem.mask,
        problem.x2,
        factors,
        buffers,
    )
    analytic = np.zeros((*problem.mask.shape, parameters.size))
    for piece, columns in zip(pieces, positions, strict=True):
        analytic[:, :, columns] = piece
    step = 1e-6
    for position in parameters.random_positions():
        up, down = theta.copy(), theta.copy()
        up[position] += step
        down[position] -= step
        numeric = shares_at(problem, mu=problem.mu(up)) - shares_at(problem, mu=problem.mu(down))
        numeric /= 2 * step
        assert_matches_finite_differences(
            analytic[:, :, position], numeric, parameters.names[position]
        )
    assert (analytic[~problem.mask] == 0).all()


def checked_rho_jacobian(problem) -> np.ndarray:
    """∂s/∂ρ at the problem's ρ, each nest's column checked against central differences."""
    mu = problem.mu()
    nesting = problem.nesting()
    probabilities = ShareEvaluator(mu, problem.weights, problem.mask, nesting).probabilities(
        problem.delta
    )
    jacobian = rho_jacobian(
        probabilities, problem.delta, mu, problem.weights, nesting, problem.mask
    )
    assert jacobian.shape == (*problem.mask.shape, problem.n_nests)
    # The factored form (X2 and agent coefficients, μ never formed) gives the same derivative.
    factored = rho_jacobian(
        probabilities,
        problem.delta,
        None,
        problem.weights,
        nesting,
        problem.mask,
        characteristics=problem.x2,
        coefficients=problem.coefficients(),
    )
    np.testing.assert_allclose(factored, jacobian, rtol=1e-10, atol=1e-13)
    step = 1e-6
    for h in range(problem.n_nests):
        up, down = problem.rho.copy(), problem.rho.copy()
        up[h] += step
        down[h] -= step
        numeric = (shares_at(problem, mu=mu, rho=up) - shares_at(problem, mu=mu, rho=down)) / (
            2 * step
        )
        assert_matches_finite_differences(jacobian[:, :, h], numeric, f"nest {h}")
    return jacobian


@pytest.mark.parametrize("structure", ["one", "several"])
def test_rho_jacobian(structure):
    problem = make_problem(structure, seed=24)
    jacobian = checked_rho_jacobian(problem)
    assert (jacobian[~problem.mask] == 0).all()


@pytest.mark.parametrize("structure", ["one", "several"])
def test_nested_jacobians_by_groups_of_markets(structure, monkeypatch):
    """The nested ∂s/∂θ, ∂s/∂ρ and ∂s/∂δ are formed a few markets at a time: in groups of two
    here (the last one shorter), with work arrays handed over full of NaN, against central
    differences."""
    problem = make_problem(structure, seed=26)
    per_market = problem.mask.shape[1] * problem.weights.shape[1]
    monkeypatch.setattr(jacobians, "NESTED_BLOCK_ENTRIES", 2 * per_market)
    assert [group.stop for group in jacobians._market_blocks(5, per_market)] == [2, 4, 5]
    asked = set()

    def stale(name, shape):
        asked.add(name)
        return np.full(shape, np.nan)

    checked_theta_jacobian(problem, factored=False, buffers=stale)
    assert asked == {"nested_sums", "nested_mean", "nested_right"}
    jacobian = checked_rho_jacobian(problem)
    assert (jacobian[~problem.mask] == 0).all()
    checked_share_jacobian(problem, factored=False)


def test_rho_jacobian_at_zero_rho():
    """At ρ = 0 with nests, the derivative is still the within-nest one (not zero)."""
    problem = make_problem("several", seed=25)
    problem.rho = np.zeros(problem.n_nests)
    jacobian = checked_rho_jacobian(problem)
    for h in range(problem.n_nests):
        assert np.abs(jacobian[:, :, h]).max() > 1e-3


# ---------------------------------------------------------------- removal shares


@pytest.mark.parametrize("structure", STRUCTURES)
def test_removal_shares(structure):
    problem = make_problem(structure, seed=31)
    mu = problem.mu()
    nesting = problem.nesting()
    removed = removal_shares(problem.delta, mu, problem.weights, problem.mask, nesting)
    n_markets, width = problem.mask.shape
    assert removed.shape == (n_markets, width, width + 1)
    for t in range(n_markets):
        for k in np.flatnonzero(problem.mask[t]):
            row = removed[t, k]
            assert math.fsum(row) == pytest.approx(1.0, abs=1e-14)
            assert row[k] == 0
            mask = problem.mask[t : t + 1].copy()
            mask[0, k] = False
            sub_nesting = nesting.subset(np.array([t]))
            expected = reference_shares(
                reference_probabilities(
                    problem.delta[t : t + 1],
                    mu[t : t + 1],
                    mask,
                    problem.codes[t : t + 1],
                    problem.rho,
                    structure != "none",
                ),
                problem.weights[t : t + 1],
            )[0]
            np.testing.assert_allclose(row[:width], expected, rtol=1e-13, atol=1e-17)
            masked = log_space_probabilities(
                problem.delta[t : t + 1],
                mu[t : t + 1],
                problem.weights[t : t + 1],
                mask,
                sub_nesting,
            ).shares[0]
            np.testing.assert_allclose(row[:width], masked, rtol=1e-13, atol=1e-17)
            # Removing a product raises every other share (substitutes).
            base = shares_at(problem, mu=mu)[t]
            others = problem.mask[t].copy()
            others[k] = False
            assert (row[:width][others] > base[others]).all()
