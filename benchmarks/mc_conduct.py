"""Monte Carlo of ``results.test_conduct`` (issue 21, item 3): rejection rates at 5%.

Three designs, each ``--draws`` economies of ``--markets`` markets × 6 products (3 firms of 2
products), logit demand u = 2 − 2p + x + ξ and costs 1 + w + ω, demand re-estimated by IV
logit in every draw, instruments x and the rival sums of x, w partialled out:

* ``bertrand``: prices from the Bertrand–Nash equilibrium (the package's ``Simulation``);
  Bertrand vs monopoly should favour Bertrand.
* ``monopoly``: one firm sets every price in a market (``Simulation`` with one firm id per
  market); the test should favour monopoly.
* ``null``: prices p = c + (Δ_Bertrand + Δ_monopoly)/2 at the equilibrium shares (solved here
  by a fixed point on the logit closed forms), so both models miss by the same amount and fit
  equally well in the population: the rejection rate is the size of the two-sided 5% test.

Run: ``python benchmarks/mc_conduct.py --draws 200`` (a few minutes on one core).
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (one BLAS thread, set before numpy loads)
import numpy as np
import pandas as pd

from blpmodels import BLPLogit, build_blp_instruments
from blpmodels.simulation import build_id_data
from blpmodels.simulation.economies import Simulation

ALPHA = -2.0
FORMULA = "shares ~ 1 + x + [prices ~ w + blp_rival_x + blp_own_x]"


def _ids(markets: int, seed: int) -> pd.DataFrame:
    products = build_id_data(T=markets, J=6, F=3)
    rng = np.random.default_rng(seed + 10_000)
    products["x"] = rng.normal(size=len(products))
    products["w"] = rng.uniform(size=len(products))
    return products


def _simulation(products: pd.DataFrame, seed: int) -> Simulation:
    return Simulation(
        products,
        "1 + prices + x",
        {"Intercept": 2.0, "prices": ALPHA, "x": 1.0},
        supply="1 + w",
        gamma={"Intercept": 1.0, "w": 1.0},
        xi_variance=0.3,
        omega_variance=0.1,
        correlation=0.5,
        seed=seed,
    )


def _halfway_prices(products: pd.DataFrame, simulation: Simulation) -> pd.DataFrame:
    """p = c + (Δ_B + Δ_M)/2 with logit shares at p: a fixed point on the closed forms."""
    quality = 2.0 + products["x"].to_numpy() + simulation.xi.to_numpy()
    costs = simulation.costs().to_numpy()
    markets = products["market_ids"].to_numpy()
    firms = pd.factorize(pd.Series(list(zip(markets, products["firm_ids"], strict=True))))[0]
    market_codes = pd.factorize(markets)[0]
    prices = costs + 1.0
    for _ in range(10_000):
        exp = np.exp(quality + ALPHA * prices)
        inside = np.bincount(market_codes, exp)[market_codes]
        shares = exp / (1 + inside)
        firm_share = np.bincount(firms, shares)[firms]
        outside = 1 - np.bincount(market_codes, shares)[market_codes]
        markup = 0.5 / (-ALPHA * (1 - firm_share)) + 0.5 / (-ALPHA * outside)
        new = costs + markup
        if np.abs(new - prices).max() < 1e-13:
            break
        prices = 0.5 * prices + 0.5 * new
    else:
        raise RuntimeError("halfway prices did not converge")
    return products.assign(prices=prices, shares=shares)


def economy(design: str, markets: int, seed: int) -> pd.DataFrame:
    products = _ids(markets, seed)
    firms = products["firm_ids"].to_numpy()
    if design == "monopoly":
        products["firm_ids"] = products["market_ids"]
    simulation = _simulation(products, seed)
    if design == "null":
        data = _halfway_prices(products, simulation)
    else:
        data = simulation.replace_endogenous(instruments=None).products
    data["firm_ids"] = firms
    built = build_blp_instruments(data, ["x"])
    return data.assign(blp_own_x=built["blp_own_x"], blp_rival_x=built["blp_rival_x"])


def run(design: str, draws: int, markets: int) -> dict[str, float]:
    t_values, f_values, clustered = [], [], []
    for seed in range(draws):
        data = economy(design, markets, seed)
        results = BLPLogit.from_formula(FORMULA, data).fit()
        models = ["bertrand", "monopoly"]
        test = results.test_conduct(models, "0 + x + blp_rival_x", costs="1 + w")
        t_values.append(test.table["T_RV"].iloc[0])
        f_values.append(test.table["F"].iloc[0])
        by_market = results.test_conduct(
            models, "0 + x + blp_rival_x", costs="1 + w", clusters="market_ids"
        )
        clustered.append(by_market.table["T_RV"].iloc[0])
    t, c = np.asarray(t_values), np.asarray(clustered)
    return {
        "favour bertrand (T < -1.96)": float(np.mean(t < -1.96)),
        "favour monopoly (T > 1.96)": float(np.mean(t > 1.96)),
        "reject equal fit (|T| > 1.96)": float(np.mean(np.abs(t) > 1.96)),
        "same, clustered by market": float(np.mean(np.abs(c) > 1.96)),
        "mean T_RV": float(t.mean()),
        "sd T_RV": float(t.std(ddof=1)),
        "median F": float(np.median(f_values)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--markets", type=int, default=100)
    parser.add_argument("--designs", nargs="+", default=["bertrand", "monopoly", "null"])
    options = parser.parse_args()
    rows = {}
    for design in options.designs:
        start = time.perf_counter()
        rows[design] = run(design, options.draws, options.markets)
        rows[design]["seconds"] = round(time.perf_counter() - start, 1)
    table = pd.DataFrame(rows).T
    print(
        f"test_conduct Monte Carlo: {options.draws} draws, {options.markets} markets × 6 "
        "products, Bertrand vs monopoly, two-sided 5% tests"
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string())


if __name__ == "__main__":
    main()
