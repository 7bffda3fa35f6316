"""Agent-level choice and second-choice probabilities of surveyed markets, and their tangents.

What the micro moments of :mod:`blpmodels.estimation.micro` need from the model at θ: for each
surveyed market, the probability P_ijt that agent i chooses j (with 0 the outside option) and,
for second-choice surveys, the probability of j first and k second (s_ik(−j) − s_ik, which is
s_ij s_ik(−j) in the logit), with their derivatives in θ (and ρ for nested models) computed
analytically, in chunks of agents that bound memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from blpmodels.kernel.nested_removals import NestedRemovals
from blpmodels.kernel.pair_weights import pair_weights


@dataclass(eq=False)
class MicroMarket:
    """One surveyed market: its position and sizes, the surveys that cover it, agent chunks."""

    position: int
    label: Any
    n_products: int
    n_agents: int
    surveys: list[Any] = field(default_factory=list)  # the micro block's surveys
    chunks: list[slice] = field(default_factory=list)  # agent chunks bounding memory


@dataclass(eq=False)
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

    parameters: Any
    characteristics: np.ndarray
    agents: Any
    nest_codes: np.ndarray | None = None
    n_nests: int = 1

    def utilities(
        self, market: MicroMarket, theta: np.ndarray, delta: np.ndarray, agents: slice
    ) -> np.ndarray:
        """``[I, J]`` utilities δ_j + μ_ij of some agents in a market."""
        nodes, demographics = self._agent_arrays(market, agents)
        return self._utilities(market, theta, delta, nodes, demographics)

    def _agent_arrays(self, market: MicroMarket, agents: slice) -> tuple[np.ndarray, np.ndarray]:
        t = market.position
        return self.agents.nodes[t : t + 1, agents], self.agents.demographics[t : t + 1, agents]

    def _utilities(
        self,
        market: MicroMarket,
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
        market: MicroMarket,
        theta: np.ndarray,
        delta: np.ndarray,
        delta_jacobian: np.ndarray | None,
        agents: slice,
        contractible: bool = False,
    ) -> tuple[np.ndarray, Any, Callable[..., tuple[Any, Any]]]:
        """Some agents' first-choice probabilities ``[I, 1+J]`` (outside first), θ-tangents
        ``[P, I, 1+J]``, and a function of the removed groups ``[1+J]`` giving the pair
        probabilities ``[I, 1+J, 1+J]`` of (first, second) choices and their tangents
        (``pair(groups, probabilities=False)`` skips the probabilities, None then, where the
        tangents' ``contract_all`` gives the weighted sums; without tangents a nested model
        returns its :class:`~blpmodels.kernel.nested_removals.NestedRemovals` in their place,
        whose ``values`` gives them).

        With ``contractible`` the logit tangents are a :class:`_LogitFirstTangent`, which
        contracts weights with them without forming the ``[P, I, 1+J]`` array."""
        nodes, demographics = self._agent_arrays(market, agents)
        if contractible:
            return self._consumers(market, theta, delta, delta_jacobian, nodes, demographics, True)
        return self.consumers(market, theta, delta, delta_jacobian, nodes, demographics)

    def consumers(
        self,
        market: MicroMarket,
        theta: np.ndarray,
        delta: np.ndarray,
        delta_jacobian: np.ndarray | None,
        nodes: np.ndarray,
        demographics: np.ndarray,
    ) -> tuple[np.ndarray, Any, Callable[..., tuple[Any, Any]]]:
        """:meth:`market` for any consumers: ``nodes`` ``[1, I, K]`` and ``demographics``
        ``[1, I, D]`` (agents of the data, or respondents of a survey)."""
        return self._consumers(market, theta, delta, delta_jacobian, nodes, demographics, False)

    def _consumers(
        self,
        market: MicroMarket,
        theta: np.ndarray,
        delta: np.ndarray,
        delta_jacobian: np.ndarray | None,
        nodes: np.ndarray,
        demographics: np.ndarray,
        contractible: bool,
    ) -> tuple[np.ndarray, Any, Callable[..., tuple[Any, Any]]]:
        """:meth:`consumers`; ``contractible``: logit tangents as a :class:`_LogitFirstTangent`."""
        utilities = self._utilities(market, theta, delta, nodes, demographics)
        rho = self._rho(theta)
        nested = rho is not None and np.any(rho != 0)
        tangents = None
        if delta_jacobian is not None and (nested or not contractible):
            tangents = self._utility_tangents(market, theta, delta_jacobian, nodes, demographics)
        if nested:
            return self._nested_market(market, theta, utilities, tangents, rho)
        first = _logit(utilities)
        d_first: Any = None
        if tangents is not None:
            d_first = _logit_tangents(first, tangents)
        elif delta_jacobian is not None:
            d_first = _LogitFirstTangent(
                self, market, theta, delta_jacobian, nodes, demographics, first
            )

        def pair(groups: np.ndarray, probabilities: bool = True) -> tuple[Any, Any]:
            # Logit: P(a first, b second) = s_a s_b / (1 − S_a), S_a the share of a's group.
            same = (groups[:, None] == groups[None, :]).astype(np.float64)
            rest = 1.0 - first @ same
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(rest > 0, first / rest, 0.0)  # [I, 1+J]: s_a / (1 − S_a)
                scale = np.where(rest > 0, 1.0 / rest, 0.0)
            joint = None
            if probabilities or d_first is None:
                joint = ratio[:, :, None] * first[:, None, :]
                joint[:, same > 0] = 0.0
            if d_first is None:
                return joint, None
            dense = d_first.dense() if isinstance(d_first, _LogitFirstTangent) else d_first
            return joint, _LogitPairTangent(first, dense, ratio, scale, same)

        return first, d_first, pair

    def _utility_tangents(
        self,
        market: MicroMarket,
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

    def logit_chosen(
        self,
        market: MicroMarket,
        theta: np.ndarray,
        delta: np.ndarray,
        delta_jacobian: np.ndarray,
        nodes: np.ndarray,
        demographics: np.ndarray,
        choices: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logit probabilities ``[n]`` of the options ``choices`` ``[n]`` (0: outside) some
        consumers chose, and their θ-tangents ``[P, n]`` (the logit branch of
        :meth:`consumers`, first choices; a nested model must use :meth:`consumers`).

        ∂s_ij/∂θ = s_ij (∂u_ij/∂θ − Σ_k s_ik ∂u_ik/∂θ) with ∂u_ik/∂θ = ∂δ_k/∂θ + Σ_c x_kc
        ∂c_ic/∂θ, so the mean over k contracts the shares with ∂δ/∂θ ``[J, P]`` and X2
        ``[J, K2]`` first: O(n·J·(P + K2)) work, never the ``[P, n, J]`` tangents of every
        option (a survey scores one observed choice per respondent). Options run along the
        first axis, consumers along the last, so that the reductions over options are
        contiguous vector operations.
        """
        t, n = market.position, market.n_products
        n_theta = delta_jacobian.shape[2]
        x2 = self.characteristics[t, :n]
        jacobian = delta_jacobian[t, :n]  # [J, P]
        coefficients, _ = self.parameters.coefficients(theta, nodes, demographics)
        # [1+J, n] exponentiated utilities, the outside option (utility 0) first, shifted by
        # each consumer's largest utility (as _logit) so that none overflows.
        scaled = np.empty((1 + n, choices.size))
        scaled[0] = 0.0
        np.matmul(x2, coefficients[0].T, out=scaled[1:])
        scaled[1:] += delta[t, :n][:, None]
        scaled -= scaled.max(axis=0)
        np.exp(scaled, out=scaled)
        total = scaled.sum(axis=0)
        chosen = scaled[choices, np.arange(choices.size)] / total
        # Σ_k s_ik ∂δ_k/∂θ [P, n] and Σ_k s_ik x_kc [K2, n], normalized after the products.
        mean = jacobian.T @ scaled[1:]
        mean /= total
        exposure = x2.T @ scaled[1:]
        exposure /= total
        # The chosen option's own terms (zero for the outside option, row 0 of the padding).
        own = np.concatenate([np.zeros((n_theta, 1)), jacobian.T], axis=1)[:, choices]
        own_x2 = np.concatenate([np.zeros((x2.shape[1], 1)), x2.T], axis=1)[:, choices]
        factors, positions = self.parameters.agent_factors(coefficients, nodes, demographics)
        for column, (factor, places) in enumerate(zip(factors, positions, strict=True)):
            for offset, position in enumerate(places):
                if position < n_theta:
                    mean[position] += factor[0, offset] * exposure[column]
                    own[position] += factor[0, offset] * own_x2[column]
        own -= mean
        own *= chosen
        return chosen, own

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
        market: MicroMarket,
        theta: np.ndarray,
        utilities: np.ndarray,
        tangents: np.ndarray | None,
        rho: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | None, Callable[..., tuple[Any, Any]]]:
        """RCNL: probabilities from the nested formula, pairs as s_b(−a) − s_b (see
        :func:`_nested_pairs`), and analytic tangents (:func:`_nested_tangents`)."""
        t, n = market.position, market.n_products
        codes = self.nest_codes[t, :n]
        first = _nested(utilities, codes, rho)
        if tangents is None:

            def values_only(groups: np.ndarray, probabilities: bool = True) -> tuple[Any, Any]:
                # Without probabilities, the removals sum weighted pairs themselves.
                removals = NestedRemovals(first, codes, rho, groups)
                return (removals.pairs, None) if probabilities else (None, removals)

            return first, None, values_only
        nests = _Nests(codes, rho, tuple(self._rho_tangents(tangents.shape[0])))
        d_first = _nested_tangents(first, tangents, nests)

        def pair(groups: np.ndarray, probabilities: bool = True) -> tuple[Any, Any]:
            removals = NestedRemovals(first, codes, rho, groups)
            tangent = _NestedPairTangent(removals, utilities, tangents, nests, d_first)
            return (removals.pairs if probabilities else None), tangent

        return first, d_first, pair


