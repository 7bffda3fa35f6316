"""Probabilities at the δ of the last share evaluation reuse its sums and ratios.

A δ solve ends at the δ of its last share evaluation, so the factored probabilities that follow
(∂s/∂δ, ∂s/∂θ) take the per-agent sums and ratios of that evaluation instead of a second pass
over the ``[T, J, I]`` agent factor (issue 20). The solvers evaluate subsets of the markets
once fewer than half are left, so the kept values are per market. The oracle is
``test_kernel``'s per-agent reference probabilities (``math.fsum`` in log space, no kernel
code).
"""

from __future__ import annotations

import numpy as np
from test_kernel import make_problem, reference_probabilities

from blpmodels.kernel.shares import Nesting, ShareEvaluator


def _problem():
    problem = make_problem("none", seed=5, n_agents=9)
    theta = problem.parameters.theta0 * 0.7
    evaluator = ShareEvaluator.from_coefficients(
        problem.x2,
        problem.coefficients(theta),
        problem.weights,
        problem.mask,
        Nesting.unnested(problem.mask.shape),
    )
    return problem, problem.mu(theta), evaluator


def _check(problem, mu, probabilities, delta):
    """Shares, x̄ = Σ_j P_j X_j and P = A·e·r from the factors against the reference."""
    reference = reference_probabilities(delta, mu, problem.mask, problem.codes, problem.rho, False)
    shares = np.einsum("tji,ti->tj", reference, problem.weights)
    np.testing.assert_allclose(probabilities.shares, shares, rtol=1e-13, atol=1e-300)
    _, means = probabilities.characteristic_means
    expected = np.einsum("tji,tjk->tki", reference, problem.x2)
    np.testing.assert_allclose(means, expected, rtol=1e-12, atol=1e-15)
    factor, exp_delta, ratio = probabilities.factors
    rebuilt = factor * exp_delta[:, :, None] * ratio[:, None, :]
    np.testing.assert_allclose(rebuilt, reference, rtol=1e-12, atol=1e-300)
    inside = reference.sum(axis=1)
    np.testing.assert_allclose(probabilities.nest[:, 0], inside, rtol=1e-12, atol=1e-300)


def test_probabilities_after_subset_share_evaluations():
    """Markets last evaluated by a subset (as the Newton solver does) are reused too."""
    problem, mu, evaluator = _problem()
    rng = np.random.default_rng(1)
    first = problem.delta
    evaluator.shares(first)
    moved = np.flatnonzero(np.arange(first.shape[0]) % 2 == 1)
    second = first.copy()
    second[moved] += np.where(problem.mask[moved], rng.normal(0.0, 0.3, second[moved].shape), 0.0)
    evaluator.subset(moved).shares(second[moved])
    assert evaluator._remembered(second) is not None  # the saved pass is taken
    probabilities = evaluator.probabilities(second, factored=True, characteristics=problem.x2)
    _check(problem, mu, probabilities, second)


def test_probabilities_elsewhere_are_not_reused():
    """At a δ other than the last evaluated one (in any market) nothing is reused."""
    problem, mu, evaluator = _problem()
    evaluator.shares(problem.delta)
    other = problem.delta.copy()
    other[-1, 0] += 0.25
    assert evaluator._remembered(other) is None
    probabilities = evaluator.probabilities(other, factored=True, characteristics=problem.x2)
    _check(problem, mu, probabilities, other)


def test_kept_probabilities_survive_later_share_evaluations():
    """Probabilities taken from the kept values do not change when the evaluator evaluates
    shares again (an equilibrium solve may hold them meanwhile)."""
    problem, mu, evaluator = _problem()
    evaluator.shares(problem.delta)
    probabilities = evaluator.probabilities(
        problem.delta, factored=True, characteristics=problem.x2
    )
    evaluator.subset(np.arange(2)).shares(problem.delta[:2] + 0.5)
    evaluator.shares(problem.delta - 0.5)
    _check(problem, mu, probabilities, problem.delta)
