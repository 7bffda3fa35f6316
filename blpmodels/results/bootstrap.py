"""Parametric bootstrap: parameter draws from the estimates' asymptotic distribution and the
demand each draw implies.

:class:`BootstrapMixin` gives :class:`~blpmodels.results.BLPResults` its ``bootstrap`` method,
which returns :class:`BootstrappedResults`. Besides predictions with ξ held at its estimate,
:meth:`BootstrappedResults.results_at` rebuilds the results at one draw's parameters with ξ
recovered from the observed shares, on which any counterfactual method can be called
(:meth:`BootstrappedResults.apply` does so for every draw, counting the draws that fail).
"""

from __future__ import annotations

import copy
import html
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import warn_user
from blpmodels.estimation.optimize import progress
from blpmodels.exceptions import BLPInputError, FixedPointError
from blpmodels.results.base import ResultsRole, check_flag
from blpmodels.results.demand import DemandSystem

__all__ = ["BootstrapMixin", "BootstrappedResults", "DrawOutcomes"]

#: Errors a counterfactual may raise at one draw's parameters (no equilibrium, singular
#: markups, a share inversion that does not converge): such a draw is counted as failed.
DRAW_ERRORS = (BLPInputError, FixedPointError, np.linalg.LinAlgError, FloatingPointError)


class BootstrapMixin(ResultsRole):
    """The parametric bootstrap of :class:`BLPResults`."""

    def bootstrap(
        self, draws: int = 1000, seed: int | None = None, *, verbose: bool = False
    ) -> BootstrappedResults:
        """Parametric bootstrap: draw parameters from their estimated asymptotic distribution.

        Parameters
        ----------
        draws : int
            Number of parameter draws.
        seed : int, optional
            Seed of the normal draws.
        verbose : bool
            Show progress over the draws when the bootstrapped results predict: one bar
            labelled ``bootstrap 37/200`` (tqdm's when tqdm is installed, the ``progress``
            extra; plain lines otherwise).

        Returns
        -------
        BootstrappedResults
            Draws of the parameters; its :meth:`~BootstrappedResults.predict` gives shares at
            the observed or changed data for every draw (ξ held at its estimate).

        Examples
        --------
        >>> bootstrapped = results.bootstrap(draws=100, seed=0)  # doctest: +SKIP
        >>> bootstrapped.draws  # doctest: +SKIP
        100
        """
        if not isinstance(draws, (int, np.integer)) or draws < 1:
            raise BLPInputError(f"draws must be a positive integer, got {draws!r}")
        check_flag("verbose", verbose)
        rng = np.random.default_rng(seed)
        params = np.asarray(self.params)
        cov = np.asarray(self.cov_params())
        samples = rng.multivariate_normal(params, cov, size=int(draws), method="eigh")
        k1 = self._theta_start
        moved = np.zeros(len(samples), dtype=bool)
        if samples.shape[1] > k1:
            parameters = self.demand.parameters
            if parameters is not None:
                lower, upper = parameters.lower, parameters.upper
            else:  # closed-form nested logit: the draws beyond β are ρ
                lower, upper = 0.0, 0.99
            clipped = np.clip(samples[:, k1:], lower, upper)
            moved = np.any(clipped != samples[:, k1:], axis=1)
            if moved.any():
                warn_user(
                    f"{int(moved.sum())} of {draws} bootstrap draws fell outside the parameter "
                    "bounds and were moved onto them",
                    UserWarning,
                )
            samples[:, k1:] = clipped
        frame = pd.DataFrame(
            samples,
            index=pd.RangeIndex(len(samples), name="draw"),
            columns=self.model.data.param_names,
        )
        return BootstrappedResults(
            self, frame, verbose=bool(verbose), seed=seed, moved=int(moved.sum())
        )


@dataclass(frozen=True, eq=False)
class DrawOutcomes:
    """What a function returned at every bootstrap draw (:meth:`BootstrappedResults.apply`).

    Attributes
    ----------
    values : list
        One value per draw, in draw order; None where the draw failed.
    failures : dict
        Draw → ``"ErrorType: message"`` of the draws that failed.
    warnings : dict
        Warning text → number of draws that raised it.
    """

    values: list[Any]
    failures: dict[int, str] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)

    def array(self) -> np.ndarray:
        """The values as a float array, NaN at failed draws (for scalar or equal-shape values).

        Examples
        --------
        >>> DrawOutcomes([1.0, None, 3.0], {1: "FixedPointError: ..."}).array()
        array([ 1., nan,  3.])
        """
        shapes = {np.shape(value) for value in self.values if value is not None}
        if len(shapes) > 1:
            raise BLPInputError(f"the draws' values have different shapes {sorted(shapes)}")
        shape = shapes.pop() if shapes else ()
        if not self.values:
            return np.empty((0, *shape))
        missing = np.full(shape, np.nan)
        return np.stack(
            [missing if value is None else np.asarray(value, dtype=float) for value in self.values]
        )


