"""Markups and their derivatives in θ, for the supply moment block (all markets at once).

With A = ∂s/∂p (entry [t, j, k] = ∂s_j/∂p_k) and Ω the ownership matrix, Bertrand–Nash
first-order conditions s + (Ω ⊙ A')η = 0 give the markups η = −B⁻¹s, B = Ω ⊙ A'. Along the
estimation path the shares are the observed ones (δ(θ) solves s(δ, θ) = s_obs), so

    ∂η/∂θ_l = −B⁻¹ (Ω ⊙ dA'_l) η,

where dA_l is the total derivative of ∂s/∂p in direction l: through δ (∂δ/∂θ_l, from the
implicit function theorem), through the agent utilities μ and through the agents' price
derivatives D_ki = ∂V_ki/∂p_k. For the logit kernel (no nests) it is computed exactly:
with P_ki agent probabilities, dV the utility change and dP_ki = P_ki(dV_ki − Σ_m P_mi dV_mi),

    [(Ω ⊙ dA')η]_k = Σ_i w_i [ (dD_ki P_ki + D_ki dP_ki)(Ω_kk η_k − a_ki) − D_ki P_ki b_ki ],

a = (Ω ⊙ 1η')P and b = (Ω ⊙ 1η')dP per agent. Each parameter moves utilities and price
derivatives in a product-times-agent pattern (dV_ki = dδ_k + u_k f_i, dD_ki = v_k f_i + e_k), so
the agent sums collapse into matrix–vector products with arrays shared by all parameters; what
is left are the ownership sums Ω(η∘dδ_l∘P) and Ω(η∘u_c∘P). With Ω = HH' by firm
(:func:`firm_indicator`) they are firm sums H'X, all taken in one sparse product (each product
adds its numbers to its own firm's sums once, whatever the number of firms), and no
``[T, J, I]`` array is formed per parameter. On the shapes of pyblp's BLP automobile problem
with supply (20 markets × 150 products × 200 agents, 6 parameters, 22 firms) ∂η/∂θ took 65 ms
of CPU (one thread) with one ``[T, J, I]`` utility change per parameter, 23 ms with dense firm
sums (idle machine), and 26–29 ms against their 35–37 ms with the sparse ones on a loaded one
(docs/performance.md). When B is symmetric (D_ki = d_i for all products of a market, Ω by
firm) and factored by market in blocks of whole firms, the term Ω(η∘dδ_l∘P) folds into B
itself and the rest runs market by market on products sorted by firm
(``_symmetric_jacobian``): 7.2 ms against 22.4 ms on inputs captured from that fit (one
thread, loaded machine, 2026-12-07). Nested models take the same total derivative by central
differences along the exact direction (:func:`directional_markup_derivative`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse

__all__ = [
    "directional_markup_derivative",
    "firm_indicator",
    "firm_sums_pay",
    "markup_jacobian",
    "markup_system",
    "markups",
    "owner_apply",
]


def markup_system(
    price_jacobian: np.ndarray, ownership: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """``[T, J, J]`` B = Ω ⊙ (∂s/∂p)' with the identity in padding (so it is invertible).

    Examples
    --------
    >>> A = np.array([[[-1.0, 0.2], [0.3, -2.0]]]); omega = np.ones((1, 2, 2))
    >>> markup_system(A, omega, np.ones((1, 2), bool))[0].tolist()
    [[-1.0, 0.3], [0.2, -2.0]]
    """
    system = ownership * np.swapaxes(price_jacobian, 1, 2)
    index = np.arange(mask.shape[1])
    system[:, index, index] += ~mask
    return system


def markups(
    price_jacobian: np.ndarray, shares: np.ndarray, ownership: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bertrand–Nash markups η = −B⁻¹s for all markets at once, and B.

    Parameters
    ----------
    price_jacobian : numpy.ndarray
        ``[T, J, J]`` ∂s_j/∂p_k (row j, column k).
    shares : numpy.ndarray
        ``[T, J]`` shares (0 in padding).
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω: 1 where two products have the same owner (or profit weights).
    mask : numpy.ndarray
        ``[T, J]`` real products.

    Returns
    -------
    tuple of numpy.ndarray
        ``(η [T, J], B [T, J, J])``; η is 0 in padding.

    Examples
    --------
    Single-product logit firms: η_j = −1/(α(1 − s_j)).

    >>> alpha, s = -2.0, np.array([[0.2, 0.3]])
    >>> A = alpha * (np.diag(s[0]) - np.outer(s[0], s[0]))[None]
    >>> eta, _ = markups(A, s, np.eye(2)[None], np.ones((1, 2), bool))
    >>> np.allclose(eta, -1 / (alpha * (1 - s)))
    True
    """
    system = markup_system(price_jacobian, ownership, mask)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        eta = -np.linalg.solve(system, np.where(mask, shares, 0.0)[:, :, None])[:, :, 0]
    return np.where(mask, eta, 0.0), system


