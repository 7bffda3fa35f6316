"""What the Mixtape example scripts share: printing, timing and the exercise-2 models.

The scripts put this folder on ``sys.path`` before they import it, so it is found both when a
script runs from the command line and when it is imported by path (as ``tests/`` does). The
data are located by :func:`blpmodels.datasets.data_home` (``$BLPMODELS_DATA``, default
``../shared/data``), so nothing here knows where they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import pandas as pd

from blpmodels import BLPLogit, BLPRandomCoefficients

FIXED_EFFECTS = "C(market_ids) + C(product_ids)"
OPTIONS = {"gtol": 1e-8, "xtol": 1e-8}  # trust-constr, as in the exercises
MARKET = "C01Q2"
PRODUCT = "F1B04"
#: Exercise 1's IV logit: prices instrumented by the course's cost shifter.
IV_FORMULA = "shares ~ 0 + [prices ~ price_instrument]"
INSTRUMENTS = [f"demand_instruments{k}" for k in range(5)]
#: Exercise 2, question 2: two instruments for prices, Π on mushy only.
FORMULA_Q2 = "shares ~ 0 + [prices ~ demand_instruments0 + demand_instruments1]"
#: Exercise 2, question 5: prices instrumented by the first four demand instruments.
FORMULA_Q5 = "shares ~ 0 + [prices ~ " + " + ".join(INSTRUMENTS[:4]) + "]"
#: Supplemental 5: the over-identified version with ``demand_instruments4``.
FORMULA_OVERID = "shares ~ 0 + [prices ~ " + " + ".join(INSTRUMENTS) + "]"
DEMOGRAPHICS = "0 + log_income"
#: Question 5's start: node column k pairs with random column k, nodes1 with prices.
Q5_START = {"sigma": [[0, 0], [0, 1]], "pi": [[0.2], [1]], "optimizer_options": OPTIONS}


def header(title: str) -> None:
    """Print a section title.

    Parameters
    ----------
    title : str
        The title.
    """
    print(f"\n{'=' * 88}\n{title}\n{'=' * 88}")


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds a block takes under ``timings[name]``.

    Parameters
    ----------
    timings : dict
        Where to store the time.
    name : str
        Key.

    Yields
    ------
    None
    """
    clock = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - clock


def pandas_display(precision: int = 4, width: int = 120) -> AbstractContextManager[Any]:
    """pandas display options for the printed tables, set only inside the ``with`` block.

    Parameters
    ----------
    precision : int
        Decimals shown.
    width : int
        Characters per line.

    Returns
    -------
    contextlib.AbstractContextManager
    """
    return pd.option_context(
        "display.precision", precision, "display.width", width, "display.max_columns", 30
    )


def run_script(
    questions: Callable[[dict[str, float]], dict[str, Any]], what: str
) -> dict[str, Any]:
    """Run a script's questions with readable pandas display options, then report the times.

    Parameters
    ----------
    questions : callable
        Runs the questions, recording each one's seconds in the dict it is given (with
        :func:`timed`), and returns their results.
    what : str
        What ran, e.g. ``"Exercise 2"``, for the last line.

    Returns
    -------
    dict
        ``timings`` (seconds per question), then the results of each question.
    """
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    with pandas_display():
        out = {"timings": timings, **questions(timings)}
        header("Timings (seconds)")
        print(pd.Series(timings).round(2).to_string())
        print(f"\n{what} ran in {time.perf_counter() - clock:.1f} s.")
    return out


def print_fit(results: Any, label: str, *, all_eigenvalues: bool = True) -> None:
    """Print a fit's summary and the exercises' convergence checks.

    Parameters
    ----------
    results : blpmodels.BLPResults
        A random-coefficients fit.
    label : str
        What was estimated.
    all_eigenvalues : bool
        Print every eigenvalue of the Hessian, or only the smallest.
    """
    convergence = results.info.convergence
    eigenvalues = np.asarray(convergence["hessian_eigenvalues"])
    hessian = (
        f"Hessian eigenvalues {np.array2string(eigenvalues, precision=4)}"
        if all_eigenvalues
        else f"smallest Hessian eigenvalue {np.min(eigenvalues):.3g}"
    )
    print(results.summary())
    print(
        f"{label}: objective {results.objective:.3g}, projected gradient norm "
        f"{convergence['gradient_norm']:.2g}, {hessian}, converged={convergence['converged']}, "
        f"{results.info.timings['optimization']:.2f} s optimizing."
    )


def exercise2_model(
    products: pd.DataFrame,
    agents: pd.DataFrame,
    formula: str = FORMULA_Q5,
    random: str = "0 + mushy + prices",
    **options: Any,
) -> BLPRandomCoefficients:
    """Exercise 2's random coefficients: Π on log income, market and product effects absorbed.

    Parameters
    ----------
    products, agents : pandas.DataFrame
        :func:`blpmodels.datasets.load_mixtape_exercise2` (or data with the same columns).
    formula : str
        Prices and their instruments; default question 5's four.
    random : str
        The random-coefficient characteristics; default question 5's mushy and prices.
    **options
        More ``from_formula`` arguments (``supply=``, ``costs_type=``, ...).

    Returns
    -------
    blpmodels.BLPRandomCoefficients
    """
    return BLPRandomCoefficients.from_formula(
        formula,
        products,
        absorb=FIXED_EFFECTS,
        random=random,
        demographics=DEMOGRAPHICS,
        agent_data=agents,
        **options,
    )


def exercise2_logit(products: pd.DataFrame) -> Any:
    """Exercise 1's IV logit with fixed effects on exercise 2's data, for comparison.

    Parameters
    ----------
    products : pandas.DataFrame
        Exercise 2's products (``demand_instruments0`` is the price instrument).

    Returns
    -------
    blpmodels.BLPResults
    """
    return BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ demand_instruments0]", products, absorb=FIXED_EFFECTS
    ).fit()
