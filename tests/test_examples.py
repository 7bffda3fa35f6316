"""The Mixtape examples run and reproduce the exercises' headline numbers.

Exercise 1 runs entirely (about a second); of exercise 2 the default suite runs the
from-scratch rebuild of the derived data, questions 2, 5 and 6 and supplemental 4 (a few
seconds); the whole script (about half a minute) is marked slow. The data are located as
:func:`blpmodels.datasets.data_home` does (``BLPMODELS_DATA`` or ``../shared/data``) and the
tests are skipped when they are missing.
"""

from __future__ import annotations

import runpy
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from builders import EXAMPLES, load_example, require_data

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def exercise1() -> ModuleType:
    """The exercise 1 example module."""
    require_data("mixtape/products.csv")
    return load_example("mixtape_exercise1")


@pytest.fixture(scope="module")
def exercise1_results(exercise1: ModuleType) -> dict[str, Any]:
    """Everything exercise 1's ``main()`` returns (runs the whole script once).

    Questions 4 and 5 fit OLS on purpose on data holding ``price_instrument``: each warns so.
    """
    with pytest.warns(UserWarning, match="no regressor is instrumented") as record:
        results = exercise1.main()
    assert sum("no regressor is instrumented" in str(item.message) for item in record) == 2
    return results


@pytest.fixture(scope="module")
def exercise2() -> ModuleType:
    """The exercise 2 example module."""
    require_data(
        "mixtape/products.csv",
        "mixtape/demographics.csv",
        "mixtape/derived/ex2_product_data.csv",
        "mixtape/derived/ex2_product_data_with_overid_and_firms.csv",
        "mixtape/derived/ex2_agent_data.csv.gz",
    )
    return load_example("mixtape_exercise2")


@pytest.fixture(scope="module")
def exercise2_data(exercise2: ModuleType) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exercise 2 products and agents."""
    return exercise2.load_data()


@pytest.fixture(scope="module")
def exercise2_q5(exercise2: ModuleType, exercise2_data: tuple[pd.DataFrame, pd.DataFrame]):
    """Question 5's fit (sigma and pi on prices)."""
    products, agents = exercise2_data
    return exercise2.question5(products, agents, exercise2.exercise2_logit(products))


# ------------------------------------------------------------------------------ exercise 1


def test_exercise1_shares(exercise1_results: dict[str, Any]) -> None:
    assert exercise1_results["q2"]["outside_min"] == pytest.approx(0.305, abs=5e-4)
    assert exercise1_results["q2"]["outside_max"] == pytest.approx(0.815, abs=5e-4)


def test_exercise1_ols_and_blplogit_agree(exercise1_results: dict[str, Any]) -> None:
    ols, blp = exercise1_results["q3"], exercise1_results["q4"]
    assert ols.params["price_per_serving"] == pytest.approx(-7.48, abs=5e-3)
    renamed = ols.params.rename({"price_per_serving": "prices"})[blp.params.index]
    np.testing.assert_allclose(blp.params, renamed, rtol=1e-10)
    bse = ols.bse.rename({"price_per_serving": "prices"})[blp.bse.index]
    np.testing.assert_allclose(blp.bse, bse, rtol=1e-10)


def test_exercise1_fixed_effects_and_iv(exercise1_results: dict[str, Any]) -> None:
    assert exercise1_results["q5"].params["prices"] == pytest.approx(-28.6, abs=0.05)
    assert exercise1_results["q6"].params["prices"] == pytest.approx(-30.6, abs=0.05)
    first = exercise1_results["q6_first_stage"]
    assert first.tvalues["price_instrument"] ** 2 > 1000


def test_exercise1_counterfactuals(exercise1_results: dict[str, Any]) -> None:
    q7 = exercise1_results["q7"]
    assert q7["own"] == pytest.approx(223.6, abs=0.05)
    assert q7["others"] == pytest.approx(-1.45, abs=0.005)
    assert q7["others_spread"] < 1e-8  # IIA: every rival loses the same percent
    assert q7["own_cut"] == pytest.approx(230.2, abs=0.05)
    assert q7["others_cut"] == pytest.approx(-2.9, abs=0.01)


