"""statsmodels integration: labelled outputs, hypothesis tests, summaries, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from linearmodels.iv import IV2SLS, IVGMM
from scipy import stats
from statsmodels.iolib.summary2 import summary_col

from blpmodels import BLPLogit, BLPNestedLogit
from blpmodels.exceptions import BLPInputError

IV_FORMULA = "shares ~ 1 + mushy + [prices ~ price_instrument]"
NAMES = ["Intercept", "mushy", "prices"]
NESTED_FORMULA = "shares ~ 1 + x + [prices ~ z1 + z2 + nest_count + nest_z1]"


def _logit_delta(data: pd.DataFrame) -> pd.Series:
    outside = 1.0 - data.groupby("market_ids")["shares"].transform("sum")
    return np.log(data["shares"] / outside)


@pytest.fixture(scope="module")
def linearmodels_iv(mixtape_products):
    data = mixtape_products.assign(logit_delta=_logit_delta(mixtape_products))
    return IV2SLS.from_formula("logit_delta ~ 1 + mushy + [prices ~ price_instrument]", data).fit(
        cov_type="robust", debiased=False
    )


# ---------------------------------------------------------------- labelled outputs


@pytest.mark.data
def test_inference_outputs_are_labelled_pandas_objects(iv_results):
    for attribute in ("params", "bse", "tvalues", "pvalues"):
        value = getattr(iv_results, attribute)
        assert isinstance(value, pd.Series), attribute
        assert list(value.index) == NAMES, attribute
    conf_int = iv_results.conf_int()
    assert isinstance(conf_int, pd.DataFrame)
    assert list(conf_int.index) == NAMES
    cov = iv_results.cov_params()
    assert isinstance(cov, pd.DataFrame)
    assert list(cov.index) == NAMES and list(cov.columns) == NAMES


@pytest.mark.data
def test_inference_equals_linearmodels(iv_results, linearmodels_iv):
    np.testing.assert_allclose(iv_results.tvalues, linearmodels_iv.tstats[NAMES], rtol=1e-8)
    np.testing.assert_allclose(iv_results.pvalues, linearmodels_iv.pvalues[NAMES], rtol=1e-6)
    np.testing.assert_allclose(
        iv_results.conf_int().to_numpy(), linearmodels_iv.conf_int().loc[NAMES], rtol=1e-8
    )
    np.testing.assert_allclose(np.diag(iv_results.cov_params()), iv_results.bse**2, rtol=1e-12)


@pytest.mark.data
def test_counts_and_degrees_of_freedom(iv_results, iv_fe_results):
    assert iv_results.nobs == 2256
    assert iv_results.df_model == 2
    assert iv_results.df_resid == 2256 - 3
    assert iv_fe_results.df_resid == 2256 - 1 - 117


def test_residuals_and_fitted_values_carry_the_data_index(simulated_products):
    data = simulated_products.copy()
    data.index = [f"row{k}" for k in range(len(data))]
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1]", data).fit()
    for series in (results.xi, results.delta, results.resid, results.fittedvalues):
        assert isinstance(series, pd.Series)
        assert series.index.equals(data.index)
    np.testing.assert_allclose(results.fittedvalues + results.resid, results.delta, atol=1e-12)
    market = data[data["market_ids"] == "m02"]
    assert results.predict(market).index.equals(market.index)


# ---------------------------------------------------------------- hypothesis tests


@pytest.mark.data
def test_t_test_with_a_negative_constant(iv_fe_results):
    test = iv_fe_results.t_test("prices = -30")
    beta, se = iv_fe_results.params["prices"], iv_fe_results.bse["prices"]
    z = (beta + 30.0) / se
    assert float(np.squeeze(test.effect)) == pytest.approx(beta, rel=1e-12)
    assert float(np.squeeze(test.sd)) == pytest.approx(se, rel=1e-12)
    assert float(np.squeeze(test.tvalue)) == pytest.approx(z, rel=1e-10)
    assert float(np.squeeze(test.pvalue)) == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-8)
    assert z == pytest.approx((-30.599521 + 30) / 0.967837, rel=1e-5)


@pytest.mark.data
def test_t_test_accepts_a_restriction_matrix(iv_results):
    test = iv_results.t_test(np.array([[0.0, 1.0, -1.0]]))
    effect = iv_results.params["mushy"] - iv_results.params["prices"]
    cov = iv_results.cov_params()
    se = np.sqrt(
        cov.loc["mushy", "mushy"] + cov.loc["prices", "prices"] - 2 * cov.loc["mushy", "prices"]
    )
    assert float(np.squeeze(test.tvalue)) == pytest.approx(effect / se, rel=1e-10)


@pytest.mark.data
@pytest.mark.parametrize("hypothesis", ["prices = -30, mushy = 0", ["prices = -30", "mushy = 0"]])
def test_wald_test_of_joint_string_hypotheses(iv_results, hypothesis):
    test = iv_results.wald_test(hypothesis)
    R = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    r = R @ iv_results.params.to_numpy() - np.array([-30.0, 0.0])
    statistic = r @ np.linalg.solve(R @ iv_results.cov_params().to_numpy() @ R.T, r)
    assert float(np.squeeze(test.statistic)) == pytest.approx(statistic, rel=1e-10)
    assert float(np.squeeze(test.pvalue)) == pytest.approx(stats.chi2.sf(statistic, 2), rel=1e-8)


@pytest.mark.data
def test_wald_test_matches_linearmodels(iv_results, linearmodels_iv):
    ours = iv_results.wald_test("prices = -9, mushy = 0.05")
    theirs = linearmodels_iv.wald_test(formula="prices = -9, mushy = 0.05")
    assert float(np.squeeze(ours.statistic)) == pytest.approx(theirs.stat, rel=1e-8)


def test_hypotheses_with_bracketed_parameter_names(simulated_nested_products):
    results = BLPNestedLogit.from_formula(NESTED_FORMULA, simulated_nested_products).fit(rho="nest")
    # pyblp-style names with brackets work in string hypotheses.
    test = results.t_test("rho[0] - rho[1] = 0")
    effect = results.params["rho[0]"] - results.params["rho[1]"]
    assert float(np.squeeze(test.effect)) == pytest.approx(effect, rel=1e-10, abs=1e-12)


@pytest.mark.data
def test_unreadable_hypothesis_names_the_parameters(iv_results):
    with pytest.raises(BLPInputError, match="could not read the hypothesis"):
        iv_results.t_test("price = -30")


# ---------------------------------------------------------------- summaries


@pytest.mark.data
def test_summary_reports_markets_absorbed_effects_and_first_stage(iv_fe_results):
    text = str(iv_fe_results.summary())
    assert "BLPLogit Results" in text
    assert "No. Markets:" in text and "94" in text
    assert "No. Products:" in text and "24" in text
    assert "No. Observations:" in text and "2256" in text
    assert "Absorbed FE:" in text and "market_ids, product_ids" in text
    assert "1st-stage F prices" in text
    assert "-30.5995" in text
    assert iv_fe_results.summary().as_html()
    assert iv_fe_results.summary().as_latex()


@pytest.mark.data
def test_first_stage_diagnostics_equal_linearmodels(mixtape_products):
    data = mixtape_products.assign(
        logit_delta=_logit_delta(mixtape_products),
        price_instrument_sq=mixtape_products["price_instrument"] ** 2,
    )
    formula = "1 + mushy + [prices ~ price_instrument + price_instrument_sq]"
    ours = BLPLogit.from_formula(f"shares ~ {formula}", data).fit()
    theirs = IV2SLS.from_formula(f"logit_delta ~ {formula}", data).fit(cov_type="robust")
    diagnostics = theirs.first_stage.diagnostics.loc["prices"]
    row = ours.first_stage.loc["prices"]
    # Our F is the robust Wald statistic per excluded instrument.
    assert row["f_stat"] == pytest.approx(diagnostics["f.stat"] / 2, rel=1e-8)
    assert row["partial_r2"] == pytest.approx(diagnostics["partial.rsquared"], rel=1e-8)
    assert row["n_instruments"] == 2


@pytest.mark.data
def test_summary_col_shows_statsmodels_ols_and_blp_side_by_side(mixtape_products, iv_results):
    data = mixtape_products.assign(logit_delta=_logit_delta(mixtape_products))
    ols = smf.ols("logit_delta ~ prices + mushy", data).fit(cov_type="HC0")
    table = summary_col([ols, iv_results], model_names=["OLS", "BLP IV"], stars=True)
    text = str(table)
    assert "OLS" in text and "BLP IV" in text
    assert f"{ols.params['prices']:.4f}" in text
    assert f"{iv_results.params['prices']:.4f}" in text
    assert f"({iv_results.bse['prices']:.4f})" in text


# ---------------------------------------------------------------- pickling and refits


@pytest.mark.data
@pytest.mark.parametrize("which", ["iv_results", "iv_fe_results"])
def test_results_round_trip_through_pickle(request, which, mixtape_products, tmp_path):
    results = request.getfixturevalue(which)
    restored = pickle.loads(pickle.dumps(results))
    pd.testing.assert_series_equal(restored.params, results.params)
    pd.testing.assert_series_equal(restored.bse, results.bse)
    market = mixtape_products[mixtape_products["market_ids"] == "C01Q2"].copy()
    market["prices"] *= 0.5
    pd.testing.assert_series_equal(restored.predict(market), results.predict(market))
    pd.testing.assert_frame_equal(restored.elasticities("C01Q2"), results.elasticities("C01Q2"))
    # statsmodels' save/load goes through pickle too.
    path = tmp_path / "results.pickle"
    results.save(path)
    loaded = type(results).load(path)
    pd.testing.assert_series_equal(loaded.params, results.params)


def test_results_with_module_transforms_round_trip_through_pickle(simulated_products):
    import scipy.special

    data = simulated_products
    results = BLPLogit.from_formula("shares ~ 1 + scipy.special.expit(x) + prices", data).fit()
    restored = pickle.loads(pickle.dumps(results))
    market = data[data["market_ids"] == "m05"].copy()
    market["x"] += 1.0
    pd.testing.assert_series_equal(restored.predict(market), results.predict(market))
    assert scipy.special  # the module is re-imported, not copied


def test_model_does_not_hold_the_callers_namespace(simulated_products):
    unrelated = np.zeros(10)  # noqa: F841 - must not be captured
    model = BLPLogit.from_formula("shares ~ 1 + prices", simulated_products)
    assert "unrelated" not in model.design.context


def test_refitting_a_model_keeps_earlier_labels(simulated_nested_products):
    model = BLPNestedLogit.from_formula(NESTED_FORMULA, simulated_nested_products)
    common = model.fit()
    per_nest = model.fit(rho="nest")
    assert list(common.params.index) == ["Intercept", "x", "prices", "rho"]
    assert list(per_nest.params.index) == ["Intercept", "x", "prices", "rho[0]", "rho[1]"]


@pytest.mark.data
def test_two_step_weighting_matrix_is_the_inverse_moment_covariance_of_step_one(
    mixtape_products,
):
    data = mixtape_products.assign(price_instrument_sq=mixtape_products["price_instrument"] ** 2)
    model = BLPLogit.from_formula(
        "shares ~ 1 + mushy + [prices ~ price_instrument + price_instrument_sq]", data
    )
    one_step = model.fit()
    two_step = model.fit(method="2s")
    np.testing.assert_allclose(two_step.W, one_step.updated_W, rtol=1e-12)
    three_step = model.fit(W=two_step.updated_W)
    assert not np.allclose(three_step.params, two_step.params, rtol=1e-12)
    assert two_step.j_stat[1] == 1
    _, df, pvalue = one_step.j_stat
    assert df == 1 and 0 <= pvalue <= 1


@pytest.mark.data
def test_just_identified_model_has_no_overidentification_test(iv_results):
    j_stat, df, pvalue = iv_results.j_stat
    assert df == 0 and np.isnan(pvalue)
    assert j_stat == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------- summaries against oracles

OVERID = "1 + mushy + [prices ~ price_instrument + price_instrument_sq]"


@pytest.fixture(scope="module")
def overidentified_pair(mixtape_products):
    """Two-step overidentified IV logit and linearmodels' IVGMM on the same moments."""
    data = mixtape_products.assign(
        logit_delta=_logit_delta(mixtape_products),
        price_instrument_sq=mixtape_products["price_instrument"] ** 2,
    )
    ours = BLPLogit.from_formula(f"shares ~ {OVERID}", data).fit(method="2s")
    # Our robust moment covariance is centered; linearmodels centers when asked.
    theirs = IVGMM.from_formula(
        f"logit_delta ~ {OVERID}", data, weight_type="robust", center=True
    ).fit(iter_limit=2, cov_type="robust", debiased=False, center=True)
    return ours, theirs


