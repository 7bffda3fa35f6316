"""Helpers of :mod:`blpmodels.estimation.micro`: the checks and column readers its
constructors use, the named functions of the moments they build (a ratio, a covariance) and
the ``repr`` of micro datasets and moments.

Kept apart so that ``micro`` (the datasets, moments and the block that evaluates them) stays
within the module size limit; the public names remain importable from
:mod:`blpmodels.estimation.micro` and :mod:`blpmodels`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.pair_weights import FactoredWeights, factor_pairs

__all__ = [
    "covariance",
    "covariance_gradient",
    "dataset_repr",
    "moment_repr",
    "ratio",
    "ratio_gradient",
]


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise BLPInputError(f"{what} name must be a non-empty string, got {name!r}")
    return name


def _column(frame: pd.DataFrame, name: str, what: str, moment: str) -> np.ndarray:
    """A numeric column of products or agents, or a pandas expression of their columns."""
    if name in frame.columns:
        values = frame[name]
    else:
        try:
            values = frame.eval(name)
        except Exception as error:
            raise BLPInputError(
                f"micro moment {moment!r}: the {what} have no column {name!r} (and it is not an "
                f"expression of their columns: {error}); columns: {list(frame.columns)}"
            ) from None
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size != len(frame):
        raise BLPInputError(f"micro moment {moment!r}: {name!r} is not one value per row")
    return values


def _indicator(frame: pd.DataFrame, name: str, moment: str, role: str) -> np.ndarray:
    """A 0/1 product column (or expression) selecting products; other values would make a share
    of buyers, or a mean among them, a weighted sum that is neither, so they are an error."""
    values = _column(frame, name, "products", moment)
    bad = ~((values == 0.0) | (values == 1.0))
    if bad.any():
        examples = np.unique(values[bad])[:3].tolist()
        raise BLPInputError(
            f"micro moment {moment!r}: {role} {name!r} must be a 0/1 product column selecting "
            f"products, but it has the values {examples} (write a condition such as "
            f"'{name} > 0', or give weighted values as parts of a MicroMoment yourself)"
        )
    return values


def _check_probability(value: float, moment: str, what: str) -> None:
    if not 0.0 <= value <= 1.0:
        message = f"micro moment {moment!r}: {what}, so its value must be in [0, 1], got {value!r}"
        raise BLPInputError(message)


# The functions of MicroMoment.mean(among=...) and MicroMoment.covariance, named so that a
# moment's repr says what it computes.
def ratio(v: np.ndarray) -> float:
    """E[d · 1(j in group)] / P(j in group): the first part over the second.

    Examples
    --------
    >>> ratio(np.array([4.0, 0.5]))
    8.0
    """
    return float(v[0] / v[1])


def ratio_gradient(v: np.ndarray) -> np.ndarray:
    """∂ ratio / ∂ parts."""
    return np.array([1.0 / v[1], -v[0] / v[1] ** 2])


def covariance(v: np.ndarray) -> float:
    """E[d x] − E[d] E[x] from the parts (E[d], E[x], E[d x]).

    Examples
    --------
    >>> covariance(np.array([8.0, 0.5, 4.1]))
    0.09999999999999964
    """
    return float(v[2] - v[0] * v[1])


def covariance_gradient(v: np.ndarray) -> np.ndarray:
    """∂ covariance / ∂ parts."""
    return np.array([-v[1], -v[0], 1.0])


def _callable_name(function: Any) -> str:
    """A function's own name (``<lambda>`` for a lambda), without the ``<locals>`` path and
    address of its default repr."""
    return str(getattr(function, "__name__", type(function).__name__))


def _markets(market_ids: Any) -> str:
    if market_ids is None:
        return "all"
    # NumPy scalars (ids read from an array) as the Python values they hold: 'C01Q1', not
    # np.str_('C01Q1').
    ids = [
        repr(market.item() if isinstance(market, np.generic) else market) for market in market_ids
    ]
    shown = ids if len(ids) <= 4 else [*ids[:2], "…", ids[-1]]
    return f"{len(ids)} [{', '.join(shown)}]"


def dataset_repr(dataset: Any) -> str:
    """``MicroDataset('income', observations=100, markets=2 ['C01Q1', 'C01Q2'])``: the name,
    the survey's size, its markets (their number, and the first and last ids when there are
    many) and the options that differ from the defaults.

    Examples
    --------
    >>> from blpmodels.estimation.micro import MicroDataset
    >>> MicroDataset("income", 100, [f"C{k:02d}Q1" for k in range(1, 11)])
    MicroDataset('income', observations=100, markets=10 ['C01Q1', 'C02Q1', …, 'C10Q1'])
    """
    options = [f"observations={dataset.observations}", f"markets={_markets(dataset.market_ids)}"]
    if dataset.weights is not None:
        options.append(f"weights={_callable_name(dataset.weights)}")
    if dataset.second_choices:
        options.append("second_choices=True")
    if dataset.eliminated is not None:
        options.append(f"eliminated={dataset.eliminated!r}")
    return f"{type(dataset).__name__}({dataset.name!r}, {', '.join(options)})"


def moment_repr(moment: Any) -> str:
    """``MicroMoment('E[log_income | inside]', dataset='income', value=7.9)``: the name, the
    survey's name, the observed value, and the number of parts and the function combining
    them when there are several.

    Examples
    --------
    >>> from blpmodels.estimation.micro import MicroDataset, MicroMoment
    >>> survey = MicroDataset("income", 100, ["C01Q1"])
    >>> MicroMoment.mean("log_income", survey, 8.1, among="mushy")
    MicroMoment('E[log_income | mushy]', dataset='income', value=8.1, parts=2, function=ratio)
    """
    text = f"{type(moment).__name__}({moment.name!r}, dataset={moment.dataset.name!r}, "
    text += f"value={moment.value!r}"
    if moment.function is not None:
        text += f", parts={len(moment.parts)}, function={_callable_name(moment.function)}"
    return text + ")"


# ---------------------------------------------------------------------- stored survey arrays

#: A stored weighted array is kept as a sparse matrix when at most this share of its entries
#: is nonzero: a sparse entry costs 12 bytes (value and column) against a dense one's 8, and
#: the products of each evaluation then touch only the surveyed (agent, choice) cells.
SPARSE_DENSITY = 0.5


def _compact(array: np.ndarray) -> Any:
    """``array`` ``[rows, N]`` as a CSR matrix when mostly zeros (see ``SPARSE_DENSITY``).

    Surveys of one product type or one demographic group weight most cells zero: kept dense,
    the weighted arrays of Petrin's ten moments (21 rows × 1,000 agents × ~186 choices per
    market) exceed the store limit and are recomputed from the callables at every evaluation;
    kept sparse they hold a sixth of the values and are built once.

    Examples
    --------
    >>> _compact(np.array([[1.0, 0.0, 0.0, 0.0]])).nnz
    1
    >>> type(_compact(np.ones((1, 4)))).__name__
    'ndarray'
    """
    import scipy.sparse  # only where a survey is stored

    if np.count_nonzero(array) > SPARSE_DENSITY * array.size:
        return array
    return scipy.sparse.csr_array(array)


def _stored_form(array: np.ndarray, second: bool, factor: bool, n_agents: int) -> Any:
    """How a survey keeps ``array`` ``[rows, I·…]``: second choices (``second``) factored when
    every row is an agent factor times a choice pattern (and ``factor``), else dense; first
    choices sparse when mostly zeros (:func:`_compact`)."""
    if not second:
        return _compact(array)
    factored = factor_pairs(array, n_agents) if factor else None
    return array if factored is None else factored


def _stored_size(array: Any) -> float:
    """Values a stored array holds, in dense-value units (a sparse entry is 1.5 of them)."""
    if isinstance(array, FactoredWeights):
        return float(array.stored)
    nnz = getattr(array, "nnz", None)
    return float(array.size) if nnz is None else 1.5 * nnz


def _dense(array: Any) -> np.ndarray:
    """A stored array as a dense ndarray (callers that index its cells)."""
    return array.toarray() if hasattr(array, "toarray") else array


def _agent_columns(array: Any, agents: slice, n_agents: int) -> Any:
    """The columns of some agents of a stored ``[rows, I·…]`` array (agents lead the flat
    columns), sparse, factored or dense."""
    if agents == slice(0, n_agents):
        return array
    if isinstance(array, FactoredWeights):
        return array.columns(agents)
    rows = array.shape[0]
    if hasattr(array, "toarray"):
        width = array.shape[1] // n_agents
        return array[:, agents.start * width : agents.stop * width]
    return array.reshape(rows, n_agents, -1)[:, agents].reshape(rows, -1)


def _survey_sums(
    weighted: Any, probabilities: np.ndarray | None, tangents: Any, n_theta: int, jacobian: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``weighted @ probabilities`` ``[n]`` and, with ``jacobian``, ``weighted @ ∂/∂θ`` ``[n, P]``
    for a survey's ``[n, I·…]`` weighted arrays (dense or sparse); tangents that contract
    themselves (:mod:`blpmodels.kernel.micro_probabilities`) are never formed whole."""
    if jacobian and hasattr(tangents, "contract_all"):  # one pass (pairs never formed)
        return tangents.contract_all(weighted)
    if probabilities is None:  # the pairs' own weighted sums (pairs never formed)
        return tangents.values(weighted), None
    if isinstance(weighted, FactoredWeights):
        contribution = weighted.sums(probabilities)
    else:
        contribution = weighted @ probabilities.reshape(-1)
    if not jacobian:
        return contribution, None
    if hasattr(tangents, "contract"):
        return contribution, tangents.contract(weighted)
    return contribution, weighted @ tangents.reshape(n_theta, -1).T


