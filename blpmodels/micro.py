"""Micro moments: survey statistics matched by the model's agent-level choice probabilities.

A :class:`MicroDataset` describes a survey of consumers in some markets: which agent types i
and choices are sampled, through weights w_dij (first choices j, with 0 the outside option) or
w_dijk (first choice j, second choice k). A :class:`MicroMoment` matches an observed statistic
to the model's value f_m(v) of a function of *parts*, each a weighted mean over the survey,

    v_p = Σ_t Σ_i Σ_j w_it w_dijt P_ijt v_pijt / Σ_t Σ_i Σ_j w_it w_dijt P_ijt,

with w_it the integration weights, P_ijt the probability that agent i chooses j (or, for second
choices, j first and k second: s_ik(−j) − s_ik, which is s_ij s_ik(−j) in the logit) and v_pijt
the part's values. The micro moment is the observed value minus f_m(v); its covariance is that
of a mean over the dataset's observations (the delta method through f_m).

Weights and values are callables ``f(market_id, products, agents)`` with ``products`` and
``agents`` the DataFrames of the market's rows (all columns, positional index), returning
I × J, I × (1 + J) or, for second choices, I × J × (1 + J) arrays (pyblp's shapes: a missing
leading column for the outside option means zeros there). Everything is validated, and the
arrays are computed once, before estimation; each evaluation only recomputes the choice
probabilities of the surveyed markets, in chunks of agents that bound memory. (Arrays too large
to keep, e.g. second choices among hundreds of products, are recomputed at each evaluation
from the callables, which are then given one chunk of the market's agents at a time.)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .exceptions import BLPInputError

__all__ = [
    "MicroDataset",
    "MicroMoment",
    "agent_scores",
    "micro_scores",
    "optimal_micro_moments",
    "simulate_micro_data",
]

ArrayFunction = Callable[[Any, pd.DataFrame, pd.DataFrame], Any]


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise BLPInputError(f"{what} name must be a non-empty string, got {name!r}")
    return name


@dataclass(frozen=True, eq=False)
class MicroDataset:
    """A survey of consumers in some markets.

    Parameters
    ----------
    name : str
        Name used in messages and tables.
    observations : int
        Number of surveyed consumers N_d (scales the covariance of this dataset's moments).
    market_ids : sequence
        Markets the survey covers (``None``: all markets).
    weights : callable, optional
        ``weights(market_id, products, agents)`` returning the sampling weights w_dij as an
        I × J or I × (1 + J) array (I × J × (1 + J) with ``second_choices``). By default every
        agent who bought an inside good is sampled with the same weight (second choices: any
        second choice, the outside option included).
    second_choices : bool
        The survey records second choices (what the consumer would have bought had the first
        choice not been available).
    eliminated : str, optional
        With ``second_choices``: a product column whose groups (e.g. ``"firm_ids"``) are
        removed together, so the second choice is the best option outside the first choice's
        group (asked "had none of this brand's products been available"). By default only the
        first choice itself is removed.

    Raises
    ------
    BLPInputError
        Empty name, observations not a positive integer, no markets, weights not callable.

    Examples
    --------
    >>> survey = MicroDataset("income", 100, ["C01Q1", "C01Q2"])
    >>> survey.observations, survey.market_ids
    (100, ('C01Q1', 'C01Q2'))
    """

    name: str
    observations: int
    market_ids: Sequence[Any] | None
    weights: ArrayFunction | None = None
    second_choices: bool = False
    eliminated: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "micro dataset")
        observations = self.observations
        if (
            isinstance(observations, bool)
            or not isinstance(observations, numbers.Integral)
            or observations <= 0
        ):
            raise BLPInputError(
                f"micro dataset {self.name!r}: observations must be a positive integer, got "
                f"{observations!r}"
            )
        object.__setattr__(self, "observations", int(observations))
        if self.market_ids is not None:
            ids = (
                (self.market_ids,)
                if isinstance(self.market_ids, str)
                else tuple(pd.unique(pd.Series(list(self.market_ids), dtype=object)))
            )
            if not ids:
                raise BLPInputError(f"micro dataset {self.name!r}: market_ids is empty")
            object.__setattr__(self, "market_ids", ids)
        if self.weights is not None and not callable(self.weights):
            raise BLPInputError(
                f"micro dataset {self.name!r}: weights must be a callable "
                "weights(market_id, products, agents) returning an array, got "
                f"{type(self.weights).__name__}"
            )
        if not isinstance(self.second_choices, (bool, np.bool_)):
            raise BLPInputError(
                f"micro dataset {self.name!r}: second_choices must be True or False"
            )
        if self.eliminated is not None:
            if not isinstance(self.eliminated, str):
                raise BLPInputError(
                    f"micro dataset {self.name!r}: eliminated must name a product column, got "
                    f"{self.eliminated!r}"
                )
            if not self.second_choices:
                raise BLPInputError(
                    f"micro dataset {self.name!r}: eliminated groups only matter with "
                    "second_choices=True"
                )


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


@dataclass(frozen=True, eq=False)
class MicroMoment:
    """An observed survey statistic and the model's value of it.

    Parameters
    ----------
    name : str
        Name used in messages and tables.
    dataset : MicroDataset
        The survey the statistic comes from.
    value : float
        The observed value.
    parts : callable or sequence of callables
        Each ``values(market_id, products, agents)`` returns the values v_pij (v_pijk) of a
        part, an array of one of the dataset's weight shapes. A part's model value is the
        weighted mean of its values over the survey.
    function : callable, optional
        ``function(parts) -> float`` of the parts' values (default: the single part itself).
        Ratios, covariances and regression coefficients of parts are functions of this kind.
    gradient : callable, optional
        ``gradient(parts) -> array`` of ∂function/∂parts; required with ``function``.

    Raises
    ------
    BLPInputError
        Bad name, dataset or value, parts not callable, several parts without a function, a
        function without its gradient.

    Examples
    --------
    The mean of a demographic among the surveyed buyers, written out in the general form:

    >>> survey = MicroDataset("income", 100, ["C01Q1", "C01Q2"])
    >>> moment = MicroMoment(
    ...     "E[log income]", survey, 7.9,
    ...     parts=[lambda t, p, a: np.outer(a["log_income"], np.ones(len(p)))])
    >>> moment.evaluate([7.8]), moment.derivative([7.8]).tolist()
    (7.8, [1.0])
    """

    name: str
    dataset: MicroDataset
    value: float
    parts: Sequence[ArrayFunction] = ()
    function: Callable[[np.ndarray], Any] | None = None
    gradient: Callable[[np.ndarray], Any] | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "micro moment")
        if not isinstance(self.dataset, MicroDataset):
            raise BLPInputError(
                f"micro moment {self.name!r}: dataset must be a MicroDataset, got "
                f"{type(self.dataset).__name__}"
            )
        try:
            value = float(self.value)
        except (TypeError, ValueError):
            raise BLPInputError(
                f"micro moment {self.name!r}: value must be a number, got {self.value!r}"
            ) from None
        if not np.isfinite(value):
            raise BLPInputError(f"micro moment {self.name!r}: value must be finite, got {value}")
        object.__setattr__(self, "value", value)
        parts = (self.parts,) if callable(self.parts) else tuple(self.parts)
        if not parts:
            raise BLPInputError(f"micro moment {self.name!r}: give at least one part")
        for position, part in enumerate(parts):
            if not callable(part):
                raise BLPInputError(
                    f"micro moment {self.name!r}: part {position} must be a callable "
                    f"values(market_id, products, agents), got {type(part).__name__}"
                )
        object.__setattr__(self, "parts", parts)
        if self.function is None:
            if self.gradient is not None:
                raise BLPInputError(
                    f"micro moment {self.name!r}: a gradient was given without its function"
                )
            if len(parts) > 1:
                raise BLPInputError(
                    f"micro moment {self.name!r}: {len(parts)} parts need a function (and its "
                    "gradient) that combines them"
                )
        else:
            if not callable(self.function):
                raise BLPInputError(f"micro moment {self.name!r}: function must be callable")
            if self.gradient is None or not callable(self.gradient):
                raise BLPInputError(
                    f"micro moment {self.name!r}: function needs its gradient (a callable "
                    "returning ∂function/∂parts, one entry per part)"
                )

    def evaluate(self, parts: Sequence[float] | np.ndarray) -> float:
        """f_m at the parts' values."""
        values = np.asarray(parts, dtype=np.float64)
        if self.function is None:
            return float(values[0])
        result = np.asarray(self.function(values), dtype=np.float64)
        if result.size != 1:
            raise BLPInputError(
                f"micro moment {self.name!r}: function returned {result.size} values, not one"
            )
        return float(result.reshape(-1)[0])

    def derivative(self, parts: Sequence[float] | np.ndarray) -> np.ndarray:
        """∂f_m/∂parts at the parts' values."""
        values = np.asarray(parts, dtype=np.float64)
        if self.gradient is None:
            return np.ones(1)
        result = np.asarray(self.gradient(values), dtype=np.float64).reshape(-1)
        if result.size != len(self.parts):
            raise BLPInputError(
                f"micro moment {self.name!r}: gradient returned {result.size} values for "
                f"{len(self.parts)} parts"
            )
        return result

    # ------------------------------------------------------------------ constructors

    @classmethod
    def mean(
        cls,
        demographic: str,
        dataset: MicroDataset,
        value: float,
        among: str | None = None,
        *,
        name: str | None = None,
    ) -> MicroMoment:
        """E[demographic | bought an inside good] (optionally among buyers of some products).

        Parameters
        ----------
        demographic : str
            Agent-data column (or an expression of agent columns).
        dataset : MicroDataset
            The survey.
        value : float
            Observed mean.
        among : str, optional
            0/1 product column (or expression, e.g. ``"mushy == 1"``) selecting the products
            whose buyers are averaged over; then the moment is a ratio of two parts.
        name : str, optional
            Default ``"E[demographic | among]"``.

        Returns
        -------
        MicroMoment

        Examples
        --------
        >>> survey = MicroDataset("income", 100, ["C01Q1", "C01Q2"])
        >>> MicroMoment.mean("log_income", survey, 7.9).name
        'E[log_income | inside]'
        >>> moment = MicroMoment.mean("log_income", survey, 8.1, among="mushy")
        >>> moment.evaluate([4.0, 0.5])
        8.0
        """
        label = name or f"E[{demographic} | {among or 'inside'}]"
        second = dataset.second_choices

        def first_choice(products: pd.DataFrame, column: str | None) -> np.ndarray:
            inside = (
                np.ones(len(products))
                if column is None
                else _column(products, column, "products", label)
            )
            return np.concatenate([[0.0], inside])

        def spread(array: np.ndarray, size: int) -> np.ndarray:
            return np.repeat(array[:, :, None], size, axis=2) if second else array

        def demographic_values(t: Any, products: pd.DataFrame, agents: pd.DataFrame) -> Any:
            d = _column(agents, demographic, "agents", label)
            chosen = first_choice(products, among)
            return spread(np.outer(d, chosen), len(products) + 1)

        if among is None:
            return cls(label, dataset, value, parts=[demographic_values])

        def group_values(t: Any, products: pd.DataFrame, agents: pd.DataFrame) -> Any:
            chosen = first_choice(products, among)
            return spread(np.outer(np.ones(len(agents)), chosen), len(products) + 1)

        return cls(
            label,
            dataset,
            value,
            parts=[demographic_values, group_values],
            function=lambda v: v[0] / v[1],
            gradient=lambda v: np.array([1.0 / v[1], -v[0] / v[1] ** 2]),
        )

    @classmethod
    def second_choice(
        cls,
        dataset: MicroDataset,
        value: float,
        first: str | None = None,
        to: str = "outside",
        *,
        name: str | None = None,
    ) -> MicroMoment:
        """Share of respondents whose second choice is ``to`` (and first choice in ``first``).

        Parameters
        ----------
        dataset : MicroDataset
            A survey with ``second_choices=True``.
        value : float
            Observed share.
        first : str, optional
            0/1 product column (or expression) the first choice must belong to (a joint
            share: P(first in group and second is ``to``), not a conditional one).
        to : str
            ``"outside"`` (no purchase), ``"same firm"`` (a product with the first choice's
            ``firm_ids``) or a 0/1 product column (or expression) the second choice belongs to.
        name : str, optional
            Default ``"P(first -> to)"``.

        Returns
        -------
        MicroMoment

        Raises
        ------
        BLPInputError
            The dataset does not record second choices.

        Examples
        --------
        >>> survey = MicroDataset("diversion", 200, ["C01Q1"], second_choices=True)
        >>> MicroMoment.second_choice(survey, 0.28).name
        'P(inside -> outside)'
        >>> MicroMoment.second_choice(survey, 0.31, first="mushy", to="mushy").name
        'P(mushy -> mushy)'
        """
        label = name or f"P({first or 'inside'} -> {to})"
        if not dataset.second_choices:
            raise BLPInputError(
                f"micro moment {label!r}: dataset {dataset.name!r} does not record second "
                "choices (MicroDataset(..., second_choices=True))"
            )
        if not isinstance(to, str):
            raise BLPInputError(f"micro moment {label!r}: to must be a string, got {to!r}")

        def values(t: Any, products: pd.DataFrame, agents: pd.DataFrame) -> Any:
            n = len(products)
            chosen = np.ones(n) if first is None else _column(products, first, "products", label)
            chosen = np.concatenate([[0.0], chosen])
            if to == "outside":
                pair = np.zeros((n + 1, n + 1))
                pair[:, 0] = chosen
            elif to == "same firm":
                if "firm_ids" not in products.columns:
                    raise BLPInputError(
                        f"micro moment {label!r}: 'same firm' needs a firm_ids product column"
                    )
                firms = products["firm_ids"].to_numpy()
                pair = np.zeros((n + 1, n + 1))
                pair[1:, 1:] = firms[:, None] == firms[None, :]
                pair *= chosen[:, None]
            else:
                group = np.concatenate([[0.0], _column(products, to, "products", label)])
                pair = np.outer(chosen, group)
            return np.broadcast_to(pair, (len(agents), n + 1, n + 1))

        return cls(label, dataset, value, parts=[values])

    @classmethod
    def covariance(
        cls,
        demographic: str,
        characteristic: str,
        dataset: MicroDataset,
        value: float,
        *,
        name: str | None = None,
    ) -> MicroMoment:
        """Cov(demographic, characteristic of the chosen product) among surveyed buyers.

        Parameters
        ----------
        demographic : str
            Agent-data column (or expression).
        characteristic : str
            Product-data column (or expression).
        dataset : MicroDataset
            The survey.
        value : float
            Observed covariance.
        name : str, optional
            Default ``"Cov(demographic, characteristic)"``.

        Returns
        -------
        MicroMoment
            Parts E[d], E[x], E[d x]; function E[d x] − E[d] E[x].

        Examples
        --------
        >>> survey = MicroDataset("income", 100, ["C01Q1"])
        >>> moment = MicroMoment.covariance("log_income", "mushy", survey, 0.05)
        >>> round(moment.evaluate([8.0, 0.5, 4.1]), 12), moment.derivative([8.0, 0.5, 4.1]).tolist()
        (0.1, [-0.5, -8.0, 1.0])
        """
        label = name or f"Cov({demographic}, {characteristic})"
        second = dataset.second_choices

        def build(use_d: bool, use_x: bool) -> ArrayFunction:
            def values(t: Any, products: pd.DataFrame, agents: pd.DataFrame) -> Any:
                d = _column(agents, demographic, "agents", label) if use_d else None
                x = (
                    _column(products, characteristic, "products", label)
                    if use_x
                    else np.ones(len(products))
                )
                array = np.outer(np.ones(len(agents)) if d is None else d, np.r_[0.0, x])
                if second:
                    array = np.repeat(array[:, :, None], len(products) + 1, axis=2)
                return array

            return values

        return cls(
            label,
            dataset,
            value,
            parts=[build(True, False), build(False, True), build(True, True)],
            function=lambda v: v[2] - v[0] * v[1],
            gradient=lambda v: np.array([-v[1], -v[0], 1.0]),
        )


# ---------------------------------------------------------------------- computation


def _pad_choices(array: np.ndarray, n_products: int, second: bool) -> np.ndarray:
    """I × (1+J) (× (1+J)) with zeros for a missing outside-option slot."""
    if array.shape[1] == n_products:
        array = np.concatenate([np.zeros((array.shape[0], 1, *array.shape[2:])), array], axis=1)
    if second and array.shape[2] == n_products:
        array = np.concatenate([np.zeros((*array.shape[:2], 1)), array], axis=2)
    return array


def _check_array(raw: Any, n_agents: int, n_products: int, second: bool, where: str) -> np.ndarray:
    """Validate a weights or values array's shape and finiteness; return it padded."""
    try:
        array = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise BLPInputError(f"{where} returned something that is not numeric: {error}") from None
    inside, full = n_products, 1 + n_products
    if second:
        shapes = [(n_agents, a, b) for a in (inside, full) for b in (inside, full)]
    else:
        shapes = [(n_agents, inside), (n_agents, full)]
    if array.shape not in shapes:
        kind = "I × J × (1 + J) (second choices)" if second else "I × J or I × (1 + J)"
        raise BLPInputError(
            f"{where} returned an array of shape {array.shape}; with I = {n_agents} agents and "
            f"J = {n_products} products it must be {kind}: one of {shapes}"
        )
    if not np.isfinite(array).all():
        raise BLPInputError(f"{where} returned non-finite values")
    return _pad_choices(array, n_products, second)


@dataclass(eq=False)
class _Survey:
    """One dataset in one market: its callables, and (unless large) their arrays, flattened
    as ``[1 + n_parts, I·(1+J)(·(1+J))]`` weights w_i w_dij (times each part's values)."""

    dataset: int
    parts: np.ndarray  # global part indices
    second: bool
    groups: np.ndarray | None  # [1+J] group removed with each first choice (second choices)
    source: MicroDataset
    label: Any
    frame: pd.DataFrame
    people: pd.DataFrame
    agent_weights: np.ndarray
    functions: list[tuple[MicroMoment, int, ArrayFunction]]
    weighted: np.ndarray | None = None
    values: np.ndarray | None = None

    def compute(self, agents: slice) -> tuple[np.ndarray, np.ndarray]:
        """Validated weighted values and raw values of some agents (callables called)."""
        dataset, label = self.source, self.label
        people = self.people.iloc[agents].reset_index(drop=True)
        # Positions of these agents among the market's (callables may be given a chunk).
        people.attrs["agent_indices"] = np.arange(len(self.people))[agents]
        n_agents, n_products = len(people), len(self.frame)
        where = f"micro dataset {dataset.name!r} in market {label!r}: weights"
        if dataset.weights is None:
            shape = (n_agents, n_products) + ((n_products + 1,) if self.second else ())
            raw: Any = np.ones(shape)
        else:
            try:
                raw = dataset.weights(label, self.frame, people)
            except BLPInputError as error:
                raise BLPInputError(f"{where}: {error}") from None
            except Exception as error:
                raise BLPInputError(f"{where} failed: {error!r}") from error
        weights = _check_array(raw, n_agents, n_products, self.second, where)
        if (weights < 0).any():
            raise BLPInputError(f"{where} returned negative values")
        if self.groups is not None:
            same = self.groups[:, None] == self.groups[None, :]
            weights[:, same] = 0.0  # the second choice is outside the removed group
        values = []
        for moment, position, function in self.functions:
            where_p = (
                f"micro moment {moment.name!r} (dataset {dataset.name!r}) in market "
                f"{label!r}: part {position}"
            )
            try:
                raw_values = function(label, self.frame, people)
            except BLPInputError as error:
                raise BLPInputError(f"{where_p}: {error}") from None
            except Exception as error:
                raise BLPInputError(f"{where_p} failed: {error!r}") from error
            values.append(_check_array(raw_values, n_agents, n_products, self.second, where_p))
        shape = (-1, *([1] * (weights.ndim - 1)))
        base = weights * self.agent_weights[agents].reshape(shape)
        stacked = np.stack([base, *[base * v for v in values]])
        return stacked.reshape(len(values) + 1, -1), np.stack(values).reshape(len(values), -1)

    def arrays(self, agents: slice, n_agents: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored arrays of some agents, or computed anew when they were too large to keep."""
        if self.weighted is None or self.values is None:
            return self.compute(agents)
        return self._rows(self.weighted, agents, n_agents), self._rows(
            self.values, agents, n_agents
        )

    def weighted_arrays(self, agents: slice, n_agents: int) -> np.ndarray:
        """The weighted arrays alone (what every evaluation needs; the values serve only the
        covariance), kept on their own when both together were too large."""
        if self.weighted is None:
            return self.compute(agents)[0]
        return self._rows(self.weighted, agents, n_agents)

    @staticmethod
    def _rows(array: np.ndarray, agents: slice, n_agents: int) -> np.ndarray:
        if agents == slice(0, n_agents):
            return array
        rows = array.shape[0]
        return array.reshape(rows, n_agents, -1)[:, agents].reshape(rows, -1)


@dataclass(eq=False)
class _Market:
    position: int
    label: Any
    n_products: int
    n_agents: int
    surveys: list[_Survey] = field(default_factory=list)
    chunks: list[slice] = field(default_factory=list)  # agent chunks bounding memory


@dataclass(eq=False)
class MicroEvaluation:
    """Micro moments at one θ.

    Attributes
    ----------
    parts : numpy.ndarray
        Model values of the parts.
    values : numpy.ndarray
        Model values f_m of the moments.
    moments : numpy.ndarray
        Observed minus model values.
    jacobian : numpy.ndarray or None
        ``(M, P)`` ∂moments/∂θ.
    """

    parts: np.ndarray
    values: np.ndarray
    moments: np.ndarray
    jacobian: np.ndarray | None = None


class MicroBlock:
    """Micro moments of an estimation: validated arrays and their evaluation at θ.

    Parameters
    ----------
    moments : sequence of MicroMoment
        The moments, in the order of the stacked moment vector.
    products : pandas.DataFrame
        Product data (positional rows of the layout).
    product_index, product_mask : numpy.ndarray
        ``[T, J]`` product layout.
    market_labels : numpy.ndarray
        ``(T,)`` market ids.
    agents : AgentDesign
        Agents in the same market order.
    store_limit : float
        A dataset's arrays in a market are kept when they hold at most this many values;
        larger ones are recomputed from the callables (per agent chunk) at each evaluation.
    chunk_values : float
        Agents are processed in chunks of about this many values per probability array
        (second choices: I·(1+J)² each), which bounds memory.

    Raises
    ------
    BLPInputError
        A dataset names an unknown market; weights or values of the wrong shape, negative or
        non-finite weights; a dataset whose weights select nobody.
    """

    def __init__(
        self,
        moments: Sequence[MicroMoment],
        products: pd.DataFrame,
        product_index: np.ndarray,
        product_mask: np.ndarray,
        market_labels: np.ndarray,
        agents: Any,
        *,
        store_limit: float = 4e6,
        chunk_values: float = 1e7,
    ) -> None:
        self.store_limit = store_limit
        self.chunk_values = chunk_values
        moments = list(moments)
        if not moments:
            raise BLPInputError("micro_moments is empty")
        for moment in moments:
            if not isinstance(moment, MicroMoment):
                raise BLPInputError(
                    f"micro_moments must hold MicroMoment objects, got {type(moment).__name__}"
                )
        names = [moment.name for moment in moments]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise BLPInputError(f"micro moment names must be unique; repeated: {duplicated}")
        self.moments = moments
        self.datasets: list[MicroDataset] = []
        for moment in moments:
            if all(moment.dataset is not d for d in self.datasets):
                self.datasets.append(moment.dataset)
        self.part_dataset: list[int] = []
        self.moment_parts: list[np.ndarray] = []
        part_functions: list[tuple[MicroMoment, int, ArrayFunction]] = []
        for moment in moments:
            d = next(k for k, d in enumerate(self.datasets) if d is moment.dataset)
            start = len(self.part_dataset)
            for position, part in enumerate(moment.parts):
                self.part_dataset.append(d)
                part_functions.append((moment, position, part))
            self.moment_parts.append(np.arange(start, len(self.part_dataset)))
        self.part_dataset_array = np.asarray(self.part_dataset, dtype=np.intp)
        self.observed = np.array([moment.value for moment in moments])
        self.observations = np.array([d.observations for d in self.datasets], dtype=np.float64)
        lookup = {label: t for t, label in enumerate(market_labels.tolist())}
        counts = product_mask.sum(axis=1)
        markets: dict[int, _Market] = {}
        for d, dataset in enumerate(self.datasets):
            ids = market_labels.tolist() if dataset.market_ids is None else dataset.market_ids
            unknown = [label for label in ids if label not in lookup]
            if unknown:
                raise BLPInputError(
                    f"micro dataset {dataset.name!r} names markets that are not in the product "
                    f"data: {unknown[:5]} (e.g. known: {market_labels[:3].tolist()})"
                )
            parts = np.flatnonzero(self.part_dataset_array == d)
            functions = [part_functions[p] for p in parts]
            total = 0.0
            for label in ids:
                t = lookup[label]
                n_products = int(counts[t])
                n_agents = int(agents.layout.counts[t])
                frame = products.iloc[product_index[t, :n_products]].reset_index(drop=True)
                people = agents.data.iloc[agents.layout.index[t, :n_agents]].reset_index(drop=True)
                if t not in markets:
                    markets[t] = _Market(t, label, n_products, n_agents)
                groups = None
                if dataset.second_choices:
                    # Options removed with each first choice: itself, or its whole group.
                    groups = np.arange(n_products + 1)
                    if dataset.eliminated is not None:
                        if dataset.eliminated not in frame.columns:
                            raise BLPInputError(
                                f"micro dataset {dataset.name!r}: eliminated names "
                                f"{dataset.eliminated!r}, which is not a product column"
                            )
                        codes = pd.factorize(frame[dataset.eliminated])[0]
                        groups = np.concatenate([[-1], codes])
                survey = _Survey(
                    d,
                    parts,
                    bool(dataset.second_choices),
                    groups,
                    dataset,
                    label,
                    frame,
                    people,
                    agents.weights[t, :n_agents],
                    functions,
                )
                # Validate every array now, in the whole market; keep them unless large.
                weighted, values = survey.compute(slice(0, n_agents))
                total += float(weighted[0].sum())
                if weighted.size + values.size <= self.store_limit:
                    survey.weighted, survey.values = weighted, values
                elif weighted.size <= self.store_limit:
                    survey.weighted = weighted
                markets[t].surveys.append(survey)
            if total <= 0:
                raise BLPInputError(
                    f"micro dataset {dataset.name!r}: the weights select nobody in its markets "
                    f"{list(ids)[:5]} (all zero), so its moments have zero expected observations"
                )
        for market in markets.values():
            size = 1 + market.n_products
            per_agent = 8 * (size * size if any(s.second for s in market.surveys) else size)
            step = max(1, int(self.chunk_values // per_agent))
            market.chunks = [
                slice(start, min(start + step, market.n_agents))
                for start in range(0, market.n_agents, step)
            ]
        self.markets = [markets[t] for t in sorted(markets)]

    @property
    def size(self) -> int:
        """Number of micro moments."""
        return len(self.moments)

    @property
    def names(self) -> list[str]:
        """Moment names."""
        return [moment.name for moment in self.moments]

    def _accumulate(
        self,
        probabilities: Callable[[_Market, slice], tuple[np.ndarray, np.ndarray | None, Any]],
        n_theta: int,
        jacobian: bool,
        covariance: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        n_parts = len(self.part_dataset)
        numerator = np.zeros(n_parts)
        denominator = np.zeros(len(self.datasets))
        d_numerator = np.zeros((n_parts, n_theta)) if jacobian else None
        d_denominator = np.zeros((len(self.datasets), n_theta)) if jacobian else None
        second_moments = np.zeros((n_parts, n_parts)) if covariance else None
        for market, agents in ((m, chunk) for m in self.markets for chunk in m.chunks):
            first, d_first, pair_function = probabilities(market, agents)
            cache: dict[bytes, tuple[np.ndarray, Any]] = {}
            for survey in market.surveys:
                if survey.second:
                    key = survey.groups.tobytes()
                    if key not in cache:
                        cache[key] = pair_function(survey.groups)
                    prob, d_prob = cache[key]
                else:
                    prob, d_prob = first, d_first
                if covariance:
                    weighted, values = survey.arrays(agents, market.n_agents)
                else:
                    weighted = survey.weighted_arrays(agents, market.n_agents)
                flat = prob.reshape(-1)
                contribution = weighted @ flat
                denominator[survey.dataset] += contribution[0]
                numerator[survey.parts] += contribution[1:]
                if jacobian:
                    if hasattr(d_prob, "contract"):  # pair tangents, never formed whole
                        tangent = d_prob.contract(weighted)
                    else:
                        tangent = weighted @ d_prob.reshape(n_theta, -1).T
                    d_denominator[survey.dataset] += tangent[0]
                    d_numerator[survey.parts] += tangent[1:]
                if covariance:
                    block = (weighted[1:] * flat) @ values.T
                    second_moments[np.ix_(survey.parts, survey.parts)] += block
        return numerator, denominator, d_numerator, d_denominator, second_moments

    def _finish(
        self,
        numerator: np.ndarray,
        denominator: np.ndarray,
        d_numerator: np.ndarray | None,
        d_denominator: np.ndarray | None,
    ) -> MicroEvaluation:
        if not (denominator > 0).all():
            bad = [self.datasets[d].name for d in np.flatnonzero(~(denominator > 0))]
            raise BLPInputError(
                f"micro datasets {bad}: the model predicts no surveyed consumers (zero expected "
                "observations) at these parameters"
            )
        parts = numerator / denominator[self.part_dataset_array]
        values = np.array(
            [m.evaluate(parts[idx]) for m, idx in zip(self.moments, self.moment_parts, strict=True)]
        )
        jacobian = None
        if d_numerator is not None and d_denominator is not None:
            d_parts = (
                d_numerator - parts[:, None] * d_denominator[self.part_dataset_array]
            ) / denominator[self.part_dataset_array, None]
            jacobian = np.zeros((self.size, d_parts.shape[1]))
            for m, (moment, idx) in enumerate(zip(self.moments, self.moment_parts, strict=True)):
                jacobian[m] = -moment.derivative(parts[idx]) @ d_parts[idx]
        return MicroEvaluation(parts, values, self.observed - values, jacobian)

    def evaluate(
        self, model: Any, theta: np.ndarray, delta: np.ndarray, delta_jacobian: np.ndarray | None
    ) -> MicroEvaluation:
        """Micro moments (and their θ-Jacobian when ``delta_jacobian`` is given).

        Parameters
        ----------
        model : MicroProbabilities
            Agent choice probabilities of the surveyed markets.
        theta : numpy.ndarray
            Nonlinear parameters (Σ, Π, ρ entries).
        delta : numpy.ndarray
            ``[T, J]`` mean utilities.
        delta_jacobian : numpy.ndarray, optional
            ``[T, J, P]`` ∂δ/∂θ.
        """
        jacobian = delta_jacobian is not None
        n_theta = delta_jacobian.shape[2] if jacobian else 0
        pieces = self._accumulate(
            lambda market, agents: model.market(market, theta, delta, delta_jacobian, agents),
            n_theta,
            jacobian,
        )
        return self._finish(*pieces[:4])

    def covariance(self, model: Any, theta: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """``(M, M)`` covariance of the micro moments (each dataset a mean over its observations,
        datasets independent; the delta method through each moment's function)."""
        numerator, denominator, _, _, second = self._accumulate(
            lambda market, agents: model.market(market, theta, delta, None, agents),
            0,
            False,
            covariance=True,
        )
        evaluation = self._finish(numerator, denominator, None, None)
        parts = evaluation.parts
        same = self.part_dataset_array[:, None] == self.part_dataset_array[None, :]
        scale = denominator[self.part_dataset_array]
        covariance = (second / scale[:, None] - np.outer(parts, parts)) * same
        covariance /= self.observations[self.part_dataset_array][:, None]
        gradient = np.zeros((self.size, len(parts)))
        for m, (moment, idx) in enumerate(zip(self.moments, self.moment_parts, strict=True)):
            gradient[m, idx] = moment.derivative(parts[idx])
        result = gradient @ covariance @ gradient.T
        return 0.5 * (result + result.T)


class MicroProbabilities:
    """Agent choice probabilities (first and second choices) in surveyed markets at θ.

    Parameters
    ----------
    parameters : NonlinearParameters
        Structure of θ.
    characteristics : numpy.ndarray
        ``[T, J, K2]`` X2 (zero in padding).
    agents : AgentDesign
        Agents.
    nest_codes : numpy.ndarray, optional
        ``[T, J]`` nest of each product (RCNL).
    n_nests : int
        Number of nests.
    """

    def __init__(
        self,
        parameters: Any,
        characteristics: np.ndarray,
        agents: Any,
        nest_codes: np.ndarray | None = None,
        n_nests: int = 1,
    ) -> None:
        self.parameters = parameters
        self.characteristics = characteristics
        self.agents = agents
        self.nest_codes = nest_codes
        self.n_nests = n_nests

    def utilities(
        self, market: _Market, theta: np.ndarray, delta: np.ndarray, agents: slice
    ) -> np.ndarray:
        """``[I, J]`` utilities δ_j + μ_ij of some agents in a market."""
        nodes, demographics = self._agent_arrays(market, agents)
        return self._utilities(market, theta, delta, nodes, demographics)

    def _agent_arrays(self, market: _Market, agents: slice) -> tuple[np.ndarray, np.ndarray]:
        t = market.position
        return self.agents.nodes[t : t + 1, agents], self.agents.demographics[t : t + 1, agents]

    def _utilities(
        self,
        market: _Market,
        theta: np.ndarray,
        delta: np.ndarray,
        nodes: np.ndarray,
        demographics: np.ndarray,
    ) -> np.ndarray:
        t, n = market.position, market.n_products
        coefficients, _ = self.parameters.coefficients(theta, nodes, demographics)
        mu = coefficients[0] @ self.characteristics[t, :n].T  # [I, J]
        return delta[t, :n][None, :] + mu

    def _rho(self, theta: np.ndarray) -> np.ndarray | None:
        if not self.parameters.has_rho:
            return None
        _, _, rho = self.parameters.unpack(theta)
        return np.broadcast_to(np.asarray(rho, dtype=np.float64), (self.n_nests,))

    def market(
        self,
        market: _Market,
        theta: np.ndarray,
        delta: np.ndarray,
        delta_jacobian: np.ndarray | None,
        agents: slice,
    ) -> tuple[np.ndarray, np.ndarray | None, Callable[[np.ndarray], tuple[np.ndarray, Any]]]:
        """Some agents' first-choice probabilities ``[I, 1+J]`` (outside first), θ-tangents
        ``[P, I, 1+J]``, and a function of the removed groups ``[1+J]`` giving the pair
        probabilities ``[I, 1+J, 1+J]`` of (first, second) choices and their tangents."""
        nodes, demographics = self._agent_arrays(market, agents)
        return self.consumers(market, theta, delta, delta_jacobian, nodes, demographics)

    def consumers(
        self,
        market: _Market,
        theta: np.ndarray,
        delta: np.ndarray,
        delta_jacobian: np.ndarray | None,
        nodes: np.ndarray,
        demographics: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | None, Callable[[np.ndarray], tuple[np.ndarray, Any]]]:
        """:meth:`market` for any consumers: ``nodes`` ``[1, I, K]`` and ``demographics``
        ``[1, I, D]`` (agents of the data, or respondents of a survey)."""
        utilities = self._utilities(market, theta, delta, nodes, demographics)
        tangents = None
        if delta_jacobian is not None:
            tangents = self._utility_tangents(market, theta, delta_jacobian, nodes, demographics)
        rho = self._rho(theta)
        if rho is not None and np.any(rho != 0):
            return self._nested_market(market, theta, utilities, tangents, rho)
        first = _logit(utilities)
        d_first = None
        if tangents is not None:
            inside = first[None, :, 1:]
            mean = (inside * tangents).sum(axis=2, keepdims=True)  # [P, I, 1]
            d_first = np.concatenate([-first[None, :, :1] * mean, inside * (tangents - mean)], 2)

        def pair(groups: np.ndarray) -> tuple[np.ndarray, Any]:
            # Logit: P(a first, b second) = s_a s_b / (1 − S_a), S_a the share of a's group.
            same = (groups[:, None] == groups[None, :]).astype(np.float64)
            rest = 1.0 - first @ same
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(rest > 0, first / rest, 0.0)  # [I, 1+J]: s_a / (1 − S_a)
                scale = np.where(rest > 0, 1.0 / rest, 0.0)
            joint = ratio[:, :, None] * first[:, None, :]
            joint[:, same > 0] = 0.0
            if d_first is None:
                return joint, None
            return joint, _LogitPairTangent(first, d_first, ratio, scale, same)

        return first, d_first, pair

    def _utility_tangents(
        self,
        market: _Market,
        theta: np.ndarray,
        delta_jacobian: np.ndarray,
        nodes: np.ndarray,
        demographics: np.ndarray,
    ) -> np.ndarray:
        """``[P, I, J]`` ∂(δ_j + μ_ij)/∂θ of some consumers."""
        t, n = market.position, market.n_products
        n_theta = delta_jacobian.shape[2]
        n_agents = nodes.shape[1]
        tangents = np.repeat(delta_jacobian[t, :n].T[:, None, :], n_agents, axis=1)
        coefficients, _ = self.parameters.coefficients(theta, nodes, demographics)
        factors, positions = self.parameters.agent_factors(coefficients, nodes, demographics)
        x2 = self.characteristics[t, :n]
        for column, (factor, places) in enumerate(zip(factors, positions, strict=True)):
            for offset, position in enumerate(places):
                if position < n_theta:
                    tangents[position] += factor[0, offset][:, None] * x2[None, :, column]
        return tangents

    def _rho_tangents(self, n_theta: int) -> list[tuple[int, np.ndarray]]:
        """For each free ρ in θ (below ``n_theta``): its position and the nests it scales."""
        every = np.ones(self.n_nests, dtype=bool)
        out = []
        for position, (kind, row, _) in enumerate(self.parameters.kinds):
            if kind == "rho" and position < n_theta:
                nests = every if self.parameters.rho.size == 1 else np.arange(self.n_nests) == row
                out.append((position, nests))
        return out

    def _nested_market(
        self,
        market: _Market,
        theta: np.ndarray,
        utilities: np.ndarray,
        tangents: np.ndarray | None,
        rho: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | None, Callable[[np.ndarray], tuple[np.ndarray, Any]]]:
        """RCNL: probabilities from the nested formula, pairs as s_b(−a) − s_b (see
        :func:`_nested_pairs`), and analytic tangents (:func:`_nested_tangents`)."""
        t, n = market.position, market.n_products
        codes = self.nest_codes[t, :n]
        rho_tangents = [] if tangents is None else self._rho_tangents(tangents.shape[0])
        first = _nested(utilities, codes, rho)
        d_first = None
        if tangents is not None:
            d_first = _nested_tangents(first, tangents, codes, rho, rho_tangents)

        def pair(groups: np.ndarray) -> tuple[np.ndarray, Any]:
            if tangents is None:
                return _nested_pairs(utilities, codes, rho, groups), None
            return _nested_pair_tangents(
                utilities, tangents, codes, rho, rho_tangents, groups, first, d_first
            )

        return first, d_first, pair


@dataclass(frozen=True, eq=False)
class _LogitPairTangent:
    """θ-tangents of the logit pair probabilities s_a s_b / (1 − S_a), never formed.

    With S_a the share of the group removed with a (a alone by default),
    d[s_a s_b / (1 − S_a)] = s_b ds_a / (1 − S_a) + s_a s_b dS_a / (1 − S_a)² + s_a ds_b /
    (1 − S_a), so weighted sums over (i, a, b) contract the weights with s_b (or
    s_a/(1 − S_a)) first: O(I·J²) work per weight row and no ``[P, I, 1+J, 1+J]`` array.
    """

    first: np.ndarray  # [I, 1+J]
    d_first: np.ndarray  # [P, I, 1+J]
    ratio: np.ndarray  # [I, 1+J]: s_a / (1 − S_a)
    scale: np.ndarray  # [I, 1+J]: 1 / (1 − S_a)
    same: np.ndarray  # [1+J, 1+J]: 1 where two options are removed together

    def contract(self, weighted: np.ndarray) -> np.ndarray:
        """``[n, P]`` Σ_iab weighted_n[i, a, b] d pair[i, a, b] (weights are zero within a
        removed group)."""
        n_agents, size = self.first.shape
        grid = weighted.reshape(weighted.shape[0], n_agents, size, size)
        by_second_choice = (grid @ self.first[:, :, None])[..., 0]  # [n, I, 1+J]: Σ_b w s_b
        by_first = by_second_choice * self.scale
        by_group = (self.first * by_second_choice * self.scale**2) @ self.same
        by_second = (self.ratio[:, None, :] @ grid)[:, :, 0, :]  # [n, I, 1+J]
        return np.einsum("nia,pia->np", by_first + by_group + by_second, self.d_first)

    def dense(self) -> np.ndarray:
        """``[P, I, 1+J, 1+J]`` tangents (for scores of a few consumers)."""
        d_group = self.d_first @ self.same  # dS_a
        d_joint = (
            (self.d_first * self.scale)[..., None] * self.first[None, :, None, :]
            + (d_group * self.first * self.scale**2)[..., None] * self.first[None, :, None, :]
            + self.ratio[None, :, :, None] * self.d_first[:, :, None, :]
        )
        d_joint[:, :, self.same > 0] = 0.0
        return d_joint


def _logit(utilities: np.ndarray) -> np.ndarray:
    """``[I, 1+J]`` logit probabilities with the outside option (utility 0) first."""
    full = np.concatenate([np.zeros((utilities.shape[0], 1)), utilities], axis=1)
    full = np.exp(full - full.max(axis=1, keepdims=True))
    return full / full.sum(axis=1, keepdims=True)


def _nested(
    utilities: np.ndarray, codes: np.ndarray, rho: np.ndarray, removed: np.ndarray | None = None
) -> np.ndarray:
    """``[..., I, 1+J]`` nested-logit probabilities, outside first; ``removed`` ``[..., 1+J]``
    marks options taken out of the choice set (the outside option is its own nest)."""
    n = utilities.shape[-1]
    scale = 1.0 - rho[codes]  # [J]
    shift = np.maximum(utilities.max(axis=-1, keepdims=True), 0.0)  # [..., I, 1]
    available = np.ones(1 + n) if removed is None else ~removed
    available = np.asarray(available, dtype=np.float64)
    inside = np.exp((utilities - shift) / scale) * available[..., None, 1:]
    one_hot = np.zeros((n, len(rho)))
    one_hot[np.arange(n), codes] = 1.0
    sums = inside @ one_hot  # [..., I, H]
    with np.errstate(divide="ignore", invalid="ignore"):
        inclusive = np.where(sums > 0, sums ** (1.0 - rho), 0.0)
        outside = np.exp(-shift) * available[..., None, :1]
        total = outside + inclusive.sum(axis=-1, keepdims=True)
        product_sums = sums @ one_hot.T
        within = np.where(product_sums > 0, inside / product_sums, 0.0)
        nest = inclusive / total
    return np.concatenate([outside / total, within * (nest @ one_hot.T)], axis=-1)


def _nested_pairs(
    utilities: np.ndarray, codes: np.ndarray, rho: np.ndarray, groups: np.ndarray | None = None
) -> np.ndarray:
    """``[I, 1+J, 1+J]`` P(first a, second b) = s_b(−a) − s_b (0 for a = b).

    In any random utility model b is best without a exactly when b is best overall or a is
    best and b second. With ``groups`` ``[1+J]`` (options removed together), the probability
    that the first choice is in a's group h and b is best outside it, s_b(−h) − s_b, is split
    across h's members in proportion to their shares (pyblp's convention; exact for the logit).
    """
    n = utilities.shape[-1]
    groups = np.arange(1 + n) if groups is None else groups
    labels, index = np.unique(groups, return_inverse=True)
    removed = index[None, :] == np.arange(labels.size)[:, None]  # row g: group g removed
    base = _nested(utilities, codes, rho)  # [I, 1+J]
    without = _nested(utilities[None], codes, rho, removed)  # [G, I, 1+J]
    joint = np.moveaxis(without[index], 0, 1) - base[:, None, :]
    same = groups[:, None] == groups[None, :]
    group_share = base @ same.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        joint *= np.where(group_share > 0, base / group_share, 0.0)[:, :, None]
    joint[:, same] = 0.0
    return np.maximum(joint, 0.0)


def _within_nests(
    probabilities: np.ndarray, codes: np.ndarray, n_nests: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nest one-hot ``[J, H]``, inside probabilities ``[..., I, J]``, nest shares
    ``[..., I, H]`` and shares within the nest ``[..., I, J]`` (0 for options taken out)."""
    n = codes.size
    one_hot = np.zeros((n, n_nests))
    one_hot[np.arange(n), codes] = 1.0
    inside = probabilities[..., 1:]
    nest_shares = inside @ one_hot
    of_product = nest_shares @ one_hot.T
    with np.errstate(divide="ignore", invalid="ignore"):
        within = np.where(of_product > 0, inside / of_product, 0.0)
    return one_hot, inside, nest_shares, within


def _log_within(within: np.ndarray) -> np.ndarray:
    """log w where w > 0, else 0 (w log w → 0 there)."""
    positive = within > 0
    return np.where(positive, np.log(np.where(positive, within, 1.0)), 0.0)


def _nested_tangents(
    probabilities: np.ndarray,
    tangents: np.ndarray,
    codes: np.ndarray,
    rho: np.ndarray,
    rho_tangents: Sequence[tuple[int, np.ndarray]],
) -> np.ndarray:
    """``[P, ..., I, 1+J]`` θ-tangents of nested-logit probabilities ``[..., I, 1+J]``.

    With w_j = s_j / s_h(j) the share within the nest, V̄_h = Σ_k∈h w_k dV_k and
    c_h = Σ_k∈h w_k log w_k, the differential of log s_j is
    (dV_j − V̄_h)/(1 − ρ_h) + V̄_h − Σ_k s_k dV_k, and a free ρ scaling the nests in G adds
    [h ∈ G] (log w_j − c_h)/(1 − ρ_h) + [h ∈ G] c_h − Σ_g∈G s_g c_g (outside option: only the
    last terms). Every term is a share-weighted log share, so nothing overflows. Options taken
    out of the choice set have zero probability and drop out.
    """
    one_hot, inside, nest_shares, within = _within_nests(probabilities, codes, rho.size)
    log_within = _log_within(within)
    scale = 1.0 - rho[codes]
    nest_means = (within * tangents) @ one_hot  # [P, ..., I, H]
    by_product = nest_means @ one_hot.T
    total = (inside * tangents).sum(axis=-1, keepdims=True)  # [P, ..., I, 1]
    d_log = (tangents - by_product) / scale + by_product - total
    result = np.concatenate([-total, d_log], axis=-1)
    if rho_tangents:
        entropy = (within * log_within) @ one_hot  # [..., I, H]: c_h
        for position, nests in rho_tangents:
            scaled = nests.astype(np.float64)
            outside = -(nest_shares * entropy) @ scaled  # [..., I]
            member = scaled[codes]
            d_rho = member * ((log_within - (entropy @ one_hot.T)) / scale) + (
                member * (entropy @ one_hot.T)
            )
            result[position] += np.concatenate(
                [outside[..., None], d_rho + outside[..., None]], axis=-1
            )
    return result * probabilities


def _nested_pair_tangents(
    utilities: np.ndarray,
    tangents: np.ndarray,
    codes: np.ndarray,
    rho: np.ndarray,
    rho_tangents: Sequence[tuple[int, np.ndarray]],
    groups: np.ndarray,
    first: np.ndarray,
    d_first: np.ndarray,
) -> tuple[np.ndarray, _NestedPairTangent]:
    """Pair probabilities of :func:`_nested_pairs` ``[I, 1+J, 1+J]`` and their θ-tangents
    (:class:`_NestedPairTangent`): (s_b(−h) − s_b) r_a with r_a = s_a / S_h, S_h = Σ_a∈h s_a."""
    labels, index = np.unique(groups, return_inverse=True)
    removed = index[None, :] == np.arange(labels.size)[:, None]
    without = _nested(utilities[None], codes, rho, removed)  # [G, I, 1+J]
    same = groups[:, None] == groups[None, :]
    group_share = first @ same.astype(np.float64)  # [I, 1+J]
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(group_share > 0, 1.0 / group_share, 0.0)
    ratio = first * inverse
    difference = np.moveaxis(without[index], 0, 1) - first[:, None, :]  # [I, a, b]
    joint = difference * ratio[:, :, None]
    # Negative values are rounding noise of s_b(−h) − s_b ≈ 0; set to zero, with no slope.
    keep = (joint >= 0) & ~same[None, :, :]
    joint[~keep] = 0.0
    tangent = _NestedPairTangent(
        without,
        index,
        first,
        d_first,
        ratio,
        inverse,
        same,
        keep,
        difference,
        difference * keep,
        ratio[:, :, None] * keep,
        tangents,
        codes,
        rho,
        tuple(rho_tangents),
    )
    return joint, tangent


@dataclass(frozen=True, eq=False)
class _NestedPairTangent:
    """θ-tangents of the RCNL pair probabilities (s_b(−h) − s_b) r_a, never formed whole.

    A weighted sum over (i, a, b) splits into terms in ds_a (through r_a = s_a / S_h), in
    ds_b, and in ds_b(−h) for each removed group h; the last is contracted with the nested
    tangent formula (:func:`_nested_contract`) so the work is O(n·G·I·J) for n weight rows,
    not O(P·G·I·J), and no ``[P, G, I, 1+J]`` array exists.
    """

    without: np.ndarray  # [G, I, 1+J]: probabilities with group g removed
    index: np.ndarray  # [1+J]: group of each first choice
    first: np.ndarray  # [I, 1+J]
    d_first: np.ndarray  # [P, I, 1+J]
    ratio: np.ndarray  # [I, 1+J]: r_a = s_a / S_h(a)
    inverse: np.ndarray  # [I, 1+J]: 1 / S_h(a)
    same: np.ndarray  # [1+J, 1+J] bool: removed together
    keep: np.ndarray  # [I, 1+J, 1+J] bool: pairs with a slope
    difference: np.ndarray  # [I, a, b]: s_b(−h(a)) − s_b
    difference_kept: np.ndarray  # the same, zero where there is no slope
    ratio_kept: np.ndarray  # [I, a, b]: r_a, zero where there is no slope
    tangents: np.ndarray  # [P, I, J]: utility tangents
    codes: np.ndarray
    rho: np.ndarray
    rho_tangents: tuple[tuple[int, np.ndarray], ...]

    def contract(self, weighted: np.ndarray) -> np.ndarray:
        """``[n, P]`` Σ_iab weighted_n[i, a, b] d pair[i, a, b]."""
        n_agents, size = self.first.shape
        grid = weighted.reshape(weighted.shape[0], n_agents, size, size)
        by_first = np.einsum("niab,iab->nia", grid, self.difference_kept)
        scaled = grid * self.ratio_kept  # w r_a where the pair has a slope
        by_second = scaled.sum(axis=2)  # [n, I, b]
        same = self.same.astype(np.float64)
        first_coefficients = (
            by_first * self.inverse - (by_first * self.ratio * self.inverse) @ same - by_second
        )
        result = np.einsum("nia,pia->np", first_coefficients, self.d_first)
        n_groups = self.without.shape[0]
        if n_groups == size and np.array_equal(self.index, np.arange(size)):
            by_group = np.moveaxis(scaled, 2, 1)  # each option its own group: a view
        else:
            one_hot = np.zeros((size, n_groups))
            one_hot[np.arange(size), self.index] = 1.0
            by_group = np.moveaxis(np.swapaxes(scaled, 2, 3) @ one_hot, 3, 1)  # [n, G, I, b]
        return result + _nested_contract(
            by_group, self.without, self.tangents, self.codes, self.rho, self.rho_tangents
        )

    def dense(self) -> np.ndarray:
        """``[P, I, 1+J, 1+J]`` tangents (for scores of a few consumers)."""
        d_without = _nested_tangents(
            self.without, self.tangents[:, None], self.codes, self.rho, self.rho_tangents
        )
        d_ratio = (
            self.d_first * self.inverse
            - self.ratio * (self.d_first @ self.same.astype(np.float64)) * self.inverse
        )
        d_difference = np.moveaxis(d_without[:, self.index], 1, 2) - self.d_first[:, :, None, :]
        d_joint = (
            d_difference * self.ratio[None, :, :, None] + self.difference[None] * d_ratio[..., None]
        )
        return d_joint * self.keep


def _nested_contract(
    coefficients: np.ndarray,
    probabilities: np.ndarray,
    tangents: np.ndarray,
    codes: np.ndarray,
    rho: np.ndarray,
    rho_tangents: Sequence[tuple[int, np.ndarray]],
) -> np.ndarray:
    """``[n, P]`` Σ coefficients[n, g, i, b] · (d probabilities)[p, g, i, b] for nested-logit
    probabilities ``[G, I, 1+J]`` (e.g. one choice set per removed group), with the tangents of
    :func:`_nested_tangents` contracted instead of formed: the utility tangents ``[P, I, J]``
    (shared by every g) meet one ``[n, I, J]`` coefficient array, and the passes over
    ``[n, G, I, 1+J]`` arrays are few (this runs at every evaluation with second choices)."""
    n_rows = coefficients.shape[0]
    n = codes.size
    one_hot, inside, nest_shares, within = _within_nests(probabilities, codes, rho.size)
    weighted = coefficients * probabilities  # R̃ = R s
    everything = weighted.sum(axis=-1)  # [n, G, I]: Σ_b R̃_b, outside included
    scale = 1.0 - rho[codes]
    # Σ_g of: R̃_k / (1 − ρ_k) − (Σ_b∈h(k) R̃_b) ρ_k/(1 − ρ_k) w_k − (Σ_b R̃_b) s_k.
    on_utilities = weighted[..., 1:].sum(axis=1) / scale
    by_nest = weighted[..., 1:] @ one_hot  # [n, G, I, H]
    nest_within = np.matmul(
        by_nest.transpose(2, 0, 3, 1), (within * (rho[codes] / scale)).transpose(1, 0, 2)[:, None]
    )  # [I, n, H, J]
    on_utilities -= nest_within[:, :, codes, np.arange(n)].transpose(1, 0, 2)
    on_utilities -= np.matmul(everything.transpose(2, 0, 1), inside.transpose(1, 0, 2)).transpose(
        1, 0, 2
    )
    result = np.einsum("nij,pij->np", on_utilities, tangents)
    if rho_tangents:
        log_within = _log_within(within)
        nest_entropy = (within * log_within) @ one_hot  # [G, I, H]: c_h
        entropy = nest_entropy @ one_hot.T
        flat = weighted[..., 1:].reshape(n_rows, -1)
        for position, nests in rho_tangents:
            member = nests.astype(np.float64)[codes]
            outside = -(nest_shares * nest_entropy) @ nests.astype(np.float64)  # [G, I]
            own = member * ((log_within - entropy) / scale + entropy)
            result[:, position] += flat @ own.reshape(-1) + everything.reshape(
                n_rows, -1
            ) @ outside.reshape(-1)
    return result


def simulate_micro_data(demand: Any, dataset: MicroDataset, seed: Any = None) -> pd.DataFrame:
    """Draw a survey from estimated demand: one row per surveyed consumer.

    Consumers are drawn with probability proportional to w_i w_dij P_ij (second choices:
    w_i w_dijk P_ijk) over all of the dataset's markets, agents and choices, as the survey
    samples them; ``dataset.observations`` of them.

    Parameters
    ----------
    demand : DemandSystem
        Estimated random-coefficients demand (``results.demand``).
    dataset : MicroDataset
        The survey to simulate.
    seed : int or numpy.random.Generator, optional
        Random numbers.

    Returns
    -------
    pandas.DataFrame
        ``market_ids``; ``agent_indices`` (position of the agent among its market's rows of the
        agent data) and ``agent_rows`` (its agent-data index label); ``choice_indices`` (0: the
        outside option, j: the market's j-th product in data order) and, with second choices,
        ``second_choice_indices``.

    Raises
    ------
    BLPInputError
        Demand without agents (logit), or a dataset that fails validation.

    Examples
    --------
    >>> micro = simulate_micro_data(results.demand, survey, seed=0)  # doctest: +SKIP
    >>> list(micro.columns)  # doctest: +SKIP
    ['market_ids', 'agent_indices', 'agent_rows', 'choice_indices']
    """
    if not isinstance(dataset, MicroDataset):
        raise BLPInputError(f"dataset must be a MicroDataset, got {type(dataset).__name__}")
    agents, parameters = demand.agents, demand.parameters
    if agents is None or parameters is None:
        raise BLPInputError("simulating micro data needs a random-coefficients model's demand")
    design = demand.design
    layout = design.layout
    second = bool(dataset.second_choices)

    def ones(t: Any, products: pd.DataFrame, people: pd.DataFrame) -> np.ndarray:
        size = len(products) + 1
        return np.ones((len(people), size, size) if second else (len(people), size))

    block = MicroBlock(
        [MicroMoment("draws", dataset, 0.0, parts=[ones])],
        design.data,
        layout.index,
        layout.mask,
        layout.market_labels,
        agents,
    )
    nested = parameters.has_rho and demand.nest_codes is not None
    n_nests = int(demand.nest_codes.max()) + 1 if nested else 1
    model = MicroProbabilities(
        parameters,
        layout.pad(design.random.values),
        agents,
        layout.pad(demand.nest_codes) if nested else None,
        n_nests,
    )
    delta = layout.pad(np.asarray(demand.delta, dtype=np.float64))
    theta = np.asarray(demand.theta, dtype=np.float64)
    masses, keys = [], []
    for market in block.markets:
        for chunk in market.chunks:
            first, _, pair = model.market(market, theta, delta, None, chunk)
            for survey in market.surveys:
                weighted = survey.weighted_arrays(chunk, market.n_agents)
                probability = pair(survey.groups)[0] if survey.second else first
                masses.append(np.maximum(weighted[0] * probability.reshape(-1), 0.0))
                keys.append((market, chunk.start, probability.shape))
    sizes = np.array([mass.size for mass in masses])
    mass = np.concatenate(masses)
    total = mass.sum()
    if not total > 0:
        raise BLPInputError(f"micro dataset {dataset.name!r}: the model predicts no consumers")
    rng = np.random.default_rng(seed)
    draws = rng.choice(mass.size, size=dataset.observations, p=mass / total)
    piece = np.searchsorted(np.cumsum(sizes), draws, side="right")
    offset = draws - np.concatenate([[0], np.cumsum(sizes)[:-1]])[piece]
    rows: dict[str, list[Any]] = {
        "market_ids": [],
        "agent_indices": [],
        "agent_rows": [],
        "choice_indices": [],
    }
    if second:
        rows["second_choice_indices"] = []
    for k, position in zip(piece, offset, strict=True):
        market, start, shape = keys[k]
        index = np.unravel_index(position, shape)
        agent = start + int(index[0])
        rows["market_ids"].append(market.label)
        rows["agent_indices"].append(agent)
        rows["agent_rows"].append(agents.data.index[agents.layout.index[market.position, agent]])
        rows["choice_indices"].append(int(index[1]))
        if second:
            rows["second_choice_indices"].append(int(index[2]))
    return pd.DataFrame(rows)


def _probability_model(demand: Any) -> MicroProbabilities:
    """The probability model of estimated random-coefficients demand (nested when ρ ≠ 0)."""
    design, parameters = demand.design, demand.parameters
    layout = design.layout
    nested = parameters.has_rho and demand.nest_codes is not None
    return MicroProbabilities(
        parameters,
        layout.pad(design.random.values),
        demand.agents,
        layout.pad(demand.nest_codes) if nested else None,
        int(demand.nest_codes.max()) + 1 if nested else 1,
    )


def _ones(second: bool) -> ArrayFunction:
    def ones(t: Any, products: pd.DataFrame, people: pd.DataFrame) -> np.ndarray:
        size = len(products) + 1
        return np.ones((len(people), size, size) if second else (len(people), size))

    return ones


def _choice_probabilities(
    model: MicroProbabilities,
    market: _Market,
    setup: dict[str, Any],
    nodes: np.ndarray,
    demographics: np.ndarray,
    groups: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Some consumers' probabilities of each choice ``[I, 1+J]`` (second choices:
    ``[I, 1+J, 1+J]``) and their θ-tangents (leading axis P), formed whole."""
    first, d_first, pair = model.consumers(
        market, setup["theta"], setup["delta"], setup["jacobian"], nodes, demographics
    )
    if groups is None:
        return first, d_first
    joint, tangent = pair(groups)
    return joint, tangent.dense()


def _score_setup(demand: Any, dataset: MicroDataset) -> dict[str, Any]:
    """∂δ/∂θ at the estimates, the probability model, and the survey's denominator D (the
    expected number of surveyed consumers up to scale) with its θ-gradient."""
    from .objective import NonlinearObjective  # the objective imports this module

    if not isinstance(dataset, MicroDataset):
        raise BLPInputError(f"dataset must be a MicroDataset, got {type(dataset).__name__}")
    agents, parameters = demand.agents, demand.parameters
    if agents is None or parameters is None:
        raise BLPInputError("scores need a random-coefficients model's demand")
    design = demand.design
    layout = design.layout
    theta = np.asarray(demand.theta, dtype=np.float64)
    nested = parameters.has_rho and demand.nest_codes is not None
    objective = NonlinearObjective(
        design,
        agents,
        parameters,
        np.eye(design.Z_absorbed.shape[1]),
        nest_codes=demand.nest_codes if nested else None,
        threads=1,
    )
    evaluation = objective.evaluate(theta)
    if not evaluation.success:
        raise BLPInputError("δ could not be solved at the estimates for the scores")
    delta = layout.pad(evaluation.delta)
    jacobian = layout.pad(evaluation.delta_jacobian[:, : parameters.size])
    block = MicroBlock(
        [MicroMoment("scores", dataset, 0.0, parts=[_ones(bool(dataset.second_choices))])],
        design.data,
        layout.index,
        layout.mask,
        layout.market_labels,
        agents,
    )
    model = _probability_model(demand)
    _, denominator, _, d_denominator, _ = block._accumulate(
        lambda market, chunk: model.market(market, theta, delta, jacobian, chunk),
        parameters.size,
        True,
    )
    return {
        "theta": theta,
        "delta": delta,
        "jacobian": jacobian,
        "model": model,
        "block": block,
        "log_gradient": d_denominator[0] / denominator[0],
        "names": list(parameters.names),
    }


def agent_scores(demand: Any, dataset: MicroDataset) -> dict[str, dict[Any, np.ndarray]]:
    """Scores ∂log P_n/∂θ of every agent type and choice of a survey's markets.

    Each agent (with its own nodes and demographics) and choice is an observation n with
    P_n = w_dij s_ij / Σ_t Σ_i Σ_j w_it w_dijt s_ijt, so its score is
    ∂log s_ij/∂θ − ∂log D/∂θ (δ moves with θ: ∂δ/∂θ by the implicit function theorem).

    Parameters
    ----------
    demand : DemandSystem
        Estimated random-coefficients demand (``results.demand``).
    dataset : MicroDataset
        The survey (markets and weights); with second choices each observation is an agent's
        (first, second) pair, P_n = w_dijk s_ijk / D.

    Returns
    -------
    dict
        ``{parameter name: {market id: I × (1 + J) array}}`` (column 0: the outside option;
        second choices: I × (1 + J) × (1 + J), first then second choice; NaN where the
        survey cannot sample the choice), ready to be a part's values in an optimal micro
        moment.

    Examples
    --------
    >>> scores = agent_scores(results.demand, survey)  # doctest: +SKIP
    >>> scores["pi[Intercept,log_income]"]["C01Q1"].shape  # doctest: +SKIP
    (1000, 25)
    """
    setup = _score_setup(demand, dataset)
    model, block = setup["model"], setup["block"]
    result: dict[str, dict[Any, np.ndarray]] = {name: {} for name in setup["names"]}
    for market in block.markets:
        survey = market.surveys[0]
        pieces = []
        for chunk in market.chunks:
            nodes, demographics = model._agent_arrays(market, chunk)
            probability, tangent = _choice_probabilities(
                model, market, setup, nodes, demographics, survey.groups if survey.second else None
            )
            weights = survey.weighted_arrays(chunk, market.n_agents)
            sampled = (weights[0].reshape(probability.shape) > 0) & (probability > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                score = tangent / probability[None]
            score -= setup["log_gradient"].reshape(-1, *([1] * probability.ndim))
            pieces.append(np.where(sampled[None], score, np.nan))
        scores = np.concatenate(pieces, axis=1)
        for p, name in enumerate(setup["names"]):
            result[name][market.label] = scores[p]
    return result


def micro_scores(demand: Any, dataset: MicroDataset, micro_data: pd.DataFrame) -> pd.DataFrame:
    """Scores ∂log P_n/∂θ of observed survey respondents.

    P_n = Σ_{r ∈ n} w_r w_drj s_rj / Σ_t Σ_i Σ_j w_it w_dijt s_ijt (second choices: w_drjk
    s_rjk), with the rows r of an observation integrating over what the survey does not record
    (e.g. one row per draw of the unobserved nodes, weights summing to one).

    Parameters
    ----------
    demand : DemandSystem
        Estimated random-coefficients demand (``results.demand``).
    dataset : MicroDataset
        The survey the data come from.
    micro_data : pandas.DataFrame
        ``market_ids``, ``choice_indices`` (0: outside option, j: the market's j-th product),
        ``second_choice_indices`` for a second-choice survey (same coding),
        the demographics the model reads, ``nodes0``, ... for the random coefficients with
        unobserved heterogeneity, and optionally ``micro_ids`` (rows of one observation share
        it; default: one row each) and ``weights`` (default 1).

    Returns
    -------
    pandas.DataFrame
        One row per observation (indexed by ``micro_ids``), one column per parameter of θ.

    Raises
    ------
    BLPInputError
        Missing columns, markets not in the survey, choice indices out of range.

    Examples
    --------
    >>> scores = micro_scores(results.demand, survey, micro)  # doctest: +SKIP
    >>> scores.mean()  # doctest: +SKIP
    """
    if not isinstance(micro_data, pd.DataFrame):
        raise BLPInputError(f"micro_data must be a DataFrame, got {type(micro_data).__name__}")
    second = isinstance(dataset, MicroDataset) and bool(dataset.second_choices)
    required = ("market_ids", "choice_indices") + (("second_choice_indices",) if second else ())
    for column in required:
        if column not in micro_data.columns:
            raise BLPInputError(f"micro_data has no {column!r} column")
    setup = _score_setup(demand, dataset)
    parameters, agents = demand.parameters, demand.agents
    needed = parameters.node_columns_needed()
    missing = [f"nodes{k}" for k in range(needed) if f"nodes{k}" not in micro_data.columns]
    if missing:
        raise BLPInputError(f"micro_data needs the node columns {missing} (σ reads them)")
    data = micro_data.reset_index(drop=True)
    ids = data["micro_ids"].to_numpy() if "micro_ids" in data.columns else np.arange(len(data))
    row_weights = data["weights"].to_numpy(dtype=np.float64) if "weights" in data.columns else None
    demographics = (
        agents.demographic_block.rebuild(data, None, what="micro data")
        if agents.demographics.shape[2]
        else np.zeros((len(data), 0))
    )
    nodes = data[[f"nodes{k}" for k in range(needed)]].to_numpy(dtype=np.float64)
    surveyed = {market.label: market for market in setup["block"].markets}
    contribution = np.zeros(len(data))
    d_contribution = np.zeros((len(data), parameters.size))
    for label, rows in data.groupby("market_ids", sort=False).indices.items():
        if label not in surveyed:
            raise BLPInputError(
                f"micro_data has market {label!r}, which micro dataset {dataset.name!r} does "
                "not survey"
            )
        market = surveyed[label]
        n = market.n_products
        picked = [data[column].to_numpy()[rows] for column in required[1:]]
        for column, choices in zip(required[1:], picked, strict=True):
            if (
                not np.issubdtype(choices.dtype, np.integer)
                or (choices < 0).any()
                or (choices > n).any()
            ):
                raise BLPInputError(
                    f"micro_data {column} in market {label!r} must be integers from 0 "
                    f"(outside option) to {n}"
                )
        survey = market.surveys[0]
        groups = survey.groups if second else None
        probability, tangent = _choice_probabilities(
            setup["model"], market, setup, nodes[None, rows], demographics[None, rows], groups
        )
        people = data.iloc[rows].reset_index(drop=True)
        where = f"micro dataset {dataset.name!r} in market {label!r}: weights"
        shape = (len(rows), n) + ((n + 1,) if second else ())
        raw = (
            np.ones(shape)
            if dataset.weights is None
            else dataset.weights(label, survey.frame, people)
        )
        weights = _check_array(raw, len(rows), n, second, where)
        if groups is not None:
            weights[:, groups[:, None] == groups[None, :]] = 0.0
        index = (np.arange(len(rows)), *picked)
        w = weights[index] * (1.0 if row_weights is None else row_weights[rows])
        contribution[rows] = w * probability[index]
        d_contribution[rows] = (w * tangent[(slice(None), *index)]).T
    frame = pd.DataFrame(d_contribution, columns=setup["names"])
    frame["_value"] = contribution
    frame["_id"] = ids
    sums = frame.groupby("_id", sort=False).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = sums[setup["names"]].to_numpy() / sums["_value"].to_numpy()[:, None]
    scores = scores - setup["log_gradient"][None, :]
    scores[~np.isfinite(scores)] = np.nan
    return pd.DataFrame(
        scores, index=pd.Index(sums.index, name="micro_ids"), columns=setup["names"]
    )


def optimal_micro_moments(
    demand: Any,
    dataset: MicroDataset,
    micro_data: pd.DataFrame,
    parameters: Sequence[str] | None = None,
) -> list[MicroMoment]:
    """Optimal micro moments from micro data: for each parameter, match the mean score.

    The observed value is the mean of the respondents' scores (:func:`micro_scores`); the
    model value is the mean of the agent scores (:func:`agent_scores`) over the survey the
    model predicts, which is zero at the estimates the scores were computed at.

    Parameters
    ----------
    demand : DemandSystem
        Estimated random-coefficients demand (``results.demand``), e.g. from a first fit.
    dataset : MicroDataset
        The survey the micro data come from.
    micro_data : pandas.DataFrame
        Respondents, as :func:`micro_scores` reads them.
    parameters : sequence of str, optional
        Names of the parameters whose scores to match (default: all of θ).

    Returns
    -------
    list of MicroMoment
        Named ``"score[<parameter>]"``, on ``dataset``.

    Raises
    ------
    BLPInputError
        Unknown parameter names, or what :func:`micro_scores` raises.

    Examples
    --------
    >>> moments = optimal_micro_moments(
    ...     results.demand, survey, micro, ["pi[Intercept,log_income]"])  # doctest: +SKIP
    >>> model.fit(sigma=..., pi=..., micro_moments=moments)  # doctest: +SKIP
    """
    observed = micro_scores(demand, dataset, micro_data)
    names = list(observed.columns) if parameters is None else list(parameters)
    unknown = [name for name in names if name not in observed.columns]
    if unknown:
        raise BLPInputError(
            f"no parameters {unknown} in θ; the parameters are {list(observed.columns)}"
        )
    scores = agent_scores(demand, dataset)
    moments = []
    for name in names:
        values = {market: np.nan_to_num(array) for market, array in scores[name].items()}
        value = float(np.nanmean(observed[name].to_numpy()))

        def part(t: Any, products: pd.DataFrame, agents: pd.DataFrame, v: dict = values) -> Any:
            return v[t][agents.attrs.get("agent_indices", slice(None))]

        moments.append(MicroMoment(f"score[{name}]", dataset, value, parts=[part]))
    return moments
