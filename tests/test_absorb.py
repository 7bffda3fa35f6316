"""Absorbed fixed effects: pyhdfe residualization against explicit dummy-variable regressions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from linearmodels.iv import IV2SLS

from blpmodels import BLPLogit
from blpmodels.data.absorb import Absorber, parse_absorb
from blpmodels.exceptions import BLPInputError

FIXED_EFFECTS = "C(market_ids) + C(product_ids)"


def _dummies(ids: pd.DataFrame) -> np.ndarray:
    """Full set of dummies for every column of ids (rank deficient for several columns)."""
    return np.column_stack(
        [pd.get_dummies(ids[column].astype(str)).to_numpy(float) for column in ids.columns]
    )


def _project_out(dummies: np.ndarray, values: np.ndarray) -> np.ndarray:
    coefficients = np.linalg.lstsq(dummies, values, rcond=None)[0]
    return values - dummies @ coefficients


def _unbalanced_ids(seed: int = 1, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "m": rng.integers(0, 25, size=n).astype(str),
            "p": rng.choice([f"p{k}" for k in range(12)], size=n),
            "g": rng.integers(0, 3, size=n),
        }
    )


def _logit_delta(data: pd.DataFrame) -> pd.Series:
    outside = 1.0 - data.groupby("market_ids")["shares"].transform("sum")
    return np.log(data["shares"] / outside)


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("absorb", "expected"),
    [
        ("C(market_ids) + C(product_ids)", [("market_ids",), ("product_ids",)]),
        ("market_ids", [("market_ids",)]),
        ("C( market_ids )+product_ids", [("market_ids",), ("product_ids",)]),
        ("C(market_ids):C(nesting_ids)", [("market_ids", "nesting_ids")]),
        ("0 + C(market_ids)", [("market_ids",)]),
    ],
)
def test_parse_absorb_reads_terms_and_interactions(absorb, expected):
    assert parse_absorb(absorb) == expected


@pytest.mark.parametrize(
    ("absorb", "fragment"),
    [
        ("market_ids*product_ids", "cannot read"),
        ("C(market_ids) + np.log(x)", "cannot read"),
        ("C(market_ids) + market_ids", "appears twice"),
    ],
)
def test_parse_absorb_rejects_unreadable_terms(absorb, fragment):
    with pytest.raises(BLPInputError, match=fragment):
        parse_absorb(absorb)


# ---------------------------------------------------------------- residualization


def test_one_way_absorption_is_group_demeaning():
    ids = _unbalanced_ids()
    values = np.random.default_rng(2).normal(size=(len(ids), 3))
    absorber = Absorber.from_formula("C(m)", ids)
    expected = (
        values - pd.DataFrame(values).groupby(ids["m"].to_numpy()).transform("mean").to_numpy()
    )
    np.testing.assert_allclose(absorber.residualize(values), expected, atol=1e-12)
    assert absorber.method == "within"


@pytest.mark.parametrize("method", [None, "map", "lsmr", "sw", "dummy"])
def test_two_way_absorption_equals_dummy_projection_on_unbalanced_panel(method):
    ids = _unbalanced_ids()
    values = np.random.default_rng(3).normal(size=(len(ids), 2))
    absorber = Absorber.from_formula("C(m) + C(p)", ids, method=method)
    expected = _project_out(_dummies(ids[["m", "p"]]), values)
    np.testing.assert_allclose(absorber.residualize(values), expected, atol=1e-10)
    # A vector keeps its shape.
    np.testing.assert_allclose(absorber.residualize(values[:, 0]), expected[:, 0], atol=1e-10)


@pytest.mark.parametrize("shuffled", [False, True])
def test_two_way_absorption_of_a_balanced_panel_equals_dummy_projection(shuffled):
    """Every product in every market (rows in any order): demeaned in one step, without
    pyhdfe, to the dummy-variable projection."""
    ids = pd.DataFrame({"m": np.repeat(np.arange(7), 5), "p": np.tile(list("abcde"), 7)})
    if shuffled:
        ids = ids.sample(frac=1.0, random_state=0).reset_index(drop=True)
    values = np.random.default_rng(5).normal(3.0, 2.0, size=(len(ids), 3))
    absorber = Absorber.from_formula("C(m) + C(p)", ids)
    assert absorber.grid is not None
    expected = _project_out(_dummies(ids[["m", "p"]]), values)
    np.testing.assert_allclose(absorber.residualize(values), expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(absorber.residualize(values[:, 1]), expected[:, 1], atol=1e-13)
    # A missing pair makes the panel unbalanced: pyhdfe's projections again.
    assert Absorber.from_formula("C(m) + C(p)", ids.iloc[1:]).grid is None


def test_interaction_term_absorbs_the_crossed_groups():
    ids = _unbalanced_ids()
    values = np.random.default_rng(4).normal(size=len(ids))
    absorber = Absorber.from_formula("C(m):C(g)", ids)
    crossed = pd.DataFrame({"mg": ids["m"] + "_" + ids["g"].astype(str)})
    np.testing.assert_allclose(
        absorber.residualize(values), _project_out(_dummies(crossed), values), atol=1e-12
    )
    assert absorber.names == ["m:g"]


def test_degrees_of_freedom_count_connected_two_way_effects():
    ids = pd.DataFrame({"m": np.repeat(np.arange(6), 4), "p": np.tile(np.arange(4), 6)})
    absorber = Absorber.from_formula("C(m) + C(p)", ids)
    assert absorber.degrees == 6 + 4 - 1
    assert absorber.n_levels == (6, 4)


def test_recover_splits_the_sum_with_later_dimensions_zero_at_their_first_level():
    ids = _unbalanced_ids()
    rng = np.random.default_rng(5)
    market_effect = dict(zip(sorted(ids["m"].unique()), rng.normal(size=25), strict=True))
    product_effect = dict(zip(sorted(ids["p"].unique()), rng.normal(size=12), strict=True))
    total = ids["m"].map(market_effect).to_numpy() + ids["p"].map(product_effect).to_numpy()
    frame = Absorber.from_formula("C(m) + C(p)", ids).recover(total)
    np.testing.assert_allclose(frame.sum(axis=1), total, atol=1e-10)
    first_product = ids["p"].iloc[0]
    np.testing.assert_allclose(frame["p"][ids["p"] == first_product], 0.0, atol=1e-12)
    # With the first product's effect at zero, the split is unique: compare with the truth.
    shift = product_effect[first_product]
    np.testing.assert_allclose(
        frame["p"], ids["p"].map(product_effect).to_numpy() - shift, atol=1e-10
    )
    np.testing.assert_allclose(
        frame["m"], ids["m"].map(market_effect).to_numpy() + shift, atol=1e-10
    )


def test_single_level_dimension_is_rejected_with_several_dimensions():
    ids = pd.DataFrame({"m": ["a", "b", "c"], "one": ["x", "x", "x"]})
    with pytest.raises(BLPInputError, match="'one' has a single level"):
        Absorber.from_formula("C(m) + C(one)", ids)


def test_one_dimension_method_cannot_absorb_two():
    ids = _unbalanced_ids()
    with pytest.raises(BLPInputError, match="absorb"):
        Absorber.from_formula("C(m) + C(p)", ids, method="within")


def test_absorb_names_a_missing_column(simulated_products):
    with pytest.raises(BLPInputError, match="no column 'productids'"):
        BLPLogit.from_formula("shares ~ 0 + prices", simulated_products, absorb="C(productids)")


# ---------------------------------------------------------------- models against dummy regressions


@pytest.mark.parametrize("method", [None, "lsmr", "dummy"])
def test_absorbed_logit_equals_dummy_variable_regression_on_unbalanced_data(
    simulated_products, method
):
    data = simulated_products.drop(index=np.arange(3, len(simulated_products), 7)).copy()
    data["logit_delta"] = _logit_delta(data)
    results = BLPLogit.from_formula(
        "shares ~ 0 + x + prices", data, absorb=FIXED_EFFECTS, absorb_method=method
    ).fit(cov_type="HC0")
    dummy = smf.ols("logit_delta ~ 0 + x + prices + C(market_ids) + C(product_ids)", data).fit(
        cov_type="HC0"
    )
    np.testing.assert_allclose(results.params, dummy.params[["x", "prices"]], rtol=1e-8)
    # HC0 without small-sample corrections is invariant to partialling out (FWL).
    np.testing.assert_allclose(results.bse, dummy.bse[["x", "prices"]], rtol=1e-8)
    np.testing.assert_allclose(results.xi, dummy.resid, atol=1e-8)
    contribution = dummy.fittedvalues - data[["x", "prices"]] @ dummy.params[["x", "prices"]]
    np.testing.assert_allclose(results.fixed_effects["total"], contribution, atol=1e-8)


@pytest.mark.data
def test_fixed_effects_logit_equals_dummy_regression_on_mixtape(products, fe_results):
    products["logit_delta"] = _logit_delta(products)
    dummy = smf.ols("logit_delta ~ 0 + prices + C(market_ids) + C(product_ids)", products).fit(
        cov_type="HC0"
    )
    assert fe_results.params["prices"] == pytest.approx(-28.617866, abs=5e-7)
    np.testing.assert_allclose(fe_results.params["prices"], dummy.params["prices"], rtol=1e-8)
    np.testing.assert_allclose(fe_results.bse["prices"], dummy.bse["prices"], rtol=1e-8)
    np.testing.assert_allclose(fe_results.xi, dummy.resid, atol=1e-8)
    contribution = dummy.fittedvalues - products["prices"] * dummy.params["prices"]
    effects = fe_results.fixed_effects
    np.testing.assert_allclose(effects["total"], contribution, atol=1e-8)
    np.testing.assert_allclose(effects["market_ids"] + effects["product_ids"], effects["total"])
    # statsmodels drops the first product (F1B04, also first in data order) and keeps every
    # market: the same normalization as fixed_effects.
    market_coefficients = products["market_ids"].map(
        lambda market: dummy.params[f"C(market_ids)[{market}]"]
    )
    np.testing.assert_allclose(effects["market_ids"], market_coefficients, atol=1e-8)
    assert products["product_ids"].iloc[0] == "F1B04"
    np.testing.assert_allclose(effects["product_ids"][products.product_ids == "F1B04"], 0.0)
    # fittedvalues are X1 beta plus the fixed effects.
    np.testing.assert_allclose(fe_results.fittedvalues, dummy.fittedvalues, atol=1e-8)


@pytest.mark.data
@pytest.mark.parametrize(
    ("cov_type", "linearmodels_options"),
    [
        ("robust", {"cov_type": "robust"}),
        ("unadjusted", {"cov_type": "unadjusted"}),
        ("clustered", {"cov_type": "clustered"}),
    ],
)
def test_iv_with_fixed_effects_equals_linearmodels_with_dummies(
    products, cov_type, linearmodels_options
):
    products["logit_delta"] = _logit_delta(products)
    kwds = {"groups": "product_ids"} if cov_type == "clustered" else None
    results = BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ price_instrument]", products, absorb=FIXED_EFFECTS
    ).fit(cov_type=cov_type, cov_kwds=kwds)
    if cov_type == "clustered":
        linearmodels_options = {**linearmodels_options, "clusters": products["product_ids"]}
    oracle = IV2SLS.from_formula(
        "logit_delta ~ 0 + C(market_ids) + C(product_ids) + [prices ~ price_instrument]",
        products,
    ).fit(debiased=False, **linearmodels_options)
    assert results.params["prices"] == pytest.approx(-30.599521, abs=5e-7)
    np.testing.assert_allclose(results.params["prices"], oracle.params["prices"], rtol=1e-8)
    np.testing.assert_allclose(results.bse["prices"], oracle.std_errors["prices"], rtol=1e-8)
    np.testing.assert_allclose(results.xi, oracle.resids, atol=1e-8)
    dummy_part = (
        oracle.fitted_values["fitted_values"] - products["prices"] * oracle.params["prices"]
    )
    np.testing.assert_allclose(results.fixed_effects["total"], dummy_part, atol=1e-8)


@pytest.mark.data
def test_summary_and_results_report_absorbed_degrees(fe_results):
    # 94 market + 24 product effects, connected: 117 degrees of freedom.
    assert fe_results.model.design.absorber.degrees == 117
    assert fe_results.df_resid == 2256 - 1 - 117
    assert "117 degrees of freedom" in str(fe_results.summary())


def test_fixed_effects_are_unavailable_without_absorption(simulated_products):
    results = BLPLogit.from_formula("shares ~ 1 + prices", simulated_products).fit()
    with pytest.raises(AttributeError, match="no fixed effects"):
        results.fixed_effects  # noqa: B018


@pytest.mark.parametrize(
    "formula", ["shares ~ x + [prices ~ z1]", "shares ~ 1 + x + [prices ~ z1]"]
)
def test_predict_on_new_data_when_absorption_dropped_the_constant(simulated_products, formula):
    data = simulated_products
    results = BLPLogit.from_formula(formula, data, absorb="C(market_ids)").fit()
    assert list(results.params.index) == ["x", "prices"]
    market = data[data["market_ids"] == "m03"].copy()
    market["prices"] += 0.3
    alpha = results.params["prices"]
    delta = _logit_delta(data).loc[market.index] + alpha * 0.3
    expected = np.exp(delta) / (1.0 + np.exp(delta).sum())
    np.testing.assert_allclose(results.predict(market), expected, rtol=1e-12)
    prices = market["prices"].to_numpy()
    elasticities = alpha * prices[None, :] * (np.eye(prices.size) - expected.to_numpy()[None, :])
    np.testing.assert_allclose(
        results.elasticities("m03", data=market).to_numpy(), elasticities, rtol=1e-10
    )
