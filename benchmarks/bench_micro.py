"""Time blpmodels against pyblp 1.3.0 on micro-moment estimation, in one run, with peak memory.

Problems (Mixtape exercise 3; both libraries with the same data, agent draws, starting values,
optimizer and options):

* ``ex3-q2``  question 2: ``random="1 + mushy + prices"`` with Π on log income, market and
  product fixed effects absorbed, four excluded instruments; micro moments E[log income |
  inside] = 7.9 (100 observations in C01Q1-C01Q2) and two second-choice statistics, P(second
  choice outside) = 0.28 and P(mushy first and second) = 0.31 (200 observations); start Σ =
  diag(1, 1, 6), Π = (-0.3, 0.1, -6); W from the initial update at the start; one GMM step;
  l-bfgs-b with gtol 1e-10 (pyblp's options; blpmodels also with trust-constr and with
  Gauss–Newton on the moments, ``optimizer="gauss-newton"``).
* ``s3-rcnl`` supplemental 3: the same model with firms as nests (RCNL, ρ starting at 0.5) and a
  fourth micro moment, P(second choice from the first choice's firm) = 0.35; second choices
  re-solve the nested logit without each first choice; l-bfgs-b with gtol 1e-8.
* ``s3-rcnl-eval`` one objective and gradient evaluation of ``s3-rcnl`` at its start (with
  the initial update and the standard errors, as pyblp's ``Optimization('return')`` does).
* ``nevo-scores`` micro scores as in pyblp's post-estimation tutorial: the Nevo (2000) model
  (``bench_pyblp.py``'s, 13 parameters in θ) at the tutorial's starting values, a survey of
  1,000 consumers in all 94 markets sampled alike (outside option included) drawn from the
  model (``simulate_micro_data``, seed 0), their demographics kept and their unobserved
  tastes integrated out with 1,000 normal draws each (1,000,000 rows, weights 1/1,000);
  timed is ``results.micro_scores(dataset, micro)`` against pyblp's
  ``results.compute_micro_scores(dataset, micro)`` on the same rows (the fits at the start,
  outside the timing). The parent builds the rows once and hands both children the file.
* ``petrin`` pyblp's micro-moment tutorial: Petrin (2002) minivans, demand and log-cost supply,
  ten CEX ratio moments, start at the tutorial's published estimates, two-step GMM with
  clustered W and standard errors, SQUAREM atol 1e-13 (blpmodels ``fp_tol=1e-13``) and the
  tutorial's BFGS with gtol 1e-4 on θ itself (blpmodels ``optimizer="bfgs"``,
  ``scale_parameters=False``); blpmodels also with its default optimizer. The specification is
  ``tests/test_micro_petrin.py``'s (checked against pyblp there); pyblp's fit takes about ten
  minutes (``--pyblp-timeout``).
* ``petrin-eval`` one evaluation of ``petrin`` at its start (initial update, objective,
  gradient, clustered standard errors: pyblp's ``method="1s"`` with ``Optimization('return')``).

Each library's fit runs in a fresh subprocess (``--child``), which reports its wall and CPU time
(building the problem included), evaluation counts, and the peak resident memory of that
process (``resource.getrusage``), both before the fit (imports, data, problem) and at the end,
so the memory numbers of the two libraries are comparable. The parent prints them side by side
with the speed ratio and the largest relative difference between the estimates.

Run ``python benchmarks/bench_micro.py`` (needs pyblp and the shared data; pyblp takes minutes).
``--only ex3-q2 s3-rcnl s3-rcnl-eval nevo-scores petrin petrin-eval`` picks problems,
``--repeat N`` runs each fit N times (fresh processes; the best wall time is kept),
``--libraries blpmodels`` skips pyblp, ``--threads`` sets blpmodels' threads, ``--baseline
PATH`` also times every problem with the blpmodels found at PATH (e.g. ``git archive`` of an
older commit; each of its fits runs just before the current code's), ``--pyblp-timeout S``
stops a pyblp fit after S seconds (reported, not compared), ``--petrin-maxiter N`` caps BFGS
at N iterations per GMM step in both libraries (``petrin`` on a busy machine: pyblp's full fit
takes ten minutes or more).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import common  # first: it sets one BLAS thread before numpy loads
import numpy as np

PROBLEMS = ("ex3-q2", "s3-rcnl", "s3-rcnl-eval", "nevo-scores", "petrin", "petrin-eval")
#: Where ``tests/test_micro_petrin.py`` (the Petrin specification) lives.
TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
#: The tutorial's optimizer options (pyblp's BFGS on θ, gtol 1e-4).
PETRIN_OPTIONS = {"gtol": 1e-4}
MARKETS = ["C01Q1", "C01Q2"]
CHARACTERISTICS = ["Intercept", "mushy", "prices"]
START = {"sigma": np.diag([1.0, 1.0, 6.0]), "pi": [[-0.3], [0.1], [-6.0]]}
RHO = 0.5
#: l-bfgs-b options of each problem (both libraries).
OPTIONS = {"ex3-q2": {"gtol": 1e-10}, "s3-rcnl": {"gtol": 1e-8}}


def _data(problem: str):
    from blpmodels import datasets

    if problem == "ex3-q2":
        return datasets.load_mixtape_exercise2()
    products, agents = datasets.load_mixtape_exercise2(overidentified=True)
    # Firms as nests; the formula uses four instruments (pyblp reads every column).
    products = products.drop(columns="demand_instruments4").assign(nesting_ids=products["firm_ids"])
    return products, agents


def _start(problem: str) -> dict:
    return START if problem == "ex3-q2" else {**START, "rho": RHO}


def _names(problem: str) -> list[str]:
    names = ["prices", *[f"sigma[{c},{c}]" for c in CHARACTERISTICS]]
    names += [f"pi[{c},log_income]" for c in CHARACTERISTICS]
    return names if problem == "ex3-q2" else [*names, "rho"]


def run_blpmodels(problem: str, products, agents, optimizer: str, threads) -> dict:
    from blpmodels import BLPRandomCoefficients, MicroDataset, MicroMoment

    model = BLPRandomCoefficients.from_formula(
        common.Q5_FORMULA,
        products,
        absorb=common.FIXED_EFFECTS,
        random="1 + mushy + prices",
        demographics="0 + log_income",
        agent_data=agents,
        threads=threads,
    )
    survey = MicroDataset("diversion", 200, MARKETS, second_choices=True)
    moments = [
        MicroMoment.mean("log_income", MicroDataset("income", 100, MARKETS), 7.9),
        MicroMoment.second_choice(survey, 0.28, to="outside"),
        MicroMoment.second_choice(survey, 0.31, first="mushy", to="mushy"),
    ]
    if problem != "ex3-q2":
        moments.append(MicroMoment.second_choice(survey, 0.35, to="same firm"))
    options: dict = {"micro_moments": moments, "method": "1s"}
    if problem.endswith("-eval"):
        options.update(optimizer=lambda fun, theta, bounds: theta, compute_hessian=False)
    elif optimizer == "l-bfgs-b":
        options.update(optimizer="l-bfgs-b", optimizer_options=OPTIONS[problem])
    else:
        options.update(optimizer=optimizer)
    results = model.fit(**_start(problem), **options)
    convergence = results.info.convergence
    return {
        "params": [float(results.params[name]) for name in _names(problem)],
        "objective": float(results.objective),
        "evaluations": int(convergence.get("evaluations", 0)),
        "contractions": int(convergence.get("contraction_evaluations", 0)),
        "converged": bool(convergence.get("converged", False)),
        "micro": [float(v) for v in results.micro_values()["model"]],
    }


def _pyblp_moments(pyblp, nested: bool) -> list:
    """The same micro moments in pyblp's configuration objects."""

    def first_choice(values):
        return lambda t, p, a: np.outer(values(a), np.ones(p.size))

    def second_choice(values):
        return lambda t, p, a: np.broadcast_to(values(p), (a.size, p.size, 1 + p.size))

    income = pyblp.MicroDataset(
        name="income",
        observations=100,
        market_ids=MARKETS,
        compute_weights=lambda t, p, a: np.ones((a.size, p.size)),
    )
    diversion = pyblp.MicroDataset(
        name="diversion",
        observations=200,
        market_ids=MARKETS,
        compute_weights=lambda t, p, a: np.ones((a.size, p.size, 1 + p.size)),
    )
    parts = [
        ("income", income, first_choice(lambda a: a.demographics[:, 0]), 7.9),
        ("outside", diversion, second_choice(lambda p: np.r_[1, np.zeros(p.size)]), 0.28),
        (
            "mushy",
            diversion,
            second_choice(lambda p: np.outer(p.X2[:, 1], np.r_[0, p.X2[:, 1]])),
            0.31,
        ),
    ]
    if nested:
        # Firms are the nests here: same firm = same nest.
        parts.append(
            (
                "same firm",
                diversion,
                second_choice(lambda p: np.c_[np.zeros(p.size), p.nesting_ids == p.nesting_ids.T]),
                0.35,
            )
        )
    return [
        pyblp.MicroMoment(
            name=name,
            value=value,
            parts=pyblp.MicroPart(name=name, dataset=dataset, compute_values=values),
        )
        for name, dataset, values, value in parts
    ]


