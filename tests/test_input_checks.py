"""Inputs that used to pass silently or fail with an unclear error (issue 18, sections 2 and 4).

Each case raises a BLPInputError naming the column, market, option or parameter at fault and
saying what to do; the checks that concern data or options come before any estimation work
(the ``no_*`` stand-ins of conftest.py fail with ``WorkStarted`` otherwise).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from builders import agent_frame
from guards import WorkStarted, forbid

import blpmodels.data.integration
import blpmodels.data.products
from blpmodels import (
    BLPLogit,
    BLPNestedLogit,
    BLPRandomCoefficients,
    Integration,
    build_integration,
)
from blpmodels.exceptions import BLPInputError
from blpmodels.results.counterfactuals import CounterfactualsMixin

IV_FORMULA = "shares ~ 1 + x + [prices ~ z1 + z2]"


def _match(text: str) -> str:
    return re.escape(text)


@pytest.fixture
def logit_products(simulated_products) -> pd.DataFrame:
    """Simulated logit data without nests (40 markets × 6 products)."""
    return simulated_products.drop(columns="nesting_ids")


@pytest.fixture
def rc_agents(logit_products) -> pd.DataFrame:
    """20 agents per market with two node columns and one demographic."""
    return agent_frame(pd.unique(logit_products["market_ids"]), seed=3)


@pytest.fixture
def rc_model(logit_products, rc_agents) -> BLPRandomCoefficients:
    return BLPRandomCoefficients.from_formula(
        IV_FORMULA, logit_products, random="0 + x", agent_data=rc_agents
    )


# ---------------------------------------------------------------- 2.1 outside shares near zero


def _normalize_market(data: pd.DataFrame, market: str, outside: float) -> pd.DataFrame:
    """Rescale one market's inside shares so that they sum to ``1 - outside``."""
    rows = data["market_ids"] == market
    data.loc[rows, "shares"] *= (1.0 - outside) / data.loc[rows, "shares"].sum()
    return data


@pytest.mark.parametrize("outside", [1e-15, 1e-14, 1e-13])
def test_an_outside_share_below_the_threshold_names_the_market(
    logit_products, no_design_work, outside
):
    """A normalized market (inside shares summing to one up to rounding) used to be fitted:
    log s_0 of a rounding error sets δ there, and the price coefficient moved (or flipped)."""
    data = _normalize_market(logit_products, "m07", outside)
    with pytest.raises(BLPInputError, match=r"outside share .*market 'm07'.*MIN_OUTSIDE_SHARE"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_the_outside_share_threshold_is_checked_in_the_array_interface(logit_products):
    data = _normalize_market(logit_products, "m02", 1e-14)
    with pytest.raises(BLPInputError, match="market 'm02'"):
        BLPLogit(data["shares"], data[["x"]], market_ids=data["market_ids"])


def test_the_outside_share_threshold_is_a_module_setting(logit_products, monkeypatch):
    """Lowering MIN_OUTSIDE_SHARE accepts the market; the default accepts 1e-9."""
    data = _normalize_market(logit_products.copy(), "m07", 1e-9)
    BLPLogit.from_formula(IV_FORMULA, data)
    data = _normalize_market(logit_products.copy(), "m07", 1e-13)
    monkeypatch.setattr(blpmodels.data.products, "MIN_OUTSIDE_SHARE", 1e-14)
    model = BLPLogit.from_formula(IV_FORMULA, data)
    # log s_0 at 1e-13 computed by hand from the rescaled inside shares.
    inside = data.loc[data["market_ids"] == "m07", "shares"].sum()
    delta = model.design.logit_delta()[data["market_ids"].to_numpy() == "m07"]
    expected = np.log(data.loc[data["market_ids"] == "m07", "shares"]) - np.log(1.0 - inside)
    np.testing.assert_allclose(delta, expected, rtol=1e-12)


# ---------------------------------------------------------------- 2.2 instrumented variables


@pytest.mark.parametrize(
    ("formula", "term", "variable"),
    [
        ("shares ~ 1 + x + x:prices + [prices ~ z1 + z2]", "x:prices", "prices"),
        ("shares ~ 1 + I(prices ** 2) + [prices ~ z1 + z2]", "I(prices ** 2)", "prices"),
        ("shares ~ 1 + prices + [np.log(prices) ~ z1 + z2]", "prices", "prices"),
    ],
)
def test_a_term_reading_an_instrumented_variable_outside_the_brackets_is_refused(
    simulated_products, no_design_work, formula, term, variable
):
    with pytest.raises(BLPInputError) as caught:
        BLPLogit.from_formula(formula, simulated_products)
    message = str(caught.value)
    assert f"term {term!r} reads {variable!r}" in message
    assert "inside the brackets" in message


def test_the_suggested_formula_for_an_interaction_with_prices_is_valid(simulated_products):
    with pytest.raises(BLPInputError) as caught:
        BLPLogit.from_formula("shares ~ 1 + x + x:prices + [prices ~ z1 + z2]", simulated_products)
    suggestion = re.search(r"e\.g\. '([^']+)'", str(caught.value)).group(1)
    assert suggestion == "shares ~ 1 + x + [prices + x:prices ~ z1 + z2 + x:z1]"
    results = BLPLogit.from_formula(suggestion, simulated_products).fit()
    assert set(results.params.index) == {"Intercept", "x", "prices", "x:prices"}


# ---------------------------------------------------------------- 2.3 shares on the right


@pytest.mark.parametrize(
    "formula",
    [
        "shares ~ 1 + x + shares + [prices ~ z1]",
        "shares ~ 1 + x + np.log(shares) + [prices ~ z1]",
        "shares ~ 1 + x + [prices ~ z1 + shares]",
    ],
)
def test_shares_on_the_right_hand_side_are_refused(simulated_products, no_design_work, formula):
    with pytest.raises(BLPInputError, match="reads the shares column 'shares'"):
        BLPLogit.from_formula(formula, simulated_products)


def test_shares_in_the_random_coefficients_are_refused(logit_products, rc_agents):
    with pytest.raises(BLPInputError, match=r"random.*reads the shares column 'shares'"):
        BLPRandomCoefficients.from_formula(
            IV_FORMULA, logit_products, random="0 + x + shares", agent_data=rc_agents
        )


@pytest.mark.parametrize(
    "options",
    [{"supply": "1 + shares"}, {"supply": "1 + x", "supply_instruments": "np.log(shares)"}],
)
def test_shares_in_the_cost_equation_are_refused(logit_products, options):
    with pytest.raises(BLPInputError, match="reads the shares column 'shares'"):
        BLPLogit.from_formula(IV_FORMULA, logit_products, **options)


# ---------------------------------------------------------------- 2.6 complex regressors


@pytest.mark.parametrize("formula", ["shares ~ 1 + c + [prices ~ z1]", "shares ~ 1 + I(c * 2)"])
def test_complex_regressors_are_refused(simulated_products, formula):
    data = simulated_products.assign(c=simulated_products["x"] + 0.5j)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning was all the user got
        with pytest.raises(BLPInputError, match=r"complex.*np\.real"):
            BLPLogit.from_formula(formula, data)


def test_the_real_part_taken_explicitly_is_accepted(simulated_products):
    data = simulated_products.assign(c=simulated_products["x"] + 0.5j)
    explicit = BLPLogit.from_formula("shares ~ 1 + np.real(c) + [prices ~ z1]", data).fit()
    plain = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1]", data).fit()
    np.testing.assert_allclose(explicit.params.to_numpy(), plain.params.to_numpy(), rtol=1e-12)


