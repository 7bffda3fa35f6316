"""Plain logit (Mixtape exercise 1): estimates, counterfactuals, elasticities and diversion.

Oracles: statsmodels OLS, closed-form logit formulas written out here, and pyblp.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from conftest import NOT_INSTRUMENTED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blpmodels import BLPLogit

MARKET = "C01Q2"


def _logit_delta(data: pd.DataFrame) -> pd.Series:
    outside = 1.0 - data.groupby("market_ids")["shares"].transform("sum")
    return np.log(data["shares"] / outside)


def _logit_shares(delta: pd.Series, markets: pd.Series) -> pd.Series:
    exp_delta = np.exp(delta)
    return exp_delta / (1.0 + exp_delta.groupby(markets.to_numpy()).transform("sum"))


def _market(data: pd.DataFrame, market: str = MARKET) -> pd.DataFrame:
    return data[data["market_ids"] == market].copy()


@pytest.fixture(scope="module")
def pyblp_iv_fe(mixtape_products):
    """pyblp's exercise-1 question-6 results (IV with absorbed market and product effects)."""
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    frame = mixtape_products.assign(demand_instruments0=mixtape_products["price_instrument"])
    problem = pyblp.Problem(
        pyblp.Formulation("0 + prices", absorb="C(market_ids) + C(product_ids)"), frame
    )
    return problem.solve(method="1s")


# ---------------------------------------------------------------- data and estimates


@pytest.mark.data
def test_mixtape_products_have_expected_shape_and_outside_shares(mixtape_products):
    data = mixtape_products
    assert data.shape[0] == 2256
    assert data["market_ids"].nunique() == 94
    assert data["product_ids"].nunique() == 24
    outside = 1.0 - data.groupby("market_ids")["shares"].sum()
    assert outside.min() == pytest.approx(0.305, abs=5e-4)
    assert outside.max() == pytest.approx(0.815, abs=5e-4)
    np.testing.assert_allclose(
        data["shares"], data["servings_sold"] / (data["city_population"] * 90), rtol=1e-14
    )


@pytest.mark.data
def test_ols_logit_equals_statsmodels_ols_with_hc0(products, ols_results):
    products["logit_delta"] = _logit_delta(products)
    oracle = smf.ols("logit_delta ~ prices + mushy", products).fit(cov_type="HC0")
    assert ols_results.params["prices"] == pytest.approx(-7.480, abs=5e-4)
    names = ["Intercept", "prices", "mushy"]
    assert list(ols_results.params.index) == names
    np.testing.assert_allclose(ols_results.params, oracle.params[names], rtol=1e-10)
    np.testing.assert_allclose(ols_results.bse, oracle.bse[names], rtol=1e-10)
    np.testing.assert_allclose(ols_results.resid, oracle.resid, atol=1e-10)
    assert ols_results.nobs == oracle.nobs


@pytest.mark.data
def test_robust_is_an_alias_of_hc0(products, ols_results):
    # OLS on purpose (exercise 1, question 3): the unused price_instrument is warned about.
    with pytest.warns(UserWarning, match=NOT_INSTRUMENTED):
        model = BLPLogit.from_formula("shares ~ 1 + prices + mushy", products)
    robust = model.fit(cov_type="robust")
    np.testing.assert_array_equal(robust.bse, ols_results.bse)


@pytest.mark.data
def test_exercise_one_price_coefficients(fe_results, iv_fe_results):
    assert fe_results.params["prices"] == pytest.approx(-28.617866, abs=5e-7)
    assert iv_fe_results.params["prices"] == pytest.approx(-30.599521, abs=5e-7)
    assert iv_fe_results.bse["prices"] == pytest.approx(0.967837, abs=5e-7)


@pytest.mark.data
def test_structural_errors_and_delta_equal_pyblp(iv_fe_results, pyblp_iv_fe, mixtape_products):
    np.testing.assert_allclose(iv_fe_results.params["prices"], pyblp_iv_fe.beta[0, 0], rtol=1e-10)
    np.testing.assert_allclose(iv_fe_results.xi, pyblp_iv_fe.xi[:, 0], atol=1e-10)
    np.testing.assert_allclose(iv_fe_results.delta, _logit_delta(mixtape_products), rtol=1e-14)


# ---------------------------------------------------------------- predictions


