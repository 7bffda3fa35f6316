"""Work the evaluation kernel saves, pinned against independently written formulas.

One late exercise-2 evaluation spent a third of its time above the arithmetic bound in
∂s/∂θ and the probabilities (issue 20). These tests pin what was removed: the characteristic
means x̄ = Σ_j P_j X_j summed in the probabilities pass (no second pass over the ``[T, J, I]``
factor), ∂s/∂θ written into reusable work arrays (no fresh ``[T, L, I]`` arrays, counted with
tracemalloc, which sees numpy's array data), and log(1 + e^v) without ``np.logaddexp``'s scalar
loop. The oracles are the per-agent reference probabilities of ``test_kernel`` (``math.fsum``,
no kernel code) and numpy's own ``logaddexp``.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from test_kernel import make_problem, reference_probabilities

from blpmodels.kernel.jacobians import theta_jacobian
from blpmodels.kernel.shares import Nesting, ShareEvaluator, _log_one_plus_exp


def unnested_problem(n_agents: int = 7):
    """A padded unnested problem, its factored evaluator and its reference P ``[T, J, I]``."""
    problem = make_problem("none", seed=31, n_agents=n_agents)
    theta = problem.parameters.theta0 * 0.8
    coefficients = problem.coefficients(theta)
    nesting = Nesting.unnested(problem.mask.shape)
    evaluator = ShareEvaluator.from_coefficients(
        problem.x2, coefficients, problem.weights, problem.mask, nesting
    )
    mu = problem.mu(theta)
    reference = reference_probabilities(
        problem.delta, mu, problem.mask, problem.codes, problem.rho, False
    )
    return problem, theta, coefficients, nesting, evaluator, reference


def dense_theta_jacobian(problem, reference, factors, positions) -> np.ndarray:
    """∂s_j/∂θ_l = Σ_i w_i P_ji g_il (X_jk − x̄_ik), x̄_ik = Σ_m P_mi X_mk, by einsum."""
    means = np.einsum("tji,tjk->tki", reference, problem.x2)
    out = np.zeros((*problem.mask.shape, problem.parameters.size))
    for column, (factor, places) in enumerate(zip(factors, positions, strict=True)):
        centered = problem.x2[:, :, column, None] - means[:, None, column, :]  # [T, J, I]
        for offset, place in enumerate(places):
            out[:, :, place] = np.einsum(
                "ti,tji,ti,tji->tj", problem.weights, reference, factor[:, offset], centered
            )
    return out


def test_log_one_plus_exp_is_logaddexp():
    """Same values as np.logaddexp(0, v), including ±inf, NaN and both tails."""
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            [-np.inf, np.inf, np.nan, 0.0, -0.0, 1e-300, -1e-20, 36.0, -36.0, 745.0, -745.0],
            [800.0, -800.0, 1e308, -1e308],
            rng.normal(0.0, 20.0, size=2000),
        ]
    ).reshape(5, -1)
    with np.errstate(invalid="ignore"):
        expected = np.logaddexp(0.0, values)
    np.testing.assert_allclose(_log_one_plus_exp(values), expected, rtol=1e-15, atol=0.0)


def test_probabilities_sum_characteristics_in_the_nest_sums_pass():
    """x̄ = Σ_j P_j X_j comes out of the probabilities call, into the buffer given."""
    problem, _, _, _, evaluator, reference = unnested_problem()
    n_markets, _, n_agents = reference.shape
    buffer = np.full((n_markets, 1 + problem.x2.shape[2], n_agents), np.nan)
    plain = evaluator.probabilities(problem.delta, factored=True)
    probabilities = evaluator.probabilities(
        problem.delta, factored=True, characteristics=problem.x2, buffer=buffer
    )
    assert plain.characteristic_means is None
    characteristics, means = probabilities.characteristic_means
    assert characteristics is problem.x2
    assert np.shares_memory(means, buffer)
    expected = np.einsum("tji,tjk->tki", reference, problem.x2)
    np.testing.assert_allclose(means, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(probabilities.shares, plain.shares, rtol=1e-14, atol=0.0)
    np.testing.assert_allclose(
        probabilities.log_denominator, plain.log_denominator, rtol=1e-14, atol=0.0
    )


@pytest.mark.parametrize("fused", [False, True])
def test_theta_jacobian_in_work_arrays(fused):
    """∂s/∂θ from work arrays equals the dense formula, with or without the fused x̄."""
    problem, _, coefficients, nesting, evaluator, reference = unnested_problem()
    factors, positions = problem.parameters.agent_factors(
        coefficients, problem.nodes, problem.demographics
    )
    extra = {"characteristics": problem.x2} if fused else {}
    probabilities = evaluator.probabilities(problem.delta, factored=True, **extra)
    asked = {}

    def buffers(name, shape):
        asked[name] = np.full(shape, np.nan)  # stale contents must not leak into results
        return asked[name]

    pieces = theta_jacobian(
        probabilities, problem.weights, nesting, problem.mask, problem.x2, factors, buffers
    )
    analytic = np.zeros((*problem.mask.shape, problem.parameters.size))
    for piece, places in zip(pieces, positions, strict=True):
        analytic[:, :, places] = piece
    expected = dense_theta_jacobian(problem, reference, factors, positions)
    np.testing.assert_allclose(analytic, expected, rtol=1e-11, atol=1e-14)
    # The fused path reads x̄ from the probabilities; otherwise it is summed into a buffer.
    assert set(asked) == ({"theta_stacked"} if fused else {"theta_stacked", "theta_means"})


def test_theta_jacobian_allocates_no_agent_arrays():
    """With work arrays, ∂s/∂θ allocates nothing of ``[T, L, I]`` size (tracemalloc counts
    numpy's array data), where it used to build five such arrays per call."""
    problem, _, coefficients, nesting, evaluator, _ = unnested_problem(n_agents=4000)
    factors, _ = problem.parameters.agent_factors(coefficients, problem.nodes, problem.demographics)
    probabilities = evaluator.probabilities(
        problem.delta, factored=True, characteristics=problem.x2
    )
    kept = {}

    def buffers(name, shape):
        if (name, shape) not in kept:
            kept[name, shape] = np.empty(shape)
        return kept[name, shape]

    def call():
        return theta_jacobian(
            probabilities, problem.weights, nesting, problem.mask, problem.x2, factors, buffers
        )

    call()  # the work arrays are made once
    agent_array = 8 * probabilities.factors[2].size * problem.parameters.size  # [T, L, I]
    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < agent_array / 4, (peak, agent_array)
