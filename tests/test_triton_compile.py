"""The Triton kernel compiles for real GPUs (sm_80, sm_90) on this CPU-only machine, with no spills.

Triton's NVIDIA backend bundles ``ptxas`` and ``cuobjdump``: ``kernels.triton_compile`` compiles
``lstm_update_kernel`` to a cubin per target and reads its registers per thread and local memory
with ``cuobjdump -res-usage``. Compilation runs in a fresh interpreter (the kernel tests switch
Triton's interpreter on for this process); each variant takes ~2-5 s, so the default run compiles
a representative subset at the launch the kernel uses (``_triton_update.LAUNCH``) and the whole
dtype matrix is ``@pytest.mark.slow``. Results are cached for the session.
"""

from __future__ import annotations

import functools

import pytest
import torch

from learned_optim.kernels import triton_compile as tc

TOOLS = tc.nvidia_tools()
pytestmark = pytest.mark.skipif(TOOLS is None, reason="Triton's NVIDIA backend (ptxas, cuobjdump) is not installed")

NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float64: "float64"}


def _chosen(param: str, state: str) -> tuple[int, int]:
    from learned_optim.kernels import _triton_update as kt

    dt = {v: k for k, v in NAMES.items()}
    return kt.LAUNCH[(dt[param], dt[state])]


@functools.lru_cache(maxsize=None)
def _compiled(variants: tuple[tuple, ...]) -> tuple[dict, ...]:
    return tuple(tc.compile_in_subprocess(variants))


def _check(rows) -> None:
    for r in rows:
        label = f"sm_{r['cc']} {r['param']} params, {r['state']} state, BLOCK {r['block']} / {r['num_warps']} warps"
        assert r["local"] == 0 and r["stack"] == 0, f"{label}: spills ({r['local']} B local, {r['stack']} B stack)"
        # one 256-thread block per SM at most above 255; the table in _triton_update says 48-64 (fp32 maths)
        limit = 255 if r["param"] == "float64" else 96
        assert 0 < r["registers"] <= limit, f"{label}: {r['registers']} registers per thread"
        print(f"{label}: {r['registers']} registers, no spills, {r['compile_s']} s")


def _variants(pairs, ccs=(80, 90)):
    return tuple((cc, p, s, *_chosen(p, s)) for cc in ccs for p, s in pairs)


def test_kernel_compiles_for_sm80_and_sm90_without_spills():
    """Representative subset: fp32 everywhere, fp16 parameters (the most registers measured
    before) and bf16 LSTM state, on both targets."""
    _check(_compiled(_variants([("float32", "float32"), ("float16", "float32"), ("float32", "bfloat16")])))


def test_format_2_kernel_compiles_without_spills():
    """Every format-2 switch on (sign equivariance, per-tensor biases, the cautious mask and its
    per-tensor rescale): fp32 and bf16 LSTM state at their chosen launches, on both targets."""
    variants = tuple((*v, True) for v in _variants([("float32", "float32"), ("float32", "bfloat16")]))
    rows = _compiled(variants)
    assert all(r["v2"] for r in rows)
    _check(rows)


@pytest.mark.slow
def test_kernel_compiles_for_every_dtype_pair():
    pairs = [(p, s) for p in ("float32", "bfloat16", "float16") for s in ("float32", "bfloat16")] + [
        ("float64", "float64")]
    _check(_compiled(_variants(pairs)))


def test_compile_without_the_nvidia_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(tc, "nvidia_tools", lambda: None)
    from learned_optim.kernels import _triton_update as kt

    if kt.INTERPRETED:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 is set"):
            tc.compile_variant(90, "float32", "float32", 256, 8)
    else:
        with pytest.raises(RuntimeError, match="NVIDIA backend"):
            tc.compile_variant(90, "float32", "float32", 256, 8)