# ---------------------------------------------------------------- 4. column types


@pytest.mark.parametrize(
    ("column", "convert"),
    [("z2", lambda s: s.astype(object)), ("x", lambda s: s.astype(str))],
    ids=["object", "text"],
)
def test_numbers_stored_as_text_or_objects_are_named(simulated_products, column, convert):
    data = simulated_products
    data[column] = convert(data[column])
    with pytest.raises(BLPInputError, match=f"column {column!r} holds numbers stored as"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_text_categories_in_c_stay_allowed(simulated_products):
    data = simulated_products.assign(group=np.where(simulated_products["x"] > 0, "1", "2"))
    results = BLPLogit.from_formula("shares ~ 1 + C(group) + [prices ~ z1]", data).fit()
    assert "C(group)[T.2]" in results.params.index


@pytest.mark.parametrize(
    "values",
    [
        pd.date_range("2000-01-01", periods=240, freq="D"),
        pd.to_timedelta(np.arange(240), unit="D"),
    ],
    ids=["datetime", "timedelta"],
)
def test_date_regressors_are_named(simulated_products, values):
    data = simulated_products.assign(t=values)
    with pytest.raises(BLPInputError, match="column 't' holds dates or durations"):
        BLPLogit.from_formula("shares ~ 1 + t + [prices ~ z1]", data)


@pytest.mark.parametrize("column", ["x", "z1", "shares", "market_ids"])
def test_duplicate_column_names_are_named(simulated_products, no_design_work, column):
    data = pd.concat([simulated_products, simulated_products[[column]]], axis=1)
    with pytest.raises(BLPInputError, match=f"2 columns named {column!r}"):
        BLPLogit.from_formula(IV_FORMULA, data)


@pytest.mark.parametrize("column", ["weights", "nodes0", "market_ids"])
def test_duplicate_agent_columns_are_named(logit_products, rc_agents, column):
    agents = pd.concat([rc_agents, rc_agents[[column]]], axis=1)
    with pytest.raises(BLPInputError, match=f"agent data has 2 columns named {column!r}"):
        BLPRandomCoefficients.from_formula(
            IV_FORMULA, logit_products, random="0 + x", agent_data=agents
        )


@pytest.mark.parametrize("name", ["market", "Market", "market_id", "markets"])
def test_a_market_column_under_another_name_is_suggested(simulated_products, name):
    data = simulated_products.rename(columns={"market_ids": name}).assign(market_size=1e6)
    with pytest.raises(BLPInputError, match=f"rename.*{name!r}.*'market_ids'"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_a_missing_market_column_says_what_it_is(simulated_products):
    data = simulated_products.drop(columns="market_ids").assign(market_size=1e6)
    with pytest.raises(BLPInputError) as caught:
        BLPLogit.from_formula(IV_FORMULA, data)
    assert "market_size" not in str(caught.value)
    assert "the market of each row" in str(caught.value)


# ---------------------------------------------------------------- 4. formulas


@pytest.mark.parametrize("formula", ["shares ~ prices | z1", "shares ~ 1 + x | prices ~ z1"])
def test_pipe_instrument_syntax_says_how_to_write_it(simulated_products, formula):
    with pytest.raises(BLPInputError, match=_match("'|'") + ".*square brackets"):
        BLPLogit.from_formula(formula, simulated_products)


@pytest.mark.parametrize(
    "formula", ["shares ~ 1 + x + [prices ~ x]", "shares ~ 1 + x + [prices ~ x + z1]"]
)
def test_an_exogenous_regressor_listed_as_instrument_is_named(
    simulated_products, no_estimation, formula
):
    with pytest.raises(BLPInputError, match="'x' is both an exogenous regressor and an excluded"):
        BLPLogit.from_formula(formula, simulated_products)


def test_a_continuous_absorb_column_is_named(simulated_products):
    for absorb in ("x", "C(x)"):
        with pytest.raises(BLPInputError, match=r"absorb.*'x' holds continuous values"):
            BLPLogit.from_formula(
                "shares ~ 0 + [prices ~ z1 + z2]", simulated_products, absorb=absorb
            )


def test_integer_valued_float_ids_can_be_absorbed(simulated_products):
    data = simulated_products.assign(
        market_number=simulated_products["market_ids"].str[1:].astype(float)
    )
    by_number = BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ z1 + z2]", data, absorb="market_number"
    ).fit()
    by_id = BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ z1 + z2]", data, absorb="market_ids"
    ).fit()
    np.testing.assert_allclose(by_number.params.to_numpy(), by_id.params.to_numpy(), rtol=1e-9)