def _covariance_block(weighted: Any, values: Any, probabilities: np.ndarray) -> np.ndarray:
    """``[n, n]`` Σ_f weighted_(1+a)f P_f values_bf of a survey's parts a, b (either array
    dense, sparse or factored)."""
    if isinstance(weighted, FactoredWeights) and isinstance(values, FactoredWeights):
        # Σ_i u_ai v_bi Σ_cd m_acd n_bcd P_icd: an [n·n, I] @ [I, (1+J)²] product.
        agents = weighted.agents[1:, None, :] * values.agents[None]  # [n, n, I]
        rows = agents.shape[0]
        by_pair = agents.reshape(rows * rows, -1) @ probabilities.reshape(agents.shape[2], -1)
        patterns = weighted.choices[1:, None] * values.choices[None]  # [n, n, S, S]
        return np.einsum("ak,ak->a", by_pair, patterns.reshape(rows * rows, -1)).reshape(rows, rows)
    if isinstance(weighted, FactoredWeights):
        weighted = weighted.toarray()
    if isinstance(values, FactoredWeights):
        values = values.toarray()
    flat = probabilities.reshape(1, -1)
    if hasattr(weighted, "multiply"):
        scaled = weighted[1:].multiply(flat).tocsr()
    else:
        scaled = weighted[1:] * flat
    return _dense(scaled @ values.T)
