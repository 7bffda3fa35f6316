"""Counterfactual markets in equilibrium: products added or removed, taxes, prices held fixed.

:class:`MarketCounterfactualsMixin` gives :class:`~blpmodels.results.BLPResults`
:meth:`~MarketCounterfactualsMixin.counterfactual`. It changes the set of products in some
markets (new rows with their own characteristics, ξ and costs; rows taken out), puts per-unit
and ad valorem taxes into the firms' first-order conditions
(:func:`blpmodels.kernel.equilibrium.taxed_first_order`), keeps chosen prices where they are,
lets other firms set the prices (a merger, ``"monopoly"``, profit weights κ), solves the new
Bertrand–Nash equilibrium and returns a :class:`CounterfactualResults` with
prices, shares, profits, consumer surplus, HHI and tax revenue before and after.

The markets are the estimation layout's padded ``[T, J]`` arrays of the demand
(:class:`~blpmodels.results.demand.PricedMarkets`), widened by the new products' slots and with
removed products masked out, so the kernel solves them as any other markets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import warn_user
from blpmodels.exceptions import BLPInputError, ConvergenceWarning
from blpmodels.kernel import equilibrium
from blpmodels.kernel.nests import TwoLevelNesting
from blpmodels.kernel.ownership import FIRM_IDS_PRE_HINT, Ownership, ownership_matrices
from blpmodels.kernel.shares import Nesting
from blpmodels.results.base import check_frame, row_values
from blpmodels.results.counterfactual_bootstrap import counterfactual_with_intervals
from blpmodels.results.counterfactual_plan import (
    AddedProducts,
    CounterfactualPlan,
    added_costs,
    added_firm_codes,
    column_numbers,
    data_firm_mapping,
    extended_firms,
    post_ownership,
    require_columns,
    tax_values,
)
from blpmodels.results.counterfactuals import (
    CounterfactualsMixin,
    _before_after,
    _blank_unsolved,
    _check_solver_options,
)
from blpmodels.results.demand import PricedMarkets
from blpmodels.results.economics import surplus, warn_positive_price_coefficients
from blpmodels.results.records import _html, _text
from blpmodels.results.two_level_demand import TwoLevelDemand

__all__ = ["CounterfactualResults", "MarketCounterfactualsMixin"]


@dataclass(frozen=True, eq=False)
class CounterfactualResults:
    """Before and after a change of the markets (see :meth:`BLPResults.counterfactual`).

    "Before" is the observed equilibrium (observed prices, the model's shares there, no
    taxes); "after" the Bertrand–Nash equilibrium of the changed markets. Prices are what
    consumers pay; a firm receives r = p / (1 + τ) − t per unit (``taxes=``). In a notebook
    the record shows as the table of :meth:`summary`.

    Attributes
    ----------
    products : pandas.DataFrame
        Per product (``(market_ids, product_ids)``, the products of the solved markets before
        and after): ``firm_ids`` (the firm that sets the price after the change),
        ``firm_ids_pre`` (the firm before it; None for an added product), ``status``
        (``"kept"``, ``"removed"``, ``"added"``), ``fixed``, ``costs``, ``unit_tax``,
        ``ad_valorem_tax``; ``prices``, ``shares``,
        ``margins`` (r − c) and ``profits`` each ``_pre``, ``_post`` and ``_change`` (a removed
        product has no price after and zero share and profit; an added one the same before);
        ``tax_post`` (p − r, the tax per unit) and ``passthrough`` (∂p/∂t, the response of the
        price to a small unit tax on every product of its market, at the new equilibrium).
    markets : pandas.DataFrame
        Per market: ``converged``, ``foc_norm`` (max |F_j| over the products that re-price),
        ``iterations``, ``hhi``, ``consumer_surplus`` and total ``profits`` each ``_pre``,
        ``_post`` and ``_change``, ``tax_revenue``, ``welfare_change`` (the changes of surplus
        and profits plus the revenue) and ``max_hessian_eigenvalue_post``. Values after the
        change are NaN where prices did not converge.
    data : pandas.DataFrame
        The product data of the solved markets after the change (kept rows, then added ones)
        with the new ``prices``, shares and a ``costs`` column.
    """

    products: pd.DataFrame
    markets: pd.DataFrame
    data: pd.DataFrame

    @property
    def converged(self) -> bool:
        """Whether every market converged."""
        return bool(self.markets["converged"].all())

    @property
    def incidence(self) -> pd.DataFrame:
        """Who bears the change, per market: ``consumers`` (−Δ consumer surplus),
        ``producers`` (−Δ profits), ``government`` (−tax revenue), their sum
        ``deadweight_loss`` (−Δ welfare) and ``consumer_share`` of the private burden,
        −ΔCS / (−ΔCS − Δprofits).

        Examples
        --------
        >>> taxed = results.counterfactual(taxes={"unit": 0.01})  # doctest: +SKIP
        >>> bool((taxed.incidence["deadweight_loss"] > 0).all())  # doctest: +SKIP
        True
        """
        markets = self.markets
        consumers = -markets["consumer_surplus_change"]
        producers = -markets["profits_change"]
        government = -markets["tax_revenue"]
        return pd.DataFrame(
            {
                "consumers": consumers,
                "producers": producers,
                "government": government,
                "deadweight_loss": consumers + producers + government,
                "consumer_share": consumers / (consumers + producers),
            }
        )

    def _rows(self) -> list[tuple[str, str]]:
        products, markets = self.products, self.markets
        solved = markets[markets["converged"].to_numpy()]
        status = products["status"].value_counts()
        both = products["status"].eq("kept") & ~products["fixed"]
        change = 100 * products.loc[both, "prices_change"] / products.loc[both, "prices_pre"]
        taxed = products[["unit_tax", "ad_valorem_tax"]].abs().to_numpy().sum() > 0
        rows = [
            ("Markets", f"{len(markets)}"),
            ("Products", f"{len(products)}"),
            (
                "Products removed, added, fixed",
                f"{status.get('removed', 0)}, {status.get('added', 0)}, "
                f"{int(products['fixed'].sum())}",
            ),
            (
                "Price change, products re-priced",
                f"mean {change.mean():.3g}%, median {change.median():.3g}%",
            ),
            (
                "HHI",
                f"mean {solved['hhi_pre'].mean():.0f} -> {solved['hhi_post'].mean():.0f}",
            ),
            ("Consumer surplus change", f"total {solved['consumer_surplus_change'].sum():.6g}"),
            ("Profits change", f"total {solved['profits_change'].sum():.6g}"),
        ]
        if taxed:
            burden = self.incidence.loc[solved.index].sum()
            private = burden["consumers"] + burden["producers"]
            rows += [
                ("Tax revenue", f"total {solved['tax_revenue'].sum():.6g}"),
                (
                    "Incidence",
                    f"consumers bear {100 * burden['consumers'] / private:.3g}% of the private "
                    f"burden; deadweight loss {burden['deadweight_loss']:.6g}",
                ),
                (
                    "Pass-through of a unit tax",
                    f"mean {products.loc[~products['fixed'], 'passthrough'].mean():.3g}",
                ),
            ]
        rows += [
            ("Welfare change", f"total {solved['welfare_change'].sum():.6g}"),
            (
                "Equilibrium",
                f"{len(solved)} of {len(markets)} markets converged, max FOC norm "
                f"{solved['foc_norm'].max():.2g}, max profit-Hessian eigenvalue "
                f"{solved['max_hessian_eigenvalue_post'].max():.3g}",
            ),
        ]
        if len(solved) < len(markets):
            unsolved = markets.index[~markets["converged"].to_numpy()][:10].tolist()
            rows.append(("Not converged (NaN after the change)", f"{unsolved}"))
        return rows

    def summary(self) -> str:
        """A short text report: the change, prices, HHI, surplus, profits, taxes.

        Totals are over the markets that converged.

        Examples
        --------
        >>> print(results.counterfactual(remove=["F1B04"]).summary())  # doctest: +SKIP
        Counterfactual markets
        ...
        """
        return _text("Counterfactual markets", self._rows())

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return _html("Counterfactual markets", self._rows())


class MarketCounterfactualsMixin(CounterfactualsMixin):
    """Counterfactual markets (entry, exit, taxes, fixed prices) of :class:`BLPResults`."""

    def counterfactual(
        self,
        *,
        add: pd.DataFrame | None = None,
        remove: Any = None,
        taxes: Mapping[str, Any] | None = None,
        fixed: Any = None,
        costs: Any = None,
        cost_formula: str | None = None,
        market_id: Any = None,
        market_size: Any = None,
        firm_ids: Any = None,
        ownership: Any = None,
        firm_ids_pre: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
        bootstrap: Any = None,
        level: float = 0.95,
    ) -> CounterfactualResults:
        """The markets with products added or removed, taxed, or some prices held: the new
        Bertrand–Nash equilibrium beside the observed one.

        Costs of the products in the data are imputed from the observed prices under the
        data's firms (as :meth:`costs`; or given as ``costs=``), ξ and the fixed effects stay
        at their estimates, and the firms re-price every product that is not ``fixed``.

        Taxes: prices p are what consumers pay (the prices in utility). Product j bears a
        unit tax t_j and an ad valorem rate τ_j levied on the price including the unit tax,
        p_j = (1 + τ_j)(r_j + t_j), so its firm receives r_j = p_j / (1 + τ_j) − t_j per unit
        and maximizes Σ (r − c) s over its products; the government collects p − r per unit.
        The observed equilibrium is taken as untaxed.

        Parameters
        ----------
        add : pandas.DataFrame, optional
            New products, one row each, in markets of the model: ``market_ids``,
            ``firm_ids`` (new firm ids are new firms), ``product_ids`` when the model has
            them (not one already in the market), every column the demand formulas read,
            ``nesting_ids`` for nested models (existing nests; with two-level nests the
            two nest columns the model read, upper level first, naming an (upper, lower)
            pair of the data), ``costs`` (or
            ``cost_formula=``), optionally ``xi`` (default 0; required with absorbed fixed
            effects, where it holds the fixed effects too: the product's mean utility is
            X1β + xi) and ``prices`` (a starting point only).
        remove : optional
            Products taken out: a boolean mask over the product data's rows (array or Series
            with its index), or a list of product ids (taken out of every solved market that
            has them) or ``(market_id, product_id)`` pairs.
        taxes : dict, optional
            ``{"unit": t, "ad_valorem": τ}`` (either or both): a number for every product,
            or one value per product, the product data's rows then ``add``'s rows (values of
            rows outside the solved markets or removed are not used); τ > −1.
        fixed : optional
            Products whose prices stay at their observed values, as ``remove``; the other
            products re-price (their first-order conditions alone are solved, while the fixed
            products' profits still count for their firms).
        costs : pandas.Series or array-like, optional
            Marginal costs of the product data's rows; default imputed (:meth:`costs`).
        cost_formula : str, optional
            Costs of new products without a ``costs`` column: the fitted values of an OLS
            regression of the product data's costs on this formula (e.g. ``"1 + hpwt +
            air"``), evaluated on ``add``.
        market_id : optional
            One market, a list, or None for all.
        market_size : str, float or pandas.Series, optional
            Scales profits, surplus and revenue (see :meth:`profits`); default per unit.
        firm_ids : Series, array-like or mapping, optional
            The firms after the change, as in :meth:`merger`: a mapping renames firms of the
            data or of ``add``, e.g. ``{"F2": "F1"}`` (F1 buys F2; new products of F2 in
            ``add`` go to F1 too), or one id per row of the product data (``add``'s rows keep
            their ``firm_ids``). Costs are still imputed under the firms before the change, so
            a merger combines with entry, exit, taxes and fixed prices in one call.
        ownership : {"monopoly", "single"} or callable, optional
            Who sets the prices after the change instead of (or, a callable profit weight
            ``kappa(f, g)``, on top of) ``firm_ids``, as in :meth:`merger`; it covers the added
            products too.
        firm_ids_pre : Series or array-like, optional
            The firms of the product data's rows that set the observed prices, in place of its
            ``firm_ids`` column.
        tol, max_iterations
            As in :meth:`equilibrium_prices`.
        bootstrap, level
            Draws from :meth:`bootstrap` and a coverage: the counterfactual is solved again
            at every draw, as in :meth:`merger`, and a ``BootstrappedCounterfactual`` (of
            ``blpmodels.results.counterfactual_bootstrap``) adds percentile intervals.

        Returns
        -------
        CounterfactualResults
            ``products`` and ``markets`` before, after and the change, ``incidence``,
            ``data`` after, and ``summary()``.

        Raises
        ------
        BLPInputError
            Before any share is computed: an unknown product or market, ``remove``/``fixed``
            or a tax of the wrong length, ``add`` missing a column or repeating a product,
            no firms, a product both removed and fixed, a ``firm_ids`` mapping naming a firm of
            neither the data nor ``add``, ``firm_ids`` beside a string ``ownership``; and as
            in :meth:`equilibrium_prices`.

        Warns
        -----
        ConvergenceWarning
            Markets whose prices did not converge (their values after are NaN).

        Examples
        --------
        Petrin's (2002) question: consumers' loss from taking the minivans out of 1984, the
        other cars re-priced:

        >>> gone = results.counterfactual(  # doctest: +SKIP
        ...     remove=(data["market_ids"] == 1984) & (data["mi"] == 1), market_id=1984,
        ...     market_size="households")
        >>> gone.markets["consumer_surplus_change"]  # doctest: +SKIP

        A unit tax of 0.01 on every cereal, and who pays it:

        >>> results.counterfactual(taxes={"unit": 0.01}).incidence  # doctest: +SKIP

        F1 buys F2 while a new product enters and a unit tax applies, in one equilibrium:

        >>> both = results.counterfactual(  # doctest: +SKIP
        ...     firm_ids={"F2": "F1"}, add=new_products, taxes={"unit": 0.01})
        """
        if bootstrap is not None or level != 0.95:
            arguments = dict(locals())
            del arguments["self"], arguments["bootstrap"], arguments["level"]
            method = "counterfactual"
            return counterfactual_with_intervals(self, bootstrap, level, arguments, method)
        _check_solver_options(tol, max_iterations)
        positions = self.demand.market_positions(market_id)
        plan = self._counterfactual_plan(
            positions,
            add,
            remove,
            taxes,
            fixed,
            costs,
            cost_formula,
            firm_ids_pre,
            (firm_ids, ownership),
        )
        sizes = self._counterfactual_sizes(market_size, positions)
        options = {"tol": tol, "max_iterations": max_iterations}
        pieces = [
            self._counterfactual_chunk(chunk, plan, options)
            for chunk in self.demand.chunks(positions)
        ]
        return self._counterfactual_record(pieces, plan, sizes)

    # ------------------------------------------------------------------ inputs
    def _counterfactual_plan(
        self,
        positions: np.ndarray,
        add: Any,
        remove: Any,
        taxes: Any,
        fixed: Any,
        costs: Any,
        cost_formula: Any,
        firm_ids_pre: Any,
        owners: tuple[Any, Any] = (None, None),
    ) -> CounterfactualPlan:
        """Check every argument (cheap checks first), then impute the costs."""
        design = self.model.design
        if firm_ids_pre is None and design.firm_ids is None:
            raise BLPInputError(
                "counterfactual() needs the firms that set the observed prices, but the product "
                f"data have no firm_ids column: {FIRM_IDS_PRE_HINT}"
            )
        firms = self._ownership(firm_ids_pre=firm_ids_pre)
        firm_ids, ownership = owners
        # Checked (a mapping naming unknown firms, firm_ids beside "monopoly", a bad κ) before
        # any work; the added products join the firms after the change below.
        on_rows = data_firm_mapping(firm_ids, add, firms)
        if on_rows is not None or ownership is not None:
            self._ownership(on_rows, ownership, firm_ids_pre)
        rows_post = firms if on_rows is None else self._ownership(on_rows, None, firm_ids_pre)
        solved = np.isin(design.layout.codes, positions)
        removed = self._product_mask(remove, "remove") & solved
        held = self._product_mask(fixed, "fixed") & solved
        if (removed & held).any():
            row = int(np.flatnonzero(removed & held)[0])
            raise BLPInputError(
                f"product {self.demand.product_labels(np.array([row]))[0]!r} in market "
                f"{design.market_ids[row]!r} is both removed and fixed"
            )
        added = None
        if add is not None:
            added = self._added_products(add, positions, removed, firms, cost_formula)
        n_added = 0 if added is None else len(added.frame)
        unit, ad_valorem = tax_values(taxes, design.nobs, n_added)
        if costs is not None:
            given = row_values(costs, design.data.index, "costs", design.market_ids)
        elif cost_formula is not None:
            given = self._full_costs(None, None, None, firm_ids_pre)
        else:
            self._imputing_firms(firm_ids_pre)
            rows, eta = self._markup_rows(
                design.layout.market_labels[positions], None, None, firm_ids_pre
            )
            given = np.full(design.nobs, np.nan)
            given[rows] = self._prices(rows) - eta
        new_costs = np.zeros(0)
        if added is not None:
            new_costs = added_costs(added.frame, given, design.data, cost_formula)
        pre = extended_firms(firms, added)
        labels = self.demand.product_labels(np.arange(design.nobs))
        if added is not None:
            labels = np.concatenate([np.asarray(labels, dtype=object), added.labels])
        post = post_ownership(pre, rows_post, added, firm_ids, ownership, labels)
        return CounterfactualPlan(
            removed,
            held,
            unit,
            ad_valorem,
            np.concatenate([given, new_costs]),
            pre,
            post,
            added,
        )

    def _product_mask(self, value: Any, name: str) -> np.ndarray:
        """Rows of the product data chosen by a boolean mask or by product ids."""
        design = self.model.design
        if value is None:
            return np.zeros(design.nobs, dtype=bool)
        if isinstance(value, pd.Series) and pd.api.types.is_bool_dtype(value.dtype):
            if not value.index.equals(design.data.index):
                raise BLPInputError(
                    f"{name}: a boolean Series must carry the product data's index "
                    f"({len(value)} values for {design.nobs} rows)"
                )
            return value.to_numpy(dtype=bool)
        array = np.asarray(value, dtype=object)
        if array.ndim == 1 and array.size and all(isinstance(v, (bool, np.bool_)) for v in array):
            if array.size != design.nobs:
                raise BLPInputError(
                    f"{name} has {array.size} values but the product data have {design.nobs} "
                    "rows: give one boolean per row, or a list of product ids"
                )
            return array.astype(bool)
        items = [value] if isinstance(value, (str, tuple)) or np.ndim(value) == 0 else value
        labels = pd.Series(self.demand.product_labels(np.arange(design.nobs)), dtype=object)
        markets = pd.Series(design.market_ids, dtype=object)
        out = np.zeros(design.nobs, dtype=bool)
        for item in items:
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise BLPInputError(f"{name}: pairs are (market_id, product_id), got {item!r}")
                hit = (markets == item[0]).to_numpy() & (labels == item[1]).to_numpy()
            else:
                hit = (labels == item).to_numpy()
            if not hit.any():
                raise BLPInputError(f"{name}: unknown product {item!r} (not in the product data)")
            out |= hit
        return out

    def _added_products(
        self,
        add: Any,
        positions: np.ndarray,
        removed: np.ndarray,
        firms: Ownership,
        cost_formula: Any,
    ) -> AddedProducts:
        """Check the new products' frame and build their utilities' pieces."""
        design, demand = self.model.design, self.demand
        frame = check_frame(add).copy()
        if frame.empty:
            raise BLPInputError("add has no rows")
        needed = ["market_ids", "firm_ids"]
        needed += sorted(demand.variables() - {"prices"})
        if design.product_ids is not None:
            needed.append("product_ids")
        nests = np.zeros(len(frame), dtype=np.intp)
        if isinstance(demand, TwoLevelDemand):
            # Both levels, in the columns the model read them from (upper first).
            nests = demand.lower_nest_codes(frame, list(design.nesting_columns))
        elif demand.nest_codes is not None and demand.rho is not None and demand.rho.size:
            needed.append("nesting_ids")
        if design.absorber is not None:
            needed.append("xi")
        if "costs" not in frame and cost_formula is None:
            needed.append("costs")
        require_columns(frame, needed)
        where = design.layout.market_positions(frame["market_ids"].to_numpy())
        outside = ~np.isin(where, positions)
        if outside.any():
            raise BLPInputError(
                f"add: market {frame['market_ids'].iloc[int(np.flatnonzero(outside)[0])]!r} is "
                "not among the markets solved (market_id=)"
            )
        labels = self._new_labels(frame, where, removed)
        if "nesting_ids" in needed:
            known = pd.Index(np.sort(pd.unique(design.nesting_ids)))
            nests = known.get_indexer(frame["nesting_ids"].to_numpy())
            if (nests < 0).any():
                bad = frame["nesting_ids"].iloc[int(np.flatnonzero(nests < 0)[0])]
                raise BLPInputError(f"add: unknown nest {bad!r}; the nests are {known.tolist()}")
        xi = column_numbers(frame, "xi") if "xi" in frame else np.zeros(len(frame))
        start = np.full(len(frame), np.nan)
        if "prices" in frame:
            start = column_numbers(frame, "prices")
        if "prices" not in frame:
            # The formulas read prices: any value will do, utilities move linearly from it.
            frame["prices"] = 0.0
        demand.check_linear(frame, "prices")
        x1, x2 = demand.rebuild(frame)
        d_x1, d_x2 = demand._column_derivatives(frame, "prices")
        return AddedProducts(
            frame,
            where,
            x1 @ demand.beta + xi,
            x2,
            d_x1,
            d_x2,
            nests,
            added_firm_codes(firms, frame["firm_ids"].to_numpy()),
            labels,
            start,
        )

    def _new_labels(self, frame: pd.DataFrame, where: np.ndarray, removed: np.ndarray) -> Any:
        """New products' labels, checked not to repeat a product kept in their market."""
        design = self.model.design
        if design.product_ids is None:
            # Without product ids products are positions: new ones follow the market's.
            counts = design.layout.mask.sum(axis=1)[where]
            order = pd.Series(where).groupby(where).cumcount().to_numpy()
            return counts + order
        labels = frame["product_ids"].to_numpy(dtype=object)
        keys = pd.MultiIndex.from_arrays([frame["market_ids"].to_numpy(dtype=object), labels])
        if keys.duplicated().any():
            first = keys[keys.duplicated()][0]
            raise BLPInputError(f"add repeats product {first[1]!r} in market {first[0]!r}")
        kept = pd.MultiIndex.from_arrays(
            [design.market_ids[~removed], design.product_ids[~removed]]
        )
        clash = keys.isin(kept)
        if clash.any():
            first = keys[clash][0]
            raise BLPInputError(
                f"add: market {first[0]!r} already has product {first[1]!r} (remove it, or give "
                "the new product another id)"
            )
        return labels

    def _counterfactual_sizes(self, market_size: Any, positions: np.ndarray) -> np.ndarray:
        """Market size of each solved market (read off its first product row)."""
        first = self.model.design.layout.index[positions, 0]
        return self._market_sizes(market_size, first)

    # ------------------------------------------------------------------ solving
    def _counterfactual_chunk(
        self, chunk: np.ndarray, plan: CounterfactualPlan, options: dict[str, Any]
    ) -> _ChunkResult:
        """Before and after in one chunk of markets."""
        priced = self.demand.priced(chunk)
        pre_state = priced.state(priced.prices)
        after = _widened(priced, chunk, plan, self.demand.beta)
        wide = after.priced.inputs.mask
        present = wide | after.pre_mask
        codes = np.where(present, after.take(plan.post.codes), 0)
        pre_codes = np.where(present, after.take(plan.firms.codes), 0)
        costs = np.where(present, after.take(plan.costs), 0.0)
        unit = np.where(wide, after.take(plan.unit), 0.0)
        ad_valorem = np.where(wide, after.take(plan.ad_valorem), 0.0)
        free = wide & ~after.take(np.concatenate([plan.fixed, np.zeros(after.n_added, bool)]))
        missing = wide & ~np.isfinite(costs)
        if missing.any():
            market = self.model.design.layout.market_labels[chunk[missing.any(axis=1)][0]]
            raise BLPInputError(f"costs are missing or not finite in market {market!r}")
        omega = ownership_matrices(codes, wide, plan.post.kappa)
        effective, taxed = equilibrium.taxed_first_order(costs, omega, unit, ad_valorem)
        solution = equilibrium.solve_prices(
            after.priced.state,
            effective,
            after.start,
            taxed,
            wide,
            fixed=wide & ~free,
            **options,
        )
        state = solution.state
        eta = np.where(wide, solution.prices - effective, 0.0)
        second = equilibrium.foc_jacobian(state, taxed, eta)
        eigenvalues = equilibrium.firm_hessian_max_eigenvalues(second, codes, free)
        passthrough = equilibrium.tax_passthrough(second, state.jacobian, taxed, ad_valorem, free)
        pre_shares = np.zeros(wide.shape)
        pre_shares[:, : pre_state.shares.shape[1]] = pre_state.shares
        return _ChunkResult(
            chunk=chunk,
            after=after,
            pre_state=pre_state,
            pre_shares=pre_shares,
            solution=solution,
            costs=costs,
            codes=codes,
            pre_codes=pre_codes,
            unit=unit,
            ad_valorem=ad_valorem,
            free=free,
            max_eigenvalue=_largest(eigenvalues),
            passthrough=passthrough,
        )

    # ------------------------------------------------------------------ the record
    def _counterfactual_record(
        self, pieces: list[_ChunkResult], plan: CounterfactualPlan, sizes: np.ndarray
    ) -> CounterfactualResults:
        products = pd.concat([self._chunk_products(piece, plan) for piece in pieces])
        positions = np.concatenate([piece.chunk for piece in pieces])
        labels = self.model.design.layout.market_labels[positions]
        markets = _market_frame(pieces, products, sizes, labels)
        products[["profits_pre", "profits_post"]] = (
            products[["profits_pre", "profits_post"]].to_numpy()
            * markets["size"].reindex(products.index.get_level_values(0)).to_numpy()[:, None]
        )
        products["profits_change"] = products["profits_post"] - products["profits_pre"]
        summed = products.groupby(level="market_ids", sort=False)
        revenue = (products["tax_post"] * products["shares_post"]).groupby(
            level="market_ids", sort=False
        ).sum() * markets["size"]
        profits = summed[["profits_pre", "profits_post"]].sum().reindex(markets.index)
        markets["profits_pre"] = profits["profits_pre"].to_numpy()
        markets["profits_post"] = profits["profits_post"].to_numpy()
        markets["profits_change"] = markets["profits_post"] - markets["profits_pre"]
        markets["tax_revenue"] = revenue.reindex(markets.index).to_numpy()
        markets["welfare_change"] = (
            markets["consumer_surplus_change"] + markets["profits_change"] + markets["tax_revenue"]
        )
        markets = markets.drop(columns="size")[_MARKET_COLUMNS]
        unsolved = ~markets["converged"].to_numpy()
        _blank_unsolved(markets, unsolved)
        failed = markets.index[unsolved]
        _blank_unsolved(products, products.index.get_level_values(0).isin(failed))
        if len(failed):
            warn_user(
                f"counterfactual prices did not converge in {len(failed)} of {len(markets)} "
                f"market(s): {failed[:10].tolist()}; their values after the change are NaN "
                "(see .markets['foc_norm'])",
                ConvergenceWarning,
            )
        data = pd.concat([self._chunk_data(piece, plan) for piece in pieces])
        return CounterfactualResults(products=products, markets=markets, data=data)

    def _chunk_products(self, piece: _ChunkResult, plan: CounterfactualPlan) -> pd.DataFrame:
        """Per-product frame of one chunk (profits per unit of market size)."""
        after = piece.after
        pre_mask = after.pre_mask
        present = pre_mask | after.priced.inputs.mask
        design = self.model.design
        market_labels = design.layout.market_labels[piece.chunk]
        t, slot = np.nonzero(present)
        source = after.source[t, slot]
        existing = source < design.nobs
        product_labels = np.empty(t.size, dtype=object)
        product_labels[existing] = self.demand.product_labels(source[existing])
        if plan.added is not None:
            product_labels[~existing] = plan.added.labels[source[~existing] - design.nobs]
        solution = piece.solution
        new_mask = after.priced.inputs.mask[t, slot]
        old_mask = pre_mask[t, slot]
        costs = piece.costs[t, slot]
        unit, rate = piece.unit[t, slot], piece.ad_valorem[t, slot]
        prices_pre = np.where(old_mask, after.base_prices[t, slot], np.nan)
        prices_post = np.where(new_mask, solution.prices[t, slot], np.nan)
        shares_pre = np.where(old_mask, piece.pre_shares[t, slot], 0.0)
        shares_post = np.where(new_mask, solution.state.shares[t, slot], 0.0)
        received = prices_post / (1.0 + rate) - unit
        margins = (prices_pre - costs, np.where(new_mask, received - costs, np.nan))
        status = np.where(~old_mask, "added", np.where(new_mask, "kept", "removed"))
        frame = pd.DataFrame(
            {
                "firm_ids": plan.post.labels[piece.codes[t, slot]],
                "firm_ids_pre": np.where(
                    old_mask, plan.firms.labels[piece.pre_codes[t, slot]], None
                ),
                "status": status,
                "fixed": new_mask & ~piece.free[t, slot],
                "costs": costs,
                "unit_tax": unit,
                "ad_valorem_tax": rate,
                **_before_after(
                    {
                        "prices": (prices_pre, prices_post),
                        "shares": (shares_pre, shares_post),
                        "margins": margins,
                        "profits": (
                            np.nan_to_num(margins[0]) * shares_pre,
                            np.nan_to_num(margins[1]) * shares_post,
                        ),
                    }
                ),
                "tax_post": np.where(new_mask, prices_post - received, np.nan),
                "passthrough": np.where(new_mask, piece.passthrough[t, slot], np.nan),
            },
            index=pd.MultiIndex.from_arrays(
                [market_labels[t], product_labels], names=["market_ids", "product_ids"]
            ),
        )
        return frame

    def _chunk_data(self, piece: _ChunkResult, plan: CounterfactualPlan) -> pd.DataFrame:
        """Product data after the change in one chunk: kept rows, then added ones."""
        design = self.model.design
        after = piece.after
        mask = after.priced.inputs.mask
        t, slot = np.nonzero(mask)
        source = after.source[t, slot]
        existing = source < design.nobs
        parts = [design.data.iloc[source[existing]]]
        if plan.added is not None and (~existing).any():
            parts.append(plan.added.frame.iloc[source[~existing] - design.nobs])
        frame = pd.concat(parts)
        order = np.concatenate([np.flatnonzero(existing), np.flatnonzero(~existing)])
        frame["prices"] = piece.solution.prices[t, slot][order]
        frame[design.shares_column] = piece.solution.state.shares[t, slot][order]
        frame["costs"] = piece.costs[t, slot][order]
        return frame


_MARKET_COLUMNS = [
    "converged",
    "foc_norm",
    "iterations",
    "hhi_pre",
    "hhi_post",
    "hhi_change",
    "consumer_surplus_pre",
    "consumer_surplus_post",
    "consumer_surplus_change",
    "profits_pre",
    "profits_post",
    "profits_change",
    "tax_revenue",
    "welfare_change",
    "max_hessian_eigenvalue_post",
]


@dataclass(frozen=True, eq=False)
class _Widened:
    """A chunk's markets after the change: removed slots masked, new products appended.

    ``source`` holds each slot's product row, ``[T, J + K]``: an estimation row (< N), N + a
    row of ``add``, or −1 (padding); ``pre_mask`` marks the products before the change,
    ``base_prices`` their observed prices and ``start`` where the price iteration starts.
    """

    priced: PricedMarkets
    source: np.ndarray
    pre_mask: np.ndarray
    base_prices: np.ndarray
    start: np.ndarray
    n_added: int

    def take(self, values: np.ndarray) -> np.ndarray:
        """Per-slot values of a per-product-row array (estimation rows then added rows)."""
        return values[np.where(self.source >= 0, self.source, 0)]


@dataclass(frozen=True, eq=False)
class _ChunkResult:
    chunk: np.ndarray
    after: _Widened
    pre_state: equilibrium.PriceState
    pre_shares: np.ndarray
    solution: equilibrium.EquilibriumSolution
    costs: np.ndarray
    codes: np.ndarray  # firms after the change
    pre_codes: np.ndarray  # firms before it
    unit: np.ndarray
    ad_valorem: np.ndarray
    free: np.ndarray
    max_eigenvalue: np.ndarray
    passthrough: np.ndarray


def _widened(
    priced: PricedMarkets, chunk: np.ndarray, plan: CounterfactualPlan, beta: np.ndarray
) -> _Widened:
    """The chunk's padded arrays with removed products masked and new ones in new slots."""
    inputs = priced.inputs
    mask = inputs.mask
    n_rows = plan.remove.size
    rows = np.where(mask, inputs.rows, 0)
    kept = mask & ~plan.remove[rows]
    source = np.where(mask, inputs.rows, -1)
    slots = _new_slots(chunk, plan.added)
    delta, mu, derivative = inputs.delta, inputs.mu, priced.derivative
    two_level = isinstance(inputs.nesting, TwoLevelNesting)
    prices = priced.prices
    nests = inputs.nesting.lower if two_level else inputs.nesting.codes
    start = prices
    new_mask = slots >= 0
    added = plan.added
    if added is not None and slots.shape[1]:
        pick = np.where(new_mask, slots, 0)
        shape = (*slots.shape, mu.shape[2])
        coefficients = inputs.coefficients
        # μ and ∂V/∂p of a new product for each agent of its market: X2 times the agent's
        # coefficients (which carry the demographics), as for the products in the data.
        new_mu = np.einsum("tik,tjk->tji", coefficients, added.x2[pick])
        new_derivative = (added.d_x1 @ beta)[pick][:, :, None] + np.einsum(
            "tik,tjk->tji", coefficients, added.d_x2[pick]
        )
        fill = new_mask[:, :, None]
        delta = np.concatenate([delta, np.where(new_mask, added.delta[pick], 0.0)], axis=1)
        mu = np.concatenate([mu, np.where(fill, np.broadcast_to(new_mu, shape), 0.0)], axis=1)
        derivative = np.concatenate(
            [derivative, np.where(fill, np.broadcast_to(new_derivative, shape), 0.0)], axis=1
        )
        costs = plan.costs[n_rows + pick]
        guess = _starting_prices(prices, plan.costs[rows], mask, costs)
        given = np.isfinite(added.prices[pick])
        start = np.concatenate(
            [prices, np.where(new_mask, np.where(given, added.prices[pick], guess), 0.0)], axis=1
        )
        # Utilities of new products were built at their frame's prices (0 where not given):
        # that is their base price, from which utilities move linearly.
        prices = np.concatenate(
            [prices, np.where(new_mask & given, added.prices[pick], 0.0)], axis=1
        )
        nests = np.concatenate([nests, np.where(new_mask, added.nests[pick], 0)], axis=1)
        source = np.concatenate([source, np.where(new_mask, n_rows + pick, -1)], axis=1)
    wide = np.concatenate([kept, new_mask], axis=1)
    nesting = inputs.nesting
    if two_level:
        nesting = replace(nesting, lower=np.where(wide, nests, 0))
    elif nesting.has_nests:
        nesting = Nesting.from_codes(nests, nesting.n_nests, nesting.rho)
    else:
        nesting = Nesting.unnested(wide.shape)
    widened = replace(
        inputs,
        delta=delta,
        mu=mu,
        mask=wide,
        nesting=nesting,
        rows=np.concatenate([inputs.rows, np.zeros(slots.shape, dtype=inputs.rows.dtype)], axis=1),
    )
    pre_mask = np.concatenate([mask, np.zeros(slots.shape, dtype=bool)], axis=1)
    base = np.concatenate([priced.prices, np.zeros(slots.shape)], axis=1)
    n_added = 0 if added is None else len(added.frame)
    # type(priced): two-level markets evaluate their shares with their own kernel.
    return _Widened(
        type(priced)(widened, prices, derivative), source, pre_mask, base, start, n_added
    )


def _new_slots(chunk: np.ndarray, added: AddedProducts | None) -> np.ndarray:
    """``[T, K]`` rows of ``add`` in each market of the chunk (−1 past a market's count)."""
    if added is None:
        return np.full((chunk.size, 0), -1)
    local = pd.Index(chunk).get_indexer(added.positions)
    here = np.flatnonzero(local >= 0)
    if not here.size:
        return np.full((chunk.size, 0), -1)
    order = pd.Series(local[here]).groupby(local[here]).cumcount().to_numpy()
    slots = np.full((chunk.size, int(order.max()) + 1), -1)
    slots[local[here], order] = here
    return slots


def _starting_prices(
    prices: np.ndarray, costs: np.ndarray, mask: np.ndarray, new_costs: np.ndarray
) -> np.ndarray:
    """New products start at their cost plus their market's mean observed markup."""
    markups = np.where(mask, prices - costs, 0.0)
    mean = markups.sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    return new_costs + np.where(np.isfinite(mean), mean, 0.0)[:, None]


def _market_frame(
    pieces: list[_ChunkResult], products: pd.DataFrame, sizes: np.ndarray, labels: np.ndarray
) -> pd.DataFrame:
    """Per market: convergence, HHI and surplus (sized) before and after; profits later."""
    hhi_pre, hhi_post, cs_pre, cs_post, positive = [], [], [], [], 0.0
    for piece in pieces:
        after = piece.after
        hhi_pre.append(equilibrium.hhi(piece.pre_shares, piece.pre_codes, after.pre_mask))
        state = piece.solution.state
        hhi_post.append(equilibrium.hhi(state.shares, piece.codes, after.priced.inputs.mask))
        for current, out in ((piece.pre_state, cs_pre), (state, cs_post)):
            values, share = surplus(
                current.probabilities,
                current.weights,
                current.product_mask,
                current.utility_derivative,
            )
            out.append(values)
            positive = max(positive, share)
    warn_positive_price_coefficients(positive)
    solutions = [piece.solution for piece in pieces]
    return pd.DataFrame(
        {
            "converged": np.concatenate([s.converged for s in solutions]),
            "foc_norm": np.concatenate([s.foc_norm for s in solutions]),
            "iterations": np.concatenate([s.iterations for s in solutions]),
            "size": sizes,
            **_before_after(
                {
                    "hhi": (np.concatenate(hhi_pre), np.concatenate(hhi_post)),
                    "consumer_surplus": (
                        np.concatenate(cs_pre) * sizes,
                        np.concatenate(cs_post) * sizes,
                    ),
                }
            ),
            "max_hessian_eigenvalue_post": np.concatenate([p.max_eigenvalue for p in pieces]),
        },
        index=pd.Index(labels, name="market_ids"),
    )


def _largest(eigenvalues: np.ndarray) -> np.ndarray:
    """Each market's largest profit-Hessian eigenvalue (NaN with no free product)."""
    finite = np.where(np.isnan(eigenvalues), -np.inf, eigenvalues)
    largest = finite.max(axis=1, initial=-np.inf)
    return np.where(np.isfinite(largest), largest, np.nan)
