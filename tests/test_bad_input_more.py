"""More bad input: each case of the reliability audit raises a BLPInputError naming the culprit.

Every error is raised before estimation work: the stand-ins below replace the code that would
do the work (building design blocks, the GMM pipeline, the share kernel, the δ contraction), so
a check that comes too late fails with ``WorkStarted`` instead of the expected error (the
stand-ins are the ``no_*`` fixtures of conftest.py).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from blpmodels.datasets import data_home
from builders import agent_frame
from guards import forbid

import blpmodels.data.products
import blpmodels.models.random_coefficients
from blpmodels import BLPLogit, BLPRandomCoefficients
from blpmodels.data.agents import AgentDesign
from blpmodels.data.parameters import NonlinearParameters
from blpmodels.exceptions import BLPInputError
from blpmodels.simulation.logit import simulate_logit

IV_FORMULA = "shares ~ 1 + x + [prices ~ z1]"
RC_FORMULA = "shares ~ 1 + x + [prices ~ cost_shifter]"


@pytest.fixture
def fitted(simulated_products):
    return BLPLogit.from_formula(IV_FORMULA, simulated_products).fit()


@pytest.fixture
def rc_products() -> pd.DataFrame:
    """20 markets × 5 products, no nests: market ids 'M01' ... 'M20'."""
    return simulate_logit(n_markets=20, n_products=5).products


@pytest.fixture
def rc_agents(rc_products) -> pd.DataFrame:
    return agent_frame(pd.unique(rc_products["market_ids"]), seed=1)


def _rc_model(products, agents, **options):
    options.setdefault("random", "0 + x")
    return BLPRandomCoefficients.from_formula(RC_FORMULA, products, agent_data=agents, **options)


def _market(data: pd.DataFrame, market: str = "m01") -> pd.DataFrame:
    return data[data["market_ids"] == market].copy()


def _no_warnings():
    """A context in which any warning is an error."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error")
    return context


# ---------------------------------------------------------------- 1. clustering


@pytest.mark.parametrize("groups", [np.zeros(240), "one_cluster", ["market_ids", "one_cluster"]])
def test_clustering_on_a_single_cluster_is_an_error(
    simulated_products, no_estimation, monkeypatch, groups
):
    data = simulated_products.assign(one_cluster="all")
    model = BLPLogit.from_formula(IV_FORMULA, data)
    name = "one_cluster" if not isinstance(groups, np.ndarray) else "column 0"
    with pytest.raises(BLPInputError, match=f"{name}.*only 1 cluster.*at least two"):
        model.fit(cov_type="clustered", cov_kwds={"groups": groups})


def test_clustering_on_few_clusters_warns_at_the_callers_line(simulated_products):
    model = BLPLogit.from_formula(IV_FORMULA, simulated_products)
    with pytest.warns(UserWarning, match="'product_ids'.*6 clusters.*unreliable") as record:
        model.fit(cov_type="clustered", cov_kwds={"groups": "product_ids"})
    assert record[0].filename == __file__
    context = _no_warnings()
    try:  # 40 markets: above the threshold, so no warning
        model.fit(cov_type="clustered", cov_kwds={"groups": "market_ids"})
    finally:
        context.__exit__(None, None, None)


# ---------------------------------------------------------------- 2. instruments = regressors


@pytest.mark.parametrize(
    ("formula", "instrument"),
    [
        ("shares ~ 1 + [prices ~ prices]", "prices"),
        ("shares ~ 1 + x + [prices ~ I(2 * prices)]", "I(2 * prices)"),
        ("shares ~ 1 + x + [prices ~ z1 + prices]", "prices"),
        ("shares ~ 1 + x + [prices ~ I(prices - 3 * x)]", "I(prices - 3 * x)"),
    ],
)
def test_an_instrument_collinear_with_its_regressor_is_named(
    simulated_products, formula, instrument
):
    with pytest.raises(
        BLPInputError,
        match=re.escape(f"instrument {instrument!r} is a linear combination of")
        + r".*instrumented regressor\(s\) \['prices'\]",
    ):
        BLPLogit.from_formula(formula, simulated_products)


