"""The Adam baseline's conventions, shared by meta-validation and the quality benchmark.

* ``ADAM_LR_GRID``: the learning rates "tuned Adam" is chosen from (half-decades, 1e-4 to 1e-1).
* ``diverged``: a run diverged when its final loss is not finite or is above its initial loss.
"""

from __future__ import annotations

import math

__all__ = ["ADAM_LR_GRID", "diverged"]

ADAM_LR_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def diverged(initial: float, final: float) -> bool:
    """True when ``final`` is NaN/inf or larger than ``initial``.

    Example::

        >>> diverged(2.3, 0.1), diverged(2.3, float("nan")), diverged(2.3, 2.5)
        (False, True, True)
    """
    return not math.isfinite(final) or final > initial
