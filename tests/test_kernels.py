"""The Triton backend (``learned_update(impl="fused")`` on CUDA) against the reference path.

Without a GPU these tests run the kernel on CPU tensors in Triton's interpreter, which must be
switched on before the kernel module is imported: this module sets ``TRITON_INTERPRET=1`` at
collection time when it is not set. ``impl="fused"`` runs the C loop for CPU tensors, so every
test here maps CPU tensors to the Triton backend (``kernels.FUSED_BACKENDS["cpu"]``, fixture
``triton_for_cpu``). They skip when the ``triton`` package is not installed. The
interpreter is slow (one Python iteration per program), so sizes stay small.

Not testable here, only on a GPU (``benchmarks/gpu_check.py``): the compiled kernel itself,
round-to-nearest bf16/fp16 stores (the interpreter truncates: tolerances below allow one ulp),
tensors above 2^31 elements (int64 offsets) and stream ordering. The absence of host reads in
``step()`` is checked here on CPU tensors (a dispatch mode counting every read of a value);
compiling the kernel for real GPUs: tests/test_triton_compile.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import pytest
import torch
from test_fastpath import assert_same, fresh_seed, grads_for, make_case, random_net, run

from learned_optim import LearnedOptimizer, kernels

HAVE_TRITON = importlib.util.find_spec("triton") is not None
if HAVE_TRITON:
    os.environ.setdefault("TRITON_INTERPRET", "1")

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="the triton package is not installed")

# Sizes that cross the kernel's 1024-coordinate blocks, scalars, odd sizes and a conv kernel.
SHAPES = [(), (1,), (7,), (3, 5, 2, 2), (1025,), (33, 40)]


@pytest.fixture(autouse=True)
def triton_for_cpu(monkeypatch):
    monkeypatch.setitem(kernels.FUSED_BACKENDS, "cpu", kernels.triton)


def _interpreting() -> bool:
    return HAVE_TRITON and kernels.triton_available("cpu")


needs_interpreter = pytest.mark.skipif(
    not _interpreting(),
    reason="Triton's interpreter is off (TRITON_INTERPRET was set to something other than 1, "
           "or triton was imported before this module)",
)


def test_triton_available_is_false_without_a_backend():
    assert kernels.triton_available("meta") is False
    if not torch.cuda.is_available():
        assert kernels.triton_available("cuda") is False
    if not HAVE_TRITON:
        assert kernels.triton_available("cpu") is False


def test_triton_update_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels.triton, "_module", lambda: None)
    assert kernels.triton_available("cpu") is False
    gen = torch.Generator().manual_seed(fresh_seed())
    net = random_net(gen)
    case = make_case([(4,)], gen)
    with pytest.raises(RuntimeError, match="impl='fused' cannot run on cpu: the Triton kernel.*use impl='auto'"):
        run(case, [grads_for(case, gen)], net, impl="fused")


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("maximize, weight_decay", [(False, 0.0), (True, 0.1)])
def test_triton_matches_reference_fp64(maximize, weight_decay):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = random_net(gen)
    case = make_case(SHAPES, gen)
    grads_seq = [grads_for(case, gen) for _ in range(2)]
    want = run(case, grads_seq, net, impl="reference", maximize=maximize, weight_decay=weight_decay)
    got = run(case, grads_seq, net, impl="fused", maximize=maximize, weight_decay=weight_decay)
    assert_same(got, want, rtol=1e-10, atol=1e-12, msg=f"seed={seed}")
    assert all(not torch.equal(a["p"], b["p"]) for a, b in zip(got, case))


@needs_triton
@needs_interpreter
def test_triton_noncontiguous_and_trajectory_50_steps():
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = random_net(gen)
    case = make_case([(), (6, 9), (5,)], gen, noncontig=True)
    grads_seq = [grads_for(case, gen) for _ in range(50)]
    want = run(case, grads_seq, net, impl="reference", weight_decay=0.01)
    got = run(case, grads_seq, net, impl="fused", weight_decay=0.01)
    assert_same(got, want, rtol=1e-9, atol=1e-11, msg=f"seed={seed}")


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("dtype, state_dtype", [
    (torch.float32, None), (torch.bfloat16, None), (torch.float16, None), (torch.float32, torch.bfloat16),
])
def test_triton_low_precision(dtype, state_dtype):
    """fp32 maths on fp32/bf16/fp16 parameters and bf16 LSTM state; low-precision values agree
    with the reference to one ulp of their dtype (the interpreter rounds toward zero)."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = random_net(gen)
    case = make_case([(3, 5, 2, 2), (1100,)], gen, dtype=dtype, state_dtype=state_dtype)
    grads_seq = [grads_for(case, gen)]
    want = run(case, grads_seq, net, impl="reference", weight_decay=0.1)
    got = run(case, grads_seq, net, impl="fused", weight_decay=0.1)
    for a, b in zip(got, want):
        for key in ("p", "m", "v", "h", "c"):
            assert a[key].dtype == b[key].dtype, key
            # one ulp of the value's own dtype; fp32 values: the maths' rounding, which the
            # LSTM's cancellations (c = f c + i g) amplify to a few 1e-6 (exactness: fp64 tests)
            tol = max(torch.finfo(a[key].dtype).eps, 1e-5)
            torch.testing.assert_close(a[key].double(), b[key].double(), rtol=tol, atol=tol,
                                       msg=lambda m: f"seed={seed} {key}: {m}")


