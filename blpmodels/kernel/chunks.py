"""One chunk of markets of the nonlinear objective: its data, its warm-start state, its work.

A :class:`MarketChunk` holds the product and agent arrays of consecutive markets and the
state carried from one evaluation to the next (the last accepted δ, its θ and ∂δ/∂θ for the
first-order warm start, and the inverse share Jacobian the Newton solver reuses). Given a
:class:`ChunkStep` (θ and a few flags) it solves δ, ∂δ/∂θ and, with a supply side, the
markups in its markets and returns a :class:`ChunkResult`. It reads nothing outside itself,
so a backend can run it in a thread or keep it resident on a Dask worker and ship only θ.

State changes are two-phase: a step leaves its solution *pending*, and the driver accepts
it (in the next step's message) only when every market of every chunk converged. A step
repeated with the same message (a worker lost mid-evaluation) gives the same result.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from blpmodels.data.parameters import NonlinearParameters
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel import jacobians, symmetric_jacobians, woodbury
from blpmodels.kernel.delta import FixedPointResult, solve_delta, solve_delta_hybrid
from blpmodels.kernel.jacobians import (
    rho_jacobian,
    share_jacobian,
    theta_and_delta_jacobians,
    theta_jacobian,
)
from blpmodels.kernel.markups import directional_markup_derivative, markup_jacobian, markups
from blpmodels.kernel.nests import TwoLevelNesting
from blpmodels.kernel.shares import Nesting, Probabilities, ShareEvaluator
from blpmodels.kernel.two_level_rcnl import TwoLevelShareEvaluator, two_level_delta_jacobian

__all__ = ["ChunkResult", "ChunkState", "ChunkStep", "MarketChunk", "Workspace"]


class Workspace:
    """Reusable work arrays of one thread, keyed by name and shape.

    Chunks that run one after another in a thread share them, so the memory of the large
    ``[T, J, I]`` work arrays is bounded by the chunk size times the number of threads, not
    by the number of markets. Two shapes are kept per name (the full chunks and the last,
    shorter one).

    Examples
    --------
    >>> workspace = Workspace()
    >>> workspace.get("factor", (2, 3)).shape
    (2, 3)
    """

    def __init__(self) -> None:
        self._arrays: dict[str, dict[tuple[int, ...], np.ndarray]] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialized array of this shape, the same one on every call."""
        arrays = self._arrays.setdefault(name, {})
        if shape not in arrays:
            if len(arrays) >= 2:
                arrays.pop(next(iter(arrays)))
            arrays[shape] = np.empty(shape)
        return arrays[shape]


@dataclass(eq=False)
class ChunkState:
    """Warm-start state of a chunk: an accepted δ, its θ, ∂δ/∂θ and the Newton inverse."""

    delta: np.ndarray
    theta: np.ndarray | None = None
    jacobian: np.ndarray | None = None
    inverse: np.ndarray | woodbury.LowRankInverse | None = None


@dataclass(eq=False)
class ChunkStep:
    """What the driver ships to every chunk per evaluation.

    Attributes
    ----------
    theta : numpy.ndarray
        Parameters (Σ, Π, ρ entries, then the moved X1 coefficients).
    gradient : bool
        Also compute ∂δ/∂θ (and ∂η/∂θ).
    number : int
        Evaluation number; the chunk's pending solution is tagged with it.
    accepted : int or None
        Number of the last evaluation that succeeded everywhere: its pending solution (if the
        chunk still holds it) becomes the warm start.
    epoch : int
        Reset counter: a chunk that sees a new epoch forgets its warm starts.
    state : ChunkState or None
        Replaces the chunk's accepted state (a rescattered chunk, or a state set by hand).
    """

    theta: np.ndarray
    gradient: bool
    number: int
    accepted: int | None
    epoch: int
    state: ChunkState | None = None


