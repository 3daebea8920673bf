"""Format version 2 of the rule: sign equivariance and per-tensor context, in the reference, the
eager backend, the inner-loop API and the file format; version 1 unchanged."""

import dataclasses
import json
import math

import pytest
import torch

from learned_optim import LearnedOptimizer
from learned_optim.hub import WeightsError, load_directory, save_pretrained
from learned_optim.meta.inner import init_inner, inner_step
from learned_optim.network import CONTEXT_FEATURES, CoordinatewiseLSTM, LSTMOptimizerConfig
from learned_optim.update import flat_context, flat_tensor_context, learned_update, lstm_rule, tensor_context

CONFIGS = {
    "sign": LSTMOptimizerConfig(sign_equivariant=True),
    "context": LSTMOptimizerConfig(context_features=CONTEXT_FEATURES),
    "both": LSTMOptimizerConfig(sign_equivariant=True, context_features=("p_log_rms", "is_vector")),
    "cautious": LSTMOptimizerConfig(sign_equivariant=True, context_features=("p_log_rms", "is_vector"),
                                    cautious_scale=1.5),
    "rescale": LSTMOptimizerConfig(sign_equivariant=True, context_features=("p_log_rms", "is_vector"),
                                   cautious_scale=1.5, cautious_rescale=True),
}
SHAPES = [(7, 5), (5,), (9000,), (3, 2, 2), (1,)]