def owner_apply(ownership: np.ndarray, firms: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """Ω @ values for ``[T, J, X]`` values; with the firm indicator H (Ω = HH') as H(H'values).

    Examples
    --------
    >>> firms = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    >>> omega = firms @ np.swapaxes(firms, 1, 2)
    >>> values = np.arange(6.0).reshape(1, 3, 2)
    >>> np.array_equal(owner_apply(omega, firms, values), omega @ values)
    True
    """
    if firms is None:
        return np.matmul(ownership, values)
    return np.matmul(firms, np.matmul(np.swapaxes(firms, 1, 2), values))


def firm_indicator(ownership: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """``[T, J, F]`` 0/1 firm indicator H with HH' = Ω, or None if Ω is not 0/1 by firm.

    With H, Ω @ Y costs 2·F·J·I instead of J²·I (F firms per market): the markup Jacobian's
    ownership products become cheap.

    Examples
    --------
    >>> omega = np.array([[[1.0, 0, 1], [0, 1, 0], [1, 0, 1]]])
    >>> firm_indicator(omega, np.ones((1, 3), bool))[0].tolist()
    [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    """
    width = mask.shape[1]
    if width == 0:
        return None
    first = np.argmax(ownership > 0, axis=2)  # the first product each product shares an owner with
    leader = (first[:, :, None] == np.arange(width)) & mask[:, :, None]  # [T, J, J]
    used = leader.any(axis=1)  # [T, J]: products that lead a firm
    n_firms = max(int(used.sum(axis=1).max()), 1)
    order = np.argsort(~used, axis=1, kind="stable")[:, :n_firms]
    firms = np.take_along_axis(leader, order[:, None, :], axis=2).astype(np.float64)
    if not np.array_equal(np.matmul(firms, np.swapaxes(firms, 1, 2)), ownership):
        return None
    return firms


def markup_jacobian(
    probabilities: np.ndarray | None,
    weights: np.ndarray,
    price_derivative: np.ndarray | None,
    eta: np.ndarray,
    ownership: np.ndarray,
    system: Any,
    delta_change: np.ndarray,
    utility_columns: np.ndarray,
    derivative_columns: np.ndarray,
    agent_factors: np.ndarray,
    derivative_shift: np.ndarray,
    column_of: np.ndarray,
    firms: np.ndarray | None = None,
) -> np.ndarray:
    """``[T, J, L]`` ∂η/∂θ for the logit kernel (no nests), exactly.

    Each parameter l moves agent utilities and price derivatives by

        dV_ki = dδ_kl + u_k f_il,    dD_ki = v_k f_il + e_kl,

    with u, v the characteristic column c(l) it multiplies (and its price derivative) and f the
    agent factor (a node or a demographic); coefficients of X1 columns that read prices have
    dδ = u = v = 0 and e = ∂X1/∂p. Every sum over agents then collapses into matrix–vector
    products with arrays shared by all parameters; only Ω(η∘u_c∘P), one per column, is a
    ``[T, J, I]`` product per column.

    Parameters
    ----------
    probabilities : numpy.ndarray or None
        ``[T, J, I]`` agent choice probabilities P (0 in padding); None on the symmetric path
        when ``system`` holds the factored probabilities (it then forms P market by market).
    weights : numpy.ndarray
        ``[T, I]`` agent weights.
    price_derivative : numpy.ndarray or None
        ``[T, J, I]`` D_ji = ∂V_ji/∂p_j; None on the symmetric path, which reads the agents'
        slopes d_i off ``system`` instead.
    eta : numpy.ndarray
        ``[T, J]`` markups.
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω.
    system : numpy.ndarray or CholeskyMarkupSystem
        ``[T, J, J]`` B from :func:`markups`, or B factored by market
        (:func:`blpmodels.kernel.symmetric_jacobians.cholesky_markups`); with its ``slopes``
        and ``firms`` the symmetric path is taken (no [T, J, I] arrays).
    delta_change : numpy.ndarray
        ``[T, J, L]`` dδ: ∂δ/∂θ.
    utility_columns, derivative_columns : numpy.ndarray
        ``[T, J, C]`` the characteristic columns u_c and their price derivatives v_c.
    agent_factors : numpy.ndarray
        ``[T, I, L]`` f.
    derivative_shift : numpy.ndarray
        ``[T, J, L]`` e.
    column_of : numpy.ndarray
        ``(L,)`` c(l), −1 where the parameter multiplies no characteristic column.
    firms : numpy.ndarray, optional
        ``[T, J, F]`` firm indicator with HH' = Ω (:func:`firm_indicator`), for speed; used
        when :func:`firm_sums_pay` says it is cheaper than the dense products with Ω.

    Returns
    -------
    numpy.ndarray
        ``[T, J, L]``.
    """
    P, D = probabilities, price_derivative
    column_of = np.asarray(column_of)
    has_column = column_of >= 0
    u = np.zeros(delta_change.shape)  # [T, J, L]: u_c(l), v_c(l)
    v = np.zeros(delta_change.shape)
    u[:, :, has_column] = utility_columns[:, :, column_of[has_column]]
    v[:, :, has_column] = derivative_columns[:, :, column_of[has_column]]
    f = agent_factors
    n_params = f.shape[2]
    columns = np.unique(column_of[has_column])
    slopes = getattr(system, "slopes", None)
    if firms is not None and slopes is not None and not isinstance(system, np.ndarray):
        # B symmetric and factored by firm blocks (D_ki = d_i, Ω = HH'): _symmetric_jacobian.
        return _symmetric_jacobian(
            P, weights, slopes, eta, system, delta_change, u, v, f, derivative_shift,
            utility_columns, column_of,
        )  # fmt: skip
    if firms is not None and not firm_sums_pay(firms.shape[2], P.shape[1], n_params, columns.size):
        firms = None
    if firms is None:
        a = owner_apply(ownership, None, eta[:, :, None] * P)
    else:
        # Firm sums Σ_{m∈F} x_m P_mi of every needed x at once: η (for a), η∘dδ_l, η∘u_c.
        scales = np.concatenate(
            [eta[:, :, None], eta[:, :, None] * delta_change, utility_columns[:, :, columns]],
            axis=2,
        )
        scales[:, :, 1 + n_params :] *= eta[:, :, None]
        rows = _firm_rows(firms)
        firm_sums = _firm_sums(rows, firms.shape[2], scales, P)
        a = firm_sums[rows, 0].reshape(P.shape)  # [Ω(η∘P)]_ki: the sum of k's firm
    gap = (np.diagonal(ownership, axis1=1, axis2=2) * eta)[:, :, None] - a
    wP = P * weights[:, None, :]
    Q = D * wP  # w D P
    # In place where an array is not needed again: fresh [T, J, I] arrays cost page faults.
    R = np.multiply(gap, wP, out=gap)  # w P gap
    S = np.multiply(D, R, out=wP)  # w D P gap
    Pt = np.swapaxes(P, 1, 2)
    m = np.matmul(Pt, delta_change) + f * np.matmul(Pt, u)  # [T, I, L] mean utility change
    # Agent sums of R and S against f, m and 1 in two products instead of five passes.
    ones = np.ones((*f.shape[:2], 1))
    R_sums = np.matmul(R, np.concatenate([f, ones], axis=2))
    S_sums = np.matmul(S, np.concatenate([f, m, ones], axis=2))
    Rf, Sf, Sm = R_sums[:, :, :n_params], S_sums[:, :, :n_params], S_sums[:, :, n_params:-1]
    out = v * Rf + derivative_shift * R_sums[:, :, n_params:]
    out += delta_change * S_sums[:, :, -1:] + u * Sf - Sm
    # − Σ_i Q_ki b_ki, b = Ω(η∘P∘dV) − a∘m with Ω(η∘P∘dV_l) = Ω(η∘dδ_l∘P) + f_l Ω(η∘u_c∘P)
    out += np.matmul(np.multiply(Q, a, out=a), m)
    if firms is not None:
        out -= _firm_terms(Q, f, rows, firm_sums, column_of, columns)
        return -_solve_system(system, out)
    product = np.matmul(Q, Pt)  # [T, J, J] (QP')_km
    product *= ownership
    out -= np.matmul(product, eta[:, :, None] * delta_change)
    for column in columns:
        places = np.flatnonzero(column_of == column)
        moved = owner_apply(ownership, None, (eta * utility_columns[:, :, column])[:, :, None] * P)
        moved *= Q
        out[:, :, places] -= np.matmul(moved, f[:, :, places])
    return -_solve_system(system, out)


def _symmetric_jacobian(
    P: np.ndarray | None,
    weights: np.ndarray,
    slopes: np.ndarray,
    eta: np.ndarray,
    system: Any,
    delta_change: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    f: np.ndarray,
    shift: np.ndarray,
    utility_columns: np.ndarray,
    column_of: np.ndarray,
) -> np.ndarray:
    """``[T, J, L]`` ∂η/∂θ of :func:`markup_jacobian` when D_ki = d_i for every product of a
    market and Ω = HH' by firm, so that B = Ω ⊙ A is symmetric and ``system`` holds, per
    market, the products sorted by firm and the Cholesky factors of −B's blocks of whole
    firms (:class:`~blpmodels.kernel.symmetric_jacobians.CholeskyMarkupSystem`, whose
    ``slopes`` are the d_i).

    With c_i = w_i d_i, A = diag(Pc) − P diag(c) Pᵀ, so the ownership term of the general path,
    [Ω ⊙ (P diag(c) Pᵀ)](η∘dδ_l) = (diag(Pc) − B)(η∘dδ_l), needs no firm sums: after −B⁻¹ its
    B(η∘dδ_l) part is −η∘dδ_l exactly. Every other agent sum is P Y or (P∘a) Y for a few
    ``[I, K]`` Y (K = 3L + 2: w f, w, c, c f, c m) or Σ_i P_ki c_i f_il [Ω(η∘u_c∘P)]_ki. With
    a market's products sorted by firm (as ``system`` holds them), its firm sums
    Z_F = (η, η∘u_c)_Fᵀ P_F are one small product per firm; (P∘a)Y takes each product's row of
    P times its firm's η-sum in one product with Y, and the u_c terms each firm's P_F against
    its own (Z_F ⊙ c f)ᵀ. The market's arrays stay in cache. Per market of n products that is
    (4L + 4K + 2(1 + C) + 2L' + 1)·n·I flops (C columns, L' parameters with a column) and at
    most 2n²L for the solve: 61 MFLOP on pyblp's automobile problem (2,217 products,
    I = 200, L = L' = C = 6), 1.4 ms at 45 GFLOP/s, and it reads P once (3.5 MB). It took
    7.2 ms there against the batched path's 22.4 ms, which streams a dozen ``[T, J, I]``
    arrays (best of 6 × 20 calls, one thread, load average 8 on 2 cores, 2026-12-07): what is
    left is ~1,500 small numpy and BLAS calls per evaluation. Stacking every market's firms
    by size instead (one gather of P into firm blocks, stacked products, no loop) was no
    faster there (7.8 against 7.9 ms, load 5): the gathers and scatters of ``[T, J, I]``
    arrays cost what the calls saved.
    """
    n_agents = weights.shape[1]
    n_params = f.shape[2]
    params = np.flatnonzero(column_of >= 0)
    columns = np.unique(column_of[params])
    moved_rows = 1 + np.searchsorted(columns, column_of[params])  # rows of η∘u_c(l) in Z
    n_y = 3 * n_params + 2
    first_dm = 2 * n_params + 2  # the c m columns of Y
    markets = system.markets
    n_groups = max([len(entry.firm_starts) for entry in markets if entry is not None] or [1])
    sums = np.empty((n_groups, 1 + columns.size, n_agents))
    right_buffer = np.empty((n_groups, params.size, n_agents))  # (Z_F ⊙ c f)ᵀ of each firm
    y = np.empty((n_y, n_agents))  # Yᵀ
    # The rows of η∘u_c(l) in Z as a slice when they are consecutive (no copy of Z).
    consecutive = moved_rows.size and np.array_equal(
        moved_rows, np.arange(moved_rows[0], moved_rows[0] + moved_rows.size)
    )
    moved_in_z = slice(int(moved_rows[0]), int(moved_rows[-1]) + 1) if consecutive else moved_rows
    out = np.zeros(delta_change.shape)
    for market, entry in enumerate(markets):
        if entry is None:
            continue  # a market of padding only
        places, size = entry.places, entry.places.size  # the real products, firm by firm
        starts = list(entry.firm_starts)
        runs = list(zip(starts, [*starts[1:], size], strict=True))
        # [n, I], firm by firm: from the factors when P was not formed (a market's rows in
        # cache instead of a [T, J, I] pass for P and a gather from it).
        probabilities = (
            P[market, places] if P is not None else system.probability_rows(market, places)
        )
        markup, change = eta[market, places], delta_change[market, places]
        column = u[market, places]
        w, c, factors = weights[market], weights[market] * slopes[market], f[market].T  # [L, I]
        mean = np.matmul(np.concatenate([change, column], axis=1).T, probabilities)  # [2L, I]
        np.multiply(factors, w, out=y[:n_params])
        y[n_params], y[n_params + 1] = w, c
        np.multiply(factors, c, out=y[n_params + 2 : first_dm])
        m = np.multiply(factors, mean[n_params:], out=y[first_dm:])  # m = Pᵀdδ + f∘Pᵀu
        m += mean[:n_params]
        m *= c
        plain = np.matmul(probabilities, y.T)  # [n, K]: P Y
        moved = markup * utility_columns[market, places][:, columns].T  # η∘u_c, [C, n]
        scales = np.concatenate([markup[None], moved])
        for group, (start, stop) in enumerate(runs):
            np.matmul(scales[:, start:stop], probabilities[start:stop], out=sums[group])
        groups = len(runs)
        # (P∘a) Y with a = Ω(η∘P): each product's row of P times its firm's η-sum, one product.
        by_a = np.repeat(sums[:groups, 0], [stop - start for start, stop in runs], axis=0)
        by_a = np.matmul(np.multiply(by_a, probabilities, out=by_a), y.T)  # [n, K]
        # Σ_i P_ki c_i f_il [Ω(η∘u_c(l)∘P)]_ki: each firm's P against its own (Z_F ⊙ c f)ᵀ.
        right = right_buffer[:groups]
        np.multiply(sums[:groups, moved_in_z], factors[params] * c, out=right)
        owned = np.empty((size, params.size))
        for group, (start, stop) in enumerate(runs):
            np.matmul(probabilities[start:stop], right[group].T, out=owned[start:stop])
        gap = markup[:, None] * plain - by_a  # R Y/w: Σ_i w_i P_ki (η_k − a_ki) Y_i
        terms = v[market, places] * gap[:, :n_params]
        terms += shift[market, places] * gap[:, n_params : n_params + 1]
        terms += change * (gap[:, n_params + 1] - plain[:, n_params + 1] * markup)[:, None]
        terms += column * gap[:, n_params + 2 : first_dm]
        terms -= gap[:, first_dm:]
        terms += by_a[:, first_dm:]
        terms[:, params] -= owned
        solution = entry.minus_solve(terms)  # −B⁻¹ x = (−B)⁻¹ x, block by block
        solution -= markup[:, None] * change
        out[market, places] = solution
    return out


def _solve_system(system: Any, values: np.ndarray) -> np.ndarray:
    """B⁻¹ values for the batched ``[T, J, J]`` B, or through ``system.solve`` for a factored B
    (:class:`blpmodels.kernel.symmetric_jacobians.CholeskyMarkupSystem`)."""
    if isinstance(system, np.ndarray):
        return np.linalg.solve(system, values)
    return system.solve(values)


def firm_sums_pay(n_firms: int, width: int, n_params: int, n_columns: int) -> bool:
    """Whether the firm-sum path of :func:`markup_jacobian` costs less than the dense one.

    Per market and agent, the firm path touches (3 + 2L + C)·J numbers whatever the number of
    firms F (sparse firm sums of η, η∘dδ_l and η∘u_c, each product's firm sum of a and of
    the L parameter terms, and their products with Q); the dense path J²·(2 + C) (Ω(η∘P),
    Ω ⊙ QP' and one Ω product per column). Only markets of one or two products are cheaper
    dense. ``n_firms`` is kept for the signature: the firm path no longer depends on it.

    Examples
    --------
    >>> firm_sums_pay(22, 150, 6, 6), firm_sums_pay(150, 150, 6, 6), firm_sums_pay(1, 1, 6, 6)
    (True, True, False)
    """
    del n_firms  # the sparse firm sums cost the same for any number of firms
    return (3 + 2 * n_params + n_columns) * width < width * width * (2 + n_columns)


def _firm_rows(firms: np.ndarray) -> np.ndarray:
    """``(T·J,)`` each product's firm as a row of the ``T·F + 1`` firm sums: t·F + its firm,
    and the last row (a sum that stays zero) for padding, which belongs to no firm."""
    n_markets, _, n_firms = firms.shape
    own = np.argmax(firms, axis=2) + n_firms * np.arange(n_markets)[:, None]
    return np.where(firms.any(axis=2), own, n_markets * n_firms).ravel()


def _firm_sums(rows: np.ndarray, n_firms: int, scales: np.ndarray, P: np.ndarray) -> np.ndarray:
    """``[T·F + 1, X, I]`` Σ_{m∈F} x_m P_mi for each column x of ``scales`` ``[T, J, X]``.

    One sparse product: column (t, m) of the ``[(T·F + 1)·X, T·J]`` matrix holds x_m in the
    X rows of m's firm, so each product's X numbers are added once to its firm's sums
    (X·J·I work instead of the F·X·J·I of a dense product with the 0/1 firm indicator).
    The padding row receives only padding products, whose P is zero.
    """
    n_markets, width, n_scales = scales.shape
    n_products = n_markets * width
    indices = (rows[:, None] * n_scales + np.arange(n_scales)).ravel()
    pointers = np.arange(0, n_products * n_scales + 1, n_scales)
    matrix = scipy.sparse.csc_matrix(
        (scales.reshape(-1), indices, pointers),
        shape=((n_markets * n_firms + 1) * n_scales, n_products),
    )
    sums = matrix @ np.ascontiguousarray(P).reshape(n_products, -1)
    return np.asarray(sums).reshape(n_markets * n_firms + 1, n_scales, -1)


def _firm_terms(
    Q: np.ndarray,
    f: np.ndarray,
    rows: np.ndarray,
    firm_sums: np.ndarray,
    column_of: np.ndarray,
    columns: np.ndarray,
) -> np.ndarray:
    """``[T, J, L]`` Σ_i Q_ki [Ω(η∘dδ_l∘P) + f_l Ω(η∘u_c(l)∘P)]_ki through firm sums.

    [ΩX]_ki = Z_{F(k), i} with Z = H'X, so the sum is Σ_i Q_ki V_l[F(k), i] with
    V_l = Z(η∘dδ_l) + f_l Z(η∘u_c(l)): each product's Q row against its own firm's V. With
    each market's products ordered by firm, that is one small dense product per firm
    (Q rows of the firm times its ``[I, L]`` V), with no product-by-agent copy of V. It
    replaced a sparse product whose ``[T·J, (T·F + 1)·I]`` matrix (T·J·I entries) had to be
    built at every evaluation: 12.6 ms against 4.8 ms on inputs captured from the automobile
    fit (20 × 150 × 200, 22 firms), and no slower at 100 markets of 10 products (5.7 against
    4.3 ms; best of 15, loaded machine, 2026-12-07).
    """
    n_markets, width, n_agents = Q.shape
    n_params = f.shape[2]
    n_groups = firm_sums.shape[0]
    n_firms = (n_groups - 1) // n_markets
    combined = firm_sums[:, 1 : 1 + n_params].copy()  # [T·F + 1, L, I]
    by_market = combined[:-1].reshape(n_markets, n_firms, n_params, n_agents)
    factors = np.swapaxes(f, 1, 2)  # [T, L, I]
    for offset, column in enumerate(columns):
        moved = firm_sums[:-1, 1 + n_params + offset].reshape(n_markets, n_firms, n_agents)
        for place in np.flatnonzero(column_of == column):
            by_market[:, :, place] += factors[:, None, place] * moved
    terms = np.zeros((n_markets, width, n_params))
    for market, (order, runs) in enumerate(_firm_runs(rows, n_markets, width, n_firms)):
        ordered = Q[market, order]  # [n, I]: the market's real products, firm by firm
        ordered_terms = np.empty((order.size, n_params))
        for start, stop, group in runs:
            np.matmul(ordered[start:stop], combined[group].T, out=ordered_terms[start:stop])
        terms[market, order] = ordered_terms
    return terms


def _firm_runs(
    rows: np.ndarray, n_markets: int, width: int, n_firms: int
) -> list[tuple[np.ndarray, list[tuple[int, int, int]]]]:
    """Per market, its real products ordered by firm and each firm's run in that order as
    ``(start, stop, row of the firm sums)`` (rows from :func:`_firm_rows`; padding dropped)."""
    by_market = rows.reshape(n_markets, width)
    order = np.argsort(by_market, axis=1, kind="stable")  # padding (the last row) sorts last
    ordered = np.take_along_axis(by_market, order, axis=1)
    out = []
    for market in range(n_markets):
        real = ordered[market][ordered[market] < n_markets * n_firms]
        starts = np.flatnonzero(np.r_[True, real[1:] != real[:-1]][: real.size])
        stops = np.r_[starts[1:], real.size][: starts.size]
        runs = list(zip(starts.tolist(), stops.tolist(), real[starts].tolist(), strict=True))
        out.append((order[market, : real.size], runs))
    return out


def directional_markup_derivative(
    system_times_eta: Callable[[float], np.ndarray], system: np.ndarray, step: float
) -> np.ndarray:
    """``[T, J]`` ∂η/∂θ_l = −B⁻¹ d(Bη)/dt by central differences along one exact direction.

    ``system_times_eta(t)`` returns ``[T, J]`` B(δ + t·∂δ/∂θ_l, θ + t·e_l)·η with η held fixed:
    only the Jacobian of the shares is differenced, not δ (which moves along its exact
    derivative), so the error is O(step²) in one smooth function.
    """
    change = (system_times_eta(step) - system_times_eta(-step)) / (2.0 * step)
    return -np.linalg.solve(system, change[:, :, None])[:, :, 0]
