"""Rivers–Vuong tests of firm conduct with the weak-instrument diagnostic of Duarte, Magnolfi,
Sølvsten and Sullivan (2024, "Testing firm conduct", Quantitative Economics; DMSS).

Each candidate model m of conduct implies markups Δ_m and so marginal costs p − Δ_m. With cost
shifters w partialled out of prices, markups and the testing instruments z (Frisch–Waugh–Lovell,
as DMSS do), the lack of fit of model m is the GMM objective

    g_m = z̃'(p̃ − Δ̃_m)/n,   Q_m = g_m' W g_m,   W = (z̃'z̃/n)⁻¹,

and the pairwise Rivers–Vuong statistic is T_RV = √n (Q_1 − Q_2)/σ̂_RV, standard normal when
the two models fit equally well: positive values favour model 2, negative values model 1.

σ̂²_RV = 4[g_1'W^½V_11W^½g_1 + g_2'W^½V_22W^½g_2 − 2 g_1'W^½V_12W^½g_2], where V_ℓk is the
covariance of the influence functions ψ_ℓ, ψ_k of √n W^½ĝ: for observation i,

    ψ_mi = W^½ z̃_i ω̃_mi − ½ W^¾ z̃_i z̃_i' W^¾ g_m   (centred),

the second term carrying the estimation error of W (DMSS appendix; pyRVtest, the authors'
package, computes the same). Optional per-observation terms d_mi add the first-stage error of
the demand estimates to ψ (the "demand adjustment"). Clustered covariances sum ψ within
clusters first.

The scaled F-statistic of DMSS section 5 diagnoses weak instruments for a pair of models:
with e_m the residual of the regression of ω̃_m on z̃, φ_mi = W z̃_i e_mi, σ_ℓk =
tr(V^φ_ℓk W⁻¹)/d_z and ρ = (σ_11 − σ_22)/√((σ_11 + σ_22)² − 4σ²_12),

    F = (1 − ρ²) n/(2 d_z) · (σ_22 Q_1 + σ_11 Q_2 − 2σ_12 g_1'Wg_2)/(σ_11σ_22 − σ²_12).

Large F means the instruments are strong enough for the RV test to control its worst-case size
and reach a given best-case power; :data:`F_CRITICAL_VALUES` gives the thresholds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from blpmodels.exceptions import BLPInputError

__all__ = [
    "F_CRITICAL_VALUES",
    "ConductStatistics",
    "f_critical_values",
    "residualize",
    "rv_statistics",
]

#: Critical values of the scaled F-statistic by number of instruments d_z (1 … 30; larger d_z
#: use 30): (worst-case size 0.075, 0.10, 0.125, best-case power 0.50, 0.75, 0.95). F above
#: the size value means the RV test's size is at most that level; F above the power value means
#: its best-case power is at least that level. They are the most demanding values over the
#: correlation ρ of the two models' errors (so valid whatever ρ), taken from the ρ-specific
#: tables of pyRVtest 0.3.2 (the authors' package, MIT licence; files
#: ``f_critical_values_size_rho.csv`` and ``f_critical_values_power_rho.csv``, maximum over
#: their ρ grid 0, 0.01, …, 0.99).
F_CRITICAL_VALUES: dict[int, tuple[float, float, float, float, float, float]] = {
    1: (31.8, 14.6, 8.5, 17.8, 22.2, 29.8),
    2: (0.0, 0.0, 0.0, 9.9, 12.3, 16.4),
    3: (0.0, 0.0, 0.0, 7.2, 8.9, 11.9),
    4: (0.0, 0.0, 0.0, 5.9, 7.3, 9.5),
    5: (0.0, 0.0, 0.0, 5.1, 6.2, 8.1),
    6: (0.0, 0.0, 0.0, 4.6, 5.5, 7.1),
    7: (0.0, 0.0, 0.0, 4.2, 5.0, 6.4),
    8: (0.0, 0.0, 0.0, 3.8, 4.6, 5.9),
    9: (0.2, 0.0, 0.0, 3.6, 4.3, 5.4),
    10: (1.7, 0.4, 0.0, 3.4, 4.0, 5.1),
    11: (3.4, 1.2, 0.5, 3.2, 3.8, 4.8),
    12: (5.2, 2.2, 1.1, 3.1, 3.7, 4.6),
    13: (7.1, 3.1, 1.8, 3.0, 3.5, 4.3),
    14: (8.9, 4.1, 2.4, 2.9, 3.4, 4.2),
    15: (11.0, 5.1, 3.1, 2.8, 3.3, 4.0),
    16: (13.2, 6.2, 3.8, 2.7, 3.2, 3.9),
    17: (15.2, 7.2, 4.5, 2.7, 3.1, 3.7),
    18: (17.4, 8.2, 5.3, 2.6, 3.0, 3.6),
    19: (19.5, 9.3, 6.0, 2.5, 2.9, 3.5),
    20: (21.9, 10.5, 6.7, 2.5, 2.8, 3.4),
    21: (23.9, 11.6, 7.4, 2.4, 2.8, 3.3),
    22: (26.2, 12.6, 8.2, 2.4, 2.7, 3.3),
    23: (28.4, 13.7, 8.9, 2.3, 2.7, 3.2),
    24: (30.5, 14.8, 9.7, 2.3, 2.6, 3.1),
    25: (32.5, 16.0, 10.4, 2.3, 2.6, 3.1),
    26: (35.2, 17.2, 11.2, 2.2, 2.5, 3.0),
    27: (37.3, 18.3, 11.9, 2.2, 2.5, 3.0),
    28: (39.2, 19.4, 12.7, 2.2, 2.5, 2.9),
    29: (41.5, 20.5, 13.4, 2.2, 2.4, 2.9),
    30: (43.8, 21.8, 14.3, 2.1, 2.4, 2.8),
}

#: Column labels of :data:`F_CRITICAL_VALUES`.
CRITICAL_VALUE_NAMES = (
    "cv_size_0.075",
    "cv_size_0.10",
    "cv_size_0.125",
    "cv_power_0.50",
    "cv_power_0.75",
    "cv_power_0.95",
)


def f_critical_values(n_instruments: int) -> tuple[float, ...]:
    """Critical values of the DMSS F-statistic for ``n_instruments`` instruments.

    Parameters
    ----------
    n_instruments : int
        Number of testing instruments d_z (≥ 1); beyond 30 the values for 30 are used, as
        pyRVtest does.

    Returns
    -------
    tuple of float
        Worst-case size 0.075, 0.10, 0.125 and best-case power 0.50, 0.75, 0.95 thresholds.

    Examples
    --------
    >>> f_critical_values(1)
    (31.8, 14.6, 8.5, 17.8, 22.2, 29.8)
    >>> f_critical_values(45) == f_critical_values(30)
    True
    """
    if n_instruments < 1:
        raise BLPInputError(f"the F-statistic needs at least one instrument, got {n_instruments}")
    return F_CRITICAL_VALUES[min(int(n_instruments), 30)]


def residualize(values: np.ndarray, shifters: np.ndarray | None) -> np.ndarray:
    """Residuals of the columns of ``values`` on ``shifters`` by least squares.

    Parameters
    ----------
    values : numpy.ndarray
        ``(n,)`` or ``(n, k)``.
    shifters : numpy.ndarray or None
        ``(n, l)`` regressors (None: ``values`` unchanged).

    Returns
    -------
    numpy.ndarray
        Same shape as ``values``.

    Examples
    --------
    >>> residualize(np.array([1.0, 2.0, 6.0]), np.ones((3, 1)))
    array([-2., -1.,  3.])
    """
    if shifters is None or shifters.shape[1] == 0:
        return np.array(values, dtype=np.float64)
    coefficients, *_ = np.linalg.lstsq(shifters, values, rcond=None)
    return values - shifters @ coefficients


@dataclass(frozen=True, eq=False)
class ConductStatistics:
    """Pairwise RV statistics and F diagnostics of M models (rows/columns in model order).

    Attributes
    ----------
    g : numpy.ndarray
        ``[M, K]`` moments z̃'ω̃_m/n.
    Q : numpy.ndarray
        ``(M,)`` lack of fit g_m'Wg_m.
    t_rv : numpy.ndarray
        ``[M, M]`` T_RV(ℓ, k) = √n(Q_ℓ − Q_k)/σ̂_RV (antisymmetric, NaN diagonal).
    sigma_rv : numpy.ndarray
        ``[M, M]`` σ̂_RV (symmetric, NaN diagonal).
    f_stat : numpy.ndarray
        ``[M, M]`` scaled F-statistics (symmetric, NaN diagonal).
    rho : numpy.ndarray
        ``[M, M]`` ρ̂(ℓ, k) (antisymmetric, NaN diagonal).
    nobs : int
        Observations n.
    n_instruments : int
        Instruments d_z.
    """

    g: np.ndarray
    Q: np.ndarray
    t_rv: np.ndarray
    sigma_rv: np.ndarray
    f_stat: np.ndarray
    rho: np.ndarray
    nobs: int
    n_instruments: int


def _psd_power(matrix: np.ndarray, power: float) -> np.ndarray:
    """A symmetric positive semi-definite matrix to a real power (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    values = np.clip(values, 0.0, None)
    scaled = np.where(values > 0, values, 1.0) ** power
    return (vectors * np.where(values > 0, scaled, 0.0)) @ vectors.T


def _cluster_sums(terms: np.ndarray, clusters: np.ndarray | None) -> np.ndarray:
    """``[M, C, K]`` sums of the ``[M, n, K]`` per-observation terms within clusters."""
    if clusters is None:
        return terms
    n_clusters = int(clusters.max()) + 1
    sums = np.zeros((terms.shape[0], n_clusters, terms.shape[2]))
    for model in range(terms.shape[0]):
        np.add.at(sums[model], clusters, terms[model])
    return sums


def rv_statistics(
    prices: np.ndarray,
    markups: np.ndarray,
    instruments: np.ndarray,
    *,
    clusters: np.ndarray | None = None,
    demand_influence: np.ndarray | None = None,
) -> ConductStatistics:
    """DMSS Rivers–Vuong statistics and F-statistics for every pair of conduct models.

    Parameters
    ----------
    prices : numpy.ndarray
        ``(n,)`` prices p̃, cost shifters already partialled out.
    markups : numpy.ndarray
        ``[M, n]`` markups Δ̃_m of each model, cost shifters partialled out.
    instruments : numpy.ndarray
        ``(n, K)`` instruments z̃, cost shifters partialled out.
    clusters : numpy.ndarray, optional
        ``(n,)`` cluster codes 0, 1, …; the covariances sum within clusters.
    demand_influence : numpy.ndarray, optional
        ``[M, n, K]`` each observation's contribution d_mi of the demand estimation error to
        √n ĝ_m (−G_m B h_i); added to the influence functions of both statistics.

    Returns
    -------
    ConductStatistics

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(500, 2)); cost = rng.normal(size=500)
    >>> true, wrong = z @ [0.0, 0.0] + 1.0, 1.0 + z @ [0.5, 0.5]
    >>> stats = rv_statistics(true + cost, np.stack([true, wrong]), z)
    >>> bool(stats.t_rv[0, 1] < -1.96), bool(stats.t_rv[1, 0] > 1.96)
    (True, True)
    """
    n, k = instruments.shape
    n_models = markups.shape[0]
    omega = prices[None, :] - markups  # [M, n]
    W_inverse = instruments.T @ instruments / n
    W = np.linalg.pinv(W_inverse)
    W_half, W_three_quarters = _psd_power(W, 0.5), _psd_power(W, 0.75)
    g = omega @ instruments / n  # [M, K]
    Q = np.einsum("mk,kl,ml->m", g, W, g)
    # Influence of √n W^½ĝ_m: the moments and the estimated W (centred); DMSS appendix.
    zw = instruments @ W_three_quarters  # rows z_i'W^¾
    psi = (omega[:, :, None] * instruments[None]) @ W_half
    psi -= 0.5 * (zw @ g.T).T[:, :, None] * zw[None]
    # The F-statistic's influence terms: W z̃_i e_mi with e the residual of ω̃ on z̃.
    coefficients, *_ = np.linalg.lstsq(instruments, omega.T, rcond=None)
    residuals = omega - (instruments @ coefficients).T
    phi = (residuals[:, :, None] * instruments[None]) @ W
    if demand_influence is not None:
        psi += demand_influence @ W_half
        phi += demand_influence @ W
    psi -= psi.mean(axis=1, keepdims=True)
    psi_sums = _cluster_sums(psi, clusters)
    phi_sums = _cluster_sums(phi, clusters)
    V = np.einsum("acj,bck->abjk", psi_sums, psi_sums) / n  # [M, M, K, K]
    V_phi = np.einsum("acj,bck->abjk", phi_sums, phi_sums) / n
    weighted = np.einsum("ij,abjk,kl->abil", W_half, V, W_half)
    cross = np.einsum("ai,abil,bl->ab", g, weighted, g)  # g_a'W^½V_abW^½g_b
    sigma = np.einsum("abjk,kj->ab", V_phi, W_inverse) / k  # tr(V_φ W⁻¹)/d_z
    gWg = g @ W @ g.T
    t_rv = np.full((n_models, n_models), np.nan)
    sigma_rv = np.full((n_models, n_models), np.nan)
    f_stat = np.full((n_models, n_models), np.nan)
    rho = np.full((n_models, n_models), np.nan)
    for a, b in itertools.permutations(range(n_models), 2):
        # Models with the same markups give 0/0: NaN, they cannot be told apart.
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = 4.0 * (cross[a, a] + cross[b, b] - 2.0 * cross[a, b])
            sigma_rv[a, b] = np.sqrt(max(variance, 0.0))
            t_rv[a, b] = np.sqrt(n) * (Q[a] - Q[b]) / sigma_rv[a, b]
            s_a, s_b, s_ab = sigma[a, a], sigma[b, b], sigma[a, b]
            rho[a, b] = (s_a - s_b) / np.sqrt((s_a + s_b) ** 2 - 4.0 * s_ab**2)
            numerator = s_b * gWg[a, a] + s_a * gWg[b, b] - 2.0 * s_ab * gWg[a, b]
            unscaled = n / (2.0 * k) * numerator / (s_a * s_b - s_ab**2)
            f_stat[a, b] = (1.0 - rho[a, b] ** 2) * unscaled
    return ConductStatistics(g, Q, t_rv, sigma_rv, f_stat, rho, n, k)
