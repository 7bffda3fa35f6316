"""What the role mixins of :class:`~blpmodels.results.BLPResults` share.

``BLPResults`` composes one mixin per role (post-estimation, economics, counterfactuals, micro
outputs, bootstrap, plots). Each reads what the results hold (the fitted ``model`` with its
design, the estimated ``demand``, ``params`` and δ) and labels its numbers by market and
product with :class:`ResultsRole`; the argument checks here are the ones several roles apply.
Nothing here imports :mod:`blpmodels.results.results`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError
from blpmodels.results.demand import DemandSystem

__all__ = ["ResultsRole", "check_flag", "check_frame", "row_values"]


class ResultsRole:
    """Base of the role mixins: the results' state they read and their labelled outputs.

    :class:`~blpmodels.results.BLPResults` sets the attributes annotated here.
    """

    model: Any
    demand: DemandSystem
    params: Any
    beta: pd.Series
    _delta: np.ndarray

    def _market_frame(self, values: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
        """A J×J matrix of one market labelled by product on both axes."""
        labels = self.demand.product_labels(rows)
        return pd.DataFrame(
            values,
            index=pd.Index(labels, name="product_ids"),
            columns=pd.Index(labels, name="product_ids"),
        )

    def _stack(self, per_market: list[tuple[Any, pd.DataFrame]]) -> pd.DataFrame:
        """One market's frame as it is; several stacked by ``(market_ids, product_ids)``."""
        if len(per_market) == 1:
            return per_market[0][1]
        frames = {market: frame for market, frame in per_market}
        return pd.concat(frames, names=["market_ids", "product_ids"])

    @property
    def _theta_start(self) -> int:
        """Position of the first nonlinear parameter: after β and, with a supply side, γ."""
        supply = getattr(self.model, "supply", None)
        return len(self.beta) + (0 if supply is None else len(supply.x_names))

    def _demand_parameters(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """β and θ from a full parameter vector (γ, which demand does not read, left out)."""
        k1, start = len(self.beta), self._theta_start
        return values[:k1], (values[start:] if values.size > start else None)


def check_flag(name: str, value: Any) -> None:
    """A keyword that must be True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise BLPInputError(f"{name} must be True or False, got {value!r}")


def check_frame(data: Any) -> pd.DataFrame:
    """Post-estimation data must be a DataFrame (columns are read by name)."""
    if not isinstance(data, pd.DataFrame):
        raise BLPInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    return data


def row_values(values: Any, index: pd.Index, name: str, market_ids: np.ndarray) -> np.ndarray:
    """One finite number per row: a Series with the rows' index or an array in their order."""
    if isinstance(values, pd.Series):
        if len(values) != len(index) or not values.index.equals(index):
            raise BLPInputError(
                f"{name} Series must carry the product data's index (one value per row); "
                "reindex it, or pass a numpy array in the rows' order"
            )
        values = values.to_numpy()
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as error:
        raise BLPInputError(f"{name} must be numbers") from error
    if array.size != len(index):
        raise BLPInputError(f"{name} has {array.size} values but the data have {len(index)} rows")
    bad = ~np.isfinite(array)
    if bad.any():
        raise BLPInputError(
            f"{name} has {int(bad.sum())} missing or non-finite values (first in market "
            f"{market_ids[np.flatnonzero(bad)[0]]!r})"
        )
    return array
