"""Pictures of estimates: elasticity and diversion heatmaps, counterfactual changes, objective
profiles and the optimizer's trace.

Every function takes results (or the frames they return) and an optional matplotlib ``ax``,
draws on it, and returns the Axes. matplotlib is an optional dependency
(``pip install "blpmodels[plot]"``); it is imported only when a function here is called.

Functions
---------
plot_elasticities, plot_diversion_ratios
    Heatmaps of one market's matrices, labelled by product.
counterfactual_changes, plot_counterfactual
    Share changes at changed product data, with bootstrap intervals.
plot_merger, plot_changes
    Price (or share, markup, profit) changes of a merger simulation; any changes as bars.
profile_objective, plot_profile
    The GMM objective along one nonlinear parameter, the others held or re-optimized.
plot_trace
    Objective and gradient norm of every evaluation the optimizer asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "counterfactual_changes",
    "plot_changes",
    "plot_counterfactual",
    "plot_diversion_ratios",
    "plot_elasticities",
    "plot_merger",
    "plot_profile",
    "plot_trace",
    "profile_objective",
]

#: Matrices up to this many products get their values written in the cells by default.
ANNOTATE_UP_TO = 12


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'blpmodels.plotting needs matplotlib: pip install "blpmodels[plot]"'
        ) from error
    return plt


def _axes(ax: Axes | None, size: tuple[float, float] = (6.4, 4.8)) -> Axes:
    if ax is not None:
        return ax
    # A layout engine that runs at every draw makes room for rotated product labels,
    # colorbars and twin axes, so a plain savefig keeps them (no bbox_inches="tight"). The
    # tight engine rather than the constrained one: after a colorbar, matplotlib refuses to
    # switch from constrained to tight, so a caller's plt.tight_layout() would raise.
    _, created = _pyplot().subplots(figsize=size, layout="tight")
    return created


def _unwrap(results: Any) -> Any:
    """The BLPResults behind a statsmodels wrapper (or the object itself)."""
    return getattr(results, "_results", results)


def _named(fitted: Any, values: Any) -> pd.Series:
    """Parameter values labelled by name (the unwrapped results hold bare arrays)."""
    return pd.Series(np.asarray(values, dtype=np.float64), index=fitted.model.data.param_names)


# ----------------------------------------------------------------------------- heatmaps
def _one_market(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise BLPInputError(f"{what}: expected results or a DataFrame, got {type(frame).__name__}")
    if isinstance(frame.index, pd.MultiIndex):
        markets = frame.index.get_level_values(0).unique()
        if len(markets) != 1:
            raise BLPInputError(
                f"{what}: the frame holds {len(markets)} markets; pass market_id= to pick one"
            )
        frame = frame.droplevel(0)
    return frame


def _diverging_ticks(low: float, high: float) -> np.ndarray:
    """Colorbar ticks for a scale centred on zero: each side gets its own round steps.

    With a two-slope norm the negative and positive sides each fill half the bar; one
    locator over [low, high] would step by the larger side's unit and leave the other side
    blank (own elasticities near −5 put no tick on cross elasticities of 0–0.38).
    """
    from matplotlib.ticker import MaxNLocator

    locator = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10])
    negative = locator.tick_values(low, 0.0)
    positive = locator.tick_values(0.0, high)
    ticks = np.concatenate([negative[negative >= low], [0.0], positive[positive <= high]])
    return np.unique(ticks)


def _tick_label(value: float, _position: Any = None) -> str:
    """A colorbar tick as the shortest number that names it: ``−4``, ``0``, ``0.2``.

    One format for all ticks would give the two sides' different steps the finer one's
    decimals (``−4.0``, ``0.0``); the minus sign is matplotlib's (a true minus by default).
    """
    from matplotlib.ticker import Formatter

    return Formatter.fix_minus(f"{value:.6g}")


def _heatmap(
    matrix: pd.DataFrame,
    ax: Axes | None,
    *,
    cmap: str,
    centered: bool,
    annotate: bool | None,
    colorbar_label: str,
    log: bool = False,
) -> Axes:
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm

    values = matrix.to_numpy(dtype=np.float64)
    size = max(4.0, 0.3 * values.shape[1] + 2.5)
    ax = _axes(ax, (size + 1.2, size))
    finite = values[np.isfinite(values)]
    norm = None
    ticks = None
    if centered and finite.size and finite.min() < 0 < finite.max():
        norm = TwoSlopeNorm(vcenter=0.0, vmin=finite.min(), vmax=finite.max())
        ticks = _diverging_ticks(float(finite.min()), float(finite.max()))
    elif log and finite.size and finite.min() > 0:
        norm = LogNorm(vmin=finite.min(), vmax=finite.max())
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(np.arange(values.shape[1]), [str(c) for c in matrix.columns], rotation=90)
    ax.set_yticks(np.arange(values.shape[0]), [str(r) for r in matrix.index])
    ax.set_xlabel(str(matrix.columns.name or ""))
    ax.set_ylabel(str(matrix.index.name or ""))
    label_format = None
    if ticks is not None:
        from matplotlib.ticker import FuncFormatter

        label_format = FuncFormatter(_tick_label)
    ax.figure.colorbar(image, ax=ax, label=colorbar_label, ticks=ticks, format=label_format)
    if annotate is None:
        annotate = max(values.shape) <= ANNOTATE_UP_TO
    if annotate and finite.size:
        scale = norm if norm is not None else Normalize(finite.min(), finite.max())
        colors = colormaps[cmap]
        for (row, column), value in np.ndenumerate(values):
            if np.isfinite(value):
                # White on dark cells, black on light ones (relative luminance of the cell).
                red, green, blue, _ = colors(scale(value))
                dark = 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.5
                ax.text(
                    column,
                    row,
                    f"{value:.2g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    return ax


def plot_elasticities(
    results: Any,
    market_id: Any = None,
    *,
    wrt: str = "prices",
    data: pd.DataFrame | None = None,
    ax: Axes | None = None,
    cmap: str = "RdBu_r",
    annotate: bool | None = None,
) -> Axes:
    """Heatmap of one market's elasticities ∂log s_j/∂log x_k (row j, column k).

    Parameters
    ----------
    results : BLPResults or pandas.DataFrame
        Fitted results (then ``market_id`` is required), or a J×J frame from
        :meth:`~blpmodels.BLPResults.elasticities` (one market).
    market_id : optional
        The market to draw.
    wrt : str
        Product-data column x (default prices); with results only.
    data : pandas.DataFrame, optional
        Changed product data at which to evaluate; with results only.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    cmap : str
        Colormap, centered on zero when the matrix has both signs.
    annotate : bool, optional
        Write each value in its cell (default: up to 12 products).

    Returns
    -------
    matplotlib.axes.Axes
        Rows and columns labelled by ``product_ids``; the image data are the matrix.

    Examples
    --------
    >>> from blpmodels.plotting import plot_elasticities
    >>> ax = plot_elasticities(results, market_id="C01Q1")  # doctest: +SKIP
    >>> ax.images[0].get_array().shape  # doctest: +SKIP
    (24, 24)
    """
    if isinstance(results, pd.DataFrame):
        matrix = results
    else:
        if market_id is None:
            raise BLPInputError("plot_elasticities: pass market_id= (one market)")
        matrix = _unwrap(results).elasticities(market_id=market_id, wrt=wrt, data=data)
    matrix = _one_market(matrix, "plot_elasticities")
    ax = _heatmap(
        matrix,
        ax,
        cmap=cmap,
        centered=True,
        annotate=annotate,
        colorbar_label=f"elasticity of the row's share\nwith respect to the column's {wrt}",
    )
    if market_id is not None:
        ax.set_title(f"Elasticities, market {market_id}")
    return ax


def _with_outside(matrix: pd.DataFrame) -> pd.DataFrame:
    """Products × (products, outside), the diagonal blank.

    Diversion frames either hold the outside good on their diagonal or in an ``outside``
    column; both become the same picture.
    """
    if "outside" in matrix.columns:
        products = matrix.drop(columns="outside")
        outside = matrix["outside"].to_numpy(dtype=np.float64)
    else:
        products = matrix
        outside = np.diag(matrix.to_numpy(dtype=np.float64)).copy()
    values = products.to_numpy(dtype=np.float64).copy()
    if values.shape[0] == values.shape[1]:
        np.fill_diagonal(values, np.nan)
    columns = pd.Index([*products.columns, "outside"], name=products.columns.name)
    return pd.DataFrame(np.column_stack([values, outside]), index=matrix.index, columns=columns)


def plot_diversion_ratios(
    results: Any,
    market_id: Any = None,
    *,
    wrt: str = "prices",
    data: pd.DataFrame | None = None,
    long_run: bool = False,
    ax: Axes | None = None,
    cmap: str = "viridis",
    annotate: bool | None = None,
    log: bool = True,
) -> Axes:
    """Heatmap of one market's diversion ratios from product j (row) to k (column).

    The outside good is drawn as the last column, labelled ``outside``; the diagonal (a
    product to itself) is left blank.

    Parameters
    ----------
    results : BLPResults or pandas.DataFrame
        Fitted results (then ``market_id`` is required), or one market's frame from
        :meth:`~blpmodels.BLPResults.diversion_ratios` or
        :meth:`~blpmodels.BLPResults.long_run_diversion_ratios`.
    market_id : optional
        The market to draw.
    wrt : str
        Product-data column whose change diverts sales (default prices); with results only.
    data : pandas.DataFrame, optional
        Changed product data at which to evaluate; with results only.
    long_run : bool
        Second-choice diversion when j is removed instead of the marginal diversion.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    cmap : str
        Colormap.
    annotate : bool, optional
        Write each value in its cell (default: up to 12 products).
    log : bool
        Logarithmic color scale when every ratio is positive (default): the outside good
        often takes ten times more than any product, which would wash out a linear scale.

    Returns
    -------
    matplotlib.axes.Axes
        Rows labelled by ``product_ids``; columns by ``product_ids`` and ``outside``.

    Examples
    --------
    >>> from blpmodels.plotting import plot_diversion_ratios
    >>> ax = plot_diversion_ratios(results, market_id="C01Q1")  # doctest: +SKIP
    >>> ax.get_xticklabels()[-1].get_text()  # doctest: +SKIP
    'outside'
    """
    if isinstance(results, pd.DataFrame):
        matrix = results
    else:
        if market_id is None:
            raise BLPInputError("plot_diversion_ratios: pass market_id= (one market)")
        fitted = _unwrap(results)
        if long_run:
            matrix = fitted.long_run_diversion_ratios(market_id=market_id)
        else:
            matrix = fitted.diversion_ratios(market_id=market_id, wrt=wrt, data=data)
    matrix = _with_outside(_one_market(matrix, "plot_diversion_ratios"))
    ax = _heatmap(
        matrix,
        ax,
        cmap=cmap,
        centered=False,
        annotate=annotate,
        colorbar_label="share of the row product's lost\nsales going to the column",
        log=log,
    )
    kind = "Long-run diversion" if long_run else "Diversion ratios"
    if market_id is not None:
        ax.set_title(f"{kind}, market {market_id}")
    return ax


# ----------------------------------------------------------------------------- bar charts
def _labels(index: pd.Index) -> list[str]:
    """Product labels for bars: the product alone when one market is shown."""
    if isinstance(index, pd.MultiIndex):
        markets = index.get_level_values(0).unique()
        if len(markets) == 1:
            return [str(product) for product in index.get_level_values(-1)]
        return [" / ".join(str(part) for part in key) for key in index]
    return [str(label) for label in index]


def plot_changes(
    changes: pd.Series,
    lower: Sequence[float] | pd.Series | None = None,
    upper: Sequence[float] | pd.Series | None = None,
    *,
    ax: Axes | None = None,
    ylabel: str = "change",
    interval_label: str = "interval",
    color: str = "C0",
) -> Axes:
    """Bars of changes by product, with intervals drawn as error bars.

    Parameters
    ----------
    changes : pandas.Series
        One value per bar; the index (``product_ids``, or ``(market_ids, product_ids)``)
        labels the bars.
    lower, upper : array-like, optional
        Interval ends for each bar (both or neither).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    ylabel, interval_label, color : str
        Axis label, legend entry of the intervals and bar color.

    Returns
    -------
    matplotlib.axes.Axes
        The bars are ``ax.containers[0]``; the intervals, when given, a LineCollection.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pandas as pd
    >>> from blpmodels.plotting import plot_changes
    >>> ax = plot_changes(pd.Series([1.0, -2.0], index=["A", "B"]), [0.5, -3], [1.5, -1])
    >>> [float(bar.get_height()) for bar in ax.containers[0]]
    [1.0, -2.0]
    """
    if not isinstance(changes, pd.Series):
        raise BLPInputError(f"changes must be a pandas Series, got {type(changes).__name__}")
    if (lower is None) != (upper is None):
        raise BLPInputError("give both lower and upper interval ends, or neither")
    values = changes.to_numpy(dtype=np.float64)
    labels = _labels(changes.index)
    ax = _axes(ax, (max(4.0, 0.35 * len(values) + 2.0), 4.0))
    positions = np.arange(len(values))
    ax.bar(positions, values, color=color, label=str(changes.name or "estimate"))
    if lower is not None:
        low = np.asarray(lower, dtype=np.float64)
        high = np.asarray(upper, dtype=np.float64)
        if low.shape != values.shape or high.shape != values.shape:
            raise BLPInputError(
                f"lower and upper need {len(values)} values each, one per bar; got "
                f"{low.shape} and {high.shape}"
            )
        ax.vlines(positions, low, high, colors="black", linewidth=1.5, label=interval_label)
        ax.legend(loc="best", fontsize="small")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(positions, labels, rotation=90 if len(labels) > 6 else 0)
    ax.set_ylabel(ylabel)
    return ax


def _keys(frame: pd.DataFrame) -> pd.MultiIndex:
    missing = [name for name in ("market_ids", "product_ids") if name not in frame.columns]
    if missing:
        raise BLPInputError(f"data lack the column(s) {missing} that identify each product")
    return pd.MultiIndex.from_arrays(
        [frame["market_ids"].to_numpy(), frame["product_ids"].to_numpy()],
        names=["market_ids", "product_ids"],
    )


def _interval(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = 50.0 * (1.0 - level)
    return np.percentile(draws, tail, axis=0), np.percentile(draws, 100.0 - tail, axis=0)


def counterfactual_changes(
    results: Any,
    data: pd.DataFrame,
    *,
    bootstrap: Any = None,
    level: float = 0.95,
    relative: bool = True,
) -> pd.DataFrame:
    """Share changes from the estimation data to changed product data, per product.

    Parameters
    ----------
    results : BLPResults
        Fitted results.
    data : pandas.DataFrame
        Changed product data: every product of each market it covers, with ``market_ids``
        and ``product_ids`` (as for :meth:`~blpmodels.BLPResults.predict`).
    bootstrap : BootstrappedResults, optional
        Parameter draws (:meth:`~blpmodels.BLPResults.bootstrap`); each draw predicts both
        the baseline and the counterfactual
        (:meth:`~blpmodels.BootstrappedResults.predict_changes`), and the
        intervals are percentiles of its changes.
    level : float
        Coverage of the intervals.
    relative : bool
        Changes in percent of the baseline share (default) instead of share points.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``(market_ids, product_ids)``: ``before`` (predicted at the estimation
        data, which reproduces the observed shares), ``after``, ``change`` and, with
        ``bootstrap``, ``lower`` and ``upper``.

    Examples
    --------
    >>> market = data[data.market_ids == "C01Q1"].copy()  # doctest: +SKIP
    >>> market.loc[market.product_ids == "F1B04", "prices"] /= 2  # doctest: +SKIP
    >>> changes = counterfactual_changes(results, market)  # doctest: +SKIP
    """
    if not isinstance(data, pd.DataFrame):
        raise BLPInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if not 0.0 < float(level) < 1.0:
        raise BLPInputError(f"level must be in (0, 1), got {level!r}")
    fitted = _unwrap(results)
    estimation = fitted.model.design.data
    markets = pd.unique(data["market_ids"].to_numpy()) if "market_ids" in data else []
    baseline = estimation[estimation["market_ids"].isin(markets)]
    keys = _keys(data)
    positions = _keys(baseline).get_indexer(keys)
    if (positions < 0).any():
        unknown = keys[positions < 0][:5].tolist()
        raise BLPInputError(f"products {unknown} of data are not in the estimation data")
    before = np.asarray(fitted.predict(baseline), dtype=np.float64)[positions]
    after = np.asarray(fitted.predict(data), dtype=np.float64)

    def change(old: np.ndarray, new: np.ndarray) -> np.ndarray:
        return 100.0 * (new / old - 1.0) if relative else new - old

    frame = pd.DataFrame(
        {"before": before, "after": after, "change": change(before, after)}, index=keys
    )
    if bootstrap is not None:
        # One pass over the draws (one progress bar): each predicts baseline and change.
        draws = bootstrap.predict_changes(data, relative=bool(relative))
        frame["lower"], frame["upper"] = _interval(draws.to_numpy(dtype=np.float64), float(level))
    frame.attrs.update(level=float(level), relative=bool(relative))
    return frame


def plot_counterfactual(
    results: Any,
    data: pd.DataFrame | None = None,
    *,
    bootstrap: Any = None,
    level: float = 0.95,
    relative: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Bars of counterfactual share changes by product, with bootstrap intervals.

    Parameters
    ----------
    results : BLPResults or pandas.DataFrame
        Fitted results (with ``data``), or a frame from :func:`counterfactual_changes`.
    data : pandas.DataFrame, optional
        Changed product data (see :func:`counterfactual_changes`).
    bootstrap : BootstrappedResults, optional
        Parameter draws for the intervals.
    level : float
        Coverage of the intervals.
    relative : bool
        Percent changes (default) or share points.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
        One bar per product (labelled by ``product_ids`` when one market is shown).

    Examples
    --------
    >>> bootstrapped = results.bootstrap(draws=100, seed=0)  # doctest: +SKIP
    >>> ax = plot_counterfactual(results, market, bootstrap=bootstrapped)  # doctest: +SKIP
    """
    if isinstance(results, pd.DataFrame):
        frame = results
    else:
        if data is None:
            raise BLPInputError("plot_counterfactual: pass the changed product data as data=")
        frame = counterfactual_changes(
            results, data, bootstrap=bootstrap, level=level, relative=relative
        )
    interval = ("lower" in frame) and ("upper" in frame)
    level = frame.attrs.get("level", level)
    relative = frame.attrs.get("relative", relative)
    return plot_changes(
        frame["change"].rename("predicted change"),
        frame["lower"] if interval else None,
        frame["upper"] if interval else None,
        ax=ax,
        ylabel="share change (%)" if relative else "share change (points)",
        interval_label=f"{100 * level:.0f}% bootstrap interval",
    )


