"""Where one objective evaluation of exercise 2 Q5 spends its time, against an arithmetic bound.

The problem: 94 markets × 24 products × 1,000 agents (T·J·I = 2,256,000 agent-product values),
σ on prices and Π on mushy and prices × log income (three parameters), product and market
fixed effects absorbed. The evaluations are the ones a fit makes late, where they are most
numerous: at the estimate, warm-started from a nearby θ (a step of 1e-3 relative).

For each stage of an evaluation the script prints the measured time (one thread, CPU time of
the process, best of ``--repeat`` runs of ``--evaluations`` evaluations, attributed by
cProfile's own time of the kernel functions, so profiler overhead is included and the total is
also given without it), the minor page faults per evaluation (fresh work arrays of a few MB
come back from the allocator as new pages; each fault cost about 3 µs here) and a bound from
what the stage must at least do at this machine's measured rates:

* ``exp``   the agent part exp(μ) of every agent-product value, once per θ (exp calls);
* ``share`` each share evaluation of the δ solve reads the ``[T, J, I]`` factor twice (two
  batched matrix-vector products; bytes read at the measured bandwidth);
* ``jac``   ∂s/∂δ: one ``[J, I] × [I, J]`` product per market (flops at the measured batched
  matrix-product rate);
* ``theta`` ∂s/∂θ: one pass over the ``[T, J, I]`` probabilities per parameter (bytes);
  ``jac`` and ``theta`` are one stage, since the newer code forms both in one product.

Run ``python benchmarks/profile_evaluation.py`` (needs the shared data). ``--baseline PATH``
also profiles the blpmodels at PATH (e.g. ``git archive HEAD blpmodels | tar -x -C PATH``):
each version runs in its own process, alternating ``--rounds`` times, and the best of each is
printed side by side, so both see the same machine state (CPU time, since the machine may be
shared).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import time

import common  # first: it sets one BLAS thread before numpy loads
import numpy as np

STAGES = {
    "exp(μ) and its factors": ("from_coefficients", "_finish", "coefficients"),
    # _logit_ratio: older code's (for --baseline); _remember and _remembered_probabilities:
    # newer code's.
    "share evaluations (δ solve)": (
        "shares",
        "_logit_ratio",
        "_exp_delta",
        "log_shares",
        "_remember",
        "_logit_sums",
    ),
    # One stage: newer code forms both in one product (theta_and_delta_jacobians).
    "∂s/∂δ and ∂s/∂θ": (
        "share_jacobian",
        "_factored_delta_jacobian",
        "theta_jacobian",
        "theta_and_delta_jacobians",
    ),
    "probabilities at δ": ("probabilities", "_remembered_probabilities", "_nested_probabilities"),
}


def machine_rates() -> dict[str, float]:
    """exp calls per second, batched matrix-product flops per second, bytes read per second.

    Per CPU second, as the evaluations are timed: on a shared machine wall-clock rates would
    inflate the bounds by the load.
    """
    # Arrays of the problem's size ([T, J, I] = 2,256,000 doubles, 18 MB).
    values = np.random.default_rng(0).standard_normal(94 * 24 * 1000)
    out = np.exp(values)  # touched once: page faults are not exp's time
    rates = {}
    start = time.process_time()
    for _ in range(20):
        np.exp(values, out=out)
    rates["exp"] = 20 * values.size / (time.process_time() - start)
    left = np.random.default_rng(1).random((94, 24, 1000))
    right = np.swapaxes(left, 1, 2).copy()
    start = time.process_time()
    for _ in range(20):
        np.matmul(left, right)
    rates["gemm"] = 20 * 2 * 94 * 24 * 24 * 1000 / (time.process_time() - start)
    start = time.process_time()
    for _ in range(50):
        values.sum()
    rates["bandwidth"] = 50 * values.nbytes / (time.process_time() - start)
    return rates


def q5_objective():
    model = common.q5_model(threads=1)
    results = model.fit(**common.Q5_START)
    sigma = np.zeros((2, 2))
    sigma[1, 1] = results.params["sigma[prices,prices]"]
    pi = [[results.params["pi[mushy,log_income]"]], [results.params["pi[prices,log_income]"]]]
    parameters = model.parameters(sigma=sigma, pi=pi)
    return model.objective_function(parameters), parameters.theta0


def run(objective, theta: np.ndarray, evaluations: int) -> tuple[float, float, float]:
    """Alternate between θ and a nearby point, as a fit's last steps do.

    Returns CPU seconds, share evaluations per market and minor page faults, each per
    evaluation.
    """
    shares_before = objective.total_evaluations
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.process_time()
    for k in range(evaluations):
        # Every point is new (the objective caches its last few evaluations).
        objective.evaluate(theta * (1 + 1e-3 * (k % 2) + 1e-9 * k))
    seconds = (time.process_time() - start) / evaluations
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / evaluations
    markets = objective.design.layout.mask.shape[0]
    return seconds, (objective.total_evaluations - shares_before) / evaluations / markets, faults


def measure(evaluations: int, repeat: int) -> dict[str, float]:
    """One version's best times: the plain evaluation and each stage's own cProfile time."""
    objective, theta = q5_objective()
    run(objective, theta, 4)  # warm up (allocations, first Newton matrices)
    plain = [run(objective, theta, evaluations) for _ in range(repeat)]
    out = {
        "plain": min(seconds for seconds, _, _ in plain),
        "faults": min(faults for _, _, faults in plain),
        "share_evaluations": plain[0][1],
        "profiled": np.inf,
    }
    for stage in [*STAGES, "everything else"]:
        out[stage] = np.inf
    for _ in range(repeat):
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        seconds, _, _ = run(objective, theta, evaluations)
        profiler.disable()
        own: dict[str, float] = {}
        for (_, _, name), (_, _, tottime, _, _) in pstats.Stats(profiler).stats.items():
            own[name] = own.get(name, 0.0) + tottime / evaluations
        counted = 0.0
        for stage, names in STAGES.items():
            measured = sum(own.get(name, 0.0) for name in names)
            counted += measured
            out[stage] = min(out[stage], measured)
        out["everything else"] = min(out["everything else"], seconds - counted)
        out["profiled"] = min(out["profiled"], seconds)
    return out


def child(path: str | None, evaluations: int, repeat: int) -> dict[str, float]:
    """:func:`measure` in a fresh process, with the blpmodels at ``path`` first if given."""
    environment = dict(os.environ)
    if path is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [path, *filter(None, [environment.get("PYTHONPATH")])]
        )
    command = [sys.executable, __file__, "--child", "--evaluations", str(evaluations)]
    command += ["--repeat", str(repeat)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", help="also profile the blpmodels at this path")
    parser.add_argument("--rounds", type=int, default=2, help="alternations with --baseline")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(measure(arguments.evaluations, arguments.repeat)))
        return
    rates = machine_rates()
    print(
        f"machine: exp {rates['exp']:.3g}/s, batched matmul {rates['gemm']:.3g} flop/s, "
        f"read bandwidth {rates['bandwidth'] / 2**30:.3g} GiB/s (one thread); load average "
        f"{os.getloadavg()[0]:.2f} at the start"
    )
    versions = {"blpmodels": None}
    if arguments.baseline:
        versions["baseline"] = arguments.baseline
    best: dict[str, dict[str, float]] = {}
    for _ in range(arguments.rounds if arguments.baseline else 1):
        for name, path in versions.items():
            numbers = child(path, arguments.evaluations, arguments.repeat)
            old = best.setdefault(name, numbers)
            best[name] = {key: min(value, old[key]) for key, value in numbers.items()}
    values = 94 * 24 * 1000
    share_evaluations = best["blpmodels"]["share_evaluations"]
    bounds = {
        "exp(μ) and its factors": values / rates["exp"],
        "share evaluations (δ solve)": share_evaluations * 2 * values * 8 / rates["bandwidth"],
        "∂s/∂δ and ∂s/∂θ": 2 * 94 * 24 * 24 * 1000 / rates["gemm"]
        + 3 * values * 8 / rates["bandwidth"],
        "probabilities at δ": values * 8 / rates["bandwidth"],
    }
    for name, numbers in best.items():
        print(
            f"{name}: one evaluation {1e3 * numbers['plain']:.1f} ms CPU without the profiler "
            f"({1e3 * numbers['profiled']:.1f} ms with it), "
            f"{numbers['share_evaluations']:.1f} share evaluations per market and δ solve, "
            f"{numbers['faults']:.0f} minor page faults"
        )
    names = list(best)
    header = "".join(f"{name[:12]:>13}" for name in names)
    print(f"{'stage (ms CPU)':<30}{header} {'bound':>7} {'ratio':>6}")
    for stage in [*STAGES, "everything else"]:
        measured = "".join(f"{1e3 * best[name][stage]:13.2f}" for name in names)
        bound = bounds.get(stage)
        tail = (
            "" if bound is None else f" {1e3 * bound:7.2f} {best['blpmodels'][stage] / bound:6.1f}"
        )
        print(f"{stage:<30}{measured}{tail}")
    total = sum(bounds.values())
    plain = "".join(f"{1e3 * best[name]['plain']:13.2f}" for name in names)
    ratio = best["blpmodels"]["plain"] / total
    print(f"{'total (without the profiler)':<30}{plain} {1e3 * total:7.2f} {ratio:6.1f}")


if __name__ == "__main__":
    main()
