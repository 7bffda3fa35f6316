"""A small random-coefficients economy with a demographic interacting with prices.

Shared by the tests of tables, verbose fits and post-estimation rough edges (issue 12): 15
markets × 4 products from :func:`blpmodels.simulation.simulate_logit`, 30 agents per market
(unequal weights) with two normal nodes and an income demographic, random coefficients on
prices and x and Π on prices × income, so that the price coefficient of an agent is
α + σ_p ν + π income.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from blpmodels import BLPRandomCoefficients, simulation

FORMULA = "shares ~ 1 + x + [prices ~ cost_shifter + z0 + z1 + z2 + z3 + z4]"
SIGMA = [[0.5, 0.0], [0.0, 0.5]]
PI = [[0.3], [0.0]]


def economy(seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Products and agents (``nodes0`` pairs with prices, ``nodes1`` with x)."""
    products = simulation.simulate_logit(n_markets=15, n_products=4, n_firms=2, seed=seed).products
    products = products.copy()
    rng = np.random.default_rng(seed + 1000)
    for k in range(5):
        products[f"z{k}"] = rng.normal(size=len(products)) + 0.3 * products["cost_shifter"]
    markets = products["market_ids"].unique()
    n_agents = 30
    # Unequal weights (summing to one in each market), so weighted and plain means differ.
    weights = rng.uniform(0.5, 1.5, size=(markets.size, n_agents))
    weights /= weights.sum(axis=1, keepdims=True)
    agents = pd.DataFrame(
        {
            "market_ids": np.repeat(markets, n_agents),
            "weights": weights.ravel(),
            "nodes0": rng.normal(size=markets.size * n_agents),
            "nodes1": rng.normal(size=markets.size * n_agents),
            "income": rng.normal(size=markets.size * n_agents),
        }
    )
    return products, agents


def model(seed: int = 3) -> BLPRandomCoefficients:
    products, agents = economy(seed)
    return BLPRandomCoefficients.from_formula(
        FORMULA, products, random="0 + prices + x", demographics="0 + income", agent_data=agents
    )


@lru_cache(maxsize=2)
def results(method: str = "1s"):
    """A fit of :func:`model` (shared; do not modify)."""
    return model().fit(sigma=SIGMA, pi=PI, method=method, optimizer="l-bfgs-b")
