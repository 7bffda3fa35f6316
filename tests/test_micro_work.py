"""Work of the micro-moment evaluation: survey arrays built once, sparse surveys contracted.

A survey that weights few (agent, choice) cells — one product type, one income group, as
Petrin's CEX moments do — is stored as a sparse matrix, so it fits under the store limit where
its dense arrays would not, and its callables run once, at validation, instead of at every
evaluation. Its logit tangents are contracted with the weights without forming the
``[P, I, 1+J]`` array. Checked here: the callables' call counts (the saving), the value against
a hand computation from δ and the agents, and the θ-Jacobian against central differences.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from builders import q5_model

from blpmodels import MicroDataset, MicroMoment
from blpmodels.estimation.micro import MicroBlock

pytestmark = pytest.mark.data

MARKETS = ["C01Q1", "C01Q2"]
SIGMA = np.diag([1.0, 1.0, 6.0])
PI = [[-0.3], [0.1], [-6.0]]


@pytest.fixture(scope="module")
def model(exercise2):
    products, agents = exercise2
    return q5_model(products, agents, random="1 + mushy + prices")


class _Counted:
    """Survey weights 1 on the market's first product only (4% of the I × (1 + J) cells),
    counting calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, t, products, agents) -> np.ndarray:
        self.calls += 1
        weights = np.zeros((len(agents), len(products)))
        weights[:, 0] = 1.0
        return weights


def _block(model, weights: _Counted | None) -> MicroBlock:
    """E[log income] among the surveyed buyers: of the first product (``weights``), or of any
    inside good (``None``: dense arrays)."""
    survey = MicroDataset("first product", 100, MARKETS, weights=weights)
    layout = model.design.layout
    # Dense, each market's arrays are 2 × 1,000 × 25 weighted values and 25,000 values, over
    # this limit; sparse, the weighted arrays hold 2,000 nonzeros.
    return MicroBlock(
        [MicroMoment.mean("log_income", survey, 8.0)],
        model.design.data,
        layout.index,
        layout.mask,
        layout.market_labels,
        model.agents,
        store_limit=40_000 if weights is not None else 4e6,
    )


def _objective(model, block):
    parameters = model.parameters(sigma=SIGMA, pi=PI)
    objective = model.objective_function(parameters, micro=block)
    weights = scipy.linalg.block_diag(model.initial_weighting_matrix(), np.eye(block.size))
    objective.set_weighting_matrix(weights)
    return objective, parameters.theta0


def test_sparse_survey_callables_run_once(model):
    """The weights callable runs once per market (validation), not again at each of three
    evaluations with gradients (before: 2 + 3 × 2 calls, the arrays recomputed each time);
    the model value is E[log income | bought the first product] computed by hand."""
    weights = _Counted()
    block = _block(model, weights)
    assert weights.calls == 2
    objective, theta = _objective(model, block)
    for step in (0.0, 1e-3, 2e-3):
        evaluation = objective.evaluate(theta + step)
    assert weights.calls == 2
    # By hand at the last θ: logit probabilities of the first product from δ and μ.
    layout, agents = model.design.layout, model.agents
    delta = layout.pad(evaluation.delta)
    sigma = np.diag(SIGMA) + 0.002
    pi = np.ravel(PI) + 0.002
    numerator = denominator = 0.0
    for t, label in enumerate(layout.market_labels):
        if label not in MARKETS:
            continue
        n, count = int(layout.mask[t].sum()), int(agents.layout.counts[t])
        frame = model.design.data.iloc[layout.index[t, :n]]
        people = agents.data.iloc[agents.layout.index[t, :count]]
        x = np.column_stack([np.ones(n), frame["mushy"], frame["prices"]])
        nodes = people[["nodes0", "nodes1", "nodes2"]].to_numpy()
        income = people["log_income"].to_numpy()
        utility = delta[t, :n] + (nodes * sigma + income[:, None] * pi) @ x.T
        share = np.exp(utility[:, 0]) / (1 + np.exp(utility).sum(axis=1))
        w = people["weights"].to_numpy()
        numerator += np.sum(w * share * income)
        denominator += np.sum(w * share)
    assert evaluation.micro.values[0] == pytest.approx(numerator / denominator, rel=1e-12)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_contracted_jacobian_against_central_differences(model, sparse):
    """The θ-Jacobian of a first-choice moment (logit tangents contracted with the weights,
    never formed), weights stored sparse or dense, against central differences."""
    block = _block(model, _Counted() if sparse else None)
    assert hasattr(block.markets[0].surveys[0].weighted, "indptr") == sparse
    objective, theta = _objective(model, block)
    analytic = objective.evaluate(theta).micro.jacobian[0]
    for position in range(theta.size):
        step = 1e-5 * max(1.0, abs(theta[position]))
        up, down = theta.copy(), theta.copy()
        up[position] += step
        down[position] -= step
        difference = (
            objective.evaluate(up, gradient=False).micro.moments[0]
            - objective.evaluate(down, gradient=False).micro.moments[0]
        ) / (2 * step)
        assert difference == pytest.approx(analytic[position], rel=1e-6, abs=1e-8)
