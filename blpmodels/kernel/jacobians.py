"""Derivatives of the shares: ∂s/∂δ (and ∂s/∂x for any characteristic), ∂s/∂θ and ∂s/∂ρ.

Probabilities stay factored (P = A · e ⊗ r, see :mod:`blpmodels.kernel.shares`), so
∂s/∂δ = diag(s) − P W P' is one scaling pass and one batched product, and ∂s/∂θ is a handful of
products of A with ``[T, I, L]`` factor matrices, with no ``[T, J, I]`` temporaries. The
inverse of ∂s/∂δ through its low-rank structure is in :mod:`blpmodels.kernel.woodbury`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from blpmodels.kernel.shares import Nesting, Probabilities, _of_product, market_blocks

__all__ = [
    "rho_jacobian",
    "share_jacobian",
    "theta_and_delta_jacobians",
    "theta_jacobian",
]

#: Entries of P ``[J, I]`` per group of markets in the nested ∂s/∂θ and ∂s/∂ρ: their
#: ``[T, ·, I]`` agent arrays are formed and multiplied a group at a time, so they stay in
#: cache (a core's 1 MiB L2 holds about one group's P and agent arrays). Measured 2026-12-07
#: on supplemental 3's RCNL (T = 94, J = 24, I = 1,000, five nests, one BLAS thread, CPU ms
#: of ∂s/∂θ / ∂s/∂ρ): 1 market a group 14.5 / 13.1, 2: 13.8 / 12.4, 4: 13.5 / 11.6,
#: 5: 13.3 / 11.6, 8: 13.3 / 11.8, 16: 14.4 / 12.0, all 94 at once 18.2 / 23.2.
NESTED_BLOCK_ENTRIES = 131_072


#: Entries of P ``[J, I]`` per market from which the market chunks form ∂s/∂θ and ∂s/∂δ
#: together (:func:`theta_and_delta_jacobians`) rather than one after the other. Measured
#: 2026-12-07 (one BLAS thread, shared machine): exercise 2 (J·I = 24,000) one evaluation
#: about 12% less CPU; Nevo (480, in cache either way) 0.70 ms both ways, and its fit a few
#: percent slower (the x̄ pass moved out of the probabilities, more δ-solve steps by rounding).
JOINT_ENTRIES = 4096
#: Products per market from which :func:`theta_and_delta_jacobians` forms the symmetric
#: ∂s/∂δ block in two products, the first half of A's rows against all rows and the second
#: against the second half only, and copies the missing quarter from its transpose: a fifth
#: fewer flops at J = 24 (2026-12-07, one BLAS thread, exercise 2's 94 markets of
#: 24 × 1,000, the product alone: 3.0 against 3.4 ms). Few products gain less than the call.
SPLIT_WIDTH = 16


def _factored_delta_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    own_scale: np.ndarray,
    workspace: np.ndarray | None,
) -> np.ndarray:
    """∂s/∂δ = diag(s) − P W Pᵀ of the unnested logit from the factored probabilities.

    Σ_i w_i P_ji P_ki = e_j e_k Σ_i (A_ji w_i r_i²) A_ki: A scaled on one side only, a few
    markets at a time (:func:`_market_blocks`), so the scaled block is still in cache when the
    product reads it, and the product is a general one (``gemm``). The symmetric form
    (A r √w)(A r √w)ᵀ costs half the flops, but NumPy hands a product of an array with its own
    transpose to ``syrk``, which OpenBLAS ran at half the speed of ``gemm`` on these shapes;
    measured 2026-12-07 on exercise 2's (T = 94, J = 24, I = 1,000, one BLAS thread, CPU ms):
    scaling all markets then the symmetric product 7.1, scaled and multiplied by blocks
    symmetrically 6.7, one-sided by blocks 4.1–4.4 (it needs no √w either). The two triangles
    may differ by rounding (about 1e-16 relative).
    """
    agent_factor, exp_delta, ratio = probabilities.factors
    n_markets = agent_factor.shape[0]
    agent_scale = (weights * ratio * ratio)[:, None, :]
    jacobian = np.empty((n_markets, agent_factor.shape[1], agent_factor.shape[1]))
    for block in _market_blocks(n_markets, agent_factor.shape[1] * agent_factor.shape[2]):
        count = block.stop - block.start
        if workspace is not None and workspace.shape == agent_factor.shape:
            scaled = np.multiply(agent_factor[block], agent_scale[block], out=workspace[:count])
        else:
            scaled = agent_factor[block] * agent_scale[block]
        np.matmul(scaled, np.swapaxes(agent_factor[block], 1, 2), out=jacobian[block])
    jacobian *= -(exp_delta[:, :, None] * exp_delta[:, None, :])
    index = np.arange(jacobian.shape[1])
    jacobian[:, index, index] += probabilities.shares * own_scale
    return jacobian


def share_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    utility_derivative: np.ndarray | None = None,
    workspace: np.ndarray | None = None,
) -> np.ndarray:
    """Derivatives of shares with respect to each product's utility shifter.

    Entry ``[t, j, k]`` is Σ_i w_i ∂P_ji/∂V_ki · D_ki, where D_ki = ∂V_ki/∂x_k is the derivative
    of agent i's utility for product k with respect to the variable (1 for δ itself).

    Parameters
    ----------
    probabilities : Probabilities
        Probabilities at the point of evaluation.
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    nesting : Nesting
        Nest structure and ρ.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    utility_derivative : numpy.ndarray, optional
        ``[T, J, I]`` D; None for ∂s/∂δ.
    workspace : numpy.ndarray, optional
        ``[T, J, I]`` scratch buffer (avoids allocating a large temporary).

    Returns
    -------
    numpy.ndarray
        ``[T, J, J]`` Jacobian (zero rows and columns in padding).
    """
    own_scale = np.where(product_mask, 1.0 / (1.0 - nesting.rho_products), 0.0)
    if probabilities.factors is not None and utility_derivative is None and not nesting.nested:
        return _factored_delta_jacobian(probabilities, weights, own_scale, workspace)
    P = probabilities.unconditional
    if utility_derivative is None and nesting.nested:
        jacobian, within = _nested_delta_products(probabilities, weights)
        np.negative(jacobian, out=jacobian)
        diagonal = probabilities.shares
    elif utility_derivative is None:
        weighted = P * weights[:, None, :]
        diagonal = probabilities.shares
        jacobian = -np.matmul(weighted, np.swapaxes(P, 1, 2))
    else:
        weighted = P * weights[:, None, :]
        derivative = np.broadcast_to(utility_derivative, P.shape)
        diagonal = np.einsum("tji,tji->tj", weighted, derivative)
        jacobian = -np.matmul(weighted, np.swapaxes(P * derivative, 1, 2))
        within_source = (
            None if probabilities.conditional is None else probabilities.conditional * derivative
        )
    if nesting.nested:
        same_nest = (nesting.codes[:, :, None] == nesting.codes[:, None, :]) & (
            product_mask[:, :, None] & product_mask[:, None, :]
        )
        factor = (nesting.rho_products / (1.0 - nesting.rho_products))[:, :, None]
        if utility_derivative is not None:
            within = np.matmul(weighted, np.swapaxes(within_source, 1, 2))
        jacobian -= np.where(same_nest, factor * within, 0.0)
    index = np.arange(P.shape[1])
    jacobian[:, index, index] += diagonal * own_scale
    return jacobian


def _nested_delta_products(
    probabilities: Probabilities, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``[T, J, J]`` Σ_i w_i P_ji P_ki and Σ_i w_i P_ji P_(k|h)i, a few markets at a time.

    The weighted P is formed one group of markets at a time in a small work array
    (:func:`_market_blocks`): a ``[T, J, I]`` temporary of each call was fresh memory in a fit,
    whose page faults cost more than the two products (4 ms a call on supplemental 3's RCNL).
    """
    P = probabilities.unconditional
    n_markets, n_products, n_agents = P.shape
    blocks = _market_blocks(n_markets, n_products * n_agents)
    work = np.empty((blocks[0].stop if blocks else 0, n_products, n_agents))
    jacobian = np.empty((n_markets, n_products, n_products))
    within = np.empty_like(jacobian)
    for block in blocks:
        weighted = np.multiply(
            P[block], weights[block][:, None, :], out=work[: block.stop - block.start]
        )
        np.matmul(weighted, np.swapaxes(P[block], 1, 2), out=jacobian[block])
        np.matmul(weighted, np.swapaxes(probabilities.conditional[block], 1, 2), out=within[block])
    return jacobian, within


