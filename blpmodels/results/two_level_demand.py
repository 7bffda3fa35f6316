"""Estimated two-level nested logit demand, evaluable like any :class:`DemandSystem`.

The one-level kernel knows one nest per product; this subclass routes shares, probabilities,
share Jacobians and removal shares through the closed forms of :mod:`blpmodels.kernel.nests`,
so predict, elasticities, diversion ratios (short and long run), markups, costs and consumer
surplus work unchanged on top. :meth:`TwoLevelDemand.priced` returns
:class:`TwoLevelPricedMarkets`, whose price states carry the two-level ∂s/∂p, the ζ-markup
split's Λ and the two-level nests (from which
:func:`blpmodels.kernel.equilibrium.foc_jacobian` takes the exact second derivatives), so
equilibrium prices, mergers, counterfactuals (entry with both nest columns, exit, taxes, fixed
prices), passthrough and profit Hessians run through the one solver; the share inversion of the
bootstrap's draws is Verboven's closed form (:meth:`TwoLevelDemand.invert_shares`). What would
need the one-level kernel's ∂s/∂ρ (optimal instruments, a supply side in estimation) refuses with
a :class:`~blpmodels.exceptions.BLPInputError` instead of computing one-level numbers.
:class:`TwoLevelRandomDemand` does the same for the two-level random-coefficients nested
logit, integrating the per-agent probabilities of :mod:`blpmodels.kernel.two_level_rcnl`; its
:class:`TwoLevelRandomPricedMarkets` move prices inside each agent's utility and carry the
agents' ∂s/∂p and Λ, so the same solver, mergers, counterfactuals, passthrough and profit
Hessians run on it too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import warn_user
from blpmodels.data.nests import TwoLevelCodes, two_level_log_within
from blpmodels.exceptions import BLPInputError, ConvergenceWarning
from blpmodels.kernel.delta import solve_delta
from blpmodels.kernel.equilibrium import PriceState
from blpmodels.kernel.nests import (
    TwoLevelNesting,
    two_level_price_derivatives,
    two_level_probabilities,
    two_level_removal_shares,
    two_level_share_jacobian,
)
from blpmodels.kernel.shares import Probabilities
from blpmodels.kernel.two_level_rcnl import (
    TwoLevelShareEvaluator,
    two_level_agent_price_derivatives,
    two_level_agent_probabilities,
    two_level_agent_removal_shares,
    two_level_share_jacobian_agents,
)
from blpmodels.results.demand import DemandSystem, MarketInputs, PricedMarkets

__all__ = [
    "TwoLevelDemand",
    "TwoLevelInputs",
    "TwoLevelPricedMarkets",
    "TwoLevelRandomDemand",
    "TwoLevelRandomInputs",
    "TwoLevelRandomPricedMarkets",
    "check_two_level_rho",
]


def check_two_level_rho(rho_values: np.ndarray, which: str = "estimated") -> None:
    """Warn unless 0 ≤ ρ_upper ≤ ρ_lower < 1, the random-utility consistency condition.

    The finer nest's correlation must be at least the coarser one's (Verboven 1996,
    McFadden 1978); outside the condition the fitted shares are not choice probabilities of
    any random-utility model, and elasticities computed from them can have the wrong sign.
    Used by the two-level nested logit and the two-level RCNL (``which``: "estimated" or
    "starting" values).

    Examples
    --------
    >>> check_two_level_rho(np.array([0.2, 0.6]))  # in order: no warning
    """
    upper, lower = (float(value) for value in rho_values)
    if not (0.0 <= upper <= lower < 1.0):
        warn_user(
            f"{which} rho_upper={upper:.4g}, rho_lower={lower:.4g} violate "
            "0 <= rho_upper <= rho_lower < 1: the two-level nested logit is not consistent "
            "with utility maximization there (the lower nests must be at least as correlated "
            "as the upper ones)",
            ConvergenceWarning,
        )


@dataclass(frozen=True, eq=False)
class TwoLevelInputs(MarketInputs):
    """Market inputs whose probabilities are the two-level nested logit's."""

    def probabilities(self) -> Probabilities:
        """Choice probabilities at these inputs (one representative agent)."""
        return two_level_probabilities(self.delta, self.mask, self.nesting)


