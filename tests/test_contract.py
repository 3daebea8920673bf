"""The torch.optim contract, point by point, on every implementation path.

Copies (``copy.deepcopy``, ``pickle``) step like the original; an all-zero gradient history never
moves a parameter (all shipped weights, every path); ``load_state_dict`` honours its pre-hooks and
checks the state it is given; tensor ``lr`` follows torch's convention; ``betas`` is a per-group
hyperparameter that momentum-cycling schedulers drive, on every path.

Paths: "reference", "eager", the C loop ("c": hand-vectorized where the CPU has AVX-512/AVX2,
"c-portable"), and "triton" (the Triton kernel on CPU tensors under its interpreter, as in
test_kernels.py: ``TRITON_INTERPRET=1`` is set at collection time when unset).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import os
import pickle
import warnings

import pytest
import torch
from test_fastpath import assert_same, cpu_loop, fresh_seed, grads_for, make_case, random_net, run
from torch import nn

from learned_optim import LearnedOptimizer, from_pretrained, kernels, list_shipped
from learned_optim.hub import DEFAULT_WEIGHTS
from learned_optim.kernels import cpu
from learned_optim.update import lstm_rule

if importlib.util.find_spec("triton") is not None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

PATHS = ["reference", "eager", "c", "c-portable", "triton"]



@contextlib.contextmanager
def on_path(which: str):
    """The ``impl`` that runs path ``which`` (skips the test where that path cannot run here)."""
    if which in ("reference", "eager"):
        yield which
    elif which == "triton":
        if not kernels.triton_available("cpu"):
            pytest.skip("Triton's interpreter is not available (no triton, or TRITON_INTERPRET was not 1 at import)")
        old = kernels.FUSED_BACKENDS["cpu"]
        kernels.FUSED_BACKENDS["cpu"] = kernels.triton
        try:
            yield "fused"
        finally:
            kernels.FUSED_BACKENDS["cpu"] = old
    else:
        if not cpu.available():
            pytest.skip("the C loop does not build here")
        with cpu_loop(which):
            yield "fused"


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def _grads(model, i):
    gen = torch.Generator().manual_seed(500 + i)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in model.parameters()]


def _step(model, opt, grads):
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    opt.step()


def _assert_identical(m1, o1, m2, o2):
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
        s1, s2 = o1.state[p1], o2.state[p2]
        assert s1.keys() == s2.keys()
        for k in s1:
            assert s1[k].dtype == s2[k].dtype and torch.equal(s1[k], s2[k]), k


# ---------------------------------------------------------------- copies


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("kw", [dict(), dict(impl="eager", chunk_size=37, state_dtype=torch.bfloat16)],
                         ids=["auto", "eager-bf16-state"])
def test_copy_steps_exactly_like_the_original(how, kw):
    gen = torch.Generator().manual_seed(fresh_seed())
    model = _mlp()
    opt = LearnedOptimizer(model.parameters(), random_net(gen), lr=1e-2, weight_decay=0.01, betas=(0.85, 0.99), **kw)
    for i in range(3):
        _step(model, opt, _grads(model, i))
    m2, o2 = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    assert o2.network is not opt.network and (o2.impl, o2.chunk_size, o2.state_dtype) == (
        opt.impl, opt.chunk_size, opt.state_dtype)
    _assert_identical(model, opt, m2, o2)
    for i in range(3, 6):
        grads = _grads(model, i)
        _step(model, opt, grads)
        _step(m2, o2, grads)
    _assert_identical(model, opt, m2, o2)
    assert o2.state_dict()["learned_optim_weights"] == opt.state_dict()["learned_optim_weights"]


# ---------------------------------------------------------------- zero gradients


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("weights", list_shipped())
def test_step_is_noop_for_zero_grads(weights, path):
    """A coordinate whose gradient has been exactly 0 at every step (v_t = 0) does not move, apart
    from decoupled weight decay, which scales it by exactly (1 - lr wd) per step (as AdamW)."""
    net = from_pretrained(weights)
    gen = torch.Generator().manual_seed(fresh_seed())
    dtype = torch.float64 if path == "reference" else torch.float32
    zero = torch.randn(5, 7, generator=gen, dtype=dtype)  # gradient always exactly 0
    mixed = torch.randn(300, generator=gen, dtype=dtype)  # coordinates 0..99 always 0, the rest not
    decayed = torch.randn(40, generator=gen, dtype=dtype)  # gradient 0, weight decay on
    params = [nn.Parameter(t.clone()) for t in (zero, mixed, decayed)]
    lr, wd = 1e-2, 0.1
    with on_path(path) as impl:
        opt = LearnedOptimizer([{"params": params[:2]}, {"params": params[2:], "weight_decay": wd}], net, lr=lr,
                               impl=impl)
        for i in range(12):
            g = torch.randn(300, generator=gen, dtype=dtype)
            g[:100] = 0
            params[0].grad, params[1].grad, params[2].grad = torch.zeros_like(zero), g, torch.zeros_like(decayed)
            opt.step()
    assert torch.equal(params[0].detach(), zero), f"{weights} {path}: an all-zero gradient moved the parameter"
    assert torch.equal(params[1].detach()[:100], mixed[:100])
    assert (params[1].detach()[100:] != mixed[100:]).all(), "coordinates with a gradient must move"
    want = decayed.clone()
    for _ in range(12):
        want = want * (1 - lr * wd)
    assert torch.equal(params[2].detach(), want)


def test_embedding_padding_row_stays_zero():
    """nn.Embedding(padding_idx=0): the padding row's gradient is always 0, so it stays exactly 0
    (before the zero-v rule it reached |w| = 1.6e-2 after 300 steps at lr 1e-3)."""
    torch.manual_seed(0)
    emb = nn.Embedding(20, 8, padding_idx=0)
    opt = LearnedOptimizer(emb.parameters())
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        idx = torch.randint(0, 20, (32,), generator=gen)
        opt.zero_grad()
        emb(idx).square().sum().backward()
        opt.step()
    assert torch.equal(emb.weight[0], torch.zeros(8))
    assert emb.weight[1:].abs().sum() > 0


# ---------------------------------------------------------------- load_state_dict


def test_load_state_dict_pre_hook_result_is_what_is_loaded():
    """The dict a pre-hook returns is loaded, fp32 state of bf16 parameters included (torch.optim.Adam
    honours it the same way); the caller's dict is not modified; post-hooks see the final state."""
    model = _mlp(dtype=torch.bfloat16)
    opt = LearnedOptimizer(model.parameters())
    for i in range(2):
        _step(model, opt, _grads(model, i))
    sd = opt.state_dict()
    third = torch.tensor(1 / 3)  # not a bf16 value: a cast to the parameter's dtype would show

    def pre(optimizer, state_dict):
        new = copy.deepcopy(state_dict)
        new["state"][0]["exp_avg"] = torch.full_like(new["state"][0]["exp_avg"], third)
        new["param_groups"][0]["lr"] = 0.123
        return new

    seen = {}
    model2 = copy.deepcopy(model)
    opt2 = LearnedOptimizer(model2.parameters())
    opt2.register_load_state_dict_pre_hook(pre)
    p0 = next(model2.parameters())
    opt2.register_load_state_dict_post_hook(lambda o: seen.update(dtype=o.state[p0]["exp_avg"].dtype))
    opt2.load_state_dict(sd)
    assert opt2.state[p0]["exp_avg"].dtype == torch.float32 and (opt2.state[p0]["exp_avg"] == third).all()
    assert opt2.param_groups[0]["lr"] == 0.123 and seen["dtype"] == torch.float32
    assert not (sd["state"][0]["exp_avg"] == third).any() and sd["param_groups"][0]["lr"] == 1e-3