def _printed(cell: str) -> tuple[float, float]:
    """A printed number and half a unit of its last printed digit (its rounding error)."""
    text = cell.strip()
    mantissa = text.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(text.lower().split("e")[1]) if "e" in text.lower() else 0
    return float(text), 0.5 * 10.0 ** (exponent - decimals) * (1 + 1e-9)


def _header(summary) -> dict[str, str]:
    cells = {}
    for row in summary.tables[0].data:
        for label, value in zip(row[::2], row[1::2], strict=True):
            if label.strip():
                cells[label.strip()] = value.strip()
    return cells


@pytest.mark.data
def test_summary_prints_the_numbers_of_linearmodels(overidentified_pair):
    """Every printed coefficient, SE, z, p-value, interval, J and its p-value, to the digit."""
    ours, theirs = overidentified_pair
    summary = ours.summary()
    table = summary.tables[1].data
    assert [cell.strip() for cell in table[0]] == [
        "",
        "coef",
        "std err",
        "z",
        "P>|z|",
        "[0.025",
        "0.975]",
    ]
    conf_int = theirs.conf_int()
    printed_names = []
    for row in table[1:]:
        name = row[0].strip()
        printed_names.append(name)
        expected = [
            theirs.params[name],
            theirs.std_errors[name],
            theirs.tstats[name],
            theirs.pvalues[name],
            conf_int.loc[name, "lower"],
            conf_int.loc[name, "upper"],
        ]
        for cell, value in zip(row[1:], expected, strict=True):
            number, rounding = _printed(cell)
            assert abs(number - value) <= rounding, (name, cell, value)
    assert printed_names == NAMES
    header = _header(summary)
    j_stat = theirs.j_stat
    assert float(header["Objective:"]) == pytest.approx(j_stat.stat, rel=5e-6)  # 6 digits
    assert float(header["Hansen J p-value:"]) == pytest.approx(j_stat.pval, rel=5e-4)  # 4 digits
    assert header["Moments:"] == "4"  # Intercept, mushy and two excluded instruments
    assert header["Overid. df:"] == str(j_stat.df) == "1"
    assert header["GMM step:"] == "2-step"
    assert header["No. Observations:"] == str(int(theirs.nobs))
    first_stage = theirs.first_stage.diagnostics.loc["prices", "f.stat"] / 2  # per instrument
    assert float(header["1st-stage F prices:"]) == pytest.approx(first_stage, rel=5e-4)


