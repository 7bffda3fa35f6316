"""Uncertainty of counterfactuals (issue 21, item 2): ``merger(bootstrap=)`` and
``equilibrium_prices(bootstrap=)`` solve the counterfactual again at every parameter draw.

Oracles, all computed here without the package's equilibrium code:

- a logit with single-product firms, the merger of two of them solved by hand at each draw's
  α with scipy's root finder on the closed-form first-order conditions, from costs
  c = p + 1/(α(1 − s)) at the observed prices and shares and δ = log(s_j / s_0); consumer
  surplus log(1 + Σ e^δ)/(−α), profits (p − c)s and HHI on inside shares by hand;
- the intervals: ``np.percentile`` of those hand-solved draws;
- draws that all equal the estimate: every interval collapses onto the point estimate;
- a random-coefficients draw: its results reproduce the observed shares, and the observed
  prices are the equilibrium under the costs imputed at the draw.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from builders import simulated_economy
from scipy import optimize

from blpmodels import (
    BLPInputError,
    BLPLogit,
    BLPRandomCoefficients,
    BootstrappedResults,
    ConvergenceWarning,
    FixedPointError,
    MergerResults,
)
from blpmodels.results.counterfactual_bootstrap import BootstrappedEquilibrium, BootstrappedMerger
from blpmodels.simulation.logit import simulate_logit

FORMULA = "shares ~ 1 + x + [prices ~ cost_shifter]"
DRAWS = 40


@pytest.fixture(scope="module")
def logit():
    """Six markets of four single-product firms F1 … F4 (product k belongs to firm k)."""
    data = simulate_logit(n_markets=6, n_products=4, n_firms=4, seed=1).products
    assert data.groupby(["market_ids", "firm_ids"]).size().max() == 1
    results = BLPLogit.from_formula(FORMULA, data).fit()
    return data, results


@pytest.fixture(scope="module")
def bootstrapped(logit):
    return logit[1].bootstrap(DRAWS, seed=0)


@pytest.fixture(scope="module")
def merger(logit, bootstrapped):
    return logit[1].merger({"F2": "F1"}, bootstrap=bootstrapped)


def _hand_merger(market: pd.DataFrame, alpha: float) -> dict[str, np.ndarray | float]:
    """F1 buys F2 in one logit market, solved from scratch at price coefficient ``alpha``."""
    p0 = market["prices"].to_numpy(dtype=float)
    s0 = market["shares"].to_numpy(dtype=float)
    delta = np.log(s0) - np.log(1.0 - s0.sum())
    costs = p0 + 1.0 / (alpha * (1.0 - s0))  # single-product FOC: p - c = -1/(α(1 - s))
    owner = np.where(market["firm_ids"].to_numpy() == "F2", "F1", market["firm_ids"].to_numpy())
    same = owner[:, None] == owner[None, :]

    def shares(prices: np.ndarray) -> np.ndarray:
        utility = np.exp(delta + alpha * (prices - p0))
        return utility / (1.0 + utility.sum())

    def foc(prices: np.ndarray) -> np.ndarray:
        s = shares(prices)
        # ∂s_k/∂p_j = α s_k (1{k = j} − s_j); F_j = s_j + Σ_{k of j's firm} (p_k − c_k) ∂s_k/∂p_j
        derivative = alpha * (np.diag(s) - np.outer(s, s))
        return s + (same * derivative.T) @ (prices - costs)

    solution = optimize.root(foc, p0, method="hybr", tol=1e-14)
    # MINPACK may report that tol is below what it can resolve; the FOC residual decides.
    assert np.abs(foc(solution.x)).max() < 1e-12
    prices = solution.x
    s1 = shares(prices)

    def surplus(s: np.ndarray) -> float:
        return float(np.log(1.0 + np.exp(np.log(s) - np.log(1.0 - s.sum())).sum()) / -alpha)

    def hhi(s: np.ndarray, firms: np.ndarray) -> float:
        inside = pd.Series(s).groupby(firms).sum() / s.sum()
        return float(10_000 * (inside**2).sum())

    return {
        "prices_change": prices - p0,
        "profits_change": (prices - costs) * s1 - (p0 - costs) * s0,
        "consumer_surplus_change": surplus(s1) - surplus(s0),
        "profits_total_change": float(((prices - costs) * s1 - (p0 - costs) * s0).sum()),
        "hhi_change": hhi(s1, owner) - hhi(s0, market["firm_ids"].to_numpy()),
    }


def _hand_draws(data: pd.DataFrame, alphas: np.ndarray) -> dict[str, np.ndarray]:
    """Per draw: product price and profit changes (rows in data order) and per-market CS,
    profit and HHI changes."""
    products: dict[str, list] = {"prices_change": [], "profits_change": []}
    markets: dict[str, list] = {
        "consumer_surplus_change": [],
        "profits_total_change": [],
        "hhi_change": [],
    }
    for alpha in alphas:
        solved = [_hand_merger(m, alpha) for _, m in data.groupby("market_ids", sort=False)]
        for name, values in products.items():
            values.append(np.concatenate([one[name] for one in solved]))
        for name, values in markets.items():
            values.append(np.array([one[name] for one in solved]))
    return {name: np.array(values) for name, values in {**products, **markets}.items()}


# ----------------------------------------------------------------------------- draws by hand
def test_each_draws_merger_equals_a_hand_solved_logit_merger(logit, bootstrapped, merger):
    data, _ = logit
    assert isinstance(merger, BootstrappedMerger) and isinstance(merger, MergerResults)
    alphas = bootstrapped.params["prices"].to_numpy()
    assert alphas.std() > 0.05 * abs(alphas.mean())  # the draws do move α
    for draw in (0, 13, 29):
        hand = _hand_draws(data, alphas[[draw]])
        products = merger.draws_products.xs(draw, level="draw")
        markets = merger.draws_markets.xs(draw, level="draw")
        np.testing.assert_allclose(
            products["prices_change"], hand["prices_change"][0], rtol=1e-8, atol=1e-12
        )
        np.testing.assert_allclose(
            products["profits_change"], hand["profits_change"][0], rtol=1e-7, atol=1e-13
        )
        np.testing.assert_allclose(
            markets["consumer_surplus_change"], hand["consumer_surplus_change"][0], rtol=1e-8
        )
        np.testing.assert_allclose(markets["hhi_change"], hand["hhi_change"][0], rtol=1e-8)


def test_intervals_are_percentiles_of_the_hand_solved_draws(logit, bootstrapped, merger):
    data, _ = logit
    hand = _hand_draws(data, bootstrapped.params["prices"].to_numpy())
    for level in (0.95, 0.8):
        tail = 50 * (1 - level)
        products = merger.product_intervals(level)
        markets = merger.market_intervals(level)
        for name, frame, column in [
            ("prices_change", products, "prices_change"),
            ("profits_change", products, "profits_change"),
            ("consumer_surplus_change", markets, "consumer_surplus_change"),
            ("profits_total_change", markets, "profits_change"),
            ("hhi_change", markets, "hhi_change"),
        ]:
            low, high = np.percentile(hand[name], [tail, 100 - tail], axis=0)
            np.testing.assert_allclose(frame[f"{column}_lower"], low, rtol=1e-7, atol=1e-10)
            np.testing.assert_allclose(frame[f"{column}_upper"], high, rtol=1e-7, atol=1e-10)
        assert (products["draws_failed"] == 0).all() and (markets["draws_failed"] == 0).all()
        totals = merger.summary_intervals(level)
        cs_total = hand["consumer_surplus_change"].sum(axis=1)
        np.testing.assert_allclose(
            totals.loc["consumer_surplus_change", ["lower", "upper"]].to_numpy(dtype=float),
            np.percentile(cs_total, [tail, 100 - tail]),
            rtol=1e-8,
        )
    # The point estimates are the plain merger's.
    plain = logit[1].merger({"F2": "F1"})
    pd.testing.assert_frame_equal(merger.products, plain.products)
    pd.testing.assert_frame_equal(merger.markets, plain.markets)
    assert merger.failed_draws == 0
    assert "Bootstrap: 40 draws, 95% percentile intervals, 0 draw(s) failed" in merger.summary()


def test_logit_share_effects_do_not_depend_on_alpha_and_price_changes_scale_as_one_over_alpha(
    logit, bootstrapped, merger
):
    """With costs rationalized at each draw, α·Δp_j depends on the shares only (the logit
    markup is −1/(α(1 − S_f))): share changes are the same at every draw and price changes are
    the estimate's times α̂/α_b. Holding costs at the estimate's would break both."""
    alphas = bootstrapped.params["prices"].to_numpy()
    alpha_hat = float(logit[1].params["prices"])
    point = merger.products["prices_change"].to_numpy()
    for draw, frame in merger.draws_products.groupby(level="draw"):
        np.testing.assert_allclose(
            frame["prices_change"].to_numpy(), point * alpha_hat / alphas[draw], rtol=1e-8
        )
        np.testing.assert_allclose(
            frame["shares_post"].to_numpy(), merger.products["shares_post"], rtol=1e-9
        )


def test_equilibrium_prices_with_bootstrap_imputes_costs_at_each_draw(logit, bootstrapped):
    data, results = logit
    record = results.equilibrium_prices(firm_ids={"F2": "F1"}, bootstrap=bootstrapped, level=0.9)
    assert isinstance(record, BootstrappedEquilibrium) and record.failed_draws == 0
    alphas = bootstrapped.params["prices"].to_numpy()
    hand = _hand_draws(data, alphas)
    prices = data["prices"].to_numpy() + hand["prices_change"]
    costs = data["prices"].to_numpy() + 1.0 / (alphas[:, None] * (1 - data["shares"].to_numpy()))
    table = record.product_intervals()
    for name, values in (("prices", prices), ("costs", costs)):
        low, high = np.percentile(values, [5, 95], axis=0)
        np.testing.assert_allclose(table[f"{name}_lower"], low, rtol=1e-9)
        np.testing.assert_allclose(table[f"{name}_upper"], high, rtol=1e-9)
    # Costs given by the caller are held at every draw.
    given = results.costs().to_numpy()
    held = results.equilibrium_prices(costs=given, bootstrap=bootstrapped)
    spread = held.product_intervals()
    np.testing.assert_allclose(spread["costs_lower"], given, rtol=1e-12)
    np.testing.assert_allclose(spread["costs_upper"], given, rtol=1e-12)


def test_apply_is_the_hook_for_any_counterfactual(logit, bootstrapped):
    data, _ = logit
    outcomes = bootstrapped.apply(lambda at_draw: float(at_draw.costs().mean()))
    alphas = bootstrapped.params["prices"].to_numpy()
    hand = data["prices"].to_numpy() + 1 / (alphas[:, None] * (1 - data["shares"].to_numpy()))
    np.testing.assert_allclose(outcomes.array(), hand.mean(axis=1), rtol=1e-10)
    assert outcomes.failures == {}
    # Errors of a failed counterfactual are counted per draw, warnings counted, not repeated.
    cut = np.median(alphas)

    def fragile(at_draw):
        warnings.warn("checked", UserWarning, stacklevel=1)
        if at_draw.params[-1] < cut:
            raise FixedPointError("no equilibrium")
        return 1.0

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes the draws
        counted = bootstrapped.apply(fragile)
    assert sorted(counted.failures) == np.flatnonzero(alphas < cut).tolist()
    assert set(counted.failures.values()) == {"FixedPointError: no equilibrium"}
    assert counted.warnings == {"UserWarning: checked": DRAWS}
    assert np.isnan(counted.array()).sum() == len(counted.failures)


def _hand_tax(market: pd.DataFrame, alpha: float, tax: float) -> np.ndarray:
    """Prices after a unit tax on every product of a single-product logit market: each firm
    receives p − t, so s_j + (p_j − t − c_j) α s_j (1 − s_j) = 0."""
    p0 = market["prices"].to_numpy(dtype=float)
    s0 = market["shares"].to_numpy(dtype=float)
    delta = np.log(s0) - np.log(1.0 - s0.sum())
    costs = p0 + 1.0 / (alpha * (1.0 - s0))

    def foc(prices: np.ndarray) -> np.ndarray:
        utility = np.exp(delta + alpha * (prices - p0))
        s = utility / (1.0 + utility.sum())
        return s + (prices - tax - costs) * alpha * s * (1.0 - s)

    solution = optimize.root(foc, p0 + tax, method="hybr", tol=1e-14)
    assert np.abs(foc(solution.x)).max() < 1e-12
    return solution.x - p0


def test_counterfactual_with_bootstrap_solves_each_draws_taxed_market(logit, bootstrapped):
    """``counterfactual(taxes=..., bootstrap=)``: each draw's price changes equal the taxed
    logit solved by hand at the draw's α, and the intervals are their percentiles."""
    data, results = logit
    if not hasattr(results, "counterfactual"):
        pytest.skip("results.counterfactual is not in this checkout")
    taxed = results.counterfactual(taxes={"unit": 0.1}, bootstrap=bootstrapped, level=0.9)
    alphas = bootstrapped.params["prices"].to_numpy()
    hand = np.array(
        [
            np.concatenate(
                [_hand_tax(m, alpha, 0.1) for _, m in data.groupby("market_ids", sort=False)]
            )
            for alpha in alphas
        ]
    )
    for draw in (0, 21):
        np.testing.assert_allclose(
            taxed.draws_products.xs(draw, level="draw")["prices_change"], hand[draw], rtol=1e-8
        )
    table = taxed.product_intervals()
    low, high = np.percentile(hand, [5, 95], axis=0)
    np.testing.assert_allclose(table["prices_change_lower"], low, rtol=1e-8)
    np.testing.assert_allclose(table["prices_change_upper"], high, rtol=1e-8)
    assert taxed.failed_draws == 0 and (table["draws_failed"] == 0).all()
    assert "consumer_surplus_change_lower" in taxed.market_intervals()
    pd.testing.assert_frame_equal(
        taxed.products, results.counterfactual(taxes={"unit": 0.1}).products
    )
    assert "Bootstrap: 40 draws, 90% percentile intervals, 0 draw(s) failed" in taxed.summary()
    with pytest.raises(BLPInputError, match="level"):
        results.counterfactual(taxes={"unit": 0.1}, bootstrap=bootstrapped, level=1.5)