def test_exercise1_elasticities(exercise1_results: dict[str, Any]) -> None:
    elasticities = exercise1_results["q8"]["elasticities"]
    assert elasticities.shape == (24, 24)
    own = np.diag(elasticities)
    assert (own < 0).all()
    off = elasticities.to_numpy()[~np.eye(24, dtype=bool)]
    assert (off > 0).all()
    diversion = exercise1_results["q8"]["diversion"]
    np.testing.assert_allclose(diversion.sum(axis=1), 1.0, rtol=1e-10)


def test_exercise1_clustered_and_bootstrap(exercise1_results: dict[str, Any]) -> None:
    assert exercise1_results["s1"]["robust"] == pytest.approx(0.968, abs=5e-4)
    assert exercise1_results["s1"]["clustered"] == pytest.approx(1.182, abs=5e-4)
    table = exercise1_results["s2"]
    assert (table["2.5%"] < table["estimate"]).all()
    assert (table["estimate"] < table["97.5%"]).all()
    assert table.loc["F1B04", "2.5%"] > 150


def test_exercise1_runs_as_a_script(exercise1: ModuleType, capsys) -> None:
    with pytest.warns(UserWarning, match="no regressor is instrumented"):
        runpy.run_path(str(EXAMPLES / "mixtape_exercise1.py"), run_name="__main__")
    assert "Exercise 1 ran in" in capsys.readouterr().out


# ------------------------------------------------------------------------------ exercise 2


