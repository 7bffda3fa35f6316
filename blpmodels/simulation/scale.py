"""Large synthetic random-coefficients problems for scale benchmarks and backend tests.

:func:`simulate_scale` draws T markets × J products × I agents with one random coefficient on
prices (and optionally an income demographic interacting with prices), and computes the
shares at a known θ market chunk by market chunk, so a million product-markets with hundreds
of agents need no data files and never more than a bounded amount of memory to build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.shares import Nesting, ShareEvaluator

__all__ = ["ScaleProblem", "simulate_scale"]

# The rivals' sums (BLP instruments) move the substitution patterns that identify σ.
INSTRUMENTS = "cost_shifter + z0 + z1 + rivals_x + rivals_cost_shifter"
FORMULA = f"shares ~ 1 + x + [prices ~ {INSTRUMENTS}]"
DEMOGRAPHICS_FORMULA = (
    f"shares ~ 1 + x + [prices ~ {INSTRUMENTS} + cost_shifter:income_mean + z0:income_mean]"
)


@dataclass(eq=False)
class ScaleProblem:
    """A simulated problem: data, true parameters and the formulas that estimate it.

    Attributes
    ----------
    products, agents : pandas.DataFrame
        Product data (``market_ids``, ``product_ids``, ``shares``, ``prices``, ``x``,
        ``cost_shifter``, ``z0``, ``z1``, ``xi``, the rivals' sums ``rivals_x`` and
        ``rivals_cost_shifter``; ``income_mean`` with demographics,
        ``nesting_ids`` with nests) and agent data
        (``market_ids``, ``weights``, ``nodes0``; ``income`` with demographics).
    beta : dict
        True linear coefficients (``Intercept``, ``x``, ``prices``).
    sigma, pi : float
        True σ on prices and Π (prices × income; 0 without demographics).
    formula, random, demographics : str or None
        Formulas for :meth:`BLPRandomCoefficients.from_formula`.
    """

    products: pd.DataFrame
    agents: pd.DataFrame
    beta: dict[str, float]
    sigma: float
    pi: float
    formula: str = FORMULA
    random: str = "0 + prices"
    demographics: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def model(self, **kwargs: Any) -> Any:
        """The random-coefficients model of the problem (keywords go to ``from_formula``).

        Examples
        --------
        >>> problem = simulate_scale(4, 3, 10, seed=0)
        >>> problem.model().fit(sigma=1.0).params.index.tolist()  # doctest: +SKIP
        ['Intercept', 'x', 'prices', 'sigma[prices,prices]']
        """
        from blpmodels.models.random_coefficients import BLPRandomCoefficients

        return BLPRandomCoefficients.from_formula(
            self.formula,
            self.products,
            random=self.random,
            demographics=self.demographics,
            agent_data=self.agents,
            **kwargs,
        )


def simulate_scale(
    n_markets: int,
    n_products: int,
    n_agents: int,
    *,
    sigma: float = 0.5,
    pi: float | None = None,
    nests: int = 0,
    beta: tuple[float, float, float] = (-4.0, 1.0, -1.0),
    seed: int = 0,
    chunk_values: float = 2e7,
) -> ScaleProblem:
    """Simulate a large random-coefficients logit problem with shares at a known θ.

    Utility of agent i for product j in market t: δ_jt + p_jt (σ ν_it + π income_it) + ε_ijt
    with δ_jt = β0 + β_x x_jt + β_p p_jt + ξ_jt. Prices are endogenous (they load on ξ) and
    shifted by ``cost_shifter``; ``z0``, ``z1`` and the sums of the rivals' ``x`` and cost
    shifters are further excluded instruments. Shares
    are computed exactly (the agents are the integration rule) in chunks of about
    ``chunk_values`` agent-product values.

    Parameters
    ----------
    n_markets, n_products, n_agents : int
        T, J (every market) and I (every market).
    sigma : float
        σ on prices.
    pi : float, optional
        Π on prices × income; with it the agents get an ``income`` column and the problem
        has ``demographics="0 + income"``.
    nests : int
        With ``nests > 0``, products get ``nesting_ids`` (product j in nest j mod nests):
        the data are still the unnested model's, so an RCNL fit estimates ρ near zero.
    beta : tuple of float
        (intercept, coefficient on x, coefficient on prices).
    seed : int
        Random seed: the same seed gives the same data.
    chunk_values : float
        Agent-product values per chunk while computing the shares.

    Returns
    -------
    ScaleProblem

    Raises
    ------
    BLPInputError
        A size that is not a positive integer.

    Examples
    --------
    >>> problem = simulate_scale(3, 2, 5, seed=1)
    >>> problem.products.shape[0], problem.agents.shape[0]
    (6, 15)
    >>> bool(problem.products.groupby("market_ids")["shares"].sum().lt(1).all())
    True
    """
    n_t, n_j, n_i = _check_sizes(n_markets, n_products, n_agents)
    draws = _ScaleDraws.draw(
        np.random.default_rng(seed), n_t, n_j, n_i, demographics=pi is not None
    )
    delta = beta[0] + beta[1] * draws.x + beta[2] * draws.prices + draws.xi
    taste = sigma * draws.nodes + (0.0 if pi is None else pi) * draws.income
    shares = _shares(delta, draws.prices, taste, chunk_values)
    products = draws.products(shares)
    if nests:
        products["nesting_ids"] = np.tile(np.arange(n_j) % int(nests), n_t)
    agents = pd.DataFrame(
        {
            "market_ids": np.repeat(np.arange(n_t), n_i),
            "weights": np.full(n_t * n_i, 1.0 / n_i),
            "nodes0": draws.nodes.ravel(),
        }
    )
    if pi is not None:
        agents["income"] = draws.income.ravel()
    return ScaleProblem(
        products,
        agents,
        {"Intercept": beta[0], "x": beta[1], "prices": beta[2]},
        float(sigma),
        0.0 if pi is None else float(pi),
        formula=FORMULA if pi is None else DEMOGRAPHICS_FORMULA,
        demographics=None if pi is None else "0 + income",
    )


def _check_sizes(n_markets: Any, n_products: Any, n_agents: Any) -> tuple[int, int, int]:
    for name, value in (
        ("n_markets", n_markets),
        ("n_products", n_products),
        ("n_agents", n_agents),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise BLPInputError(f"{name} must be a positive integer, got {value!r}")
    return int(n_markets), int(n_products), int(n_agents)


@dataclass(frozen=True, eq=False)
class _ScaleDraws:
    """The random part of a scale problem: ``[T, J]`` product and ``[T, I]`` agent arrays."""

    x: np.ndarray
    cost_shifter: np.ndarray
    z0: np.ndarray
    z1: np.ndarray
    xi: np.ndarray
    prices: np.ndarray
    nodes: np.ndarray
    income_mean: np.ndarray | None
    income: np.ndarray

    @classmethod
    def draw(
        cls, rng: np.random.Generator, n_t: int, n_j: int, n_i: int, *, demographics: bool
    ) -> _ScaleDraws:
        """Draw in a fixed order (the same seed gives the same data); prices load on ξ."""
        x = rng.normal(size=(n_t, n_j))
        cost_shifter = rng.normal(size=(n_t, n_j))
        z0, z1 = rng.normal(size=(2, n_t, n_j))
        xi = 0.3 * rng.normal(size=(n_t, n_j))
        prices = (
            2.0
            + 0.5 * cost_shifter
            + 0.2 * z0
            + 0.1 * z1
            + 0.5 * xi
            + 0.1 * rng.normal(size=(n_t, n_j))
        )
        nodes = rng.normal(size=(n_t, n_i))
        # Markets differ in mean income, which (interacted with the cost shifter) identifies Π.
        income_mean = rng.normal(size=n_t) if demographics else None
        spread = rng.normal(size=(n_t, n_i))
        income = spread if income_mean is None else income_mean[:, None] + spread
        return cls(x, cost_shifter, z0, z1, xi, prices, nodes, income_mean, income)

    def products(self, shares: np.ndarray) -> pd.DataFrame:
        """The product data at ``shares`` ``[T, J]``, with the rivals' sums as instruments."""
        n_t, n_j = shares.shape
        x, cost_shifter = self.x, self.cost_shifter
        products = pd.DataFrame(
            {
                "market_ids": np.repeat(np.arange(n_t), n_j),
                "product_ids": np.tile(np.arange(n_j), n_t),
                "shares": shares.ravel(),
                "prices": self.prices.ravel(),
                "x": x.ravel(),
                "cost_shifter": cost_shifter.ravel(),
                "z0": self.z0.ravel(),
                "z1": self.z1.ravel(),
                "xi": self.xi.ravel(),
                "rivals_x": (x.sum(axis=1, keepdims=True) - x).ravel(),
                "rivals_cost_shifter": (
                    cost_shifter.sum(axis=1, keepdims=True) - cost_shifter
                ).ravel(),
            }
        )
        if self.income_mean is not None:
            products["income_mean"] = np.repeat(self.income_mean, n_j)
        return products


def _shares(
    delta: np.ndarray, prices: np.ndarray, taste: np.ndarray, chunk_values: float
) -> np.ndarray:
    """Shares ``[T, J]`` with utilities δ_jt + p_jt taste_it, equal agent weights.

    The kernel's evaluator (μ = p taste, never formed) runs on groups of markets of about
    ``chunk_values`` agent-product values, which bounds the memory.
    """
    n_t, n_j = delta.shape
    n_i = taste.shape[1]
    shares = np.empty((n_t, n_j))
    step = max(1, int(chunk_values // (n_j * n_i)))
    for start in range(0, n_t, step):
        rows = slice(start, min(n_t, start + step))
        mask = np.ones((rows.stop - start, n_j), dtype=bool)
        evaluator = ShareEvaluator.from_coefficients(
            prices[rows, :, None],
            taste[rows, :, None],
            np.full((rows.stop - start, n_i), 1.0 / n_i),
            mask,
            Nesting.unnested(mask.shape),
        )
        shares[rows] = evaluator.shares(delta[rows])
    return shares
