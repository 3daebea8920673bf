"""The architecture task families of learned_optim.meta.arch_tasks (and their models)."""

import math
import os
import re

import pytest
import torch

from learned_optim.common.text import TRAIN_MODULES, stdlib_dir
from learned_optim.meta import arch_models as M
from learned_optim.meta import arch_tasks as A
from learned_optim.meta.task_core import RescaledTask, flatten_params, unflatten_params

FAMILIES = [A.TransformerLMFamily(), A.ViTDigitsFamily(), A.RNNLMFamily(), A.ResMLPFamily(),
            A.BatchNormCNNFamily(), A.DeepMLPFamily(), A.EmbeddingBagFamily()]
IDS = [type(f).__name__ for f in FAMILIES]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tasks are sized for one thread (meta-training's setting); extra threads only contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _plain(family):
    """The family without the random per-tensor rescaling (so the task's own internals are reachable)."""
    return type(family)(rescale_prob=0.0)


def _adam(task, steps=30, lr=1e-2, seed=0):
    """Functional Adam on the list of tensors; returns (full-batch loss before, after)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p.clone() for p in task.init_params(gen)]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        before = float(task.loss(params, task.full_batch()))
    for t in range(1, steps + 1):
        ps = [p.requires_grad_(True) for p in params]
        grads = torch.autograd.grad(task.loss(ps, task.sample_batch(gen)), ps)
        with torch.no_grad():
            new = []
            for p, g, mi, vi in zip(params, grads, m, v):
                mi.mul_(0.9).add_(g, alpha=0.1)
                vi.mul_(0.999).addcmul_(g, g, value=0.001)
                step = (mi / (1 - 0.9 ** t)) / ((vi / (1 - 0.999 ** t)).sqrt() + 1e-8)
                new.append(p.detach() - lr * step)
            params = new
    with torch.no_grad():
        after = float(task.loss(params, task.full_batch()))
    return before, after


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_sampling_is_deterministic(family):
    a = family.sample(torch.Generator().manual_seed(11))
    b = family.sample(torch.Generator().manual_seed(11))
    assert a.name == b.name
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    pa, pb = a.init_params(ga), b.init_params(gb)
    assert len(pa) == len(pb) and all(torch.equal(x, y) for x, y in zip(pa, pb))
    ba, bb = a.sample_batch(ga), b.sample_batch(gb)
    flat_a = ba if torch.is_tensor(ba) else torch.cat([t.reshape(-1).float() for t in ba])
    flat_b = bb if torch.is_tensor(bb) else torch.cat([t.reshape(-1).float() for t in bb])
    assert torch.equal(flat_a, flat_b)
    assert torch.equal(a.loss(pa, ba), b.loss(pb, bb))
    # different seeds give different tasks
    names = {family.sample(torch.Generator().manual_seed(s)).name for s in range(12)}
    assert len(names) > 3


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_every_param_gets_gradient_and_loss_is_finite(family):
    for seed in range(2):
        task = family.sample(torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(0)
        params = task.init_params(gen)
        shapes = [p.shape for p in params]
        flat = flatten_params(params).requires_grad_(True)
        views = unflatten_params(flat, shapes)
        loss = task.loss(views, task.sample_batch(gen))
        assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
        grads = torch.autograd.grad(loss, views)  # raises if a tensor is unused
        for p, g in zip(params, grads):
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, (task.name, tuple(p.shape))
        with torch.no_grad():
            assert math.isfinite(float(task.loss(params, task.full_batch())))


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_adam_decreases_the_loss(family):
    task = _plain(family).sample(torch.Generator().manual_seed(1))
    before, after = _adam(task)
    assert after < before - 0.1, (task.name, before, after)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_sizes_stay_in_budget(family):
    for s in range(25):
        task = family.sample(torch.Generator().manual_seed(100 + s))
        n = sum(p.numel() for p in task.init_params(torch.Generator().manual_seed(0)))
        assert 1_000 <= n <= 46_000, (task.name, n)


def _lm(cell_or_tf):
    if cell_or_tf == "transformer":
        return A.TransformerLMFamily(rescale_prob=0.0, layers=(2,), dims=(16,)).sample(torch.Generator().manual_seed(0))
    return A.RNNLMFamily(rescale_prob=0.0, cells=(cell_or_tf,)).sample(torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["transformer", "gru", "lstm"])
def test_lm_is_causal(kind):
    task = _lm(kind)
    params = task.init_params(torch.Generator().manual_seed(0))
    tokens = task.sample_batch(torch.Generator().manual_seed(1))[:, :-1]
    j = tokens.shape[1] // 2
    changed = tokens.clone()
    changed[:, j:] = (changed[:, j:] + 7) % 256
    with torch.no_grad():
        a, b = task.logits(params, tokens), task.logits(params, changed)
    assert a.shape == (tokens.shape[0], tokens.shape[1], 256)
    assert torch.allclose(a[:, :j], b[:, :j], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, j:], b[:, j:])


def test_embedding_padding_row_gets_zero_gradient_and_no_influence():
    task = A.EmbeddingBagFamily(rescale_prob=0.0).sample(torch.Generator().manual_seed(4))
    params = task.init_params(torch.Generator().manual_seed(0))
    assert torch.equal(params[0][0], torch.zeros_like(params[0][0]))
    tokens, y = task.sample_batch(torch.Generator().manual_seed(1))
    assert (tokens == 0).any() and (tokens != 0).sum(1).min() >= task.min_len
    ps = [p.requires_grad_(True) for p in params]
    g = torch.autograd.grad(task.loss(ps, (tokens, y)), ps)
    assert torch.equal(g[0][0], torch.zeros_like(g[0][0]))
    assert g[0][1:].abs().sum() > 0
    # the padding row's value never reaches the output (even if an optimizer moves it)
    moved = [params[0].detach().clone(), *[p.detach() for p in params[1:]]]
    moved[0][0] = 5.0
    with torch.no_grad():
        assert torch.allclose(task.loss(moved, (tokens, y)), task.loss([p.detach() for p in params], (tokens, y)))


def test_module_windows_come_from_their_module():
    task = A.EmbeddingBagFamily(rescale_prob=0.0).sample(torch.Generator().manual_seed(5))
    tokens, y = task.sample_batch(torch.Generator().manual_seed(2))
    for row, label in list(zip(tokens, y))[:8]:
        text = bytes((row[row != 0] - 1).tolist())
        with open(os.path.join(stdlib_dir(), TRAIN_MODULES[task.modules[int(label)]]), "rb") as f:
            assert text in f.read()


def test_batch_norm_uses_batch_statistics():
    task = A.BatchNormCNNFamily(rescale_prob=0.0).sample(torch.Generator().manual_seed(0))
    params = task.init_params(torch.Generator().manual_seed(0))
    x, _ = task.sample_batch(torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = task.model(params, x)
        b = task.model(params, torch.cat([x[:1], x[1:] * 0.5]))
    assert not torch.allclose(a[0], b[0])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_recurrence_matches_reference_to_second_order(cell):
    gen = torch.Generator().manual_seed(0)
    T, B, H = 3, 2, 3
    k = 3 if cell == "gru" else 4
    gi = torch.randn(T, B, k * H, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(k * H, H, generator=gen, dtype=torch.float64) * 0.5).requires_grad_(True)
    b = torch.randn(k * H, generator=gen, dtype=torch.float64, requires_grad=True)
    args = (gi, w, b) if cell == "gru" else (gi, w)
    fused = M.gru_sequence if cell == "gru" else M.lstm_sequence
    ref = M.gru_reference if cell == "gru" else M.lstm_reference
    assert torch.allclose(fused(*args), ref(*args))
    assert torch.autograd.gradcheck(fused, args)
    assert torch.autograd.gradgradcheck(fused, args)


def test_rnn_model_fused_and_reference_agree_multilayer():
    model = M.RNNLM(cell="gru", emb=8, hidden=8, layers=2)
    ref = M.RNNLM(cell="gru", emb=8, hidden=8, layers=2, fused=False)
    params = [p.requires_grad_(True) for p in model.init(torch.Generator().manual_seed(0))]
    tokens = torch.randint(256, (3, 7), generator=torch.Generator().manual_seed(1))
    a, b = model(params, tokens), ref(params, tokens)
    assert torch.allclose(a, b, atol=1e-6)
    ga, gb = torch.autograd.grad(a.square().sum(), params), torch.autograd.grad(b.square().sum(), params)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))


def test_validation_tasks_are_held_out_and_runnable():
    tasks = A.arch_validation_tasks()
    assert [h for _, h in tasks] == [2000, 1000, 1000, 500]
    train_names = {A.arch_train_family().sample(torch.Generator().manual_seed(s)).name for s in range(40)}
    for task, _ in tasks:
        assert task.name not in train_names
        gen = torch.Generator().manual_seed(0)
        params = task.init_params(gen)
        with torch.no_grad():
            assert math.isfinite(float(task.loss(params, task.sample_batch(gen))))
        if isinstance(task, A.LMTask):
            vb = task.validation_batch()
            assert vb.shape == task.full_batch().shape and not torch.equal(vb, task.full_batch())
            with torch.no_grad():
                assert math.isfinite(float(task.loss(params, vb)))


def test_named_mixtures_sample_every_family():
    fam = A.arch_train_family()
    prefix = {"tlm": "tlm", "vit": "vit", "grulm": "rnn", "lstmlm": "rnn", "resmlp": "res", "bncnn": "bn",
              "deepmlp": "deep", "modbag": "bag"}
    kinds = set()
    for s in range(80):
        t = fam.sample(torch.Generator().manual_seed(s))
        base = t.task if isinstance(t, RescaledTask) else t
        kinds.add(prefix[re.match(r"[a-z]+", base.name).group()])
    assert len(kinds) == 7
    tiny = A.tiny_arch_family()
    for s in range(10):
        task = tiny.sample(torch.Generator().manual_seed(s))
        gen = torch.Generator().manual_seed(0)
        assert math.isfinite(float(task.loss(task.init_params(gen), task.sample_batch(gen)).detach()))


def test_wide_family_reaches_realistic_widths_within_its_budget():
    fam = A.wide_arch_family()
    dims, sizes = set(), []
    for s in range(60):
        t = fam.sample(torch.Generator().manual_seed(s))
        base = t.task if isinstance(t, RescaledTask) else t
        sizes.append(sum(p.numel() for p in t.init_params(torch.Generator().manual_seed(0))))
        m = re.match(r"tlm\d+x(\d+)", base.name)
        if m:
            dims.add(int(m.group(1)))
    assert max(dims) >= 96 and min(dims) <= 48, dims
    assert max(sizes) <= 250_000 and max(sizes) > 46_000, max(sizes)


def test_vit_init_option_leaves_the_default_family_unchanged_and_adds_the_benchmark_init():
    """``ViT.init_style="nanogpt"`` draws the patch embedding and the head with std 0.02 (the transformer
    benchmark's initialisation) and changes nothing else; the family's default (one choice, no extra
    draw) samples exactly the tasks it sampled before the option existed; a bad init is refused."""
    fan = M.ViT(n_patches=16, patch_dim=4, d=64, heads=4, layers=4, ratio=4)
    nano = M.ViT(n_patches=16, patch_dim=4, d=64, heads=4, layers=4, ratio=4, init_style="nanogpt")
    fs, ns = fan.spec(), nano.spec()
    assert fs[0][1] == 0.5 and fs[-2][1] == 1 / 8 and ns[0][1] == 0.02 and ns[-2][1] == 0.02
    assert [x for i, x in enumerate(fs) if i not in (0, len(fs) - 2)] == \
        [x for i, x in enumerate(ns) if i not in (0, len(ns) - 2)]
    with pytest.raises(ValueError, match="init_style"):
        M.ViT(init_style="xavier")
    one = A.ViTDigitsFamily(inits=("fan_in",))
    for s in range(5):
        a = A.ViTDigitsFamily().sample(torch.Generator().manual_seed(s))
        b = one.sample(torch.Generator().manual_seed(s))
        assert a.name == b.name and "nanogpt" not in a.name
    both = A.ViTDigitsFamily(inits=("fan_in", "nanogpt"), split=True, rescale_prob=0.0)
    tasks = [both.sample(torch.Generator().manual_seed(s)) for s in range(12)]
    nanos = [t for t in tasks if "nanogpt" in t.name]
    assert 0 < len(nanos) < len(tasks)
    for t in nanos:
        params = t.init_params(torch.Generator().manual_seed(0))
        assert t.model.init_style == "nanogpt" and float(params[0].std()) < 0.1 and hasattr(t, "heldout_batch")


def test_nanogpt_vit_training_families():
    """The training families with the benchmark-initialised ViTs: "vit-nanogpt-split" is those alone (with
    held-out data), "v2-wide-split-nanovit" mixes them with the fan-in ViTs and the other families, one task in
    twelve, and "v2-wide-split-vitnano3" one in three."""
    from learned_optim.meta.config import TRAIN_FAMILIES

    only = TRAIN_FAMILIES["vit-nanogpt-split"]()
    names = [only.sample(torch.Generator().manual_seed(s)).name for s in range(8)]
    assert all("nanogpt" in n and "-split" in n for n in names), names
    mixed = TRAIN_FAMILIES["v2-wide-split-nanovit"]()
    gen = torch.Generator().manual_seed(0)
    names = [mixed.sample(gen).name for _ in range(300)]
    vits = [n for n in names if n.startswith("vit")]
    assert 0 < sum("nanogpt" in n for n in vits) < len(vits) < len(names)
    third = TRAIN_FAMILIES["v2-wide-split-vitnano3"]()
    gen = torch.Generator().manual_seed(0)
    names = [third.sample(gen).name for _ in range(300)]
    nano = sum("nanogpt" in n for n in names)
    assert 70 < nano < 130 and nano < sum(n.startswith("vit") for n in names), nano  # a third, binomial