def random_net(config, seed=1):
    net = CoordinatewiseLSTM(config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


def run_steps(net, impl, dtype, *, sign=1.0, steps=4, zero_params=False, staggered=False):
    """Steps of learned_update on several tensors; returns each step's parameter values."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    if zero_params:
        params = [torch.zeros_like(p) for p in params]
    hs = net.config.hidden_size
    state = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p), h=torch.zeros(hs, *p.shape, dtype=dtype),
                  c=torch.zeros(hs, *p.shape, dtype=dtype), step=torch.tensor(0.0)) for p in params]
    if staggered:
        state[0]["step"].fill_(3.0)
    history = []
    for _ in range(steps):
        grads = [(sign * torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(dtype) for p in params]
        grads[1][0] = 0.0  # a coordinate that never sees a gradient
        learned_update(params, grads, *([s[k] for s in state] for k in ("m", "v", "h", "c", "step")),
                       weights=net, config=net.config, lr=1e-2, weight_decay=0.1, maximize=False, impl=impl)
        history.append([p.clone() for p in params])
    return history


def test_v1_config_serialises_as_before():
    d = LSTMOptimizerConfig().to_dict()
    assert "sign_equivariant" not in d and "context_features" not in d
    assert LSTMOptimizerConfig().format_version == 1
    assert LSTMOptimizerConfig.from_dict(d) == LSTMOptimizerConfig()
    for cfg in CONFIGS.values():
        assert cfg.format_version == 2
        assert LSTMOptimizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("kwargs, name", [
    ({"context_features": ("p_rms",)}, "context_features"),
    ({"context_features": ("is_vector", "is_vector")}, "context_features"),
    ({"context_features": "is_vector"}, "context_features"),
    ({"sign_equivariant": 1}, "sign_equivariant"),
    ({"cautious_scale": -1.0}, "cautious_scale"),
    ({"cautious_scale": float("nan")}, "cautious_scale"),
    ({"cautious_scale": "1.5"}, "cautious_scale"),
    ({"cautious_rescale": 1, "cautious_scale": 1.0}, "cautious_rescale"),
    ({"cautious_rescale": True}, "cautious_rescale"),  # without the mask
])
def test_bad_v2_fields_name_the_field(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        LSTMOptimizerConfig(**kwargs)


def test_shapes_and_zero_head_is_adam():
    cfg = CONFIGS["both"]
    net = CoordinatewiseLSTM(cfg).double()
    assert net.expected_shapes()["weight"] == (16, 2 + 2 + 4)
    assert net.expected_shapes()["head_weight"] == (2, 4 + 2)
    g = torch.randn(50, dtype=torch.float64)
    z = torch.zeros(50, dtype=torch.float64)
    h = torch.zeros(4, 50, dtype=torch.float64)
    out = lstm_rule(g, z, z, h, h, 1.0, net, cfg, torch.tensor([0.3, 1.0], dtype=torch.float64))
    adam = lstm_rule(g, z, z, h, h, 1.0, CoordinatewiseLSTM().double(), LSTMOptimizerConfig())
    assert torch.equal(out.direction, adam.direction)


def test_cautious_mask_steps_only_where_momentum_and_gradient_agree():
    """With a zero head the rule is Adam; the cautious mask keeps Adam's step times the scale
    where sign(m_t) sign(g_t) > 0 and gives exactly 0 elsewhere (disagreeing signs, g = 0, m_t = 0)."""
    cfg = LSTMOptimizerConfig(sign_equivariant=True, cautious_scale=1.5)
    net = CoordinatewiseLSTM(cfg).double()
    m_prev = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 0.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.5, -0.5, -0.5, 0.5, -20.0, 0.0, -4.5], dtype=torch.float64)
    v_prev = torch.full((7,), 0.25, dtype=torch.float64)
    h = torch.zeros(4, 7, dtype=torch.float64)
    out = lstm_rule(g, m_prev, v_prev, h, h, 3.0, net, cfg)
    adam = lstm_rule(g, m_prev, v_prev, h, h, 3.0, net, dataclasses.replace(cfg, cautious_scale=0.0))
    m_t = 0.9 * m_prev + 0.1 * g  # 0.95, 0.85, -0.95, -0.85, -1.1, 0, 0 (m_t = 0 exactly at the last two)
    assert m_t[6] == 0.0
    keep = torch.tensor([True, False, True, False, True, False, False])
    assert torch.equal(keep, torch.sign(m_t) * torch.sign(g) > 0)
    assert torch.equal(out.direction[keep], 1.5 * adam.direction[keep])
    assert (out.direction[~keep] == 0).all() and (adam.direction[[1, 3]] != 0).all()
    assert out.direction[4] < 0  # the kept step of a coordinate whose momentum turned with g


def test_cautious_rescale_multiplies_each_tensors_kept_steps_by_numel_over_kept_plus_one():
    """The same coordinates as above: 3 of 7 kept, so the kept steps are the constant mask's times
    7 / 4; a factor passed in replaces the count (a shard's, or a flat vector's per coordinate)."""
    cfg = LSTMOptimizerConfig(sign_equivariant=True, cautious_scale=1.5, cautious_rescale=True)
    assert cfg.format_version == 2 and cfg.to_dict()["cautious_rescale"] is True
    assert "cautious_rescale" not in dataclasses.replace(cfg, cautious_rescale=False).to_dict()
    net = CoordinatewiseLSTM(cfg).double()
    m_prev = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 0.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.5, -0.5, -0.5, 0.5, -20.0, 0.0, -4.5], dtype=torch.float64)
    v_prev = torch.full((7,), 0.25, dtype=torch.float64)
    h = torch.zeros(4, 7, dtype=torch.float64)
    masked = lstm_rule(g, m_prev, v_prev, h, h, 3.0, net, dataclasses.replace(cfg, cautious_rescale=False))
    out = lstm_rule(g, m_prev, v_prev, h, h, 3.0, net, cfg)
    torch.testing.assert_close(out.direction, masked.direction * 7 / 4, rtol=1e-15, atol=0)
    given = lstm_rule(g, m_prev, v_prev, h, h, 3.0, net, cfg, cautious_factor=torch.arange(7.0, dtype=torch.float64))
    torch.testing.assert_close(given.direction, masked.direction * torch.arange(7.0, dtype=torch.float64))
    # a flat vector of two tensors: each coordinate gets its own tensor's count
    from learned_optim.update import flat_cautious_factor
    factor = flat_cautious_factor(g, m_prev, [torch.Size([4]), torch.Size([3])], cfg)
    assert factor.tolist() == [4 / 3] * 4 + [3 / 2] * 3  # kept: 2 of the first 4, 1 of the last 3
    assert flat_cautious_factor(g, m_prev, [torch.Size([7])], dataclasses.replace(cfg, cautious_rescale=False)) is None


def test_with_cautious_mask_keeps_the_weights_and_rejects_bad_scales():
    net = random_net(CONFIGS["both"]).double()
    masked = net.with_cautious_mask(2.0)
    assert masked.config == dataclasses.replace(net.config, cautious_scale=2.0)
    assert masked.provenance["cautious_mask"] == 2.0 and "cautious_mask" not in net.provenance
    assert all(torch.equal(getattr(masked, k), getattr(net, k)) for k in ("weight", "bias", "head_weight", "head_bias"))
    for bad, exc in ((0.0, ValueError), (-1.0, ValueError), (float("inf"), ValueError), ("1", TypeError),
                     (True, TypeError)):
        with pytest.raises(exc, match="scale"):
            net.with_cautious_mask(bad)
    rescaled = net.with_cautious_mask(1.0, rescale=True)
    assert rescaled.config == dataclasses.replace(net.config, cautious_scale=1.0, cautious_rescale=True)
    assert rescaled.provenance["cautious_rescale"] is True and "cautious_rescale" not in masked.provenance
    assert "cautious_rescale=True" in repr(rescaled)
    with pytest.raises(TypeError, match="rescale"):
        net.with_cautious_mask(1.0, rescale=1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lstm_rule_is_exactly_sign_equivariant(name, dtype):
    cfg = CONFIGS[name].__class__(**{**CONFIGS[name].__dict__, "sign_equivariant": True})
    net = random_net(cfg).to(dtype)
    gen = torch.Generator().manual_seed(3)
    n, hs = 300, cfg.hidden_size
    m = torch.zeros(n, dtype=dtype)
    v, h, c = torch.zeros(n, dtype=dtype), torch.zeros(hs, n, dtype=dtype), torch.zeros(hs, n, dtype=dtype)
    state_pos, state_neg = (m, v, h, c), (m.clone(), v.clone(), h.clone(), c.clone())
    ctx = torch.tensor([0.5, -1.0, 1.0, -2.0, -0.5, -1.5, 0.7, 0.3, 0.2][: cfg.num_context], dtype=dtype)
    for t in range(1, 6):
        g = torch.randn(n, generator=gen, dtype=dtype)
        g[:5] = 0.0
        a = lstm_rule(g, *state_pos[:2], *state_pos[2:], float(t), net, cfg, ctx if cfg.num_context else None)
        b = lstm_rule(-g, *state_neg[:2], *state_neg[2:], float(t), net, cfg, ctx if cfg.num_context else None)
        assert torch.equal(a.direction, -b.direction)
        assert torch.equal(a.h, b.h) and torch.equal(a.c, b.c)
        assert (a.direction[:5] == 0).all()  # zero gradient history: exactly zero step
        state_pos = (a.exp_avg, a.exp_avg_sq, a.h, a.c)
        state_neg = (b.exp_avg, b.exp_avg_sq, b.h, b.c)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eager_matches_fp64_reference(name):
    net = random_net(CONFIGS[name])
    ref = run_steps(net, "reference", torch.float64, staggered=True)
    for impl, dtype, tol in (("eager", torch.float32, 1e-5), ("eager", torch.float64, 1e-12)):
        out = run_steps(net, impl, dtype, staggered=True)
        for a, b in zip(out, ref):
            for x, y in zip(a, b):
                torch.testing.assert_close(x.double(), y, rtol=0, atol=tol)


@pytest.mark.parametrize("impl", ["reference", "eager", "auto"])
def test_trajectories_are_exactly_antisymmetric_under_gradient_sign_flip(impl):
    """From zero parameters, negating every gradient negates the whole trajectory: no drift
    under zero-mean noise (version 1 drifts: its additive head term ignores the sign)."""
    net = random_net(CONFIGS["both"])
    a = run_steps(net, impl, torch.float32, zero_params=True, steps=6)
    b = run_steps(net, impl, torch.float32, zero_params=True, sign=-1.0, steps=6)
    for xs, ys in zip(a, b):
        assert all(torch.equal(x, -y) for x, y in zip(xs, ys))
    v1 = random_net(LSTMOptimizerConfig())
    a1 = run_steps(v1, impl, torch.float32, zero_params=True)
    b1 = run_steps(v1, impl, torch.float32, zero_params=True, sign=-1.0)
    assert not all(torch.equal(x, -y) for x, y in zip(a1[-1], b1[-1]))


def _adam_log_rms_by_hand(m, v, step, cfg):
    """log10 rms of Adam's direction from the moments after ``step`` steps, as documented."""
    m, v = m.double(), v.double()
    a = (m / (1 - cfg.beta1 ** step)) / ((v / (1 - cfg.beta2 ** step)).sqrt() + cfg.eps)
    return math.log10(float(a.pow(2).mean().sqrt()) + 1e-8)


def _grad_log_ratio_by_hand(g, v, step, cfg):
    """log10(rms(g) / rms(sqrt(v_hat))) from the second moment after ``step`` steps, as documented."""
    v_hat = v.double() / (1 - cfg.beta2 ** step)
    return math.log10(float(g.double().pow(2).mean().sqrt()) / float(v_hat.sqrt().pow(2).mean().sqrt()))


def test_context_values_and_flat_context():
    cfg = LSTMOptimizerConfig(context_features=CONTEXT_FEATURES)
    params = [torch.full((4, 25), 0.1), torch.zeros(3), torch.full((2, 3, 2, 2), 2.0)]
    gen = torch.Generator().manual_seed(0)
    ms = [torch.randn(p.shape, generator=gen) * 0.1 for p in params]
    vs = [torch.rand(p.shape, generator=gen) * 0.01 for p in params]
    ms[1].zero_()
    vs[1].zero_()  # a tensor whose gradients were all 0: Adam's direction is 0, the input the clip's -5
    gs = [torch.randn(p.shape, generator=gen) * 0.05 for p in params]
    gs[1].zero_()  # no gradient ever (v = 0): the ratio input is 0
    steps = [torch.tensor(3.0)] * 3
    ctx = tensor_context(params, cfg, exp_avgs=ms, exp_avg_sqs=vs, state_steps=steps, grads=gs)
    size = math.log10(127) - 5  # 100 + 3 + 24 values, centred at 1e5
    adam = [_adam_log_rms_by_hand(ms[0], vs[0], 3, cfg), -5.0, _adam_log_rms_by_hand(ms[2], vs[2], 3, cfg)]
    ratio = [_grad_log_ratio_by_hand(gs[0], vs[0], 3, cfg), 0.0, _grad_log_ratio_by_hand(gs[2], vs[2], 3, cfg)]
    assert -5 < adam[0] < 5 and -5 < adam[2] < 5 and ratio[0] != 0 and ratio[2] != 0
    # 127 values: no large vectors, no large-model ratio
    expected = torch.tensor([[-1.0, 1.3979400086720377, 0.0, size, size, adam[0], 0.0, ratio[0], 0.0],
                             [-5.0, 0.0, 1.0, size, size, -5.0, 0.0, 0.0, 0.0],
                             [0.30103, 1.0791812460476249, 0.0, size, size, adam[2], 0.0, ratio[2], 0.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(ctx, expected, atol=1e-5, rtol=0)
    flat = torch.cat([p.reshape(-1) for p in params])
    moments = (torch.cat([m.reshape(-1) for m in ms]), torch.cat([v.reshape(-1) for v in vs]), 3)
    per_coord = flat_context(flat, [p.shape for p in params], cfg, moments, torch.cat([g.reshape(-1) for g in gs]))
    assert per_coord.shape == (9, flat.numel())
    torch.testing.assert_close(per_coord.T.double(), ctx.repeat_interleave(torch.tensor([100, 3, 24]), dim=0),
                               atol=1e-5, rtol=0)


def test_adam_log_rms_is_zero_before_the_first_step_and_needs_the_moments():
    """Before a tensor's first step the input is 0 (log10 of 1, the rms of Adam's first step,
    sign(g)); on the first step it is log10 of the fraction of non-zero gradients; without the
    moments the error names them."""
    cfg = LSTMOptimizerConfig(context_features=("adam_log_rms",))
    params = [torch.ones(4, 5), torch.ones(3)]
    zeros = [torch.zeros_like(p) for p in params]
    ctx = tensor_context(params, cfg, exp_avgs=zeros, exp_avg_sqs=zeros, state_steps=[0.0, torch.tensor(0.0)])
    assert ctx[:, 0].tolist() == [0.0, 0.0]
    flat = torch.zeros(23)
    assert flat_context(flat, [p.shape for p in params], cfg, (flat, flat, 0)).abs().max() == 0
    g = torch.tensor([1.0, -2.0, 0.0, 0.0])  # after one step: m = 0.1 g, v = 0.001 g^2, so m_hat/sqrt(v_hat) = sign(g)
    one = tensor_context([g], cfg, exp_avgs=[0.1 * g], exp_avg_sqs=[1e-3 * g * g], state_steps=[1.0])
    assert abs(float(one[0, 0]) - math.log10(math.sqrt(0.5))) < 1e-6
    with pytest.raises(ValueError, match="exp_avgs, exp_avg_sqs and state_steps"):
        tensor_context(params, cfg)
    with pytest.raises(ValueError, match="moments"):
        flat_context(flat, [p.shape for p in params], cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_second_moment_sums_are_each_tensors_sum_in_order(dtype):
    """The sums of v that grad_log_ratio reads: tensors above and below SUM_ONE_BY_ONE mixed, each
    one's own sum (at least fp32 accumulation), in the tensors' order; none gives an empty result."""
    from learned_optim.update import SUM_ONE_BY_ONE, _stacked_sums
    gen = torch.Generator().manual_seed(3)
    sizes = [5, SUM_ONE_BY_ONE, 1, 3 * SUM_ONE_BY_ONE + 7, 0, SUM_ONE_BY_ONE - 1]
    vs = [(torch.rand(n, generator=gen) * 10.0 ** (i - 3)).to(dtype) for i, n in enumerate(sizes)]
    want = torch.stack([v.double().sum() for v in vs])
    got = _stacked_sums(vs, torch.float64)
    assert got.dtype == torch.float64 and got.shape == (len(sizes),)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert _stacked_sums([], torch.float32).shape == (0,)


@pytest.mark.parametrize("impl", ["reference", "eager", "auto"])
def test_gradient_norms_passed_in_give_the_same_step(impl):
    """learned_update with the non-finite check's gradient norms (grad_norms, what LearnedOptimizer
    passes) updates bit for bit as computing them itself, a skipped tensor's norm dropped with it;
    a wrong count of norms is an error naming the argument."""
    from learned_optim.update import finite_flags_and_norms
    cfg = LSTMOptimizerConfig(sign_equivariant=True, context_features=("p_log_rms", "grad_log_ratio"),
                              cautious_scale=1.0, cautious_rescale=True)
    net = random_net(cfg)
    outs = []
    for reuse in (False, True):
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen) for s in SHAPES]
        state = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p), h=torch.zeros(4, *p.shape),
                      c=torch.zeros(4, *p.shape), step=torch.tensor(0.0)) for p in params]
        for t in range(3):
            grads = [torch.randn(p.shape, generator=gen) for p in params]
            finite = torch.ones(len(params), dtype=torch.bool)
            if t == 1:
                grads[2][0] = float("nan")
                finite[2] = False
            flags, norms = finite_flags_and_norms(grads)
            assert flags.tolist() == finite.tolist()
            learned_update(params, grads, *([s[k] for s in state] for k in ("m", "v", "h", "c", "step")),
                           weights=net, config=cfg, lr=1e-2, weight_decay=0.0, maximize=False, impl=impl,
                           finite=finite, grad_norms=norms if reuse else None)
        outs.append([p.clone() for p in params] + [s["h"] for s in state])
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="grad_norms needs one norm per parameter"):
        learned_update(params, grads, *([s[k] for s in state] for k in ("m", "v", "h", "c", "step")),
                       weights=net, config=cfg, lr=1e-2, weight_decay=0.0, maximize=False, impl=impl,
                       grad_norms=norms[:2])


