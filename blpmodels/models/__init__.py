"""statsmodels-style BLP model classes.

* :class:`~blpmodels.models.logit.BLPLogit` — plain logit demand by linear IV-GMM on
  δ = log s_j − log s_0.
* :class:`~blpmodels.models.nested_logit.BLPNestedLogit` — nested logit in closed form: log s_j −
  log s_0 regressed on X1 and the log within-nest share(s), instrumented.
* :class:`~blpmodels.models.random_coefficients.BLPRandomCoefficients` — random coefficients
  with demographics, optionally nested (RCNL).

The classes are thin: they validate inputs into a design, build the estimation pieces and wrap
the output in :class:`~blpmodels.results.BLPResults`.
"""

from blpmodels.models.base import BLPModel
from blpmodels.models.logit import BLPLogit
from blpmodels.models.nested_logit import BLPNestedLogit
from blpmodels.models.random_coefficients import BLPRandomCoefficients

__all__ = ["BLPLogit", "BLPModel", "BLPNestedLogit", "BLPRandomCoefficients"]
