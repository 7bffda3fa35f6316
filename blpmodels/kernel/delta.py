"""Solving for the mean utilities δ that reproduce the observed shares, in all markets at once.

:func:`solve_delta` is the BLP contraction with SQUAREM acceleration; :func:`solve_delta_newton`
and :func:`solve_delta_hybrid` take Newton-type steps on the log share residual and finish with
the contraction where a market stalls. Every solver obeys one convergence rule: a market has
converged only when max_j (1 − ρ_j)|log s_j(δ) − log s_obs,j| at the returned δ is below the
tolerance (:func:`residual_norm`), raised in a market whose log shares are too large for it to
be resolved in double precision (:func:`market_tolerance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blpmodels.exceptions import FixedPointError
from blpmodels.kernel import woodbury
from blpmodels.kernel.jacobians import share_jacobian
from blpmodels.kernel.shares import ShareEvaluator
from blpmodels.kernel.woodbury import LowRankInverse, apply_inverse, woodbury_delta_jacobian

__all__ = [
    "FixedPointResult",
    "inverse_delta_jacobian",
    "inverse_log_share_jacobian",
    "log_outside",
    "logit_inverse_jacobian",
    "market_tolerance",
    "residual_norm",
    "share_residual",
    "solve_delta",
    "solve_delta_hybrid",
    "solve_delta_newton",
]


@dataclass(frozen=True, eq=False)
class FixedPointResult:
    """Outcome of the δ contraction.

    Attributes
    ----------
    delta : numpy.ndarray
        ``[T, J]`` mean utilities (0 in padding).
    converged : numpy.ndarray
        ``[T]`` whether each market met the tolerance.
    iterations : numpy.ndarray
        ``[T]`` SQUAREM iterations per market.
    evaluations : numpy.ndarray
        ``[T]`` contraction (share) evaluations per market.
    """

    delta: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray

    def replace_markets(self, markets: np.ndarray, other: FixedPointResult) -> FixedPointResult:
        """This result with ``markets`` taken from ``other`` (solved again); counts add up."""
        delta = self.delta.copy()
        delta[markets] = other.delta
        converged = self.converged.copy()
        converged[markets] = other.converged
        iterations = self.iterations.copy()
        iterations[markets] += other.iterations
        evaluations = self.evaluations.copy()
        evaluations[markets] += other.evaluations
        return FixedPointResult(delta, converged, iterations, evaluations)


#: Round-off floor of the tolerance, in units of the largest |log s_obs| of a market (ε = 2.2e-16).
ROUNDING_FLOOR = 3.0 * np.finfo(np.float64).eps


def market_tolerance(log_shares: np.ndarray, product_mask: np.ndarray, tol: float) -> np.ndarray:
    """``[T]`` the tolerance each market is held to: ``tol``, or 3ε max_j |log s_obs,j| if larger.

    Doubles near a log share of −690.8 (a share of 1e-300) are 1.1e-13 apart, and so are the δ
    that produce it, so the residual log s_j(δ) − log s_obs,j moves in steps of that size and
    a tolerance of 1e-14 is met only by luck. Three such steps cover the rounding of δ, of
    the observed log share and of the share evaluation. The floor is below 1e-14 for every
    log share above −15 (shares above 3e-7, which covers the shares of the BLP, Nevo and
    Petrin data), so it changes nothing there.

    Examples
    --------
    >>> mask = np.ones((2, 2), bool)
    >>> market_tolerance(np.log([[0.2, 0.3], [1e-300, 0.3]]), mask, 1e-14)
    array([1.00000000e-14, 4.60148938e-13])
    """
    magnitude = np.where(product_mask, np.abs(log_shares), 0.0).max(axis=1, initial=0.0)
    with np.errstate(invalid="ignore"):
        return np.maximum(tol, ROUNDING_FLOOR * magnitude)


def log_outside(log_shares: np.ndarray, product_mask: np.ndarray) -> np.ndarray:
    """``[T]`` log of the outside share 1 − Σ_j s_j (−inf where the inside shares reach 1).

    Only a merit for judging steps: it loses relative precision when the outside share is
    below about 1e-12, where it is far from any observed outside share anyway.
    """
    return _log_outside(np.where(product_mask, np.exp(log_shares), 0.0).sum(axis=1))


def _log_outside(inside: np.ndarray) -> np.ndarray:
    """``[T]`` log(1 − ``inside``) for the summed inside shares (−inf from 1 up)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.minimum(inside, 1.0)
        return np.log1p(np.negative(inside, out=inside), out=inside)