def test_state_dict_records_the_weights_and_warns_on_others():
    p = nn.Parameter(torch.ones(4))
    a = LearnedOptimizer([p])
    p.grad = torch.ones(4)
    a.step()
    sd = a.state_dict()
    ident = sd["learned_optim_weights"]
    assert ident["name"] == DEFAULT_WEIGHTS and len(ident["sha256"]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LearnedOptimizer([p], DEFAULT_WEIGHTS).load_state_dict(sd)  # same weights: silent
        LearnedOptimizer([p], from_pretrained(DEFAULT_WEIGHTS)).load_state_dict(sd)  # same content, no name
        torch.optim.Adam([p]).load_state_dict(sd)  # torch ignores the extra key
    for other in ("lstm-h4-v1", "adam-equivalent"):
        with pytest.warns(UserWarning, match=rf"made with weights '{DEFAULT_WEIGHTS}' sha256 .* uses '{other}' sha256"):
            LearnedOptimizer([p], other).load_state_dict(sd)
    net = from_pretrained(DEFAULT_WEIGHTS)
    b = LearnedOptimizer([p], net)
    before = b.weights_identity()["sha256"]
    with torch.no_grad():
        net.head_bias.add_(1.0)  # in place: the identity follows the weights' content
    assert b.weights_identity()["sha256"] != before and b.weights_identity()["name"] is None


@pytest.mark.parametrize("bad, match", [
    (lambda st: st.update(exp_avg=torch.zeros(3)), r"state 'exp_avg' of parameter 1 of param group 0 \(shape \[4\]\) "
                                                   r"has shape \(3,\), expected .*shape \(4,\)"),
    (lambda st: st.update(lstm_c=torch.zeros(4, 4, dtype=torch.int64)), r"'lstm_c' .* has dtype torch.int64"),
    (lambda st: st.pop("lstm_h"), r"'lstm_h' .* has no tensor"),
])
def test_load_state_dict_checks_shapes_and_dtypes_before_loading(bad, match):
    ps = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(4))]
    opt = LearnedOptimizer(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    bad(sd["state"][1])
    fresh = LearnedOptimizer(ps)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(sd)
    assert len(fresh.state) == 0


# ---------------------------------------------------------------- tensor lr


def test_tensor_lr():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        LearnedOptimizer([nn.Parameter(torch.ones(2))], lr=torch.tensor([1e-3, 1e-3]))
    opt = LearnedOptimizer([nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "lr": torch.ones(3)})
    results = []
    for lr in (float(torch.tensor(0.01)), torch.tensor(0.01)):  # the same fp32 value
        model = _mlp()
        opt = LearnedOptimizer(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for i in range(5):
            _step(model, opt, _grads(model, i))
            sched.step()
        results.append(([p.detach().clone() for p in model.parameters()], opt.param_groups[0]["lr"]))
    assert results[1][1] == results[0][1] == pytest.approx(0.0025)
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))


