"""Where the market chunks of the nonlinear objective run: threads here or Dask workers.

A backend holds the :class:`~blpmodels.kernel.chunks.MarketChunk` objects of an objective
(``start``), runs one :class:`~blpmodels.kernel.chunks.ChunkStep` per chunk and returns the
chunk results in chunk order (``run``); the objective combines them on the driver, where the
fixed effects are absorbed and the GMM moments formed.

- ``"threads"`` (default): :class:`~blpmodels.backends.threads.ThreadsBackend`.
- ``"dask"``: :class:`~blpmodels.backends.dask.DaskBackend`, chunks resident on the
  workers of a ``distributed.Client`` (``pip install "blpmodels[dask]"``).
"""

from __future__ import annotations

from typing import Any

from blpmodels.backends.memory import (
    chunk_memory,
    chunk_size_for_memory,
    driver_memory,
    parse_memory,
)
from blpmodels.backends.threads import ThreadsBackend
from blpmodels.exceptions import BLPInputError

__all__ = [
    "BACKENDS",
    "ClientHandle",
    "ThreadsBackend",
    "check_backend",
    "chunk_memory",
    "chunk_size_for_memory",
    "driver_memory",
    "make_backend",
    "parse_memory",
]

BACKENDS = ("threads", "dask")


class ClientHandle:
    """A Dask client kept by a model: pickled as no client, so fitted results pickle.

    After unpickling, a new fit on the Dask backend uses the current default client.

    Examples
    --------
    >>> import pickle
    >>> pickle.loads(pickle.dumps(ClientHandle("a client"))).client is None
    True
    """

    def __init__(self, client: Any = None) -> None:
        self.client = client

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (ClientHandle, (None,))


def check_backend(backend: Any, client: Any = None) -> str:
    """Validate ``backend=`` and ``client=`` of a model before any work.

    Raises
    ------
    BLPInputError
        An unknown backend, or a client without ``backend="dask"``.
    ImportError
        ``backend="dask"`` without dask and distributed installed.

    Examples
    --------
    >>> check_backend("threads")
    'threads'
    """
    if backend not in BACKENDS:
        raise BLPInputError(f"backend must be 'threads' or 'dask', got {backend!r}")
    if client is not None and backend != "dask":
        raise BLPInputError("client= is for backend='dask'")
    if backend == "dask":
        from blpmodels.backends.dask import import_distributed

        import_distributed()
    return backend


def make_backend(backend: str, *, threads: int = 1, client: Any = None) -> Any:
    """A fresh backend object for one objective.

    Examples
    --------
    >>> make_backend("threads", threads=2).threads
    2
    """
    check_backend(backend, client)
    if backend == "dask":
        from blpmodels.backends.dask import DaskBackend

        return DaskBackend(client)
    return ThreadsBackend(threads)
