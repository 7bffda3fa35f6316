"""The records counterfactuals return: :class:`Equilibrium` (prices solved under some costs and
owners) and :class:`MergerResults` (before and after a merger), with their text and HTML reports.

:class:`~blpmodels.results.counterfactuals.CounterfactualsMixin` builds them; they hold frames
and Series only, so they can be kept, pickled and compared without the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

import pandas as pd

from blpmodels import plotting

__all__ = ["Equilibrium", "MergerResults"]


@dataclass(frozen=True, eq=False)
class Equilibrium:
    """Bertrand–Nash equilibrium prices and shares (see :meth:`BLPResults.equilibrium_prices`).

    In a notebook the record shows as the table of :meth:`summary`.

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

    def _rows(self) -> list[tuple[str, str]]:
        markets, prices, markups = self.markets, self.prices, self.markups
        converged = markets["converged"].to_numpy()
        eigenvalues = markets["max_hessian_eigenvalue"]
        inside = self.shares.groupby(level="market_ids", sort=False).sum()
        rows = [
            ("Markets", f"{len(markets)}"),
            ("Products", f"{len(prices)}"),
            ("Converged", f"{int(converged.sum())} of {len(markets)} markets"),
            (
                "Price updates",
                f"max {markets['iterations'].max()}, mean {markets['iterations'].mean():.3g}",
            ),
            ("Max FOC norm", f"{markets['foc_norm'].max():.2g}"),
            ("Max profit-Hessian eigenvalue", f"{eigenvalues.max():.3g}"),
            ("Prices", f"mean {prices.mean():.4g}, min {prices.min():.4g}, max {prices.max():.4g}"),
            ("Markups p - c", f"mean {markups.mean():.4g}, min {markups.min():.4g}"),
            ("Inside share", f"mean {inside.mean():.4g} per market"),
        ]
        if not converged.all():
            rows.append(("Not converged", f"{markets.index[~converged][:10].tolist()}"))
        saddle = markets.index[converged & (eigenvalues.to_numpy() > 0)]
        if len(saddle):
            rows.append(("Not a profit maximum (positive eigenvalue)", f"{saddle[:10].tolist()}"))
        return rows

    def summary(self) -> str:
        """A short text report: convergence, second-order check, prices and markups.

        Examples
        --------
        >>> print(results.equilibrium_prices(market_id="C01Q1").summary())  # doctest: +SKIP
        Bertrand-Nash equilibrium
        ...
        Converged: 1 of 1 markets
        ...
        """
        return _text("Bertrand-Nash equilibrium", self._rows())

    def _repr_html_(self) -> str:
        return _html("Bertrand-Nash equilibrium", self._rows())


