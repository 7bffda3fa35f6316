"""Counterfactuals: new Bertrand–Nash equilibria from the estimated demand and costs.

:class:`CounterfactualsMixin` gives :class:`~blpmodels.results.BLPResults`
:meth:`~CounterfactualsMixin.equilibrium_prices` (prices under other costs, firms or data),
:meth:`~CounterfactualsMixin.merger` (before and after a change of owners) and
:meth:`~CounterfactualsMixin.simulate` (the economy at other parameters). They build on the
supply-side economics (costs imputed from markups, market sizes, consumer surplus), solve
prices chunk of markets by chunk of markets (:func:`blpmodels.kernel.equilibrium.solve_prices`)
and return :class:`Equilibrium` and :class:`MergerResults` records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from blpmodels import plotting
from blpmodels.data.design import warn_user
from blpmodels.exceptions import BLPInputError, ConvergenceWarning, FixedPointError
from blpmodels.kernel import equilibrium
from blpmodels.kernel.ownership import Ownership, local_firm_codes, ownership_matrices
from blpmodels.results.base import row_values
from blpmodels.results.demand import DemandSystem, PricedMarkets
from blpmodels.results.economics import (
    EconomicsMixin,
    singular_markups,
    surplus,
    warn_positive_price_coefficients,
)

__all__ = ["CounterfactualsMixin", "Equilibrium", "MergerResults"]


@dataclass(frozen=True, eq=False)
class Equilibrium:
    """Bertrand–Nash equilibrium prices and shares (see :meth:`BLPResults.equilibrium_prices`).

    Attributes
    ----------
    prices, shares, costs : pandas.Series
        Per product, labelled by ``(market_ids, product_ids)``.
    markets : pandas.DataFrame
        Per market: ``iterations`` (price updates), ``foc_norm`` (max_j |F_j| at the
        returned prices), ``converged`` and ``max_hessian_eigenvalue`` (largest eigenvalue
        of any firm's profit Hessian in its own prices: negative when the second-order
        conditions hold).
    hessian_eigenvalues : pandas.Series
        Largest eigenvalue of each firm's profit Hessian, labelled by
        ``(market_ids, firm_ids)``.
    data : pandas.DataFrame
        The product data of the markets solved, with the new prices and shares and a
        ``costs`` column (ready for ``from_formula``).
    """

    prices: pd.Series
    shares: pd.Series
    costs: pd.Series
    markets: pd.DataFrame
    hessian_eigenvalues: pd.Series
    data: pd.DataFrame

    @property
    def converged(self) -> bool:
        """Whether every market converged."""
        return bool(self.markets["converged"].all())

    @property
    def markups(self) -> pd.Series:
        """p − c at the equilibrium."""
        return (self.prices - self.costs).rename("markups")


@dataclass(frozen=True, eq=False)
class MergerResults:
    """Before and after a merger (see :meth:`BLPResults.merger`).

    Attributes
    ----------
    products : pandas.DataFrame
        Per product (``(market_ids, product_ids)``): ``firm_ids_pre``, ``firm_ids_post`` and
        ``<quantity>_pre``, ``_post``, ``_change`` for prices, shares, markups (p − c) and
        profits.
    markets : pandas.DataFrame
        Per market: ``hhi``, ``consumer_surplus`` and total ``profits``, each ``_pre``,
        ``_post`` and ``_change``.
    equilibrium : Equilibrium
        The post-merger equilibrium (convergence diagnostics, Hessian eigenvalues, data).
    """

    products: pd.DataFrame
    markets: pd.DataFrame
    equilibrium: Equilibrium

    def plot(self, quantity: str = "prices", market_id: Any = None, **options: Any) -> Any:
        """Bars of the merger's effect on each product's prices (or ``"shares"``,
        ``"markups"``, ``"profits"``); see :func:`blpmodels.plotting.plot_merger`.

        Examples
        --------
        >>> ax = merger.plot("prices", market_id="C01Q1")  # doctest: +SKIP
        """
        return plotting.plot_merger(self, quantity, market_id, **options)

    def summary(self) -> str:
        """A short text report: price changes, HHI, surplus and profits.

        Examples
        --------
        >>> print(merger.summary())  # doctest: +SKIP
        Merger simulation
        ...
        """
        products, markets = self.products, self.markets
        moved = products["firm_ids_pre"].astype(str) != products["firm_ids_post"].astype(str)
        firms = products.loc[moved, "firm_ids_pre"].astype(str).unique().tolist()
        change = 100 * products["prices_change"] / products["prices_pre"]
        merging = products["firm_ids_post"].isin(products.loc[moved, "firm_ids_post"])
        lines = [
            "Merger simulation",
            "=" * 60,
            f"Markets: {len(markets)}    Products: {len(products)}",
            f"Firms whose owner changed: {firms[:10]}",
            f"Price change, merging firms' products: mean {change[merging].mean():.3g}%, "
            f"median {change[merging].median():.3g}%",
            f"Price change, other products: mean {change[~merging].mean():.3g}%, "
            f"median {change[~merging].median():.3g}%",
            f"HHI: mean {markets['hhi_pre'].mean():.0f} -> {markets['hhi_post'].mean():.0f} "
            f"(mean change {markets['hhi_change'].mean():.0f})",
            _total_line("Consumer surplus", markets, "consumer_surplus"),
            _total_line("Profits", markets, "profits"),
            f"Equilibrium: max FOC norm {self.equilibrium.markets['foc_norm'].max():.2g}, "
            f"max profit-Hessian eigenvalue "
            f"{self.equilibrium.markets['max_hessian_eigenvalue'].max():.3g}",
        ]
        return "\n".join(lines)


def _total_line(label: str, markets: pd.DataFrame, name: str) -> str:
    change, before = markets[f"{name}_change"].sum(), markets[f"{name}_pre"].sum()
    return f"{label}: total change {change:.6g} ({100 * change / before:.3g}%)"


class CounterfactualsMixin(EconomicsMixin):
    """Equilibrium prices, mergers and simulated economies of :class:`BLPResults`."""

    def _full_costs(self, costs: Any, data: pd.DataFrame | None, rows: np.ndarray | None):
        """Costs of every estimation row: the argument where given, else imputed ones."""
        design = self.model.design
        if costs is None:
            self._imputing_firms()
            rows_all, eta = self._markup_rows(None, None, None)
            full = np.full(design.nobs, np.nan)
            full[rows_all] = self._prices(rows_all) - eta
            return full
        if data is None:
            values = row_values(costs, design.data.index, "costs", design.market_ids)
            given_rows = np.arange(design.nobs)
        else:
            market_ids = np.asarray(data["market_ids"], dtype=object)
            values = row_values(costs, data.index, "costs", market_ids)
            given_rows = rows
        low = values <= 0
        if low.any():
            warn_user(
                f"{int(low.sum())} costs are <= 0 (first in market "
                f"{design.market_ids[given_rows[np.flatnonzero(low)[0]]]!r}); marginal costs are "
                "usually positive: check their units",
                UserWarning,
            )
        full = np.full(design.nobs, np.nan)
        full[given_rows] = values
        return full

    def _imputing_firms(self) -> Ownership:
        """The data's firms, which imputed costs need (fails before any share work)."""
        try:
            return self._ownership()
        except BLPInputError as error:
            raise BLPInputError(f"{error}; or pass costs=") from error

    def _solve(
        self,
        demand: DemandSystem,
        positions: np.ndarray,
        spec: Ownership,
        costs: np.ndarray | None,
        tol: float,
        max_iterations: int,
        *,
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
        cost_changes: np.ndarray | None = None,
    ) -> _Solved:
        """Equilibrium prices, market chunk by market chunk.

        ``costs`` None imputes them in each chunk from the observed prices under the product
        data's firms (one share evaluation, kept as the pre-change state), then adds
        ``cost_changes``.
        """
        _check_solver_options(tol, max_iterations)
        layout = self.model.design.layout
        task = _ChunkTask(
            demand=demand,
            codes=layout.pad(spec.codes),
            kappa=spec.kappa,
            pre_codes=None if costs is not None else layout.pad(self._imputing_firms().codes),
            costs=costs,
            cost_changes=cost_changes,
            data=data,
            rows=rows,
            options={"tol": tol, "max_iterations": max_iterations},
            market_labels=layout.market_labels,
        )
        # Sequential: on a loaded two-core machine, solving the chunks in threads was slower
        # (0.45 s against 0.34 s for the exercise-2 merger).
        return _Solved([task.solve(chunk) for chunk in demand.chunks(positions)], spec)

    def _equilibrium_record(
        self, solved: _Solved, data: pd.DataFrame | None, rows: np.ndarray | None
    ) -> Equilibrium:
        design = self.model.design
        slot_rows, solved_slots = _stack_pieces(
            solved,
            {
                "prices": lambda piece: piece.solution.prices,
                "shares": lambda piece: piece.solution.state.shares,
                "costs": lambda piece: piece.costs,
            },
        )
        prices, shares, costs = (solved_slots[name] for name in ("prices", "shares", "costs"))
        positions = np.concatenate([p.chunk for p in solved.pieces])
        eigen = [
            _firm_eigenvalues(p, solved.spec, design.layout.market_labels) for p in solved.pieces
        ]
        eigenvalues = pd.concat(eigen) if eigen else pd.Series(dtype=float)
        markets = pd.DataFrame(
            {
                "iterations": np.concatenate([p.solution.iterations for p in solved.pieces]),
                "foc_norm": np.concatenate([p.solution.foc_norm for p in solved.pieces]),
                "converged": np.concatenate([p.solution.converged for p in solved.pieces]),
                "max_hessian_eigenvalue": np.concatenate(
                    [np.nanmax(p.eigenvalues, axis=1) for p in solved.pieces]
                ),
            },
            index=pd.Index(design.layout.market_labels[positions], name="market_ids"),
        )
        if data is None:
            frame, back = design.data.iloc[slot_rows].copy(), np.arange(slot_rows.size)
        else:
            # The new data's rows in their own order: where each solved slot sits in ``data``.
            assert rows is not None
            where = pd.Series(np.arange(rows.size), index=rows).reindex(slot_rows).to_numpy()
            back = np.argsort(where)
            frame = data.iloc[where[back]].copy()
        frame["prices"] = prices[back]
        frame[design.shares_column] = shares[back]
        frame["costs"] = costs[back]
        return Equilibrium(
            prices=self._product_series(prices, slot_rows, "prices"),
            shares=self._product_series(shares, slot_rows, "shares"),
            costs=self._product_series(costs, slot_rows, "costs"),
            markets=markets,
            hessian_eigenvalues=eigenvalues,
            data=frame,
        )

    def equilibrium_prices(
        self,
        data: pd.DataFrame | None = None,
        *,
        costs: Any = None,
        firm_ids: Any = None,
        ownership: Any = None,
        market_id: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
    ) -> Equilibrium:
        """Bertrand–Nash equilibrium prices and shares, all markets at once.

        Prices solve s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0 by the ζ-markup fixed point
        p ← c + ζ(p) of Morrow and Skerlos (2011) (with the nested-logit split of ∂s/∂p for
        nested models), finished with Newton steps on the first-order conditions once they
        are small. A market has converged only when max_j |s_j + ((Ω ⊙ (∂s/∂p)ᵀ)(p − c))_j|
        is below ``tol`` at the prices returned. ξ and the fixed effects stay at their
        estimates, as in :meth:`predict`.

        Parameters
        ----------
        data : pandas.DataFrame, optional
            Changed product data (complete markets; its prices are the starting point);
            default the estimation data.
        costs : pandas.Series or array-like, optional
            Marginal costs per product row, aligned with ``data`` (or the product data);
            default :meth:`costs` with the product data's firms.
        firm_ids, ownership
            Who sets prices, as in :meth:`markups` (e.g. the firms after a merger).
        market_id : optional
            One market, a list, or None for all (of ``data``).
        tol : float
            Tolerance on the profit-gradient norm.
        max_iterations : int
            Price updates per market.

        Returns
        -------
        Equilibrium
            Prices, shares and costs labelled by ``(market_ids, product_ids)``, per-market
            iterations, profit-gradient norms, convergence flags and the largest eigenvalue
            of the firms' profit Hessians, and the product data at the new prices.

        Raises
        ------
        BLPInputError
            As in :meth:`markups` and :meth:`predict`; costs missing or not finite; utilities
            not linear in prices; bad ``tol`` or ``max_iterations``.

        Warns
        -----
        ConvergenceWarning
            Markets that did not converge, by name (flagged in ``markets["converged"]``).

        Examples
        --------
        After a merger of firms F1 and F2 in Mixtape exercise 1:

        >>> merged = results.equilibrium_prices(firm_ids={"F2": "F1"})  # doctest: +SKIP
        >>> bool(merged.markets["converged"].all())  # doctest: +SKIP
        True
        """
        rows, positions = self._data_markets(data, market_id)
        spec = self._ownership(firm_ids, ownership)
        if costs is None and data is None:
            self._imputing_firms()
            full_costs = None
        else:
            full_costs = self._full_costs(costs, data, rows)
        solved = self._solve(
            self.demand, positions, spec, full_costs, tol, max_iterations, data=data, rows=rows
        )
        record = self._equilibrium_record(solved, data, rows)
        failed = record.markets.index[~record.markets["converged"]].tolist()
        if failed:
            warn_user(
                f"equilibrium prices did not converge in {len(failed)} market(s): "
                f"{failed[:10]}; see .markets['foc_norm']",
                ConvergenceWarning,
            )
        _warn_second_order(record)
        return record

    def merger(
        self,
        firm_ids: Any = None,
        cost_changes: Any = None,
        *,
        ownership: Any = None,
        market_id: Any = None,
        market_size: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
    ) -> MergerResults:
        """Merger simulation: the new Bertrand–Nash equilibrium beside the observed one.

        Costs are imputed from the observed prices under the product data's firms, changed by
        ``cost_changes``, and prices are solved again under the new owners
        (:meth:`equilibrium_prices`); ξ and the fixed effects stay at their estimates.

        Parameters
        ----------
        firm_ids : Series, array-like or mapping, optional
            Firms after the merger, e.g. ``{"F2": "F1"}`` (F1 buys F2).
        cost_changes : float, pandas.Series or array-like, optional
            Added to each product's marginal cost after the merger (negative: efficiencies),
            aligned with the product data.
        ownership : {"monopoly", "single"} or callable, optional
            Post-merger ownership instead of (or, a callable, on top of) ``firm_ids``.
        market_id : optional
            One market, a list, or None for all.
        market_size : str, float or pandas.Series, optional
            Scales profits and surplus (see :meth:`profits`); default per unit of market size.
        tol, max_iterations
            As in :meth:`equilibrium_prices`.

        Returns
        -------
        MergerResults
            ``products`` (per product: firms, prices, shares, markups, profits before, after
            and the change) and ``markets`` (HHI, consumer surplus, total profit before, after
            and the change), and ``summary()``.

        Raises
        ------
        BLPInputError
            Neither ``firm_ids`` nor ``ownership``; as in :meth:`equilibrium_prices`.
        FixedPointError
            Equilibrium prices did not converge in some markets (named, in ``.markets``).

        Examples
        --------
        >>> merger = results.merger(firm_ids={"F2": "F1"})  # doctest: +SKIP
        >>> bool((merger.markets["consumer_surplus_change"] < 0).all())  # doctest: +SKIP
        True
        """
        if firm_ids is None and ownership is None:
            raise BLPInputError("give the post-merger firms as firm_ids= (or ownership=)")
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        pre = self._ownership()
        post = self._ownership(firm_ids, ownership)
        changes = None if cost_changes is None else _changes_argument(cost_changes, design)
        solved = self._solve(
            self.demand, positions, post, None, tol, max_iterations, cost_changes=changes
        )
        record = self._equilibrium_record(solved, None, None)
        _require_converged(record, "post-merger")
        rows, before = _stack_pieces(
            solved,
            {
                "prices": lambda piece: piece.priced.prices,
                "markups": lambda piece: piece.pre_markups,
            },
        )
        sizes = self._market_sizes(market_size, rows)
        shares = design.shares[rows]
        eta = before["markups"]
        costs = record.costs.to_numpy()
        prices, new_prices = before["prices"], record.prices.to_numpy()
        new_shares = record.shares.to_numpy()
        quantities = {
            "prices": (prices, new_prices),
            "shares": (shares, new_shares),
            "markups": (eta, new_prices - costs),
            "profits": (eta * shares * sizes, (new_prices - costs) * new_shares * sizes),
        }
        products = pd.DataFrame(
            {
                "firm_ids_pre": pre.labels[pre.codes[rows]],
                "firm_ids_post": post.labels[post.codes[rows]],
                **_before_after(quantities),
            },
            index=record.prices.index,
        )
        markets = self._merger_markets(solved, record, products, pre, rows, sizes)
        _warn_second_order(record)
        return MergerResults(products=products, markets=markets, equilibrium=record)

    def _merger_markets(
        self,
        solved: _Solved,
        record: Equilibrium,
        products: pd.DataFrame,
        pre: Ownership,
        rows: np.ndarray,
        sizes: np.ndarray,
    ) -> pd.DataFrame:
        """Per market before and after: HHI, consumer surplus and total profits (sized).

        ``rows`` are the estimation rows of ``products`` and ``sizes`` their market sizes.
        """
        design = self.model.design
        market_sizes = pd.Series(sizes).groupby(design.market_ids[rows], sort=False).first()
        market_sizes = market_sizes.reindex(record.markets.index).to_numpy()
        surplus_pre, surplus_post = _merger_surplus(solved)
        totals = products.groupby(level="market_ids", sort=False)[["profits_pre", "profits_post"]]
        summed = totals.sum().reindex(record.markets.index)
        per_market = {
            "hhi": _merger_hhi(solved, pre, design.shares),
            "consumer_surplus": (surplus_pre * market_sizes, surplus_post * market_sizes),
            "profits": (summed["profits_pre"].to_numpy(), summed["profits_post"].to_numpy()),
        }
        return pd.DataFrame(_before_after(per_market), index=record.markets.index)

    def simulate(
        self,
        params: Any = None,
        *,
        costs: Any = None,
        firm_ids: Any = None,
        ownership: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
    ) -> Equilibrium:
        """The estimated economy at other parameters, in equilibrium, as new product data.

        Demand is rebuilt at ``params`` with ξ and the fixed effects held at their estimates
        (δ = δ̂ + X1(β − β̂)) and prices and shares are solved at the Bertrand–Nash
        equilibrium with the given costs. The result's ``data`` are the product data with the
        new ``prices``, shares and a ``costs`` column, ready for ``from_formula`` (e.g. to
        check that an estimator recovers the parameters it was simulated at).

        Parameters
        ----------
        params : mapping or pandas.Series, optional
            Parameter values by name (those of ``results.params``); parameters not named keep
            their estimates.
        costs : pandas.Series or array-like, optional
            Marginal costs per product row; default :meth:`costs` at the estimates.
        firm_ids, ownership
            Who sets prices, as in :meth:`markups`.
        tol, max_iterations
            As in :meth:`equilibrium_prices`.

        Returns
        -------
        Equilibrium
            As from :meth:`equilibrium_prices`; ``data`` holds the simulated product data.

        Raises
        ------
        BLPInputError
            Unknown parameter names or non-finite values; as in :meth:`equilibrium_prices`.
        FixedPointError
            Prices did not converge in some markets (named).

        Examples
        --------
        Mixtape exercise 1, supplemental 4: α = −20 with the imputed costs, then estimate
        again with the costs as the instrument:

        >>> simulated = results.simulate({"prices": -20}).data  # doctest: +SKIP
        >>> again = BLPLogit.from_formula(
        ...     "shares ~ 0 + [prices ~ costs]", simulated,
        ...     absorb="C(market_ids) + C(product_ids)").fit()  # doctest: +SKIP
        >>> round(float(again.params["prices"]), 2)  # doctest: +SKIP
        -19.39
        """
        values = self._parameter_vector(params)
        demand = self.demand.with_parameters(*self._demand_parameters(values))
        full_costs = self._full_costs(costs, None, None)
        spec = self._ownership(firm_ids, ownership)
        positions = self.demand.market_positions(None)
        solved = self._solve(demand, positions, spec, full_costs, tol, max_iterations)
        record = self._equilibrium_record(solved, None, None)
        _require_converged(record, "simulated")
        _warn_second_order(record)
        return record

    def _parameter_vector(self, params: Any) -> np.ndarray:
        """Estimates with the entries named in ``params`` replaced."""
        names = list(self.model.data.param_names)
        values = np.asarray(self.params, dtype=np.float64).copy()
        if params is None:
            return values
        if not isinstance(params, (Mapping, pd.Series)):
            raise BLPInputError(
                f"params must map parameter names to values, got {type(params).__name__}"
            )
        for name, value in dict(params).items():
            if name not in names:
                raise BLPInputError(f"unknown parameter {name!r}; the parameters are {names}")
            if isinstance(value, (str, bytes, bool, np.bool_)) or np.ndim(value) != 0:
                # float() would parse text ("-20") or fail with a bare ValueError/TypeError.
                raise BLPInputError(
                    f"parameter {name!r} must be a number, got {value!r} "
                    f"({type(value).__name__}), e.g. {{{name!r}: -2.0}}"
                )
            try:
                number = float(value)
            except (TypeError, ValueError) as error:
                raise BLPInputError(
                    f"parameter {name!r} must be a number, got {value!r} ({type(value).__name__})"
                ) from error
            if not np.isfinite(number):
                raise BLPInputError(f"parameter {name!r} must be finite, got {value!r}")
            values[names.index(name)] = number
        return values


