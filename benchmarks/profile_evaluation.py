"""Where one objective evaluation of exercise 2 Q5 spends its time, against an arithmetic bound.

The problem: 94 markets × 24 products × 1,000 agents (T·J·I = 2,256,000 agent-product values),
σ on prices and Π on mushy and prices × log income (three parameters), product and market
fixed effects absorbed. The evaluations are the ones a fit makes late, where they are most
numerous: at the estimate, warm-started from a nearby θ (a step of 1e-3 relative).

For each stage of an evaluation the script prints the measured time (one thread, best of
``--repeat`` runs of ``--evaluations`` evaluations, attributed by cProfile's own time of the
kernel functions, so profiler overhead is included and the total is also given without it)
and a bound from what the stage must at least do at this machine's measured rates:

* ``exp``   the agent part exp(μ) of every agent-product value, once per θ (exp calls);
* ``share`` each share evaluation of the δ solve reads the ``[T, J, I]`` factor twice (two
  batched matrix-vector products; bytes read at the measured bandwidth);
* ``jac``   ∂s/∂δ: one ``[J, I] × [I, J]`` product per market (flops at the measured batched
  matrix-product rate);
* ``theta`` ∂s/∂θ: one pass over the ``[T, J, I]`` probabilities per parameter (bytes).

Run ``python benchmarks/profile_evaluation.py`` (needs the shared data).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import common  # first: it sets one BLAS thread before numpy loads
import numpy as np

STAGES = {
    "exp(μ) and its factors": ("from_coefficients", "_finish", "coefficients"),
    "share evaluations (δ solve)": ("shares", "_logit_ratio", "_exp_delta", "log_shares"),
    "∂s/∂δ": ("share_jacobian",),
    "∂s/∂θ": ("theta_jacobian",),
    "probabilities at δ": ("probabilities",),
}


def machine_rates() -> dict[str, float]:
    """exp calls per second, batched matrix-product flops per second, bytes read per second."""
    # Arrays of the problem's size ([T, J, I] = 2,256,000 doubles, 18 MB).
    values = np.random.default_rng(0).standard_normal(94 * 24 * 1000)
    out = np.empty_like(values)
    rates = {}
    start = time.perf_counter()
    for _ in range(20):
        np.exp(values, out=out)
    rates["exp"] = 20 * values.size / (time.perf_counter() - start)
    left = np.random.default_rng(1).random((94, 24, 1000))
    right = np.swapaxes(left, 1, 2).copy()
    start = time.perf_counter()
    for _ in range(20):
        np.matmul(left, right)
    rates["gemm"] = 20 * 2 * 94 * 24 * 24 * 1000 / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(50):
        values.sum()
    rates["bandwidth"] = 50 * values.nbytes / (time.perf_counter() - start)
    return rates


def q5_objective():
    model = common.q5_model(threads=1)
    results = model.fit(**common.Q5_START)
    sigma = np.zeros((2, 2))
    sigma[1, 1] = results.params["sigma[prices,prices]"]
    pi = [[results.params["pi[mushy,log_income]"]], [results.params["pi[prices,log_income]"]]]
    parameters = model.parameters(sigma=sigma, pi=pi)
    return model.objective_function(parameters), parameters.theta0


def run(objective, theta: np.ndarray, evaluations: int) -> tuple[float, float]:
    """Alternate between θ and a nearby point, as a fit's last steps do."""
    shares_before = objective.total_evaluations
    start = time.perf_counter()
    for k in range(evaluations):
        # Every point is new (the objective caches its last few evaluations).
        objective.evaluate(theta * (1 + 1e-3 * (k % 2) + 1e-9 * k))
    seconds = (time.perf_counter() - start) / evaluations
    markets = objective.design.layout.mask.shape[0]
    return seconds, (objective.total_evaluations - shares_before) / evaluations / markets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    rates = machine_rates()
    print(
        f"machine: exp {rates['exp']:.3g}/s, batched matmul {rates['gemm']:.3g} flop/s, "
        f"read bandwidth {rates['bandwidth'] / 2**30:.3g} GiB/s (one thread)"
    )
    objective, theta = q5_objective()
    run(objective, theta, 4)  # warm up (allocations, first Newton matrices)
    plain = min(run(objective, theta, arguments.evaluations)[0] for _ in range(arguments.repeat))
    profiler = cProfile.Profile()
    profiler.enable()
    seconds, share_evaluations = run(objective, theta, arguments.evaluations)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    own = {}
    for (_, _, name), (_, _, tottime, _, _) in stats.items():
        own[name] = own.get(name, 0.0) + tottime / arguments.evaluations
    values = 94 * 24 * 1000
    bounds = {
        "exp(μ) and its factors": values / rates["exp"],
        "share evaluations (δ solve)": share_evaluations * 2 * values * 8 / rates["bandwidth"],
        "∂s/∂δ": 2 * 94 * 24 * 24 * 1000 / rates["gemm"],
        "∂s/∂θ": 3 * values * 8 / rates["bandwidth"],
        "probabilities at δ": values * 8 / rates["bandwidth"],
    }
    print(
        f"one evaluation: {1e3 * plain:.1f} ms without the profiler ({1e3 * seconds:.1f} ms "
        f"with it), {share_evaluations:.1f} share evaluations per market and δ solve"
    )
    print(f"{'stage':<30} {'measured ms':>12} {'bound ms':>9} {'ratio':>6}")
    counted = 0.0
    for stage, names in STAGES.items():
        measured = sum(own.get(name, 0.0) for name in names)
        counted += measured
        bound = bounds[stage]
        print(f"{stage:<30} {1e3 * measured:12.2f} {1e3 * bound:9.2f} {measured / bound:6.1f}")
    print(f"{'everything else':<30} {1e3 * (seconds - counted):12.2f}")
    print(f"{'bound total':<30} {'':>12} {1e3 * sum(bounds.values()):9.2f}")


if __name__ == "__main__":
    main()
