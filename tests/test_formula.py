"""Formula grammar: parsing ``shares ~ exog + [endog ~ instruments]`` and building the design."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from blpmodels import BLPLogit
from blpmodels.data.formula import ParsedFormula, parse_formula, parse_rhs, required_variables
from blpmodels.exceptions import BLPInputError


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("shares ~ 1 + prices + mushy", ("shares", "1 + prices + mushy", None, None)),
        ("shares~x", ("shares", "x", None, None)),
        (
            "shares ~ 1 + mushy + [prices ~ price_instrument]",
            ("shares", "1 + mushy", "prices", "price_instrument"),
        ),
        ("shares ~ 0 + [prices ~ z]", ("shares", "0", "prices", "z")),
        # A lone bracket keeps formulaic's default constant, like "1 + [...]".
        ("shares ~ [prices ~ z]", ("shares", "1", "prices", "z")),
        ("shares ~ [prices ~ z] + x", ("shares", "x", "prices", "z")),
        ("shares ~ x + [prices ~ z] - 1", ("shares", "x - 1", "prices", "z")),
        (
            "shares ~ 1 + [p1 ~ z1] + x + [p2 ~ z2 + z3]",
            ("shares", "1 + x", "p1 + p2", "z1 + z2 + z3"),
        ),
        ("shares ~ 0 + [prices ~ I(z ** 2) + w]", ("shares", "0", "prices", "I(z ** 2) + w")),
        ("s.hat ~ C(g) + x:y", ("s.hat", "C(g) + x:y", None, None)),
    ],
)
def test_parse_formula_splits_dependent_exog_endog_and_instruments(formula, expected):
    parsed = parse_formula(formula)
    assert parsed == ParsedFormula(*expected)
    assert parsed.has_endog == (expected[2] is not None)


def test_parse_rhs_returns_the_three_parts():
    assert parse_rhs("0 + [prices ~ z]") == ("0", "prices", "z")
    assert parse_rhs("1 + x") == ("1 + x", None, None)


@pytest.mark.parametrize(
    ("formula", "fragment"),
    [
        ("shares 1 + prices", "has no '~'"),
        ("~ prices", "left-hand side"),
        ("log(shares) ~ prices", "left-hand side"),
        ("shares ~ 1 + [prices price_instrument]", "needs '~'"),
        ("shares ~ 1 + [prices ~ price_instrument", "unbalanced"),
        ("shares ~ 1 + [ ~ price_instrument]", "empty side"),
        ("shares ~ 1 + [prices ~ ]", "empty side"),
        ("shares ~ 1 + ]prices ~ z[", "malformed"),
    ],
)
def test_parse_formula_rejects_malformed_formulas(formula, fragment):
    with pytest.raises(BLPInputError, match=fragment):
        parse_formula(formula)


def test_parse_formula_rejects_non_strings():
    with pytest.raises(BLPInputError, match="must be a string"):
        parse_formula(None)  # type: ignore[arg-type]


def test_required_variables_lists_data_columns_not_functions():
    assert required_variables("1 + x + I(p ** 2) + C(g) + np.log(w)") == {"x", "p", "g", "w"}


def test_required_variables_reports_unparseable_parts():
    with pytest.raises(BLPInputError, match="could not parse"):
        required_variables("x + (")


@pytest.mark.parametrize(
    ("formula", "x_names", "z_names"),
    [
        ("shares ~ x", ["Intercept", "x"], ["Intercept", "x"]),
        ("shares ~ 0 + x", ["x"], ["x"]),
        ("shares ~ x - 1", ["x"], ["x"]),
        ("shares ~ [prices ~ z1]", ["Intercept", "prices"], ["Intercept", "z1"]),
        ("shares ~ x + [prices ~ z1] - 1", ["x", "prices"], ["x", "z1"]),
        (
            "shares ~ 1 + x + [prices ~ z1 + z2]",
            ["Intercept", "x", "prices"],
            ["Intercept", "x", "z1", "z2"],
        ),
        (
            "shares ~ 1 + C(nesting_ids) + [prices ~ z1]",
            ["Intercept", "C(nesting_ids)[T.1]", "prices"],
            ["Intercept", "C(nesting_ids)[T.1]", "z1"],
        ),
    ],
)
def test_design_columns_follow_the_formula(simulated_products, formula, x_names, z_names):
    design = BLPLogit.from_formula(formula, simulated_products).design
    assert design.x_names == x_names
    assert design.z_names == z_names


def test_absorbed_fixed_effects_drop_the_constant(simulated_products):
    model = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1]", simulated_products, absorb="C(market_ids)"
    )
    assert model.design.x_names == ["x", "prices"]
    assert model.design.z_names == ["x", "z1"]


def test_design_matrices_equal_the_data_columns(simulated_products):
    data = simulated_products
    design = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2]", data).design
    np.testing.assert_array_equal(
        design.X, np.column_stack([np.ones(len(data)), data.x, data.prices])
    )
    np.testing.assert_array_equal(
        design.Z, np.column_stack([np.ones(len(data)), data.x, data.z1, data.z2])
    )


def test_formula_transforms_match_statsmodels_ols_on_the_same_columns(simulated_products):
    data = simulated_products.copy()
    results = BLPLogit.from_formula("shares ~ 1 + np.log(prices) + I(x ** 2)", data).fit(
        cov_type="HC0"
    )
    outside = 1.0 - data.groupby("market_ids")["shares"].transform("sum")
    y = np.log(data.shares / outside)
    X = np.column_stack([np.ones(len(data)), np.log(data.prices), data.x**2])
    oracle = sm.OLS(y.to_numpy(), X).fit(cov_type="HC0")
    assert list(results.params.index) == ["Intercept", "np.log(prices)", "I(x ** 2)"]
    np.testing.assert_allclose(results.params.to_numpy(), oracle.params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(results.bse.to_numpy(), oracle.bse, rtol=1e-10)


def test_functions_from_the_calling_scope_are_visible_to_formulas(simulated_products):
    def triple(values):
        return 3.0 * np.asarray(values)

    data = simulated_products
    local = BLPLogit.from_formula("shares ~ 1 + triple(prices)", data).fit()
    plain = BLPLogit.from_formula("shares ~ 1 + prices", data).fit()
    assert local.params["triple(prices)"] == pytest.approx(plain.params["prices"] / 3.0, rel=1e-10)
    # The same function is used again when predicting on new data.
    market = data[data.market_ids == "m03"].copy()
    market["prices"] *= 1.1
    np.testing.assert_allclose(local.predict(market), plain.predict(market), rtol=1e-10)


def test_context_argument_supplies_names_for_transforms(simulated_products):
    results = BLPLogit.from_formula(
        "shares ~ 1 + halve(prices)", simulated_products, context={"halve": lambda v: v / 2.0}
    ).fit()
    plain = BLPLogit.from_formula("shares ~ 1 + prices", simulated_products).fit()
    assert results.params["halve(prices)"] == pytest.approx(2.0 * plain.params["prices"], rel=1e-10)


def test_categorical_terms_become_treatment_dummies(simulated_products):
    data = simulated_products.copy()
    data["group"] = np.where(data.nesting_ids == 1, "b", "a")
    results = BLPLogit.from_formula("shares ~ 1 + prices + C(group)", data).fit()
    outside = 1.0 - data.groupby("market_ids")["shares"].transform("sum")
    y = np.log(data.shares / outside).to_numpy()
    X = np.column_stack([np.ones(len(data)), data.prices, (data.group == "b").astype(float)])
    np.testing.assert_allclose(
        results.params.to_numpy(), np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-10
    )
    assert list(results.params.index) == ["Intercept", "prices", "C(group)[T.b]"]


def test_shares_column_may_have_any_name(simulated_products):
    data = simulated_products.rename(columns={"shares": "market_share"})
    results = BLPLogit.from_formula("market_share ~ 1 + prices", data).fit()
    reference = BLPLogit.from_formula("shares ~ 1 + prices", simulated_products).fit()
    np.testing.assert_allclose(results.params, reference.params, rtol=1e-12)
    assert results.model.endog_names == "market_share"


def test_array_interface_matches_formula_interface(simulated_products):
    data = simulated_products
    formula = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2]", data).fit()
    exog = pd.DataFrame({"Intercept": np.ones(len(data)), "x": data.x})
    arrays = BLPLogit(
        data.shares,
        exog,
        data[["prices"]],
        data[["z1", "z2"]],
        market_ids=data.market_ids,
        product_ids=data.product_ids,
    ).fit()
    assert list(arrays.params.index) == ["Intercept", "x", "prices"]
    np.testing.assert_allclose(arrays.params, formula.params, rtol=1e-12)
    np.testing.assert_allclose(arrays.bse, formula.bse, rtol=1e-10)


def test_array_interface_names_unlabelled_columns(simulated_products):
    data = simulated_products
    results = BLPLogit(
        data.shares.to_numpy(),
        np.ones((len(data), 1)),
        data.prices.to_numpy(),
        data.z1.to_numpy(),
        market_ids=data.market_ids.to_numpy(),
    ).fit()
    assert list(results.params.index) == ["exog0", "endog0"]
