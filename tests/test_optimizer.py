"""LearnedOptimizer against the torch.optim contract, one test per point of the contract."""

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn

from learned_optim import CoordinatewiseLSTM, LearnedOptimizer
from learned_optim.hub import DEFAULT_WEIGHTS

# One table of optimizer configurations drives the shared smoke test.
CONFIGS = {
    "default": dict(),
    "weight_decay": dict(weight_decay=0.1),
    "maximize": dict(maximize=True),
    "reference_impl": dict(impl="reference"),
    "eager_impl": dict(impl="eager"),
    "tiny_chunks": dict(chunk_size=7),
    "big_lr": dict(lr=0.1),
}
SHAPES = [(), (1,), (5,), (3, 7), (4, 3, 3, 3), (1000,)]


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in SHAPES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("trained", [False, True], ids=["adam_head", "random_head"])
def test_smoke(name, dtype, trained, random_net):
    net = random_net if trained else CoordinatewiseLSTM()
    params = _params(dtype)
    before = [p.detach().clone() for p in params]
    opt = LearnedOptimizer(params, net, **CONFIGS[name])
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        opt.step()
    h = net.config.hidden_size
    sdt = torch.float32
    for p, b in zip(params, before):
        assert p.dtype == dtype and p.shape == b.shape
        assert torch.isfinite(p).all()
        if dtype == torch.float32:  # bf16 may round a 5 x 1e-3 step away, as it does for Adam
            assert not torch.equal(p, b), "every parameter with a gradient must move"
        st = opt.state[p]
        assert st["step"].item() == 5 and st["step"].dtype == torch.float32 and st["step"].shape == ()
        for key, shape in (("exp_avg", p.shape), ("exp_avg_sq", p.shape),
                           ("lstm_h", (h, *p.shape)), ("lstm_c", (h, *p.shape))):
            assert st[key].shape == torch.Size(shape) and st[key].dtype == sdt, key
            assert torch.isfinite(st[key]).all()


def test_state_is_40_bytes_per_param():
    p = torch.zeros(1000, requires_grad=True)
    opt = LearnedOptimizer([p])
    p.grad = torch.ones(1000)
    opt.step()
    nbytes = sum(t.numel() * t.element_size() for k, t in opt.state[p].items() if k != "step")
    assert nbytes / p.numel() == 40


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def _batch(i, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1000 + i)
    return torch.randn(32, 6, generator=gen).to(dtype), torch.randint(0, 3, (32,), generator=gen)


def _train(model, opt, steps, start=0, fixed_batch=False):
    losses = []
    for i in range(start, start + steps):
        x, y = _batch(0 if fixed_batch else i, next(model.parameters()).dtype)

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            return loss

        losses.append(float(opt.step(closure).detach()))
    return losses


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_untrained_network_is_exactly_adamw(weight_decay):
    m1 = _mlp(dtype=torch.float64)
    m2 = copy.deepcopy(m1)
    o1 = LearnedOptimizer(m1.parameters(), "adam-equivalent", lr=1e-2, weight_decay=weight_decay)
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2, weight_decay=weight_decay)
    _train(m1, o1, 50)
    _train(m2, o2, 50)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_step_closure_returns_loss_and_zero_grad():
    model = _mlp()
    opt = LearnedOptimizer(model.parameters())
    x, y = _batch(0)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert opt.step() is None
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_learning_decreases_loss():
    model = _mlp()
    opt = LearnedOptimizer(model.parameters(), lr=1e-2)
    x, y = _batch(0)
    first = last = None
    for _ in range(100):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < 0.5 * first


def test_per_group_lr_and_weight_decay(random_net):
    a = torch.ones(10, requires_grad=True)
    b = torch.ones(10, requires_grad=True)
    c = torch.ones(10, requires_grad=True)
    opt = LearnedOptimizer(
        [{"params": [a]}, {"params": [b], "lr": 0.0}, {"params": [c], "lr": 0.0, "weight_decay": 0.5}],
        random_net,
        lr=1e-2,
    )
    for p in (a, b, c):
        p.grad = torch.ones(10)
    opt.step()
    assert not torch.equal(a, torch.ones(10))
    assert torch.equal(b, torch.ones(10)), "lr=0 must leave the group untouched"
    assert torch.equal(c, torch.ones(10)), "weight decay is scaled by lr (decoupled, AdamW-style)"
    opt.param_groups[2]["lr"] = 0.1
    c.grad = torch.zeros(10)
    opt.step()
    # With a zero gradient the step is the learned term plus decay 0.1 * 0.5 = 5% shrink.
    assert c.detach().max() < 1.0


