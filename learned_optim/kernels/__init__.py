"""Fused kernels for the batched learned update.

``cpu``: the fused C loop the CPU torch path uses for fp32/fp64 tensors (built with gcc at first
use, loaded with ctypes; see that module). The rest of this module is the Triton path:

``triton_update`` applies the whole rule (moments, features, LSTM cell, head, weight decay,
parameter write) to every tensor of a group in one Triton launch per dtype combination (see
``_triton_update``). ``learned_update(impl="auto")`` selects it for CUDA tensors when
``triton_available(device)`` is true; ``impl="triton"`` forces it (CPU tensors need
``TRITON_INTERPRET=1`` in the environment before Triton is first imported, and are slow: that
mode exists for testing).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["triton_available", "triton_update"]


@functools.lru_cache(maxsize=1)
def _module() -> Any:
    """The kernel module, or None when Triton does not import (not installed, or broken)."""
    try:
        from . import _triton_update
    except ImportError:
        return None
    return _triton_update


def triton_available(device: torch.device | str | None = None) -> bool:
    """True when Triton imports, the kernel is defined, and it can run on ``device``.

    CUDA devices need a visible CUDA device; CPU tensors run only in Triton's interpreter
    (``TRITON_INTERPRET=1`` set before Triton was imported). ``device=None`` asks about the
    current CUDA device.
    """
    mod = _module()
    if mod is None:
        return False
    dev = torch.device("cuda" if device is None else device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and not mod.INTERPRETED
    if dev.type == "cpu":
        return mod.INTERPRETED
    return False


def triton_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, *,
                  weights, config, lr, weight_decay, maximize) -> None:
    """``learned_update``'s Triton path (same arguments; ``state_steps`` already incremented)."""
    from ..update import _compute_dtype, _weights_dict

    device = params[0].device
    if not triton_available(device):
        raise RuntimeError(
            f"impl='triton' cannot run on {device}: it needs the 'triton' package and a CUDA "
            f"device (or, for testing on CPU, TRITON_INTERPRET=1 set before importing triton); "
            f"use impl='torch' or impl='auto'"
        )
    mod = _module()
    w = dict(_weights_dict(weights))
    cdt = _compute_dtype(params[0].dtype)
    # One launch per combination of dtypes (normally exactly one); non-contiguous tensors go
    # through a contiguous copy written back after the launch.
    groups: dict[tuple, list[list[torch.Tensor]]] = {}
    writebacks: list[tuple[torch.Tensor, torch.Tensor]] = []

    def contig(t: torch.Tensor) -> torch.Tensor:
        if t.is_contiguous():
            return t
        tmp = t.contiguous()
        writebacks.append((t, tmp))
        return tmp

    for row in zip(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps):
        p, g, m, v, h, c, s = row
        if _compute_dtype(p.dtype) != cdt:
            raise ValueError(
                "learned_update(impl='triton') needs parameters of one compute dtype per call: "
                "call it separately for fp64 and for fp32/bf16/fp16 parameters"
            )
        if m.dtype != v.dtype or h.dtype != c.dtype:
            raise ValueError(
                f"impl='triton' needs exp_avg and exp_avg_sq of one dtype and lstm_h and lstm_c of "
                f"one dtype, got {m.dtype}/{v.dtype} and {h.dtype}/{c.dtype}: cast the state"
            )
        if p.numel() == 0:
            continue
        key = (p.dtype, g.dtype, m.dtype, h.dtype)
        lists = groups.setdefault(key, [[] for _ in range(7)])
        for lst, t in zip(lists, (contig(p), g.contiguous(), contig(m), contig(v), contig(h), contig(c), s)):
            lst.append(t)
    for lists in groups.values():
        mod.launch(*lists, weights=w, config=config, lr=lr, weight_decay=weight_decay,
                   maximize=maximize, cdt=cdt)
    for dst, src in writebacks:
        dst.copy_(src)