def test_exercise2_data_built_from_scratch(
    exercise2: ModuleType, exercise2_data: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    products, agents = exercise2_data
    overid, _ = exercise2.load_data(overidentified=True)
    differences = exercise2.build_from_scratch(products, agents, overid)
    correlation = differences.pop("corr_prices_predicted")
    assert correlation > 0.95
    assert max(differences.values()) < 1e-12


def test_exercise2_question2(
    exercise2: ModuleType, exercise2_data: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    results = exercise2.question2(*exercise2_data)
    assert results.params["pi[mushy,log_income]"] == pytest.approx(0.251, abs=5e-4)
    assert results.info.convergence["converged"]
    assert results.info.convergence["gradient_norm"] < 1e-6


def test_exercise2_question5(exercise2_q5) -> None:
    params = exercise2_q5.params
    assert params["sigma[prices,prices]"] == pytest.approx(6.02, abs=0.01)
    assert params["pi[prices,log_income]"] == pytest.approx(-5.96, abs=0.01)
    assert (np.asarray(exercise2_q5.info.convergence["hessian_eigenvalues"]) > 0).all()


def test_exercise2_question6_agent_probabilities(
    exercise2: ModuleType, exercise2_data: tuple[pd.DataFrame, pd.DataFrame], exercise2_q5
) -> None:
    products, agents = exercise2_data
    agent = exercise2.agent_counterfactual(exercise2_q5, agents, products)
    assert agent["check"] < 1e-10  # agent probabilities aggregate to predict()'s shares
    table = exercise2.price_cut_table(products, {"q5": exercise2_q5})
    changes = table["q5"].drop(index="F1B04")
    assert changes.max() - changes.min() > 0.1  # no longer IIA


def test_exercise2_supplemental4_optimal_instruments(
    exercise2: ModuleType, exercise2_data: tuple[pd.DataFrame, pd.DataFrame], exercise2_q5
) -> None:
    """Instruments computed from question 5 (no precomputed file) give the exercise's numbers.

    The expected estimates are those the example printed when it read pyblp's precomputed
    ``ex2_s4_optimal_instruments.csv`` (at pyblp's question-5 estimates, about 1e-7 from ours).
    """
    products, agents = exercise2_data
    table = exercise2.supplemental4(products, agents, exercise2_q5)
    instruments = table.attrs["instruments"]
    assert list(instruments.columns) == [
        "optimal_prices",
        "optimal_sigma_prices_prices",
        "optimal_pi_mushy_log_income",
        "optimal_pi_prices_log_income",
    ]
    if table.attrs["file_difference"] is not None:
        assert table.attrs["file_difference"] < 1e-6
    row = table.loc["optimal instruments"]
    expected = {
        "prices": -13.4825,
        "se prices": 16.8504,
        "sigma[prices,prices]": 12.6214,
        "se sigma": 3.1020,
        "pi[prices,log_income]": -3.1144,
        "se pi": 1.8916,
        "pi[mushy,log_income]": 0.1507,
    }
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, abs=5e-4), name
    assert row["converged"]


@pytest.mark.slow
def test_exercise2_whole_script(exercise2: ModuleType) -> None:
    require_data(
        "mixtape/derived/ex2_s3_quad_7x7.csv.gz",
        *(f"mixtape/derived/ex2_s1_mc_{n}.csv.gz" for n in exercise2.DRAWS),
        *(f"mixtape/derived/ex2_s2_halton_{n}.csv.gz" for n in exercise2.DRAWS),
    )
    out = exercise2.main()
    starts = out["q3"]["pi[mushy,log_income]"]
    assert np.allclose(starts, 0.2513, atol=1e-4)
    for table in (out["s1"], out["s2"]):
        assert table["converged"].all()
        large = table[table.index.get_level_values("draws") >= 500]
        assert large["sigma[prices,prices]"].between(5.9, 6.2).all()
    assert out["s3"].attrs["gap"] < 1e-12
    assert out["s4"].loc["optimal instruments", "sigma[prices,prices]"] == pytest.approx(
        12.62, abs=0.01
    )
    s5 = out["s5"]
    np.testing.assert_allclose(
        s5.loc["1-step, W=updated_W", "sigma[prices,prices]"],
        s5.loc['method="2s"', "sigma[prices,prices]"],
        atol=1e-5,
    )
    assert s5.loc['method="2s"', "objective"] == pytest.approx(1.705, abs=1e-3)


# ------------------------------------------------------------------ supply side and mergers


@pytest.fixture(scope="module")
def supply_example() -> ModuleType:
    """The supply-side and merger example module."""
    require_data(
        "mixtape/products.csv",
        "mixtape/derived/ex2_product_data_with_overid_and_firms.csv",
        "mixtape/derived/ex2_agent_data.csv.gz",
    )
    return load_example("mixtape_supply_and_mergers")


@pytest.fixture(scope="module")
def supply_logit(supply_example: ModuleType) -> tuple[pd.DataFrame, Any]:
    """Exercise 1 products (with firm_ids) and the IV logit clustered by product."""
    from blpmodels.datasets import load_mixtape_products

    products = load_mixtape_products()
    return products, supply_example.exercise1_results(products)


@pytest.fixture(scope="module")
def supply_q5(supply_example: ModuleType) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """Exercise 2 products (five instruments, firms), agents and question 5's fit."""
    products, agents = supply_example.load_exercise2()
    return products, agents, supply_example.question5_results(products, agents)


def _check_exercise1_supplemental3(s3: dict[str, Any]) -> None:
    """The marginal costs of exercise 1, supplemental 3 (solution notebook's numbers)."""
    assert s3["mean"] == pytest.approx(0.0870, abs=5e-5)
    assert s3["median"] == pytest.approx(0.0851, abs=5e-5)
    assert s3["min"] == pytest.approx(0.000154, abs=5e-7)
    assert s3["max"] == pytest.approx(0.188, abs=5e-4)
    assert s3["max_over_cost"] == pytest.approx(316, abs=0.5)
    assert 0 < s3["mean_margin"] < 1


def _check_exercise1_supplemental4(s4: dict[str, Any]) -> None:
    """Exercise 1, supplemental 4: equilibrium at α = −20, estimated back."""
    assert s4["observed_iterations"] == 0
    assert s4["foc_norm"] <= 1e-10
    assert s4["max_hessian_eigenvalue"] < 0
    assert s4["price_change"] > 0  # less price-sensitive demand, higher prices
    assert s4["alpha_hat"] == pytest.approx(-19.39, abs=5e-3)


def _check_merger(soc: dict[str, Any], merged: dict[str, Any]) -> None:
    """Question 5 demand: C03Q1 fails the second-order conditions; F1 buys F2 elsewhere."""
    assert soc["failed"] == ["C03Q1"]
    assert soc["eigenvalues"].loc[("C03Q1", "F1")] > 0
    assert soc["positive_alpha"].index[0].startswith("C03")
    assert merged["excluded_error"] == ["C03Q1"]
    result = merged["merger"]
    markets = result.markets
    assert len(markets) == 93 and "C03Q1" not in markets.index
    equilibrium = result.equilibrium.markets
    assert (equilibrium["foc_norm"] < 1e-12).all()
    assert (equilibrium["max_hessian_eigenvalue"] < 0).all()
    merging = result.products["firm_ids_pre"].isin(["F1", "F2"])
    assert (result.products.loc[merging, "prices_change"] > 0).all()
    assert (result.products["firm_ids_post"][merging] == "F1").all()
    assert merged["merging_price_change"] > merged["other_price_change"] > 0
    assert (markets["hhi_change"] > 0).all()
    assert (markets["consumer_surplus_change"] < 0).all()
    assert markets["profits_change"].sum() > 0
    # Consumers lose more than firms gain: no cost savings.
    assert markets["consumer_surplus_change"].sum() + markets["profits_change"].sum() < 0


def test_supply_exercise1_supplemental3(
    supply_example: ModuleType, supply_logit: tuple[pd.DataFrame, Any]
) -> None:
    _check_exercise1_supplemental3(supply_example.exercise1_supplemental3(*supply_logit))


def test_supply_exercise1_supplemental4(
    supply_example: ModuleType, supply_logit: tuple[pd.DataFrame, Any]
) -> None:
    products, results = supply_logit
    s4 = supply_example.exercise1_supplemental4(products, results)
    _check_exercise1_supplemental4(s4)
    np.testing.assert_allclose(s4["equilibrium"].data["costs"], results.costs(), rtol=1e-14)


def test_supply_merger_with_question5_demand(
    supply_example: ModuleType, supply_q5: tuple[pd.DataFrame, pd.DataFrame, Any]
) -> None:
    _, agents, q5 = supply_q5
    assert q5.params["sigma[prices,prices]"] == pytest.approx(6.02, abs=0.01)
    assert q5.params["pi[prices,log_income]"] == pytest.approx(-5.96, abs=0.01)
    soc = supply_example.second_order_conditions(q5, agents)
    _check_merger(soc, supply_example.merger(q5, exclude=soc["failed"]))


@pytest.mark.slow
def test_supply_whole_script(supply_example: ModuleType, capsys) -> None:
    """The whole script (about half a minute), with exercise 2 supplemental 6."""
    out = supply_example.main()
    _check_exercise1_supplemental3(out["ex1_s3"])
    _check_exercise1_supplemental4(out["ex1_s4"])
    s6 = out["ex2_s6"]
    assert s6["supply"].info.convergence["converged"]
    assert s6["gamma_intercept"] == pytest.approx(0.0881, abs=5e-5)
    assert s6["gamma_mushy"] == pytest.approx(-0.00568, abs=5e-6)
    assert s6["demand_difference"] < 1e-5
    # The demand-only step is supplemental 5's one-step fit.
    assert s6["demand"].params["sigma[prices,prices]"] == pytest.approx(8.48, abs=0.01)
    _check_merger(out["soc"], out["merger"])
    assert "Supply side and mergers ran in" in capsys.readouterr().out


# ------------------------------------------------------------------ docs/supply.md


def _guide_blocks(guide: str) -> list[tuple[bool, str]]:
    """The ``python`` blocks of ``docs/<guide>.md``: (marked slow, code)."""
    import re

    text = (EXAMPLES.parent / "docs" / f"{guide}.md").read_text()
    found = re.findall(r"(<!-- slow -->\n)?```python\n(.*?)```", text, flags=re.S)
    return [(bool(slow), code) for slow, code in found]


def _expected_prints(code: str) -> list[str]:
    """What each top-level ``print`` is documented to show: its trailing comment, or the
    comment line below it (a comment may add words after the value: ``# 6376 (shares held)``)."""
    lines = code.splitlines()
    expected = []
    for number, line in enumerate(lines):
        if not line.startswith("print("):
            continue
        if "  # " in line:
            expected.append(line.rsplit("  # ", 1)[1])
        else:
            following = lines[number + 1]
            assert following.startswith("# "), f"undocumented output: {line}"
            expected.append(following[2:])
    return expected


def _run_guide(guide: str, slow: bool, capsys) -> int:
    """Run ``docs/<guide>.md``'s blocks in one namespace; every print shows what its comment
    says."""
    namespace: dict[str, Any] = {}
    checked = 0
    for marked, code in _guide_blocks(guide):
        if marked and not slow:
            continue
        capsys.readouterr()
        exec(compile(code, f"docs/{guide}.md", "exec"), namespace)
        printed = capsys.readouterr().out.splitlines()
        expected = _expected_prints(code)
        assert len(printed) == len(expected), (printed, expected)
        for shown, documented in zip(printed, expected, strict=True):
            assert documented == shown or documented.startswith((shown + " ", shown + ",")), (
                f"docs/{guide}.md says {documented!r}, the code prints {shown!r}"
            )
            checked += 1
    return checked


def test_supply_guide_snippets_print_what_they_say(supply_example: ModuleType, capsys) -> None:
    assert _run_guide("supply", slow=False, capsys=capsys) > 15


@pytest.mark.slow
def test_supply_guide_snippets_with_random_coefficients(supply_example: ModuleType, capsys) -> None:
    assert _run_guide("supply", slow=True, capsys=capsys) > 17


# ------------------------------------------------------------------------------ exercise 3
#
# Questions 1-3 run in the default suite (a few seconds); the whole script, with the
# supplementals (about a minute, most of it supplemental 3's RCNL), is marked slow. Expected
# values are the exercise text's (Q1, Q2) and otherwise the course solution notebook's
# (Exercises/Exercise-3/Solutions.ipynb, pyblp 1.x), which the script reproduces to the digits
# the notebook prints.


@pytest.fixture(scope="module")
def exercise3() -> ModuleType:
    """The exercise 3 example module."""
    require_data("mixtape/derived/ex2_product_data.csv", "mixtape/derived/ex2_agent_data.csv.gz")
    return load_example("mixtape_exercise3")


@pytest.fixture(scope="module")
def exercise3_data(exercise3: ModuleType) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exercise 2's products (with firm ids) and agents."""
    return exercise3.load_data()


@pytest.fixture(scope="module")
def exercise3_model(exercise3: ModuleType, exercise3_data: tuple[pd.DataFrame, pd.DataFrame]):
    """``X2 = 1 + mushy + prices`` with log income and fixed effects."""
    return exercise3.build_model(*exercise3_data)


@pytest.fixture(scope="module")
def exercise3_q1(exercise3: ModuleType, exercise3_model):
    """Question 1's fit (the income moment)."""
    return exercise3.question1(exercise3_model)


@pytest.fixture(scope="module")
def exercise3_q2(exercise3: ModuleType, exercise3_model):
    """Question 2's fit (income and diversion moments)."""
    return exercise3.question2(exercise3_model)


def test_exercise3_question1(exercise3: ModuleType, exercise3_model, exercise3_q1) -> None:
    results = exercise3_q1
    assert results.info.convergence["converged"]
    assert results.params["pi[Intercept,log_income]"] == pytest.approx(-0.331, abs=5e-4)
    assert results.micro_values().loc["E[log_income | inside]", "model"] == pytest.approx(
        7.9, abs=1e-8
    )
    assert results.objective < 1e-10  # just identified
    # The general form (a callable part) gives the same estimates as MicroMoment.mean.
    assert exercise3.by_hand_check(exercise3_model, results) < 1e-8


def test_exercise3_question2(exercise3_q2) -> None:
    results = exercise3_q2
    assert results.info.convergence["converged"]
    assert results.params["sigma[Intercept,Intercept]"] == pytest.approx(1.71, abs=5e-3)
    assert results.params["sigma[mushy,mushy]"] == pytest.approx(4.22, abs=5e-3)
    assert (np.asarray(results.info.convergence["hessian_eigenvalues"]) > 0).all()
    np.testing.assert_allclose(results.micro_values()["model"], [7.9, 0.28, 0.31], atol=1e-8)


def test_exercise3_question3(
    exercise3: ModuleType,
    exercise3_data: tuple[pd.DataFrame, pd.DataFrame],
    exercise3_q1,
    exercise3_q2,
) -> None:
    products, agents = exercise3_data
    fits = exercise3.earlier_fits(products, agents)
    fits.update({"ex3 Q1": exercise3_q1, "ex3 Q2": exercise3_q2})
    table = exercise3.question3(products, fits)
    # The solution notebook's percent changes (iv, mushy, rc and micro columns).
    expected = {
        ("F1B04", "ex1 logit"): 223.638,
        ("F1B04", "ex2 Q2"): 223.522,
        ("F1B04", "ex2 Q5"): 285.128,
        ("F1B04", "ex3 Q2"): 314.014,
        ("F1B06", "ex3 Q2"): -4.934,
        ("F1B07", "ex3 Q2"): -6.303,
        ("F1B09", "ex3 Q2"): -0.750,
        ("F2B15", "ex3 Q2"): -6.309,
        ("F6B18", "ex3 Q2"): -0.592,
    }
    for (product, label), value in expected.items():
        assert table.loc[product, label] == pytest.approx(value, abs=2e-3), (product, label)
    rivals = table.drop(index=["F1B04", "outside"])
    means = rivals.groupby("mushy")["ex3 Q2"].mean()
    assert means[1] < 5 * means[0] < 0  # mushy rivals lose far more than the others
    assert table.loc["outside", "ex3 Q2"] == pytest.approx(-0.760, abs=2e-3)


@pytest.mark.slow
def test_exercise3_whole_script(exercise3: ModuleType, capsys) -> None:
    """Every question and supplemental, against the solution notebook's numbers."""
    require_data("mixtape/derived/ex3_s2_micro_data_with_nodes.csv.gz")
    out = exercise3.main([])
    assert out["q1"].params["pi[Intercept,log_income]"] == pytest.approx(-0.331, abs=5e-4)
    assert out["q2"].params["sigma[mushy,mushy]"] == pytest.approx(4.22, abs=5e-3)
    # Supplemental 1: market size doubled, with and without sigma on the constant.
    s1 = out["s1"]
    np.testing.assert_allclose(
        s1["outside"][["1x, sigma_1 = 0", "2x, sigma_1 = 0", "2x"]],
        [-0.881, -0.346, -0.282],
        atol=2e-3,
    )
    estimates = s1["estimates"]
    assert estimates.loc["sigma[mushy,mushy]", "1x, sigma_1 = 0"] == pytest.approx(4.41, abs=0.01)
    assert estimates.loc["sigma[mushy,mushy]", "2x, sigma_1 = 0"] == pytest.approx(5.83, abs=0.01)
    assert estimates.loc["sigma[Intercept,Intercept]", "2x"] == pytest.approx(4.00, abs=0.01)
    assert estimates.loc["pi[Intercept,log_income]", "2x"] == pytest.approx(-0.958, abs=1e-3)
    assert all(fit.info.convergence["converged"] for fit in s1["fits"].values())
    # Supplemental 2: the optimal micro moment replaces the income moment, still matched.
    s2 = out["s2"]
    assert s2["scores"].shape == (100, 6)
    assert len(s2["fits"]) == 3  # Q2, our simulated survey, pyblp's simulated survey
    for label, fit in s2["fits"].items():
        assert fit.info.convergence["converged"], label
        assert fit.objective < 1e-10, label
        np.testing.assert_allclose(fit.micro_values()["difference"], 0, atol=1e-8)
        assert fit.params["sigma[mushy,mushy]"] == pytest.approx(4.2, abs=0.1), label
    # Supplemental 3: RCNL with firms as nests and the same-firm diversion moment.
    rcnl = out["s3"]["results"]
    assert rcnl.info.convergence["converged"]
    assert rcnl.params["rho"] == pytest.approx(0.145, abs=1e-3)
    for name, value in [
        ("sigma[Intercept,Intercept]", 1.39),
        ("sigma[mushy,mushy]", 3.68),
        ("sigma[prices,prices]", 3.95),
        ("pi[Intercept,log_income]", -0.864),
    ]:
        assert rcnl.params[name] == pytest.approx(value, abs=0.01), name
    changes = out["s3"]["changes"]
    for product, value in [("F1B04", 322.842), ("F1B06", -5.317), ("F2B15", -5.415)]:
        assert changes.loc[product, "RCNL"] == pytest.approx(value, abs=2e-3), product
    firms = out["s3"]["firms"]
    # More cannibalization within firm one, less business taken from other firms.
    assert firms.loc["F1, mushy", "RCNL"] < firms.loc["F1, mushy", "ex3 Q2"]
    assert firms.loc["other firms, mushy", "RCNL"] > firms.loc["other firms, mushy", "ex3 Q2"]
    assert "Exercise 3 ran in" in capsys.readouterr().out


# ------------------------------------------------------------------ docs/micro.md


def _run_micro_guide(slow: bool, capsys) -> int:
    """Run the micro guide (it reads exercise 2's data) as :func:`_run_guide` does."""
    require_data("mixtape/derived/ex2_product_data.csv", "mixtape/derived/ex2_agent_data.csv.gz")
    return _run_guide("micro", slow, capsys)


def test_micro_guide_snippets_print_what_they_say(capsys) -> None:
    assert _run_micro_guide(slow=False, capsys=capsys) >= 10


@pytest.mark.slow
def test_micro_guide_snippets_with_optimal_micro_moments(capsys) -> None:
    assert _run_micro_guide(slow=True, capsys=capsys) >= 13