def _buffer(
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None, name: str, shape: tuple[int, ...]
) -> np.ndarray:
    """A reusable work array from ``buffers``, or a new one without."""
    return np.empty(shape) if buffers is None else buffers(name, shape)


def _characteristic_means(
    probabilities: Probabilities,
    characteristics: np.ndarray,
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None,
) -> np.ndarray:
    """``[T, K2, I]`` x̄_ik = Σ_j P_ji X2_jk from factored probabilities.

    The share evaluator's probabilities pass already reads A for the nest sums e·A; when it
    was given these characteristics it summed them in the same product (one pass over the
    ``[T, J, I]`` factor instead of two), so they are taken from there.
    """
    agent_factor, exp_delta, ratio = probabilities.factors
    if probabilities.characteristic_means is not None and (
        probabilities.characteristic_means[0] is characteristics
    ):
        return probabilities.characteristic_means[1]
    weighted_x = np.swapaxes(exp_delta[:, :, None] * characteristics, 1, 2)
    shape = (agent_factor.shape[0], characteristics.shape[2], agent_factor.shape[2])
    mean_x = np.matmul(weighted_x, agent_factor, out=_buffer(buffers, "theta_means", shape))
    mean_x *= ratio[:, None, :]
    return mean_x


def theta_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    agent_factors: list[np.ndarray],
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Derivatives of shares with respect to parameters that enter μ.

    Each parameter l acts through one random-coefficient column k: ∂μ_ji/∂θ_l = X2_jk · g_il.
    For each column k, ``agent_factors[k]`` holds g for that column's parameters. With
    x̄_ik = Σ_j P_ji X2_jk, the derivative Σ_i w_i P_ji g_il (X2_jk − x̄_ik) (plus the
    within-nest term for nested models) is computed as batched matrix products, without
    ``[T, J, I]`` temporaries.

    Parameters
    ----------
    probabilities : Probabilities
        Probabilities at the solution δ.
    weights, nesting, product_mask
        As for :func:`share_jacobian`.
    characteristics : numpy.ndarray
        ``[T, J, K2]`` random-coefficient characteristics X2 (0 in padding).
    agent_factors : list of numpy.ndarray
        For each column k, ``[T, L_k, I]`` agent factors g (agents last; L_k may be 0).
    buffers : callable, optional
        ``buffers(name, shape)`` returns a reusable uninitialized array (e.g.
        :meth:`blpmodels.kernel.chunks.Workspace.get`). The factored and nested paths then
        write their ``[T, ·, I]`` work arrays into them instead of allocating new ones: fresh
        arrays of a few MB can come back from the allocator as new pages, whose page faults
        cost more than the arithmetic (3,100 faults, about 9 ms, per exercise-2 evaluation of
        an objective evaluated without a fit first; none after a fit, whose large frees had
        raised glibc's mmap threshold).

    Returns
    -------
    list of numpy.ndarray
        For each column k, ``[T, J, L_k]`` = Σ_i w_i Σ_m ∂P_ji/∂V_mi X2_mk g_il.
    """
    sizes = [factors.shape[1] for factors in agent_factors]
    if sum(sizes) == 0:
        return [np.zeros((*product_mask.shape, 0)) for _ in agent_factors]
    columns = np.repeat(np.arange(len(agent_factors)), sizes)
    x = characteristics[:, :, columns]
    size = int(sum(sizes))
    if probabilities.factors is not None and not nesting.nested:
        # P = A · e ⊗ r: every product with P becomes a product with A and small factors.
        agent_factor, exp_delta, ratio = probabilities.factors
        n_markets, _, n_agents = agent_factor.shape
        mean_x = _characteristic_means(probabilities, characteristics, buffers)
        # Agents stay on the last (contiguous) axis: numpy is slow on tiny trailing axes.
        # stacked = [g w r ; g w r x̄_k(l)], written in place: no [T, L, I] temporaries.
        stacked = _buffer(buffers, "theta_stacked", (n_markets, 2 * size, n_agents))
        direct = stacked[:, :size]
        np.concatenate(agent_factors, axis=1, out=direct)
        direct *= weights[:, None, :]
        direct *= ratio[:, None, :]
        for row, column in enumerate(columns):
            np.multiply(direct[:, row], mean_x[:, column], out=stacked[:, size + row])
        products = np.matmul(agent_factor, np.swapaxes(stacked, 1, 2))
        products *= exp_delta[:, :, None]
        out = x * products[:, :, :size] - products[:, :, size:]
        return np.split(out, np.cumsum(sizes)[:-1], axis=2)
    # Agents stay on the last (contiguous) axis: numpy is slow on tiny trailing axes.
    factors = np.concatenate(agent_factors, axis=1) * weights[:, None, :]
    P = probabilities.unconditional
    if nesting.nested:
        return np.split(
            _nested_theta_from_sums(
                _nested_agent_sums(
                    probabilities,
                    weights,
                    nesting,
                    product_mask,
                    characteristics,
                    (factors, columns),
                    None,
                    buffers,
                ),
                nesting,
                product_mask,
                characteristics,
                columns,
            ),
            np.cumsum(sizes)[:-1],
            axis=2,
        )
    mean_x = np.matmul(np.swapaxes(characteristics, 1, 2), P)
    stacked = np.concatenate([factors, factors * mean_x[:, columns, :]], axis=1)
    products = np.matmul(P, np.swapaxes(stacked, 1, 2))
    direct, centered = products[:, :, :size], products[:, :, size:]
    out = x * direct - centered
    return np.split(out, np.cumsum(sizes)[:-1], axis=2)


def theta_and_delta_jacobians(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    agent_factors: list[np.ndarray],
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`theta_jacobian` and :func:`share_jacobian` (∂s/∂δ) together.

    With factored unnested probabilities (P = A · e ⊗ r) both are products of A with
    ``[·, I]`` agent arrays: ∂s/∂δ needs A (w r²)·Aᵀ and ∂s/∂θ A [g w r ; g w r x̄]ᵀ. One product
    of A with the stacked rows [A w r² ; g w r ; g w r x̄] gives both, a few markets at a time
    (:func:`_market_blocks`), so a group's A is read from memory once and then from the
    core's cache, and ∂s/∂θ's 2L-column product, which OpenBLAS ran at a fraction of its
    speed (it packs all of A for a few columns), becomes 2L more columns of the ``[J, J]``
    one. Without x̄ in the probabilities
    (:attr:`~blpmodels.kernel.shares.Probabilities.characteristic_means`) it is summed in
    the same loop as x̄ w r = (e X2)ᵀ (A w r²), from the scaled A just written (in cache),
    and the g rows are scaled straight into the stacked rows. Measured 2026-12-07 on
    exercise 2 (T = 94, J = 24, I = 1,000, L = 3, one BLAS thread, CPU ms, best of 10 × 20,
    load average 2.6): the probabilities at δ with x̄, then :func:`theta_jacobian` and
    :func:`share_jacobian`, 8.9; the probabilities without x̄, then this function, 7.0; then
    (same day, best of 30 × 10, alternating in one process) x̄ from the scaled A and no
    ``[T, L, I]`` work arrays 6.4 → 6.2, and the symmetric block in two halves
    (:data:`SPLIT_WIDTH`) 5.8. The results differ from those two functions' by rounding
    (A_ji (A_ki s_i) for (A_ji s_i) A_ki, other summation orders). Other models (nested,
    unfactored) get the two functions one after the other.

    Parameters
    ----------
    probabilities, weights, nesting, product_mask, characteristics, agent_factors, buffers
        As for :func:`theta_jacobian`.

    Returns
    -------
    tuple
        ``(pieces, by_delta)``: :func:`theta_jacobian`'s list and ``[T, J, J]`` ∂s/∂δ
        (a new array).
    """
    sizes = [factors.shape[1] for factors in agent_factors]
    size = int(sum(sizes))
    if probabilities.factors is None or nesting.nested or size == 0:
        pieces = theta_jacobian(
            probabilities, weights, nesting, product_mask, characteristics, agent_factors, buffers
        )
        workspace = None
        if probabilities.factors is not None:
            workspace = _buffer(buffers, "scratch", probabilities.factors[0].shape)
        by_delta = share_jacobian(probabilities, weights, nesting, product_mask, None, workspace)
        return pieces, by_delta
    agent_factor, exp_delta, ratio = probabilities.factors
    n_markets, n_products, n_agents = agent_factor.shape
    columns = np.repeat(np.arange(len(agent_factors)), sizes)
    means = probabilities.characteristic_means
    summed = means is not None and means[0] is characteristics
    if summed:
        mean_x = means[1]
    else:
        # e_j X2_jk as rows [T, K2, J]: x̄ w r = (e X2)ᵀ (A w r²), a group at a time below,
        # one product for all K2 rows. From A in memory OpenBLAS's product packed the group's
        # A first and took twice as long as one matrix-vector product per characteristic
        # (exercise 2: 1.15 against 0.56 ms); from the scaled A, in cache, it is the faster
        # (2026-12-07, one BLAS thread, 2 rows, CPU ms rows / one: 94 × 24 × 1,000 2.0 / 1.75,
        # 40 × 48 × 3,000 5.8 / 5.0, 200 × 10 × 600 0.87 / 0.68, with the scaling pass).
        weighted_x = np.ascontiguousarray(
            np.swapaxes(exp_delta[:, :, None] * characteristics, 1, 2)
        )
    # w r and A's scale w r² [T, I]; g w r is written straight into each group's rows.
    agent_weight = weights * ratio
    agent_scale = agent_weight * ratio
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    width = n_products + 2 * size
    blocks = _market_blocks(n_markets, n_products * n_agents)
    most = blocks[0].stop if blocks else 0
    half = n_products // 2 if n_products >= SPLIT_WIDTH else 0
    work = _buffer(buffers, "theta_delta_rows", (most, width, n_agents))
    products = _buffer(buffers, "theta_delta_products", (n_markets, n_products, width))
    if not summed:
        means_work = _buffer(buffers, "theta_means", (most, characteristics.shape[2], n_agents))
    for block in blocks:
        count = block.stop - block.start
        factor = agent_factor[block]
        rows = work[:count]
        scaled = np.multiply(factor, agent_scale[block, None, :], out=rows[:, :n_products])
        if not summed:
            # x̄ w r = (e X2)ᵀ (A w r²): summed from the scaled A just written (in cache).
            block_means = np.matmul(weighted_x[block], scaled, out=means_work[:count])
        for column, factors in enumerate(agent_factors):
            if not factors.shape[1]:
                continue
            low, high = n_products + offsets[column], n_products + offsets[column + 1]
            direct = np.multiply(
                factors[block], agent_weight[block, None, :], out=rows[:, low:high]
            )
            centered = rows[:, low + size : high + size]
            if summed:
                np.multiply(direct, mean_x[block, column, None, :], out=centered)
            else:
                np.multiply(factors[block], block_means[:, column, None, :], out=centered)
        if half:
            np.matmul(factor[:, :half], np.swapaxes(rows, 1, 2), out=products[block, :half])
            np.matmul(
                factor[:, half:],
                np.swapaxes(rows[:, half:], 1, 2),
                out=products[block, half:, half:],
            )
        else:
            np.matmul(factor, np.swapaxes(rows, 1, 2), out=products[block])
    if half:
        # The lower left quarter of the symmetric A (w r²) Aᵀ from its upper right one.
        products[:, half:, :half] = np.swapaxes(products[:, :half, half:n_products], 1, 2)
    by_delta = products[:, :, :n_products] * -(exp_delta[:, :, None] * exp_delta[:, None, :])
    index = np.arange(n_products)
    by_delta[:, index, index] += np.where(product_mask, probabilities.shares, 0.0)
    by_theta = products[:, :, n_products:]
    by_theta *= exp_delta[:, :, None]
    out = characteristics[:, :, columns] * by_theta[:, :, :size] - by_theta[:, :, size:]
    return np.split(out, np.cumsum(sizes)[:-1], axis=2), by_delta


def _market_blocks(n_markets: int, per_market: int) -> list[slice]:
    """Consecutive groups of markets with about :data:`NESTED_BLOCK_ENTRIES` entries of P each."""
    return market_blocks(n_markets, per_market, NESTED_BLOCK_ENTRIES)


def _nest_masked(membership: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[T, H·R, J]`` rows ``[T, R, J]`` once per nest, zero outside it: its product with
    P_(j|h) gives every within-nest mean Σ_(k∈h) P_(k|h)i row_k at once."""
    n_markets, n_nests, n_products = membership.shape
    masked = membership[:, :, None, :] * rows[:, None, :, :]
    return masked.reshape(n_markets, n_nests * rows.shape[1], n_products)


def _own_nest(blocks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``[T, J, ...]`` block ``h(j)`` of ``[T, J, H, ...]`` per-nest values of each product."""
    n_markets, n_products = codes.shape
    return blocks[np.arange(n_markets)[:, None], np.arange(n_products)[None, :], codes]


def _nested_agent_sums(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    theta_part: tuple[np.ndarray, np.ndarray] | None,
    rho_part: tuple[np.ndarray, np.ndarray] | None,
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None = None,
) -> np.ndarray:
    """The sums over agents of the nested ∂s/∂θ and ∂s/∂ρ: ``[T, J, (1 + H)·L + K2 + 2H]``
    (the ∂s/∂θ columns when ``theta_part`` is given, then the ∂s/∂ρ ones when ``rho_part`` is;
    given both, the two share the products below).

    ``theta_part`` is (g w ``[T, L, I]``, the X2 column of each l, nondecreasing) and
    ``rho_part`` (δ ``[T, J]``, agent coefficients c ``[T, I, K2]``). One product of
    P_(j|h) with the nest-masked rows [δ | X2] gives the within-nest means Ū_hi = δ̃_hi +
    Σ_c x̃_hic c_ic and x̃_hic = Σ_(k∈h) P_(k|h)i X2_kc; one product of P with the agent array

        [g w ; g w z_1 ; … ; g w z_H | w c ; w v_1 ; … ; w v_H ; w P_1 gap_1 ; … ; w P_H gap_H]

    every sum over agents, with z_hic = x̄_ic + ρ_h/(1 − ρ_h) x̃_hic (x̄_ic = Σ_h P_hi x̃_hic),
    gap_hi = (Ū_hi − IV_hi)/(1 − ρ_h) and v_hi = gap_hi − Ū_hi/(1 − ρ_h)². The markets are taken
    a few at a time (:func:`_market_blocks`), so the agent arrays are written and read back in
    cache: formed over all markets at once they cost more memory traffic than the products'
    arithmetic. A product needs only its own nest's columns of the per-nest blocks; the
    others are the price of one batched product (H-fold in those blocks).
    """
    P = probabilities.unconditional
    n_markets, n_products, n_agents = P.shape
    n_nests, n_characteristics = nesting.n_nests, characteristics.shape[2]
    rows = np.swapaxes(characteristics, 1, 2)
    if rho_part is not None:
        delta, coefficients = rho_part
        mean_delta = np.where(product_mask, delta, 0.0)
        rows = np.concatenate([mean_delta[:, None, :], rows], axis=1)
        agent_coefficients = np.swapaxes(coefficients, 1, 2)  # [T, K2, I]
        scale = (1.0 - nesting.rho)[None, :, None]
    first = rows.shape[1] - n_characteristics  # 1 with the δ row
    left = _nest_masked(nesting.membership(product_mask), rows)
    theta_width = 0
    if theta_part is not None:
        factors, columns = theta_part
        size = factors.shape[1]
        theta_width = (1 + n_nests) * size
        ratio = (nesting.rho / (1.0 - nesting.rho))[None, :, None, None]
        bounds = np.searchsorted(columns, np.arange(n_characteristics + 1))
    width = theta_width + (0 if rho_part is None else n_characteristics + 2 * n_nests)
    blocks = _market_blocks(n_markets, n_products * n_agents)
    most = blocks[0].stop if blocks else 0  # work arrays for the largest block (sliced)
    work_sums = _buffer(buffers, "nested_sums", (most, left.shape[1], n_agents))
    work_mean = _buffer(buffers, "nested_mean", (most, n_characteristics, n_agents))
    work_right = _buffer(buffers, "nested_right", (most, width, n_agents))
    if rho_part is not None:
        work_utility = np.empty((most, n_nests, n_agents))
        work_term = np.empty_like(work_utility)
    products = np.empty((n_markets, n_products, width))
    for block in blocks:
        count = block.stop - block.start
        sums = np.matmul(
            left[block], probabilities.conditional[block], out=work_sums[:count]
        ).reshape(count, n_nests, rows.shape[1], n_agents)
        within = sums[:, :, first:]
        right = work_right[:count]
        if rho_part is not None:
            # Ū = δ̃ + Σ_c x̃_c c_c by columns (einsum took three times as long on these views).
            mean_utility = work_utility[:count]
            np.copyto(mean_utility, sums[:, :, 0])
            block_coefficients = agent_coefficients[block]
            for column in range(n_characteristics):
                mean_utility += np.multiply(
                    within[:, :, column], block_coefficients[:, None, column], out=work_term[:count]
                )
            inclusive = probabilities.inclusive[block]
            with np.errstate(invalid="ignore"):
                gap = np.where(np.isfinite(inclusive), (mean_utility - inclusive) / scale, 0.0)
            part = right[:, theta_width:]
            part[:, :n_characteristics] = agent_coefficients[block]
            own = part[:, n_characteristics : n_characteristics + n_nests]
            np.divide(mean_utility, scale**2, out=own)
            np.subtract(gap, own, out=own)
            np.multiply(probabilities.nest[block], gap, out=part[:, n_characteristics + n_nests :])
            part *= weights[block][:, None, :]
        if theta_part is not None:
            mean = np.einsum(
                "thi,thci->tci", probabilities.nest[block], within, out=work_mean[:count]
            )
            within *= ratio  # z_h = x̄ + ρ_h/(1 − ρ_h) x̃_h, in place (Ū is formed already)
            within += mean[:, None]
            # Splitting one axis of a slice is always a view: the writes land in ``right``.
            part = right[:, :theta_width].reshape(count, 1 + n_nests, size, n_agents)
            block_factors = factors[block]
            part[:, 0] = block_factors
            for column in range(n_characteristics):
                low, high = bounds[column], bounds[column + 1]
                if high > low:
                    np.multiply(
                        block_factors[:, None, low:high],
                        within[:, :, column, None, :],
                        out=part[:, 1:, low:high],
                    )
        np.matmul(P[block], np.swapaxes(right, 1, 2), out=products[block])
    return products


def _nested_theta_from_sums(
    sums: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    columns: np.ndarray,
) -> np.ndarray:
    """``[T, J, L]`` ∂s/∂θ of a nested model from the ∂s/∂θ columns of
    :func:`_nested_agent_sums`: Σ_i w_i P_ji g_il (X2_jc/(1 − ρ_j) − z_h(j)ic)."""
    n_markets, n_products = product_mask.shape
    by_nest = sums.reshape(n_markets, n_products, nesting.n_nests + 1, columns.size)
    scale = np.where(product_mask, 1.0 - nesting.rho_products, 1.0)[:, :, None]
    x = characteristics[:, :, columns]
    return x / scale * by_nest[:, :, 0] - _own_nest(by_nest[:, :, 1:], nesting.codes)


def _nested_rho_from_sums(
    sums: np.ndarray,
    delta: np.ndarray,
    probabilities: Probabilities,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
) -> np.ndarray:
    """``[T, J, H]`` ∂s/∂ρ from the ∂s/∂ρ columns of :func:`_nested_agent_sums`.

    ∂s_j/∂ρ_h = [h = h(j)] Σ_i w_i P_ji own_ij − Σ_i w_i P_ji P_hi gap_hi, and
    Σ_i w_i P_ji own_ij = Σ_i w_i P_ji U_ji/(1 − ρ_j)² + Σ_i w_i P_ji v_h(j)i with
    Σ_i w_i P_ji U_ji = δ_j s_j + Σ_c X2_jc Σ_i w_i P_ji c_ic.
    """
    n_nests, n_characteristics = nesting.n_nests, characteristics.shape[2]
    by_characteristic = sums[:, :, :n_characteristics]
    by_own = sums[:, :, n_characteristics : n_characteristics + n_nests]
    by_nest_gap = sums[:, :, n_characteristics + n_nests :]
    mean_delta = np.where(product_mask, delta, 0.0)
    own_utility = mean_delta * probabilities.shares + (characteristics * by_characteristic).sum(2)
    scale_of_product = 1.0 - nesting.rho_products
    own = own_utility / scale_of_product**2 + _own_nest(by_own, nesting.codes)
    own_indicator = nesting.codes[:, :, None] == np.arange(n_nests)[None, None, :]
    jacobian = own_indicator * own[:, :, None] - by_nest_gap
    return np.where(product_mask[:, :, None], jacobian, 0.0)


def rho_jacobian(
    probabilities: Probabilities,
    delta: np.ndarray,
    mu: np.ndarray | None,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    *,
    characteristics: np.ndarray | None = None,
    coefficients: np.ndarray | None = None,
) -> np.ndarray:
    """Derivatives of shares with respect to each nest's ρ, holding δ fixed.

    ∂log s_ij/∂ρ_h = [h = h(j)] own_ij − s_hi gap_hi with own_ij = (U_ij − Ū_h(j)i)/(1 − ρ_j)²
    + gap_h(j)i, U = δ + μ, Ū_hi = Σ_(k∈h) P_(k|h)i U_ki and gap_hi = (Ū_hi − IV_hi)/(1 − ρ_h).

    Parameters
    ----------
    probabilities : Probabilities
        Probabilities at ``delta`` (``unconditional`` and ``conditional``).
    delta : numpy.ndarray
        ``[T, J]`` mean utilities.
    mu : numpy.ndarray or None
        ``[T, J, I]`` agent utilities; None with ``characteristics`` X2 ``[T, J, K2]`` and
        agent ``coefficients`` ``[T, I, K2]`` (μ = X2 c'), which never forms μ: every sum over
        agents is then a product of P or P_(j|h) with ``[T, I, ·]`` agent arrays.
    weights, nesting, product_mask
        As for :func:`share_jacobian`.

    Returns
    -------
    numpy.ndarray
        ``[T, J, H]``: column h is ∂s/∂ρ_h.
    """
    if mu is None:
        return _factored_rho_jacobian(
            probabilities, delta, weights, nesting, product_mask, characteristics, coefficients
        )
    P = probabilities.unconditional
    conditional = probabilities.conditional
    utilities = np.where(product_mask[:, :, None], delta[:, :, None] + mu, 0.0)
    membership = nesting.membership(product_mask)
    mean_utility = np.einsum("thj,tji->thi", membership, conditional * utilities)
    inclusive = probabilities.inclusive
    scale = 1.0 - nesting.rho
    with np.errstate(invalid="ignore"):
        gap = np.where(
            np.isfinite(inclusive), (mean_utility - inclusive) / scale[None, :, None], 0.0
        )
    mean_of_product = _of_product(mean_utility, nesting.codes)
    gap_of_product = _of_product(gap, nesting.codes)
    scale_of_product = (1.0 - nesting.rho_products)[:, :, None]
    own = (utilities - mean_of_product) / scale_of_product**2 + gap_of_product
    own_indicator = nesting.codes[:, :, None] == np.arange(nesting.n_nests)[None, None, :]
    # ∂log s_ij/∂ρ_h = [h = h(j)] own_ij − s_hi gap_hi: the first term lands only in column
    # h(j) and the second is one batched product, so no [T, J, H, I] array is formed.
    weighted = P * weights[:, None, :]
    jacobian = own_indicator * (weighted * own).sum(axis=2)[:, :, None]
    jacobian -= np.matmul(weighted, np.swapaxes(probabilities.nest * gap, 1, 2))
    return np.where(product_mask[:, :, None], jacobian, 0.0)


def _factored_rho_jacobian(
    probabilities: Probabilities,
    delta: np.ndarray,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    coefficients: np.ndarray,
) -> np.ndarray:
    """:func:`rho_jacobian` from X2 and the agent coefficients (U_ji = δ_j + Σ_c X2_jc c_ic):
    the ∂s/∂ρ columns of :func:`_nested_agent_sums`, two passes over ``[T, J, I]`` arrays."""
    sums = _nested_agent_sums(
        probabilities,
        weights,
        nesting,
        product_mask,
        characteristics,
        None,
        (delta, coefficients),
    )
    return _nested_rho_from_sums(sums, delta, probabilities, nesting, product_mask, characteristics)