@dataclass(eq=False)
class ChunkResult:
    """Solution in a chunk's markets; the driver writes it into the full arrays."""

    delta: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray
    jacobian: np.ndarray | None = None
    eta: np.ndarray | None = None
    eta_jacobian: np.ndarray | None = None
    #: Whether the step formed its Jacobians market by market with scipy's BLAS and LAPACK,
    #: which hold the GIL: ∂s/∂δ inverted by Cholesky per market
    #: (:func:`~blpmodels.kernel.symmetric_jacobians.delta_jacobian_inverse`) and, with a
    #: supply side, the markups factored per market too
    #: (:func:`~blpmodels.kernel.symmetric_jacobians.cholesky_markups`). Chunks with this flag
    #: gain nothing from parallel threads
    #: (:class:`~blpmodels.backends.threads.ThreadsBackend`).
    by_market: bool = False


@dataclass(eq=False)
class MarketChunk:
    """Consecutive markets ``start:stop`` of an objective, with their data and warm starts.

    Arrays are ``[T_c, ...]`` slices of the objective's padded arrays (views for the threads
    backend, copies once scattered to a Dask worker).

    Examples
    --------
    >>> chunk = objective.make_chunk(0)  # doctest: +SKIP
    >>> result = chunk.step(ChunkStep(theta, True, 1, None, 0), Workspace())  # doctest: +SKIP
    """

    start: int
    stop: int
    labels: np.ndarray
    parameters: NonlinearParameters
    n_theta: int
    log_shares: np.ndarray
    characteristics: np.ndarray
    mask: np.ndarray
    codes: np.ndarray
    n_nests: int
    weights: np.ndarray
    nodes: np.ndarray
    demographics: np.ndarray
    logit_delta: np.ndarray
    fp_tol: float
    fp_max_evaluations: int
    fp_method: str
    supply: dict[str, Any] | None = None
    accepted: ChunkState = field(init=False)
    pending: tuple[int, ChunkState] | None = field(init=False, default=None)
    epoch: int = field(init=False, default=0)
    #: ``(firms, order)``: each market's products sorted by firm for the symmetric markups,
    #: kept for the ``supply["firms"]`` it was taken from (the firms never change in a fit).
    _firm_order: tuple[np.ndarray, list[Any]] | None = field(init=False, default=None, repr=False)
    #: ``(parameters, nodes, demographics, agent factors)`` (:meth:`_agent_factors`).
    _kept_factors: tuple[Any, ...] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.accepted = ChunkState(self.logit_delta.copy())
        self.latest = -1
        self._gave_way = False
        self._inverted_by_market = False  # the last step's (see ChunkResult.by_market)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]  # locks do not pickle (Dask scatters chunks)
        state["_kept_factors"] = None  # data-sized, and cheap to form again
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def markets(self) -> slice:
        """The chunk's positions among the objective's markets."""
        return slice(self.start, self.stop)

    # ------------------------------------------------------------------ state
    def _update_state(self, step: ChunkStep) -> None:
        if step.epoch != self.epoch:
            self.epoch = step.epoch
            self.accepted = ChunkState(self.logit_delta.copy())
            self.pending = None
        if self.pending is not None and step.accepted == self.pending[0]:
            new = self.pending[1]
            if new.inverse is None:
                new.inverse = self.accepted.inverse
            self.accepted = new
        elif self.pending is not None and self.accepted.inverse is None and self._gave_way:
            # The accepted inverse gave way to the pending one (see _keep_one_inverse); the
            # evaluation failed elsewhere, but its inverse, from a nearby θ, preconditions too.
            self.accepted = replace(self.accepted, inverse=self.pending[1].inverse)
        self._gave_way = False
        self.pending = None
        if step.state is not None:
            self.accepted = step.state

    def starting_delta(self, theta: np.ndarray) -> np.ndarray:
        """First-order prediction δ(θ_last) + ∂δ/∂θ (θ − θ_last) when available."""
        state = self.accepted
        if state.theta is None or state.jacobian is None:
            return state.delta.copy()  # the solvers may work in place
        predicted = state.delta + state.jacobian @ (theta - state.theta)
        return predicted if np.isfinite(predicted).all() else state.delta.copy()

    # ------------------------------------------------------------------ work
    def step(self, step: ChunkStep, workspace: Workspace | None = None) -> ChunkResult | None:
        """Solve δ, its Jacobian and (with a supply side) the markups in the chunk.

        Steps of one chunk never overlap, and a step older than one already run (left over
        from an evaluation that failed elsewhere) does nothing and returns None.
        """
        with self._lock:
            if step.number < self.latest:
                return None
            self.latest = step.number
            return self._step(step, workspace)

    def _step(self, step: ChunkStep, workspace: Workspace | None) -> ChunkResult:
        self._update_state(step)
        self._inverted_by_market = False  # set by _delta_jacobian
        workspace = Workspace() if workspace is None else workspace
        theta = np.asarray(step.theta, dtype=np.float64)
        initial = self.starting_delta(theta)
        theta_rc = theta[: self.parameters.size]
        coefficients, evaluator, nesting = self.market_pieces(theta_rc, workspace)
        solved = self.solve(evaluator, initial)
        if not solved.converged.all():
            solved = self._retry(evaluator, initial, solved)
        shape = self.mask.shape
        result = ChunkResult(
            solved.delta,
            solved.converged.copy(),
            solved.iterations,
            solved.evaluations,
            np.zeros((*shape, self.n_theta)) if step.gradient else None,
            np.zeros(shape) if self.supply is not None else None,
            np.zeros((*shape, self.n_theta)) if self.supply is not None and step.gradient else None,
        )
        inverse = None
        if solved.converged.all() and ((step.gradient and self.n_theta) or self.supply):
            probabilities = self._probabilities(evaluator, solved.delta, step, workspace)
            if step.gradient and self.n_theta:
                inverse = self._delta_jacobian(
                    theta_rc, coefficients, nesting, probabilities, solved.delta, result, workspace
                )
            markups_by_market = False
            if self.supply is not None:
                markups_by_market = self._markups(
                    theta, coefficients, nesting, probabilities, solved.delta, result
                )
            result.by_market = self._inverted_by_market and (
                self.supply is None or markups_by_market
            )
        if inverse is not None:
            self._keep_one_inverse()
        elif step.gradient:
            # As before the chunks existed: a gradient evaluation without ∂δ/∂θ leaves a zero
            # inverse, so the next Newton solve falls back to the contraction at once.
            inverse = np.zeros((shape[0], shape[1], shape[1]))
        self.pending = (
            step.number,
            ChunkState(
                solved.delta, theta.copy(), result.jacobian, inverse if step.gradient else None
            ),
        )
        return result

    def _probabilities(
        self, evaluator: ShareEvaluator, delta: np.ndarray, step: ChunkStep, workspace: Workspace
    ) -> Probabilities:
        """Factored probabilities at the solved δ; with ∂δ/∂θ to come, also x̄ = Σ_j P_j X2_j
        (summed in the pass that forms the nest sums, into a work array of the thread), unless
        ∂s/∂θ and ∂s/∂δ are formed together, which sum x̄ themselves (see
        :meth:`_joint_jacobians`)."""
        if not (step.gradient and self.parameters.random_positions().size) or (
            self._joint_jacobians(evaluator.nesting)
        ):
            return evaluator.probabilities(delta, factored=True)
        shape = (self.mask.shape[0], 1 + self.characteristics.shape[2], self.weights.shape[1])
        return evaluator.probabilities(
            delta,
            factored=True,
            characteristics=self.characteristics,
            buffer=workspace.get("probability_sums", shape),
        )

    def _keep_one_inverse(self) -> None:
        """Drop the accepted Newton inverse now that a pending one exists.

        The ``[J, J]`` inverse is the largest state a market keeps between evaluations (0.4 GB
        at a million products in markets of 50); one per market is enough. Accepted, the
        pending inverse replaces it anyway; rejected (the evaluation failed in another chunk),
        it stands in for it. A fit whose evaluations all succeed follows the same path.
        """
        if self.accepted.inverse is not None:
            self.accepted = replace(self.accepted, inverse=None)
            self._gave_way = True

    def nesting(self, rho: np.ndarray) -> Nesting | TwoLevelNesting:
        """Nesting of the chunk's markets at nesting parameters ``rho``."""
        if not self.parameters.has_rho:
            return Nesting.unnested(self.mask.shape)
        upper_of_lower = self.parameters.lower_to_upper
        if upper_of_lower is not None:
            # Two-level nests: codes are the lower nests, ρ is [ρ_upper, ρ_lower].
            upper_count = int(upper_of_lower.max()) + 1
            return TwoLevelNesting(self.codes, upper_of_lower, upper_count, rho[0], rho[1])
        return Nesting.from_codes(self.codes, self.n_nests, rho)

    def market_pieces(self, theta: np.ndarray, workspace: Workspace | None = None):
        """Agent coefficients, share evaluator and nesting at θ (Σ, Π, ρ).

        Without a ``workspace`` the agent factor is allocated anew (for a second evaluator
        alive at the same time).
        """
        _, _, rho = self.parameters.unpack(theta)
        coefficients, _ = self.parameters.coefficients(theta, self.nodes, self.demographics)
        # X2 is zero in padding, so μ is too; checking the factors is cheaper than μ itself.
        with np.errstate(over="ignore", invalid="ignore"):
            peak = np.abs(coefficients).max(axis=(1, 2), initial=0.0)  # 0 without X2 columns
            scale = peak * np.abs(self.characteristics).max(axis=(1, 2), initial=0.0)
        if not np.isfinite(scale).all() or (scale > 1e300).any():
            bad = self.labels[~(scale <= 1e300)]
            raise BLPInputError(
                f"agent utilities overflow at theta={theta.tolist()} in markets "
                f"{bad[:5].tolist()}: the random coefficients are too large for the scale of "
                "the characteristics (rescale the data or tighten the bounds)"
            )
        nesting = self.nesting(rho)
        if isinstance(nesting, TwoLevelNesting):
            evaluator = TwoLevelShareEvaluator.from_coefficients(
                self.characteristics, coefficients, self.weights, self.mask, nesting
            )
            return coefficients, evaluator, nesting
        evaluator = ShareEvaluator.from_coefficients(
            self.characteristics,
            coefficients,
            self.weights,
            self.mask,
            nesting,
            out=None
            if workspace is None
            else workspace.get("factor", (*self.mask.shape, coefficients.shape[1])),
            buffers=None if workspace is None else workspace.get,
        )
        return coefficients, evaluator, nesting

    def solve(self, evaluator: ShareEvaluator, initial: np.ndarray) -> FixedPointResult:
        """Solve for δ with the configured fixed-point method.

        ``"newton"`` reuses the inverse of ∂s/∂δ from the last gradient evaluation (see
        :func:`~blpmodels.kernel.delta.solve_delta_hybrid`); ``"squarem"`` runs the contraction.
        """
        if self.fp_method == "squarem":
            return solve_delta(
                evaluator,
                self.log_shares,
                initial,
                tol=self.fp_tol,
                max_evaluations=self.fp_max_evaluations,
            )
        return solve_delta_hybrid(
            evaluator,
            self.log_shares,
            initial,
            self.accepted.inverse,
            tol=self.fp_tol,
            max_evaluations=self.fp_max_evaluations,
        )

    def _retry(
        self, evaluator: ShareEvaluator, initial: np.ndarray, result: FixedPointResult
    ) -> FixedPointResult:
        """Solve failed markets again by contraction from safe starts.

        A start extrapolated from the last θ (or a Newton step from it) can land where the
        shares are not representable; the last δ that converged and the logit δ are safe
        starts, so one bad trial θ cannot poison the evaluations after it.
        """
        for start in (self.accepted.delta, self.logit_delta):
            failed = np.flatnonzero(~result.converged)
            if failed.size == 0:
                break
            if np.array_equal(start[failed], initial[failed]):
                continue
            again = solve_delta(
                evaluator.subset(failed),
                self.log_shares[failed],
                start[failed],
                tol=self.fp_tol,
                max_evaluations=self.fp_max_evaluations,
            )
            result = result.replace_markets(failed, again)
        return result

    def _delta_jacobian(
        self,
        theta_rc: np.ndarray,
        coefficients: np.ndarray,
        nesting: Nesting,
        probabilities: Any,
        delta: np.ndarray,
        result: ChunkResult,
        workspace: Workspace,
    ) -> np.ndarray | woodbury.LowRankInverse:
        """∂δ/∂θ = −(∂s/∂δ)⁻¹ ∂s/∂θ into ``result`` (zero for moved X1 coefficients).

        Returns the inverse of ∂log s/∂δ for the next evaluation's Newton solver.
        """
        if isinstance(nesting, TwoLevelNesting):
            return self._two_level_delta_jacobian(coefficients, nesting, probabilities, result)
        mask = self.mask
        by_theta = np.zeros((*mask.shape, self.n_theta))
        random_positions = self.parameters.random_positions()
        few_agents = self.weights.shape[1] <= woodbury.WOODBURY_CROSSOVER * mask.shape[1]
        joint = self._joint_jacobians(nesting)
        by_delta = None
        if random_positions.size:
            factors, positions = self._agent_factors(coefficients)
            arguments = (probabilities, self.weights, nesting, mask, self.characteristics, factors)
            if joint:
                pieces, by_delta = theta_and_delta_jacobians(*arguments, buffers=workspace.get)
            else:
                pieces = theta_jacobian(*arguments, buffers=workspace.get)
            for piece, columns in zip(pieces, positions, strict=True):
                by_theta[:, :, columns] = piece
        rho_positions = self.parameters.rho_positions()
        if rho_positions.size:
            by_rho = rho_jacobian(
                probabilities,
                delta,
                None,
                self.weights,
                nesting,
                mask,
                characteristics=self.characteristics,
                coefficients=coefficients,
            )
            if self.parameters.rho.size == 1:
                by_rho = by_rho.sum(axis=2, keepdims=True)
            free = [row for kind, row, _ in self.parameters.kinds if kind == "rho"]
            by_theta[:, :, rho_positions] = by_rho[:, :, free]
        if few_agents and not nesting.nested:
            # Few agents, many products: ∂s/∂δ is diagonal minus rank I (Woodbury, O(J·I²)).
            low_rank = woodbury.woodbury_delta_jacobian(probabilities, self.weights, mask, by_theta)
            if low_rank is not None:
                result.jacobian[...] = low_rank[0]
                return low_rank[1]
        inverse = None
        if mask.shape[1] >= symmetric_jacobians.INVERSE_LOOP_WIDTH and not nesting.nested:
            # Wide markets: ∂s/∂δ by symmetric rank updates and Cholesky, market by market.
            inverse = symmetric_jacobians.delta_jacobian_inverse(probabilities, self.weights, mask)
            self._inverted_by_market = inverse is not None
        if inverse is None:
            inverse = self._dense_delta_inverse(nesting, probabilities, workspace, by_delta)
        result.jacobian[...] = -np.matmul(inverse, by_theta)
        # The Newton solver of the next evaluation wants (∂log s/∂δ)⁻¹ = (∂s/∂δ)⁻¹ diag(s).
        inverse *= np.where(mask, probabilities.shares, 1.0)[:, None, :]
        return inverse

    def _agent_factors(self, coefficients: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """:meth:`~blpmodels.data.parameters.NonlinearParameters.agent_factors`, kept while
        they are data only (every random coefficient normal: columns of the nodes and
        demographics, independent of θ). Forming them gathered strided columns, 0.3 ms of
        each exercise-2 gradient evaluation (2026-12-07). The kept arrays are only read."""
        parameters, nodes, demographics = self.parameters, self.nodes, self.demographics
        kept = self._kept_factors
        if (
            kept is not None
            and kept[0] is parameters
            and kept[1] is nodes
            and kept[2] is demographics
        ):
            return kept[3]
        factors = parameters.agent_factors(coefficients, nodes, demographics)
        if all(kind == "normal" for kind in parameters.rc_types):
            self._kept_factors = (parameters, nodes, demographics, factors)
        return factors

    def _joint_jacobians(self, nesting: Nesting | TwoLevelNesting) -> bool:
        """Whether :meth:`_delta_jacobian` forms ∂s/∂θ and ∂s/∂δ in one product
        (:func:`~blpmodels.kernel.jacobians.theta_and_delta_jacobians`): an unnested model
        whose ∂s/∂δ is inverted densely (neither Woodbury's low-rank form nor the symmetric
        loop of wide markets), in markets large enough for the passes over P to matter
        (:data:`~blpmodels.kernel.jacobians.JOINT_ENTRIES`)."""
        if isinstance(nesting, TwoLevelNesting) or nesting.nested:
            return False
        n_products, n_agents = self.mask.shape[1], self.weights.shape[1]
        few_agents = n_agents <= woodbury.WOODBURY_CROSSOVER * n_products
        wide = n_products >= symmetric_jacobians.INVERSE_LOOP_WIDTH
        large = n_products * n_agents >= jacobians.JOINT_ENTRIES
        return large and not (few_agents or wide)

    def _dense_delta_inverse(
        self,
        nesting: Nesting,
        probabilities: Any,
        workspace: Workspace,
        by_delta: np.ndarray | None = None,
    ) -> np.ndarray:
        """``[T, J, J]`` (∂s/∂δ)⁻¹ of all markets at once (identity in padding), by LU; of
        ``by_delta`` (∂s/∂δ, overwritten) if given.

        numpy's batched LU releases the GIL. Cholesky market by market (LAPACK ``dpotrf`` and
        ``dpotri`` through scipy, which hold it) took less CPU on exercise 2 (0.66 against
        0.92 ms for the 94 markets) but slowed the default two market threads: the whole fit
        took 113-158 ms wall against 108-122 ms with LU (eight alternating runs of five fits,
        best of each, 2026-12-07)."""
        mask = self.mask
        if by_delta is None:
            by_delta = share_jacobian(
                probabilities,
                self.weights,
                nesting,
                mask,
                workspace=workspace.get("scratch", probabilities.factors[0].shape)
                if probabilities.factors is not None
                else None,
            )
        index = np.arange(mask.shape[1])
        by_delta[:, index, index] += ~mask
        return np.linalg.inv(by_delta)

    def _two_level_delta_jacobian(
        self,
        coefficients: np.ndarray,
        nesting: TwoLevelNesting,
        probabilities: Any,
        result: ChunkResult,
    ) -> np.ndarray:
        """∂δ/∂θ of the two-level RCNL into ``result`` (see
        :func:`~blpmodels.kernel.two_level_rcnl.two_level_delta_jacobian`)."""
        parameters = self.parameters
        factors = None
        if parameters.random_positions().size:
            factors = parameters.agent_factors(coefficients, self.nodes, self.demographics)
        rho_columns = np.full(2, -1, dtype=np.intp)
        for position, (kind, row, _) in enumerate(parameters.kinds):
            if kind == "rho":
                rho_columns[row] = position
        return two_level_delta_jacobian(
            probabilities,
            self.weights,
            nesting,
            self.mask,
            self.characteristics,
            factors,
            rho_columns,
            result.jacobian,
        )

    # ------------------------------------------------------------------ supply
    def price_derivative(self, theta: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """``[T, J, I]`` D_ji = ∂V_ji/∂p_j: ∂X1/∂p·β_p plus ∂X2/∂p times agent coefficients."""
        beta_moved = theta[self.parameters.size :]
        mean = self.supply["price_x1"] @ beta_moved
        return mean[:, :, None] + np.matmul(
            self.supply["price_x2"], np.swapaxes(coefficients, 1, 2)
        )

    def _markups(
        self,
        theta: np.ndarray,
        coefficients: np.ndarray,
        nesting: Nesting,
        probabilities: Any,
        delta: np.ndarray,
        result: ChunkResult,
    ) -> bool:
        """Markups η and (with the gradient) ∂η/∂θ into ``result``; whether B was factored
        market by market (:meth:`_symmetric_markups`)."""
        supply = self.supply
        ownership = supply["ownership"]
        derivative = None  # the [T, J, I] D, formed only off the symmetric path
        factored = self._symmetric_markups(theta, coefficients, nesting, probabilities)
        if factored is None:
            derivative = self.price_derivative(theta, coefficients)
            price_jacobian = share_jacobian(
                probabilities, self.weights, nesting, self.mask, derivative
            )
            eta, system = markups(price_jacobian, probabilities.shares, ownership, self.mask)
        else:
            eta, system = factored
        result.eta[...] = eta
        if result.jacobian is None or not self.n_theta:
            return factored is not None
        if not self.parameters.has_rho:
            # The symmetric path forms P from the factors its system holds, market by market.
            symmetric = factored is not None and factored[1].probability_factors is not None
            result.eta_jacobian[...] = markup_jacobian(
                None if symmetric else probabilities.unconditional,
                self.weights,
                derivative,
                eta,
                ownership,
                system,
                result.jacobian,
                self.characteristics,
                supply["price_x2"],
                *self._markup_directions(coefficients),
                firms=supply["firms"],
            )
            return factored is not None
        for position in range(self.n_theta):
            result.eta_jacobian[:, :, position] = self._nested_markup_derivative(
                theta, delta, result.jacobian[:, :, position], position, eta, system
            )
        return factored is not None

    def _symmetric_markups(
        self, theta: np.ndarray, coefficients: np.ndarray, nesting: Nesting, probabilities: Any
    ) -> tuple[np.ndarray, symmetric_jacobians.CholeskyMarkupSystem] | None:
        """Markups and B factored by Cholesky market by market, when B is symmetric negative
        definite: wide markets, no nests, 0/1 ownership by firm and a price derivative of
        utility that varies by agent only (else None). The agents' slopes are read off the
        characteristics' price derivatives, so this path never forms the ``[T, J, I]`` D."""
        if (
            self.mask.shape[1] < symmetric_jacobians.MARKUP_LOOP_WIDTH
            or nesting.nested
            or self.supply["firms"] is None
        ):
            return None
        slopes = symmetric_jacobians.agent_price_slopes(
            self.supply["price_x1"] @ theta[self.parameters.size :],
            self.supply["price_x2"],
            coefficients,
            self.mask,
        )
        if slopes is None:
            return None
        firms = self.supply["firms"]
        if self._firm_order is None or self._firm_order[0] is not firms:
            self._firm_order = (firms, symmetric_jacobians.firm_order(firms, self.mask))
        return symmetric_jacobians.cholesky_markups(
            probabilities, self.weights, slopes, firms, self.mask, order=self._firm_order[1]
        )

    def _markup_directions(
        self, coefficients: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each θ entry, its agent factor f ``[T, I, L]``, the shift e of the price
        derivatives ``[T, J, L]`` (∂X1/∂p for moved X1 coefficients) and the X2 column it
        multiplies (−1: none); see :func:`~blpmodels.kernel.markups.markup_jacobian`."""
        mask = self.mask
        n_agents = coefficients.shape[1]
        factors_out = np.zeros((mask.shape[0], n_agents, self.n_theta))
        shift = np.zeros((*mask.shape, self.n_theta))
        column_of = np.full(self.n_theta, -1, dtype=np.intp)
        if self.parameters.size:
            factors, positions = self.parameters.agent_factors(
                coefficients, self.nodes, self.demographics
            )
            for column, (factor, places) in enumerate(zip(factors, positions, strict=True)):
                for offset, position in enumerate(places):
                    factors_out[:, :, position] = factor[:, offset, :]
                    column_of[position] = column
        shift[:, :, self.parameters.size :] = self.supply["price_x1"]
        return factors_out, shift, column_of

    def _nested_markup_derivative(
        self,
        theta: np.ndarray,
        delta: np.ndarray,
        delta_direction: np.ndarray,
        position: int,
        eta: np.ndarray,
        system: np.ndarray,
    ) -> np.ndarray:
        """∂η/∂θ_l for nested models: central differences of B·η along (∂δ/∂θ_l, e_l)."""
        ownership = self.supply["ownership"]
        step = 1e-5 * max(1.0, abs(float(theta[position])))

        def system_times_eta(t: float) -> np.ndarray:
            shifted = theta.copy()
            shifted[position] += t
            coefficients, evaluator, nesting = self.market_pieces(shifted[: self.parameters.size])
            probabilities = evaluator.probabilities(delta + t * delta_direction)
            derivative = self.price_derivative(shifted, coefficients)
            jacobian = share_jacobian(probabilities, self.weights, nesting, self.mask, derivative)
            return np.matmul(ownership * np.swapaxes(jacobian, 1, 2), eta[:, :, None])[:, :, 0]

        return directional_markup_derivative(system_times_eta, system, step)
