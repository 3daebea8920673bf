"""The inner-optimizer API (``learned_optim.meta.inner``): same numbers as the rule, pure, differentiable."""

import torch

from learned_optim.meta.inner import InnerState, init_inner, inner_step
from learned_optim.network import CoordinatewiseLSTM, LSTMOptimizerConfig
from learned_optim.update import lstm_rule


def _net():
    net = CoordinatewiseLSTM(LSTMOptimizerConfig(hidden_size=3), seed=1)
    with torch.no_grad():
        net.head_weight.copy_(0.3 * torch.randn(net.head_weight.shape, generator=torch.Generator().manual_seed(2)))
    return net


def test_init_inner_is_zeros_at_step_0_and_keeps_params():
    p = torch.randn(7, dtype=torch.float64)
    s = init_inner(p, LSTMOptimizerConfig(hidden_size=3))
    assert s.params is p and s.step == 0
    assert s.h.shape == s.c.shape == (3, 7) and all(t.dtype == torch.float64 for t in s.tensors().values())
    assert all(not t.any() for t in (s.exp_avg, s.exp_avg_sq, s.h, s.c))
    fresh = InnerState.fresh(p, 3)
    assert fresh.params is not p and torch.equal(fresh.params, p)


def test_inner_step_is_the_rule_bit_for_bit():
    net, gen = _net(), torch.Generator().manual_seed(0)
    p = torch.randn(50, generator=gen)
    state = init_inner(p.clone(), net.config)
    m, v, h, c, ref = state.exp_avg, state.exp_avg_sq, state.h, state.c, p.clone()
    with torch.no_grad():
        for t in range(1, 6):
            g = torch.randn(50, generator=gen)
            state = inner_step(state, g, net, net.config, 1e-2)
            out = lstm_rule(g, m, v, h, c, t, net, net.config)  # an int step, as the few-shot loop passed
            m, v, h, c = out.exp_avg, out.exp_avg_sq, out.h, out.c
            ref = ref - 1e-2 * out.direction
            assert state.step == t
            assert torch.equal(state.params, ref) and torch.equal(state.h, h) and torch.equal(state.c, c)


def test_inner_step_is_pure_and_differentiable_in_lr_and_weights():
    net = _net()
    state = init_inner(torch.ones(4), net.config)
    before = {k: t.clone() for k, t in state.tensors().items()}
    log_lr = torch.tensor(-3.0, requires_grad=True)
    new = inner_step(state, torch.tensor([1.0, -2.0, 0.5, 0.0]), net, net.config, log_lr.exp())
    assert all(torch.equal(before[k], t) for k, t in state.tensors().items())  # nothing changed in place
    g_lr, g_w = torch.autograd.grad(new.params.sum(), [log_lr, net.head_weight])
    assert g_lr != 0 and g_w.abs().sum() > 0
    cut = new.detached()
    assert all(t.grad_fn is None for t in cut.tensors().values()) and cut.step == 1