@dataclass(frozen=True, eq=False)
class TwoLevelPricedMarkets(PricedMarkets):
    """Two-level nested logit markets evaluable at any prices.

    With one representative agent, utilities move with prices through δ alone:
    δ(p) = δ(p⁰) + D ⊙ (p − p⁰), and the shares, ∂s/∂p and the ζ split's Λ at δ(p) come from
    :func:`blpmodels.kernel.nests.two_level_price_derivatives`.

    Examples
    --------
    >>> priced = results.demand.priced(np.array([0]))  # doctest: +SKIP
    >>> state = priced.state(priced.prices + 0.1)  # every price 0.1 higher  # doctest: +SKIP
    >>> state.jacobian.shape  # doctest: +SKIP
    (1, 12, 12)
    """

    def _chosen(
        self, prices: np.ndarray, markets: np.ndarray | None
    ) -> tuple[Any, TwoLevelNesting, np.ndarray, np.ndarray, np.ndarray]:
        """The chosen markets' index, nests, mask, price derivative and price change."""
        chosen: Any = slice(None) if markets is None else markets
        nests = self.inputs.nesting
        nesting = nests if markets is None else nests.subset(markets)
        mask = self.inputs.mask[chosen]
        change = np.where(mask, prices - self.prices[chosen], 0.0)
        return chosen, nesting, mask, self.derivative[chosen], change

    def state(self, prices: np.ndarray, markets: np.ndarray | None = None) -> PriceState:
        """Demand and its price derivatives at ``prices`` ``[T', J]`` in ``markets`` (default all).

        Parameters
        ----------
        prices : numpy.ndarray
            ``[T', J]`` prices of the chosen markets.
        markets : numpy.ndarray, optional
            Indexes into this group of markets (not layout positions).

        Returns
        -------
        PriceState
        """
        inputs = self.inputs
        chosen, nesting, mask, derivative, change = self._chosen(prices, markets)
        delta = np.where(mask, inputs.delta[chosen] + derivative[:, :, 0] * change, 0.0)
        probabilities, jacobian, lam = two_level_price_derivatives(
            delta, mask, nesting, derivative[:, :, 0]
        )
        weights = inputs.weights[chosen]
        return PriceState(probabilities, weights, nesting, mask, derivative, jacobian, lam)