def _logit_tangents(first: np.ndarray, tangents: np.ndarray) -> np.ndarray:
    """``[P, I, 1+J]`` ∂s_ij/∂θ = s_ij (∂u_ij/∂θ − Σ_k s_ik ∂u_ik/∂θ) from ``[P, I, J]``
    utility tangents (the outside option's utility is 0)."""
    inside = first[None, :, 1:]
    mean = (inside * tangents).sum(axis=2, keepdims=True)  # [P, I, 1]
    return np.concatenate([-first[None, :, :1] * mean, inside * (tangents - mean)], 2)


@dataclass(eq=False)
class _LogitFirstTangent:
    """θ-tangents of logit first-choice probabilities, contracted with survey weights without
    forming the ``[P, I, 1+J]`` array (:meth:`dense` forms it when a pair tangent needs it).

    ∂s_ij/∂θ_p = s_ij (T_pij − m_pi), with T_pij = ∂δ_j/∂θ_p + Σ_(c,q)→p g_qi x_jc (g the agent
    factors of the coefficient of X2 column c, zero for the outside option) and m_pi = Σ_k s_ik
    T_pik. With A_n = w_n ∘ s, Σ_ij A_nij (T_pij − m_pi) = Σ_j B_nj ∂δ_j/∂θ_p + Σ_(c,q)→p Σ_i
    g_qi (Z_nic − a_ni (s_i x)_c) − Σ_i a_ni (s_i ∂δ/∂θ_p) with B_nj = Σ_i A_nij, Z_nic = Σ_j
    A_nij x_jc and a_ni = Σ_j A_nij: O(nnz(w)·K2 + I·J·(P + K2)) work instead of
    O(I·J·P) for the tangents and O(n·I·J·P) for their product with the weights.
    """

    model: MicroProbabilities
    market: MicroMarket
    theta: np.ndarray
    delta_jacobian: np.ndarray
    nodes: np.ndarray
    demographics: np.ndarray
    first: np.ndarray  # [I, 1+J]
    _dense: np.ndarray | None = None

    def dense(self) -> np.ndarray:
        """``[P, I, 1+J]`` tangents."""
        if self._dense is None:
            tangents = self.model._utility_tangents(
                self.market, self.theta, self.delta_jacobian, self.nodes, self.demographics
            )
            self._dense = _logit_tangents(self.first, tangents)
        return self._dense

    def contract(self, weighted: Any) -> np.ndarray:
        """``[n, P]`` Σ_ij weighted_n[i·(1+J) + j] ∂s_ij/∂θ for ``[n, I·(1+J)]`` weights
        (dense, or a scipy CSR matrix)."""
        return self.contract_all(weighted)[1]

    def contract_all(self, weighted: Any) -> tuple[np.ndarray, np.ndarray]:
        """``([n], [n, P])``: ``weighted @ s`` (Σ_i a_ni, a by-product) and :meth:`contract`."""
        model, t, n = self.model, self.market.position, self.market.n_products
        first = self.first
        n_agents, size = first.shape
        rows = weighted.shape[0]
        x2 = model.characteristics[t, :n]  # [J, K2]
        # [1+J, K2+1]: X2 with a zero outside row, and a column of ones (gives a_ni).
        extended = np.zeros((size, x2.shape[1] + 1))
        extended[1:, :-1] = x2
        extended[:, -1] = 1.0
        if hasattr(weighted, "indptr"):
            by_agent, cells = _agent_rows(weighted, n_agents, size)
            scaled = weighted.data * first.reshape(-1)[weighted.indices]
            totals = np.bincount(cells, scaled, rows * size)
            totals = totals.reshape(rows, size)  # B
            exposure = by_agent(scaled) @ extended  # [n·I, K2+1]
        else:
            scaled = weighted.reshape(rows, n_agents, size) * first
            totals = scaled.sum(axis=1)
            exposure = scaled.reshape(rows * n_agents, size) @ extended
        exposure = exposure.reshape(rows, n_agents, -1)
        jacobian = self.delta_jacobian[t, :n]  # [J, P]
        n_theta = jacobian.shape[1]
        inside = first[:, 1:]
        mean_delta = inside @ jacobian  # [I, P]
        mean_x2 = inside @ x2  # [I, K2]
        mass = exposure[:, :, -1]  # [n, I]: a_ni
        result = totals[:, 1:] @ jacobian - mass @ mean_delta
        coefficients, _ = model.parameters.coefficients(self.theta, self.nodes, self.demographics)
        factors, positions = model.parameters.agent_factors(
            coefficients, self.nodes, self.demographics
        )
        for column, (factor, places) in enumerate(zip(factors, positions, strict=True)):
            if not any(position < n_theta for position in places):
                continue
            net = exposure[:, :, column] - mass * mean_x2[:, column]  # [n, I]
            for offset, position in enumerate(places):
                if position < n_theta:
                    result[:, position] += net @ factor[0, offset]
        return mass.sum(axis=1), result