# ----------------------------------------------------------------------------- degenerate
def _at_estimate(results, draws: int = 5) -> BootstrappedResults:
    """Draws that all equal the estimates (a zero covariance)."""
    fitted = getattr(results, "_results", results)
    params = np.asarray(fitted.params, dtype=float)
    frame = pd.DataFrame(
        np.tile(params, (draws, 1)),
        index=pd.RangeIndex(draws, name="draw"),
        columns=fitted.model.data.param_names,
    )
    return BootstrappedResults(fitted, frame)


def _collapsed(merger: BootstrappedMerger) -> None:
    products, markets = merger.product_intervals(), merger.market_intervals()
    for frame, names in (
        (products, ["prices_change", "shares_change", "markups_change", "profits_change"]),
        (markets, ["hhi_change", "consumer_surplus_change", "profits_change"]),
    ):
        for name in names:
            for end in ("lower", "upper"):
                np.testing.assert_allclose(
                    frame[f"{name}_{end}"], frame[name], rtol=1e-10, atol=1e-14
                )
    table = merger.summary_intervals()
    np.testing.assert_allclose(table["lower"], table["estimate"], rtol=1e-10)
    np.testing.assert_allclose(table["upper"], table["estimate"], rtol=1e-10)


def test_draws_at_the_estimate_collapse_the_intervals_onto_the_point(logit):
    results = logit[1]
    _collapsed(results.merger({"F2": "F1"}, bootstrap=_at_estimate(results)))


