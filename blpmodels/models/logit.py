"""Plain logit demand by linear IV-GMM on δ = log s_j − log s_0."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blpmodels.estimation.linear import fit_linear, gmm_options
from blpmodels.models.base import BLPModel, check_keywords
from blpmodels.models.random_coefficients import fit_logit_with_supply, supply_fit_options
from blpmodels.results.demand import DemandSystem
from blpmodels.results.results import BLPResultsWrapper

__all__ = ["BLPLogit"]


class BLPLogit(BLPModel):
    """Plain logit demand, estimated by linear IV-GMM on δ = log s_j − log s_0.

    Examples
    --------
    >>> from blpmodels import BLPLogit, datasets  # doctest: +SKIP
    >>> data = datasets.load_mixtape_products()  # doctest: +SKIP
    >>> model = BLPLogit.from_formula(
    ...     "shares ~ 0 + [prices ~ price_instrument]", data,
    ...     absorb="C(market_ids) + C(product_ids)")  # doctest: +SKIP
    >>> results = model.fit()  # doctest: +SKIP
    >>> round(float(results.params["prices"]), 1)  # doctest: +SKIP
    -30.6
    """

    def fit(  # type: ignore[override]
        self,
        method: str = "1s",
        W: Any = None,
        cov_type: str = "robust",
        cov_kwds: Mapping[str, Any] | None = None,
        *,
        beta: Mapping[str, float] | None = None,
        **fit_options: Any,
    ) -> BLPResultsWrapper:
        """Estimate by one- or two-step GMM.

        Parameters
        ----------
        method : {"1s", "2s"}
            One-step GMM with W (default (Z'Z/N)⁻¹), or two steps with W updated to S⁻¹.
        W : array-like, optional
            First-step weighting matrix (M×M; with a supply side, over the demand and then
            the supply instruments).
        cov_type : {"robust", "HC0", "unadjusted", "clustered"}
            Covariance of the estimates (and of the moments used to update W).
        cov_kwds : dict, optional
            ``{"groups": ids or column name(s)}`` for clustering (several columns give
            multi-way clustering); ``{"center": False}`` to not center robust moments.
        beta : dict, optional
            With a supply side only: starting price coefficient, e.g. ``{"prices": -30}``
            (default the demand-only IV estimate).
        **fit_options
            With a supply side only: optimizer settings of
            :meth:`~blpmodels.BLPRandomCoefficients.fit` (``optimizer``,
            ``optimizer_options``, ``max_evaluations``, ``compute_hessian``, …).

        Returns
        -------
        BLPResults
            β, then ``gamma[...]`` with a supply side.
        """
        check_keywords(
            "BLPLogit.fit",
            fit_options,
            ["method", "W", "cov_type", "cov_kwds", "beta", *supply_fit_options()],
        )
        if self.supply is not None:
            return fit_logit_with_supply(
                self,
                self.supply,
                beta=beta,
                method=method,
                W=W,
                cov_type=cov_type,
                cov_kwds=cov_kwds,
                **fit_options,
            )
        self._no_supply_options(beta, fit_options)
        design = self.design
        options = gmm_options(design, method, W, cov_type, cov_kwds, len(design.z_names))
        delta = design.logit_delta()
        estimate = fit_linear(
            design.residualize(delta),
            design.X_absorbed,
            design.Z_absorbed,
            options,
            n_exog=design.exog.size,
            endog_names=list(design.endog.names),
        )
        info = self._linear_info(options, estimate)
        demand = DemandSystem(design, estimate.beta, delta)
        return self._results(
            estimate.beta, design.x_names, estimate.cov, info, demand, estimate.xi, delta
        )
