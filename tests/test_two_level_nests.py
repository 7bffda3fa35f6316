"""Two-level nested logit (Verboven 1996): nests within nests, one ρ per level.

The oracles are written here independently of the package: shares from the inclusive values
by loops over nests (:func:`hand_shares`), derivatives by finite differences of those shares,
linearmodels' IV2SLS on Verboven's inversion, and a simulated economy with known parameters.
pyblp has no two-level nests (its issue #44).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from linearmodels.iv import IV2SLS

from blpmodels import BLPNestedLogit, ConvergenceWarning
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.nests import TwoLevelNesting, two_level_probabilities
from blpmodels.kernel.shares import Nesting, log_space_probabilities

FORMULA = (
    "shares ~ 1 + x + [prices ~ z + n_lower + n_upper + x_lower + x_upper + z_lower + z_upper]"
)
NESTS = ["size", "segment"]
TRUTH = {"Intercept": 1.0, "x": 1.0, "prices": -2.0, "rho_upper": 0.3, "rho_lower": 0.6}


def hand_shares(delta, upper, lower, rho_upper, rho_lower) -> np.ndarray:
    """One market's two-level nested logit shares from the inclusive values, nest by nest.

    D_h = Σ_{j∈h} exp(δ_j/(1−ρ_L)), D_g = Σ_{h∈g} D_h^{(1−ρ_L)/(1−ρ_U)},
    s_j = exp(δ_j/(1−ρ_L))/D_h · D_h^{(1−ρ_L)/(1−ρ_U)}/D_g · D_g^{1−ρ_U}/(1 + Σ_g D_g^{1−ρ_U}).
    """
    delta = np.asarray(delta)  # float, or complex for complex-step derivatives
    keys = list(zip(upper, lower, strict=True))
    d_lower: dict = {}
    for j, key in enumerate(keys):
        d_lower[key] = d_lower.get(key, 0.0) + np.exp(delta[j] / (1 - rho_lower))
    power = (1 - rho_lower) / (1 - rho_upper)
    d_upper: dict = {}
    for (g, _), value in d_lower.items():
        d_upper[g] = d_upper.get(g, 0.0) + value**power
    denominator = 1 + sum(value ** (1 - rho_upper) for value in d_upper.values())
    shares = np.empty(delta.size, dtype=np.result_type(delta, float))
    for j, key in enumerate(keys):
        within = np.exp(delta[j] / (1 - rho_lower)) / d_lower[key]
        nest = d_lower[key] ** power / d_upper[key[0]]
        group = d_upper[key[0]] ** (1 - rho_upper) / denominator
        shares[j] = within * nest * group
    return shares


def hand_log_sum(delta, upper, lower, rho_upper, rho_lower) -> float:
    """log(1 + Σ_g D_g^{1−ρ_U}): consumer surplus times |α|."""
    d_lower: dict = {}
    for j, key in enumerate(zip(upper, lower, strict=True)):
        d_lower[key] = d_lower.get(key, 0.0) + np.exp(delta[j] / (1 - rho_lower))
    d_upper: dict = {}
    for (g, _), value in d_lower.items():
        d_upper[g] = d_upper.get(g, 0.0) + value ** ((1 - rho_lower) / (1 - rho_upper))
    return float(np.log1p(sum(value ** (1 - rho_upper) for value in d_upper.values())))


def simulate(n_markets: int, seed: int = 0, rho_upper: float = 0.3, rho_lower: float = 0.6):
    """Markets of 5–12 products in sizes × segments; segment labels repeat across sizes."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(n_markets):
        n = int(rng.integers(5, 13))
        size = rng.choice(["small", "large"], n)
        segment = rng.choice(["a", "b"], n)
        x, z = rng.normal(size=n), rng.normal(size=n)
        xi = 0.5 * rng.normal(size=n)
        prices = 2.0 + 0.5 * z + 0.5 * xi + 0.2 * rng.normal(size=n)
        delta = TRUTH["Intercept"] + TRUTH["x"] * x + TRUTH["prices"] * prices + xi
        shares = hand_shares(delta, size, segment, rho_upper, rho_lower)
        frames.append(
            pd.DataFrame(
                {
                    "market_ids": t,
                    "product_ids": np.arange(n),
                    "size": size,
                    "segment": segment,
                    "x": x,
                    "z": z,
                    "prices": prices,
                    "shares": shares,
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    lower = frame.groupby(["market_ids", "size", "segment"])
    upper = frame.groupby(["market_ids", "size"])
    frame["n_lower"] = lower["x"].transform("size")
    frame["n_upper"] = upper["x"].transform("size")
    for column in ("x", "z"):
        frame[f"{column}_lower"] = lower[column].transform("sum") - frame[column]
        frame[f"{column}_upper"] = upper[column].transform("sum") - frame[column]
    return frame


@pytest.fixture(scope="module")
def products() -> pd.DataFrame:
    return simulate(300, seed=1)


@pytest.fixture(scope="module")
def results(products):
    return BLPNestedLogit.from_formula(FORMULA, products, nesting_ids=NESTS).fit()


def _market(products: pd.DataFrame, market: int) -> pd.DataFrame:
    return products[products["market_ids"] == market]


def _fitted_delta(results, market_rows: pd.DataFrame) -> np.ndarray:
    """δ̂_j = log s_j − log s_0 − ρ̂_L log s_{j|h} − ρ̂_U log s_{h|g}, by hand."""
    s = market_rows["shares"].to_numpy()
    lower = market_rows.groupby(["size", "segment"])["shares"].transform("sum").to_numpy()
    upper = market_rows.groupby("size")["shares"].transform("sum").to_numpy()
    params = results.params
    return (
        np.log(s)
        - np.log(1 - s.sum())
        - params["rho_lower"] * np.log(s / lower)
        - params["rho_upper"] * np.log(lower / upper)
    )


# ---------------------------------------------------------------------------- closed form
def test_kernel_shares_equal_the_inclusive_value_formulas_by_hand():
    rng = np.random.default_rng(3)
    # Two markets padded to 6 slots, three upper nests, lower nests repeating labels; the
    # second market lacks upper nest 2 entirely and lower nest 1.
    lower = np.array([[0, 0, 1, 2, 3, 4], [0, 2, 2, 3, 0, 0]])
    lower_to_upper = np.array([0, 0, 1, 1, 2])
    mask = np.array([[True] * 6, [True, True, True, True, False, False]])
    delta = rng.normal(size=(2, 6))
    for rho_upper, rho_lower in [(0.2, 0.7), (0.0, 0.5), (0.4, 0.4), (0.05, 0.95)]:
        nests = TwoLevelNesting(lower, lower_to_upper, 3, rho_upper, rho_lower)
        probabilities = two_level_probabilities(delta, mask, nests)
        for t in range(2):
            real = mask[t]
            expected = hand_shares(
                delta[t, real], lower_to_upper[lower[t, real]], lower[t, real], rho_upper, rho_lower
            )
            np.testing.assert_allclose(probabilities.shares[t, real], expected, rtol=1e-12)
            log_sum = hand_log_sum(
                delta[t, real], lower_to_upper[lower[t, real]], lower[t, real], rho_upper, rho_lower
            )
            np.testing.assert_allclose(probabilities.log_denominator[t, 0], log_sum, rtol=1e-12)
        assert np.all(probabilities.shares[~mask] == 0)


def test_two_level_reduces_to_the_one_level_kernel_at_the_boundaries():
    """ρ_U = 0: one level on the lower nests; ρ_U = ρ_L: one level on the upper nests."""
    rng = np.random.default_rng(4)
    lower = np.array([[0, 0, 1, 1, 2, 3, 3]])
    lower_to_upper = np.array([0, 0, 1, 1])
    mask = np.ones((1, 7), bool)
    delta = rng.normal(size=(1, 7))
    one_agent = (np.zeros((1, 7, 1)), np.ones((1, 1)), mask)
    two = two_level_probabilities(delta, mask, TwoLevelNesting(lower, lower_to_upper, 2, 0.0, 0.6))
    one = log_space_probabilities(delta, *one_agent[:2], mask, Nesting.from_codes(lower, 4, 0.6))
    np.testing.assert_allclose(two.shares, one.shares, rtol=1e-12)
    upper = lower_to_upper[lower]
    two = two_level_probabilities(delta, mask, TwoLevelNesting(lower, lower_to_upper, 2, 0.6, 0.6))
    one = log_space_probabilities(delta, *one_agent[:2], mask, Nesting.from_codes(upper, 2, 0.6))
    np.testing.assert_allclose(two.shares, one.shares, rtol=1e-12)
    np.testing.assert_allclose(two.log_denominator, one.log_denominator, rtol=1e-12)


# ---------------------------------------------------------------------------- estimation
def test_estimates_equal_iv2sls_on_verbovens_inversion(products, results):
    frame = products.copy()
    lower = frame.groupby(["market_ids", "size", "segment"])["shares"].transform("sum")
    upper = frame.groupby(["market_ids", "size"])["shares"].transform("sum")
    outside = 1 - frame.groupby("market_ids")["shares"].transform("sum")
    frame["y"] = np.log(frame["shares"] / outside)
    frame["rho_lower"] = np.log(frame["shares"] / lower)
    frame["rho_upper"] = np.log(lower / upper)
    oracle = IV2SLS.from_formula(
        "y ~ 1 + x + [prices + rho_upper + rho_lower ~ z + n_lower + n_upper + x_lower + "
        "x_upper + z_lower + z_upper]",
        frame,
    ).fit(cov_type="robust", debiased=False)
    names = ["Intercept", "x", "prices", "rho_upper", "rho_lower"]
    np.testing.assert_allclose(results.params[names], oracle.params[names], rtol=0, atol=1e-9)
    np.testing.assert_allclose(results.bse[names], oracle.std_errors[names], rtol=1e-8)


def test_simulated_two_level_economy_recovers_the_truth():
    large = simulate(2000, seed=7)
    fitted = BLPNestedLogit.from_formula(FORMULA, large, nesting_ids=NESTS).fit()
    truth = pd.Series(TRUTH)
    z_scores = (fitted.params[truth.index] - truth) / fitted.bse[truth.index]
    assert np.all(np.abs(z_scores) < 4), z_scores
    assert fitted.bse["rho_lower"] < 0.01 and fitted.bse["rho_upper"] < 0.02


def test_arrays_with_two_nest_columns_equal_the_formula_model(products, results):
    exog = pd.DataFrame({"const": 1.0, "x": products["x"]})
    instruments = products[["z", "n_lower", "n_upper", "x_lower", "x_upper", "z_lower", "z_upper"]]
    model = BLPNestedLogit(
        products["shares"],
        exog,
        products[["prices"]],
        instruments,
        market_ids=products["market_ids"],
        product_ids=products["product_ids"],
        nesting_ids=products[NESTS],
    )
    fitted = model.fit()
    np.testing.assert_allclose(fitted.params.to_numpy(), results.params.to_numpy(), rtol=1e-10)
    assert list(fitted.params.index[-2:]) == ["rho_upper", "rho_lower"]
    as_array = BLPNestedLogit(
        products["shares"].to_numpy(),
        exog.to_numpy(),
        products[["prices"]].to_numpy(),
        instruments.to_numpy(),
        market_ids=products["market_ids"].to_numpy(),
        nesting_ids=products[NESTS].to_numpy(),
    ).fit()
    np.testing.assert_allclose(as_array.params.to_numpy(), results.params.to_numpy(), rtol=1e-10)


def test_one_nest_column_by_name_equals_the_nesting_ids_column(products):
    by_name = BLPNestedLogit.from_formula(FORMULA, products, nesting_ids="size").fit()
    by_column = BLPNestedLogit.from_formula(
        FORMULA, products.assign(nesting_ids=products["size"])
    ).fit()
    np.testing.assert_allclose(by_name.params.to_numpy(), by_column.params.to_numpy(), rtol=1e-12)
    assert by_name.params.index[-1] == "rho"


def test_repeated_lower_labels_are_different_nests(products, results):
    """Segment 'a' of small cars and segment 'a' of large cars are two nests: relabelling
    the segments uniquely changes nothing."""
    relabelled = products.assign(segment=products["size"] + "/" + products["segment"])
    fitted = BLPNestedLogit.from_formula(FORMULA, relabelled, nesting_ids=NESTS).fit()
    np.testing.assert_allclose(fitted.params.to_numpy(), results.params.to_numpy(), rtol=1e-12)


def test_inconsistent_nesting_parameters_are_flagged():
    """Data made with ρ_upper > ρ_lower: the estimate violates 0 ≤ ρ_U ≤ ρ_L < 1."""
    inconsistent = simulate(400, seed=2, rho_upper=0.7, rho_lower=0.2)
    model = BLPNestedLogit.from_formula(FORMULA, inconsistent, nesting_ids=NESTS)
    with pytest.warns(ConvergenceWarning, match="rho_upper <= rho_lower"):
        model.fit()


def test_consistent_estimates_give_no_warning(products, recwarn):
    BLPNestedLogit.from_formula(FORMULA, products, nesting_ids=NESTS).fit()
    assert not [w for w in recwarn if issubclass(w.category, ConvergenceWarning)]


# ---------------------------------------------------------------------------- post-estimation
def test_predicted_shares_equal_hand_shares_at_changed_prices(products, results):
    market = _market(products, 5)
    delta = _fitted_delta(results, market)
    np.testing.assert_allclose(results.predict(market), market["shares"], rtol=1e-10)
    dearer = market.assign(prices=market["prices"] * 1.1)
    change = results.params["prices"] * (dearer["prices"] - market["prices"]).to_numpy()
    expected = hand_shares(
        delta + change,
        market["size"].to_numpy(),
        market["segment"].to_numpy(),
        results.params["rho_upper"],
        results.params["rho_lower"],
    )
    np.testing.assert_allclose(results.predict(dearer), expected, rtol=1e-10)


def _hand_price_jacobian(results, market: pd.DataFrame) -> np.ndarray:
    """∂s_j/∂p_k = α ∂s_j/∂δ_k by complex-step differences of the hand shares (exact to
    rounding, so tiny shares' derivatives are as accurate as large ones')."""
    delta = _fitted_delta(results, market)
    args = (
        market["size"].to_numpy(),
        market["segment"].to_numpy(),
        results.params["rho_upper"],
        results.params["rho_lower"],
    )
    step = 1e-20
    columns = []
    for k in range(delta.size):
        moved = delta.astype(complex)
        moved[k] += 1j * step
        columns.append(hand_shares(moved, *args).imag / step)
    return np.column_stack(columns) * results.params["prices"]


def test_elasticities_and_diversion_equal_numerical_derivatives_of_hand_shares(products, results):
    market = _market(products, 11)
    jacobian = _hand_price_jacobian(results, market)
    shares, prices = market["shares"].to_numpy(), market["prices"].to_numpy()
    expected = jacobian * prices[None, :] / shares[:, None]
    np.testing.assert_allclose(results.elasticities(market_id=11).to_numpy(), expected, rtol=1e-9)
    diversion = -jacobian.T / np.diag(jacobian)[:, None]
    np.fill_diagonal(diversion, jacobian.sum(axis=0) / np.diag(jacobian))
    ours = results.diversion_ratios(market_id=11).to_numpy()
    np.testing.assert_allclose(ours, diversion, rtol=1e-9)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, rtol=1e-10)


def test_long_run_diversion_equals_removal_by_hand(products, results):
    market = _market(products, 3)
    delta = _fitted_delta(results, market)
    size, segment = market["size"].to_numpy(), market["segment"].to_numpy()
    rho = results.params["rho_upper"], results.params["rho_lower"]
    shares = market["shares"].to_numpy()
    n = shares.size
    expected = np.zeros((n, n))
    for j in range(n):
        keep = np.arange(n) != j
        after = hand_shares(delta[keep], size[keep], segment[keep], *rho)
        expected[j, keep] = (after - shares[keep]) / shares[j]
        expected[j, j] = (1 - after.sum() - (1 - shares.sum())) / shares[j]
    ours = results.long_run_diversion_ratios(market_id=3).to_numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)


def test_consumer_surplus_is_the_log_sum_over_alpha(products, results):
    market = _market(products, 8)
    delta = _fitted_delta(results, market)
    log_sum = hand_log_sum(
        delta,
        market["size"].to_numpy(),
        market["segment"].to_numpy(),
        results.params["rho_upper"],
        results.params["rho_lower"],
    )
    surplus = results.consumer_surplus(market_id=8)
    np.testing.assert_allclose(surplus.iloc[0], log_sum / -results.params["prices"], rtol=1e-10)


def test_single_product_markups_solve_the_first_order_conditions(products, results):
    """With single-product firms η_j = −s_j / (∂s_j/∂p_j), ∂s_j/∂p_j by finite differences."""
    market = _market(products, 4)
    jacobian = _hand_price_jacobian(results, market)
    expected = -market["shares"].to_numpy() / np.diag(jacobian)
    markups = results.markups(market_id=4, ownership="single")
    np.testing.assert_allclose(np.asarray(markups), expected, rtol=1e-9)


# ---------------------------------------------------------------------------- refusals
def test_optimal_instruments_refuse_two_level_nests(results):
    # Equilibrium prices and counterfactuals work (test_two_level_equilibrium.py); optimal
    # instruments would need the one-level kernel's ∂s/∂ρ.
    with pytest.raises(BLPInputError, match="optimal_instruments does not support two-level"):
        results.optimal_instruments()


def test_random_coefficients_ask_for_both_rho_with_two_level_nests(products):
    """The two-level RCNL (tests/test_two_level_rcnl.py) needs ρ for both levels."""
    from blpmodels import BLPRandomCoefficients, Integration

    frame = products.assign(nesting_ids=products["size"])
    model = BLPRandomCoefficients.from_formula(
        "shares ~ 1 + x + [prices ~ z + x_lower + x_upper]",
        frame,
        random="0 + x",
        integration=Integration("product", 3),
    )
    model.design.use_nesting_columns(NESTS)
    with pytest.raises(BLPInputError, match=r"rho=\[rho_upper, rho_lower\]"):
        model.fit(sigma=1.0)


@pytest.mark.parametrize(
    ("nesting_ids", "message"),
    [
        (["size", "segment", "x"], "two"),
        (["size", "missing"], "missing"),
        (["size", "size"], "twice"),
        (3, "column name"),
    ],
)
def test_bad_nesting_columns_are_named(products, nesting_ids, message):
    with pytest.raises(BLPInputError, match=message):
        BLPNestedLogit.from_formula(FORMULA, products, nesting_ids=nesting_ids)


def test_misspelt_nesting_keyword_is_named(products):
    with pytest.raises(BLPInputError, match="did you mean nesting_ids="):
        BLPNestedLogit.from_formula(FORMULA, products, nesting_id=NESTS)


def test_per_nest_rho_and_supply_refuse_two_levels(products):
    model = BLPNestedLogit.from_formula(FORMULA, products, nesting_ids=NESTS)
    with pytest.raises(BLPInputError, match="one ρ per level"):
        model.fit(rho="nest")
    with_supply = BLPNestedLogit.from_formula(
        FORMULA, products.assign(firm_ids=products["product_ids"]), nesting_ids=NESTS, supply="1"
    )
    with pytest.raises(BLPInputError, match="supply side"):
        with_supply.fit()


def test_unidentified_upper_level_is_refused(products):
    """Every size holds one segment: log s_{h|g} is 0 everywhere."""
    single = products.assign(segment=products["size"])
    with pytest.raises(BLPInputError, match="rho_upper is not identified"):
        BLPNestedLogit.from_formula(FORMULA, single, nesting_ids=NESTS).fit()


def test_arrays_with_three_nest_columns_are_refused(products):
    with pytest.raises(BLPInputError, match="3 columns"):
        BLPNestedLogit(
            products["shares"],
            products[["x"]],
            market_ids=products["market_ids"],
            nesting_ids=products[["size", "segment", "x"]],
        )


# ---------------------------------------------------------------------------- user guide
def test_guide_page_runs_and_prints_what_it_says(capsys):
    """docs/guide/nested_logit.md: its python blocks run in one namespace, and each print
    shows what the comment line below it says."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "guide" / "nested_logit.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 6
    namespace: dict = {}
    checked = 0
    for code in blocks:
        capsys.readouterr()
        exec(compile(code, str(page), "exec"), namespace)
        printed = capsys.readouterr().out.splitlines()
        lines = code.splitlines()
        documented = [
            lines[number + 1].removeprefix("# ")
            for number, line in enumerate(lines)
            if line.startswith("print(")
        ]
        assert printed == documented
        checked += len(printed)
    assert checked == 12
    # The simulated truth lies within three standard errors of the page's estimates.
    results = namespace["results"]
    truth = pd.Series(TRUTH)
    assert np.all(np.abs((results.params[truth.index] - truth) / results.bse[truth.index]) < 3)
    rcnl = namespace["rcnl"]  # the two-level RCNL section: σ = 0.8 as well
    truth_rcnl = pd.concat([truth, pd.Series({"sigma[x,x]": 0.8})])
    z = (rcnl.params[truth_rcnl.index] - truth_rcnl) / rcnl.bse[truth_rcnl.index]
    assert np.all(np.abs(z) < 3)


def test_missing_nest_ids_name_the_level(products):
    ids = products[NESTS].to_numpy(dtype=object)
    ids[3, 1] = None
    with pytest.raises(BLPInputError, match="nesting_ids lower level has 1 missing"):
        BLPNestedLogit(
            products["shares"], products[["x"]], market_ids=products["market_ids"], nesting_ids=ids
        )
    with pytest.raises(BLPInputError, match="'segment' has 1 missing"):
        BLPNestedLogit.from_formula(
            FORMULA,
            products.assign(segment=products["segment"].mask(products.index == 3)),
            nesting_ids=NESTS,
        )


def test_conduct_demand_adjustment_refuses_two_level_nests(results):
    # Its ∂ξ/∂ρ would be the one-level nested logit's: refused, not computed.
    with pytest.raises(BLPInputError, match="two-level nests"):
        results.test_conduct(["single", "monopoly"], "0 + x", demand_adjustment=True)
    plain = results.test_conduct(["single", "monopoly"], "0 + x")  # without it, the test runs
    assert np.isfinite(plain.table["T_RV"]).all()