@pytest.fixture(scope="module")
def rc():
    solved = simulated_economy(
        12,
        4,
        4,
        beta={"Intercept": 1.0, "prices": -3.0, "x": 1.0},
        sigma=np.diag([0.5, 1.0]),
        draws=50,
        seed=0,
    )
    data = solved.products.copy()
    instruments = "w + diff_rival_w + diff_rival_x"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = BLPRandomCoefficients.from_formula(
            f"shares ~ 1 + x + [prices ~ {instruments}]",
            data,
            random="0 + prices + x",
            agent_data=solved.agent_data,
        ).fit(sigma=np.eye(2))
    return data, results


def test_random_coefficients_draw_rationalizes_the_observed_market(rc):
    data, results = rc
    assert data.groupby(["market_ids", "firm_ids"]).size().max() == 1
    _collapsed(results.merger({1: 0}, bootstrap=_at_estimate(results, 3)))
    bootstrapped = results.bootstrap(6, seed=1)
    moved = np.abs(bootstrapped.params.to_numpy() - np.asarray(results.params)).max(axis=1)
    assert (moved > 1e-3).all()
    for draw in (0, 4):
        at_draw = bootstrapped.results_at(draw)
        # δ_b was solved again: the draw's demand gives back the observed shares ...
        np.testing.assert_allclose(at_draw.predict(), data["shares"], rtol=1e-10)
        # ... and the observed prices are the equilibrium under the costs imputed at θ_b.
        again = at_draw.equilibrium_prices()
        np.testing.assert_allclose(again.prices, data["prices"], rtol=1e-9)
        # The imputed costs move with the draw (they are not the estimate's).
        assert np.abs(at_draw.costs().to_numpy() - results.costs().to_numpy()).max() > 1e-4
    uncertain = results.merger({1: 0}, bootstrap=bootstrapped)
    assert uncertain.failed_draws == 0
    table = uncertain.market_intervals()
    assert (table["consumer_surplus_change_lower"] < table["consumer_surplus_change_upper"]).all()


