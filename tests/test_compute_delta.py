"""``BLPResults.compute_delta``: δ at the estimated θ under other agents or integration rules.

Oracles: pyblp's ``ProblemResults.compute_delta`` at the same θ on Nevo's data (with
demographics, and nested), an explicit per-market share computation, and the identity that the
estimation agents give back the estimated δ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import NEVO_FORMULA, at_parameters, nevo_model, nevo_problem

from blpmodels import BLPInputError, BLPLogit, BLPRandomCoefficients, FixedPointError, Integration

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def half_agents(nevo):
    """The first 10 of Nevo's 20 agents per market, equally weighted."""
    _, agents = nevo
    return agents.groupby("market_ids").head(10).assign(weights=0.1).reset_index(drop=True)


@pytest.fixture(scope="module")
def demographic_results(nevo):
    """Results at the starting θ: compute_delta holds θ at whatever the results carry."""
    products, agents = nevo
    model = nevo_model(products, agents, demographics="0 + income")
    return at_parameters(model, sigma=[[2.0]], pi=[[1.0]])


@pytest.fixture(scope="module")
def nested_results(nevo_nested):
    """RCNL results at the starting θ."""
    products, agents = nevo_nested
    model = nevo_model(products, agents[["market_ids", "weights", "nodes0"]])
    return at_parameters(model, sigma=[[2.0]], rho=0.5)


def _pyblp_at(pyblp, products, agents, results, demographics: bool):
    sigma = np.array([[float(results.params["sigma[prices,prices]"])]])
    kwargs = {}
    if demographics:
        kwargs["pi"] = np.array([[float(results.params["pi[prices,income]"])]])
    if "rho" in results.params.index:
        kwargs["rho"] = float(results.params["rho"])
    problem = nevo_problem(
        pyblp, products, agents, demographics="0 + income" if demographics else None
    )
    return problem.solve(
        sigma=sigma,
        method="1s",
        optimization=pyblp.Optimization("return"),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14, "max_evaluations": 10000}),
        **kwargs,
    )


def test_estimation_agents_give_back_the_estimated_delta(demographic_results, nevo):
    _, agents = nevo
    delta = demographic_results.compute_delta(agent_data=agents)
    assert delta.name == "delta"
    assert delta.index.equals(demographic_results.delta.index)
    np.testing.assert_allclose(delta, demographic_results.delta, rtol=0, atol=1e-12)


def test_matches_pyblp_with_other_agents_and_demographics(
    demographic_results, nevo, half_agents, pyblp
):
    products, agents = nevo
    oracle = _pyblp_at(pyblp, products, agents, demographic_results, True)
    np.testing.assert_allclose(np.ravel(oracle.delta), demographic_results.delta, rtol=0, atol=1e-9)
    expected = np.ravel(
        oracle.compute_delta(
            agent_data=half_agents, iteration=pyblp.Iteration("squarem", {"atol": 1e-14})
        )
    )
    ours = demographic_results.compute_delta(agent_data=half_agents)
    assert np.abs(ours - demographic_results.delta).max() > 1e-3  # the draws matter
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)


def test_nested_matches_pyblp(nested_results, nevo_nested, half_agents, pyblp):
    products, agents = nevo_nested
    nodes = ["market_ids", "weights", "nodes0"]
    oracle = _pyblp_at(pyblp, products, agents[nodes], nested_results, False)
    np.testing.assert_allclose(np.ravel(oracle.delta), nested_results.delta, rtol=0, atol=1e-9)
    expected = np.ravel(
        oracle.compute_delta(
            agent_data=half_agents[nodes],
            iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
        )
    )
    ours = nested_results.compute_delta(agent_data=half_agents[nodes])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)


def test_integration_rule_reproduces_observed_shares(nevo):
    """δ from a Halton rule, checked by computing the shares market by market by hand."""
    products, _ = nevo
    model = BLPRandomCoefficients.from_formula(
        NEVO_FORMULA, products, random="0 + prices", integration=Integration("product", 7)
    )
    results = at_parameters(model, sigma=[[1.0]])
    sigma = float(results.params["sigma[prices,prices]"])
    rule = Integration("halton", 300, seed=3)
    delta = results.compute_delta(integration=rule)
    assert np.abs(delta - results.delta).max() > 1e-4
    from blpmodels import build_integration

    nodes = build_integration(rule, 1, market_ids=products["market_ids"].unique())
    worst = 0.0
    for market, rows in products.groupby("market_ids").groups.items():
        agents = nodes[nodes["market_ids"] == market]
        utilities = np.asarray(delta[rows])[:, None] + np.outer(
            products.loc[rows, "prices"], sigma * agents["nodes0"]
        )
        exp_utilities = np.exp(utilities)
        probabilities = exp_utilities / (1.0 + exp_utilities.sum(axis=0))
        shares = probabilities @ agents["weights"].to_numpy()
        worst = max(worst, np.abs(shares / products.loc[rows, "shares"] - 1).max())
    assert worst < 1e-11


def test_bad_requests(demographic_results, nevo, half_agents, mixtape_products):
    _, agents = nevo
    with pytest.raises(BLPInputError, match="exactly one"):
        demographic_results.compute_delta()
    with pytest.raises(BLPInputError, match="exactly one"):
        demographic_results.compute_delta(agent_data=agents, integration=Integration("lhs", 5))
    with pytest.raises(BLPInputError, match="demographics"):
        demographic_results.compute_delta(integration=Integration("halton", 50))
    with pytest.raises(BLPInputError, match="income"):
        demographic_results.compute_delta(agent_data=half_agents.drop(columns="income"))
    with pytest.raises(BLPInputError, match="nodes0"):
        demographic_results.compute_delta(agent_data=half_agents.drop(columns="nodes0"))
    missing_market = half_agents[half_agents["market_ids"] != half_agents["market_ids"].iloc[0]]
    with pytest.raises(BLPInputError, match=str(half_agents["market_ids"].iloc[0])):
        demographic_results.compute_delta(agent_data=missing_market)
    with pytest.raises(BLPInputError, match="fp_tol"):
        demographic_results.compute_delta(agent_data=agents, fp_tol=0)
    iv = "shares ~ 1 + [prices ~ price_instrument]"
    logit = BLPLogit.from_formula(iv, mixtape_products).fit()
    with pytest.raises(BLPInputError, match="random-coefficients"):
        logit.compute_delta(agent_data=agents)


def test_non_convergence_names_the_markets(demographic_results, half_agents):
    with pytest.raises(FixedPointError, match="did not converge") as caught:
        demographic_results.compute_delta(agent_data=half_agents, fp_max_evaluations=2)
    assert len(caught.value.markets) > 0
    assert set(caught.value.markets) <= set(pd.unique(half_agents["market_ids"]))