def run_pyblp(problem: str, products, agents) -> dict:
    import pyblp

    pyblp.options.verbose = False
    formulations = (
        pyblp.Formulation("0 + prices", absorb=common.FIXED_EFFECTS),
        pyblp.Formulation("1 + mushy + prices"),
    )
    built = pyblp.Problem(formulations, products, pyblp.Formulation("0 + log_income"), agents)
    if problem.endswith("-eval"):
        optimization = pyblp.Optimization("return")
    else:
        optimization = pyblp.Optimization("l-bfgs-b", OPTIONS[problem])
    results = built.solve(
        **_start(problem),
        micro_moments=_pyblp_moments(pyblp, problem != "ex3-q2"),
        method="1s",
        optimization=optimization,
    )
    params = [float(results.beta[0, 0]), *np.diag(results.sigma), *np.ravel(results.pi)]
    if problem != "ex3-q2":
        params.append(float(np.ravel(results.rho)[0]))
    return {
        "params": [float(v) for v in params],
        "objective": float(np.squeeze(results.objective)),
        # Cumulative counts include the initial update's evaluation, as ours do.
        "evaluations": int(results.cumulative_objective_evaluations),
        "contractions": int(np.sum(results.cumulative_contraction_evaluations)),
        "converged": bool(results.converged),
        "micro": [float(v) for v in np.ravel(results.micro_values)],
    }


