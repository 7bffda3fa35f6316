"""Mixtape Sessions demand estimation: the supply side and a merger, with blpmodels.

Answers the supply-side questions of https://github.com/Mixtape-Sessions/Demand-Estimation:
exercise 1 supplemental 3 (marginal costs imputed from Bertrand–Nash pricing) and 4 (prices
re-solved at another price coefficient, then estimated again), exercise 2 supplemental 6
(supply-side moments in estimation), and simulates a merger of two cereal firms with the
random-coefficients demand of exercise 2, question 5. Run it from the project root::

    python examples/mixtape_supply_and_mergers.py

The data are read by :mod:`blpmodels.datasets` from ``$BLPMODELS_DATA`` (default
``../shared/data``). Every question is a small function that prints its answer and returns
the numbers, so that ``tests/test_examples.py`` can check them. The guide to the methods used
here is ``docs/supply.md``.
"""

from __future__ import annotations

import os

# One BLAS thread unless the caller chose otherwise (set before numpy is imported; as the test
# suite and the benchmarks do): blpmodels runs market chunks in its own threads, and on a busy
# two-core machine OpenBLAS's spinning threads made this script take 183 s instead of 15 s.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import blpmodels  # noqa: E402
from blpmodels import (  # noqa: E402
    BLPLogit,
    ConvergenceWarning,
    datasets,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when imported by path
from _common import (  # noqa: E402
    FIXED_EFFECTS,
    FORMULA_OVERID,
    IV_FORMULA,
    MARKET,
    OPTIONS,
    exercise2_model,
    header,
    price_coefficients,
    question5_fit,
    run_script,
    timed,
)

MERGER = {"F2": "F1"}  # firm one buys firm two


# -------------------------------------------------------------------------------------------
# exercise 1: the IV + fixed-effects logit
# -------------------------------------------------------------------------------------------


def exercise1_results(products: pd.DataFrame) -> Any:
    """Exercise 1's IV logit with market and product fixed effects, SEs clustered by product.

    Parameters
    ----------
    products : pandas.DataFrame
        :func:`blpmodels.datasets.load_mixtape_products` (with ``firm_ids``: the first two
        characters of the product id).

    Returns
    -------
    blpmodels.BLPResults
        The price coefficient is about -30.6.
    """
    return BLPLogit.from_formula(IV_FORMULA, products, absorb=FIXED_EFFECTS).fit(
        cov_type="clustered", cov_kwds={"groups": "product_ids"}
    )


def exercise1_supplemental3(products: pd.DataFrame, results: Any) -> dict[str, Any]:
    """Exercise 1, supplemental 3: marginal costs from Bertrand–Nash pricing.

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products (with ``firm_ids``).
    results : blpmodels.BLPResults
        :func:`exercise1_results`.

    Returns
    -------
    dict
        ``costs`` (Series), their ``mean``, ``median``, ``min``, ``max`` (expected 0.0870,
        0.0851, 0.000154, 0.188), ``max_over_cost`` (largest (p − c)/c, expected 316),
        ``mean_margin`` ((p − c)/p) and ``market_profits`` (dollars per quarter).
    """
    header("Exercise 1, supplemental 3. Impute marginal costs from pricing optimality")
    costs = results.costs()
    markups = results.markups()
    margins = results.margins()
    prices = products["prices"].to_numpy()
    over_cost = pd.Series((prices - costs.to_numpy()) / costs.to_numpy(), index=costs.index)
    table = pd.DataFrame(
        {
            "prices": prices,
            "costs": costs,
            "markups p-c": markups,
            "(p-c)/p": margins,
            "(p-c)/c": over_cost,
        }
    )
    print(table.describe().to_string(float_format=lambda v: f"{v:.4g}"))
    alpha = results.params["prices"]
    low, high = costs.idxmin(), costs.idxmax()
    print(
        f"Costs: mean {costs.mean():.4f}, median {costs.median():.4f}, min {costs.min():.6f} "
        f"({low[1]} in {low[0]}), max {costs.max():.4f} ({high[1]} in {high[0]}) dollars per "
        "serving (expected 0.0870, 0.0851, 0.000154, 0.188). Prices average "
        f"{prices.mean():.4f}, so firms keep a third of the price on average ((p-c)/p "
        f"{margins.mean():.2f})."
    )
    print(
        f"Are they reasonable? Not entirely. The logit gives every product of firm f the same "
        f"markup -1/(alpha (1 - S_f)) (alpha = {alpha:.2f}), {markups.min():.3f} to "
        f"{markups.max():.3f} dollars whatever the product's price, so the cheapest cereals "
        f"get costs near zero: (p - c)/c reaches "
        f"{over_cost.max():.0f} (expected 316) for {over_cost.idxmax()[1]} in "
        f"{over_cost.idxmax()[0]}. Demand that is too restrictive (IIA: no closer substitutes, "
        "one price sensitivity for all) and the Bertrand-Nash conduct assumption (no "
        "collusion, no retailer margins) both bias these costs; cheap products' markups are "
        "probably overstated. Markups are variable profits per serving, not economic profits: "
        "fixed and sunk costs (advertising, plants) are not identified from prices."
    )
    profits = results.profits(market_size="market_size")
    market_profits = profits.groupby(level="market_ids").sum()
    by_firm = profits.groupby(products["firm_ids"].to_numpy()).sum() / len(market_profits)
    print(
        f"Variable profits per market and quarter: mean ${market_profits.mean():,.0f}; per firm "
        "and market: " + ", ".join(f"{firm} ${value:,.0f}" for firm, value in by_firm.items()) + "."
    )
    return {
        "costs": costs,
        "mean": float(costs.mean()),
        "median": float(costs.median()),
        "min": float(costs.min()),
        "max": float(costs.max()),
        "max_over_cost": float(over_cost.max()),
        "mean_margin": float(margins.mean()),
        "market_profits": market_profits,
    }


def exercise1_supplemental4(
    products: pd.DataFrame, results: Any, alpha: float = -20.0
) -> dict[str, Any]:
    """Exercise 1, supplemental 4: simulate prices at another alpha and estimate it back.

    ``results.simulate({"prices": alpha})`` keeps ξ, the fixed effects and the imputed costs
    and solves the Bertrand–Nash prices and shares at the new price coefficient; the
    simulated product data are then estimated again with the costs as the instrument.

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products (with ``firm_ids``).
    results : blpmodels.BLPResults
        :func:`exercise1_results`.
    alpha : float
        The true price coefficient of the simulation.

    Returns
    -------
    dict
        ``alpha_hat`` (expected about -19.39) and its ``se``, ``foc_norm`` (largest profit
        gradient over markets, at most 1e-10), ``max_hessian_eigenvalue`` (largest over firms
        and markets: negative), ``observed_iterations`` (0: the observed prices are already an
        equilibrium of the estimated model), ``price_change`` (mean percent change) and the
        ``equilibrium``.
    """
    header(f"Exercise 1, supplemental 4. Simulate equilibrium prices at alpha = {alpha:g}")
    observed = results.equilibrium_prices()
    simulated = results.simulate({"prices": alpha})
    markets = simulated.markets
    change = 100 * (simulated.data["prices"].to_numpy() / products["prices"].to_numpy() - 1)
    print(
        "At the estimates, equilibrium_prices() starts at the observed prices and stops after "
        f"{observed.markets['iterations'].max()} updates (profit gradient "
        f"{observed.markets['foc_norm'].max():.1e}): the imputed costs make them an equilibrium."
    )
    print(
        f"At alpha = {alpha:g}: prices solved in {markets['iterations'].min()}-"
        f"{markets['iterations'].max()} updates per market; largest profit-gradient norm "
        f"max_j |s_j + (Omega * ds/dp')(p - c)|_j = {markets['foc_norm'].max():.1e} (<= 1e-10 "
        f"in every market: {bool((markets['foc_norm'] <= 1e-10).all())}). Every firm's profit "
        "Hessian in its own prices is negative definite (largest eigenvalue over "
        f"{len(simulated.hessian_eigenvalues)} firm-markets: "
        f"{simulated.hessian_eigenvalues.max():.4f}), so these are profit maxima. In {MARKET}:"
    )
    print(simulated.hessian_eigenvalues.loc[MARKET].to_frame().T.to_string())
    print(
        f"Less price-sensitive consumers (alpha {results.params['prices']:.1f} -> {alpha:g}) let "
        f"firms raise prices by {change.mean():.1f}% on average ({change.min():.1f}% to "
        f"{change.max():.1f}%)."
    )
    again = BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ costs]", simulated.data, absorb=FIXED_EFFECTS
    ).fit()
    alpha_hat, se = again.params["prices"], again.bse["prices"]
    print(
        f"Estimated again on the simulated data, instrumenting prices with the costs (which "
        f"shift prices and were held fixed): alpha = {alpha_hat:.2f} (SE {se:.2f}; expected "
        f"about -19.39), within {abs(alpha_hat - alpha) / se:.1f} standard errors of the true "
        f"{alpha:g}: the estimator recovers the parameter it was simulated at."
    )
    return {
        "alpha_hat": float(alpha_hat),
        "se": float(se),
        "foc_norm": float(markets["foc_norm"].max()),
        "max_hessian_eigenvalue": float(simulated.hessian_eigenvalues.max()),
        "observed_iterations": int(observed.markets["iterations"].max()),
        "price_change": float(change.mean()),
        "equilibrium": simulated,
    }


