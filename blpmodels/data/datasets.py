"""Loaders for the public data sets used in tests, examples and benchmarks.

The data are not shipped with the package. They live in a *data home* folder holding
``mixtape/`` (the Mixtape Sessions cereal data and files derived from it) and ``pyblp/`` (the
Nevo, BLP and Petrin data as distributed with pyblp). :func:`data_home` says where that folder is
looked for; every loader takes the same ``data_home`` argument.

Column types
------------
Identifier columns that hold text (``market_ids`` such as ``"C01Q1"``, ``product_ids``,
``firm_ids`` in the Mixtape data, ``clustering_ids`` in the BLP data, ...) are read with the
``str`` dtype, i.e. pandas' default string dtype: ``StringDtype(na_value=nan)`` under pandas 3
and ``object`` holding Python ``str`` under pandas 2. Identifiers stored as numbers in the files
(the years used as ``market_ids`` in the BLP and Petrin data, the numeric ``firm_ids`` of the Nevo,
BLP and Petrin data) are kept as ``int64``, as in the files. Rows keep the order of the files and
get a fresh ``RangeIndex``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

__all__ = [
    "DATA_ENV_VAR",
    "data_home",
    "load_blp",
    "load_mixtape_demographics",
    "load_mixtape_derived",
    "load_mixtape_exercise2",
    "load_mixtape_products",
    "load_nevo",
    "load_petrin",
    "load_petrin_micro_moments",
]

#: Environment variable naming the data home when no ``data_home`` argument is given.
DATA_ENV_VAR = "BLPMODELS_DATA"

#: Market size of the Mixtape cereal data: 90 servings per person per quarter.
MIXTAPE_SERVINGS_PER_PERSON = 90

_DEFAULT_RELATIVE = Path("..") / "shared" / "data"


def _absolute(path: str | os.PathLike[str]) -> Path:
    """Absolute, normalised path (``~`` expanded, ``..`` removed, symlinks left alone)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _default_candidates() -> list[Path]:
    """Default data homes, in the order they are tried."""
    candidates = [_absolute(Path.cwd() / _DEFAULT_RELATIVE)]
    # ``shared/data`` beside the source checkout that holds this package.
    checkout = Path(__file__).resolve().parents[2]  # blpmodels/data/datasets.py
    beside_checkout = _absolute(checkout.parent / "shared" / "data")
    if beside_checkout != candidates[0]:
        candidates.append(beside_checkout)
    return candidates


def _resolve(data_home: str | os.PathLike[str] | None) -> tuple[Path, str, list[str]]:
    """Return the data home, the source it came from and a description of every source tried."""
    tried: list[str] = []
    if data_home is not None:
        path = _absolute(data_home)
        tried.append(f"data_home argument: {path}")
        return path, "the data_home argument", tried
    tried.append("data_home argument: not given")
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        path = _absolute(env)
        tried.append(f"{DATA_ENV_VAR} environment variable: {path}")
        return path, f"the {DATA_ENV_VAR} environment variable", tried
    tried.append(f"{DATA_ENV_VAR} environment variable: not set")
    candidates = _default_candidates()
    for candidate in candidates:
        exists = candidate.is_dir()
        tried.append(f"default {candidate} ({'found' if exists else 'missing'})")
        if exists:
            return candidate, "the default location", tried
    return candidates[0], "the default location (which does not exist)", tried