def test_grad_log_ratio_reads_the_gradient_against_the_second_moment():
    """0 before the first step; log10 of rms(g) / rms(sqrt(v_hat)) after it, by hand; a constant
    gradient reads 0 at every step (its v_hat is g^2); clipped; the same from the flat vector;
    without the gradients the error names them."""
    cfg = LSTMOptimizerConfig(context_features=("grad_log_ratio",))
    params = [torch.ones(4, 5), torch.ones(3)]
    gs = [torch.full((4, 5), 0.3), torch.tensor([1.0, -2.0, 0.5])]
    zeros = [torch.zeros_like(p) for p in params]
    ctx = tensor_context(params, cfg, exp_avgs=zeros, exp_avg_sqs=zeros, state_steps=[0.0, torch.tensor(0.0)],
                         grads=gs)
    assert ctx[:, 0].tolist() == [0.0, 0.0]
    # v after 5 steps of the same gradient: (1 - beta2^5) g^2, so v_hat = g^2 and the input is 0
    vs = [(1 - cfg.beta2 ** 5) * g * g for g in gs]
    ctx = tensor_context(params, cfg, exp_avgs=zeros, exp_avg_sqs=vs, state_steps=[5.0, 5.0], grads=gs)
    torch.testing.assert_close(ctx[:, 0], torch.zeros(2, dtype=torch.float64), atol=1e-7, rtol=0)
    ctx = tensor_context(params, cfg, exp_avgs=zeros, exp_avg_sqs=vs, state_steps=[5.0, 5.0],
                         grads=[10 * gs[0], 1e-9 * gs[1]])
    torch.testing.assert_close(ctx[:, 0], torch.tensor([1.0, -5.0], dtype=torch.float64), atol=1e-6, rtol=0)
    gen = torch.Generator().manual_seed(1)
    v_rand = [torch.rand(p.shape, generator=gen) * 0.01 for p in params]
    ctx = tensor_context(params, cfg, exp_avgs=zeros, exp_avg_sqs=v_rand, state_steps=[7.0, 7.0], grads=gs)
    by_hand = [_grad_log_ratio_by_hand(g, v, 7, cfg) for g, v in zip(gs, v_rand)]
    torch.testing.assert_close(ctx[:, 0], torch.tensor(by_hand, dtype=torch.float64), atol=1e-6, rtol=0)
    flat = torch.cat([p.reshape(-1) for p in params])
    flat_v, flat_g = torch.cat([v.reshape(-1) for v in v_rand]), torch.cat([g.reshape(-1) for g in gs])
    per_coord = flat_context(flat, [p.shape for p in params], cfg, (torch.zeros(23), flat_v, 7), flat_g)
    torch.testing.assert_close(per_coord[0].double(), ctx[:, 0].repeat_interleave(torch.tensor([20, 3])),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="gradients: pass grads"):
        tensor_context(params, cfg, exp_avgs=zeros, exp_avg_sqs=vs, state_steps=[5.0, 5.0])
    with pytest.raises(ValueError, match="gradient: pass grads"):
        flat_context(flat, [p.shape for p in params], cfg, (flat, flat_v, 7))


