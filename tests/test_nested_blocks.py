"""Nested shares and probabilities a few markets at a time, and ∂s/∂θ with ∂s/∂ρ in one pass.

The nested share evaluator works in groups of markets (``nested_blocks``) with work arrays
it reuses; these tests force groups of two markets (a shorter last one), hand out work arrays
filled with NaN (a value read before it is written shows up), and check against the
per-agent reference probabilities of ``test_kernel`` (``math.fsum``, no kernel code) and
central differences of the log-space shares.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_kernel import (
    assert_matches_finite_differences,
    make_problem,
    reference_probabilities,
    reference_shares,
    shares_at,
)

from blpmodels.kernel import nested_blocks
from blpmodels.kernel.jacobians import nested_theta_rho_jacobian
from blpmodels.kernel.shares import ShareEvaluator


def nan_buffers():
    """``buffers(name, shape)`` handing out NaN-filled arrays, the same one per name and shape."""
    kept: dict = {}

    def get(name, shape):
        if (name, shape) not in kept:
            kept[name, shape] = np.full(shape, np.nan)
        return kept[name, shape]

    return get


@pytest.fixture
def small_groups(monkeypatch):
    """Groups of two markets: five markets make groups of 2, 2 and 1."""
    problem = make_problem("several", seed=41, n_markets=5)
    entries = 2 * problem.mask.shape[1] * problem.weights.shape[1]
    monkeypatch.setattr(nested_blocks, "SHARE_BLOCK_ENTRIES", entries)
    assert len(nested_blocks.block_slices(5, entries // 2)) == 3

    def no_fallback(*args, **kwargs):
        raise AssertionError("log-space fallback: the grouped values were not usable")

    # A group written to the wrong rows can give NaN or zero shares, which the fallback to
    # log space would silently repair.
    monkeypatch.setattr(ShareEvaluator, "_log_space", no_fallback)
    return problem


@pytest.mark.parametrize("buffered", [False, True])
def test_grouped_nested_shares_and_probabilities(small_groups, buffered):
    problem = small_groups
    nesting = problem.nesting()
    evaluator = ShareEvaluator.from_coefficients(
        problem.x2,
        problem.coefficients(),
        problem.weights,
        problem.mask,
        nesting,
        buffers=nan_buffers() if buffered else None,
    )
    expected = reference_probabilities(
        problem.delta, problem.mu(), problem.mask, problem.codes, problem.rho, True
    )
    expected_shares = reference_shares(expected, problem.weights)
    for _ in range(2):  # the second call finds its work arrays written by the first
        np.testing.assert_allclose(
            evaluator.shares(problem.delta), expected_shares, rtol=1e-12, atol=1e-17
        )
        probabilities = evaluator.probabilities(problem.delta)
        np.testing.assert_allclose(probabilities.unconditional, expected, rtol=1e-12, atol=1e-17)
        np.testing.assert_allclose(probabilities.shares, expected_shares, rtol=1e-12, atol=1e-17)
    # P_(j|h) = P_j / P_h(j), and the nest probabilities and denominators make the shares.
    nest_of_product = np.take_along_axis(probabilities.nest, problem.codes[:, :, None], axis=1)
    within = np.where(problem.mask[:, :, None], expected / nest_of_product, 0.0)
    np.testing.assert_allclose(probabilities.conditional, within, rtol=1e-12, atol=1e-17)
    outside = np.exp(-probabilities.log_denominator)
    agents = problem.agent_mask
    total = outside + probabilities.nest.sum(axis=1)
    np.testing.assert_allclose(total[agents], 1.0, rtol=1e-13)


def test_grouped_theta_and_rho_jacobian_in_one_pass(small_groups):
    problem = small_groups
    parameters = problem.parameters
    theta = parameters.theta0.copy()
    theta[parameters.random_positions()] *= 0.7
    coefficients = problem.coefficients(theta)
    nesting = problem.nesting()
    evaluator = ShareEvaluator.from_coefficients(
        problem.x2, coefficients, problem.weights, problem.mask, nesting, buffers=nan_buffers()
    )
    probabilities = evaluator.probabilities(problem.delta)
    factors, positions = parameters.agent_factors(coefficients, problem.nodes, problem.demographics)
    pieces, by_rho = nested_theta_rho_jacobian(
        probabilities,
        problem.weights,
        nesting,
        problem.mask,
        problem.x2,
        factors,
        problem.delta,
        coefficients,
        buffers=nan_buffers(),
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
        assert_matches_finite_differences(
            analytic[:, :, position], numeric / (2 * step), parameters.names[position]
        )
    mu = problem.mu(theta)
    for h in range(problem.n_nests):
        up, down = problem.rho.copy(), problem.rho.copy()
        up[h] += step
        down[h] -= step
        numeric = shares_at(problem, mu=mu, rho=up) - shares_at(problem, mu=mu, rho=down)
        assert_matches_finite_differences(by_rho[:, :, h], numeric / (2 * step), f"nest {h}")
    assert (analytic[~problem.mask] == 0).all() and (by_rho[~problem.mask] == 0).all()
