"""statsmodels-style BLP model classes.

* :class:`BLPLogit` — plain logit demand by linear IV-GMM on δ = log s_j − log s_0.
* :class:`BLPNestedLogit` — nested logit in closed form: log s_j − log s_0 regressed on X1
  and the log within-nest share(s), instrumented.
* :class:`~blpmodels.random_coefficients.BLPRandomCoefficients` — random coefficients with
  demographics, optionally nested (RCNL); defined in its own module.

The classes are thin: they validate inputs into a :class:`~blpmodels.products.ProductDesign`,
call the estimation pipelines, and wrap the output in :class:`~blpmodels.results.BLPResults`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from formulaic.utils.context import capture_context
from statsmodels.base.model import Model

from .absorb import AbsorbMethod
from .demand import DemandSystem
from .estimation import GMMOptions, LinearEstimate, fit_linear, gmm_options
from .exceptions import BLPInputError
from .formula import parse_formula
from .products import ProductDesign
from .results import BLPResults, BLPResultsWrapper, EstimationInfo
from .supply_design import build_supply_design

__all__ = ["BLPLogit", "BLPModel", "BLPNestedLogit"]


class BLPModel(Model):
    """Base class: holds the validated product design and statsmodels' data handling.

    Parameters
    ----------
    shares : array-like
        Market shares.
    exog : array-like or DataFrame
        Exogenous characteristics (add a constant column yourself if wanted).
    endog : array-like or DataFrame, optional
        Regressors to instrument (e.g. prices).
    instruments : array-like or DataFrame, optional
        Excluded instruments.
    market_ids : array-like
        Market of each row.
    product_ids, firm_ids, nesting_ids : array-like, optional
        Product, firm and nest of each row.
    absorb : array-like or DataFrame, optional
        Fixed-effect ids, one column per dimension.
    absorb_method : str, optional
        pyhdfe residualization method.
    """

    def __init__(
        self,
        shares: Any,
        exog: Any,
        endog: Any = None,
        instruments: Any = None,
        *,
        market_ids: Any,
        product_ids: Any = None,
        firm_ids: Any = None,
        nesting_ids: Any = None,
        absorb: Any = None,
        absorb_method: AbsorbMethod | None = None,
    ) -> None:
        design = ProductDesign.from_arrays(
            shares,
            exog,
            endog,
            instruments,
            market_ids=market_ids,
            product_ids=product_ids,
            firm_ids=firm_ids,
            nesting_ids=nesting_ids,
            absorb=absorb,
            absorb_method=absorb_method,
        )
        self._setup(design)

    def _setup(self, design: ProductDesign) -> None:
        self.design = design
        index = design.data.index
        endog = pd.Series(design.shares, index=index, name=design.shares_column)
        exog = pd.DataFrame(design.X, index=index, columns=design.x_names)
        super().__init__(endog, exog)
        self.formula = design.formula

    @classmethod
    def _from_design(cls, design: ProductDesign, **attributes: Any) -> BLPModel:
        model = cls.__new__(cls)
        for name, value in attributes.items():
            setattr(model, name, value)
        model._setup(design)
        return model

    @classmethod
    def from_formula(  # type: ignore[override]
        cls,
        formula: str,
        data: pd.DataFrame,
        absorb: str | None = None,
        *,
        absorb_method: AbsorbMethod | None = None,
        context: Mapping[str, Any] | None = None,
        supply: str | None = None,
        supply_instruments: str | None = None,
        costs_type: str = "linear",
        supply_absorb: str | None = None,
        costs_bounds: Any = None,
        **kwargs: Any,
    ) -> BLPModel:
        """Build the model from a formula such as ``shares ~ 1 + mushy + [prices ~ z]``.

        Parameters
        ----------
        formula : str
            ``shares ~ exog + [endog ~ instruments]``; ``0 +`` drops the constant (dropped
            automatically with absorbed fixed effects).
        data : pandas.DataFrame
            Product data with ``market_ids`` (and optionally ``product_ids``, ``firm_ids``,
            ``nesting_ids``).
        absorb : str, optional
            Fixed effects, e.g. ``"C(market_ids) + C(product_ids)"``.
        absorb_method : str, optional
            pyhdfe method ("within", "map", "lsmr", "sw", "dummy").
        context : mapping, optional
            Extra names for formula transforms (the caller's namespace is used by default).
        supply : str, optional
            Marginal-cost characteristics, e.g. ``"1 + mushy"``: estimate demand jointly with
            the cost equation f(p − η) = X3γ + ω, η the Bertrand–Nash markups under
            ``firm_ids``, with moments E[Z_S ω] = 0. The price coefficient (and ρ) then
            become nonlinear parameters, γ is concentrated out and named ``gamma[...]``.
        supply_instruments : str, optional
            Excluded supply instruments (added to the X3 columns).
        costs_type : {"linear", "log"}
            f(c) = c or log c.
        supply_absorb : str, optional
            Fixed effects in the cost equation.
        costs_bounds : tuple, optional
            ``(lower, upper)`` clipping of the implied costs before f.

        Returns
        -------
        BLPModel
        """
        if kwargs:
            raise BLPInputError(f"unexpected keyword arguments {sorted(kwargs)}")
        namespace = dict(capture_context(1) or {})
        namespace.update(context or {})
        design = ProductDesign.from_formula(
            parse_formula(formula),
            data,
            absorb=absorb,
            absorb_method=absorb_method,
            context=namespace,
            formula=formula,
        )
        supply_design = build_supply_design(
            design,
            supply,
            supply_instruments=supply_instruments,
            costs_type=costs_type,
            supply_absorb=supply_absorb,
            costs_bounds=costs_bounds,
            absorb_method=absorb_method,
            context=namespace,
        )
        return cls._from_design(design, supply=supply_design)

    #: The cost side when built with ``supply=`` (see :meth:`from_formula`).
    supply: Any = None

    def _supply_fit(
        self,
        fit_options: Mapping[str, Any],
        *,
        rho: Any = None,
        beta: Mapping[str, float] | None = None,
        **gmm: Any,
    ) -> BLPResultsWrapper:
        """Joint demand and supply estimation (see :func:`fit_logit_with_supply`)."""
        from .random_coefficients import fit_logit_with_supply

        return fit_logit_with_supply(
            self, self.supply, rho=rho, beta=beta, **gmm, **dict(fit_options)
        )

    def _no_supply_options(self, beta: Any, fit_options: Mapping[str, Any]) -> None:
        if beta is not None or fit_options:
            names = sorted(fit_options) + (["beta"] if beta is not None else [])
            raise BLPInputError(
                f"{names} only apply with a supply side (from_formula(..., supply='1 + ...')): "
                "without one the model is linear and fitted in closed form"
            )

    def predict(self, params: Any = None, exog: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Not on the model: shares are predicted by the fitted results.

        statsmodels models predict from a parameter vector and a design matrix; BLP shares
        also need the estimated ξ, fixed effects and agents, which live in the results. Use
        :meth:`BLPResults.predict <blpmodels.results.BLPResults.predict>` (shares at the
        estimation data or at changed prices and characteristics), or the results'
        ``elasticities``, ``diversion_ratios`` and ``probabilities``.

        Raises
        ------
        NotImplementedError
            Always, saying to call ``results.predict``.

        Examples
        --------
        >>> results = model.fit()  # doctest: +SKIP
        >>> shares = results.predict(changed_data)  # doctest: +SKIP
        """
        raise NotImplementedError(
            f"{type(self).__name__}.predict is not available: fit first and predict from the "
            "results, e.g. results = model.fit(...); results.predict(data) gives shares at "
            "the estimation data or at changed prices and characteristics (ξ held)"
        )

    # statsmodels reads these
    def loglike(self, params: np.ndarray) -> float:  # pragma: no cover - GMM has none
        """GMM models have no likelihood."""
        raise NotImplementedError("BLP models are estimated by GMM and have no likelihood")

    def _linear_info(self, options: GMMOptions, estimate: LinearEstimate) -> EstimationInfo:
        """Diagnostics of a linear (closed-form) IV-GMM fit."""
        return EstimationInfo(
            method=options.method,
            cov_type=options.cov_type,
            objective=estimate.objective,
            W=estimate.W,
            updated_W=estimate.updated_W,
            moment_covariance=estimate.S,
            n_moments=len(self.design.z_names),
            first_stage=estimate.first_stage,
            steps=estimate.steps,
        )

    def _results(
        self,
        params: np.ndarray,
        names: list[str],
        cov: np.ndarray,
        info: EstimationInfo,
        demand: DemandSystem,
        xi: np.ndarray,
        delta: np.ndarray,
    ) -> BLPResultsWrapper:
        # Each fit labels its own parameters, so later fits of the same model with other
        # free parameters cannot relabel earlier results.
        model = copy.copy(self)
        model.data = copy.copy(self.data)
        model.data.param_names = list(names)
        model.exog_names  # noqa: B018 - touch so statsmodels caches the names
        results = BLPResults(model, params, cov, info, demand, xi, delta)
        return BLPResultsWrapper(results)


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
        if self.supply is not None:
            return self._supply_fit(
                fit_options, beta=beta, method=method, W=W, cov_type=cov_type, cov_kwds=cov_kwds
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


class BLPNestedLogit(BLPModel):
    """Nested logit demand in closed form (linear IV on log within-nest shares).

    log(s_j / s_0) = X1 β + ρ log s_{j|h} + ξ_j, where s_{j|h} is product j's share within its
    nest; ρ (one for all nests, or one per nest with ``rho="nest"``) is instrumented by the
    excluded instruments in the formula, so give at least one more instrument than
    instrumented regressors (e.g. the number of products in the nest). This is the exact GMM
    estimator that numerical optimization over ρ would reach.

    The product data need ``nesting_ids``.

    Examples
    --------
    pyblp's nested-logit tutorial on Nevo's cereal data (nests = mushy):

    >>> from blpmodels import BLPNestedLogit, datasets  # doctest: +SKIP
    >>> products, _ = datasets.load_nevo()  # doctest: +SKIP
    >>> products["nesting_ids"] = products["mushy"]  # doctest: +SKIP
    >>> groups = products.groupby(["market_ids", "nesting_ids"])["shares"]  # doctest: +SKIP
    >>> products["nest_count"] = groups.transform("size")  # doctest: +SKIP
    >>> instruments = " + ".join(f"demand_instruments{k}" for k in range(20))  # doctest: +SKIP
    >>> model = BLPNestedLogit.from_formula(
    ...     f"shares ~ 0 + [prices ~ {instruments} + nest_count]", products)  # doctest: +SKIP
    >>> round(float(model.fit(method="2s").params["rho"]), 4)  # doctest: +SKIP
    0.8915
    """

    def _within_shares(
        self, per_nest: bool
    ) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        design = self.design
        if design.nesting_ids is None:
            raise BLPInputError("the nested logit needs a nesting_ids column in the product data")
        nest_codes, nest_labels = pd.factorize(pd.Series(design.nesting_ids), sort=True)
        keys = pd.MultiIndex.from_arrays([design.market_ids, nest_codes])
        group, _ = keys.factorize()
        nest_totals = np.bincount(group, weights=design.shares)[group]
        log_within = np.log(design.shares) - np.log(nest_totals)
        if not per_nest:
            return log_within[:, None], ["rho"], nest_codes, np.asarray(nest_labels, dtype=object)
        columns = np.zeros((design.nobs, len(nest_labels)))
        columns[np.arange(design.nobs), nest_codes] = log_within
        names = [f"rho[{label}]" for label in nest_labels]
        return columns, names, nest_codes, np.asarray(nest_labels, dtype=object)

    def fit(  # type: ignore[override]
        self,
        method: str = "1s",
        W: Any = None,
        cov_type: str = "robust",
        cov_kwds: Mapping[str, Any] | None = None,
        rho: str = "common",
        *,
        rho_start: Any = None,
        beta: Mapping[str, float] | None = None,
        **fit_options: Any,
    ) -> BLPResultsWrapper:
        """Estimate β and ρ by one- or two-step linear GMM.

        Parameters
        ----------
        method, W, cov_type, cov_kwds
            As in :meth:`BLPLogit.fit`.
        rho : {"common", "nest"}
            One ρ for all nests, or one per nest.
        rho_start : float or array-like, optional
            With a supply side only: starting ρ (default the demand-only closed-form
            estimate, clipped into [0, 0.99]).
        beta, **fit_options
            With a supply side only, as in :meth:`BLPLogit.fit`.

        Returns
        -------
        BLPResults
            Parameters are β followed by ``rho`` (or ``rho[<nest>]``); with a supply side β,
            ``gamma[...]``, then ρ.
        """
        if rho not in ("common", "nest"):
            raise BLPInputError(f"rho must be 'common' or 'nest', got {rho!r}")
        if self.supply is not None:
            return self._nested_supply_fit(
                rho,
                rho_start,
                beta,
                fit_options,
                method=method,
                W=W,
                cov_type=cov_type,
                cov_kwds=cov_kwds,
            )
        self._no_supply_options(beta, fit_options)
        if rho_start is not None:
            raise BLPInputError(
                "rho_start only applies with a supply side: without one ρ is estimated in "
                "closed form"
            )
        design = self.design
        within, rho_names, nest_codes, _ = self._within_shares(rho == "nest")
        options = gmm_options(design, method, W, cov_type, cov_kwds, len(design.z_names))
        within_absorbed = design.residualize(within)
        X = np.column_stack([design.X_absorbed, within_absorbed])
        if design.Z_absorbed.shape[1] < X.shape[1]:
            raise BLPInputError(
                f"the nested logit has {X.shape[1]} regressors including {rho_names} but only "
                f"{design.Z_absorbed.shape[1]} instruments; add excluded instruments for the "
                "within-nest share(s), e.g. the number of products in each nest"
            )
        logit_delta = design.logit_delta()
        estimate = fit_linear(
            design.residualize(logit_delta),
            X,
            design.Z_absorbed,
            options,
            n_exog=design.exog.size,
            endog_names=[*design.endog.names, *rho_names],
        )
        k1 = design.X.shape[1]
        beta, rho_values = estimate.beta[:k1], estimate.beta[k1:]
        if ((rho_values < 0) | (rho_values >= 1)).any():
            import warnings

            from .exceptions import ConvergenceWarning

            warnings.warn(
                f"estimated rho {rho_values.round(4).tolist()} lies outside [0, 1): the nested "
                "logit is not consistent with utility maximization there",
                ConvergenceWarning,
                stacklevel=2,
            )
        delta = logit_delta - within @ rho_values
        info = self._linear_info(options, estimate)
        n_nests = int(nest_codes.max()) + 1
        demand = DemandSystem(
            design,
            beta,
            delta,
            nest_codes=nest_codes,
            rho=np.broadcast_to(rho_values, (n_nests,)).copy(),
        )
        return self._results(
            estimate.beta,
            [*design.x_names, *rho_names],
            estimate.cov,
            info,
            demand,
            estimate.xi,
            delta,
        )

    def _nested_supply_fit(
        self,
        rho: str,
        rho_start: Any,
        beta: Mapping[str, float] | None,
        fit_options: Mapping[str, Any],
        **gmm: Any,
    ) -> BLPResultsWrapper:
        """Nested logit with a supply side: ρ and α nonlinear, started from the closed form."""
        _, _, _, nest_labels = self._within_shares(rho == "nest")
        if rho_start is None:
            # The price coefficients then start at the closed-form estimate too: at the
            # closed-form ρ, the demand-only IV estimate of β is the closed-form β.
            demand_only = copy.copy(self)
            demand_only.supply = None
            closed = demand_only.fit(rho=rho)
            rho_start = np.clip(np.asarray(closed.params)[len(self.design.x_names) :], 0.0, 0.99)
        start = np.atleast_1d(np.asarray(rho_start, dtype=np.float64))
        if rho == "nest" and start.size == 1:
            start = np.full(len(nest_labels), start[0])
        if rho == "common" and start.size != 1:
            raise BLPInputError(
                f"rho='common' takes one starting value, got rho_start of size {start.size}"
            )
        return self._supply_fit(
            fit_options, rho=start if rho == "nest" else start[0], beta=beta, **gmm
        )
