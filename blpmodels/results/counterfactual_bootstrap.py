"""Uncertainty of counterfactuals: a merger or an equilibrium solved again at every parametric
bootstrap draw, with percentile intervals over the draws.

``results.merger(..., bootstrap=bootstrapped)`` and ``results.equilibrium_prices(...,
bootstrap=bootstrapped)`` come here. Each draw θ_b gets its own economy from
:meth:`~blpmodels.results.bootstrap.BootstrappedResults.results_at`: δ_b (so ξ_b) recovered
from the observed shares and marginal costs c_b = p − η(θ_b) from the observed prices, both at
θ_b; the data, the agents and any costs the caller gives are held. The counterfactual is then
solved at the draw exactly as at the estimates (the same method, called on the draw's
results), so the intervals carry the uncertainty of θ through ξ, the costs and the new
equilibrium. Draws that fail (an error, or prices that do not converge in some market) are
counted and reported, never dropped silently. Any other counterfactual method gets the same
treatment through :meth:`~blpmodels.results.bootstrap.BootstrappedResults.apply`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import warn_user
from blpmodels.exceptions import BLPInputError, ConvergenceWarning
from blpmodels.results.bootstrap import BootstrappedResults, DrawOutcomes
from blpmodels.results.records import Equilibrium, MergerResults

__all__ = [
    "BootstrappedCounterfactual",
    "BootstrappedEquilibrium",
    "BootstrappedMerger",
    "check_bootstrap",
    "counterfactual_with_intervals",
    "equilibrium_with_intervals",
    "merger_with_intervals",
    "percentile_interval",
]

#: Per-product merger quantities whose changes get intervals.
MERGER_PRODUCTS = ("prices", "shares", "markups", "profits")
#: Per-market merger quantities whose changes get intervals.
MERGER_MARKETS = ("hhi", "consumer_surplus", "profits")
#: Per-product equilibrium quantities that get intervals.
EQUILIBRIUM_PRODUCTS = ("prices", "shares", "costs", "markups")


def check_level(level: Any) -> float:
    """The coverage of an interval, strictly between 0 and 1."""
    if (
        isinstance(level, (bool, np.bool_))
        or not isinstance(level, (int, float, np.floating))
        or not 0.0 < float(level) < 1.0
    ):
        raise BLPInputError(f"level must be a number in (0, 1), e.g. 0.95; got {level!r}")
    return float(level)


def check_bootstrap(results: Any, bootstrap: Any, level: Any) -> float:
    """Raise unless ``bootstrap`` holds draws around these very ``results`` and ``level`` is a
    coverage; return the level."""
    level = check_level(level)
    if not isinstance(bootstrap, BootstrappedResults):
        raise BLPInputError(
            "bootstrap must be the BootstrappedResults of results.bootstrap(draws, seed), got "
            f"{type(bootstrap).__name__}"
        )
    if bootstrap.results is not getattr(results, "_results", results):
        raise BLPInputError(
            "bootstrap holds draws around other results: call bootstrap() on the results whose "
            "counterfactual you compute"
        )
    return level


def percentile_interval(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis, NaN draws (failed) left out.

    Examples
    --------
    >>> low, high = percentile_interval(np.array([[1.0], [2.0], [np.nan], [3.0]]), 0.5)
    >>> low.tolist(), high.tolist()
    ([1.5], [2.5])
    """
    tail = 50.0 * (1.0 - check_level(level))
    values = np.asarray(draws, dtype=np.float64)
    with warnings.catch_warnings():
        # A column whose draws all failed has no interval: NaN, without numpy's warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanpercentile(values, tail, axis=0)
        high = np.nanpercentile(values, 100.0 - tail, axis=0)
    return low, high


