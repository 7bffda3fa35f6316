"""Numerical integration over agent heterogeneity.

An :class:`Integration` describes how to approximate expectations over standard normal taste
shocks: pseudo-random or quasi-random draws (``"monte_carlo"``, ``"halton"``, ``"lhs"``,
``"mlhs"``), a Gauss–Hermite tensor product (``"product"``) or a Smolyak sparse grid
(``"grid"``), and their nested analogues built on the Genz–Keister extensions of Gauss–Hermite
rules (``"nested_product"``, ``"nested_grid"``: the Heiss–Winschel sparse grids, pyblp's rules of
the same names). :func:`build_integration` lays the nodes and weights out as agent data: columns
``market_ids`` (optional), ``weights``, ``nodes0``, ``nodes1``, …, where node column ``k``
pairs with the k-th random-coefficient column.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.polynomial.hermite_e import hermegauss
from numpy.typing import ArrayLike
from scipy.special import ndtri
from scipy.stats import qmc

from blpmodels.data.design import warn_user
from blpmodels.exceptions import BLPInputError, IntegrationWarning

__all__ = ["KINDS", "Integration", "build_integration", "check_weights", "on_gauss_hermite_nodes"]

IntegrationKind = Literal[
    "monte_carlo", "halton", "lhs", "mlhs", "product", "grid", "nested_product", "nested_grid"
]

#: Valid integration kinds.
KINDS: tuple[str, ...] = (
    "monte_carlo",
    "halton",
    "lhs",
    "mlhs",
    "product",
    "grid",
    "nested_product",
    "nested_grid",
)

# Options each kind accepts, with their defaults.
_OPTIONS: dict[str, dict[str, Any]] = {
    "monte_carlo": {},
    "halton": {"scramble": True, "discard": 0},
    "lhs": {"scramble": True},
    "mlhs": {},
    "product": {},
    "grid": {},
    "nested_product": {},
    "nested_grid": {},
}

# Uniform draws are kept inside [_LOW, _HIGH] so that the normal inverse CDF stays finite.
_LOW = np.finfo(np.float64).tiny
_HIGH = 1.0 - np.finfo(np.float64).epsneg

# Tolerance for per-market weight sums.
_WEIGHT_TOLERANCE = 1e-8


def _check_int(value: Any, name: str, minimum: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer ≥ ``minimum``, else raise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise BLPInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise BLPInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Integration:
    """Configuration of a numerical integration rule for N(0, I) taste shocks.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`. ``"monte_carlo"``: pseudo-random standard normal draws.
        ``"halton"``: scrambled Halton sequence. ``"lhs"``: Latin hypercube sample.
        ``"mlhs"``: modified Latin hypercube sample (Hess, Train & Polak, 2006).
        ``"product"``: Gauss–Hermite tensor product. ``"grid"``: Smolyak sparse grid of
        Gauss–Hermite rules. ``"nested_grid"``: the Heiss–Winschel (2008) sparse grid of
        nested rules (their "KPN"; pyblp's ``Integration('nested_grid', size)``), whose
        one-dimensional rules are the Genz–Keister (1996) extensions of Gauss–Hermite rules:
        each level keeps the nodes of the one before, so the grid reuses them and needs fewer
        nodes than ``"grid"`` for the same accuracy from level 4 on in several dimensions.
        ``"nested_product"``: the tensor product of one nested rule. Weights of the grids,
        and of nested rules from level 9 on, can be negative. The sampling kinds map uniforms
        to normals with the normal inverse CDF and give each node weight ``1/size``.
    size : int
        Draws per market for the sampling kinds, nodes per dimension for ``"product"``, and
        the accuracy level for ``"grid"``, ``"nested_grid"`` and ``"nested_product"`` (exact
        for polynomials of total degree ``2*size - 1``; nested rules are tabulated up to
        level 25).
    seed : int, optional
        Seed of the random generator (ignored by ``"product"`` and ``"grid"``); ``None``
        draws fresh entropy.
    options : mapping, optional
        Kind-specific options. ``"halton"``: ``scramble`` (bool, default True) and
        ``discard`` (int, leading points skipped, default 0). ``"lhs"``: ``scramble``
        (bool, default True; False centers the points in their strata).

    Raises
    ------
    BLPInputError
        Unknown kind, non-positive or non-integer ``size``, a bad ``seed`` or an unknown or
        badly typed option.

    Examples
    --------
    >>> from blpmodels.data.integration import Integration
    >>> nodes, weights = Integration("product", 3).build(2)
    >>> nodes.shape, float(weights.sum())
    ((9, 2), 1.0)
    """

    kind: IntegrationKind
    size: int
    seed: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise BLPInputError(
                f"kind must be one of {', '.join(repr(k) for k in KINDS)}; got {self.kind!r}"
            )
        object.__setattr__(self, "size", _check_int(self.size, "size", 1))
        if self.seed is not None:
            object.__setattr__(self, "seed", _check_int(self.seed, "seed", 0))
        if not isinstance(self.options, Mapping):
            raise BLPInputError(f"options must be a mapping, got {type(self.options).__name__}")
        allowed = _OPTIONS[self.kind]
        unknown = sorted(str(key) for key in self.options if key not in allowed)
        if unknown:
            valid = ", ".join(repr(key) for key in allowed) or "none"
            raise BLPInputError(
                f"options {unknown} are not valid for kind {self.kind!r} (valid options: {valid})"
            )
        resolved = {**allowed, **self.options}
        for key in ("scramble",):
            if key in resolved and not isinstance(resolved[key], (bool, np.bool_)):
                raise BLPInputError(f"option {key!r} must be a bool, got {resolved[key]!r}")
        if "discard" in resolved:
            resolved["discard"] = _check_int(resolved["discard"], "option 'discard'", 0)
        if self.kind.startswith("nested") and self.size > MAX_NESTED_LEVEL:
            raise BLPInputError(
                f"{self.kind!r} rules are tabulated up to level {MAX_NESTED_LEVEL} (exact for "
                f"degree {2 * MAX_NESTED_LEVEL - 1}); got size={self.size}"
            )
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "_resolved", MappingProxyType(resolved))

    def build(self, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
        """Nodes and weights for one market.

        Parameters
        ----------
        dimensions : int
            Number of random coefficients (node columns), at least 1.

        Returns
        -------
        nodes : numpy.ndarray
            ``(n, dimensions)`` nodes.
        weights : numpy.ndarray
            ``(n,)`` weights summing to one (sparse-grid weights may be negative).

        Raises
        ------
        BLPInputError
            ``dimensions`` is not a positive integer.

        Examples
        --------
        >>> from blpmodels.data.integration import Integration
        >>> nodes, weights = Integration("monte_carlo", 4, seed=0).build(3)
        >>> nodes.shape, weights.tolist()
        ((4, 3), [0.25, 0.25, 0.25, 0.25])
        """
        dimensions = _check_int(dimensions, "dimensions", 1)
        nodes, weights = self._build(dimensions, 1)
        return nodes[0], weights

    def _build(self, dimensions: int, n_markets: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n_markets, n, dimensions)`` nodes and ``(n,)`` weights shared by all markets."""
        size = self.size
        options = self._resolved  # type: ignore[attr-defined]
        _check_rule_size(self.kind, size, dimensions, n_markets)
        if self.kind == "product":
            nodes, weights = _product_rule(size, dimensions)
            return np.broadcast_to(nodes, (n_markets, *nodes.shape)), weights
        if self.kind == "grid":
            nodes, weights = _sparse_grid(size, dimensions)
            return np.broadcast_to(nodes, (n_markets, *nodes.shape)), weights
        if self.kind == "nested_product":
            nodes, weights = _tensor([_nested_rule(size)] * dimensions)
            return np.broadcast_to(nodes, (n_markets, *nodes.shape)), weights
        if self.kind == "nested_grid":
            nodes, weights = _sparse_grid(size, dimensions, _nested_rule)
            return np.broadcast_to(nodes, (n_markets, *nodes.shape)), weights
        rng = np.random.default_rng(self.seed)
        weights = np.full(size, 1.0 / size)
        if self.kind == "monte_carlo":
            return rng.standard_normal((n_markets, size, dimensions)), weights
        if self.kind == "halton":
            engine = _qmc_engine(qmc.Halton, dimensions, rng, scramble=options["scramble"])
            if options["discard"]:
                engine.fast_forward(options["discard"])
            uniforms = engine.random(n_markets * size).reshape(n_markets, size, dimensions)
        elif self.kind == "lhs":
            # One design in n_markets * dimensions columns: every column is an independent
            # stratified permutation, so each market gets its own independent design.
            engine = _qmc_engine(
                qmc.LatinHypercube, n_markets * dimensions, rng, scramble=options["scramble"]
            )
            uniforms = engine.random(size).reshape(size, n_markets, dimensions).transpose(1, 0, 2)
        else:  # mlhs
            shifts = rng.random((n_markets, 1, dimensions))
            grid = (np.arange(size, dtype=np.float64)[None, :, None] + shifts) / size
            uniforms = rng.permuted(grid, axis=1)
        return ndtri(np.clip(uniforms, _LOW, _HIGH)), weights


def _rule_bytes(kind: str, size: int, dimensions: int, n_markets: int) -> tuple[int, int]:
    """Agents per market and the bytes a rule needs, estimated before anything is allocated.

    Gauss–Hermite rules solve a ``size × size`` eigenproblem (numpy keeps about three such
    matrices); a product rule's nodes and weights take a few ``(agents, dimensions + 1)``
    arrays, and the agent data built from them ``dimensions + 2`` columns per agent and market.
    Sparse grids are counted by their Gauss–Hermite rules only (their node count needs the
    grid itself).
    """
    if kind in ("grid", "nested_grid"):
        return 0, 8 * 3 * size**2
    if kind in ("product", "nested_product"):
        # A nested rule puts 0 and ± each of its positive nodes.
        points = size if kind == "product" else 2 * len(_nested_abscissae(size)) + 1
        agents = points**dimensions
        rule = 3 * size**2 + 3 * (dimensions + 1) * agents
        return agents, 8 * (rule + n_markets * agents * (dimensions + 2))
    return size, 8 * n_markets * size * (2 * dimensions + 2)


def _physical_memory() -> int:
    """Bytes of memory of this machine (1 TiB where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 2**40


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} PiB"  # pragma: no cover - the loop returns


def _check_rule_size(kind: str, size: int, dimensions: int, n_markets: int) -> None:
    """Refuse a rule that cannot fit in memory, before numpy tries (a MemoryError of TiB)."""
    agents, needed = _rule_bytes(kind, size, dimensions, n_markets)
    available = _physical_memory()
    if needed <= available:
        return
    if kind == "product":
        what = (
            f"the product rule with {size} nodes per dimension in {dimensions} dimension(s) "
            f"({agents:.3g} agents per market, {n_markets} market(s))"
        )
        advice = (
            "use fewer nodes per dimension (n nodes are exact for polynomials of degree 2n - 1 "
            "in each dimension; 5 to 10 is usual), Integration('grid', level) in several "
            "dimensions, or a sampling rule such as Integration('halton', 1000)"
        )
    elif kind == "nested_product":
        what = (
            f"the nested product rule of level {size} in {dimensions} dimension(s) "
            f"({agents:.3g} agents per market, {n_markets} market(s))"
        )
        advice = "use a lower level, or Integration('nested_grid', level) in several dimensions"
    elif kind in ("grid", "nested_grid"):
        what = f"the sparse grid of level {size} (one-dimensional rules of level up to {size})"
        advice = "use fewer nodes: a lower level (2 to 7 is usual)"
    else:
        what = f"{size} {kind} draws in {dimensions} dimension(s) for {n_markets} market(s)"
        advice = "use fewer draws per market (quasi-random 'halton' draws need fewer)"
    raise BLPInputError(
        f"{what} needs about {_size(needed)}, more than this machine's "
        f"{_size(available)} of memory: {advice}"
    )


def _qmc_engine(
    engine: type[qmc.QMCEngine], dimensions: int, rng: np.random.Generator, **kwargs: Any
) -> qmc.QMCEngine:
    """Construct a scipy QMC engine seeded with ``rng`` (``rng=`` on new scipy, else ``seed=``)."""
    keyword = "rng" if "rng" in inspect.signature(engine).parameters else "seed"
    return engine(dimensions, **{keyword: rng}, **kwargs)


@functools.lru_cache(maxsize=64)
def _hermite_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n``-point Gauss–Hermite rule for N(0, 1), symmetrized, weights summing to one."""
    nodes, weights = hermegauss(n)
    # Exact symmetry makes the middle node exactly 0 so that nodes shared by rules merge.
    nodes = (nodes - nodes[::-1]) / 2.0
    weights = (weights + weights[::-1]) / 2.0
    weights = weights / weights.sum()
    nodes.flags.writeable = False
    weights.flags.writeable = False
    return nodes, weights


#: The positive nodes of the nested rules for N(0, 1), each with the first level whose rule
#: holds it: the Genz–Keister (1996) extensions of Gauss–Hermite rules as Heiss and Winschel
#: tabulate them for their sparse grids ("KPN", nwspgr; pyblp copies the same table). A level's
#: rule puts 0 and ± every node up to it; its weights are derived from the nodes in
#: :func:`_nested_rule`.
_NESTED_NODES: tuple[tuple[float, int], ...] = (
    (0.24899229757996061, 16),
    (0.74109534999454085, 4),
    (1.2304236340273060, 9),
    (1.7320508075688772, 2),
    (2.2336260616769419, 16),
    (2.5960831150492023, 9),
    (2.8612795760570582, 5),
    (3.2053337944991944, 10),
    (3.6353185190372783, 16),
    (4.1849560176727323, 4),
    (4.7364330859522967, 18),
    (5.1870160399136562, 9),
    (5.6981777684881099, 17),
    (6.3633944943363696, 9),
    (7.1221067008046166, 16),
    (7.9807717985905606, 16),
    (9.0169397898903032, 16),
)
#: The highest level of the nested rules (the table's; exact for polynomials of degree 49).
MAX_NESTED_LEVEL = 25


def _nested_abscissae(level: int) -> tuple[float, ...]:
    """The positive nodes of the nested rule of ``level`` (0 is a node of every level)."""
    return tuple(node for node, first in _NESTED_NODES if first <= level)


@functools.lru_cache(maxsize=32)
def _nested_rule(level: int) -> tuple[np.ndarray, np.ndarray]:
    """The nested (Genz–Keister) rule of ``level`` for N(0, 1): nodes and weights.

    The weights are those of the interpolatory rule on 0 and ± the level's nodes: the unique
    symmetric weights that integrate 1, x², …, x^(2m) exactly (m positive nodes). With
    y = x² the conditions are a Vandermonde system in y; its solution is E[L_k(X²)] for the
    Lagrange polynomials L_k on the nodes' squares, computed here in exact rational arithmetic
    (the system is far too ill-conditioned for floating point at 35 nodes) and rounded once.
    Each rule integrates polynomials of degree 2·level − 1 exactly (more on most levels).
    """
    positive = _nested_abscissae(level)
    squares = [Fraction(0), *(Fraction(node) ** 2 for node in positive)]
    moments = [Fraction(math.prod(range(2 * k - 1, 0, -2))) for k in range(len(squares))]
    weights = []
    for k, y_k in enumerate(squares):
        # Coefficients of L_k(y) = Π_{i≠k} (y − y_i) / (y_k − y_i), lowest power first.
        coefficients = [Fraction(1)]
        for i, y_i in enumerate(squares):
            if i == k:
                continue
            scale = y_k - y_i
            shifted = [Fraction(0), *coefficients]
            coefficients = [
                (shifted[n] - y_i * (coefficients[n] if n < len(coefficients) else 0)) / scale
                for n in range(len(shifted))
            ]
        weights.append(sum(c * m for c, m in zip(coefficients, moments, strict=True)))
    # The weight of y_k = x² is shared by the nodes ±x.
    half = np.array([float(w / 2) for w in weights[1:]])
    nodes = np.concatenate([-np.array(positive[::-1]), [0.0], np.array(positive)])
    full = np.concatenate([half[::-1], [float(weights[0])], half])
    nodes.flags.writeable = False
    full.flags.writeable = False
    return nodes, full


#: Gauss–Hermite rules of up to this many points are recognized in agent data: a sparse grid of
#: level L combines rules of at most L points (levels 2 to 7 are usual).
_RECOGNIZED_RULES = 64

#: Relative distance within which a node counts as a Gauss–Hermite node (a CSV written with
#: 9 or more significant digits keeps it).
_NODE_TOLERANCE = 1e-8


@functools.lru_cache(maxsize=1)
def _hermite_abscissae() -> np.ndarray:
    """Sorted nodes of the Gauss–Hermite rules with 1 to :data:`_RECOGNIZED_RULES` points and
    of the nested rules."""
    nested = np.array([node for node, _ in _NESTED_NODES])
    rules = [_hermite_rule(n)[0] for n in range(1, _RECOGNIZED_RULES + 1)]
    return np.unique(np.concatenate([*rules, nested, -nested]))


def on_gauss_hermite_nodes(nodes: ArrayLike) -> np.ndarray:
    """Which rows of ``nodes`` lie on Gauss–Hermite nodes in every coordinate.

    Sparse grids (``Integration("grid", level)``) and product rules place every coordinate of
    every node on the nodes of a one-dimensional Gauss–Hermite rule, and the nested rules
    (``"nested_grid"``, ``"nested_product"``) on those of a nested Genz–Keister rule, which
    count too; Monte Carlo and quasi-random draws essentially never do. Agent data use this to
    tell a sparse grid's negative weights, which are part of the rule, from negative weights
    that are an error.

    Parameters
    ----------
    nodes : array-like
        ``(n, dimensions)`` nodes (rows of agent data's node columns).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` booleans: each coordinate is within 1e-8 (relative, 1e-8 absolute near zero)
        of a node of a Gauss–Hermite rule with at most 64 points or of a nested rule. Rows of
        zero columns are False (no node says where they come from).

    Examples
    --------
    >>> from blpmodels.data.integration import Integration, on_gauss_hermite_nodes
    >>> grid, weights = Integration("grid", 3).build(2)
    >>> bool((weights < 0).any()), bool(on_gauss_hermite_nodes(grid).all())
    (True, True)
    >>> draws, _ = Integration("monte_carlo", 5, seed=0).build(2)
    >>> on_gauss_hermite_nodes(draws).tolist()
    [False, False, False, False, False]
    """
    values = np.asarray(nodes, dtype=np.float64)
    if values.ndim != 2:
        raise BLPInputError(f"nodes must be a two-dimensional array, got shape {values.shape}")
    if values.shape[1] == 0:
        return np.zeros(values.shape[0], dtype=bool)
    abscissae = _hermite_abscissae()
    right = np.clip(np.searchsorted(abscissae, values), 1, abscissae.size - 1)
    nearest = np.minimum(np.abs(values - abscissae[right - 1]), np.abs(values - abscissae[right]))
    with np.errstate(invalid="ignore"):
        close = nearest <= _NODE_TOLERANCE * np.maximum(1.0, np.abs(values))
    return close.all(axis=1)


def _tensor(rules: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Tensor product of univariate rules: ``(prod n_j, d)`` nodes and their weights."""
    node_axes = np.meshgrid(*(nodes for nodes, _ in rules), indexing="ij")
    weight_axes = np.meshgrid(*(weights for _, weights in rules), indexing="ij")
    nodes = np.stack([axis.ravel() for axis in node_axes], axis=1)
    weights = np.prod(np.stack([axis.ravel() for axis in weight_axes], axis=1), axis=1)
    return nodes, weights


