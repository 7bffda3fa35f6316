"""What the benchmark scripts share: one BLAS thread, exercise 2 Q5 in both libraries, timing.

Importing this module sets one BLAS thread for both libraries unless the caller chose otherwise,
which only works before numpy loads: the scripts import it first (``import common`` sorts before
``import numpy``). pyblp works market by market on small matrices, where OpenBLAS's own threads
cost more than they give: one exercise-2 evaluation took 7.0 s with two BLAS threads and 1.3 s
with one on a 2-core machine (2026-11-30). blpmodels runs its market chunks in its own threads
and took 0.15 s either way. Timing pyblp at its best is the fair comparison.

Exercise 2 Q5 (2,256 products × 1,000 agents per market, σ on prices and Π on mushy and prices ×
log income, market and product fixed effects absorbed) is timed by ``bench_pyblp.py``,
``bench_supply.py`` (its merger), ``bench_scale.py`` (the Dask overhead) and
``profile_evaluation.py``; they build it here so that they time the same problem. blpmodels is
imported where it is used, so that ``bench_scale.py --baseline`` can point a child process at
another copy first. Python puts a script's folder on ``sys.path``, so ``python
benchmarks/<script>.py`` (and the scripts' child processes) find this module.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

# Nothing above loads numpy, so the setting still counts for this process.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

if TYPE_CHECKING:
    import pandas as pd

    from blpmodels import BLPRandomCoefficients

FIXED_EFFECTS = "C(market_ids) + C(product_ids)"
#: Exercise 2, question 5: prices instrumented by the first four demand instruments.
Q5_FORMULA = (
    "shares ~ 0 + [prices ~ " + " + ".join(f"demand_instruments{k}" for k in range(4)) + "]"
)
Q5_RANDOM = "0 + mushy + prices"  # node column k pairs with random column k: nodes1 with prices
Q5_DEMOGRAPHICS = "0 + log_income"
#: The exercise's starting values.
Q5_START = {"sigma": [[0, 0], [0, 1]], "pi": [[0.2], [1]]}


def q5_model(
    products: pd.DataFrame | None = None, agents: pd.DataFrame | None = None, **options: Any
) -> BLPRandomCoefficients:
    """blpmodels' exercise 2, question 5.

    Parameters
    ----------
    products, agents : pandas.DataFrame, optional
        Default :func:`blpmodels.datasets.load_mixtape_exercise2`.
    **options
        More ``from_formula`` arguments (``threads=``, ``backend=``, ...).

    Returns
    -------
    blpmodels.BLPRandomCoefficients
    """
    from blpmodels import BLPRandomCoefficients, datasets

    if products is None or agents is None:
        products, agents = datasets.load_mixtape_exercise2()
    return BLPRandomCoefficients.from_formula(
        Q5_FORMULA,
        products,
        absorb=FIXED_EFFECTS,
        random=Q5_RANDOM,
        demographics=Q5_DEMOGRAPHICS,
        agent_data=agents,
        **options,
    )


def pyblp_q5_problem(pyblp: ModuleType, products: pd.DataFrame, agents: pd.DataFrame) -> Any:
    """pyblp's exercise 2, question 5 (the same formulations, data and agents).

    Parameters
    ----------
    pyblp : module
        The imported pyblp.
    products, agents : pandas.DataFrame
        :func:`blpmodels.datasets.load_mixtape_exercise2`.

    Returns
    -------
    pyblp.Problem
    """
    formulations = (
        pyblp.Formulation("0 + prices", absorb=FIXED_EFFECTS),
        pyblp.Formulation(Q5_RANDOM),
    )
    return pyblp.Problem(formulations, products, pyblp.Formulation(Q5_DEMOGRAPHICS), agents)


def comparison_parser(
    description: str,
    problems: Sequence[str],
    profiled: str,
    repeat: int = 1,
    repeated: str = "runs",
) -> argparse.ArgumentParser:
    """The options of the scripts that time blpmodels against pyblp.

    ``--repeat`` (best of N runs), ``--threads`` (blpmodels threads), ``--only`` (a subset of
    ``problems``) and ``--profile`` (profile blpmodels on ``profiled``); a script adds its own.

    Parameters
    ----------
    description : str
        The script's docstring; its first line describes the script.
    problems : sequence of str
        What ``--only`` may choose, for its help.
    profiled : str
        What ``--profile`` profiles, for its help.
    repeat : int
        Default of ``--repeat``.
    repeated : str
        What ``--repeat`` repeats, for its help.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=repeat, help=f"best of this many {repeated}")
    parser.add_argument("--threads", type=int, default=None, help="blpmodels threads")
    parser.add_argument(
        "--only", nargs="*", default=None, help=f"problems to run: {', '.join(problems)}"
    )
    parser.add_argument("--profile", action="store_true", help=f"profile blpmodels on {profiled}")
    return parser


def peak_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quiet_pyblp() -> ModuleType:
    """Import pyblp with its progress output off, warnings (of both libraries) ignored.

    Returns
    -------
    module
        pyblp.
    """
    warnings.simplefilter("ignore")
    import pyblp

    pyblp.options.verbose = False
    return pyblp


def return_start(fun: Any, theta0: Any, bounds: Any) -> Any:
    """An optimizer that returns its start: a fit that only evaluates at the given θ."""
    return theta0


@dataclass(frozen=True)
class Timing:
    """Wall and CPU seconds of one run."""

    wall: float
    cpu: float


def best_of(function: Callable[[], Any], repeat: int) -> tuple[Timing, Any]:
    """Best wall time of ``repeat`` runs, the CPU time of that run, and the last value.

    CPU time (all threads of the process) is reported too because the wall time of one run
    depends on what else the machine is running; with one BLAS thread pyblp's CPU time is
    its wall time on an idle machine.

    Parameters
    ----------
    function : callable
        What to time, without arguments.
    repeat : int
        Runs.

    Returns
    -------
    tuple
        ``(Timing, value)``.
    """
    best, cpu, value = float("inf"), float("inf"), None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = function()
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, cpu = elapsed, time.process_time() - start_cpu
    return Timing(best, cpu), value


def print_profile(function: Callable[[], Any], lines: int = 15) -> None:
    """Run ``function`` under cProfile and print the ``lines`` functions with most own time.

    Parameters
    ----------
    function : callable
        What to profile, without arguments.
    lines : int
        Rows of the table.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    function()
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(lines)
    print(stream.getvalue())