def test_an_instrument_equal_to_its_regressor_after_absorption_is_named(simulated_products):
    data = simulated_products
    data["shifted"] = data["prices"] + data.groupby("market_ids")["z1"].transform("mean")
    with pytest.raises(BLPInputError, match=r"instrument 'shifted'.*after absorbing"):
        BLPLogit.from_formula("shares ~ 0 + x + [prices ~ shifted]", data, absorb="C(market_ids)")


def test_statsmodels_agrees_that_such_iv_is_ols(simulated_products):
    # The independent check of what case 2 guards against: with the regressor as its own
    # instrument, "IV" reproduces OLS exactly, so reporting it as IV is wrong.
    data = simulated_products
    y = np.log(data["shares"]) - np.log(1 - data.groupby("market_ids")["shares"].transform("sum"))
    X = sm.add_constant(data[["prices"]])
    ols = sm.OLS(y, X).fit()
    iv = np.linalg.solve(X.T @ X, X.T @ y)  # Z = X
    np.testing.assert_allclose(iv, ols.params, rtol=1e-10)


# ---------------------------------------------------------------- 3. random coefficients


@pytest.mark.parametrize(
    ("random", "column", "partner"),
    [
        ("0 + x + I(2 * x)", "I(2 * x)", "x"),
        ("0 + x + prices + I(x + prices)", "I(x + prices)", "x"),
    ],
)
def test_collinear_random_coefficient_characteristics_are_named(
    rc_products, rc_agents, monkeypatch, random, column, partner
):
    monkeypatch.setattr(blpmodels.models.random_coefficients, "AgentDesign", forbid)
    with pytest.raises(
        BLPInputError,
        match=re.escape(f"random coefficients are collinear: {column!r}") + f".*'{partner}'",
    ):
        _rc_model(rc_products, rc_agents, random=random)


# ---------------------------------------------------------------- 4. pandas indexes


def test_misaligned_pandas_inputs_are_rejected_as_statsmodels_does(simulated_products):
    data = simulated_products
    shuffled = data["prices"].sample(frac=1.0, random_state=0)
    exog = data[["x"]].assign(const=1.0)
    with pytest.raises(ValueError, match="not aligned"):  # statsmodels' own behaviour
        sm.OLS(data["shares"], shuffled)
    with pytest.raises(BLPInputError, match="indices for shares and endog are not aligned"):
        BLPLogit(data["shares"], exog, shuffled, data[["z1"]], market_ids=data["market_ids"])
    with pytest.raises(BLPInputError, match="indices for shares and market_ids are not aligned"):
        BLPLogit(
            data["shares"],
            exog,
            data["prices"],
            data[["z1"]],
            market_ids=data["market_ids"].sample(frac=1.0, random_state=0),
        )


def test_aligned_pandas_inputs_keep_their_index(simulated_products):
    data = simulated_products.set_index(simulated_products.index + 1000)
    exog = data[["x"]].assign(const=1.0)
    labelled = BLPLogit(
        data["shares"], exog, data["prices"], data[["z1"]], market_ids=data["market_ids"]
    ).fit()
    plain = BLPLogit(
        data["shares"].to_numpy(),
        exog.to_numpy(),
        data["prices"].to_numpy(),
        data["z1"].to_numpy(),
        market_ids=data["market_ids"].to_numpy(),
    ).fit()
    np.testing.assert_allclose(np.asarray(labelled.params), np.asarray(plain.params), rtol=1e-12)
    pd.testing.assert_index_equal(labelled.xi.index, data.index)
    # One pandas input among arrays sets the labels, as in statsmodels.
    mixed = BLPLogit(
        data["shares"].to_numpy(),
        exog,
        data["prices"].to_numpy(),
        data["z1"].to_numpy(),
        market_ids=data["market_ids"].to_numpy(),
    ).fit()
    pd.testing.assert_index_equal(mixed.xi.index, data.index)


def test_cluster_groups_must_align_with_the_product_data(simulated_products, no_estimation):
    model = BLPLogit.from_formula(IV_FORMULA, simulated_products)
    shuffled = simulated_products["market_ids"].sample(frac=1.0, random_state=0)
    with pytest.raises(BLPInputError, match=r"cov_kwds groups.*index.*not aligned"):
        model.fit(cov_type="clustered", cov_kwds={"groups": shuffled})


