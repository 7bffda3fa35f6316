"""The market chunks' dense inverse of ∂s/∂δ (Cholesky by market, LU where it fails) and the
agent factors they keep between evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from blpmodels.kernel.chunks import _symmetric_inverse
from blpmodels.simulation.scale import simulate_scale


def _delta_jacobians(n_markets: int, width: int, n_agents: int, seed: int) -> np.ndarray:
    """diag(s) − Σ_i w_i P_i P_iᵀ, agent by agent, the last two products of market 1 padding
    (zero rows and columns, then 1 on the diagonal, as the chunks pad)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n_markets, width, width))
    for t in range(n_markets):
        real = width - 2 if t == 1 else width
        utilities = rng.normal(size=(n_agents, real + 1))
        probabilities = np.exp(utilities) / np.exp(utilities).sum(axis=1, keepdims=True)
        weights = rng.dirichlet(np.ones(n_agents))
        for i in range(n_agents):
            p = probabilities[i, 1:]
            out[t, :real, :real] += weights[i] * (np.diag(p) - np.outer(p, p))
        out[t, real:, real:] = np.eye(width - real)
    return out


def test_symmetric_inverse_against_lu_by_market():
    """Each market's inverse against np.linalg.inv of that market (LU): symmetric positive
    definite markets (one padded, one with triangles that differ by rounding), an indefinite
    one and one singular to Cholesky's precision (both by LU)."""
    matrices = _delta_jacobians(6, 7, 40, seed=5)
    matrices[2] += np.triu(matrices[2], 1) * 1e-15  # the triangles differ by rounding
    matrices[3] = np.array(matrices[3])
    matrices[3][0, 0] = -1.0  # indefinite: Cholesky fails, LU does not
    matrices[4] = np.diag(np.r_[1e-300, np.ones(6)]) * 1e-20  # the inverse overflows
    given = matrices.copy()
    inverse = _symmetric_inverse(matrices)
    np.testing.assert_array_equal(matrices, given)  # the input is read only
    for t in range(matrices.shape[0]):
        expected = np.linalg.inv(given[t])
        if t == 2:  # Cholesky reads the lower triangle
            expected = np.linalg.inv(np.tril(given[t]) + np.tril(given[t], -1).T)
        if t == 4:
            np.testing.assert_array_equal(inverse[t], expected)  # LU's inf, as before
            continue
        np.testing.assert_allclose(
            inverse[t], expected, rtol=1e-10, atol=1e-12 * abs(expected).max()
        )
    np.testing.assert_array_equal(inverse[[0, 1, 2, 5]], np.swapaxes(inverse[[0, 1, 2, 5]], 1, 2))


def test_symmetric_inverse_without_products():
    assert _symmetric_inverse(np.zeros((3, 0, 0))).shape == (3, 0, 0)


@pytest.mark.parametrize("rc_type", ["normal", "lognormal"])
def test_chunks_keep_the_agent_factors_of_normal_coefficients(rc_type):
    """Kept across evaluations for normal coefficients (they are columns of the data), formed
    again for other nodes; never kept for lognormal ones (they depend on θ). Each against
    the factors formed afresh."""
    problem = simulate_scale(12, 5, 30, seed=2, pi=0.5)
    keywords = {} if rc_type == "normal" else {"rc_types": {"prices": "lognormal"}}
    model = problem.model(threads=1, **keywords)
    parameters = model.parameters(sigma=0.5, pi=0.3)
    objective = model.objective_function(parameters)
    assert objective.evaluate(parameters.theta0).success
    (chunk,) = objective.backend.chunks
    nonlinear = chunk.parameters

    def fresh(theta):
        coefficients, _ = nonlinear.coefficients(theta, chunk.nodes, chunk.demographics)
        return coefficients, nonlinear.agent_factors(coefficients, chunk.nodes, chunk.demographics)

    for theta in (parameters.theta0, 1.5 * parameters.theta0):
        coefficients, (expected, positions) = fresh(theta)
        got, got_positions = chunk._agent_factors(coefficients)
        for a, b in zip([*got, *got_positions], [*expected, *positions], strict=True):
            np.testing.assert_array_equal(a, b)
    assert (chunk._kept_factors is not None) == (rc_type == "normal")
    chunk.nodes = chunk.nodes + 1.0  # other nodes: other factors
    coefficients, (expected, _) = fresh(parameters.theta0)
    for a, b in zip(chunk._agent_factors(coefficients)[0], expected, strict=True):
        np.testing.assert_array_equal(a, b)