def solve_delta(
    evaluator: ShareEvaluator,
    log_shares: np.ndarray,
    initial_delta: np.ndarray,
    *,
    tol: float = 1e-14,
    max_evaluations: int = 5000,
    step_max_initial: float = 1.0,
    step_factor: float = 4.0,
) -> FixedPointResult:
    """Solve s(δ) = observed shares in every market with SQUAREM-accelerated contraction.

    The map is δ ← δ + (1 − ρ_j)(log s_j − log s_j(δ)) (the (1 − ρ) damping makes it a
    contraction for nested models). Each market has its own extrapolation step and stops when
    the ∞-norm of its update, which is :func:`residual_norm` at the point it was taken from, is
    below ``tol``; converged markets are frozen and dropped from the working set once they are
    the majority. An extrapolation that makes the shares non-finite falls back to the plain
    steps; a market fails only when a plain step does, or its budget is spent.

    Parameters
    ----------
    evaluator : ShareEvaluator
        Share function at the current parameters.
    log_shares : numpy.ndarray
        ``[T, J]`` log observed shares (0 in padding).
    initial_delta : numpy.ndarray
        ``[T, J]`` starting values (warm start: last solution).
    tol : float
        Absolute tolerance on the ∞-norm of the update, per market (raised where the log
        shares cannot resolve it: :func:`market_tolerance`).
    max_evaluations : int
        Share evaluations per market before giving up on it.
    step_max_initial, step_factor : float
        SQUAREM step-length control (the step is capped, and the cap grows by ``step_factor``
        whenever it binds).

    Returns
    -------
    FixedPointResult

    Examples
    --------
    >>> from blpmodels.kernel.shares import Nesting, ShareEvaluator
    >>> mu = np.zeros((1, 2, 1)); w = np.ones((1, 1)); mask = np.ones((1, 2), bool)
    >>> evaluator = ShareEvaluator(mu, w, mask, Nesting.unnested((1, 2)))
    >>> result = solve_delta(evaluator, np.log([[0.2, 0.3]]), np.zeros((1, 2)))
    >>> np.allclose(result.delta, np.log([[0.2, 0.3]]) - np.log(0.5), atol=1e-13)
    True
    >>> bool(result.converged.all())
    True
    """
    n_markets = log_shares.shape[0]
    delta = np.array(initial_delta, dtype=np.float64, copy=True)
    delta[~evaluator.product_mask] = 0.0
    converged = np.zeros(n_markets, dtype=bool)
    failed = np.zeros(n_markets, dtype=bool)
    iterations = np.zeros(n_markets, dtype=np.int64)
    evaluations = np.zeros(n_markets, dtype=np.int64)
    step_max = np.full(n_markets, step_max_initial)

    working = np.arange(n_markets)
    current = evaluator
    observed = log_shares
    observed_outside = log_outside(log_shares, evaluator.product_mask)
    damping = evaluator.scale
    tolerance = market_tolerance(log_shares, evaluator.product_mask, tol)

    def contraction(ev: ShareEvaluator, x: np.ndarray, obs: np.ndarray, damp: np.ndarray):
        model = ev.log_shares(x)
        with np.errstate(invalid="ignore"):
            update = np.where(ev.product_mask, damp * (obs - model), 0.0)
        return x + update, model

    def norm(values: np.ndarray) -> np.ndarray:
        return np.abs(values).max(axis=1) if values.shape[1] else np.zeros(values.shape[0])

    while True:
        active = ~(converged[working] | failed[working])
        if not active.any():
            break
        if active.mean() < 0.5:
            keep = np.flatnonzero(active)
            working = working[keep]
            current = current.subset(keep)
            observed = observed[keep]
            damping = damping[keep]
            active = np.ones(working.size, dtype=bool)
        x0 = delta[working]
        live = working[active]

        x1, model0 = contraction(current, x0, observed, damping)
        done = norm(x1 - x0) < tolerance[working]
        x2, _ = contraction(current, x1, observed, damping)
        done2 = ~done & (norm(x2 - x1) < tolerance[working])

        x3, step_max[working] = _squarem_point(x0, x1, x2, step_max[working], step_factor)
        x4, model3 = contraction(current, x3, observed, damping)
        evaluations[live] += np.where(done, 1, np.where(done2, 2, 3))[active]
        # An extrapolation whose merit (the residual, outside share included) is worse than
        # at the start of the cycle, or not finite, falls back to the plain steps and the step
        # cap shrinks again: in log space every δ has finite shares, so nothing else stops an
        # overshoot from drifting away (δ grew without bound on a nested problem) or cycling
        # (200,000 evaluations without converging on another, where this rule needs 1,700).
        # Allowing some increase (10×) saved a few evaluations on easy markets but brought
        # the cycling back; on the exercise-2 and Nevo fits the counts do not change.
        with np.errstate(invalid="ignore"):
            extrapolated_residual = norm(x4 - x3)
            outside = observed_outside[working]
            start_merit = np.maximum(
                norm(x1 - x0), np.abs(log_outside(model0, current.product_mask) - outside)
            )
            merit = np.maximum(
                extrapolated_residual, np.abs(log_outside(model3, current.product_mask) - outside)
            )
            bad_step = ~np.isfinite(x4).all(axis=1) | ~(merit <= start_merit)
        x4 = np.where(bad_step[:, None], x2, x4)
        x4 = np.where(~np.isfinite(x4).all(axis=1)[:, None], x1, x4)
        step_max[working[bad_step]] = step_max_initial
        done4 = ~done & ~done2 & ~bad_step & (extrapolated_residual < tolerance[working])

        new = np.where(done[:, None], x1, np.where(done2[:, None], x2, x4))
        finite = np.isfinite(new).all(axis=1)
        update = active & finite
        delta[working[update]] = new[update]
        iterations[live] += 1
        converged[working[active & (done | done2 | done4) & finite]] = True
        failed[working[active & ~finite]] = True
        failed[
            working[active & ~converged[working] & (evaluations[working] >= max_evaluations)]
        ] = True

    return FixedPointResult(delta, converged, iterations, evaluations)