def _petrin_spec():
    """``tests/test_micro_petrin.py``: the tutorial's problem in both libraries."""
    if TESTS not in sys.path:
        sys.path.append(TESTS)
    import test_micro_petrin

    return test_micro_petrin


def run_petrin(library: str, petrin, optimizer: str, threads, maxiter=None) -> dict:
    """The Petrin tutorial fit (``petrin``) or one evaluation at its start (``optimizer`` "-");
    ``maxiter`` caps BFGS's iterations in each GMM step (both libraries)."""
    spec = _petrin_spec()
    evaluate = optimizer == "-"
    bfgs = {**PETRIN_OPTIONS, **({} if maxiter is None else {"maxiter": maxiter})}
    if library == "pyblp":
        import pyblp

        pyblp.options.verbose = False
        options = (
            {"method": "1s", "optimization": pyblp.Optimization("return")}
            if evaluate
            else {"method": "2s", "optimization": pyblp.Optimization("bfgs", bfgs)}
        )
        results = spec.pyblp_solve(pyblp, petrin, **options)
        params = spec.pyblp_values(results)[0]
        return {
            "params": [float(v) for v in params],
            "objective": float(np.squeeze(results.objective)),
            "evaluations": int(results.cumulative_objective_evaluations),
            "contractions": int(np.sum(results.cumulative_contraction_evaluations)),
            "converged": bool(results.converged),
            "micro": [float(v) for v in np.ravel(results.micro_values)],
        }
    model = spec.petrin_model(*petrin)
    if threads is not None:
        model.threads = threads
    if evaluate:
        results = spec.fit_at_start(model)
    else:
        options = {"method": "2s", "fp_tol": spec.FP_TOL, "micro_moments": spec.petrin_moments()}
        if optimizer == "bfgs":
            options.update(optimizer="bfgs", optimizer_options=bfgs, scale_parameters=False)
        results = model.fit(
            spec.SIGMA, spec.PI, cov_type="clustered", cov_kwds=spec.CLUSTERS, **options
        )
    convergence = results.info.convergence
    return {
        "params": [float(v) for v in spec.in_pyblp_order(results.params)],
        "objective": float(results.objective),
        "evaluations": int(convergence.get("evaluations", 0)),
        "contractions": int(convergence.get("contraction_evaluations", 0)),
        "converged": bool(convergence.get("converged", False)),
        "micro": [float(v) for v in results.micro_values()["model"]],
    }


