"""Linear instrumental-variables GMM: the part of every BLP objective that is closed form.

Given mean utilities δ (or any dependent vector), regressors X and instruments Z (all with fixed
effects already absorbed) and a weighting matrix W, the linear coefficients are concentrated out:

    β(δ) = (X'Z W Z'X)⁻¹ X'Z W Z'δ,    ξ = δ − Xβ,    ḡ = Z'ξ / N,    q = N ḡ'W ḡ.

:class:`LinearGMM` factors everything that does not depend on δ once, so each evaluation of the
nonlinear objective costs two products with Z. The objective is reported as N·ḡ'Wḡ, which after
two steps is Hansen's J statistic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg

from blpmodels.exceptions import BLPInputError

__all__ = ["LinearGMM", "first_stage", "initial_weighting_matrix", "inverse_weight_matrix"]


def inverse_weight_matrix(
    moment_covariance: np.ndarray, what: str = "weighting matrix"
) -> np.ndarray:
    """Invert a moment covariance into a GMM weighting matrix.

    Parameters
    ----------
    moment_covariance : numpy.ndarray
        ``(M, M)`` symmetric positive definite matrix (e.g. Z'Z/N or S).
    what : str
        Name for error messages.

    Returns
    -------
    numpy.ndarray
        ``(M, M)`` symmetric inverse.

    Raises
    ------
    BLPInputError
        If the matrix is singular or badly conditioned (instrument collinearity).

    Examples
    --------
    >>> inverse_weight_matrix(np.eye(2) * 2.0)
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    matrix = 0.5 * (moment_covariance + moment_covariance.T)
    try:
        factor = scipy.linalg.cho_factor(matrix, lower=True)
    except np.linalg.LinAlgError as error:
        raise BLPInputError(
            f"could not invert the {what}: it is not positive definite (collinear instruments, "
            "or moments with no variation)"
        ) from error
    inverse = scipy.linalg.cho_solve(factor, np.eye(matrix.shape[0]))
    if not np.isfinite(inverse).all() or np.linalg.cond(matrix) > 1e15:
        raise BLPInputError(f"the {what} is numerically singular (condition number > 1e15)")
    return 0.5 * (inverse + inverse.T)


def initial_weighting_matrix(
    instruments: Sequence[tuple[str, np.ndarray]], nobs: int
) -> np.ndarray:
    """(Z'Z/N)⁻¹ of each block of instruments, block diagonal: the first-step W.

    Parameters
    ----------
    instruments : sequence of (str, numpy.ndarray)
        The name ("demand", "supply") and ``(N, M_b)`` instruments of each block.
    nobs : int
        N.

    Returns
    -------
    numpy.ndarray
        ``(M, M)``.

    Examples
    --------
    >>> initial_weighting_matrix([("demand", np.eye(2)), ("supply", np.ones((2, 1)))], 2)
    array([[2., 0., 0.],
           [0., 2., 0.],
           [0., 0., 1.]])
    """
    return scipy.linalg.block_diag(
        *[
            inverse_weight_matrix(Z.T @ Z / nobs, f"{name} instruments' Z'Z/N")
            for name, Z in instruments
        ]
    )


@dataclass(eq=False)
class LinearGMM:
    """Concentrated linear IV-GMM for a fixed weighting matrix.

    Parameters
    ----------
    X : numpy.ndarray
        ``(N, K)`` regressors (fixed effects absorbed).
    Z : numpy.ndarray
        ``(N, M)`` instruments, M ≥ K (fixed effects absorbed).
    W : numpy.ndarray
        ``(M, M)`` weighting matrix.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(50, 2)); y = X @ [1.0, -2.0]
    >>> gmm = LinearGMM(X, X, np.eye(2))
    >>> gmm.beta(y).round(10)
    array([ 1., -2.])
    """

    X: np.ndarray
    Z: np.ndarray
    W: np.ndarray
    _projector: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.Z.shape[1] < self.X.shape[1]:
            raise BLPInputError(
                f"fewer instruments ({self.Z.shape[1]}) than regressors ({self.X.shape[1]})"
            )
        zx = self.Z.T @ self.X
        xzw = zx.T @ self.W
        hessian = xzw @ zx
        if self.X.shape[1]:
            try:
                factor = scipy.linalg.cho_factor(0.5 * (hessian + hessian.T))
            except np.linalg.LinAlgError as error:
                raise BLPInputError(
                    "X'Z W Z'X is singular: the regressors are not identified by the instruments"
                ) from error
            self._projector = scipy.linalg.cho_solve(factor, xzw)
        else:
            self._projector = np.zeros((0, self.Z.shape[1]))

    @property
    def nobs(self) -> int:
        """Number of observations N."""
        return int(self.Z.shape[0])

    def beta(self, y: np.ndarray) -> np.ndarray:
        """Concentrated coefficients for dependent ``y`` (a vector or a matrix of columns)."""
        return self._projector @ (self.Z.T @ y)

    def residuals(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients and residuals ``(β, ξ = y − Xβ)``."""
        beta = self.beta(y)
        return beta, y - self.X @ beta

    def mean_moments(self, xi: np.ndarray) -> np.ndarray:
        """Sample moments ḡ = Z'ξ / N."""
        return self.Z.T @ xi / self.nobs

    def objective(self, xi: np.ndarray) -> float:
        """GMM objective N·ḡ'Wḡ."""
        g = self.mean_moments(xi)
        return float(self.nobs * g @ self.W @ g)

    def objective_gradient(self, xi: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Gradient of the concentrated objective given ∂y/∂θ (``(N, P)``).

        Because β is chosen optimally, the envelope condition X'Z W Z'ξ = 0 removes the
        dependence through β: ∂q/∂θ = 2 ξ'Z W Z' ∂y/∂θ / N.
        """
        return 2.0 * (self.Z.T @ xi) @ self.W @ (self.Z.T @ dy) / self.nobs


def first_stage(
    endog: np.ndarray,
    exog: np.ndarray,
    instruments: np.ndarray,
    names: list[str],
    moment_cov: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> pd.DataFrame:
    """First-stage diagnostics for each instrumented regressor.

    Each instrumented regressor is regressed on all instruments Z = [exog | excluded]. The
    partial F statistic is the Wald statistic of the excluded instruments' coefficients,
    computed with the same covariance estimator as the second stage, divided by their number;
    the partial R² compares with the regression on the exogenous regressors alone.

    Parameters
    ----------
    endog : numpy.ndarray
        ``(N, E)`` instrumented regressors (fixed effects absorbed).
    exog : numpy.ndarray
        ``(N, K)`` exogenous regressors (fixed effects absorbed).
    instruments : numpy.ndarray
        ``(N, Q)`` excluded instruments (fixed effects absorbed).
    names : list of str
        Names of the instrumented regressors.
    moment_cov : callable
        ``moment_cov(Z, residuals) -> S`` with the model's covariance type.

    Returns
    -------
    pandas.DataFrame
        Columns ``f_stat``, ``f_pvalue``, ``partial_r2``, ``n_instruments``, one row per name.
    """
    from scipy import stats

    z = np.column_stack([exog, instruments])
    nobs = z.shape[0]
    q = instruments.shape[1]
    rows = []
    zz = z.T @ z / nobs
    zz_inverse = np.linalg.pinv(zz)
    for column in range(endog.shape[1]):
        y = endog[:, column]
        coefficients = np.linalg.lstsq(z, y, rcond=None)[0]
        residuals = y - z @ coefficients
        covariance = zz_inverse @ moment_cov(z, residuals) @ zz_inverse / nobs
        excluded = coefficients[-q:]
        block = covariance[-q:, -q:]
        wald = float(excluded @ np.linalg.solve(block, excluded))
        if exog.shape[1]:
            restricted = y - exog @ np.linalg.lstsq(exog, y, rcond=None)[0]
        else:
            restricted = y
        partial_r2 = 1.0 - float(residuals @ residuals) / float(restricted @ restricted)
        rows.append(
            {
                "f_stat": wald / q,
                "f_pvalue": float(stats.chi2.sf(wald, q)),
                "partial_r2": partial_r2,
                "n_instruments": q,
            }
        )
    return pd.DataFrame(rows, index=pd.Index(names, name="regressor"))
