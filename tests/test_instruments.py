"""Tests for blpmodels.data.instruments: pyblp as an oracle, plus a brute-force reference."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from blpmodels.data import instruments
from blpmodels.data.instruments import build_blp_instruments, build_differentiation_instruments
from blpmodels.exceptions import BLPInputError

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    configured = os.environ.get("BLPMODELS_DATA")
    return Path(configured) if configured else REPO.parent / "shared" / "data"


def _load(name: str) -> pd.DataFrame:
    path = _data_dir() / "pyblp" / name
    if not path.is_file():
        pytest.skip(f"data file {path} not found")
    return pd.read_csv(path)


# (file, characteristics without the constant)
DATASETS = [
    ("blp_products.csv", "hpwt + air + mpd + space"),
    ("nevo_products.csv", "sugar + prices"),
]


def _assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    """1e-10 relative, with an absolute floor scaled to each column's magnitude.

    Signed sums (local interactions) can cancel to ~0, where only an absolute check is
    meaningful.
    """
    assert ours.shape == reference.shape
    scale = np.maximum(np.abs(reference).max(axis=0, initial=0.0), 1.0)
    error = np.abs(ours - reference)
    bad = error > 1e-10 * np.abs(reference) + 1e-12 * scale
    assert not bad.any(), (
        f"{int(bad.sum())} mismatches, first at {np.argwhere(bad)[0].tolist()}: "
        f"{ours[bad][0]!r} vs {reference[bad][0]!r}"
    )


# ---------------------------------------------------------------------------------------------
# pyblp oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize(("name", "characteristics"), DATASETS)
def test_blp_instruments_match_pyblp(name: str, characteristics: str) -> None:
    pyblp = pytest.importorskip("pyblp")
    data = _load(name)
    formula = f"1 + {characteristics}"
    reference = pyblp.build_blp_instruments(pyblp.Formulation(formula), data)
    ours = build_blp_instruments(data, formula)
    variables = ["Intercept", *(part.strip() for part in characteristics.split("+"))]
    expected = [f"blp_own_{v}" for v in variables] + [f"blp_rival_{v}" for v in variables]
    assert list(ours.columns) == expected
    assert ours.index.equals(data.index)
    _assert_close(ours.to_numpy(), reference)


@pytest.mark.data
@pytest.mark.parametrize(("name", "characteristics"), DATASETS)
@pytest.mark.parametrize("version", ["local", "quadratic"])
@pytest.mark.parametrize("interact", [False, True])
def test_differentiation_instruments_match_pyblp(
    name: str, characteristics: str, version: str, interact: bool
) -> None:
    pyblp = pytest.importorskip("pyblp")
    data = _load(name)
    reference = pyblp.build_differentiation_instruments(
        pyblp.Formulation(f"0 + {characteristics}"), data, version=version, interact=interact
    )
    # the constant is dropped, so "1 +" must give the same frame
    ours = build_differentiation_instruments(
        data, f"1 + {characteristics}", version=version, interact=interact
    )
    _assert_close(ours.to_numpy(), reference)
    variables = [part.strip() for part in characteristics.split("+")]
    first = (
        variables[0]
        if version == "quadratic" or not interact
        else f"{variables[0]}_x_{variables[0]}"
    )
    assert ours.columns[0] == f"diff_own_{first}"
    half = ours.shape[1] // 2
    assert [c.replace("diff_own_", "") for c in ours.columns[:half]] == [
        c.replace("diff_rival_", "") for c in ours.columns[half:]
    ]


@pytest.mark.data
@pytest.mark.parametrize("version", ["local", "quadratic"])
def test_firm_agnostic_matches_pyblp_with_constant_firms(version: str) -> None:
    pyblp = pytest.importorskip("pyblp")
    data = _load("nevo_products.csv")
    constant = data.assign(firm_ids=0)
    reference = pyblp.build_differentiation_instruments(
        pyblp.Formulation("0 + sugar + prices"), constant, version=version
    )
    ours = build_differentiation_instruments(
        data, ["sugar", "prices"], firm_ids=None, version=version
    )
    assert list(ours.columns) == ["diff_other_sugar", "diff_other_prices"]
    _assert_close(ours.to_numpy(), reference[:, :2])
    reference = pyblp.build_blp_instruments(pyblp.Formulation("1 + sugar"), constant)
    ours = build_blp_instruments(data, "1 + sugar", firm_ids=None)
    assert list(ours.columns) == ["blp_other_Intercept", "blp_other_sugar"]
    _assert_close(ours.to_numpy(), reference[:, :2])


# ---------------------------------------------------------------------------------------------
# brute-force reference
# ---------------------------------------------------------------------------------------------


def _random_products(seed: int) -> pd.DataFrame:
    """Unequal, unsorted markets (some with one product) and many single-product firms."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=12)
    sizes[:2] = [1, 2]
    markets = np.repeat([f"m{t:02d}" for t in range(len(sizes))], sizes)
    firms = rng.integers(0, 4, size=len(markets)) * 10 + (rng.random(len(markets)) < 0.3) * 100
    frame = pd.DataFrame(
        {
            "mkt": markets,
            "firm": firms,
            "x": rng.normal(size=len(markets)),
            "y": rng.integers(0, 3, size=len(markets)).astype(float),
            "z": rng.normal(5.0, 0.01, size=len(markets)),
        }
    )
    order = rng.permutation(len(frame))
    return frame.iloc[order].set_index(pd.Index(np.arange(len(frame)) * 3 + 7, name="row"))