def _squarem_point(
    x0: np.ndarray, x1: np.ndarray, x2: np.ndarray, step_max: np.ndarray, step_factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """The SQUAREM extrapolation from two contraction steps, and the updated step caps.

    With r = x1 − x0 and v = x2 − 2x1 + x0, the step length α = |r|/|v| (at least 1, at most the
    market's cap, which grows by ``step_factor`` whenever it binds) gives
    x0 + 2αr + α²v. Far from the solution (a poor start, ρ near 1) δ can grow until this
    arithmetic overflows: a non-finite α falls back to the plain step, and the caller refuses a
    non-finite extrapolation, so overflow is not an error here.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = x1 - x0
        v = x2 - 2.0 * x1 + x0
        alpha = np.sqrt((r * r).sum(axis=1) / (v * v).sum(axis=1))
        alpha = np.clip(np.where(np.isfinite(alpha), alpha, 1.0), 1.0, step_max)
        step_max = np.where(alpha >= step_max, step_max * step_factor, step_max)
        return x0 + 2.0 * alpha[:, None] * r + (alpha * alpha)[:, None] * v, step_max


def share_residual(
    evaluator: ShareEvaluator, delta: np.ndarray, log_shares: np.ndarray
) -> np.ndarray:
    """``[T, J]`` log s(δ) − log s_obs on real products (0 in padding; ±inf/NaN where shares fail).

    This is the quantity every δ solver must drive to zero: its damped form (1 − ρ_j) times it
    is the contraction's own step, so one rule judges every method.
    """
    with np.errstate(invalid="ignore"):
        return np.where(evaluator.product_mask, evaluator.log_shares(delta) - log_shares, 0.0)


def residual_norm(evaluator: ShareEvaluator, residual: np.ndarray) -> np.ndarray:
    """``[T]`` convergence measure: max_j (1 − ρ_j)|log s_j(δ) − log s_obs,j| (inf if not finite).

    For the unnested model this is the share residual itself; for nested models it is the
    contraction's step, whose round-off floor is (1 − ρ) times smaller (utilities enter shares
    divided by 1 − ρ, so the residual cannot be resolved below about ε|δ|/(1 − ρ)).
    """
    return _residual_norm(residual, evaluator.scale)


def _residual_norm(residual: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """:func:`residual_norm` with the ``[T, J]`` damping ``scale`` (None: 1, unnested)."""
    if residual.shape[1] == 0:
        return np.zeros(residual.shape[0])
    scaled = np.abs(residual) if scale is None else np.abs(residual * scale)
    # max propagates NaN, and fmin turns it into inf (so does a row holding ±inf): one pass
    # instead of a finiteness test over [T, J].
    return np.fmin(scaled.max(axis=1), np.inf)


def solve_delta_newton(
    evaluator: ShareEvaluator,
    log_shares: np.ndarray,
    initial_delta: np.ndarray,
    inverse_log_jacobian: np.ndarray | LowRankInverse,
    *,
    tol: float = 1e-14,
    max_iterations: int = 30,
    slowdown: float = 0.5,
    backtracks: int = 0,
) -> tuple[FixedPointResult, np.ndarray]:
    """Newton-type iterations for log s(δ) = log s_obs with a fixed (stale) Jacobian.

    Each step is δ ← δ − K (log s(δ) − log s_obs), with K the inverse of ∂log s/∂δ at a
    reference point (:func:`inverse_delta_jacobian`; e.g. the solution at the last parameter
    vector). K is refined after every step by Broyden's update, which turns the linear
    convergence of a fixed K into superlinear: on the exercise-2 fit the share evaluations per
    market and solve fell from 15–17 to about 7 in the early evaluations, where θ moves most;
    on the large-J benchmark (J = 500, Woodbury factors) the first solve after the start
    converged in 38 of 50 markets instead of none, and the next two took 6 and 5 share
    evaluations per market instead of 9 and 5.9. The updates are kept in product form
    (:class:`_BroydenProduct`): the caller's K, dense ``[T, J, J]`` or
    :class:`~blpmodels.kernel.woodbury.LowRankInverse` factors, is neither copied nor
    changed, and a step costs one application of it and a few J-vector products. (Updating
    a dense K in place cost a ``[T, J, J]`` copy and three passes over it per step: 1.6 ms a
    step, 4.3 of the 41.5 ms of an objective evaluation of the BLP autos with supply, J up to
    150.) Either way a handful of share evaluations replace the dozens a contraction needs.

    A market has converged only when the residual at the returned δ is below ``tol``
    (:func:`residual_norm`), never because the steps became small: a stale K far from the
    solution can make steps vanish while the shares are wrong. A market whose residual
    does not shrink by ``slowdown`` per step is handed back, at its best δ, for the
    safeguarded contraction.

    Parameters
    ----------
    evaluator, log_shares
        As for :func:`solve_delta`.
    initial_delta : numpy.ndarray
        ``[T, J]`` starting values.
    inverse_log_jacobian : numpy.ndarray or LowRankInverse
        ``[T, J, J]`` inverse of ∂log s/∂δ near the solution (identity in padding), or its
        Woodbury factors.
    tol : float
        Tolerance on the residual norm (:func:`residual_norm`), raised as in
        :func:`market_tolerance`.
    max_iterations : int
        Steps before giving a market back.
    slowdown : float
        A market whose residual norm shrinks by less than this factor is given back. A share
        evaluation costs a fraction of a fresh Jacobian (a sixth on exercise 2, J = 24 and
        I = 1,000; a fiftieth on the BLP autos, J up to 150 and I = 200), so a few more
        Broyden steps beat a refresh: 0.2 was about 10 % faster than 0.05 on the exercise-2
        and Nevo fits, and 0.5 cut the δ solves' CPU time on the autos fit with supply by a
        quarter against 0.2 (fewer fresh Jacobians, 9 % fewer share evaluations), on
        exercise 2 and Nevo by a few percent (the same counts within 0.3 %).
    backtracks : int
        Before a market is given back, its step is cut to :data:`BACKTRACK_FACTOR` of itself
        this many times (one share evaluation each; Broyden's update then uses the step
        taken). The first solve takes one (see :func:`_cold_inverse`).

    Returns
    -------
    tuple
        ``(result, needs_fallback)``: the fixed-point result (with ``converged`` set for the
        markets Newton solved) and a ``[T]`` mask of markets to finish by contraction.

    Examples
    --------
    >>> from blpmodels.kernel.shares import Nesting, ShareEvaluator
    >>> mu = np.zeros((1, 2, 1)); w = np.ones((1, 1)); mask = np.ones((1, 2), bool)
    >>> evaluator = ShareEvaluator(mu, w, mask, Nesting.unnested((1, 2)))
    >>> near = np.array([[-0.8, -0.4]])  # near the solution log([0.2, 0.3]) − log(0.5)
    >>> inverse = inverse_delta_jacobian(evaluator, near)
    >>> start = np.array([[-0.7, -0.3]])
    >>> result, fallback = solve_delta_newton(evaluator, np.log([[0.2, 0.3]]), start, inverse)
    >>> bool(result.converged.all()), bool(fallback.any())
    (True, False)
    >>> np.abs(np.log(evaluator.shares(result.delta)) - np.log([[0.2, 0.3]])).max() < 1e-14
    np.True_
    """
    n_markets = log_shares.shape[0]
    mask = evaluator.product_mask
    delta = np.where(mask, initial_delta, 0.0)
    converged = np.zeros(n_markets, dtype=bool)
    fallback = np.zeros(n_markets, dtype=bool)
    iterations = np.zeros(n_markets, dtype=np.int64)
    working = np.arange(n_markets)
    current = evaluator
    # The state of the working markets, row k for market working[k]: the full arrays until
    # the first subset, compact copies after it (written back to the full ones then and at the
    # end), so that each iteration indexes nothing by market on the usual path.
    limits = (log_outside(log_shares, mask), market_tolerance(log_shares, mask, tol))
    state = _NewtonState(delta, log_shares, *limits, iterations, converged, fallback, backtracks)
    # Broyden's updates of K, in product form: the caller keeps its K for the next evaluation.
    product = _BroydenProduct(inverse_log_jacobian, delta.shape)
    unit_scale = getattr(evaluator, "unit_scale", False)
    for _ in range(max_iterations + 1):
        live = state.live
        count = np.count_nonzero(live)
        if not count:
            break
        if 2 * count < live.size:  # fewer than half live: drop the others
            keep = np.flatnonzero(live)
            state.write_back(working)
            state = state.subset(keep)
            product.subset(keep)
            current = current.subset(keep)
            working = working[keep]
            live = state.live
        model = current.log_shares(state.delta)
        padded = getattr(current, "padded", True)
        with np.errstate(invalid="ignore"):
            residual = np.subtract(model, state.observed)
            if padded:
                residual = np.where(current.product_mask, residual, 0.0)
            norm = _residual_norm(residual, None if unit_scale else current.scale)
            inside = np.exp(model)
            if padded:
                inside = np.where(current.product_mask, inside, 0.0)
            outside_gap = _log_outside(inside.sum(axis=1))
            outside_gap -= state.observed_outside
            merit = np.maximum(norm, np.abs(outside_gap, out=outside_gap))
        state.iterations += live  # one share evaluation more in each live market
        done = live & (norm < state.tolerance)
        pending = live ^ done  # live & ~done, as done ⊆ live
        # A merit (share residual, outside share included) that grows or shrinks slowly means
        # K is too stale here: go back to the best δ so far and let the contraction finish.
        # The outside share catches steps that move every δ far up or down together, which
        # the inside residual barely sees when the observed outside share is small.
        good = merit <= slowdown * state.last_norm
        slow = pending & ~good
        going = pending & good
        within = state.iterations <= max_iterations
        cut = None
        if backtracks:
            # (Only a step can be cut: a start whose merit is not finite is given back at once.)
            cut = slow & state.stepped & (state.cuts < backtracks) & within
            slow &= ~cut
        out_of_steps = going & ~within
        step_on = going & within
        state.converged |= done
        stopped = slow | out_of_steps
        state.fallback |= stopped
        if slow.any():
            state.delta[slow] = state.last_delta[slow]
        # What stays live: live less done, slow and out of steps (disjoint parts of it).
        if cut is None:
            np.copyto(live, step_on)
        else:
            np.logical_or(step_on, cut, out=live)
        if cut is not None and cut.any():
            state.cut_back(np.flatnonzero(cut))
        if step_on.any():
            rows = slice(None) if step_on.all() else np.flatnonzero(step_on)
            state.last_delta[rows] = state.delta[rows]
            state.last_norm[rows] = merit[rows]
            step = product.step(
                residual[rows],
                working[rows],
                state.stepped[rows],
                state.last_step,
                state.full_step,
                rows=rows,
            )
            state.take_step(rows, step)
    state.write_back(working)
    fallback |= ~converged
    return FixedPointResult(delta, converged, iterations, iterations.copy()), fallback


class _NewtonState:
    """Per-market state of :func:`solve_delta_newton`, row k for the k-th working market.

    Until the first subset the arrays are the solver's full ``[T]`` and ``[T, J]`` outputs
    themselves; :meth:`subset` makes compact copies, and :meth:`write_back` stores them in the
    full outputs (before each subset and at the end). Indexing ``[T, J]`` arrays by market at
    every iteration, as the loop did, cost more than the arithmetic on them.
    """

    def __init__(
        self,
        delta: np.ndarray,
        observed: np.ndarray,
        observed_outside: np.ndarray,
        tolerance: np.ndarray,
        iterations: np.ndarray,
        converged: np.ndarray,
        fallback: np.ndarray,
        backtracks: int,
    ) -> None:
        n_markets = delta.shape[0]
        self.outputs = (delta, iterations, converged, fallback)
        self.compact = False
        self.delta, self.iterations = delta, iterations
        self.converged, self.fallback = converged, fallback
        self.observed, self.observed_outside, self.tolerance = observed, observed_outside, tolerance
        self.live = np.ones(n_markets, dtype=bool)
        self.last_norm = np.full(n_markets, np.inf)
        self.last_delta = delta.copy()
        self.last_step = np.zeros_like(delta)
        # The full step −K r whose fraction ``fraction`` was taken (``last_step``), and the cuts
        # made, while backtracking (the full step is last_step itself without).
        self.full_step = np.zeros_like(delta) if backtracks else self.last_step
        self.fraction = np.ones(n_markets)
        self.cuts = np.zeros(n_markets, dtype=np.int64)
        self.stepped = np.zeros(n_markets, dtype=bool)
        self.backtracks = backtracks

    _PER_MARKET = (
        "delta",
        "iterations",
        "converged",
        "fallback",
        "observed",
        "observed_outside",
        "tolerance",
        "live",
        "last_norm",
        "last_delta",
        "last_step",
        "fraction",
        "cuts",
        "stepped",
    )

    def subset(self, keep: np.ndarray) -> _NewtonState:
        """The state of the markets at positions ``keep`` (compact copies)."""
        new = object.__new__(_NewtonState)
        new.__dict__.update(self.__dict__)
        for name in self._PER_MARKET:
            setattr(new, name, getattr(self, name)[keep])
        new.full_step = self.full_step[keep] if self.backtracks else new.last_step
        new.compact = True
        return new

    def write_back(self, working: np.ndarray) -> None:
        """Store δ, the counts and the flags of the ``working`` markets in the full outputs."""
        if not self.compact:
            return
        delta, iterations, converged, fallback = self.outputs
        delta[working] = self.delta
        iterations[working] = self.iterations
        converged[working] = self.converged
        fallback[working] = self.fallback

    def cut_back(self, rows: np.ndarray) -> None:
        """Back along the step of the markets at ``rows``: same direction, a fraction of it."""
        self.cuts[rows] += 1
        self.fraction[rows] *= BACKTRACK_FACTOR
        self.last_step[rows] = self.fraction[rows, None] * self.full_step[rows]
        self.delta[rows] = self.last_delta[rows] + self.last_step[rows]

    def take_step(self, rows: np.ndarray | slice, step: np.ndarray) -> None:
        """δ ← δ − ``step`` at ``rows`` (positions or a slice), remembered as the last step."""
        self.delta[rows] -= step
        self.last_step[rows] = -step
        if self.backtracks:
            self.full_step[rows] = -step
            self.fraction[rows] = 1.0
            self.cuts[rows] = 0
        self.stepped[rows] = True


class _BroydenProduct:
    """Broyden's ("good") updates of an inverse Jacobian K₀, kept as a product of rank-one factors.

    With s the last step in δ and y the change of the residual it caused, Broyden's update
    K ← K + (s − K y) sᵀK / (sᵀK y) is the smallest change (in the sense of Broyden's method)
    that maps y to s. It is K ← (1 + w sᵀ) K with w = (s − K y)/(sᵀK y), so after n updates
    K = (1 + w_n s_nᵀ)⋯(1 + w_1 s_1ᵀ) K₀: one application of K₀ (dense ``[T, J, J]`` or
    Woodbury factors) and n rank-one corrections (2n J-vectors per market) apply it, and K₀ is
    never copied or changed. K y needs no second application: with the last full step
    −K r_old (of which s is taken, or a fraction after a cut), K y = K r_new − K r_old, and
    K r_new is the product the next step applies anyway. A market whose denominator sᵀK y is
    not safely away from zero keeps its K.
    """

    def __init__(self, inverse: np.ndarray | LowRankInverse, shape: tuple[int, int]) -> None:
        self.inverse = inverse
        self.shape = shape
        #: One ``(w, s)`` pair of ``[n, J]`` arrays per round of updates, one row per working
        #: market (:meth:`subset`), zero (the identity factor) in markets not updated then.
        self.factors: list[tuple[np.ndarray, np.ndarray]] = []

    def step(
        self,
        residual: np.ndarray,
        markets: np.ndarray,
        update: np.ndarray,
        last_step: np.ndarray,
        full_step: np.ndarray | None = None,
        rows: np.ndarray | slice | None = None,
    ) -> np.ndarray:
        """``[n, J]`` K r for the ``markets`` (sorted positions among the T) after updating K
        with the last steps of those flagged in ``update`` (``last_step``: δ_new − δ_old, a
        part of the ``full_step`` −K r_old when the step was cut back, else the same array).
        ``rows`` (positions or a slice; default ``markets``) are the markets' rows in
        ``last_step``, ``full_step`` and the factors (see :meth:`subset`)."""
        rows = markets if rows is None else rows
        mapped = _apply(self.inverse, residual, markets)
        for factor, direction in self.factors:
            mapped += factor[rows] * (direction[rows] * mapped).sum(axis=1)[:, None]
        if not update.any():
            return mapped
        step = last_step[rows]
        full = step if full_step is None or full_step is last_step else full_step[rows]
        changed = mapped + full  # K y
        denominator = (step * changed).sum(axis=1)
        size = np.sqrt((step * step).sum(axis=1) * (changed * changed).sum(axis=1))
        # w = (s − K y)/(sᵀK y); s − K y = −K r_new, less (full − s) after a cut.
        numerator = mapped if full is step else mapped + (full - step)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            usable = update & np.isfinite(denominator) & (np.abs(denominator) > 1e-8 * size)
            factor = -numerator / np.where(usable, denominator, 1.0)[:, None]
            usable &= np.isfinite(factor).all(axis=1)
        if usable.all() and isinstance(rows, slice) and rows == slice(None):
            # Every row updated (the usual case): the new factors need no scattering.
            self.factors.append((factor, step.copy()))  # step is a view of last_step
            mapped += factor * (step * mapped).sum(axis=1)[:, None]
            return mapped
        if not usable.any():
            return mapped
        factors = np.zeros(self.shape)
        directions = np.zeros(self.shape)
        positions = np.arange(self.shape[0])[rows][usable]
        factors[positions] = factor[usable]
        directions[positions] = step[usable]
        self.factors.append((factors, directions))
        # (1 + w sᵀ) K r with K r = mapped.
        mapped[usable] += factor[usable] * (step[usable] * mapped[usable]).sum(axis=1)[:, None]
        return mapped

    def subset(self, keep: np.ndarray) -> None:
        """Keep the factors of the rows at positions ``keep`` only (the working markets)."""
        self.factors = [(factor[keep], direction[keep]) for factor, direction in self.factors]
        self.shape = (len(keep), self.shape[1])


def _apply(
    inverse: np.ndarray | LowRankInverse, vectors: np.ndarray, markets: np.ndarray
) -> np.ndarray:
    """``[n, J]`` K r for the ``markets`` (sorted positions among the T): :func:`apply_inverse`,
    except that a dense K is applied to all T markets (zero vectors elsewhere) when at least
    half of them are asked for. Indexing a dense K copies its ``[n, J, J]`` blocks, which
    costs more than the product itself: 140 µs against 73 µs for 15 of the 20 autos markets
    (J = 150)."""
    if not isinstance(inverse, np.ndarray) or not 2 * len(markets) >= len(inverse) > len(markets):
        return apply_inverse(inverse, vectors, markets)
    count = len(inverse)
    full = np.zeros((count, vectors.shape[1]))
    full[markets] = vectors
    return np.matmul(inverse, full[:, :, None])[markets, :, 0]


def inverse_log_share_jacobian(
    jacobian: np.ndarray, shares: np.ndarray, product_mask: np.ndarray
) -> np.ndarray | None:
    """``[T, J, J]`` (∂log s/∂δ)⁻¹ = (∂s/∂δ)⁻¹ diag(s) from ∂s/∂δ (modified in place), or None.

    Padding gets the identity. None when the Jacobian is singular or the inverse not finite.
    """
    index = np.arange(jacobian.shape[1])
    jacobian[:, index, index] += ~product_mask
    try:
        inverse = np.linalg.inv(jacobian)
    except np.linalg.LinAlgError:
        return None
    inverse *= np.where(product_mask, shares, 1.0)[:, None, :]
    return inverse if np.isfinite(inverse).all() else None


def inverse_delta_jacobian(
    evaluator: ShareEvaluator, delta: np.ndarray
) -> np.ndarray | LowRankInverse | None:
    """``[T, J, J]`` inverse of ∂log s/∂δ at ``delta`` (identity in padding), or None if singular.

    Unnested markets with few agents (I ≤ :data:`~blpmodels.kernel.woodbury.WOODBURY_CROSSOVER`
    × J) get its Woodbury factors (:class:`~blpmodels.kernel.woodbury.LowRankInverse`).

    Examples
    --------
    One agent, logit: ∂log s_j/∂δ_k = 1{j = k} − s_k.

    >>> from blpmodels.kernel.shares import Nesting, ShareEvaluator
    >>> mu = np.zeros((1, 2, 1)); w = np.ones((1, 1)); mask = np.ones((1, 2), bool)
    >>> evaluator = ShareEvaluator(mu, w, mask, Nesting.unnested((1, 2)))
    >>> inverse = inverse_delta_jacobian(evaluator, np.zeros((1, 2)))
    >>> type(inverse).__name__  # one agent, two products: the Woodbury factors
    'LowRankInverse'
    >>> np.allclose(np.linalg.inv(inverse.dense()[0]), np.eye(2) - 1 / 3)
    True
    """
    own_inverse = getattr(evaluator, "inverse_log_jacobian", None)
    if own_inverse is not None:
        # Two-level RCNL evaluators (kernel.two_level_rcnl) invert their own ∂log s/∂δ.
        return own_inverse(delta)
    probabilities = evaluator.probabilities(delta, factored=True)
    mask = evaluator.product_mask
    few_agents = evaluator.weights.shape[1] <= woodbury.WOODBURY_CROSSOVER * mask.shape[1]
    if few_agents and not evaluator.nesting.nested:
        # Diagonal minus rank I: the Woodbury factors, without the [T, J, J] inverse.
        no_theta = np.zeros((*mask.shape, 0))
        low_rank = woodbury_delta_jacobian(probabilities, evaluator.weights, mask, no_theta)
        if low_rank is not None:
            return low_rank[1]
    jacobian = share_jacobian(probabilities, evaluator.weights, evaluator.nesting, mask)
    return inverse_log_share_jacobian(jacobian, probabilities.shares, mask)


def solve_delta_hybrid(
    evaluator: ShareEvaluator,
    log_shares: np.ndarray,
    initial_delta: np.ndarray,
    inverse_log_jacobian: np.ndarray | LowRankInverse | None = None,
    *,
    tol: float = 1e-14,
    max_evaluations: int = 5000,
) -> FixedPointResult:
    """Solve for δ with Newton-type steps, safeguarded by the SQUAREM contraction.

    1. Newton steps with ``inverse_log_jacobian`` (e.g. from the last parameter vector);
       without one (the first solve of a fit), unnested markets start from the plain-logit
       inverse at the observed shares (:func:`_cold_inverse`) and nested ones run the
       contraction alone;
    2. markets where those steps stall get a fresh Jacobian at their current δ and more
       Newton steps (not after the plain-logit start: see below);
    3. markets that still stall finish with :func:`solve_delta`, from where Newton stopped
       and, failing that, from ``initial_delta``.

    Every stage judges convergence by the same residual (:func:`residual_norm`), so a market
    reported converged solves the share equations to ``tol`` whichever stage finished it,
    and no market takes more than ``max_evaluations`` share evaluations in all.

    Returns
    -------
    FixedPointResult
        Iterations and evaluations count every share evaluation of every stage.
    """
    cold = inverse_log_jacobian is None
    if cold:
        inverse_log_jacobian = _cold_inverse(evaluator, log_shares)
        if inverse_log_jacobian is None:
            # Nested markets: far from the solution (no Jacobian from a nearby θ yet), the
            # contraction is cheaper than Newton with a fresh Jacobian at every step.
            return solve_delta(
                evaluator, log_shares, initial_delta, tol=tol, max_evaluations=max_evaluations
            )
    result, fallback = solve_delta_newton(
        evaluator,
        log_shares,
        initial_delta,
        inverse_log_jacobian,
        tol=tol,
        max_iterations=_steps_left(max_evaluations, None),
        slowdown=COLD_SLOWDOWN if cold else NEWTON_SLOWDOWN,
        backtracks=COLD_BACKTRACKS if cold else 0,
    )
    # After the plain-logit start a fresh Jacobian is skipped: the markets given back there
    # are far from the solution (a large σ, or a start far from the solution's θ), where its
    # Newton steps finished 2 of the 276 markets given back at exercise 2's first solve from
    # σ, π × 2, 3, 5 and 10 and bench_robustness.py's e2-gh from σ₀ = 5, 10 and 20, at the
    # price of a dense ∂s/∂δ and two share evaluations per market (fits from σ, π × 5 and
    # × 10 took 50 % more CPU time with it).
    if fallback.any() and not cold:
        rest = np.flatnonzero(fallback)
        subset = evaluator.subset(rest)
        start = result.delta[rest]
        steps = _steps_left(max_evaluations, result.evaluations[rest])
        usable = steps > 0 and np.isfinite(start).all()
        fresh = inverse_delta_jacobian(subset, start) if usable else None
        if fresh is not None:
            again, still = solve_delta_newton(
                subset, log_shares[rest], start, fresh, tol=tol, max_iterations=steps
            )
            result = result.replace_markets(rest, again)
            fallback[rest] = still
    # The contraction finishes from where Newton stopped, with half of what is left of the
    # budget; a market that still fails starts over from the initial δ with the rest. Newton
    # stops at a δ with a smaller residual, but the contraction can be far slower there (a
    # nested market needed 1,600 evaluations from the start and more than 200,000 from
    # Newton's end), so the hybrid never does much worse than the contraction alone. After
    # the plain-logit start (unnested markets only, where the contraction converges from any
    # δ) it finishes from Newton's best δ with all that is left: in the 276 markets above,
    # 16,434 share evaluations against 17,114 from the start (at most one more in a problem),
    # while half the budget was too little for an e2-gh market from σ₀ = 20 (2,801).
    stages = ((False, False),) if cold else ((True, False), (False, True))
    for half, from_start in stages:
        if not fallback.any():
            break
        rest = np.flatnonzero(fallback)
        left = max_evaluations - int(result.evaluations[rest].max())
        if left < 1:
            break
        finished = solve_delta(
            evaluator.subset(rest),
            log_shares[rest],
            initial_delta[rest] if from_start else result.delta[rest],
            tol=tol,
            max_evaluations=max(1, left // 2) if half else left,
        )
        result = result.replace_markets(rest, finished)
        fallback[rest] = ~finished.converged
    return result


#: Newton steps per stage of :func:`solve_delta_hybrid` (each takes one share evaluation).
NEWTON_STEPS = 30
#: :func:`solve_delta_newton`'s ``slowdown`` with an inverse Jacobian from a nearby θ.
NEWTON_SLOWDOWN = 0.5
#: Its ``slowdown`` from the plain-logit inverse (:func:`logit_inverse_jacobian`), see
#: :func:`_cold_inverse`.
COLD_SLOWDOWN = 1.0
#: What a cut keeps of a Newton step that raised the merit (``backtracks`` of
#: :func:`solve_delta_newton`).
BACKTRACK_FACTOR = 0.25
#: Cuts of a step in the first solve (:func:`_cold_inverse`).
COLD_BACKTRACKS = 1


def _steps_left(max_evaluations: int, used: np.ndarray | None) -> int:
    """Newton steps a stage may take within the share-evaluation budget (one evaluation more
    than the steps checks the last one), given the evaluations ``used`` so far per market."""
    spent = 0 if used is None or used.size == 0 else int(used.max())
    return max(0, min(NEWTON_STEPS, max_evaluations - 1 - spent))


def logit_inverse_jacobian(
    log_shares: np.ndarray, product_mask: np.ndarray
) -> LowRankInverse | None:
    """The inverse of the plain logit's ∂log s/∂δ = 1 − 1sᵀ at the observed shares, or None.

    By Sherman–Morrison it is 1 + 1sᵀ/s₀ (s₀ = 1 − Σ_j s_j, the outside share): the Woodbury
    form of :class:`~blpmodels.kernel.woodbury.LowRankInverse` with one column U = s,
    capacitance C = 1 − sᵀD⁻¹s = s₀ and D⁻¹ = diag(1/s) (zero rows and a scale of 1 in padding,
    so K is the identity there). None when a share is not positive or the outside share is not.

    Examples
    --------
    >>> s = np.array([[0.2, 0.3]])
    >>> K = logit_inverse_jacobian(np.log(s), np.ones((1, 2), bool)).dense()[0]
    >>> np.allclose(K, np.linalg.inv(np.eye(2) - s))
    True
    """
    with np.errstate(over="ignore", invalid="ignore"):
        shares = np.where(product_mask, np.exp(log_shares), 0.0)
        outside = 1.0 - shares.sum(axis=1)
    if not (np.isfinite(outside).all() and (outside > 0).all()):
        return None
    if not (shares[product_mask] > 0).all():
        return None
    scale = np.where(product_mask, 1.0 / np.where(product_mask, shares, 1.0), 1.0)
    return LowRankInverse(
        shares[:, :, None],
        np.sqrt(outside)[:, None, None],
        scale,
        (1.0 / outside)[:, None, None],
    )


def _cold_inverse(evaluator: ShareEvaluator, log_shares: np.ndarray) -> LowRankInverse | None:
    """K₀ for the first solve of unnested markets (no inverse from a nearby θ yet), or None.

    Broyden-updated Newton steps (:func:`solve_delta_newton`) from the plain-logit inverse at
    the observed shares (:func:`logit_inverse_jacobian`, free to form and to apply) solve
    these markets in fewer share evaluations than the contraction, provided a market is given
    back only when its merit does not decrease (:data:`COLD_SLOWDOWN`; Broyden's first steps
    from this K₀ often shrink the residual by less than half) and a step that raises it is
    first cut to a quarter once (:data:`COLD_BACKTRACKS`). Measured 2026-12-07 (one thread,
    best CPU ms): exercise 2's first solve (J = 24, I = 1,000, from the logit δ) took 9.8
    share evaluations per market and 15 ms against the contraction's 16.9 and 24, all 94
    markets converged in the Newton steps, δ within 4e-14 of the contraction's; with K₀ = 1
    10.5 evaluations, with the exact inverse at the logit δ most markets were given back.
    Large-J markets (bench_large_j.py, T = 50, I = 200, σ = 1) took 10.2 per market against
    the contraction's 24.9 (J = 500) and 20.8 (J = 250), and 25 and 11 ms against 49 and 26
    for the former start there (the contraction to 1e-2, then Newton from fresh Woodbury
    factors), which this replaces. Far from the solution the steps are given back after two
    or three evaluations: whole exercise-2 fits from σ, π × 0.1, 1, 2, 3, 5 and 10 took
    11, 14, 11 and 3 % fewer share evaluations and 5 % more at × 5 and × 10 (without the cut,
    4 % more at × 2 and × 3). Nested markets (the logit's ∂log s/∂δ ignores the nests)
    and evaluators that invert their own Jacobian keep the contraction.
    """
    if getattr(evaluator, "inverse_log_jacobian", None) is not None or evaluator.nesting.nested:
        return None
    return logit_inverse_jacobian(log_shares, evaluator.product_mask)


def raise_unconverged(result: FixedPointResult, market_labels: np.ndarray) -> None:
    """Raise :class:`FixedPointError` naming markets where the contraction failed."""
    if result.converged.all():
        return
    bad = market_labels[~result.converged].tolist()
    raise FixedPointError(
        f"the δ contraction did not converge in {len(bad)} market(s): {bad[:10]}"
        + (" ..." if len(bad) > 10 else ""),
        markets=bad,
    )
