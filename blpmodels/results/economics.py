"""Supply-side economics at the observed equilibrium: markups, costs, margins, profits,
concentration, consumer surplus, cost passthrough and the firms' profit Hessians.

:class:`EconomicsMixin` gives :class:`~blpmodels.results.BLPResults` these methods. They read
Bertrand–Nash first-order conditions off the estimated demand (the markup algebra is in
:mod:`blpmodels.kernel.equilibrium`), with the product data's firms or any other ownership
(:func:`blpmodels.kernel.ownership.resolve_ownership`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import check_columns, warn_user
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel import equilibrium
from blpmodels.kernel.ownership import Ownership, ownership_matrices, resolve_ownership
from blpmodels.results.base import ResultsRole, check_frame, row_values

__all__ = ["EconomicsMixin", "singular_markups", "surplus", "warn_positive_price_coefficients"]


class EconomicsMixin(ResultsRole):
    """Markups, costs, profits, HHI, consumer surplus and passthrough of :class:`BLPResults`."""

    def _ownership(
        self, firm_ids: Any = None, ownership: Any = None, firm_ids_pre: Any = None
    ) -> Ownership:
        """Who sets prices: ``firm_ids_pre`` (or the data's firms) changed by the arguments."""
        design = self.model.design
        return resolve_ownership(
            design.firm_ids,
            design.market_ids,
            design.data.index,
            firm_ids,
            ownership,
            product_labels=self.demand.product_labels(np.arange(design.nobs)),
            firm_ids_pre=firm_ids_pre,
        )

    def _product_series(self, values: np.ndarray, rows: np.ndarray, name: str) -> pd.Series:
        design = self.model.design
        index = pd.MultiIndex.from_arrays(
            [design.market_ids[rows], self.demand.product_labels(rows)],
            names=["market_ids", "product_ids"],
        )
        return pd.Series(values, index=index, name=name)

    def _market_series(self, values: np.ndarray, positions: np.ndarray, name: str) -> pd.Series:
        labels = self.model.design.layout.market_labels[positions]
        return pd.Series(values, index=pd.Index(labels, name="market_ids"), name=name)

    def _prices(self, rows: np.ndarray) -> np.ndarray:
        design = self.model.design
        self.demand.check_variable("prices")
        return np.asarray(design.data["prices"], dtype=np.float64)[rows]

    def _markup_rows(
        self, market_id: Any, firm_ids: Any, ownership: Any, firm_ids_pre: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Estimation rows of the chosen markets (data order) and their markups p − c."""
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        spec = self._ownership(firm_ids, ownership, firm_ids_pre)
        self.demand.check_variable("prices")
        codes = design.layout.pad(spec.codes)
        rows, values = [], []
        for chunk in self.demand.chunks(positions):
            jacobian, inputs, probabilities = self.demand.jacobian(chunk, "prices")
            omega = ownership_matrices(codes[chunk], inputs.mask, spec.kappa)
            eta = equilibrium.markups(jacobian, probabilities.shares, omega, inputs.mask)
            rows.append(inputs.rows[inputs.mask])
            values.append(eta[inputs.mask])
        rows_all, eta_all = np.concatenate(rows), np.concatenate(values)
        bad = ~np.isfinite(eta_all)
        if bad.any():
            raise singular_markups(pd.unique(design.market_ids[rows_all[bad]]))
        order = np.argsort(rows_all, kind="stable")
        return rows_all[order], eta_all[order]

    def markups(
        self,
        market_id: Any = None,
        *,
        firm_ids: Any = None,
        ownership: Any = None,
        firm_ids_pre: Any = None,
    ) -> pd.Series:
        """Bertrand–Nash markups p − c implied by the estimated demand at observed prices.

        They solve the first-order conditions s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0, with Ω the
        ownership matrix, in all markets at once.

        Parameters
        ----------
        market_id : optional
            One market, a list, or None for all.
        firm_ids : Series, array-like or mapping, optional
            Firms that set prices instead of the product data's ``firm_ids``: one id per
            product row (a Series with the product data's index, or an array in its order), or
            a mapping old firm → new firm (firms not named keep theirs).
        ownership : {"monopoly", "single"} or callable, optional
            ``"monopoly"``: one firm per market; ``"single"``: each product its own firm; a
            callable ``kappa(f, g)``: the weight firm f puts on firm g's profits (partial or
            common ownership; only κ(f, g)/κ(f, f) matters).
        firm_ids_pre : Series or array-like, optional
            The firms that set the observed prices, one id per product row (a Series with the
            product data's index, or an array in its order), in place of the product data's
            ``firm_ids`` column: a model built without firms needs no refit. A ``firm_ids``
            mapping renames these firms. Every supply-side method takes it.

        Returns
        -------
        pandas.Series
            Markups labelled by ``(market_ids, product_ids)``.

        Raises
        ------
        BLPInputError
            Neither a ``firm_ids`` column nor ``firm_ids_pre`` when firms are needed (the
            message says what to pass), unknown or missing firm ids, a bad ownership
            callable, unknown markets, no ``prices`` column in the model.

        Examples
        --------
        With ``results`` from the IV + fixed-effects logit of Mixtape exercise 1 (firms in a
        ``firm_ids`` column), single-product firms' logit markups are 1/(−α(1 − s)):

        >>> markups = results.markups(ownership="single")  # doctest: +SKIP
        >>> alpha = results.params["prices"]  # doctest: +SKIP
        >>> expected = -1 / (alpha * (1 - data["shares"].to_numpy()))  # doctest: +SKIP
        >>> bool(np.allclose(markups, expected))  # doctest: +SKIP
        True

        A model built without a ``firm_ids`` column takes the firms at call time:

        >>> firms = data["product_ids"].str[:2]  # doctest: +SKIP
        >>> same = results.markups(firm_ids_pre=firms)  # doctest: +SKIP
        >>> bool(np.allclose(same, results.markups()))  # doctest: +SKIP
        True
        """
        rows, eta = self._markup_rows(market_id, firm_ids, ownership, firm_ids_pre)
        return self._product_series(eta, rows, "markups")

    def costs(
        self,
        market_id: Any = None,
        *,
        firm_ids: Any = None,
        ownership: Any = None,
        firm_ids_pre: Any = None,
    ) -> pd.Series:
        """Marginal costs c = p − markup, imputed from Bertrand–Nash pricing.

        Parameters
        ----------
        market_id, firm_ids, ownership, firm_ids_pre
            As in :meth:`markups`.

        Returns
        -------
        pandas.Series
            Costs labelled by ``(market_ids, product_ids)``.

        Raises
        ------
        BLPInputError
            As in :meth:`markups`.

        Examples
        --------
        Mixtape exercise 1, supplemental 3 (IV + fixed-effects logit, firms from the first
        two characters of ``product_ids``):

        >>> costs = results.costs()  # doctest: +SKIP
        >>> round(float(costs.mean()), 4)  # doctest: +SKIP
        0.087
        """
        rows, eta = self._markup_rows(market_id, firm_ids, ownership, firm_ids_pre)
        return self._product_series(self._prices(rows) - eta, rows, "costs")

    def margins(
        self,
        market_id: Any = None,
        *,
        firm_ids: Any = None,
        ownership: Any = None,
        firm_ids_pre: Any = None,
    ) -> pd.Series:
        """Lerner indices (p − c)/p.

        Parameters
        ----------
        market_id, firm_ids, ownership, firm_ids_pre
            As in :meth:`markups`.

        Returns
        -------
        pandas.Series
            Margins labelled by ``(market_ids, product_ids)``.

        Raises
        ------
        BLPInputError
            As in :meth:`markups`, and prices that are not positive.

        Examples
        --------
        >>> margins = results.margins(market_id="C01Q1")  # doctest: +SKIP
        >>> bool((margins > 0).all())  # doctest: +SKIP
        True
        """
        rows, eta = self._markup_rows(market_id, firm_ids, ownership, firm_ids_pre)
        prices = self._prices(rows)
        if (prices <= 0).any():
            market = self.model.design.market_ids[rows[np.flatnonzero(prices <= 0)[0]]]
            raise BLPInputError(
                f"column 'prices' has prices <= 0 (first in market {market!r}): margins "
                "(p − c)/p need positive prices; use markups() instead"
            )
        return self._product_series(eta / prices, rows, "margins")

    def profits(
        self,
        market_id: Any = None,
        *,
        firm_ids: Any = None,
        ownership: Any = None,
        market_size: Any = None,
        firm_ids_pre: Any = None,
    ) -> pd.Series:
        """Variable profits (p − c)·s per product, per unit of market size unless sized.

        Parameters
        ----------
        market_id, firm_ids, ownership, firm_ids_pre
            As in :meth:`markups`.
        market_size : str, float or pandas.Series, optional
            A product-data column, one number, or a Series indexed by ``market_ids``;
            profits are then (p − c)·s·size.

        Returns
        -------
        pandas.Series
            Profits labelled by ``(market_ids, product_ids)``.

        Raises
        ------
        BLPInputError
            As in :meth:`markups`, and market sizes that are missing, not positive or not
            finite.

        Examples
        --------
        Variable profits per market, in dollars per quarter (Mixtape exercise 1):

        >>> profits = results.profits(market_size="market_size")  # doctest: +SKIP
        >>> round(float(profits.groupby("market_ids").sum()["C01Q1"]))  # doctest: +SKIP
        810884
        """
        rows, eta = self._markup_rows(market_id, firm_ids, ownership, firm_ids_pre)
        sizes = self._market_sizes(market_size, rows)
        values = eta * self.model.design.shares[rows] * sizes
        return self._product_series(values, rows, "profits")

    def _market_sizes(self, market_size: Any, rows: np.ndarray) -> np.ndarray:
        """Market size of each row: 1, a column, a number or a Series by market id."""
        return _row_market_sizes(self.model.design, market_size, rows)

    def hhi(
        self,
        market_id: Any = None,
        *,
        firm_ids: Any = None,
        ownership: str | None = None,
        data: pd.DataFrame | None = None,
        firm_ids_pre: Any = None,
    ) -> pd.Series:
        """Herfindahl–Hirschman index per market, on shares within the inside goods.

        HHI = 10,000 Σ_f (S_f / S)², S_f firm f's share and S the inside share (the sum
        of the products' shares), so one firm gives 10,000 whatever the outside good's share.
        pyblp 1.3.0's ``compute_hhi`` computes the same index: its code divides each firm's
        share by the inside share, although the formula in its docstring does not show it.

        Parameters
        ----------
        market_id : optional
            One market, a list, or None for all (or all markets of ``data``).
        firm_ids, ownership, firm_ids_pre
            As in :meth:`markups` (profit weights do not enter the index).
        data : pandas.DataFrame, optional
            Changed product data: shares are predicted there (ξ held).

        Returns
        -------
        pandas.Series
            Indices labelled by ``market_ids``.

        Raises
        ------
        BLPInputError
            As in :meth:`markups`, and bad ``data`` as in :meth:`predict`.

        Examples
        --------
        >>> results.hhi(ownership="monopoly").unique().tolist()  # doctest: +SKIP
        [10000.0]
        """
        design = self.model.design
        spec = self._ownership(firm_ids, None if callable(ownership) else ownership, firm_ids_pre)
        rows, positions = self._data_markets(data, market_id)
        codes = design.layout.pad(spec.codes)
        values = []
        for chunk in self.demand.chunks(positions):
            if data is None:
                mask = design.layout.mask[chunk]
                shares = np.where(mask, design.shares[design.layout.index[chunk]], 0.0)
            else:
                inputs = self.demand.inputs(chunk, data, rows)
                self.demand.rows_frame(inputs.rows[inputs.mask], data, rows)
                mask, shares = inputs.mask, inputs.probabilities().shares
            values.append(equilibrium.hhi(shares, codes[chunk], mask))
        return self._market_series(np.concatenate(values), positions, "hhi")

    def _data_markets(
        self, data: pd.DataFrame | None, market_id: Any
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Estimation rows of ``data`` (None without data) and the markets asked for: with
        data, those it covers (and ``market_id`` among them)."""
        if data is None:
            return None, self.demand.market_positions(market_id)
        layout = self.model.design.layout
        rows = self.model.design.match_rows(check_frame(data))
        covered = np.unique(layout.codes[rows])
        if market_id is None:
            return rows, covered
        positions = self.demand.market_positions(market_id)
        missing = positions[~np.isin(positions, covered)]
        if missing.size:
            labels = layout.market_labels[missing]
            raise BLPInputError(f"market_id {labels[:5].tolist()} not in the data passed")
        return rows, positions

    def consumer_surplus(
        self, data: pd.DataFrame | None = None, *, market_id: Any = None
    ) -> pd.Series:
        """Expected consumer surplus per market, per unit of market size.

        CS_t = Σ_i w_i log(1 + Σ_h e^{IV_hi}) / (−α_i), with α_i agent i's price coefficient
        (nests and random coefficients included); ξ and fixed effects are held at their
        estimates. Differences between two calls (e.g. after a merger) are the
        compensating variation of the price changes.

        Parameters
        ----------
        data : pandas.DataFrame, optional
            Changed product data (complete markets): the counterfactual surplus.
        market_id : optional
            One market, a list, or None for all (or all markets of ``data``).

        Returns
        -------
        pandas.Series
            Surplus labelled by ``market_ids``.

        Raises
        ------
        BLPInputError
            The price coefficient differs across products (prices enter through a
            transformation such as ``log(prices)`` or an interaction): money-metric surplus
            needs one price coefficient per agent; bad ``data`` as in :meth:`predict`.

        Warns
        -----
        UserWarning
            Some agents have a positive price coefficient (a normal random coefficient on
            price): their log-sum divided by −α_i is negative and is included, as pyblp does.

        Examples
        --------
        >>> before = results.consumer_surplus()  # doctest: +SKIP
        >>> dearer = data.assign(prices=data["prices"] * 1.1)  # doctest: +SKIP
        >>> bool((results.consumer_surplus(dearer) < before).all())  # doctest: +SKIP
        True
        """
        rows, positions = self._data_markets(data, market_id)
        self.demand.check_variable("prices", data)
        values, positive = [], 0.0
        for chunk in self.demand.chunks(positions):
            inputs = self.demand.inputs(chunk, data, rows)
            frame = self.demand.rows_frame(inputs.rows[inputs.mask], data, rows)
            derivative = self.demand.utility_derivative(
                inputs, "prices", frame, estimation=data is None
            )
            probabilities = inputs.probabilities()
            market_surplus, share = surplus(probabilities, inputs.weights, inputs.mask, derivative)
            values.append(market_surplus)
            positive = max(positive, share)
        warn_positive_price_coefficients(positive)
        return self._market_series(np.concatenate(values), positions, "consumer_surplus")

    def passthrough(
        self,
        market_id: Any = None,
        *,
        firm_ids: Any = None,
        ownership: Any = None,
        firm_ids_pre: Any = None,
    ) -> pd.DataFrame:
        """Cost passthrough ∂p_j/∂c_k (row j, column k) at the observed equilibrium.

        The implicit-function derivative of the first-order conditions
        F(p, c) = s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0, with exact second derivatives of the shares:
        ∂p/∂c = (∂F/∂p)⁻¹ (Ω ⊙ (∂s/∂p)ᵀ). Costs are those implied by the same ownership.

        Parameters
        ----------
        market_id : optional
            One market (a J×J frame), a list, or None (stacked, rows labelled by
            ``(market_ids, product_ids)``).
        firm_ids, ownership, firm_ids_pre
            As in :meth:`markups`.

        Returns
        -------
        pandas.DataFrame

        Raises
        ------
        BLPInputError
            As in :meth:`markups`, and utilities that are not linear in prices.

        Examples
        --------
        >>> passthrough = results.passthrough("C01Q1")  # doctest: +SKIP
        >>> round(float(passthrough.loc["F1B04", "F1B04"]), 4)  # doctest: +SKIP
        0.9877
        """
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        spec = self._ownership(firm_ids, ownership, firm_ids_pre)
        codes = design.layout.pad(spec.codes)
        pieces = []
        for chunk in self.demand.chunks(positions):
            priced = self.demand.priced(chunk)
            state = priced.state(priced.prices)
            omega = ownership_matrices(codes[chunk], state.product_mask, spec.kappa)
            eta = equilibrium.markups(state.jacobian, state.shares, omega, state.product_mask)
            second = equilibrium.foc_jacobian(state, omega, eta)
            matrices = equilibrium.passthrough(second, state.jacobian, omega, state.product_mask)
            for t in range(chunk.size):
                mask = state.product_mask[t]
                rows = priced.inputs.rows[t][mask]
                pieces.append(
                    (
                        design.layout.market_labels[chunk[t]],
                        self._market_frame(matrices[t][np.ix_(mask, mask)], rows),
                    )
                )
        return self._stack(pieces)

    def profit_hessians(
        self,
        market_id: Any,
        *,
        firm_ids: Any = None,
        ownership: Any = None,
        costs: Any = None,
        firm_ids_pre: Any = None,
    ) -> dict[Any, pd.DataFrame]:
        """Each firm's profit Hessian in its own prices, ∂²π_f/∂p_j∂p_k, in one market.

        π_f = Σ_g κ(f, g)/κ(f, f) Σ_{k∈g} (p_k − c_k) s_k (its own products' profits under
        standard ownership). At an equilibrium, negative definite Hessians mean the
        first-order conditions pick profit maxima.

        Parameters
        ----------
        market_id
            One market.
        firm_ids, ownership, firm_ids_pre
            As in :meth:`markups`.
        costs : pandas.Series or array-like, optional
            Marginal costs per product row (aligned with the product data); default
            :meth:`costs` under the same ownership.

        Returns
        -------
        dict
            Firm id → J_f×J_f DataFrame labelled by ``product_ids``.

        Raises
        ------
        BLPInputError
            As in :meth:`passthrough`; not a single market; bad costs.

        Examples
        --------
        >>> hessians = results.profit_hessians("C01Q1")  # doctest: +SKIP
        >>> all(np.linalg.eigvalsh(h).max() < 0 for h in hessians.values())  # doctest: +SKIP
        True
        """
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        if positions.size != 1:
            raise BLPInputError("profit_hessians() takes a single market_id")
        spec = self._ownership(firm_ids, ownership, firm_ids_pre)
        priced = self.demand.priced(positions)
        state = priced.state(priced.prices)
        mask = state.product_mask
        omega = ownership_matrices(design.layout.pad(spec.codes)[positions], mask, spec.kappa)
        if costs is None:
            eta = equilibrium.markups(state.jacobian, state.shares, omega, mask)
        else:
            cost_rows = row_values(costs, design.data.index, "costs", design.market_ids)
            eta = np.where(mask, priced.prices - cost_rows[priced.inputs.rows], 0.0)
        hessian = equilibrium.foc_jacobian(state, omega, eta)[0]
        rows = priced.inputs.rows[0][mask[0]]
        codes = spec.codes[rows]
        block = hessian[np.ix_(mask[0], mask[0])]
        out = {}
        for code in pd.unique(codes):
            own = codes == code
            out[spec.labels[code]] = self._market_frame(block[np.ix_(own, own)], rows[own])
        return out

    def approximate_prices(
        self,
        firm_ids: Any = None,
        *,
        ownership: Any = None,
        costs: Any = None,
        market_id: Any = None,
        firm_ids_pre: Any = None,
    ) -> pd.Series:
        """Prices after a change of owners or costs, approximated without solving for them.

        p* ≈ c* + η*, with η* = −(Ω* ⊙ (∂s/∂p)ᵀ)⁻¹ s the markups under the new owners Ω*
        at the observed shares and price derivatives, as if those did not move (Hausman,
        Leonard and Zona, 1994; Werden, 1997): pyblp's ``compute_approximate_prices``. A
        quick first look; :meth:`merger` and :meth:`equilibrium_prices` solve for the new
        equilibrium, where shares and their derivatives move with prices.

        Parameters
        ----------
        firm_ids, ownership
            Who sets prices after the change, as in :meth:`markups` (e.g. ``{"F2": "F1"}``);
            default the firms at the observed prices (giving back the observed prices).
        costs : pandas.Series or array-like, optional
            Marginal costs c* per product row, aligned with the product data; default
            :meth:`costs` under the firms at the observed prices.
        market_id : optional
            One market, a list, or None for all.
        firm_ids_pre : Series or array-like, optional
            As in :meth:`markups`: the firms at the observed prices, in place of the product
            data's ``firm_ids`` (the imputed costs use them).

        Returns
        -------
        pandas.Series
            Approximate prices labelled by ``(market_ids, product_ids)``.

        Raises
        ------
        BLPInputError
            As in :meth:`markups`; costs not aligned with the product data or not finite.

        Examples
        --------
        F1 buys F2 in Mixtape exercise 1 (logit). Rivals keep their observed prices, and
        the merging firms' prices overshoot the solved ones (10.2% against 6.65% on average):
        their markup −1/(α(1 − S_f)) is taken at the merged firm's observed share S_f, which
        falls once its prices rise.

        >>> approximate = results.approximate_prices({"F2": "F1"})  # doctest: +SKIP
        >>> merger = results.merger({"F2": "F1"})  # doctest: +SKIP
        >>> merging = merger.products["firm_ids_pre"].isin(["F1", "F2"])  # doctest: +SKIP
        >>> solved = merger.products["prices_post"]  # doctest: +SKIP
        >>> bool((approximate[merging] > solved[merging]).all())  # doctest: +SKIP
        True
        >>> change = 100 * (approximate / merger.products["prices_pre"] - 1)  # doctest: +SKIP
        >>> round(float(change[merging].mean()), 1)  # doctest: +SKIP
        10.2
        """
        rows, new_markups = self._markup_rows(market_id, firm_ids, ownership, firm_ids_pre)
        if costs is None:
            try:
                _, observed = self._markup_rows(market_id, None, None, firm_ids_pre)
            except BLPInputError as error:
                raise BLPInputError(f"{error}; or pass costs=") from error
            base = self._prices(rows) - observed
        else:
            design = self.model.design
            base = row_values(costs, design.data.index, "costs", design.market_ids)[rows]
        return self._product_series(base + new_markups, rows, "prices")


def _row_market_sizes(design: Any, market_size: Any, rows: np.ndarray) -> np.ndarray:
    """Market size of each estimation row ``rows`` of ``design``: 1, a column, a number or
    a Series by market id (checked positive and finite)."""
    if market_size is None:
        return np.ones(rows.size)
    if isinstance(market_size, str):
        check_columns(design.data, [market_size])
        sizes = pd.to_numeric(design.data[market_size], errors="coerce").to_numpy()[rows]
        what = f"column {market_size!r}"
    elif isinstance(market_size, pd.Series):
        sizes = market_size.reindex(design.market_ids[rows]).to_numpy(dtype=np.float64)
        what = "market_size"
        if np.isnan(sizes).any():
            market = design.market_ids[rows[np.flatnonzero(np.isnan(sizes))[0]]]
            raise BLPInputError(f"market_size has no value for market {market!r}")
    elif isinstance(market_size, (int, float, np.number)) and not isinstance(market_size, bool):
        sizes = np.full(rows.size, float(market_size))
        what = "market_size"
    else:
        raise BLPInputError(
            "market_size must be a column name, a number or a Series indexed by market_ids, "
            f"got {type(market_size).__name__}"
        )
    bad = ~np.isfinite(sizes) | (sizes <= 0)
    if bad.any():
        market = design.market_ids[rows[np.flatnonzero(bad)[0]]]
        raise BLPInputError(
            f"{what}: market sizes must be positive numbers (first bad in market {market!r})"
        )
    return sizes


def singular_markups(markets: Any) -> BLPInputError:
    """The error for markets whose first-order conditions do not determine markups."""
    return BLPInputError(
        f"the first-order conditions are singular in markets {np.asarray(markets)[:5].tolist()}: "
        "markups are not determined there (does demand respond to prices?)"
    )


def surplus(
    probabilities: Any, weights: np.ndarray, mask: np.ndarray, derivative: np.ndarray
) -> tuple[np.ndarray, float]:
    """Surplus per market and the largest weight share of agents with a positive α."""
    alpha = equilibrium.agent_price_coefficients(derivative, mask, weights)
    positive = (np.where(alpha > 0, weights, 0.0).sum(axis=1) / weights.sum(axis=1)).max()
    values = equilibrium.consumer_surplus(probabilities.log_denominator, weights, alpha)
    return values, float(positive)


def warn_positive_price_coefficients(share: float) -> None:
    """Say that agents with a positive price coefficient are in the surplus, as pyblp does."""
    if share > 0:
        warn_user(
            f"some agents have a positive price coefficient (up to {100 * share:.3g}% of a "
            "market's weight): their surplus log-sum/(−α) is negative and is included",
            UserWarning,
        )
