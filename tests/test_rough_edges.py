"""Rough edges a new user hit (issue 12, part 5), each with an independent oracle.

- ``probabilities(market_id, data=...)``: agent choice probabilities at changed prices,
  against P_ji = exp(V_ji) / (1 + Σ_k exp(V_ki)) written out here from the estimates, the
  agents' nodes and income, and δ moved by the linear price term;
- ``agent_coefficients()``: β + Σν + Πd computed here from the named parameters;
- ``j_stat`` and the summary: one rule, the summary prints j_stat's p-value or "n/a";
- ``model.predict``: documented, and its error points to ``results.predict``;
- ``diversion_ratios(outside=True)``: the logit's closed form s_k/(1 − s_j), s_0/(1 − s_j);
- ``BootstrappedResults.predict``: columns labelled by market and product, in data order,
  checked against logit shares written out for each draw;
- the demo prints no NaN and no meaningless GMM objective.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import small_economy

from blpmodels import BLPLogit
from blpmodels.__main__ import demo
from blpmodels.exceptions import BLPInputError


@pytest.fixture(scope="module")
def rc():
    return small_economy.results()


@pytest.fixture(scope="module")
def data():
    return small_economy.economy()


def _by_hand_probabilities(rc, products, agents, market, new_prices):
    """P_ji from the estimates: V_ji = δ̂_j + α Δp_j + p'_j(σ_p ν_i0 + π d_i) + x_j σ_x ν_i1."""
    rows = (products["market_ids"] == market).to_numpy()
    people = agents[agents["market_ids"] == market]
    params = rc.params
    delta = rc.delta.to_numpy()[rows] + params["prices"] * (
        new_prices - products["prices"].to_numpy()[rows]
    )
    price_taste = (
        params["sigma[prices,prices]"] * people["nodes0"].to_numpy()
        + params["pi[prices,income]"] * people["income"].to_numpy()
    )
    x_taste = params["sigma[x,x]"] * people["nodes1"].to_numpy()
    x = products["x"].to_numpy()[rows]
    utility = delta[:, None] + np.outer(new_prices, price_taste) + np.outer(x, x_taste)
    exp = np.exp(utility)
    return exp / (1.0 + exp.sum(axis=0))


def test_probabilities_at_changed_prices_match_a_hand_computation(rc, data):
    products, agents = data
    market = products["market_ids"].iloc[0]
    changed = products.copy()
    in_market = changed["market_ids"] == market
    changed.loc[in_market, "prices"] *= 0.5
    probabilities = rc.probabilities(market, data=changed)
    expected = _by_hand_probabilities(
        rc, products, agents, market, changed.loc[in_market, "prices"].to_numpy()
    )
    assert probabilities.shape == expected.shape == (4, 30)
    np.testing.assert_allclose(probabilities.to_numpy(), expected, rtol=1e-10)
    assert list(probabilities.index) == list(products.loc[in_market, "product_ids"])
    # At the estimation data the same formula gives the estimated probabilities.
    unchanged = _by_hand_probabilities(
        rc, products, agents, market, products.loc[in_market, "prices"].to_numpy()
    )
    np.testing.assert_allclose(rc.probabilities(market).to_numpy(), unchanged, rtol=1e-10)
    # Only that market's rows are needed.
    only = rc.probabilities(market, data=changed[in_market])
    np.testing.assert_allclose(only.to_numpy(), expected, rtol=1e-12)


def test_probabilities_data_must_hold_the_market(rc, data):
    products, _ = data
    first, second = products["market_ids"].unique()[:2]
    with pytest.raises(BLPInputError, match="not in the data passed"):
        rc.probabilities(first, data=products[products["market_ids"] == second])
    with pytest.raises(BLPInputError, match="DataFrame"):
        rc.probabilities(first, data=products.to_numpy())


