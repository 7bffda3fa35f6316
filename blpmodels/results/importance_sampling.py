"""Importance sampling of agents (Berry, Levinsohn & Pakes 1995, appendix): fewer agents that
integrate the estimated shares with less simulation error.

Most of a market's shares come from the agents likely to buy an inside good, yet plain draws
spend as many nodes on agents who almost surely choose the outside good. At the estimates
(θ̂ and a δ), draw agents instead from the proposal density

    q(ν, d) ∝ (1 − s_i0(ν, d)) f(ν, d),

f the density of the candidate agents and 1 − s_i0 the agent's probability of buying any inside
good, and weight each with the likelihood ratio f/q. How:

1. **Candidates**: a large sample of agents (``agent_data`` or an ``integration`` rule; by
   default the estimation agents) with candidate weights w_c ≥ 0 (their own f).
2. **Accept/reject**: candidate c is accepted with probability a_c = (w_c / max_k w_k) (1 −
   s_c0) / M, M the accept/reject constant, so accepted candidates are distributed as
   w_c (1 − s_c0). With equal candidate weights (random draws) this is pyblp's rule
   (1 − s_c0) / M. M must keep every a_c ≤ 1; M = 1 always does.
3. **Selection**: ``draws`` of the accepted candidates are picked uniformly without
   replacement in each market.
4. **Weights**: w_i = (1 − s_0t) / (1 − s_i0) / I_t, with 1 − s_0t the observed inside share
   of the market and I_t = ``draws``. The exact ratio f/q has the candidates' own inside share
   ∫ (1 − s_c0) f in its numerator; it equals the observed one when δ solves the share
   equations on the candidates (the estimation agents at the estimated δ, or other candidates
   with ``delta=results.compute_delta(...)`` on them).

What is exact and what holds in expectation (at the δ and θ̂ the agents were drawn at):

* **Exact**, in every market and for every seed: Σ_i w_i (1 − s_i0) = 1 − s_0t, so the new
  agents reproduce the observed outside share (the sum of the inside shares) to rounding.
* **In expectation** (over the accept/reject and selection draws): each product's share
  Σ_i w_i s_ij and any other agent average are unbiased for their integral over the candidate
  distribution, up to the without-replacement selection, whose effect is O(1/candidates);
  their variance is what importance sampling lowers.
* The weights sum to one only in expectation, so a model built on the new agents warns that
  its weights do not sum to one; normalizing them would break the exact outside share above.

Compared with pyblp's ``ProblemResults.importance_sampling``: the same proposal, acceptance
rule and weight formula for equally weighted candidates; candidate weights are honoured here
(pyblp ignores them), an ``ar_constant`` below one is accepted when it keeps every acceptance
probability at most one, and the result is plain agent data (a DataFrame) rather than a results
object.
"""

from __future__ import annotations

from dataclasses import replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.agents import AgentDesign
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.shares import ShareEvaluator
from blpmodels.results.base import ResultsRole, row_values

__all__ = ["ImportanceSamplingMixin"]

#: Elements of the [T, J, I] utility array evaluated at once: bounds memory for large pools.
_CHUNK_ELEMENTS = 4_000_000