def _agent_rows(weighted: Any, n_agents: int, size: int) -> tuple[Callable, np.ndarray]:
    """For a CSR ``[n, I·(1+J)]`` matrix: a function giving the ``[n·I, 1+J]`` CSR matrix with
    the same nonzeros (other values), and each nonzero's cell ``row·(1+J) + j`` of ``[n, 1+J]``.
    Cached on the matrix, which a survey stores once and hands to every evaluation."""
    import scipy.sparse

    cached = getattr(weighted, "_blpmodels_agent_rows", None)
    if cached is None:
        indices = weighted.indices
        agent, choice = np.divmod(indices, size)
        rows_of = np.repeat(np.arange(weighted.shape[0]), np.diff(weighted.indptr))
        counts = np.bincount(rows_of * n_agents + agent, minlength=weighted.shape[0] * n_agents)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        cells = rows_of * size + choice
        # 32-bit indices where they fit: half the memory of the cache (16 bytes a nonzero).
        small = max(indices.size, cells.max(initial=0)) < np.iinfo(np.int32).max
        kind = np.int32 if small else np.int64
        cached = (
            choice.astype(kind),
            indptr.astype(kind),
            weighted.shape[0] * n_agents,
            cells.astype(kind),
        )
        try:
            weighted._blpmodels_agent_rows = cached
        except AttributeError:  # pragma: no cover - a matrix type without attributes
            pass
    choice, indptr, n_rows, cells = cached

    def by_agent(values: np.ndarray) -> Any:
        return scipy.sparse.csr_array((values, choice, indptr), shape=(n_rows, size))

    return by_agent, cells


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

    def contract(self, weighted: Any) -> np.ndarray:
        """``[n, P]`` Σ_iab weighted_n[i, a, b] d pair[i, a, b] (weights are zero within a
        removed group; dense ``[n, I·(1+J)²]`` or
        :class:`~blpmodels.kernel.pair_weights.FactoredWeights`)."""
        return self.contract_all(weighted)[1]

    def contract_all(self, weighted: Any) -> tuple[np.ndarray, np.ndarray]:
        """``([n], [n, P])``: Σ_iab weighted_n[i, a, b] pair[i, a, b] (from a product that
        :meth:`contract` forms anyway: the pairs are never formed) and :meth:`contract`."""
        n_agents, size = self.first.shape
        weights = pair_weights(weighted, n_agents, size)
        by_second_choice = weights.right(self.first[:, :, None])[..., 0]  # [n, I, a]: Σ_b w s_b
        values = np.einsum("nia,ia->n", by_second_choice, self.ratio)
        by_first = by_second_choice * self.scale
        by_group = (self.first * by_second_choice * self.scale**2) @ self.same
        by_second = weights.left(self.ratio[:, None, :])[:, :, 0, :]  # [n, I, 1+J]
        return values, np.einsum("nia,pia->np", by_first + by_group + by_second, self.d_first)

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


