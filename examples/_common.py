"""What the Mixtape example scripts share: printing, timing, exercise 2's models, price cuts.

The scripts put this folder on ``sys.path`` before they import it, so it is found both when a
script runs from the command line and when it is imported by path (as ``tests/`` does). The
data are located by :func:`blpmodels.datasets.data_home` (``$BLPMODELS_DATA``, default
``../shared/data``), so nothing here knows where they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
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
#: Question 2's start: σ on mushy fixed at zero, Π on mushy × log income from one.
PI_MUSHY_START = {"sigma": 0, "pi": 1, "optimizer_options": OPTIONS}
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


def question5_fit(products: pd.DataFrame, agents: pd.DataFrame) -> Any:
    """Exercise 2, question 5's estimates: σ on prices, Π on mushy and prices × log income.

    Parameters
    ----------
    products, agents : pandas.DataFrame
        Exercise 2's products (instruments 0-3 at least) and agents.

    Returns
    -------
    blpmodels.BLPResults
        sigma[prices,prices] about 6.02, pi[prices,log_income] about -5.96.
    """
    return exercise2_model(products, agents).fit(**Q5_START)


def price_coefficients(results: Any, agents: pd.DataFrame) -> pd.Series:
    """Each agent's price coefficient under question 5's demand (nodes1 pairs with prices).

    alpha_i = alpha + sigma * nodes1_i + pi * log_income_i.

    Parameters
    ----------
    results : blpmodels.BLPResults
        A fit with ``sigma[prices,prices]`` and ``pi[prices,log_income]``.
    agents : pandas.DataFrame
        Agent rows with ``nodes1`` and ``log_income``.

    Returns
    -------
    pandas.Series
        Indexed like ``agents``.
    """
    params = results.params
    return (
        params["prices"]
        + params["sigma[prices,prices]"] * agents["nodes1"]
        + params["pi[prices,log_income]"] * agents["log_income"]
    )


def counterfactual_data(
    products: pd.DataFrame,
    market: str = MARKET,
    product: str = PRODUCT,
    factor: float = 0.5,
    cut: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Baseline and counterfactual rows of one market with one price changed.

    The default is the exercises' price cut: F1B04's price halved in C01Q2.

    Parameters
    ----------
    products : pandas.DataFrame
        Product data.
    market, product : str
        Market and product whose price changes.
    factor : float
        The new price is ``factor * price - cut``.
    cut : float
        Dollar cut per serving.

    Returns
    -------
    baseline, counterfactual : pandas.DataFrame
        The market's rows at observed and at changed prices.
    """
    baseline = products[products["market_ids"] == market].copy()
    counterfactual = baseline.copy()
    row = counterfactual["product_ids"] == product
    counterfactual.loc[row, "prices"] = factor * counterfactual.loc[row, "prices"] - cut
    return baseline, counterfactual


def price_cut(results: Any, products: pd.DataFrame) -> pd.DataFrame:
    """C01Q2's shares before and after F1B04's price is halved, and their percent changes.

    Parameters
    ----------
    results : blpmodels.BLPResults
        Estimated demand.
    products : pandas.DataFrame
        The product data it was estimated on.

    Returns
    -------
    pandas.DataFrame
        ``before``, ``after`` and ``change_%``, indexed by product id with ``"outside"`` (the
        outside share) last.
    """
    baseline, changed = counterfactual_data(products)
    before = results.predict(baseline).to_numpy()
    after = results.predict(changed).to_numpy()
    table = pd.DataFrame(
        {"before": np.r_[before, 1 - before.sum()], "after": np.r_[after, 1 - after.sum()]},
        index=[*baseline["product_ids"], "outside"],
    )
    table["change_%"] = 100 * (table["after"] / table["before"] - 1)
    return table


def price_cut_table(
    products: pd.DataFrame,
    fits: dict[str, Any],
    columns: Sequence[str] = ("mushy", "prices"),
    outside: bool = False,
) -> pd.DataFrame:
    """:func:`price_cut`'s percent changes of every fit side by side, after product columns.

    Parameters
    ----------
    products : pandas.DataFrame
        The products the fits were estimated on.
    fits : dict of str to blpmodels.BLPResults
        The fits to compare, one column each.
    columns : sequence of str
        C01Q2's product columns shown first.
    outside : bool
        Add a last row for the outside share.

    Returns
    -------
    pandas.DataFrame
        One row per product of C01Q2 (and ``"outside"``).
    """
    table = products[products["market_ids"] == MARKET].set_index("product_ids")[list(columns)]
    if outside:
        table = table.reindex([*table.index, "outside"])
    for label, results in fits.items():
        table[label] = price_cut(results, products)["change_%"]
    return table