# ---------------------------------------------------------------- 5. ids of mixed types


def _mixed_markets(data: pd.DataFrame) -> pd.DataFrame:
    data = data.astype({"market_ids": object})
    data.loc[data["market_ids"] == "m02", "market_ids"] = 2
    data.loc[data["market_ids"] == "m03", "market_ids"] = "2"
    return data


def test_market_ids_that_differ_only_in_type_are_ambiguous(simulated_products, no_design_work):
    with pytest.raises(BLPInputError, match=r"'market_ids'.*\[2, '2'\]"):
        BLPLogit.from_formula(IV_FORMULA, _mixed_markets(simulated_products))


@pytest.mark.parametrize("column", ["product_ids", "firm_ids", "nesting_ids"])
def test_other_ids_that_differ_only_in_type_are_ambiguous(simulated_products, column):
    data = simulated_products.astype({column: object})
    first, second = data.index[0], data.index[1]
    data.loc[first, column], data.loc[second, column] = 7, "7"
    with pytest.raises(BLPInputError, match=f"'{column}'.*\\[7, '7'\\]"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_ids_in_the_array_interface_are_checked(simulated_products):
    data = _mixed_markets(simulated_products)
    with pytest.raises(BLPInputError, match=r"^market_ids has ids .*\[2, '2'\]"):
        BLPLogit(data["shares"], data[["x"]], market_ids=data["market_ids"].to_numpy())


def test_agent_market_ids_that_differ_only_in_type_are_ambiguous(rc_products, rc_agents):
    agents = rc_agents.astype({"market_ids": object})
    agents.loc[agents.index[:3], "market_ids"] = 5
    agents.loc[agents.index[3:6], "market_ids"] = "5"
    with pytest.raises(BLPInputError, match=r"agent data.*'market_ids'.*\[5, '5'\]"):
        _rc_model(rc_products, agents)


def test_agent_market_ids_of_another_type_get_a_hint(rc_products, rc_agents):
    products = rc_products.assign(market_ids=rc_products["market_ids"].str[1:].astype(int))
    agents = rc_agents.assign(market_ids=rc_agents["market_ids"].str[1:].astype(int).astype(str))
    with pytest.raises(BLPInputError, match=r"markets without products.*match .* as text"):
        _rc_model(products, agents)


# ---------------------------------------------------------------- 6. center


@pytest.mark.parametrize("center", ["no", 0, 1.0, None])
def test_center_must_be_a_bool(model_with_fit_checks, center):
    with pytest.raises(BLPInputError, match="'center' must be True or False"):
        model_with_fit_checks.fit(cov_kwds={"center": center})


@pytest.fixture
def model_with_fit_checks(simulated_products, no_estimation):
    return BLPLogit.from_formula(IV_FORMULA, simulated_products)


def test_center_accepts_numpy_bools(simulated_products):
    model = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2]", simulated_products)
    results = model.fit(cov_kwds={"center": np.bool_(False)})
    moments = model.design.Z * np.asarray(results.resid)[:, None]
    uncentered = moments.T @ moments / len(moments)
    np.testing.assert_allclose(results.info.moment_covariance, uncentered, rtol=1e-12)
    centered = model.fit(cov_kwds={"center": np.True_}).info.moment_covariance
    mean = moments.mean(axis=0)
    np.testing.assert_allclose(centered, uncentered - np.outer(mean, mean), rtol=1e-10)


# ---------------------------------------------------------------- 7. predict market filter


def test_predict_names_a_market_missing_from_the_data(
    fitted, simulated_products, no_share_evaluation
):
    with pytest.raises(BLPInputError, match=r"market_id.*'m02'.*not in the data"):
        fitted.predict(_market(simulated_products, "m01"), market_id="m02")
    with pytest.raises(BLPInputError, match=r"\['m03'\].*not in the data"):
        fitted.predict(_market(simulated_products, "m01"), market_id=["m01", "m03"])


# ---------------------------------------------------------------- 8. strings in numeric columns