@dataclass(frozen=True, eq=False)
class TwoLevelDemand(DemandSystem):
    """Two-level nested logit demand: ``nest_codes`` are the lower nests, ``rho`` is
    ``[ρ_upper, ρ_lower]`` and ``lower_to_upper`` maps each lower nest to its upper nest.

    Examples
    --------
    >>> from blpmodels import BLPNestedLogit  # doctest: +SKIP
    >>> results = BLPNestedLogit.from_formula(
    ...     formula, products, nesting_ids=["size", "segment"]).fit()  # doctest: +SKIP
    >>> type(results.demand).__name__  # doctest: +SKIP
    'TwoLevelDemand'
    """

    lower_to_upper: np.ndarray | None = None

    def _nesting(self, positions: np.ndarray, mask: np.ndarray) -> TwoLevelNesting:  # type: ignore[override]
        assert self.nest_codes is not None and self.rho is not None
        assert self.lower_to_upper is not None
        lower = self.design.layout.pad(self.nest_codes)[positions]
        return TwoLevelNesting(
            np.where(mask, lower, 0),
            self.lower_to_upper,
            int(self.lower_to_upper.max()) + 1,
            float(self.rho[0]),
            float(self.rho[1]),
        )

    def invert_shares(
        self, shares: np.ndarray, *, tol: float = 1e-14, max_evaluations: int = 5000
    ) -> tuple[np.ndarray, list[Any]]:
        """δ that reproduces ``shares`` at this system's ρ, in closed form (Verboven 1996).

        δ_j = log s_j − log s_0 − ρ_L log s_{j|h} − ρ_U log s_{h|g}: no contraction, so
        ``tol`` and ``max_evaluations`` (kept for the :class:`DemandSystem` signature) are
        not used and no market fails.

        Parameters
        ----------
        shares : numpy.ndarray
            ``(N,)`` shares, in the rows of the estimation data.
        tol, max_evaluations
            Unused.

        Returns
        -------
        delta : numpy.ndarray
            ``(N,)`` δ.
        failed : list
            Always empty.

        Examples
        --------
        >>> delta, failed = results.demand.invert_shares(shares)  # doctest: +SKIP
        """
        assert self.rho is not None and self.design.nesting_ids is not None
        shares = np.asarray(shares, dtype=np.float64)
        markets = self.design.layout.codes
        codes = TwoLevelCodes.from_ids(self.design.nesting_ids)
        log_lower, log_upper = two_level_log_within(shares, markets, codes)
        outside = 1.0 - np.bincount(markets, weights=shares)[markets]
        rho_upper, rho_lower = (float(value) for value in self.rho)
        delta = np.log(shares) - np.log(outside) - rho_lower * log_lower - rho_upper * log_upper
        return delta, []

    def inputs(
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
        columns: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> TwoLevelInputs:
        """Kernel inputs of some markets (see :meth:`DemandSystem.inputs`)."""
        base = super().inputs(positions, data, rows, columns)
        return TwoLevelInputs(**{item.name: getattr(base, item.name) for item in fields(base)})

    def _chunk_shares(
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None,
        rows: np.ndarray | None,
        columns: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        slot_rows, mask, delta, nesting, *_ = self._padded(positions, data, rows, columns)
        return slot_rows, mask, two_level_probabilities(delta, mask, nesting).shares

    def jacobian(
        self,
        positions: np.ndarray,
        variable: str = "prices",
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, MarketInputs, Probabilities]:
        """∂s_j/∂x_k ``[T, J, J]`` with the inputs and probabilities used."""
        if data is not None and rows is None:
            rows = self.design.match_rows(data)
        inputs = self.inputs(positions, data, rows)
        frame = self.rows_frame(inputs.rows[inputs.mask], data, rows)
        derivative = self.utility_derivative(inputs, variable, frame, estimation=data is None)
        jacobian = two_level_share_jacobian(
            inputs.delta, inputs.mask, inputs.nesting, derivative[:, :, 0]
        )
        return jacobian, inputs, inputs.probabilities()

    def removal(self, positions: np.ndarray) -> tuple[np.ndarray, MarketInputs]:
        """Shares with each product removed in turn: ``[T, J, J + 1]`` (last = outside)."""
        inputs = self.inputs(positions)
        return two_level_removal_shares(inputs.delta, inputs.mask, inputs.nesting), inputs

    def priced(
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
        variable: str = "prices",
    ) -> TwoLevelPricedMarkets:
        """Markets ready for evaluation at other prices (see :class:`TwoLevelPricedMarkets`).

        Parameters and errors are those of :meth:`DemandSystem.priced`.

        Examples
        --------
        >>> positions = results.demand.market_positions([0, 1])  # doctest: +SKIP
        >>> priced = results.demand.priced(positions)  # doctest: +SKIP
        >>> type(priced).__name__  # doctest: +SKIP
        'TwoLevelPricedMarkets'
        """
        base = super().priced(positions, data, rows, variable)
        return TwoLevelPricedMarkets(base.inputs, base.prices, base.derivative)

    def lower_nest_codes(self, frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
        """Lower-nest codes of new products from their two nest columns (upper level first).

        A lower nest is a known (upper, lower) pair of the estimation data: its ρ_U and ρ_L
        are the estimated ones, and its place in the upper nests is fixed.

        Parameters
        ----------
        frame : pandas.DataFrame
            New products.
        columns : list of str
            The two nest columns, upper level first.

        Returns
        -------
        numpy.ndarray
            ``(len(frame),)`` lower-nest codes.

        Raises
        ------
        BLPInputError
            A nest column is missing, or a pair of nest ids does not occur in the data.

        Examples
        --------
        >>> new = pd.DataFrame({"size": ["small"], "segment": ["a"]})  # doctest: +SKIP
        >>> results.demand.lower_nest_codes(new, ["size", "segment"])  # doctest: +SKIP
        array([2])
        """
        missing = [column for column in columns if column not in frame]
        if missing:
            raise BLPInputError(
                f"new products of a two-level nested logit need both nest columns {columns} "
                f"(upper level first); {missing} missing"
            )
        assert self.design.nesting_ids is not None
        codes = TwoLevelCodes.from_ids(self.design.nesting_ids)
        known = {tuple(pair): h for h, pair in enumerate(codes.lower_labels)}
        pairs = list(zip(frame[columns[0]], frame[columns[1]], strict=True))
        unknown = [pair for pair in pairs if pair not in known]
        if unknown:
            raise BLPInputError(
                f"add: unknown nest {unknown[0]!r} ({columns[0]}, {columns[1]}); the two-level "
                f"nests are {[tuple(pair) for pair in codes.lower_labels]}"
            )
        return np.array([known[pair] for pair in pairs], dtype=np.intp)


@dataclass(frozen=True, eq=False)
class TwoLevelRandomInputs(MarketInputs):
    """Market inputs whose probabilities are the two-level RCNL's (agents and μ)."""

    def probabilities(self) -> Probabilities:
        """Agent choice probabilities at these inputs."""
        return two_level_agent_probabilities(
            self.delta, self.mu, self.weights, self.mask, self.nesting
        )


@dataclass(frozen=True, eq=False)
class TwoLevelRandomPricedMarkets(TwoLevelPricedMarkets):
    """Two-level RCNL markets evaluable at any prices.

    As in the one-level :class:`~blpmodels.results.demand.PricedMarkets`, a price change
    moves each agent's utility, V_ji(p) = V_ji(p⁰) + D_ji (p_j − p⁰_j), through μ (D holds
    the mean price coefficient and any random coefficient or demographic interaction on
    price); the agents' two-level probabilities, ∂s/∂p and Λ at the new μ come from
    :mod:`blpmodels.kernel.two_level_rcnl`.

    Examples
    --------
    >>> priced = results.demand.priced(np.array([0]))  # doctest: +SKIP
    >>> state = priced.state(priced.prices + 0.1)  # every price 0.1 higher  # doctest: +SKIP
    >>> state.lam.shape  # doctest: +SKIP
    (1, 10)
    """

    def state(self, prices: np.ndarray, markets: np.ndarray | None = None) -> PriceState:
        """Demand and its price derivatives at ``prices`` ``[T', J]`` in ``markets`` (default all).

        Parameters
        ----------
        prices : numpy.ndarray
            ``[T', J]`` prices of the chosen markets.
        markets : numpy.ndarray, optional
            Indexes into this group of markets (not layout positions).

        Returns
        -------
        PriceState
        """
        inputs = self.inputs
        chosen, nesting, mask, derivative, change = self._chosen(prices, markets)
        mu = inputs.mu[chosen] + derivative * change[:, :, None]
        weights = inputs.weights[chosen]
        probabilities = two_level_agent_probabilities(
            inputs.delta[chosen], mu, weights, mask, nesting
        )
        jacobian, lam = two_level_agent_price_derivatives(
            probabilities, weights, nesting, mask, derivative
        )
        return PriceState(probabilities, weights, nesting, mask, derivative, jacobian, lam)


@dataclass(frozen=True, eq=False)
class TwoLevelRandomDemand(TwoLevelDemand):
    """Two-level random-coefficients nested logit demand (agents, θ, ``rho`` =
    ``[ρ_upper, ρ_lower]``, ``nest_codes`` the lower nests).

    Examples
    --------
    >>> results = BLPRandomCoefficients.from_formula(
    ...     formula, products, random="0 + x", agent_data=agents,
    ...     nesting_ids=["size", "segment"]).fit(sigma=1, rho=[0.3, 0.6])  # doctest: +SKIP
    >>> type(results.demand).__name__  # doctest: +SKIP
    'TwoLevelRandomDemand'
    """

    def inputs(
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
        columns: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> TwoLevelRandomInputs:
        """Kernel inputs of some markets (see :meth:`DemandSystem.inputs`)."""
        base = DemandSystem.inputs(self, positions, data, rows, columns)
        return TwoLevelRandomInputs(
            **{item.name: getattr(base, item.name) for item in fields(base)}
        )

    def _chunk_shares(
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None,
        rows: np.ndarray | None,
        columns: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        inputs = self.inputs(positions, data, rows, columns)
        return inputs.rows, inputs.mask, inputs.probabilities().shares

    def jacobian(
        self,
        positions: np.ndarray,
        variable: str = "prices",
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, MarketInputs, Probabilities]:
        """∂s_j/∂x_k ``[T, J, J]`` with the inputs and probabilities used."""
        if data is not None and rows is None:
            rows = self.design.match_rows(data)
        inputs = self.inputs(positions, data, rows)
        frame = self.rows_frame(inputs.rows[inputs.mask], data, rows)
        derivative = self.utility_derivative(inputs, variable, frame, estimation=data is None)
        probabilities = inputs.probabilities()
        jacobian = two_level_share_jacobian_agents(
            probabilities, inputs.weights, inputs.nesting, inputs.mask, derivative
        )
        return jacobian, inputs, probabilities

    def removal(self, positions: np.ndarray) -> tuple[np.ndarray, MarketInputs]:
        """Shares with each product removed in turn: ``[T, J, J + 1]`` (last = outside)."""
        inputs = self.inputs(positions)
        removed = two_level_agent_removal_shares(
            inputs.delta, inputs.mu, inputs.weights, inputs.mask, inputs.nesting
        )
        return removed, inputs

    def priced(  # type: ignore[override]
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
        variable: str = "prices",
    ) -> TwoLevelRandomPricedMarkets:
        """Markets ready for evaluation at other prices (see :class:`TwoLevelRandomPricedMarkets`).

        Parameters and errors are those of :meth:`DemandSystem.priced`.

        Examples
        --------
        >>> priced = results.demand.priced(results.demand.market_positions([0]))  # doctest: +SKIP
        >>> type(priced).__name__  # doctest: +SKIP
        'TwoLevelRandomPricedMarkets'
        """
        base = DemandSystem.priced(self, positions, data, rows, variable)
        return TwoLevelRandomPricedMarkets(base.inputs, base.prices, base.derivative)

    def invert_shares(
        self, shares: np.ndarray, *, tol: float = 1e-14, max_evaluations: int = 5000
    ) -> tuple[np.ndarray, list[Any]]:
        """δ that reproduces ``shares`` (see :meth:`DemandSystem.invert_shares`)."""
        log_shares = np.log(shares)
        delta = np.array(self.delta, dtype=np.float64, copy=True)
        failed: list[Any] = []
        for chunk in self.chunks(self.market_positions()):
            inputs = self.inputs(chunk)
            evaluator = TwoLevelShareEvaluator(
                inputs.mu, inputs.weights, inputs.mask, inputs.nesting
            )
            observed = np.where(inputs.mask, log_shares[inputs.rows], 0.0)
            solved = solve_delta(
                evaluator, observed, inputs.delta, tol=tol, max_evaluations=max_evaluations
            )
            failed.extend(self.design.layout.market_labels[chunk[~solved.converged]].tolist())
            delta[inputs.rows[inputs.mask]] = solved.delta[inputs.mask]
        return delta, failed
