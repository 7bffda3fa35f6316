"""Scale: fits of large simulated random-coefficients problems, memory limits, Dask overhead.

Problems come from :func:`blpmodels.simulation.scale.simulate_scale` (T markets × 50 products ×
200 agents, σ on prices = 0.5, shares exact at the true θ, seed 0), estimated with
``shares ~ 1 + x + [prices ~ cost_shifter + z0 + z1 + rivals_x + rivals_cost_shifter]``,
``random="0 + prices"``, from σ = 1, with ``--optimizer`` (default trust-constr, the
optimizer of the 2026-12-03 tables; ``default`` takes blpmodels' own default).

Parts (``--parts``):

* ``fit``  each T in ``--markets`` fitted in a fresh subprocess with the threads backend,
  without a memory limit and with ``--memory-limit`` (default 2GiB): wall and CPU time of the
  fit, evaluations, and the peak resident memory of the process (``getrusage``) after the data
  were built and at the end. ``--baseline PATH`` also fits with the blpmodels found at PATH
  (e.g. an export of an older commit, with ``simulation_scale.py`` copied in).
* ``dask`` per-evaluation time of the objective and gradient on threads (2 threads) and on a
  Dask ``LocalCluster`` (2 worker processes, 1 thread each), at the same θ sequence, for
  exercise 2 Q5 (shared data) and T = ``--dask-markets`` (default 2,000: 100,000
  product-markets); the first evaluation (chunks built or scattered) reported apart. Workers
  start with ``MALLOC_MMAP_THRESHOLD_`` = ``--mmap-threshold`` (default 1 GiB; 0: Dask's
  default environment), see docs/dask.md.
* ``pyblp`` pyblp 1.3.0 on T = ``--pyblp-markets`` (default 2,000) with the same data, start,
  contraction tolerance (1e-14) and optimizer (``--pyblp-optimizer``, default trust-constr,
  blpmodels' default), and blpmodels' fit for the ratio; killed after ``--pyblp-timeout``
  seconds (reported as such).

Run ``python benchmarks/bench_scale.py`` (minutes to an hour; see docs/performance.md for the
numbers). ``--markets 1000`` and ``--parts fit`` for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import common  # first: it sets one BLAS thread before numpy loads
import numpy as np

PRODUCTS, AGENTS = 50, 200
START_SIGMA = 1.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ children


def child_fit(args: argparse.Namespace) -> dict:
    if args.baseline:
        sys.path.insert(0, args.baseline)
    from blpmodels.simulation.scale import simulate_scale

    began = time.perf_counter()
    problem = simulate_scale(args.markets, PRODUCTS, args.agents, seed=0)
    data_seconds = time.perf_counter() - began
    keywords = {} if args.memory_limit in (None, "none") else {"memory_limit": args.memory_limit}
    model = problem.model(**keywords)
    peak_data = common.peak_mib()
    wall, cpu = time.perf_counter(), _cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = {} if args.optimizer == "default" else {"optimizer": args.optimizer}
        results = model.fit(sigma=START_SIGMA, **options)
    convergence = results.info.convergence
    return {
        "markets": args.markets,
        "agents": args.agents,
        "memory_limit": args.memory_limit,
        "baseline": bool(args.baseline),
        "data_seconds": data_seconds,
        "fit_seconds": time.perf_counter() - wall,
        "fit_cpu": _cpu() - cpu,
        "evaluations": convergence["evaluations"],
        "optimizer": convergence["optimizer"],
        "converged": bool(convergence["converged"]),
        "threads": convergence["threads"],
        "peak_data_mib": peak_data,
        "peak_mib": common.peak_mib(),
        "params": results.params.to_dict(),
        "objective": float(results.info.objective),
    }


def child_dask(args: argparse.Namespace) -> dict:
    import dask
    from distributed import Client, LocalCluster

    if args.mmap_threshold:
        # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off
        # glibc's adaptive mmap threshold: every large numpy temporary is then mapped and
        # unmapped afresh, and a chunk's step took twice as long as in the driver process.
        dask.config.set(
            {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": args.mmap_threshold}
        )

    from blpmodels.simulation.scale import simulate_scale

    problem = None if args.problem == "ex2q5" else simulate_scale(args.markets, PRODUCTS, AGENTS)

    def build(**keywords):
        if problem is None:
            return common.q5_model(**keywords), common.Q5_START
        return problem.model(**keywords), {"sigma": START_SIGMA}

    out: dict = {
        "problem": args.problem,
        "markets": args.markets,
        "mmap_threshold": args.mmap_threshold,
    }
    cluster = client = None
    for backend in ("threads", "dask"):
        if backend == "dask":
            cluster = LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            client = Client(cluster)
            model, start = build(backend="dask", client=client)
        else:
            model, start = build(threads=2)
        parameters = model.parameters(**start)
        objective = model.objective_function(parameters)
        theta0 = parameters.theta0
        times = []
        values = []
        for step in range(args.evaluations + 1):
            theta = theta0 * (1.0 + 0.02 * step)
            began = time.perf_counter()
            evaluation = objective.evaluate(theta)
            times.append(time.perf_counter() - began)
            values.append(float(evaluation.objective))
        out[backend] = {
            "first_seconds": times[0],
            "per_evaluation": float(np.mean(times[1:])),
            "chunks": len(objective.chunks),
            "objectives": values,
        }
        if client is not None:
            client.close()
            cluster.close()
    out["overhead"] = out["dask"]["per_evaluation"] / out["threads"]["per_evaluation"] - 1
    out["max_objective_difference"] = float(
        np.max(np.abs(np.subtract(out["dask"]["objectives"], out["threads"]["objectives"])))
    )
    return out


def child_pyblp(args: argparse.Namespace) -> dict:
    import pyblp

    from blpmodels.simulation.scale import simulate_scale

    pyblp.options.verbose = False
    problem = simulate_scale(args.markets, PRODUCTS, AGENTS, seed=0)
    products = problem.products.copy()
    for number, name in enumerate(["cost_shifter", "z0", "z1", "rivals_x", "rivals_cost_shifter"]):
        products[f"demand_instruments{number}"] = products[name]
    began, cpu = time.perf_counter(), _cpu()
    pyblp_problem = pyblp.Problem(
        (pyblp.Formulation("1 + x + prices"), pyblp.Formulation("0 + prices")),
        products,
        agent_data=problem.agents,
    )
    results = pyblp_problem.solve(
        sigma=np.array([[START_SIGMA]]),
        method="1s",
        optimization=pyblp.Optimization(args.pyblp_optimizer),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
    )
    return {
        "markets": args.markets,
        "fit_seconds": time.perf_counter() - began,
        "fit_cpu": _cpu() - cpu,
        "peak_mib": common.peak_mib(),
        "sigma": float(results.sigma[0, 0]),
        "beta": np.asarray(results.beta).ravel().tolist(),
        "objective": float(results.objective),
        "optimizer": args.pyblp_optimizer,
        "evaluations": int(results.objective_evaluations),
        "converged": bool(results.converged),
    }


# ------------------------------------------------------------------ parent


def _run_child(arguments: list[str], timeout: float | None = None) -> dict:
    command = [sys.executable, __file__, "--child", *arguments]
    try:
        finished = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:g} s"}
    if finished.returncode != 0:
        return {"failed": finished.stderr.strip().splitlines()[-1:]}
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _fits(args: argparse.Namespace) -> list[dict]:
    rows = []
    for markets in args.markets:
        for limit in ("none", args.memory_limit):
            size = ["--markets", str(markets), "--agents", str(args.agents)]
            size += ["--optimizer", args.optimizer]
            row = _run_child(["fit", *size, "--memory-limit", limit])
            row.setdefault("markets", markets)
            row.setdefault("memory_limit", limit)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.baseline:
            row = _run_child(
                [
                    "fit",
                    "--markets",
                    str(markets),
                    "--memory-limit",
                    "none",
                    "--baseline",
                    args.baseline,
                    "--optimizer",
                    args.optimizer,
                ]
            )
            row.setdefault("markets", markets)
            row["baseline"] = True
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["fit", "dask", "pyblp"])
    parser.add_argument("--markets", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--agents", type=int, default=AGENTS)
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--baseline")
    parser.add_argument("--problem", default="scale")
    parser.add_argument("--evaluations", type=int, default=5)
    parser.add_argument("--parts", nargs="+", default=["fit", "dask", "pyblp"])
    parser.add_argument("--dask-markets", type=int, default=2000)
    parser.add_argument("--pyblp-markets", type=int, default=2000)
    parser.add_argument("--pyblp-timeout", type=float, default=1800.0)
    parser.add_argument("--pyblp-optimizer", default="trust-constr")
    parser.add_argument("--mmap-threshold", type=int, default=2**30)
    parser.add_argument("--optimizer", default="trust-constr")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    if args.child:
        args.markets = args.markets[0]
        child = {"fit": child_fit, "dask": child_dask, "pyblp": child_pyblp}[args.child]
        print(json.dumps(child(args)))
        return
    report: dict = {"load": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if "fit" in args.parts:
        report["fits"] = _fits(args)
    if "dask" in args.parts:
        report["dask"] = []
        for problem, markets in (("ex2q5", 0), ("scale", args.dask_markets)):
            row = _run_child(
                [
                    "dask",
                    "--problem",
                    problem,
                    "--markets",
                    str(markets),
                    "--evaluations",
                    str(args.evaluations),
                    "--mmap-threshold",
                    str(args.mmap_threshold),
                ]
            )
            report["dask"].append(row)
            print(json.dumps(row), flush=True)
    if "pyblp" in args.parts:
        markets = str(args.pyblp_markets)
        fit = ["fit", "--markets", markets, "--memory-limit", "none"]
        ours = _run_child([*fit, "--optimizer", args.pyblp_optimizer])
        theirs = _run_child(
            ["pyblp", "--markets", markets, "--pyblp-optimizer", args.pyblp_optimizer],
            timeout=args.pyblp_timeout,
        )
        report["pyblp"] = {"blpmodels": ours, "pyblp": theirs}
        print(json.dumps(report["pyblp"]), flush=True)
    report["load_after"] = os.getloadavg()
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
