"""The Woodbury solve of ∂s/∂δ: (∂s/∂δ)⁻¹ and ∂δ/∂θ without a J×J matrix when agents are few.

Unnested ∂s/∂δ = D − UUᵀ with D = diag(s) and U_ji = √w_i P_ji, so with I agents below the J
products its inverse is D⁻¹ + D⁻¹U C⁻¹ UᵀD⁻¹ (capacitance C = 1 − UᵀD⁻¹U): O(J·I²) work
instead of O(J³). Large markets are solved one at a time in cache, and where U spans few
directions (one random coefficient) through a compressed rank-k factor of U.
:class:`LowRankInverse` keeps the factors for the δ solver's Newton steps (:func:`apply_inverse`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from blpmodels.kernel.shares import Probabilities

__all__ = ["LowRankInverse", "apply_inverse", "woodbury_delta_jacobian"]

#: Woodbury replaces the dense J×J inverse of ∂s/∂δ when agents I ≤ this × products J. Measured
#: 2026-12-07 with the syrk + Cholesky solve (one BLAS thread, 25 markets, I = 200, unnested,
#: ∂δ/∂θ plus the Newton inverse, CPU ms dense / Woodbury): J = 100: 12.2 / 13.3, 150: 17.7 /
#: 14.7, 200: 38 / 19, 250: 66 / 19, 300: 97 / 21, 500: 342 / 30; one Newton step's K r costs
#: 0.1–0.4 ms dense against about 1.1 ms Woodbury below J = 300 (a loop over markets). Whole
#: fits (bench_large_j.py, T = 50, CPU s dense / Woodbury): J = 150 (I = 1.33 J): 0.80 / 0.82,
#: late evaluations 0.067 / 0.088; J = 200 (I = J): 1.44 / 1.18, 0.109 / 0.103. So at I = 200
#: the paths cross at I ≈ J; small markets gain less (random utilities of Nevo's size, T = 94,
#: J = 24, I = 20: 1.2 ms dense against 2.0 ms Woodbury, K r 0.016 against 0.043 ms), so it stays at
#: 0.8, which keeps Nevo and the exercise-2 problems on the dense path.
WOODBURY_CROSSOVER = 0.8
#: Markets with J·I² of at least this many flops take the Woodbury solve one market at a time
#: (U, V and the solve stay in cache, C⁻¹ is never formed); smaller ones are solved in batched
#: products over all markets, where a Python loop over markets would cost more than the
#: arithmetic (measured 2026-12-07, T = 1,000, J = 50, I = 20: 59 ms by market against 19 ms
#: batched, and each Newton step's K r 5.8 ms against 0.8 ms; at J = 100, I = 50 about even;
#: at J = 500, I = 200 by market 30 ms against 70 ms).
WOODBURY_LOOP_SIZE = 2_000_000
#: Largest 1-norm condition number of the I×I capacitance matrix I − UᵀD⁻¹U for which the
#: Woodbury path is kept; beyond it the chunk takes the dense solve (the capacitance loses
#: digits the dense LU of ∂s/∂δ does not).
WOODBURY_MAX_CONDITION = 1e8
#: Ranks tried, in order, for the compressed factor of a large market's U
#: (:func:`_woodbury_compressed`); one is tried only when at most a quarter of the agents.
COMPRESSED_RANKS = (16, 32)
#: Largest relative residual of U's sketched probes outside the compressed factor's columns.
COMPRESSION_TOLERANCE = 1e-13
#: Random probes that check the compressed factor (Halko, Martinsson and Tropp's a posteriori
#: estimate: the residual exceeds 10√(2/π) times the largest probe's with probability 10⁻⁴).
COMPRESSION_PROBES = 4


@dataclass(frozen=True)
class LowRankInverse:
    """K = 1 + D⁻¹ U C⁻¹ Uᵀ per market: (∂log s/∂δ)⁻¹ without its ``[T, J, J]`` array.

    With ∂s/∂δ = D − UUᵀ (D = diag(s), U_ji = √w_i P_ji), Woodbury gives
    (∂s/∂δ)⁻¹ = D⁻¹ + D⁻¹U C⁻¹ UᵀD⁻¹ with the capacitance C = 1 − UᵀD⁻¹U, and
    (∂log s/∂δ)⁻¹ = (∂s/∂δ)⁻¹ D = 1 + D⁻¹U C⁻¹ Uᵀ. Only U is kept at ``[T, J, I]`` (D⁻¹U
    is one scaling away), so a chunk's state holds one such array, not two. C is kept as its
    Cholesky factor; small markets also keep C⁻¹, so that K is applied to all markets in a few
    batched products (large ones apply the factor market by market: forming C⁻¹ there cost
    more than factoring C, see :data:`WOODBURY_LOOP_SIZE`). Large markets whose agents span
    few directions keep a ``[T, J, k]`` factor F with FFᵀ = UUᵀ instead, whose C is diagonal
    and kept with C⁻¹ (:func:`_woodbury_compressed`); every formula above holds with F for U.

    Attributes
    ----------
    factor : numpy.ndarray
        ``[T, J, I]`` U, or ``[T, J, k]`` F (zero rows in padding, so K is the identity there).
    cholesky : numpy.ndarray
        ``[T, I, I]`` (or ``[T, k, k]``) per market the lower triangular L with C = L Lᵀ (its
        transpose, the Fortran-ordered upper factor LAPACK works with, is a view).
    scale : numpy.ndarray
        ``[T, J]`` 1/s (1 in padding).
    middle : numpy.ndarray or None
        ``[T, I, I]`` C⁻¹ for small markets (``[T, k, k]`` for compressed ones), None for
        large ones.
    """

    factor: np.ndarray
    cholesky: np.ndarray
    scale: np.ndarray
    middle: np.ndarray | None = None

    def __getitem__(self, markets: np.ndarray | slice) -> LowRankInverse:
        return LowRankInverse(
            self.factor[markets],
            self.cholesky[markets],
            self.scale[markets],
            None if self.middle is None else self.middle[markets],
        )

    def capacitance_inverse(self) -> np.ndarray:
        """The ``[T, I, I]`` C⁻¹ (kept for small markets, else solved from the factor)."""
        if self.middle is not None:
            return self.middle
        identity = np.eye(self.cholesky.shape[1])
        return np.stack([_cholesky_solve(lower, identity) for lower in self.cholesky])

    def dense(self) -> np.ndarray:
        """The ``[T, J, J]`` matrix K (for tests and small problems)."""
        middle = self.capacitance_inverse()
        product = np.matmul(np.matmul(self.factor, middle), np.swapaxes(self.factor, 1, 2))
        product *= self.scale[:, :, None]
        index = np.arange(product.shape[1])
        product[:, index, index] += 1.0
        return product


def _cholesky_solve(lower: np.ndarray, right_side: np.ndarray) -> np.ndarray:
    """C⁻¹ B for one market from its lower Cholesky factor L (C = L Lᵀ; B ``[I]`` or ``[I, K]``)."""
    # L in C order is the upper factor Lᵀ in Fortran order: LAPACK reads it without a copy.
    solution, _ = lapack.dpotrs(lower.T, right_side, lower=0)
    return solution


def apply_inverse(
    inverse: np.ndarray | LowRankInverse,
    vectors: np.ndarray,
    markets: np.ndarray | None = None,
) -> np.ndarray:
    """``[n, J]`` K r per market for a dense ``[T, J, J]`` or :class:`LowRankInverse` K.

    ``markets`` (sorted positions among the T, one per row of ``vectors``) selects the markets
    of K. A dense K and the factors of small markets are indexed (when ``markets`` does not
    hold all T) and applied in batched products; the factors of large markets are applied
    market by market in place, since indexing would copy every ``[J, I]`` factor (as much
    memory traffic as the product itself).

    Examples
    --------
    >>> K = np.eye(2)[None] * 2.0
    >>> apply_inverse(K, np.array([[1.0, 3.0]]))
    array([[2., 6.]])
    """
    count = inverse.factor.shape[0] if isinstance(inverse, LowRankInverse) else inverse.shape[0]
    if isinstance(inverse, LowRankInverse) and inverse.middle is not None:
        if markets is not None and len(markets) != count:
            inverse = inverse[markets]
        inner = np.matmul(vectors[:, None, :], inverse.factor)  # [T, 1, I]
        inner = np.matmul(inner, inverse.middle)
        low_rank = np.matmul(inverse.factor, inner[:, 0, :, None])[:, :, 0]
        return vectors + low_rank * inverse.scale
    if isinstance(inverse, LowRankInverse):
        positions = range(len(vectors)) if markets is None else markets
        out = np.empty_like(vectors)
        for row, market in enumerate(positions):
            factor = inverse.factor[market]
            inner = _cholesky_solve(inverse.cholesky[market], vectors[row] @ factor)
            np.matmul(factor, inner, out=out[row])
        out *= inverse.scale if markets is None else inverse.scale[markets]
        out += vectors
        return out
    if markets is not None and len(markets) != count:
        inverse = inverse[markets]
    return np.matmul(inverse, vectors[:, :, None])[:, :, 0]


def _capacitance(factor: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """One market's C = 1 − VᵀV (V = D^{-1/2}U, a ``[J, I]`` temporary that stays in cache).

    numpy computes VᵀV of one array as a symmetric rank-J update (BLAS syrk: J·I² flops, half
    of a general product) without holding the GIL, so chunks in other threads run meanwhile
    (scipy's BLAS wrappers hold it).
    """
    scaled_factor = factor * np.sqrt(scale)[:, None]
    np.matmul(scaled_factor.T, scaled_factor, out=out)
    np.negative(out, out=out)
    out.flat[:: out.shape[0] + 1] += 1.0


def _condition_within(lower: np.ndarray, capacitance: np.ndarray, limit: float) -> bool:
    """Whether C's 1-norm condition number, as LAPACK estimates it from L, is at most ``limit``.

    The estimate (pocon: I² flops from the factor, no inverse) is within a small factor of the
    exact ‖C‖₁‖C⁻¹‖₁ the solve was checked against before.
    """
    norm = float(np.abs(capacitance).sum(axis=0).max())
    reciprocal, info = lapack.dpocon(lower.T, norm)
    return info == 0 and reciprocal * limit >= 1.0


def woodbury_delta_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    product_mask: np.ndarray,
    by_theta: np.ndarray,
    max_condition: float | None = None,
) -> tuple[np.ndarray, LowRankInverse] | None:
    """∂δ/∂θ = −(∂s/∂δ)⁻¹ ∂s/∂θ by Woodbury over the agents, or None to use the dense solve.

    For the unnested logit ∂s/∂δ = D − UUᵀ with D = diag(s) and ``U = [√w_i P[:, i]]``
    (``[J, I]``), so (∂s/∂δ)⁻¹ = D⁻¹ + V C⁻¹ Vᵀ with V = D⁻¹U and the I×I capacitance
    C = 1 − UᵀV: J·I² + I³/3 flops per market (a symmetric rank-J update and a Cholesky
    factorization, no inverse) instead of the dense J²·I + J³, and the ``[J, J]`` matrix is
    never formed. C is positive definite exactly when ∂s/∂δ is (Schur complements of
    [[D, U], [Uᵀ, 1]]).

    Parameters
    ----------
    probabilities : Probabilities
        Factored probabilities (``factors`` set) of an unnested model.
    weights : numpy.ndarray
        ``[T, I]`` nonnegative integration weights.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    by_theta : numpy.ndarray
        ``[T, J, K]`` ∂s/∂θ.
    max_condition : float, optional
        Largest 1-norm condition number of C accepted (default
        :data:`WOODBURY_MAX_CONDITION`).

    Returns
    -------
    tuple or None
        ``(∂δ/∂θ [T, J, K], LowRankInverse of ∂log s/∂δ)``; None when the probabilities are not
        factored, a weight is negative, a share is not positive, or C is not positive definite
        or ill-conditioned in any market (the caller then takes the dense solve).

    Examples
    --------
    One market, two products, one agent (plain logit): ∂s/∂δ = diag(s) − ssᵀ.

    >>> from blpmodels.kernel.shares import Nesting, ShareEvaluator
    >>> mu = np.zeros((1, 2, 1)); w = np.ones((1, 1)); mask = np.ones((1, 2), bool)
    >>> evaluator = ShareEvaluator(mu, w, mask, Nesting.unnested((1, 2)))
    >>> probabilities = evaluator.probabilities(np.zeros((1, 2)), factored=True)
    >>> s = probabilities.shares[0]
    >>> by_theta = np.array([[[1.0], [2.0]]])
    >>> jacobian, inverse = woodbury_delta_jacobian(probabilities, w, mask, by_theta)
    >>> dense = -np.linalg.solve(np.diag(s) - np.outer(s, s), by_theta[0])
    >>> bool(np.allclose(jacobian[0], dense))
    True
    """
    limit = WOODBURY_MAX_CONDITION if max_condition is None else max_condition
    if probabilities.factors is None or not bool((weights >= 0).all()):
        return None
    shares = np.where(product_mask, probabilities.shares, 1.0)
    if not bool((shares > 0).all()):
        return None
    agent_factor, exp_delta, ratio = probabilities.factors
    # U_ji = √w_i P_ji = e_j (A_ji r_i √w_i); padding rows are zeroed so K is 1 there.
    agent_scale = ratio * np.sqrt(weights)
    product_scale = np.where(product_mask, exp_delta, 0.0)
    scale = 1.0 / shares
    _, n_products, n_agents = agent_factor.shape
    solve = (
        _woodbury_by_market
        if n_products * n_agents * n_agents >= WOODBURY_LOOP_SIZE
        else _woodbury_batched
    )
    pieces = (agent_factor, agent_scale, product_scale, scale)
    if solve is _woodbury_by_market:
        compressed = _woodbury_compressed(*pieces, by_theta, limit)
        if compressed is not None:
            return compressed
    return solve(*pieces, by_theta, limit)


def _woodbury_by_market(
    agent_factor: np.ndarray,
    agent_scale: np.ndarray,
    product_scale: np.ndarray,
    scale: np.ndarray,
    by_theta: np.ndarray,
    limit: float,
) -> tuple[np.ndarray, LowRankInverse] | None:
    """:func:`woodbury_delta_jacobian` for large markets, one market at a time (see there)."""
    n_markets, _, n_agents = agent_factor.shape
    right = np.empty(agent_factor.shape)
    cholesky = np.empty((n_markets, n_agents, n_agents))
    capacitance = np.empty((n_agents, n_agents))
    jacobian = by_theta * scale[:, :, None]
    # Market by market, so that each market's U (and V) is still in cache when reused.
    for market in range(n_markets):
        factor = right[market]
        np.multiply(agent_factor[market], agent_scale[market], out=factor)
        factor *= product_scale[market][:, None]
        _capacitance(factor, scale[market], capacitance)
        try:  # C is positive definite exactly when ∂s/∂δ is
            lower = np.linalg.cholesky(capacitance)
        except np.linalg.LinAlgError:
            return None
        if not _condition_within(lower, capacitance, limit):
            return None
        cholesky[market] = lower
        if by_theta.shape[2]:
            inner = _cholesky_solve(lower, factor.T @ jacobian[market])
            jacobian[market] += (factor @ inner) * scale[market][:, None]
    np.negative(jacobian, out=jacobian)
    if not (np.isfinite(jacobian).all() and np.isfinite(cholesky).all()):
        return None
    return jacobian, LowRankInverse(right, cholesky, scale)


@functools.lru_cache(maxsize=8)
def _sketch(n_agents: int, columns: int) -> np.ndarray:
    """A fixed ``[I, columns]`` standard normal sketch (seeded: every run compresses alike)."""
    sketch = np.random.default_rng(20).standard_normal((n_agents, columns))
    sketch.flags.writeable = False
    return sketch


def _woodbury_compressed(
    agent_factor: np.ndarray,
    agent_scale: np.ndarray,
    product_scale: np.ndarray,
    scale: np.ndarray,
    by_theta: np.ndarray,
    limit: float,
) -> tuple[np.ndarray, LowRankInverse] | None:
    """:func:`woodbury_delta_jacobian` through a rank-k factor F with FFᵀ = UUᵀ, or None.

    The I columns of V = D^{-1/2}U span few directions when the agents differ in few random
    coefficients: with one (the large-J benchmark, J = 500, I = 200) V's singular values fall
    by about 5× each, so 14 of them are above 1e-15 of the largest. A seeded Gaussian sketch
    VΩ (k + 4 columns: :func:`_sketch`) gives an orthonormal basis Q of V's range from its first
    k columns (Halko, Martinsson and Tropp's range finder); the other 4 check it: their part
    outside Q must be below :data:`COMPRESSION_TOLERANCE` of their size, else the next rank of
    :data:`COMPRESSED_RANKS` is tried, and past the last this returns None (the full I×I
    capacitance then). With B = QᵀV and BBᵀ = ZΛZᵀ (k×k), VVᵀ = (QZ)Λ(QZ)ᵀ and
    F = D^{1/2}QZΛ^{1/2}, so the capacitance 1 − FᵀD⁻¹F = 1 − Λ is diagonal: no I×I product,
    factorization or condition estimate, about 4k·J·I flops instead of J·I² (U itself is never
    formed: every product with it is one with A), and the Newton steps apply a ``[J, k]``
    factor instead of ``[J, I]``. The condition number of C is then exact (its other
    eigenvalues are 1): 1/min(1 − λ). ∂δ/∂θ gets one step of iterative refinement against the
    exact D − UUᵀ, so what the compression drops (below 1e-13 of V) does not reach the
    gradient. At J = 500, I = 200 this took 26 ms per evaluation of 50 markets against 57 ms
    (one thread), and each Newton step's K r 0.2 ms against 6 ms.
    """
    n_markets, n_products, n_agents = agent_factor.shape
    ranks = [rank for rank in COMPRESSED_RANKS if 4 * rank <= min(n_agents, n_products)]
    if not ranks:
        return None
    sketch = _sketch(n_agents, ranks[-1] + COMPRESSION_PROBES)
    root = np.sqrt(scale)  # D^{-1/2}
    factors = np.zeros((n_markets, n_products, ranks[-1]))
    eigenvalues = np.zeros((n_markets, ranks[-1]))
    jacobian = np.zeros_like(by_theta)
    first = widest = 0
    for market in range(n_markets):
        # U = diag(e) A diag(r√w) is never formed: products with it are products with A.
        columns, rows = agent_scale[market], product_scale[market]
        agents = agent_factor[market]
        for position in range(first, len(ranks)):
            rank = ranks[position]
            sketched = agents @ (columns[:, None] * sketch[:, : rank + COMPRESSION_PROBES])
            sketched *= (root[market] * rows)[:, None]  # VΩ = D^{-1/2}UΩ
            reflectors, tau, _, _ = lapack.dgeqrf(sketched[:, :rank])
            basis = lapack.dorgqr(reflectors, tau)[0]  # Q (LAPACK directly: half of np.qr)
            probes = sketched[:, rank:]
            outside = probes - basis @ (basis.T @ probes)
            if np.linalg.norm(outside) <= COMPRESSION_TOLERANCE * np.linalg.norm(probes):
                break
            first = position + 1  # later markets start at the rank this one needed
        else:
            return None
        widest = max(widest, rank)
        basis *= root[market][:, None]  # D^{-1/2}Q, and B = QᵀV = (D^{-1/2}Q)ᵀU
        small = ((basis * rows[:, None]).T @ agents) * columns
        values, vectors = np.linalg.eigh(small @ small.T)
        values = np.maximum(values, 0.0)
        if not (values.max(initial=0.0) < 1.0 and 1.0 <= limit * (1.0 - values.max(initial=0.0))):
            return None  # C not positive definite, or too ill-conditioned
        # F = D^{1/2}QZΛ^{1/2} = D (D^{-1/2}Q) ZΛ^{1/2}.
        compressed = factors[market, :, :rank]
        np.matmul(basis, vectors * np.sqrt(values), out=compressed)
        compressed /= scale[market][:, None]
        compressed[rows == 0] = 0.0  # K is 1 in padding
        eigenvalues[market, :rank] = values
        if by_theta.shape[2]:
            # (D − FFᵀ)⁻¹b, then one refinement step against the exact D − UUᵀ.
            right_side = by_theta[market]
            solution = _compressed_solve(compressed, values, scale[market], right_side)
            residual = right_side - solution / scale[market][:, None]
            inner = (agents.T @ (solution * rows[:, None])) * columns[:, None]  # Uᵀx
            residual += (agents @ (inner * columns[:, None])) * rows[:, None]
            solution += _compressed_solve(compressed, values, scale[market], residual)
            jacobian[market] = solution
    factors, eigenvalues = np.ascontiguousarray(factors[:, :, :widest]), eigenvalues[:, :widest]
    np.negative(jacobian, out=jacobian)
    kept = 1.0 - eigenvalues
    index = np.arange(kept.shape[1])
    cholesky = np.zeros((n_markets, kept.shape[1], kept.shape[1]))
    cholesky[:, index, index] = np.sqrt(kept)
    middle = np.zeros_like(cholesky)
    middle[:, index, index] = 1.0 / kept
    if not (np.isfinite(jacobian).all() and np.isfinite(factors).all()):
        return None
    return jacobian, LowRankInverse(factors, cholesky, scale, middle)


def _compressed_solve(
    factor: np.ndarray, eigenvalues: np.ndarray, scale: np.ndarray, right_side: np.ndarray
) -> np.ndarray:
    """(D − FFᵀ)⁻¹ B = D⁻¹B + D⁻¹F (1 − Λ)⁻¹ FᵀD⁻¹B for one market (D⁻¹ = ``scale``)."""
    scaled = right_side * scale[:, None]
    inner = (factor.T @ scaled) / (1.0 - eigenvalues)[:, None]
    return scaled + (factor @ inner) * scale[:, None]


def _woodbury_batched(
    agent_factor: np.ndarray,
    agent_scale: np.ndarray,
    product_scale: np.ndarray,
    scale: np.ndarray,
    by_theta: np.ndarray,
    limit: float,
) -> tuple[np.ndarray, LowRankInverse] | None:
    """:func:`woodbury_delta_jacobian` for small markets, all at once in batched products.

    C⁻¹ is formed (I is small) and kept, so its condition number is exact and the Newton
    steps apply K without a loop over markets.
    """
    right = agent_factor * agent_scale[:, None, :]
    right *= product_scale[:, :, None]
    scaled_factor = right * np.sqrt(scale)[:, :, None]
    # VᵀV of one array: numpy takes the symmetric rank-J update (syrk).
    capacitance = -np.matmul(np.swapaxes(scaled_factor, 1, 2), scaled_factor)
    index = np.arange(capacitance.shape[1])
    capacitance[:, index, index] += 1.0
    try:  # C is positive definite exactly when ∂s/∂δ is
        cholesky = np.linalg.cholesky(capacitance)
    except np.linalg.LinAlgError:
        return None
    middle = np.linalg.inv(capacitance)
    norms = np.abs(capacitance).sum(axis=1).max(axis=1) * np.abs(middle).sum(axis=1).max(axis=1)
    if not (np.isfinite(middle).all() and np.isfinite(cholesky).all()):
        return None
    if bool((norms > limit).any()):
        return None
    jacobian = by_theta * scale[:, :, None]
    inner = np.matmul(middle, np.matmul(np.swapaxes(right, 1, 2), jacobian))
    jacobian += np.matmul(right, inner) * scale[:, :, None]
    np.negative(jacobian, out=jacobian)
    if not np.isfinite(jacobian).all():
        return None
    return jacobian, LowRankInverse(right, cholesky, scale, middle)