def test_agent_coefficients_match_a_hand_computation(rc, data):
    _, agents = data
    coefficients = rc.agent_coefficients()
    params = rc.params
    expected_prices = (
        params["prices"]
        + params["sigma[prices,prices]"] * agents["nodes0"]
        + params["pi[prices,income]"] * agents["income"]
    )
    expected_x = params["x"] + params["sigma[x,x]"] * agents["nodes1"]
    assert list(coefficients.columns) == ["prices", "x", "weights"]
    assert coefficients.index.names == ["market_ids", "agent"]
    np.testing.assert_allclose(coefficients["prices"], expected_prices, rtol=1e-12)
    np.testing.assert_allclose(coefficients["x"], expected_x, rtol=1e-12)
    np.testing.assert_allclose(coefficients["weights"], agents["weights"])
    assert list(coefficients.index.get_level_values("market_ids")) == list(agents["market_ids"])
    market = agents["market_ids"].iloc[-1]
    one = rc.agent_coefficients(market)
    np.testing.assert_allclose(one["prices"], expected_prices[agents["market_ids"] == market])
    mean = (expected_prices * agents["weights"]).groupby(agents["market_ids"]).sum().mean()
    assert rc.mean_agent_coefficients()["prices"] == pytest.approx(mean, rel=1e-12)


def test_agent_coefficients_need_random_coefficients(data):
    products, _ = data
    logit = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    with pytest.raises(BLPInputError, match="random-coefficients model"):
        logit.agent_coefficients()


def _summary_header(results) -> dict[str, str]:
    table = results.summary().tables[0]
    cells = [str(cell).strip() for row in table.data for cell in row]
    return dict(zip(cells[0::2], cells[1::2], strict=True))


@pytest.mark.parametrize(
    ("formula", "method", "label"),
    [
        (small_economy.FORMULA, "1s", "J p-value (W≠S⁻¹):"),
        (small_economy.FORMULA, "2s", "Hansen J p-value:"),
        ("shares ~ 1 + x + [prices ~ cost_shifter]", "1s", "J p-value (W≠S⁻¹):"),
    ],
)
def test_summary_prints_what_j_stat_returns(data, formula, method, label):
    products, _ = data
    results = BLPLogit.from_formula(formula, products).fit(method=method)
    stat, df, pvalue = results.j_stat
    assert (stat, df, pvalue) == (results.j_stat.stat, results.j_stat.df, results.j_stat.pval)
    assert stat == results.objective
    header = _summary_header(results)
    assert header["Overid. df:"] == str(df)
    if df == 0:
        assert np.isnan(pvalue) and header[label] == "n/a"
    else:
        assert header[label] == f"{pvalue:.4g}"
    # After one step with overidentifying restrictions the summary says how to read it.
    caution = "J is χ²-distributed only with the efficient weighting matrix"
    assert (caution in str(results.summary())) == (method == "1s" and df > 0)


def test_model_predict_points_to_results_predict(data):
    products, _ = data
    model = BLPLogit.from_formula("shares ~ 1 + x + prices", products)
    assert "results.predict" in BLPLogit.predict.__doc__.replace("BLPResults.predict", "")
    with pytest.raises(NotImplementedError, match=r"results\.predict\(data\)"):
        model.predict(np.zeros(3))
    assert "results.predict" in small_economy.model().predict.__doc__


def test_diversion_to_the_outside_good_has_its_own_column(data):
    products, _ = data
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    market = products["market_ids"].iloc[0]
    shares = products.loc[products["market_ids"] == market, "shares"].to_numpy()
    closed = shares[None, :] / (1 - shares[:, None])  # logit: D_jk = s_k / (1 − s_j)
    np.fill_diagonal(closed, 0.0)
    outside = (1 - shares.sum()) / (1 - shares)
    for method in ("diversion_ratios", "long_run_diversion_ratios"):
        frame = getattr(results, method)(market, outside=True)
        assert list(frame.columns) == [*products["product_ids"].iloc[:4], "outside"]
        np.testing.assert_allclose(frame.drop(columns="outside"), closed, rtol=1e-10)
        np.testing.assert_allclose(frame["outside"], outside, rtol=1e-10)
        np.testing.assert_allclose(frame.sum(axis=1), 1.0, rtol=1e-12)
        # The default keeps the outside good on the diagonal (pyblp's convention).
        default = getattr(results, method)(market)
        np.testing.assert_allclose(np.diag(default), outside, rtol=1e-10)
    with pytest.raises(BLPInputError, match="outside must be True or False"):
        results.diversion_ratios(market, outside="yes")


