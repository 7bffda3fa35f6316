"""Time blpmodels against pyblp 1.3.0 on supply-side work, in one run, and print the ratios.

Problems (both libraries, same settings, one BLAS thread each):

* ``autos``   pyblp's BLP (1995) automobile tutorial with supply: X1 = 1 + hpwt + air + mpd +
  space, X2 = 1 + prices + hpwt + air + mpd + space (Σ diagonal, Σ_prices = 0), Π on prices ×
  1/income, X3 = 1 + log(hpwt) + air + log(mpg) + log(space) + trend with log costs clipped at
  0.001, the data's demand and supply instruments; W updated at the start (pyblp's
  ``initial_update=True``), two GMM steps, moments and SEs clustered by ``clustering_ids``;
  l-bfgs-b with pyblp's default options (gtol 1e-8, ftol 0) in both, and blpmodels again
  with scipy's default ftol (its first GMM step then stops earlier, which moves the second
  step's W and the estimates by about 5e-6). Prints the times and their ratios, the objective
  evaluations and share (contraction) evaluations, the CPU per objective evaluation of each
  fit and its ratio (free of the evaluation counts, which at ftol = 0 follow rounding), the
  objectives and the largest relative differences in the estimates and standard errors.
* ``merger``  Mixtape exercise 2, question 5 (σ on prices, Π on mushy and prices × log income,
  market and product effects absorbed) at its estimates: firm F6 merges into F1 and prices are
  solved in all 94 markets. blpmodels: ``results.merger(firm_ids={"F6": "F1"})`` (equilibrium
  prices, shares, surplus and HHI before and after); pyblp: ``results.compute_prices`` with the
  new firm ids and ``compute_costs()`` costs (prices only), its default ζ iteration.

Run ``python benchmarks/bench_supply.py`` (needs pyblp and the shared data). ``--repeat N``: best
of N blpmodels runs of the autos fit (default 3); ``--pyblp-repeat N``: best of N pyblp autos
fits (default 1: one takes about a minute); ``--merger-repeat N`` (default 5, both libraries);
``--threads`` for blpmodels; ``--only autos merger``; ``--profile`` profiles one blpmodels autos
fit; ``--only optimizers`` fits the autos problem's first GMM step at one W (S⁻¹ at the
tutorial's start, clustered) with Gauss–Newton and trust-constr from the tutorial's Σ, Π ×
0.25, 0.5, 1, 2, 4 (not part of the default run); ``--baseline DIR`` times the blpmodels
autos fit (pyblp's options) of the package in DIR (a copy of an older ``blpmodels``, e.g.
``git archive HEAD blpmodels | tar -x -C DIR``) against this checkout's, alternating fresh
processes, and prints the best CPU and wall time of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import common  # first: it sets one BLAS thread before numpy loads
import numpy as np

import blpmodels
from blpmodels import BLPRandomCoefficients, datasets
from blpmodels.estimation.linear import gmm_options

DEMAND_INSTRUMENTS = " + ".join(f"demand_instruments{k}" for k in range(8))
SUPPLY_INSTRUMENTS = " + ".join(f"supply_instruments{k}" for k in range(12))
AUTOS_FORMULA = f"shares ~ 1 + hpwt + air + mpd + space + [0 ~ {DEMAND_INSTRUMENTS}]"
AUTOS_RANDOM = "1 + prices + hpwt + air + mpd + space"
AUTOS_SUPPLY = "1 + log(hpwt) + air + log(mpg) + log(space) + trend"
AUTOS_SIGMA = np.diag([3.612, 0, 4.628, 1.818, 1.050, 2.056])
AUTOS_PI = np.c_[[0, -43.501, 0, 0, 0, 0]]
CLUSTERS = {"groups": "clustering_ids"}
FREE_SIGMA = [0, 2, 3, 4, 5]

Q5_THETA = {"sigma": [[0, 0], [0, 6.015167]], "pi": [[0.108829], [-5.957239]]}
MERGER = {"F6": "F1"}


def autos_data():
    products, agents = datasets.load_blp()
    # pyblp pairs its five node columns with the X2 columns whose Σ diagonal is nonzero;
    # blpmodels pairs nodes{k} with the k-th X2 column: prices (Σ = 0) gets a zero column.
    shifted = agents.copy()
    for k in (5, 4, 3, 2):
        shifted[f"nodes{k}"] = agents[f"nodes{k - 1}"]
    shifted["nodes1"] = 0.0
    return products, agents, shifted


#: blpmodels' l-bfgs-b options: pyblp's own (the same settings), and with scipy's default ftol.
OUR_OPTIONS = {
    "pyblp's": {"gtol": 1e-8, "ftol": 0},
    "default ftol": {"gtol": 1e-8},
}


def ours_autos(products, shifted, threads: int | None, options: dict):
    """The tutorial's fit in blpmodels, from building the model to the results."""
    model = BLPRandomCoefficients.from_formula(
        AUTOS_FORMULA,
        products,
        random=AUTOS_RANDOM,
        demographics="0 + I(1 / income)",
        agent_data=shifted,
        supply=AUTOS_SUPPLY,
        supply_instruments=SUPPLY_INSTRUMENTS,
        costs_type="log",
        costs_bounds=(0.001, None),
        threads=threads,
    )
    # pyblp's initial_update: W = S⁻¹ at the starting values (S clustered). The fit counts
    # that evaluation, as pyblp's cumulative counts do, and its δ warm-starts the first step.
    return model.fit(
        AUTOS_SIGMA,
        AUTOS_PI,
        initial_update=True,
        method="2s",
        cov_type="clustered",
        cov_kwds=CLUSTERS,
        optimizer="l-bfgs-b",
        optimizer_options=options,
    )


