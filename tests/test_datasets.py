"""Tests for blpmodels.datasets: data-home resolution, error messages and the loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from blpmodels.datasets import (
    DATA_ENV_VAR,
    data_home,
    load_blp,
    load_mixtape_demographics,
    load_mixtape_exercise2,
    load_mixtape_products,
    load_nevo,
    load_petrin,
    load_petrin_micro_moments,
)

from blpmodels import datasets

HOME = data_home()
needs_data = pytest.mark.skipif(
    not (HOME / "mixtape" / "products.csv").is_file() or not (HOME / "pyblp").is_dir(),
    reason=f"shared data not found at {HOME} (set {DATA_ENV_VAR})",
)


def _is_string_column(series: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(series) and all(isinstance(v, str) for v in series)


# ---------------------------------------------------------------- data home (no data needed)


def test_data_home_argument_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    assert data_home(tmp_path / "arg") == tmp_path / "arg"
    assert data_home(str(tmp_path / "arg")) == tmp_path / "arg"


def test_data_home_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    assert data_home() == tmp_path / "env"
    # Relative values are taken against the working directory and normalised.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_ENV_VAR, "../somewhere/data")
    assert data_home() == tmp_path.parent / "somewhere" / "data"


def test_data_home_default_relative_to_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert data_home() == tmp_path / "shared" / "data"


def test_missing_file_message_argument(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_mixtape_products(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "mixtape" / "products.csv") in message
    assert "data_home argument" in message
    assert "data_home=" in message and DATA_ENV_VAR in message


def test_missing_file_message_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_nevo()
    message = str(info.value)
    assert str(tmp_path / "pyblp" / "nevo_products.csv") in message
    assert f"{DATA_ENV_VAR} environment variable" in message
    assert "data_home argument: not given" in message


def test_missing_file_message_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setattr(datasets, "_default_candidates", lambda: [first, second])
    assert data_home() == first
    with pytest.raises(FileNotFoundError) as info:
        load_blp()
    message = str(info.value)
    assert str(first / "pyblp" / "blp_products.csv") in message
    assert f"{DATA_ENV_VAR} environment variable: not set" in message
    assert f"default {first} (missing)" in message and f"default {second} (missing)" in message


# ---------------------------------------------------------------- loaders (need the data)


@pytest.fixture(scope="module")
def mixtape() -> pd.DataFrame:
    if not (HOME / "mixtape" / "products.csv").is_file():
        pytest.skip(f"shared data not found at {HOME}")
    return load_mixtape_products()


@pytest.mark.data
@needs_data
def test_mixtape_products_layout(mixtape: pd.DataFrame) -> None:
    assert mixtape.shape == (2256, 14)
    original = ["market", "product", "mushy", "servings_sold", "city_population"]
    assert list(mixtape.columns[:5]) == original
    assert mixtape["market_ids"].nunique() == 94
    assert mixtape["product_ids"].nunique() == 24
    assert mixtape.groupby("market_ids").size().eq(24).all()
    for column in ("market_ids", "product_ids", "firm_ids", "market", "product"):
        assert _is_string_column(mixtape[column]), column
    assert mixtape["market_ids"].iloc[0] == "C01Q1" and mixtape["product_ids"].iloc[0] == "F1B04"
    assert isinstance(mixtape.index, pd.RangeIndex)


@pytest.mark.data
@needs_data
def test_mixtape_products_derived_columns(mixtape: pd.DataFrame) -> None:
    assert (mixtape["market_ids"] == mixtape["market"]).all()
    assert (mixtape["firm_ids"] == mixtape["product"].str[:2]).all()
    assert set(mixtape["firm_ids"]) == {"F1", "F2", "F3", "F4", "F6"}
    np.testing.assert_array_equal(mixtape["market_size"], mixtape["city_population"] * 90)
    np.testing.assert_allclose(
        mixtape["shares"], mixtape["servings_sold"] / (mixtape["city_population"] * 90), rtol=1e-15
    )
    np.testing.assert_array_equal(mixtape["prices"], mixtape["price_per_serving"])
    inside = mixtape.groupby("market_ids")["shares"].transform("sum")
    np.testing.assert_allclose(mixtape["outside_share"], 1 - inside, rtol=0, atol=1e-15)
    assert round(mixtape["outside_share"].min(), 3) == 0.305
    assert round(mixtape["outside_share"].max(), 3) == 0.815


@pytest.mark.data
@needs_data
def test_mixtape_matches_derived_exercise_data(mixtape: pd.DataFrame) -> None:
    products, agents = load_mixtape_exercise2()
    assert products.shape == (2256, 15) and agents.shape == (94000, 7)
    np.testing.assert_allclose(products["shares"], mixtape["shares"], rtol=1e-12)
    assert (products["market_ids"] == mixtape["market_ids"]).all()
    over, _ = load_mixtape_exercise2(overidentified=True)
    assert {"demand_instruments4", "log_income_std", "firm_ids"} <= set(over.columns)
    assert (over["firm_ids"] == mixtape["firm_ids"]).all()
    assert _is_string_column(agents["market_ids"])
    np.testing.assert_allclose(agents.groupby("market_ids")["weights"].sum(), 1.0)


@pytest.mark.data
@needs_data
def test_every_mixtape_products_loader_gives_the_exercise_ids(mixtape: pd.DataFrame) -> None:
    """Markets, products and firms as strings in every loader of Mixtape products; the firms
    are the ones the course ships in its overidentified file (read from disk here)."""
    shipped = pd.read_csv(
        HOME / "mixtape" / "derived" / "ex2_product_data_with_overid_and_firms.csv",
        usecols=["firm_ids"],
    )["firm_ids"]
    frames = {
        "load_mixtape_products": mixtape,
        "load_mixtape_exercise2": load_mixtape_exercise2()[0],
        "load_mixtape_exercise2(overidentified=True)": load_mixtape_exercise2(overidentified=True)[
            0
        ],
    }
    for name, frame in frames.items():
        for column in ("market_ids", "product_ids", "firm_ids"):
            assert column in frame.columns and _is_string_column(frame[column]), (name, column)
        assert frame["firm_ids"].tolist() == shipped.tolist(), name


@pytest.mark.data
@needs_data
def test_costs_on_exercise2_without_passing_firms() -> None:
    """Issue 19: ``costs()`` on the exercise-2 loader's data used to fail for want of firm ids.
    Logit Bertrand markups have a closed form: every product of firm f has
    p − c = −1 / (α (1 − s_f)), s_f the firm's inside share in the market."""
    from blpmodels import BLPLogit

    products, _ = load_mixtape_exercise2()
    instruments = " + ".join(f"demand_instruments{k}" for k in range(4))
    results = BLPLogit.from_formula(
        f"shares ~ 0 + [prices ~ {instruments}]",
        products,
        absorb="C(market_ids) + C(product_ids)",
    ).fit()
    alpha = float(results.params["prices"])
    firms = products["product_ids"].str[:2]  # the course's firms, built here independently
    firm_share = products["shares"].groupby([products["market_ids"], firms]).transform("sum")
    by_hand = products["prices"] + 1.0 / (alpha * (1.0 - firm_share))
    costs = results.costs()
    assert costs.index.names == ["market_ids", "product_ids"]
    np.testing.assert_allclose(costs.to_numpy(), by_hand.to_numpy(), rtol=1e-10)