def test_model_size_feature_counts_the_given_size_clipped():
    cfg = LSTMOptimizerConfig(context_features=("log_num_params",))
    params = [torch.ones(10, 10), torch.ones(5)]
    assert tensor_context(params, cfg)[:, 0].tolist() == [math.log10(105) - 5] * 2
    assert tensor_context(params, cfg, num_params=10**7)[:, 0].tolist() == [2.0, 2.0]
    assert tensor_context(params, cfg, num_params=10**12)[:, 0].tolist() == [5.0, 5.0]  # feature_clip
    assert tensor_context(params, cfg, num_params=0)[:, 0].tolist() == [-5.0, -5.0]
    for bad in (-1, 2.5, True, "1e5"):
        with pytest.raises(ValueError, match="num_params"):
            tensor_context(params, cfg, num_params=bad)


def test_capped_model_size_feature_is_zero_from_1e5_values():
    cfg = LSTMOptimizerConfig(context_features=("log_num_params", "log_num_params_capped"))
    params = [torch.ones(10, 10), torch.ones(5)]
    for num_params, size, capped in ((105, math.log10(105) - 5, math.log10(105) - 5), (10**5, 0.0, 0.0),
                                     (834_000, math.log10(834_000) - 5, 0.0), (10**12, 5.0, 0.0), (0, -5.0, -5.0)):
        ctx = tensor_context(params, cfg, num_params=num_params)
        assert ctx[:, 0].tolist() == [size] * 2 and ctx[:, 1].tolist() == [capped] * 2, num_params