#: The tutorial's survey: 1,000 consumers, every choice (outside option included) sampled.
RESPONDENTS = 1000
#: Normal draws of the unobserved tastes per respondent.
DRAWS = 1000
DEMOGRAPHICS = ["income", "income_squared", "age", "child"]


def _everyone(t, products, agents) -> np.ndarray:
    """Survey weights of pyblp's tutorial dataset: 1 for every agent and choice."""
    return np.ones((len(agents), 1 + len(products)))


def build_respondents(path: str) -> None:
    """The ``nevo-scores`` rows: respondents drawn from the Nevo model at its start, their
    demographics, and ``DRAWS`` normal draws of the four unobserved tastes each."""
    import bench_pyblp
    import pandas as pd

    from blpmodels import MicroDataset, datasets

    with warnings.catch_warnings():  # the fit at the start is not converged, on purpose
        warnings.simplefilter("ignore")
        results = bench_pyblp.ours_nevo(1, evaluate_only=True)
    survey = MicroDataset("tutorial", RESPONDENTS, None, weights=_everyone)
    drawn = results.simulate_micro_data(survey, seed=0)
    _, agents = datasets.load_nevo()
    drawn[DEMOGRAPHICS] = agents.loc[drawn["agent_rows"], DEMOGRAPHICS].to_numpy()
    observed = drawn[["market_ids", "choice_indices", *DEMOGRAPHICS]].reset_index(names="micro_ids")
    rows = observed.loc[observed.index.repeat(DRAWS)].reset_index(drop=True)
    nodes = np.random.default_rng(0).normal(size=(len(rows), 4))
    rows[[f"nodes{k}" for k in range(4)]] = nodes
    rows["weights"] = 1 / DRAWS
    pd.to_pickle(rows, path)


def scores_child(library: str, path: str, baseline: str | None) -> None:
    """Time one ``micro_scores`` call (pyblp: ``compute_micro_scores``) in this process and
    save the scores beside the rows; prints a JSON line with times and memory."""
    warnings.simplefilter("ignore")
    if baseline:
        sys.path.insert(0, baseline)
    import bench_pyblp
    import pandas as pd

    start, start_cpu = time.perf_counter(), time.process_time()
    if library == "pyblp":
        import pyblp

        pyblp.options.verbose = False
        results = bench_pyblp.pyblp_nevo(True)
        dataset = pyblp.MicroDataset(
            name="tutorial",
            observations=RESPONDENTS,
            compute_weights=lambda t, p, a: np.ones((a.size, 1 + p.size)),
        )
    else:
        from blpmodels import MicroDataset

        results = bench_pyblp.ours_nevo(None, evaluate_only=True)
        dataset = MicroDataset("tutorial", RESPONDENTS, None, weights=_everyone)
    micro = pd.read_pickle(path)
    before = common.peak_mib()
    scores_start, scores_cpu = time.perf_counter(), time.process_time()
    if library == "pyblp":
        scores = np.column_stack(results.compute_micro_scores(dataset, micro))
    else:
        scores = results.micro_scores(dataset, micro).to_numpy()
    outcome = {
        "wall": time.perf_counter() - scores_start,
        "cpu": time.process_time() - scores_cpu,
        "setup_wall": scores_start - start,
        "setup_cpu": scores_cpu - start_cpu,
        "peak_before_mib": before,
        "peak_mib": common.peak_mib(),
        "scores": f"{path}.{library}{'-baseline' if baseline else ''}.npy",
    }
    np.save(outcome["scores"], scores)
    print("RESULT " + json.dumps(outcome))