def test_shares_given_as_strings_are_named(simulated_products, no_design_work):
    data = simulated_products.assign(shares=simulated_products["shares"].astype(str))
    with pytest.raises(BLPInputError, match=r"column 'shares' holds text.*numbers"):
        BLPLogit.from_formula(IV_FORMULA, data)


def test_shares_as_an_object_column_of_floats_are_fine(simulated_products):
    data = simulated_products.assign(shares=simulated_products["shares"].astype(object))
    results = BLPLogit.from_formula(IV_FORMULA, data).fit()
    expected = BLPLogit.from_formula(IV_FORMULA, simulated_products).fit()
    np.testing.assert_array_equal(np.asarray(results.params), np.asarray(expected.params))


def test_array_inputs_given_as_strings_are_named(simulated_products):
    data = simulated_products
    with pytest.raises(BLPInputError, match="shares holds text"):
        BLPLogit(data["shares"].astype(str), data[["x"]], market_ids=data["market_ids"])
    with pytest.raises(BLPInputError, match="exog column 'x' holds text"):
        BLPLogit(data["shares"], data[["x"]].astype(str), market_ids=data["market_ids"])


@pytest.mark.parametrize("column", ["nodes0", "weights"])
def test_agent_columns_given_as_strings_are_named(rc_products, rc_agents, column):
    agents = rc_agents.assign(**{column: rc_agents[column].astype(str)})
    with pytest.raises(BLPInputError, match=f"agent data column '{column}' holds text"):
        _rc_model(rc_products, agents)


# ---------------------------------------------------------------- 9. formulas


@pytest.mark.parametrize(
    ("formula", "fragment"),
    [
        ("shares ~ 0", "has no regressors"),
        ("shares ~ -1", "has no regressors"),
        ("shares ~ 1 + [prices ~ z1 ~ z2]", "more than one '~'"),
        ("shares ~ 1 + [prices ~ z1] ~ z2", "more than one '~'"),
    ],
)
def test_formulas_without_regressors_or_with_extra_tildes(
    simulated_products, no_design_work, formula, fragment
):
    with pytest.raises(BLPInputError, match=re.escape(fragment)):
        BLPLogit.from_formula(formula, simulated_products)


def test_a_constant_dropped_by_absorption_leaves_no_regressors(simulated_products):
    with pytest.raises(BLPInputError, match=r"no regressors.*constant.*absorbed"):
        BLPLogit.from_formula("shares ~ 1", simulated_products, absorb="C(market_ids)")


def test_the_array_interface_needs_a_regressor(simulated_products):
    data = simulated_products
    with pytest.raises(BLPInputError, match="no regressors"):
        BLPLogit(data["shares"], np.zeros((len(data), 0)), market_ids=data["market_ids"])


# ---------------------------------------------------------------- 10. nonlinear parameters


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"sigma": [[1, 0], [0]]}, "sigma must be a rectangular array"),
        ({"sigma": np.eye(2), "pi": [[1], [0, 2]]}, "pi must be a rectangular array"),
        ({"sigma": [["1", "0"], ["0", "1"]]}, "sigma must hold numbers"),
        ({"sigma": np.eye(2), "pi": [[np.nan], [0]]}, "pi[x,income] is nan"),
        ({"sigma": np.eye(2), "pi": [[0], [np.inf]]}, "pi[prices,income] is inf"),
        ({"sigma": [[1, 0], [np.nan, 1]]}, "sigma[prices,x] is nan"),
        ({"sigma": np.eye(2), "sigma_bounds": ([[0, 0], [0]], 1)}, "sigma_bounds must be"),
    ],
)
def test_bad_sigma_and_pi_are_named(options, fragment):
    with pytest.raises(BLPInputError, match=re.escape(fragment)):
        NonlinearParameters.build(["x", "prices"], ["income"], **options)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [({"sigma": np.nan}, "sigma[x,x] is nan"), ({"sigma": 1, "pi": np.inf}, "pi[x,income] is inf")],
)
def test_non_finite_scalar_starts_are_named(options, fragment):
    with pytest.raises(BLPInputError, match=re.escape(fragment)):
        NonlinearParameters.build(["x"], ["income"], **options)