def _one_hot(codes: np.ndarray, n_columns: int) -> np.ndarray:
    """``[len(codes), n_columns]`` 0/1 matrix with a one in column ``codes[k]`` of row k."""
    one_hot = np.zeros((codes.size, n_columns))
    one_hot[np.arange(codes.size), codes] = 1.0
    return one_hot


@dataclass(frozen=True, eq=False)
class _Nests:
    """One surveyed market's nests as the RCNL tangent formulas read them.

    ``codes`` ``[J]`` is each product's nest, ``rho`` ``[H]`` the nesting parameters, and
    ``rho_tangents`` gives, for each free ρ in θ, its position and the nests it scales.
    """

    codes: np.ndarray
    rho: np.ndarray
    rho_tangents: tuple[tuple[int, np.ndarray], ...]

    @cached_property
    def one_hot(self) -> np.ndarray:
        """``[J, H]`` nest membership."""
        return _one_hot(self.codes, self.rho.size)

    @cached_property
    def scale(self) -> np.ndarray:
        """``[J]`` 1 − ρ of each product's nest."""
        return 1.0 - self.rho[self.codes]


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
    one_hot = _one_hot(codes, len(rho))
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
    index, removed = _removals(groups)
    base = _nested(utilities, codes, rho)  # [I, 1+J]
    without = _nested(utilities[None], codes, rho, removed)  # [G, I, 1+J]
    joint = np.moveaxis(without[index], 0, 1) - base[:, None, :]
    same = groups[:, None] == groups[None, :]
    group_share = base @ same.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        joint *= np.where(group_share > 0, base / group_share, 0.0)[:, :, None]
    joint[:, same] = 0.0
    return np.maximum(joint, 0.0)


