"""The scheduled training recipe: linear warm-up then cosine decay of the learning rate, and
decoupled weight decay on tensors with two or more dimensions (nanoGPT's convention).

The transformer benchmark trains every method with it, and meta-training can train the rule
under it (``MetaTrainConfig.inner_recipe``), so both use these values.

Example::

    >>> from learned_optim.common.schedules import warmup_cosine
    >>> [round(warmup_cosine(s, 100), 3) for s in (0, 4, 52, 99)]
    [0.2, 1.0, 0.55, 0.1]
"""

from __future__ import annotations

import math

__all__ = ["WARMUP_FRAC", "FINAL_LR_FRAC", "WEIGHT_DECAY", "warmup_cosine"]

WARMUP_FRAC = 0.05
FINAL_LR_FRAC = 0.1
WEIGHT_DECAY = 0.1  # GPT-2's and nanoGPT's value


def warmup_cosine(step: int, steps: int) -> float:
    """The lr multiplier before update ``step`` (0-based) of a run of ``steps`` updates: linear
    warm-up over ``WARMUP_FRAC`` of the steps (at least one), then cosine decay from 1 to
    ``FINAL_LR_FRAC`` at the last step."""
    warmup = max(1, round(WARMUP_FRAC * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
    return FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * progress))