def _merger_changes(
    products: pd.DataFrame, quantity: str, market_id: Any, relative: bool
) -> pd.Series:
    """Each product's change in ``quantity``, in one market or averaged over the markets (as
    the bars show it); ``products`` may carry a leading ``draw`` level, kept."""
    columns = [f"{quantity}_pre", f"{quantity}_post"]
    if any(column not in products.columns for column in columns):
        raise BLPInputError(
            f"the merger results have no {quantity!r}; choose prices, shares, markups or profits"
        )
    if market_id is not None:
        products = products.xs(market_id, level="market_ids", drop_level=True)
    pre, post = products[columns[0]], products[columns[1]]
    return 100.0 * (post / pre - 1.0) if relative else post - pre


def _merger_intervals(
    merger: Any, quantity: str, market_id: Any, relative: bool, level: float
) -> pd.DataFrame:
    """Percentiles over a bootstrapped merger's draws of the change each bar shows: per draw
    the same change (one market, or the mean over the markets whose point estimate is
    defined; a draw that failed in one of them has no mean and is left out)."""
    draws = getattr(merger, "draws_products", None)
    if draws is None:
        raise BLPInputError(
            "intervals=True needs a merger simulated with bootstrap draws: "
            "results.merger(..., bootstrap=results.bootstrap(draws, seed))"
        )
    if not 0.0 < float(level) < 1.0:
        raise BLPInputError(f"level must be in (0, 1), got {level!r}")
    point = _merger_changes(merger.products, quantity, market_id, relative)
    if draws.empty:  # every draw failed: no interval, the bars alone
        draws = pd.concat({0: merger.products.iloc[:0]}, names=["draw"])
    changes = _merger_changes(draws, quantity, market_id, relative)
    if market_id is None and isinstance(point.index, pd.MultiIndex):
        defined = point.index[np.isfinite(point.to_numpy(dtype=np.float64))]
        kept = changes[changes.index.droplevel("draw").isin(defined)]
        groups = ["draw", point.index.names[-1]]
        changes = kept.groupby(level=groups, sort=False).mean()
        changes[kept.isna().groupby(level=groups, sort=False).any()] = np.nan
    table = changes.unstack(level="draw").reindex(columns=range(int(merger.draws)))
    low, high = _interval(table.to_numpy(dtype=np.float64).T, float(level))
    return pd.DataFrame({"lower": low, "upper": high}, index=table.index)