def _reference_blp(frame: pd.DataFrame, columns: list[str], firms: bool) -> np.ndarray:
    x = frame[columns].to_numpy()
    markets, firm = frame["mkt"].to_numpy(), frame["firm"].to_numpy()
    out = np.zeros((len(frame), 2 * len(columns) if firms else len(columns)))
    for j in range(len(frame)):
        for k in range(len(frame)):
            if k == j or markets[k] != markets[j]:
                continue
            if not firms:
                out[j] += x[k]
            elif firm[k] == firm[j]:
                out[j, : len(columns)] += x[k]
            else:
                out[j, len(columns) :] += x[k]
    return out


def _reference_differentiation(
    frame: pd.DataFrame, columns: list[str], firms: bool, version: str, interact: bool
) -> np.ndarray:
    x = frame[columns].to_numpy()
    markets, firm = frame["mkt"].to_numpy(), frame["firm"].to_numpy()
    n, count = x.shape
    pairs = [(j, k) for j in range(n) for k in range(n) if j != k and markets[j] == markets[k]]
    sd = np.sqrt(np.mean([(x[j] - x[k]) ** 2 for j, k in pairs], axis=0))

    def terms(j: int, k: int) -> list[float]:
        d = x[j] - x[k]
        values = []
        for a in range(count):
            if version == "quadratic":
                values += [d[a] * d[b] for b in range(a, count if interact else a + 1)]
            elif interact:
                values += [float(abs(d[a]) < sd[a]) * d[b] for b in range(count)]
            else:
                values.append(float(abs(d[a]) < sd[a]))
        return values

    width = len(terms(0, 0))
    out = np.zeros((n, 2 * width if firms else width))
    for j, k in pairs:
        if not firms or firm[j] == firm[k]:
            out[j, :width] += terms(j, k)
        else:
            out[j, width:] += terms(j, k)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("firms", [True, False])
def test_blp_instruments_brute_force(seed: int, firms: bool) -> None:
    frame = _random_products(seed)
    ours = build_blp_instruments(
        frame, ["x", "y", "z"], market_ids="mkt", firm_ids="firm" if firms else None
    )
    assert ours.index.equals(frame.index)
    _assert_close(ours.to_numpy(), _reference_blp(frame, ["x", "y", "z"], firms))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("firms", [True, False])
@pytest.mark.parametrize("version", ["local", "quadratic"])
@pytest.mark.parametrize("interact", [False, True])
def test_differentiation_instruments_brute_force(
    seed: int, firms: bool, version: str, interact: bool
) -> None:
    frame = _random_products(seed)
    columns = ["x", "y", "z"]
    ours = build_differentiation_instruments(
        frame,
        columns,
        market_ids="mkt",
        firm_ids="firm" if firms else None,
        version=version,
        interact=interact,
    )
    assert ours.index.equals(frame.index)
    reference = _reference_differentiation(frame, columns, firms, version, interact)
    _assert_close(ours.to_numpy(), reference)


def test_column_names() -> None:
    frame = _random_products(0)
    quadratic = build_differentiation_instruments(
        frame, "x + y + z", market_ids="mkt", firm_ids="firm", version="quadratic", interact=True
    )
    block = ["x", "x_x_y", "x_x_z", "y", "y_x_z", "z"]
    assert list(quadratic.columns) == [f"diff_own_{s}" for s in block] + [
        f"diff_rival_{s}" for s in block
    ]
    local = build_differentiation_instruments(
        frame, ["x", "y"], market_ids="mkt", firm_ids=None, interact=True
    )
    assert list(local.columns) == [
        "diff_other_x_x_x",
        "diff_other_x_x_y",
        "diff_other_y_x_x",
        "diff_other_y_x_y",
    ]
    plain = build_differentiation_instruments(frame, ["x", "y"], market_ids="mkt", firm_ids="firm")
    assert list(plain.columns) == ["diff_own_x", "diff_own_y", "diff_rival_x", "diff_rival_y"]