@dataclass(frozen=True, eq=False)
class _Piece:
    chunk: np.ndarray
    priced: PricedMarkets
    solution: equilibrium.EquilibriumSolution
    costs: np.ndarray
    eigenvalues: np.ndarray
    codes: np.ndarray
    pre_state: equilibrium.PriceState | None = None
    pre_markups: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class _ChunkTask:
    """Everything one chunk's equilibrium needs, so chunks can be solved in threads."""

    demand: DemandSystem
    codes: np.ndarray
    kappa: np.ndarray | None
    pre_codes: np.ndarray | None
    costs: np.ndarray | None
    cost_changes: np.ndarray | None
    data: pd.DataFrame | None
    rows: np.ndarray | None
    options: dict[str, Any]
    market_labels: np.ndarray

    def solve(self, chunk: np.ndarray) -> _Piece:
        priced = self.demand.priced(chunk, self.data, self.rows)
        mask = priced.inputs.mask
        pre_state = pre_markups = None
        if self.pre_codes is not None:
            pre_state = priced.state(priced.prices)
            pre_omega = ownership_matrices(self.pre_codes[chunk], mask)
            pre_markups = equilibrium.markups(pre_state.jacobian, pre_state.shares, pre_omega, mask)
            self._check_markups(pre_markups, mask, chunk)
            costs = priced.prices - pre_markups
            if self.cost_changes is not None:
                costs = costs + np.where(mask, self.cost_changes[priced.inputs.rows], 0.0)
        else:
            assert self.costs is not None
            costs = np.where(mask, self.costs[priced.inputs.rows], 0.0)
            missing = mask & ~np.isfinite(costs)
            if missing.any():
                market = self.market_labels[chunk[missing.any(axis=1)][0]]
                raise BLPInputError(f"costs are missing or not finite in market {market!r}")
        omega = ownership_matrices(self.codes[chunk], mask, self.kappa)
        solution = equilibrium.solve_prices(
            priced.state, costs, priced.prices, omega, mask, initial=pre_state, **self.options
        )
        eta = np.where(mask, solution.prices - costs, 0.0)
        second = equilibrium.foc_jacobian(solution.state, omega, eta)
        eigenvalues = equilibrium.firm_hessian_max_eigenvalues(second, self.codes[chunk], mask)
        return _Piece(
            chunk, priced, solution, costs, eigenvalues, self.codes[chunk], pre_state, pre_markups
        )

    def _check_markups(self, eta: np.ndarray, mask: np.ndarray, chunk: np.ndarray) -> None:
        bad = (mask & ~np.isfinite(eta)).any(axis=1)
        if bad.any():
            raise singular_markups(self.market_labels[chunk[bad]])