def data_home(data_home: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder the data sets are read from.

    The folder is chosen in this order, stopping at the first that applies:

    1. the ``data_home`` argument, if given (used as is, even if it does not exist);
    2. the ``BLPMODELS_DATA`` environment variable, if set and not empty;
    3. ``../shared/data`` relative to the current working directory, if it is a folder;
    4. ``shared/data`` beside the source checkout that holds this package, if it is a folder.

    If none of 3–4 exists, the path of 3 is returned; the loaders then raise a
    :class:`FileNotFoundError` that lists every source tried. Relative paths are made absolute
    against the current working directory and ``~`` is expanded.

    Parameters
    ----------
    data_home : str or os.PathLike, optional
        Explicit data folder (the one holding ``mixtape/`` and ``pyblp/``).

    Returns
    -------
    pathlib.Path
        Absolute path of the data home. It is not checked to exist.

    Examples
    --------
    >>> data_home("/srv/data").as_posix()
    '/srv/data'
    >>> data_home()  # doctest: +SKIP
    PosixPath('/work/shared/data')
    """
    return _resolve(data_home)[0]


def _path(relative: str, home: str | os.PathLike[str] | None) -> Path:
    """Full path of a data file, or a FileNotFoundError that explains where it was looked for."""
    root, source, tried = _resolve(home)
    path = root / relative
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"blpmodels data file not found: {path} (data home {root} was taken from {source}). "
        f"Sources tried, in order: {'; '.join(tried)}. To read the data from elsewhere, pass "
        f"data_home='/path/to/data' or set the {DATA_ENV_VAR} environment variable to the folder "
        "that holds mixtape/ and pyblp/."
    )


def _read_csv(
    relative: str, home: str | os.PathLike[str] | None, strings: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Read one CSV file with the named columns as strings (if present) and a RangeIndex.

    pandas skips the ``dtype`` entries of columns a file does not have, so the header need not
    be read first (a second open of the file, and of a gzip stream: 1.4 ms for the exercise-2
    agents).
    """
    path = _path(relative, home)
    dtype: Mapping[str, str] = dict.fromkeys(strings, "str")
    return pd.read_csv(path, dtype=dtype).reset_index(drop=True)


_PARAMETERS_DOC = """Parameters
    ----------
    data_home : str or os.PathLike, optional
        Data folder (the one holding ``mixtape/`` and ``pyblp/``); see :func:`data_home`."""

_RAISES_DOC = """Raises
    ------
    FileNotFoundError
        If a data file is missing; the message gives its path and the sources tried."""

_Loader = TypeVar("_Loader", bound=Callable[..., Any])


def _loader(function: _Loader) -> _Loader:
    """Fill the loaders' shared docstring sections: ``{parameters}`` and ``{raises}``."""
    if function.__doc__:  # None under ``python -OO``
        function.__doc__ = function.__doc__.replace("{parameters}", _PARAMETERS_DOC).replace(
            "{raises}", _RAISES_DOC
        )
    return function


def _read_pair(
    name: str,
    home: str | os.PathLike[str] | None,
    product_strings: tuple[str, ...],
    agent_strings: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Products and agents of one pyblp data set: ``pyblp/<name>_{products,agents}.csv``."""
    products = _read_csv(f"pyblp/{name}_products.csv", home, strings=product_strings)
    agents = _read_csv(f"pyblp/{name}_agents.csv", home, strings=agent_strings)
    return products, agents


def _mixtape_firms(product_ids: pd.Series) -> pd.Series:
    """Firm ids of the Mixtape cereal products: the first two characters ("F1B04" is F1).

    This is how the course builds them; the derived file that ships ``firm_ids``
    (``ex2_product_data_with_overid_and_firms.csv``) holds exactly these.
    """
    return product_ids.str.slice(0, 2)


@_loader
def load_mixtape_products(data_home: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the Mixtape Sessions cereal data (24 products in 94 markets), ready for estimation.

    Reads ``mixtape/products.csv``. The original columns (``market``, ``product``, ``mushy``,
    ``servings_sold``, ``city_population``, ``price_per_serving``, ``price_instrument``) are kept
    and these are added:

    - ``market_ids`` (= ``market``), ``product_ids`` (= ``product``), both strings;
    - ``firm_ids``: the first two characters of ``product`` (``"F1"`` ... ``"F6"``);
    - ``market_size`` = ``city_population`` × 90 servings;
    - ``shares`` = ``servings_sold`` / ``market_size``;
    - ``prices`` = ``price_per_serving``;
    - ``outside_share`` = 1 − the sum of ``shares`` within the market.

    {parameters}

    Returns
    -------
    pandas.DataFrame
        2,256 rows in the order of the file.

    {raises}

    Examples
    --------
    >>> products = load_mixtape_products()  # doctest: +SKIP
    >>> products.shape, products["market_ids"].nunique()  # doctest: +SKIP
    ((2256, 14), 94)
    >>> round(float(products["outside_share"].min()), 3)  # doctest: +SKIP
    0.305
    """
    data = _read_csv("mixtape/products.csv", data_home, strings=("market", "product"))
    data["market_ids"] = data["market"]
    data["product_ids"] = data["product"]
    data["firm_ids"] = _mixtape_firms(data["product"])
    data["market_size"] = data["city_population"] * MIXTAPE_SERVINGS_PER_PERSON
    data["shares"] = data["servings_sold"] / data["market_size"]
    data["prices"] = data["price_per_serving"]
    inside = data.groupby("market_ids", sort=False)["shares"].transform("sum")
    data["outside_share"] = 1.0 - inside
    return data


@_loader
def load_mixtape_demographics(data_home: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the Mixtape Sessions demographics (20 individuals per market).

    Reads ``mixtape/demographics.csv`` (``market``, ``quarterly_income``) and adds
    ``market_ids`` (= ``market``, string) and ``log_income`` = log(``quarterly_income``).

    {parameters}

    Returns
    -------
    pandas.DataFrame
        1,880 rows in the order of the file.

    {raises}

    Examples
    --------
    >>> demographics = load_mixtape_demographics()  # doctest: +SKIP
    >>> list(demographics.columns)  # doctest: +SKIP
    ['market', 'quarterly_income', 'market_ids', 'log_income']
    """
    data = _read_csv("mixtape/demographics.csv", data_home, strings=("market",))
    data["market_ids"] = data["market"]
    data["log_income"] = np.log(data["quarterly_income"])
    return data


@_loader
def load_mixtape_exercise2(
    data_home: str | os.PathLike[str] | None = None, *, overidentified: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load the product and agent data built for Mixtape exercises 2 and 3.

    Parameters
    ----------
    data_home : str or os.PathLike, optional
        Data folder; see :func:`data_home`.
    overidentified : bool, default False
        Read ``mixtape/derived/ex2_product_data_with_overid_and_firms.csv`` (adds
        ``demand_instruments4`` and ``log_income_std``) instead of
        ``mixtape/derived/ex2_product_data.csv``.

    Returns
    -------
    products : pandas.DataFrame
        2,256 rows: ``market_ids``, ``product_ids`` and ``firm_ids`` (strings; ``firm_ids`` are
        the first two characters of ``product_ids``, as in :func:`load_mixtape_products`, added
        when the file has none, so the supply side — ``costs()``, ``merger()`` — works on
        either file), ``shares``, ``prices``, ``demand_instruments0..3`` (``..4``) and the
        columns they were built from.
    agents : pandas.DataFrame
        94,000 rows from ``mixtape/derived/ex2_agent_data.csv.gz``: ``demographics_row``,
        ``market_ids``, ``log_income``, ``nodes0..2`` and ``weights`` (1/1000).

    {raises}

    Examples
    --------
    >>> products, agents = load_mixtape_exercise2(overidentified=True)  # doctest: +SKIP
    >>> products.shape, agents.shape  # doctest: +SKIP
    ((2256, 17), (94000, 7))
    >>> sorted(load_mixtape_exercise2()[0]["firm_ids"].unique())  # doctest: +SKIP
    ['F1', 'F2', 'F3', 'F4', 'F6']
    """
    name = (
        "ex2_product_data_with_overid_and_firms.csv" if overidentified else "ex2_product_data.csv"
    )
    ids = ("market_ids", "product_ids", "firm_ids")
    products = _read_csv(f"mixtape/derived/{name}", data_home, strings=ids)
    if "firm_ids" not in products.columns:
        products["firm_ids"] = _mixtape_firms(products["product_ids"])
    agents = _read_csv("mixtape/derived/ex2_agent_data.csv.gz", data_home, strings=("market_ids",))
    return products, agents


@_loader
def load_mixtape_derived(
    name: str, data_home: str | os.PathLike[str] | None = None
) -> pd.DataFrame:
    """One file of ``mixtape/derived/``: the exercises' agent draws, instruments and surveys.

    Parameters
    ----------
    name : str
        File name inside ``mixtape/derived/``, e.g. ``"ex2_s2_halton_100.csv.gz"`` (the
        folder's README lists them).
    data_home : str or os.PathLike, optional
        Data folder; see :func:`data_home`.

    Returns
    -------
    pandas.DataFrame
        The file, ``market_ids`` and ``product_ids`` read as strings.

    {raises}

    Examples
    --------
    >>> draws = load_mixtape_derived("ex2_s3_quad_7x7.csv.gz")  # doctest: +SKIP
    """
    return _read_csv(f"mixtape/derived/{name}", data_home, strings=("market_ids", "product_ids"))


@_loader
def load_nevo(
    data_home: str | os.PathLike[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load Nevo's (2000) fake cereal data as distributed with pyblp.

    {parameters}

    Returns
    -------
    products : pandas.DataFrame
        2,256 rows from ``pyblp/nevo_products.csv``: ``market_ids`` and ``product_ids``
        (strings), ``city_ids``, ``quarter``, ``firm_ids`` and ``brand_ids`` (integers),
        ``shares``, ``prices``, ``sugar``, ``mushy`` and ``demand_instruments0..19``.
    agents : pandas.DataFrame
        1,880 rows from ``pyblp/nevo_agents.csv``: ``market_ids`` (string), ``city_ids``,
        ``quarter``, ``weights``, ``nodes0..3``, ``income``, ``income_squared``, ``age``,
        ``child``.

    {raises}

    Examples
    --------
    >>> products, agents = load_nevo()  # doctest: +SKIP
    >>> products.shape, agents.shape  # doctest: +SKIP
    ((2256, 30), (1880, 12))
    """
    return _read_pair("nevo", data_home, ("market_ids", "product_ids"), ("market_ids",))


@_loader
def load_blp(
    data_home: str | os.PathLike[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load the Berry, Levinsohn and Pakes (1995) automobile data as distributed with pyblp.

    {parameters}

    Returns
    -------
    products : pandas.DataFrame
        2,217 rows from ``pyblp/blp_products.csv``; ``market_ids`` are the years 1971–1990
        (integers, as in the file), ``clustering_ids`` and ``region`` are strings, ``car_ids`` and
        ``firm_ids`` integers.
    agents : pandas.DataFrame
        4,000 rows (200 per year) from ``pyblp/blp_agents.csv``: ``market_ids``, ``weights``,
        ``nodes0..4``, ``income``.

    {raises}

    Examples
    --------
    >>> products, agents = load_blp()  # doctest: +SKIP
    >>> products["market_ids"].nunique(), agents.shape  # doctest: +SKIP
    (20, (4000, 8))
    """
    return _read_pair("blp", data_home, ("clustering_ids", "region"))


@_loader
def load_petrin(
    data_home: str | os.PathLike[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load Petrin's (2002) minivan data as distributed with pyblp.

    The micro moments that go with these data are loaded by :func:`load_petrin_micro_moments`.

    {parameters}

    Returns
    -------
    products : pandas.DataFrame
        2,407 rows from ``pyblp/petrin_products.csv``; ``market_ids`` are years (integers, as in
        the file), ``region`` is a string, ``clustering_ids`` and ``firm_ids`` integers.
    agents : pandas.DataFrame
        13,000 rows from ``pyblp/petrin_agents.csv``: ``market_ids``, ``weights``,
        ``nodes0..5``, ``fv``, ``income``, ``low``, ``mid``, ``high``, ``fs``, ``age``.

    {raises}

    Examples
    --------
    >>> products, agents = load_petrin()  # doctest: +SKIP
    >>> products.shape[0], agents.shape[0]  # doctest: +SKIP
    (2407, 13000)
    """
    return _read_pair("petrin", data_home, ("region",))


@_loader
def load_petrin_micro_moments(
    data_home: str | os.PathLike[str] | None = None,
) -> dict[str, pd.Series | pd.DataFrame]:
    """Load the values and covariances of Petrin's (2002) micro moments.

    {parameters}

    Returns
    -------
    dict
        ``"values"``: a float :class:`pandas.Series` of the 10 moment values from
        ``pyblp/petrin_values.csv``, indexed by moment name (e.g. ``"E[age | mi]"``);
        ``"covariances"``: the 10 × 10 float :class:`pandas.DataFrame` from
        ``pyblp/petrin_covariances.csv`` with the same names on both axes, in the same order.

    {raises}

    Examples
    --------
    >>> moments = load_petrin_micro_moments()  # doctest: +SKIP
    >>> float(moments["values"]["E[age | mi]"]), moments["covariances"].shape  # doctest: +SKIP
    (0.783, (10, 10))
    """
    values_path = _path("pyblp/petrin_values.csv", data_home)
    covariances_path = _path("pyblp/petrin_covariances.csv", data_home)
    values = pd.read_csv(values_path, index_col=0)["value"].astype(np.float64)
    values.index.name = "moment"
    covariances = pd.read_csv(covariances_path, index_col=0).astype(np.float64)
    covariances.index.name = "moment"
    # Same moments, same order, on both axes.
    covariances = covariances.loc[values.index, list(values.index)]
    return {"values": values, "covariances": covariances}
