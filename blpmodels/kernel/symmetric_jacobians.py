"""Symmetric share Jacobians market by market: rank-I updates and Cholesky factors.

For the unnested logit kernel ∂s/∂δ = diag(s) − P W Pᵀ is symmetric, and so is the price
Jacobian ∂s/∂p = diag(P W d) − P W diag(d) Pᵀ whenever the price derivative of utility
D_ji = ∂V_ji/∂p_j is the same for every product of a market (d_i: prices enter X1 and X2 as
themselves, as in BLP's automobiles). Then

* a symmetric rank-I update (BLAS ``syrk``, agents split by the sign of their coefficient)
  forms the lower triangle (half the flops of the general product, though OpenBLAS's syrk
  took as long as its gemm at 150 × 200);
* ∂s/∂δ is positive definite with an outside good, and so is −Ω ⊙ ∂s/∂p for a 0/1 ownership
  Ω by firm when every w_i d_i < 0 (Schur's product theorem): Cholesky (LAPACK ``potrf``,
  then ``potri`` or ``potrs``) costs a third of the LU factorisation behind
  ``numpy.linalg.inv`` and ``solve``, and one factor of B = Ω ⊙ (∂s/∂p)ᵀ serves both the
  markups and their derivatives;
* working on each market's real products only skips the padding of the batched ``[T, J, J]``
  arrays (in pyblp's automobile data, 20 markets of 72 to 150 products, padding is 55 % of
  the work of a batched 150³ factorisation).

A loop over markets pays from about :data:`MARKUP_LOOP_WIDTH` and :data:`INVERSE_LOOP_WIDTH`
products a market; below them the batched all-markets paths of
:mod:`blpmodels.kernel.jacobians` and :mod:`blpmodels.kernel.markups` are faster (per-call
overhead). Every function returns None where its matrix is not positive definite in some
market, and the caller takes the batched LU path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas, lapack

from blpmodels.kernel.shares import Probabilities

__all__ = [
    "INVERSE_LOOP_WIDTH",
    "MARKUP_LOOP_WIDTH",
    "CholeskyMarkupSystem",
    "agent_price_slopes",
    "cholesky_markups",
    "delta_jacobian_inverse",
    "lower_diagonal_minus_gram",
]

#: Products per market (the padded width) from which the markups are solved market by market
#: (:func:`cholesky_markups`). Measured 2026-12-07 on full markets (no padding; one BLAS
#: thread, I = 200 agents, a 6-column solve, CPU ms batched / by market, loaded machine):
#: J = 24 (T = 94): 8.8 / 8.6, 32: 3.7 / 5.9, 48: 3.8 / 3.5, 64: 4.2 / 3.2, 96: 7.6 / 4.8,
#: 150: 21.4 / 8.8.
MARKUP_LOOP_WIDTH = 64
#: The same for the inverse of ∂s/∂δ (:func:`delta_jacobian_inverse`): J = 24: 2.7 / 7.5,
#: 48: 2.9 / 3.8, 64: 3.0 / 3.5, 96: 6.6 / 5.8, 150: 17.5 / 12.5 (OpenBLAS's syrk took as long
#: as its gemm at 150 × 200; the gain is Cholesky against LU and the padding skipped).
INVERSE_LOOP_WIDTH = 96


def lower_diagonal_minus_gram(
    diagonal: np.ndarray, rows: np.ndarray, coefficients: np.ndarray, overwrite_rows: bool = False
) -> np.ndarray:
    """Lower triangle of diag(d) − R diag(c) Rᵀ (``[n, n]``, Fortran order) by ``syrk``.

    Agents with c_i > 0 enter one rank update (factor −1) with their columns of R scaled by
    √c_i, agents with c_i < 0 a second one (factor +1) scaled by √−c_i; agents with c_i = 0
    none.
    The strict upper triangle is left at zero.

    Parameters
    ----------
    diagonal : numpy.ndarray
        ``(n,)`` d.
    rows : numpy.ndarray
        ``[n, I]`` R.
    coefficients : numpy.ndarray
        ``(I,)`` c.
    overwrite_rows : bool, optional
        Scale ``rows`` in place when all c_i have one sign (saves a copy of the ``[n, I]``
        rows; the caller must not need them afterwards).

    Examples
    --------
    >>> rows = np.array([[1.0, 2.0], [3.0, 4.0]]); c = np.array([0.5, -0.25])
    >>> lower = lower_diagonal_minus_gram(np.array([10.0, 20.0]), rows, c)
    >>> dense = np.diag([10.0, 20.0]) - rows @ np.diag(c) @ rows.T
    >>> bool(np.allclose(lower, np.tril(dense)))
    True
    """
    size = rows.shape[0]
    out = np.zeros((size, size), order="F")
    for sign in (1.0, -1.0):
        chosen = sign * coefficients > 0
        if not chosen.any():
            continue
        scale = np.sqrt(sign * coefficients[chosen])
        if not chosen.all():
            scaled = rows[:, chosen] * scale
        elif overwrite_rows:
            scaled = np.multiply(rows, scale, out=rows)
        else:
            scaled = rows * scale
        # scaled is C-ordered [n, I]: its transpose is a Fortran [I, n] array, so syrk with
        # trans=1 reads it without a copy and adds −sign · scaled scaledᵀ to the lower triangle.
        out = blas.dsyrk(-sign, scaled.T, beta=1.0, c=out, trans=1, lower=1, overwrite_c=1)
    index = np.arange(size)
    out[index, index] += diagonal
    return out


def _real_products(mask: np.ndarray, market: int) -> slice | np.ndarray:
    """The market's real products: a slice when they come first (the padded layout), else
    their positions."""
    count = int(mask[market].sum())
    if mask[market, :count].all():
        return slice(0, count)
    return np.flatnonzero(mask[market])


def delta_jacobian_inverse(
    probabilities: Probabilities, weights: np.ndarray, mask: np.ndarray
) -> np.ndarray | None:
    """``[T, J, J]`` (∂s/∂δ)⁻¹ of the unnested logit by market (identity in padding).

    ∂s/∂δ = diag(s) − P W Pᵀ with P = A · e ⊗ r is formed on each market's real products by
    :func:`lower_diagonal_minus_gram` (rows e_j A_ji, coefficients w_i r_i²) and inverted by
    Cholesky (LAPACK ``dpotrf``, ``dpotri``).

    Returns
    -------
    numpy.ndarray or None
        None when the probabilities are not factored or ∂s/∂δ is not positive definite (to
        working precision) in some market.

    Examples
    --------
    >>> from blpmodels.kernel.shares import Nesting, ShareEvaluator
    >>> mu = np.array([[[0.5, -0.5], [0.0, 1.0]]]); w = np.array([[0.5, 0.5]])
    >>> mask = np.ones((1, 2), bool)
    >>> evaluator = ShareEvaluator(mu, w, mask, Nesting.unnested((1, 2)))
    >>> probabilities = evaluator.probabilities(np.zeros((1, 2)), factored=True)
    >>> P, s = probabilities.unconditional[0], probabilities.shares[0]
    >>> dense = np.diag(s) - P @ np.diag(w[0]) @ P.T
    >>> inverse = delta_jacobian_inverse(probabilities, w, mask)
    >>> bool(np.allclose(inverse[0] @ dense, np.eye(2)))
    True
    """
    if probabilities.factors is None:
        return None
    agent_factor, exp_delta, ratio = probabilities.factors
    n_markets, width = mask.shape
    out = np.zeros((n_markets, width, width))
    index = np.arange(width)
    out[:, index, index] = 1.0
    coefficients = weights * ratio**2
    for market in range(n_markets):
        products = _real_products(mask, market)
        if not mask[market].any():
            continue  # a market of padding only keeps the identity
        rows = agent_factor[market, products] * exp_delta[market, products, None]
        lower = lower_diagonal_minus_gram(
            probabilities.shares[market, products], rows, coefficients[market], overwrite_rows=True
        )
        inverse = _cholesky_inverse(lower)
        if inverse is None:
            return None
        if isinstance(products, slice):
            out[market, products, products] = inverse
        else:
            out[market, products[:, None], products] = inverse
    return out


def _cholesky_inverse(lower: np.ndarray) -> np.ndarray | None:
    """The symmetric inverse of a positive definite matrix given by its lower triangle (its
    strict upper triangle must be zero, as :func:`lower_diagonal_minus_gram` leaves it)."""
    factor, info = lapack.dpotrf(lower, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        return None
    inverse, info = lapack.dpotri(factor, lower=1, overwrite_c=1)
    if info != 0 or not np.isfinite(np.diagonal(inverse)).all():
        return None
    # The strict upper triangle is still the zeros of ``lower``: mirror the lower one into it
    # (one addition instead of two np.tril copies).
    full = inverse + inverse.T
    index = np.arange(full.shape[0])
    full[index, index] = np.diagonal(inverse)
    return full


def agent_price_slopes(price_derivative: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """``[T, I]`` d_i when D_ji = ∂V_ji/∂p_j is the same for all real products j of each
    market (0 in markets of padding only), else None.

    Examples
    --------
    >>> D = np.array([[[-1.0, -2.0], [-1.0, -2.0], [7.0, 7.0]]]); mask = np.array([[1, 1, 0]], bool)
    >>> agent_price_slopes(D, mask).tolist()
    [[-1.0, -2.0]]
    >>> agent_price_slopes(D, np.ones((1, 3), bool)) is None
    True
    """
    first = np.argmax(mask, axis=1)
    slopes = np.take_along_axis(price_derivative, first[:, None, None], axis=1)[:, 0, :]
    same = (price_derivative == slopes[:, None, :]) | ~mask[:, :, None]
    if not bool(same.all()):
        return None
    return np.where(mask.any(axis=1)[:, None], slopes, 0.0)  # 0 in markets of padding only


@dataclass(frozen=True)
class CholeskyMarkupSystem:
    """B = Ω ⊙ (∂s/∂p)ᵀ of each market held as the Cholesky factor of −B (real products).

    ``solve`` returns B⁻¹ x, as ``numpy.linalg.solve(B, x)`` does for the batched ``[T, J, J]``
    B of :func:`blpmodels.kernel.markups.markups` (zero in padding).
    """

    factors: tuple[np.ndarray | None, ...]
    products: tuple[slice | np.ndarray, ...]
    shape: tuple[int, int]
    #: ``[T, I]`` the agents' price slopes d_i behind B (all products of a market share them),
    #: which :func:`blpmodels.kernel.markups.markup_jacobian` uses for its symmetric path.
    slopes: np.ndarray | None = None

    def solve(self, values: np.ndarray) -> np.ndarray:
        """``[T, J, K]`` B⁻¹ x for ``[T, J, K]`` x (rows of padding ignored, zero out)."""
        out = np.zeros(values.shape)
        for market, (factor, products) in enumerate(zip(self.factors, self.products, strict=True)):
            if factor is None:
                continue  # a market of padding only
            solution, info = lapack.dpotrs(factor, values[market, products], lower=1)
            if info != 0:  # pragma: no cover - potrs fails only on invalid arguments
                raise np.linalg.LinAlgError(f"dpotrs failed with info={info}")
            out[market, products] = -solution
        return out


def cholesky_markups(
    probabilities: Probabilities,
    weights: np.ndarray,
    slopes: np.ndarray,
    ownership: np.ndarray,
    mask: np.ndarray,
) -> tuple[np.ndarray, CholeskyMarkupSystem] | None:
    """Bertrand–Nash markups η = −B⁻¹s and the factored B by market, or None.

    With D_ji = d_i, −∂s/∂p = diag(P W (−d)) − P W diag(−d) Pᵀ, formed by
    :func:`lower_diagonal_minus_gram` (rows e_j A_ji, coefficients −w_i d_i r_i²); −B is its
    product with the symmetric ownership Ω element by element, factored by Cholesky.

    Parameters
    ----------
    probabilities : Probabilities
        Factored probabilities of an unnested model.
    weights : numpy.ndarray
        ``[T, I]`` agent weights.
    slopes : numpy.ndarray
        ``[T, I]`` d_i (:func:`agent_price_slopes`).
    ownership : numpy.ndarray
        ``[T, J, J]`` symmetric Ω.
    mask : numpy.ndarray
        ``[T, J]`` real products.

    Returns
    -------
    tuple or None
        ``(η [T, J], CholeskyMarkupSystem)``; None when the probabilities are not factored or
        −B is not positive definite in some market (then take
        :func:`blpmodels.kernel.markups.markups`).

    Examples
    --------
    Single-product logit firms: η_j = −1/(α(1 − s_j)).

    >>> from blpmodels.kernel.shares import Nesting, ShareEvaluator
    >>> w, mask = np.ones((1, 1)), np.ones((1, 2), bool)
    >>> evaluator = ShareEvaluator(np.zeros((1, 2, 1)), w, mask, Nesting.unnested((1, 2)))
    >>> probabilities = evaluator.probabilities(np.array([[0.5, -0.2]]), factored=True)
    >>> eta, _ = cholesky_markups(probabilities, w, np.full((1, 1), -2.0), np.eye(2)[None], mask)
    >>> bool(np.allclose(eta, 1 / (2.0 * (1 - probabilities.shares))))
    True
    """
    if probabilities.factors is None:
        return None
    agent_factor, exp_delta, ratio = probabilities.factors
    eta = np.zeros(mask.shape)
    own_coefficients = -(weights * slopes) * ratio  # Σ_i w_i (−d_i) P_ji = e_j Σ_i A_ji (this)
    coefficients = own_coefficients * ratio
    factors, places = [], []
    for market in range(mask.shape[0]):
        products = _real_products(mask, market)
        if not mask[market].any():
            factors.append(None)  # a market of padding only: η stays zero
            places.append(products)
            continue
        rows = agent_factor[market, products] * exp_delta[market, products, None]
        diagonal = rows @ own_coefficients[market]
        lower = lower_diagonal_minus_gram(diagonal, rows, coefficients[market], overwrite_rows=True)
        if isinstance(products, slice):
            lower *= ownership[market, products, products]
        else:
            lower *= ownership[market, products[:, None], products]
        factor, info = lapack.dpotrf(lower, lower=1, overwrite_a=1, clean=0)
        if info != 0:
            return None
        solution, info = lapack.dpotrs(factor, probabilities.shares[market, products], lower=1)
        if info != 0 or not np.isfinite(solution).all():
            return None
        eta[market, products] = solution  # η = −B⁻¹s = (−B)⁻¹s
        factors.append(factor)
        places.append(products)
    return eta, CholeskyMarkupSystem(tuple(factors), tuple(places), mask.shape, slopes)
