"""Small simulated random-coefficients problems shared by the reliability tests (issue 7).

The reliability probe that found the δ solver and fit-loop bugs used these: 20 markets × 5
products from :func:`blpmodels.simulation.simulate_logit` (so the true σ is 0, at its bound),
one random coefficient on prices, 20 agents per market and four excluded instruments.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from blpmodels import BLPRandomCoefficients, simulation


def probe_problem(seed: int, scale: float = 1.0) -> tuple[BLPRandomCoefficients, pd.DataFrame]:
    """The probe's 20-market × 5-product problem: σ on prices, 20 agents, 4 excluded IVs."""
    products = simulation.simulate_logit(n_markets=20, n_products=5, n_firms=2, seed=seed).products
    products = products.copy()
    rng = np.random.default_rng(seed + 1000)
    for k in range(3):
        products[f"z{k}"] = rng.normal(size=len(products)) + 0.3 * products["cost_shifter"]
    products["prices"] *= scale
    agents = pd.DataFrame(
        {
            "market_ids": np.repeat(products["market_ids"].unique(), 20),
            "weights": 1 / 20,
            "nodes0": rng.normal(size=20 * 20),
        }
    )
    model = BLPRandomCoefficients.from_formula(
        "shares ~ 1 + x + [prices ~ cost_shifter + z0 + z1 + z2]",
        products,
        random="0 + prices",
        agent_data=agents,
    )
    return model, agents


def independent_log_shares(
    products: pd.DataFrame, agents: pd.DataFrame, delta: np.ndarray, sigma: float
) -> np.ndarray:
    """log s_j from scratch: log Σ_i w_i exp(δ_j + σν_i p_j − log(1 + Σ_k exp(δ_k + σν_i p_k)))."""
    out = np.empty(len(products))
    for market, rows in products.groupby("market_ids").indices.items():
        draws = agents[agents["market_ids"] == market]
        utility = delta[rows, None] + sigma * np.outer(
            products["prices"].to_numpy()[rows], draws["nodes0"].to_numpy()
        )
        log_denominator = np.logaddexp.reduce(
            np.vstack([np.zeros(utility.shape[1]), utility]), axis=0
        )
        log_probability = utility - log_denominator
        out[rows] = np.logaddexp.reduce(
            log_probability + np.log(draws["weights"].to_numpy())[None, :], axis=1
        )
    return out