def pyblp_autos(products, agents):
    import pyblp

    formulations = (
        pyblp.Formulation("1 + hpwt + air + mpd + space"),
        pyblp.Formulation(AUTOS_RANDOM),
        pyblp.Formulation(AUTOS_SUPPLY),
    )
    problem = pyblp.Problem(
        formulations, products, pyblp.Formulation("0 + I(1 / income)"), agents, costs_type="log"
    )
    return problem.solve(
        AUTOS_SIGMA,
        AUTOS_PI,
        costs_bounds=(0.001, None),
        W_type="clustered",
        se_type="clustered",
        initial_update=True,
        method="2s",
        optimization=pyblp.Optimization("l-bfgs-b", {"ftol": 0, "gtol": 1e-8}),
    )


def _pyblp_autos_values(results) -> tuple[np.ndarray, np.ndarray]:
    def stack(beta, gamma, sigma, pi):
        return np.concatenate(
            [np.ravel(beta), np.ravel(gamma), np.diag(sigma)[FREE_SIGMA], [pi[1, 0]]]
        )

    return (
        stack(results.beta, results.gamma, results.sigma, results.pi),
        stack(results.beta_se, results.gamma_se, results.sigma_se, results.pi_se),
    )


def _relative(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, float).ravel(), np.asarray(theirs, float).ravel()
    return float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-300)))


def run_autos(arguments) -> None:
    products, agents, shifted = autos_data()
    theirs_time, theirs = common.best_of(
        lambda: pyblp_autos(products, agents), arguments.pyblp_repeat
    )
    estimates, ses = _pyblp_autos_values(theirs)
    their_objective = float(np.squeeze(theirs.objective))
    print(f"autos: pyblp (best of {arguments.pyblp_repeat}), l-bfgs-b ftol 0, gtol 1e-8")
    print(f"  wall {theirs_time.wall:.2f} s, CPU {theirs_time.cpu:.2f} s")
    print(
        f"  {int(theirs.cumulative_objective_evaluations)} objective evaluations, "
        f"{int(np.sum(theirs.cumulative_contraction_evaluations))} share evaluations"
    )
    print(f"  objective {their_objective:.10g}, gradient norm {np.abs(theirs.gradient).max():.1e}")
    for label, options in OUR_OPTIONS.items():
        ours_time, ours = common.best_of(
            lambda options=options: ours_autos(products, shifted, arguments.threads, options),
            arguments.repeat,
        )
        convergence = ours.info.convergence
        evaluations = convergence["evaluations"]
        contractions = convergence["contraction_evaluations"]
        print(f"autos: blpmodels (best of {arguments.repeat}), l-bfgs-b {options}: {label}")
        print(
            f"  wall {ours_time.wall:.3f} s, CPU {ours_time.cpu:.3f} s; speed-up "
            f"{theirs_time.wall / ours_time.wall:.1f}x wall, "
            f"{theirs_time.cpu / ours_time.cpu:.1f}x CPU ({convergence.get('threads')} threads)"
        )
        print(f"  {evaluations} objective evaluations, {contractions} share evaluations")
        # l-bfgs-b at ftol = 0 stops on a rounding-level test, so the evaluation counts of both
        # move from run to run; the CPU per evaluation (the fit's, W updates and SEs included)
        # does not depend on them.
        theirs_each = theirs_time.cpu / int(theirs.cumulative_objective_evaluations)
        ours_each = ours_time.cpu / evaluations
        print(
            f"  CPU per objective evaluation {1e3 * ours_each:.1f} ms against pyblp's "
            f"{1e3 * theirs_each:.1f} ms: {theirs_each / ours_each:.1f}x"
        )
        print(
            f"  objective {ours.objective:.10g} (rel. diff "
            f"{abs(ours.objective / their_objective - 1):.1e}), gradient norm "
            f"{np.abs(convergence['gradient']).max():.1e}"
        )
        print(
            f"  max rel. diff: estimates {_relative(ours.params, estimates):.1e}, "
            f"SEs {_relative(ours.bse, ses):.1e}"
        )


