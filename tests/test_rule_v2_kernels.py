"""Format version 2 rules (``sign_equivariant``, ``context_features``) on the fused backends: the
C loop (``kernels/cpu.py``, its ``-DLO_V2=1`` library) and the Triton kernel (its ``SIGN_EQ`` /
``PER_TENSOR_BIAS`` switches; on CPU tensors in Triton's interpreter), against the fp64 reference.

Each config (sign only, context only, both) gets a network with random non-zero weights (the
context columns included), tensors of many sizes at different steps: small ones, sizes around
the AVX-512 loop's 48-coordinate block, one above the eager chunk size, and with several
threads one split across tasks (each task reloads its tensor's biases). Sign equivariance is
checked bit for bit: negating p, m and every gradient negates p and m and leaves v, h, c equal,
step after step (the context sees |p| only). Version 1 rules keep their library and their loop:
the v2 loop with both switches off (per-tensor biases all equal to the rule's) gives the v1
loop's bits.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os

import pytest
import torch
from test_fastpath import cpu_loop, fresh_seed, grads_for, make_case, random_net, run, run_in_place

from learned_optim import kernels
from learned_optim.kernels import cpu, prepare_batch, prepare_rule
from learned_optim.kernels import triton_compile as tc
from learned_optim.network import CONTEXT_FEATURES, STATIC_FEATURES, LSTMOptimizerConfig

HAVE_TRITON = importlib.util.find_spec("triton") is not None
if HAVE_TRITON:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from test_contract import on_path  # noqa: E402  (after TRITON_INTERPRET, as test_kernels)

CONFIGS = {
    "sign": dict(sign_equivariant=True),
    "context": dict(context_features=CONTEXT_FEATURES),
    "both": dict(sign_equivariant=True, context_features=CONTEXT_FEATURES),
    "cautious": dict(cautious_scale=1.5),
    "rescale": dict(sign_equivariant=True, cautious_scale=0.7, cautious_rescale=True),
    "all": dict(sign_equivariant=True, context_features=CONTEXT_FEATURES, cautious_scale=1.5, cautious_rescale=True),
}
# scalars, small tensors, the 48-coordinate AVX-512 block's edges, one above the eager chunk (8192)
SHAPES = [(), (1,), (7,), (3, 5, 2, 2), (47,), (48,), (49,), (97, 131), (5,)]
C_LOOPS = ["c", "c-portable"]

needs_c = pytest.mark.skipif(not cpu.available(), reason="the C loop does not build here")


def v2_net(gen: torch.Generator, name: str, **kw):
    """A network of config ``name`` with every weight random and non-zero (head and context too)."""
    net = random_net(gen, LSTMOptimizerConfig(**CONFIGS[name], **kw))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return net


def rel_err(got, want, keys="pmvhc") -> float:
    return max(((a[k].double() - b[k].double()).abs() / (1 + b[k].double().abs())).max().item()
               for a, b in zip(got, want) for k in keys if a[k].numel())


def negated(case):
    """The case with p and m negated (v, h, c, steps as they are)."""
    out = copy.deepcopy(case)
    for e in out:
        e["p"].neg_()
        e["m"].neg_()
    return out


def assert_mirrored(got, flipped, msg):
    for i, (a, b) in enumerate(zip(got, flipped)):
        for k in ("p", "m"):
            assert torch.equal(a[k], -b[k]), f"{msg}: {k}[{i}] is not exactly negated"
        for k in ("v", "h", "c"):
            assert torch.equal(a[k], b[k]), f"{msg}: {k}[{i}] differs"



def assert_bf16_state_close(got, want, seed):
    """bf16 LSTM state within one bf16 ulp of the reference, parameters within 1e-5."""
    ulp = torch.finfo(torch.bfloat16).eps
    for i, (a, b) in enumerate(zip(got, want)):
        for key in ("h", "c"):
            torch.testing.assert_close(a[key].double(), b[key].double(), rtol=ulp, atol=ulp,
                                       msg=lambda m: f"seed={seed} {key}[{i}]: {m}")
        torch.testing.assert_close(a["p"], b["p"], rtol=1e-5, atol=1e-5, msg=lambda m: f"seed={seed} p[{i}]: {m}")

@needs_c
@pytest.mark.parametrize("loop", C_LOOPS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_c_fp32_tracks_fp64_reference(name, loop):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = v2_net(gen, name)
    case64 = make_case(SHAPES, gen)
    case32 = [{k: (v.float() if k != "step" else v.clone()) for k, v in e.items()} for e in case64]
    grads_seq = [grads_for(case64, gen) for _ in range(20)]
    want = run(case64, grads_seq, net, impl="reference", weight_decay=0.01, maximize=True)
    with cpu_loop(loop):
        got = run(case32, [[g.float() for g in gs] for gs in grads_seq], net, impl="fused",
                  weight_decay=0.01, maximize=True)
    assert all(a["p"].dtype == torch.float32 for a in got)
    err = rel_err(got, want)
    assert err < 1e-5, f"seed={seed} {name} {loop}: {err:.2e}"
    assert (4, 2) in cpu._libs_v2  # the format 2 library ran


@needs_c
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_c_fp64_matches_reference(name, threads):
    """fp64 to rounding; with 3 threads the (20000,) tensor is split over several tasks."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = v2_net(gen, name)
    case = make_case(SHAPES + [(20000,)], gen)
    grads_seq = [grads_for(case, gen) for _ in range(3)]
    want = run(case, grads_seq, net, impl="reference", weight_decay=0.05)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with cpu_loop("c"):
            got = run(case, grads_seq, net, impl="fused", weight_decay=0.05)
    finally:
        torch.set_num_threads(old)
    err = rel_err(got, want)
    assert err < 1e-12, f"seed={seed} {name}: {err:.2e}"
    assert all(not torch.equal(a["p"], b["p"]) for a, b in zip(got, case))


