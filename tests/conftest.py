"""Shared fixtures: where the data live, the Mixtape, exercise-2 and Nevo cereal data, fitted
logit models, and pyblp (the oracle).

Tests that read the shared data carry ``@pytest.mark.data``; their fixtures skip cleanly (with
the path that was looked at) when the data folder is missing, so the rest of the suite still
runs. Under continuous integration (the ``CI`` environment variable set and non-empty) missing
data is an error instead: the run stops at session start, naming the folder and the files it
looked for, and any test skipped for want of data or an oracle package fails.

Session-scoped fixtures hand out frames and results that tests must not modify; the
``products`` fixture gives a fresh copy for tests that edit the data. The ``no_*`` fixtures put
failing stand-ins (``guards.py``) in place of estimation work, for tests that bad input is
rejected before any work starts.
"""

from __future__ import annotations

import os

# One BLAS thread per process unless the caller chose otherwise (set before numpy is imported).
# blpmodels runs market chunks in its own threads and pyblp works market by market on small
# matrices, so BLAS threads add nothing here; on a busy shared machine their spin-waiting made
# the pyblp oracles 7-20x slower (test_postestimation_oracles.py: 70 s with OpenBLAS's default
# threads, 9.5 s with one, under the same load).
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from pathlib import Path  # noqa: E402

# A relative data folder (CI passes ../shared/data) is read against the directory pytest started
# in; tests that run pytest in a temporary directory (test_ci_guard.py) would otherwise look for
# the data there.
if os.environ.get("BLPMODELS_DATA", "").strip():
    os.environ["BLPMODELS_DATA"] = str(Path(os.environ["BLPMODELS_DATA"]).expanduser().resolve())

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from blpmodels.datasets import (  # noqa: E402
    DATA_ENV_VAR,
    data_home,
    load_mixtape_exercise2,
    load_mixtape_products,
    load_nevo,
)
from guards import forbid  # noqa: E402

import blpmodels.data.products  # noqa: E402
import blpmodels.models.logit  # noqa: E402
import blpmodels.models.nested_logit  # noqa: E402
import blpmodels.models.random_coefficients  # noqa: E402
import blpmodels.results.demand  # noqa: E402
from blpmodels import BLPLogit  # noqa: E402

FIXED_EFFECTS = "C(market_ids) + C(product_ids)"
IV_FE_FORMULA = "shares ~ 0 + [prices ~ price_instrument]"
#: The start of the warning from_formula gives when nothing is instrumented but the data hold
#: instrument-like columns (Mixtape's price_instrument, pyblp's demand_instruments*).
NOT_INSTRUMENTED = "from_formula: no regressor is instrumented"


#: Data files the test suite reads, relative to the data home (see the data folder's README).
REQUIRED_DATA = (
    "mixtape/products.csv",
    "mixtape/demographics.csv",
    "mixtape/derived/ex2_product_data.csv",
    "mixtape/derived/ex2_product_data_with_overid_and_firms.csv",
    "mixtape/derived/ex2_agent_data.csv.gz",
    "pyblp/nevo_products.csv",
    "pyblp/nevo_agents.csv",
    "pyblp/blp_products.csv",
    "pyblp/blp_agents.csv",
)

#: Words in a skip reason that mean "a data file or an oracle package is missing".
_MISSING_MARKERS = ("not found", "could not import", DATA_ENV_VAR)


def under_ci() -> bool:
    """True when the ``CI`` environment variable is set and non-empty (CI services set it)."""
    return bool(os.environ.get("CI", "").strip())


