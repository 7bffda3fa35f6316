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

from blpmodels.backends import chunk_size_for_memory, driver_memory, make_backend, parse_memory
from blpmodels.data.agents import AgentDesign
from blpmodels.data.parameters import NonlinearParameters
from blpmodels.data.products import ProductDesign
from blpmodels.data.supply_design import SupplyDesign
from blpmodels.estimation.covariance import moment_covariance
from blpmodels.estimation.gmm import inverse_weight_matrix
from blpmodels.estimation.micro import MicroBlock, MicroEvaluation
from blpmodels.estimation.moments import ProductBlock, StackedGMM
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.chunks import ChunkResult, ChunkState, ChunkStep, MarketChunk
from blpmodels.kernel.markups import firm_indicator
from blpmodels.kernel.micro_probabilities import MicroProbabilities

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


#: Agent-product values per chunk of the threads backend (about 10 MB per ``[T, J, I]`` work
#: array). Per evaluation at the start of bench_scale.py's problem (T = 2,000 markets × 50
#: products × 200 agents, two threads, median of six, 2026-12-07): 2 chunks of 1,000 markets
#: (the 1e7-value default) 209 ms, 4 chunks 182, 8 chunks 178, 16 chunks (125 markets) 162,
#: 34 chunks 175; T = 50 × 500 × 200: 2 chunks 42-44 ms, 4 chunks 39-40; exercise 2 (T = 94 ×
#: 24 × 1,000) keeps its two chunks, each a thread's (four took 23 % longer: each chunk pays
#: the δ solver's Python work again).
THREAD_CHUNK_VALUES = 1_250_000


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
    """Full ``[T, J, ...]`` arrays of one evaluation, combined from the chunk results."""

    delta: np.ndarray
    jacobian: np.ndarray | None
    converged: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray
    eta: np.ndarray | None
    eta_jacobian: np.ndarray | None

    @classmethod
    def allocate(
        cls, shape: tuple[int, int], n_theta: int, gradient: bool, supply: bool
    ) -> _Outputs:
        n_markets, _ = shape
        return cls(
            np.zeros(shape),
            np.zeros((*shape, n_theta)) if gradient else None,
            np.zeros(n_markets, dtype=bool),
            np.zeros(n_markets, dtype=np.int64),
            np.zeros(n_markets, dtype=np.int64),
            np.zeros(shape) if supply else None,
            np.zeros((*shape, n_theta)) if supply and gradient else None,
        )

    def write(self, markets: slice, result: ChunkResult) -> None:
        """Put one chunk's result into its markets' rows."""
        self.delta[markets] = result.delta
        self.converged[markets] = result.converged
        self.iterations[markets] = result.iterations
        self.evaluations[markets] = result.evaluations
        for name in ("jacobian", "eta", "eta_jacobian"):
            target, piece = getattr(self, name), getattr(result, name)
            if target is not None and piece is not None:
                target[markets] = piece


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
        Markets per kernel call (bounds memory); by default about 1.25e6 agent-product values
        per chunk with threads (:data:`THREAD_CHUNK_VALUES`), see :meth:`_default_chunk_size`.
    covariance : callable, optional
        ``covariance(Z, ξ) -> S`` with the fit's covariance type (default: robust), for the
        weighting-matrix update.
    supply : SupplyDesign, optional
        A supply side: cost moments Z_S'ω are stacked with the demand moments, and the
        coefficients of the X1 columns that read prices join θ (after Σ, Π, ρ), because the
        markups depend on them.
    micro : MicroBlock, optional
        Micro moments, evaluated on the driver from the combined δ and ∂δ/∂θ.
    backend : {"threads", "dask"} or backend object
        Where the market chunks run (see :mod:`blpmodels.backends`); a string builds a new
        backend object for this objective.
    client : distributed.Client, optional
        With ``backend="dask"``: the cluster (default: the current client).
    memory_limit : int or str, optional
        Bytes beyond the data the evaluation may use (``"2GiB"``): chooses ``chunk_size``
        (see :func:`~blpmodels.backends.memory.chunk_size_for_memory`).
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
    backend: Any = "threads"
    client: Any = None
    memory_limit: int | str | None = None
    gmm: StackedGMM = field(init=False)
    evaluations: list[Evaluation] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.parameters.two_level and (self.micro is not None or self.supply is not None):
            # Their kernels know one level of nests only (kernel.micro_probabilities, the
            # nested markup derivatives), so they would read the lower nests as the nests.
            raise BLPInputError(
                "micro moments and a supply side are not supported with two-level nests yet"
            )
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
        self._setup_price_terms()
        self._setup_backend()
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

    def _setup_backend(self) -> None:
        """The backend object and the market chunks it runs (sized by ``memory_limit``)."""
        layout = self.design.layout
        name = self.backend if isinstance(self.backend, str) else self.backend.name
        if self.threads is None:
            self.threads = (
                default_threads(layout.n_markets, layout.width, self.agents.layout.width)
                if name == "threads"
                else 1
            )
        if self.chunk_size is None:
            self.chunk_size = self._default_chunk_size(name)
            if self.memory_limit is not None:
                # The limit bounds the chunks; it does not grow them past the default, which
                # is already large enough to amortize the per-chunk costs.
                counts = layout.counts * self.agents.layout.counts
                blocks = [self.design] + ([self.supply] if self.supply is not None else [])
                columns = sum(b.X_absorbed.shape[1] + b.Z_absorbed.shape[1] for b in blocks)
                self.chunk_size = min(
                    self.chunk_size,
                    chunk_size_for_memory(
                        parse_memory(self.memory_limit),
                        n_markets=layout.n_markets,
                        n_products=layout.width,
                        n_agents=self.agents.layout.width,
                        n_theta=self.n_theta,
                        parallel=self.threads if name == "threads" else 1,
                        supply=self.supply is not None,
                        nested=self.parameters.has_rho,
                        market_label=layout.market_labels[int(np.argmax(counts))],
                        driver=driver_memory(self.design.nobs, columns, self.n_theta),
                    ),
                )
        self.chunks = layout.chunks(self.chunk_size)
        if isinstance(self.backend, str):
            self.backend = make_backend(self.backend, threads=self.threads, client=self.client)
        self._started = False
        self._number = 0

    def _default_chunk_size(self, name: str) -> int:
        """Markets per chunk: at most about 1e7 agent-product values, split further for threads
        (cache-sized chunks) or Dask (up to 16 equal chunks)."""
        layout = self.design.layout
        values = layout.width * self.agents.layout.width
        size = default_chunk_size(layout.width, self.agents.layout.width)
        if name == "threads":
            # Chunks of at most about THREAD_CHUNK_VALUES agent-product values, whose work
            # arrays stay in cache between the passes of a share evaluation, in a multiple of
            # the threads (at least one each), so that they split the markets evenly.
            threads = max(1, self.threads)
            count = -(-layout.n_markets * values // THREAD_CHUNK_VALUES)
            count = max(threads, -(-count // threads) * threads)
            return min(size, -(-layout.n_markets // count))
        # Other backends: up to 16 equal chunks of at least 1e6 agent-product values each
        # (smaller ones cost more than their arithmetic), whatever the workers, so the chunks,
        # and so the numbers, do not depend on the cluster; a power of two of them, so they
        # split evenly over 2, 4, 8 or 16 workers (3 chunks of exercise 2 took 52 and 42
        # markets on two workers; 2 take 47 each).
        count = 1
        while count < 16 and layout.n_markets * values >= 2 * count * 1_000_000:
            count *= 2
        return min(size, -(-layout.n_markets // count))

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
        self.logit_delta = self.design.layout.pad(self.design.logit_delta())
        self._last_delta = self.logit_delta.copy()
        self._last_theta: np.ndarray | None = None
        self._last_delta_jacobian: np.ndarray | None = None
        self._accepted: int | None = None
        self._epoch = getattr(self, "_epoch", -1) + 1
        self._sync = False

    # The driver keeps the last accepted δ, θ and ∂δ/∂θ: they warm-start chunks scattered
    # again after a worker is lost, and setting them by hand sends them to every chunk.
    @property
    def last_delta(self) -> np.ndarray:
        """``[T, J]`` δ of the last evaluation that converged everywhere (the warm start)."""
        return self._last_delta

    @last_delta.setter
    def last_delta(self, value: np.ndarray) -> None:
        self._last_delta = np.asarray(value, dtype=np.float64)
        self._sync = True

    @property
    def last_theta(self) -> np.ndarray | None:
        """θ of :attr:`last_delta` (None after a reset)."""
        return self._last_theta

    @last_theta.setter
    def last_theta(self, value: np.ndarray | None) -> None:
        self._last_theta = None if value is None else np.asarray(value, dtype=np.float64)
        self._sync = True

    @property
    def last_delta_jacobian(self) -> np.ndarray | None:
        """``[T, J, P]`` ∂δ/∂θ at :attr:`last_theta` (None: warm start from δ alone)."""
        return self._last_delta_jacobian

    @last_delta_jacobian.setter
    def last_delta_jacobian(self, value: np.ndarray | None) -> None:
        self._last_delta_jacobian = value
        self._sync = True

    def chunk_state(self, number: int) -> ChunkState:
        """The accepted warm start of chunk ``number``, from the driver's copy."""
        markets = self.chunk_slice(number)
        jacobian = self._last_delta_jacobian
        return ChunkState(
            self._last_delta[markets].copy(),
            None if self._last_theta is None else self._last_theta.copy(),
            None if jacobian is None else jacobian[markets].copy(),
        )

    def chunk_slice(self, number: int) -> slice:
        """Market positions of chunk ``number``."""
        markets = self.chunks[number]
        return slice(int(markets[0]), int(markets[-1]) + 1)

    def make_chunk(self, number: int) -> MarketChunk:
        """Chunk ``number`` with its data (views of the objective's arrays) and a logit start."""
        markets = self.chunk_slice(number)
        agents = self.agents
        supply = None
        if self.supply is not None:
            supply = {
                "price_x1": self.price_x1[markets],
                "price_x2": self.price_x2[markets],
                "ownership": self.ownership[markets],
                "firms": None if self.firms is None else self.firms[markets],
            }
        return MarketChunk(
            markets.start,
            markets.stop,
            self.design.layout.market_labels[markets],
            self.parameters,
            self.n_theta,
            self.log_shares[markets],
            self.characteristics[markets],
            self.design.layout.mask[markets],
            self.codes[markets],
            self.n_nests,
            agents.weights[markets],
            agents.nodes[markets],
            agents.demographics[markets],
            self.logit_delta[markets],
            self.fp_tol,
            self.fp_max_evaluations,
            self.fp_method,
            supply,
        )

    def _run_chunks(self, theta: np.ndarray, gradient: bool) -> list[ChunkResult]:
        """Hand every chunk its step on the backend (started at the first evaluation)."""
        if not self._started:
            self.backend.start(self.make_chunk, len(self.chunks))
            self._started = True
        self._number += 1
        steps = [
            ChunkStep(
                theta,
                gradient,
                self._number,
                self._accepted,
                self._epoch,
                self.chunk_state(number) if self._sync else None,
            )
            for number in range(len(self.chunks))
        ]
        self._sync = False
        return self.backend.run(steps, self.chunk_state)

    def set_weighting_matrix(self, W: np.ndarray) -> None:
        """Use a new weighting matrix (e.g. for the second GMM step)."""
        self.W = W
        self.gmm = StackedGMM(self.blocks, W, 0 if self.micro is None else self.micro.size)
        self._cache: list[Evaluation] = []

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
        # A copy: the evaluation (and the cache) keep θ, and callers may reuse their array.
        theta = np.array(theta, dtype=np.float64)
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
        for number, result in enumerate(self._run_chunks(theta, gradient)):
            out.write(self.chunk_slice(number), result)
        success = bool(out.converged.all()) and np.isfinite(out.delta[layout.mask]).all()
        delta = layout.flatten(out.delta)
        self.total_iterations += int(out.iterations.sum())
        self.total_evaluations += int(out.evaluations.sum())
        self.count += 1
        if not success:
            return self._failed(theta, delta, out, start)
        # Every chunk takes this solution as its warm start with the next step.
        self._accepted = self._number
        self._last_delta = out.delta
        self._last_theta = theta.copy()
        self._last_delta_jacobian = out.jacobian
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
