"""Counterfactuals: new Bertrand–Nash equilibria from the estimated demand and costs.

:class:`CounterfactualsMixin` gives :class:`~blpmodels.results.BLPResults`
:meth:`~CounterfactualsMixin.equilibrium_prices` (prices under other costs, firms or data),
:meth:`~CounterfactualsMixin.merger` (before and after a change of owners) and
:meth:`~CounterfactualsMixin.simulate` (the economy at other parameters). They build on the
supply-side economics (costs imputed from markups, market sizes, consumer surplus), solve
prices chunk of markets by chunk of markets (:func:`blpmodels.kernel.equilibrium.solve_prices`)
and return :class:`Equilibrium` and :class:`MergerResults` records
(:mod:`blpmodels.results.records`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import warn_user
from blpmodels.exceptions import BLPInputError, ConvergenceWarning, FixedPointError
from blpmodels.kernel import equilibrium
from blpmodels.kernel.ownership import (
    FIRM_IDS_PRE_HINT,
    Ownership,
    local_firm_codes,
    ownership_matrices,
)
from blpmodels.results.base import row_values
from blpmodels.results.counterfactual_bootstrap import (
    equilibrium_with_intervals,
    merger_with_intervals,
)
from blpmodels.results.demand import DemandSystem, PricedMarkets
from blpmodels.results.economics import (
    EconomicsMixin,
    singular_markups,
    surplus,
    warn_positive_price_coefficients,
)
from blpmodels.results.records import Equilibrium, MergerResults

__all__ = ["CounterfactualsMixin", "Equilibrium", "MergerResults"]


class CounterfactualsMixin(EconomicsMixin):
    """Equilibrium prices, mergers and simulated economies of :class:`BLPResults`."""

    def _full_costs(
        self,
        costs: Any,
        data: pd.DataFrame | None,
        rows: np.ndarray | None,
        firm_ids_pre: Any = None,
    ) -> np.ndarray:
        """Costs of every estimation row: the argument where given, else imputed ones."""
        design = self.model.design
        if costs is None:
            self._imputing_firms(firm_ids_pre)
            rows_all, eta = self._markup_rows(None, None, None, firm_ids_pre)
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

    def _imputing_firms(self, firm_ids_pre: Any = None) -> Ownership:
        """The firms at the observed prices, which imputed costs need (checked before any
        share work)."""
        try:
            return self._ownership(firm_ids_pre=firm_ids_pre)
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
        pre: Ownership | None = None,
    ) -> _Solved:
        """Equilibrium prices, market chunk by market chunk.

        ``costs`` None imputes them in each chunk from the observed prices under the firms
        ``pre`` (one share evaluation, kept as the pre-change state, where the second-order
        conditions are checked too), then adds ``cost_changes``.
        """
        _check_solver_options(tol, max_iterations)
        layout = self.model.design.layout
        if costs is None:
            assert pre is not None
        task = _ChunkTask(
            demand=demand,
            codes=layout.pad(spec.codes),
            kappa=spec.kappa,
            pre_codes=None if costs is not None else layout.pad(pre.codes),
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
        firm_ids_pre: Any = None,
        bootstrap: Any = None,
        level: float = 0.95,
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
            default :meth:`costs` with the product data's firms (or ``firm_ids_pre``).
        firm_ids, ownership
            Who sets prices, as in :meth:`markups` (e.g. the firms after a merger).
        market_id : optional
            One market, a list, or None for all (of ``data``).
        tol : float
            Tolerance on the profit-gradient norm.
        max_iterations : int
            Price updates per market.
        firm_ids_pre : Series or array-like, optional
            The firms that set the observed prices (one id per product row), in place of the
            product data's ``firm_ids`` column: costs are imputed under them and a
            ``firm_ids`` mapping renames them (see :meth:`markups`).
        bootstrap : BootstrappedResults, optional
            Draws from :meth:`bootstrap`: the equilibrium is solved again at every draw
            (imputed costs imputed again there, given costs held) and the result carries
            percentile intervals (see :meth:`merger`).
        level : float
            Coverage of those intervals, in (0, 1).

        Returns
        -------
        Equilibrium
            Prices, shares and costs labelled by ``(market_ids, product_ids)``, per-market
            iterations, profit-gradient norms, convergence flags and the largest eigenvalue
            of the firms' profit Hessians, and the product data at the new prices. With
            ``bootstrap``, a ``BootstrappedEquilibrium`` (of
            ``blpmodels.results.counterfactual_bootstrap``) with ``product_intervals()``.

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
        if bootstrap is not None or level != 0.95:
            arguments = dict(locals())
            del arguments["self"], arguments["bootstrap"], arguments["level"]
            return equilibrium_with_intervals(self, bootstrap, level, arguments)
        rows, positions = self._data_markets(data, market_id)
        spec = self._ownership(firm_ids, ownership, firm_ids_pre)
        pre = None
        if costs is None and data is None:
            pre = self._imputing_firms(firm_ids_pre)
            full_costs = None
        else:
            full_costs = self._full_costs(costs, data, rows, firm_ids_pre)
        solved = self._solve(
            self.demand,
            positions,
            spec,
            full_costs,
            tol,
            max_iterations,
            data=data,
            rows=rows,
            pre=pre,
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
        markets: Any = None,
        market_size: Any = None,
        firm_ids_pre: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
        bootstrap: Any = None,
        level: float = 0.95,
    ) -> MergerResults:
        """Merger simulation: the new Bertrand–Nash equilibrium beside the observed one.

        Costs are imputed from the observed prices under the firms before the merger (the
        product data's ``firm_ids``, or ``firm_ids_pre``), changed by ``cost_changes``, and
        prices are solved again under the new owners (:meth:`equilibrium_prices`); ξ and the
        fixed effects stay at their estimates. A market whose prices do not converge does not
        stop the others: its post-merger values are NaN, ``markets["converged"]`` is False
        there, and one warning names such markets and says why.

        Parameters
        ----------
        firm_ids : Series, array-like or mapping, optional
            Firms after the merger, e.g. ``{"F2": "F1"}`` (F1 buys F2), or one id per product
            row.
        cost_changes : float, pandas.Series or array-like, optional
            Added to each product's marginal cost after the merger (negative: efficiencies),
            aligned with the product data.
        ownership : {"monopoly", "single"} or callable, optional
            Post-merger ownership instead of (or, a callable, on top of) ``firm_ids``.
        market_id : optional
            One market, a list, or None for all.
        markets : list or "profit_maximizing", optional
            Markets to solve: a list of market ids (as ``market_id=``), or
            ``"profit_maximizing"``: of the markets of ``market_id``, only those where the
            observed prices are a profit maximum (every firm's profit Hessian is negative
            definite there); the others are left out (``left_out``, with a warning), as their
            imputed costs are not a profit-maximizing firm's.
        market_size : str, float or pandas.Series, optional
            Scales profits and surplus (see :meth:`profits`); default per unit of market size.
        firm_ids_pre : Series or array-like, optional
            The firms before the merger, one id per product row, in place of the product
            data's ``firm_ids`` column (a model built without firms needs no refit); a
            ``firm_ids`` mapping renames these.
        tol, max_iterations
            As in :meth:`equilibrium_prices`.
        bootstrap : BootstrappedResults, optional
            Draws from :meth:`bootstrap` (of these results): the merger is simulated again at
            every draw θ_b, each from its own economy (:meth:`BootstrappedResults.results_at`:
            ξ_b from the observed shares and costs c_b = p − η(θ_b) from the observed prices,
            both at θ_b; data, agents and ``cost_changes`` held), on the markets solved at the
            estimates. Draws that fail are counted (``failed_draws``, one warning).
        level : float
            Coverage of the percentile intervals, in (0, 1).

        Returns
        -------
        MergerResults
            ``products`` (per product: firms, prices, shares, markups, profits before, after
            and the change) and ``markets`` (convergence, HHI, consumer surplus, total profit
            before, after and the change, the second-order check before and after), and
            ``summary()``. With ``bootstrap``, a ``BootstrappedMerger`` (of
            ``blpmodels.results.counterfactual_bootstrap``): also ``product_intervals()``,
            ``market_intervals()`` and ``summary_intervals()`` (changes of prices, shares,
            markups, profits, HHI and consumer surplus with percentile intervals) and
            ``plot(intervals=True)``.

        Raises
        ------
        BLPInputError
            Neither ``firm_ids`` nor ``ownership``; no firms before the merger (neither a
            ``firm_ids`` column nor ``firm_ids_pre``); a bad ``markets``; no market left to
            solve; as in :meth:`equilibrium_prices`.

        Warns
        -----
        ConvergenceWarning
            Once, naming the markets where prices did not converge and why (whether the
            second-order conditions already fail at the observed prices there); and markets
            whose new prices solve the first-order conditions without being a profit maximum.
        UserWarning
            Markets left out by ``markets="profit_maximizing"``.

        Examples
        --------
        >>> merger = results.merger(firm_ids={"F2": "F1"})  # doctest: +SKIP
        >>> bool((merger.markets["consumer_surplus_change"] < 0).all())  # doctest: +SKIP
        True

        On a model built without a ``firm_ids`` column, give the firms before the merger:

        >>> firms = data["product_ids"].str[:2]  # doctest: +SKIP
        >>> again = results.merger({"F2": "F1"}, firm_ids_pre=firms)  # doctest: +SKIP
        >>> again.products.equals(merger.products)  # doctest: +SKIP
        True
        """
        if firm_ids is None and ownership is None:
            raise BLPInputError("give the post-merger firms as firm_ids= (or ownership=)")
        if bootstrap is not None or level != 0.95:
            arguments = dict(locals())
            del arguments["self"], arguments["bootstrap"], arguments["level"]
            return merger_with_intervals(self, bootstrap, level, arguments)
        design = self.model.design
        pre = self._merger_firms(firm_ids_pre)
        post = self._ownership(firm_ids, ownership, firm_ids_pre)
        positions = self._merger_positions(market_id, markets)
        changes = None if cost_changes is None else _changes_argument(cost_changes, design)
        _check_solver_options(tol, max_iterations)
        left_out: list[Any] = []
        if isinstance(markets, str):
            positions, left_out = self._profit_maximizing(positions, pre)
        solved = self._solve(
            self.demand, positions, post, None, tol, max_iterations, cost_changes=changes, pre=pre
        )
        record = self._equilibrium_record(solved, None, None)
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
        unsolved = record.markets.index[~record.markets["converged"]]
        _blank_unsolved(products, pd.Index(design.market_ids[rows]).isin(unsolved))
        per_market = self._merger_markets(solved, record, products, pre, rows, sizes)
        _warn_unsolved(per_market)
        _warn_second_order(record)
        return MergerResults(
            products=products, markets=per_market, equilibrium=record, left_out=tuple(left_out)
        )

    def _merger_firms(self, firm_ids_pre: Any) -> Ownership:
        """The firms before a merger, or an error saying how to give them."""
        if firm_ids_pre is None and self.model.design.firm_ids is None:
            raise BLPInputError(
                "merger() imputes costs under the firms before the merger, but the product data "
                f"have no firm_ids column: {FIRM_IDS_PRE_HINT}. firm_ids= are the firms after "
                "the merger"
            )
        return self._ownership(firm_ids_pre=firm_ids_pre)

    def _merger_positions(self, market_id: Any, markets: Any) -> np.ndarray:
        """Layout positions of the markets a merger solves (before any left out)."""
        if isinstance(markets, str) and markets != "profit_maximizing":
            raise BLPInputError(
                f"markets= takes a list of market ids or 'profit_maximizing', got {markets!r} "
                f"(one market: markets=[{markets!r}] or market_id={markets!r})"
            )
        if markets is None or isinstance(markets, str):
            return self.demand.market_positions(market_id)
        if market_id is not None:
            raise BLPInputError("give the markets to solve as markets= or market_id=, not both")
        if not isinstance(markets, (list, tuple, np.ndarray, pd.Index, pd.Series)):
            raise BLPInputError(
                "markets= takes a list of market ids or 'profit_maximizing', got "
                f"{type(markets).__name__}"
            )
        return self.demand.market_positions(markets)

    def _profit_maximizing(
        self, positions: np.ndarray, pre: Ownership
    ) -> tuple[np.ndarray, list[Any]]:
        """The markets whose observed prices are a profit maximum under ``pre``, and the labels
        of the others (warned about)."""
        layout = self.model.design.layout
        codes = layout.pad(pre.codes)
        chunks, largest = [], []
        for chunk in self.demand.chunks(positions):
            priced = self.demand.priced(chunk)
            largest.append(_observed(priced, codes[chunk], layout.market_labels[chunk])[2])
            chunks.append(chunk)
        ordered, eigenvalues = np.concatenate(chunks), np.concatenate(largest)
        # NaN (no firm with a finite Hessian) is not evidence of a maximum: left out too.
        keep = eigenvalues < 0
        left_out = layout.market_labels[ordered[~keep]].tolist()
        if not keep.any():
            raise BLPInputError(
                f"markets='profit_maximizing' leaves no market to solve: the second-order "
                f"conditions fail at the observed prices in all {ordered.size} market(s)"
            )
        if left_out:
            warn_user(
                f"markets='profit_maximizing' leaves out {len(left_out)} market(s), "
                f"{left_out[:10]}: the second-order conditions fail at the observed prices "
                "there (a firm's profit Hessian has a positive eigenvalue, up to "
                f"{np.nanmax(eigenvalues[~keep]):.3g}), so they are no profit maximum and the "
                "costs imputed from them are not a profit-maximizing firm's",
                UserWarning,
            )
        return positions[np.isin(positions, ordered[keep])], left_out

    def _merger_markets(
        self,
        solved: _Solved,
        record: Equilibrium,
        products: pd.DataFrame,
        pre: Ownership,
        rows: np.ndarray,
        sizes: np.ndarray,
    ) -> pd.DataFrame:
        """Per market: convergence, HHI, consumer surplus and total profits (sized) before and
        after (NaN after where prices did not converge), and the second-order checks.

        ``rows`` are the estimation rows of ``products`` and ``sizes`` their market sizes.
        """
        design = self.model.design
        index = record.markets.index
        market_sizes = pd.Series(sizes).groupby(design.market_ids[rows], sort=False).first()
        market_sizes = market_sizes.reindex(index).to_numpy()
        surplus_pre, surplus_post = _merger_surplus(solved)
        totals = products.groupby(level="market_ids", sort=False)[["profits_pre", "profits_post"]]
        summed = totals.sum(min_count=1).reindex(index)
        per_market = {
            "hhi": _merger_hhi(solved, pre, design.shares),
            "consumer_surplus": (surplus_pre * market_sizes, surplus_post * market_sizes),
            "profits": (summed["profits_pre"].to_numpy(), summed["profits_post"].to_numpy()),
        }
        frame = pd.DataFrame(
            {
                "converged": record.markets["converged"].to_numpy(),
                "foc_norm": record.markets["foc_norm"].to_numpy(),
                **_before_after(per_market),
                "max_hessian_eigenvalue_pre": np.concatenate(
                    [piece.pre_eigenvalues for piece in solved.pieces]
                ),
                "max_hessian_eigenvalue_post": record.markets["max_hessian_eigenvalue"].to_numpy(),
            },
            index=index,
        )
        _blank_unsolved(frame, ~frame["converged"].to_numpy())
        return frame

    def simulate(
        self,
        params: Any = None,
        *,
        costs: Any = None,
        firm_ids: Any = None,
        ownership: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
        firm_ids_pre: Any = None,
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
        tol, max_iterations, firm_ids_pre
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
        full_costs = self._full_costs(costs, None, None, firm_ids_pre)
        spec = self._ownership(firm_ids, ownership, firm_ids_pre)
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
    pre_eigenvalues: np.ndarray | None = None


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
        pre_state = pre_markups = pre_eigenvalues = None
        if self.pre_codes is not None:
            pre_state, pre_markups, pre_eigenvalues = _observed(
                priced, self.pre_codes[chunk], self.market_labels[chunk]
            )
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
            chunk,
            priced,
            solution,
            costs,
            eigenvalues,
            self.codes[chunk],
            pre_state,
            pre_markups,
            pre_eigenvalues,
        )


def _observed(
    priced: PricedMarkets, codes: np.ndarray, labels: np.ndarray
) -> tuple[equilibrium.PriceState, np.ndarray, np.ndarray]:
    """Demand at the observed prices, the markups there under the firms ``codes`` ``[T, J]``,
    and each market's largest profit-Hessian eigenvalue (positive: the second-order
    conditions fail, and the observed prices are no profit maximum); ``labels`` name the
    markets in errors."""
    mask = priced.inputs.mask
    state = priced.state(priced.prices)
    omega = ownership_matrices(codes, mask)
    eta = equilibrium.markups(state.jacobian, state.shares, omega, mask)
    bad = (mask & ~np.isfinite(eta)).any(axis=1)
    if bad.any():
        raise singular_markups(labels[bad])
    second = equilibrium.foc_jacobian(state, omega, np.where(mask, eta, 0.0))
    eigenvalues = equilibrium.firm_hessian_max_eigenvalues(second, codes, mask)
    return state, eta, np.nanmax(eigenvalues, axis=1)


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


def _blank_unsolved(frame: pd.DataFrame, unsolved: np.ndarray) -> None:
    """NaN in the after and change columns of the rows whose prices did not converge."""
    if not unsolved.any():
        return
    columns = [
        name
        for name in frame.columns
        if name.endswith(("_post", "_change")) and not name.startswith(("firm_ids", "max_"))
    ]
    frame.loc[unsolved, columns] = np.nan


def _warn_unsolved(markets: pd.DataFrame) -> None:
    """One warning naming the markets a merger could not solve, and why."""
    failed = markets.index[~markets["converged"].to_numpy()]
    if not len(failed):
        return
    # The observed prices were checked where costs were imputed: a positive eigenvalue there
    # means they are no profit maximum, which is why an equilibrium need not exist.
    eigenvalues = markets.loc[failed, "max_hessian_eigenvalue_pre"].to_numpy()
    indefinite = eigenvalues > 0
    norms = markets.loc[failed, "foc_norm"].to_numpy()
    parts = [
        f"post-merger prices did not converge in {len(failed)} of {len(markets)} market(s), "
        f"{failed[:10].tolist()} (profit gradient norms up to {np.nanmax(norms, initial=0):.2g}"
        f"{', or not finite' if np.isnan(norms).any() else ''}): their post-merger values are "
        f"NaN (see .markets['converged'] and ['foc_norm']); the other "
        f"{len(markets) - len(failed)} market(s) are solved."
    ]
    if indefinite.any():
        parts.append(
            f"In {failed[indefinite][:10].tolist()} the second-order conditions already fail at "
            "the observed prices (a firm's profit Hessian has a positive eigenvalue there, up to "
            f"{np.nanmax(eigenvalues[indefinite]):.3g}; see "
            ".markets['max_hessian_eigenvalue_pre']): the observed prices are no profit maximum "
            "under this demand, the costs imputed from them are not a profit-maximizing firm's, "
            "and a post-merger equilibrium need not exist; markets='profit_maximizing' leaves "
            "such markets out."
        )
    if not indefinite.all():
        parts.append(
            f"In {failed[~indefinite][:10].tolist()} the second-order conditions hold at the "
            "observed prices: the price iteration stopped short of tol (after max_iterations "
            "updates, or 100 without progress; see .equilibrium.markets['iterations'])."
        )
    warn_user(" ".join(parts), ConvergenceWarning)


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