def test_random_coefficients_diversion_outside_column_is_the_diagonal(rc, data):
    products, _ = data
    market = products["market_ids"].iloc[3]
    default = rc.diversion_ratios(market)
    moved = rc.diversion_ratios(market, outside=True)
    np.testing.assert_allclose(moved["outside"], np.diag(default), rtol=1e-14)
    np.testing.assert_allclose(np.diag(moved.drop(columns="outside")), 0.0)
    np.testing.assert_allclose(moved.sum(axis=1), 1.0, rtol=1e-10)


def test_bootstrap_predictions_are_labelled_by_market_and_product(data):
    products, _ = data
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    bootstrapped = results.bootstrap(draws=4, seed=2)
    # Two markets, rows shuffled: the columns follow the rows of the data passed.
    markets = products["market_ids"].unique()[[2, 5]]
    subset = products[products["market_ids"].isin(markets)].sample(frac=1.0, random_state=0)
    predicted = bootstrapped.predict(subset)
    assert predicted.columns.names == ["market_ids", "product_ids"]
    assert list(predicted.columns) == list(
        zip(subset["market_ids"], subset["product_ids"], strict=True)
    )
    assert predicted.index.name == "draw" and list(predicted.index) == [0, 1, 2, 3]
    # Logit shares at each draw, by hand: δ* = δ̂ + X(β* − β̂), ξ held.
    X = np.column_stack([np.ones(len(products)), products["x"], products["prices"]])
    for draw, params in bootstrapped.params.iterrows():
        delta = results.delta.to_numpy() + X @ (params.to_numpy() - results.params.to_numpy())
        frame = products.assign(e=np.exp(delta))
        frame["s"] = frame["e"] / (1 + frame.groupby("market_ids")["e"].transform("sum"))
        expected = frame.set_index(["market_ids", "product_ids"])["s"]
        np.testing.assert_allclose(
            predicted.loc[draw], expected.loc[list(predicted.columns)], rtol=1e-10
        )


def test_demo_prints_no_nan_and_no_meaningless_objective():
    text = demo(n_markets=30, n_products=5)
    assert "NaN" not in text and "nan" not in text.lower().replace("nanosecond", "")
    assert "(absorbed)" in text
    comparison = text[text.index("Side by side") : text.index("The IV fit")]
    (objective,) = [line for line in comparison.splitlines() if line.startswith("GMM objective")]
    assert objective.split()[2:] == ["0", "(exact", "id.)"] * 3
    (covariance,) = [line for line in comparison.splitlines() if line.startswith("Cov. type")]
    assert covariance.split()[2:] == ["robust"] * 4
    assert "HC0" not in text


def test_probabilities_and_elasticities_agree_on_changed_data(rc, data):
    # ∂s_j/∂p_j from the agent probabilities at the changed data, written out, equals the
    # own-price elasticity elasticities(data=...) reports, times s_j / p_j.
    products, agents = data
    market = products["market_ids"].iloc[1]
    changed = products.copy()
    changed.loc[changed["market_ids"] == market, "prices"] *= 1.2
    probabilities = rc.probabilities(market, data=changed).to_numpy()
    people = agents[agents["market_ids"] == market]
    alpha_i = rc.agent_coefficients(market)["prices"].to_numpy()
    weights = people["weights"].to_numpy()
    shares = probabilities @ weights
    own = (alpha_i * probabilities * (1 - probabilities)) @ weights
    prices = changed.loc[changed["market_ids"] == market, "prices"].to_numpy()
    elasticities = rc.elasticities(market, data=changed)
    np.testing.assert_allclose(np.diag(elasticities), own * prices / shares, rtol=1e-10)
    assert isinstance(elasticities, pd.DataFrame)
