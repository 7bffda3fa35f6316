"""Time blpmodels against pyblp on the same problems, in one run, and print the ratios.

Problems (pyblp 1.3.0 settings in brackets; blpmodels runs each with its default optimizer,
Gauss-Newton on the moments, and again with pyblp's optimizer and options, rows "[...]"):

* ``ex2-q5``   Mixtape exercise 2, question 5: 2,256 products × 1,000 agents per market,
  σ on prices and Π on mushy/prices × log income, product and market FE absorbed
  [trust-constr, gtol = xtol = 1e-8, 1-step].
* ``nevo``     pyblp's Nevo (2000) tutorial with demographics: product FE, four random
  coefficients, the tutorial's Π zero pattern [BFGS, gtol 1e-5, 1-step].
* ``*-eval``   one objective + gradient evaluation at the starting values (cold start: δ starts
  at the logit δ for both); pyblp is timed with ``Optimization('return')``, which also computes
  its standard errors, so blpmodels is timed with the same work (an evaluation plus the
  covariance) through ``fit(optimizer=return-start, compute_hessian=False)``.

Run ``python benchmarks/bench_pyblp.py`` (needs pyblp and the shared data; ``--repeat`` takes the
best of several runs, ``--threads 1`` forces single-threaded blpmodels, ``--profile`` prints
where blpmodels spends its time on ex2-q5).
"""

from __future__ import annotations

import common  # first: it sets one BLAS thread before numpy loads
import numpy as np
import pandas as pd

import blpmodels
from blpmodels import BLPRandomCoefficients, datasets

NEVO_SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
NEVO_PI = np.array(
    [
        [5.4819, 0, 0.2037, 0],
        [15.8935, -1.2000, 0, 2.6342],
        [-0.2506, 0, 0.0511, 0],
        [1.2650, 0, -0.8091, 0],
    ]
)


def ours_ex2(threads: int | None, evaluate_only: bool = False, optimizer: str = "auto"):
    model = common.q5_model(threads=threads)
    if evaluate_only:
        return model.fit(**common.Q5_START, optimizer=common.return_start, compute_hessian=False)
    if optimizer == "auto":  # the default: Gauss-Newton for demand
        return model.fit(**common.Q5_START)
    return model.fit(
        **common.Q5_START, optimizer="trust-constr", optimizer_options={"gtol": 1e-8, "xtol": 1e-8}
    )


def ours_nevo(threads: int | None, evaluate_only: bool = False, optimizer: str = "auto"):
    products, agents = datasets.load_nevo()
    instruments = " + ".join(f"demand_instruments{k}" for k in range(20))
    model = BLPRandomCoefficients.from_formula(
        f"shares ~ 0 + [prices ~ {instruments}]",
        products,
        absorb="C(product_ids)",
        random="1 + prices + sugar + mushy",
        demographics="0 + income + income_squared + age + child",
        agent_data=agents,
        threads=threads,
    )
    if evaluate_only:
        return model.fit(
            sigma=NEVO_SIGMA, pi=NEVO_PI, optimizer=common.return_start, compute_hessian=False
        )
    if optimizer == "auto":  # the default (Gauss-Newton for demand)
        # pyblp's BFGS is unbounded (σ may turn negative); so is this run.
        unbounded = (np.full((4, 4), -np.inf), np.full((4, 4), np.inf))
        return model.fit(sigma=NEVO_SIGMA, pi=NEVO_PI, sigma_bounds=unbounded)
    return model.fit(
        sigma=NEVO_SIGMA, pi=NEVO_PI, optimizer="bfgs", optimizer_options={"gtol": 1e-5}
    )


def pyblp_ex2(evaluate_only: bool = False):
    import pyblp

    problem = common.pyblp_q5_problem(pyblp, *datasets.load_mixtape_exercise2())
    optimization = (
        pyblp.Optimization("return")
        if evaluate_only
        else pyblp.Optimization("trust-constr", {"gtol": 1e-8, "xtol": 1e-8})
    )
    return problem.solve(**common.Q5_START, optimization=optimization, method="1s")


