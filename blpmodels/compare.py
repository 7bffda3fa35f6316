"""Side-by-side tables of blpmodels, statsmodels and linearmodels results.

:func:`compare` reads any results object that exposes ``params`` and standard errors (``bse`` as
in statsmodels and blpmodels, ``std_errors`` as in linearmodels), so BLP fits sit next to the
OLS and IV2SLS regressions they extend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .exceptions import BLPInputError

__all__ = ["Comparison", "compare"]


def _standard_errors(result: Any) -> pd.Series:
    for name in ("bse", "std_errors"):
        values = getattr(result, name, None)
        if values is not None:
            return pd.Series(values, index=pd.Series(result.params).index)
    raise BLPInputError(f"{type(result).__name__} has no standard errors (bse or std_errors)")


def _pvalues(result: Any) -> pd.Series | None:
    values = getattr(result, "pvalues", None)
    return None if values is None else pd.Series(values, index=pd.Series(result.params).index)


def _name(result: Any) -> str:
    model = getattr(result, "model", None)
    for attribute in ("endog_names", "dependent"):
        value = getattr(model, attribute, None)
        if isinstance(value, str):
            return value
        if hasattr(value, "cols"):
            return str(value.cols[0])
    return type(result).__name__


def _stars(pvalue: float | None) -> str:
    if pvalue is None or not np.isfinite(pvalue):
        return ""
    return "***" if pvalue < 0.01 else "**" if pvalue < 0.05 else "*" if pvalue < 0.1 else ""


def _info(result: Any) -> dict[str, str]:
    info: dict[str, str] = {}
    nobs = getattr(result, "nobs", None)
    if nobs is not None:
        info["N"] = f"{int(nobs)}"
    estimator = type(getattr(result, "model", None)).__name__
    info["Estimator"] = estimator
    cov = getattr(result, "cov_type", None)
    if cov is not None:
        info["Cov. type"] = str(cov)
    rsquared = getattr(result, "rsquared", None)
    if isinstance(rsquared, (int, float)) and np.isfinite(rsquared):
        info["R-squared"] = f"{rsquared:.4f}"
    design = getattr(getattr(result, "model", None), "design", None)
    if design is not None:
        info["Markets"] = f"{design.layout.n_markets}"
        info["Absorbed FE"] = ", ".join(design.absorber.names) if design.absorber else "none"
        info["GMM objective"] = f"{result.objective:.4g}"
    return info


@dataclass(frozen=True)
class Comparison:
    """A comparison table.

    Attributes
    ----------
    params : pandas.DataFrame
        Coefficients (parameters × models).
    std_errors : pandas.DataFrame
        Standard errors (parameters × models).
    pvalues : pandas.DataFrame
        p-values where the results provide them.
    info : pandas.DataFrame
        Model information (rows such as N, estimator, covariance type).
    float_format : str
        Format of numbers in the text table.
    stars : bool
        Mark significance with stars.
    """

    params: pd.DataFrame
    std_errors: pd.DataFrame
    pvalues: pd.DataFrame
    info: pd.DataFrame
    float_format: str = "{:.4f}"
    stars: bool = False

    def to_frame(self) -> pd.DataFrame:
        """The table as text cells: coefficient rows with standard errors beneath."""
        rows = []
        index = []
        for name in self.params.index:
            coefficients, errors = [], []
            for model in self.params.columns:
                value = self.params.loc[name, model]
                if pd.isna(value):
                    coefficients.append("")
                    errors.append("")
                    continue
                mark = _stars(self.pvalues.loc[name, model]) if self.stars else ""
                coefficients.append(self.float_format.format(value) + mark)
                errors.append(
                    "(" + self.float_format.format(self.std_errors.loc[name, model]) + ")"
                )
            rows += [coefficients, errors]
            index += [name, ""]
        body = pd.DataFrame(rows, index=index, columns=self.params.columns)
        return pd.concat([body, self.info.fillna("")])

    def __str__(self) -> str:
        text = self.to_frame().to_string()
        width = max(len(line) for line in text.splitlines())
        note = "Standard errors in parentheses."
        if self.stars:
            note += " * p<.1, ** p<.05, *** p<.01"
        return "\n".join(["=" * width, text, "=" * width, note])

    def _repr_html_(self) -> str:
        return self.to_frame().to_html()


def compare(
    results: Sequence[Any] | dict[str, Any],
    *,
    names: Sequence[str] | None = None,
    stars: bool = False,
    float_format: str = "{:.4f}",
) -> Comparison:
    """Compare estimates from blpmodels, statsmodels and linearmodels side by side.

    Parameters
    ----------
    results : sequence or dict
        Results objects (a dict maps column names to results).
    names : sequence of str, optional
        Column names (default: model class and dependent variable, made unique).
    stars : bool
        Add significance stars from the p-values.
    float_format : str
        Format for numbers, e.g. ``"{:.3f}"``.

    Returns
    -------
    Comparison
        ``str(comparison)`` is a text table; ``.params``, ``.std_errors`` are DataFrames.

    Raises
    ------
    BLPInputError
        If a result has no standard errors, or names do not match the results.

    Examples
    --------
    >>> import statsmodels.formula.api as smf  # doctest: +SKIP
    >>> print(compare([ols_results, blp_results], names=["OLS", "BLP logit"]))  # doctest: +SKIP
    """
    if isinstance(results, dict):
        names = list(results)
        results = list(results.values())
    results = list(results)
    if not results:
        raise BLPInputError("compare() needs at least one results object")
    if names is None:
        names = []
        for result in results:
            base = f"{type(getattr(result, 'model', result)).__name__}: {_name(result)}"
            candidate, counter = base, 2
            while candidate in names:
                candidate, counter = f"{base} ({counter})", counter + 1
            names.append(candidate)
    names = list(names)
    if len(names) != len(results) or len(set(names)) != len(names):
        raise BLPInputError("names must be unique and one per result")
    params = pd.concat([pd.Series(r.params) for r in results], axis=1, keys=names)
    errors = pd.concat([_standard_errors(r) for r in results], axis=1, keys=names)
    pvalues = pd.concat(
        [
            p
            if (p := _pvalues(r)) is not None
            else pd.Series(np.nan, index=pd.Series(r.params).index)
            for r in results
        ],
        axis=1,
        keys=names,
    )
    info = pd.DataFrame({name: _info(result) for name, result in zip(names, results, strict=True)})
    return Comparison(
        params,
        errors.reindex(params.index),
        pvalues.reindex(params.index),
        info,
        float_format,
        stars,
    )