def test_mixtape_predicted_price_instrument() -> None:
    """Sum of squared differences of predicted prices to all other products in the market."""
    frame = _random_products(3).rename(columns={"x": "predicted_prices"})
    ours = build_differentiation_instruments(
        frame, ["predicted_prices"], market_ids="mkt", firm_ids=None, version="quadratic"
    )
    p = frame["predicted_prices"]
    expected = [
        ((p[frame["mkt"] == market] - value) ** 2).sum()
        for market, value in zip(frame["mkt"], p, strict=True)
    ]
    np.testing.assert_allclose(ours["diff_other_predicted_prices"], expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# chunking
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["local", "quadratic"])
@pytest.mark.parametrize("firms", ["firm", None])
def test_chunking_does_not_change_results(
    version: str, firms: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = _random_products(4)
    kwargs = {"market_ids": "mkt", "firm_ids": firms, "version": version, "interact": True}
    whole = build_differentiation_instruments(frame, ["x", "y", "z"], **kwargs)
    for chunk_size in (1, 2, 5, 1000):
        chunked = build_differentiation_instruments(
            frame, ["x", "y", "z"], chunk_size=chunk_size, **kwargs
        )
        pd.testing.assert_frame_equal(chunked, whole, check_exact=True)
    # the default, adaptive chunking with a tiny pair budget
    monkeypatch.setattr(instruments, "DEFAULT_MAX_PAIRS", 30)
    adaptive = build_differentiation_instruments(frame, ["x", "y", "z"], **kwargs)
    pd.testing.assert_frame_equal(adaptive, whole, check_exact=True)


# ---------------------------------------------------------------------------------------------
# edge cases and validation
# ---------------------------------------------------------------------------------------------


def test_single_product_markets_give_zeros() -> None:
    frame = pd.DataFrame({"market_ids": [1, 2, 3], "firm_ids": [1, 1, 2], "x": [1.0, 5.0, 9.0]})
    for version in ("local", "quadratic"):
        out = build_differentiation_instruments(frame, ["x"], version=version)
        assert (out.to_numpy() == 0).all()
    assert (build_blp_instruments(frame, "1 + x").to_numpy() == 0).all()


@pytest.fixture
def small() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "market_ids": ["a", "a", "b", "b"],
            "firm_ids": [1, 2, 1, 2],
            "x": [1.0, 2.0, 3.0, 4.0],
            "label": ["p", "q", "r", "s"],
        },
        index=[10, 11, 12, 13],
    )


def test_missing_columns_are_named(small: pd.DataFrame) -> None:
    with pytest.raises(BLPInputError, match=r"'xx' \(did you mean 'x'\?\)"):
        build_blp_instruments(small, "1 + xx")
    with pytest.raises(BLPInputError, match=r"'firms'.*'w'"):
        build_differentiation_instruments(small, ["x", "w"], firm_ids="firms")
    with pytest.raises(BLPInputError, match="'mkt'"):
        build_blp_instruments(small, ["x"], market_ids="mkt")


def test_missing_values_are_named(small: pd.DataFrame) -> None:
    bad = small.astype({"x": float})
    bad.loc[12, "x"] = np.nan
    with pytest.raises(BLPInputError, match=r"'x'.*row 12, market 'b'"):
        build_blp_instruments(bad, "1 + x")
    with pytest.raises(BLPInputError, match=r"'x'.*row 12, market 'b'"):
        build_differentiation_instruments(bad, ["x"])
    bad = small.astype({"firm_ids": float})
    bad.loc[11, "firm_ids"] = np.nan
    with pytest.raises(BLPInputError, match=r"'firm_ids'.*row 11"):
        build_differentiation_instruments(bad, ["x"])
    bad = small.astype({"market_ids": object})
    bad.loc[13, "market_ids"] = None
    with pytest.raises(BLPInputError, match=r"'market_ids'.*row 13"):
        build_blp_instruments(bad, ["x"])


def test_non_finite_and_non_numeric(small: pd.DataFrame) -> None:
    zero = small.assign(x=[0.0, 1.0, 2.0, 3.0])
    with pytest.raises(BLPInputError, match=r"'np.log\(x\)'.*row 10, market 'a'"):
        build_blp_instruments(zero, "0 + np.log(x)")
    with pytest.raises(BLPInputError, match="'label' is not numeric"):
        build_blp_instruments(small, ["label"])


def test_bad_options(small: pd.DataFrame) -> None:
    with pytest.raises(BLPInputError, match="version"):
        build_differentiation_instruments(small, ["x"], version="cubic")  # type: ignore[arg-type]
    with pytest.raises(BLPInputError, match="chunk_size"):
        build_differentiation_instruments(small, ["x"], chunk_size=0)
    with pytest.raises(BLPInputError, match="besides the constant"):
        build_differentiation_instruments(small, "1")
    with pytest.raises(BLPInputError, match="more than once"):
        build_blp_instruments(small, ["x", "x"])
    assert issubclass(BLPInputError, ValueError)


def test_empty_data() -> None:
    empty = pd.DataFrame(
        {
            "market_ids": pd.Series([], dtype=int),
            "firm_ids": pd.Series([], dtype=int),
            "x": pd.Series([], dtype=float),
        }
    )
    assert build_blp_instruments(empty, ["x"]).shape == (0, 2)
    assert build_differentiation_instruments(empty, "0 + x", version="quadratic").shape == (0, 2)
