"""Bundled data: scikit-learn's digits as tensors, and feature standardisation.

The digits (1797 8x8 images, 10 classes) ship with scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["digits", "standardize"]


@lru_cache(maxsize=1)
def digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled digits: ``(x, y)`` with ``x`` float32 ``[1797, 64]`` scaled from
    pixel values 0..16 to [0, 1] and ``y`` int64 ``[1797]`` (labels 0-9).

    The tensors are cached and shared: clone before changing them in place.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'learned-optim[demo]'``).

    Example::

        >>> x, y = digits()
        >>> tuple(x.shape), float(x.max())
        ((1797, 64), 1.0)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the digits data set comes from scikit-learn: pip install 'learned-optim[demo]' (or scikit-learn)"
        ) from None
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


def standardize(x: Tensor, eps: float, dim: int = 0, *, unbiased: bool = True) -> Tensor:
    """``(x - mean) / (std + eps)`` along ``dim``.

    ``eps`` keeps constant features finite; callers pass the value their results were made with
    (meta-training's tasks use 1e-6, the benchmark's 1e-8), so results reproduce bit for bit.
    ``unbiased``: divide the variance by n - 1 (``Tensor.std``'s default, meta-training's tasks)
    or, with False, by n (numpy's ``std``, the quality benchmark's tasks).
    """
    return (x - x.mean(dim)) / (x.std(dim, correction=1 if unbiased else 0) + eps)