def _inverted_delta(system: DemandSystem, results: Any) -> np.ndarray:
    """δ reproducing the observed shares under ``system``'s nonlinear parameters."""
    design = results.model.design
    delta, failed = system.invert_shares(design.shares)
    if failed:
        raise FixedPointError(
            f"the share inversion at the draw's parameters did not converge in {len(failed)} "
            f"market(s), e.g. {failed[:5]}",
            markets=failed,
        )
    return delta


@dataclass(frozen=True)
class _Prepared:
    """Product data matched to the estimation rows, its X1 and X2 built (None: the
    estimation data, all of it); ``size`` is the number of rows."""

    data: pd.DataFrame | None
    rows: np.ndarray | None
    columns: tuple[np.ndarray, np.ndarray] | None
    size: int


class BootstrappedResults:
    """Parameter draws from a parametric bootstrap and the demand they imply.

    Attributes
    ----------
    results : BLPResults
        The estimates the draws are centered on.
    params : pandas.DataFrame
        ``draws × parameters`` draws.
    verbose : bool
        Show progress over the draws in :meth:`predict` and :meth:`predict_changes`.
    seed : int or None
        Seed of the normal draws.
    moved : int
        Draws moved onto the parameter bounds.
    """

    def __init__(
        self,
        results: ResultsRole,
        params: pd.DataFrame,
        verbose: bool = False,
        *,
        seed: int | None = None,
        moved: int = 0,
    ) -> None:
        self.results = results
        self.params = params
        self.verbose = verbose
        self.seed = seed
        self.moved = moved

    @property
    def draws(self) -> int:
        """Number of draws."""
        return len(self.params)

    def _systems(self, verbose: bool) -> Iterator[DemandSystem]:
        """The estimated demand at each draw's parameters, in draw order."""
        values = self.params.to_numpy()
        # Where β ends and θ starts, found once (asking the results at every draw built two
        # labelled Series per draw, about 0.1 ms).
        k1, start = len(self.results.beta), self.results._theta_start
        demand = self.results.demand
        for row in progress(values, len(values), "bootstrap", verbose):
            yield demand.with_parameters(row[:k1], row[start:] if row.size > start else None)

    def _shares(self, frames: list[_Prepared], verbose: bool | None) -> list[np.ndarray]:
        """``draws × len(frame)`` shares for each prepared frame, in one pass over the draws
        (one progress bar)."""
        verbose = self.verbose if verbose is None else verbose
        check_flag("verbose", verbose)
        out = [np.empty((self.draws, frame.size)) for frame in frames]
        for draw, system in enumerate(self._systems(verbose)):
            for values, frame in zip(out, frames, strict=True):
                values[draw] = system.shares(frame.data, frame.rows, frame.columns)
        return out

    def _prepare(self, data: pd.DataFrame | None) -> _Prepared:
        """Match ``data`` to the estimation rows and build its X1 and X2 once for all draws:
        neither depends on the parameters (building them at every draw took half the time)."""
        design = self.results.model.design
        if data is None:
            return _Prepared(None, None, None, design.nobs)
        rows = design.match_rows(data)
        return _Prepared(data, rows, self.results.demand.rebuild(data), len(rows))

    def _columns(self, rows: np.ndarray) -> pd.MultiIndex:
        design = self.results.model.design
        return pd.MultiIndex.from_arrays(
            [design.market_ids[rows], self.results.demand.product_labels(rows)],
            names=["market_ids", "product_ids"],
        )

    def predict(
        self, data: pd.DataFrame | None = None, *, verbose: bool | None = None
    ) -> pd.DataFrame:
        """Shares for every draw (rows) and product (columns), ξ held at its estimate.

        Parameters
        ----------
        data : pandas.DataFrame, optional
            Changed product data (complete markets); None for the estimation data.
        verbose : bool, optional
            Show progress over the draws (default: as set by ``bootstrap(verbose=...)``).

        Returns
        -------
        pandas.DataFrame
            ``draws × products`` shares: rows are the draws (``draw`` 0, 1, …), columns the
            products labelled by ``(market_ids, product_ids)`` in the row order of ``data``
            (or of the estimation data); without product ids the second level is the
            product's position within its market.

        Examples
        --------
        >>> bootstrapped = results.bootstrap(draws=200, seed=0)  # doctest: +SKIP
        >>> shares = bootstrapped.predict(market)  # doctest: +SKIP
        >>> shares.quantile([0.025, 0.975])  # doctest: +SKIP
        """
        prepared = self._prepare(data)
        (values,) = self._shares([prepared], verbose)
        rows = np.arange(prepared.size) if prepared.rows is None else prepared.rows
        return pd.DataFrame(values, index=self.params.index, columns=self._columns(rows))

    def predict_changes(
        self, data: pd.DataFrame, *, relative: bool = True, verbose: bool | None = None
    ) -> pd.DataFrame:
        """Share changes from the estimation data to ``data``, for every draw.

        Each draw predicts both the baseline (its shares at the estimation data of the
        markets ``data`` covers) and the counterfactual, in one pass over the draws.

        Parameters
        ----------
        data : pandas.DataFrame
            Changed product data (complete markets).
        relative : bool
            Changes in percent of the baseline share (default) instead of share points.
        verbose : bool, optional
            Show progress over the draws (default: as set by ``bootstrap(verbose=...)``).

        Returns
        -------
        pandas.DataFrame
            ``draws × products`` changes, the columns as in :meth:`predict` (row order of
            ``data``); percentiles over the rows give intervals for the changes.

        Examples
        --------
        >>> changes = results.bootstrap(draws=200, seed=0).predict_changes(market)  # doctest: +SKIP
        >>> changes.quantile([0.025, 0.975])  # doctest: +SKIP
        """
        check_flag("relative", relative)
        changed = self._prepare(data)
        if changed.rows is None:
            raise BLPInputError("predict_changes needs the changed product data as data=")
        rows = changed.rows
        design = self.results.model.design
        # The baseline is the estimation data of the same rows: its X1 and X2 are the model's.
        baseline = _Prepared(
            design.data.iloc[rows], rows, (design.X[rows], design.random.values[rows]), rows.size
        )
        before, after = self._shares([baseline, changed], verbose)
        change = 100.0 * (after / before - 1.0) if relative else after - before
        return pd.DataFrame(change, index=self.params.index, columns=self._columns(rows))

    # ------------------------------------------------------------------ counterfactuals
    def results_at(self, draw: int) -> Any:
        """The results at one draw's parameters, the observed data rationalized again.

        Counterfactuals at a draw θ_b must start from the observed market, as the point
        estimate's do: δ_b solves s(δ_b; θ_b) = observed shares (one share inversion per
        market; δ does not depend on β, so a logit and any draw with the estimated nonlinear
        parameters keep δ̂), ξ_b = ξ̂ + (δ_b − δ̂) − X1(β_b − β̂) with the fixed effects held at
        their estimates, and marginal costs imputed on the returned results (``costs()``,
        ``merger()``) are p − η(θ_b) at the observed prices and shares. Holding ξ at ξ̂
        instead (as :meth:`predict` and pyblp's bootstrap do) would start each draw from
        shares that are not the observed ones and leave the costs unrationalized. The data,
        the agents (integration nodes) and the estimates' ``cov_params()`` are shared.

        Parameters
        ----------
        draw : int
            Position of the draw (0 … ``draws`` − 1).

        Returns
        -------
        BLPResults
            A copy of the results with ``params``, the demand, δ and ξ at the draw; every
            post-estimation and counterfactual method can be called on it.

        Raises
        ------
        BLPInputError
            ``draw`` out of range.
        FixedPointError
            The share inversion did not converge in some markets (named).

        Examples
        --------
        >>> bootstrapped = results.bootstrap(draws=100, seed=0)  # doctest: +SKIP
        >>> at_draw = bootstrapped.results_at(3)  # doctest: +SKIP
        >>> at_draw.merger({"F2": "F1"}).markets["consumer_surplus_change"]  # doctest: +SKIP
        """
        if (
            isinstance(draw, (bool, np.bool_))
            or not isinstance(draw, (int, np.integer))
            or not 0 <= draw < self.draws
        ):
            raise BLPInputError(f"draw must be an integer in [0, {self.draws}), got {draw!r}")
        results = self.results
        values = self.params.to_numpy()[int(draw)].astype(np.float64)
        beta, theta = results._demand_parameters(values)
        demand = results.demand
        system = demand.with_parameters(beta, theta)
        estimated = demand.theta if demand.theta is not None else demand.rho
        unchanged = theta is None or (
            estimated is not None and np.array_equal(np.ravel(theta), np.ravel(estimated))
        )
        delta = results._delta if unchanged else _inverted_delta(system, results)
        system = replace(system, delta=np.asarray(delta, dtype=np.float64))
        view = copy.copy(results)
        # statsmodels keeps cached attributes (bse, tvalues, ...) in ``_cache``: a fresh one,
        # so nothing computed at the estimates is read back at the draw.
        view._cache = {}
        view.params = values
        view.demand = system
        view._delta = system.delta
        design = results.model.design
        view._xi = results._xi + (system.delta - results._delta) - design.X @ (beta - demand.beta)
        return view

    def views(self, *, verbose: bool | None = None) -> Iterator[tuple[int, Any]]:
        """``(draw, results at the draw)`` for every draw, as :meth:`results_at` builds them.

        A draw whose share inversion fails is yielded with the :class:`FixedPointError`
        instead of results.

        Examples
        --------
        >>> for draw, at_draw in results.bootstrap(draws=10, seed=0).views():  # doctest: +SKIP
        ...     print(draw, at_draw.costs().mean())
        """
        verbose = self.verbose if verbose is None else verbose
        check_flag("verbose", verbose)
        for draw in progress(range(self.draws), self.draws, "bootstrap", verbose):
            try:
                yield draw, self.results_at(draw)
            except FixedPointError as error:
                yield draw, error

    def apply(self, function: Callable[[Any], Any], *, verbose: bool | None = None) -> DrawOutcomes:
        """Call ``function`` on the results at every draw (:meth:`results_at`).

        This is the hook for uncertainty of any counterfactual: ``function`` receives results
        whose demand, δ, ξ and imputed costs are those of one draw and returns what it
        computes there. A draw where the share inversion or the function raises one of the
        errors of a failed counterfactual (:class:`~blpmodels.BLPInputError`,
        :class:`~blpmodels.FixedPointError`, a linear-algebra or floating-point error) is
        counted in ``failures`` with its message, never dropped silently; warnings raised
        inside the draws are counted in ``warnings`` instead of repeated once a draw. Call
        ``function`` on the estimates first: an input mistake would otherwise fail every draw.

        Parameters
        ----------
        function : callable
            ``function(results_at_draw)``; e.g. ``lambda r: r.merger({"F2": "F1"})``.
        verbose : bool, optional
            Show progress over the draws (default: as set by ``bootstrap(verbose=...)``).

        Returns
        -------
        DrawOutcomes
            ``values`` (one per draw, None where it failed), ``failures`` (draw → message)
            and ``warnings`` (message → number of draws that raised it).

        Examples
        --------
        >>> bootstrapped = results.bootstrap(draws=100, seed=0)  # doctest: +SKIP
        >>> outcomes = bootstrapped.apply(lambda r: r.costs().mean())  # doctest: +SKIP
        >>> np.nanpercentile(outcomes.array(), [2.5, 97.5])  # doctest: +SKIP
        """
        if not callable(function):
            raise BLPInputError(f"function must be callable, got {type(function).__name__}")
        values: list[Any] = []
        failures: dict[int, str] = {}
        counted: dict[str, int] = {}
        for draw, view in self.views(verbose=verbose):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    if isinstance(view, Exception):
                        raise view
                    values.append(function(view))
                except DRAW_ERRORS as error:
                    values.append(None)
                    failures[draw] = f"{type(error).__name__}: {error}"
            for message in {f"{w.category.__name__}: {w.message}" for w in caught}:
                counted[message] = counted.get(message, 0) + 1
        return DrawOutcomes(values, failures, counted)

    # ------------------------------------------------------------------ display
    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """The draws beside the estimates: mean, standard deviation and percentile interval.

        Parameters
        ----------
        level : float
            Coverage of the percentile interval.

        Returns
        -------
        pandas.DataFrame
            One row per parameter: ``estimate`` and ``std err`` (the fit's), the draws'
            ``mean`` and ``std``, and the interval's ends labelled by their percentiles.

        Examples
        --------
        >>> results.bootstrap(draws=200, seed=0).summary()  # doctest: +SKIP
        """
        if not 0.0 < float(level) < 1.0:
            raise BLPInputError(f"level must be in (0, 1), got {level!r}")
        tail = 50.0 * (1.0 - float(level))
        values = self.params.to_numpy()
        low, high = np.percentile(values, [tail, 100.0 - tail], axis=0)
        return pd.DataFrame(
            {
                "estimate": np.asarray(self.results.params, dtype=np.float64),
                "std err": np.asarray(self.results.bse, dtype=np.float64),
                "mean": values.mean(axis=0),
                "std": values.std(axis=0, ddof=1) if self.draws > 1 else np.nan,
                f"{tail:g}%": low,
                f"{100.0 - tail:g}%": high,
            },
            index=self.params.columns,
        )

    def _description(self) -> str:
        seed = "" if self.seed is None else f", seed {self.seed}"
        moved = f"; {self.moved} moved onto parameter bounds" if self.moved else ""
        return f"Parametric bootstrap: {self.draws} draws from N(params, cov_params()){seed}{moved}"

    def __repr__(self) -> str:
        return f"<BootstrappedResults: {self._description()}>"

    def _repr_html_(self) -> str:
        """The summary as HTML, so that a notebook cell ending in the bootstrap shows it."""
        table = self.summary().to_html(float_format=lambda value: f"{value:.4g}")
        return f"<p>{html.escape(self._description())}</p>\n{table}"