#: Scales of the tutorial's starting Σ and Π for ``--only optimizers``.
START_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def run_optimizers(arguments) -> None:
    """The autos problem's first GMM step at one W (S⁻¹ at the tutorial's start, clustered, so
    the objectives of all starts compare) by Gauss–Newton and by trust-constr at their
    defaults from the tutorial's Σ and Π scaled by START_SCALES: each fit's objective,
    evaluations and CPU time, whether it converged, how many implied costs it left clipped at
    0.001, and whether it reached the lowest objective of the converged fits with no cost
    clipped. (Fits with every cost on the bound switch the supply side off and can go below
    the economic optimum: about 132-146 from × 0.25, against 530.70; pyblp agrees on those
    values.)"""
    import warnings

    products, _, shifted = autos_data()
    model = autos_model(products, shifted, arguments.threads)
    parameters = model.parameters(AUTOS_SIGMA, AUTOS_PI)
    gmm = gmm_options(model.design, "1s", None, "clustered", CLUSTERS, model.n_moments)
    objective = model.objective_function(parameters, covariance=gmm.moment_covariance)
    W = objective.updated_weighting_matrix(objective.evaluate(parameters.theta0, gradient=False))
    rows = []
    for scale in START_SCALES:
        for optimizer in ("gauss-newton", "trust-constr"):
            cpu = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    results = model.fit(
                        scale * AUTOS_SIGMA,
                        scale * AUTOS_PI,
                        W=W,
                        method="1s",
                        optimizer=optimizer,
                        compute_hessian=False,
                    )
                    value = results.objective
                    convergence = results.info.convergence
                    evaluations = convergence["evaluations"]
                    converged, clipped = convergence["converged"], convergence["clipped_costs"]
                except Exception as error:  # a failed fit is a result here
                    value, evaluations = float("nan"), f"{type(error).__name__}"
                    converged, clipped = False, -1
            seconds = time.process_time() - cpu
            rows.append((scale, optimizer, value, evaluations, converged, clipped, seconds))
            print(f"  ... start × {scale:g} {optimizer}: {value:.10g}", flush=True)
    eligible = [row[2] for row in rows if np.isfinite(row[2]) and row[4] and row[5] == 0]
    best = min(eligible, default=np.nan)
    print(
        "autos from scaled starts (one GMM step at W = S⁻¹ of the tutorial's start; best: the "
        "lowest objective of converged fits with no clipped cost)"
    )
    for scale, optimizer, value, evaluations, converged, clipped, cpu in rows:
        close = abs(value - best) <= 1e-6 * max(1.0, abs(best))
        mark = "best" if close and converged and clipped == 0 else "other"
        print(
            f"  start × {scale:<5g} {optimizer:13s} objective {value:.10g} ({mark}), "
            f"converged {converged}, {clipped} costs clipped, {evaluations} evaluations, "
            f"CPU {cpu:.2f} s"
        )


def autos_model(products, shifted, threads):
    """The tutorial's model with supply."""
    return BLPRandomCoefficients.from_formula(
        AUTOS_FORMULA,
        products,
        random=AUTOS_RANDOM,
        demographics="0 + I(1 / income)",
        agent_data=shifted,
        supply=AUTOS_SUPPLY,
        supply_instruments=SUPPLY_INSTRUMENTS,
        costs_type="log",
        costs_bounds=(0.001, None),
        threads=threads,
    )


def run_merger(arguments) -> None:
    import pyblp

    products, agents = datasets.load_mixtape_exercise2()
    products = products.copy()
    products["firm_ids"] = products["product_ids"].str[:2]
    model = common.q5_model(products, agents, threads=arguments.threads)
    ours = model.fit(method="1s", optimizer=common.return_start, compute_hessian=False, **Q5_THETA)
    problem = common.pyblp_q5_problem(pyblp, products, agents)
    theirs = problem.solve(**Q5_THETA, method="1s", optimization=pyblp.Optimization("return"))
    ours_time, merger = common.best_of(
        lambda: ours.merger(firm_ids=MERGER), arguments.merger_repeat
    )
    costs = theirs.compute_costs()
    new_firms = products["firm_ids"].replace(MERGER).to_numpy()
    theirs_time, prices = common.best_of(
        lambda: theirs.compute_prices(firm_ids=new_firms, costs=costs), arguments.merger_repeat
    )
    ours_prices = merger.products["prices_post"].to_numpy()
    markets = merger.equilibrium.markets
    regular = (products["market_ids"] != "C03Q1").to_numpy()
    difference = np.abs(ours_prices - np.ravel(prices))[regular].max()
    print(f"merger F6 -> F1, all 94 markets (best of {arguments.merger_repeat})")
    print(
        f"  blpmodels results.merger      {ours_time.wall:8.3f} s wall  {ours_time.cpu:8.3f} s CPU"
    )
    print(
        f"  pyblp compute_prices          {theirs_time.wall:8.3f} s wall  "
        f"{theirs_time.cpu:8.3f} s CPU   ({theirs_time.wall / ours_time.wall:.1f}x wall)"
    )
    print(f"  largest |FOC| after           {markets['foc_norm'].max():.1e}")
    print(f"  max |price difference|        {difference:.1e} (markets other than C03Q1)")