@pytest.mark.data
def test_nested_logit_draw_has_the_closed_form_delta_and_xi(nevo_products):
    """At a draw with ρ_b, δ_b = log(s_j / s_0) − ρ_b log(s_j / s_g) (Berry 1994) and
    ξ_b = δ_b − p α_b (the model has no other regressor)."""
    from blpmodels import BLPNestedLogit

    instruments = " + ".join(f"demand_instruments{k}" for k in range(20))
    data = nevo_products.copy()
    results = BLPNestedLogit.from_formula(
        f"shares ~ 0 + [prices ~ {instruments} + nest_count]", data
    ).fit()
    bootstrapped = results.bootstrap(3, seed=0)
    outside = 1 - data.groupby("market_ids")["shares"].transform("sum")
    within = data["shares"] / data.groupby(["market_ids", "nesting_ids"])["shares"].transform("sum")
    for draw in (0, 2):
        rho, alpha = bootstrapped.params.loc[draw, ["rho", "prices"]]
        assert abs(rho - float(results.params["rho"])) > 1e-4
        at_draw = bootstrapped.results_at(draw)
        delta = np.log(data["shares"] / outside) - rho * np.log(within)
        np.testing.assert_allclose(at_draw.delta, delta, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(at_draw.xi, delta - alpha * data["prices"], atol=1e-9)
        np.testing.assert_allclose(at_draw.predict(), data["shares"], rtol=1e-10)


# ----------------------------------------------------------------------------- failures
def test_failed_draws_are_counted_and_reported(logit, bootstrapped):
    """A draw with α = 0 has no markups (a BLPInputError at that draw); it is counted, warned
    about once, and the intervals are percentiles of the other draws."""
    data, results = logit
    params = bootstrapped.params.copy()
    params.loc[[3, 11], "prices"] = 0.0
    broken = BootstrappedResults(bootstrapped.results, params)
    with pytest.warns(ConvergenceWarning, match=r"failed at 2 of 40 bootstrap draws"):
        merger = results.merger({"F2": "F1"}, bootstrap=broken)
    assert merger.failed_draws == 2 and sorted(merger.failures) == [3, 11]
    assert "markups" in merger.failures[3]
    assert "2 draw(s) failed" in merger.summary()
    table = merger.product_intervals()
    assert (table["draws_failed"] == 2).all()
    kept = np.delete(params["prices"].to_numpy(), [3, 11])
    low, high = np.percentile(_hand_draws(data, kept)["prices_change"], [2.5, 97.5], axis=0)
    np.testing.assert_allclose(table["prices_change_lower"], low, rtol=1e-8)
    np.testing.assert_allclose(table["prices_change_upper"], high, rtol=1e-8)
    summary = merger.summary_intervals()
    assert (summary["draws_used"] == 38).all() and (summary["draws_failed"] == 2).all()


def test_draws_whose_prices_did_not_converge_are_counted(merger):
    """A draw whose prices did not converge in a market (its values there NaN, as merger()
    blanks them) counts as failed there and is left out of that market's intervals."""
    markets = merger.draws_markets.copy()
    products = merger.draws_products.copy()
    markets.loc[(5, "M2"), "converged"] = False
    markets.loc[(5, "M2"), "hhi_change"] = np.nan
    products.loc[(5, "M2"), "prices_change"] = np.nan
    broken = dataclasses.replace(merger, draws_markets=markets, draws_products=products)
    assert broken.failed_draws == 1
    table = broken.market_intervals()
    assert table.loc["M2", "draws_failed"] == 1 and table.loc["M1", "draws_failed"] == 0
    values = merger.draws_markets["hhi_change"].xs("M2", level="market_ids").drop(5)
    assert table.loc["M2", "hhi_change_lower"] == pytest.approx(np.percentile(values, 2.5))
    assert broken.summary_intervals().loc["hhi_change", "draws_failed"] == 1


# ----------------------------------------------------------------------------- bad input
def test_bad_bootstrap_or_level_is_an_input_error(logit, bootstrapped, merger):
    data, results = logit
    other = BLPLogit.from_formula(FORMULA, data).fit()
    with pytest.raises(BLPInputError, match="draws around other results"):
        other.merger({"F2": "F1"}, bootstrap=bootstrapped)
    with pytest.raises(BLPInputError, match="draws around other results"):
        other.equilibrium_prices(bootstrap=bootstrapped)
    with pytest.raises(BLPInputError, match="BootstrappedResults"):
        results.merger({"F2": "F1"}, bootstrap=bootstrapped.params)
    for level in (0, 1, 1.5, -0.1, "0.9", True, np.nan):
        with pytest.raises(BLPInputError, match="level"):
            results.merger({"F2": "F1"}, bootstrap=bootstrapped, level=level)
        with pytest.raises(BLPInputError, match="level"):
            results.equilibrium_prices(bootstrap=bootstrapped, level=level)
    with pytest.raises(BLPInputError, match="level"):
        merger.product_intervals(level=1.0)
    with pytest.raises(BLPInputError, match="bootstrap must be"):
        results.merger({"F2": "F1"}, level=0.9)  # a level without draws
    with pytest.raises(BLPInputError, match="draw must be"):
        bootstrapped.results_at(DRAWS)
    with pytest.raises(BLPInputError, match="callable"):
        bootstrapped.apply("merger")


# ----------------------------------------------------------------------------- figure
def test_merger_plot_draws_the_bootstrap_intervals_inside_the_figure(logit, merger, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from test_plotting import _texts_outside

    try:
        ax = merger.plot("prices", market_id="M1", intervals=True)
        segments = ax.collections[0].get_segments()
        frame = merger.draws_products.xs("M1", level="market_ids")
        percent = 100 * frame["prices_post"] / frame["prices_pre"] - 100
        table = percent.unstack("product_ids")
        low, high = np.percentile(table.to_numpy(), [2.5, 97.5], axis=0)
        np.testing.assert_allclose([s[0][1] for s in segments], low, rtol=1e-10)
        np.testing.assert_allclose([s[1][1] for s in segments], high, rtol=1e-10)
        assert "95% bootstrap interval" in [t.get_text() for t in ax.get_legend().get_texts()]
        ax.figure.savefig(tmp_path / "merger.png")
        assert _texts_outside(ax.figure) == []
        # Averaged over markets: each draw's mean change, then percentiles.
        averaged = merger.plot("profits", intervals=True, level=0.5, relative=False)
        per_draw = merger.draws_products["profits_change"].groupby(level=["draw", "product_ids"])
        means = per_draw.mean().unstack("product_ids")
        low, high = np.percentile(means.to_numpy(), [25, 75], axis=0)
        segments = averaged.collections[0].get_segments()
        np.testing.assert_allclose([s[0][1] for s in segments], low, rtol=1e-10)
        np.testing.assert_allclose([s[1][1] for s in segments], high, rtol=1e-10)
        assert _texts_outside(averaged.figure) == []
        with pytest.raises(BLPInputError, match="bootstrap"):
            MergerResults.plot(logit[1].merger({"F2": "F1"}), intervals=True)
    finally:
        plt.close("all")
