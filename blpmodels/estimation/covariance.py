"""Moment covariances and GMM sandwich covariances.

``S`` estimates the covariance of the per-observation moments g_i = z_i ξ_i:

* ``"robust"`` / ``"HC0"``: Σ (g_i − ḡ)(g_i − ḡ)' / N (centered by default, as pyblp does;
  in just-identified models ḡ = 0 and centering changes nothing),
* ``"unadjusted"``: σ² Z'Z / N with σ² = ξ'ξ / N,
* ``"clustered"``: Σ_c G_c G_c' / N with G_c the sum of g_i within cluster c; with several
  clustering columns, the Cameron–Gelbach–Miller inclusion–exclusion sum over all their
  intersections (multi-way clustering).

No small-sample corrections are applied, which matches pyblp and linearmodels with
``debiased=False``. The parameter covariance is the GMM sandwich
(G'WG)⁻¹ G'W S W G (G'WG)⁻¹ / N, with G the Jacobian of ḡ.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from blpmodels.data.design import warn_user
from blpmodels.data.markets import check_ids
from blpmodels.exceptions import BLPInputError

__all__ = [
    "MIN_CLUSTERS",
    "CovType",
    "cluster_codes",
    "gmm_covariance",
    "moment_covariance",
    "multiway_cluster_terms",
    "normalize_cov_type",
]

CovType = Literal["robust", "unadjusted", "clustered"]

#: Fewer clusters than this (in any clustering dimension) trigger a warning: cluster-robust
#: covariances are consistent as the number of clusters grows, and with few clusters they are
#: biased towards zero (Cameron & Miller, 2015, put "few" at roughly 20 to 50).
MIN_CLUSTERS = 20

_ALIASES = {
    "robust": "robust",
    "hc0": "robust",
    "heteroskedastic": "robust",
    "unadjusted": "unadjusted",
    "homoskedastic": "unadjusted",
    "nonrobust": "unadjusted",
    "clustered": "clustered",
    "cluster": "clustered",
}


def normalize_cov_type(
    cov_type: str, cov_kwds: Mapping[str, Any] | None, nobs: int
) -> tuple[CovType, np.ndarray | None, bool]:
    """Validate ``cov_type`` / ``cov_kwds`` before any estimation work.

    Parameters
    ----------
    cov_type : str
        "robust" (alias "HC0"), "unadjusted" (alias "nonrobust") or "clustered".
    cov_kwds : mapping, optional
        ``{"groups": ids}`` for clustering (one array, or an ``(N, C)`` array / DataFrame for
        multi-way clustering), and ``{"center": bool}`` for robust moment covariances.
    nobs : int
        Number of observations, to check the length of ``groups``.

    Returns
    -------
    tuple
        ``(cov_type, cluster codes or None, center)``.

    Raises
    ------
    BLPInputError
        Unknown ``cov_type`` or keyword, missing or wrongly sized ``groups``, fewer than two
        clusters in a clustering dimension, ``center`` not a bool.

    Warns
    -----
    UserWarning
        A clustering dimension has fewer than :data:`MIN_CLUSTERS` clusters.

    Examples
    --------
    >>> normalize_cov_type("HC0", None, 3)
    ('robust', None, True)
    """
    if not isinstance(cov_type, str) or cov_type.lower() not in _ALIASES:
        raise BLPInputError(
            f"unknown cov_type {cov_type!r}; choose one of 'robust' (or 'HC0'), 'unadjusted' "
            "(or 'nonrobust'), 'clustered'"
        )
    kind: CovType = _ALIASES[cov_type.lower()]  # type: ignore[assignment]
    kwds = dict(cov_kwds or {})
    unknown = set(kwds) - {"groups", "center"}
    if unknown:
        raise BLPInputError(f"unknown cov_kwds {sorted(unknown)}; accepted: 'groups', 'center'")
    center = kwds.get("center", True)
    # bool("no") is True: accept only real booleans so a typo cannot flip the estimator.
    if not isinstance(center, (bool, np.bool_)):
        raise BLPInputError(f"cov_kwds 'center' must be True or False, got {center!r}")
    center = bool(center)
    groups = kwds.get("groups")
    if kind == "clustered":
        if groups is None:
            raise BLPInputError(
                "cov_type='clustered' needs cov_kwds={'groups': ids} (one or several columns "
                "of cluster ids, e.g. data['product_ids'])"
            )
        codes = cluster_codes(groups, nobs)
        _check_cluster_counts(codes, _group_names(groups, codes.shape[1]))
        return kind, codes, center
    if groups is not None:
        raise BLPInputError(
            f"cov_kwds 'groups' is only used with cov_type='clustered', not {kind!r}"
        )
    return kind, None, center


def _group_names(groups: Any, count: int) -> list[str]:
    if isinstance(groups, pd.DataFrame):
        return [repr(str(column)) for column in groups.columns]
    if isinstance(groups, pd.Series) and groups.name is not None:
        return [repr(str(groups.name))]
    return [f"column {column}" for column in range(count)]


def _check_cluster_counts(codes: np.ndarray, names: list[str]) -> None:
    for column, name in enumerate(names):
        count = int(codes[:, column].max()) + 1 if codes.shape[0] else 0
        if count < 2:
            # One cluster makes the clustered S the outer product of the total moment, which
            # is ~0 at the GMM solution: standard errors of 1e-15 and p-values of 0.
            raise BLPInputError(
                f"cov_kwds groups {name} has only {count} cluster; a clustered covariance "
                "needs at least two clusters (and many more to be reliable)"
            )
        if count < MIN_CLUSTERS:
            warn_user(
                f"cov_kwds groups {name} has only {count} clusters: the clustered covariance "
                f"is unreliable with that many clusters (standard errors too small); use at "
                f"least {MIN_CLUSTERS} clusters, or cov_type='robust'"
            )


def cluster_codes(groups: Any, nobs: int) -> np.ndarray:
    """Integer-code one or several columns of cluster ids into an ``(N, C)`` array."""
    frame = pd.DataFrame(groups) if not isinstance(groups, pd.DataFrame) else groups
    if isinstance(groups, pd.Series):
        frame = groups.to_frame()
    values = frame.to_numpy()
    if values.ndim == 1:
        values = values[:, None]
    if values.shape[0] != nobs:
        raise BLPInputError(f"cluster groups have {values.shape[0]} rows but the data have {nobs}")
    codes = np.empty(values.shape, dtype=np.int64)
    for column in range(values.shape[1]):
        series = pd.Series(values[:, column])
        if series.isna().any():
            raise BLPInputError(f"cluster groups column {column} has missing values")
        check_ids(series, str(column), "cluster groups")
        codes[:, column] = pd.factorize(series, sort=False)[0]
    return codes


def _cluster_sum_covariance(moments: np.ndarray, codes: np.ndarray) -> np.ndarray:
    n_groups = int(codes.max()) + 1
    indicator = sp.csr_matrix(
        (np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_groups, codes.size)
    )
    sums = indicator @ moments
    return sums.T @ sums


def moment_covariance(
    instruments: np.ndarray | Sequence[np.ndarray],
    residuals: np.ndarray | Sequence[np.ndarray],
    cov_type: CovType,
    *,
    clusters: np.ndarray | None = None,
    center: bool = True,
) -> np.ndarray:
    """Covariance S of the per-observation moments g_i = z_i ξ_i.

    Several moment blocks over the same rows (demand Z_D'ξ and supply Z_S'ω) are given as
    sequences; their per-row moments [z_Di ξ_i, z_Si ω_i] are stacked, and the unadjusted S is
    the block matrix (e_b'e_c/N)·Z_b'Z_c/N.

    Parameters
    ----------
    instruments : numpy.ndarray or sequence of numpy.ndarray
        ``(N, M)`` instruments Z (or one per block).
    residuals : numpy.ndarray or sequence of numpy.ndarray
        ``(N,)`` structural errors ξ (or one per block).
    cov_type : {"robust", "unadjusted", "clustered"}
        Estimator (already validated by :func:`normalize_cov_type`).
    clusters : numpy.ndarray, optional
        ``(N, C)`` integer cluster codes for ``"clustered"``.
    center : bool
        Subtract ḡ from the moments (robust and clustered).

    Returns
    -------
    numpy.ndarray
        ``(M, M)`` matrix S.

    Examples
    --------
    >>> z = np.ones((4, 1)); xi = np.array([1.0, -1.0, 2.0, -2.0])
    >>> moment_covariance(z, xi, "robust")
    array([[2.5]])
    """
    if isinstance(instruments, np.ndarray):
        instruments, residuals = [instruments], [residuals]  # type: ignore[list-item]
    nobs = instruments[0].shape[0]
    if cov_type == "unadjusted":
        return np.block(
            [
                [
                    float(first @ second) / nobs * (left.T @ right) / nobs
                    for right, second in zip(instruments, residuals, strict=True)
                ]
                for left, first in zip(instruments, residuals, strict=True)
            ]
        )
    # One (N, M) array of moments at a time: with a million products and their instruments it
    # is the largest temporary of the fit's end, so no stacked copy and centering in place.
    if len(instruments) == 1:
        moments = instruments[0] * residuals[0][:, None]
    else:
        moments = np.column_stack(
            [Z * e[:, None] for Z, e in zip(instruments, residuals, strict=True)]
        )
    if center:
        moments -= moments.mean(axis=0)
    if cov_type == "robust":
        return moments.T @ moments / nobs
    if clusters is None:
        raise BLPInputError("clustered covariance needs cluster codes")
    total = np.zeros((moments.shape[1], moments.shape[1]))
    for sign, codes in multiway_cluster_terms(clusters):
        total += sign * _cluster_sum_covariance(moments, codes)
    return total / nobs


def multiway_cluster_terms(clusters: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The inclusion–exclusion terms of a multi-way clustered covariance (Cameron, Gelbach
    and Miller 2011): for every non-empty subset of the cluster dimensions, the sign
    (−1)^(size+1) and the codes of its intersection clusters.

    Parameters
    ----------
    clusters : numpy.ndarray
        ``[N, D]`` integer cluster codes, one column per dimension (:func:`cluster_codes`).

    Returns
    -------
    list of (int, numpy.ndarray)
        ``2**D − 1`` pairs; summing ``sign * S(codes)`` over them, with S the one-way
        cluster sum of outer products, gives the multi-way covariance.

    Examples
    --------
    >>> clusters = np.array([[0, 0], [0, 1], [1, 1]])
    >>> [(sign, codes.tolist()) for sign, codes in multiway_cluster_terms(clusters)]
    [(1, [0, 0, 1]), (1, [0, 1, 1]), (-1, [0, 1, 2])]
    """
    dimensions = clusters.shape[1]
    terms = []
    for size in range(1, dimensions + 1):
        for subset in itertools.combinations(range(dimensions), size):
            if size == 1:
                codes = clusters[:, subset[0]]
            else:
                codes = pd.MultiIndex.from_arrays([clusters[:, k] for k in subset]).factorize()[0]
            terms.append(((-1) ** (size + 1), np.asarray(codes)))
    return terms


def gmm_covariance(
    jacobian: np.ndarray,
    weights: np.ndarray,
    moment_cov: np.ndarray,
    nobs: int,
    *,
    efficient: bool = False,
) -> np.ndarray:
    """GMM sandwich covariance of the parameters.

    Parameters
    ----------
    jacobian : numpy.ndarray
        ``(M, P)`` Jacobian G of the mean moments ḡ with respect to the parameters.
    weights : numpy.ndarray
        ``(M, M)`` weighting matrix W used in estimation.
    moment_cov : numpy.ndarray
        ``(M, M)`` moment covariance S.
    nobs : int
        Number of observations N.
    efficient : bool
        Use (G'S⁻¹G)⁻¹/N, valid when W = S⁻¹ (two-step GMM with the same S).

    Returns
    -------
    numpy.ndarray
        ``(P, P)`` covariance matrix.

    Examples
    --------
    >>> G = np.array([[1.0]]); W = np.array([[1.0]]); S = np.array([[4.0]])
    >>> gmm_covariance(G, W, S, 100)
    array([[0.04]])
    """
    if efficient:
        inner = jacobian.T @ np.linalg.solve(moment_cov, jacobian)
        covariance = np.linalg.pinv(inner) / nobs
    else:
        bread = np.linalg.pinv(jacobian.T @ weights @ jacobian)
        meat = jacobian.T @ weights @ moment_cov @ weights @ jacobian
        covariance = bread @ meat @ bread / nobs
    return 0.5 * (covariance + covariance.T)