def missing_data_message(home: Path, missing: list[str]) -> str:
    listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (
        f"CI is set but the shared data are missing: looked in {home} "
        f"(from {DATA_ENV_VAR}={os.environ.get(DATA_ENV_VAR, '<unset>')!s}) for {listed}. "
        f"Point {DATA_ENV_VAR} at the data folder; under CI missing data fail the run instead of "
        "skipping tests."
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI, stop before collecting anything when the shared data are not there."""
    if not under_ci():
        return
    home = data_home()
    missing = [name for name in REQUIRED_DATA if not (home / name).is_file()]
    if missing:
        pytest.exit(missing_data_message(home, missing), returncode=pytest.ExitCode.TESTS_FAILED)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI, a test skipped for a missing data file or oracle package fails instead."""
    outcome = yield
    report = outcome.get_result()
    if not (under_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    if any(marker in reason for marker in _MISSING_MARKERS):
        report.outcome = "failed"
        report.longrepr = f"under CI a missing prerequisite is a failure, not a skip: {reason}"


def _require(path: Path) -> Path:
    if not path.is_file():
        message = f"shared data file {path} not found (set {DATA_ENV_VAR} to the data folder)"
        if under_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data_home() -> Path:
    """The data folder the loaders read (BLPMODELS_DATA or ../shared/data)."""
    return data_home()


@pytest.fixture(scope="session")
def mixtape_products(shared_data_home: Path) -> pd.DataFrame:
    """Mixtape cereal products with shares, prices and ids (read once; do not modify)."""
    _require(shared_data_home / "mixtape" / "products.csv")
    return load_mixtape_products(shared_data_home)


@pytest.fixture
def products(mixtape_products: pd.DataFrame) -> pd.DataFrame:
    """A private copy of the Mixtape products, free to edit."""
    return mixtape_products.copy()


@pytest.fixture(scope="session")
def pyblp():
    """pyblp, the oracle, with its progress output off (the test skips without it)."""
    module = pytest.importorskip("pyblp")
    module.options.verbose = False
    return module


@pytest.fixture(scope="session")
def exercise2(shared_data_home: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mixtape exercise 2's products and agents (do not modify)."""
    _require(shared_data_home / "mixtape" / "derived" / "ex2_product_data.csv")
    _require(shared_data_home / "mixtape" / "derived" / "ex2_agent_data.csv.gz")
    return load_mixtape_exercise2(shared_data_home)


@pytest.fixture(scope="session")
def exercise2_overidentified(shared_data_home: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exercise 2 with a fifth demand instrument and firm ids (do not modify)."""
    derived = shared_data_home / "mixtape" / "derived"
    _require(derived / "ex2_product_data_with_overid_and_firms.csv")
    _require(derived / "ex2_agent_data.csv.gz")
    return load_mixtape_exercise2(shared_data_home, overidentified=True)


@pytest.fixture(scope="session")
def nevo(shared_data_home: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nevo's cereal products and agents as pyblp ships them (do not modify)."""
    _require(shared_data_home / "pyblp" / "nevo_products.csv")
    _require(shared_data_home / "pyblp" / "nevo_agents.csv")
    return load_nevo(shared_data_home)


@pytest.fixture(scope="session")
def nevo_nested(nevo: tuple[pd.DataFrame, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nevo's data with pyblp's nested-logit tutorial columns (do not modify).

    ``nesting_ids`` = mushy and ``nest_count`` = the number of products in the (market, nest)
    group.
    """
    products, agents = nevo
    products = products.copy()
    products["nesting_ids"] = products["mushy"]
    counts = products.groupby(["market_ids", "nesting_ids"])["shares"].transform("size")
    products["nest_count"] = counts.astype(np.float64)
    return products, agents


@pytest.fixture(scope="session")
def nevo_products(nevo_nested: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    """The products of ``nevo_nested`` with ``demand_instruments20`` = ``nest_count``.

    As in pyblp's tutorial, where the nest count is the 21st excluded instrument (do not
    modify).
    """
    products, _ = nevo_nested
    return products.assign(demand_instruments20=products["nest_count"])


@pytest.fixture(scope="session")
def ols_results(mixtape_products: pd.DataFrame):
    """``shares ~ 1 + prices + mushy`` with HC0 standard errors (exercise 1, question 3).

    OLS on purpose, on data that hold ``price_instrument``: building it warns so (once).
    """
    data = mixtape_products.copy()
    with pytest.warns(UserWarning, match=NOT_INSTRUMENTED) as record:
        model = BLPLogit.from_formula("shares ~ 1 + prices + mushy", data)
    assert len(record) == 1
    return model.fit(cov_type="HC0")


@pytest.fixture(scope="session")
def fe_results(mixtape_products: pd.DataFrame):
    """``shares ~ 0 + prices`` with market and product effects absorbed (question 5).

    OLS on purpose, on data that hold ``price_instrument``: building it warns so (once).
    """
    data = mixtape_products.copy()
    with pytest.warns(UserWarning, match=NOT_INSTRUMENTED) as record:
        model = BLPLogit.from_formula("shares ~ 0 + prices", data, absorb=FIXED_EFFECTS)
    assert len(record) == 1
    return model.fit()


@pytest.fixture(scope="session")
def iv_fe_results(mixtape_products: pd.DataFrame):
    """``shares ~ 0 + [prices ~ price_instrument]`` with absorbed effects (question 6)."""
    data = mixtape_products.copy()
    return BLPLogit.from_formula(IV_FE_FORMULA, data, absorb=FIXED_EFFECTS).fit()


@pytest.fixture(scope="session")
def iv_results(mixtape_products: pd.DataFrame):
    """``shares ~ 1 + mushy + [prices ~ price_instrument]`` without fixed effects."""
    data = mixtape_products.copy()
    return BLPLogit.from_formula("shares ~ 1 + mushy + [prices ~ price_instrument]", data).fit()


@pytest.fixture
def no_design_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building formula blocks or fixed effects fails: share and id checks must come first."""
    monkeypatch.setattr(blpmodels.data.products, "build_block", forbid)
    monkeypatch.setattr(blpmodels.data.products.Absorber, "from_formula", forbid)


@pytest.fixture
def no_estimation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The linear GMM pipeline fails: option checks must come first."""
    monkeypatch.setattr(blpmodels.models.logit, "fit_linear", forbid)
    monkeypatch.setattr(blpmodels.models.nested_logit, "fit_linear", forbid)


@pytest.fixture
def no_share_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The share kernel fails: predict-data and post-estimation checks must come first."""
    monkeypatch.setattr(blpmodels.results.demand, "ShareEvaluator", forbid)
    monkeypatch.setattr(blpmodels.results.demand, "share_jacobian", forbid)


@pytest.fixture
def no_contraction(monkeypatch: pytest.MonkeyPatch) -> None:
    """The random-coefficients objective (δ contraction) fails: checks must come first."""
    monkeypatch.setattr(blpmodels.models.random_coefficients, "NonlinearObjective", forbid)


def simulate_logit_products(
    n_markets: int = 40,
    n_products: int = 6,
    *,
    seed: int = 0,
    alpha: float = -2.0,
    beta_x: float = 1.0,
    constant: float = -1.0,
    rho: float = 0.0,
    drop: float = 0.0,
) -> pd.DataFrame:
    """Small simulated (nested) logit data, no shared data needed, with an endogenous price.

    Columns: ``market_ids`` (``"m00"``…), ``product_ids`` (``"p0"``…), ``firm_ids``,
    ``nesting_ids`` (two nests, by product parity), ``x``, ``z1``, ``z2`` (price shifters),
    ``prices`` (correlated with ξ), ``xi``, ``nest_count`` (products in the market's nest),
    ``nest_z1`` (sum of ``z1`` over the other products of the nest) and ``shares``: plain logit
    for ``rho=0``, nested logit otherwise. ``drop`` removes that fraction of rows at random
    (never product ``p0``), giving markets of different sizes.
    """
    rng = np.random.default_rng(seed)
    n = n_markets * n_products
    frame = pd.DataFrame(
        {
            "market_ids": np.repeat([f"m{t:02d}" for t in range(n_markets)], n_products),
            "product_ids": np.tile([f"p{j}" for j in range(n_products)], n_markets),
            "firm_ids": np.tile([f"f{j % 3}" for j in range(n_products)], n_markets),
            "nesting_ids": np.tile([j % 2 for j in range(n_products)], n_markets),
            "x": rng.normal(size=n),
            "z1": rng.normal(size=n),
            "z2": rng.normal(size=n),
            "xi": 0.3 * rng.normal(size=n),
        }
    )
    frame["prices"] = (
        3.0
        + 0.5 * frame["z1"]
        + 0.3 * frame["z2"]
        + 0.2 * frame["x"]
        + 0.8 * frame["xi"]
        + 0.1 * rng.normal(size=n)
    )
    keep = (rng.uniform(size=n) >= drop) | (frame["product_ids"] == "p0")
    frame = frame[keep].reset_index(drop=True)
    nests = frame.groupby(["market_ids", "nesting_ids"])
    frame["nest_count"] = nests["z1"].transform("size").astype(np.float64)
    frame["nest_z1"] = nests["z1"].transform("sum") - frame["z1"]
    delta = constant + alpha * frame["prices"] + beta_x * frame["x"] + frame["xi"]
    scaled = np.exp(delta / (1.0 - rho))
    inclusive = scaled.groupby([frame["market_ids"], frame["nesting_ids"]]).transform("sum")
    first_in_nest = ~frame.duplicated(["market_ids", "nesting_ids"])
    denominator = 1.0 + (inclusive ** (1.0 - rho)).where(first_in_nest, 0.0).groupby(
        frame["market_ids"]
    ).transform("sum")
    frame["shares"] = scaled / inclusive * inclusive ** (1.0 - rho) / denominator
    return frame


@pytest.fixture
def simulate():
    """The simulator itself, for tests that need other sizes or seeds."""
    return simulate_logit_products


@pytest.fixture
def simulated_products() -> pd.DataFrame:
    """Simulated logit data: 40 markets × 6 products (fresh copy for every test)."""
    return simulate_logit_products()


@pytest.fixture
def simulated_nested_products() -> pd.DataFrame:
    """Simulated nested logit (rho = 0.6, two nests): 200 markets of 1–8 products."""
    return simulate_logit_products(
        n_markets=200, n_products=8, seed=0, rho=0.6, drop=0.3, constant=3.0
    )