@dataclass(frozen=True, eq=False)
class _Solved:
    pieces: list[_Piece]
    spec: Ownership


def _firm_eigenvalues(piece: _Piece, spec: Ownership, market_labels: np.ndarray) -> pd.Series:
    mask = piece.priced.inputs.mask
    local = local_firm_codes(piece.codes, mask)
    markets = np.broadcast_to(np.arange(mask.shape[0])[:, None], mask.shape)[mask]
    table = pd.DataFrame(
        {"t": markets, "local": local[mask], "code": piece.codes[mask]}
    ).drop_duplicates()
    index = pd.MultiIndex.from_arrays(
        [market_labels[piece.chunk[table["t"]]], spec.labels[table["code"]]],
        names=["market_ids", "firm_ids"],
    )
    values = piece.eigenvalues[table["t"].to_numpy(), table["local"].to_numpy()]
    return pd.Series(values, index=index, name="max_eigenvalue")


def _stack_pieces(
    solved: _Solved, quantities: dict[str, Callable[[_Piece], np.ndarray]]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Estimation rows of the solved markets' products (sorted) and per-slot quantities of
    the pieces (``[T, J]`` arrays) at them."""
    masks = [piece.priced.inputs.mask for piece in solved.pieces]
    rows = np.concatenate(
        [piece.priced.inputs.rows[mask] for piece, mask in zip(solved.pieces, masks, strict=True)]
    )
    order = np.argsort(rows, kind="stable")
    values = {
        name: np.concatenate(
            [take(piece)[mask] for piece, mask in zip(solved.pieces, masks, strict=True)]
        )[order]
        for name, take in quantities.items()
    }
    return rows[order], values


def _require_converged(record: Equilibrium, what: str) -> None:
    """Raise, naming them, when prices did not converge in some markets."""
    failed = record.markets.index[~record.markets["converged"]].tolist()
    if failed:
        raise FixedPointError(
            f"{what} prices did not converge in {len(failed)} market(s): {failed[:10]}",
            markets=failed,
        )


def _before_after(quantities: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    columns = {}
    for name, (before, after) in quantities.items():
        columns[f"{name}_pre"] = before
        columns[f"{name}_post"] = after
        columns[f"{name}_change"] = after - before
    return columns


def _merger_hhi(
    solved: _Solved, pre: Ownership, observed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """HHI at the observed shares and firms, and at the new shares and firms."""
    before, after = [], []
    for piece in solved.pieces:
        inputs = piece.priced.inputs
        mask = inputs.mask
        shares = np.where(mask, observed[inputs.rows], 0.0)
        before.append(equilibrium.hhi(shares, pre.codes[inputs.rows], mask))
        after.append(equilibrium.hhi(piece.solution.state.shares, piece.codes, mask))
    return np.concatenate(before), np.concatenate(after)


def _merger_surplus(solved: _Solved) -> tuple[np.ndarray, np.ndarray]:
    """Consumer surplus before and after, NaN (with a warning) where it is not defined."""
    before, after, positive = [], [], 0.0
    try:
        for piece in solved.pieces:
            for state, out in ((piece.pre_state, before), (piece.solution.state, after)):
                assert state is not None
                values, share = surplus(
                    state.probabilities,
                    state.weights,
                    state.product_mask,
                    state.utility_derivative,
                )
                out.append(values)
                positive = max(positive, share)
    except BLPInputError as error:
        warn_user(f"consumer surplus left out: {error}", UserWarning)
        n_markets = sum(piece.chunk.size for piece in solved.pieces)
        return np.full(n_markets, np.nan), np.full(n_markets, np.nan)
    warn_positive_price_coefficients(positive)
    return np.concatenate(before), np.concatenate(after)


def _warn_second_order(record: Equilibrium) -> None:
    """Warn where prices satisfy the first-order conditions but not the second-order ones."""
    markets = record.markets
    saddle = markets.index[markets["converged"] & (markets["max_hessian_eigenvalue"] > 0)]
    if len(saddle):
        warn_user(
            f"in {len(saddle)} market(s), e.g. {saddle[:5].tolist()}, a firm's profit Hessian "
            "has a positive eigenvalue at the prices found: they solve the first-order "
            "conditions but are not a profit maximum (see .markets['max_hessian_eigenvalue'])",
            ConvergenceWarning,
        )


def _changes_argument(changes: Any, design: Any) -> np.ndarray:
    if isinstance(changes, (int, float, np.number)) and not isinstance(changes, bool):
        if not np.isfinite(changes):
            raise BLPInputError(f"cost_changes must be finite, got {changes!r}")
        return np.full(design.nobs, float(changes))
    return row_values(changes, design.data.index, "cost_changes", design.market_ids)


def _check_solver_options(tol: Any, max_iterations: Any) -> None:
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0):
        raise BLPInputError(f"tol must be a positive number, got {tol!r}")
    if (
        isinstance(max_iterations, bool)
        or not isinstance(max_iterations, (int, np.integer))
        or max_iterations < 1
    ):
        raise BLPInputError(f"max_iterations must be a positive integer, got {max_iterations!r}")