def test_large_vector_feature_ramps_from_1e4_to_1e5_values_on_vectors_only():
    cfg = LSTMOptimizerConfig(context_features=("is_vector_large", "is_vector"))
    assert cfg.reads_model_size
    params = [torch.ones(10, 10), torch.ones(5), torch.ones(2, 3, 4)]
    for num_params, ramp in ((105, 0.0), (10**4, 0.0), (10**4.5, 0.5), (10**5, 1.0), (834_000, 1.0), (0, 0.0)):
        ctx = tensor_context(params, cfg, num_params=round(num_params))
        assert ctx[:, 1].tolist() == [0.0, 1.0, 0.0]
        assert ctx[:, 0].tolist() == pytest.approx([0.0, ramp, 0.0], abs=1e-5), num_params


def test_large_model_grad_log_ratio_is_the_ratio_times_the_size_ramp():
    """grad_log_ratio_large: grad_log_ratio times clip(log10(P / 1e4), 0, 1), from the per-tensor
    context and from the flat context of meta-training alike; it reads the size, the moments and
    the gradient."""
    cfg = LSTMOptimizerConfig(context_features=("grad_log_ratio_large", "grad_log_ratio"))
    assert cfg.reads_model_size and cfg.reads_moments and cfg.reads_grads
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(10, 10, generator=gen), torch.randn(5, generator=gen)]
    vs = [torch.rand(p.shape, generator=gen) * 0.01 for p in params]
    gs = [torch.randn(p.shape, generator=gen) * 0.05 for p in params]
    steps = [torch.tensor(4.0)] * 2
    flat_g = torch.cat([g.reshape(-1) for g in gs])
    moments = (torch.zeros(105), torch.cat([v.reshape(-1) for v in vs]), 4)
    for num_params, ramp in ((105, 0.0), (10**4, 0.0), (31_623, 0.5), (10**5, 1.0), (834_000, 1.0)):
        ctx = tensor_context(params, cfg, num_params=num_params, exp_avgs=vs, exp_avg_sqs=vs,
                             state_steps=steps, grads=gs)
        assert ctx[:, 1].abs().min() > 0.1  # the ratio itself
        torch.testing.assert_close(ctx[:, 0], ctx[:, 1] * ramp, atol=1e-5, rtol=0)
    # the flat context of meta-training takes the size from the flat vector: 105 values, no ratio
    flat = flat_tensor_context(torch.cat([p.reshape(-1) for p in params]), [p.shape for p in params], cfg, moments,
                               flat_g)
    assert flat[:, 0].tolist() == [0.0, 0.0] and flat[:, 1].abs().min() > 0.1
    big = [torch.randn(400, 300, generator=gen)]  # 120k values: the whole ratio
    big_v, big_g = [torch.rand(400, 300, generator=gen)], [torch.randn(400, 300, generator=gen)]
    flat = flat_tensor_context(big[0].reshape(-1), [big[0].shape], cfg, (big_v[0].reshape(-1) * 0,
                               big_v[0].reshape(-1), 2), big_g[0].reshape(-1))
    torch.testing.assert_close(flat[:, 0], flat[:, 1], atol=0, rtol=0)
    assert float(flat[0, 1]) != 0


