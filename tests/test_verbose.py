"""Progress and iteration display (issue 12, part 3).

``fit(verbose=True)`` prints one line per optimizer iteration. The lines are checked against
what the optimizer itself reports: scipy's iteration count (``nit``), and, for a callable
optimizer that records every θ it hands to the objective, the objective, the projected
gradient and the move written out here from those points and the gradients returned to it.
Random starts and the bootstrap show progress: a tqdm bar when tqdm is installed, plain lines
when it is not. Everything is silent by default.
"""

from __future__ import annotations

import inspect
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import small_economy

import blpmodels.models.random_coefficients as random_coefficients
from blpmodels import BLPLogit
from blpmodels.estimation.settings import check_fit_settings

HEADER = "step start  iter  evals    objective proj.grad      move   shares fails seconds"
#: The iteration table's columns, written here rather than imported: the test's own oracle.
COLUMNS = (
    "step start iteration evaluation objective projected_gradient_norm step_size"
    " share_evaluations fp_failures seconds"
).split()


@pytest.fixture
def verbose(monkeypatch):
    """Fits with verbose=True, whether or not ``fit`` takes the keyword yet."""

    def verbose_settings(*args, **kwargs):
        return check_fit_settings(*args, **{**kwargs, "verbose": True})

    monkeypatch.setattr(random_coefficients, "check_fit_settings", verbose_settings)


def _fit(**options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return small_economy.model().fit(sigma=small_economy.SIGMA, pi=small_economy.PI, **options)


def _lines(text: str) -> pd.DataFrame:
    """The iteration lines printed, read back as numbers (headings checked and dropped)."""
    rows = []
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("GMM step"):
            assert lines[k + 1] == HEADER
            continue
        if line == HEADER or not line.strip():
            continue
        fields = line.split()
        assert len(fields) == len(COLUMNS), line
        rows.append([np.nan if value == "-" else float(value) for value in fields])
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.mark.filterwarnings("ignore:.*bootstrap draws fell outside:UserWarning")
def test_fits_and_bootstrap_are_silent_by_default(capsys):
    results = _fit(optimizer="l-bfgs-b", starts=2, seed=0)
    results.bootstrap(draws=3, seed=0).predict()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize("optimizer", ["trust-constr", "l-bfgs-b", "bfgs", "slsqp"])
def test_one_line_per_scipy_iteration(verbose, capsys, optimizer):
    results = _fit(optimizer=optimizer)
    printed = _lines(capsys.readouterr().out)
    convergence = results.info.convergence
    assert len(printed) == convergence["iterations"]  # scipy's own count (nit)
    assert list(printed["iteration"]) == list(range(1, len(printed) + 1))
    trace = convergence["trace"].set_index(["step", "start", "evaluation"])
    for _, line in printed.iterrows():
        row = trace.loc[(int(line["step"]), int(line["start"]), int(line["evaluation"]))]
        assert line["objective"] == pytest.approx(row["objective"], rel=1e-4)
        assert line["share_evaluations"] == row["share_evaluations"]
        assert line["fp_failures"] == row["fp_failures"]
        assert line["seconds"] == pytest.approx(row["seconds"], abs=0.006)
        assert row["delta_solved"]
        # The trace row carries the last iteration that ended at it.
        assert row["iteration"] >= line["iteration"]
    # Share evaluations and seconds only grow.
    assert printed["share_evaluations"].is_monotonic_increasing
    assert printed["seconds"].is_monotonic_increasing
    marked = convergence["trace"].dropna(subset=["iteration"])
    assert set(marked["evaluation"]) == set(printed["evaluation"])
    assert len(seen_evaluations := printed["evaluation"]) > 1 and seen_evaluations.notna().all()


def test_last_line_reports_the_final_projected_gradient(verbose, capsys):
    # L-BFGS-B ends at its last iterate; the fit's own diagnostics (computed after the
    # optimizer) give the projected gradient norm there.
    results = _fit(optimizer="l-bfgs-b")
    printed = _lines(capsys.readouterr().out)
    convergence = results.info.convergence
    assert "Newton step" not in convergence["message"]
    assert printed["projected_gradient_norm"].iloc[-1] == pytest.approx(
        convergence["gradient_norm"], rel=6e-3
    )


def test_a_callable_optimizer_logs_every_evaluation_against_what_it_saw(verbose, capsys):
    seen: list[tuple[np.ndarray, float, np.ndarray]] = []

    def optimizer(fun, u0, bounds):
        def recorded(u):
            value, gradient = fun(u)
            seen.append((np.array(u, dtype=float), float(value), np.array(gradient)))
            return value, gradient

        return scipy.optimize.minimize(
            recorded, u0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 6}
        )

    results = _fit(optimizer=optimizer)
    printed = _lines(capsys.readouterr().out)
    assert len(printed) == len(seen) > 3
    scale = results.info.convergence["scale"]
    names = [name for name in results.params.index if "[" in name]
    start = np.array([0.5, 0.5, 0.3])  # σ_prices, σ_x, π_prices,income from small_economy
    assert names == ["sigma[prices,prices]", "sigma[x,x]", "pi[prices,income]"]
    lower = np.array([0.0, 0.0, -np.inf])  # Σ's diagonal is bounded below by zero
    previous = start
    for (u, value, gradient_u), (_, line) in zip(seen, printed.iterrows(), strict=True):
        theta = scale * u
        gradient = gradient_u / scale
        held = (theta <= lower) & (gradient > 0)
        projected = np.where(held, 0.0, gradient)
        assert line["objective"] == pytest.approx(value, rel=1e-4)
        assert line["projected_gradient_norm"] == pytest.approx(
            np.abs(projected).max(), rel=6e-3, abs=1e-12
        )
        assert line["step_size"] == pytest.approx(np.abs(theta - previous).max(), rel=6e-3)
        previous = theta