def _product_rule(size: int, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite tensor product with ``size`` nodes in each dimension."""
    return _tensor([_hermite_rule(size)] * dimensions)


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All tuples of ``parts`` positive integers summing to ``total``."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(bounds[j + 1] - bounds[j] for j in range(parts))


def _sparse_grid(
    level: int,
    dimensions: int,
    rule: Callable[[int], tuple[np.ndarray, np.ndarray]] = _hermite_rule,
) -> tuple[np.ndarray, np.ndarray]:
    """Smolyak combination of one-dimensional rules, exact for total degree ``2*level - 1``.

    The rule is ``Σ (-1)^(L+d-1-|i|) C(d-1, L+d-1-|i|) ⊗_j U_{i_j}`` over multi-indices
    ``i ≥ 1`` with ``max(d, L) ≤ |i| ≤ L+d-1``, where ``U_m = rule(m)``: the m-point
    Gauss–Hermite rule, or the nested rule of level m (Heiss and Winschel's grids). Nodes that
    several products share are merged by adding their weights.
    """
    top = level + dimensions - 1
    node_parts: list[np.ndarray] = []
    weight_parts: list[np.ndarray] = []
    for total in range(max(dimensions, level), top + 1):
        coefficient = (-1) ** (top - total) * math.comb(dimensions - 1, top - total)
        for index in _compositions(total, dimensions):
            nodes, weights = _tensor([rule(m) for m in index])
            node_parts.append(nodes)
            weight_parts.append(coefficient * weights)
    nodes = np.concatenate(node_parts) + 0.0  # + 0.0 turns -0.0 into 0.0
    weights = np.concatenate(weight_parts)
    unique, inverse = np.unique(nodes, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    merged = np.bincount(inverse, weights=weights, minlength=len(unique))
    # A merged weight is zero when its contributions cancel up to rounding.
    scale = np.bincount(inverse, weights=np.abs(weights), minlength=len(unique))
    keep = np.abs(merged) > 64 * np.finfo(np.float64).eps * scale
    return unique[keep], merged[keep]


def build_integration(
    integration: Integration, dimensions: int, market_ids: ArrayLike | None = None
) -> pd.DataFrame:
    """Lay out integration nodes and weights as agent data.

    Parameters
    ----------
    integration : Integration
        The integration rule.
    dimensions : int
        Number of node columns (random coefficients), at least 1.
    market_ids : array-like, optional
        Market ids (e.g. the product data's ``market_ids`` column); agents are built for each
        unique id in order of first appearance. Sampling kinds give markets distinct draws;
        ``"product"`` and ``"grid"`` repeat the same nodes in every market.

    Returns
    -------
    pandas.DataFrame
        Columns ``market_ids`` (only when ``market_ids`` is given), ``weights`` and
        ``nodes0`` … ``nodes{dimensions-1}``, one row per agent, markets in consecutive blocks.

    Raises
    ------
    BLPInputError
        ``integration`` is not an :class:`Integration`, ``dimensions`` is not a positive
        integer, or ``market_ids`` is empty, not one-dimensional or has missing values.

    Examples
    --------
    >>> from blpmodels.data.integration import Integration, build_integration
    >>> agents = build_integration(Integration("halton", 2, seed=1), 2, ["b", "a", "b"])
    >>> agents.columns.tolist()
    ['market_ids', 'weights', 'nodes0', 'nodes1']
    >>> agents["market_ids"].tolist()
    ['b', 'b', 'a', 'a']
    """
    if not isinstance(integration, Integration):
        raise BLPInputError(f"integration must be an Integration, got {type(integration).__name__}")
    dimensions = _check_int(dimensions, "dimensions", 1)
    if market_ids is None:
        labels = None
        n_markets = 1
    else:
        ids = pd.Series(market_ids) if np.ndim(market_ids) == 1 else None
        if ids is None:
            raise BLPInputError("market_ids must be one-dimensional")
        if ids.empty:
            raise BLPInputError("market_ids is empty")
        if ids.isna().any():
            raise BLPInputError(f"market_ids has {int(ids.isna().sum())} missing value(s)")
        labels = pd.Index(ids.unique())
        n_markets = len(labels)
    nodes, weights = integration._build(dimensions, n_markets)
    n_agents = weights.size
    columns: dict[str, Any] = {}
    if labels is not None:
        columns["market_ids"] = labels.repeat(n_agents)
    columns["weights"] = np.tile(weights, n_markets)
    flat = nodes.reshape(n_markets * n_agents, dimensions)
    for k in range(dimensions):
        columns[f"nodes{k}"] = np.array(flat[:, k], dtype=np.float64)
    return pd.DataFrame(columns)


def check_weights(weights: ArrayLike, market_ids: ArrayLike | None, kind: str | None) -> None:
    """Warn when integration weights do not sum to one in some markets.

    Parameters
    ----------
    weights : array-like
        One weight per agent.
    market_ids : array-like, optional
        The agents' markets; ``None`` treats all agents as one market.
    kind : str, optional
        Integration kind; sparse grids (``"grid"``, ``"nested_grid"``) are not checked.

    Warns
    -----
    IntegrationWarning
        Names the number of markets whose weights are more than 1e-8 from one and the
        first few of them.

    Raises
    ------
    BLPInputError
        ``weights`` and ``market_ids`` differ in length.

    Examples
    --------
    >>> import warnings
    >>> from blpmodels.data.integration import check_weights
    >>> check_weights([0.5, 0.5, 1.0], ["a", "a", "b"], "monte_carlo")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     check_weights([0.5, 0.4, 1.0], ["a", "a", "b"], "monte_carlo")
    >>> print(caught[0].message)
    agent weights do not sum to one in 1 market(s): ['a'] (first sum 0.9)
    """
    if kind in ("grid", "nested_grid"):
        return
    values = np.asarray(weights, dtype=np.float64).ravel()
    if market_ids is None:
        codes = np.zeros(values.size, dtype=np.intp)
        labels = np.array([None], dtype=object)
    else:
        ids = np.asarray(market_ids).ravel()
        if ids.size != values.size:
            raise BLPInputError(f"weights has {values.size} entries but market_ids has {ids.size}")
        codes, labels = pd.factorize(ids, sort=False, use_na_sentinel=False)
        labels = np.asarray(labels, dtype=object)
    totals = np.bincount(codes, weights=values, minlength=len(labels))
    off = ~(np.abs(totals - 1.0) <= _WEIGHT_TOLERANCE)
    if off.any():
        first = labels[off][:5].tolist()
        warn_user(
            f"agent weights do not sum to one in {int(off.sum())} market(s): {first} "
            f"(first sum {totals[off][0]:.6g})",
            IntegrationWarning,
        )
