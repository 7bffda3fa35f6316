"""The statsmodels ``Model`` every BLP model subclasses.

:class:`BLPModel` validates a formula and data into a
:class:`~blpmodels.data.products.ProductDesign` and wraps estimates in
:class:`~blpmodels.results.BLPResults`; its subclasses (:mod:`blpmodels.models.logit`,
:mod:`blpmodels.models.nested_logit`, :mod:`blpmodels.models.random_coefficients`) add ``fit``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from formulaic.utils.context import capture_context
from statsmodels.base.model import Model

from blpmodels.data.absorb import AbsorbMethod
from blpmodels.data.design import warn_user
from blpmodels.data.formula import parse_formula
from blpmodels.data.products import ProductDesign
from blpmodels.data.supply_design import build_supply_design
from blpmodels.estimation.linear import GMMOptions, LinearEstimate
from blpmodels.exceptions import BLPInputError
from blpmodels.results.demand import DemandSystem
from blpmodels.results.results import BLPResults, BLPResultsWrapper, EstimationInfo

__all__ = [
    "PYBLP_KEYWORDS",
    "BLPModel",
    "KeywordError",
    "check_keywords",
    "checked_keywords",
    "formula_namespace",
]

_F = TypeVar("_F", bound=Callable[..., Any])


class KeywordError(BLPInputError, TypeError):
    """An unknown or missing keyword argument.

    A :class:`~blpmodels.exceptions.BLPInputError` that names the keyword and the valid ones,
    and also the ``TypeError`` Python raises for bad keywords, so code catching either works.
    """


#: pyblp's names for options spelled differently here, and what to write instead.
PYBLP_KEYWORDS: dict[str, str] = {
    "optimization": (
        "optimizer= (a name such as 'l-bfgs-b' or a callable) with optimizer_options={...}"
    ),
    "se_type": "cov_type= ('robust', 'unadjusted' or 'clustered', with cov_kwds={'groups': ...})",
    "W_type": "cov_type= (the moment covariance also updates W in two-step GMM)",
    "iteration": "fp_method=, fp_tol= and fp_max_evaluations= (the δ solver)",
    "fp_type": "fp_method= ('newton' or 'squarem')",
    "center_moments": "cov_kwds={'center': False}",
    "check_optimality": "compute_hessian=",
    "costs_bounds": "from_formula(..., costs_bounds=(lower, upper))",
    "product_formulations": (
        "a formula string for X1 ('shares ~ 1 + x + [prices ~ z]'), random= for X2 and "
        "supply= for X3"
    ),
    "agent_formulation": "demographics= (with agent_data=)",
    "product_data": "data=",
}


def _advice(name: str, valid: Sequence[str]) -> str:
    """What to write instead of an unknown keyword: ours for pyblp's, or a close name."""
    if name in PYBLP_KEYWORDS:
        return f"{name}= is pyblp's; here use {PYBLP_KEYWORDS[name]}"
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"did you mean {close[0]}=?" if close else "check the spelling"


def check_keywords(where: str, given: Iterable[str], valid: Sequence[str]) -> None:
    """Raise :class:`KeywordError` naming the first keyword not among ``valid``.

    Parameters
    ----------
    where : str
        The function called, e.g. ``"BLPLogit.fit"``.
    given : iterable of str
        Keyword names passed.
    valid : sequence of str
        Keyword names accepted.

    Raises
    ------
    KeywordError
        Naming the unknown keyword, what to write instead (pyblp's names are translated) and
        the valid keywords.

    Examples
    --------
    >>> check_keywords("BLPLogit.fit", ["se_type"], ["method", "cov_type"])
    Traceback (most recent call last):
    ...
    blpmodels.models.base.KeywordError: BLPLogit.fit: unknown keyword argument 'se_type'; ...
    """
    unknown = [name for name in given if name not in valid]
    if not unknown:
        return
    others = f" (and {unknown[1:]})" if len(unknown) > 1 else ""
    raise KeywordError(
        f"{where}: unknown keyword argument {unknown[0]!r}{others}; "
        f"{_advice(unknown[0], valid)}. Valid keywords: {', '.join(valid)}"
    )


def checked_keywords(missing: Mapping[str, str] | None = None) -> Callable[[_F], _F]:
    """Decorate a method so that bad keywords raise :class:`KeywordError` before any work.

    Unknown keywords are named with the valid ones (and pyblp's names translated); a missing
    required argument gets the hint in ``missing``. The signature seen by ``inspect`` and the
    documentation is the method's own.

    Parameters
    ----------
    missing : mapping, optional
        ``{argument: hint}`` appended when a required argument is missing.

    Returns
    -------
    callable
        The decorator.
    """
    hints = dict(missing or {})

    def decorate(function: _F) -> _F:
        signature = inspect.signature(function)
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        valid = [
            name
            for name, parameter in list(signature.parameters.items())[1:]  # self or cls
            if parameter.kind in kinds
        ]
        open_ended = any(
            parameter.kind is inspect.Parameter.VAR_KEYWORD
            for parameter in signature.parameters.values()
        )
        where = function.__qualname__

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not open_ended:
                check_keywords(where, kwargs, valid)
            try:
                signature.bind(*args, **kwargs)
            except TypeError as error:
                hint = "".join(text for name, text in hints.items() if f"'{name}'" in str(error))
                raise KeywordError(f"{where}: {error}{hint}") from None
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


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