def _removals(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group of each option ``[1+J]`` (numbered from 0) and the choice sets with one group
    removed: row g of ``[G, 1+J]`` marks the options of group g."""
    labels, index = np.unique(groups, return_inverse=True)
    return index, index[None, :] == np.arange(labels.size)[:, None]


def _within_nests(
    probabilities: np.ndarray, one_hot: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inside probabilities ``[..., I, J]``, nest shares ``[..., I, H]`` and shares within
    the nest ``[..., I, J]`` (0 for options taken out), given the nest one-hot ``[J, H]``."""
    inside = probabilities[..., 1:]
    nest_shares = inside @ one_hot
    of_product = nest_shares @ one_hot.T
    with np.errstate(divide="ignore", invalid="ignore"):
        within = np.where(of_product > 0, inside / of_product, 0.0)
    return inside, nest_shares, within


def _log_within(within: np.ndarray) -> np.ndarray:
    """log w where w > 0, else 0 (w log w → 0 there)."""
    positive = within > 0
    return np.where(positive, np.log(np.where(positive, within, 1.0)), 0.0)


def _nested_tangents(probabilities: np.ndarray, tangents: np.ndarray, nests: _Nests) -> np.ndarray:
    """``[P, ..., I, 1+J]`` θ-tangents of nested-logit probabilities ``[..., I, 1+J]``.

    With w_j = s_j / s_h(j) the share within the nest, V̄_h = Σ_k∈h w_k dV_k and
    c_h = Σ_k∈h w_k log w_k, the differential of log s_j is
    (dV_j − V̄_h)/(1 − ρ_h) + V̄_h − Σ_k s_k dV_k, and a free ρ scaling the nests in G adds
    [h ∈ G] (log w_j − c_h)/(1 − ρ_h) + [h ∈ G] c_h − Σ_g∈G s_g c_g (outside option: only the
    last terms). Every term is a share-weighted log share, so nothing overflows. Options taken
    out of the choice set have zero probability and drop out.
    """
    codes, one_hot, scale = nests.codes, nests.one_hot, nests.scale
    inside, nest_shares, within = _within_nests(probabilities, one_hot)
    log_within = _log_within(within)
    nest_means = (within * tangents) @ one_hot  # [P, ..., I, H]
    by_product = nest_means @ one_hot.T
    total = (inside * tangents).sum(axis=-1, keepdims=True)  # [P, ..., I, 1]
    d_log = (tangents - by_product) / scale + by_product - total
    result = np.concatenate([-total, d_log], axis=-1)
    if nests.rho_tangents:
        entropy = (within * log_within) @ one_hot  # [..., I, H]: c_h
        for position, scaled_nests in nests.rho_tangents:
            scaled = scaled_nests.astype(np.float64)
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
    nests: _Nests,
    groups: np.ndarray,
    first: np.ndarray,
    d_first: np.ndarray,
) -> tuple[np.ndarray, _DirectNestedPairTangent]:
    """Pair probabilities of :func:`_nested_pairs` ``[I, 1+J, 1+J]`` and their θ-tangents
    (:class:`_DirectNestedPairTangent`): (s_b(−h) − s_b) r_a with r_a = s_a / S_h,
    S_h = Σ_a∈h s_a."""
    index, removed = _removals(groups)
    without = _nested(utilities[None], nests.codes, nests.rho, removed)  # [G, I, 1+J]
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
    tangent = _DirectNestedPairTangent(
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
        nests,
    )
    return joint, tangent


