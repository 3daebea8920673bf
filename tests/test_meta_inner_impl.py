"""The graph-free inner step by the batched backends (``inner_step(impl=...)``, ``inner_impl``):
the reference's numbers up to rounding, pure, refused where autograd would be needed."""

import doctest
import math

import pytest
import torch
from conftest import train_interrupted_then_resumed

import learned_optim.meta.inner
from learned_optim.kernels import cpu
from learned_optim.meta.config import MetaTrainConfig, load_config
from learned_optim.meta.estimators import AntitheticPES, _unroll
from learned_optim.meta.inner import decay_mask, init_inner, inner_step
from learned_optim.meta.trainer import MetaTrainer
from learned_optim.network import CoordinatewiseLSTM, LSTMOptimizerConfig

SHAPES = [torch.Size([6, 5]), torch.Size([6]), torch.Size([0]), torch.Size([3, 2, 2]), torch.Size([1])]
IMPLS = ["auto", "eager"] + (["fused"] if cpu.available(4, 2, v2=True) else [])


def _net(version: int | str, dtype=torch.float64) -> CoordinatewiseLSTM:
    """version 1, 2 (sign equivariance and context), "cautious" (2 with the cautious mask) or
    "rescale" (and its per-tensor rescale)."""
    cfg = (LSTMOptimizerConfig(hidden_size=4) if version == 1 else
           LSTMOptimizerConfig(hidden_size=4, sign_equivariant=True, direction_bound=0.5,
                               context_features=("p_log_rms", "log_fan_in", "is_vector", "log_num_params",
                                                 "adam_log_rms", "grad_log_ratio"),
                               cautious_scale=1.25 if version in ("cautious", "rescale") else 0.0,
                               cautious_rescale=version == "rescale"))
    net = CoordinatewiseLSTM(cfg, seed=3).to(dtype)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():  # a non-zero head, so the LSTM and the context change the step
        for t in (net.head_weight, net.head_bias):
            t.copy_(0.5 * torch.randn(t.shape, generator=gen, dtype=dtype))
    return net