@pytest.mark.parametrize("rho", [np.nan, [0.5, np.inf], "0.5"])
def test_bad_rho_is_blamed_on_rho(rho):
    with pytest.raises(BLPInputError, match=r"^rho "):
        NonlinearParameters.build(["x"], nests=["a", "b"], sigma=1, rho=rho)


def test_nan_rho_fails_before_the_contraction(rc_products, rc_agents, no_contraction):
    products = rc_products.assign(nesting_ids=rc_products["firm_ids"])
    model = _rc_model(products, rc_agents)
    with pytest.raises(BLPInputError, match=r"^rho must .*\[nan\]"):
        model.fit(sigma=1, rho=np.nan)


# ---------------------------------------------------------------- 11. agent weights and nodes


@pytest.mark.parametrize(
    ("weight", "fragment"),
    [
        (0.0, r"weights sum to 0 in 1 market\(s\): \['M03'\]"),
        (-0.05, r"negative weights in 1 market\(s\): \['M03'\]"),
        (np.nan, r"'weights' has 20 missing values.*market 'M03'"),
        (np.inf, r"'weights' has 20 non-finite values.*market 'M03'"),
    ],
)
def test_bad_agent_weights_name_the_market(
    rc_products, rc_agents, no_contraction, weight, fragment
):
    agents = rc_agents.copy()
    agents.loc[agents["market_ids"] == "M03", "weights"] = weight
    with pytest.raises(BLPInputError, match=fragment):
        _rc_model(rc_products, agents).fit(sigma=1)


def test_infinite_nodes_name_the_column_and_market(rc_products, rc_agents, no_contraction):
    agents = rc_agents.copy()
    agents.loc[agents.index[45], "nodes0"] = -np.inf
    with pytest.raises(BLPInputError, match=r"'nodes0' has 1 non-finite values.*market 'M03'"):
        _rc_model(rc_products, agents)


# ---------------------------------------------------------------- 12. demographics


@pytest.mark.parametrize("dtype", [str, "category"])
def test_non_numeric_demographics_are_named(rc_products, rc_agents, dtype):
    agents = rc_agents.assign(income=rc_agents["income"].round().astype(dtype))
    with pytest.raises(BLPInputError, match=r"demographic 'income' is not numeric.*C\(income\)"):
        _rc_model(rc_products, agents, demographics="0 + income")
    with pytest.raises(BLPInputError, match="demographic 'income' is not numeric"):
        _rc_model(rc_products, agents, demographics="0 + np.exp(x) + income:nodes1")


def test_explicit_categorical_demographics_stay_allowed(rc_products, rc_agents):
    agents = rc_agents.assign(group=np.where(rc_agents["income"] > 0, "rich", "poor"))
    model = _rc_model(rc_products, agents, demographics="0 + C(group)")
    assert model.agents.demographic_names == ("C(group)[poor]", "C(group)[rich]")
    rich = model.agents.demographics[..., 1][model.agents.layout.mask]
    np.testing.assert_array_equal(rich, (agents["income"] > 0).to_numpy(float))


def test_boolean_demographics_are_numeric(rc_products, rc_agents):
    agents = rc_agents.assign(rich=rc_agents["income"] > 0)
    model = _rc_model(rc_products, agents, demographics="0 + rich")
    assert model.agents.demographic_names == ("rich",)


# ---------------------------------------------------------------- 13. post-estimation arguments


def test_predict_needs_a_dataframe(fitted, simulated_products, no_share_evaluation):
    new = _market(simulated_products).to_dict("list")
    with pytest.raises(BLPInputError, match="data must be a pandas DataFrame, got dict"):
        fitted.predict(new)
    with pytest.raises(BLPInputError, match="data must be a pandas DataFrame, got dict"):
        fitted.elasticities("m01", data=new)


@pytest.mark.parametrize("wrt", ["firm_ids", "z1", "nest_count"])
def test_elasticities_wrt_a_column_the_model_does_not_use(fitted, no_share_evaluation, wrt):
    with pytest.raises(BLPInputError, match=f"'{wrt}'.*utility does not depend on it.*'prices'"):
        fitted.elasticities("m01", wrt=wrt)
    with pytest.raises(BLPInputError, match=f"'{wrt}'.*utility does not depend on it"):
        fitted.diversion_ratios("m01", wrt=wrt)