@needs_triton
@needs_interpreter
def test_triton_mixed_param_dtypes_in_one_call():
    """bf16 and fp32 parameters share a compute dtype: one call, one launch per dtype combination."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = random_net(gen)
    case = make_case([(17,), (9, 3)], gen, dtype=torch.float32)
    case[0]["p"] = case[0]["p"].bfloat16()
    grads_seq = [[g.to(e["p"].dtype) for g, e in zip(grads_for(case, gen), case)]]
    want = run(case, grads_seq, net, impl="reference")
    got = run(case, grads_seq, net, impl="fused")
    torch.testing.assert_close(got[1]["p"], want[1]["p"], rtol=2e-6, atol=2e-6)
    eps = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(got[0]["p"].double(), want[0]["p"].double(), rtol=eps, atol=eps)


@needs_triton
@needs_interpreter
def test_triton_sees_in_place_weight_updates():
    """The kernel's device copy of the network weights is cached; an in-place update of the
    weights (what meta-training does) must invalidate it."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = random_net(gen)
    case = make_case([(40,), (3, 3)], gen)
    grads_seq = [grads_for(case, gen) for _ in range(2)]
    delta = torch.randn(net.head_weight.shape, generator=gen)
    original = net.head_weight.detach().clone()
    results = {}
    for impl in ("reference", "fused"):
        state = run(case, grads_seq[:1], net, impl=impl)
        with torch.no_grad():
            net.head_weight.add_(delta)
        results[impl] = run(state, grads_seq[1:], net, impl=impl)
        with torch.no_grad():
            net.head_weight.copy_(original)
    assert_same(results["fused"], results["reference"], rtol=1e-10, atol=1e-12, msg=f"seed={seed}")


@needs_triton
@needs_interpreter
def test_triton_fp32_zero_head_is_adam_to_fp32_rounding():
    from test_fastpath import adam_steps_fp32

    seed = fresh_seed()
    ours, ref = adam_steps_fp32("fused", 3, seed)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6, msg=lambda m: f"seed={seed}: {m}")


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("hs, features", [(3, ("m_norm",)), (5, ("m_norm", "g_norm"))])
def test_triton_other_architectures(hs, features):
    """Hidden sizes that are not a power of two (padded, masked rows) and one input feature."""
    from learned_optim.network import LSTMOptimizerConfig

    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = random_net(gen, LSTMOptimizerConfig(hidden_size=hs, features=features))
    case = make_case([(7,), (3, 5, 2, 2)], gen, hs=hs)
    grads_seq = [grads_for(case, gen) for _ in range(2)]
    want = run(case, grads_seq, net, impl="reference")
    got = run(case, grads_seq, net, impl="fused")
    assert_same(got, want, rtol=1e-10, atol=1e-12, msg=f"seed={seed}")


@needs_triton
@needs_interpreter
def test_old_name_triton_runs_the_triton_kernel_with_a_warning(monkeypatch):
    """impl="triton", the earlier name, is "fused" with the Triton kernel on any device."""
    monkeypatch.setitem(kernels.FUSED_BACKENDS, "cpu", kernels.cpu)  # "fused" alone would run the C loop
    gen = torch.Generator().manual_seed(fresh_seed())
    net = random_net(gen)
    case = make_case([(7,), (3, 5)], gen)
    grads_seq = [grads_for(case, gen)]
    with pytest.warns(FutureWarning, match="impl='triton' is deprecated, use impl='fused'"):
        got = run(case, grads_seq, net, impl="triton")
    monkeypatch.setitem(kernels.FUSED_BACKENDS, "cpu", kernels.triton)
    want = run(case, grads_seq, net, impl="fused")
    assert all(torch.equal(a[k], b[k]) for a, b in zip(got, want) for k in a)


