"""Work the evaluation kernel saves, pinned against independently written formulas.

One late exercise-2 evaluation spent a third of its time above the arithmetic bound in
∂s/∂θ and the probabilities (issue 20). These tests pin what was removed: the characteristic
means x̄ = Σ_j P_j X_j summed in the probabilities pass (no second pass over the ``[T, J, I]``
factor), ∂s/∂θ written into reusable work arrays (no fresh ``[T, L, I]`` arrays, counted with
tracemalloc, which sees numpy's array data), log(1 + e^v) without ``np.logaddexp``'s scalar
loop, ∂s/∂θ and ∂s/∂δ from one product per group of markets, and share evaluations a group
of markets at a time. The oracles are the per-agent reference probabilities of ``test_kernel``
(``math.fsum``, no kernel code), numpy's own ``logaddexp`` and ∂s/∂δ summed agent by agent.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from test_kernel import make_problem, reference_probabilities, reference_shares

from blpmodels.kernel import jacobians
from blpmodels.kernel.jacobians import share_jacobian, theta_and_delta_jacobians, theta_jacobian
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


class _NaNBuffers(dict):
    """Work arrays full of NaN (stale contents must not leak into results), kept by name."""

    def __call__(self, name, shape):
        self[name] = np.full(shape, np.nan)
        return self[name]


def _theta_jacobian_inputs(fused):
    """The unnested problem, its agent factors and the probabilities at δ (with x̄ if fused)."""
    problem, _, coefficients, nesting, evaluator, reference = unnested_problem()
    factors, positions = problem.parameters.agent_factors(
        coefficients, problem.nodes, problem.demographics
    )
    extra = {"characteristics": problem.x2} if fused else {}
    probabilities = evaluator.probabilities(problem.delta, factored=True, **extra)
    return problem, nesting, reference, factors, positions, probabilities


def _assert_theta_pieces(problem, reference, factors, positions, pieces):
    """∂s/∂θ's pieces, placed at their parameters' positions, against the dense formula."""
    analytic = np.zeros((*problem.mask.shape, problem.parameters.size))
    for piece, places in zip(pieces, positions, strict=True):
        analytic[:, :, places] = piece
    expected = dense_theta_jacobian(problem, reference, factors, positions)
    np.testing.assert_allclose(analytic, expected, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("fused", [False, True])
def test_theta_jacobian_in_work_arrays(fused):
    """∂s/∂θ from work arrays equals the dense formula, with or without the fused x̄."""
    problem, nesting, reference, factors, positions, probabilities = _theta_jacobian_inputs(fused)
    asked = buffers = _NaNBuffers()
    pieces = theta_jacobian(
        probabilities, problem.weights, nesting, problem.mask, problem.x2, factors, buffers
    )
    _assert_theta_pieces(problem, reference, factors, positions, pieces)
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


def dense_delta_jacobian(problem, reference) -> np.ndarray:
    """∂s_j/∂δ_k = Σ_i w_i P_ji (1{j = k} − P_ki), agent by agent."""
    n_markets, width, n_agents = reference.shape
    out = np.zeros((n_markets, width, width))
    for t in range(n_markets):
        for i in range(n_agents):
            column = reference[t, :, i]
            out[t] += problem.weights[t, i] * (np.diag(column) - np.outer(column, column))
    return out


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_theta_and_delta_jacobians_in_one_product(monkeypatch, fused, split):
    """∂s/∂θ and ∂s/∂δ from one product per group of markets (two markets a group here, the
    last one short), with work arrays full of NaN, against the dense formulas; x̄ from the
    probabilities or summed in the loop; the symmetric ∂s/∂δ in one product or two halves."""
    problem, nesting, reference, factors, positions, probabilities = _theta_jacobian_inputs(fused)
    per_market = reference.shape[1] * reference.shape[2]
    monkeypatch.setattr(jacobians, "NESTED_BLOCK_ENTRIES", 2 * per_market)
    monkeypatch.setattr(jacobians, "SPLIT_WIDTH", 1 if split else 10**9)
    asked = buffers = _NaNBuffers()
    pieces, by_delta = theta_and_delta_jacobians(
        probabilities, problem.weights, nesting, problem.mask, problem.x2, factors, buffers
    )
    _assert_theta_pieces(problem, reference, factors, positions, pieces)
    np.testing.assert_allclose(
        by_delta, dense_delta_jacobian(problem, reference), rtol=1e-11, atol=1e-15
    )
    assert ("theta_means" in asked) != fused
    # The results are the caller's (∂s/∂δ is overwritten): no views of work arrays.
    for result in [by_delta, *pieces]:
        assert not any(np.shares_memory(result, array) for array in asked.values())


def test_theta_and_delta_jacobians_of_a_nested_model():
    """Nested probabilities are not factored: the two functions one after the other."""
    problem = make_problem("several", seed=32)
    theta = problem.parameters.theta0 * 0.8
    coefficients = problem.coefficients(theta)
    nesting = problem.nesting()
    evaluator = ShareEvaluator.from_coefficients(
        problem.x2, coefficients, problem.weights, problem.mask, nesting
    )
    probabilities = evaluator.probabilities(problem.delta, factored=True)
    factors, _ = problem.parameters.agent_factors(coefficients, problem.nodes, problem.demographics)
    arguments = (probabilities, problem.weights, nesting, problem.mask, problem.x2, factors)
    pieces, by_delta = theta_and_delta_jacobians(*arguments)
    for piece, separate in zip(pieces, theta_jacobian(*arguments), strict=True):
        np.testing.assert_array_equal(piece, separate)
    np.testing.assert_array_equal(by_delta, share_jacobian(*arguments[:4]))


def test_unnested_shares_and_the_probabilities_from_their_sums():
    """Unnested share evaluations against the reference shares, and the probabilities at the
    same δ from the sums they keep."""
    problem, _, _, _, evaluator, reference = unnested_problem()
    expected = reference_shares(reference, problem.weights)
    np.testing.assert_allclose(evaluator.shares(problem.delta), expected, rtol=1e-13, atol=0.0)
    kept = evaluator.probabilities(problem.delta, factored=True)
    np.testing.assert_allclose(kept.unconditional, reference, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(kept.shares, expected, rtol=1e-13, atol=0.0)
