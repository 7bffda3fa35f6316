"""Stand-ins for estimation work, for tests that inputs are rejected before any work starts.

The ``no_*`` fixtures of ``conftest.py`` patch the code that would do the work (building design
blocks, the linear GMM pipeline, the share kernel, the δ contraction) with :func:`forbid`, so a
check that comes too late fails with :class:`WorkStarted` instead of the expected error.
"""

from __future__ import annotations

from typing import NoReturn


class WorkStarted(AssertionError):
    """Raised by the stand-ins: estimation work started, so validation came too late."""


def forbid(*_args, **_kwargs) -> NoReturn:
    """A stand-in for code that does estimation work."""
    raise WorkStarted("estimation work started before the input was validated")