@pytest.mark.data
def test_predict_at_estimation_data_reproduces_observed_shares(iv_fe_results, mixtape_products):
    predicted = iv_fe_results.predict()
    np.testing.assert_allclose(predicted, mixtape_products["shares"], rtol=1e-10, atol=1e-14)
    assert predicted.index.equals(mixtape_products.index)
    one_market = iv_fe_results.predict(market_id=MARKET)
    np.testing.assert_allclose(one_market, _market(mixtape_products)["shares"], rtol=1e-10)


@pytest.mark.data
def test_halving_f1b04_price_in_c01q2(iv_fe_results, mixtape_products):
    counterfactual = _market(mixtape_products)
    target = counterfactual["product_ids"] == "F1B04"
    counterfactual.loc[target, "prices"] /= 2
    new_shares = iv_fe_results.predict(counterfactual)
    change = 100 * (new_shares / counterfactual["shares"] - 1)
    assert change[target].iloc[0] == pytest.approx(223.6, abs=0.05)
    others = change[~target]
    # IIA: every other product loses the same percentage.
    np.testing.assert_allclose(others, others.iloc[0], rtol=1e-10)
    assert others.iloc[0] == pytest.approx(-1.45, abs=0.005)

    # Closed-form logit oracle: delta changes by alpha * (p_new - p) for F1B04 only.
    alpha = iv_fe_results.params["prices"]
    delta = _logit_delta(mixtape_products).loc[counterfactual.index]
    original = mixtape_products["prices"].loc[counterfactual.index]
    delta_new = delta + alpha * (counterfactual["prices"] - original)
    expected = _logit_shares(delta_new, counterfactual["market_ids"])
    np.testing.assert_allclose(new_shares, expected, rtol=1e-12)


@pytest.mark.data
def test_four_cent_cut_in_c01q1_from_the_vignette(iv_fe_results, mixtape_products):
    counterfactual = _market(mixtape_products, "C01Q1")
    target = counterfactual["product_ids"] == "F1B04"
    counterfactual.loc[target, "prices"] -= 0.04
    change = 100 * (iv_fe_results.predict(counterfactual) / counterfactual["shares"] - 1)
    assert change[target].iloc[0] == pytest.approx(230.2, abs=0.05)
    np.testing.assert_allclose(change[~target], -2.895, atol=5e-4)  # "-2.9" rounded


@pytest.mark.data
def test_counterfactual_shares_equal_pyblp_compute_shares(
    iv_fe_results, pyblp_iv_fe, mixtape_products
):
    counterfactual = _market(mixtape_products)
    counterfactual.loc[counterfactual["product_ids"] == "F1B04", "prices"] /= 2
    oracle = pyblp_iv_fe.compute_shares(market_id=MARKET, prices=counterfactual["prices"])
    np.testing.assert_allclose(iv_fe_results.predict(counterfactual), oracle[:, 0], rtol=1e-10)


@pytest.mark.data
def test_predict_on_shuffled_rows_of_several_markets_keeps_the_row_labels(
    iv_fe_results, mixtape_products
):
    changed = mixtape_products[mixtape_products["market_ids"].isin(["C01Q1", "C03Q2"])]
    changed = changed.sample(frac=1.0, random_state=3).copy()
    changed["prices"] *= 0.9
    predicted = iv_fe_results.predict(changed)
    assert predicted.index.equals(changed.index)
    alpha = iv_fe_results.params["prices"]
    delta = _logit_delta(mixtape_products).loc[changed.index]
    delta_new = delta + alpha * (changed["prices"] - mixtape_products["prices"].loc[changed.index])
    expected = _logit_shares(delta_new, changed["market_ids"])
    np.testing.assert_allclose(predicted, expected, rtol=1e-12)


@pytest.mark.data
def test_changing_exogenous_characteristics_moves_shares(iv_results, mixtape_products):
    results = iv_results  # shares ~ 1 + mushy + [prices ~ price_instrument]
    counterfactual = _market(mixtape_products)
    counterfactual["mushy"] = 1 - counterfactual["mushy"]
    delta = _logit_delta(mixtape_products).loc[counterfactual.index]
    delta_new = delta + results.params["mushy"] * (
        counterfactual["mushy"] - mixtape_products["mushy"].loc[counterfactual.index]
    )
    expected = _logit_shares(delta_new, counterfactual["market_ids"])
    np.testing.assert_allclose(results.predict(counterfactual), expected, rtol=1e-12)


