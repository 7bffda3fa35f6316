"""Estimated two-level nested logit demand, evaluable like any :class:`DemandSystem`.

The one-level kernel knows one nest per product; this subclass routes shares, probabilities,
share Jacobians and removal shares through the closed forms of :mod:`blpmodels.kernel.nests`,
so predict, elasticities, diversion ratios (short and long run), markups, costs and consumer
surplus work unchanged on top. What would need the one-level kernel (equilibrium prices and
the counterfactuals built on them, optimal instruments) refuses with a
:class:`~blpmodels.exceptions.BLPInputError` instead of computing one-level numbers.
:class:`TwoLevelRandomDemand` does the same for the two-level random-coefficients nested
logit, integrating the per-agent probabilities of :mod:`blpmodels.kernel.two_level_rcnl`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import warn_user
from blpmodels.exceptions import BLPInputError, ConvergenceWarning
from blpmodels.kernel.delta import solve_delta
from blpmodels.kernel.nests import (
    TwoLevelNesting,
    two_level_probabilities,
    two_level_removal_shares,
    two_level_share_jacobian,
)
from blpmodels.kernel.shares import Probabilities
from blpmodels.kernel.two_level_rcnl import (
    TwoLevelShareEvaluator,
    two_level_agent_probabilities,
    two_level_agent_removal_shares,
    two_level_share_jacobian_agents,
)
from blpmodels.results.demand import DemandSystem, MarketInputs, PricedMarkets

__all__ = [
    "TwoLevelDemand",
    "TwoLevelInputs",
    "TwoLevelRandomDemand",
    "TwoLevelRandomInputs",
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

    def priced(self, *args: Any, **kwargs: Any) -> PricedMarkets:
        """Refused: equilibrium prices need the one-level kernel's price derivatives."""
        raise BLPInputError(
            "equilibrium prices, passthrough, profit Hessians and the counterfactuals built on "
            "them are not available for the two-level nested logit yet; predict, "
            "elasticities, diversion ratios, markups, costs and consumer surplus are"
        )


@dataclass(frozen=True, eq=False)
class TwoLevelRandomInputs(MarketInputs):
    """Market inputs whose probabilities are the two-level RCNL's (agents and μ)."""

    def probabilities(self) -> Probabilities:
        """Agent choice probabilities at these inputs."""
        return two_level_agent_probabilities(
            self.delta, self.mu, self.weights, self.mask, self.nesting
        )


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