# ---------------------------------------------------------------- F tests


@pytest.mark.data
def test_f_test_equals_statsmodels_on_the_same_ols(mixtape_products, ols_results):
    """OLS with HC0: our F test against statsmodels' own f_test on the same regression."""
    data = mixtape_products.assign(logit_delta=_logit_delta(mixtape_products))
    oracle = smf.ols("logit_delta ~ 1 + prices + mushy", data).fit(cov_type="HC0")
    hypothesis = "prices = -7, mushy = 0.1"
    ours, theirs = ols_results.f_test(hypothesis), oracle.f_test(hypothesis)
    assert float(np.squeeze(ours.fvalue)) == pytest.approx(
        float(np.squeeze(theirs.fvalue)), rel=1e-8
    )
    assert float(ours.pvalue) == pytest.approx(float(theirs.pvalue), rel=1e-6)
    assert (ours.df_num, ours.df_denom) == (theirs.df_num, theirs.df_denom) == (2, 2256 - 3)


@pytest.mark.data
def test_f_test_of_an_iv_model_by_hand_from_linearmodels(iv_results, linearmodels_iv):
    """F = r'(R V R')⁻¹ r / q with linearmodels' estimates and covariance; p from F(q, N − K)."""
    test = iv_results.f_test("prices = -9, mushy = 0.05")
    params = linearmodels_iv.params[NAMES].to_numpy()
    cov = linearmodels_iv.cov.loc[NAMES, NAMES].to_numpy()
    R = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    r = R @ params - np.array([-9.0, 0.05])
    F = r @ np.linalg.solve(R @ cov @ R.T, r) / 2
    assert float(np.squeeze(test.fvalue)) == pytest.approx(F, rel=1e-8)
    assert float(test.pvalue) == pytest.approx(stats.f.sf(F, 2, 2256 - 3), rel=1e-6)
    assert (test.df_num, test.df_denom) == (2, 2256 - 3)


