"""The Triton backend: the whole rule as one Triton launch per group of tensors (the kernel and
its launch: ``_triton_update.py``, imported only when Triton is).

Runs on CUDA tensors, and on CPU tensors only in Triton's interpreter (``TRITON_INTERPRET=1``
set before Triton is first imported; slow, for testing). ``learned_update`` picks it through
``kernels.FUSED_BACKENDS["cuda"]``; tests run it on CPU tensors by mapping ``"cpu"`` to this
module there. Covers every dtype combination (fp32/bf16/fp16/fp64 parameters, bf16 LSTM state);
the rule's constants reach the kernel as named scalar arguments.

It takes the batch's per-tensor finite flags on the device (``Batch.finite``, ``DEVICE_FLAGS``):
the kernel leaves a flagged tensor untouched, so the non-finite skip reads nothing on the host.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch

from .rule import Batch, PreparedRule, host_to

__all__ = ["available", "select", "update", "DEVICE_FLAGS", "V2"]

NAME = "the Triton kernel"
# Implements format version 2 rules (sign equivariance, per-tensor biases; update.learned_update reads this).
V2 = True
# This backend applies Batch.finite on the device (the other backends need the flags on the host).
DEVICE_FLAGS = True


@functools.lru_cache(maxsize=1)
def _module() -> Any:
    """The kernel module, or None when Triton does not import (not installed, or broken)."""
    try:
        from . import _triton_update
    except ImportError:
        return None
    return _triton_update


def available(device: torch.device | str | None = None) -> bool:
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


def select(rule: PreparedRule, batch: Batch, todo: Sequence[int]) -> list[int]:
    """The tensors of ``todo`` this backend updates: all of them when it can run on their device."""
    return list(todo) if todo and available(batch.tensors[0][todo[0]].device) else []


def unavailable_reason(rule: PreparedRule) -> str:
    return ("it needs the 'triton' package and a CUDA device (or, for testing on CPU, TRITON_INTERPRET=1 "
            "set before importing triton)")


def update(rule: PreparedRule, batch: Batch, idx: Sequence[int]) -> None:
    """The update, in place, for the tensors ``idx`` of the batch: one launch per combination of
    dtypes (normally exactly one)."""
    groups: dict[tuple, list[int]] = {}
    p_, g_, m_, v_, h_, c_ = batch.tensors  # the launch reads addresses and sizes only: no flat views
    for i in idx:
        m, v, h, c = m_[i], v_[i], h_[i], c_[i]
        if m.dtype != v.dtype or h.dtype != c.dtype:
            raise ValueError(
                f"the Triton kernel needs exp_avg and exp_avg_sq of one dtype and lstm_h and lstm_c of "
                f"one dtype, got {m.dtype}/{v.dtype} and {h.dtype}/{c.dtype}: cast the state"
            )
        groups.setdefault((p_[i].dtype, g_[i].dtype, m.dtype, h.dtype), []).append(i)
    mod = _module()
    for sub in groups.values():
        flags = batch.finite_of(sub)
        gate_bias, head_bias = _biases_of(batch, sub)
        cscales = None if batch.cautious is None else batch.cautious_of(sub, rule)
        mod.launch(rule, *batch.sources(sub), [batch.ib1[i] for i in sub], [batch.sib2[i] for i in sub], flags,
                   gate_bias, head_bias, cscales)


def _biases_of(batch: Batch, idx: Sequence[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The per-tensor (gate, head) biases of the tensors ``idx`` (a rule with context; a device
    gather unless ``idx`` is every tensor), or (None, None)."""
    if batch.gate_bias is None:
        return None, None
    if list(idx) == list(range(len(batch.numels))):
        return batch.gate_bias, batch.head_bias
    sel = host_to(torch.tensor(list(idx), dtype=torch.int64), batch.gate_bias.device)
    return batch.gate_bias.index_select(0, sel), batch.head_bias.index_select(0, sel)