def run_scores(arguments) -> None:
    """``nevo-scores``: each library's scores call in fresh processes, ratios, differences."""
    print(
        f"nevo-scores (best of {arguments.repeat}; {RESPONDENTS:,} respondents × {DRAWS:,} "
        "draws, 13 parameters; times are the scores call alone)"
    )
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "respondents.pkl")
        build_respondents(path)
        runs = {}
        libraries = [
            ("pyblp 1.3.0", "pyblp", None),
            ("blpmodels (baseline)", "blpmodels", arguments.baseline),
            ("blpmodels", "blpmodels", None),
        ]
        for label, library, baseline in libraries:
            if library not in arguments.libraries or (
                label.endswith("(baseline)") and not baseline
            ):
                continue
            extra = ["--micro-data", path] + (["--baseline", baseline] if baseline else [])
            runs[label] = _best("nevo-scores", library, "-", arguments, extra)
            run = runs[label]
            print(
                f"  {label:<28} wall {run['wall']:8.2f} s  CPU {run['cpu']:8.2f} s  peak "
                f"{run['peak_mib']:6.0f} MiB (before the call {run['peak_before_mib']:.0f}); "
                f"results at the start built in {run['setup_wall']:.1f} s"
            )
        theirs = runs.get("pyblp 1.3.0")
        expected = None if theirs is None else np.load(theirs["scores"])
        for label, run in runs.items():
            if run is theirs or theirs is None:
                continue
            ours = np.load(run["scores"])
            scale = np.max(np.abs(expected), axis=0)
            print(
                f"    {label}: speed-up {theirs['wall'] / run['wall']:.1f}x wall, "
                f"{theirs['cpu'] / run['cpu']:.1f}x CPU; max rel. diff of the scores "
                f"{_relative(ours, expected):.1e} (to each parameter's largest score "
                f"{np.max(np.abs(ours - expected) / scale):.1e})"
            )


def child(problem: str, library: str, optimizer: str, threads, baseline=None, maxiter=None) -> None:
    """One fit in this (fresh) process; prints a JSON line with times and memory."""
    warnings.simplefilter("ignore")
    if baseline:
        sys.path.insert(0, baseline)
    start, start_cpu = time.perf_counter(), time.process_time()
    if library == "pyblp":
        import pyblp  # noqa: F401  (imported before the data, as blpmodels is)
    else:
        # blpmodels loads its modules on first use (statsmodels, scipy.stats and formulaic
        # with them, about 0.9 s): load them here, outside the timing, as pyblp's are.
        import blpmodels.models  # noqa: F401
    if problem.startswith("petrin"):
        products, agents = _petrin_spec().load_petrin()
    else:
        products, agents = _data(problem)
    before = common.peak_mib()
    fit_start, fit_cpu = time.perf_counter(), time.process_time()
    if problem.startswith("petrin"):
        outcome = run_petrin(library, (products, agents), optimizer, threads, maxiter)
    elif library == "pyblp":
        outcome = run_pyblp(problem, products, agents)
    else:
        outcome = run_blpmodels(problem, products, agents, optimizer, threads)
    outcome.update(
        wall=time.perf_counter() - fit_start,
        cpu=time.process_time() - fit_cpu,
        total_wall=time.perf_counter() - start,
        total_cpu=time.process_time() - start_cpu,
        peak_before_mib=before,
        peak_mib=common.peak_mib(),
    )
    print("RESULT " + json.dumps(outcome))


def _spawn(problem: str, library: str, optimizer: str, threads, extra=(), timeout=None) -> dict:
    command = [sys.executable, __file__, "--child", problem, library, optimizer, *extra]
    if threads is not None:
        command += ["--threads", str(threads)]
    finished = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    for line in finished.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{library} {problem} failed:\n{finished.stdout}\n{finished.stderr}")


def _best(problem: str, library: str, optimizer: str, arguments, extra=()) -> dict:
    timeout = arguments.pyblp_timeout if library == "pyblp" else None
    if problem.startswith("petrin") and arguments.petrin_maxiter is not None:
        extra = [*extra, "--petrin-maxiter", str(arguments.petrin_maxiter)]
    runs = [
        _spawn(problem, library, optimizer, arguments.threads, extra, timeout)
        for _ in range(arguments.repeat)
    ]
    best = min(runs, key=lambda run: run["wall"])
    best["peak_mib"] = max(run["peak_mib"] for run in runs)
    return best


def _relative(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    return float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-12)))


def _line(label: str, run: dict) -> str:
    return (
        f"  {label:<28} wall {run['wall']:8.2f} s  CPU {run['cpu']:8.2f} s  "
        f"{run['evaluations']:4d} evaluations  {run['contractions']:7d} share evaluations  "
        f"peak {run['peak_mib']:6.0f} MiB (before the fit {run['peak_before_mib']:.0f})  "
        f"objective {run['objective']:.10g}  converged {run['converged']}"
    )


