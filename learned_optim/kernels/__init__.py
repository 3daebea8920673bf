"""Backends of the batched learned update. Each receives the same ``PreparedRule`` and ``Batch``
(``rule.py``: plain weights in the compute dtype, named constants, flat tensor views, per-tensor
bias corrections) and applies the rule in place; whatever a backend needs beyond that (scaled
weights, constants folded for its exps) it derives itself, in its own module.

* ``eager``: the rule as torch ops over cache-sized chunks; any device, any dtype.
* ``cpu``: one fused C loop (portable, and hand-vectorized for AVX-512 / AVX2), compiled at first
  use from ``csrc/`` by ``cbuild``; fp32 and fp64 on CPU.
* ``triton``: one fused Triton launch per group (``_triton_update`` holds the kernel); CUDA, and
  CPU tensors in Triton's interpreter.

``FUSED_BACKENDS`` maps a device type to its fused backend: what ``learned_update`` runs for
``impl="fused"``, and for ``impl="auto"`` on the tensors it covers (the eager loop takes the
rest). It is a plain dict so that tests can map ``"cpu"`` to ``triton`` and run the Triton
kernel on CPU tensors under ``TRITON_INTERPRET=1``. Every fused backend has ``NAME``,
``select(rule, batch, todo)`` (the tensors it will update), ``unavailable_reason(rule)`` and
``update(rule, batch, idx)``; one with ``DEVICE_FLAGS = True`` (Triton) also applies the batch's
per-tensor finite flags (``Batch.finite``) on the device, so a non-finite skip needs no host read.
A fused backend with ``V2 = True`` (both here; the eager loop always can) also runs format-2
rules: ``PreparedRule.sign_equivariant``, the cautious mask ``PreparedRule.cautious_scale`` and the
per-tensor biases ``Batch.gate_bias`` / ``Batch.head_bias``; without it ``learned_update`` sends such
rules to the eager loop (``impl="auto"``) or refuses them (``impl="fused"``).

``triton_compile`` compiles the Triton kernel for real GPUs without one (registers, spills).
"""

from __future__ import annotations

from . import cpu, eager, triton
from .rule import Batch, PreparedRule, compute_dtype, prepare_batch, prepare_rule, weights_dict

__all__ = ["FUSED_BACKENDS", "Batch", "PreparedRule", "compute_dtype", "prepare_batch", "prepare_rule",
           "weights_dict", "triton_available", "cpu", "eager", "triton"]

FUSED_BACKENDS = {"cpu": cpu, "cuda": triton}

# The name benchmarks/gpu_check.py and older code use.
triton_available = triton.available