def _stack(frames: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Frames of the draws one under the other, the draw as the outer index level."""
    return pd.concat(frames, names=["draw"])


def _wide(stacked: pd.DataFrame, column: str, index: pd.Index, draws: int) -> np.ndarray:
    """``draws × len(index)`` values of one column, NaN for draws that raised."""
    if stacked.empty:
        return np.full((draws, len(index)), np.nan)
    table = stacked[column].astype(np.float64).unstack(level="draw")
    table = table.reindex(index=index, columns=range(draws))
    return table.to_numpy(dtype=np.float64).T


def _interval_columns(
    point: pd.DataFrame, stacked: pd.DataFrame, names: tuple[str, ...], draws: int, level: float
) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for name in names:
        low, high = percentile_interval(_wide(stacked, name, point.index, draws), level)
        columns[name] = point[name].to_numpy(dtype=np.float64)
        columns[f"{name}_lower"], columns[f"{name}_upper"] = low, high
    return columns


def _failed_by_market(markets: pd.DataFrame, draws: pd.DataFrame, failures: dict) -> pd.Series:
    """Per market of ``markets``: draws that raised or whose prices did not converge there."""
    failed = pd.Series(len(failures), index=markets.index, dtype=np.int64)
    if not draws.empty:
        unsolved = ~draws["converged"].astype(bool)
        counts = unsolved.groupby(level="market_ids", sort=False).sum()
        failed += counts.reindex(markets.index, fill_value=0).astype(np.int64)
    return failed


def _failed_draws(markets: pd.DataFrame, draws: pd.DataFrame, failures: dict) -> int:
    """Draws that raised, or whose prices did not converge in a market the point estimate
    solved."""
    failed = set(failures)
    if not draws.empty:
        solved = markets.index[markets["converged"].to_numpy(dtype=bool)]
        inside = draws.index.get_level_values("market_ids").isin(solved)
        unsolved = ~draws["converged"].to_numpy(dtype=bool) & inside
        failed |= set(draws.index.get_level_values("draw")[unsolved].tolist())
    return len(failed)


def _warn_failed(what: str, failed: int, draws: int, failures: dict[int, str]) -> None:
    if not failed:
        return
    example = f"; e.g. draw {next(iter(failures))}: {next(iter(failures.values()))}"
    warn_user(
        f"{what} failed at {failed} of {draws} bootstrap draws (an error, or prices that did not "
        f"converge in some market{example if failures else ''}): the intervals are over the "
        "other draws; see .failed_draws and the draws_failed columns",
        ConvergenceWarning,
    )


@dataclass(frozen=True, eq=False, kw_only=True)
class _DrawRecords:
    """The draws' records kept beside a point estimate (keyword-only fields, so that they
    follow the point estimate's own): the attributes the bootstrapped classes document."""

    draws_products: pd.DataFrame = field(default_factory=pd.DataFrame)
    draws_markets: pd.DataFrame = field(default_factory=pd.DataFrame)
    failures: dict[int, str] = field(default_factory=dict)
    draw_warnings: dict[str, int] = field(default_factory=dict)
    draws: int = 0
    level: float = 0.95

    @property
    def failed_draws(self) -> int:
        """Draws that raised, or whose prices did not converge in a market the point estimate
        solved."""
        return _failed_draws(self.markets, self.draws_markets, self.failures)


# ----------------------------------------------------------------------------- mergers
@dataclass(frozen=True, eq=False)
class BootstrappedMerger(MergerResults, _DrawRecords):
    """A merger simulation with percentile intervals over parametric bootstrap draws.

    The point estimates are those of :class:`~blpmodels.MergerResults` (``products``,
    ``markets``, ``equilibrium``); the draws' merger simulations are kept whole, so intervals
    at any level come from :meth:`product_intervals`, :meth:`market_intervals` and
    :meth:`summary_intervals`, and ``plot(intervals=True)`` draws them.

    Attributes
    ----------
    draws_products : pandas.DataFrame
        The ``products`` frame of every draw, the draw as the outer index level (draws that
        raised are absent).
    draws_markets : pandas.DataFrame
        The ``markets`` frame of every draw, likewise.
    failures : dict
        Draw → error message, for draws whose merger raised.
    draw_warnings : dict
        Warning text → number of draws that raised it (kept quiet inside the draws).
    draws : int
        Number of bootstrap draws.
    level : float
        Default coverage of the intervals.
    """

    def _failed_by_market(self) -> pd.Series:
        return _failed_by_market(self.markets, self.draws_markets, self.failures)

    def product_intervals(self, level: float | None = None) -> pd.DataFrame:
        """Per product: the changes of prices, shares, markups and profits with their
        percentile intervals over the draws.

        Parameters
        ----------
        level : float, optional
            Coverage (default: the one given to ``merger``).

        Returns
        -------
        pandas.DataFrame
            Indexed like ``products``: ``<quantity>_change`` (the point estimate),
            ``_change_lower`` and ``_change_upper``, and ``draws_failed`` (draws left out
            for the product's market).

        Examples
        --------
        >>> merger.product_intervals()[["prices_change", "prices_change_lower"]]  # doctest: +SKIP
        """
        level = self.level if level is None else check_level(level)
        names = tuple(f"{name}_change" for name in MERGER_PRODUCTS)
        columns = _interval_columns(self.products, self.draws_products, names, self.draws, level)
        failed = self._failed_by_market()
        markets = self.products.index.get_level_values("market_ids")
        columns["draws_failed"] = failed.reindex(markets).to_numpy()
        return pd.DataFrame(columns, index=self.products.index)

    def market_intervals(self, level: float | None = None) -> pd.DataFrame:
        """Per market: the changes of HHI, consumer surplus and total profits with their
        percentile intervals over the draws.

        Parameters
        ----------
        level : float, optional
            Coverage (default: the one given to ``merger``).

        Returns
        -------
        pandas.DataFrame
            Indexed like ``markets``: ``<quantity>_change``, ``_change_lower``,
            ``_change_upper`` and ``draws_failed``.

        Examples
        --------
        >>> merger.market_intervals(0.9)["consumer_surplus_change_lower"]  # doctest: +SKIP
        """
        level = self.level if level is None else check_level(level)
        names = tuple(f"{name}_change" for name in MERGER_MARKETS)
        columns = _interval_columns(self.markets, self.draws_markets, names, self.draws, level)
        columns["draws_failed"] = self._failed_by_market().to_numpy()
        return pd.DataFrame(columns, index=self.markets.index)

    def summary_intervals(self, level: float | None = None) -> pd.DataFrame:
        """Totals over the markets the point estimate solved, with percentile intervals.

        Rows: ``consumer_surplus_change`` and ``profits_change`` (sums over markets),
        ``hhi_change`` (mean over markets), and the mean percent price change of the merging
        firms' products and of the others. A draw that failed in any of these markets has
        no total and is left out (counted in ``draws_failed``).

        Parameters
        ----------
        level : float, optional
            Coverage (default: the one given to ``merger``).

        Returns
        -------
        pandas.DataFrame
            ``estimate``, ``lower``, ``upper``, ``draws_used`` and ``draws_failed``.

        Examples
        --------
        >>> merger.summary_intervals().loc["consumer_surplus_change"]  # doctest: +SKIP
        """
        level = self.level if level is None else check_level(level)
        solved = self.markets.index[self.markets["converged"].to_numpy(dtype=bool)]
        merging = _merging(self.products)
        point = _totals(self.products, self.markets, solved, merging)
        values = np.full((self.draws, len(point)), np.nan)
        if not self.draws_markets.empty:
            products = self.draws_products.groupby(level="draw", sort=False)
            markets = dict(iter(self.draws_markets.groupby(level="draw", sort=False)))
            for draw, frame in products:
                values[int(draw)] = _totals(
                    frame.droplevel("draw"),
                    markets[draw].droplevel("draw"),
                    solved,
                    merging,
                ).to_numpy()
        low, high = percentile_interval(values, level)
        used = np.isfinite(values).sum(axis=0)
        return pd.DataFrame(
            {
                "estimate": point.to_numpy(),
                "lower": low,
                "upper": high,
                "draws_used": used,
                "draws_failed": self.draws - used,
            },
            index=point.index,
        )

    def _rows(self) -> list[tuple[str, str]]:
        rows = super()._rows()
        rows.append(
            (
                "Bootstrap",
                f"{self.draws} draws, {100 * self.level:g}% percentile intervals, "
                f"{self.failed_draws} draw(s) failed",
            )
        )
        table = self.summary_intervals()
        for name, row in table.iterrows():
            rows.append(
                (
                    f"  {name}",
                    f"{row['estimate']:.6g} [{row['lower']:.6g}, {row['upper']:.6g}]",
                )
            )
        return rows


def _merging(products: pd.DataFrame) -> pd.Series:
    """Products whose owner after the merger took over (or is) a firm whose owner changed."""
    moved = products["firm_ids_pre"].astype(str) != products["firm_ids_post"].astype(str)
    post = products["firm_ids_post"].astype(str)
    return post.isin(post[moved])


def _totals(
    products: pd.DataFrame, markets: pd.DataFrame, solved: pd.Index, merging: pd.Series
) -> pd.Series:
    """The summary numbers of one merger simulation over the markets ``solved``: NaN when any
    of them did not converge (a partial total would mix draws over different markets)."""
    chosen = markets.reindex(solved)
    in_solved = products.index.get_level_values("market_ids").isin(solved)
    percent = 100.0 * products["prices_change"].to_numpy() / products["prices_pre"].to_numpy()
    merging = merging.reindex(products.index).to_numpy(dtype=bool)

    def mean(mask: np.ndarray) -> float:
        return float(np.mean(percent[mask])) if mask.any() else np.nan

    return pd.Series(
        {
            "consumer_surplus_change": chosen["consumer_surplus_change"].sum(skipna=False),
            "profits_change": chosen["profits_change"].sum(skipna=False),
            "hhi_change": chosen["hhi_change"].mean(skipna=False),
            "prices_change_percent_merging": mean(in_solved & merging),
            "prices_change_percent_others": mean(in_solved & ~merging),
        }
    )


def merger_with_intervals(
    results: Any, bootstrap: Any, level: Any, arguments: dict[str, Any]
) -> BootstrappedMerger:
    """``results.merger(**arguments)`` at the estimates and at every bootstrap draw.

    The draws solve the markets the point estimate solved (``markets="profit_maximizing"``
    is decided once, at the estimates).
    """
    level = check_bootstrap(results, bootstrap, level)
    point = results.merger(**arguments)
    at_draws = dict(arguments, market_id=None, markets=list(point.markets.index))
    outcomes = bootstrap.apply(lambda view: view.merger(**at_draws))
    products = {d: v.products for d, v in enumerate(outcomes.values) if v is not None}
    markets = {d: v.markets for d, v in enumerate(outcomes.values) if v is not None}
    merger = BootstrappedMerger(
        products=point.products,
        markets=point.markets,
        equilibrium=point.equilibrium,
        left_out=point.left_out,
        draws_products=_stack(products) if products else pd.DataFrame(),
        draws_markets=_stack(markets) if markets else pd.DataFrame(),
        failures=dict(outcomes.failures),
        draw_warnings=dict(outcomes.warnings),
        draws=bootstrap.draws,
        level=level,
    )
    _warn_failed("the merger", merger.failed_draws, bootstrap.draws, outcomes.failures)
    return merger


# ----------------------------------------------------------------------------- equilibria
@dataclass(frozen=True, eq=False)
class BootstrappedEquilibrium(Equilibrium, _DrawRecords):
    """Equilibrium prices with percentile intervals over parametric bootstrap draws.

    Attributes
    ----------
    draws_products : pandas.DataFrame
        Per draw and product (``draw``, ``market_ids``, ``product_ids``): ``prices``,
        ``shares``, ``costs`` and ``markups`` (draws that raised are absent).
    draws_markets : pandas.DataFrame
        Per draw and market: ``converged`` and ``foc_norm``.
    failures : dict
        Draw → error message, for draws that raised.
    draw_warnings : dict
        Warning text → number of draws that raised it (kept quiet inside the draws).
    draws : int
        Number of bootstrap draws.
    level : float
        Default coverage of the intervals.
    """

    def product_intervals(self, level: float | None = None) -> pd.DataFrame:
        """Per product: prices, shares, costs and markups with percentile intervals.

        Parameters
        ----------
        level : float, optional
            Coverage (default: the one given to ``equilibrium_prices``).

        Returns
        -------
        pandas.DataFrame
            Indexed like ``prices``: ``<quantity>``, ``<quantity>_lower``,
            ``<quantity>_upper`` and ``draws_failed`` (draws left out for the product's
            market: an error, or prices that did not converge there).

        Examples
        --------
        >>> equilibrium.product_intervals()[["prices_lower", "prices_upper"]]  # doctest: +SKIP
        """
        level = self.level if level is None else check_level(level)
        point = pd.DataFrame(
            {name: getattr(self, name).to_numpy() for name in EQUILIBRIUM_PRODUCTS},
            index=self.prices.index,
        )
        columns = _interval_columns(
            point, self.draws_products, EQUILIBRIUM_PRODUCTS, self.draws, level
        )
        failed = _failed_by_market(self.markets, self.draws_markets, self.failures)
        markets = point.index.get_level_values("market_ids")
        columns["draws_failed"] = failed.reindex(markets).to_numpy()
        return pd.DataFrame(columns, index=point.index)

    def _rows(self) -> list[tuple[str, str]]:
        rows = super()._rows()
        table = self.product_intervals()
        width = (table["prices_upper"] - table["prices_lower"]).mean()
        rows.append(
            (
                "Bootstrap",
                f"{self.draws} draws, {100 * self.level:g}% percentile intervals (mean price "
                f"interval width {width:.4g}), {self.failed_draws} draw(s) failed",
            )
        )
        return rows


def _equilibrium_draw(record: Equilibrium) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Products with NaN where prices did not converge, and the market flags."""
    products = pd.DataFrame(
        {name: getattr(record, name).to_numpy() for name in EQUILIBRIUM_PRODUCTS},
        index=record.prices.index,
    )
    unsolved = record.markets.index[~record.markets["converged"].to_numpy(dtype=bool)]
    products.loc[products.index.get_level_values("market_ids").isin(unsolved)] = np.nan
    return products, record.markets[["converged", "foc_norm"]]


def equilibrium_with_intervals(
    results: Any, bootstrap: Any, level: Any, arguments: dict[str, Any]
) -> BootstrappedEquilibrium:
    """``results.equilibrium_prices(**arguments)`` at the estimates and at every draw.

    Costs given in ``arguments`` are held at every draw; imputed costs are imputed again at
    each draw's parameters (from the observed prices and shares).
    """
    level = check_bootstrap(results, bootstrap, level)
    point = results.equilibrium_prices(**arguments)
    outcomes: DrawOutcomes = bootstrap.apply(
        lambda view: _equilibrium_draw(view.equilibrium_prices(**arguments))
    )
    done = {d: v for d, v in enumerate(outcomes.values) if v is not None}
    record = BootstrappedEquilibrium(
        prices=point.prices,
        shares=point.shares,
        costs=point.costs,
        markets=point.markets,
        hessian_eigenvalues=point.hessian_eigenvalues,
        data=point.data,
        draws_products=_stack({d: v[0] for d, v in done.items()}) if done else pd.DataFrame(),
        draws_markets=_stack({d: v[1] for d, v in done.items()}) if done else pd.DataFrame(),
        failures=dict(outcomes.failures),
        draw_warnings=dict(outcomes.warnings),
        draws=bootstrap.draws,
        level=level,
    )
    _warn_failed("the equilibrium", record.failed_draws, bootstrap.draws, outcomes.failures)
    return record


# ----------------------------------------------------------------------------- any record
def _numeric_changes(frame: pd.DataFrame, extra: tuple[str, ...]) -> tuple[str, ...]:
    """The float columns of ``frame`` that end in ``_change``, then those of ``extra``."""
    names = [name for name in frame.columns if str(name).endswith("_change")]
    names += [name for name in extra if name in frame.columns and name not in names]
    return tuple(name for name in names if pd.api.types.is_float_dtype(frame[name]))


@dataclass(frozen=True, eq=False)
class BootstrappedCounterfactual(_DrawRecords):
    """A counterfactual record (``products`` and ``markets`` frames, ``markets["converged"]``)
    with percentile intervals over parametric bootstrap draws.

    Attribute access falls through to the point estimate, so ``products``, ``markets``,
    ``incidence`` and the like are the estimate's; the draws' records are kept whole.

    Attributes
    ----------
    estimate : object
        The record at the estimates (e.g. a ``CounterfactualResults``).
    draws_products, draws_markets : pandas.DataFrame
        Every draw's ``products`` and ``markets`` frames, the draw as the outer index level.
    failures : dict
        Draw → error message, for draws that raised.
    draw_warnings : dict
        Warning text → number of draws that raised it (kept quiet inside the draws).
    draws : int
        Number of bootstrap draws.
    level : float
        Default coverage of the intervals.
    """

    estimate: Any

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "estimate":
            raise AttributeError(name)
        return getattr(self.estimate, name)

    def _intervals(self, frame: pd.DataFrame, stacked: pd.DataFrame, extra: tuple, level: Any):
        level = self.level if level is None else check_level(level)
        names = _numeric_changes(frame, extra)
        columns = _interval_columns(frame, stacked, names, self.draws, level)
        failed = _failed_by_market(self.estimate.markets, self.draws_markets, self.failures)
        columns["draws_failed"] = failed.reindex(frame.index.get_level_values(0)).to_numpy()
        return pd.DataFrame(columns, index=frame.index)

    def product_intervals(self, level: float | None = None) -> pd.DataFrame:
        """Per product: every ``_change`` column (and ``passthrough``) with percentile
        intervals over the draws (``_lower``, ``_upper``) and ``draws_failed``.

        Examples
        --------
        >>> taxed.product_intervals()["prices_change_lower"]  # doctest: +SKIP
        """
        frame = self.estimate.products
        return self._intervals(frame, self.draws_products, ("passthrough",), level)

    def market_intervals(self, level: float | None = None) -> pd.DataFrame:
        """Per market: every ``_change`` column (and ``tax_revenue``) with percentile
        intervals over the draws and ``draws_failed``.

        Examples
        --------
        >>> taxed.market_intervals()["consumer_surplus_change_lower"]  # doctest: +SKIP
        """
        frame = self.estimate.markets
        return self._intervals(frame, self.draws_markets, ("tax_revenue",), level)

    def summary(self) -> str:
        """The estimate's report and a line on the draws.

        Examples
        --------
        >>> print(taxed.summary())  # doctest: +SKIP
        """
        return (
            f"{self.estimate.summary()}\nBootstrap: {self.draws} draws, "
            f"{100 * self.level:g}% percentile intervals, {self.failed_draws} draw(s) failed"
        )


def counterfactual_with_intervals(
    results: Any, bootstrap: Any, level: Any, arguments: dict[str, Any], method: str
) -> BootstrappedCounterfactual:
    """``getattr(results, method)(**arguments)`` at the estimates and at every bootstrap draw,
    for a counterfactual whose record has ``products`` and ``markets`` frames."""
    level = check_bootstrap(results, bootstrap, level)
    point = getattr(results, method)(**arguments)
    outcomes = bootstrap.apply(lambda view: getattr(view, method)(**arguments))
    done = {d: v for d, v in enumerate(outcomes.values) if v is not None}
    record = BootstrappedCounterfactual(
        estimate=point,
        draws_products=_stack({d: v.products for d, v in done.items()}) if done else pd.DataFrame(),
        draws_markets=_stack({d: v.markets for d, v in done.items()}) if done else pd.DataFrame(),
        failures=dict(outcomes.failures),
        draw_warnings=dict(outcomes.warnings),
        draws=bootstrap.draws,
        level=level,
    )
    _warn_failed(f"the {method}", record.failed_draws, bootstrap.draws, outcomes.failures)
    return record