# ---------------------------------------------------------------- compare()


@pytest.mark.data
def test_compare_tabulates_each_results_own_numbers(
    mixtape_products, iv_results, linearmodels_iv, overidentified_pair
):
    from blpmodels import compare

    data = mixtape_products.assign(logit_delta=_logit_delta(mixtape_products))
    ols = smf.ols("logit_delta ~ 1 + prices + mushy", data).fit(cov_type="HC0")
    two_step, ivgmm = overidentified_pair
    columns = {"OLS": ols, "BLP IV": iv_results, "linearmodels IV": linearmodels_iv}
    columns["BLP 2-step"] = two_step
    comparison = compare(columns, stars=True)
    oracle_values = {
        "OLS": (ols.params, ols.bse, ols.pvalues),
        "BLP IV": (linearmodels_iv.params, linearmodels_iv.std_errors, linearmodels_iv.pvalues),
        "linearmodels IV": (
            linearmodels_iv.params,
            linearmodels_iv.std_errors,
            linearmodels_iv.pvalues,
        ),
        "BLP 2-step": (ivgmm.params, ivgmm.std_errors, ivgmm.pvalues),
    }
    assert list(comparison.params.columns) == list(columns)
    cells = comparison.to_frame()
    for column, (params, errors, pvalues) in oracle_values.items():
        for name in NAMES:
            assert comparison.params.loc[name, column] == pytest.approx(params[name], rel=1e-8)
            assert comparison.std_errors.loc[name, column] == pytest.approx(errors[name], rel=1e-6)
            p = pvalues[name]
            stars = "***" if p < 0.01 else "**" if p < 0.05 else "*" if p < 0.1 else ""
            position = list(cells.index).index(name)
            assert cells[column].iloc[position] == f"{params[name]:.4f}{stars}", (column, name)
            assert cells[column].iloc[position + 1] == f"({errors[name]:.4f})", (column, name)
    info = comparison.info
    assert (info.loc["N"] == "2256").all()
    assert info.loc["GMM objective", "BLP 2-step"] == f"{ivgmm.j_stat.stat:.4g}"
    assert info.loc["Markets", "BLP IV"] == "94"
    assert pd.isna(info.loc["GMM objective", "OLS"]) and pd.isna(info.loc["Markets", "OLS"])
    text = str(comparison)
    assert f"{ivgmm.params['prices']:.4f}***" in text
