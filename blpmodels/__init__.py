"""blpmodels: Berry–Levinsohn–Pakes demand estimation, statsmodels style."""

from __future__ import annotations

__version__ = "0.1.0"
