"""Plots of fitted results: thin methods over :mod:`blpmodels.plotting`.

:class:`PlotsMixin` gives :class:`~blpmodels.results.BLPResults` its ``plot_*`` methods and
``profile_objective``; the plotting (matplotlib, imported only when a plot is drawn) stays in
:mod:`blpmodels.plotting`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from blpmodels import plotting

__all__ = ["PlotsMixin"]


class PlotsMixin:
    """Elasticity and diversion heatmaps, counterfactual bars, objective profiles and the
    optimizer trace of :class:`BLPResults`."""

    def plot_elasticities(self, market_id: Any = None, **options: Any) -> Any:
        """Heatmap of one market's elasticities, labelled by product.

        See :func:`blpmodels.plotting.plot_elasticities` for the options (``wrt``, ``data``,
        ``ax``, ``cmap``, ``annotate``). Needs matplotlib (``pip install "blpmodels[plot]"``).

        Examples
        --------
        >>> ax = results.plot_elasticities("C01Q1")  # doctest: +SKIP
        """
        return plotting.plot_elasticities(self, market_id, **options)

    def plot_diversion_ratios(self, market_id: Any = None, **options: Any) -> Any:
        """Heatmap of one market's diversion ratios, the outside good as its own column.

        See :func:`blpmodels.plotting.plot_diversion_ratios` for the options.

        Examples
        --------
        >>> ax = results.plot_diversion_ratios("C01Q1", long_run=True)  # doctest: +SKIP
        """
        return plotting.plot_diversion_ratios(self, market_id, **options)

    def plot_counterfactual(self, data: pd.DataFrame | None = None, **options: Any) -> Any:
        """Counterfactual share changes by product as bars, with bootstrap intervals.

        See :func:`blpmodels.plotting.plot_counterfactual` for the options (``bootstrap``,
        ``level``, ``relative``, ``ax``).

        Examples
        --------
        >>> ax = results.plot_counterfactual(cheaper, bootstrap=draws)  # doctest: +SKIP
        """
        return plotting.plot_counterfactual(self, data, **options)

    def profile_objective(self, parameter: str, values: Any = None, **options: Any) -> Any:
        """The GMM objective along one nonlinear parameter, the others held or re-optimized.

        See :func:`blpmodels.plotting.profile_objective` (``reoptimize``, ``points``,
        ``width``); returns a DataFrame.

        Examples
        --------
        >>> results.profile_objective("sigma[prices,prices]", points=11)  # doctest: +SKIP
        """
        return plotting.profile_objective(self, parameter, values, **options)

    def plot_profile(self, parameter: str | None = None, values: Any = None, **options: Any) -> Any:
        """Plot :meth:`profile_objective` (see :func:`blpmodels.plotting.plot_profile`).

        Examples
        --------
        >>> ax = results.plot_profile("sigma[prices,prices]", reoptimize=True)  # doctest: +SKIP
        """
        return plotting.plot_profile(self, parameter, values, **options)

    def plot_trace(self, **options: Any) -> Any:
        """Objective and projected gradient norm by optimizer iteration (``by="evaluation"``
        for every evaluation); see :func:`blpmodels.plotting.plot_trace`.

        Examples
        --------
        >>> ax = results.plot_trace()  # doctest: +SKIP
        """
        return plotting.plot_trace(self, **options)
