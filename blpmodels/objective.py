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
import scipy.linalg

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
from .micro import MicroBlock, MicroEvaluation, MicroProbabilities
from .moments import ProductBlock, StackedGMM
from .parameters import NonlinearParameters
from .products import ProductDesign
from .supply_design import SupplyDesign
from .supply_moments import (
    directional_markup_derivative,
    firm_indicator,
    markup_jacobian,
    markups,
)

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
        ``(N, P)`` ∂y_D/∂θ with the fixed effects absorbed (y_D = δ minus the price terms
        whose coefficients are in θ).
    gamma, omega : numpy.ndarray or None
        Cost coefficients and ``(N,)`` cost shocks ω (cost fixed effects absorbed), with a
        supply side.
    markups : numpy.ndarray or None
        ``(N,)`` Bertrand–Nash markups η = p − c.
    supply_jacobian : numpy.ndarray or None
        ``(N, P)`` absorbed ∂f(c)/∂θ.
    failure : str or None
        Why θ could not be evaluated when δ was solved (e.g. non-positive log costs).
    micro : MicroEvaluation or None
        Micro moments (observed minus model values), their model values and θ-Jacobian.
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
    gamma: np.ndarray | None = None
    omega: np.ndarray | None = None
    markups: np.ndarray | None = None
    supply_jacobian: np.ndarray | None = None
    failure: str | None = None
    micro: MicroEvaluation | None = None

    @property
    def success(self) -> bool:
        """Whether every market's contraction converged to finite values."""
        return bool(self.converged.all()) and np.isfinite(self.objective) and self.failure is None

    @property
    def residuals(self) -> list[np.ndarray]:
        """Residuals of each moment block: [ξ] or [ξ, ω]."""
        return [self.xi] if self.omega is None else [self.xi, self.omega]

    @property
    def dependent_jacobians(self) -> list[np.ndarray]:
        """Absorbed ∂y_b/∂θ of each block (demand, then supply)."""
        if self.absorbed_jacobian is None:
            raise ValueError("the evaluation was made without its gradient")
        if self.supply_jacobian is None:
            return [self.absorbed_jacobian]
        return [self.absorbed_jacobian, self.supply_jacobian]