def test_model_size_feature_sees_every_group_and_gradless_parameter():
    """The optimizer passes the size of all its parameters: splitting them into groups, or a
    parameter without a gradient this step, does not change the step of the others."""
    cfg = LSTMOptimizerConfig(sign_equivariant=True, context_features=("log_num_params",))
    net = random_net(cfg)
    with torch.no_grad():
        net.head_weight[:, -1] = 3.0  # a strong dependence on the model size
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=gen) for s in ((8, 5), (5,), (300,))]
    grads = [torch.randn(p.shape, generator=gen) for p in init]

    def run(grouping, with_third_grad):
        ps = [p.clone().requires_grad_() for p in init]
        groups = [{"params": [ps[i] for i in g]} for g in grouping]
        opt = LearnedOptimizer(groups, weights=net, lr=1e-2)
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        if not with_third_grad:
            ps[2].grad = None
        opt.step()
        return [p.detach() for p in ps]

    one = run([[0, 1, 2]], True)
    assert all(torch.equal(a, b) for a, b in zip(one, run([[0], [1, 2]], True)))
    no_grad = run([[0, 1, 2]], False)
    assert torch.equal(no_grad[2], init[2])
    assert torch.equal(no_grad[0], one[0]) and torch.equal(no_grad[1], one[1])
    # the size does enter the step: counting only the first two tensors changes it, passing the
    # optimizer's count gives its step exactly
    def update_first_two(num_params):
        ps = [p.clone() for p in init[:2]]
        moments = [[torch.zeros_like(p) for p in ps] for _ in range(2)]
        lstm = [[torch.zeros(cfg.hidden_size, *p.shape) for p in ps] for _ in range(2)]
        learned_update(ps, grads[:2], *moments, *lstm, [torch.tensor(0.0) for _ in ps], weights=net, config=cfg,
                       lr=1e-2, weight_decay=0.0, maximize=False, num_params=num_params)
        return ps

    assert not torch.equal(update_first_two(None)[0], one[0])
    assert all(torch.equal(a, b) for a, b in zip(update_first_two(345), one))


@pytest.mark.parametrize("name", ["both", "context", "cautious"])
def test_inner_step_needs_shapes_and_matches_the_optimizer(name):
    cfg = CONFIGS[name]
    net = random_net(cfg).double()
    shapes = [torch.Size((6, 4)), torch.Size((4,))]
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    state = init_inner(torch.cat([p.reshape(-1) for p in params]), cfg)
    with pytest.raises(ValueError, match="shapes"):
        inner_step(state, torch.ones(28, dtype=torch.float64), net, cfg, 1e-2)
    opt = LearnedOptimizer([p.clone().requires_grad_() for p in params], lr=1e-2, weights=net, impl="reference",
                           weight_decay=0.0)
    for _ in range(3):
        g = torch.randn(28, generator=gen, dtype=torch.float64)
        state = inner_step(state, g, net, cfg, 1e-2, shapes)
        for p, gp in zip(opt.param_groups[0]["params"], torch.split(g, [24, 4])):
            p.grad = gp.view(p.shape).clone()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in opt.param_groups[0]["params"]])
    torch.testing.assert_close(flat, state.params, atol=1e-12, rtol=0)


