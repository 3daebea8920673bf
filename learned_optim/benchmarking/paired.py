"""The paired sign-flip test: is the mean of per-seed differences away from 0?

Two optimizers (or two weights) run at the same seeds see the same initialisations and
minibatches, so each seed gives one difference ``d_i`` (candidate minus reference, or a log
ratio of losses). ``paired_test`` reports their mean, standard error ``sd(d) / sqrt(n)`` and the
two-sided p-value of the exact sign-flip (paired permutation) test of a zero mean: the share of
the ``2^n`` sign patterns ``s`` with ``|sum(s * d)| >= |sum(d)|``, sampled with a fixed seed above
``EXACT_MAX_SEEDS`` seeds. It assumes nothing of the differences' distribution beyond symmetry
under no effect, which suits losses whose seeds spread unevenly (one chaotic seed can be 3x off).
With 5 seeds the smallest possible p is ``2 / 32 = 0.0625``, so 5 seeds never call a difference at
``ALPHA``; 10 seeds can (``2 / 1024``). Used by ``learned-optim benchmark compare``, the quality
benchmark's per-task verdicts and the transformer benchmark's learned-vs-tuned line.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

__all__ = ["ALPHA", "EXACT_MAX_SEEDS", "SAMPLED_PATTERNS", "paired_test", "paired_outcome", "smallest_p"]

# The two-sided level below which a paired difference is called (the usual 5%).
ALPHA = 0.05

# Up to this many seeds the sign-flip test enumerates all 2^n patterns (65,536 at 16); above it,
# SAMPLED_PATTERNS random patterns from a fixed seed estimate the p-value.
EXACT_MAX_SEEDS = 16
SAMPLED_PATTERNS = 65536


def paired_test(diffs: Sequence[float]) -> dict[str, Any]:
    """Mean, standard error and sign-flip p-value of paired differences.

    Args:
        diffs: finite per-seed differences (candidate minus reference, or a log ratio).

    Returns:
        ``{"n", "mean", "se", "lower" (seeds with d < 0), "higher" (d > 0), "equal", "p"}``;
        ``se`` is NaN below 2 seeds and ``p`` is 1 with no seeds or all differences 0.

    Example::

        >>> paired_test([-0.1, -0.2, -0.15, -0.12, -0.3])["p"]
        0.0625
    """
    d = [float(x) for x in diffs]
    if not all(math.isfinite(x) for x in d):
        raise ValueError(f"diffs must be finite, got {d}; leave diverged pairs out before the test")
    n = len(d)
    out = {"n": n, "mean": sum(d) / n if n else math.nan, "lower": sum(x < 0 for x in d),
           "higher": sum(x > 0 for x in d), "equal": sum(x == 0 for x in d)}
    out["se"] = (math.sqrt(sum((x - out["mean"]) ** 2 for x in d) / (n - 1) / n) if n >= 2 else math.nan)
    observed = abs(sum(d))
    if n == 0 or observed == 0:
        out["p"] = 1.0
        return out
    # Sums instead of means (same order); a relative slack so that the observed pattern itself
    # and its mirror always count despite rounding.
    tol = 1e-12 * sum(abs(x) for x in d)
    if n <= EXACT_MAX_SEEDS:
        sums = [0.0]
        for x in d:  # the 2^n signed sums, one doubling per seed
            sums = [t + x for t in sums] + [t - x for t in sums]
        out["p"] = sum(abs(t) >= observed - tol for t in sums) / 2 ** n
    else:
        rng = random.Random(0)
        hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= observed - tol
                   for _ in range(SAMPLED_PATTERNS))
        out["p"] = (hits + 1) / (SAMPLED_PATTERNS + 1)
    return out


def smallest_p(n: int) -> float:
    """The smallest sign-flip p-value ``n`` seeds can give, ``2 / 2^n`` (every seed on one side);
    the test can call a difference only where it is below ``ALPHA`` (from 6 seeds)."""
    return 2.0 / 2 ** n if n else 1.0


def paired_outcome(ref: Sequence[float | None], cand: Sequence[float | None], diff: Callable[[float, float], float],
                   higher_is_better: bool = False) -> dict[str, Any]:
    """``paired_test`` over the seeds where both runs are finite, the diverged seeds' counts, and a verdict.

    Args:
        ref: the reference's per-seed values (None or non-finite: that run diverged).
        cand: the candidate's values at the same seeds, in the same order.
        diff: ``diff(ref_value, cand_value)``, e.g. ``lambda r, c: c - r``; an infinite result (a
            log ratio with a loss of exactly 0) is counted in ``"infinite_ratio"`` and left out.
        higher_is_better: the values are accuracies, not losses (default False).

    Returns:
        ``paired_test``'s dict plus ``"reference_only_diverged"``, ``"candidate_only_diverged"``,
        ``"both_diverged"``, ``"infinite_ratio"`` and ``"verdict"``: the side that diverged on
        fewer seeds if they differ, else the better side when ``p < ALPHA``, else "within noise".
    """
    def ok(x):
        return x is not None and math.isfinite(x)

    pairs = list(zip(ref, cand))
    diffs = [diff(r, c) for r, c in pairs if ok(r) and ok(c)]
    # A log ratio is infinite where one loss is exactly 0: no size to average, so counted apart.
    test = paired_test([x for x in diffs if math.isfinite(x)])
    test["infinite_ratio"] = sum(not math.isfinite(x) for x in diffs)
    test["reference_only_diverged"] = sum(ok(c) and not ok(r) for r, c in pairs)
    test["candidate_only_diverged"] = sum(ok(r) and not ok(c) for r, c in pairs)
    test["both_diverged"] = sum(not ok(r) and not ok(c) for r, c in pairs)
    better_sign = 1 if higher_is_better else -1
    if test["candidate_only_diverged"] != test["reference_only_diverged"]:
        # A divergence loses outright: the side that diverged on more seeds is worse.
        test["verdict"] = ("candidate" if test["reference_only_diverged"] > test["candidate_only_diverged"]
                           else "reference")
    elif test["p"] < ALPHA:
        test["verdict"] = "candidate" if test["mean"] * better_sign > 0 else "reference"
    else:
        test["verdict"] = "within noise"
    return test