# -------------------------------------------------------------------------------------------
# exercise 2: random coefficients with a supply side
# -------------------------------------------------------------------------------------------


def load_exercise2() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exercise 2 products with instruments 0-4 and ``firm_ids``, and the 94,000 agents.

    Returns
    -------
    products, agents : pandas.DataFrame
        ``ex2_product_data_with_overid_and_firms.csv`` (its instruments 0-3 are those of
        ``ex2_product_data.csv``) and ``ex2_agent_data.csv.gz``.
    """
    return datasets.load_mixtape_exercise2(overidentified=True)


def exercise2_supplemental6(products: pd.DataFrame, agents: pd.DataFrame) -> dict[str, Any]:
    """Exercise 2, supplemental 6: supply-side moments with linear costs 1 + mushy.

    Marginal costs c = p − η(θ, α) = γ0 + γ1 mushy + ω with E[ω (1, mushy)] = 0, stacked with
    the five demand moments of supplemental 5. γ is concentrated out; α joins θ because the
    markups η depend on it, so it needs a starting value (``beta={"prices": 10}``).

    Parameters
    ----------
    products, agents : pandas.DataFrame
        :func:`load_exercise2`.

    Returns
    -------
    dict
        ``supply`` and ``demand`` (the fits with and without the supply side),
        ``gamma_intercept`` and ``gamma_mushy`` (expected about 0.0881 and -0.00568),
        ``demand_difference`` (largest difference of the shared parameters), ``seconds``.
    """
    header("Exercise 2, supplemental 6. Supply-side restrictions in estimation")
    start = {"sigma": [[0, 0], [0, 6]], "pi": [[0.2], [-6]], "optimizer_options": OPTIONS}
    clock = time.perf_counter()
    demand = exercise2_model(products, agents, FORMULA_OVERID).fit(**start)
    seconds_demand = time.perf_counter() - clock
    model = exercise2_model(
        products, agents, FORMULA_OVERID, supply="1 + mushy", costs_type="linear"
    )
    clock = time.perf_counter()
    supply = model.fit(**start, beta={"prices": 10})
    seconds_supply = time.perf_counter() - clock
    print(supply.summary())
    print(blpmodels.compare({"demand only": demand, "demand and supply": supply}))
    shared = demand.params.index
    difference = float(np.abs(supply.params[shared] - demand.params).max())
    gamma0, gamma1 = supply.params["gamma[Intercept]"], supply.params["gamma[mushy]"]
    costs = supply.info.steps[-1]["costs"]
    print(
        f"gamma[Intercept] = {gamma0:.4f} and gamma[mushy] = {gamma1:.5f} (expected about "
        f"0.0881 and -0.00568): a non-mushy serving costs {100 * gamma0:.2f} cents to make and a "
        f"mushy one {100 * -gamma1:.2f} cents less (SE {100 * supply.bse['gamma[mushy]']:.2f} "
        f"cents). Implied costs c = p - eta average {costs.mean():.4f} (min {costs.min():.4f})."
    )
    print(
        f"The demand estimates equal the demand-only fit (largest difference {difference:.1e}; "
        f"objective {supply.objective:.4f} vs {demand.objective:.4f}): the two supply moments "
        "have two gammas to set them to zero whatever theta is, so they add no information on "
        "demand here. Standard errors of demand parameters would shrink only with supply "
        "instruments that are relevant for them (e.g. optimal instruments). "
        f"Fits: {seconds_demand:.1f} s demand only, {seconds_supply:.1f} s with supply "
        f"({supply.info.convergence['evaluations']} objective evaluations)."
    )
    return {
        "supply": supply,
        "demand": demand,
        "gamma_intercept": float(gamma0),
        "gamma_mushy": float(gamma1),
        "demand_difference": difference,
        "seconds": seconds_demand + seconds_supply,
    }


# -------------------------------------------------------------------------------------------
# a merger with exercise 2's question-5 demand
# -------------------------------------------------------------------------------------------


def question5_results(products: pd.DataFrame, agents: pd.DataFrame) -> Any:
    """Exercise 2, question 5's estimates (the demand of ``mixtape_exercise2.question5``).

    Parameters
    ----------
    products, agents : pandas.DataFrame
        :func:`load_exercise2`.

    Returns
    -------
    blpmodels.BLPResults
        sigma[prices,prices] about 6.02, pi[prices,log_income] about -5.96.
    """
    header("The merger's demand: exercise 2, question 5")
    results = question5_fit(products, agents)
    print(results.summary().tables[1])
    return results


def second_order_conditions(results: Any, agents: pd.DataFrame) -> dict[str, Any]:
    """Check the pricing conditions at the observed prices under question 5's demand.

    ``results.equilibrium_prices()`` starts at the observed prices with the imputed costs, so
    it stops at once; it also reports the largest eigenvalue of each firm's profit Hessian.

    Parameters
    ----------
    results : blpmodels.BLPResults
        :func:`question5_results`.
    agents : pandas.DataFrame
        The agents.

    Returns
    -------
    dict
        ``failed`` (markets where a firm's Hessian has a positive eigenvalue: C03Q1),
        ``eigenvalues`` (per firm in those markets) and ``positive_alpha`` (per market).
    """
    header("Second-order conditions at the observed prices (question 5 demand)")
    with warnings.catch_warnings():
        # The warning names the markets; they are reported below.
        warnings.simplefilter("ignore", ConvergenceWarning)
        observed = results.equilibrium_prices()
    markets = observed.markets
    failed = markets.index[markets["max_hessian_eigenvalue"] > 0].tolist()
    # Each market's share of agents (by weight) whose price coefficient is positive.
    weights = agents["weights"] * (price_coefficients(results, agents) > 0)
    positive = (
        weights.groupby(agents["market_ids"]).sum() / agents.groupby("market_ids")["weights"].sum()
    )
    positive = positive.sort_values(ascending=False).rename("positive_alpha_share")
    print(
        f"All {len(markets)} markets solve the first-order conditions at the observed prices "
        f"(largest profit gradient {markets['foc_norm'].max():.1e}, {markets['iterations'].max()}"
        f" updates): costs were imputed from them. But in {failed} a firm's profit Hessian has "
        "a positive eigenvalue:"
    )
    eigenvalues = observed.hessian_eigenvalues.loc[failed]
    print(eigenvalues.unstack().to_string(float_format=lambda v: f"{v:.4f}"))
    print(
        f"Share of agents with a positive price coefficient, top markets:\n"
        f"{positive.head(4).to_string(float_format=lambda v: f'{v:.3f}')}\n"
        "Under this demand the observed prices there solve the first-order conditions but are "
        "not a profit maximum for firm F1. The normal random coefficient on price, shifted by "
        "log income, is positive for some agents, most of all in city 3, whose incomes are low "
        f"and the most dispersed ({positive.get('C03Q1', np.nan):.1%} of C03Q1's agents): "
        "buyers who like higher prices make profits non-concave, and in C03Q1 this tips "
        "F1's Hessian. Its imputed costs are not those of a profit-maximizing firm and a "
        "merger equilibrium need not exist there, so it is left out of the merger below (a "
        "negative-lognormal price coefficient, rc_types={'prices': 'negative_lognormal'}, "
        "would rule such agents out)."
    )
    return {"failed": failed, "eigenvalues": eigenvalues, "positive_alpha": positive}


def merger(
    results: Any, exclude: list[str] | None = None, firm_ids: dict[str, str] = MERGER
) -> dict[str, Any]:
    """Merger simulation: firm one buys firm two, costs unchanged, in the well-behaved markets.

    Parameters
    ----------
    results : blpmodels.BLPResults
        :func:`question5_results`.
    exclude : list of str, optional
        Markets left out (those failing the second-order conditions at observed prices).
    firm_ids : dict
        Old firm -> new firm.

    Returns
    -------
    dict
        ``merger`` (:class:`blpmodels.MergerResults`), ``seconds``, ``merging_price_change``
        and ``other_price_change`` (mean percent changes), ``excluded_error`` (the markets
        whose prices do not converge when the excluded markets are tried alone).
    """
    names = " and ".join(sorted({*firm_ids, *firm_ids.values()}))
    header(f"Merger of {names} (question 5 demand)")
    labels = results.model.design.layout.market_labels
    exclude = list(exclude or [])
    markets = [label for label in labels if label not in exclude]
    clock = time.perf_counter()
    with warnings.catch_warnings():
        # About 1.6% of agents in some markets have a positive price coefficient: their
        # surplus log-sum / (-alpha_i) is negative and included (the warning says so).
        warnings.simplefilter("ignore", UserWarning)
        simulated = results.merger(firm_ids, market_id=markets, market_size="market_size")
    seconds = time.perf_counter() - clock
    products, per_market = simulated.products, simulated.markets
    print(simulated.summary())
    percent = 100 * products["prices_change"] / products["prices_pre"]
    merging = products["firm_ids_post"] == next(iter(firm_ids.values()))
    columns = [
        "firm_ids_pre",
        "prices_pre",
        "prices_post",
        "shares_pre",
        "shares_post",
        "markups_pre",
        "markups_post",
        "profits_pre",
        "profits_post",
    ]
    table = products.loc[MARKET, columns].assign(**{"price_change_%": percent.loc[MARKET]})
    print(f"\nPer product in {MARKET} (profits in dollars per quarter):")
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    print("\nPer market (consumer surplus and profits in dollars per quarter):")
    print(per_market.head(6).to_string(float_format=lambda v: f"{v:,.4g}"))
    totals = per_market.filter(regex="^(consumer_surplus|profits)").sum()
    print(f"... {len(per_market) - 6} more markets. Totals:")
    print(totals.to_string(float_format=lambda v: f"{v:,.0f}"))
    equilibrium = simulated.equilibrium.markets
    cs_change = per_market["consumer_surplus_change"].sum()
    profit_change = per_market["profits_change"].sum()
    print(
        f"Solved in {seconds:.2f} s for {len(per_market)} markets "
        f"({equilibrium['iterations'].max()} price updates at most; profit gradients <= "
        f"{equilibrium['foc_norm'].max():.1e}; largest profit-Hessian eigenvalue "
        f"{equilibrium['max_hessian_eigenvalue'].max():.4f} < 0: "
        "maxima). The merged firm raises its prices by "
        f"{percent[merging].mean():.2f}% on average (it now internalizes the sales its brands "
        f"took from each other); rivals follow by {percent[~merging].mean():.2f}% (strategic "
        f"complements). HHI rises by {per_market['hhi_change'].mean():.0f} points on average, "
        f"to {per_market['hhi_post'].mean():.0f}. Consumers lose ${-cs_change:,.0f} per quarter "
        f"over these markets; profits rise by ${profit_change:,.0f}, so total surplus falls by "
        f"${-(cs_change + profit_change):,.0f}: without cost savings the merger hurts consumers."
    )
    excluded_error = None
    if exclude:
        with warnings.catch_warnings():
            # Its ConvergenceWarning says what is printed here.
            warnings.simplefilter("ignore")
            alone = results.merger(firm_ids, market_id=exclude)
        excluded_error = alone.markets.index[~alone.markets["converged"]].tolist()
        if excluded_error:
            print(
                f"In the excluded market(s) {exclude} the post-merger prices do not converge: "
                f".markets['converged'] is False in {excluded_error} (with the Hessian already "
                "indefinite at observed prices, the price iteration runs off; there is no "
                "profit-maximizing equilibrium to compare with)."
            )
    return {
        "merger": simulated,
        "seconds": seconds,
        "merging_price_change": float(percent[merging].mean()),
        "other_price_change": float(percent[~merging].mean()),
        "excluded_error": excluded_error,
    }


# -------------------------------------------------------------------------------------------
# everything
# -------------------------------------------------------------------------------------------


def main() -> dict[str, Any]:
    """Run every question with readable pandas display options.

    Returns
    -------
    dict
        What :func:`run_all` returns, and ``timings``.
    """
    return run_script(run_all, "Supply side and mergers")


def run_all(timings: dict[str, float]) -> dict[str, Any]:
    """Run every question and return the results.

    Parameters
    ----------
    timings : dict
        Filled with the seconds of each step, from the exercise-1 logit to the merger.

    Returns
    -------
    dict
        ``ex1_s3``, ``ex1_s4``, ``ex2_s6``, ``q5``, ``soc`` (the second-order check), ``merger``.
    """
    out: dict[str, Any] = {}
    products = datasets.load_mixtape_products()  # firm_ids: the first two characters of product
    with timed(timings, "ex1 logit"):
        logit = exercise1_results(products)
    with timed(timings, "ex1 s3"):
        out["ex1_s3"] = exercise1_supplemental3(products, logit)
    with timed(timings, "ex1 s4"):
        out["ex1_s4"] = exercise1_supplemental4(products, logit)
    ex2_products, agents = load_exercise2()
    with timed(timings, "ex2 s6"):
        out["ex2_s6"] = exercise2_supplemental6(ex2_products, agents)
    with timed(timings, "ex2 q5"):
        out["q5"] = question5_results(ex2_products, agents)
    with timed(timings, "second-order check"):
        out["soc"] = second_order_conditions(out["q5"], agents)
    with timed(timings, "merger"):
        out["merger"] = merger(out["q5"], exclude=out["soc"]["failed"])
    return out


if __name__ == "__main__":
    main()
