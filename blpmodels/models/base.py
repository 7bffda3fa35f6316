"""The statsmodels ``Model`` every BLP model subclasses.

:class:`BLPModel` validates a formula and data into a
:class:`~blpmodels.data.products.ProductDesign` and wraps estimates in
:class:`~blpmodels.results.BLPResults`; its subclasses (:mod:`blpmodels.models.logit`,
:mod:`blpmodels.models.nested_logit`, :mod:`blpmodels.models.random_coefficients`) add ``fit``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from formulaic.utils.context import capture_context
from statsmodels.base.model import Model

from blpmodels.data.absorb import AbsorbMethod
from blpmodels.data.formula import parse_formula
from blpmodels.data.products import ProductDesign
from blpmodels.data.supply_design import build_supply_design
from blpmodels.estimation.linear import GMMOptions, LinearEstimate
from blpmodels.exceptions import BLPInputError
from blpmodels.results.demand import DemandSystem
from blpmodels.results.results import BLPResults, BLPResultsWrapper, EstimationInfo

__all__ = ["BLPModel", "formula_namespace"]


def formula_namespace(context: Mapping[str, Any] | None) -> dict[str, Any]:
    """The names formula transforms may use: those where ``from_formula`` was called, then
    ``context``. Call it from ``from_formula`` itself (it reads the frame two levels up).

    Examples
    --------
    >>> def from_formula(context=None):
    ...     return formula_namespace(context)
    >>> scale = 3.0
    >>> from_formula()["scale"], from_formula({"scale": 2.0})["scale"]
    (3.0, 2.0)
    """
    # Frames up from capture_context: this function, from_formula, then its caller.
    namespace = dict(capture_context(2) or {})
    namespace.update(context or {})
    return namespace


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
        namespace = formula_namespace(context)
        design = cls._product_design(formula, data, namespace, absorb, absorb_method)
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

    @staticmethod
    def _product_design(
        formula: str,
        data: pd.DataFrame,
        namespace: Mapping[str, Any],
        absorb: str | None,
        absorb_method: AbsorbMethod | None,
        random: str | None = None,
    ) -> ProductDesign:
        """The product design of ``from_formula`` (X1, instruments, absorbed fixed effects, X2)."""
        return ProductDesign.from_formula(
            parse_formula(formula),
            data,
            absorb=absorb,
            absorb_method=absorb_method,
            random=random,
            context=namespace,
            formula=formula,
        )

    #: The cost side when built with ``supply=`` (see :meth:`from_formula`).
    supply: Any = None

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
