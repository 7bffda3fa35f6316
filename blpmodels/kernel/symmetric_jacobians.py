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
* B is block diagonal on a market's products sorted by firm, so its rank update and factor
  are taken in blocks of a few whole firms (:data:`MARKUP_BLOCK_SIZE`), not on the market's
  full matrix (pyblp's automobile markets hold 34 k entries in their firms' blocks of the
  255 k of their full matrices);
* d_i is read off the characteristics' price derivatives (:func:`agent_price_slopes`), so the
  ``[T, J, I]`` array of D is never formed on this path;
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

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas, lapack

from blpmodels.kernel.shares import Probabilities

__all__ = [
    "INVERSE_LOOP_WIDTH",
    "MARKUP_BLOCK_SIZE",
    "MARKUP_LOOP_WIDTH",
    "CholeskyMarkupSystem",
    "FirmSortedMarket",
    "agent_price_slopes",
    "cholesky_markups",
    "delta_jacobian_inverse",
    "firm_order",
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


def agent_price_slopes(
    mean: np.ndarray, price_columns: np.ndarray, coefficients: np.ndarray, mask: np.ndarray
) -> np.ndarray | None:
    """``[T, I]`` d_i when D_ji = ∂V_ji/∂p_j = m_j + Σ_k x_jk β_ik is the same for all real
    products j of each market (0 in markets of padding only), else None.

    Read off the price derivatives of the characteristics instead of the ``[T, J, I]`` D:
    D is the same for every product when m_j is and each column x_k with a nonzero agent
    coefficient in the market is (so pyblp's automobile fit, prices in X2 as themselves,
    needs no D at all on this path).

    Parameters
    ----------
    mean : numpy.ndarray
        ``[T, J]`` m_j = ∂X1_j/∂p_j · β.
    price_columns : numpy.ndarray
        ``[T, J, K]`` x_jk = ∂X2_jk/∂p_j.
    coefficients : numpy.ndarray
        ``[T, I, K]`` the agents' coefficients β_ik on X2.
    mask : numpy.ndarray
        ``[T, J]`` real products.

    Examples
    --------
    >>> x = np.array([[[0.0, 1.0], [5.0, 1.0], [0.0, 7.0]]]); mask = np.array([[1, 1, 0]], bool)
    >>> beta = np.array([[[0.0, -1.0], [0.0, -2.0]]])  # column 0 unused: x_j0 may differ
    >>> agent_price_slopes(np.full((1, 3), 0.5), x, beta, mask).tolist()
    [[-0.5, -1.5]]
    >>> beta[0, 1, 0] = 1.0
    >>> agent_price_slopes(np.full((1, 3), 0.5), x, beta, mask) is None
    True
    """
    first = np.argmax(mask, axis=1)
    row = np.take_along_axis(price_columns, first[:, None, None], axis=1)  # [T, 1, K]
    used = (coefficients != 0).any(axis=1)[:, None, :]  # [T, 1, K]
    same = (price_columns == row) | ~used | ~mask[:, :, None]
    base = np.take_along_axis(mean, first[:, None], axis=1)  # [T, 1]
    if not (bool(same.all()) and bool(((mean == base) | ~mask).all())):
        return None
    slopes = base + np.matmul(np.where(used, row, 0.0), np.swapaxes(coefficients, 1, 2))[:, 0]
    return np.where(mask.any(axis=1)[:, None], slopes, 0.0)  # 0 in markets of padding only


#: Products per diagonal block of −B. Ω ⊙ (∂s/∂p)ᵀ is block diagonal by firm, so each market's
#: products are sorted by firm and −B is formed and factored in blocks of whole consecutive
#: firms of about this many products (a firm of more is one block): fewer flops than the
#: market's full matrix, fewer calls than one block per firm. Measured 2026-12-07 on one
#: market of 150 products in 22 firms (I = 200, one thread, CPU ms for the rank update,
#: Cholesky and one solve): one block 0.27, blocks of 75: 0.21, 50: 0.19, 30: 0.21, 18: 0.26,
#: 10: 0.39.
MARKUP_BLOCK_SIZE = 50


@dataclass(frozen=True)
class FirmSortedMarket:
    """One market's real products sorted by firm, with −B factored block by block."""

    #: ``(n,)`` the real products (positions in the market), firm by firm.
    places: np.ndarray
    #: Where each firm's run starts in ``places`` (the first is 0).
    firm_starts: tuple[int, ...]
    #: ``(start, stop, factor)``: the lower Cholesky factor of −B on ``places[start:stop]``,
    #: whole firms; the blocks cover ``places`` in order.
    blocks: tuple[tuple[int, int, np.ndarray], ...]

    def minus_solve(self, values: np.ndarray) -> np.ndarray:
        """(−B)⁻¹ x for x ``[n, ...]`` in the order of ``places``."""
        out = np.empty(values.shape)
        for start, stop, factor in self.blocks:
            solution, info = lapack.dpotrs(factor, values[start:stop], lower=1)
            if info != 0:  # pragma: no cover - potrs fails only on invalid arguments
                raise np.linalg.LinAlgError(f"dpotrs failed with info={info}")
            out[start:stop] = solution
        return out


@dataclass(frozen=True)
class CholeskyMarkupSystem:
    """B = Ω ⊙ (∂s/∂p)ᵀ of each market with Ω by firm: block diagonal on the products sorted
    by firm, held as the Cholesky factors of −B's blocks (:class:`FirmSortedMarket`).

    ``solve`` returns B⁻¹ x, as ``numpy.linalg.solve(B, x)`` does for the batched ``[T, J, J]``
    B of :func:`blpmodels.kernel.markups.markups` (zero in padding).
    """

    #: Each market's factored blocks; None for a market of padding only.
    markets: tuple[FirmSortedMarket | None, ...]
    shape: tuple[int, int]
    #: ``[T, I]`` the agents' price slopes d_i behind B (all products of a market share them),
    #: which :func:`blpmodels.kernel.markups.markup_jacobian` uses for its symmetric path.
    slopes: np.ndarray | None = None
    #: ``(A [T, J, I], e [T, J], r [T, I])``: the factored probabilities P_ji = A_ji e_j r_i
    #: behind B, from which the symmetric markup Jacobian takes each market's rows of P (no
    #: ``[T, J, I]`` P is formed for it).
    probability_factors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def probability_rows(self, market: int, places: np.ndarray) -> np.ndarray:
        """``[n, I]`` P_ji of the market's products ``places``, as
        :attr:`~blpmodels.kernel.shares.Probabilities.unconditional` forms them (same
        operations, so the same numbers)."""
        agent_factor, exp_delta, ratio = self.probability_factors
        rows = agent_factor[market, places]
        rows *= exp_delta[market, places, None]
        rows *= ratio[market]
        return rows

    def solve(self, values: np.ndarray) -> np.ndarray:
        """``[T, J, K]`` B⁻¹ x for ``[T, J, K]`` x (rows of padding ignored, zero out)."""
        out = np.zeros(values.shape)
        for market, entry in enumerate(self.markets):
            if entry is not None:
                out[market, entry.places] = -entry.minus_solve(values[market, entry.places])
        return out

    @classmethod
    def from_dense(
        cls,
        minus_system: np.ndarray,
        firms: np.ndarray,
        mask: np.ndarray,
        slopes: np.ndarray | None = None,
        block_size: int = MARKUP_BLOCK_SIZE,
    ) -> CholeskyMarkupSystem:
        """The system of a dense ``[T, J, J]`` −B (a reference for tests): the blocks
        :func:`cholesky_markups` would form, cut from it and factored."""
        markets = []
        for market, (places, starts) in enumerate(firm_order(firms, mask)):
            blocks = []
            for start, stop in _firm_blocks(starts, places.size, block_size):
                chosen = places[start:stop]
                block = minus_system[market][np.ix_(chosen, chosen)]
                blocks.append((start, stop, np.asfortranarray(np.linalg.cholesky(block))))
            entry = FirmSortedMarket(places, tuple(starts), tuple(blocks)) if places.size else None
            markets.append(entry)
        return cls(tuple(markets), mask.shape, slopes)


def firm_order(firms: np.ndarray, mask: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """Per market, its real products sorted by firm (a stable sort: each firm's products in
    their order) and where each firm's run starts, from the ``[T, J, F]`` 0/1 indicator.

    Examples
    --------
    >>> firms = np.array([[[1.0, 0], [0, 1], [1, 0], [0, 0]]])
    >>> [(places.tolist(), starts) for places, starts in firm_order(firms, np.ones((1, 4), bool))]
    [([0, 2, 1], [0, 2])]
    """
    n_firms = firms.shape[2]
    by_firm = np.where(mask & firms.any(axis=2), np.argmax(firms, axis=2), n_firms)
    order = np.argsort(by_firm, axis=1, kind="stable")  # padding (no firm) last
    ordered = np.take_along_axis(by_firm, order, axis=1)
    changes = ordered[:, 1:] != ordered[:, :-1]
    out = []
    for market in range(mask.shape[0]):
        size = int(np.count_nonzero(ordered[market] < n_firms))
        starts = [0, *(np.flatnonzero(changes[market, : size - 1]) + 1).tolist()] if size else []
        out.append((order[market, :size], starts))
    return out


def _firm_blocks(starts: list[int], size: int, block_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` blocks of whole consecutive firms (runs beginning at ``starts``, of
    ``size`` products in all), each closed before the firm that would take it past
    ``block_size`` products."""
    cuts = [0]
    for start, stop in zip(starts, [*starts[1:], size], strict=True):
        if stop - cuts[-1] > block_size and start > cuts[-1]:
            cuts.append(start)
    cuts.append(size)
    return list(itertools.pairwise(cuts)) if size else []


def cholesky_markups(
    probabilities: Probabilities,
    weights: np.ndarray,
    slopes: np.ndarray,
    firms: np.ndarray,
    mask: np.ndarray,
    block_size: int = MARKUP_BLOCK_SIZE,
    order: list[tuple[np.ndarray, list[int]]] | None = None,
) -> tuple[np.ndarray, CholeskyMarkupSystem] | None:
    """Bertrand–Nash markups η = −B⁻¹s and the factored B by market, or None.

    With D_ji = d_i, −∂s/∂p = diag(P W (−d)) − P W diag(−d) Pᵀ, formed by
    :func:`lower_diagonal_minus_gram` (rows e_j A_ji, coefficients −w_i d_i r_i²); −B is its
    product with the ownership Ω = HHᵀ element by element, block diagonal on the products
    sorted by firm: it is formed and factored by Cholesky in blocks of whole firms
    (:data:`MARKUP_BLOCK_SIZE`), never as the market's full matrix.

    Parameters
    ----------
    probabilities : Probabilities
        Factored probabilities of an unnested model.
    weights : numpy.ndarray
        ``[T, I]`` agent weights.
    slopes : numpy.ndarray
        ``[T, I]`` d_i (:func:`agent_price_slopes`).
    firms : numpy.ndarray
        ``[T, J, F]`` 0/1 firm indicator H with Ω = HHᵀ
        (:func:`blpmodels.kernel.markups.firm_indicator`).
    mask : numpy.ndarray
        ``[T, J]`` real products.
    block_size : int, optional
        Products per block (whole firms).
    order : list, optional
        :func:`firm_order` of ``firms`` and ``mask``, when the caller keeps it between calls.

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
    firm_of = np.argmax(firms, axis=2)
    markets = []
    if order is None:
        order = firm_order(firms, mask)
    if sum(places.size for places, _ in order) != np.count_nonzero(mask):
        return None  # a real product without a firm: Ω is not HHᵀ on the real products
    for market, (places, starts) in enumerate(order):
        if not places.size:
            markets.append(None)  # a market of padding only: η stays zero
            continue
        rows = agent_factor[market, places]  # firm by firm (a copy: scaled in place below)
        rows *= exp_delta[market, places, None]
        diagonal = rows @ own_coefficients[market]
        owner = firm_of[market, places]
        coefficient = coefficients[market]
        positive = bool((coefficient > 0).all())  # as when every w_i d_i < 0
        if positive:
            # One scaling of the market's rows serves all its blocks' rank updates (what
            # lower_diagonal_minus_gram does per call, with the same numbers).
            rows *= np.sqrt(coefficient)
        blocks = []
        for start, stop in _firm_blocks(starts, places.size, block_size):
            if positive:
                lower = blas.dsyrk(-1.0, rows[start:stop].T, trans=1, lower=1)
                index = np.arange(stop - start)
                lower[index, index] += diagonal[start:stop]
            else:
                lower = lower_diagonal_minus_gram(
                    diagonal[start:stop], rows[start:stop], coefficient, overwrite_rows=True
                )
            lower *= owner[start:stop, None] == owner[start:stop]  # Ω on the block
            factor, info = lapack.dpotrf(lower, lower=1, overwrite_a=1, clean=0)
            if info != 0:
                return None
            blocks.append((start, stop, factor))
        entry = FirmSortedMarket(places, tuple(starts), tuple(blocks))
        solution = entry.minus_solve(probabilities.shares[market, places])
        if not np.isfinite(solution).all():
            return None
        eta[market, places] = solution  # η = −B⁻¹s = (−B)⁻¹s
        markets.append(entry)
    return eta, CholeskyMarkupSystem(tuple(markets), mask.shape, slopes, probabilities.factors)