def test_nelder_mead_and_gauss_newton_print_their_iterations(verbose, capsys):
    for optimizer in ("nelder-mead", "gauss-newton"):
        results = _fit(optimizer=optimizer)
        printed = _lines(capsys.readouterr().out)
        trace = results.info.convergence["trace"]
        marked = trace.dropna(subset=["iteration"])
        assert len(printed) >= len(marked) > 0
        assert set(printed["evaluation"]) == set(marked["evaluation"])
        if optimizer == "gauss-newton":
            # Every Gauss-Newton iteration is an accepted step: the objective falls.
            assert (np.diff(printed["objective"]) <= 0).all()
            assert len(printed) == results.info.convergence["iterations"]


def test_two_steps_and_starts_head_each_optimization(verbose, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    results = _fit(optimizer="l-bfgs-b", method="2s", starts=2, seed=1)
    text = capsys.readouterr().out
    headings = [line for line in text.splitlines() if line.startswith("GMM step")]
    assert headings == [
        "GMM step 1, start 1: l-bfgs-b",
        "GMM step 1, start 2: l-bfgs-b",
        "GMM step 2, start 0: l-bfgs-b",
    ]
    # Without tqdm, plain progress lines count the starts.
    progress = [line.split(" (")[0] for line in text.splitlines() if line.startswith("starts ")]
    assert progress == ["starts 1/2", "starts 2/2"]
    printed = _lines("\n".join(line for line in text.splitlines() if line[:7] != "starts "))
    assert set(printed["step"]) == {1, 2} and set(printed["start"]) == {0, 1, 2}
    table = results.info.convergence["starts"]
    assert len(table) == 2


def test_starts_show_a_tqdm_bar_when_tqdm_is_installed(verbose, capsys):
    pytest.importorskip("tqdm")
    _fit(optimizer="l-bfgs-b", starts=2, seed=1)
    captured = capsys.readouterr()
    assert "starts 2/2 |" in captured.err
    assert "starts" not in captured.out


def test_bootstrap_progress_lines_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    products, _ = small_economy.economy()
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    bootstrapped = results.bootstrap(draws=25, seed=0, verbose=True)
    assert capsys.readouterr().out == ""  # drawing is instant; predicting takes the time
    bootstrapped.predict()
    counts = [line.split(" (")[0] for line in capsys.readouterr().out.splitlines()]
    assert counts == [f"bootstrap {k}/25" for k in (3, 5, 8, 10, 13, 15, 18, 20, 23, 25)]
    bootstrapped.predict(verbose=False)
    assert capsys.readouterr().out == ""


def test_bootstrap_shows_a_tqdm_bar_when_tqdm_is_installed(capsys):
    pytest.importorskip("tqdm")
    products, _ = small_economy.economy()
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    results.bootstrap(draws=5, seed=0, verbose=True).predict()
    captured = capsys.readouterr()
    assert "bootstrap 5/5 |" in captured.err


def test_verbose_must_be_a_flag():
    from blpmodels.exceptions import BLPInputError

    with pytest.raises(BLPInputError, match="verbose must be True or False"):
        check_fit_settings(
            "l-bfgs-b",
            None,
            starts=None,
            seed=None,
            max_evaluations=10,
            compute_hessian=True,
            scale_parameters=True,
            steps=1,
            verbose="yes",
        )
    products, _ = small_economy.economy()
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    with pytest.raises(BLPInputError, match="verbose must be True or False"):
        results.bootstrap(draws=2, verbose=1)


def test_fit_takes_verbose(capsys):
    assert "verbose" in inspect.signature(random_coefficients.BLPRandomCoefficients.fit).parameters
    _fit(optimizer="l-bfgs-b", verbose=True)
    assert HEADER in capsys.readouterr().out
