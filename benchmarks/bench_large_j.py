"""Large-J markets: J = 100, 250, 500 products per market, blpmodels against pyblp 1.3.0.

Problems come from :func:`blpmodels.simulation.scale.simulate_scale` (T = 50 markets × J
products × 200 agents, σ on prices = 0.5, shares exact at the true θ, seed 0), estimated with
``shares ~ 1 + x + [prices ~ cost_shifter + z0 + z1 + rivals_x + rivals_cost_shifter]``,
``random="0 + prices"``, from σ = 1 — the problem of ``bench_scale.py`` with more products.

With 200 agents and J ≥ 200 products, ∂s/∂δ = diag(s) − UUᵀ (U = [√w_i s_i], J × I) is
diagonal minus rank I, which blpmodels solves by Woodbury over the agents
(:func:`blpmodels.kernel.woodbury.woodbury_delta_jacobian`) instead of a dense J×J inverse.

For each J, each library runs in a fresh process (peak RSS is the process's, from
``getrusage``) and reports, after the data are built (times: best wall of ``--repeat`` runs,
default 2, with that run's CPU time; the first run of a process pays one-time costs):

* ``eval``: one objective + gradient evaluation at the start, as pyblp's
  ``Optimization('return')`` (logit δ start, standard errors included in both);
* ``late``: blpmodels only, the mean of ``--evaluations`` objective + gradient evaluations at
  θ = σ₀(1 + 0.02k), each warm-started from the last (the Newton δ solver reusing the last
  inverse of ∂log s/∂δ): the per-evaluation cost inside a fit;
* ``fit``: a one-step GMM fit with the same data, start, contraction tolerance (1e-14) and
  optimizer (``--optimizer``, default trust-constr in both: blpmodels' default and pyblp's
  default differ), wall and CPU seconds, objective evaluations, σ̂ and the objective.

``--path dense|woodbury|auto`` forces blpmodels' solve (``WOODBURY_CROSSOVER`` 0 or ∞), to
measure the crossover; ``--baseline PATH`` also runs the blpmodels found at PATH (e.g. the
code before a change). ``--libraries`` skips one library.

Run ``python benchmarks/bench_large_j.py`` (about ten minutes, most of it pyblp at J = 500);
``--quick`` (J = 100 only) or ``--products 250 500`` to choose J.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings

import common  # first: it sets one BLAS thread before numpy loads
import numpy as np

MARKETS, AGENTS = 50, 200
START_SIGMA = 1.0
INSTRUMENTS = ["cost_shifter", "z0", "z1", "rivals_x", "rivals_cost_shifter"]


def _problem(products: int):
    from blpmodels.simulation.scale import simulate_scale

    return simulate_scale(MARKETS, products, AGENTS, seed=0)


def _timed(function, repeat: int) -> tuple[common.Timing, object]:
    return common.best_of(function, repeat)


def child_ours(args: argparse.Namespace) -> dict:
    if args.baseline:
        sys.path.insert(0, args.baseline)
    try:
        from blpmodels.kernel import woodbury as crossover_module
    except ImportError:  # a baseline from before kernel/woodbury.py held the Woodbury solve
        from blpmodels.kernel import jacobians as crossover_module

    if args.path != "auto":
        crossover_module.WOODBURY_CROSSOVER = 0.0 if args.path == "dense" else float("inf")
    problem = _problem(args.products)
    model = problem.model()
    peak_data = common.peak_mib()
    warnings.simplefilter("ignore")
    evaluation, _ = _timed(
        lambda: model.fit(
            sigma=START_SIGMA, optimizer=common.return_start, compute_hessian=False, method="1s"
        ),
        args.repeat,
    )
    parameters = model.parameters(sigma=START_SIGMA)
    objective = model.objective_function(parameters)
    theta0 = parameters.theta0
    objective.evaluate(theta0)  # the first solve from the logit δ, not timed
    late = []
    for step in range(1, args.evaluations + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        objective.evaluate(theta0 * (1.0 + 0.02 * step))
        late.append((time.perf_counter() - start, time.process_time() - start_cpu))
    options = {"optimizer": args.optimizer, "method": "1s"}
    fit, results = _timed(lambda: model.fit(sigma=START_SIGMA, **options), args.repeat)
    convergence = results.info.convergence
    return {
        "library": "blpmodels" + (" (baseline)" if args.baseline else ""),
        "products": args.products,
        "path": args.path,
        "eval_wall": evaluation.wall,
        "eval_cpu": evaluation.cpu,
        "late_wall": float(np.mean([w for w, _ in late])),
        "late_cpu": float(np.mean([c for _, c in late])),
        "fit_wall": fit.wall,
        "fit_cpu": fit.cpu,
        "evaluations": int(convergence["evaluations"]),
        "sigma": float(results.params.iloc[-1]),
        "objective": float(results.info.objective),
        "peak_data_mib": peak_data,
        "peak_mib": common.peak_mib(),
    }


def child_pyblp(args: argparse.Namespace) -> dict:
    pyblp = common.quiet_pyblp()
    problem = _problem(args.products)
    products = problem.products.copy()
    for number, name in enumerate(INSTRUMENTS):
        products[f"demand_instruments{number}"] = products[name]
    pyblp_problem = pyblp.Problem(
        (pyblp.Formulation("1 + x + prices"), pyblp.Formulation("0 + prices")),
        products,
        agent_data=problem.agents,
    )
    peak_data = common.peak_mib()
    iteration = pyblp.Iteration("squarem", {"atol": 1e-14})

    def solve(optimization):
        return pyblp_problem.solve(
            sigma=np.array([[START_SIGMA]]),
            method="1s",
            optimization=optimization,
            iteration=iteration,
        )

    evaluation, _ = _timed(lambda: solve(pyblp.Optimization("return")), args.repeat)
    fit, results = _timed(lambda: solve(pyblp.Optimization(args.optimizer)), args.repeat)
    return {
        "library": "pyblp",
        "products": args.products,
        "eval_wall": evaluation.wall,
        "eval_cpu": evaluation.cpu,
        "fit_wall": fit.wall,
        "fit_cpu": fit.cpu,
        "evaluations": int(results.objective_evaluations),
        "sigma": float(results.sigma[0, 0]),
        "objective": float(results.objective),
        "peak_data_mib": peak_data,
        "peak_mib": common.peak_mib(),
    }


def _run_child(arguments: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", *arguments]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        return {"failed": finished.stderr.strip().splitlines()[-1:]}
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _print_table(rows: list[dict]) -> None:
    print(
        f"\n{'J':>4} {'library':<22} {'eval s (cpu)':>16} {'late s (cpu)':>16} "
        f"{'fit s (cpu)':>18} {'evals':>5} {'peak MiB':>9} {'sigma':>10}"
    )
    for row in rows:
        if "failed" in row:
            print(f"{row.get('products', '?'):>4} {row.get('library', '?'):<22} {row['failed']}")
            continue
        late = f"{row['late_wall']:7.3f} ({row['late_cpu']:6.3f})" if "late_wall" in row else "-"
        print(
            f"{row['products']:>4} {row['library']:<22} "
            f"{row['eval_wall']:7.3f} ({row['eval_cpu']:6.3f}) {late:>16} "
            f"{row['fit_wall']:8.2f} ({row['fit_cpu']:7.2f}) {row['evaluations']:>5} "
            f"{row['peak_mib']:9.0f} {row['sigma']:10.6f}"
        )
    print("\nratios pyblp / blpmodels (wall, CPU in parentheses):")
    for products in sorted({row["products"] for row in rows if "failed" not in row}):
        same = {
            row["library"]: row
            for row in rows
            if row.get("products") == products and "library" in row
        }
        reference = same.get("pyblp")
        if reference is None or "failed" in reference:
            continue
        for library, row in same.items():
            if library == "pyblp" or "failed" in row:
                continue
            per_evaluation = (reference["fit_cpu"] / reference["evaluations"]) / (
                row["fit_cpu"] / row["evaluations"]
            )
            print(
                f"  J = {products:>3} {library:<22} eval "
                f"{reference['eval_wall'] / row['eval_wall']:6.1f}× "
                f"({reference['eval_cpu'] / row['eval_cpu']:6.1f}×)  fit "
                f"{reference['fit_wall'] / row['fit_wall']:6.1f}× "
                f"({reference['fit_cpu'] / row['fit_cpu']:6.1f}×)  per evaluation in the fit "
                f"{per_evaluation:6.1f}× CPU"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["ours", "pyblp"])
    parser.add_argument("--products", type=int, nargs="+", default=[100, 250, 500])
    parser.add_argument("--quick", action="store_true", help="J = 100 only")
    parser.add_argument("--libraries", nargs="+", default=["blpmodels", "pyblp"])
    parser.add_argument("--optimizer", default="trust-constr")
    parser.add_argument("--path", choices=["auto", "dense", "woodbury"], default="auto")
    parser.add_argument("--evaluations", type=int, default=5)
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--repeat", type=int, default=2, help="best of N evaluations and fits")
    args = parser.parse_args(argv)
    if args.child:
        args.products = args.products[0]
        child = child_ours if args.child == "ours" else child_pyblp
        print(json.dumps(child(args)))
        return
    products = [100] if args.quick else args.products
    rows = []
    for size in products:
        common_args = ["--products", str(size), "--optimizer", args.optimizer]
        common_args += ["--evaluations", str(args.evaluations), "--repeat", str(args.repeat)]
        runs = []
        if "blpmodels" in args.libraries:
            runs.append(["ours", *common_args, "--path", args.path])
            if args.baseline:
                runs.append(["ours", *common_args, "--baseline", args.baseline])
        if "pyblp" in args.libraries:
            runs.append(["pyblp", *common_args])
        for run in runs:
            row = _run_child(run)
            row.setdefault("products", size)
            rows.append(row)
            print(json.dumps(row), flush=True)
    _print_table(rows)


if __name__ == "__main__":
    main()
