"""Fused kernels for the batched learned update.

The Triton path is selected by ``learned_update(impl="auto")`` for CUDA tensors only when
``triton_available()`` is true. Until a kernel lands here it is not, and every device uses the
batched torch path.
"""

from __future__ import annotations

__all__ = ["triton_available", "triton_update"]


def triton_available() -> bool:
    """True when a Triton kernel for the learned update is present and Triton imports."""
    return False


def triton_update(*args, **kwargs) -> None:
    raise RuntimeError(
        "impl='triton' is not available in this build of learned-optim; use impl='torch'"
    )