def test_add_param_group_validates_and_works():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(4, requires_grad=True)
    opt = LearnedOptimizer([a], "adam-equivalent", lr=1e-2)
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [b], "lr": -1.0})
    opt.add_param_group({"params": [b], "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["weight_decay"] == 0.0
    a.grad, b.grad = torch.ones(3), torch.ones(4)
    opt.step()
    # Adam's first step is lr * sign(g) (to eps): 0.01 for a, 0.5 for b.
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.99), rtol=0, atol=1e-6)
    torch.testing.assert_close(b.detach(), torch.full((4,), 0.5), rtol=0, atol=1e-6)


def test_grad_none_is_untouched():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = LearnedOptimizer([a, b], weight_decay=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b, torch.ones(3)) and len(opt.state[b]) == 0
    assert opt.state[a]["step"].item() == 1


def test_maximize_equals_minimizing_negated(random_net):
    p1 = torch.randn(50, requires_grad=True)
    p2 = p1.detach().clone().requires_grad_()
    o1 = LearnedOptimizer([p1], random_net, lr=1e-2, maximize=True)
    o2 = LearnedOptimizer([p2], random_net, lr=1e-2)
    for i in range(10):
        g = torch.randn(50, generator=torch.Generator().manual_seed(i))
        p1.grad, p2.grad = g.clone(), -g
        o1.step()
        o2.step()
    torch.testing.assert_close(p1, p2, rtol=0, atol=0)


def test_maximize_increases_objective():
    p = torch.zeros(5, requires_grad=True)
    opt = LearnedOptimizer([p], lr=0.1, maximize=True)
    for _ in range(20):
        opt.zero_grad()
        (-(p - 1.0).pow(2).sum()).backward()
        opt.step()
    assert (p - 1.0).abs().max() < 0.5


@pytest.mark.parametrize(
    "make_sched",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=10, cycle_momentum=False),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.9**s),
    ],
    ids=["step", "cosine", "onecycle", "lambda"],
)
def test_lr_schedulers_drive_group_lr(make_sched):
    model = _mlp()
    opt = LearnedOptimizer(model.parameters(), lr=0.01)
    sched = make_sched(opt)
    lrs = []
    for i in range(6):
        _train(model, opt, 1, start=i)
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) > 1 and all(math.isfinite(v) and v >= 0 for v in lrs)


def test_lr_scales_the_step(random_net):
    """lr multiplies the unit-scale learned step, so schedulers mean what they mean for Adam."""
    steps = []
    for lr in (1e-3, 1e-2):
        p = torch.zeros(100, requires_grad=True)
        opt = LearnedOptimizer([p], random_net, lr=lr)
        p.grad = torch.randn(100, generator=torch.Generator().manual_seed(0))
        opt.step()
        steps.append(p.detach().clone())
    torch.testing.assert_close(steps[1], steps[0] * 10, rtol=1e-5, atol=1e-9)


