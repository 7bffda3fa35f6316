"""Post-estimation of random-coefficients models against pyblp and shares written out by hand.

Results are taken at fixed parameters (an optimizer that stays at the start), so blpmodels and
pyblp's ``Optimization('return')`` describe exactly the same demand. Cases:

- lognormal and negative-lognormal coefficients (pyblp: ``'log'``, on ``I(-prices)`` for the
  negative one): predictions, elasticities and diversion (by price and by sugar), long-run
  diversion, compute_delta;
- RCNL with one ρ and with a ρ per nest: predictions, elasticities, diversion, long-run
  diversion;
- a characteristic in both X1 and X2: elasticities and diversion with ``wrt="sugar"`` and
  predictions after changing sugar.

The hand-written oracle (:func:`shares_by_hand`) integrates logit probabilities over the agents
with numpy, from the raw data columns and the parameters, with no blpmodels code.
Tolerances: pyblp and blpmodels solve δ to 1e-14 and differ only by floating-point order, so
shares and derivatives agree to ~1e-12 relative (measured); 1e-8 leaves room for BLAS order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import (
    LOGNORMAL_THETA,
    NEVO_INSTRUMENTS,
    at_parameters,
    nevo_model,
    nevo_problem,
    solve_at,
)

from blpmodels import BLPRandomCoefficients

pytestmark = pytest.mark.data

MARKET = "C01Q1"
RTOL = 1e-8


def shares_by_hand(delta, x2, nodes, demographics, weights, sigma, pi, rc_types, nests=None):
    """Shares in one market: Σ_i w_i P_ji, written out with numpy.

    ``x2`` is J×K2 (columns in the order of σ's rows), ``nodes`` I×K2, ``demographics`` I×D.
    Coefficients c_ik = Σ_l σ_kl ν_il + Σ_d π_kd d_id, exponentiated for ``"log"`` (and negated
    for ``"-log"``). ``nests`` = (codes, ρ per nest) gives the nested-logit probabilities.
    """
    index = nodes @ np.asarray(sigma).T + demographics @ np.asarray(pi).T
    coefficients = index.copy()
    for k, kind in enumerate(rc_types):
        if kind == "log":
            coefficients[:, k] = np.exp(index[:, k])
        elif kind == "-log":
            coefficients[:, k] = -np.exp(index[:, k])
    utility = delta[:, None] + x2 @ coefficients.T  # J × I
    if nests is None:
        exp_utility = np.exp(utility)
        probabilities = exp_utility / (1.0 + exp_utility.sum(axis=0))
    else:
        codes, rho = nests
        rho_j = rho[codes][:, None]
        scaled = np.exp(utility / (1.0 - rho_j))
        inclusive = np.zeros((len(rho), utility.shape[1]))
        np.add.at(inclusive, codes, scaled)
        inclusive_value = (1.0 - rho)[:, None] * np.log(np.where(inclusive > 0, inclusive, 1.0))
        present = inclusive > 0
        denominator = 1.0 + np.where(present, np.exp(inclusive_value), 0.0).sum(axis=0)
        probabilities = scaled / inclusive[codes] * np.exp(inclusive_value[codes]) / denominator
    return probabilities @ weights


def nevo_shares_by_hand(delta, market, people, sigma, pi, rc_types):
    """:func:`shares_by_hand` in one Nevo market: X2 = (prices, sugar), Π on income."""
    return shares_by_hand(
        delta,
        market[["prices", "sugar"]].to_numpy(),
        people[["nodes0", "nodes1"]].to_numpy(),
        people[["income"]].to_numpy(),
        people["weights"].to_numpy(),
        sigma,
        pi,
        rc_types,
    )


def _order(products, market=MARKET):
    return products.loc[products["market_ids"] == market, "product_ids"].tolist()


def assert_matrices_match(ours: pd.DataFrame, theirs: np.ndarray, order, what: str):
    np.testing.assert_allclose(
        ours.loc[order, order].to_numpy(), theirs, rtol=RTOL, atol=1e-12, err_msg=what
    )


def assert_substitution_matches(results, oracle, order, wrt: str = "prices"):
    """Elasticities and diversion ratios with respect to ``wrt`` in MARKET equal pyblp's."""
    assert_matrices_match(
        results.elasticities(MARKET, wrt=wrt),
        oracle.compute_elasticities(name=wrt, market_id=MARKET),
        order,
        f"elasticities by {wrt}",
    )
    assert_matrices_match(
        results.diversion_ratios(MARKET, wrt=wrt),
        oracle.compute_diversion_ratios(name=wrt, market_id=MARKET),
        order,
        f"diversion by {wrt}",
    )


# ---------------------------------------------------------------- lognormal coefficients

SIGMA, PI = LOGNORMAL_THETA["sigma"], np.asarray(LOGNORMAL_THETA["pi"])
LOG_CASES = {
    # ours: rc_types; pyblp: X2 formulation and rc_types; by hand: types for prices, sugar.
    "negative_lognormal": (
        {"prices": "negative_lognormal"},
        "0 + I(-prices) + sugar",
        ["log", "linear"],
        ["-log", "linear"],
    ),
    "lognormal": (
        {"sugar": "lognormal"},
        "0 + prices + sugar",
        ["linear", "log"],
        ["linear", "log"],
    ),
}


@pytest.fixture(scope="module", params=list(LOG_CASES))
def log_case(request, nevo, pyblp):
    ours_types, pyblp_random, pyblp_types, hand_types = LOG_CASES[request.param]
    products, agents = nevo
    model = nevo_model(
        products, agents, "0 + prices + sugar", demographics="0 + income", rc_types=ours_types
    )
    results = at_parameters(model, sigma=SIGMA, pi=PI)
    problem = nevo_problem(
        pyblp, products, agents, pyblp_random, "0 + income", rc_types=pyblp_types
    )
    oracle = solve_at(pyblp, problem, sigma=SIGMA, pi=PI)
    return results, oracle, hand_types


def test_lognormal_predict_at_the_data_reproduces_observed_shares(log_case, nevo):
    results, _, _ = log_case
    products, _ = nevo
    np.testing.assert_allclose(results.predict(), products["shares"], rtol=1e-10)


def _hand_market(products, agents, market, delta, beta_price, hand_types, changed=None):
    rows = products["market_ids"] == market
    frame = products[rows] if changed is None else changed
    original = products[rows]
    people = agents[agents["market_ids"] == market]
    # X1 is prices only (sugar is in the product effects, held fixed): δ moves with prices.
    new_delta = delta[rows.to_numpy()] + beta_price * (
        frame["prices"].to_numpy() - original["prices"].to_numpy()
    )
    return nevo_shares_by_hand(new_delta, frame, people, SIGMA, PI, hand_types)


def test_lognormal_predictions_after_a_price_cut_and_a_sugar_change(log_case, nevo):
    results, oracle, hand_types = log_case
    products, agents = nevo
    delta = np.ravel(oracle.delta)  # pyblp's δ, not ours
    beta = float(oracle.beta[0, 0])
    market = products[products["market_ids"] == MARKET].copy()
    market.loc[market.index[0], "prices"] *= 0.5
    ours = results.predict(market).to_numpy()
    theirs = np.ravel(oracle.compute_shares(prices=market[["prices"]].to_numpy(), market_id=MARKET))
    np.testing.assert_allclose(ours, theirs, rtol=RTOL)
    by_hand = _hand_market(products, agents, MARKET, delta, beta, hand_types, market)
    np.testing.assert_allclose(ours, by_hand, rtol=RTOL)
    # A non-price characteristic: more sugar in two products (μ changes, δ does not).
    market = products[products["market_ids"] == MARKET].copy()
    market.loc[market.index[:2], "sugar"] += 5.0
    ours = results.predict(market).to_numpy()
    by_hand = _hand_market(products, agents, MARKET, delta, beta, hand_types, market)
    np.testing.assert_allclose(ours, by_hand, rtol=RTOL)
    assert np.abs(ours / market["shares"].to_numpy() - 1).max() > 0.01  # the change matters


@pytest.mark.parametrize("wrt", ["prices", "sugar"])
def test_lognormal_elasticities_and_diversion_match_pyblp(log_case, nevo, wrt):
    results, oracle, _ = log_case
    assert_substitution_matches(results, oracle, _order(nevo[0]), wrt)


def test_lognormal_long_run_diversion_matches_pyblp(log_case, nevo):
    results, oracle, _ = log_case
    assert_matrices_match(
        results.long_run_diversion_ratios(MARKET),
        oracle.compute_long_run_diversion_ratios(market_id=MARKET),
        _order(nevo[0]),
        "long-run diversion",
    )


def test_lognormal_compute_delta_matches_pyblp(log_case, nevo):
    results, oracle, _ = log_case
    _, agents = nevo
    # The estimation agents give back δ at these parameters (pyblp's δ).
    np.testing.assert_allclose(
        results.compute_delta(agent_data=agents), np.ravel(oracle.delta), rtol=0, atol=1e-10
    )
    fewer = agents.groupby("market_ids").head(10).assign(weights=0.1).reset_index(drop=True)
    ours = results.compute_delta(agent_data=fewer).to_numpy()
    theirs = np.ravel(oracle.compute_delta(agent_data=fewer))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
    assert np.abs(ours - np.ravel(oracle.delta)).max() > 1e-3  # other agents move δ


# ---------------------------------------------------------------- RCNL


@pytest.fixture(scope="module", params=[0.7, (0.7, 0.4)], ids=["common_rho", "rho_per_nest"])
def rcnl_case(request, nevo_nested, pyblp):
    products, agents = nevo_nested
    rho = request.param if isinstance(request.param, float) else list(request.param)
    results = at_parameters(nevo_model(products, agents), sigma=[[2.0]], rho=rho)
    problem = nevo_problem(pyblp, products, agents[["market_ids", "weights", "nodes0"]])
    oracle = solve_at(pyblp, problem, sigma=[[2.0]], rho=rho)
    return results, oracle, np.broadcast_to(np.asarray(rho, dtype=float), (2,)).copy()


def test_rcnl_predictions_match_pyblp_and_hand(rcnl_case, nevo_nested):
    results, oracle, rho = rcnl_case
    products, agents = nevo_nested
    np.testing.assert_allclose(results.predict(), products["shares"], rtol=1e-10)
    market = products[products["market_ids"] == MARKET].copy()
    market.loc[market.index[[0, 3]], "prices"] *= 0.7
    ours = results.predict(market).to_numpy()
    theirs = np.ravel(oracle.compute_shares(prices=market[["prices"]].to_numpy(), market_id=MARKET))
    np.testing.assert_allclose(ours, theirs, rtol=RTOL)
    original = products[products["market_ids"] == MARKET]
    people = agents[agents["market_ids"] == MARKET]
    delta = np.ravel(oracle.delta)[(products["market_ids"] == MARKET).to_numpy()]
    delta = delta + float(oracle.beta[0, 0]) * (market["prices"] - original["prices"]).to_numpy()
    by_hand = shares_by_hand(
        delta,
        market[["prices"]].to_numpy(),
        people[["nodes0"]].to_numpy(),
        np.zeros((len(people), 0)),
        people["weights"].to_numpy(),
        [[2.0]],
        np.zeros((1, 0)),
        ["linear"],
        nests=(market["nesting_ids"].to_numpy().astype(int), rho),
    )
    np.testing.assert_allclose(ours, by_hand, rtol=RTOL)


def test_rcnl_elasticities_and_diversion_match_pyblp(rcnl_case, nevo):
    results, oracle, _ = rcnl_case
    order = _order(nevo[0])
    assert_substitution_matches(results, oracle, order)
    assert_matrices_match(
        results.long_run_diversion_ratios(MARKET),
        oracle.compute_long_run_diversion_ratios(market_id=MARKET),
        order,
        "long-run diversion",
    )


# ---------------------------------------------------------------- a characteristic in X1 and X2

X1_FORMULA = f"shares ~ 1 + sugar + mushy + [prices ~ {NEVO_INSTRUMENTS}]"
CHARACTERISTIC_SIGMA = np.diag([2.0, 0.05])
CHARACTERISTIC_PI = np.array([[3.0], [0.02]])


@pytest.fixture(scope="module")
def characteristic_case(nevo, pyblp):
    products, agents = nevo
    model = BLPRandomCoefficients.from_formula(
        X1_FORMULA,
        products,
        random="0 + prices + sugar",
        demographics="0 + income",
        agent_data=agents,
    )
    results = at_parameters(model, sigma=CHARACTERISTIC_SIGMA, pi=CHARACTERISTIC_PI)
    problem = pyblp.Problem(
        (
            pyblp.Formulation("1 + prices + sugar + mushy"),
            pyblp.Formulation("0 + prices + sugar"),
        ),
        products,
        pyblp.Formulation("0 + income"),
        agents,
    )
    oracle = solve_at(pyblp, problem, sigma=CHARACTERISTIC_SIGMA, pi=CHARACTERISTIC_PI)
    return results, oracle


def test_elasticities_and_diversion_by_a_characteristic_match_pyblp(characteristic_case, nevo):
    results, oracle = characteristic_case
    # pyblp orders β as its X1 formulation: 1, prices, sugar, mushy.
    np.testing.assert_allclose(
        results.beta[["Intercept", "prices", "sugar", "mushy"]], np.ravel(oracle.beta), rtol=1e-8
    )
    order = _order(nevo[0])
    for wrt in ("sugar", "prices"):
        assert_substitution_matches(results, oracle, order, wrt)


def test_predict_after_changing_a_characteristic_in_x1_and_x2(characteristic_case, nevo):
    """δ moves by β_sugar·Δsugar and μ by the random sugar coefficient times Δsugar."""
    results, oracle = characteristic_case
    products, agents = nevo
    rows = (products["market_ids"] == MARKET).to_numpy()
    market = products[rows].copy()
    market.loc[market.index[[1, 2, 5]], "sugar"] += 3.0
    beta_sugar = float(oracle.beta[2, 0])
    delta = np.ravel(oracle.delta)[rows] + beta_sugar * (
        market["sugar"].to_numpy() - products.loc[rows, "sugar"].to_numpy()
    )
    people = agents[agents["market_ids"] == MARKET]
    by_hand = nevo_shares_by_hand(
        delta, market, people, CHARACTERISTIC_SIGMA, CHARACTERISTIC_PI, ["linear", "linear"]
    )
    ours = results.predict(market).to_numpy()
    np.testing.assert_allclose(ours, by_hand, rtol=RTOL)
    assert np.abs(ours / market["shares"].to_numpy() - 1).max() > 0.01
