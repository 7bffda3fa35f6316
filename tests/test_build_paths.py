"""The shortcuts of model building and data loading give what the plain computations give.

Ids are hashed one run at a time, padded arrays are reshaped when markets are balanced and in
order, formulas are parsed once per string and CSV files are read once; each
test compares the shortcut with pandas or a loop over rows, on inputs chosen to reach both the
shortcut and its fallback.
"""

from __future__ import annotations

import decimal
import gzip
import re

import numpy as np
import pandas as pd
import pytest
from builders import agent_frame

from blpmodels import BLPRandomCoefficients
from blpmodels.data.datasets import _read_csv
from blpmodels.data.formula import formula_terms
from blpmodels.data.markets import MarketLayout, factorize_ids
from blpmodels.exceptions import BLPInputError
from blpmodels.simulation.logit import simulate_logit


def _runs(rng: np.random.Generator, labels: list, size: int) -> np.ndarray:
    """``size`` ids in runs of random length (a label may come back in a later run)."""
    values: list = []
    while len(values) < size:
        values += [labels[rng.integers(len(labels))]] * int(rng.integers(1, 60))
    out = np.empty(size, dtype=object)
    out[:] = values[:size]
    return out


@pytest.mark.parametrize("dtype", [None, "str", "string"])
def test_ids_in_runs_get_the_codes_pandas_gives(dtype):
    rng = np.random.default_rng(3)
    ids = _runs(rng, [f"M{k:02d}" for k in range(30)] + ["", "é"], 5000)
    values = ids if dtype is None else pd.Series(ids, dtype=dtype)
    factorized = factorize_ids(values, "market_ids")
    codes, uniques = pd.factorize(ids, sort=False)
    np.testing.assert_array_equal(factorized.codes, codes)
    assert factorized.uniques.tolist() == list(uniques)
    assert factorized.codes.dtype == codes.dtype


def test_numbers_pandas_keeps_apart_are_still_refused_in_runs():
    # Equal to Python, but two ids to pandas (after a Decimal), which print alike.
    ids = np.empty(3100, dtype=object)
    ids[:1500], ids[1500:3000], ids[3000:] = decimal.Decimal(1), np.int64(1), 2
    assert len(pd.factorize(ids)[1]) == 3
    with pytest.raises(BLPInputError, match="ids that differ only in type"):
        MarketLayout.from_ids(ids)


@pytest.mark.parametrize(("dtype", "missing"), [(None, None), ("str", np.nan), ("string", pd.NA)])
def test_missing_ids_in_runs_are_counted_row_by_row(dtype, missing):
    rng = np.random.default_rng(5)
    ids = _runs(rng, ["a", "b", "c"], 3000)
    ids[100:140] = missing  # one run of 40 missing ids
    values = ids if dtype is None else pd.Series(ids, dtype=dtype)
    with pytest.raises(BLPInputError, match="'market_ids' has 40 missing values"):
        factorize_ids(values, "market_ids", "agent data")


@pytest.mark.parametrize("per_market", [20, 100])  # 2,000 agents: ids hashed run by run
def test_missing_agent_market_ids_are_reported_with_their_row(per_market):
    products = simulate_logit(n_markets=20, n_products=5).products
    agents = agent_frame(pd.unique(products["market_ids"]), per_market=per_market, seed=1)
    agents = agents.astype({"market_ids": object})
    agents.loc[agents.index[7], "market_ids"] = None
    message = (
        "agent data column 'market_ids' has 1 missing values (first at row 7); drop or fill "
        "them explicitly"
    )
    with pytest.raises(BLPInputError, match=re.escape(message)):
        BLPRandomCoefficients.from_formula(
            "shares ~ 1 + x + [prices ~ cost_shifter]",
            products,
            random="0 + x",
            agent_data=agents,
        )


def _layouts() -> dict[str, MarketLayout]:
    balanced = np.repeat(["a", "b", "c"], 4)
    return {
        "in order": MarketLayout.from_ids(balanced),
        "shuffled": MarketLayout.from_ids(np.random.default_rng(6).permutation(balanced)),
        "relabelled": MarketLayout.from_ids(balanced, np.array(["b", "a", "c"], dtype=object)),
        "unbalanced": MarketLayout.from_ids(np.array(["a", "a", "b", "c", "c", "c"])),
    }


@pytest.mark.parametrize("name", list(_layouts()))
@pytest.mark.parametrize("shape", [(), (2,), (2, 3)])
def test_pad_and_flatten_place_each_row_in_its_slot(name, shape):
    layout = _layouts()[name]
    rows = layout.n_rows
    values = np.random.default_rng(7).standard_normal((rows, *shape))
    padded = layout.pad(values, fill=-9.0)
    # A loop over rows: row r sits at (its market, its count of earlier rows in that market).
    expected = np.full((layout.n_markets, layout.width, *shape), -9.0)
    seen = np.zeros(layout.n_markets, dtype=int)
    for row in range(rows):
        market = layout.codes[row]
        expected[market, seen[market]] = values[row]
        seen[market] += 1
    np.testing.assert_array_equal(padded, expected)
    assert padded.flags.c_contiguous and padded.dtype == values.dtype
    assert not np.shares_memory(padded, values)
    for array in (padded, np.asfortranarray(padded)):
        flat = layout.flatten(array)
        np.testing.assert_array_equal(flat, values)
        assert not np.shares_memory(flat, array)


def test_terms_are_a_new_list_each_time():
    terms = formula_terms("1 + x")
    terms.append("y")
    assert [str(term) for term in formula_terms("1 + x")] == ["1", "x"]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_string_columns_are_read_as_text_when_present(tmp_path, suffix):
    text = b"market_ids,b\n1,2\n01,3\n"
    path = tmp_path / f"data{suffix}"
    path.write_bytes(gzip.compress(text) if suffix.endswith(".gz") else text)
    frame = _read_csv(path.name, tmp_path, strings=("market_ids", "firm_ids"))
    assert frame["market_ids"].tolist() == ["1", "01"]
    assert frame["b"].tolist() == [2, 3]
    assert list(frame.columns) == ["market_ids", "b"]
