"""GMM estimation pipelines shared by the models: options, linear IV-GMM, and their outputs.

The models validate their inputs, then call these functions; the functions only combine the
numerical pieces (:mod:`blpmodels.estimation.gmm`, :mod:`blpmodels.estimation.covariance`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from blpmodels.data.products import ProductDesign
from blpmodels.estimation.covariance import (
    CovType,
    gmm_covariance,
    moment_covariance,
    normalize_cov_type,
)
from blpmodels.estimation.gmm import LinearGMM, first_stage, inverse_weight_matrix
from blpmodels.exceptions import BLPInputError

__all__ = ["GMMOptions", "LinearEstimate", "fit_linear", "gmm_options"]

Method = Literal["1s", "2s"]


@dataclass(frozen=True, eq=False)
class GMMOptions:
    """Validated GMM options.

    Attributes
    ----------
    method : {"1s", "2s"}
        One- or two-step GMM.
    W : numpy.ndarray or None
        User weighting matrix for the first step.
    cov_type : {"robust", "unadjusted", "clustered"}
        Covariance estimator (also used to update W between steps).
    clusters : numpy.ndarray or None
        ``(N, C)`` cluster codes.
    center : bool
        Center moments in robust and clustered S.
    """

    method: Method
    W: np.ndarray | None
    cov_type: CovType
    clusters: np.ndarray | None
    center: bool

    def moment_covariance(self, instruments: np.ndarray, residuals: np.ndarray) -> np.ndarray:
        """S for these options."""
        return moment_covariance(
            instruments, residuals, self.cov_type, clusters=self.clusters, center=self.center
        )


def gmm_options(
    design: ProductDesign,
    method: str,
    W: Any,
    cov_type: str,
    cov_kwds: Mapping[str, Any] | None,
    n_moments: int,
) -> GMMOptions:
    """Validate ``method``, ``W``, ``cov_type`` and ``cov_kwds`` before any work.

    ``cov_kwds["groups"]`` may name product-data columns (a string or a list of strings) or
    hold arrays of ids.

    Raises
    ------
    BLPInputError
        Unknown method or covariance type, missing cluster groups or groups whose pandas index
        differs from the product data's, W of the wrong shape, not finite, or not symmetric
        positive definite.
    """
    if method not in ("1s", "2s"):
        raise BLPInputError(f"method must be '1s' or '2s', got {method!r}")
    kwds = dict(cov_kwds or {})
    groups = kwds.get("groups")
    if isinstance(groups, str) or (
        isinstance(groups, Sequence) and groups and all(isinstance(g, str) for g in groups)
    ):
        columns = [groups] if isinstance(groups, str) else list(groups)
        missing = [column for column in columns if column not in design.data.columns]
        if missing:
            raise BLPInputError(f"cov_kwds groups: product data have no column(s) {missing}")
        kwds["groups"] = design.data[columns].reset_index(drop=True)
    elif (
        isinstance(groups, (pd.Series, pd.DataFrame))
        and design.labelled_rows
        and not groups.index.equals(design.data.index)
    ):
        # As statsmodels does for endog and exog: refuse, rather than match rows by position.
        raise BLPInputError(
            "cov_kwds groups: the index is not aligned with the product data's index; "
            "reindex the groups like the data, name product-data columns instead "
            "(e.g. 'product_ids'), or pass a numpy array"
        )
    kind, clusters, center = normalize_cov_type(cov_type, kwds, design.nobs)
    weights = None
    if W is not None:
        try:
            weights = np.asarray(W, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise BLPInputError(
                f"W must be a {n_moments}×{n_moments} matrix of numbers: {error}"
            ) from error
        if weights.shape != (n_moments, n_moments):
            raise BLPInputError(f"W must be {n_moments}×{n_moments}, got shape {weights.shape}")
        bad = ~np.isfinite(weights)
        if bad.any():
            row, column = (int(k) for k in np.argwhere(bad)[0])
            raise BLPInputError(
                f"W[{row}, {column}] is {weights[row, column]}: the weighting matrix must be "
                f"finite ({int(bad.sum())} non-finite entries)"
            )
        if not np.allclose(weights, weights.T, rtol=1e-10, atol=1e-12 * np.abs(weights).max()):
            raise BLPInputError("W must be symmetric")
        if np.linalg.eigvalsh(0.5 * (weights + weights.T)).min() <= 0:
            raise BLPInputError("W must be positive definite")
    return GMMOptions(method, weights, kind, clusters, center)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class LinearEstimate:
    """Output of :func:`fit_linear`."""

    beta: np.ndarray
    xi: np.ndarray
    cov: np.ndarray
    W: np.ndarray
    S: np.ndarray
    updated_W: np.ndarray
    objective: float
    first_stage: pd.DataFrame
    steps: list[dict[str, Any]]


def safe_inverse(matrix: np.ndarray) -> np.ndarray:
    """S⁻¹ for reporting, NaN when S is singular (e.g. no variation in a moment)."""
    try:
        return inverse_weight_matrix(matrix, "moment covariance")
    except BLPInputError:
        return np.full(matrix.shape, np.nan)


def fit_linear(
    y: np.ndarray,
    X: np.ndarray,
    Z: np.ndarray,
    options: GMMOptions,
    *,
    n_exog: int,
    endog_names: list[str],
) -> LinearEstimate:
    """One- or two-step linear IV-GMM with the sandwich covariance.

    Parameters
    ----------
    y : numpy.ndarray
        ``(N,)`` dependent variable (fixed effects absorbed).
    X : numpy.ndarray
        ``(N, K)`` regressors, exogenous first (fixed effects absorbed).
    Z : numpy.ndarray
        ``(N, M)`` instruments, the exogenous regressors first (fixed effects absorbed).
    options : GMMOptions
        Validated options.
    n_exog : int
        Number of exogenous regressors (leading columns of X and Z).
    endog_names : list of str
        Names of the instrumented regressors (for first-stage diagnostics).

    Returns
    -------
    LinearEstimate
    """
    nobs = y.size
    W = options.W if options.W is not None else inverse_weight_matrix(Z.T @ Z / nobs)
    gmm = LinearGMM(X, Z, W)
    beta, xi = gmm.residuals(y)
    steps = [{"step": 1, "objective": gmm.objective(xi), "beta": beta}]
    if options.method == "2s":
        W = inverse_weight_matrix(options.moment_covariance(Z, xi), "updated weighting matrix")
        gmm = LinearGMM(X, Z, W)
        beta, xi = gmm.residuals(y)
        steps.append({"step": 2, "objective": gmm.objective(xi), "beta": beta})
    S = options.moment_covariance(Z, xi)
    cov = gmm_covariance(-Z.T @ X / nobs, W, S, nobs)
    diagnostics = (
        first_stage(
            X[:, n_exog:], X[:, :n_exog], Z[:, n_exog:], endog_names, options.moment_covariance
        )
        if endog_names
        else pd.DataFrame(columns=["f_stat", "f_pvalue", "partial_r2", "n_instruments"])
    )
    return LinearEstimate(
        beta, xi, cov, W, S, safe_inverse(S), gmm.objective(xi), diagnostics, steps
    )