@dataclass(frozen=True, eq=False)
class _NestedPairTangent:
    """θ-tangents of the RCNL pair probabilities s_b r_a (Λ_g(a)h(b) − 1) of
    :class:`~blpmodels.kernel.nested_removals.NestedRemovals`, contracted with survey weights
    there (:meth:`contract_all`); :meth:`dense` forms them by the direct formula
    (:func:`_nested_pair_tangents`, each choice set solved again) for scores of a few
    consumers."""

    removals: NestedRemovals
    utilities: np.ndarray  # [I, J]
    tangents: np.ndarray  # [P, I, J]: utility tangents
    nests: _Nests
    d_first: np.ndarray  # [P, I, 1+J]

    def contract_all(self, weighted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([n], [n, P])``: Σ_iab weighted_n[i, a, b] pair[i, a, b] and its θ-tangents."""
        return self.removals.contract_all(
            weighted, self.d_first, self.tangents, self.nests.rho_tangents
        )

    def contract(self, weighted: np.ndarray) -> np.ndarray:
        """``[n, P]`` Σ_iab weighted_n[i, a, b] d pair[i, a, b]."""
        return self.contract_all(weighted)[1]

    def dense(self) -> np.ndarray:
        """``[P, I, 1+J, 1+J]`` tangents (for scores of a few consumers)."""
        removals = self.removals
        _, direct = _nested_pair_tangents(
            self.utilities,
            self.tangents,
            self.nests,
            removals.groups,
            removals.first,
            self.d_first,
        )
        return direct.dense()


@dataclass(frozen=True, eq=False)
class _DirectNestedPairTangent:
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
    nests: _Nests

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
            one_hot = _one_hot(self.index, n_groups)
            by_group = np.moveaxis(np.swapaxes(scaled, 2, 3) @ one_hot, 3, 1)  # [n, G, I, b]
        return result + _nested_contract(by_group, self.without, self.tangents, self.nests)

    def dense(self) -> np.ndarray:
        """``[P, I, 1+J, 1+J]`` tangents (for scores of a few consumers)."""
        d_without = _nested_tangents(self.without, self.tangents[:, None], self.nests)
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
    coefficients: np.ndarray, probabilities: np.ndarray, tangents: np.ndarray, nests: _Nests
) -> np.ndarray:
    """``[n, P]`` Σ coefficients[n, g, i, b] · (d probabilities)[p, g, i, b] for nested-logit
    probabilities ``[G, I, 1+J]`` (e.g. one choice set per removed group), with the tangents of
    :func:`_nested_tangents` contracted instead of formed: the utility tangents ``[P, I, J]``
    (shared by every g) meet one ``[n, I, J]`` coefficient array, and the passes over
    ``[n, G, I, 1+J]`` arrays are few (this runs at every evaluation with second choices)."""
    n_rows = coefficients.shape[0]
    codes, one_hot, scale = nests.codes, nests.one_hot, nests.scale
    n = codes.size
    inside, nest_shares, within = _within_nests(probabilities, one_hot)
    weighted = coefficients * probabilities  # R̃ = R s
    everything = weighted.sum(axis=-1)  # [n, G, I]: Σ_b R̃_b, outside included
    # Σ_g of: R̃_k / (1 − ρ_k) − (Σ_b∈h(k) R̃_b) ρ_k/(1 − ρ_k) w_k − (Σ_b R̃_b) s_k.
    on_utilities = weighted[..., 1:].sum(axis=1) / scale
    by_nest = weighted[..., 1:] @ one_hot  # [n, G, I, H]
    nest_within = np.matmul(
        by_nest.transpose(2, 0, 3, 1),
        (within * (nests.rho[codes] / scale)).transpose(1, 0, 2)[:, None],
    )  # [I, n, H, J]
    on_utilities -= nest_within[:, :, codes, np.arange(n)].transpose(1, 0, 2)
    on_utilities -= np.matmul(everything.transpose(2, 0, 1), inside.transpose(1, 0, 2)).transpose(
        1, 0, 2
    )
    result = np.einsum("nij,pij->np", on_utilities, tangents)
    if nests.rho_tangents:
        log_within = _log_within(within)
        nest_entropy = (within * log_within) @ one_hot  # [G, I, H]: c_h
        entropy = nest_entropy @ one_hot.T
        flat = weighted[..., 1:].reshape(n_rows, -1)
        for position, scaled_nests in nests.rho_tangents:
            member = scaled_nests.astype(np.float64)[codes]
            outside = -(nest_shares * nest_entropy) @ scaled_nests.astype(np.float64)  # [G, I]
            own = member * ((log_within - entropy) / scale + entropy)
            result[:, position] += flat @ own.reshape(-1) + everything.reshape(
                n_rows, -1
            ) @ outside.reshape(-1)
    return result
