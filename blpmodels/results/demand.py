"""Estimated demand as a function: shares, probabilities and their derivatives on any data.

:class:`DemandSystem` binds a product design, the estimated linear and nonlinear parameters and
the agents, and evaluates the kernel on chosen markets with optionally changed product data.
The logit is the case with one agent per market and μ = 0; random-coefficients models supply
agents and θ. Post-estimation (predictions, elasticities, diversion) goes through here, so every
model uses the same share math.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.agents import AgentDesign
from blpmodels.data.design import check_columns
from blpmodels.data.formula import required_variables
from blpmodels.data.parameters import NonlinearParameters
from blpmodels.data.products import ProductDesign
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.delta import solve_delta
from blpmodels.kernel.equilibrium import PriceState
from blpmodels.kernel.jacobians import share_jacobian
from blpmodels.kernel.shares import Nesting, Probabilities, ShareEvaluator, removal_shares

__all__ = ["DemandSystem", "MarketInputs", "PricedMarkets"]


@dataclass(frozen=True, eq=False)
class MarketInputs:
    """Padded kernel inputs for a group of markets.

    Attributes
    ----------
    positions : numpy.ndarray
        Market positions in the layout.
    delta : numpy.ndarray
        ``[T, J]`` mean utilities.
    mu : numpy.ndarray
        ``[T, J, I]`` agent-specific utilities.
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    mask : numpy.ndarray
        ``[T, J]`` real products.
    nesting : Nesting
        Nests and ρ.
    coefficients : numpy.ndarray
        ``[T, I, K2]`` agent coefficients on the random-coefficient columns.
    rows : numpy.ndarray
        ``[T, J]`` estimation-data row at each slot.
    """

    positions: np.ndarray
    delta: np.ndarray
    mu: np.ndarray
    weights: np.ndarray
    mask: np.ndarray
    nesting: Nesting
    coefficients: np.ndarray
    rows: np.ndarray

    def probabilities(self) -> Probabilities:
        """Choice probabilities at these inputs."""
        return ShareEvaluator(self.mu, self.weights, self.mask, self.nesting).probabilities(
            self.delta
        )


@dataclass(frozen=True, eq=False)
class PricedMarkets:
    """Markets whose utilities are linear in prices, evaluable at any prices.

    V_ij(p) = V_ij(p⁰) + D_ij (p_j − p⁰_j) with D = ∂V/∂p fixed, so new prices need no
    formula rebuild: one addition to μ and a share evaluation.

    Attributes
    ----------
    inputs : MarketInputs
        Kernel inputs at the base prices.
    prices : numpy.ndarray
        ``[T, J]`` base prices p⁰ (0 in padding).
    derivative : numpy.ndarray
        ``[T, J, I]`` D (0 in padding).
    """

    inputs: MarketInputs
    prices: np.ndarray
    derivative: np.ndarray

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
        if markets is None or markets.size == inputs.mask.shape[0]:
            chosen = slice(None)
            nesting = inputs.nesting
        else:
            chosen = markets
            nesting = inputs.nesting.subset(markets)
        mask = inputs.mask[chosen]
        derivative = self.derivative[chosen]
        change = np.where(mask, prices - self.prices[chosen], 0.0)
        mu = inputs.mu[chosen] + derivative * change[:, :, None]
        weights = inputs.weights[chosen]
        probabilities = ShareEvaluator(mu, weights, mask, nesting).probabilities(
            inputs.delta[chosen]
        )
        return PriceState.at(probabilities, weights, nesting, mask, derivative)


@dataclass(frozen=True, eq=False)
class DemandSystem:
    """Estimated demand, evaluable on the estimation data or on changed data.

    Attributes
    ----------
    design : ProductDesign
        Product side of the model.
    beta : numpy.ndarray
        ``(K1,)`` linear coefficients.
    delta : numpy.ndarray
        ``(N,)`` estimated mean utilities (X1β + fixed effects + ξ).
    agents : AgentDesign or None
        Agents; None for logit and nested logit (one representative agent).
    parameters : NonlinearParameters or None
        Structure of θ.
    theta : numpy.ndarray
        Free nonlinear parameters.
    nest_codes : numpy.ndarray or None
        ``(N,)`` nest index of each row.
    rho : numpy.ndarray
        ``(H,)`` ρ of each nest (empty when unnested).
    chunk_size : int or None
        Markets per kernel call.
    """

    design: ProductDesign
    beta: np.ndarray
    delta: np.ndarray
    agents: AgentDesign | None = None
    parameters: NonlinearParameters | None = None
    theta: np.ndarray | None = None
    nest_codes: np.ndarray | None = None
    rho: np.ndarray | None = None
    chunk_size: int | None = None
    # Formula rebuilds on the estimation data, kept per instance (with_parameters starts afresh).
    cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ evaluation
    def with_parameters(self, beta: np.ndarray, theta: np.ndarray | None = None) -> DemandSystem:
        """The same demand at other parameters, holding ξ and the fixed effects.

        δ* = δ̂ + X1(β* − β̂); used by the parametric bootstrap.
        """
        delta = self.delta + self.design.X @ (np.asarray(beta) - self.beta)
        rho = self.rho
        if theta is not None and rho is not None:
            if self.parameters is None:  # closed-form nested logit: θ is ρ itself
                rho = np.broadcast_to(np.asarray(theta, dtype=np.float64), rho.shape).copy()
            elif self.parameters.has_rho:
                _, _, rho_values = self.parameters.unpack(theta)
                rho = np.broadcast_to(rho_values, rho.shape).copy()
        return replace(
            self,
            beta=np.asarray(beta, dtype=np.float64),
            delta=delta,
            theta=theta if theta is not None else self.theta,
            rho=rho,
        )

    def invert_shares(
        self, shares: np.ndarray, *, tol: float = 1e-14, max_evaluations: int = 5000
    ) -> tuple[np.ndarray, list[Any]]:
        """δ that reproduces ``shares`` under this system's nonlinear parameters.

        One SQUAREM contraction per chunk of markets, started at the system's δ.

        Parameters
        ----------
        shares : numpy.ndarray
            ``(N,)`` shares, in the rows of the estimation data.
        tol, max_evaluations
            As in :func:`~blpmodels.kernel.delta.solve_delta`.

        Returns
        -------
        delta : numpy.ndarray
            ``(N,)`` δ (where a market failed, the contraction's last iterate).
        failed : list
            Labels of the markets where the contraction did not converge.

        Examples
        --------
        >>> shares = results.model.design.shares  # doctest: +SKIP
        >>> delta, failed = results.demand.invert_shares(shares)  # doctest: +SKIP
        >>> failed  # doctest: +SKIP
        []
        """
        log_shares = np.log(shares)
        delta = np.array(self.delta, dtype=np.float64, copy=True)
        failed: list[Any] = []
        for chunk in self.chunks(self.market_positions()):
            inputs = self.inputs(chunk)
            evaluator = ShareEvaluator(inputs.mu, inputs.weights, inputs.mask, inputs.nesting)
            observed = np.where(inputs.mask, log_shares[inputs.rows], 0.0)
            solved = solve_delta(
                evaluator, observed, inputs.delta, tol=tol, max_evaluations=max_evaluations
            )
            failed.extend(self.design.layout.market_labels[chunk[~solved.converged]].tolist())
            delta[inputs.rows[inputs.mask]] = solved.delta[inputs.mask]
        return delta, failed

    def market_positions(self, market_id: Any = None) -> np.ndarray:
        """Layout positions of one market, a list of markets, or all (None).

        Raises
        ------
        BLPInputError
            Unknown markets, or an empty list (which would silently give empty output).
        """
        layout = self.design.layout
        if market_id is None:
            return np.arange(layout.n_markets)
        if isinstance(market_id, (list, tuple, np.ndarray, pd.Index, pd.Series)):
            if len(market_id) == 0:
                raise BLPInputError(
                    "market_id is empty: give one market, a list of markets, or None for all"
                )
            return layout.market_positions(list(market_id))
        return layout.market_positions([market_id])

    def check_variable(self, variable: Any, data: pd.DataFrame | None = None) -> None:
        """Raise unless utilities depend on the product-data column ``variable``.

        Derivatives with respect to a column the formulas do not read (an id, an instrument)
        are identically zero, and a categorical column has no derivative: both are mistakes.

        Parameters
        ----------
        variable : str
            Column to differentiate with respect to.
        data : pandas.DataFrame, optional
            Data the derivative is taken on (default: the estimation data).

        Raises
        ------
        BLPInputError
            Missing column, a column the utilities do not read, or a non-numeric column.
        """
        design = self.design
        frame = design.data if data is None else data
        if not isinstance(variable, str):
            raise BLPInputError(f"wrt must be a column name, got {variable!r}")
        check_columns(frame, [variable])
        used = self.variables()
        if variable not in used:
            raise BLPInputError(
                f"derivatives with respect to {variable!r}: the model's utility does not depend "
                f"on it (it reads {sorted(used)}); choose one of those columns"
            )
        column = frame[variable]
        if not (
            pd.api.types.is_numeric_dtype(column.dtype)
            and not pd.api.types.is_bool_dtype(column.dtype)
        ):
            raise BLPInputError(
                f"column {variable!r} is not numeric ({column.dtype}): derivatives with "
                "respect to it are not defined"
            )

    def variables(self) -> set[str]:
        """Product-data columns the utilities read (X1 and X2; not the instruments)."""
        design = self.design
        used: set[str] = set()
        for block in (design.exog, design.endog, design.random):
            if block.columns_only:
                used |= set(block.names)
            elif block.formula:
                used |= required_variables(block.formula) - set(design.context)
        return used

    def _nesting(self, positions: np.ndarray, mask: np.ndarray) -> Nesting:
        if self.nest_codes is None or self.rho is None or self.rho.size == 0:
            return Nesting.unnested(mask.shape)
        codes = self.design.layout.pad(self.nest_codes)[positions]
        return Nesting.from_codes(codes, self.rho.size, self.rho)

    def rebuild(self, data: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """X1 and X2 of changed product data, built with the model's formulas.

        They do not depend on the parameters: callers evaluating several market chunks or
        parameter draws on the same data build them once and pass them to :meth:`inputs`.

        Returns
        -------
        tuple of numpy.ndarray
            ``(len(data), K1)`` and ``(len(data), K2)`` matrices in the row order of ``data``.
        """
        design = self.design
        x1 = np.column_stack(
            [design.exog.rebuild(data, design.context), design.endog.rebuild(data, design.context)]
        )
        if not design.random.size:
            return x1, np.zeros((len(data), 0))
        return x1, design.random.rebuild(data, design.context)

    def inputs(
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
        columns: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> MarketInputs:
        """Kernel inputs for some markets, at the estimation data or at changed ``data``.

        Parameters
        ----------
        positions : numpy.ndarray
            Market positions.
        data : pandas.DataFrame, optional
            Changed product data; its rows are ``rows`` of the estimation data.
        rows : numpy.ndarray, optional
            Estimation rows of ``data`` (from :meth:`ProductDesign.match_rows`).
        columns : tuple of numpy.ndarray, optional
            ``data``'s X1 and X2 from :meth:`rebuild` (default: rebuilt here).
        """
        slot_rows, mask, delta, nesting, x2, coefficients, weights = self._padded(
            positions, data, rows, columns
        )
        if x2 is None:
            mu = np.zeros((positions.size, self.design.layout.width, 1))
        else:
            mu = np.matmul(x2, np.swapaxes(coefficients, 1, 2))
        return MarketInputs(positions, delta, mu, weights, mask, nesting, coefficients, slot_rows)

    def _padded(
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None,
        rows: np.ndarray | None,
        columns: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[Any, ...]:
        """Slot rows, mask, δ, nesting, X2 (None without agents), agent coefficients and
        weights of some markets: what :meth:`inputs` and :meth:`shares` build μ from."""
        design = self.design
        layout = design.layout
        slot_rows = layout.index[positions]
        mask = layout.mask[positions]
        delta_rows = self.delta.copy()
        x2_rows = design.random.values
        if data is not None:
            assert rows is not None
            x1_new, x2_new = self.rebuild(data) if columns is None else columns
            delta_rows[rows] = self.delta[rows] + (x1_new - design.X[rows]) @ self.beta
            if design.random.size:
                x2_rows = x2_rows.copy()
                x2_rows[rows] = x2_new
        delta = np.where(mask, delta_rows[slot_rows], 0.0)
        nesting = self._nesting(positions, mask)
        if self.agents is None or self.parameters is None:
            n = positions.size
            return slot_rows, mask, delta, nesting, None, np.zeros((n, 1, 0)), np.ones((n, 1))
        agents = self.agents
        coefficients, _ = self.parameters.coefficients(
            self.theta, agents.nodes[positions], agents.demographics[positions]
        )
        x2 = np.where(mask[:, :, None], x2_rows[slot_rows], 0.0)
        return slot_rows, mask, delta, nesting, x2, coefficients, agents.weights[positions]

    def _chunk_shares(
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None,
        rows: np.ndarray | None,
        columns: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slot rows, mask and ``[T, J]`` shares of one chunk of markets.

        As the estimator does, μ − m comes from one augmented product and one exponential
        pass, μ never formed on its own; and the ``[T, J, I]`` arrays die on return, before
        the next chunk allocates its own (kept alive across chunks, their memory went back
        to the system and was faulted in again, 2,200 page faults per evaluation). Together
        these took 40% of a bootstrap draw's time over exercise 2's 94 markets (14.5 ms to
        8.6 ms of CPU).
        """
        slot_rows, mask, delta, nesting, x2, coefficients, weights = self._padded(
            positions, data, rows, columns
        )
        if x2 is None:
            mu = np.zeros((positions.size, self.design.layout.width, 1))
            evaluator = ShareEvaluator(mu, weights, mask, nesting)
        else:
            evaluator = ShareEvaluator.from_coefficients(x2, coefficients, weights, mask, nesting)
        return slot_rows, mask, evaluator.shares(delta)

    def chunks(self, positions: np.ndarray) -> Iterator[np.ndarray]:
        """Split market positions into chunks of at most ``chunk_size`` markets."""
        size = self.chunk_size or positions.size or 1
        for start in range(0, positions.size, size):
            yield positions[start : start + size]

    # ------------------------------------------------------------------ public pieces
    def shares(
        self,
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
        columns: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Shares at the estimation data, or at ``data`` for the rows it covers.

        ``rows`` (:meth:`ProductDesign.match_rows`) and ``columns`` (:meth:`rebuild`) of
        ``data`` may be given when known; they are the same at every parameter value.

        Returns
        -------
        numpy.ndarray
            ``(N,)`` shares (estimation data) or ``(len(data),)`` shares in data order.
        """
        design = self.design
        if data is None:
            rows = None
            positions = np.arange(design.layout.n_markets)
        else:
            rows = design.match_rows(data) if rows is None else rows
            # Built once here, not once per market chunk.
            columns = self.rebuild(data) if columns is None else columns
            positions = np.unique(design.layout.codes[rows])
        out = np.zeros(design.nobs)
        for chunk in self.chunks(positions):
            slot_rows, mask, shares = self._chunk_shares(chunk, data, rows, columns)
            out[slot_rows[mask]] = shares[mask]
        return out if rows is None else out[rows]

    def rows_frame(
        self, needed: np.ndarray, data: pd.DataFrame | None, rows: np.ndarray | None
    ) -> pd.DataFrame:
        """Product data for estimation rows ``needed``: from ``data`` where it covers them."""
        if data is None:
            return self.design.data.iloc[needed]
        assert rows is not None
        inverse = np.full(self.design.nobs, -1)
        inverse[rows] = np.arange(rows.size)
        selected = inverse[needed]
        if (selected < 0).any():
            market = self.design.market_ids[needed[selected < 0][0]]
            raise BLPInputError(f"the new data do not cover market {market!r}")
        return data.iloc[selected]

    def utility_derivative(
        self,
        inputs: MarketInputs,
        variable: str,
        frame: pd.DataFrame,
        *,
        estimation: bool = False,
    ) -> np.ndarray:
        """∂V_ji/∂x_j for a product-data column x: ``[T, J, I]``.

        ``frame`` holds the product data of the real slots of ``inputs`` in slot order;
        ``estimation=True`` says it is the estimation data, whose column derivatives (formula
        rebuilds) are computed once and kept.
        """
        if estimation:
            d_x1, d_x2 = self._estimation_derivatives(variable)
            rows = inputs.rows[inputs.mask]
            d_x1, d_x2 = d_x1[rows], d_x2[rows]
        else:
            d_x1, d_x2 = self._column_derivatives(frame, variable)
        mean_part = np.zeros(inputs.mask.shape)
        mean_part[inputs.mask] = d_x1 @ self.beta
        derivative = np.repeat(mean_part[:, :, None], inputs.mu.shape[2], axis=2)
        if self.design.random.size and inputs.coefficients.shape[2]:
            d_x2_slots = np.zeros((*inputs.mask.shape, self.design.random.size))
            d_x2_slots[inputs.mask] = d_x2
            derivative += np.matmul(d_x2_slots, np.swapaxes(inputs.coefficients, 1, 2))
        return derivative

    def _column_derivatives(
        self, frame: pd.DataFrame, variable: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Derivatives of the X1 and X2 columns with respect to ``variable`` on ``frame``."""
        design = self.design
        check_columns(frame, [variable])
        d_x1 = np.column_stack(
            [
                design.exog.derivative(frame, variable, design.context),
                design.endog.derivative(frame, variable, design.context),
            ]
        )
        if not design.random.size:
            return d_x1, np.zeros((len(frame), 0))
        return d_x1, design.random.derivative(frame, variable, design.context)

    def _estimation_derivatives(self, variable: str) -> tuple[np.ndarray, np.ndarray]:
        key = ("derivatives", variable)
        if key not in self.cache:
            self.cache[key] = self._column_derivatives(self.design.data, variable)
        return self.cache[key]

    def jacobian(
        self,
        positions: np.ndarray,
        variable: str = "prices",
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, MarketInputs, Probabilities]:
        """∂s_j/∂x_k for markets: ``[T, J, J]`` with the inputs and probabilities used.

        ``rows`` are the estimation rows of ``data`` (:meth:`ProductDesign.match_rows`).
        """
        if data is not None and rows is None:
            rows = self.design.match_rows(data)
        inputs = self.inputs(positions, data, rows)
        frame = self.rows_frame(inputs.rows[inputs.mask], data, rows)
        # The derivative checks the column first, so a bad ``variable`` fails before share work.
        derivative = self.utility_derivative(inputs, variable, frame, estimation=data is None)
        probabilities = inputs.probabilities()
        jacobian = share_jacobian(
            probabilities, inputs.weights, inputs.nesting, inputs.mask, derivative
        )
        return jacobian, inputs, probabilities

    def removal(self, positions: np.ndarray) -> tuple[np.ndarray, MarketInputs]:
        """Shares with each product removed in turn: ``[T, J, J + 1]`` (last = outside)."""
        inputs = self.inputs(positions)
        return (
            removal_shares(inputs.delta, inputs.mu, inputs.weights, inputs.mask, inputs.nesting),
            inputs,
        )

    def product_labels(self, rows: np.ndarray) -> np.ndarray:
        """Product ids of estimation rows (position within the market without ids)."""
        if self.design.product_ids is not None:
            return self.design.product_ids[rows]
        return self.design.layout.position[rows]

    def priced(
        self,
        positions: np.ndarray,
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
        variable: str = "prices",
    ) -> PricedMarkets:
        """Markets ready for evaluation at other prices (see :class:`PricedMarkets`).

        Parameters
        ----------
        positions : numpy.ndarray
            Market positions.
        data : pandas.DataFrame, optional
            Changed product data (its prices are the base prices).
        rows : numpy.ndarray, optional
            Estimation rows of ``data``.
        variable : str
            The price column.

        Raises
        ------
        BLPInputError
            Utilities are not linear in the price column (see :meth:`check_linear`).
        """
        inputs = self.inputs(positions, data, rows)
        frame = self.rows_frame(inputs.rows[inputs.mask], data, rows)
        if data is None:
            if ("linear", variable) not in self.cache:
                self.check_linear(self.design.data, variable)
                self.cache["linear", variable] = True
        else:
            self.check_linear(frame, variable)
        derivative = self.utility_derivative(inputs, variable, frame, estimation=data is None)
        prices = np.zeros(inputs.mask.shape)
        prices[inputs.mask] = np.asarray(frame[variable], dtype=np.float64)
        return PricedMarkets(inputs, prices, derivative)

    def check_linear(self, frame: pd.DataFrame, variable: str = "prices") -> None:
        """Raise unless every regressor and random-coefficient column is linear in ``variable``.

        Equilibrium prices, passthrough and profit Hessians move prices along straight lines
        in utility: the change of each column after a unit step must equal its derivative.

        Raises
        ------
        BLPInputError
            Naming the columns that are not linear in the variable.
        """
        design = self.design
        self.check_variable(variable, frame)
        base = np.asarray(frame[variable], dtype=np.float64)
        step = np.maximum(np.abs(base), 1.0)
        moved = frame.copy()
        moved[variable] = base + step
        bad: list[str] = []
        for block in (design.exog, design.endog, design.random):
            if not block.size or variable not in self._block_variables(block):
                continue
            slope = block.derivative(frame, variable, design.context)
            change = block.rebuild(moved, design.context) - block.rebuild(frame, design.context)
            expected = slope * step[:, None]
            scale = np.abs(expected) + np.abs(change) + 1e-12
            wrong = (np.abs(change - expected) > 1e-6 * scale).any(axis=0)
            bad.extend(name for name, flag in zip(block.names, wrong, strict=True) if flag)
        if bad:
            raise BLPInputError(
                f"the supply side needs utilities linear in {variable!r}, but the terms "
                f"{sorted(set(bad))} are not; write the model with {variable!r} entering "
                "linearly (interactions with characteristics are fine)"
            )

    def _block_variables(self, block: Any) -> set[str]:
        if block.columns_only:
            return set(block.names)
        return required_variables(block.formula) - set(self.design.context)
