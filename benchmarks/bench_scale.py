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
  product-markets); the first evaluation (chunks built or scattered) reported apart. Threads
  and Dask alternate on fresh objectives ``--repeat`` times (default 3; the best is shown);
  beside the wall times: CPU per evaluation (the driver's, with the in-process scheduler, and
  the workers'), and the client's round trips per evaluation (``submit``, ``gather``,
  ``run``, ``nthreads``, ``scheduler_info``, ... counted on the client, so an older backend
  is counted alike). ``--baseline PATH`` also runs it with the blpmodels at PATH (e.g. ``git
  archive HEAD blpmodels | tar -x -C PATH``), in its own process. Workers start with
  ``MALLOC_MMAP_THRESHOLD_`` = ``--mmap-threshold`` and ``MALLOC_TRIM_THRESHOLD_`` =
  ``--trim-threshold`` (default 1 GiB each; 0: Dask's default environment), and the
  scheduler keeps its connections to the workers between ``Client.run`` calls
  (``distributed.scheduler.reuse-broadcast-comm``; ``--new-broadcast-comms``: Dask's default,
  a new one per call); see docs/dask.md.
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


#: Client methods that go to the scheduler (and maybe the workers) and back: counted per
#: evaluation, whatever the backend's version (``--baseline`` runs an older one).
_CLIENT_CALLS = ("submit", "gather", "scatter", "run", "scheduler_info", "nthreads", "compute")


def _count_client_calls(client) -> dict:
    """Wrap the client's calls that make round trips; returns the live call counts."""
    counts = dict.fromkeys(_CLIENT_CALLS, 0)
    for name in _CLIENT_CALLS:
        method = getattr(client, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            counts[_name] += 1
            return _method(*args, **kwargs)

        setattr(client, name, counted)
    return counts


def _worker_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_dask(args: argparse.Namespace) -> dict:
    if args.baseline:
        sys.path.insert(0, args.baseline)  # before blpmodels loads (workers inherit sys.path)
    import dask
    from distributed import Client, LocalCluster

    if args.mmap_threshold:
        # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off
        # glibc's adaptive mmap threshold: every large numpy temporary is then mapped and
        # unmapped afresh, and a chunk's step took twice as long as in the driver process.
        dask.config.set(
            {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": args.mmap_threshold}
        )
    if args.trim_threshold:
        # With the mmap threshold up, the 64 KiB trim threshold still hands the heap's top
        # back to the kernel after each step and faults it in again at the next: 4,300 page
        # faults and 11 ms of system CPU per exercise-2 evaluation on two workers, against
        # 200 faults and 1.5 ms with the trim threshold at the mmap threshold (as glibc's
        # adaptive thresholds leave it in the driver).
        dask.config.set(
            {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": args.trim_threshold}
        )

    # The scheduler (in this process) keeps its connections to the workers between
    # Client.run calls instead of opening new ones each time: 3.3 against 4-5.6 ms of this
    # process's CPU per call on two workers (the Dask backend makes one per evaluation).
    dask.config.set({"distributed.scheduler.reuse-broadcast-comm": not args.new_broadcast_comms})

    import blpmodels
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
        "trim_threshold": args.trim_threshold,
        "reuse_broadcast_comm": not args.new_broadcast_comms,
        "blpmodels": os.path.dirname(blpmodels.__file__),
        "load_before": os.getloadavg(),
    }
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster)
    counts = _count_client_calls(client)
    runs: dict = {"threads": [], "dask": []}
    # Threads and Dask alternate, each on a fresh objective (the same θ sequence and warm
    # starts), so a change of the machine's load hits both; the best repeat is reported.
    for _ in range(args.repeat):
        for backend in ("threads", "dask"):
            keywords = {"backend": "dask", "client": client} if backend == "dask" else {}
            model, start = build(threads=2) if backend == "threads" else build(**keywords)
            parameters = model.parameters(**start)
            objective = model.objective_function(parameters)
            theta0 = parameters.theta0
            times, values = [], []
            for step in range(args.evaluations + 1):
                if step == 1:
                    workers_cpu = sum(client.run(_worker_cpu).values())
                    calls = dict(counts)
                    cpu = _cpu()
                theta = theta0 * (1.0 + 0.02 * step)
                began = time.perf_counter()
                evaluation = objective.evaluate(theta)
                times.append(time.perf_counter() - began)
                values.append(float(evaluation.objective))
            driver_cpu = _cpu() - cpu
            calls = {name: counts[name] - calls[name] for name in _CLIENT_CALLS}
            workers_cpu = sum(client.run(_worker_cpu).values()) - workers_cpu
            objective.backend.close()
            runs[backend].append(
                {
                    "first_seconds": times[0],
                    "per_evaluation": float(np.mean(times[1:])),
                    # The driver's CPU includes the scheduler's (LocalCluster runs it here).
                    "driver_cpu": driver_cpu / args.evaluations,
                    "workers_cpu": workers_cpu / args.evaluations if backend == "dask" else 0.0,
                    "round_trips": {
                        name: count / args.evaluations for name, count in calls.items() if count
                    },
                    "chunks": len(objective.chunks),
                    "objectives": values,
                }
            )
    client.close()
    cluster.close()
    for backend, rows in runs.items():
        best = min(rows, key=lambda row: row["per_evaluation"])
        out[backend] = {
            **best,
            "per_evaluation_repeats": [row["per_evaluation"] for row in rows],
            "cpu_per_evaluation": best["driver_cpu"] + best["workers_cpu"],
        }
    out["overhead"] = out["dask"]["per_evaluation"] / out["threads"]["per_evaluation"] - 1
    out["cpu_overhead"] = (
        out["dask"]["cpu_per_evaluation"] / out["threads"]["cpu_per_evaluation"] - 1
    )
    out["dask_round_trips_per_evaluation"] = sum(out["dask"]["round_trips"].values())
    out["max_objective_difference"] = float(
        np.max(np.abs(np.subtract(out["dask"]["objectives"], out["threads"]["objectives"])))
    )
    out["load_after"] = os.getloadavg()
    return out


def _dask_line(row: dict) -> str:
    """One readable line of a ``dask`` child's numbers."""
    if "failed" in row:
        return f"dask {row.get('problem')}: failed {row['failed']}"
    threads, dask = row["threads"], row["dask"]
    trips = ", ".join(f"{count:g} {name}" for name, count in dask["round_trips"].items())
    return (
        f"dask {row['problem']} ({row['blpmodels']}): per evaluation (best of "
        f"{len(dask['per_evaluation_repeats'])}) threads {1e3 * threads['per_evaluation']:.1f} "
        f"ms, dask {1e3 * dask['per_evaluation']:.1f} ms: overhead {100 * row['overhead']:+.0f}% "
        f"(medians {1e3 * np.median(threads['per_evaluation_repeats']):.1f} and "
        f"{1e3 * np.median(dask['per_evaluation_repeats']):.1f} ms); "
        f"CPU threads {1e3 * threads['cpu_per_evaluation']:.1f} ms, dask "
        f"{1e3 * dask['cpu_per_evaluation']:.1f} ms (driver and scheduler "
        f"{1e3 * dask['driver_cpu']:.1f}, workers {1e3 * dask['workers_cpu']:.1f}); round trips "
        f"per evaluation {row['dask_round_trips_per_evaluation']:g} ({trips}); chunks "
        f"{threads['chunks']} / {dask['chunks']}; load {row['load_before'][0]:.2f} -> "
        f"{row['load_after'][0]:.2f}; max |q difference| {row['max_objective_difference']:.1e}"
    )


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
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["fit", "dask", "pyblp"])
    parser.add_argument("--dask-markets", type=int, default=2000)
    parser.add_argument("--pyblp-markets", type=int, default=2000)
    parser.add_argument("--pyblp-timeout", type=float, default=1800.0)
    parser.add_argument("--pyblp-optimizer", default="trust-constr")
    parser.add_argument("--mmap-threshold", type=int, default=2**30)
    parser.add_argument("--trim-threshold", type=int, default=2**30)
    parser.add_argument("--new-broadcast-comms", action="store_true")
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
            for baseline in ([args.baseline] if args.baseline else []) + [None]:
                arguments = ["dask", "--problem", problem, "--markets", str(markets)]
                arguments += ["--evaluations", str(args.evaluations)]
                arguments += ["--mmap-threshold", str(args.mmap_threshold)]
                arguments += ["--trim-threshold", str(args.trim_threshold)]
                arguments += ["--new-broadcast-comms"] if args.new_broadcast_comms else []
                arguments += ["--repeat", str(args.repeat)]
                row = _run_child(arguments + (["--baseline", baseline] if baseline else []))
                row["baseline"] = baseline
                report["dask"].append(row)
                print(json.dumps(row), flush=True)
                print(_dask_line(row), flush=True)
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
