"""The nonlinear GMM objective of BLP models and its analytic gradient.

For given θ = (Σ, Π, ρ), :class:`NonlinearObjective` solves the δ contraction in all markets
(warm-started from the last solution), concentrates out β by linear IV-GMM on the absorbed
δ, and returns q(θ) = N·ḡ'Wḡ. The gradient follows from the implicit function theorem:
∂δ/∂θ = −(∂s/∂δ)⁻¹ ∂s/∂θ per market, absorbed like δ, and ∂q/∂θ = 2 ξ'Z W Z' ∂δ̃/∂θ / N.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .agents import AgentDesign
from .covariance import moment_covariance
from .exceptions import BLPInputError
from .gmm import inverse_weight_matrix
from .kernel import (
    FixedPointResult,
    Nesting,
    ShareEvaluator,
    rho_jacobian,
    share_jacobian,
    solve_delta,
    solve_delta_hybrid,
    theta_jacobian,
)
from .moments import ProductBlock, StackedGMM
from .parameters import NonlinearParameters
from .products import ProductDesign

__all__ = ["Evaluation", "NonlinearObjective", "check_fixed_point_options", "default_chunk_size"]


def check_fixed_point_options(fp_tol: Any, fp_max_evaluations: Any, fp_method: Any) -> None:
    """Validate the δ solver settings before any work.

    Raises
    ------
    BLPInputError
        ``fp_tol`` not a positive finite number, ``fp_max_evaluations`` not a positive
        integer, or an unknown ``fp_method``.

    Examples
    --------
    >>> check_fixed_point_options(1e-14, 5000, "newton")
    """
    if (
        isinstance(fp_tol, bool)
        or not isinstance(fp_tol, (numbers.Real, np.floating))
        or not np.isfinite(fp_tol)
        or fp_tol <= 0
    ):
        raise BLPInputError(f"fp_tol must be a positive number, got {fp_tol!r}")
    if (
        isinstance(fp_max_evaluations, bool)
        or not isinstance(fp_max_evaluations, numbers.Integral)
        or fp_max_evaluations < 1
    ):
        raise BLPInputError(
            f"fp_max_evaluations must be a positive integer, got {fp_max_evaluations!r}"
        )
    if fp_method not in ("newton", "squarem"):
        raise BLPInputError(f"fp_method must be 'newton' or 'squarem', got {fp_method!r}")


def default_chunk_size(n_products: int, n_agents: int, budget: float = 1e7) -> int:
    """Markets per kernel call so that a chunk's ``[T, J, I]`` array holds ~``budget`` values."""
    return max(1, int(budget // max(1, n_products * n_agents)))


def default_threads(n_markets: int, n_products: int, n_agents: int) -> int:
    """Threads for market chunks: the available cores (up to 4) when the arrays are large.

    Below about 2e5 agent-product values per evaluation, thread hand-offs cost more than the
    arithmetic they split.
    """
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if n_markets < 2 or n_markets * n_products * n_agents < 2e5:
        return 1
    return max(1, min(4, cores or 1, n_markets))


@dataclass(eq=False)
class Evaluation:
    """Everything computed at one θ.

    Attributes
    ----------
    theta : numpy.ndarray
        Parameters.
    objective : float
        N·ḡ'Wḡ (``inf`` when the contraction failed).
    gradient : numpy.ndarray or None
        ∂q/∂θ.
    delta : numpy.ndarray
        ``(N,)`` mean utilities.
    beta : numpy.ndarray
        Concentrated linear coefficients.
    xi : numpy.ndarray
        ``(N,)`` structural errors (fixed effects absorbed).
    delta_jacobian : numpy.ndarray or None
        ``(N, P)`` ∂δ/∂θ (not absorbed).
    converged : numpy.ndarray
        ``(T,)`` contraction converged per market.
    iterations, evaluations : numpy.ndarray
        ``(T,)`` SQUAREM iterations and share evaluations per market.
    seconds : float
        Time spent.
    absorbed_jacobian : numpy.ndarray or None
        ``(N, P)`` ∂δ/∂θ with the fixed effects absorbed.
    """

    theta: np.ndarray
    objective: float
    gradient: np.ndarray | None
    delta: np.ndarray
    beta: np.ndarray
    xi: np.ndarray
    delta_jacobian: np.ndarray | None
    converged: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray
    seconds: float = 0.0
    absorbed_jacobian: np.ndarray | None = None

    @property
    def success(self) -> bool:
        """Whether every market's contraction converged to finite values."""
        return bool(self.converged.all()) and np.isfinite(self.objective)


@dataclass(eq=False)
class NonlinearObjective:
    """GMM objective q(θ) with warm-started δ and an analytic gradient.

    Parameters
    ----------
    design : ProductDesign
        Product side (absorption and X2 already built).
    agents : AgentDesign
        Agents in the product markets' layout.
    parameters : NonlinearParameters
        Structure of θ.
    W : numpy.ndarray
        Weighting matrix.
    nest_codes : numpy.ndarray, optional
        ``(N,)`` nest index of each product (RCNL).
    fp_tol : float
        Contraction tolerance (∞-norm of the δ update).
    fp_max_evaluations : int
        Share evaluations per market before the contraction gives up.
    fp_method : {"newton", "squarem"}
        Fixed-point algorithm: Newton-type steps safeguarded by SQUAREM, or SQUAREM alone.
    threads : int, optional
        Market chunks evaluated in parallel threads (1: sequential); by default the available
        cores (up to 4) for large problems.
    chunk_size : int, optional
        Markets per kernel call (bounds memory); by default about 1e7 values per chunk.
    covariance : callable, optional
        ``covariance(Z, ξ) -> S`` with the fit's covariance type (default: robust), for the
        weighting-matrix update.
    """

    design: ProductDesign
    agents: AgentDesign
    parameters: NonlinearParameters
    W: np.ndarray
    nest_codes: np.ndarray | None = None
    fp_tol: float = 1e-14
    fp_max_evaluations: int = 5000
    chunk_size: int | None = None
    fp_method: str = "newton"
    threads: int | None = None
    covariance: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    gmm: StackedGMM = field(init=False)
    evaluations: list[Evaluation] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        layout = self.design.layout
        self.log_shares = layout.pad(np.log(self.design.shares))
        self.characteristics = layout.pad(self.design.random.values)
        self.n_nests = 1 if self.nest_codes is None else int(self.nest_codes.max()) + 1
        self.codes = layout.pad(
            np.zeros(self.design.nobs, dtype=np.intp)
            if self.nest_codes is None
            else self.nest_codes
        )
        if self.covariance is None:
            self.covariance = lambda Z, xi: moment_covariance(Z, xi, "robust")
        self.reset()
        if self.threads is None:
            self.threads = default_threads(layout.n_markets, layout.width, self.agents.layout.width)
        if self.chunk_size is None:
            self.chunk_size = default_chunk_size(layout.width, self.agents.layout.width)
            if self.threads > 1:
                # At least one chunk per thread.
                self.chunk_size = min(self.chunk_size, -(-layout.n_markets // self.threads))
        self.chunks = layout.chunks(self.chunk_size)
        self._pool = None
        self.blocks = [ProductBlock("demand", self.design.X_absorbed, self.design.Z_absorbed)]
        self.set_weighting_matrix(self.W)
        self.count = 0
        self.failures = 0
        self.total_iterations = 0
        self.total_evaluations = 0

    def reset(self) -> None:
        """Forget warm starts: the next evaluation starts δ at the logit δ."""
        self._buffers: dict[tuple[str, int, tuple[int, ...]], np.ndarray] = {}
        self.logit_delta = self.design.layout.pad(self.design.logit_delta())
        self.last_delta = self.logit_delta.copy()
        self.last_theta: np.ndarray | None = None
        self.last_delta_jacobian: np.ndarray | None = None
        self.last_inverse: np.ndarray | None = None

    def buffer(self, name: str, markets: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A reusable work array per chunk: large ``[T, J, I]`` arrays are allocated once."""
        key = (name, int(markets[0]), shape)
        if key not in self._buffers:
            self._buffers[key] = np.empty(shape)
        return self._buffers[key]

    def starting_delta(self, theta: np.ndarray) -> np.ndarray:
        """First-order prediction δ(θ_last) + ∂δ/∂θ (θ − θ_last) when available."""
        if self.last_theta is None or self.last_delta_jacobian is None:
            return self.last_delta
        predicted = self.last_delta + self.last_delta_jacobian @ (theta - self.last_theta)
        return predicted if np.isfinite(predicted).all() else self.last_delta

    def set_weighting_matrix(self, W: np.ndarray) -> None:
        """Use a new weighting matrix (e.g. for the second GMM step)."""
        self.W = W
        self.gmm = StackedGMM(self.blocks, W)
        self._cache: list[Evaluation] = []

    def nesting(self, markets: np.ndarray, rho: np.ndarray) -> Nesting:
        """Nesting for some markets at nesting parameters ``rho``."""
        mask = self.design.layout.mask[markets]
        if not self.parameters.has_rho:
            return Nesting.unnested(mask.shape)
        return Nesting.from_codes(self.codes[markets], self.n_nests, rho)

    def market_pieces(self, theta: np.ndarray, markets: np.ndarray):
        """Agent coefficients, share evaluator and nesting for some markets at θ."""
        _, _, rho = self.parameters.unpack(theta)
        agents = self.agents
        coefficients, _ = self.parameters.coefficients(
            theta, agents.nodes[markets], agents.demographics[markets]
        )
        mask = self.design.layout.mask[markets]
        characteristics = self.characteristics[markets]
        # X2 is zero in padding, so μ is too; checking the factors is cheaper than μ itself.
        with np.errstate(over="ignore", invalid="ignore"):
            scale = np.abs(coefficients).max(axis=(1, 2)) * np.abs(characteristics).max(axis=(1, 2))
        if not np.isfinite(scale).all() or (scale > 1e300).any():
            bad = self.design.layout.market_labels[markets][~(scale <= 1e300)]
            raise BLPInputError(
                f"agent utilities overflow at theta={theta.tolist()} in markets "
                f"{bad[:5].tolist()}: the random coefficients are too large for the scale of "
                "the characteristics (rescale the data or tighten the bounds)"
            )
        nesting = self.nesting(markets, rho)
        evaluator = ShareEvaluator.from_coefficients(
            characteristics,
            coefficients,
            agents.weights[markets],
            mask,
            nesting,
            out=self.buffer("factor", markets, (*mask.shape, coefficients.shape[1])),
        )
        return coefficients, evaluator, nesting

    def solve(
        self, evaluator: ShareEvaluator, markets: np.ndarray, initial: np.ndarray
    ) -> FixedPointResult:
        """Solve for δ in some markets with the configured fixed-point method.

        ``"newton"`` reuses the inverse of ∂s/∂δ from the last gradient evaluation (see
        :func:`~blpmodels.kernel.solve_delta_hybrid`); ``"squarem"`` runs the contraction.
        """
        log_shares = self.log_shares[markets]
        if self.fp_method == "squarem":
            return solve_delta(
                evaluator,
                log_shares,
                initial,
                tol=self.fp_tol,
                max_evaluations=self.fp_max_evaluations,
            )
        inverse = None if self.last_inverse is None else self.last_inverse[markets]
        return solve_delta_hybrid(
            evaluator,
            log_shares,
            initial,
            inverse,
            tol=self.fp_tol,
            max_evaluations=self.fp_max_evaluations,
        )

    def _retry(
        self,
        evaluator: ShareEvaluator,
        markets: np.ndarray,
        initial: np.ndarray,
        result: FixedPointResult,
    ) -> FixedPointResult:
        """Solve failed markets again by contraction from safe starts.

        A start extrapolated from the last θ (or a Newton step from it) can land where the
        shares are not representable; the last δ that converged and the logit δ are safe
        starts, so one bad trial θ cannot poison the evaluations after it.
        """
        log_shares = self.log_shares[markets]
        for start in (self.last_delta[markets], self.logit_delta[markets]):
            failed = np.flatnonzero(~result.converged)
            if failed.size == 0:
                break
            if np.array_equal(start[failed], initial[failed]):
                continue
            again = solve_delta(
                evaluator.subset(failed),
                log_shares[failed],
                start[failed],
                tol=self.fp_tol,
                max_evaluations=self.fp_max_evaluations,
            )
            result = result.replace_markets(failed, again)
        return result

    def _executor(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.threads)
        return self._pool

    def _evaluate_chunk(
        self,
        theta: np.ndarray,
        markets: np.ndarray,
        initial: np.ndarray,
        gradient: bool,
        outputs: tuple,
    ) -> None:
        """Solve δ and its Jacobians in one chunk of markets, writing into ``outputs``."""
        delta_padded, jacobian_padded, inverse_padded, converged, iterations, evaluations = outputs
        layout = self.design.layout
        n_params = self.parameters.size
        coefficients, evaluator, nesting = self.market_pieces(theta, markets)
        mask = layout.mask[markets]
        result = self.solve(evaluator, markets, initial)
        if not result.converged.all():
            result = self._retry(evaluator, markets, initial, result)
        delta_padded[markets] = result.delta
        converged[markets] = result.converged
        iterations[markets] = result.iterations
        evaluations[markets] = result.evaluations
        if not gradient or n_params == 0 or not result.converged.all():
            return
        weights = self.agents.weights[markets]
        probabilities = evaluator.probabilities(result.delta, factored=True)
        by_delta = share_jacobian(
            probabilities,
            weights,
            nesting,
            mask,
            workspace=self.buffer("scratch", markets, evaluator.agent_factor.shape),
        )
        by_theta = np.zeros((*mask.shape, n_params))
        random_positions = self.parameters.random_positions()
        if random_positions.size:
            factors, positions = self.parameters.agent_factors(
                coefficients, self.agents.nodes[markets], self.agents.demographics[markets]
            )
            pieces = theta_jacobian(
                probabilities, weights, nesting, mask, self.characteristics[markets], factors
            )
            for piece, columns in zip(pieces, positions, strict=True):
                by_theta[:, :, columns] = piece
        rho_positions = self.parameters.rho_positions()
        if rho_positions.size:
            by_rho = rho_jacobian(probabilities, result.delta, evaluator.mu, weights, nesting, mask)
            if self.parameters.rho.size == 1:
                by_rho = by_rho.sum(axis=2, keepdims=True)
            free = [row for kind, row, _ in self.parameters.kinds if kind == "rho"]
            by_theta[:, :, rho_positions] = by_rho[:, :, free]
        index = np.arange(mask.shape[1])
        by_delta[:, index, index] += ~mask
        inverse = np.linalg.inv(by_delta)
        jacobian_padded[markets] = -np.matmul(inverse, by_theta)
        # The Newton solver of the next evaluation wants (∂log s/∂δ)⁻¹ = (∂s/∂δ)⁻¹ diag(s).
        inverse *= np.where(mask, probabilities.shares, 1.0)[:, None, :]
        inverse_padded[markets] = inverse

    def evaluate(self, theta: np.ndarray, gradient: bool = True) -> Evaluation:
        """Objective (and gradient) at θ; warm-starts the next call from this δ on success.

        Parameters
        ----------
        theta : numpy.ndarray
            Free nonlinear parameters.
        gradient : bool
            Also compute ∂q/∂θ and ∂δ/∂θ.

        Returns
        -------
        Evaluation
        """
        start = time.perf_counter()
        theta = np.asarray(theta, dtype=np.float64)
        for cached in self._cache:
            # Optimizers re-request points (the start, the accepted step); reuse them.
            if np.array_equal(cached.theta, theta) and (
                cached.gradient is not None or not gradient
            ):
                return cached
        layout = self.design.layout
        n_params = self.parameters.size
        delta_padded = np.zeros_like(self.last_delta)
        jacobian_padded = np.zeros((*self.last_delta.shape, n_params)) if gradient else None
        inverse_padded = (
            np.zeros((*self.last_delta.shape, self.last_delta.shape[1])) if gradient else None
        )
        initial = self.starting_delta(theta)
        converged = np.zeros(layout.n_markets, dtype=bool)
        iterations = np.zeros(layout.n_markets, dtype=np.int64)
        share_evaluations = np.zeros(layout.n_markets, dtype=np.int64)
        outputs = (
            delta_padded,
            jacobian_padded,
            inverse_padded,
            converged,
            iterations,
            share_evaluations,
        )

        def run(markets: np.ndarray) -> None:
            self._evaluate_chunk(theta, markets, initial[markets], gradient, outputs)

        if self.threads > 1 and len(self.chunks) > 1:
            # numpy releases the GIL in the large array operations, so market chunks run in
            # parallel threads; each writes only its own markets' slices.
            list(self._executor().map(run, self.chunks))
        else:
            for markets in self.chunks:
                run(markets)

        success = bool(converged.all()) and np.isfinite(delta_padded[layout.mask]).all()
        delta = layout.flatten(delta_padded)
        self.total_iterations += int(iterations.sum())
        self.total_evaluations += int(share_evaluations.sum())
        if not success:
            self.failures += 1
            nan = np.full(self.design.nobs, np.nan)
            evaluation = Evaluation(
                theta,
                np.inf,
                None,
                delta,
                np.full(self.design.X.shape[1], np.nan),
                nan,
                None,
                converged,
                iterations,
                share_evaluations,
                time.perf_counter() - start,
            )
            self.count += 1
            return evaluation
        self.last_delta = delta_padded
        self.last_theta = theta.copy()
        if gradient:
            self.last_delta_jacobian = jacobian_padded
            self.last_inverse = inverse_padded
        else:
            self.last_delta_jacobian = None
        solution = self.gmm.solve([self.design.residualize(delta)])
        beta, xi, objective = solution.coefficients[0], solution.residuals[0], solution.objective
        delta_jacobian = None
        objective_gradient = None
        if gradient:
            delta_jacobian = (
                layout.flatten(jacobian_padded) if n_params else np.zeros((delta.size, 0))
            )
            absorbed = self.design.residualize(delta_jacobian) if n_params else delta_jacobian
            objective_gradient = self.gmm.gradient(solution, [absorbed])
        else:
            absorbed = None
        self.count += 1
        evaluation = Evaluation(
            theta,
            objective,
            objective_gradient,
            delta,
            beta,
            xi,
            delta_jacobian,
            converged,
            iterations,
            share_evaluations,
            time.perf_counter() - start,
            absorbed,
        )
        # Optimizers ask again for points they have seen (the start, an accepted step).
        self._cache = [*self._cache[-3:], evaluation]
        return evaluation

    def moment_jacobian(self, evaluation: Evaluation) -> np.ndarray:
        """``(M, K1 + P)`` Jacobian of the mean moments ḡ = Z'ξ/N in (β, θ) at an evaluation.

        Examples
        --------
        >>> G = objective.moment_jacobian(objective.evaluate(theta))  # doctest: +SKIP
        """
        absorbed = evaluation.absorbed_jacobian
        if absorbed is None:
            raise ValueError("the evaluation was made without its gradient")
        return self.gmm.moment_jacobian([absorbed])

    def moment_covariance(self, evaluation: Evaluation) -> np.ndarray:
        """S, the covariance of the per-product moments z_j ξ_j, with the fit's ``cov_type``."""
        return self.covariance([block.Z for block in self.blocks], [evaluation.xi])

    def updated_weighting_matrix(self, evaluation: Evaluation) -> np.ndarray:
        """S⁻¹ at an evaluation: the weighting matrix of the next GMM step."""
        return inverse_weight_matrix(self.moment_covariance(evaluation), "updated weighting matrix")