@pytest.mark.data
@needs_data
def test_mixtape_demographics() -> None:
    demographics = load_mixtape_demographics()
    assert demographics.shape == (1880, 4)
    assert demographics.groupby("market_ids").size().eq(20).all()
    assert _is_string_column(demographics["market_ids"])
    np.testing.assert_allclose(
        demographics["log_income"], np.log(demographics["quarterly_income"]), rtol=1e-15
    )


@pytest.mark.data
@needs_data
def test_nevo() -> None:
    products, agents = load_nevo()
    assert products.shape == (2256, 30) and agents.shape == (1880, 12)
    assert _is_string_column(products["market_ids"]) and _is_string_column(products["product_ids"])
    assert _is_string_column(agents["market_ids"])
    assert products["firm_ids"].dtype == np.int64
    assert sum(c.startswith("demand_instruments") for c in products.columns) == 20
    assert products.groupby("market_ids")["shares"].sum().lt(1).all()


@pytest.mark.data
@needs_data
def test_blp() -> None:
    products, agents = load_blp()
    assert products.shape == (2217, 33) and agents.shape == (4000, 8)
    assert products["market_ids"].dtype == np.int64
    assert sorted(products["market_ids"].unique()) == list(range(1971, 1991))
    assert agents.groupby("market_ids").size().eq(200).all()
    assert _is_string_column(products["clustering_ids"])


@pytest.mark.data
@needs_data
def test_petrin() -> None:
    products, agents = load_petrin()
    assert products.shape[0] == 2407 and agents.shape[0] == 13000
    assert products["market_ids"].dtype == np.int64
    moments = load_petrin_micro_moments()
    values, covariances = moments["values"], moments["covariances"]
    assert values.shape == (10,) and covariances.shape == (10, 10)
    assert values["E[age | mi]"] == pytest.approx(0.783)
    assert list(covariances.index) == list(values.index) == list(covariances.columns)
    np.testing.assert_allclose(covariances, covariances.T, atol=1e-12)


@pytest.mark.data
@needs_data
def test_env_var_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(HOME))
    monkeypatch.chdir(tmp_path)  # the working-directory default no longer applies
    assert data_home() == HOME
    assert load_mixtape_demographics().shape == (1880, 4)


@pytest.mark.data
@needs_data
def test_mixtape_derived_file() -> None:
    """A derived file as written (compared with a plain read), ids as strings; a missing
    name says where it was looked for."""
    draws = datasets.load_mixtape_derived("ex2_s1_mc_10.csv.gz")
    raw = pd.read_csv(data_home() / "mixtape" / "derived" / "ex2_s1_mc_10.csv.gz")
    assert list(draws.columns) == list(raw.columns)
    assert _is_string_column(draws["market_ids"])
    numeric = raw.select_dtypes("number").columns
    np.testing.assert_array_equal(draws[numeric].to_numpy(), raw[numeric].to_numpy())
    with pytest.raises(FileNotFoundError, match=r"mixtape/derived/no_such_file\.csv"):
        datasets.load_mixtape_derived("no_such_file.csv")