@dataclass(eq=False)
class _Outputs:
    """Arrays the market chunks of one evaluation write into (each its own markets)."""

    delta: np.ndarray
    jacobian: np.ndarray | None
    inverse: np.ndarray | None
    converged: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray
    eta: np.ndarray | None
    eta_jacobian: np.ndarray | None

    @classmethod
    def allocate(
        cls, shape: tuple[int, int], n_theta: int, gradient: bool, supply: bool
    ) -> _Outputs:
        n_markets, width = shape
        return cls(
            np.zeros(shape),
            np.zeros((*shape, n_theta)) if gradient else None,
            np.zeros((n_markets, width, width)) if gradient else None,
            np.zeros(n_markets, dtype=bool),
            np.zeros(n_markets, dtype=np.int64),
            np.zeros(n_markets, dtype=np.int64),
            np.zeros(shape) if supply else None,
            np.zeros((*shape, n_theta)) if supply and gradient else None,
        )


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
    supply : SupplyDesign, optional
        A supply side: cost moments Z_S'ω are stacked with the demand moments, and the
        coefficients of the X1 columns that read prices join θ (after Σ, Π, ρ), because the
        markups depend on them.
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
    supply: SupplyDesign | None = None
    micro: MicroBlock | None = None
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
        self._setup_price_terms()
        self.micro_model = (
            None
            if self.micro is None
            else MicroProbabilities(
                self.parameters,
                self.characteristics,
                self.agents,
                self.codes if self.parameters.has_rho else None,
                self.n_nests,
            )
        )
        self.blocks = [
            ProductBlock(
                "demand", self.design.X_absorbed[:, self.kept_columns], self.design.Z_absorbed
            )
        ]
        if self.supply is not None:
            self.blocks.append(
                ProductBlock("supply", self.supply.X_absorbed, self.supply.Z_absorbed)
            )
        self.set_weighting_matrix(self.W)
        self.count = 0
        self.failures = 0
        self.total_iterations = 0
        self.total_evaluations = 0

    def _setup_price_terms(self) -> None:
        """Which X1 coefficients move into θ, and the price derivatives of X1 and X2.

        Without a supply side every X1 coefficient is concentrated out. With one, the
        coefficients of the X1 columns that read prices are parameters of θ (markups depend
        on them), and D = ∂V/∂p is assembled from ∂X1/∂p and ∂X2/∂p, which are data.
        """
        design = self.design
        n_linear = design.X.shape[1]
        self.moved_columns = np.zeros(0, dtype=np.intp)
        self.kept_columns = np.arange(n_linear)
        if self.supply is None:
            self.n_theta = self.parameters.size
            return
        price = self.supply.price_column
        frame = design.data
        d_x1 = np.column_stack(
            [
                design.exog.derivative(frame, price, design.context),
                design.endog.derivative(frame, price, design.context),
            ]
        )
        moved = np.flatnonzero(np.any(d_x1 != 0, axis=0))
        self.moved_columns = moved
        self.kept_columns = np.setdiff1d(np.arange(n_linear), moved)
        layout = design.layout
        self.price_x1 = layout.pad(d_x1[:, moved])
        self.moved_x1_absorbed = design.X_absorbed[:, moved]
        self.moved_x1 = design.X[:, moved]
        self.price_x2 = layout.pad(design.random.derivative(frame, price, design.context))
        self.ownership = self.supply.ownership
        # Ω = HH' by firm: the markup Jacobian's ownership products cost F·J·I, not J²·I.
        self.firms = firm_indicator(self.ownership, layout.mask)
        self.n_theta = self.parameters.size + moved.size

    @property
    def moved_names(self) -> list[str]:
        """Names of the X1 coefficients that are parameters of θ (with a supply side)."""
        return [self.design.x_names[k] for k in self.moved_columns]

    def split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """θ as (Σ, Π, ρ entries; moved X1 coefficients)."""
        size = self.parameters.size
        return theta[:size], theta[size:]

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
        self.gmm = StackedGMM(self.blocks, W, 0 if self.micro is None else self.micro.size)
        self._cache: list[Evaluation] = []

    def nesting(self, markets: np.ndarray, rho: np.ndarray) -> Nesting:
        """Nesting for some markets at nesting parameters ``rho``."""
        mask = self.design.layout.mask[markets]
        if not self.parameters.has_rho:
            return Nesting.unnested(mask.shape)
        return Nesting.from_codes(self.codes[markets], self.n_nests, rho)

    def market_pieces(self, theta: np.ndarray, markets: np.ndarray, reuse: bool = True):
        """Agent coefficients, share evaluator and nesting for some markets at θ (Σ, Π, ρ).

        ``reuse=False`` allocates the agent factor anew instead of reusing the chunk's buffer
        (for a second evaluator alive at the same time).
        """
        _, _, rho = self.parameters.unpack(theta)
        agents = self.agents
        coefficients, _ = self.parameters.coefficients(
            theta, agents.nodes[markets], agents.demographics[markets]
        )
        mask = self.design.layout.mask[markets]
        characteristics = self.characteristics[markets]
        # X2 is zero in padding, so μ is too; checking the factors is cheaper than μ itself.
        with np.errstate(over="ignore", invalid="ignore"):
            peak = np.abs(coefficients).max(axis=(1, 2), initial=0.0)  # 0 without X2 columns
            scale = peak * np.abs(characteristics).max(axis=(1, 2), initial=0.0)
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
            out=self.buffer("factor", markets, (*mask.shape, coefficients.shape[1]))
            if reuse
            else None,
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
        self, theta: np.ndarray, markets: np.ndarray, initial: np.ndarray, out: _Outputs
    ) -> None:
        """Solve δ, its Jacobian and (with a supply side) the markups in one chunk of markets."""
        theta_rc, _ = self.split(theta)
        coefficients, evaluator, nesting = self.market_pieces(theta_rc, markets)
        result = self.solve(evaluator, markets, initial)
        if not result.converged.all():
            result = self._retry(evaluator, markets, initial, result)
        out.delta[markets] = result.delta
        out.converged[markets] = result.converged
        out.iterations[markets] = result.iterations
        out.evaluations[markets] = result.evaluations
        gradient = out.jacobian is not None
        if not result.converged.all() or not (
            (gradient and self.n_theta) or self.supply is not None
        ):
            return
        probabilities = evaluator.probabilities(result.delta, factored=True)
        delta_jacobian = None
        if gradient and self.n_theta:
            delta_jacobian = self._delta_jacobian(
                theta_rc, markets, coefficients, nesting, probabilities, result.delta, out
            )
        if self.supply is not None:
            self._markups(
                theta,
                markets,
                coefficients,
                evaluator,
                nesting,
                probabilities,
                result.delta,
                delta_jacobian,
                out,
            )

    def _delta_jacobian(
        self,
        theta_rc: np.ndarray,
        markets: np.ndarray,
        coefficients: np.ndarray,
        nesting: Nesting,
        probabilities: Any,
        delta: np.ndarray,
        out: _Outputs,
    ) -> np.ndarray:
        """∂δ/∂θ = −(∂s/∂δ)⁻¹ ∂s/∂θ in a chunk (zero for moved X1 coefficients)."""
        mask = self.design.layout.mask[markets]
        weights = self.agents.weights[markets]
        by_delta = share_jacobian(
            probabilities,
            weights,
            nesting,
            mask,
            workspace=self.buffer("scratch", markets, probabilities.factors[0].shape)
            if probabilities.factors is not None
            else None,
        )
        by_theta = np.zeros((*mask.shape, self.n_theta))
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
            mu = np.matmul(self.characteristics[markets], np.swapaxes(coefficients, 1, 2))
            by_rho = rho_jacobian(probabilities, delta, mu, weights, nesting, mask)
            if self.parameters.rho.size == 1:
                by_rho = by_rho.sum(axis=2, keepdims=True)
            free = [row for kind, row, _ in self.parameters.kinds if kind == "rho"]
            by_theta[:, :, rho_positions] = by_rho[:, :, free]
        index = np.arange(mask.shape[1])
        by_delta[:, index, index] += ~mask
        inverse = np.linalg.inv(by_delta)
        jacobian = -np.matmul(inverse, by_theta)
        out.jacobian[markets] = jacobian
        # The Newton solver of the next evaluation wants (∂log s/∂δ)⁻¹ = (∂s/∂δ)⁻¹ diag(s).
        inverse *= np.where(mask, probabilities.shares, 1.0)[:, None, :]
        out.inverse[markets] = inverse
        return jacobian

    def price_derivative(
        self, theta: np.ndarray, markets: np.ndarray, coefficients: np.ndarray
    ) -> np.ndarray:
        """``[T, J, I]`` D_ji = ∂V_ji/∂p_j: ∂X1/∂p·β_p plus ∂X2/∂p times agent coefficients."""
        _, beta_moved = self.split(theta)
        mean = self.price_x1[markets] @ beta_moved
        return mean[:, :, None] + np.matmul(self.price_x2[markets], np.swapaxes(coefficients, 1, 2))

    def _markups(
        self,
        theta: np.ndarray,
        markets: np.ndarray,
        coefficients: np.ndarray,
        evaluator: ShareEvaluator,
        nesting: Nesting,
        probabilities: Any,
        delta: np.ndarray,
        delta_jacobian: np.ndarray | None,
        out: _Outputs,
    ) -> None:
        """Markups η and (with the gradient) ∂η/∂θ in a chunk of markets."""
        mask = self.design.layout.mask[markets]
        weights = self.agents.weights[markets]
        ownership = self.ownership[markets]
        derivative = self.price_derivative(theta, markets, coefficients)
        price_jacobian = share_jacobian(probabilities, weights, nesting, mask, derivative)
        eta, system = markups(price_jacobian, probabilities.shares, ownership, mask)
        out.eta[markets] = eta
        if delta_jacobian is None:
            return
        if not self.parameters.has_rho:
            out.eta_jacobian[markets] = markup_jacobian(
                probabilities.unconditional,
                weights,
                derivative,
                eta,
                ownership,
                system,
                delta_jacobian,
                self.characteristics[markets],
                self.price_x2[markets],
                *self._markup_directions(markets, coefficients),
                firms=None if self.firms is None else self.firms[markets],
            )
            return
        for position in range(self.n_theta):
            out.eta_jacobian[markets, :, position] = self._nested_markup_derivative(
                theta, markets, delta, delta_jacobian[:, :, position], position, eta, system
            )

    def _markup_directions(
        self, markets: np.ndarray, coefficients: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each θ entry, its agent factor f ``[T, I, L]``, the shift e of the price
        derivatives ``[T, J, L]`` (∂X1/∂p for moved X1 coefficients) and the X2 column it
        multiplies (−1: none); see :func:`~blpmodels.supply_moments.markup_jacobian`."""
        mask = self.design.layout.mask[markets]
        n_agents = coefficients.shape[1]
        factors_out = np.zeros((mask.shape[0], n_agents, self.n_theta))
        shift = np.zeros((*mask.shape, self.n_theta))
        column_of = np.full(self.n_theta, -1, dtype=np.intp)
        if self.parameters.size:
            factors, positions = self.parameters.agent_factors(
                coefficients, self.agents.nodes[markets], self.agents.demographics[markets]
            )
            for column, (factor, places) in enumerate(zip(factors, positions, strict=True)):
                for offset, position in enumerate(places):
                    factors_out[:, :, position] = factor[:, offset, :]
                    column_of[position] = column
        size = self.parameters.size
        shift[:, :, size:] = self.price_x1[markets]
        return factors_out, shift, column_of

    def _nested_markup_derivative(
        self,
        theta: np.ndarray,
        markets: np.ndarray,
        delta: np.ndarray,
        delta_direction: np.ndarray,
        position: int,
        eta: np.ndarray,
        system: np.ndarray,
    ) -> np.ndarray:
        """∂η/∂θ_l for nested models: central differences of B·η along (∂δ/∂θ_l, e_l)."""
        mask = self.design.layout.mask[markets]
        weights = self.agents.weights[markets]
        ownership = self.ownership[markets]
        step = 1e-5 * max(1.0, abs(float(theta[position])))

        def system_times_eta(t: float) -> np.ndarray:
            shifted = theta.copy()
            shifted[position] += t
            theta_rc, _ = self.split(shifted)
            coefficients, evaluator, nesting = self.market_pieces(theta_rc, markets, reuse=False)
            probabilities = evaluator.probabilities(delta + t * delta_direction)
            derivative = self.price_derivative(shifted, markets, coefficients)
            jacobian = share_jacobian(probabilities, weights, nesting, mask, derivative)
            return np.matmul(ownership * np.swapaxes(jacobian, 1, 2), eta[:, :, None])[:, :, 0]

        return directional_markup_derivative(system_times_eta, system, step)

    def evaluate(self, theta: np.ndarray, gradient: bool = True) -> Evaluation:
        """Objective (and gradient) at θ; warm-starts the next call from this δ on success.

        Parameters
        ----------
        theta : numpy.ndarray
            Free nonlinear parameters (Σ, Π, ρ entries, then the X1 coefficients that read
            prices when there is a supply side).
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
        out = _Outputs.allocate(
            self.last_delta.shape, self.n_theta, gradient, self.supply is not None
        )
        initial = self.starting_delta(theta)

        def run(markets: np.ndarray) -> None:
            self._evaluate_chunk(theta, markets, initial[markets], out)

        if self.threads > 1 and len(self.chunks) > 1:
            # numpy releases the GIL in the large array operations, so market chunks run in
            # parallel threads; each writes only its own markets' slices.
            list(self._executor().map(run, self.chunks))
        else:
            for markets in self.chunks:
                run(markets)

        success = bool(out.converged.all()) and np.isfinite(out.delta[layout.mask]).all()
        delta = layout.flatten(out.delta)
        self.total_iterations += int(out.iterations.sum())
        self.total_evaluations += int(out.evaluations.sum())
        self.count += 1
        if not success:
            return self._failed(theta, delta, out, start)
        self.last_delta = out.delta
        self.last_theta = theta.copy()
        self.last_delta_jacobian = out.jacobian
        if gradient:
            self.last_inverse = out.inverse
        dependents, jacobians, supply = self._dependents(theta, delta, out)
        if supply.get("failure"):
            return self._failed(theta, delta, out, start, supply["failure"])
        micro = None
        if self.micro is not None:
            try:
                micro = self.micro.evaluate(
                    self.micro_model, self.split(theta)[0], out.delta, out.jacobian
                )
            except BLPInputError as error:
                return self._failed(theta, delta, out, start, str(error))
        extra = None if micro is None else micro.moments
        solution = self.gmm.solve(dependents, extra)
        objective_gradient = (
            self.gmm.gradient(solution, jacobians, None if micro is None else micro.jacobian)
            if gradient
            else None
        )
        evaluation = Evaluation(
            theta,
            solution.objective,
            objective_gradient,
            delta,
            solution.coefficients[0],
            solution.residuals[0],
            layout.flatten(out.jacobian) if gradient else None,
            out.converged,
            out.iterations,
            out.evaluations,
            time.perf_counter() - start,
            jacobians[0] if gradient else None,
            gamma=solution.coefficients[1] if self.supply is not None else None,
            omega=solution.residuals[1] if self.supply is not None else None,
            markups=supply.get("markups"),
            supply_jacobian=jacobians[1] if gradient and self.supply is not None else None,
            micro=micro,
        )
        # Optimizers ask again for points they have seen (the start, an accepted step).
        self._cache = [*self._cache[-3:], evaluation]
        return evaluation

    def _dependents(
        self, theta: np.ndarray, delta: np.ndarray, out: _Outputs
    ) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
        """Each block's absorbed dependent variable and its θ-Jacobian (if computed).

        Demand: y_D = δ − X1_p β_p (the X1 columns whose coefficients are in θ); supply:
        y_S = f(p − η).
        """
        layout = self.design.layout
        _, beta_moved = self.split(theta)
        gradient = out.jacobian is not None
        demand = self.design.residualize(delta)
        if beta_moved.size:
            demand = demand - self.moved_x1_absorbed @ beta_moved
        dependents = [demand]
        jacobians: list[np.ndarray] = []
        if gradient:
            delta_jacobian = layout.flatten(out.jacobian)
            absorbed = (
                self.design.residualize(delta_jacobian)
                if self.n_theta
                else np.zeros((delta.size, 0))
            )
            if beta_moved.size:
                absorbed[:, self.parameters.size :] = -self.moved_x1_absorbed
            jacobians.append(absorbed)
        supply: dict[str, Any] = {}
        if self.supply is not None:
            eta = layout.flatten(out.eta)
            costs = self.supply.prices - eta
            values, slope = self.supply.transform(costs)
            if not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                supply["failure"] = (
                    f"the implied marginal costs are not positive for {bad} product(s), so "
                    "their logs are undefined (set costs_bounds, e.g. (0.001, None), as pyblp "
                    "users do, or use linear costs)"
                )
                return dependents, jacobians, supply
            supply["markups"] = eta
            dependents.append(self.supply.residualize(values))
            if gradient:
                eta_jacobian = layout.flatten(out.eta_jacobian)
                jacobians.append(self.supply.residualize(-slope[:, None] * eta_jacobian))
        return dependents, jacobians, supply

    def _failed(
        self,
        theta: np.ndarray,
        delta: np.ndarray,
        out: _Outputs,
        start: float,
        failure: str | None = None,
    ) -> Evaluation:
        self.failures += 1
        nan = np.full(self.design.nobs, np.nan)
        return Evaluation(
            theta,
            np.inf,
            None,
            delta,
            np.full(self.kept_columns.size, np.nan),
            nan,
            None,
            out.converged,
            out.iterations,
            out.evaluations,
            time.perf_counter() - start,
            failure=failure,
        )

    def moment_jacobian(self, evaluation: Evaluation) -> np.ndarray:
        """``(M, K1 + P)`` Jacobian of the mean moments ḡ = Z'ξ/N in (β, θ) at an evaluation.

        Examples
        --------
        >>> G = objective.moment_jacobian(objective.evaluate(theta))  # doctest: +SKIP
        """
        micro = None if evaluation.micro is None else evaluation.micro.jacobian
        return self.gmm.moment_jacobian(evaluation.dependent_jacobians, micro)

    def moment_covariance(self, evaluation: Evaluation) -> np.ndarray:
        """S, the covariance of the per-product moments [z_Dj ξ_j, z_Sj ω_j], with the fit's
        ``cov_type``; micro moments add a block of their own (independent surveys), scaled
        by N like the product moments' S."""
        S = self.covariance([block.Z for block in self.blocks], evaluation.residuals)
        if self.micro is None:
            return S
        micro = self.micro.covariance(
            self.micro_model,
            self.split(evaluation.theta)[0],
            self.design.layout.pad(evaluation.delta),
        )
        return scipy.linalg.block_diag(S, self.design.nobs * micro)

    def updated_weighting_matrix(self, evaluation: Evaluation) -> np.ndarray:
        """S⁻¹ at an evaluation: the weighting matrix of the next GMM step."""
        return inverse_weight_matrix(self.moment_covariance(evaluation), "updated weighting matrix")