def test_save_load_v2_and_version_checks(tmp_path):
    net = random_net(CONFIGS["both"])
    save_pretrained(net, tmp_path / "v2")
    raw = json.loads((tmp_path / "v2" / "config.json").read_text())
    assert raw["format_version"] == 2
    loaded = load_directory(tmp_path / "v2")
    assert loaded.config == net.config
    assert all(torch.equal(getattr(loaded, k), getattr(net, k)) for k in ("weight", "head_weight"))
    raw["format_version"] = 1
    (tmp_path / "v2" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="format_version"):
        load_directory(tmp_path / "v2")
    save_pretrained(CoordinatewiseLSTM(), tmp_path / "v1")
    assert json.loads((tmp_path / "v1" / "config.json").read_text())["format_version"] == 1


def test_optimizer_with_v2_weights_resumes_exactly():
    net = random_net(CONFIGS["both"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    opt = LearnedOptimizer(model.parameters(), weights=net)

    def step(m, o):
        o.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    import copy

    model2 = copy.deepcopy(model)
    opt2 = LearnedOptimizer(model2.parameters(), weights=net)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(3):
        step(model, opt)
        step(model2, opt2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


@pytest.mark.parametrize("estimator", ["pes", "tbptt"])
def test_meta_training_a_v2_rule_on_architecture_tasks(tmp_path, estimator):
    """A seconds-long run of each estimator with the format-2 rule on the architecture families:
    finite meta-gradients (TBPTT differentiates through the per-tensor context too), saved as
    format version 2, reloadable, and resumable to the same weights."""
    from learned_optim.meta import meta_train
    from learned_optim.meta.arch_tasks import tiny_arch_family

    net_cfg = {"sign_equivariant": True, "context_features": list(CONTEXT_FEATURES)}
    # no validation: the saved weights are the last ones, not the best (possibly the starting) ones
    kw = dict(progress=False, tasks=tiny_arch_family(), meta_steps=4, estimator=estimator, network=net_cfg,
              val_tasks=[])
    net = meta_train("tiny", out=tmp_path / "a", **kw)
    assert net.config.format_version == 2
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert any(p.abs().sum() > 0 for p in (net.head_weight, net.head_bias))  # it moved from the zero head
    assert json.loads((tmp_path / "a" / "config.json").read_text())["format_version"] == 2
    loaded = load_directory(tmp_path / "a")
    assert all(torch.equal(getattr(loaded, k), getattr(net, k)) for k in ("weight", "bias", "head_weight"))


def test_with_context_features_keeps_the_rule_exactly():
    cfg = LSTMOptimizerConfig(sign_equivariant=True, context_features=("p_log_rms", "is_vector"))
    net = random_net(cfg)
    wider = net.with_context_features(("log_num_params", "p_log_rms", "log_fan_in", "is_vector"))
    assert wider.config.context_features == ("log_num_params", "p_log_rms", "log_fan_in", "is_vector")
    assert wider.config.format_version == 2 and wider.weight.shape == (16, 10)
    gen = torch.Generator().manual_seed(4)
    init = [torch.randn(s, generator=gen) for s in ((7, 3), (7,))]
    results = []
    for weights in (net, wider):
        ps = [p.clone().requires_grad_() for p in init]
        opt = LearnedOptimizer(ps, weights=weights, lr=1e-2)
        g = torch.Generator().manual_seed(5)
        for _ in range(4):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        results.append([p.detach() for p in ps])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    # the new inputs do take part once their weights move
    with torch.no_grad():
        wider.head_weight[0, cfg.hidden_size] = 1.0
    ctx = torch.tensor([1.0, 0.0, 0.0, 0.0])
    zero_state = (torch.zeros(7), torch.zeros(7), torch.zeros(4, 7), torch.zeros(4, 7))
    a = lstm_rule(torch.ones(7), *zero_state, 1.0, wider, wider.config, ctx)
    b = lstm_rule(torch.ones(7), *zero_state, 1.0, wider, wider.config, torch.zeros(4))
    assert not torch.equal(a.direction, b.direction)
    with pytest.raises(ValueError, match="drops the context features"):
        net.with_context_features(("log_num_params",))
    with pytest.raises(ValueError, match="context_features"):
        net.with_context_features(("p_log_rms", "is_vector", "nope"))


def _one_step(weights, init, grads):
    """The change one fp64 ``LearnedOptimizer`` step at lr 1e-3 makes to each of ``init`` with ``grads``."""
    ps = [p.clone().requires_grad_() for p in init]
    opt = LearnedOptimizer(ps, weights=weights.double(), lr=1e-3)
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()
    return [(p.detach() - p0) for p, p0 in zip(ps, init)]


@pytest.mark.parametrize("feature", ["log_num_params", "log_num_params_capped"])
@pytest.mark.parametrize("numel", [40, 1000, 250_000])
def test_with_size_prior_scales_the_step_by_model_size(numel, feature):
    """On a zero head (Adam's step exactly) the prior alone gives Adam's step times
    exp(log_scale_bound * tanh(slope * x)), x = log10 P - 5 for the model's size P (capped at 0
    for ``"log_num_params_capped"``); slope 0 is the rule."""
    cfg = LSTMOptimizerConfig(sign_equivariant=True, context_features=("p_log_rms",))
    net = CoordinatewiseLSTM(cfg)  # zero head
    slope = -0.35
    sized = net.with_size_prior(slope, feature=feature)
    assert sized.config.context_features == ("p_log_rms", feature)
    assert torch.equal(net.head_weight, torch.zeros(2, cfg.hidden_size + 1))  # the original is untouched
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(numel - 10, generator=gen, dtype=torch.float64), torch.randn(2, 5, generator=gen,
                                                                                     dtype=torch.float64)]
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in init]
    steps = [_one_step(weights, init, grads) for weights in (net, sized, net.with_size_prior(0.0, feature=feature))]
    w = float(sized.head_weight[0, -1].detach())  # the slope as stored (fp32 weights)
    assert w == pytest.approx(slope)
    x = math.log10(numel) - 5
    factor = math.exp(cfg.log_scale_bound * math.tanh(w * (min(x, 0.0) if feature.endswith("capped") else x)))
    for plain, prior, zero in zip(*steps):
        torch.testing.assert_close(prior, plain * factor, rtol=1e-10, atol=0)  # p1 - p0 rounds
        assert torch.equal(zero, plain)
        if numel > 10**5 and feature.endswith("capped"):  # larger models keep the rule's step
            assert torch.equal(prior, plain)
    # an existing size weight is shifted, not replaced; the other weights are kept
    twice = sized.with_size_prior(slope, feature=feature)
    assert twice.config.context_features == sized.config.context_features
    assert float(twice.head_weight[0, -1].detach()) == pytest.approx(2 * slope)
    rest = [n for n in ("weight", "bias", "head_bias") if not torch.equal(getattr(twice, n), getattr(sized, n))]
    assert rest == [] and torch.equal(twice.head_weight[:, :-1], sized.head_weight[:, :-1])
    assert torch.equal(twice.head_weight[1], sized.head_weight[1])
    key = "size_prior_capped" if feature.endswith("capped") else "size_prior"
    assert twice.provenance == {key: pytest.approx(2 * slope)}


@pytest.mark.parametrize("bad,exc", [(float("nan"), ValueError), (float("inf"), ValueError), (True, TypeError),
                                     ("0.3", TypeError), (None, TypeError)])
def test_with_size_prior_rejects_bad_slopes(bad, exc):
    with pytest.raises(exc, match="slope must be a"):
        CoordinatewiseLSTM(LSTMOptimizerConfig(context_features=("p_log_rms",))).with_size_prior(bad)


@pytest.mark.parametrize("bad", ["p_log_rms", "log_num_param", None])
def test_with_size_prior_rejects_a_feature_that_is_not_a_size_input(bad):
    with pytest.raises(ValueError, match="feature must be one of"):
        CoordinatewiseLSTM(LSTMOptimizerConfig(context_features=("p_log_rms",))).with_size_prior(-0.3, feature=bad)


def test_with_step_prior_on_is_vector_scales_the_steps_of_vectors_only():
    """A prior on ``is_vector`` multiplies the step of every vector by exp(log_scale_bound * tanh(slope))
    on a zero head and leaves every matrix's step bit for bit; it adds the input when missing."""
    cfg = LSTMOptimizerConfig(sign_equivariant=True, context_features=("p_log_rms",))
    net = CoordinatewiseLSTM(cfg)  # zero head: Adam's step
    slope = 0.35
    boosted = net.with_step_prior(slope, "is_vector")
    assert boosted.config.context_features == ("p_log_rms", "is_vector")
    assert boosted.provenance == {"vector_prior": pytest.approx(slope)}
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((6, 7), (13,), (2, 3, 4), (1,))]
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in init]
    steps = [_one_step(weights, init, grads) for weights in (net, boosted)]
    factor = math.exp(cfg.log_scale_bound * math.tanh(float(boosted.head_weight[0, -1].detach())))
    for p0, plain, prior in zip(init, *steps):
        if p0.dim() >= 2:
            assert torch.equal(prior, plain)
        else:
            torch.testing.assert_close(prior, plain * factor, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="feature must be one of"):
        net.with_step_prior(0.3, "fan_in")
    with pytest.raises(TypeError, match="slope must be a"):
        net.with_step_prior("0.3", "is_vector")


def test_meta_training_adds_the_configs_context_features_to_init_weights(tmp_path):
    from learned_optim.meta.config import get_preset
    from learned_optim.meta.trainer import MetaTrainer

    init = random_net(LSTMOptimizerConfig(sign_equivariant=True, context_features=("p_log_rms",)))
    cfg = get_preset("tiny").replace(network={"sign_equivariant": True,
                                              "context_features": ["p_log_rms", "log_num_params"]})
    tr = MetaTrainer(cfg, out=tmp_path / "wide", init=init, progress=False)
    assert tr.net.config.context_features == ("p_log_rms", "log_num_params")
    assert torch.equal(tr.net.head_weight[:, :5], init.head_weight) and (tr.net.head_weight[:, 5] == 0).all()
    # a config that differs in more than added context features leaves the init's rule as it is
    other = cfg.replace(network={"hidden_size": 8})
    tr = MetaTrainer(other, out=tmp_path / "other", init=init, progress=False)
    assert tr.net.config == init.config
