"""Nested logit demand in closed form.

log s_j − log s_0 is regressed on X1 and the log within-nest share(s), instrumented.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import check_columns, warn_user
from blpmodels.data.nests import TwoLevelCodes, nesting_column_names, two_level_log_within
from blpmodels.estimation.linear import fit_linear, gmm_options
from blpmodels.exceptions import BLPInputError
from blpmodels.models.base import BLPModel, KeywordError, _advice, check_keywords
from blpmodels.models.random_coefficients import fit_logit_with_supply, supply_fit_options
from blpmodels.results.demand import DemandSystem
from blpmodels.results.results import BLPResultsWrapper
from blpmodels.results.two_level_demand import TwoLevelDemand, check_two_level_rho

__all__ = ["BLPNestedLogit"]


class BLPNestedLogit(BLPModel):
    """Nested logit demand in closed form (linear IV on log within-nest shares).

    log(s_j / s_0) = X1 β + ρ log s_{j|h} + ξ_j, where s_{j|h} is product j's share within its
    nest; ρ (one for all nests, or one per nest with ``rho="nest"``) is instrumented by the
    excluded instruments in the formula, so give at least one more instrument than
    instrumented regressors (e.g. the number of products in the nest). This is the exact GMM
    estimator that numerical optimization over ρ would reach.

    The product data need ``nesting_ids``.

    Two-level nests (Verboven 1996: segments h within size classes g) come from two columns,
    upper level first (``from_formula(..., nesting_ids=["size", "segment"])``, or a two-column
    ``nesting_ids`` frame in the array interface). The regression is then Verboven's
    log(s_j / s_0) = X1 β + ρ_lower log s_{j|h} + ρ_upper log s_{h|g} + ξ_j, with parameters
    ``rho_upper`` and ``rho_lower``; random utility needs 0 ≤ ρ_upper ≤ ρ_lower < 1, and an
    estimate outside that range gives a :class:`~blpmodels.ConvergenceWarning`. Give
    instruments for both within-nest shares (e.g. the numbers of products in the product's
    lower and upper nests). Predictions, elasticities, diversion ratios, markups, costs and
    consumer surplus follow the two-level model; equilibrium prices and the counterfactuals
    built on them, a supply side and ``rho="nest"`` refuse two levels with a
    :class:`~blpmodels.exceptions.BLPInputError`. With random coefficients, see
    :meth:`~blpmodels.BLPRandomCoefficients.from_formula` (``nesting_ids=["size", "segment"]``).

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
        if design.nesting_levels == 2:
            return self._two_level_within(per_nest)
        nest_codes, nest_labels = pd.factorize(pd.Series(design.nesting_ids), sort=True)
        keys = pd.MultiIndex.from_arrays([design.market_ids, nest_codes])
        group, _ = keys.factorize()
        nest_totals = np.bincount(group, weights=design.shares)[group]
        log_within = np.log(design.shares) - np.log(nest_totals)
        _check_nests_have_company(np.bincount(group)[group] == 1, nest_codes, nest_labels, per_nest)
        if not per_nest:
            return log_within[:, None], ["rho"], nest_codes, np.asarray(nest_labels, dtype=object)
        columns = np.zeros((design.nobs, len(nest_labels)))
        columns[np.arange(design.nobs), nest_codes] = log_within
        names = [f"rho[{label}]" for label in nest_labels]
        return columns, names, nest_codes, np.asarray(nest_labels, dtype=object)

    def _two_level_within(
        self, per_nest: bool
    ) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """Verboven's regressors [log s_{h|g}, log s_{j|h}] for ρ_upper and ρ_lower."""
        if per_nest:
            raise BLPInputError(
                "rho='nest' (one ρ per nest) is not available with two-level nesting_ids: "
                "the two-level nested logit has one ρ per level (rho_upper, rho_lower)"
            )
        design = self.design
        assert design.nesting_ids is not None
        codes = TwoLevelCodes.from_ids(design.nesting_ids)
        log_lower, log_upper = two_level_log_within(design.shares, design.layout.codes, codes)
        for column, level, advice in (
            (log_lower, "lower", "every lower nest holds a single product in each market"),
            (log_upper, "upper", "every upper nest holds a single lower nest in each market"),
        ):
            if np.all(column == 0):
                raise BLPInputError(
                    f"{advice} (nesting_ids): rho_{level} is not identified; merge levels or "
                    "use one level of nests"
                )
        return (
            np.column_stack([log_upper, log_lower]),
            ["rho_upper", "rho_lower"],
            codes.lower,
            codes.lower_to_upper,
        )

    @classmethod
    def from_formula(  # type: ignore[override]
        cls,
        formula: str,
        data: pd.DataFrame,
        absorb: str | None = None,
        *,
        nesting_ids: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> BLPNestedLogit:
        """Build the model from a formula, as :meth:`BLPModel.from_formula`.

        Parameters
        ----------
        formula, data, absorb, **kwargs
            As in :meth:`BLPModel.from_formula`.
        nesting_ids : str or list of str, optional
            Product-data column(s) holding the nests: one column, or two for two-level
            nests, upper (coarser) level first, e.g. ``["size", "segment"]``. A lower nest is
            the pair of ids, so lower ids may repeat across upper nests. Default: the
            ``nesting_ids`` column.

        Returns
        -------
        BLPNestedLogit

        Examples
        --------
        >>> from blpmodels import BLPNestedLogit  # doctest: +SKIP
        >>> model = BLPNestedLogit.from_formula(
        ...     "shares ~ 1 + x + [prices ~ z + n_segment + n_size]", products,
        ...     nesting_ids=["size", "segment"])  # doctest: +SKIP
        """
        # The base class names its own keywords when one is misspelt; this adds nesting_ids.
        valid = [
            name
            for name in inspect.signature(BLPModel.from_formula).parameters
            if name not in ("cls", "kwargs")
        ]
        unknown = sorted(name for name in kwargs if name not in valid)
        if unknown:
            valid.append("nesting_ids")
            raise KeywordError(
                f"{cls.__name__}.from_formula: unexpected keyword arguments {unknown}; "
                f"{_advice(unknown[0], valid)}. Valid keywords: {', '.join(valid)}"
            )
        names = None if nesting_ids is None else nesting_column_names(nesting_ids)
        if names is not None:
            if not isinstance(data, pd.DataFrame):
                raise BLPInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
            check_columns(data, names)  # before the formula work
        model = super().from_formula(formula, data, absorb, **kwargs)
        if names is not None:
            model.design.use_nesting_columns(names)
        return model  # type: ignore[return-value]

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
            One ρ for all nests, or one per nest (one level of nests only; two-level nests
            have one ρ per level).
        rho_start : float or array-like, optional
            With a supply side only: starting ρ (default the demand-only closed-form
            estimate, clipped into [0, 0.99]).
        beta, **fit_options
            With a supply side only, as in :meth:`BLPLogit.fit`.

        Returns
        -------
        BLPResults
            Parameters are β followed by ``rho`` (or ``rho[<nest>]``, or ``rho_upper`` and
            ``rho_lower`` for two-level nests); with a supply side β, ``gamma[...]``, then ρ.
        """
        check_keywords(
            "BLPNestedLogit.fit",
            fit_options,
            [
                "method",
                "W",
                "cov_type",
                "cov_kwds",
                "rho",
                "rho_start",
                "beta",
                *supply_fit_options(),
            ],
        )
        if rho not in ("common", "nest"):
            raise BLPInputError(f"rho must be 'common' or 'nest', got {rho!r}")
        if self.supply is not None:
            if self.design.nesting_levels == 2:
                raise BLPInputError(
                    "a supply side is not available with two-level nesting_ids yet: fit the "
                    "two-level nested logit without supply=, or use one level of nests"
                )
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
        within, rho_names, nest_codes, nest_labels = self._within_shares(rho == "nest")
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
        delta = logit_delta - within @ rho_values
        demand = _closed_form_demand(design, beta, delta, rho_values, nest_codes, nest_labels)
        return self._results(
            estimate.beta,
            [*design.x_names, *rho_names],
            estimate.cov,
            self._linear_info(options, estimate),
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
        rho_start = start if rho == "nest" else start[0]
        return fit_logit_with_supply(
            self, self.supply, rho=rho_start, beta=beta, **gmm, **dict(fit_options)
        )


def _closed_form_demand(
    design: Any,
    beta: np.ndarray,
    delta: np.ndarray,
    rho_values: np.ndarray,
    nest_codes: np.ndarray,
    nest_labels: np.ndarray,
) -> DemandSystem:
    """The estimated demand, after warning when ρ is inconsistent with random utility.

    With two-level nests ``nest_codes`` are the lower nests and ``nest_labels`` the upper
    nest of each lower nest.
    """
    if design.nesting_levels == 2:
        check_two_level_rho(rho_values)
        return TwoLevelDemand(
            design,
            beta,
            delta,
            nest_codes=nest_codes,
            rho=rho_values.copy(),
            lower_to_upper=nest_labels,
        )
    if ((rho_values < 0) | (rho_values >= 1)).any():
        from blpmodels.exceptions import ConvergenceWarning

        warn_user(
            f"estimated rho {rho_values.round(4).tolist()} lies outside [0, 1): the nested "
            "logit is not consistent with utility maximization there",
            ConvergenceWarning,
        )
    n_nests = int(nest_codes.max()) + 1
    return DemandSystem(
        design,
        beta,
        delta,
        nest_codes=nest_codes,
        rho=np.broadcast_to(rho_values, (n_nests,)).copy(),
    )


def _check_nests_have_company(
    alone: np.ndarray, nest_codes: np.ndarray, nest_labels: Any, per_nest: bool
) -> None:
    """Raise when ρ is not identified: its nests hold a single product in every market.

    A product alone in its nest has within-nest share one, so its log within-nest share is 0;
    when that holds for every product (of a nest, with ``rho="nest"``) the column of ρ is zero
    and the IV normal equations are singular.
    """
    if alone.all():
        raise BLPInputError(
            "every nest holds a single product in each market (nesting_ids): within-nest "
            "shares are all one, so rho is not identified; put several products in a nest, "
            "or estimate a plain logit (BLPLogit)"
        )
    if not per_nest:
        return
    for code, label in enumerate(nest_labels):
        rows = nest_codes == code
        if alone[rows].all():
            raise BLPInputError(
                f"nest {label!r} holds a single product in every market, so its "
                f"rho[{label}] is not identified with rho='nest'; merge it with another nest "
                "or use rho='common'"
            )
