"""Seeded simulation of logit demand data with Bertrand–Nash equilibrium prices.

:func:`simulate_logit` draws product characteristics, demand shocks ``xi`` and cost shocks
``omega`` (correlated with ``xi``), and solves for the prices of a static multi-product
Bertrand–Nash equilibrium under plain logit demand, in all markets at once. Prices are endogenous
twice over: through markups (a product with a high ``xi`` has a high share and so a high markup)
and through the correlation of ``xi`` with marginal costs. The cost shifter ``cost_shifter`` is
excluded from demand and independent of both shocks, so it is a valid instrument for price.

The model, for product ``j`` in market ``t`` sold by firm ``f(j)``:

- mean utility ``δ_jt = β_0 + β_x x_jt + α p_jt + ξ_jt`` with ``α < 0``;
- shares ``s_jt = exp(δ_jt) / (1 + Σ_k exp(δ_kt))``, the outside good having utility 0;
- marginal costs ``c_jt = γ_0 + γ_w w_jt + ω_jt``;
- under logit the first-order conditions of firm ``f`` give one markup for all its products,
  ``p_jt − c_jt = −1 / (α (1 − S_ft))`` with ``S_ft`` the firm's total inside share.

The shares come from the kernel (:class:`blpmodels.kernel.shares.ShareEvaluator` with one
agent per market and μ = 0, as :class:`~blpmodels.simulation.Simulation` evaluates a logit
economy). The prices come from the kernel's ζ-markup iteration
(:func:`blpmodels.kernel.equilibrium.solve_prices`) written out for logit, where ζ is one
number per firm: a step costs O(products) instead of the general solver's O(products²) share
Jacobian, and the iteration stops on the change in markups, the first-order condition in price
units, so small shares do not loosen it as they do a tolerance on the share-unit conditions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError, FixedPointError
from blpmodels.kernel.shares import Nesting, ShareEvaluator
from blpmodels.simulation.inputs import check_float, check_int, correlated_shocks

__all__ = ["LogitSimulation", "build_id_data", "simulate_logit"]


@dataclass(frozen=True, eq=False)
class LogitSimulation:
    """Simulated logit product data and the parameters that generated them.

    Attributes
    ----------
    products : pandas.DataFrame
        One row per product and market, sorted by market: ``market_ids``, ``product_ids`` and
        ``firm_ids`` (strings such as ``"M001"``, ``"P01"``, ``"F1"``; a product keeps its id and
        firm in every market), ``shares``, ``outside_share``, ``prices``, ``x`` (exogenous
        characteristic), ``cost_shifter`` (excluded instrument), ``market_size`` (number of
        consumers), and the true ``xi``, ``omega`` and ``costs``.
    alpha : float
        True price coefficient (negative).
    beta : dict of str to float
        True linear coefficients, ``{"Intercept": β_0, "x": β_x}``.
    gamma : dict of str to float
        True marginal-cost coefficients, ``{"Intercept": γ_0, "cost_shifter": γ_w}``.
    xi_scale, omega_scale, correlation : float
        Standard deviations of ``xi`` and ``omega`` and their correlation.
    seed : int
        Seed of the :func:`numpy.random.default_rng` generator used.
    iterations : int
        Iterations the equilibrium fixed point took.
    foc_residual : float
        Largest absolute first-order-condition residual ``|p − c + 1 / (α (1 − S_f))|`` at the
        returned prices and shares.
    """

    products: pd.DataFrame
    alpha: float
    beta: dict[str, float] = field(default_factory=dict)
    gamma: dict[str, float] = field(default_factory=dict)
    xi_scale: float = 0.0
    omega_scale: float = 0.0
    correlation: float = 0.0
    seed: int = 0
    iterations: int = 0
    foc_residual: float = 0.0


def simulate_logit(
    n_markets: int = 200,
    n_products: int = 10,
    n_firms: int = 4,
    *,
    alpha: float = -2.0,
    beta_constant: float = 3.0,
    beta_x: float = 0.5,
    gamma_constant: float = 2.0,
    gamma_w: float = 1.0,
    xi_scale: float = 0.5,
    omega_scale: float = 0.1,
    correlation: float = 0.7,
    drop_probability: float = 0.0,
    seed: int = 0,
    tol: float = 1e-13,
    max_iterations: int = 10_000,
) -> LogitSimulation:
    """Simulate logit demand data with endogenous Bertrand–Nash equilibrium prices.

    Every market has the same ``n_products`` products; product ``k`` (``"P01"``, ...) belongs to
    firm ``k mod n_firms`` (``"F1"``, ...). Draws: ``x ~ N(0, 1)``, ``cost_shifter ~ U(0, 1)``,
    ``(xi, omega)`` bivariate normal with standard deviations ``xi_scale``, ``omega_scale`` and
    correlation ``correlation``, ``market_size`` uniform on 10,000–1,000,000 consumers. With
    ``drop_probability > 0`` each product is then dropped from each market independently with
    that probability (at least one product is kept in every market), giving unbalanced markets.

    Equilibrium markups solve ``m_f = 1 / |α| + S_f(c + m) m_f``, a rearrangement of the
    first-order condition ``m_f = −1 / (α (1 − S_f))`` whose own-firm derivative is zero at the
    solution, for every market and firm at once.

    The defaults give outside shares of roughly 0.3–0.9 and a clearly endogenous price: OLS of
    ``log(s / s0)`` on ``[1, x, p]`` is biased towards zero, while two-stage least squares with
    ``cost_shifter`` as the excluded instrument recovers ``alpha``.

    Parameters
    ----------
    n_markets : int, default 200
        Number of markets (ids ``"M001"``, ...).
    n_products : int, default 10
        Products per market before any are dropped.
    n_firms : int, default 4
        Number of firms, between 1 and ``n_products``.
    alpha : float, default -2.0
        Price coefficient; must be negative.
    beta_constant, beta_x : float, default 3.0, 0.5
        Intercept and coefficient on ``x`` in mean utility.
    gamma_constant, gamma_w : float, default 2.0, 1.0
        Intercept and coefficient on ``cost_shifter`` in marginal cost.
    xi_scale, omega_scale : float, default 0.5, 0.1
        Standard deviations of the demand and cost shocks (>= 0).
    correlation : float, default 0.7
        Correlation of ``xi`` and ``omega``, in [-1, 1].
    drop_probability : float, default 0.0
        Probability, in [0, 1), that a product is missing from a market.
    seed : int, default 0
        Seed for :func:`numpy.random.default_rng`; the same seed gives the same data.
    tol : float, default 1e-13
        Convergence tolerance on the largest absolute change in markups.
    max_iterations : int, default 10000
        Iteration limit of the equilibrium fixed point.

    Returns
    -------
    LogitSimulation
        The product data, true parameters, iterations used and the largest FOC residual.

    Raises
    ------
    BLPInputError
        If an argument is invalid; the message names it.
    FixedPointError
        If the equilibrium iteration does not converge within ``max_iterations`` or produces
        non-finite values; ``markets`` lists the markets at fault.

    Examples
    --------
    >>> simulation = simulate_logit(n_markets=50, n_products=5, n_firms=2, seed=1)
    >>> simulation.products.shape[0]
    250
    >>> simulation.alpha, simulation.beta
    (-2.0, {'Intercept': 3.0, 'x': 0.5})
    >>> bool(simulation.foc_residual < 1e-12)
    True
    >>> list(simulation.products.columns[:5])
    ['market_ids', 'product_ids', 'firm_ids', 'shares', 'outside_share']
    """
    n_markets = check_int("n_markets", n_markets, 1)
    n_products = check_int("n_products", n_products, 1)
    n_firms = check_int("n_firms", n_firms, 1)
    if n_firms > n_products:
        raise BLPInputError(
            f"argument 'n_firms' ({n_firms}) must not exceed 'n_products' ({n_products})"
        )
    alpha = check_float("alpha", alpha, high=0.0, high_open=True)
    beta_constant = check_float("beta_constant", beta_constant)
    beta_x = check_float("beta_x", beta_x)
    gamma_constant = check_float("gamma_constant", gamma_constant)
    gamma_w = check_float("gamma_w", gamma_w)
    xi_scale = check_float("xi_scale", xi_scale, low=0.0)
    omega_scale = check_float("omega_scale", omega_scale, low=0.0)
    correlation = check_float("correlation", correlation, low=-1.0, high=1.0)
    drop_probability = check_float(
        "drop_probability", drop_probability, low=0.0, high=1.0, high_open=True
    )
    seed = check_int("seed", seed, 0)
    tol = check_float("tol", tol, low=0.0, low_open=True)
    max_iterations = check_int("max_iterations", max_iterations, 1)

    draws = _Draws.draw(
        np.random.default_rng(seed),
        (n_markets, n_products),
        xi_scale,
        omega_scale,
        correlation,
        drop_probability,
    )
    firms = np.arange(n_products) % n_firms
    costs = gamma_constant + gamma_w * draws.w + draws.omega
    quality = beta_constant + beta_x * draws.x + draws.xi  # mean utility net of the price term
    equilibrium = _LogitEquilibrium.solve(
        quality, costs, alpha, firms, draws.keep, tol=tol, max_iterations=max_iterations
    )
    products = _products_frame(draws, firms, costs, equilibrium)
    return LogitSimulation(
        products=products,
        alpha=alpha,
        beta={"Intercept": beta_constant, "x": beta_x},
        gamma={"Intercept": gamma_constant, "cost_shifter": gamma_w},
        xi_scale=xi_scale,
        omega_scale=omega_scale,
        correlation=correlation,
        seed=seed,
        iterations=equilibrium.iterations,
        foc_residual=equilibrium.foc_residual(),
    )


def _labels(prefix: str, count: int) -> np.ndarray:
    """``M001``-style ids, zero-padded to the width of ``count``."""
    width = len(str(count))
    return np.array([f"{prefix}{k + 1:0{width}d}" for k in range(count)], dtype=object)


@dataclass(frozen=True, eq=False)
class _Draws:
    """The random part of a logit simulation, on the full ``[markets, products]`` grid."""

    x: np.ndarray
    w: np.ndarray
    xi: np.ndarray
    omega: np.ndarray
    market_size: np.ndarray
    keep: np.ndarray

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        shape: tuple[int, int],
        xi_scale: float,
        omega_scale: float,
        correlation: float,
        drop_probability: float,
    ) -> _Draws:
        """Characteristics, shocks, market sizes and which products are sold, in that order.

        The order of the draws is part of the output: the same seed gives the same data.
        """
        x = rng.standard_normal(shape)
        w = rng.random(shape)
        z_demand = rng.standard_normal(shape)
        z_cost = rng.standard_normal(shape)
        xi, omega = correlated_shocks(z_demand, z_cost, xi_scale, omega_scale, correlation)
        market_size = rng.integers(10_000, 1_000_001, size=shape[0])
        keep = np.ones(shape, dtype=bool)
        if drop_probability > 0:
            keep = rng.random(shape) >= drop_probability
            empty = ~keep.any(axis=1)
            keep[empty, rng.integers(0, shape[1], size=int(empty.sum()))] = True
        return cls(x, w, xi, omega, market_size, keep)


@dataclass(frozen=True, eq=False)
class _LogitEquilibrium:
    """Bertrand–Nash markups of every firm in every market under plain logit demand.

    Attributes
    ----------
    markups : numpy.ndarray
        ``[markets, firms]`` markups m_f = p − c of each firm's products.
    prices, shares : numpy.ndarray
        ``[markets, products]`` prices and shares (shares 0 for products not sold).
    firm_shares : numpy.ndarray
        ``[markets, firms]`` inside shares S_f.
    alpha : float
        Price coefficient.
    iterations : int
        Markup updates taken.
    """

    markups: np.ndarray
    prices: np.ndarray
    shares: np.ndarray
    firm_shares: np.ndarray
    alpha: float
    iterations: int

    @classmethod
    def solve(
        cls,
        quality: np.ndarray,
        costs: np.ndarray,
        alpha: float,
        firms: np.ndarray,
        mask: np.ndarray,
        *,
        tol: float,
        max_iterations: int,
    ) -> _LogitEquilibrium:
        """Iterate m_f ← 1/|α| + S_f(c + m) m_f, the ζ-markup step, in all markets at once.

        Parameters
        ----------
        quality, costs : numpy.ndarray
            ``[markets, products]`` mean utility net of the price term, and marginal costs.
        alpha : float
            Price coefficient (negative).
        firms : numpy.ndarray
            ``[products]`` firm of each product.
        mask : numpy.ndarray
            ``[markets, products]`` products sold.
        tol : float
            Convergence tolerance on the largest absolute change in markups.
        max_iterations : int
            Iteration limit.

        Raises
        ------
        FixedPointError
            Markets whose markups did not converge or stopped being finite.
        """
        n_markets = mask.shape[0]
        evaluator = ShareEvaluator(
            np.zeros((*mask.shape, 1)), np.ones((n_markets, 1)), mask, Nesting.unnested(mask.shape)
        )
        membership = np.eye(int(firms.max()) + 1)[firms]  # [products, firms]
        inverse_alpha = -1.0 / alpha
        markups = np.full((n_markets, membership.shape[1]), inverse_alpha)
        change = np.full(markups.shape, np.inf)
        iterations = 0
        while iterations < max_iterations:
            iterations += 1
            shares = evaluator.shares(quality + alpha * (costs + markups[:, firms]))
            updated = inverse_alpha + (shares @ membership) * markups
            change = np.abs(updated - markups)
            markups = updated
            if not np.all(np.isfinite(markups)) or change.max() < tol:
                break
        if not (np.all(np.isfinite(markups)) and change.max() < tol):
            _raise_unconverged(markups, change, iterations, tol)
        prices = costs + markups[:, firms]
        shares = evaluator.shares(quality + alpha * prices)
        return cls(markups, prices, shares, shares @ membership, alpha, iterations)

    def foc_residual(self) -> float:
        """Largest |m_f + 1 / (α (1 − S_f))| over markets and firms."""
        return float(np.max(np.abs(self.markups + 1.0 / (self.alpha * (1.0 - self.firm_shares)))))


def _raise_unconverged(
    markups: np.ndarray, change: np.ndarray, iterations: int, tol: float
) -> None:
    """Name the markets where some firm's markup did not settle or stopped being finite."""
    bad_markets = np.flatnonzero(~(np.isfinite(markups) & (change < tol)).all(axis=1))
    labels = _labels("M", markups.shape[0])[bad_markets].tolist()
    raise FixedPointError(
        f"Bertrand–Nash price equilibrium did not converge after {iterations} iterations "
        f"(largest markup change {np.nanmax(change):.3g}, tolerance {tol:g}) in "
        f"{len(labels)} market(s), e.g. {labels[:3]}; try a smaller 'xi_scale' or a larger "
        "'max_iterations'",
        markets=labels,
    )