class ImportanceSamplingMixin(ResultsRole):
    """Importance-sampled agent data of :class:`~blpmodels.results.BLPResults`."""

    def importance_sampling(
        self,
        draws: int,
        *,
        ar_constant: float = 1.0,
        seed: int | np.random.Generator | None = None,
        agent_data: pd.DataFrame | None = None,
        integration: Any = None,
        delta: Any = None,
    ) -> pd.DataFrame:
        """Agents drawn in proportion to their inside-good probability at the estimates.

        From a large pool of candidate agents, accept each with probability proportional to
        its probability 1 − s_i0 of buying an inside good at θ̂ and δ, keep ``draws`` of the
        accepted ones per market, and weight them w_i = (1 − s_0t) / (1 − s_i0) / draws, so the
        weighted share integrals estimate the plain ones with less simulation error (see the
        module notes for the proposal and what is exact).

        Parameters
        ----------
        draws : int
            Agents kept in each market.
        ar_constant : float
            Accept/reject constant M: candidate c is accepted with probability
            (w_c / max w) (1 − s_c0) / M. Larger M accepts fewer; M = 1 (the default) is
            always valid, smaller values only while every acceptance probability stays ≤ 1.
        seed : int or numpy.random.Generator, optional
            Seeds the accept/reject and selection draws.
        agent_data : pandas.DataFrame, optional
            Candidate agents (``market_ids``, ``weights``, ``nodes0`` …, the model's
            demographic columns) in every market. Default: the estimation agents.
        integration : Integration, optional
            Build the candidates' nodes instead (models without demographics only).
        delta : pandas.Series or array-like, optional
            δ at which the inside probabilities are evaluated, one per product row. Default:
            the estimated δ. With other candidates than the estimation agents, pass
            ``results.compute_delta(agent_data=...)`` (or ``integration=``) on the same
            candidates, so that the candidates reproduce the observed shares.

        Returns
        -------
        pandas.DataFrame
            The selected candidates' rows (all their columns) with importance ``weights``,
            ``draws`` per market in the product markets' order: agent data that
            ``from_formula(..., agent_data=...)`` accepts.

        Raises
        ------
        BLPInputError
            Not a random-coefficients model; ``draws`` not a positive integer or above the
            candidates of a market; ``ar_constant`` not positive, or so small that an
            acceptance probability exceeds one (the message gives the smallest valid value);
            a bad ``seed``; both ``agent_data`` and ``integration``; ``agent_data`` missing a
            market or with negative weights; a bad ``delta``; fewer than ``draws`` candidates
            accepted in some market (more candidates or a smaller ``ar_constant`` help).

        Examples
        --------
        200 agents per market from 20,000 Halton candidates, at δ re-solved on those
        candidates; the new agents reproduce the observed outside shares exactly:

        >>> pool = Integration("halton", 20_000, seed=0)  # doctest: +SKIP
        >>> delta = results.compute_delta(integration=pool)  # doctest: +SKIP
        >>> sampled = results.importance_sampling(  # doctest: +SKIP
        ...     200, integration=pool, delta=delta, seed=0)
        >>> model = BLPRandomCoefficients.from_formula(  # doctest: +SKIP
        ...     formula, products, random="0 + prices", agent_data=sampled)
        """
        demand = self.demand
        if (
            demand.agents is None
            or demand.parameters is None
            or not demand.parameters.characteristics
        ):
            raise BLPInputError(
                "importance_sampling needs a random-coefficients model: logit and nested-logit "
                "shares do not depend on agents"
            )
        if demand.parameters.two_level:
            raise BLPInputError(
                "importance_sampling does not support two-level nesting_ids yet (its agent "
                "probabilities are the one-level kernel's): give one level of nests"
            )
        draws, ar_constant, rng = _check_options(draws, ar_constant, seed)
        design = self.model.design
        labels = design.layout.market_labels
        if agent_data is not None and integration is not None:
            raise BLPInputError(
                "give at most one of agent_data and integration (the candidate agents)"
            )
        if agent_data is not None:
            _check_candidate_markets(agent_data, labels)
        values = (
            self._delta
            if delta is None
            else row_values(delta, design.data.index, "delta", design.data["market_ids"].values)
        )
        if agent_data is None and integration is None:
            candidates = demand.agents
        else:
            candidates = self._other_agents(agent_data, integration)  # type: ignore[attr-defined]
        _check_candidates(candidates, labels, draws)
        inside = self._inside_probabilities(candidates, values)
        observed = np.bincount(
            design.layout.codes, weights=design.shares, minlength=design.layout.n_markets
        )
        rows, weights = _sample(candidates, inside, observed, draws, ar_constant, rng, labels)
        sampled = candidates.data.iloc[rows].reset_index(drop=True)
        sampled["weights"] = weights
        return sampled

    def _inside_probabilities(self, candidates: AgentDesign, delta: np.ndarray) -> np.ndarray:
        """``[T, I]`` probability 1 − s_i0 that each candidate buys an inside good."""
        system = replace(self.demand, agents=candidates, delta=delta)
        layout = self.model.design.layout
        width = max(layout.width * candidates.weights.shape[1], 1)
        per_chunk = max(1, _CHUNK_ELEMENTS // width)
        positions = np.arange(layout.n_markets)
        inside = np.zeros(candidates.weights.shape)
        for start in range(0, positions.size, per_chunk):
            chunk = positions[start : start + per_chunk]
            inputs = system.inputs(chunk)
            evaluator = ShareEvaluator(inputs.mu, inputs.weights, inputs.mask, inputs.nesting)
            log_denominator = evaluator.probabilities(inputs.delta).log_denominator
            # 1 − 1/D without cancellation when the inside probability is tiny.
            inside[chunk] = -np.expm1(-log_denominator)
        return inside


def _check_options(
    draws: Any, ar_constant: Any, seed: Any
) -> tuple[int, float, np.random.Generator]:
    """The scalar options, checked before any work."""
    if isinstance(draws, bool) or not isinstance(draws, Integral) or draws < 1:
        raise BLPInputError(f"draws must be a positive integer, got {draws!r}")
    if (
        isinstance(ar_constant, bool)
        or not isinstance(ar_constant, Real)
        or not np.isfinite(ar_constant)
        or ar_constant <= 0
    ):
        raise BLPInputError(f"ar_constant must be a positive number, got {ar_constant!r}")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (Integral, np.random.Generator))
    ):
        raise BLPInputError(f"seed must be None, an integer or a numpy Generator, got {seed!r}")
    return int(draws), float(ar_constant), np.random.default_rng(seed)