def plot_merger(
    merger: Any,
    quantity: str = "prices",
    market_id: Any = None,
    *,
    relative: bool = True,
    intervals: pd.DataFrame | bool | None = None,
    level: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Bars of a merger's effect on each product's prices (or shares, markups, profits).

    Parameters
    ----------
    merger : MergerResults or pandas.DataFrame
        From :meth:`~blpmodels.BLPResults.merger`, or its ``products`` frame.
    quantity : {"prices", "shares", "markups", "profits"}
        What to draw.
    market_id : optional
        One market; None averages each product's change over the markets.
    relative : bool
        Percent of the pre-merger value (default) instead of levels.
    intervals : bool or pandas.DataFrame, optional
        True: percentile intervals over the draws of a merger simulated with
        ``bootstrap=`` (each draw's change computed as the bar's: in ``market_id``, or
        averaged over the markets); or a frame with ``lower`` and ``upper`` columns indexed
        like the bars.
    level : float, optional
        Coverage of ``intervals=True`` (default: the merger's ``level``).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
        Bars colored by whether the product's owner merged.

    Examples
    --------
    >>> merger = results.merger(firm_ids={"F2": "F1"})  # doctest: +SKIP
    >>> ax = plot_merger(merger, "prices", market_id="C01Q1")  # doctest: +SKIP
    >>> draws = results.bootstrap(draws=200, seed=0)  # doctest: +SKIP
    >>> uncertain = results.merger({"F2": "F1"}, bootstrap=draws)  # doctest: +SKIP
    >>> ax = plot_merger(uncertain, "prices", "C01Q1", intervals=True)  # doctest: +SKIP
    """
    products = getattr(merger, "products", merger)
    if not isinstance(products, pd.DataFrame):
        raise BLPInputError(f"expected MergerResults or a frame, got {type(merger).__name__}")
    interval_label = "interval"
    if intervals is True:
        level = getattr(merger, "level", 0.95) if level is None else level
        intervals = _merger_intervals(merger, quantity, market_id, relative, level)
        interval_label = f"{100 * float(level):g}% bootstrap interval"
    elif intervals is False:
        intervals = None
    elif intervals is not None and not isinstance(intervals, pd.DataFrame):
        raise BLPInputError(
            f"intervals must be True, False or a frame, got {type(intervals).__name__}"
        )
    change = _merger_changes(products, quantity, market_id, relative)
    if market_id is not None:
        products = products.xs(market_id, level="market_ids", drop_level=True)
    before, after = (products[f"firm_ids_{when}"].astype(str) for when in ("pre", "post"))
    merged = after.isin(after[before != after])  # the buyers' products and the bought ones
    if market_id is None and isinstance(change.index, pd.MultiIndex):
        level_name = change.index.names[-1]
        change = change.groupby(level=level_name, sort=False).mean()
        merged = merged.groupby(level=level_name, sort=False).any()
    unit = "%" if relative else "level"
    where = f"market {market_id}" if market_id is not None else "mean over markets"
    ax = plot_changes(
        change.rename(f"{quantity} change"),
        None if intervals is None else intervals["lower"].reindex(change.index),
        None if intervals is None else intervals["upper"].reindex(change.index),
        ax=ax,
        ylabel=f"{quantity} change ({unit}, {where})",
        interval_label=interval_label,
    )
    for bar, flag in zip(ax.containers[0], merged.reindex(change.index).to_numpy(), strict=True):
        if flag:
            bar.set_color("C3")
    # A few bars make a narrow figure, where the one-line title ran past its edge once wide
    # tick labels pushed the axes right (profits in levels): two lines there.
    narrow = ax.figure.get_figwidth() < 6.0
    ax.set_title(f"Merger:{chr(10) if narrow else ' '}merging firms' products in red")
    return ax


# ----------------------------------------------------------------------------- profiles
def _profile_setup(fitted: Any) -> tuple[Any, list[str], np.ndarray, np.ndarray, np.ndarray]:
    model = fitted.model
    parameters = getattr(fitted.demand, "parameters", None)
    if parameters is None or not hasattr(model, "objective_function"):
        raise BLPInputError(
            "profile_objective needs a random-coefficients fit (BLPRandomCoefficients): "
            "the logit and nested logit have no nonlinear parameters to profile"
        )
    if fitted.info.micro is not None:
        raise BLPInputError("profile_objective does not support fits with micro moments yet")
    objective = model.objective_function(parameters, fitted.info.W)
    names = [*parameters.names, *objective.moved_names]
    theta = _named(fitted, fitted.params)[names].to_numpy()
    extra = len(objective.moved_names)
    lower = np.concatenate([parameters.lower, np.full(extra, -np.inf)])
    upper = np.concatenate([parameters.upper, np.full(extra, np.inf)])
    return objective, names, theta, lower, upper


def _evaluate(objective: Any, theta: np.ndarray, gradient: bool) -> Any:
    # A copy: the objective caches evaluations by the array it was given, which callers here
    # go on to change in place.
    evaluation = objective.evaluate(np.array(theta, dtype=np.float64), gradient=gradient)
    return evaluation if evaluation.success else None


def _reoptimize(
    objective: Any, theta: np.ndarray, free: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[float, np.ndarray]:
    import scipy.optimize

    point = theta.copy()

    def fun(values: np.ndarray) -> tuple[float, np.ndarray]:
        point[free] = values
        evaluation = _evaluate(objective, point, gradient=True)
        if evaluation is None:  # δ not solved: a large value the line search backs off from
            return 1e10, np.zeros(values.size)
        return float(evaluation.objective), np.asarray(evaluation.gradient)[free]

    bounds = list(
        zip(
            np.where(np.isfinite(lower[free]), lower[free], None),
            np.where(np.isfinite(upper[free]), upper[free], None),
            strict=True,
        )
    )
    solution = scipy.optimize.minimize(
        fun,
        theta[free],
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 500},
    )
    point[free] = solution.x
    return float(fun(solution.x)[0]), point.copy()


def profile_objective(
    results: Any,
    parameter: str,
    values: Sequence[float] | np.ndarray | None = None,
    *,
    reoptimize: bool = False,
    points: int = 21,
    width: float = 3.0,
) -> pd.DataFrame:
    """The GMM objective along one nonlinear parameter, the others held or re-optimized.

    The objective is the one minimized in the final GMM step (same weighting matrix), so its
    minimum is ``results.objective`` at the estimates.

    Parameters
    ----------
    results : BLPResults
        A random-coefficients fit (without micro moments).
    parameter : str
        A nonlinear parameter, e.g. ``"sigma[prices,prices]"`` (with a supply side, also
        the price coefficient that θ holds).
    values : array-like, optional
        Where to evaluate. Default: ``points`` values over the estimate ± ``width``
        standard errors, clipped to the parameter's bounds.
    reoptimize : bool
        Minimize over the other nonlinear parameters at each value (L-BFGS-B from the
        estimates, within their bounds) instead of holding them at their estimates. The
        linear parameters are always concentrated out.
    points, width
        The default grid.

    Returns
    -------
    pandas.DataFrame
        One row per value: ``value``, ``objective`` (NaN where δ could not be solved) and
        the nonlinear parameters at that point.

    Examples
    --------
    >>> profile = profile_objective(results, "sigma[prices,prices]")  # doctest: +SKIP
    >>> bool(profile["objective"].min() >= results.objective - 1e-10)  # doctest: +SKIP
    True
    """
    fitted = _unwrap(results)
    objective, names, theta, lower, upper = _profile_setup(fitted)
    if parameter not in names:
        raise BLPInputError(f"{parameter!r} is not a nonlinear parameter; choose from {names}")
    k = names.index(parameter)
    if values is None:
        error = float(_named(fitted, fitted.bse)[parameter])
        error = error if np.isfinite(error) and error > 0 else max(abs(theta[k]), 1.0) * 0.5
        grid = theta[k] + width * error * np.linspace(-1.0, 1.0, int(points))
        values = np.unique(np.clip(np.append(grid, theta[k]), lower[k], upper[k]))
    values = np.asarray(values, dtype=np.float64).ravel()
    free = np.flatnonzero(np.arange(theta.size) != k)
    rows = []
    for value in values:
        point = theta.copy()
        point[k] = value
        if reoptimize and free.size:
            level, point = _reoptimize(objective, point, free, lower, upper)
        else:
            evaluation = _evaluate(objective, point, gradient=False)
            level = np.nan if evaluation is None else float(evaluation.objective)
        rows.append({"value": value, "objective": level, **dict(zip(names, point, strict=True))})
    frame = pd.DataFrame(rows)
    frame.attrs.update(
        parameter=parameter,
        estimate=float(theta[k]),
        minimum=float(fitted.info.objective),
        reoptimize=bool(reoptimize),
    )
    return frame


def plot_profile(
    results: Any,
    parameter: str | None = None,
    values: Sequence[float] | np.ndarray | None = None,
    *,
    reoptimize: bool = False,
    ax: Axes | None = None,
    **grid: Any,
) -> Axes:
    """Plot the GMM objective along one nonlinear parameter (see :func:`profile_objective`).

    Parameters
    ----------
    results : BLPResults or pandas.DataFrame
        A random-coefficients fit, or a frame from :func:`profile_objective`.
    parameter : str, optional
        The parameter (required with results).
    values : array-like, optional
        Where to evaluate.
    reoptimize : bool
        Re-optimize the other nonlinear parameters at each value.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    **grid
        ``points`` and ``width`` of the default grid.

    Returns
    -------
    matplotlib.axes.Axes
        The profile as the first line; the estimate as a dashed vertical line.

    Examples
    --------
    >>> ax = plot_profile(results, "sigma[prices,prices]", reoptimize=True)  # doctest: +SKIP
    """
    if isinstance(results, pd.DataFrame):
        frame = results
    else:
        if parameter is None:
            raise BLPInputError("plot_profile: pass the parameter to profile")
        frame = profile_objective(results, parameter, values, reoptimize=reoptimize, **grid)
    attrs = frame.attrs
    ax = _axes(ax)
    how = "others re-optimized" if attrs.get("reoptimize") else "others held at estimates"
    ax.plot(frame["value"], frame["objective"], marker="o", markersize=3, label=how)
    drawn = any(line.get_label() == "estimate" for line in ax.lines)
    if "estimate" in attrs and not drawn:  # once, when profiles share the axes
        ax.axvline(attrs["estimate"], color="grey", linestyle="--", label="estimate")
    ax.set_xlabel(str(attrs.get("parameter", "parameter")))
    ax.set_ylabel("GMM objective")
    ax.legend(loc="best", fontsize="small")
    return ax


# ----------------------------------------------------------------------------- trace
def _trace_frame(results: Any) -> pd.DataFrame:
    if isinstance(results, pd.DataFrame):
        return results
    trace = _unwrap(results).info.convergence.get("trace")
    if trace is None or len(trace) == 0:
        raise BLPInputError(
            "these results record no optimizer trace (only random-coefficients fits do)"
        )
    return trace


def _trace_points(trace: pd.DataFrame, by: str) -> tuple[np.ndarray, pd.DataFrame, str]:
    """x positions and rows to draw: iterations numbered on across GMM steps and starts."""
    groups = [name for name in ("step", "start") if name in trace.columns]
    if by == "evaluation":
        return np.arange(1, len(trace) + 1, dtype=np.float64), trace, "gradient_norm"
    rows = trace[trace["iteration"].notna()]
    numbers = rows["iteration"].to_numpy(dtype=np.float64, copy=True)
    if groups:
        keys = rows[groups].astype(str).agg("/".join, axis=1).to_numpy()
        offset = 0.0
        for position in range(1, len(rows)):
            if keys[position] != keys[position - 1]:
                offset = numbers[position - 1]
            numbers[position] += offset
    column = "projected_gradient_norm" if "projected_gradient_norm" in rows else "gradient_norm"
    return numbers, rows, column


def plot_trace(
    results: Any, *, by: str | None = None, ax: Axes | None = None, log: bool = True
) -> Axes:
    """Objective and gradient norm by optimizer iteration (or by objective evaluation).

    The fit records every objective evaluation the optimizer asked for
    (``results.info.convergence["trace"]``, line-search trial points included) and marks the
    row each optimizer iteration ended at (``iteration``, ``projected_gradient_norm``). By
    default the plot shows one point per iteration, the objective on the left axis and the
    ∞-norm of the projected gradient in θ on the right; ``by="evaluation"`` shows every
    evaluation with the ∞-norm of the scaled gradient, evaluations where δ could not be
    solved as red crosses. GMM steps and random starts follow one another (boundaries
    dotted).

    Parameters
    ----------
    results : BLPResults or pandas.DataFrame
        A random-coefficients fit, or its trace frame (columns ``objective`` and
        ``gradient_norm``; ``iteration``, ``projected_gradient_norm``, ``step``, ``start``
        and ``delta_solved`` when recorded).
    by : {"iteration", "evaluation"}, optional
        Default: iterations when the trace marks them, else evaluations.
    ax : matplotlib.axes.Axes, optional
        Where to draw the objective (default: a new figure); the gradient norm goes on a
        twin axis (``ax.right_ax``).
    log : bool
        Logarithmic vertical axes.

    Returns
    -------
    matplotlib.axes.Axes
        The objective axis; its first line is the objective, the twin's first line the
        gradient norm.

    Examples
    --------
    >>> ax = plot_trace(results)  # doctest: +SKIP
    >>> trace = results.info.convergence["trace"].dropna(subset=["iteration"])  # doctest: +SKIP
    >>> bool((ax.lines[0].get_ydata() == trace["objective"]).all())  # doctest: +SKIP
    True
    """
    trace = _trace_frame(results)
    missing = [name for name in ("objective", "gradient_norm") if name not in trace.columns]
    if missing:
        raise BLPInputError(f"the trace lacks the column(s) {missing}")
    marked = "iteration" in trace.columns and trace["iteration"].notna().any()
    by = by or ("iteration" if marked else "evaluation")
    if by not in ("iteration", "evaluation"):
        raise BLPInputError(f"by must be 'iteration' or 'evaluation', got {by!r}")
    if by == "iteration" and not marked:
        raise BLPInputError("the trace marks no iterations: use by='evaluation'")
    number, rows, gradient_column = _trace_points(trace, by)
    objective = rows["objective"].to_numpy(dtype=np.float64)
    gradient = rows[gradient_column].to_numpy(dtype=np.float64)
    solved = (
        rows["delta_solved"].to_numpy(dtype=bool)
        if "delta_solved" in rows
        else np.isfinite(gradient)
    )
    ax = _axes(ax, (7.0, 4.0))
    ax.plot(number, objective, color="C0", marker=".", label="objective")
    if (~solved).any():
        ax.plot(number[~solved], objective[~solved], "x", color="C3", label="δ not solved")
    right = ax.twinx()
    right.plot(number, gradient, color="C1", marker=".", label="gradient norm")
    ax.right_ax = right
    if log:
        if np.all(objective[np.isfinite(objective)] > 0):
            ax.set_yscale("log")
        if np.all(gradient[np.isfinite(gradient)] > 0):
            right.set_yscale("log")
    groups = [name for name in ("step", "start") if name in rows.columns]
    if groups:
        keys = rows[groups].astype(str).agg("/".join, axis=1).to_numpy()
        for position in np.flatnonzero(keys[1:] != keys[:-1]):
            boundary = (number[position] + number[position + 1]) / 2
            ax.axvline(boundary, color="grey", linestyle=":")
    ax.set_xlabel("optimizer iteration" if by == "iteration" else "objective evaluation")
    ax.set_ylabel("GMM objective", color="C0")
    norm = "projected gradient" if gradient_column == "projected_gradient_norm" else "gradient"
    right.set_ylabel(f"‖{norm}‖∞", color="C1")
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper right", fontsize="small")
    return ax