@needs_c
@pytest.mark.parametrize("loop", C_LOOPS)
def test_c_mixed_state_dtypes_take_their_own_bias_rows(loop):
    """fp32 and bf16 LSTM state in one call: two launches, each with its tensors' bias rows."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = v2_net(gen, "both")
    case = (make_case([(7,), (30, 4), ()], gen, dtype=torch.float32)
            + make_case([(5, 3), (1,), (60,)], gen, dtype=torch.float32, state_dtype=torch.bfloat16))
    grads_seq = [grads_for(case, gen)]
    want = run(case, grads_seq, net, impl="reference")
    with cpu_loop(loop):
        got = run(case, grads_seq, net, impl="fused")
    assert_bf16_state_close(got, want, seed)


@needs_c
@pytest.mark.parametrize("loop, dtype, state_dtype", [
    ("c", torch.float32, None), ("c-portable", torch.float32, None), ("c", torch.float32, torch.bfloat16),
    ("c", torch.float64, None)])
@pytest.mark.parametrize("name", ["sign", "both", "all"])
def test_c_sign_equivariance_is_exact(name, loop, dtype, state_dtype):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = v2_net(gen, name)
    case = make_case(SHAPES, gen, dtype=dtype, state_dtype=state_dtype)
    case[2]["m"][:3] = 0  # sign(m) = 0 where m stays 0 (g = 0 there at the first step)
    grads_seq = [grads_for(case, gen) for _ in range(4)]
    grads_seq[0][2][:3] = 0
    with cpu_loop(loop):
        got = run(case, grads_seq, net, impl="fused", weight_decay=0.1)
        flipped = run(negated(case), [[-g for g in gs] for gs in grads_seq], net, impl="fused", weight_decay=0.1)
    assert_mirrored(got, flipped, f"seed={seed} {name} {loop} {dtype} {state_dtype}")


def _c_step(case, grads, net, *, per_tensor_bias: bool):
    """One C step through ``cpu.update``; ``per_tensor_bias`` runs the v2 loop with each tensor's
    bias row equal to the rule's (sign equivariance off): the v1 loop's maths."""
    case = copy.deepcopy(case)
    cdt = case[0]["p"].dtype
    for e in case:
        e["step"] += 1
    rule = prepare_rule(net, net.config, device=torch.device("cpu"), dtype=cdt, lr=0.01, weight_decay=0.1,
                        maximize=False)
    lists = [[e[k] for e in case] for k in ("p",)] + [grads] + [[e[k] for e in case] for k in "mvhc"]
    batch = prepare_batch(*lists, [e["step"] for e in case], config=net.config)
    if per_tensor_bias:
        t = len(case)
        batch = dataclasses.replace(batch, gate_bias=rule.bias.expand(t, -1).contiguous(),
                                    head_bias=rule.head_bias.expand(t, -1).contiguous())
    idx = cpu.select(rule, batch, list(range(len(case))))
    assert idx == list(range(len(case)))
    cpu.update(rule, batch, idx)
    batch.finish()
    return case


@needs_c
@pytest.mark.parametrize("loop, dtype, state_dtype", [
    ("c", torch.float32, None), ("c-portable", torch.float32, None), ("c", torch.float32, torch.bfloat16),
    ("c", torch.float64, None)])
def test_v1_rule_runs_the_v1_loop_and_the_v2_loop_reduces_to_it(monkeypatch, loop, dtype, state_dtype):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = random_net(gen)
    case = make_case(SHAPES, gen, dtype=dtype, state_dtype=state_dtype)
    grads = grads_for(case, gen)
    with cpu_loop(loop):
        v1 = _c_step(case, grads, net, per_tensor_bias=False)
        v2 = _c_step(case, grads, net, per_tensor_bias=True)
        # a version 1 rule through learned_update neither builds nor calls the v2 library
        monkeypatch.setattr(cpu, "_libs_v2", {})
        via_update = run(case, [grads], net, impl="fused", weight_decay=0.1)
        assert cpu._libs_v2 == {}
    for i, (a, b, c) in enumerate(zip(v1, v2, via_update)):
        for k in ("p", "m", "v", "h", "c"):
            assert torch.equal(a[k], b[k]), f"seed={seed} {loop}: {k}[{i}] of the v2 loop differs from the v1 loop"
            assert torch.equal(a[k], c[k]), f"seed={seed} {loop}: {k}[{i}]"


# --- Triton, in the interpreter on CPU tensors ------------------------------------------------

TRITON_SHAPES = [(), (1,), (7,), (3, 5, 2, 2), (300,)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_matches_reference_fp64(name):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = v2_net(gen, name)
    case = make_case(TRITON_SHAPES, gen)
    grads_seq = [grads_for(case, gen) for _ in range(2)]
    want = run(case, grads_seq, net, impl="reference", maximize=True, weight_decay=0.1)
    with on_path("triton") as impl:
        got = run(case, grads_seq, net, impl=impl, maximize=True, weight_decay=0.1)
    err = rel_err(got, want)
    assert err < 1e-12, f"seed={seed} {name}: {err:.2e}"


def test_triton_mixed_state_dtypes_take_their_own_bias_rows():
    """Two launches (fp32 and bf16 LSTM state), each with its tensors' rows of the biases."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = v2_net(gen, "context")
    case = (make_case([(7,), (3, 4)], gen, dtype=torch.float32)
            + make_case([(5, 3), (1,), (20,)], gen, dtype=torch.float32, state_dtype=torch.bfloat16))
    grads_seq = [grads_for(case, gen)]
    want = run(case, grads_seq, net, impl="reference")
    with on_path("triton") as impl:
        got = run(case, grads_seq, net, impl=impl)
    # one ulp on h, c: the interpreter truncates bf16 stores (test_kernels)
    assert_bf16_state_close(got, want, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_sign_equivariance_is_exact(dtype):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = v2_net(gen, "both")
    case = make_case(TRITON_SHAPES, gen, dtype=dtype)
    case[2]["m"][:3] = 0
    grads_seq = [grads_for(case, gen) for _ in range(2)]
    grads_seq[0][2][:3] = 0
    with on_path("triton") as impl:
        got = run(case, grads_seq, net, impl=impl, weight_decay=0.1)
        flipped = run(negated(case), [[-g for g in gs] for gs in grads_seq], net, impl=impl, weight_decay=0.1)
    assert_mirrored(got, flipped, f"seed={seed} triton {dtype}")


@pytest.mark.skipif(tc.nvidia_tools() is None, reason="Triton's NVIDIA backend (ptxas, cuobjdump) is not installed")
def test_triton_v2_kernel_compiles_for_sm80_and_sm90_without_spills():
    from test_triton_compile import _check, _chosen, _compiled

    rows = _compiled(tuple((cc, p, s, *_chosen(p, s), True) for cc in (80, 90)
                           for p, s in (("float32", "float32"), ("float32", "bfloat16"))))
    assert all(r["v2"] for r in rows)
    _check(rows)


def test_backends_declare_v2():
    assert cpu.V2 is True and kernels.triton.V2 is True


# --- what is kept between steps: the prepared weights, the static context columns ----------------


def test_static_context_columns_are_kept_per_model_and_size():
    """The shape and size columns are made once per (shapes, model size) and reused: the same values
    as made fresh, for the model they belong to, whichever model was seen before."""
    from learned_optim import update

    gen = torch.Generator().manual_seed(fresh_seed())
    net = v2_net(gen, "context")
    case = make_case(SHAPES, gen)
    kw = dict(exp_avgs=[e["m"] for e in case], exp_avg_sqs=[e["v"] for e in case],
              state_steps=[e["step"] for e in case], grads=grads_for(case, gen))
    ps = [e["p"] for e in case]
    sizes = (123, 4 * 10**4, 10**7)
    update._static_columns.cache_clear()
    fresh = {}
    for n in sizes:
        update._static_columns.cache_clear()
        fresh[n] = update.tensor_context(ps, net.config, num_params=n, **kw)
    names = list(net.config.context_features)
    col = {name: names.index(name) for name in names}
    is_vector = torch.tensor([float(len(p.shape) <= 1) for p in ps], dtype=torch.float64)
    for n in sizes + sizes[::-1]:  # every model after every other, from the kept columns
        got = update.tensor_context(ps, net.config, num_params=n, **kw)
        assert torch.equal(got, fresh[n]), n
        size = min(max(math.log10(n) - 5.0, -5.0), 5.0)  # by hand: the size columns of this model
        assert torch.allclose(got[:, col["log_num_params"]], torch.full((len(ps),), size, dtype=torch.float64))
        assert torch.allclose(got[:, col["log_num_params_capped"]], torch.full((len(ps),), min(size, 0.0),
                                                                                 dtype=torch.float64))
        ramp = min(max(math.log10(n) - 4.0, 0.0), 1.0)
        assert torch.allclose(got[:, col["is_vector_large"]], is_vector * ramp), n
    assert update._static_columns.cache_info().hits >= 3
    static = update._static_columns(tuple(tuple(p.shape) for p in ps), "cpu", torch.float64, 10**7, 8.0)
    assert set(static) == set(STATIC_FEATURES)


@pytest.mark.parametrize("path", ["c", "eager", "triton"])
def test_weights_changed_in_place_between_steps_are_used(path):
    """The prepared weights are kept between calls; a change of the weights in place (as a
    meta-optimizer or load_state_dict makes) must reach the very next update."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = v2_net(gen, "both")
    case = make_case(TRITON_SHAPES, gen)
    grads_seq = [grads_for(case, gen) for _ in range(3)]

    def steps(impl):
        out = copy.deepcopy(case)
        w = copy.deepcopy(net)
        for i, grads in enumerate(grads_seq):
            if i:  # every weight, the context columns and the head included
                with torch.no_grad():
                    for t in w.parameters():
                        t.mul_(0.9).add_(0.05)
            run_in_place(out, grads, w, impl)
        return out

    want = steps("reference")
    with (cpu_loop("c") if path == "c" else on_path(path)) as impl:
        got = steps(impl)
    err = rel_err(got, want)
    assert err < 1e-12, f"seed={seed} {path}: {err:.2e}"


def test_inference_tensor_weights_are_prepared_at_every_call():
    """Weights made under torch.inference_mode have no version counter: they are not kept (a key
    without a version could not see them change), and the update still runs and is right."""
    from learned_optim.kernels import rule as rule_mod
    from learned_optim.kernels.rule import weights_dict

    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = v2_net(gen, "both")
    with torch.inference_mode():
        frozen = {k: t.detach().clone() for k, t in weights_dict(net).items()}
    assert all(t.is_inference() for t in frozen.values())
    case = make_case(TRITON_SHAPES, gen)
    grads_seq = [grads_for(case, gen) for _ in range(2)]
    want = run(case, grads_seq, net, impl="reference")
    rule_mod._PREPARED_WEIGHTS.clear()
    got = copy.deepcopy(case)
    for grads in grads_seq:
        run_in_place(got, grads, frozen, "eager", config=net.config)
    assert not rule_mod._PREPARED_WEIGHTS
    err = rel_err(got, want)
    assert err < 1e-12, f"seed={seed}: {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("count", [1, 3])
def test_triton_step_tables_carry_addresses_and_corrections_exactly(dtype, count):
    if not kernels.triton_available("cpu"):
        pytest.skip("Triton's interpreter is not available")
    from learned_optim.kernels._triton_update import _step_tables

    ptrs = [(1 << 47) + 8 * i for i in range(6 * count)]
    coefs = ([1 / (1 - 0.9 ** (i + 1)) for i in range(count)]
             + [(1 / (1 - 0.999 ** (i + 1))) ** 0.5 for i in range(count)])
    tab, cf = _step_tables(ptrs, coefs, dtype, torch.device("cpu"))
    assert tab.shape == (6, count) and tab.dtype == torch.int64 and tab.flatten().tolist() == ptrs
    assert cf.dtype == dtype and torch.equal(cf, torch.tensor(coefs, dtype=dtype))