def run_problem(problem: str, arguments) -> None:
    if problem == "nevo-scores":
        run_scores(arguments)
        return
    print(f"{problem} (best of {arguments.repeat}; fit times exclude imports and data loading)")
    theirs = None
    petrin = problem.startswith("petrin")
    if petrin and arguments.petrin_maxiter is not None and not problem.endswith("-eval"):
        print(f"  BFGS capped at {arguments.petrin_maxiter} iterations per GMM step (both)")
    if "pyblp" in arguments.libraries:
        optimizer = ("-" if problem.endswith("-eval") else "bfgs") if petrin else "l-bfgs-b"
        try:
            theirs = _best(problem, "pyblp", optimizer, arguments)
        except subprocess.TimeoutExpired:
            print(f"  pyblp 1.3.0 stopped after --pyblp-timeout {arguments.pyblp_timeout} s")
        else:
            label = "pyblp 1.3.0" if problem.endswith("-eval") else f"pyblp 1.3.0, {optimizer}"
            print(_line(label, theirs))
    if "blpmodels" not in arguments.libraries:
        return
    if problem.endswith("-eval"):
        optimizers = ["-" if petrin else "l-bfgs-b"]
    else:
        optimizers = ["bfgs", "auto"] if petrin else ["l-bfgs-b", "trust-constr", "gauss-newton"]
    baselines = [(None, "")]
    if arguments.baseline:
        baselines.insert(0, (arguments.baseline, " (baseline)"))
    for optimizer in optimizers:
        for baseline, suffix in baselines:
            extra = ["--baseline", baseline] if baseline else []
            ours = _best(problem, "blpmodels", optimizer, arguments, extra)
            label = "blpmodels" if problem.endswith("-eval") else f"blpmodels, {optimizer}"
            _compare(label + suffix, ours, theirs)


def _compare(label: str, ours: dict, theirs: dict | None) -> None:
    """Print one blpmodels run and, with pyblp's, the ratios and largest differences."""
    print(_line(label, ours))
    if theirs is not None:
        print(
            f"    speed-up {theirs['wall'] / ours['wall']:.1f}x wall, "
            f"{theirs['cpu'] / ours['cpu']:.1f}x CPU; peak memory {ours['peak_mib']:.0f} vs "
            f"{theirs['peak_mib']:.0f} MiB; max rel. diff: estimates "
            f"{_relative(ours['params'], theirs['params']):.1e}, micro values "
            f"{_relative(ours['micro'], theirs['micro']):.1e}, objective "
            f"{abs(ours['objective'] - theirs['objective']):.1e} absolute"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, choices=PROBLEMS)
    parser.add_argument("--repeat", type=int, default=1, help="fits per library (fresh processes)")
    parser.add_argument("--libraries", nargs="*", default=["pyblp", "blpmodels"])
    parser.add_argument("--threads", type=int, default=None, help="blpmodels threads")
    parser.add_argument("--child", nargs=3, metavar=("PROBLEM", "LIBRARY", "OPTIMIZER"))
    parser.add_argument("--micro-data", help="(children) the nevo-scores rows")
    parser.add_argument("--baseline", help="also time every problem with the blpmodels at PATH")
    parser.add_argument(
        "--pyblp-timeout", type=float, default=None, help="seconds before a pyblp fit is stopped"
    )
    parser.add_argument(
        "--petrin-maxiter", type=int, default=None, help="petrin: BFGS iterations per GMM step"
    )
    arguments = parser.parse_args()
    if arguments.child and arguments.child[0] == "nevo-scores":
        scores_child(arguments.child[1], arguments.micro_data, arguments.baseline)
        return
    if arguments.child:
        child(*arguments.child, arguments.threads, arguments.baseline, arguments.petrin_maxiter)
        return
    import blpmodels

    versions = f"blpmodels {blpmodels.__version__}"
    if "pyblp" in arguments.libraries:
        import pyblp

        versions += f" vs pyblp {pyblp.__version__}"
    print(versions)
    print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}")
    for problem in arguments.only or PROBLEMS:
        run_problem(problem, arguments)
    print(f"load average (1, 5, 15 min) at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