# ---------------------------------------------------------------- betas


@pytest.mark.parametrize("betas, exc, match", [
    ((0.9,), ValueError, r"betas must be a pair \(beta1, beta2\)"),
    ((1.0, 0.999), ValueError, r"betas\[0\] must be a finite float in \[0, 1\), got 1.0"),
    ((0.9, -0.1), ValueError, r"betas\[1\] must be a finite float in \[0, 1\)"),
    (("0.9", 0.999), TypeError, r"betas\[0\] must be a float"),
    ("ab", ValueError, "betas must be a pair"),
])
def test_bad_betas(betas, exc, match):
    with pytest.raises(exc, match=match):
        LearnedOptimizer([nn.Parameter(torch.ones(2))], betas=betas)
    opt = LearnedOptimizer([nn.Parameter(torch.ones(2))])
    with pytest.raises(exc, match=match):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "betas": betas})


def test_betas_default_to_the_trained_values_and_are_saved():
    opt = LearnedOptimizer([nn.Parameter(torch.ones(2))])
    cfg = opt.network.config
    assert opt.param_groups[0]["betas"] == (cfg.beta1, cfg.beta2) == (0.9, 0.999)
    assert opt.state_dict()["param_groups"][0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("make", [
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=10),
    lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=1e-3, max_lr=1e-2, step_size_up=3),
], ids=["onecycle", "cyclic"])
def test_momentum_cycling_schedulers_drive_beta1(make):
    model = _mlp()
    opt = LearnedOptimizer(model.parameters())
    sched = make(opt)  # the default cycle_momentum=True
    beta1s = []
    for i in range(6):
        _step(model, opt, _grads(model, i))
        sched.step()
        beta1s.append(opt.param_groups[0]["betas"][0])
        assert opt.param_groups[0]["betas"][1] == 0.999
    assert len(set(beta1s)) > 1 and all(0.8 <= b < 1 for b in beta1s)


@pytest.mark.parametrize("path", PATHS)
def test_betas_reach_every_path(path):
    """A step at betas (0.85, 0.99) equals the fp64 reference at those betas, which is lstm_rule
    with those constants and differs from the trained betas' step."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    net = random_net(gen)
    betas = (0.85, 0.99)
    case = make_case([(7,), (3, 5, 2, 2), (97,)], gen)
    grads_seq = [grads_for(case, gen) for _ in range(2)]
    want = run(case, grads_seq, net, impl="reference", betas=betas, weight_decay=0.1)
    assert not torch.equal(want[0]["p"], run(case, grads_seq, net, impl="reference", weight_decay=0.1)[0]["p"])
    # the reference's first step, by hand: lstm_rule with those betas in its config
    e, g = case[0], grads_seq[0][0]
    cfg = dataclasses.replace(net.config, beta1=betas[0], beta2=betas[1])
    w64 = {k: getattr(net, k).detach().double() for k in ("weight", "bias", "head_weight", "head_bias")}
    out = lstm_rule(g, e["m"], e["v"], e["h"], e["c"], float(e["step"]) + 1, w64, cfg)
    one = run(case, grads_seq[:1], net, impl="reference", betas=betas, weight_decay=0.1)
    torch.testing.assert_close(one[0]["p"], e["p"] * (1 - 0.01 * 0.1) - 0.01 * out.direction, rtol=0, atol=1e-15)
    with on_path(path) as impl:
        got = run(case, grads_seq, net, impl=impl, betas=betas, weight_decay=0.1)
        assert_same(got, want, rtol=1e-10, atol=1e-12, msg=f"seed={seed} {path} fp64")
        if path not in ("reference", "triton"):  # the fp32 loops (the SIMD one is fp32 only)
            case32 = [{k: (v.float() if k != "step" else v.clone()) for k, v in e.items()} for e in case]
            got = run(case32, [[x.float() for x in gs] for gs in grads_seq], net, impl=impl, betas=betas,
                      weight_decay=0.1)
            for a, b in zip(got, want):
                for key in ("p", "m", "v", "h", "c"):
                    err = ((a[key].double() - b[key]).abs() / (1 + b[key].abs())).max().item()
                    assert err < 1e-5, f"seed={seed} {path} fp32 {key}: {err:.2e}"
