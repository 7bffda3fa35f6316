"""Parametric bootstrap: parameter draws from the estimates' asymptotic distribution and the
demand each draw implies.

:class:`BootstrapMixin` gives :class:`~blpmodels.results.BLPResults` its ``bootstrap`` method,
which returns :class:`BootstrappedResults`.
"""

from __future__ import annotations

from collections.abc import Iterator

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
            Show progress over the draws when the bootstrapped results predict (a tqdm bar
            when tqdm is installed, the ``progress`` extra; plain lines otherwise).

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
        return BootstrappedResults(self, frame, verbose=bool(verbose))


class BootstrappedResults:
    """Parameter draws from a parametric bootstrap and the demand they imply.

    Attributes
    ----------
    results : BLPResults
        The estimates the draws are centered on.
    params : pandas.DataFrame
        ``draws × parameters`` draws.
    verbose : bool
        Show progress over the draws in :meth:`predict`.
    """

    def __init__(self, results: ResultsRole, params: pd.DataFrame, verbose: bool = False) -> None:
        self.results = results
        self.params = params
        self.verbose = verbose

    @property
    def draws(self) -> int:
        """Number of draws."""
        return len(self.params)

    def _systems(self, verbose: bool) -> Iterator[DemandSystem]:
        """The estimated demand at each draw's parameters, in draw order."""
        values = self.params.to_numpy()
        for row in progress(values, len(values), "bootstrap draws", verbose):
            yield self.results.demand.with_parameters(*self.results._demand_parameters(row))

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
        verbose = self.verbose if verbose is None else verbose
        check_flag("verbose", verbose)
        design = self.results.model.design
        rows = np.arange(design.nobs) if data is None else design.match_rows(data)
        columns = pd.MultiIndex.from_arrays(
            [design.market_ids[rows], self.results.demand.product_labels(rows)],
            names=["market_ids", "product_ids"],
        )
        values = np.vstack([system.shares(data) for system in self._systems(verbose)])
        return pd.DataFrame(values, index=self.params.index, columns=columns)