def test_pyblp_style_formulations_point_to_random(logit_products, rc_agents):
    with pytest.raises(BLPInputError, match=r"random="):
        BLPRandomCoefficients.from_formula(("1 + x", "0 + x"), logit_products, agent_data=rc_agents)
    with pytest.raises(BLPInputError, match=r"random=.*X2"):
        BLPLogit.from_formula(("1 + x", "0 + x"), logit_products)


def test_missing_random_is_a_clear_error(logit_products, rc_agents):
    with pytest.raises(TypeError, match="random="):  # also a BLPInputError, for older callers
        BLPRandomCoefficients.from_formula(IV_FORMULA, logit_products, agent_data=rc_agents)


# ---------------------------------------------------------------- 4. fit keywords


def test_unknown_logit_fit_keyword_is_named_as_unknown(simulated_products, no_estimation):
    model = BLPLogit.from_formula(IV_FORMULA, simulated_products)
    with pytest.raises(BLPInputError) as caught:
        model.fit(foo=1)
    message = str(caught.value)
    assert "unknown keyword argument 'foo'" in message
    assert "supply side" not in message.split(";")[0]
    assert "cov_type" in message and "optimizer" in message
    assert isinstance(caught.value, TypeError)


def test_supply_options_without_a_supply_side_keep_their_message(simulated_products, no_estimation):
    model = BLPLogit.from_formula(IV_FORMULA, simulated_products)
    with pytest.raises(BLPInputError, match="only apply with a supply side"):
        model.fit(optimizer="l-bfgs-b")


@pytest.mark.parametrize(
    ("keyword", "hint"),
    [("optimization", "optimizer="), ("se_type", "cov_type="), ("iteration", "fp_method=")],
)
def test_pyblp_fit_keywords_point_to_ours(
    rc_model, simulated_products, no_contraction, keyword, hint
):
    with pytest.raises(BLPInputError, match=f"unknown keyword argument {keyword!r}.*{hint}"):
        rc_model.fit(sigma=1.0, **{keyword: "x"})
    logit = BLPNestedLogit.from_formula(IV_FORMULA, simulated_products)
    with pytest.raises(BLPInputError, match=f"unknown keyword argument {keyword!r}.*{hint}"):
        logit.fit(**{keyword: "x"})