@pytest.mark.data
def test_results_do_not_change_when_the_callers_frame_is_edited(products):
    results = BLPLogit.from_formula(
        "shares ~ 1 + mushy + [prices ~ price_instrument]", products
    ).fit()
    shares = results.predict().copy()
    elasticities = results.elasticities(MARKET).copy()
    products.loc[products.index[24], "prices"] = 100.0
    products["shares"] = 0.01
    np.testing.assert_array_equal(results.predict(), shares)
    np.testing.assert_array_equal(results.elasticities(MARKET), elasticities)


def test_predict_works_without_product_ids(simulated_products):
    data = simulated_products.assign(const=1.0)
    results = BLPLogit(
        data["shares"],
        data[["const"]],
        data[["prices"]],
        data[["z1"]],
        market_ids=data["market_ids"],
    ).fit()
    # Array-interface models read the changed columns by name; rows match by position.
    market = data[data["market_ids"] == "m01"].copy()
    market["prices"] += 0.5
    delta = _logit_delta(data).loc[market.index] + results.params["prices"] * 0.5
    expected = _logit_shares(delta, market["market_ids"])
    np.testing.assert_allclose(results.predict(market), expected, rtol=1e-12)


# ---------------------------------------------------------------- elasticities and diversion


def _closed_form_elasticities(alpha: float, prices: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Logit: d log s_j / d log p_k = alpha p_k (1{j=k} - s_k)."""
    return alpha * prices[None, :] * (np.eye(prices.size) - shares[None, :])


@pytest.mark.data
def test_elasticities_equal_the_logit_closed_form(iv_fe_results, mixtape_products):
    market = _market(mixtape_products)
    elasticities = iv_fe_results.elasticities(MARKET)
    expected = _closed_form_elasticities(
        iv_fe_results.params["prices"], market["prices"].to_numpy(), market["shares"].to_numpy()
    )
    np.testing.assert_allclose(elasticities.to_numpy(), expected, rtol=1e-10, atol=1e-12)
    assert list(elasticities.index) == list(market["product_ids"])
    assert list(elasticities.columns) == list(market["product_ids"])
    assert (np.diag(elasticities) < 0).all()
    off_diagonal = elasticities.to_numpy()[~np.eye(len(market), dtype=bool)]
    assert (off_diagonal > 0).all()


@pytest.mark.data
def test_elasticities_for_all_markets_are_stacked_by_market(iv_fe_results, mixtape_products):
    stacked = iv_fe_results.elasticities()
    assert stacked.shape == (2256, 24)
    assert stacked.index.names == ["market_ids", "product_ids"]
    for market in ("C01Q1", "C47Q2"):
        rows = _market(mixtape_products, market)
        expected = _closed_form_elasticities(
            iv_fe_results.params["prices"], rows["prices"].to_numpy(), rows["shares"].to_numpy()
        )
        np.testing.assert_allclose(stacked.loc[market].to_numpy(), expected, rtol=1e-10)


@pytest.mark.data
def test_elasticities_at_changed_prices_use_the_new_shares(iv_fe_results, mixtape_products):
    counterfactual = _market(mixtape_products)
    counterfactual.loc[counterfactual["product_ids"] == "F1B04", "prices"] /= 2
    new_shares = iv_fe_results.predict(counterfactual).to_numpy()
    expected = _closed_form_elasticities(
        iv_fe_results.params["prices"], counterfactual["prices"].to_numpy(), new_shares
    )
    actual = iv_fe_results.elasticities(MARKET, data=counterfactual)
    np.testing.assert_allclose(actual.to_numpy(), expected, rtol=1e-10)


@pytest.mark.data
def test_elasticities_with_a_price_transform_use_the_chain_rule(mixtape_products):
    # The squared price is endogenous too: it is instrumented (issue 18 refuses it outside).
    results = BLPLogit.from_formula(
        "shares ~ 1 + mushy + [prices + I(prices ** 2) ~ price_instrument"
        " + I(price_instrument ** 2)]",
        mixtape_products,
    ).fit()
    market = _market(mixtape_products)
    prices, shares = market["prices"].to_numpy(), market["shares"].to_numpy()
    slope = results.params["prices"] + 2 * results.params["I(prices ** 2)"] * prices
    expected = (slope * prices)[None, :] * (np.eye(prices.size) - shares[None, :])
    np.testing.assert_allclose(results.elasticities(MARKET).to_numpy(), expected, rtol=1e-8)


@pytest.mark.data
def test_elasticities_equal_pyblp(iv_fe_results, pyblp_iv_fe):
    oracle = pyblp_iv_fe.compute_elasticities(market_id=MARKET)
    np.testing.assert_allclose(iv_fe_results.elasticities(MARKET), oracle, rtol=1e-10)


def _closed_form_diversion(shares: np.ndarray) -> np.ndarray:
    """Logit: D_jk = s_k / (1 - s_j), outside good s_0 / (1 - s_j) on the diagonal."""
    diversion = shares[None, :] / (1.0 - shares[:, None])
    np.fill_diagonal(diversion, (1.0 - shares.sum()) / (1.0 - shares))
    return diversion


@pytest.mark.data
def test_diversion_ratios_rows_sum_to_one_and_match_closed_form(iv_fe_results, mixtape_products):
    shares = _market(mixtape_products)["shares"].to_numpy()
    diversion = iv_fe_results.diversion_ratios(MARKET)
    np.testing.assert_allclose(diversion.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(diversion.to_numpy(), _closed_form_diversion(shares), rtol=1e-10)


@pytest.mark.data
def test_long_run_diversion_ratios_rows_sum_to_one_and_match_closed_form(
    iv_fe_results, mixtape_products
):
    shares = _market(mixtape_products)["shares"].to_numpy()
    diversion = iv_fe_results.long_run_diversion_ratios(MARKET)
    np.testing.assert_allclose(diversion.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(diversion.to_numpy(), _closed_form_diversion(shares), rtol=1e-10)


@pytest.mark.data
def test_diversion_ratios_equal_pyblp(iv_fe_results, pyblp_iv_fe):
    np.testing.assert_allclose(
        iv_fe_results.diversion_ratios(MARKET),
        pyblp_iv_fe.compute_diversion_ratios(market_id=MARKET),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        iv_fe_results.long_run_diversion_ratios(MARKET),
        pyblp_iv_fe.compute_long_run_diversion_ratios(market_id=MARKET),
        rtol=1e-10,
    )


@pytest.mark.data
def test_logit_probabilities_are_the_shares(iv_fe_results, mixtape_products):
    probabilities = iv_fe_results.probabilities(MARKET)
    assert probabilities.shape == (24, 1)
    np.testing.assert_allclose(
        probabilities.iloc[:, 0], _market(mixtape_products)["shares"], rtol=1e-10
    )


def test_simulated_data_recover_the_true_price_coefficient(simulate):
    data = simulate(n_markets=400, n_products=8, seed=4)
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2]", data).fit(method="2s")
    truth = pd.Series({"Intercept": -1.0, "x": 1.0, "prices": -2.0})
    z_scores = (results.params - truth) / results.bse
    assert (z_scores.abs() < 4).all(), z_scores
    # OLS is biased by the price endogeneity built into the simulation.
    ols = BLPLogit.from_formula("shares ~ 1 + x + prices", data).fit()
    assert abs((ols.params["prices"] + 2.0) / ols.bse["prices"]) > 4


@settings(
    max_examples=30,
    deadline=None,
    # ``simulate`` is a pure function, safe to share between examples.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    n_markets=st.integers(min_value=3, max_value=8),
    n_products=st.integers(min_value=1, max_value=5),
    drop=st.sampled_from([0.0, 0.4]),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_post_estimation_identities_hold_in_uneven_markets(
    simulate, n_markets, n_products, drop, seed
):
    data = simulate(n_markets, n_products, seed=seed, drop=drop)
    results = BLPLogit.from_formula("shares ~ 1 + prices", data).fit()
    np.testing.assert_allclose(results.predict(), data["shares"], rtol=1e-10)
    alpha = results.params["prices"]
    for market_id in data["market_ids"].unique()[:3]:
        market = data[data["market_ids"] == market_id]
        shares, prices = market["shares"].to_numpy(), market["prices"].to_numpy()
        np.testing.assert_allclose(
            results.elasticities(market_id).to_numpy(),
            _closed_form_elasticities(alpha, prices, shares),
            rtol=1e-9,
            atol=1e-12,
        )
        for diversion in (
            results.diversion_ratios(market_id),
            results.long_run_diversion_ratios(market_id),
        ):
            np.testing.assert_allclose(diversion.sum(axis=1), 1.0, rtol=1e-10)
            np.testing.assert_allclose(
                diversion.to_numpy(), _closed_form_diversion(shares), rtol=1e-9
            )