def pyblp_nevo(evaluate_only: bool = False):
    import pyblp

    products, agents = datasets.load_nevo()
    formulations = (
        pyblp.Formulation("0 + prices", absorb="C(product_ids)"),
        pyblp.Formulation("1 + prices + sugar + mushy"),
    )
    problem = pyblp.Problem(
        formulations,
        products,
        pyblp.Formulation("0 + income + income_squared + age + child"),
        agents,
    )
    optimization = (
        pyblp.Optimization("return")
        if evaluate_only
        else pyblp.Optimization("bfgs", {"gtol": 1e-5})
    )
    return problem.solve(NEVO_SIGMA, NEVO_PI, optimization=optimization, method="1s")


def _pyblp_params(results) -> np.ndarray:
    """pyblp estimates in blpmodels' order: β, free Σ entries, free Π entries (row-major).

    The benchmark problems have diagonal Σ, so pyblp's and blpmodels' Σ conventions agree.
    """
    sigma = results.sigma
    free_sigma = [sigma[k, k] for k in range(sigma.shape[0]) if sigma[k, k] != 0]
    return np.concatenate([results.beta.ravel(), free_sigma, results.pi[results.pi != 0].ravel()])


def main() -> None:
    names = ["ex2-q5", "nevo", "ex2-q5-eval", "nevo-eval"]
    arguments = common.comparison_parser(__doc__, names, "ex2-q5").parse_args()
    pyblp = common.quiet_pyblp()
    threads = arguments.threads
    # Each problem: our default (optimizer="auto": Gauss-Newton for demand), then pyblp's own
    # optimizer and options, both compared with one pyblp run.
    problems = {
        "ex2-q5": (
            {
                "": lambda: ours_ex2(threads),
                " [trust-constr]": lambda: ours_ex2(threads, optimizer="trust-constr"),
            },
            lambda: pyblp_ex2(),
        ),
        "nevo": (
            {
                "": lambda: ours_nevo(threads),
                " [bfgs]": lambda: ours_nevo(threads, optimizer="bfgs"),
            },
            lambda: pyblp_nevo(),
        ),
        "ex2-q5-eval": ({"": lambda: ours_ex2(threads, True)}, lambda: pyblp_ex2(True)),
        "nevo-eval": ({"": lambda: ours_nevo(threads, True)}, lambda: pyblp_nevo(True)),
    }
    rows = []
    for name, (variants, theirs) in problems.items():
        if arguments.only and name not in arguments.only:
            continue
        theirs_timing, theirs_result = common.best_of(theirs, arguments.repeat)
        theirs_time = theirs_timing.wall
        other = _pyblp_params(theirs_result)
        for suffix, ours in variants.items():
            ours_timing, ours_result = common.best_of(ours, arguments.repeat)
            ours_time = ours_timing.wall
            mine = np.asarray(ours_result.params, dtype=float)
            rows.append(
                {
                    "problem": name + suffix,
                    "blpmodels s": ours_time,
                    "pyblp s": theirs_time,
                    "speed-up": theirs_time / ours_time,
                    "evaluations (ours)": len(ours_result.info.convergence["trace"]),
                    "evaluations (pyblp)": int(theirs_result.objective_evaluations),
                    "objective (ours)": ours_result.objective,
                    "objective (pyblp)": float(np.squeeze(theirs_result.objective)),
                    "max rel. param diff": float(
                        np.max(np.abs(mine - other) / np.maximum(1e-12, np.abs(other)))
                    ),
                    "threads": ours_result.info.convergence.get("threads"),
                }
            )
    table = pd.DataFrame(rows).set_index("problem")
    print(
        f"blpmodels {blpmodels.__version__} vs pyblp {pyblp.__version__}",
        f"(best of {arguments.repeat})",
    )
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format
    ):
        print(table)
    if arguments.profile:
        common.print_profile(lambda: ours_ex2(arguments.threads))


if __name__ == "__main__":
    main()