class _HostReads:
    """Counts host reads of tensor values: ``aten._local_scalar_dense`` (``.item()``, ``float(t)``,
    ``bool(t)``, seen through a ``TorchDispatchMode``) and ``Tensor.tolist`` (patched; it does not
    dispatch). The one exception, made explicit: reads of the per-parameter step counters, CPU
    scalars that ``torch.optim.Adam`` also keeps and reads on the host (``excepted``)."""

    def __init__(self, monkeypatch, excepted):
        from torch.utils._python_dispatch import TorchDispatchMode

        self.reads: list[str] = []
        self.excepted = excepted
        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default and not any(
                        args[0] is t for t in outer.excepted()):
                    outer.reads.append(f"{func} on a {tuple(args[0].shape)} {args[0].dtype} tensor")
                return func(*args, **(kwargs or {}))

        self.mode = Mode
        tolist = torch.Tensor.tolist

        def counted_tolist(t):
            outer.reads.append(f"tolist of a {tuple(t.shape)} {t.dtype} tensor")
            return tolist(t)

        monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)

    @contextlib.contextmanager
    def counting(self):
        self.reads.clear()
        with self.mode():
            yield self.reads


@needs_triton
@needs_interpreter
def test_step_reads_nothing_on_the_host_and_defers_the_nonfinite_warning(monkeypatch):
    """The fused (Triton) path of ``step()`` reads no tensor value on the host, with finite and with
    non-finite gradients: the finite flags are computed on the device and go to the kernel, which
    leaves a flagged tensor untouched. The warning, and the skipped tensor's step count (counted
    on the host without reading the flags), come at the next ``step()``, from a host copy of the
    flags read as host memory once its device work has completed (on CPU: at once)."""
    gen = torch.Generator().manual_seed(fresh_seed())
    net = random_net(gen)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(7,), (3, 5), (1100,)]]
    opt = LearnedOptimizer(params, weights=net, lr=1e-2, weight_decay=0.1)
    steps = lambda: [opt.state[p]["step"] for p in params if "step" in opt.state[p]]  # noqa: E731
    host = _HostReads(monkeypatch, steps)

    def set_grads(bad=None):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        if bad is not None:
            params[bad].grad.view(-1)[2] = float("nan")

    for i in range(2):  # the first step creates state; the second is steady
        set_grads()
        with host.counting() as reads, warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step()
        assert reads == [], f"step {i + 1}: {reads}"
    before = {k: v.clone() for k, v in opt.state[params[1]].items()}
    p1 = params[1].detach().clone()
    set_grads(bad=1)
    with host.counting() as reads, warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning yet: nothing was read
        opt.step()
    assert reads == [], reads
    assert torch.equal(params[1], p1)
    assert all(torch.equal(before[k], opt.state[params[1]][k]) for k in before if k != "step")
    assert [float(s) for s in steps()] == [3.0, 3.0, 3.0]  # counted on the host, taken back below
    set_grads()
    with host.counting() as reads, pytest.warns(RuntimeWarning, match=r"1 parameter\(s\) had non-finite .* at "
                                                                       r"step\(\) call 3") as rec:
        opt.step()
    assert reads == [], reads
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert [float(s) for s in steps()] == [4.0, 3.0, 4.0]
    assert not torch.equal(params[1], p1)


@needs_triton
@needs_interpreter
def test_device_side_skip_matches_the_host_side_skip():
    """The same training with a NaN gradient at one step: the Triton path (flags on the device,
    step count taken back at the next step) ends where the reference path (flags read on the
    host) does."""
    gen = torch.Generator().manual_seed(fresh_seed())
    net = random_net(gen)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(9,), (4, 6)]]
    grads = [[torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in init] for _ in range(5)]
    grads[2][0][3] = float("inf")
    out = []
    for impl in ("fused", "reference"):
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        opt = LearnedOptimizer(ps, weights=net, lr=1e-2, impl=impl)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            for gs in grads:
                for p, g in zip(ps, gs):
                    p.grad = g.clone()
                opt.step()
        assert sum(issubclass(x.category, RuntimeWarning) for x in w) == 1, impl
        out.append((ps, opt.state_dict()))
    for a, b in zip(out[0][0], out[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert [s["step"].item() for s in out[0][1]["state"].values()] == [4.0, 5.0]
