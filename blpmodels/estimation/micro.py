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
arrays are computed once, before estimation (:class:`MicroBlock`); each evaluation only
recomputes the choice probabilities of the surveyed markets
(:mod:`blpmodels.kernel.micro_probabilities`), in chunks of agents that bound memory. (Arrays
too large to keep, e.g. second choices among hundreds of products, are recomputed at each
evaluation from the callables, which are then given one chunk of the market's agents at a time.)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.products import ProductDesign
from blpmodels.estimation.micro_parts import (
    _agent_columns,
    _check_name,
    _check_probability,
    _column,
    _covariance_block,
    _dense,
    _indicator,
    _stored_form,
    _stored_size,
    _survey_sums,
    covariance,
    covariance_gradient,
    dataset_repr,
    moment_repr,
    ratio,
    ratio_gradient,
)
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.micro_probabilities import MicroMarket

__all__ = ["MicroDataset", "MicroMoment"]

ArrayFunction = Callable[[Any, pd.DataFrame, pd.DataFrame], Any]


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

    def __repr__(self) -> str:
        return dataset_repr(self)

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
        function without its gradient; at ``fit``, a single part that is 0/1 in every surveyed
        market (a probability) whose observed value is outside [0, 1].

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

    def __repr__(self) -> str:
        return moment_repr(self)

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
            0/1 product column (or expression, e.g. ``"mushy == 1"``; other values are an
            error) selecting the products whose buyers are averaged over; then the moment is a
            ratio of two parts.
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
                else _indicator(products, column, label, "among")
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
            function=ratio,
            gradient=ratio_gradient,
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
            Observed share, a probability in [0, 1].
        first : str, optional
            0/1 product column (or expression) the first choice must belong to (a joint
            share: P(first in group and second is ``to``), not a conditional one).
        to : str
            ``"outside"`` (no purchase), ``"same firm"`` (a product with the first choice's
            ``firm_ids``) or a 0/1 product column (or expression) the second choice belongs to
            (columns with other values are an error, for ``first`` too).
        name : str, optional
            Default ``"P(first -> to)"``.

        Returns
        -------
        MicroMoment

        Raises
        ------
        BLPInputError
            The dataset does not record second choices; ``value`` is not in [0, 1].

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
            chosen = np.ones(n) if first is None else _indicator(products, first, label, "first")
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
                group = np.concatenate([[0.0], _indicator(products, to, label, "to")])
                pair = np.outer(chosen, group)
            return np.broadcast_to(pair, (len(agents), n + 1, n + 1))

        moment = cls(label, dataset, value, parts=[values])
        _check_probability(moment.value, label, "a share of respondents is a probability")
        return moment

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
            function=covariance,
            gradient=covariance_gradient,
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

    def arrays(self, agents: slice, n_agents: int) -> tuple[Any, Any]:
        """Stored arrays of some agents (sparse when mostly zeros), or computed anew when they
        were too large to keep."""
        if self.weighted is None or self.values is None:
            return self.compute(agents)
        return _agent_columns(self.weighted, agents, n_agents), _agent_columns(
            self.values, agents, n_agents
        )

    def weighted_arrays(self, agents: slice, n_agents: int) -> np.ndarray:
        """The weighted arrays alone, dense (what every evaluation needs; the values serve only
        the covariance), kept on their own when both together were too large."""
        return _dense(self.stored_weighted(agents, n_agents))

    def stored_weighted(self, agents: slice, n_agents: int) -> Any:
        """:meth:`weighted_arrays` as stored: a sparse matrix when mostly zeros."""
        if self.weighted is None:
            return self.compute(agents)[0]
        return _agent_columns(self.weighted, agents, n_agents)


def _checked_moments(moments: Sequence[MicroMoment]) -> list[MicroMoment]:
    """The moments as a list: not empty, MicroMoment objects, unique names."""
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
    return moments


def _removed_groups(
    dataset: MicroDataset, frame: pd.DataFrame, n_products: int
) -> np.ndarray | None:
    """For second choices, the group of options removed with each first choice (outside first):
    the product itself, or its whole ``eliminated`` group; None for first choices."""
    if not dataset.second_choices:
        return None
    if dataset.eliminated is None:
        return np.arange(n_products + 1)
    if dataset.eliminated not in frame.columns:
        raise BLPInputError(
            f"micro dataset {dataset.name!r}: eliminated names "
            f"{dataset.eliminated!r}, which is not a product column"
        )
    codes = pd.factorize(frame[dataset.eliminated])[0]
    return np.concatenate([[-1], codes])


@dataclass(frozen=True, eq=False)
class _SurveyData:
    """What the surveys read in each market: product rows, market positions and agents."""

    products: pd.DataFrame
    product_index: np.ndarray
    counts: np.ndarray
    market_labels: np.ndarray
    lookup: dict[Any, int]
    agents: Any


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
    factor_pairs : bool
        Keep second-choice arrays that are an agent factor times a (first, second) choice
        pattern in that form (:func:`~blpmodels.kernel.pair_weights.factor_pairs`); False
        keeps them dense (a check of the dense path).

    Raises
    ------
    BLPInputError
        A dataset names an unknown market; weights or values of the wrong shape, negative or
        non-finite weights; a dataset whose weights select nobody; a probability outside [0, 1].
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
        factor_pairs: bool = True,
    ) -> None:
        self.store_limit = store_limit
        self.factor_pairs = factor_pairs
        self.chunk_values = chunk_values
        self.moments = _checked_moments(moments)
        self.datasets: list[MicroDataset] = []
        for moment in self.moments:
            if all(moment.dataset is not d for d in self.datasets):
                self.datasets.append(moment.dataset)
        part_functions = self._index_parts()
        # Parts whose values are 0/1 in every surveyed market (cleared as arrays are checked).
        self._indicator_parts = np.ones(len(self.part_dataset), dtype=bool)
        self.observed = np.array([moment.value for moment in self.moments])
        self.observations = np.array([d.observations for d in self.datasets], dtype=np.float64)
        data = _SurveyData(
            products,
            product_index,
            product_mask.sum(axis=1),
            market_labels,
            {label: t for t, label in enumerate(market_labels.tolist())},
            agents,
        )
        markets: dict[int, MicroMarket] = {}
        for d, dataset in enumerate(self.datasets):
            parts = np.flatnonzero(self.part_dataset_array == d)
            functions = [part_functions[p] for p in parts]
            self._add_surveys(markets, d, dataset, parts, functions, data)
        for market in markets.values():
            market.chunks = self._agent_chunks(market)
        self.markets = [markets[t] for t in sorted(markets)]
        self._check_probabilities()

    def _check_probabilities(self) -> None:
        """A moment that is one 0/1 part (no function) is a share of respondents, a probability:
        an observed value outside [0, 1] is no such share (a typo, or a percentage)."""
        for moment, parts in zip(self.moments, self.moment_parts, strict=True):
            if moment.function is None and self._indicator_parts[parts[0]]:
                _check_probability(moment.value, moment.name, "its one part is 0/1: a probability")

    @classmethod
    def for_design(
        cls, moments: Sequence[MicroMoment], design: ProductDesign, agents: Any
    ) -> MicroBlock:
        """The block over a model's product data and agents, laid out as the design is."""
        layout = design.layout
        return cls(moments, design.data, layout.index, layout.mask, layout.market_labels, agents)

    def _index_parts(self) -> list[tuple[MicroMoment, int, ArrayFunction]]:
        """Number the parts of all moments: each part's dataset, each moment's parts."""
        self.part_dataset: list[int] = []
        self.moment_parts: list[np.ndarray] = []
        part_functions: list[tuple[MicroMoment, int, ArrayFunction]] = []
        for moment in self.moments:
            d = next(k for k, d in enumerate(self.datasets) if d is moment.dataset)
            start = len(self.part_dataset)
            for position, part in enumerate(moment.parts):
                self.part_dataset.append(d)
                part_functions.append((moment, position, part))
            self.moment_parts.append(np.arange(start, len(self.part_dataset)))
        self.part_dataset_array = np.asarray(self.part_dataset, dtype=np.intp)
        return part_functions

    def _add_surveys(
        self,
        markets: dict[int, MicroMarket],
        d: int,
        dataset: MicroDataset,
        parts: np.ndarray,
        functions: list[tuple[MicroMoment, int, ArrayFunction]],
        data: _SurveyData,
    ) -> None:
        """One survey per market of a dataset, its arrays validated (and kept unless large)."""
        market_labels = data.market_labels
        ids = market_labels.tolist() if dataset.market_ids is None else dataset.market_ids
        unknown = [label for label in ids if label not in data.lookup]
        if unknown:
            raise BLPInputError(
                f"micro dataset {dataset.name!r} names markets that are not in the product "
                f"data: {unknown[:5]} (e.g. known: {market_labels[:3].tolist()})"
            )
        agents = data.agents
        total = 0.0
        for label in ids:
            t = data.lookup[label]
            n_products = int(data.counts[t])
            n_agents = int(agents.layout.counts[t])
            frame = data.products.iloc[data.product_index[t, :n_products]].reset_index(drop=True)
            people = agents.data.iloc[agents.layout.index[t, :n_agents]].reset_index(drop=True)
            if t not in markets:
                markets[t] = MicroMarket(t, label, n_products, n_agents)
            survey = _Survey(
                d,
                parts,
                bool(dataset.second_choices),
                _removed_groups(dataset, frame, n_products),
                dataset,
                label,
                frame,
                people,
                agents.weights[t, :n_agents],
                functions,
            )
            total += self._validate(survey, n_agents)
            markets[t].surveys.append(survey)
        if total <= 0:
            raise BLPInputError(
                f"micro dataset {dataset.name!r}: the weights select nobody in its markets "
                f"{list(ids)[:5]} (all zero), so its moments have zero expected observations"
            )

    def _validate(self, survey: _Survey, n_agents: int) -> float:
        """Compute every array of a survey now, in the whole market, and keep them unless large;
        returns the survey's total weight."""
        weighted, values = survey.compute(slice(0, n_agents))
        self._indicator_parts[survey.parts] &= ((values == 0.0) | (values == 1.0)).all(axis=1)
        total = float(weighted[0].sum())
        # Second choices: u_i m_ab (their pair tangents contract the [I, 1+J, 1+J] grid with
        # two products per agent, cheap in that form), else dense.
        kept = _stored_form(weighted, survey.second, self.factor_pairs, n_agents)
        kept_values = _stored_form(values, survey.second, self.factor_pairs, n_agents)
        if _stored_size(kept) + _stored_size(kept_values) <= self.store_limit:
            survey.weighted, survey.values = kept, kept_values
        elif _stored_size(kept) <= self.store_limit:
            survey.weighted = kept
        return total

    def _agent_chunks(self, market: MicroMarket) -> list[slice]:
        """Agents in chunks of about ``chunk_values`` values per probability array."""
        size = 1 + market.n_products
        per_agent = 8 * (size * size if any(s.second for s in market.surveys) else size)
        step = max(1, int(self.chunk_values // per_agent))
        return [
            slice(start, min(start + step, market.n_agents))
            for start in range(0, market.n_agents, step)
        ]

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
        probabilities: Callable[[MicroMarket, slice], tuple[np.ndarray, np.ndarray | None, Any]],
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
                        # The sums come from contract_all with tangents, from the removals'
                        # values without them (nested): pairs only for the covariance.
                        cache[key] = pair_function(survey.groups, covariance)
                    prob, d_prob = cache[key]
                else:
                    prob, d_prob = first, d_first
                if covariance:
                    weighted, values = survey.arrays(agents, market.n_agents)
                else:
                    weighted = survey.stored_weighted(agents, market.n_agents)
                contribution, tangent = _survey_sums(weighted, prob, d_prob, n_theta, jacobian)
                denominator[survey.dataset] += contribution[0]
                numerator[survey.parts] += contribution[1:]
                if jacobian:
                    d_denominator[survey.dataset] += tangent[0]
                    d_numerator[survey.parts] += tangent[1:]
                if covariance:
                    block = _covariance_block(weighted, values, prob)
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
            # Second-choice pair tangents need the first-choice tangents whole: form them once.
            lambda market, agents: model.market(
                market,
                theta,
                delta,
                delta_jacobian,
                agents,
                contractible=not any(survey.second for survey in market.surveys),
            ),
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
