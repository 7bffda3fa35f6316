"""The agent factors the market chunks keep between evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from blpmodels.simulation.scale import simulate_scale


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
