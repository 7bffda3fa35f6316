"""Bad input raises BLPInputError naming the column, market or term, before estimation work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from guards import WorkStarted, forbid

import blpmodels.models.logit
import blpmodels.models.nested_logit
import blpmodels.results.demand
from blpmodels import BLPLogit, BLPNestedLogit
from blpmodels.exceptions import BLPInputError

IV_FORMULA = "shares ~ 1 + x + [prices ~ z1]"
FIXED_EFFECTS = "C(market_ids) + C(product_ids)"


# The stand-ins for estimation work (no_design_work, no_estimation, no_share_evaluation) are
# fixtures of conftest.py.


@pytest.fixture
def fitted(simulated_products):
    return BLPLogit.from_formula(IV_FORMULA, simulated_products).fit()


def _market(data: pd.DataFrame, market: str = "m01") -> pd.DataFrame:
    return data[data["market_ids"] == market].copy()


# ---------------------------------------------------------------- columns and formulas


@pytest.mark.parametrize(
    ("formula", "fragment"),
    [
        ("shares ~ 1 + pricez", "no column 'pricez' (did you mean 'prices'?)"),
        ("shares ~ 1 + x + [prices ~ z_1]", "no column 'z_1'"),
        ("shares ~ 1 + [pricess ~ z1]", "no column 'pricess'"),
        ("share ~ 1 + prices", "no column 'share' (did you mean 'shares'?)"),
        ("shares ~ 1 + np.log(price)", "no column 'price'"),
    ],
)
def test_misspelled_columns_are_named(simulated_products, formula, fragment):
    with pytest.raises(BLPInputError, match=_escaped(fragment)):
        BLPLogit.from_formula(formula, simulated_products)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_missing_market_ids_column(simulated_products):
    data = simulated_products.drop(columns="market_ids")
    with pytest.raises(BLPInputError, match="no column 'market_ids'"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_missing_market_ids_in_the_array_interface(simulated_products):
    data = simulated_products
    with pytest.raises(TypeError):
        BLPLogit(data["shares"], data[["x"]])  # type: ignore[call-arg]
    with pytest.raises(BLPInputError, match="market_ids is required"):
        BLPLogit(data["shares"], data[["x"]], market_ids=None)


def test_missing_market_id_values_are_reported(simulated_products):
    data = simulated_products.astype({"market_ids": object})
    data.loc[7, "market_ids"] = None
    with pytest.raises(BLPInputError, match="'market_ids' has 1 missing values"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_missing_regressor_values_name_the_column_and_market(simulated_products):
    data = simulated_products
    data.loc[data.index[13], "prices"] = np.nan
    market = data.loc[data.index[13], "market_ids"]
    with pytest.raises(BLPInputError, match=f"'prices' has 1 missing values.*market '{market}'"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_non_finite_transformed_terms_are_named(simulated_products):
    data = simulated_products.assign(zero=0.0)
    with pytest.raises(BLPInputError, match=r"np\.log\(zero\)"):
        with np.errstate(divide="ignore"):
            BLPLogit.from_formula("shares ~ 1 + np.log(zero)", data)


def test_data_must_be_a_dataframe(simulated_products):
    with pytest.raises(BLPInputError, match="pandas DataFrame"):
        BLPLogit.from_formula(IV_FORMULA, simulated_products.to_dict("list"))


def test_unknown_keyword_to_from_formula(simulated_products):
    with pytest.raises(BLPInputError, match="unexpected keyword arguments"):
        BLPLogit.from_formula(IV_FORMULA, simulated_products, absorbs="C(market_ids)")


def test_term_both_exogenous_and_instrumented(simulated_products):
    with pytest.raises(BLPInputError, match=r"\['prices'\] are both exogenous and instrumented"):
        BLPLogit.from_formula("shares ~ 1 + prices + [prices ~ z1]", simulated_products)


# ---------------------------------------------------------------- shares


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.0, "column 'shares': 1 rows are <= 0"),
        (-0.1, "column 'shares': 1 rows are <= 0"),
        (1.0, "column 'shares': 1 rows are >= 1"),
        (1.5, "column 'shares': 1 rows are >= 1"),
        (np.nan, "'shares' has 1 missing values"),
    ],
    ids=["zero", "negative", "one", "above_one", "missing"],
)
def test_bad_shares_name_column_and_market(simulated_products, no_design_work, value, message):
    """Shares outside the unit interval or missing."""
    data = simulated_products
    data.loc[data.index[20], "shares"] = value
    market = data.loc[data.index[20], "market_ids"]
    with pytest.raises(BLPInputError, match=f"{message}.*'{market}'"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_infinite_shares_are_rejected(simulated_products, no_design_work):
    data = simulated_products
    data.loc[data.index[3], "shares"] = np.inf
    with pytest.raises(BLPInputError, match="'shares': 1 rows are missing or not finite"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_shares_summing_to_one_name_the_market(simulated_products, no_design_work):
    data = simulated_products
    data.loc[data["market_ids"] == "m05", "shares"] = 0.2  # six products: sum 1.2
    with pytest.raises(BLPInputError, match=r"sum to >= 1 in 1 market.*'m05' \(sum 1\.2\)"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_shares_are_checked_in_the_array_interface(simulated_products):
    data = simulated_products
    shares = data["shares"].to_numpy().copy()
    shares[0] = 0.0
    with pytest.raises(BLPInputError, match="are <= 0 \\(first in market 'm00'\\)"):
        BLPLogit(shares, data[["x"]], market_ids=data["market_ids"])


def test_duplicated_market_product_rows_are_named(simulated_products):
    data = simulated_products
    extra = data.iloc[[8]].assign(shares=1e-6)
    data = pd.concat([data, extra], ignore_index=True)
    market, product = extra["market_ids"].iloc[0], extra["product_ids"].iloc[0]
    with pytest.raises(
        BLPInputError,
        match=f"1 duplicated \\(market, product\\) rows, e.g. market '{market}', "
        f"product '{product}'",
    ):
        BLPLogit.from_formula(IV_FORMULA, data)


# ---------------------------------------------------------------- identification


def test_fewer_instruments_than_instrumented_regressors(simulated_products):
    with pytest.raises(BLPInputError, match=r"2 instrumented regressor\(s\).*only 1 excluded"):
        BLPLogit.from_formula("shares ~ 1 + [prices + x ~ z1]", simulated_products)


def test_characteristic_absorbed_by_product_effects(simulated_products):
    data = simulated_products
    data["mushy"] = (data["product_ids"].isin(["p1", "p4"])).astype(float)
    with pytest.raises(BLPInputError, match="term 'mushy' is absorbed by the fixed effects"):
        BLPLogit.from_formula("shares ~ 0 + prices + mushy", data, absorb=FIXED_EFFECTS)


@pytest.mark.data
def test_mushy_is_absorbed_by_product_effects_in_the_mixtape_data(products):
    with pytest.raises(BLPInputError, match="'mushy' is absorbed by the fixed effects"):
        BLPLogit.from_formula(
            "shares ~ 0 + mushy + [prices ~ price_instrument]", products, absorb=FIXED_EFFECTS
        )


def test_collinear_regressors_are_named(simulated_products):
    data = simulated_products.assign(x2=2 * simulated_products["x"])
    with pytest.raises(BLPInputError, match=r"regressors are collinear: 'x2' is a linear .*'x'"):
        BLPLogit.from_formula("shares ~ 1 + x + x2", data)


def test_collinearity_after_absorption_is_named(simulated_products):
    data = simulated_products
    market_level = data.groupby("market_ids")["x"].transform("mean")
    data["x_shifted"] = data["x"] + market_level
    with pytest.raises(BLPInputError, match="collinear after absorbing the fixed effects"):
        BLPLogit.from_formula("shares ~ 0 + x + x_shifted", data, absorb="C(market_ids)")


def test_collinear_instruments_are_named(simulated_products):
    data = simulated_products.assign(z3=simulated_products["z1"] - simulated_products["z2"])
    with pytest.raises(BLPInputError, match="instruments are collinear: 'z3'"):
        BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2 + z3]", data)


# ---------------------------------------------------------------- fit options


@pytest.fixture
def model(simulated_products):
    return BLPLogit.from_formula(IV_FORMULA, simulated_products)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"cov_type": "HC3"}, "unknown cov_type 'HC3'"),
        ({"cov_type": None}, "unknown cov_type None"),
        ({"cov_type": "clustered"}, "needs cov_kwds=\\{'groups'"),
        (
            {"cov_type": "clustered", "cov_kwds": {"groups": "productids"}},
            "no column\\(s\\) \\['productids'\\]",
        ),
        (
            {"cov_type": "clustered", "cov_kwds": {"groups": np.arange(5)}},
            "cluster groups have 5 rows but the data have 240",
        ),
        ({"cov_kwds": {"groups": "product_ids"}}, "only used with cov_type='clustered'"),
        ({"cov_kwds": {"centre": False}}, "unknown cov_kwds \\['centre'\\]"),
        ({"method": "3s"}, "method must be '1s' or '2s', got '3s'"),
        ({"method": "2-step"}, "method must be"),
        ({"W": np.eye(2)}, "W must be 3×3, got shape \\(2, 2\\)"),
        ({"W": np.ones((3, 4))}, "W must be 3×3"),
        ({"W": np.triu(np.ones((3, 3)))}, "W must be symmetric"),
        ({"W": -np.eye(3)}, "W must be positive definite"),
    ],
)
def test_fit_options_are_rejected_before_estimation(model, no_estimation, options, fragment):
    with pytest.raises(BLPInputError, match=fragment):
        model.fit(**options)


def test_nested_logit_needs_nesting_ids(simulated_products):
    data = simulated_products.drop(columns="nesting_ids")
    with pytest.raises(BLPInputError, match="needs a nesting_ids column"):
        BLPNestedLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2]", data).fit()


def test_nested_logit_needs_an_instrument_for_rho(simulated_products, no_estimation):
    model = BLPNestedLogit.from_formula(IV_FORMULA, simulated_products)
    with pytest.raises(BLPInputError, match=r"4 regressors including \['rho'\] but only 3"):
        model.fit()


def test_nested_logit_rho_option(simulated_products, no_estimation):
    model = BLPNestedLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2]", simulated_products)
    with pytest.raises(BLPInputError, match="rho must be 'common' or 'nest', got 'each'"):
        model.fit(rho="each")


# ---------------------------------------------------------------- predict data


def test_predict_rejects_a_market_the_model_never_saw(
    fitted, simulated_products, no_share_evaluation
):
    new = _market(simulated_products).assign(market_ids="m99")
    with pytest.raises(BLPInputError, match="unknown market ids \\['m99'\\]"):
        fitted.predict(new)


def test_predict_rejects_a_product_the_model_never_saw(
    fitted, simulated_products, no_share_evaluation
):
    new = _market(simulated_products)
    new.loc[new.index[2], "product_ids"] = "p77"
    with pytest.raises(BLPInputError, match="market 'm01' has no product 'p77'"):
        fitted.predict(new)


def test_predict_rejects_an_incomplete_market(fitted, simulated_products, no_share_evaluation):
    new = _market(simulated_products).iloc[:-1]
    with pytest.raises(BLPInputError, match="market 'm01' do not hold all of its products"):
        fitted.predict(new)


def test_predict_rejects_repeated_rows(fitted, simulated_products, no_share_evaluation):
    market = _market(simulated_products)
    new = pd.concat([market, market.iloc[[0]]])
    with pytest.raises(BLPInputError, match="repeat market 'm01', product 'p0'"):
        fitted.predict(new)


def test_predict_needs_product_ids_when_the_model_has_them(
    fitted, simulated_products, no_share_evaluation
):
    new = _market(simulated_products).drop(columns="product_ids")
    with pytest.raises(BLPInputError, match="no column 'product_ids'"):
        fitted.predict(new)


def test_predict_rejects_missing_values(fitted, simulated_products, no_share_evaluation):
    new = _market(simulated_products)
    new.loc[new.index[1], "prices"] = np.nan
    with pytest.raises(BLPInputError, match="'prices' has 1 missing values"):
        fitted.predict(new)


def test_predict_names_a_missing_column(fitted, simulated_products, no_share_evaluation):
    new = _market(simulated_products).drop(columns="x")
    with pytest.raises(BLPInputError, match="no column 'x'"):
        fitted.predict(new)


def test_predict_rejects_unseen_categories(simulated_products, no_share_evaluation):
    data = simulated_products.assign(
        group=np.where(simulated_products["nesting_ids"] == 1, "b", "a")
    )
    results = BLPLogit.from_formula("shares ~ 1 + prices + C(group)", data).fit()
    new = _market(data)
    new.loc[new.index[0], "group"] = "c"
    with pytest.raises(BLPInputError, match=r"C\(group\).*categories the model never saw.*'c'"):
        results.predict(new)


def test_post_estimation_rejects_unknown_markets_and_columns(fitted, no_share_evaluation):
    with pytest.raises(BLPInputError, match="unknown market ids \\['m99'\\]"):
        fitted.elasticities("m99")
    with pytest.raises(BLPInputError, match="unknown market ids \\['m99'\\]"):
        fitted.predict(market_id="m99")
    with pytest.raises(BLPInputError, match="unknown market ids"):
        fitted.diversion_ratios(["m01", "m99"])
    with pytest.raises(BLPInputError, match="no column 'cost'"):
        fitted.elasticities("m01", wrt="cost")
    with pytest.raises(BLPInputError, match="single market_id"):
        fitted.probabilities(["m01", "m02"])


# ---------------------------------------------------------------- the stand-ins above do bite


def test_valid_input_reaches_the_stand_ins(
    simulated_products, no_design_work, no_estimation, no_share_evaluation, monkeypatch
):
    with pytest.raises(WorkStarted):
        BLPLogit.from_formula(IV_FORMULA, simulated_products)
    monkeypatch.undo()
    model = BLPLogit.from_formula(IV_FORMULA, simulated_products)
    results = model.fit()
    monkeypatch.setattr(blpmodels.models.logit, "fit_linear", forbid)
    monkeypatch.setattr(blpmodels.models.nested_logit, "fit_linear", forbid)
    monkeypatch.setattr(blpmodels.results.demand, "ShareEvaluator", forbid)
    with pytest.raises(WorkStarted):
        model.fit()
    with pytest.raises(WorkStarted):
        results.predict(_market(simulated_products))