def _products_frame(
    draws: _Draws, firms: np.ndarray, costs: np.ndarray, equilibrium: _LogitEquilibrium
) -> pd.DataFrame:
    """One row per product sold, sorted by market then product (row-major order of the grid)."""
    keep = draws.keep
    n_markets, n_products = keep.shape
    market_index, product_index = np.nonzero(keep)
    firm_labels = np.array([f"F{f + 1}" for f in range(int(firms.max()) + 1)], dtype=object)
    outside = 1.0 - equilibrium.shares.sum(axis=1)
    return pd.DataFrame(
        {
            "market_ids": pd.Series(_labels("M", n_markets)[market_index], dtype="str"),
            "product_ids": pd.Series(_labels("P", n_products)[product_index], dtype="str"),
            "firm_ids": pd.Series(firm_labels[firms[product_index]], dtype="str"),
            "shares": equilibrium.shares[keep],
            "outside_share": outside[market_index],
            "prices": equilibrium.prices[keep],
            "x": draws.x[keep],
            "cost_shifter": draws.w[keep],
            "market_size": draws.market_size[market_index],
            "xi": draws.xi[keep],
            "omega": draws.omega[keep],
            "costs": costs[keep],
        }
    )


# ---------------------------------------------------------------------------- economies
def build_id_data(T: int, J: int, F: int) -> pd.DataFrame:
    """Ids of a balanced economy: ``T`` markets of the same ``J`` products sold by ``F`` firms.

    Products are split over firms in contiguous blocks whose sizes differ by at most one, the
    larger blocks first (the convention of pyblp's builder of the same name): with ``J = 5`` and
    ``F = 2`` firm 0 sells products 0–2 and firm 1 products 3–4, in every market.

    Parameters
    ----------
    T : int
        Number of markets (ids ``0 … T − 1``).
    J : int
        Products per market (ids ``0 … J − 1``).
    F : int
        Number of firms (ids ``0 … F − 1``), between 1 and ``J``.

    Returns
    -------
    pandas.DataFrame
        ``T·J`` rows sorted by market, with integer columns ``market_ids``, ``product_ids`` and
        ``firm_ids``.

    Raises
    ------
    BLPInputError
        If an argument is not a positive integer or ``F > J``.

    Examples
    --------
    >>> ids = build_id_data(T=2, J=5, F=2)
    >>> ids["firm_ids"].tolist()
    [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    >>> list(ids.columns), len(ids)
    (['market_ids', 'product_ids', 'firm_ids'], 10)
    """
    T = check_int("T", T, 1)
    J = check_int("J", J, 1)
    F = check_int("F", F, 1)
    if F > J:
        raise BLPInputError(f"argument 'F' ({F}) must not exceed 'J' ({J}): every firm sells")
    sizes = np.full(F, J // F)
    sizes[: J % F] += 1
    firms = np.repeat(np.arange(F), sizes)
    return pd.DataFrame(
        {
            "market_ids": np.repeat(np.arange(T), J),
            "product_ids": np.tile(np.arange(J), T),
            "firm_ids": np.tile(firms, T),
        }
    )
