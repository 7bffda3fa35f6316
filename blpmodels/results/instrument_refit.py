"""Optimal instruments that know the fit they came from: re-estimate with them in one call.

:func:`~blpmodels.results.optimal_instruments.optimal_instruments` returns an
:class:`OptimalInstruments` frame: the instrument columns, plus :meth:`~OptimalInstruments.to_model`
(pyblp's ``OptimalInstrumentResults.to_problem``: the same model with these columns as its
excluded instruments) and :meth:`~OptimalInstruments.refit` (that model fitted, starting from
the estimates). The model is the original one with only its instruments replaced: the same
product and agent data, fixed effects, random coefficients, nests and execution settings.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from blpmodels.data.design import TermBlock
from blpmodels.data.formula import parse_formula, required_variables
from blpmodels.exceptions import BLPInputError

__all__ = ["OptimalInstruments"]


class OptimalInstruments(pd.DataFrame):
    """Feasible optimal instruments (a :class:`pandas.DataFrame`) tied to the fit they came
    from.

    The frame is what :func:`~blpmodels.results.optimal_instruments.optimal_instruments`
    documents: one column per instrumented linear and per nonlinear parameter, indexed like the
    product data. Frames derived from it (selections, copies, joins) are plain data frames.

    Examples
    --------
    >>> from blpmodels import BLPLogit
    >>> from blpmodels.simulation import simulate_logit
    >>> products = simulate_logit(n_markets=50, n_products=5, seed=0).products
    >>> results = BLPLogit.from_formula(
    ...     "shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    >>> refit = results.optimal_instruments().refit()
    >>> refit.model.design.instruments.names
    ('optimal_prices',)
    """

    # Derived frames are plain: a selection of rows no longer matches the fit's data.
    _metadata: ClassVar[list[str]] = ["_fit"]

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame

    def __init__(self, data: Any = None, *args: Any, fit: Any = None, **kwargs: Any) -> None:
        super().__init__(data, *args, **kwargs)
        object.__setattr__(self, "_fit", fit)

    def to_model(self, columns: Any = None) -> Any:
        """The fitted model with these columns as its excluded demand instruments.

        pyblp's ``OptimalInstrumentResults.to_problem``: the model is the one that was fitted
        (same data, fixed effects, random coefficients, demographics, agents, nests and
        settings) with only its excluded instruments replaced. Exogenous characteristics stay
        their own instruments, and fixed effects are absorbed from the new columns like from
        any instrument. With one instrument per parameter the model is just identified.

        Parameters
        ----------
        columns : sequence of str, optional
            The columns to use (default all), e.g. to leave out an instrument that is
            collinear with the others (pyblp's ``drop_indices``).

        Returns
        -------
        BLPModel
            A new model of the fitted model's class; the fitted model is not changed. Its
            product data are the fitted model's joined with the instrument columns (a column
            of the same name is replaced, e.g. when refitting a refit).

        Raises
        ------
        BLPInputError
            Unknown or no ``columns``; a column whose name the model's regressors or random
            coefficients read; a frame not made by ``optimal_instruments``.

        Examples
        --------
        >>> model = results.optimal_instruments().to_model()  # doctest: +SKIP
        >>> model.design.instruments.names  # doctest: +SKIP
        ('optimal_prices', 'optimal_sigma_prices_prices')
        """
        fit = self._fit
        if fit is None:
            raise BLPInputError(
                "these instruments are not tied to a fit: use the frame optimal_instruments() "
                "returned (a selection or copy of it is a plain DataFrame; choose columns with "
                "to_model(columns=[...]) instead)"
            )
        names = _chosen_columns(self, columns)
        model = getattr(fit, "model", None)
        design = model.design
        supply = getattr(model, "supply", None)
        frame = pd.DataFrame(self[names]).copy()
        data = design.data.drop(columns=[c for c in names if c in design.data.columns])
        _refuse_read_columns(design, names, supply)
        rebuilt = copy.copy(model)
        if supply is not None:
            # Each column goes to the block it was made for: the demand side's instruments
            # (E[∂ξ/∂θ] mixed by Σ⁻¹, and the cost shifters) or the cost equation's.
            chosen = set(names)
            demand_names = [c for c in self.attrs.get("demand_columns", []) if c in chosen]
            supply_names = [c for c in self.attrs.get("supply_columns", []) if c in chosen]
            rebuilt.supply = replace(
                supply, instruments=TermBlock.from_frame(frame[supply_names], "optimal instruments")
            )
            names = demand_names
        block = TermBlock.from_frame(frame[names], "optimal instruments")
        new_design = replace(
            design,
            data=data.join(frame),
            instruments=block,
            formula=_formula(design.formula, names),
        )
        # _setup rebuilds statsmodels' view (endog, exog, data) around the new design; the
        # rest (agents, execution settings) is the fitted model's.
        rebuilt._setup(new_design)
        return rebuilt

    def refit(self, columns: Any = None, **fit_options: Any) -> Any:
        """Re-estimate the model with these instruments, starting from the estimates.

        ``instruments.refit(**options)`` is ``instruments.to_model(columns).fit(**start,
        **options)``, where ``start`` holds the estimates of the fit the instruments came
        from as starting values: ``sigma``, ``pi`` and ``rho`` for random coefficients (as
        pyblp's tutorial solves ``to_problem()`` from ``results.sigma`` and ``results.pi``),
        ``rho="nest"`` for a nested logit with one ρ per nest. Any of them given in
        ``fit_options`` wins. As everywhere, zeros in the starting values stay fixed, so an
        entry estimated at exactly zero stays at zero (pass ``sigma=`` to free it).

        Parameters
        ----------
        columns : sequence of str, optional
            Instrument columns to use (default all); see :meth:`to_model`.
        **fit_options
            Passed to the model's ``fit`` (``optimizer``, ``method``, ``cov_type``, bounds,
            ...): the fit's own defaults otherwise, not the options of the first fit.

        Returns
        -------
        BLPResults
            The refitted results.

        Raises
        ------
        BLPInputError
            What :meth:`to_model` and the model's ``fit`` raise.

        Examples
        --------
        >>> refit = results.optimal_instruments().refit()  # doctest: +SKIP
        >>> refit.params  # doctest: +SKIP
        """
        model = self.to_model(columns)
        start = _starting_values(self._fit)
        start.update(fit_options)
        return model.fit(**start)


def _chosen_columns(frame: pd.DataFrame, columns: Any) -> list[str]:
    """``columns`` (default all) checked against the frame."""
    if columns is None:
        return [str(name) for name in frame.columns]
    if isinstance(columns, str):
        columns = [columns]
    names = [str(name) for name in columns]
    unknown = [name for name in names if name not in frame.columns]
    if unknown or not names:
        raise BLPInputError(
            f"columns must name instrument columns {list(frame.columns)}; got {list(columns)}"
        )
    return names


def _refuse_read_columns(design: Any, names: list[str], supply: Any = None) -> None:
    """Refuse instrument names that a regressor, random-coefficient or cost block reads:
    replacing that column in the data would change the model, not only its instruments."""
    blocks = [design.exog, design.endog, design.random]
    if supply is not None:
        blocks.append(supply.exog)
    for block in blocks:
        read = set(block.names) if block.columns_only else set()
        if block.formula:
            read |= required_variables(block.formula) - set(design.context)
        clash = sorted(read & set(names))
        if clash:
            raise BLPInputError(
                f"the model reads columns {clash} of its data, which the optimal instruments "
                "would replace: rename those data columns and fit again"
            )


def _formula(formula: str | None, names: list[str]) -> str | None:
    """The formula with its excluded instruments replaced (None without a bracket)."""
    if formula is None:
        return None
    parsed = parse_formula(formula)
    if parsed.endog is None:
        return None
    return f"{parsed.dependent} ~ {parsed.exog} + [{parsed.endog} ~ {' + '.join(names)}]"


def _starting_values(fit: Any) -> dict[str, Any]:
    """The estimates of ``fit`` as starting values of a refit."""
    inner = getattr(fit, "_results", fit)
    demand = inner.demand
    if getattr(inner.model, "supply", None) is not None:
        return _supply_starting_values(inner)
    if demand.parameters is not None:
        sigma, pi, rho = demand.parameters.unpack(np.asarray(demand.theta, dtype=np.float64))
        start: dict[str, Any] = {"sigma": sigma if sigma.size else 0}
        if pi.size:
            start["pi"] = pi
        if rho.size:
            start["rho"] = rho if rho.size > 1 else float(rho[0])
        return start
    if demand.rho is not None and demand.nest_codes is not None and np.size(demand.rho) > 1:
        names = [str(name) for name in inner.model.data.param_names]
        if "rho" not in names:
            return {"rho": "nest"}
    return {}


def _supply_starting_values(inner: Any) -> dict[str, Any]:
    """Starting values of a refit with a supply side: Σ, Π and ρ as without one, and the
    coefficients of the X1 columns that read prices (they are in θ) as ``beta``.

    A logit or nested logit with a supply side (no random-coefficient columns) takes ``beta``
    and, nested, ``rho_start`` (``rho="nest"`` with one ρ per nest)."""
    demand = inner.demand
    design = inner.model.design
    price = inner.model.supply.price_column
    # The X1 columns that read prices, as the objective finds them (their derivative).
    slopes = np.column_stack(
        [
            block.derivative(design.data, price, design.context)
            for block in (design.exog, design.endog)
        ]
    )
    moved = np.flatnonzero(np.any(slopes != 0, axis=0))
    beta = np.asarray(demand.beta, dtype=np.float64)
    start: dict[str, Any] = {}
    if moved.size:
        start["beta"] = {design.x_names[k]: float(beta[k]) for k in moved}
    sigma, pi, rho = demand.parameters.unpack(np.asarray(demand.theta, dtype=np.float64))
    if design.random.size:
        start["sigma"] = sigma if sigma.size else 0
        if pi.size:
            start["pi"] = pi
        if rho.size:
            start["rho"] = rho if rho.size > 1 else float(rho[0])
    elif rho.size:
        start["rho_start"] = rho if rho.size > 1 else float(rho[0])
        if rho.size > 1:
            start["rho"] = "nest"
    return start
