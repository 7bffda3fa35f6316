"""Second choices of a one-level nested logit from per-(group, nest) removal factors.

Removing a group g of options from an agent's choice set rescales every remaining probability
by a factor that depends only on g and the remaining option's nest h:

    s_b(−g) = s_b Λ_gh,   Λ_gh = λ_g ω̄_gh^(−ρ_h),   λ_g = D / D(−g),

with ω̄_gh = Σ_(k ∈ h, k ∉ g) w_k the within-nest share of h's options left (w_k = s_k / s_h(k))
and D(−g) / D = Σ_h s_h ω̄_gh^(1 − ρ_h) (the outside option is a nest of its own with ρ = 0).
So the pair probabilities (s_b(−g(a)) − s_b) r_a of :mod:`blpmodels.kernel.micro_probabilities`
are s_b r_a (Λ_g(a)h(b) − 1), and their θ-tangents are those of s_b, r_a and of the
``[I, G, H+1]`` factors Λ. Λ − 1 is formed as expm1 of log Λ, with log(ω̄) and log λ taken from
direct sums of positive terms (log1p of the removed share where that is small), so a pair
probability keeps its relative precision when the removed option is tiny (where the difference
s_b(−a) − s_b of two computed probabilities loses it).

A weighted sum of the tangents over (i, a, b) then reads the ``[n, I, 1+J, 1+J]`` weights twice
(a product with s_b gathered by nest, and one with r_a (Λ − 1)); everything else is
``[n, I, G, H+1]`` or ``[n, I, 1+J]``: no ``[G, I, 1+J]`` choice set is solved again and no
``[n, G, I, 1+J]`` array is formed. When each option is removed alone (the usual survey),
group a touches only the cell (a, h(a)), so the weights split by whether b shares a's nest and
every sum is ``[n, I, 1+J]``: no ``[n, I, G, H+1]`` or ``[I, G, H+1]`` array is formed either.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from blpmodels.kernel.pair_weights import pair_weights

__all__ = ["NestedRemovals"]


def _one_hot(codes: np.ndarray, n_columns: int) -> np.ndarray:
    one_hot = np.zeros((codes.size, n_columns))
    one_hot[np.arange(codes.size), codes] = 1.0
    return one_hot


@dataclass(frozen=True, eq=False)
class NestedRemovals:
    """Removal factors of one market's agents and the pair probabilities built from them.

    Parameters
    ----------
    first : numpy.ndarray
        ``[I, 1+J]`` nested-logit probabilities, outside option first.
    codes : numpy.ndarray
        ``[J]`` nest of each product.
    rho : numpy.ndarray
        ``[H]`` nesting parameters.
    groups : numpy.ndarray
        ``[1+J]`` options removed together (each option alone: ``arange(1+J)``).

    Examples
    --------
    One agent, two products in one nest (ρ = 0.5), utilities 0 and 1:

    >>> from blpmodels.kernel.micro_probabilities import _nested, _nested_pairs
    >>> utilities, codes, rho = np.array([[0.0, 1.0]]), np.array([0, 0]), np.array([0.5])
    >>> removals = NestedRemovals(_nested(utilities, codes, rho), codes, rho, np.arange(3))
    >>> bool(np.allclose(removals.pairs, _nested_pairs(utilities, codes, rho)))
    True
    """

    first: np.ndarray
    codes: np.ndarray
    rho: np.ndarray
    groups: np.ndarray

    # ------------------------------------------------------------------ layout
    @cached_property
    def group_index(self) -> np.ndarray:
        """``[1+J]`` group number (0..G−1) of each option."""
        return np.unique(self.groups, return_inverse=True)[1].reshape(-1)

    @cached_property
    def n_groups(self) -> int:
        return int(self.group_index.max()) + 1

    @cached_property
    def option_nests(self) -> np.ndarray:
        """``[1+J]`` nest of each option, the outside option in nest H (its own)."""
        return np.concatenate([[self.rho.size], self.codes])

    @cached_property
    def rho_extended(self) -> np.ndarray:
        """``[H+1]`` ρ per nest, 0 for the outside option's."""
        return np.append(self.rho, 0.0)

    @cached_property
    def cells(self) -> np.ndarray:
        """``[1+J]`` flat (group, nest) cell of each option."""
        return self.group_index * (self.rho.size + 1) + self.option_nests

    @cached_property
    def kept_cells(self) -> np.ndarray:
        """``[1+J, G·(H+1)]``: 1 where the option is in the cell's nest but not its group."""
        n_nests = self.rho.size + 1
        of_nest = np.tile(_one_hot(self.option_nests, n_nests), (1, self.n_groups))
        removed = _one_hot(self.cells, self.n_groups * n_nests)
        return of_nest - removed

    @cached_property
    def group_one_hot(self) -> np.ndarray:
        """``[1+J, G]`` group membership."""
        return _one_hot(self.group_index, self.n_groups)

    @cached_property
    def same_group(self) -> np.ndarray:
        """``[1+J, 1+J]`` 1.0 where two options are removed together."""
        return (self.group_index[:, None] == self.group_index[None, :]).astype(np.float64)

    @cached_property
    def cell_positions(self) -> np.ndarray:
        """``[1+J]`` position of each option's cell among the touched cells."""
        return np.searchsorted(np.unique(self.cells), self.cells)

    # ------------------------------------------------------------------ shares
    @cached_property
    def _within(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Within-nest shares w ``[I, 1+J]`` (1 for the outside option), w log w, and nest
        shares ``[I, H+1]`` (the outside share last)."""
        n_nests = self.rho.size
        inside = self.first[:, 1:]
        one_hot = _one_hot(self.codes, n_nests)
        nest_shares = inside @ one_hot
        of_product = nest_shares @ one_hot.T
        within = np.ones_like(self.first)
        with np.errstate(divide="ignore", invalid="ignore"):
            within[:, 1:] = np.where(of_product > 0, inside / of_product, 0.0)
            positive = within > 0
            entropy = np.where(positive, within * np.log(np.where(positive, within, 1.0)), 0.0)
        nests = np.concatenate([nest_shares, self.first[:, :1]], axis=1)
        return within, entropy, nests

    @cached_property
    def group_shares(self) -> tuple[np.ndarray, np.ndarray]:
        """r_a = s_a / S_g(a) and 1 / S_g(a) ``[I, 1+J]`` (0 where S_g(a) = 0)."""
        group_share = self.first @ self.same_group
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = np.where(group_share > 0, 1.0 / group_share, 0.0)
        return self.first * inverse, inverse

    @cached_property
    def factors(self) -> dict[str, np.ndarray]:
        """Per (agent, group) ``[I, G]``: ``log_lambda`` log λ_g, ``raw_excess`` λ_g − 1,
        ``group_excess`` the same clipped at 0 (Λ − 1 off the touched cells of nonempty
        nests) and ``group_slope`` (λ_g ≥ 1: Λ has a slope there); ``nonempty`` ``[H+1]``
        nests with options; per (agent, nest) ``entropy`` c_h = Σ_(k∈h) w_k log w_k and
        ``nests`` the nest shares; ``[I, C]`` on the touched cells ``touched`` (the flat
        (group, nest) cells of the options; elsewhere ω = 0, ω̄ = 1): ``touched_excess`` Λ − 1 (0 and
        ``touched_slope`` False where h has nothing left or Λ < 1),
        ``touched_removed_over_kept`` ω/ω̄, ``touched_log_kept`` log ω̄, ``touched_kept_power``
        ω̄^(1−ρ), ``touched_kept_mean`` Σ_(k∈h∖g) w_k log w_k / ω̄ and ``touched_available``.

        A group touches at most the nests of its options: elsewhere ω = 0 and ω̄ = 1 exactly
        (log ω̄ = 0, Λ = λ_g), so the logarithms and exponentials run on the touched cells
        only (1+J of the G·(H+1)).
        """
        within, entropy, nests = self._within
        n_agents, n_nests = self.first.shape[0], self.rho.size + 1
        shape = (n_agents, self.n_groups, n_nests)
        touched = np.unique(self.cells)
        touched_nests = touched % n_nests
        cell_group = _one_hot(touched // n_nests, self.n_groups)  # [C, G]
        kept = within @ self.kept_cells[:, touched]  # [I, C]
        removed = within @ _one_hot(self.cells, shape[1] * n_nests)[:, touched]
        kept_entropy = entropy @ self.kept_cells[:, touched]
        available = kept > 0
        entropy_by_nest = np.concatenate(
            [entropy[:, 1:] @ _one_hot(self.codes, self.rho.size), np.zeros((n_agents, 1))],
            axis=1,
        )
        nonempty = np.append(_one_hot(self.codes, self.rho.size).any(axis=0), True)
        untouched = (1.0 - cell_group.T @ _one_hot(touched_nests, n_nests)) * nonempty  # [G, H+1]
        scale = 1.0 - self.rho_extended[touched_nests]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_kept = np.where(
                removed < 0.5, np.log1p(-removed), np.log(np.where(available, kept, 1.0))
            )
            log_kept = np.where(available, log_kept, -np.inf)
            power = np.exp(scale * log_kept)
            # D(−g)/D as the sum of what is left, and 1 − D(−g)/D as the sum of what is lost.
            left = nests @ untouched.T + (nests[:, touched_nests] * power) @ cell_group
            lost = (nests[:, touched_nests] * -np.expm1(scale * log_kept)) @ cell_group
            log_lambda = np.where(lost < 0.5, -np.log1p(-lost), -np.log(left))
            log_kept = np.where(available, log_kept, 0.0)
            touched_excess = np.expm1(
                log_lambda[:, touched // n_nests] - self.rho_extended[touched_nests] * log_kept
            )
            kept_mean = np.where(available, kept_entropy / kept, 0.0)
            removed_over_kept = np.where(available, removed / kept, 0.0)

        touched_slope = available & (touched_excess >= 0)  # Λ < 1 only for ρ < 0: no slope
        with np.errstate(invalid="ignore"):
            raw_excess = np.expm1(log_lambda)
            group_slope = raw_excess >= 0
            group_excess = np.where(group_slope, raw_excess, 0.0)
        return {
            "touched": touched,
            "touched_kept_power": np.where(available, power, 0.0),
            "touched_removed_over_kept": removed_over_kept,
            "touched_excess": np.where(touched_slope, touched_excess, 0.0),
            "touched_slope": touched_slope,
            "touched_log_kept": log_kept,
            "touched_kept_mean": kept_mean,
            "touched_available": available,
            "group_excess": group_excess,
            "group_slope": group_slope,
            "log_lambda": log_lambda,
            "raw_excess": raw_excess,
            "nonempty": nonempty,
            "entropy": entropy_by_nest,
            "nests": nests,
        }

    @cached_property
    def full_factors(self) -> dict[str, np.ndarray]:
        """Per (agent, group, nest) ``[I, G, H+1]``: ``excess`` Λ − 1 and ``factor`` Λ (0
        and 1 where h has nothing left or Λ < 1) and ``slope`` (1.0 where Λ has a slope),
        from :attr:`factors` (Λ = λ_g off the touched cells). Only general removed groups
        and :attr:`pairs` need these; singletons contract on the touched cells alone."""
        factors = self.factors
        n_agents, n_nests = self.first.shape[0], self.rho.size + 1
        shape = (n_agents, self.n_groups, n_nests)
        touched = factors["touched"]

        def full(default: np.ndarray, values: np.ndarray) -> np.ndarray:
            out = np.array(np.broadcast_to(default, shape)).reshape(n_agents, -1)
            out[:, touched] = values
            return out.reshape(shape)

        nonempty = factors["nonempty"]
        group_slope = factors["group_slope"][:, :, None] & nonempty
        slope = full(group_slope, factors["touched_slope"])
        group_excess = np.where(nonempty, factors["group_excess"][:, :, None], 0.0)
        excess = full(group_excess, factors["touched_excess"])
        return {"excess": excess, "factor": 1.0 + excess, "slope": slope.astype(np.float64)}

    @cached_property
    def by_first_choice(self) -> np.ndarray:
        """``[I, a, H+1]`` r_a (Λ_g(a)h − 1): the pair probability of (a, b) over s_b, by the
        nest h of b."""
        ratio, _ = self.group_shares
        return ratio[:, :, None] * self.full_factors["excess"][:, self.group_index]

    @cached_property
    def pairs(self) -> np.ndarray:
        """``[I, 1+J, 1+J]`` P(first a, second b) = s_b r_a (Λ_g(a)h(b) − 1), 0 within a
        removed group."""
        pairs = self.by_first_choice[:, :, self.option_nests]
        pairs *= self.first[:, None, :]
        pairs *= 1.0 - self.same_group
        return pairs

    # ------------------------------------------------------------------ tangents
    def contract_all(
        self,
        weighted: np.ndarray,
        d_first: np.ndarray,
        tangents: np.ndarray,
        rho_tangents: tuple[tuple[int, np.ndarray], ...],
    ) -> tuple[np.ndarray, np.ndarray]:
        """``([n], [n, P])``: Σ_iab W_n[i,a,b] pair[i,a,b] and its θ-tangents, for weights
        ``[n, I·(1+J)·(1+J)]`` that are zero within a removed group (the micro block zeroes
        them), first-choice tangents ``d_first`` ``[P, I, 1+J]``, utility tangents ``[P, I, J]``
        and the free ρ (position, nests scaled) of ``rho_tangents``.

        d pair = (Λ − 1)(r_a ds_b + s_b dr_a) + s_b r_a dΛ: the first two contract the weights
        with r_a (Λ − 1) and with s_b by nest (Z_ah = Σ_(b∈h) W_ab s_b); the last is a sum of
        T_gh d log Λ_gh with T_gh = Λ_gh Σ_(a∈g) r_a Z_ah, and d log Λ_gh = d log D −
        d log D(−g) + ρ_h d(log S_h − log S_h(−g)) (+ the ρ_h-derivative of ρ_h).
        """
        n_rows = weighted.shape[0]
        n_agents, size = self.first.shape
        n_nests = self.rho.size + 1
        grid = pair_weights(weighted, n_agents, size)
        ratio, inverse = self.group_shares
        if self.singletons:
            values, on_first, group_totals, on_touched = self._singleton_sums(grid)
        else:
            full = self.full_factors
            excess_of_first = full["excess"][:, self.group_index]  # [I, a, h]
            # Coefficient of ds_b from (Λ − 1) r_a ds_b: Σ_a r_a (Λ_g(a)h − 1) W_ab for every
            # nest h (one product per agent from the left), then h = h(b). The weights are zero
            # within a removed group, where the pair has no slope.
            by_second_nest = grid.left(np.swapaxes(self.by_first_choice, 1, 2))
            on_second = by_second_nest[:, :, self.option_nests, np.arange(size)]
            # Z_ah = Σ_(b∈h) W_ab s_b: one product per agent from the right.
            by_nest = grid.right(self.first[:, :, None] * _one_hot(self.option_nests, n_nests))
            on_ratio = np.einsum("niah,iah->nia", by_nest, excess_of_first)  # Σ_b W s_b (Λ − 1)
            values = (on_ratio * ratio).sum(axis=(1, 2))
            # dr_a = ds_a / S_g − s_a dS_g / S_g².
            on_first = (
                on_second + on_ratio * inverse - (on_ratio * ratio * inverse) @ self.same_group
            )
            # T_gh = Λ_gh Σ_(a∈g) r_a Z_ah (zero where Λ has no slope); sum the first choices
            # of each group: one product over the a axis moved first.
            moved = np.moveaxis(by_nest * ratio[None, :, :, None], 2, 0).reshape(size, -1)
            by_group = np.moveaxis(
                (self.group_one_hot.T @ moved).reshape(self.n_groups, n_rows, n_agents, n_nests),
                0,
                2,
            )
            weights = by_group * (full["factor"] * full["slope"])
            group_totals = weights @ np.ones(n_nests)  # T_g
            on_touched = weights.reshape(n_rows, n_agents, -1)[:, :, self.factors["touched"]]
        result = on_first.reshape(n_rows, -1) @ d_first.reshape(d_first.shape[0], -1).T
        result += self._on_utilities(group_totals, on_touched, tangents)
        for position, scaled_nests in rho_tangents:
            result[:, position] += self._on_rho(group_totals, on_touched, scaled_nests)
        return values, result

    @cached_property
    def singletons(self) -> bool:
        """Each option removed alone (groups ``arange(1+J)`` up to labels)."""
        size = self.first.shape[1]
        return self.n_groups == size and bool(np.array_equal(self.group_index, np.arange(size)))

    @cached_property
    def same_nest(self) -> np.ndarray:
        """``[1+J, 1+J]`` 1.0 where two options share a nest (the outside option its own)."""
        return (self.option_nests[:, None] == self.option_nests[None, :]).astype(np.float64)

    def _split_sums(self, grid: Any) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        """Singleton groups: the weights split by whether b is in a's nest (``same``,
        ``other``), and Σ_b W_ab s_b over each part ``[n, I, a]``."""
        same = grid.masked(self.same_nest)
        other = grid.masked(1.0 - self.same_nest)
        column = self.first[:, :, None]
        return same, other, same.right(column)[..., 0], other.right(column)[..., 0]

    def values(self, weighted: Any) -> np.ndarray:
        """``[n]`` Σ_iab W_n[i,a,b] pair[i,a,b] (no tangents; :attr:`pairs` never formed with
        each option removed alone)."""
        n_agents, size = self.first.shape
        grid = pair_weights(weighted, n_agents, size)
        if not self.singletons:
            return grid.sums(self.pairs)
        ratio, _ = self.group_shares
        factors = self.factors
        _, _, on_same, on_other = self._split_sums(grid)
        on_ratio = factors["group_excess"] * on_other + factors["touched_excess"] * on_same
        return (on_ratio * ratio).sum(axis=(1, 2))

    def _singleton_sums(self, grid: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`contract_all`'s sums when each option is removed alone: ``[n]`` values, the
        coefficients of ds ``[n, I, 1+J]``, T_g ``[n, I, G]`` and T on the touched cells
        ``[n, I, C]``.

        Group g = a touches only the cell (a, h(a)) (cell number a): Λ_ah − 1 is λ_a − 1 = ē_a
        for h ≠ h(a) and the touched E_a for h = h(a). So with Z̄_a = Σ_(b∉h(a)) W_ab s_b and
        Z_a = Σ_(b∈h(a)) W_ab s_b every [n, I, a, H+1] sum reduces to [n, I, a] ones, and each
        is one [1+J, 1+J] product per weight row with the weights split by nest."""
        ratio, inverse = self.group_shares
        factors = self.factors
        group_excess, touched_excess = factors["group_excess"], factors["touched_excess"]
        same, other, on_same, on_other = self._split_sums(grid)
        on_ratio = group_excess * on_other + touched_excess * on_same  # Σ_b W s_b (Λ − 1)
        values = (on_ratio * ratio).sum(axis=(1, 2))
        # Σ_a r_a (Λ_a,h(b) − 1) W_ab, then dr_a = ds_a / s_a − s_a ds_a / s_a² (r_a = 1).
        on_first = other.left((ratio * group_excess)[:, None, :])[:, :, 0]
        on_first += same.left((ratio * touched_excess)[:, None, :])[:, :, 0]
        on_first += on_ratio * inverse - on_ratio * ratio * inverse
        # T_a = r_a Σ_h Λ_ah Z_ah (Λ where it has a slope, else 0).
        group_factor = np.where(factors["group_slope"], 1.0 + group_excess, 0.0)
        touched_factor = np.where(factors["touched_slope"], 1.0 + touched_excess, 0.0)
        on_touched = ratio * touched_factor * on_same
        group_totals = ratio * group_factor * on_other + on_touched
        return values, on_first, group_totals, on_touched

    def _on_utilities(
        self, by_group: np.ndarray, on_touched: np.ndarray, tangents: np.ndarray
    ) -> np.ndarray:
        """``[n, P]`` Σ_gh T_gh d log Λ_gh through the utilities (T_g = Σ_h T_gh ``by_group``
        ``[n, I, G]`` and T on the touched cells ``on_touched`` ``[n, I, C]``): on dV_k,
        s_k (T_g(k) − Σ_(g≠g(k)) T_g (Λ_gh(k) − 1)) + w_k ρ/(1 − ρ)
        (T_g(k)h(k) − Σ_(g≠g(k)) T_gh(k) ω_gh(k)/ω̄_gh(k))."""
        factors = self.factors
        n_rows = by_group.shape[0]
        within, _, _ = self._within
        # Sums over g ≠ g(k) of the cells (g, h(k)), k's nest nonempty. Off the touched cells
        # (those of some option) Λ_gh − 1 is the group's λ_g − 1 (ē_g, clipped at zero) and
        # ω_gh = 0, so Σ_(g≠g(k)) T_g (Λ_gh(k) − 1) = Σ_g T_g ē_g − T_g(k) ē_g(k) + Σ over the
        # touched cells c of h(k) but k's own of T_g(c) (Λ_c − 1 − ē_g(c)): [n, I, G] and
        # [n, I, 1+J] products instead of [n, I, G, H+1] ones.
        touched = factors["touched"]
        touched_groups = touched // (self.rho.size + 1)
        others = self.kept_cells[:, touched].T  # [C, 1+J]
        group_excess = factors["group_excess"]  # [I, G]
        spread = by_group * group_excess
        correction = by_group[:, :, touched_groups] * (
            factors["touched_excess"] - group_excess[:, touched_groups]
        )
        lost = spread.sum(axis=2)[:, :, None] - spread[:, :, self.group_index] + correction @ others
        # ω/ω̄ is zero off the touched cells.
        shrunk = (on_touched * factors["touched_removed_over_kept"]) @ others
        nested = (self.rho_extended / (1.0 - self.rho_extended))[self.option_nests]
        on_utilities = self.first * (by_group[:, :, self.group_index] - lost)
        on_utilities += within * nested * (on_touched[:, :, self.cell_positions] - shrunk)
        inside = np.ascontiguousarray(on_utilities[:, :, 1:]).reshape(n_rows, -1)
        return inside @ tangents.reshape(tangents.shape[0], -1).T

    def _on_rho(
        self, by_group: np.ndarray, on_touched: np.ndarray, scaled_nests: np.ndarray
    ) -> np.ndarray:
        """``[n]`` Σ_gh T_gh ∂log Λ_gh/∂ρ for a ρ scaling the nests ``scaled_nests`` ``[H]``
        (the utilities held fixed)."""
        factors = self.factors
        member = np.append(scaled_nests.astype(np.float64), 0.0)  # [H+1]
        rho = self.rho_extended
        nests, entropy = factors["nests"], factors["entropy"]
        touched = factors["touched"]
        touched_nests = touched % rho.size
        log_kept, kept_mean = factors["touched_log_kept"], factors["touched_kept_mean"]
        # ∂log D/∂ρ = Σ_h∈G s_h c_h; ∂log D(−g)/∂ρ = Σ_h∈G s_h(−g) c_h(−g) with
        # s_h(−g) = s_h ω̄^(1−ρ) λ_g and c_h(−g) = Σ_(k∈h∖g) w_k log w_k / ω̄ − log ω̄. Off the
        # touched cells ω̄ = 1 and c_h(−g) = c_h, so ∂log D(−g)/∂ρ is λ_g times ∂log D/∂ρ plus
        # a correction from g's touched cells c (whose s_h(c) c_h(c) the first term counts).
        full = (nests * entropy) @ member  # [I]
        correction = (member[touched_nests] * nests[:, touched_nests]) * (
            factors["touched_kept_power"] * (kept_mean - log_kept) - entropy[:, touched_nests]
        )  # [I, C]
        cell_group = _one_hot(touched // rho.size, self.n_groups)  # [C, G]
        reduced = np.exp(factors["log_lambda"]) * (full[:, None] + correction @ cell_group)
        # ∂/∂ρ_h of ρ_h (log S_h − log S_h(−g)) = −log ω̄ + ρ/(1 − ρ)(c_h − c̄_gh), zero off
        # the touched cells (ω̄ = 1 and c̄_gh = c_h there).
        nested = (rho / (1.0 - rho))[touched_nests]
        own = member[touched_nests] * np.where(
            factors["touched_available"],
            -log_kept + nested * (entropy[:, touched_nests] - kept_mean),
            0.0,
        )  # [I, C]
        n_rows = by_group.shape[0]
        return by_group.reshape(n_rows, -1) @ (full[:, None] - reduced).reshape(
            -1
        ) + on_touched.reshape(n_rows, -1) @ own.reshape(-1)
