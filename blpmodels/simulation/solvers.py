"""Solving a simulated economy with the kernel, a group of markets at a time.

:func:`solve_equilibrium` finds the Bertrand–Nash prices and shares of every market
(:func:`blpmodels.kernel.equilibrium.solve_prices`), and :func:`invert_shares` the mean
utilities that reproduce given shares (:func:`blpmodels.kernel.delta.solve_delta`) with the
markups at given prices. Both take demand as a callable, ``demand(positions)`` →
:class:`~blpmodels.results.demand.PricedMarkets` of those markets, and ask it for one group of
markets at a time, so the ``[markets, J, agents]`` arrays of one group are all that is held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from blpmodels.data.markets import MarketLayout
from blpmodels.exceptions import BLPInputError, FixedPointError
from blpmodels.kernel.delta import FixedPointResult, raise_unconverged, solve_delta
from blpmodels.kernel.equilibrium import PriceState, foc_residual, markups, solve_prices
from blpmodels.kernel.ownership import ownership_matrices
from blpmodels.kernel.shares import ShareEvaluator
from blpmodels.results.demand import PricedMarkets

__all__ = ["Inversion", "invert_shares", "market_table", "solve_equilibrium"]

Demand = Callable[[np.ndarray], PricedMarkets]


def market_table(
    layout: MarketLayout, iterations: np.ndarray, foc_norm: np.ndarray, converged: np.ndarray
) -> pd.DataFrame:
    """Per-market ``iterations``, ``foc_norm`` and ``converged``, indexed by ``market_ids``."""
    return pd.DataFrame(
        {"iterations": iterations, "foc_norm": foc_norm, "converged": converged},
        index=pd.Index(layout.market_labels, name="market_ids"),
    )


def solve_equilibrium(
    demand: Demand,
    layout: MarketLayout,
    costs: np.ndarray,
    start: np.ndarray,
    firm_codes: np.ndarray,
    *,
    tol: float,
    max_iterations: int,
    chunk_size: int | None,
    kappa: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Bertrand–Nash prices and shares of every market, by groups of ``chunk_size`` markets.

    Parameters
    ----------
    demand : callable
        ``demand(positions)`` → :class:`~blpmodels.results.demand.PricedMarkets` of those
        markets.
    layout : MarketLayout
        The markets.
    costs, start : numpy.ndarray
        Marginal costs and starting prices per row.
    firm_codes : numpy.ndarray
        Firm of each row.
    tol : float
        Tolerance on each market's first-order-condition norm.
    max_iterations : int
        Price updates per market.
    chunk_size : int, optional
        Markets solved together; all at once when None.
    kappa : numpy.ndarray, optional
        ``[F, F]`` profit weights indexed by firm code (standard ownership when None).

    Returns
    -------
    tuple
        Prices and shares per row, and the :func:`market_table` of the solve.

    Raises
    ------
    FixedPointError
        Markets whose prices did not converge, by name, with the number of agents there whose
        utility does not fall in price.
    """
    mask = layout.mask
    padded_costs = np.where(mask, layout.pad(costs), 0.0)
    padded_start = np.where(mask, layout.pad(start), 0.0)
    padded_firms = layout.pad(firm_codes)
    prices, shares = np.zeros(mask.shape), np.zeros(mask.shape)
    iterations = np.zeros(layout.n_markets, dtype=np.intp)
    norms = np.zeros(layout.n_markets)
    converged = np.zeros(layout.n_markets, dtype=bool)
    rising = np.zeros(layout.n_markets, dtype=np.intp)
    for chunk in layout.chunks(chunk_size):
        priced = demand(chunk)
        inside = mask[chunk]
        solution = solve_prices(
            priced.state,
            padded_costs[chunk],
            padded_start[chunk],
            ownership_matrices(padded_firms[chunk], inside, kappa),
            inside,
            tol=tol,
            max_iterations=max_iterations,
        )
        prices[chunk] = solution.prices
        shares[chunk] = solution.state.shares
        iterations[chunk] = solution.iterations
        norms[chunk] = solution.foc_norm
        converged[chunk] = solution.converged
        real = (priced.inputs.weights != 0)[:, None, :] & inside[:, :, None]
        rising[chunk] = (real & (priced.derivative >= 0)).any(axis=1).sum(axis=1)
    if not converged.all():
        _raise_unconverged_prices(layout, converged, norms, rising, tol)
    markets = market_table(layout, iterations, norms, converged)
    return layout.flatten(prices), layout.flatten(shares), markets


def _raise_unconverged_prices(
    layout: MarketLayout, converged: np.ndarray, norms: np.ndarray, rising: np.ndarray, tol: float
) -> None:
    """Name the markets whose prices failed, and why they may have (``rising`` agents)."""
    bad = ~converged
    failed = layout.market_labels[bad].tolist()
    worst = np.nanmax(np.where(bad, norms, np.nan), initial=-1)
    agents = int(rising[bad].sum())
    reason = (
        f"{agents} agent(s) there have utility not falling in price (∂U/∂p >= 0), so "
        "firms may gain without bound: check beta, sigma and pi on prices"
        if agents
        else "check the price coefficients, or raise max_iterations"
    )
    raise FixedPointError(
        f"equilibrium prices did not converge in {len(failed)} market(s): {failed[:10]}"
        f"{' ...' if len(failed) > 10 else ''} (largest first-order-condition norm "
        f"{worst:.3g}, tolerance {tol:g}); {reason}",
        markets=failed,
    )


