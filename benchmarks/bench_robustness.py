"""Robustness of random-coefficients fits: blpmodels and pyblp on the same problems, starts and
optimizers, in one run.

Each problem is a simulated data set like the issue-7 reproduction: ``simulate_logit`` with 20
markets × 5 products and 2 firms (its shares as they are), three extra instruments
z_k = N(0, 1) + 0.3·cost_shifter from a separate generator, 20 agents per market with weights
1/20 and N(0, 1) nodes, and the model ``shares ~ 1 + x + [prices ~ cost_shifter + z0 + z1 +
z2]`` with a random coefficient on prices. Variants: prices × 1e3 or × 1e-3 (the price σ start
divided by the same factor), RCNL (two nests by product parity, ρ starts at 0.5) and two
random coefficients (prices and x, diagonal Σ).

Every problem is fitted from each start (log-uniform in 0.05-12, seeded, plus one at 50) with
trust-constr and l-bfgs-b, by both libraries with the same data, instruments, agents, options
and bounds (σ ≥ 0; ρ in [0, 0.99]), 1-step GMM at W = (Z'Z/N)⁻¹; pyblp solves δ by SQUAREM
with ``atol`` 1e-14 and blpmodels by its default method. Both libraries compute their standard
errors (and blpmodels its Hessian check) as they do by default.

Each fit runs in a worker process (``spawn``), so a fit that runs past ``--timeout`` seconds is
stopped and counted as a hang. Only the fit call is timed (not imports or building the
problem). Outcomes per fit:

* **best**: the fit returned, and its objective — recomputed at the returned θ by a fresh
  SQUAREM solve (blpmodels ``fp_method="squarem"``, tolerance 1e-14, from the logit δ), so a
  fit that reports a wrong objective cannot set or claim the best — is within
  ``rtol·max(1, |best|) + atol`` (defaults 1e-6 and 1e-10) of the lowest recomputed objective
  of any fit of either library on that problem;
* **other**: returned, but at a higher objective (a local minimum, or stopped early), or at a
  θ where the objective cannot be recomputed;
* **error**: raised; grouped by exception type and message prefix (digits masked);
* **hang**: ran past the time limit.

``wrong q`` counts returned fits whose reported objective differs from the recomputed one by more
than the same tolerance, or cannot be recomputed (SQUAREM fails at the returned θ): the fit
claims an objective that the share equations do not support. Median time is over fits that
returned; total time counts errors at the time they took and hangs at the limit.

``--sweep`` runs issue 18's σ₀ sweep instead: the problems s0, s1, s5-2rc and three simulated
economies with a true σ on x (Bertrand prices; 7 Gauss–Hermite nodes, on which σ = 0 is a
saddle of the objective, or 50 Halton draws), each from σ₀ = 0.1, 0.5, 1, 2, 5, 10 and 20,
with trust-constr, l-bfgs-b, slsqp, bfgs and nelder-mead in both libraries (the last three at
each library's defaults) and Gauss–Newton in blpmodels. Each fit is also counted as
**flagged** (it did not claim convergence, or blpmodels warned) and **silent wrong** (it
claimed convergence without a warning at an objective above the best); the best is taken over
fits inside the bounds (σ ≥ 0, ρ in [0, 0.99]), which bfgs in either library does not impose.

Supply problems (blpmodels only, ``--problems``): the economies above fitted with their supply
side (marginal costs 1 + w, the price coefficient a nonlinear parameter; ``e*-supply``), and
``r1-2rc-supply`` … ``r4-2rc-supply``: 100 markets × 10 products × 4 firms, random coefficients
on prices (σ 0.8) and x (σ 1.5), α = −5, 100 Halton draws, fitted from σ = start·I and α = −2.
θ is then (σ, α) and the best objective is over the blpmodels optimizers run.

Run ``python benchmarks/bench_robustness.py`` (216 fits, about 10 minutes with the defaults;
``--quick`` runs 24 fits — s0, s2-p1e3 and s4-rcnl from one drawn start and from 50, 10 s
limit — in under two minutes). ``--markdown`` prints the tables for docs/performance.md.
Every fit is written to ``benchmarks/results/robustness-<time>.csv``.

Examples
--------
``python benchmarks/bench_robustness.py --quick``
``python benchmarks/bench_robustness.py --problems s0 s4-rcnl --starts 4 --timeout 20``
``python benchmarks/bench_robustness.py --sweep --timeout 120``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMULA = "shares ~ 1 + x + [prices ~ cost_shifter + z0 + z1 + z2]"
LIBRARIES = ("blpmodels", "pyblp")
OPTIMIZERS = ("trust-constr", "l-bfgs-b")
#: More optimizers both libraries offer, for the σ₀ sweep (``--sweep``).
MORE_OPTIMIZERS = ("slsqp", "bfgs", "nelder-mead")
#: blpmodels' own optimizers (no pyblp counterpart; pyblp fits are skipped for them).
OWN_OPTIMIZERS = ("gauss-newton",)
#: The same options for both libraries: the tolerances the project's benchmarks use.
OPTIMIZER_OPTIONS: dict[str, dict[str, float]] = {
    "trust-constr": {"gtol": 1e-8, "xtol": 1e-8},
    "l-bfgs-b": {"gtol": 1e-8},
    "gauss-newton": {"gtol": 1e-8},
    # The sweep's other optimizers run at each library's defaults.
    "slsqp": {},
    "bfgs": {},
    "nelder-mead": {},
}
#: The σ₀ sweep's starts (issue 18): every problem from each, up to σ₀ = 20.
SWEEP_STARTS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
START_RANGE = (0.05, 12.0)
LARGE_START = 50.0
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class ProblemSpec:
    """One simulated data set and model variant."""

    name: str
    seed: int
    price_scale: float = 1.0
    nested: bool = False
    n_random: int = 1
    n_markets: int = 20
    n_products: int = 5
    n_agents: int = 20
    #: "logit": simulate_logit's data with a random coefficient on prices; "economy": a
    #: Simulation with a true σ on x and Bertrand prices, 7 Gauss–Hermite nodes
    #: (``rule="product"``) or 50 Halton draws (``rule="halton"``); "economy-2rc": an economy
    #: with random coefficients on prices (σ 0.8) and x (σ 1.5), α = −5, 100 Halton draws.
    kind: str = "logit"
    true_sigma: float = 0.0
    rule: str = "product"
    #: Economies only: fit demand with the supply side (marginal costs 1 + w, Bertrand), so the
    #: price coefficient is a nonlinear parameter; blpmodels only (pyblp fits are skipped).
    supply: bool = False
    #: With a supply side: the price coefficient's start (the truth is −3); None for the
    #: default (the demand-only IV estimate at the starting σ).
    price_start: float | None = None


PROBLEMS: dict[str, ProblemSpec] = {
    spec.name: spec
    for spec in (
        ProblemSpec("s0", 0),
        ProblemSpec("s1", 1),
        ProblemSpec("s2-p1e3", 2, price_scale=1e3),
        ProblemSpec("s3-p1e-3", 3, price_scale=1e-3),
        ProblemSpec("s4-rcnl", 4, nested=True),
        ProblemSpec("s5-2rc", 5, n_random=2),
        # Economies where, before the bound check, optimizers stopped at σ = 0 (a saddle on
        # symmetric nodes, a local minimum on the bound on Halton draws) claiming convergence.
        ProblemSpec("e1-gh", 1, kind="economy", true_sigma=0.5),
        ProblemSpec("e2-gh", 2, kind="economy", true_sigma=1.0),
        ProblemSpec("e1-halton", 1, kind="economy", true_sigma=0.5, rule="halton"),
        # The same economies fitted with their supply side (issue 20, goal 2: whether
        # Gauss–Newton loses optima there), from the IV price coefficient and from α = −1.
        ProblemSpec("e1-gh-supply", 1, kind="economy", true_sigma=0.5, supply=True),
        ProblemSpec("e2-gh-supply", 2, kind="economy", true_sigma=1.0, supply=True),
        ProblemSpec(
            "e1-halton-supply", 1, kind="economy", true_sigma=0.5, rule="halton", supply=True
        ),
        ProblemSpec(
            "e3-gh-supply-far", 3, kind="economy", true_sigma=1.0, supply=True, price_start=-1.0
        ),
        ProblemSpec(
            "e4-halton-supply-far",
            4,
            kind="economy",
            true_sigma=0.5,
            rule="halton",
            supply=True,
            price_start=-1.0,
        ),
        ProblemSpec(
            "e5-gh-supply-100",
            5,
            kind="economy",
            true_sigma=1.5,
            supply=True,
            price_start=-1.0,
            n_markets=100,
        ),
        # The economies behind the supply default (docs/performance.md): 100 markets × 10
        # products × 4 firms, σ on prices and x, fitted with supply from σ = start·I, α = −2.
        *(
            ProblemSpec(
                f"r{seed}-2rc-supply",
                seed,
                kind="economy-2rc",
                n_random=2,
                supply=True,
                price_start=-2.0,
                n_markets=100,
                n_products=10,
            )
            for seed in (1, 2, 3, 4)
        ),
    )
}
SUPPLY_PROBLEMS = tuple(name for name, spec in PROBLEMS.items() if spec.supply)
SWEEP_PROBLEMS = ("s0", "s1", "s5-2rc", "e1-gh", "e2-gh", "e1-halton")
QUICK_PROBLEMS = ("s0", "s2-p1e3", "s4-rcnl")


@dataclass(frozen=True)
class Task:
    """One fit: a problem, a library, an optimizer and a start (in units of unscaled prices)."""

    problem: str
    library: str
    optimizer: str
    start_index: int
    start: float


# ---------------------------------------------------------------- problems (in the workers)


def simulate(spec: ProblemSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Product and agent data of a problem.

    Examples
    --------
    >>> products, agents = simulate(PROBLEMS["s0"])
    >>> products.shape[0], agents.shape[0]
    (100, 400)
    """
    if spec.kind.startswith("economy"):
        return simulate_economy(spec)
    from blpmodels.simulation.logit import simulate_logit

    simulation = simulate_logit(
        n_markets=spec.n_markets, n_products=spec.n_products, n_firms=2, seed=spec.seed
    )
    products = simulation.products.copy()
    # A generator of its own: the simulation's would draw the same numbers as its columns.
    rng = np.random.default_rng(spec.seed + 1000)
    for k in range(3):
        products[f"z{k}"] = rng.standard_normal(len(products)) + 0.3 * products["cost_shifter"]
    products["prices"] *= spec.price_scale
    if spec.nested:
        products["nesting_ids"] = products["product_ids"].str[1:].astype(int) % 2
    for k, column in enumerate(["cost_shifter", "z0", "z1", "z2"]):
        products[f"demand_instruments{k}"] = products[column]  # pyblp's names
    markets = pd.unique(products["market_ids"])
    agents = pd.DataFrame(
        {"market_ids": np.repeat(markets, spec.n_agents), "weights": 1.0 / spec.n_agents}
    )
    for k in range(spec.n_random):
        agents[f"nodes{k}"] = rng.standard_normal(len(agents))
    return products, agents