#: Columns named like excluded demand instruments: pyblp's ``demand_instruments0``, …, the
#: Mixtape's ``price_instrument``. pyblp's ``supply_instruments*`` are left out: they belong to
#: the cost equation (``supply_instruments=``), not in the demand formula's brackets.
_INSTRUMENT_LIKE = re.compile("instrument", re.IGNORECASE)
_SUPPLY_INSTRUMENTS = re.compile("^supply_instrument", re.IGNORECASE)


def _unused_instruments(data: pd.DataFrame, *formulas: str | None) -> list[str]:
    """Columns of ``data`` named like demand instruments that no formula mentions.

    Parameters
    ----------
    data : pandas.DataFrame
        Product data.
    *formulas : str or None
        The formulas given (demand, random coefficients, ...).

    Returns
    -------
    list of str
        In the data's column order.

    Examples
    --------
    >>> frame = pd.DataFrame(columns=["shares", "prices", "demand_instruments0",
    ...                               "demand_instruments1", "supply_instruments0"])
    >>> _unused_instruments(frame, "shares ~ 1 + prices + demand_instruments1")
    ['demand_instruments0']
    """
    used = " ".join(formula for formula in formulas if formula)
    return [
        column
        for column in data.columns
        if isinstance(column, str)
        and _INSTRUMENT_LIKE.search(column)
        and not _SUPPLY_INSTRUMENTS.match(column)
        and not re.search(rf"(?<![\w.]){re.escape(column)}(?!\w)", used)
    ]


def _listing(columns: Sequence[str]) -> str:
    """Column names for a message, shortened when there are many."""
    if len(columns) <= 6:
        return ", ".join(columns)
    return f"{', '.join(columns[:3])}, …, {columns[-1]} ({len(columns)} columns)"


def _sum_terms(text: str) -> list[str]:
    """The terms of a formula sum, split at the '+' signs outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in text:
        depth += (char in "([{") - (char in ")]}")
        if char == "+" and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    return [term for term in [*terms, current.strip()] if term]


def _bracket_suggestion(formula: str, instruments: Sequence[str]) -> str:
    """``formula`` with prices (or the first term naming a price) instrumented by
    ``instruments``: the bracket syntax a pyblp user would otherwise miss.

    Parameters
    ----------
    formula : str
        A formula without instrumented regressors, e.g. ``"shares ~ 0 + prices"``.
    instruments : sequence of str
        Excluded instruments.

    Returns
    -------
    str
        The formula with ``[prices ~ instruments]``; with no price term, a placeholder for
        the regressor to instrument.

    Examples
    --------
    >>> _bracket_suggestion("shares ~ 1 + sugar + prices", ["z0", "z1"])
    'shares ~ 1 + sugar + [prices ~ z0 + z1]'
    >>> _bracket_suggestion("shares ~ 1 + sugar", ["z0"])
    'shares ~ 1 + sugar + [<regressor to instrument> ~ z0]'
    """
    parsed = parse_formula(formula)
    terms = _sum_terms(parsed.exog)
    priced = [term for term in terms if term == "prices"] or [
        term for term in terms if "price" in term.lower()
    ]
    endogenous = priced[0] if priced else "<regressor to instrument>"
    kept = [term for term in terms if term != endogenous] or ["1"]
    return f"{parsed.dependent} ~ {' + '.join(kept)} + [{endogenous} ~ {' + '.join(instruments)}]"


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
            valid = [
                name
                for name in inspect.signature(BLPModel.from_formula).parameters
                if name not in ("cls", "kwargs")
            ]
            first = sorted(kwargs)[0]
            raise KeywordError(
                f"{cls.__name__}.from_formula: unexpected keyword arguments {sorted(kwargs)}; "
                f"{_advice(first, valid)}. Valid keywords: {', '.join(valid)}"
            )
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

    @classmethod
    def _product_design(
        cls,
        formula: str,
        data: pd.DataFrame,
        namespace: Mapping[str, Any],
        absorb: str | None,
        absorb_method: AbsorbMethod | None,
        random: str | None = None,
    ) -> ProductDesign:
        """The product design of ``from_formula`` (X1, instruments, absorbed fixed effects, X2).

        Warns when nothing is instrumented while the data hold instrument-like columns.
        """
        design = ProductDesign.from_formula(
            parse_formula(formula),
            data,
            absorb=absorb,
            absorb_method=absorb_method,
            random=random,
            context=namespace,
            formula=formula,
        )
        if not design.endog.size:
            unused = _unused_instruments(data, formula, random)
            if unused:
                warn_user(
                    f"{cls.__name__}.from_formula: no regressor is instrumented, so all are "
                    "treated as exogenous (each is its own instrument; for a logit this is "
                    "OLS), yet the data hold instrument-like columns the formula does not use: "
                    f"{_listing(unused)}. To instrument prices with them, write prices and "
                    "its excluded instruments in square brackets:\n"
                    f"    {_bracket_suggestion(formula, unused)!r}\n"
                    "(other arguments as before). If exogenous regressors are intended, "
                    "ignore this warning."
                )
        return design

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