def test_unknown_rc_fit_keyword_lists_the_valid_ones(rc_model, no_contraction):
    with pytest.raises(BLPInputError, match=r"unknown keyword argument 'foo'.*sigma_bounds"):
        rc_model.fit(sigma=1.0, foo=1)


# ---------------------------------------------------------------- 4. parameters


def test_inverted_sigma_bounds_are_named(rc_model, no_contraction):
    with pytest.raises(BLPInputError, match=r"sigma_bounds.*sigma\[x,x\].*lower 5 > upper 0"):
        rc_model.fit(sigma=1.0, sigma_bounds=(5.0, 0.0))


def test_pi_without_demographics_says_so(rc_model, no_contraction):
    for pi in (1.0, [[1.0, 2.0]]):
        with pytest.raises(BLPInputError, match="pi was given but the model has no demographics"):
            rc_model.fit(sigma=1.0, pi=pi)


def test_pi_of_zeros_without_demographics_is_still_accepted(rc_model):
    assert rc_model.parameters(sigma=1.0, pi=0).names == ["sigma[x,x]"]


def test_every_product_in_its_own_nest_is_named(simulated_products, no_estimation):
    data = simulated_products.assign(nesting_ids=simulated_products["product_ids"])
    model = BLPNestedLogit.from_formula(IV_FORMULA, data)
    with pytest.raises(BLPInputError, match="every nest holds a single product"):
        model.fit()
    with pytest.raises(BLPInputError, match="single product"):
        model.fit(rho="nest")


def test_a_single_product_nest_is_named_with_rho_per_nest(simulated_products, no_estimation):
    data = simulated_products.assign(
        nesting_ids=np.where(simulated_products["product_ids"] == "p0", "alone", "rest")
    )
    model = BLPNestedLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2 + nest_z1]", data)
    with pytest.raises(BLPInputError, match=r"nest 'alone'.*single product"):
        model.fit(rho="nest")


# ---------------------------------------------------------------- 4. optimizer callables


@pytest.mark.parametrize(
    ("returned", "fragment"),
    [(None, "None"), (np.array([0.5, 0.5]), "2 values"), ([np.nan], "non-finite")],
)
def test_a_callable_optimizer_returning_junk_is_named(rc_model, returned, fragment):
    def optimizer(fun, theta0, bounds):
        fun(theta0)
        return returned

    with pytest.raises(BLPInputError, match=f"optimizer 'optimizer' returned {fragment}"):
        rc_model.fit(sigma=1.0, optimizer=optimizer, compute_hessian=False)


# ---------------------------------------------------------------- 4. integration size


@pytest.mark.parametrize(("size", "dimensions"), [(10**6, 1), (100, 8)])
def test_a_product_rule_too_large_is_refused_before_building(monkeypatch, size, dimensions):
    monkeypatch.setattr(blpmodels.data.integration, "hermegauss", forbid)
    blpmodels.data.integration._hermite_rule.cache_clear()
    with pytest.raises(BLPInputError, match=r"needs about .*iB.*fewer nodes"):
        Integration("product", size).build(dimensions)
    with pytest.raises(BLPInputError, match=r"needs about"):
        build_integration(Integration("product", size), dimensions, market_ids=["a", "b"])


def test_a_large_product_rule_through_from_formula(logit_products, monkeypatch):
    monkeypatch.setattr(blpmodels.data.integration, "hermegauss", forbid)
    blpmodels.data.integration._hermite_rule.cache_clear()
    with pytest.raises(BLPInputError, match="product rule with 1000000 nodes"):
        BLPRandomCoefficients.from_formula(
            IV_FORMULA, logit_products, random="0 + x", integration=Integration("product", 10**6)
        )


def test_usual_product_rules_are_not_refused():
    nodes, weights = Integration("product", 7).build(3)
    assert nodes.shape == (343, 3)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-14)


# ---------------------------------------------------------------- 4. simulate


@pytest.mark.parametrize("value", ["a", "-2", None, [1.0, 2.0]])
def test_simulate_names_a_parameter_that_is_not_a_number(logit_products, monkeypatch, value):
    results = BLPLogit.from_formula(IV_FORMULA, logit_products).fit()
    monkeypatch.setattr(CounterfactualsMixin, "_solve", forbid)
    with pytest.raises(BLPInputError, match="parameter 'prices' must be a number"):
        results.simulate({"prices": value})


def test_simulate_still_takes_numbers(logit_products, monkeypatch):
    results = BLPLogit.from_formula(IV_FORMULA, logit_products).fit()
    monkeypatch.setattr(CounterfactualsMixin, "_solve", forbid)
    for value in (np.float32(-2), -2, np.array(-2.0)):
        with pytest.raises(WorkStarted):
            results.simulate({"prices": value})
