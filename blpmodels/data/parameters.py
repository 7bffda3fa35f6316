"""Nonlinear parameters θ = (Σ, Π, ρ): starting values, which are free, bounds, names, and μ.

The field's conventions: Σ is the lower-triangular Cholesky root of the covariance of the
unobserved tastes ν (node column k pairs with random-coefficient column k); Π loads
demographics onto the random-coefficient columns; ρ is one nesting parameter or one per nest.
Entries that start at zero stay fixed at zero; every nonzero starting entry is estimated.

For agent i in market t the coefficient on random-coefficient column k is

    c_ik = Σ_l Σ_kl ν_il + Σ_d Π_kd d_id      (normal)
    c_ik = ±exp(Σ_l Σ_kl ν_il + Σ_d Π_kd d_id) (lognormal / negative_lognormal)

and μ_ji = Σ_k X2_jk c_ik.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from blpmodels.exceptions import BLPInputError

__all__ = ["NonlinearParameters", "RCType"]

RCType = Literal["normal", "lognormal", "negative_lognormal"]
_RC_TYPES = ("normal", "lognormal", "negative_lognormal")


def _real_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a float64 array; ragged nesting or text is blamed on ``name``."""
    try:
        array = np.asarray(value)
    except ValueError as error:  # numpy refuses ragged nested lists
        raise BLPInputError(
            f"{name} must be a rectangular array of numbers; its rows have different lengths: "
            f"{value!r}"
        ) from error
    if array.dtype.kind in "USO":
        # Strings would be parsed by numpy ("1" -> 1.0); objects may hide either.
        if array.dtype.kind != "O" or any(
            isinstance(item, (str, bytes)) for item in array.ravel().tolist()
        ):
            raise BLPInputError(f"{name} must hold numbers, got {value!r}")
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise BLPInputError(f"{name} must hold numbers, got {value!r}") from error
    if array.dtype.kind == "c":
        raise BLPInputError(f"{name} must hold real numbers, got {value!r}")
    return array.astype(np.float64)