@dataclass(frozen=True, eq=False)
class Inversion:
    """Mean utilities that reproduce given shares, and the markups at given prices.

    Attributes
    ----------
    delta : numpy.ndarray
        Mean utilities per row.
    markups : numpy.ndarray or None
        Bertrand–Nash markups η per row at the given prices; None without a supply side.
    markets : pandas.DataFrame
        :func:`market_table` of the δ contraction (``foc_norm`` NaN without a supply side).
    """

    delta: np.ndarray
    markups: np.ndarray | None
    markets: pd.DataFrame


def invert_shares(
    demand: Demand,
    layout: MarketLayout,
    shares: np.ndarray,
    prices: np.ndarray,
    firm_codes: np.ndarray,
    *,
    supply: bool,
    costs: np.ndarray | None,
    tol: float,
    max_evaluations: int,
    chunk_size: int | None,
) -> Inversion:
    """Solve δ for given shares in every market, and the markups at given prices.

    Parameters
    ----------
    demand : callable
        ``demand(positions)`` → :class:`~blpmodels.results.demand.PricedMarkets`; its μ and
        price derivatives are used, its δ is not.
    layout : MarketLayout
        The markets.
    shares, prices : numpy.ndarray
        Observed shares and prices per row.
    firm_codes : numpy.ndarray
        Firm of each row.
    supply : bool
        Whether to compute markups and first-order-condition norms.
    costs : numpy.ndarray, optional
        Costs per row at which the norms are taken; default the implied costs p − η.
    tol : float
        Tolerance of the δ contraction.
    max_evaluations : int
        Share evaluations per market in the contraction.
    chunk_size : int, optional
        Markets solved together; all at once when None.

    Returns
    -------
    Inversion

    Raises
    ------
    FixedPointError
        Markets where the contraction failed.
    BLPInputError
        Markets whose first-order conditions are singular, so markups are not determined.
    """
    mask = layout.mask
    log_shares = np.where(mask, np.log(np.where(mask, layout.pad(shares), 1.0)), 0.0)
    outside = 1.0 - np.bincount(layout.codes, shares, layout.n_markets)
    start = np.where(mask, log_shares - np.log(outside)[:, None], 0.0)
    padded_costs = None if costs is None else np.where(mask, layout.pad(costs), 0.0)
    padded_prices = np.where(mask, layout.pad(prices), 0.0)
    padded_firms = layout.pad(firm_codes)
    delta, eta = np.zeros(mask.shape), np.zeros(mask.shape)
    iterations = np.zeros(layout.n_markets, dtype=np.intp)
    evaluations = np.zeros(layout.n_markets, dtype=np.intp)
    converged = np.zeros(layout.n_markets, dtype=bool)
    foc = np.full(layout.n_markets, np.nan)
    for chunk in layout.chunks(chunk_size):
        priced = demand(chunk)
        inputs = priced.inputs
        evaluator = ShareEvaluator(inputs.mu, inputs.weights, inputs.mask, inputs.nesting)
        result = solve_delta(
            evaluator, log_shares[chunk], start[chunk], tol=tol, max_evaluations=max_evaluations
        )
        delta[chunk] = result.delta
        iterations[chunk] = result.iterations
        evaluations[chunk] = result.evaluations
        converged[chunk] = result.converged
        if supply and result.converged.all():
            eta[chunk], foc[chunk] = _markups_and_norms(
                evaluator,
                result.delta,
                priced,
                padded_firms[chunk],
                padded_prices[chunk],
                None if padded_costs is None else padded_costs[chunk],
            )
    raise_unconverged(
        FixedPointResult(delta, converged, iterations, evaluations), layout.market_labels
    )
    if supply:
        singular = (mask & ~np.isfinite(eta)).any(axis=1)
        if singular.any():
            raise BLPInputError(
                "the first-order conditions are singular in markets "
                f"{layout.market_labels[singular][:5].tolist()}: markups are not determined"
            )
    return Inversion(
        layout.flatten(delta),
        layout.flatten(eta) if supply else None,
        market_table(layout, iterations, foc, converged),
    )


def _markups_and_norms(
    evaluator: ShareEvaluator,
    delta: np.ndarray,
    priced: PricedMarkets,
    firm_codes: np.ndarray,
    prices: np.ndarray,
    costs: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Markups η at δ and each market's largest |FOC| at ``costs`` (default p − η).

    Demand is taken at the solved δ, which reproduces the given shares whatever the current
    value of the characteristic being backed out.
    """
    inputs = priced.inputs
    mask = inputs.mask
    state = PriceState.at(
        evaluator.probabilities(delta), inputs.weights, inputs.nesting, mask, priced.derivative
    )
    ownership = ownership_matrices(firm_codes, mask)
    eta = markups(state.jacobian, state.shares, ownership, mask)
    costs = prices - eta if costs is None else costs
    residual = foc_residual(
        state.jacobian, state.shares, ownership, np.where(mask, prices - costs, 0.0)
    )
    return eta, np.where(mask, np.abs(residual), 0.0).max(axis=1)