def run_ours_only(arguments) -> None:
    """Best-of-N CPU and wall time of blpmodels' autos fit at pyblp's options, one line."""
    products, _, shifted = autos_data()
    best_cpu = best_wall = float("inf")
    for _ in range(arguments.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        results = ours_autos(products, shifted, arguments.threads, OUR_OPTIONS["pyblp's"])
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    evaluations = results.info.convergence["evaluations"]
    print(f"{best_cpu:.4f} {best_wall:.4f} {evaluations} {results.objective:.12g}")


def run_baseline(arguments) -> None:
    """This checkout's autos fit against the package in ``--baseline``, in alternating fresh
    processes (the load of a shared machine changes during a run; alternating spreads it)."""
    paths = {"this checkout": "", "baseline": os.path.abspath(arguments.baseline)}
    best: dict[str, list[float]] = {label: [np.inf, np.inf] for label in paths}
    found: dict[str, str] = {}
    command = [sys.executable, os.path.abspath(__file__), "--ours-only", "--repeat", "2"]
    if arguments.threads is not None:
        command += ["--threads", str(arguments.threads)]
    for _ in range(arguments.baseline_rounds):
        for label, path in paths.items():
            environment = dict(os.environ)
            if path:
                environment["PYTHONPATH"] = os.pathsep.join(
                    [path, *filter(None, [os.environ.get("PYTHONPATH")])]
                )
            line = (
                subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            cpu, wall, evaluations, objective = line.split()
            best[label] = [min(best[label][0], float(cpu)), min(best[label][1], float(wall))]
            found[label] = f"{evaluations} evaluations, objective {objective}"
    print(
        f"autos, blpmodels at pyblp's options: best of {arguments.baseline_rounds} processes × 2 "
        f"fits, threads {arguments.threads}"
    )
    for label, (cpu, wall) in best.items():
        print(f"  {label:14s} CPU {cpu:7.3f} s  wall {wall:7.3f} s  ({found[label]})")
    ratio = best["baseline"][0] / best["this checkout"][0]
    print(f"  CPU ratio baseline / this checkout: {ratio:.2f}")


def main() -> None:
    parser = common.comparison_parser(
        __doc__,
        ["autos", "merger", "optimizers"],
        "an autos fit",
        repeat=3,
        repeated="blpmodels autos fits",
    )
    parser.add_argument("--pyblp-repeat", type=int, default=1, help="best of N pyblp autos fits")
    parser.add_argument("--merger-repeat", type=int, default=5, help="best of N mergers")
    parser.add_argument("--baseline", help="directory holding an older blpmodels package")
    parser.add_argument(
        "--baseline-rounds", type=int, default=3, help="alternating process pairs (--baseline)"
    )
    parser.add_argument("--ours-only", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.ours_only:  # one side of --baseline, in its own process
        run_ours_only(arguments)
        return
    if arguments.baseline:
        print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}")
        run_baseline(arguments)
        print(f"load average (1, 5, 15 min) at end: {os.getloadavg()}")
        return
    pyblp = common.quiet_pyblp()
    print(f"blpmodels {blpmodels.__version__} vs pyblp {pyblp.__version__}")
    # Other jobs on the machine slow both libraries (and threads); the load says how busy it was.
    print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}")
    if not arguments.only or "autos" in arguments.only:
        run_autos(arguments)
    if not arguments.only or "merger" in arguments.only:
        run_merger(arguments)
    if arguments.only and "optimizers" in arguments.only:
        run_optimizers(arguments)
    print(f"load average (1, 5, 15 min) at end: {os.getloadavg()}")
    if arguments.profile:
        products, _, shifted = autos_data()
        common.print_profile(
            lambda: ours_autos(products, shifted, arguments.threads, OUR_OPTIONS["pyblp's"])
        )


if __name__ == "__main__":
    main()
