"""Parametric bootstrap: parameter draws from the estimates' asymptotic distribution and the
demand each draw implies.

:class:`BootstrapMixin` gives :class:`~blpmodels.results.BLPResults` its ``bootstrap`` method,
which returns :class:`BootstrappedResults`.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from blpmodels.data.design import warn_user
from blpmodels.estimation.optimize import progress
from blpmodels.exceptions import BLPInputError
from blpmodels.results.base import ResultsRole, check_flag
from blpmodels.results.demand import DemandSystem

__all__ = ["BootstrapMixin", "BootstrappedResults"]


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