def test_elasticities_wrt_a_categorical_column(simulated_products, no_share_evaluation):
    data = simulated_products.assign(group=np.where(simulated_products["x"] > 0, "a", "b"))
    results = BLPLogit.from_formula("shares ~ 1 + prices + C(group)", data).fit()
    with pytest.raises(BLPInputError, match="'group' is not numeric"):
        results.elasticities("m01", wrt="group")


@pytest.mark.parametrize(
    "method", ["elasticities", "diversion_ratios", "long_run_diversion_ratios"]
)
def test_an_empty_market_list_is_an_error(fitted, no_share_evaluation, method):
    with pytest.raises(BLPInputError, match="market_id is empty"):
        getattr(fitted, method)(market_id=[])


def test_predict_with_an_empty_market_list_is_an_error(fitted, no_share_evaluation):
    with pytest.raises(BLPInputError, match="market_id is empty"):
        fitted.predict(market_id=[])


# ---------------------------------------------------------------- 14. agent data messages


def test_missing_demographic_column_is_reported_in_the_agent_data(rc_products, rc_agents):
    model = _rc_model(rc_products, rc_agents, demographics="0 + income")
    with pytest.raises(BLPInputError, match=r"^agent data has no column 'income'"):
        AgentDesign.build(
            rc_agents.drop(columns="income"),
            model.design.layout.market_labels,
            max_nodes=1,
            template=model.agents.demographic_block,
        )


# ---------------------------------------------------------------- 15. empty data


def test_empty_product_data(simulated_products, no_design_work):
    with pytest.raises(BLPInputError, match="product data has no rows"):
        BLPLogit.from_formula(IV_FORMULA, simulated_products.iloc[:0])
    with pytest.raises(BLPInputError, match="shares is empty"):
        BLPLogit(np.zeros(0), np.zeros((0, 1)), market_ids=np.zeros(0))


def test_empty_agent_data(rc_products, rc_agents):
    with pytest.raises(BLPInputError, match="agent data has no rows"):
        _rc_model(rc_products, rc_agents.iloc[:0])


# ---------------------------------------------------------------- 16. weighting matrix


@pytest.mark.parametrize(
    ("position", "value"), [((0, 1), np.nan), ((1, 1), np.inf), ((2, 2), -np.inf)]
)
def test_non_finite_weighting_matrix_entries(model_with_fit_checks, position, value):
    W = np.eye(3)
    W[position] = W[position[::-1]] = value
    with pytest.raises(BLPInputError, match=re.escape(f"W[{position[0]}, {position[1]}] is")):
        model_with_fit_checks.fit(W=W)


def test_ragged_weighting_matrix(model_with_fit_checks):
    with pytest.raises(BLPInputError, match="W must be a 3×3 matrix of numbers"):
        model_with_fit_checks.fit(W=[[1, 0, 0], [0, 1], [0, 0, 1]])


# ---------------------------------------------------------------- 17. badly scaled columns


@pytest.mark.parametrize(
    ("column", "factor", "fragment"),
    [
        ("x", 1e8, r"regressor 'x' has values up to \d\.\d+e\+08.*divide by 1e\+08"),
        ("z1", 1e-8, r"instrument 'z1' varies on a scale of 1\.\d+e-08.*multiply by 1e\+08"),
        ("prices", 1e7, "regressor 'prices' has values up to"),
    ],
)
def test_badly_scaled_columns_warn(simulated_products, column, factor, fragment):
    data = simulated_products
    data[column] *= factor
    with pytest.warns(UserWarning, match=fragment) as record:
        try:
            BLPLogit.from_formula(IV_FORMULA, data)
        except BLPInputError:  # the scale may also make the design fail later: warn first
            pass
    assert record[0].filename == __file__


def test_badly_scaled_random_characteristics_warn(rc_products, rc_agents):
    products = rc_products.assign(big=rc_products["x"] * 1e9)
    with pytest.warns(UserWarning, match="random-coefficient characteristic 'big'"):
        _rc_model(products, rc_agents, random="0 + big")


