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
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError, FixedPointError

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


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BLPInputError(f"argument {name!r} must be an integer, got {value!r}")
    if value < minimum:
        raise BLPInputError(f"argument {name!r} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_float(
    name: str,
    value: object,
    *,
    low: float = -np.inf,
    high: float = np.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BLPInputError(f"argument {name!r} must be a real number, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise BLPInputError(f"argument {name!r} must be finite, got {value!r}")
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if below or above:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise BLPInputError(f"argument {name!r} must lie in {interval}, got {value!r}")
    return number


def _logit_shares(
    utilities: np.ndarray, market_codes: np.ndarray, starts: np.ndarray, n_markets: int
) -> np.ndarray:
    """Logit shares with an outside good of utility 0, stabilised by the market maximum."""
    shift = np.maximum(np.maximum.reduceat(utilities, starts), 0.0)[market_codes]
    numerators = np.exp(utilities - shift)
    denominators = np.exp(-shift) + np.bincount(market_codes, numerators, n_markets)[market_codes]
    return numerators / denominators


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
    n_markets = _check_int("n_markets", n_markets, 1)
    n_products = _check_int("n_products", n_products, 1)
    n_firms = _check_int("n_firms", n_firms, 1)
    if n_firms > n_products:
        raise BLPInputError(
            f"argument 'n_firms' ({n_firms}) must not exceed 'n_products' ({n_products})"
        )
    alpha = _check_float("alpha", alpha, high=0.0, high_open=True)
    beta_constant = _check_float("beta_constant", beta_constant)
    beta_x = _check_float("beta_x", beta_x)
    gamma_constant = _check_float("gamma_constant", gamma_constant)
    gamma_w = _check_float("gamma_w", gamma_w)
    xi_scale = _check_float("xi_scale", xi_scale, low=0.0)
    omega_scale = _check_float("omega_scale", omega_scale, low=0.0)
    correlation = _check_float("correlation", correlation, low=-1.0, high=1.0)
    drop_probability = _check_float(
        "drop_probability", drop_probability, low=0.0, high=1.0, high_open=True
    )
    seed = _check_int("seed", seed, 0)
    tol = _check_float("tol", tol, low=0.0, low_open=True)
    max_iterations = _check_int("max_iterations", max_iterations, 1)

    rng = np.random.default_rng(seed)
    shape = (n_markets, n_products)
    x = rng.standard_normal(shape)
    w = rng.random(shape)
    z_demand = rng.standard_normal(shape)
    z_cost = rng.standard_normal(shape)
    xi = xi_scale * z_demand
    omega = omega_scale * (correlation * z_demand + np.sqrt(1.0 - correlation**2) * z_cost)
    market_size = rng.integers(10_000, 1_000_001, size=n_markets)
    keep = np.ones(shape, dtype=bool)
    if drop_probability > 0:
        keep = rng.random(shape) >= drop_probability
        empty = ~keep.any(axis=1)
        keep[empty, rng.integers(0, n_products, size=int(empty.sum()))] = True

    market_index, product_index = np.nonzero(keep)  # row-major: sorted by market, then product
    x, w, xi, omega = x[keep], w[keep], xi[keep], omega[keep]
    firm_index = product_index % n_firms
    costs = gamma_constant + gamma_w * w + omega
    quality = beta_constant + beta_x * x + xi  # mean utility net of the price term

    markets_present = np.bincount(market_index, minlength=n_markets)
    starts = np.concatenate([[0], np.cumsum(markets_present)[:-1]])
    groups = market_index * n_firms + firm_index
    n_groups = n_markets * n_firms

    # Iterate on firm markups m_f <- 1/|alpha| + S_f(c + m) m_f (same fixed point as the FOC).
    inverse_alpha = -1.0 / alpha
    markups = np.full(n_groups, inverse_alpha)
    change = np.full(n_groups, np.inf)
    iterations = 0
    converged = False
    while iterations < max_iterations:
        iterations += 1
        prices = costs + markups[groups]
        shares = _logit_shares(quality + alpha * prices, market_index, starts, n_markets)
        firm_shares = np.bincount(groups, shares, n_groups)
        updated = inverse_alpha + firm_shares * markups
        change = np.abs(updated - markups)
        markups = updated
        if not np.all(np.isfinite(markups)):
            break
        if change.max() < tol:
            converged = True
            break
    if not converged:
        bad_groups = ~(np.isfinite(markups) & (change < tol))
        bad_markets = np.unique(np.nonzero(bad_groups)[0] // n_firms)
        labels = [f"M{t + 1:0{len(str(n_markets))}d}" for t in bad_markets]
        raise FixedPointError(
            f"Bertrand–Nash price equilibrium did not converge after {iterations} iterations "
            f"(largest markup change {np.nanmax(change):.3g}, tolerance {tol:g}) in "
            f"{len(labels)} market(s), e.g. {labels[:3]}; try a smaller 'xi_scale' or a larger "
            "'max_iterations'",
            markets=labels,
        )

    prices = costs + markups[groups]
    shares = _logit_shares(quality + alpha * prices, market_index, starts, n_markets)
    firm_shares = np.bincount(groups, shares, n_groups)
    foc_residual = float(np.max(np.abs(markups + 1.0 / (alpha * (1.0 - firm_shares)))))
    outside = 1.0 - np.bincount(market_index, shares, n_markets)

    market_width = len(str(n_markets))
    product_width = len(str(n_products))
    market_labels = np.array([f"M{t + 1:0{market_width}d}" for t in range(n_markets)], dtype=object)
    product_labels = np.array(
        [f"P{j + 1:0{product_width}d}" for j in range(n_products)], dtype=object
    )
    firm_labels = np.array([f"F{f + 1}" for f in range(n_firms)], dtype=object)
    products = pd.DataFrame(
        {
            "market_ids": pd.Series(market_labels[market_index], dtype="str"),
            "product_ids": pd.Series(product_labels[product_index], dtype="str"),
            "firm_ids": pd.Series(firm_labels[firm_index], dtype="str"),
            "shares": shares,
            "outside_share": outside[market_index],
            "prices": prices,
            "x": x,
            "cost_shifter": w,
            "market_size": market_size[market_index],
            "xi": xi,
            "omega": omega,
            "costs": costs,
        }
    )
    return LogitSimulation(
        products=products,
        alpha=alpha,
        beta={"Intercept": beta_constant, "x": beta_x},
        gamma={"Intercept": gamma_constant, "cost_shifter": gamma_w},
        xi_scale=xi_scale,
        omega_scale=omega_scale,
        correlation=correlation,
        seed=seed,
        iterations=iterations,
        foc_residual=foc_residual,
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
    T = _check_int("T", T, 1)
    J = _check_int("J", J, 1)
    F = _check_int("F", F, 1)
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