@dataclass(frozen=True, eq=False)
class MergerResults:
    """Before and after a merger (see :meth:`BLPResults.merger`).

    In a notebook the record shows as the table of :meth:`summary`.

    Attributes
    ----------
    products : pandas.DataFrame
        Per product (``(market_ids, product_ids)``): ``firm_ids_pre``, ``firm_ids_post`` and
        ``<quantity>_pre``, ``_post``, ``_change`` for prices, shares, markups (p − c) and
        profits (NaN after the merger in markets that did not converge).
    markets : pandas.DataFrame
        Per market: ``converged`` and ``foc_norm`` (the post-merger profit-gradient norm),
        ``hhi``, ``consumer_surplus`` and total ``profits``, each ``_pre``, ``_post`` and
        ``_change`` (NaN after the merger where prices did not converge), and
        ``max_hessian_eigenvalue_pre`` / ``_post``: the largest eigenvalue of any firm's
        profit Hessian at the observed and at the new prices (positive: those prices are no
        profit maximum).
    equilibrium : Equilibrium
        The post-merger equilibrium (convergence diagnostics, Hessian eigenvalues, data; in
        markets that did not converge, the prices with the smallest profit gradient found).
    left_out : tuple
        Markets ``markets="profit_maximizing"`` did not solve.
    """

    products: pd.DataFrame
    markets: pd.DataFrame
    equilibrium: Equilibrium
    left_out: tuple[Any, ...] = ()

    def plot(self, quantity: str = "prices", market_id: Any = None, **options: Any) -> Any:
        """Bars of the merger's effect on each product's prices (or ``"shares"``,
        ``"markups"``, ``"profits"``); see :func:`blpmodels.plotting.plot_merger`.

        Examples
        --------
        >>> ax = merger.plot("prices", market_id="C01Q1")  # doctest: +SKIP
        """
        return plotting.plot_merger(self, quantity, market_id, **options)

    def _rows(self) -> list[tuple[str, str]]:
        products, markets = self.products, self.markets
        converged = markets["converged"].to_numpy() if "converged" in markets else None
        solved = markets if converged is None else markets[converged]
        moved = products["firm_ids_pre"].astype(str) != products["firm_ids_post"].astype(str)
        firms = products.loc[moved, "firm_ids_pre"].astype(str).unique().tolist()
        change = 100 * products["prices_change"] / products["prices_pre"]
        merging = products["firm_ids_post"].isin(products.loc[moved, "firm_ids_post"])
        equilibrium = self.equilibrium.markets
        good = equilibrium[equilibrium["converged"]]
        rows = [
            ("Markets", f"{len(markets)}"),
            ("Products", f"{len(products)}"),
            ("Firms whose owner changed", f"{firms[:10]}"),
            (
                "Price change, merging firms' products",
                f"mean {change[merging].mean():.3g}%, median {change[merging].median():.3g}%",
            ),
            (
                "Price change, other products",
                f"mean {change[~merging].mean():.3g}%, median {change[~merging].median():.3g}%",
            ),
            (
                "HHI",
                f"mean {solved['hhi_pre'].mean():.0f} -> {solved['hhi_post'].mean():.0f} "
                f"(mean change {solved['hhi_change'].mean():.0f})",
            ),
            ("Consumer surplus", _total(solved, "consumer_surplus")),
            ("Profits", _total(solved, "profits")),
            (
                "Equilibrium",
                f"max FOC norm {good['foc_norm'].max():.2g}, max profit-Hessian eigenvalue "
                f"{good['max_hessian_eigenvalue'].max():.3g}",
            ),
        ]
        if converged is not None and not converged.all():
            unsolved = markets.index[~converged][:10].tolist()
            rows.append(("Not converged (NaN after the merger)", f"{unsolved}"))
        if self.left_out:
            rows.append(("Left out (no profit maximum at observed prices)", f"{self.left_out}"))
        return rows

    def summary(self) -> str:
        """A short text report: price changes, HHI, surplus and profits.

        Totals and HHI are over the markets that converged; markets that did not, and
        markets left out, are listed.

        Examples
        --------
        >>> print(merger.summary())  # doctest: +SKIP
        Merger simulation
        ...
        """
        return _text("Merger simulation", self._rows())

    def _repr_html_(self) -> str:
        return _html("Merger simulation", self._rows())


def _total(markets: pd.DataFrame, name: str) -> str:
    change, before = markets[f"{name}_change"].sum(), markets[f"{name}_pre"].sum()
    return f"total change {change:.6g} ({100 * change / before:.3g}%)"


def _text(title: str, rows: list[tuple[str, str]]) -> str:
    """A report's lines: the title, a rule, ``Markets: m    Products: n``, then a row a line."""
    (_, markets), (_, products) = rows[:2]
    lines = [title, "=" * 60, f"Markets: {markets}    Products: {products}"]
    return "\n".join(lines + [f"{label}: {value}" for label, value in rows[2:]])


def _html(title: str, rows: list[tuple[str, str]]) -> str:
    """The rows of a report as an HTML table, as statsmodels' ``Summary.as_html`` draws one."""
    cells = "\n".join(
        f'<tr><th style="text-align: left">{escape(label)}</th>'
        f'<td style="text-align: left">{escape(value)}</td></tr>'
        for label, value in rows
    )
    return f'<table class="simpletable">\n<caption>{escape(title)}</caption>\n{cells}\n</table>'