def _check_candidate_markets(agent_data: Any, labels: np.ndarray) -> None:
    """Candidates in every product market (named when missing), before any work."""
    if not isinstance(agent_data, pd.DataFrame):
        raise BLPInputError(f"agent_data must be a DataFrame, got {type(agent_data).__name__}")
    if "market_ids" not in agent_data.columns:
        raise BLPInputError("agent_data has no 'market_ids' column")
    present = set(pd.unique(agent_data["market_ids"]).tolist())
    missing = [label for label in labels.tolist() if label not in present]
    if missing:
        raise BLPInputError(
            f"agent_data has no candidate agents in {len(missing)} market(s) of the product "
            f"data, e.g. {missing[:5]}; importance sampling draws agents in every market"
        )


def _check_candidates(candidates: AgentDesign, labels: np.ndarray, draws: int) -> None:
    """Enough candidates per market, none with a negative weight."""
    counts = candidates.n_agents
    short = counts < draws
    if short.any():
        first = int(np.flatnonzero(short)[0])
        raise BLPInputError(
            f"draws={draws} exceeds the {int(counts[first])} candidate agents of market "
            f"{labels[first]!r}; give more candidates (agent_data or integration) or fewer draws"
        )
    negative = (candidates.weights < 0).any(axis=1)
    if negative.any():
        first = int(np.flatnonzero(negative)[0])
        raise BLPInputError(
            f"candidate agent weights are negative in market {labels[first]!r} (a sparse "
            "grid?); importance sampling reads the candidates' weights as a distribution to "
            "draw from, so they must be nonnegative"
        )


def _sample(
    candidates: AgentDesign,
    inside: np.ndarray,
    observed: np.ndarray,
    draws: int,
    ar_constant: float,
    rng: np.random.Generator,
    labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate rows kept (market by market, in layout order) and their importance weights."""
    counts = candidates.n_agents
    ratios = []
    for t, n in enumerate(counts):
        weights = candidates.weights[t, :n]
        ratios.append(weights / weights.max() * inside[t, :n])
    largest = np.array([ratio.max() for ratio in ratios])
    if (largest > ar_constant).any():
        # Acceptance probabilities above one would be cut at one, and the accepted agents
        # would no longer follow the proposal the weights assume.
        raise BLPInputError(
            f"ar_constant={ar_constant:g} is below the largest acceptance ratio "
            f"{largest.max():.6g} (market {labels[int(np.argmax(largest))]!r}); use "
            f"ar_constant >= {largest.max():.6g}, or 1"
        )
    rows, weights = [], []
    for t, ratio in enumerate(ratios):
        accepted = np.flatnonzero(rng.uniform(size=ratio.size) < ratio / ar_constant)
        if accepted.size < draws:
            raise BLPInputError(
                f"only {accepted.size} candidate agents were accepted in market {labels[t]!r}, "
                f"fewer than draws={draws}; give more candidates (about ar_constant × draws / "
                f"inside share = {ar_constant * draws / max(observed[t], 1e-300):.0f} or more) "
                "or a smaller ar_constant"
            )
        chosen = np.sort(rng.choice(accepted, size=draws, replace=False))
        rows.append(candidates.layout.index[t, chosen])
        weights.append(observed[t] / inside[t, chosen] / draws)
    return np.concatenate(rows), np.concatenate(weights)