def test_state_dict_roundtrip_resume_matches_uninterrupted(random_net, tmp_path):
    k = 15
    m_full = _mlp()
    o_full = LearnedOptimizer(m_full.parameters(), random_net, lr=1e-2, weight_decay=0.01)
    _train(m_full, o_full, 2 * k)

    m_a = _mlp()
    o_a = LearnedOptimizer(m_a.parameters(), random_net, lr=1e-2, weight_decay=0.01)
    _train(m_a, o_a, k)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": m_a.state_dict(), "optim": o_a.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)

    m_b = _mlp(seed=123)  # different init: everything must come from the checkpoint
    m_b.load_state_dict(ckpt["model"])
    o_b = LearnedOptimizer(m_b.parameters(), random_net, lr=5.0)  # lr too comes from the checkpoint
    o_b.load_state_dict(ckpt["optim"])
    assert o_b.param_groups[0]["lr"] == 1e-2 and o_b.param_groups[0]["weight_decay"] == 0.01
    _train(m_b, o_b, k, start=k)
    for a, b in zip(m_full.parameters(), m_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_load_state_dict_keeps_fp32_state_for_bf16_params():
    model = _mlp(dtype=torch.bfloat16)
    opt = LearnedOptimizer(model.parameters())
    _train(model, opt, 3)
    sd = opt.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    model2 = copy.deepcopy(model)
    opt2 = LearnedOptimizer(model2.parameters())
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for p, p2 in zip(model.parameters(), model2.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "lstm_h", "lstm_c"):
            assert opt2.state[p2][key].dtype == torch.float32
            assert torch.equal(opt2.state[p2][key], opt.state[p][key])
        assert opt2.state[p2][key].data_ptr() != opt.state[p][key].data_ptr()


def test_load_state_dict_from_other_hidden_size_is_a_clear_error():
    p = torch.ones(4, requires_grad=True)
    from learned_optim import LSTMOptimizerConfig

    opt = LearnedOptimizer([p], CoordinatewiseLSTM(LSTMOptimizerConfig(hidden_size=2)))
    p.grad = torch.ones(4)
    opt.step()
    opt2 = LearnedOptimizer([p])
    before = {k: v.clone() for k, v in opt2.state_dict()["state"].items()}
    with pytest.warns(UserWarning, match=f"made with weights \\(unnamed\\).*uses '{DEFAULT_WEIGHTS}'"), \
            pytest.raises(ValueError, match=r"state 'lstm_h' of parameter 0 of param group 0 \(shape \[4\]\) has "
                                            r"shape \(2, 4\), expected .* shape \(4, 4\) \(hidden_size 4"):
        opt2.load_state_dict(opt.state_dict())  # at load time, before anything is loaded
    assert opt2.state_dict()["state"] == before and len(opt2.state) == 0


def test_grad_scaler():
    model = _mlp()
    opt = LearnedOptimizer(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = _batch(0)
    before = [p.detach().clone() for p in model.parameters()]
    # A step whose gradients overflow: GradScaler skips it and lowers the scale.
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y) * float("inf")
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**10
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(len(opt.state[p]) == 0 for p in model.parameters())
    for i in range(5):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert all(opt.state[p]["step"].item() == 5 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_torch_compiled_model():
    model = _mlp()
    compiled = torch.compile(model, backend="aot_eager")
    opt = LearnedOptimizer(compiled.parameters(), lr=1e-2)
    losses = _train(compiled, opt, 20, fixed_batch=True)
    assert losses[-1] < losses[0]
    assert len(opt.state) == len(list(model.parameters()))


@pytest.mark.slow
def test_torch_compiled_model_inductor():
    model = _mlp()
    compiled = torch.compile(model)
    opt = LearnedOptimizer(compiled.parameters(), lr=1e-2)
    losses = _train(compiled, opt, 20, fixed_batch=True)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_train(dtype):
    model = _mlp(dtype=dtype)
    opt = LearnedOptimizer(model.parameters(), lr=1e-2)
    losses = _train(model, opt, 30, fixed_batch=True)
    assert all(p.dtype == dtype for p in model.parameters())
    assert losses[-1] < losses[0]
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    assert all(opt.state[p]["exp_avg"].dtype == sdt for p in model.parameters())


def test_bf16_update_applied_in_param_dtype():
    """bf16 params: the state is fp32 and the step is computed in fp32, then rounded once."""
    p16 = torch.randn(64).to(torch.bfloat16).requires_grad_()
    p64 = p16.detach().double().requires_grad_()
    o16 = LearnedOptimizer([p16], "adam-equivalent", lr=1e-2)
    o64 = LearnedOptimizer([p64], "adam-equivalent", lr=1e-2)
    g = torch.randn(64).to(torch.bfloat16)
    p16.grad, p64.grad = g, g.double()
    o16.step()
    o64.step()
    torch.testing.assert_close(p16.detach(), p64.detach().to(torch.bfloat16), rtol=0, atol=0)


def test_parameters_of_any_shape_and_conv_model():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    scalar = nn.Parameter(torch.tensor(1.0))
    opt = LearnedOptimizer([*model.parameters(), scalar], lr=1e-2)
    x = torch.randn(8, 1, 8, 8)
    for _ in range(3):
        opt.zero_grad()
        (model(x).pow(2).mean() + scalar**2).backward()
        opt.step()
    assert opt.state[scalar]["lstm_h"].shape == (4,)
    assert opt.state[model[0].weight]["lstm_h"].shape == (4, 4, 1, 3, 3)


def test_network_weights_are_not_optimized_and_get_no_grad(random_net):
    before = {k: v.clone() for k, v in random_net.state_dict().items()}
    p = torch.randn(10, requires_grad=True)
    opt = LearnedOptimizer([p], random_net)
    p.grad = torch.randn(10)
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in random_net.state_dict().items())
    assert all(t.grad is None for t in random_net.parameters())
    assert not any(t is q for g in opt.param_groups for q in g["params"] for t in random_net.parameters())
    with pytest.raises(ValueError, match="meta-parameters"):
        LearnedOptimizer(random_net.parameters(), random_net)


def test_channels_last_and_noncontiguous_grad(random_net):
    w = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last).requires_grad_()
    w_ref = w.detach().contiguous().clone().requires_grad_()
    o1 = LearnedOptimizer([w], random_net, lr=1e-2)
    o2 = LearnedOptimizer([w_ref], random_net, lr=1e-2, impl="reference")
    for i in range(3):
        g = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(i))
        w.grad = g.to(memory_format=torch.channels_last)
        w_ref.grad = g.clone()
        o1.step()
        o2.step()
    torch.testing.assert_close(w.detach(), w_ref.detach(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- bad input


def test_sparse_gradient_is_a_clear_error():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = LearnedOptimizer(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"sparse gradient.*sparse=False"):
        opt.step()


def test_sparse_error_names_the_parameter():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = LearnedOptimizer(emb.named_parameters())
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="'weight'"):
        opt.step()


def test_complex_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match="complex.*view_as_real"):
        LearnedOptimizer([torch.zeros(3, dtype=torch.complex64, requires_grad=True)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_skips_that_parameter(bad, random_net):
    a = torch.randn(5, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    opt = LearnedOptimizer([a, b], random_net, weight_decay=0.1)
    a.grad, b.grad = torch.randn(5), torch.randn(5)
    opt.step()
    a0, sa0 = a.detach().clone(), {k: v.clone() for k, v in opt.state[a].items()}
    b0 = b.detach().clone()
    a.grad = torch.randn(5)
    a.grad[2] = bad
    b.grad = torch.randn(5)
    with pytest.warns(RuntimeWarning, match="non-finite") as rec:
        opt.step()
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert torch.equal(a, a0)
    assert all(torch.equal(sa0[k], v) for k, v in opt.state[a].items())
    assert not torch.equal(b, b0) and opt.state[b]["step"].item() == 2
    a.grad = torch.randn(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert opt.state[a]["step"].item() == 2


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(lr=-1.0), ValueError, "lr must be a finite float >= 0"),
        (dict(lr="0.1"), TypeError, "lr must be a float"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(lr=True), TypeError, "lr"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (dict(weight_decay=None), TypeError, "weight_decay"),
        (dict(maximize="yes"), TypeError, "maximize"),
        (dict(impl="cuda"), ValueError,
         r"LearnedOptimizer\(impl=...\) must be one of \('auto', 'reference', 'eager', 'fused'\), got impl='cuda'"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(weights=nn.Linear(2, 2)), TypeError, "CoordinatewiseLSTM"),
        (dict(weights=3), TypeError, "weights"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LearnedOptimizer([torch.zeros(2, requires_grad=True)], **kwargs)


def test_integer_lr_is_accepted():
    opt = LearnedOptimizer([torch.zeros(2, requires_grad=True)], lr=1)
    assert opt.param_groups[0]["lr"] == 1.0


def test_huge_finite_gradient_is_not_skipped():
    """A gradient whose sum of squares overflows fp32 (4 x 1e38) is still finite and must be applied."""
    p = torch.zeros(4, requires_grad=True)
    opt = LearnedOptimizer([p], "adam-equivalent", lr=0.1)
    p.grad = torch.full((4,), 1e19)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert opt.state[p]["step"].item() == 1
    torch.testing.assert_close(p.detach(), torch.full((4,), -0.1), rtol=1e-5, atol=0)


def test_docstring_example_runs():
    import doctest

    import learned_optim.optimizer

    result = doctest.testmod(learned_optim.optimizer)
    assert result.attempted > 0 and result.failed == 0
