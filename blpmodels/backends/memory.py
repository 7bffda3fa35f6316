"""Memory limits: parse them and choose market chunks that fit under them."""

from __future__ import annotations

import numbers
import re
from typing import Any

import numpy as np

from blpmodels.exceptions import BLPInputError

__all__ = ["chunk_memory", "chunk_size_for_memory", "driver_memory", "parse_memory"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

#: ``[J, I]`` work arrays alive at once in a chunk evaluation (agent factor, probabilities,
#: the share-Jacobian workspace, θ-Jacobian pieces and temporaries), measured with
#: tracemalloc at J = 50, I = 200: 2.8 for logit-RC with or without demographics, 11.0 for
#: RCNL, 13.0 with a supply side; the constants below leave a margin.
ARRAYS_PER_AGENT_PRODUCT = 3.5
NESTED_ARRAYS_PER_AGENT_PRODUCT = 9.0
SUPPLY_ARRAYS_PER_AGENT_PRODUCT = 10.0
#: ``[J, J]`` arrays per market in a chunk evaluation (∂s/∂δ, its inverse, temporaries).
ARRAYS_PER_PRODUCT_PAIR = 4.0
#: ``[J, J]`` arrays per market kept between evaluations: the Newton inverse (one: a chunk
#: drops the accepted one once a step computes its successor).
RESIDENT_PRODUCT_PAIRS = 1.0
#: Values per product and per column of X and Z (all moment blocks) that the driver holds at
#: once at its peak, the end of a fit: the first-stage table's stacked instruments and their
#: moments, the GMM moments. And per product and per (1 + parameter): δ, ∂δ/∂θ, the dependent
#: variables and residuals of the accepted and the candidate evaluations. Measured with
#: tracemalloc at T = 5,000 and 20,000 × 50 products (7 columns, 1 parameter: 34 values per
#: product); the constants leave a margin.
DRIVER_VALUES_PER_COLUMN = 3.0
DRIVER_VALUES_PER_PARAMETER = 8.0


def driver_memory(n_rows: int, n_columns: int, n_theta: int) -> float:
    """Bytes the driver holds beyond the chunks at its peak: arrays of the products' length.

    Parameters
    ----------
    n_rows : int
        Products N (rows of the moment blocks).
    n_columns : int
        Columns of X and Z over all moment blocks (demand and supply).
    n_theta : int
        Parameters P in θ.

    Returns
    -------
    float
        Bytes.

    Examples
    --------
    >>> driver_memory(1_000_000, 10, 1) / 2**20
    350.95...
    """
    return (
        8.0
        * n_rows
        * (DRIVER_VALUES_PER_COLUMN * n_columns + DRIVER_VALUES_PER_PARAMETER * (1 + n_theta))
    )


def parse_memory(value: Any) -> int | None:
    """Bytes from an integer or a string such as ``"2GiB"``, ``"500 MB"`` (None: no limit).

    Raises
    ------
    BLPInputError
        Not a positive number of bytes or a string with a known unit.

    Examples
    --------
    >>> parse_memory("2GiB")
    2147483648
    >>> parse_memory(1_000_000)
    1000000
    """
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise BLPInputError(
                f"memory_limit={value!r} is not a size: give bytes or a string such as "
                "'2GiB', '500MB' (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )
        size = float(match.group(1)) * _UNITS[unit]
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        size = float(value)
    else:
        raise BLPInputError(f"memory_limit must be bytes or a string like '2GiB', got {value!r}")
    if not np.isfinite(size) or size < 1:
        raise BLPInputError(f"memory_limit must be a positive size, got {value!r}")
    return int(size)


def chunk_memory(
    n_products: int, n_agents: int, n_theta: int, supply: bool = False, nested: bool = False
) -> tuple[float, float]:
    """Bytes one market needs while its chunk is evaluated, and between evaluations.

    Parameters
    ----------
    n_products, n_agents : int
        Padded products J and agents I per market.
    n_theta : int
        Parameters P in θ.
    supply : bool
        With a supply side (markups and their θ-Jacobian: more ``[J, I]`` and ``[J, J]``
        arrays, one per parameter for the markup Jacobian's directions).
    nested : bool
        Nested (RCNL): the nested share formulas keep more ``[J, I]`` arrays.

    Returns
    -------
    working, resident : float
        Bytes per market inside a chunk evaluation, and kept per market between
        evaluations (warm starts, outputs).

    Examples
    --------
    >>> working, resident = chunk_memory(50, 200, 1)
    >>> int(working), int(resident)
    (363200, 24800)
    """
    pairs = ARRAYS_PER_PRODUCT_PAIR + (2.0 + n_theta if supply else 0.0)
    agent_products = (
        ARRAYS_PER_AGENT_PRODUCT
        + (NESTED_ARRAYS_PER_AGENT_PRODUCT if nested else 0.0)
        + (SUPPLY_ARRAYS_PER_AGENT_PRODUCT if supply else 0.0)
    )
    working = 8.0 * (
        agent_products * n_products * n_agents
        + pairs * n_products**2
        + 4.0 * n_products * (1 + n_theta)
    )
    # Accepted and pending δ and ∂δ/∂θ in the chunk, and the driver's outputs and warm start.
    resident = 8.0 * (RESIDENT_PRODUCT_PAIRS * n_products**2 + 6.0 * n_products * (1 + n_theta))
    return working, resident


def chunk_size_for_memory(
    memory_limit: int,
    *,
    n_markets: int,
    n_products: int,
    n_agents: int,
    n_theta: int,
    parallel: int = 1,
    supply: bool = False,
    nested: bool = False,
    market_label: Any = None,
    driver: float = 0.0,
) -> int:
    """Markets per chunk so that a fit's memory beyond the data stays under ``memory_limit``.

    ``parallel`` chunks are evaluated at once (threads), each needing its working memory;
    every market keeps its resident state, and the driver holds ``driver`` bytes
    (:func:`driver_memory`) on top.

    Raises
    ------
    BLPInputError
        The limit cannot hold one market's working memory plus every market's resident state
        (names ``market_label``, the largest market, and the bytes needed).

    Examples
    --------
    >>> driver = driver_memory(1_000_000, n_columns=10, n_theta=1)
    >>> chunk_size_for_memory(
    ...     2**30, n_markets=20_000, n_products=50, n_agents=200, n_theta=1, driver=driver
    ... )
    577
    """
    working, resident = chunk_memory(n_products, n_agents, n_theta, supply, nested)
    free = memory_limit - n_markets * resident - driver
    size = int(free // (max(1, parallel) * working)) if free > 0 else 0
    if size < 1:
        needed = int(np.ceil(n_markets * resident + driver + max(1, parallel) * working))
        raise BLPInputError(
            f"memory_limit={memory_limit} bytes is too small: market {market_label!r} "
            f"({n_products} products x {n_agents} agents, padded) needs {_size(working)} while "
            f"it is solved{f' in each of {parallel} threads' if parallel > 1 else ''}, the "
            f"{n_markets} markets keep {_size(n_markets * resident)} between evaluations"
            + (f" and the driver's product arrays take {_size(driver)}" if driver else "")
            + f": give at least {_size(needed)} ({needed} bytes)"
        )
    return min(size, n_markets)


def _size(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"