def simulate_economy(spec: ProblemSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An economy with a true random coefficient on x (tests/test_saddles.py builds the same):
    products with the differentiation instruments renamed ``z0, z1, ...`` and the cost shifter,
    agents with one node column."""
    from blpmodels import Integration
    from blpmodels.simulation import Simulation, build_id_data

    two = spec.kind == "economy-2rc"
    data = build_id_data(T=spec.n_markets, J=spec.n_products, F=4 if two else 2)
    rng = np.random.default_rng(spec.seed)
    data["x"] = rng.standard_normal(len(data))
    data["w"] = rng.uniform(size=len(data))
    rule = (
        Integration("halton", 100 if two else 50, seed=spec.seed)
        if spec.rule == "halton" or two
        else Integration("product", 7)
    )
    solved = Simulation(
        data,
        "1 + prices + x",
        {"Intercept": 5.0, "prices": -5.0, "x": 1.0}
        if two
        else {"Intercept": 2.0, "prices": -3.0, "x": 1.0},
        random="0 + prices + x" if two else "0 + x",
        sigma=np.diag([0.8, 1.5]) if two else spec.true_sigma,
        integration=rule,
        supply="1 + w",
        gamma={"Intercept": 1.0, "w": 1.0},
        xi_variance=0.2,
        omega_variance=0.1,
        correlation=0.7,
        seed=spec.seed,
    ).replace_endogenous(instruments="differentiation")
    products = solved.products.rename(columns={"w": "cost_shifter"})
    differentiation = [column for column in products if column.startswith("diff_")]
    for k, column in enumerate(["cost_shifter", *differentiation]):
        products[f"demand_instruments{k}"] = products[column]
    return products, solved.agent_data


def formula(spec: ProblemSpec, products: pd.DataFrame) -> str:
    """The demand formula: the logit problems' FORMULA, or the economies' with all their
    instruments."""
    if not spec.kind.startswith("economy"):
        return FORMULA
    instruments = [column for column in products if column.startswith("demand_instruments")]
    return f"shares ~ 1 + x + [prices ~ {' + '.join(instruments)}]"


def random_formula(spec: ProblemSpec) -> str:
    """The random-coefficient formula (pyblp's X2)."""
    if spec.kind == "economy-2rc":
        return "0 + prices + x"
    if spec.kind == "economy":
        return "0 + x"
    return "0 + prices" if spec.n_random == 1 else "0 + prices + x"


def start_sigma(spec: ProblemSpec, start: float) -> np.ndarray:
    """Diagonal of the starting Σ: the price σ divided by the price scale, the others as is."""
    diagonal = np.full(spec.n_random, start)
    diagonal[0] /= spec.price_scale
    return diagonal


def blpmodels_model(spec: ProblemSpec, products: pd.DataFrame, agents: pd.DataFrame):
    from blpmodels import BLPRandomCoefficients

    supply: dict[str, Any] = {}
    if spec.supply:
        # x and the differentiation instruments are excluded from marginal costs.
        excluded = [column for column in products if column.startswith("diff_")]
        supply = {"supply": "1 + cost_shifter", "supply_instruments": " + ".join(["x", *excluded])}
    return BLPRandomCoefficients.from_formula(
        formula(spec, products),
        products,
        random=random_formula(spec),
        agent_data=agents,
        **supply,
    )


def fit_blpmodels(spec: ProblemSpec, data, task: Task, started) -> dict[str, Any]:
    model = blpmodels_model(spec, *data)
    diagonal = start_sigma(spec, task.start)
    sigma = float(diagonal[0]) if spec.n_random == 1 else np.diag(diagonal)
    started()
    clock = time.perf_counter()
    results = model.fit(
        sigma=sigma,
        rho=0.5 if spec.nested else None,
        optimizer=task.optimizer,
        optimizer_options=OPTIMIZER_OPTIONS[task.optimizer],
        beta=None if spec.price_start is None else {"prices": spec.price_start},
    )
    seconds = time.perf_counter() - clock
    convergence = results.info.convergence
    theta = np.asarray(results.params)[-(spec.n_random + spec.nested) :]
    if spec.supply:  # θ = (σ, α): the price coefficient is nonlinear with a supply side
        theta = np.append(theta, results.params["prices"])
    return {
        "seconds": seconds,
        "objective": float(results.objective),
        "theta": theta,
        "optimizer_converged": bool(convergence["converged"]),
        "fp_failures": int(convergence["fp_failures"]),
    }


def fit_pyblp(spec: ProblemSpec, data, task: Task, started) -> dict[str, Any]:
    import pyblp

    pyblp.options.verbose = False
    products, agents = data
    problem = pyblp.Problem(
        (pyblp.Formulation("1 + x + prices"), pyblp.Formulation(random_formula(spec))),
        products,
        agent_data=agents,
    )
    sigma = np.diag(start_sigma(spec, task.start))
    lower = np.zeros_like(sigma)
    upper = np.where(np.eye(spec.n_random, dtype=bool), np.inf, 0.0)
    started()
    clock = time.perf_counter()
    results = problem.solve(
        sigma=sigma,
        sigma_bounds=(lower, upper),
        rho=0.5 if spec.nested else None,
        optimization=pyblp.Optimization(
            task.optimizer,
            dict(OPTIMIZER_OPTIONS[task.optimizer]),
            compute_gradient=task.optimizer != "nelder-mead",  # pyblp refuses both
        ),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
        method="1s",
    )
    seconds = time.perf_counter() - clock
    theta = np.diag(results.sigma).copy()
    if spec.nested:
        theta = np.append(theta, np.ravel(results.rho)[0])
    return {
        "seconds": seconds,
        "objective": float(np.squeeze(results.objective)),
        "theta": theta,
        "optimizer_converged": bool(results.converged),
        "fp_failures": int(np.size(results.fp_converged) - np.count_nonzero(results.fp_converged)),
    }


def recompute_objective(spec: ProblemSpec, data, theta: np.ndarray) -> float:
    """The objective at θ by a fresh SQUAREM solve from the logit δ (NaN if it fails)."""
    model = blpmodels_model(spec, *data)
    start = 1.0 if spec.n_random == 1 else np.eye(spec.n_random)
    parameters = model.parameters(sigma=start, rho=0.5 if spec.nested else None)
    objective = model.objective_function(parameters, fp_method="squarem")
    try:
        evaluation = objective.evaluate(np.asarray(theta, dtype=float), gradient=False)
    except Exception:  # any failure means "could not be checked"
        return float("nan")
    return float(evaluation.objective) if evaluation.success else float("nan")


def error_group(error: BaseException) -> str:
    """``Type: message prefix`` with digits masked, so failures of one kind group together.

    Examples
    --------
    >>> error_group(RuntimeError("failed in 3 market(s): ['M03']"))
    'RuntimeError: failed in # market(s)'
    >>> error_group(RuntimeError("failed at the estimates in markets ['M03', 'M07']"))
    'RuntimeError: failed at the estimates in markets'
    """
    message = re.split(r"[:;\[]", str(error))[0].strip()
    return f"{type(error).__name__}: {re.sub(r'[0-9]+', '#', message)[:70]}"


def run_task(task: Task, cache: dict[str, Any], started) -> dict[str, Any]:
    """Fit one task in this (worker) process; exceptions become an ``error`` outcome."""
    import warnings

    spec = PROBLEMS[task.problem]
    if task.problem not in cache:
        cache[task.problem] = simulate(spec)
    data = cache[task.problem]
    row: dict[str, Any] = {**asdict(task)}
    fitter = fit_blpmodels if task.library == "blpmodels" else fit_pyblp
    clock: list[float] = []

    def fitting() -> None:
        clock.append(time.perf_counter())
        started()

    from blpmodels import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome = fitter(spec, data, task, fitting)
        except Exception as error:  # every failure is a result here
            seconds = time.perf_counter() - clock[0] if clock else np.nan
            row.update(status="error", error=error_group(error), seconds=seconds)
            return row
        theta = outcome.pop("theta")
        # What a fit says is wrong: blpmodels warns (ConvergenceWarning, or a UserWarning such
        # as bfgs leaving the bounds); pyblp reports through `converged` only.
        warned = [
            warning
            for warning in caught
            if issubclass(warning.category, ConvergenceWarning)
            or (issubclass(warning.category, UserWarning) and "bounds" in str(warning.message))
        ]
        row.update(outcome, status="ok", error="", warned=bool(warned))
        row["theta"] = " ".join(f"{value:.10g}" for value in theta)
        row["recomputed"] = recompute_objective(spec, data, theta)
    return row


def serve(connection: Connection) -> None:
    """Worker loop: import once (not timed), then fit tasks until told to stop."""
    import pyblp  # noqa: F401

    import blpmodels  # noqa: F401

    cache: dict[str, Any] = {}
    connection.send(("ready", None))
    while True:
        task = connection.recv()
        if task is None:
            return
        connection.send(("result", run_task(task, cache, lambda: connection.send(("fit", None)))))


# ---------------------------------------------------------------- the driver


class Worker:
    """A worker process that can be killed when a fit hangs and replaced by a fresh one."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.task: Task | None = None
        self.deadline = np.inf
        self.start()

    def start(self) -> None:
        parent, child = self.context.Pipe()
        self.process = self.context.Process(target=serve, args=(child,), daemon=True)
        self.process.start()
        self.connection = parent
        message, _ = self.connection.recv()  # imports done
        assert message == "ready"

    def submit(self, task: Task) -> None:
        if not self.process.is_alive():
            self.start()  # replaces a worker killed on a hang (only when there is work left)
        self.task = task
        self.deadline = np.inf  # the clock starts when the worker says the fit began
        self.connection.send(task)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()

    def stop(self) -> None:
        if not self.process.is_alive():
            return
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()


def run_all(tasks: Sequence[Task], jobs: int, timeout: float, progress: bool) -> pd.DataFrame:
    """Run every task in ``jobs`` worker processes with a per-fit time limit."""
    # One BLAS thread in the workers (they inherit the environment): the problems are tiny,
    # and timings then compare the libraries' own code and do not depend on --jobs.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    context = multiprocessing.get_context("spawn")
    workers = [Worker(context) for _ in range(max(1, min(jobs, len(tasks))))]
    pending = list(tasks)
    rows: list[dict[str, Any]] = []
    try:
        while pending or any(worker.task is not None for worker in workers):
            for worker in workers:
                if worker.task is None and pending:
                    worker.submit(pending.pop(0))
            busy = [worker for worker in workers if worker.task is not None]
            now = time.monotonic()
            wait_for = min(worker.deadline for worker in busy) - now
            ready = wait(
                [worker.connection for worker in busy],
                timeout=max(0.0, min(wait_for, 1.0)) if np.isfinite(wait_for) else None,
            )
            now = time.monotonic()
            for worker in busy:
                if worker.connection in ready:
                    try:
                        message, payload = worker.connection.recv()
                    except EOFError:  # the worker died (e.g. out of memory)
                        rows.append(
                            {**asdict(worker.task), "status": "error", "error": "worker died"}
                        )
                        worker.task = None
                        worker.kill()
                        continue
                    if message == "fit":
                        worker.deadline = time.monotonic() + timeout
                        continue
                    rows.append(payload)
                    worker.task = None
                elif now >= worker.deadline:
                    rows.append(
                        {
                            **asdict(worker.task),
                            "status": "hang",
                            "error": f"ran past {timeout:g} s",
                            "seconds": timeout,
                        }
                    )
                    worker.task = None
                    worker.kill()
                else:
                    continue
                if progress:
                    row = rows[-1]
                    print(
                        f"  {row['problem']:9s} {row['library']:9s} {row['optimizer']:12s} "
                        f"start {row['start']:<8.3g} {row['status']:5s} "
                        f"{row.get('seconds', float('nan')):7.2f} s {row.get('error', '')}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for worker in workers:
            worker.stop()
    return pd.DataFrame(rows)


def within_bounds(problem: str, theta: Any) -> bool:
    """θ (a space-separated string) inside the model's bounds: σ ≥ 0, ρ in [0, 0.99] (with a
    supply side θ ends with the unbounded price coefficient); bfgs in either library ignores
    them, and a point outside is not an estimate of the model.

    Examples
    --------
    >>> within_bounds("s4-rcnl", "0.5 0.999"), within_bounds("s0", "-0.2"), within_bounds("s0", "")
    (False, False, False)
    >>> within_bounds("e1-gh-supply", "0.5 -3.0")
    True
    """
    if not isinstance(theta, str) or not theta.strip():
        return False
    values = np.array([float(value) for value in theta.split()])
    spec = PROBLEMS[problem]
    if spec.supply:  # the price coefficient (last) is unbounded
        values = values[:-1]
    sigma, rho = (values[:-1], values[-1:]) if spec.nested else (values, values[:0])
    return bool((sigma >= 0).all() and ((rho >= 0) & (rho <= 0.99)).all())


def classify(fits: pd.DataFrame, rtol: float, atol: float) -> pd.DataFrame:
    """Add the best objective per problem (over fits inside the bounds) and each fit's outcome
    (best / other / error / hang), whether it was flagged (not converged, or a warning) and
    whether it is silently wrong (converged, not flagged, above the best)."""
    fits = fits.copy()
    for column in ("objective", "recomputed", "seconds", "theta"):
        if column not in fits:
            fits[column] = np.nan
    if "warned" not in fits:
        fits["warned"] = False
    inside = [
        within_bounds(problem, theta)
        for problem, theta in zip(fits["problem"], fits["theta"], strict=True)
    ]
    fits["inside"] = inside
    best = fits[(fits["status"] == "ok") & fits["inside"]].groupby("problem")["recomputed"].min()
    fits["best"] = fits["problem"].map(best)
    tolerance = rtol * np.maximum(1.0, fits["best"].abs()) + atol
    fits["reached"] = (fits["status"] == "ok") & (fits["recomputed"] - fits["best"] <= tolerance)
    fits["wrong_objective"] = (fits["status"] == "ok") & ~(
        (fits["objective"] - fits["recomputed"]).abs()
        <= rtol * np.maximum(1.0, fits["recomputed"].abs()) + atol
    )
    fits["outcome"] = np.where(
        fits["reached"], "best", np.where(fits["status"] == "ok", "other", fits["status"])
    )
    ok = fits["status"] == "ok"
    converged = fits["optimizer_converged"].fillna(False).astype(bool) if len(fits) else ok
    fits["flagged"] = ok & (~converged | fits["warned"].fillna(False).astype(bool))
    fits["silent_wrong"] = ok & converged & ~fits["flagged"] & ~fits["reached"]
    return fits


def summarize(fits: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per library and optimizer: shares of outcomes and times; the errors by group; and per
    problem, the best objective and how many fits of each library and optimizer reached it."""
    rows = []
    for (library, optimizer), group in fits.groupby(["library", "optimizer"], sort=False):
        count = len(group)
        returned = group[group["status"] == "ok"]
        rows.append(
            {
                "library": library,
                "optimizer": optimizer,
                "fits": count,
                "best %": 100.0 * (group["outcome"] == "best").mean(),
                "other %": 100.0 * (group["outcome"] == "other").mean(),
                "error %": 100.0 * (group["outcome"] == "error").mean(),
                "hang %": 100.0 * (group["outcome"] == "hang").mean(),
                "reached": int(group["reached"].sum()),
                "flagged": int(group["flagged"].sum()),
                "silent wrong": int(group["silent_wrong"].sum()),
                "wrong q": int(group["wrong_objective"].sum()),
                "median s": float(returned["seconds"].median()) if len(returned) else np.nan,
                "total s": float(group["seconds"].fillna(0.0).sum()),
            }
        )
    table = pd.DataFrame(rows)
    failures = fits[fits["outcome"].isin(["error", "hang"])]
    errors = (
        failures.groupby(["library", "optimizer", "error"], sort=False)
        .size()
        .rename("fits")
        .reset_index()
    )
    reached = fits.groupby(["problem", "library", "optimizer"], sort=False)["reached"].agg(
        lambda column: f"{int(column.sum())}/{len(column)}"
    )
    problems = reached.unstack(["library", "optimizer"])
    problems.columns = [f"{library} {optimizer}" for library, optimizer in problems.columns]
    best = fits.groupby("problem", sort=False)["best"].first()
    problems.insert(0, "best q", best.map(lambda value: f"{value:.7g}"))
    return table, errors, problems.reset_index()


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no tabulate needed).

    Examples
    --------
    >>> print(markdown(pd.DataFrame({"a": [1.5], "b": ["x"]})))
    | a | b |
    |---:|:---|
    | 1.5 | x |
    """

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if np.isnan(value) else f"{value:.3g}"
        return str(value).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(table[column]) for column in table]
    lines = [
        "| " + " | ".join(map(str, table.columns)) + " |",
        "|" + "|".join("---:" if flag else ":---" for flag in numeric) + "|",
    ]
    lines += [
        "| " + " | ".join(cell(value) for value in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


def draw_starts(count: int, seed: int) -> list[float]:
    """``count`` log-uniform starts in 0.05-12, then 50.

    Examples
    --------
    >>> [round(s, 3) for s in draw_starts(2, 0)]
    [1.641, 0.219, 50.0]
    """
    rng = np.random.default_rng(seed)
    low, high = np.log(START_RANGE[0]), np.log(START_RANGE[1])
    return [float(s) for s in np.exp(rng.uniform(low, high, size=count))] + [LARGE_START]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a handful of fits (< 2 minutes)")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="issue 18's σ₀ sweep: starts 0.1-20, every optimizer, the sweep problems",
    )
    parser.add_argument("--problems", nargs="+", choices=sorted(PROBLEMS), help="problems to run")
    parser.add_argument("--starts", type=int, help="log-uniform starts per problem (plus 50)")
    parser.add_argument("--timeout", type=float, help="seconds before a fit counts as a hang")
    parser.add_argument("--jobs", type=int, default=1, help="fits in parallel (default 1)")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=OPTIMIZERS + MORE_OPTIMIZERS + OWN_OPTIMIZERS,
        default=None,
    )
    parser.add_argument("--seed", type=int, default=2024, help="seed of the start draws")
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance for best")
    parser.add_argument("--atol", type=float, default=1e-10, help="absolute tolerance for best")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--quiet", action="store_true", help="no per-fit progress lines")
    arguments = parser.parse_args(argv)
    default_problems = (
        SWEEP_PROBLEMS
        if arguments.sweep
        else (QUICK_PROBLEMS if arguments.quick else [name for name in PROBLEMS if name[0] == "s"])
    )
    problems = arguments.problems or list(default_problems)
    n_starts = arguments.starts if arguments.starts is not None else (1 if arguments.quick else 8)
    timeout = arguments.timeout or (10.0 if arguments.quick else 30.0)
    starts = list(SWEEP_STARTS) if arguments.sweep else draw_starts(n_starts, arguments.seed)
    if arguments.optimizers is None:
        sweep_optimizers = OPTIMIZERS + MORE_OPTIMIZERS + OWN_OPTIMIZERS
        arguments.optimizers = list(sweep_optimizers if arguments.sweep else OPTIMIZERS)
    tasks = [
        Task(problem, library, optimizer, index, start)
        for problem in problems
        for index, start in enumerate(starts)
        for optimizer in arguments.optimizers
        for library in arguments.libraries
        if not (library == "pyblp" and (optimizer in OWN_OPTIMIZERS or problem in SUPPLY_PROBLEMS))
    ]
    import pyblp

    import blpmodels

    print(
        f"blpmodels {blpmodels.__version__} vs pyblp {pyblp.__version__}: {len(tasks)} fits "
        f"({len(problems)} problems × {len(starts)} starts × {len(arguments.optimizers)} "
        f"optimizers × {len(arguments.libraries)} libraries), time limit {timeout:g} s, "
        f"{arguments.jobs} job(s)",
        flush=True,
    )
    clock = time.perf_counter()
    fits = classify(
        run_all(tasks, arguments.jobs, timeout, not arguments.quiet), arguments.rtol, arguments.atol
    )
    elapsed = time.perf_counter() - clock
    table, errors, problems = summarize(fits)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"robustness-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    fits.to_csv(path, index=False)
    tables = [table, problems] + ([errors] if len(errors) else [])
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3g}".format
    ):
        for part in tables:
            print("\n" + (markdown(part) if arguments.markdown else part.to_string(index=False)))
    print(f"\n{len(fits)} fits in {elapsed:.0f} s; per-fit results in {path}")


if __name__ == "__main__":
    main()