def _as_matrix(
    value: Any,
    shape: tuple[int, int],
    name: str,
    rows: Sequence[Any] = (),
    columns: Sequence[Any] = (),
) -> np.ndarray:
    if value is None:
        return np.zeros(shape)
    array = _real_array(value, name)
    if array.ndim == 0:
        if array == 0 or shape == (1, 1) or not np.isfinite(array):
            array = np.full(shape, float(array))
        else:
            raise BLPInputError(
                f"{name} must be a {shape[0]}×{shape[1]} matrix; a nonzero scalar is only "
                "accepted when it is 1×1"
            )
    if array.ndim == 1 and shape[1] == 1 and array.size == shape[0]:
        array = array[:, None]
    if array.shape != shape:
        raise BLPInputError(f"{name} must be {shape[0]}×{shape[1]}, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        row, column = (int(k) for k in np.argwhere(bad)[0])
        entry = f"{name}[{rows[row]},{columns[column]}]" if rows and columns else name
        raise BLPInputError(
            f"{name} has non-finite starting values: {entry} is {array[row, column]} "
            "(starting values must be finite numbers)"
        )
    return array.copy()


def _bounds(
    bounds: Any,
    shape: tuple[int, int],
    name: str,
    lower: np.ndarray,
    upper: np.ndarray,
    rows: Sequence[Any] = (),
    columns: Sequence[Any] = (),
) -> tuple[np.ndarray, np.ndarray]:
    if bounds is None:
        return lower, upper
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise BLPInputError(f"{name}_bounds must be a pair (lower, upper)")
    try:
        low = np.broadcast_to(_real_array(bounds[0], f"{name}_bounds"), shape).copy()
        high = np.broadcast_to(_real_array(bounds[1], f"{name}_bounds"), shape).copy()
    except ValueError as error:
        if isinstance(error, BLPInputError):
            raise
        raise BLPInputError(
            f"{name}_bounds must be scalars or arrays of shape {shape[0]}×{shape[1]}"
        ) from error
    if np.isnan(low).any() or np.isnan(high).any():
        raise BLPInputError(f"{name}_bounds has NaN; use ±numpy.inf for no bound")
    inverted = low > high
    if inverted.any():
        row, column = (int(k) for k in np.argwhere(inverted)[0])
        entry = f"{name}[{rows[row]},{columns[column]}]" if rows and columns else name
        raise BLPInputError(
            f"{name}_bounds are inverted for {entry}: lower {low[row, column]:g} > upper "
            f"{high[row, column]:g}; {name}_bounds is a pair (lower, upper): swap them"
        )
    return low, high


def _sigma_start(sigma: Any, characteristics: Sequence[str]) -> np.ndarray:
    """Starting Σ, checked to be a lower-triangular K2×K2 matrix.

    A full K2×K2 matrix is accepted when its entries above the diagonal are zero (e.g.
    ``numpy.tril(numpy.ones((K2, K2)))``). Nonzero entries there are refused, naming each.
    pyblp silently zeroes them; here they are refused because no parameter sits there, and a
    matrix with entries above the diagonal is often another model than its lower triangle: a
    covariance matrix (whose root is its Cholesky factor) or an upper-triangular root Σ'
    (whose lower triangle is its transpose), and ``numpy.ones((K2, K2))`` meant as "every
    entry free" is the one case where dropping them is right, which ``numpy.tril`` says.
    """
    k2 = len(characteristics)
    sigma_start = _as_matrix(sigma, (k2, k2), "sigma", characteristics, characteristics)
    upper = np.triu(sigma_start, 1)
    if np.any(upper != 0):
        rows, columns = np.nonzero(upper)
        entries = [
            f"sigma[{characteristics[row]},{characteristics[column]}]"
            for row, column in zip(rows, columns, strict=True)
        ]
        shown = ", ".join(entries[:10]) + (
            f" and {len(entries) - 10} more" if len(entries) > 10 else ""
        )
        count = "a nonzero entry" if len(entries) == 1 else f"{len(entries)} nonzero entries"
        hint = (
            " sigma looks like a covariance matrix (symmetric, positive definite): if it is "
            "one, pass its Cholesky root numpy.linalg.cholesky(covariance) instead."
            if _positive_definite(sigma_start)
            else ""
        )
        raise BLPInputError(
            "sigma is the lower-triangular Cholesky root of the random coefficients' "
            f"covariance, as in pyblp, but it has {count} {shown} above the diagonal, where "
            "no parameter is. Drop them: sigma=numpy.tril(sigma) keeps the lower "
            f"triangle (numpy.tril(numpy.ones(({k2}, {k2}))) frees every entry of a full "
            "root; zeros stay fixed). pyblp drops them silently; blpmodels asks, because a "
            "matrix with entries there may be a covariance matrix or an upper-triangular "
            f"root, each another model than its lower triangle.{hint}"
        )
    return sigma_start


def _positive_definite(matrix: np.ndarray) -> bool:
    """Whether ``matrix`` is symmetric and positive definite (a covariance, not a root)."""
    if not np.allclose(matrix, matrix.T):
        return False
    try:
        np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        return False
    return True


#: The two ρ of two-level nests, in their order in θ (named ``rho_upper``, ``rho_lower``).
TWO_LEVEL_RHO = ("upper", "lower")


def _rho_start(rho: Any, nests: Sequence[Any]) -> np.ndarray:
    """Starting ρ: empty for unnested models, else one value or one per nest, in [0, 1)."""
    if rho is None:
        if nests:
            raise BLPInputError(
                "the model has nesting_ids: give a starting rho (one value, or one per nest)"
            )
        rho_start = np.zeros(0)
    else:
        if not nests:
            raise BLPInputError("rho was given but the product data have no nesting_ids")
        rho_start = np.atleast_1d(_real_array(rho, "rho")).ravel()
        if rho_start.size not in (1, len(nests)):
            raise BLPInputError(
                f"rho must have 1 value or one per nest ({len(nests)}), got {rho_start.size}"
            )
    # Written so that NaN fails too (every comparison with NaN is False).
    if not ((rho_start >= 0) & (rho_start < 1)).all():
        raise BLPInputError(f"rho must lie in [0, 1), got {rho_start.tolist()}")
    return rho_start


def _rho_bounds(rho_bounds: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ρ as ``(size, 1)`` arrays, default [0, 0.99], checked to lie within [0, 1)."""
    shape = (size, 1)
    lower, upper = _bounds(rho_bounds, shape, "rho", np.zeros(shape), np.full(shape, 0.99))
    if ((lower < 0) | (upper >= 1)).any():
        raise BLPInputError("rho_bounds must lie within [0, 1)")
    return lower, upper


def _rc_types(
    rc_types: Sequence[str] | dict[str, str] | None, characteristics: Sequence[str]
) -> tuple[str, ...]:
    """One random-coefficient distribution per column, "normal" where none is named."""
    types: list[str]
    if rc_types is None:
        types = ["normal"] * len(characteristics)
    elif isinstance(rc_types, dict):
        unknown = set(rc_types) - set(characteristics)
        if unknown:
            raise BLPInputError(f"rc_types names unknown random coefficients {sorted(unknown)}")
        types = [rc_types.get(name, "normal") for name in characteristics]
    else:
        types = list(rc_types)
        if len(types) != len(characteristics):
            raise BLPInputError(f"rc_types needs {len(characteristics)} entries, got {len(types)}")
    for name, kind in zip(characteristics, types, strict=True):
        if kind not in _RC_TYPES:
            raise BLPInputError(f"rc_types[{name!r}] = {kind!r}; choose one of {_RC_TYPES}")
    return tuple(types)


def _free_entries(
    *blocks: tuple[str, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[tuple[tuple[str, int, int], ...], np.ndarray, np.ndarray]:
    """The free parameters of ``(kind, start, lower, upper)`` blocks: the nonzero starts.

    Within a block the entries come row by row (``numpy.nonzero`` order); ρ, given as a column,
    gets -1 for its column. Returns the kinds ``(kind, row, column)`` and the bounds.
    """
    kinds: list[tuple[str, int, int]] = []
    lower: list[np.ndarray] = []
    upper: list[np.ndarray] = []
    for kind, start, low, high in blocks:
        rows, columns = np.nonzero(start)
        kinds.extend(
            (kind, int(row), -1 if kind == "rho" else int(column))
            for row, column in zip(rows, columns, strict=True)
        )
        lower.append(low[rows, columns])
        upper.append(high[rows, columns])
    return (
        tuple(kinds),
        np.concatenate(lower).astype(np.float64),
        np.concatenate(upper).astype(np.float64),
    )


@dataclass(frozen=True, eq=False)
class NonlinearParameters:
    """Structure of θ: free entries of Σ, Π and ρ with names and bounds.

    Use :meth:`build` to construct it from user input.

    Attributes
    ----------
    characteristics : tuple of str
        Random-coefficient column names (K2).
    demographics : tuple of str
        Demographic names (D).
    nests : tuple
        Nest labels (H); empty for unnested models.
    sigma, pi, rho : numpy.ndarray
        Starting values (K2×K2, K2×D, and (H,) or (1,) or (0,)).
    kinds : tuple
        For each free parameter: ``("sigma", k, l)``, ``("pi", k, d)`` or ``("rho", h, -1)``.
    lower, upper : numpy.ndarray
        Bounds of the free parameters.
    rc_types : tuple of str
        Distribution of each random coefficient.
    lower_to_upper : numpy.ndarray or None
        ``(H,)`` upper nest of each lower nest with two-level nests (ρ = [ρ_upper, ρ_lower]).
    """

    characteristics: tuple[str, ...]
    demographics: tuple[str, ...]
    nests: tuple[Any, ...]
    sigma: np.ndarray
    pi: np.ndarray
    rho: np.ndarray
    kinds: tuple[tuple[str, int, int], ...]
    lower: np.ndarray
    upper: np.ndarray
    rc_types: tuple[str, ...]
    lower_to_upper: np.ndarray | None = None

    @property
    def two_level(self) -> bool:
        """Whether the nests have two levels (ρ is ``[rho_upper, rho_lower]``)."""
        return self.lower_to_upper is not None

    @classmethod
    def build(
        cls,
        characteristics: Sequence[str],
        demographics: Sequence[str] = (),
        nests: Sequence[Any] = (),
        *,
        sigma: Any = None,
        pi: Any = None,
        rho: Any = None,
        sigma_bounds: Any = None,
        pi_bounds: Any = None,
        rho_bounds: Any = None,
        rc_types: Sequence[str] | dict[str, str] | None = None,
        lower_to_upper: np.ndarray | None = None,
    ) -> NonlinearParameters:
        """Validate starting values and bounds and find the free parameters.

        Parameters
        ----------
        characteristics : sequence of str
            Names of the K2 random-coefficient columns: the rows of Σ and Π.
        demographics : sequence of str
            Names of the D demographics: the columns of Π.
        nests : sequence
            Nest labels (H) when the model is nested.
        sigma : array-like, optional
            K2×K2 lower-triangular starting Σ (a full K2×K2 matrix whose entries above the
            diagonal are zero, e.g. ``numpy.tril(numpy.ones((K2, K2)))`` for a full Cholesky
            root); zeros stay fixed at zero. A scalar 0 means all zeros. Nonzero entries above
            the diagonal are an error naming them (pyblp ignores them).
        pi : array-like, optional
            K2×D starting Π; zeros stay fixed at zero.
        rho : float or array-like, optional
            One ρ shared by all nests, or one per nest (in the order of ``nests``).
        sigma_bounds, pi_bounds, rho_bounds : tuple, optional
            ``(lower, upper)`` arrays (or scalars) of the same shape. Defaults: Σ diagonal
            in [0, ∞), other Σ and Π entries unbounded, ρ in [0, 0.99].
        rc_types : sequence or dict, optional
            "normal" (default), "lognormal" or "negative_lognormal" per column.
        lower_to_upper : numpy.ndarray, optional
            ``(H,)`` upper nest of each lower nest, for two-level nests: ρ is then
            ``[rho_upper, rho_lower]`` (a scalar starts both at the same value) and ``nests``
            is ignored.

        Returns
        -------
        NonlinearParameters

        Raises
        ------
        BLPInputError
            Wrong shapes, nonzero Σ above the diagonal, bounds excluding a start, ρ outside
            [0, 1), unknown random-coefficient types.

        Examples
        --------
        >>> theta = NonlinearParameters.build(["prices"], ["log_income"], sigma=1.0, pi=-5.0)
        >>> theta.names
        ['sigma[prices,prices]', 'pi[prices,log_income]']
        """
        k2, d = len(characteristics), len(demographics)
        sigma_start = _sigma_start(sigma, characteristics)
        if d == 0 and pi is not None and np.any(_real_array(pi, "pi") != 0):
            # Otherwise the shape check asks for a K2×0 matrix, which says nothing useful.
            raise BLPInputError(
                "pi was given but the model has no demographics: Π loads demographics onto the "
                "random coefficients, so pass demographics='0 + income' and agent_data holding "
                "those columns to from_formula, or leave pi out"
            )
        pi_start = _as_matrix(pi if d else None, (k2, d), "pi", characteristics, demographics)
        default_sigma_lower = np.where(np.eye(k2, dtype=bool), 0.0, -np.inf)
        sigma_lower, sigma_upper = _bounds(
            sigma_bounds,
            (k2, k2),
            "sigma",
            default_sigma_lower,
            np.full((k2, k2), np.inf),
            characteristics,
            characteristics,
        )
        pi_lower, pi_upper = _bounds(
            pi_bounds,
            (k2, d),
            "pi",
            np.full((k2, d), -np.inf),
            np.full((k2, d), np.inf),
            characteristics,
            demographics,
        )
        if lower_to_upper is not None:
            nests = TWO_LEVEL_RHO
            if rho is None:
                raise BLPInputError(
                    "the model has two-level nesting_ids: give starting rho=[rho_upper, "
                    "rho_lower] (0 fixes rho_upper at zero: one level of nests, the lower ones)"
                )
            if np.size(rho) == 1:
                rho = np.full(2, np.asarray(rho, dtype=np.float64).ravel()[0])
        rho_start = _rho_start(rho, nests)
        rho_lower, rho_upper = _rho_bounds(rho_bounds, rho_start.size)
        types = _rc_types(rc_types, characteristics)
        kinds, lower, upper = _free_entries(
            ("sigma", sigma_start, sigma_lower, sigma_upper),
            ("pi", pi_start, pi_lower, pi_upper),
            ("rho", rho_start[:, None], rho_lower, rho_upper),
        )
        parameters = cls(
            tuple(characteristics),
            tuple(demographics),
            tuple(nests),
            sigma_start,
            pi_start,
            rho_start,
            kinds,
            lower,
            upper,
            types,
            None if lower_to_upper is None else np.asarray(lower_to_upper, dtype=np.intp),
        )
        parameters._check_start_within_bounds()
        return parameters

    def _check_start_within_bounds(self) -> None:
        """Raise if a free parameter's starting value lies outside its bounds."""
        start = self.theta0
        outside = (start < self.lower) | (start > self.upper)
        if outside.any():
            position = int(np.flatnonzero(outside)[0])
            raise BLPInputError(
                f"the starting value {start[position]:g} of {self.names[position]} lies "
                f"outside its bounds [{self.lower[position]:g}, {self.upper[position]:g}]"
            )

    @property
    def size(self) -> int:
        """Number of free parameters P."""
        return len(self.kinds)

    @property
    def names(self) -> list[str]:
        """Readable names: ``sigma[prices,prices]``, ``pi[mushy,log_income]``, ``rho``."""
        out = []
        for kind, row, column in self.kinds:
            if kind == "sigma":
                out.append(f"sigma[{self.characteristics[row]},{self.characteristics[column]}]")
            elif kind == "pi":
                out.append(f"pi[{self.characteristics[row]},{self.demographics[column]}]")
            elif self.two_level:
                out.append(f"rho_{TWO_LEVEL_RHO[row]}")
            elif self.rho.size == 1:
                out.append("rho")
            else:
                out.append(f"rho[{self.nests[row]}]")
        return out

    @property
    def theta0(self) -> np.ndarray:
        """Starting values of the free parameters."""
        return self.pack(self.sigma, self.pi, self.rho)

    @property
    def has_rho(self) -> bool:
        """Whether ρ is among the parameters (fixed or free)."""
        return self.rho.size > 0

    def pack(self, sigma: np.ndarray, pi: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """Free entries of (Σ, Π, ρ) as a vector θ."""
        values = []
        for kind, row, column in self.kinds:
            if kind == "sigma":
                values.append(sigma[row, column])
            elif kind == "pi":
                values.append(pi[row, column])
            else:
                values.append(rho[row])
        return np.asarray(values, dtype=np.float64)

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full (Σ, Π, ρ) from θ, with fixed entries at their (zero) starting values."""
        sigma, pi, rho = self.sigma.copy(), self.pi.copy(), self.rho.copy()
        for value, (kind, row, column) in zip(theta, self.kinds, strict=True):
            if kind == "sigma":
                sigma[row, column] = value
            elif kind == "pi":
                pi[row, column] = value
            else:
                rho[row] = value
        return sigma, pi, rho

    def random_positions(self) -> np.ndarray:
        """Positions in θ of the parameters that enter μ (Σ and Π)."""
        return np.asarray(
            [i for i, kind in enumerate(self.kinds) if kind[0] != "rho"], dtype=np.intp
        )

    def rho_positions(self) -> np.ndarray:
        """Positions in θ of the free ρ parameters."""
        return np.asarray(
            [i for i, kind in enumerate(self.kinds) if kind[0] == "rho"], dtype=np.intp
        )

    def node_columns_needed(self) -> int:
        """How many node columns Σ reads (one past the last nonzero column)."""
        used = np.flatnonzero(np.any(self.sigma != 0, axis=0))
        return int(used[-1]) + 1 if used.size else 0

    def coefficients(
        self, theta: np.ndarray, nodes: np.ndarray, demographics: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Agent-specific coefficients c ``[T, I, K2]`` and the underlying normal index.

        Parameters
        ----------
        theta : numpy.ndarray
            Free parameters.
        nodes : numpy.ndarray
            ``[T, I, K]`` integration nodes (K ≥ :meth:`node_columns_needed`).
        demographics : numpy.ndarray
            ``[T, I, D]`` demographics.

        Returns
        -------
        tuple of numpy.ndarray
            ``(coefficients, index)`` where index = νΣ' + dΠ'.
        """
        sigma, pi, _ = self.unpack(theta)
        k2 = len(self.characteristics)
        index = np.empty((*nodes.shape[:2], k2))
        pi = pi if pi.size and np.any(pi != 0) else np.zeros((k2, 0))
        sigma_entries, pi_entries = np.nonzero(sigma), np.nonzero(pi)
        if sigma_entries[0].size + pi_entries[0].size <= 2 * k2:
            # Few nonzero entries (a diagonal Σ and a column of Π): one scaled pass over an
            # agent column per entry. The products with a two-column inner dimension run at
            # a fraction of the bandwidth (0.8 ms against 0.2 ms an exercise-2 evaluation).
            # Written straight into index's (strided) columns: no column copies.
            term = np.empty(nodes.shape[:2])
            for k in range(k2):
                sources = [
                    (nodes[:, :, node], sigma[k, node])
                    for node in sigma_entries[1][sigma_entries[0] == k]
                ]
                sources += [
                    (demographics[:, :, d], pi[k, d]) for d in pi_entries[1][pi_entries[0] == k]
                ]
                if not sources:
                    index[:, :, k] = 0.0
                    continue
                column = np.multiply(*sources[0], out=index[:, :, k])
                for source, value in sources[1:]:
                    column += np.multiply(source, value, out=term)
        else:
            index[...] = 0.0
            needed = self.node_columns_needed()
            if needed:
                index += nodes[:, :, :needed] @ sigma[:, :needed].T
            if pi.size:
                index += demographics @ pi.T
        coefficients = index.copy()
        for k, kind in enumerate(self.rc_types):
            if kind == "lognormal":
                coefficients[:, :, k] = np.exp(index[:, :, k])
            elif kind == "negative_lognormal":
                coefficients[:, :, k] = -np.exp(index[:, :, k])
        return coefficients, index

    def agent_factors(
        self, coefficients: np.ndarray, nodes: np.ndarray, demographics: np.ndarray
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-column derivative factors g for :func:`blpmodels.kernel.jacobians.theta_jacobian`.

        Returns
        -------
        tuple of lists
            ``(factors, positions)``: for each random-coefficient column k, the ``[T, L_k, I]``
            factors ∂c_ik/∂θ_l (agents last) and the positions l in θ they belong to.
        """
        k2 = len(self.characteristics)
        factors: list[list[np.ndarray]] = [[] for _ in range(k2)]
        positions: list[list[int]] = [[] for _ in range(k2)]
        for position, (kind, row, column) in enumerate(self.kinds):
            if kind == "rho":
                continue
            source = nodes[:, :, column] if kind == "sigma" else demographics[:, :, column]
            if self.rc_types[row] != "normal":
                source = source * coefficients[:, :, row]
            factors[row].append(source)
            positions[row].append(position)
        n_markets, n_agents = coefficients.shape[:2]
        return (
            [np.stack(f, axis=1) if f else np.zeros((n_markets, 0, n_agents)) for f in factors],
            [np.asarray(p, dtype=np.intp) for p in positions],
        )
