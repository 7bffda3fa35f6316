"""Micro-moment outputs of fitted results: simulated surveys, scores and optimal micro moments.

These read a fitted model's agent-level probabilities (:mod:`blpmodels.kernel.micro_probabilities`)
at the estimates: :func:`simulate_micro_data` draws survey respondents, :func:`agent_scores` and
:func:`micro_scores` give the derivatives of log choice probabilities in θ, and
:func:`optimal_micro_moments` builds the score-based micro moments of a dataset.
:class:`MicroMixin` gives :class:`~blpmodels.results.BLPResults` these as methods, beside the
fitted micro moments (``micro_values``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.agents import AgentDesign
from blpmodels.data.integration import Integration
from blpmodels.data.parameters import NonlinearParameters
from blpmodels.estimation.micro import (
    MicroBlock,
    MicroDataset,
    MicroMoment,
    _check_array,
)
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.micro_probabilities import MicroMarket, MicroProbabilities
from blpmodels.results.integrated_scores import integrated_nodes

__all__ = [
    "MicroMixin",
    "agent_scores",
    "micro_scores",
    "optimal_micro_moments",
    "simulate_micro_data",
]


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
    agents, _ = _survey_demand(demand, dataset, "simulating micro data needs")
    layout = demand.design.layout
    second = bool(dataset.second_choices)
    block = _survey_block("draws", demand, dataset, agents)
    model = _probability_model(demand)
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


def _survey_demand(
    demand: Any, dataset: Any, needs: str
) -> tuple[AgentDesign, NonlinearParameters]:
    """The agents and nonlinear parameters of random-coefficients demand, for a survey."""
    if not isinstance(dataset, MicroDataset):
        raise BLPInputError(f"dataset must be a MicroDataset, got {type(dataset).__name__}")
    agents, parameters = demand.agents, demand.parameters
    if agents is None or parameters is None:
        raise BLPInputError(f"{needs} a random-coefficients model's demand")
    if parameters.two_level:
        # The micro probability kernel knows one level of nests only.
        raise BLPInputError(
            f"{needs} one level of nests: micro data are not supported for the two-level "
            "random-coefficients nested logit yet"
        )
    return agents, parameters


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


def _survey_block(name: str, demand: Any, dataset: MicroDataset, agents: Any) -> MicroBlock:
    """A block whose one moment averages ones over the survey: its markets, agent chunks and
    sampling weights, for drawing or scoring its consumers."""
    second = bool(dataset.second_choices)

    def ones(t: Any, products: pd.DataFrame, people: pd.DataFrame) -> np.ndarray:
        size = len(products) + 1
        return np.ones((len(people), size, size) if second else (len(people), size))

    moment = MicroMoment(name, dataset, 0.0, parts=[ones])
    return MicroBlock.for_design([moment], demand.design, agents)


def _choice_probabilities(
    model: MicroProbabilities,
    market: MicroMarket,
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
    from blpmodels.estimation.objective import NonlinearObjective

    agents, parameters = _survey_demand(demand, dataset, "scores need")
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
    block = _survey_block("scores", demand, dataset, agents)
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


def agent_scores(
    demand: Any, dataset: MicroDataset, integration: Integration | None = None
) -> dict[str, dict[Any, np.ndarray]]:
    """Scores ∂log P_n/∂θ of every agent type and choice of a survey's markets.

    Each agent (with its own nodes and demographics) and choice is an observation n with
    P_n = w_dij s_ij / Σ_t Σ_i Σ_j w_it w_dijt s_ijt, so its score is
    ∂log s_ij/∂θ − ∂log D/∂θ (δ moves with θ: ∂δ/∂θ by the implicit function theorem).

    With ``integration`` (pyblp's ``compute_agent_scores(dataset, integration=...)``) each
    agent is an observation whose demographics a survey records but whose taste shocks it
    does not: its nodes are replaced by the rule's, and P_n = w_dij Σ_r w_r s_irj integrates
    them out, so the score is Σ_r w_r ∂s_irj/∂θ / Σ_r w_r s_irj − ∂log D/∂θ. The rule has
    one dimension per column of Σ with a nonzero entry (its nodes go to those columns, as in
    pyblp); sampling rules draw for each agent anew. D and the survey weights w_dij stay the
    agents' own (a survey selects on what it records, not on taste shocks).

    Parameters
    ----------
    demand : DemandSystem
        Estimated random-coefficients demand (``results.demand``).
    dataset : MicroDataset
        The survey (markets and weights); with second choices each observation is an agent's
        (first, second) pair, P_n = w_dijk s_ijk / D.
    integration : Integration, optional
        Integrate each agent's scores over unobserved heterogeneity with this rule (default:
        each agent's own nodes, no integration).

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
    >>> integrated = agent_scores(
    ...     results.demand, survey, Integration("grid", 4))  # doctest: +SKIP
    """
    if integration is not None and not isinstance(integration, Integration):
        raise BLPInputError(
            f"integration must be an Integration such as Integration('product', 5), got "
            f"{type(integration).__name__}"
        )
    setup = _score_setup(demand, dataset)
    model, block = setup["model"], setup["block"]
    rule = None if integration is None else integrated_nodes(demand, block, integration)
    result: dict[str, dict[Any, np.ndarray]] = {name: {} for name in setup["names"]}
    for market in block.markets:
        survey = market.surveys[0]
        groups = survey.groups if survey.second else None
        pieces = []
        for chunk in market.chunks:
            nodes, demographics = model._agent_arrays(market, chunk)
            if rule is None:
                probability, tangent = _choice_probabilities(
                    model, market, setup, nodes, demographics, groups
                )
            else:
                probability, tangent = rule.probabilities(
                    functools.partial(_choice_probabilities, model, market, setup, groups=groups),
                    market,
                    chunk,
                    demographics,
                    nodes.shape[2],
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
    markets = _market_rows(data["market_ids"])
    for label in markets:
        if label not in surveyed:
            raise BLPInputError(
                f"micro_data has market {label!r}, which micro dataset {dataset.name!r} does "
                "not survey"
            )
    picks = {
        label: _observed_choices(data, rows, required[1:], surveyed[label].n_products, label)
        for label, rows in markets.items()
    }
    # The weights callable reads each market's respondents as a frame: reorder the rows by
    # market once, so that each market's frame is a slice.
    ordered = (
        None
        if dataset.weights is None
        else data.take(np.concatenate([np.zeros(0, dtype=np.intp), *markets.values()]))
    )
    # Observations in first-appearance order (as groupby(sort=False)); rows without an id
    # (code −1) belong to none.
    codes, labels = pd.factorize(ids)
    value = np.zeros(len(labels))
    d_value = np.zeros((len(labels), parameters.size))
    start = 0
    for label, rows in markets.items():
        market, picked = surveyed[label], picks[label]
        people = None if ordered is None else ordered.iloc[start : start + len(rows)]
        start += len(rows)
        w = _respondent_weights(dataset, market, people, picked)
        if row_weights is not None:
            w = w * row_weights[rows]
        probability, tangent = _chosen_probabilities(
            setup, market, nodes[None, rows], demographics[None, rows], picked, second
        )
        _add_to_observations(codes[rows], w * probability, w * tangent, value, d_value)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = d_value / value[:, None]
    scores = scores - setup["log_gradient"][None, :]
    scores[~np.isfinite(scores)] = np.nan
    return pd.DataFrame(scores, index=pd.Index(labels, name="micro_ids"), columns=setup["names"])


def _add_to_observations(
    codes: np.ndarray,
    values: np.ndarray,
    tangents: np.ndarray,
    value: np.ndarray,
    d_value: np.ndarray,
) -> None:
    """Add rows ``values`` ``[n]`` and ``tangents`` ``[P, n]`` to their observations' sums.

    The rows of one observation (its draws) are usually adjacent: each run of equal codes is
    summed in one pass with ``reduceat`` and the few run sums are added where they belong
    (``add.at`` also handles an observation split over several runs).
    """
    kept = codes >= 0
    if not kept.all():
        codes, values, tangents = codes[kept], values[kept], tangents[:, kept]
    if not codes.size:
        return
    starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    np.add.at(value, codes[starts], np.add.reduceat(values, starts))
    np.add.at(d_value, codes[starts], np.add.reduceat(tangents, starts, axis=1).T)


def _market_rows(market_ids: pd.Series) -> dict[Any, np.ndarray]:
    """Each market's row positions (ascending), markets in first-appearance order, rows
    without a market left out: ``groupby(sort=False).indices`` by one factorization and a
    stable sort of the codes."""
    codes, labels = pd.factorize(market_ids)
    if not len(labels):
        return {}
    order = np.argsort(codes, kind="stable")
    ends = np.cumsum(np.bincount(codes[codes >= 0], minlength=len(labels)))
    order = order[order.size - ends[-1] :]  # rows without a market (code −1) sort first
    return dict(zip(labels, np.split(order, ends[:-1]), strict=True))


def _respondent_weights(
    dataset: MicroDataset,
    market: MicroMarket,
    people: pd.DataFrame | None,
    picked: list[np.ndarray],
) -> np.ndarray:
    """The survey weights w_dij (second choices: w_dijk) of one market's respondents'
    choices; ``people`` are the respondents' rows, for a weights callable."""
    n, second = market.n_products, bool(dataset.second_choices)
    if dataset.weights is None:
        # By default any inside first choice is surveyed (second choices: any second choice
        # outside the first choice's removed group), all with weight one.
        weight = (picked[0] > 0).astype(np.float64)
        if second:
            groups = market.surveys[0].groups
            weight[groups[picked[0]] == groups[picked[1]]] = 0.0
        return weight
    survey = market.surveys[0]
    people = people.reset_index(drop=True)
    where = f"micro dataset {dataset.name!r} in market {market.label!r}: weights"
    raw = dataset.weights(market.label, survey.frame, people)
    weights = _check_array(raw, len(people), n, second, where)
    if second:
        weights[:, survey.groups[:, None] == survey.groups[None, :]] = 0.0
    return weights[(np.arange(len(people)), *picked)]


def _chosen_probabilities(
    setup: dict[str, Any],
    market: MicroMarket,
    nodes: np.ndarray,
    demographics: np.ndarray,
    picked: list[np.ndarray],
    second: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[n]`` of the choices respondents made and their θ-tangents ``[P, n]``."""
    model, theta = setup["model"], setup["theta"]
    rho = model._rho(theta)
    if not second and (rho is None or not np.any(rho != 0)):
        # Logit first choices: only the chosen option's tangent (O(n·J·P), no [P, n, 1+J]).
        return model.logit_chosen(
            market, theta, setup["delta"], setup["jacobian"], nodes, demographics, picked[0]
        )
    groups = market.surveys[0].groups if second else None
    probability, tangent = _choice_probabilities(model, market, setup, nodes, demographics, groups)
    index = (np.arange(len(picked[0])), *picked)
    return probability[index], tangent[(slice(None), *index)]


def _observed_choices(
    data: pd.DataFrame, rows: np.ndarray, columns: Sequence[str], n: int, label: Any
) -> list[np.ndarray]:
    """One market's respondents' choice columns, checked to index its ``n`` products."""
    picked = [data[column].to_numpy()[rows] for column in columns]
    for column, choices in zip(columns, picked, strict=True):
        if (
            not np.issubdtype(choices.dtype, np.integer)
            or (choices < 0).any()
            or (choices > n).any()
        ):
            raise BLPInputError(
                f"micro_data {column} in market {label!r} must be integers from 0 "
                f"(outside option) to {n}"
            )
    return picked


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


class MicroMixin:
    """Micro-moment outputs of :class:`~blpmodels.results.BLPResults`: the fitted micro
    moments, simulated surveys, scores and optimal micro moments (the functions above at the
    results' estimated ``demand``)."""

    info: Any
    demand: Any

    def micro_values(self) -> pd.DataFrame:
        """Each micro moment's observed value beside the model's value at the estimates.

        Returns
        -------
        pandas.DataFrame
            Indexed by moment name: ``dataset``, ``observations``, ``observed``, ``model``
            and ``difference`` (observed − model, the micro moment ḡ).

        Raises
        ------
        BLPInputError
            The model was fitted without micro moments.

        Examples
        --------
        >>> results.micro_values()  # doctest: +SKIP
                                dataset  observations  observed  model  difference
        E[log_income | inside]   income           100       7.9    7.9         0.0
        """
        if self.info.micro is None:
            raise BLPInputError("these results were fitted without micro moments")
        return self.info.micro.copy()

    def simulate_micro_data(self, dataset: Any, seed: Any = None) -> pd.DataFrame:
        """Draw a survey like ``dataset`` from the estimated model (one row per consumer).

        Parameters
        ----------
        dataset : MicroDataset
            The survey to simulate (its markets, weights and observations).
        seed : int or numpy.random.Generator, optional
            Random numbers.

        Returns
        -------
        pandas.DataFrame
            ``market_ids``, ``agent_indices``, ``agent_rows``, ``choice_indices`` (0: outside
            option) and, with second choices, ``second_choice_indices``; see
            :func:`blpmodels.results.micro.simulate_micro_data`.

        Examples
        --------
        >>> micro = results.simulate_micro_data(survey, seed=0)  # doctest: +SKIP
        """
        return simulate_micro_data(self.demand, dataset, seed)

    def agent_scores(
        self, dataset: Any, integration: Any = None
    ) -> dict[str, dict[Any, np.ndarray]]:
        """Scores ∂log P/∂θ of every agent type and choice in a survey's markets.

        Parameters
        ----------
        dataset : MicroDataset
            The survey (first choices).
        integration : Integration, optional
            Integrate each agent's scores over its unobserved taste shocks with this rule, as
            pyblp's ``compute_agent_scores(dataset, integration=...)`` (default: the agents'
            own nodes).

        Returns
        -------
        dict
            ``{parameter name: {market id: I × (1 + J) array}}``, column 0 the outside option;
            see :func:`blpmodels.results.micro.agent_scores`. A part returning
            ``scores[name][market_id]`` makes the optimal micro moment for that parameter.

        Examples
        --------
        >>> scores = results.agent_scores(survey)  # doctest: +SKIP
        >>> integrated = results.agent_scores(
        ...     survey, integration=Integration("product", 5))  # doctest: +SKIP
        """
        return agent_scores(self.demand, dataset, integration)

    def micro_scores(self, dataset: Any, micro_data: pd.DataFrame) -> pd.DataFrame:
        """Scores ∂log P_n/∂θ of observed survey respondents (rows of one ``micro_ids``
        integrate over what the survey does not record, e.g. draws of the nodes).

        Parameters
        ----------
        dataset : MicroDataset
            The survey (first choices).
        micro_data : pandas.DataFrame
            ``market_ids``, ``choice_indices`` (0: outside option), demographics, node
            columns, optional ``micro_ids`` and ``weights``; see
            :func:`blpmodels.results.micro.micro_scores`.

        Returns
        -------
        pandas.DataFrame
            One row per observation, one column per parameter of θ.

        Examples
        --------
        >>> scores = results.micro_scores(survey, micro)  # doctest: +SKIP
        """
        return micro_scores(self.demand, dataset, micro_data)

    def optimal_micro_moments(
        self, dataset: Any, micro_data: pd.DataFrame, parameters: Sequence[str] | None = None
    ) -> list[Any]:
        """Optimal micro moments from micro data in one call: each matches the respondents'
        mean score for a parameter with the model's (zero at these estimates).

        Parameters
        ----------
        dataset : MicroDataset
            The survey the micro data come from.
        micro_data : pandas.DataFrame
            Respondents, as :meth:`micro_scores` reads them.
        parameters : sequence of str, optional
            Parameters whose scores to match (default: all of θ).

        Returns
        -------
        list of MicroMoment
            For ``fit(micro_moments=...)``; see
            :func:`blpmodels.results.micro.optimal_micro_moments`.

        Examples
        --------
        >>> moments = results.optimal_micro_moments(survey, micro)  # doctest: +SKIP
        """
        return optimal_micro_moments(self.demand, dataset, micro_data, parameters)