def test_constant_or_moderate_columns_do_not_warn(simulated_products):
    data = simulated_products.assign(level=1e9, tiny=1e-9)
    context = _no_warnings()
    try:
        BLPLogit.from_formula("shares ~ 0 + level + x + [prices ~ z1]", data)
        BLPLogit.from_formula("shares ~ 0 + tiny + x + [prices ~ z1]", data)
        BLPLogit.from_formula("shares ~ 1 + I(1000 * x) + [prices ~ I(z1 / 1000)]", data)
    finally:
        context.__exit__(None, None, None)


def _shared(path: str):
    if not (data_home() / path).is_file():
        pytest.skip(f"shared data file {data_home() / path} not found")


@pytest.mark.data
def test_the_shared_data_sets_do_not_warn_about_scale():
    from blpmodels import datasets

    _shared("mixtape/products.csv")
    _shared("pyblp/nevo_products.csv")
    _shared("pyblp/blp_products.csv")
    mixtape = datasets.load_mixtape_products()
    exercise2, _ = datasets.load_mixtape_exercise2()
    nevo, _ = datasets.load_nevo()
    blp, _ = datasets.load_blp()

    def instruments(count: int) -> str:
        return " + ".join(f"demand_instruments{k}" for k in range(count))

    cases = [
        (mixtape, "shares ~ 1 + mushy + [prices ~ price_instrument]", "0 + prices + mushy"),
        (exercise2, f"shares ~ 1 + mushy + [prices ~ {instruments(4)}]", "0 + mushy + prices"),
        (nevo, f"shares ~ 1 + sugar + mushy + [prices ~ {instruments(20)}]", "1 + prices + sugar"),
        (
            blp,
            f"shares ~ 1 + hpwt + air + mpd + space + [prices ~ {instruments(8)}]",
            "1 + prices + hpwt + air + mpd + space",
        ),
    ]
    if (data_home() / "pyblp/petrin_products.csv").is_file():
        petrin, _ = datasets.load_petrin()
        characteristics = "hpwt + space + air + mpd + fwd + mi + sw + su + pv + pgnp + trend"
        cases.append(
            (
                petrin,
                f"shares ~ 1 + {characteristics} + trend2 + [prices ~ {instruments(22)}]",
                "1 + prices + sw + su + pv + pgnp",
            )
        )
    design = blpmodels.data.products.ProductDesign
    from blpmodels.data.formula import parse_formula

    context = _no_warnings()
    try:
        for data, formula, random in cases:
            design.from_formula(parse_formula(formula), data, random=random)
    finally:
        context.__exit__(None, None, None)


def test_huge_columns_are_rescaled_not_reported_as_zero(simulated_products):
    # Column norms of values near 1e200 overflow to inf; the rank check must not call them zero.
    data = simulated_products.assign(huge=simulated_products["x"] * 1e200)
    with pytest.warns(UserWarning, match="regressor 'huge' has values up to"):
        model = BLPLogit.from_formula("shares ~ 1 + huge + [prices ~ z1]", data)
    assert model.design.x_names == ["Intercept", "huge", "prices"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the scale warning, checked above
        with pytest.raises(BLPInputError, match=r"'I\(2 \* huge\)' is a linear combination"):
            BLPLogit.from_formula("shares ~ 1 + huge + I(2 * huge) + [prices ~ z1]", data)


def test_missing_node_column_explains_the_pairing(rc_products, rc_agents):
    """Agent data written for pyblp pair nodes with nonzero σ only: the error says how ours pair."""
    model = _rc_model(rc_products, rc_agents, random="1 + prices + x")
    with pytest.raises(BLPInputError, match=r"'x', which pairs with agent column 'nodes2'.*pyblp"):
        model.fit(sigma=np.diag([0.0, 1.0, 1.0]))


def test_fit_without_starting_values_is_an_error(rc_products, rc_agents):
    """Zeros stay fixed at zero: fit() with neither sigma nor pi would quietly be a logit."""
    model = _rc_model(rc_products, rc_agents)
    with pytest.raises(BLPInputError, match=r"give starting values: sigma="):
        model.fit()
    logit = model.fit(sigma=0)  # on purpose: allowed, and then it is the IV logit
    assert list(logit.params.index) == ["Intercept", "x", "prices"]