def _run(net, impl, steps=8, weight_decay=0.0, dtype=torch.float64):
    n = sum(math.prod(s) for s in SHAPES)
    gen = torch.Generator().manual_seed(0)
    state = init_inner(torch.randn(n, generator=gen, dtype=dtype), net.config)
    with torch.no_grad():
        for k in range(steps):
            g = torch.randn(n, generator=gen, dtype=dtype)
            g[3] = 0.0  # one coordinate that never sees a gradient: it must not move
            state = inner_step(state, g, net, net.config, 1e-2 * (1 + k % 3), SHAPES, weight_decay, impl=impl)
    return state


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("version", [1, 2, "cautious", "rescale"])
@pytest.mark.parametrize("decay", ["none", "float", "mask"])
def test_batched_inner_step_matches_the_reference_in_float64(impl, version, decay):
    net = _net(version)
    wd = {"none": 0.0, "float": 0.1, "mask": decay_mask(SHAPES, 0.1, torch.float64)}[decay]
    ref, got = _run(net, "reference", weight_decay=wd), _run(net, impl, weight_decay=wd)
    assert got.step == ref.step == 8
    for name, t in ref.tensors().items():
        assert got.tensors()[name].dtype == t.dtype and got.tensors()[name].shape == t.shape, name
        torch.testing.assert_close(got.tensors()[name], t, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("version", [1, 2])  # 1: no context, the flat vector is one block
def test_batched_inner_step_in_float32_agrees_to_rounding_and_is_pure(version):
    net = _net(version, torch.float32)
    state = _run(net, "reference", steps=3, dtype=torch.float32)
    before = {k: t.clone() for k, t in state.tensors().items()}
    g = torch.randn(state.params.shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = inner_step(state, g, net, net.config, 1e-3, SHAPES)
        got = inner_step(state, g, net, net.config, torch.tensor(1e-3), SHAPES, impl="auto")
    assert all(torch.equal(before[k], t) for k, t in state.tensors().items())  # nothing changed in place
    for name, t in ref.tensors().items():
        torch.testing.assert_close(got.tensors()[name], t, rtol=1e-5, atol=1e-6, msg=name)


def test_batched_inner_step_refuses_autograd_and_bad_values():
    net = _net(2, torch.float32)
    state = init_inner(torch.zeros(sum(math.prod(s) for s in SHAPES)), net.config)
    g = torch.ones_like(state.params)
    with pytest.raises(ValueError, match="impl='auto'.*without autograd.*torch.no_grad"):
        inner_step(state, g, net, net.config, 1e-3, SHAPES, impl="auto")
    with pytest.raises(ValueError, match="impl must be one of"):
        inner_step(state, g, net, net.config, 1e-3, SHAPES, impl="c")
    with torch.no_grad(), pytest.raises(ValueError, match="needs one learning rate"):
        inner_step(state, g, net, net.config, torch.ones(2), SHAPES, impl="auto")
    with torch.no_grad(), pytest.raises(ValueError, match="pass shapes"):
        inner_step(state, g, net, net.config, 1e-3, impl="auto")
    with torch.no_grad(), pytest.raises(ValueError, match="hold 49 values, params has 47"):
        inner_step(init_inner(torch.zeros(47), net.config), torch.ones(47), net, net.config, 1e-3, SHAPES,
                   impl="auto")
    with pytest.raises(ValueError, match="differentiable unroll needs impl='reference'"):
        _unroll(None, SHAPES, state, 0, [None], net, net.config, 1e-3, differentiable=True, log_cap=1.0,
                impl="auto")
    with pytest.raises(ValueError, match="inner_impl"):
        MetaTrainConfig(inner_impl="c")
    with pytest.raises(ValueError, match="inner_impl must be one of"):
        AntitheticPES(inner_impl="fast")


def _tiny_trainer(tmp_path, impl):
    cfg = load_config("tiny").replace(inner_impl=impl, network={**load_config("default").network})
    return MetaTrainer(cfg, tmp_path / impl, progress=False)


def test_pes_and_validation_with_the_batched_step_follow_the_reference(tmp_path):
    ests, evals = {}, {}
    for impl in ("reference", "auto"):
        t = _tiny_trainer(tmp_path, impl)
        assert t.estimator.inner_impl == impl
        evals[impl] = t.evaluate()
        t.trajs = [t._new_traj(i, first=False) for i in range(t.config.num_trajectories)]
        g, stats = t._estimate()
        ests[impl] = (g, stats["meta_loss"])
    g_ref, g_auto = ests["reference"][0], ests["auto"][0]
    assert g_ref.abs().sum() > 0
    # J(+) - J(-) is O(sigma), divided by sigma^2: rounding differences are amplified, but stay small
    assert float((g_auto - g_ref).norm() / g_ref.norm()) < 1e-3
    assert ests["auto"][1] == pytest.approx(ests["reference"][1], rel=1e-5)
    assert evals["auto"]["metric"] == pytest.approx(evals["reference"]["metric"], rel=1e-4, abs=1e-5)


def test_inner_module_examples_run():
    result = doctest.testmod(learned_optim.meta.inner, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def test_run_with_the_batched_step_is_deterministic_and_resumes_exactly(tmp_path):
    from learned_optim.meta.checkpoint import CHECKPOINT_NAME

    cfg = load_config("tiny").replace(inner_impl="auto", network={**load_config("default").network}, meta_steps=6,
                                      checkpoint_every=1, eval_every=3)
    MetaTrainer(cfg, tmp_path / "ref", progress=False).train()
    resumed, b = train_interrupted_then_resumed(cfg, tmp_path / "cut", 4)
    assert resumed.config.inner_impl == "auto" and resumed.estimator.inner_impl == "auto"
    a = torch.load(tmp_path / "ref" / CHECKPOINT_NAME, weights_only=True)["net"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["head_weight"].abs().sum() > 0  # the run moved off its zero head (exactly Adam)
