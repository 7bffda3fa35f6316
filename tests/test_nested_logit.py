"""Nested logit in closed form (BLPNestedLogit) against pyblp's tutorial and written-out formulas.

pyblp's nested-logit tutorial on Nevo's data: nests = mushy, an extra instrument counting the
products in each (market, nest), ``Problem(Formulation('0 + prices'), data).solve(rho=0.7)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from linearmodels.iv import IV2SLS

from blpmodels import BLPNestedLogit, ConvergenceWarning

NEVO_INSTRUMENTS = " + ".join(f"demand_instruments{k}" for k in range(20))
FORMULA = f"shares ~ 0 + [prices ~ {NEVO_INSTRUMENTS} + nest_count]"


@pytest.fixture(scope="module")
def pyblp_problem(pyblp, nevo_products):
    return pyblp.Problem(pyblp.Formulation("0 + prices"), nevo_products)


@pytest.fixture(scope="module")
def pyblp_two_step(pyblp_problem):
    return pyblp_problem.solve(rho=0.7)


@pytest.fixture(scope="module")
def nested_model(nevo_products):
    return BLPNestedLogit.from_formula(FORMULA, nevo_products.copy())


@pytest.fixture(scope="module")
def nested_two_step(nested_model):
    return nested_model.fit(method="2s")


@pytest.fixture(scope="module")
def first_market(nevo_products) -> str:
    return nevo_products["market_ids"].iloc[0]


def _nested_shares(delta, nests, rho):
    """Nested-logit shares in one market from mean utilities (written out, not the kernel)."""
    delta, nests = np.asarray(delta, dtype=float), np.asarray(nests)
    scaled = np.exp(delta / (1.0 - rho))
    labels = np.unique(nests)
    inclusive = {h: scaled[nests == h].sum() for h in labels}
    denominator = 1.0 + sum(value ** (1.0 - rho) for value in inclusive.values())
    totals = np.array([inclusive[h] for h in nests])
    return scaled / totals * totals ** (1.0 - rho) / denominator


def _nested_delta(data: pd.DataFrame, rho: float) -> pd.Series:
    outside = 1.0 - data.groupby("market_ids")["shares"].transform("sum")
    nest_totals = data.groupby(["market_ids", "nesting_ids"])["shares"].transform("sum")
    return np.log(data["shares"] / outside) - rho * np.log(data["shares"] / nest_totals)


@pytest.mark.data
def test_two_step_estimates_and_standard_errors_equal_pyblp(nested_two_step, pyblp_two_step):
    params = nested_two_step.params
    assert list(params.index) == ["prices", "rho"]
    assert params["prices"] == pytest.approx(-7.83828345, rel=1e-7)
    assert params["rho"] == pytest.approx(0.89154279, rel=1e-7)
    np.testing.assert_allclose(params["prices"], pyblp_two_step.beta[0, 0], rtol=1e-6)
    np.testing.assert_allclose(params["rho"], pyblp_two_step.rho[0, 0], rtol=1e-6)
    np.testing.assert_allclose(
        nested_two_step.bse["prices"], pyblp_two_step.beta_se[0, 0], rtol=1e-6
    )
    np.testing.assert_allclose(nested_two_step.bse["rho"], pyblp_two_step.rho_se[0, 0], rtol=1e-6)
    np.testing.assert_allclose(nested_two_step.objective, pyblp_two_step.objective, rtol=1e-6)


@pytest.mark.data
def test_one_step_estimates_equal_pyblp_one_step(nested_model, pyblp_problem):
    ours = nested_model.fit()
    oracle = pyblp_problem.solve(rho=0.7, method="1s")
    np.testing.assert_allclose(ours.params["prices"], oracle.beta[0, 0], rtol=1e-6)
    np.testing.assert_allclose(ours.params["rho"], oracle.rho[0, 0], rtol=1e-6)
    np.testing.assert_allclose(ours.bse["prices"], oracle.beta_se[0, 0], rtol=1e-6)
    np.testing.assert_allclose(ours.bse["rho"], oracle.rho_se[0, 0], rtol=1e-6)


@pytest.mark.data
def test_closed_form_is_linear_iv_on_the_log_within_share(nevo_products, nested_model):
    data = nevo_products.copy()
    outside = 1.0 - data.groupby("market_ids")["shares"].transform("sum")
    nest_totals = data.groupby(["market_ids", "nesting_ids"])["shares"].transform("sum")
    data["logit_delta"] = np.log(data["shares"] / outside)
    data["rho"] = np.log(data["shares"] / nest_totals)
    oracle = IV2SLS.from_formula(
        f"logit_delta ~ 0 + [prices + rho ~ {NEVO_INSTRUMENTS} + nest_count]", data
    ).fit(cov_type="robust", debiased=False)
    ours = nested_model.fit()
    np.testing.assert_allclose(ours.params, oracle.params[["prices", "rho"]], rtol=1e-8)
    np.testing.assert_allclose(ours.bse, oracle.std_errors[["prices", "rho"]], rtol=1e-8)


@pytest.mark.data
def test_predicted_shares_reproduce_observed_shares(nested_two_step, nevo_products):
    np.testing.assert_allclose(nested_two_step.predict(), nevo_products["shares"], rtol=1e-10)


@pytest.mark.data
def test_delta_removes_the_within_nest_term(nested_two_step, nevo_products):
    rho = nested_two_step.params["rho"]
    np.testing.assert_allclose(nested_two_step.delta, _nested_delta(nevo_products, rho), rtol=1e-12)


@pytest.mark.data
def test_counterfactual_shares_equal_closed_form_and_pyblp(
    nested_two_step, pyblp_two_step, nevo_products, first_market
):
    market = nevo_products[nevo_products["market_ids"] == first_market].copy()
    market.loc[market.index[0], "prices"] /= 2
    predicted = nested_two_step.predict(market)

    rho, alpha = nested_two_step.params["rho"], nested_two_step.params["prices"]
    delta = _nested_delta(nevo_products, rho).loc[market.index]
    delta = delta + alpha * (market["prices"] - nevo_products["prices"].loc[market.index])
    expected = _nested_shares(delta, market["nesting_ids"], rho)
    np.testing.assert_allclose(predicted, expected, rtol=1e-10)

    oracle = pyblp_two_step.compute_shares(market_id=first_market, prices=market["prices"])
    np.testing.assert_allclose(predicted, oracle[:, 0], rtol=1e-8)
    # Not IIA: products in the same nest lose proportionally more.
    change = predicted / market["shares"] - 1
    same_nest = market["nesting_ids"] == market["nesting_ids"].iloc[0]
    assert change[same_nest].iloc[1:].max() < change[~same_nest].min()


@pytest.mark.data
def test_elasticities_equal_closed_form_and_pyblp(
    nested_two_step, pyblp_two_step, nevo_products, first_market
):
    market = nevo_products[nevo_products["market_ids"] == first_market]
    alpha, rho = nested_two_step.params["prices"], nested_two_step.params["rho"]
    prices, shares = market["prices"].to_numpy(), market["shares"].to_numpy()
    nests = market["nesting_ids"].to_numpy()
    same = nests[:, None] == nests[None, :]
    within = shares / np.array([shares[nests == h].sum() for h in nests])
    expected = (
        -alpha * prices[None, :] * (shares[None, :] + same * rho / (1 - rho) * within[None, :])
    )
    np.fill_diagonal(expected, alpha * prices * (1 / (1 - rho) - rho / (1 - rho) * within - shares))
    elasticities = nested_two_step.elasticities(first_market)
    np.testing.assert_allclose(elasticities.to_numpy(), expected, rtol=1e-10)
    oracle = pyblp_two_step.compute_elasticities(market_id=first_market)
    np.testing.assert_allclose(elasticities.to_numpy(), oracle, rtol=1e-8)
    assert (np.diag(elasticities) < 0).all()


@pytest.mark.data
def test_diversion_ratios_equal_pyblp_and_rows_sum_to_one(
    nested_two_step, pyblp_two_step, first_market
):
    diversion = nested_two_step.diversion_ratios(first_market)
    np.testing.assert_allclose(diversion.sum(axis=1), 1.0, rtol=1e-12)
    oracle = pyblp_two_step.compute_diversion_ratios(market_id=first_market)
    np.testing.assert_allclose(diversion.to_numpy(), oracle, rtol=1e-8)


@pytest.mark.data
def test_long_run_diversion_ratios_equal_removal_by_hand_and_pyblp(
    nested_two_step, pyblp_two_step, nevo_products, first_market
):
    market = nevo_products[nevo_products["market_ids"] == first_market]
    rho = nested_two_step.params["rho"]
    delta = _nested_delta(nevo_products, rho).loc[market.index].to_numpy()
    nests = market["nesting_ids"].to_numpy()
    shares = market["shares"].to_numpy()
    expected = np.zeros((shares.size, shares.size))
    for j in range(shares.size):
        keep = np.arange(shares.size) != j
        after = _nested_shares(delta[keep], nests[keep], rho)
        expected[j, keep] = (after - shares[keep]) / shares[j]
        expected[j, j] = ((1 - after.sum()) - (1 - shares.sum())) / shares[j]
    diversion = nested_two_step.long_run_diversion_ratios(first_market)
    np.testing.assert_allclose(diversion.to_numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(diversion.sum(axis=1), 1.0, rtol=1e-12)
    oracle = pyblp_two_step.compute_long_run_diversion_ratios(market_id=first_market)
    np.testing.assert_allclose(diversion.to_numpy(), oracle, rtol=1e-8)


@pytest.mark.data
def test_one_rho_per_nest_equals_iv_with_nest_specific_within_shares(nevo_products):
    data = nevo_products.copy()
    # These instruments put both nests' rho above one; the estimator says so.
    with pytest.warns(ConvergenceWarning, match=r"rho \[1\.0727, 1\.3294\] lies outside"):
        results = BLPNestedLogit.from_formula(FORMULA, data).fit(rho="nest")
    outside = 1.0 - data.groupby("market_ids")["shares"].transform("sum")
    nest_totals = data.groupby(["market_ids", "nesting_ids"])["shares"].transform("sum")
    data["logit_delta"] = np.log(data["shares"] / outside)
    log_within = np.log(data["shares"] / nest_totals)
    data["rho0"] = log_within * (data["nesting_ids"] == 0)
    data["rho1"] = log_within * (data["nesting_ids"] == 1)
    oracle = IV2SLS.from_formula(
        f"logit_delta ~ 0 + [prices + rho0 + rho1 ~ {NEVO_INSTRUMENTS} + nest_count]", data
    ).fit(cov_type="robust", debiased=False)
    assert list(results.params.index) == ["prices", "rho[0]", "rho[1]"]
    np.testing.assert_allclose(
        results.params.to_numpy(), oracle.params[["prices", "rho0", "rho1"]], rtol=1e-8
    )
    np.testing.assert_allclose(
        results.bse.to_numpy(), oracle.std_errors[["prices", "rho0", "rho1"]], rtol=1e-8
    )
    np.testing.assert_allclose(results.predict(), data["shares"], rtol=1e-10)


@pytest.mark.data
def test_nested_logit_with_absorbed_market_effects_equals_pyblp(pyblp, nevo_products):
    # (Product effects would absorb nest_count: every market has the same products.)
    results = BLPNestedLogit.from_formula(
        FORMULA, nevo_products.copy(), absorb="C(market_ids)"
    ).fit(method="2s")
    problem = pyblp.Problem(pyblp.Formulation("0 + prices", absorb="C(market_ids)"), nevo_products)
    oracle = problem.solve(rho=0.7)
    np.testing.assert_allclose(results.params["prices"], oracle.beta[0, 0], rtol=1e-6)
    np.testing.assert_allclose(results.params["rho"], oracle.rho[0, 0], rtol=1e-6)
    np.testing.assert_allclose(results.bse["prices"], oracle.beta_se[0, 0], rtol=1e-6)
    np.testing.assert_allclose(results.bse["rho"], oracle.rho_se[0, 0], rtol=1e-6)
    np.testing.assert_allclose(results.predict(), nevo_products["shares"], rtol=1e-10)


# ---------------------------------------------------------------- simulated data (no files)

SIMULATED_FORMULA = "shares ~ 1 + x + [prices ~ z1 + z2 + nest_count + nest_z1]"


def test_simulated_nested_logit_recovers_the_true_parameters(simulated_nested_products):
    results = BLPNestedLogit.from_formula(SIMULATED_FORMULA, simulated_nested_products).fit(
        method="2s"
    )
    truth = pd.Series({"Intercept": 3.0, "x": 1.0, "prices": -2.0, "rho": 0.6})
    z_scores = (results.params - truth) / results.bse
    assert (z_scores.abs() < 4).all(), z_scores


def test_simulated_nested_logit_predictions_in_unbalanced_markets(simulated_nested_products):
    data = simulated_nested_products
    assert data.groupby("market_ids").size().nunique() > 3  # markets of different sizes
    results = BLPNestedLogit.from_formula(SIMULATED_FORMULA, data).fit()
    np.testing.assert_allclose(results.predict(), data["shares"], rtol=1e-10)

    rho, alpha = results.params["rho"], results.params["prices"]
    for market_id in ("m00", "m07", "m11"):
        market = data[data["market_ids"] == market_id].copy()
        market["prices"] += 0.25
        delta = _nested_delta(data, rho).loc[market.index] + alpha * 0.25
        expected = _nested_shares(delta, market["nesting_ids"], rho)
        np.testing.assert_allclose(results.predict(market), expected, rtol=1e-10)


def test_simulated_nested_logit_elasticities_equal_numerical_derivatives(
    simulated_nested_products,
):
    data = simulated_nested_products
    results = BLPNestedLogit.from_formula(SIMULATED_FORMULA, data).fit()
    market = data[data["market_ids"] == "m03"]
    rho, alpha = results.params["rho"], results.params["prices"]
    delta = _nested_delta(data, rho).loc[market.index].to_numpy()
    prices = market["prices"].to_numpy()
    nests = market["nesting_ids"].to_numpy()
    base = _nested_shares(delta, nests, rho)
    step = 1e-6
    expected = np.empty((prices.size, prices.size))
    for k in range(prices.size):
        up, down = delta.copy(), delta.copy()
        up[k] += alpha * step * prices[k]
        down[k] -= alpha * step * prices[k]
        derivative = np.log(_nested_shares(up, nests, rho)) - np.log(
            _nested_shares(down, nests, rho)
        )
        expected[:, k] = derivative / (2 * step)
    np.testing.assert_allclose(
        results.elasticities("m03").to_numpy(), expected, rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(results.predict(market), base, rtol=1e-10)
